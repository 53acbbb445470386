//! amd64 arch code: the PV and PVH entry paths, page tables, the hypercall
//! page, event upcalls and the idle instruction. Everything here runs only
//! on the bare-metal target; it hands a [`crate::boot::BootInfo`] to the
//! portable boot flow and never returns.

mod fpu;
mod pv;
mod pvh;
mod random;

pub use fpu::{simd_state, SimdState};
pub use random::hardware_random;

use core::sync::atomic::{AtomicU8, Ordering};

core::arch::global_asm!(include_str!("boot.S"), options(att_syntax));

/// Which way Xen started us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestType {
    /// Paravirtualised: Xen owns the page tables.
    Pv,
    /// PVH: a hardware-virtualised container with PV interfaces.
    Pvh,
}

impl GuestType {
    /// "PV" or "PVH".
    pub fn name(self) -> &'static str {
        match self {
            GuestType::Pv => "PV",
            GuestType::Pvh => "PVH",
        }
    }
}

static GUEST: AtomicU8 = AtomicU8::new(0);

/// The guest type, known from the first instruction on.
pub fn guest_type() -> GuestType {
    if GUEST.load(Ordering::Relaxed) == 1 {
        GuestType::Pvh
    } else {
        GuestType::Pv
    }
}

extern "C" {
    static boot_tsc: u64;
    static __image_start: u8;
    static __image_end: u8;
}

/// TSC value read by the first instruction of the entry path.
pub fn entry_tsc() -> u64 {
    // SAFETY: written once by the entry assembly before any Rust runs.
    unsafe { core::ptr::read_volatile(core::ptr::addr_of!(boot_tsc)) }
}

/// Pseudo-physical frame range `[start, end)` the image occupies.
pub fn image_frames() -> core::ops::Range<u64> {
    let start = core::ptr::addr_of!(__image_start) as u64;
    let end = core::ptr::addr_of!(__image_end) as u64;
    (start >> 12)..end.div_ceil(4096)
}

/// A 4 KiB page-aligned page inside the image, for mappings Xen supplies
/// (shared info, grant table frames).
#[repr(C, align(4096))]
pub struct Page(pub [u8; 4096]);

/// The page Xen's shared info page gets mapped over.
#[no_mangle]
static mut XEN_PAGES: [Page; 1] = [const { Page([0; 4096]) }; 1];

fn xen_page_addr(i: usize) -> u64 {
    // SAFETY: only the address is taken; the pages are accessed through
    // the raw pointers the boot code derives from it.
    unsafe { core::ptr::addr_of_mut!(XEN_PAGES[i]) as u64 }
}

/// Blocks the vCPU until an event is pending. Returns with event delivery
/// masked again.
pub fn idle_block(shared: &xen::shared_info::SharedInfoPage) {
    match guest_type() {
        GuestType::Pv => pv::idle_block(shared),
        GuestType::Pvh => pvh::idle_block(),
    }
}

/// Maps the grant table over `xen::grant::frames_to_map` contiguous frames taken
/// from `allocator` for good; returns the entries' base and count.
pub fn map_grant_table(
    allocator: &spin::Mutex<crate::frames::FrameAllocator<'static>>,
) -> Result<(core::ptr::NonNull<xen::abi::grant_table::GrantEntryV1>, u32), xen::hypercall::XenError>
{
    let (_cur, max) = xen::hypercall::gnttab_query_size()?;
    let free = allocator.lock().free_count();
    let frames = xen::grant::frames_to_map(max, free) as usize;
    log::info!(
        "grant table: {frames} frames, {} entries (Xen allows {max} frames)",
        frames as u32 * xen::grant::ENTRIES_PER_FRAME
    );
    let first = allocator
        .lock()
        .alloc_contiguous(frames as u64, 1)
        .ok_or(xen::hypercall::XenError::ENOMEM)?;
    // Every RAM frame is mapped at `pfn << 12` (PV: over the frame's own
    // page, PVH: the frame's GFN is replaced by the grant frame).
    let base = pfn_to_ptr(first.0) as u64;
    match guest_type() {
        GuestType::Pv => pv::map_grant_frames(base, frames)?,
        GuestType::Pvh => pvh::map_grant_frames(base, frames)?,
    }
    let ptr = core::ptr::NonNull::new(base as *mut xen::abi::grant_table::GrantEntryV1)
        .ok_or(xen::hypercall::XenError::EINVAL)?;
    Ok((ptr, (frames as u32) * xen::grant::ENTRIES_PER_FRAME))
}

/// Foreign-mapping window: where grants of other domains get mapped
/// (`GNTTABOP_map_grant_ref`'s `host_addr`). An address range above RAM
/// that is free in both guest types; see `pv`/`pvh` for how it is backed.
pub fn foreign_window() -> (u64, usize) {
    match guest_type() {
        GuestType::Pv => pv::foreign_window(),
        GuestType::Pvh => pvh::foreign_window(),
    }
}

/// The pseudo-physical frame of a kernel address (every RAM frame is
/// mapped at pfn << 12 in both guest types).
pub fn virt_to_pfn(va: u64) -> u64 {
    va >> 12
}

/// Where the kernel reaches pseudo-physical frame `pfn` (RAM is mapped at
/// `pfn << 12` in both guest types).
pub fn pfn_to_ptr(pfn: u64) -> *mut u8 {
    (pfn << 12) as *mut u8
}

/// The frame number Xen expects in grant entries and grant copies for one
/// of our pfns: the machine frame for PV (Xen does not translate PV
/// guests), the pfn itself for PVH.
pub fn pfn_to_gfn(pfn: u64) -> u64 {
    match guest_type() {
        GuestType::Pv => pv::pfn_to_mfn(pfn),
        GuestType::Pvh => pfn,
    }
}

/// Reads CR2 (PVH) or the PV vCPU's saved CR2.
fn fault_address() -> u64 {
    match guest_type() {
        GuestType::Pv => pv::fault_address(),
        GuestType::Pvh => {
            let v: u64;
            // SAFETY: reading CR2 has no side effects; PVH runs in ring 0.
            unsafe {
                core::arch::asm!("mov %cr2, {}", out(reg) v, options(att_syntax, nomem, nostack))
            };
            v
        }
    }
}

/// Called by the exception stubs: report and crash the domain.
#[no_mangle]
extern "C" fn moat_exception(vector: u64, error: u64, frame: *const u64) -> ! {
    let name = match vector {
        0 => "divide error",
        1 => "debug",
        2 => "NMI",
        3 => "breakpoint",
        4 => "overflow",
        5 => "bound range",
        6 => "invalid opcode",
        7 => "device not available",
        8 => "double fault",
        10 => "invalid TSS",
        11 => "segment not present",
        12 => "stack fault",
        13 => "general protection",
        14 => "page fault",
        16 => "x87 FP",
        17 => "alignment check",
        18 => "machine check",
        19 => "SIMD FP",
        0xfe => "PV failsafe callback",
        _ => "exception",
    };
    let rip = if frame.is_null() {
        0
    } else {
        // SAFETY: the stubs pass the CPU/Xen exception frame, whose first word is RIP.
        unsafe { core::ptr::read_volatile(frame) }
    };
    crate::boot::fatal(format_args!(
        "CPU exception {vector} ({name}) at rip {rip:#x}, error code {error:#x}, fault address {:#x}",
        fault_address()
    ))
}

extern "C" {
    static boot_stack: u8;
    static boot_stack_top: u8;
}

/// What unused boot-stack bytes hold, to measure the high-water mark.
const STACK_PAINT: u8 = 0x5A;

fn stack_bounds() -> (usize, usize) {
    (
        core::ptr::addr_of!(boot_stack) as usize,
        core::ptr::addr_of!(boot_stack_top) as usize,
    )
}

/// Fills the unused part of the boot stack with a pattern, so that
/// [`stack_usage`] can tell how deep it ever got. Called once at boot.
pub fn paint_stack() {
    let (bottom, _) = stack_bounds();
    let sp: usize;
    // SAFETY: reads the stack pointer only.
    unsafe { core::arch::asm!("mov %rsp, {}", out(reg) sp, options(att_syntax, nomem, nostack)) };
    // Leave a margin below the live frame (this function's own locals).
    let end = sp.saturating_sub(512);
    if end > bottom {
        // SAFETY: [bottom, end) is the unused part of the boot stack (it
        // grows down from the top and we are running at `sp`).
        unsafe { core::ptr::write_bytes(bottom as *mut u8, STACK_PAINT, end - bottom) };
    }
}

/// `(bytes ever used, size)` of the boot stack.
pub fn stack_usage() -> (usize, usize) {
    let (bottom, top) = stack_bounds();
    let mut p = bottom;
    // SAFETY: reads within the boot stack, below the live frames or inside
    // them (plain bytes either way).
    while p < top && unsafe { core::ptr::read_volatile(p as *const u8) } == STACK_PAINT {
        p += 1;
    }
    (top - p, top - bottom)
}
