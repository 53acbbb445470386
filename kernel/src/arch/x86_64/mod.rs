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
    static __text_start: u8;
    static __text_end: u8;
    static __data_start: u8;
    static boot_stack_guard: u8;
    static df_stack_guard: u8;
}

/// The image's layout (link.ld's page-aligned boundaries and boot.S's
/// guard pages), which the PV and PVH paths map page by page.
pub fn layout() -> crate::protection::Layout {
    let a = |p: *const u8| p as u64;
    let boot_guard = a(core::ptr::addr_of!(boot_stack_guard));
    let df_guard = a(core::ptr::addr_of!(df_stack_guard));
    crate::protection::Layout {
        image: a(core::ptr::addr_of!(__image_start))..a(core::ptr::addr_of!(__image_end)),
        text: a(core::ptr::addr_of!(__text_start))..a(core::ptr::addr_of!(__text_end)),
        data_start: a(core::ptr::addr_of!(__data_start)),
        guards: [
            (boot_guard..boot_guard + 4096, "boot"),
            (df_guard..df_guard + 4096, "double-fault"),
        ],
    }
}

/// Page-table entry bits both guest types use.
pub(crate) mod pte {
    /// Present.
    pub const PRESENT: u64 = 1;
    /// Writable.
    pub const RW: u64 = 2;
    /// Execute-disable (only when EFER.NXE is on; see `nx_bit`).
    pub const NX: u64 = 1 << 63;
}

/// The leaf flags a page of `kind` gets, before the guest type's own bits
/// (PV's USER/ACCESSED/DIRTY): `None` for a guard page (not present).
fn leaf_flags(kind: crate::protection::PageKind, nx: u64) -> Option<u64> {
    use crate::protection::PageKind;
    match kind {
        PageKind::Text => Some(pte::PRESENT),
        PageKind::ReadOnly => Some(pte::PRESENT | nx),
        PageKind::Data => Some(pte::PRESENT | pte::RW | nx),
        PageKind::Guard(_) => None,
    }
}

/// Whether the CPU (as Xen presents it) has the NX bit: CPUID
/// 0x8000_0001 EDX bit 20. Xen lets PV guests set NX in their entries
/// exactly then (`base_disallow_mask`); PVH's entry turns EFER.NXE on then.
fn cpu_has_nx() -> bool {
    let max = core::arch::x86_64::__cpuid(0x8000_0000).eax;
    max >= 0x8000_0001 && core::arch::x86_64::__cpuid(0x8000_0001).edx & (1 << 20) != 0
}

/// What the boot mapped: whether NX is in force (else only W^X's write
/// half holds), set once by the entry path.
static NX_ON: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Whether data pages are mapped non-executable (false only on a CPU
/// without NX).
pub fn nx_enforced() -> bool {
    NX_ON.load(Ordering::Relaxed)
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

/// Called by the exception stubs: report and crash the domain. `cr2` is
/// CR2 as the PVH stub read it first thing (0 from PV stubs: a PV vCPU's
/// CR2 is in its `vcpu_info`).
#[no_mangle]
extern "C" fn moat_exception(vector: u64, error: u64, frame: *const u64, cr2: u64) -> ! {
    use crate::protection::{Access, Violation};
    let word = |i: usize| {
        if frame.is_null() {
            0
        } else {
            // SAFETY: the stubs pass the CPU/Xen exception frame: rip,
            // cs, rflags, rsp, ss.
            unsafe { core::ptr::read_volatile(frame.add(i)) }
        }
    };
    let (rip, rsp) = (word(0), word(3));
    let cr2 = match guest_type() {
        GuestType::Pv => pv::fault_address(),
        GuestType::Pvh => cr2,
    };
    // Page faults (error code: bit 1 write, bit 4 instruction fetch) and
    // double faults (PVH: a fault that could not push its frame, i.e. on an
    // overflowed stack, arrives as #DF on the IST stack) first say which
    // property was violated.
    if vector == 14 || vector == 8 {
        let access = if error & 0x10 != 0 {
            Access::Execute
        } else if error & 2 != 0 {
            Access::Write
        } else {
            Access::Read
        };
        let layout = layout();
        let double = vector == 8;
        // CR2, or what stands in for it (`Layout::fault_address`).
        let addr = layout.fault_address(double, access, cr2, rip, rsp);
        let v = layout.describe(addr.unwrap_or(0), access);
        let what = if double { "double fault" } else { "page fault" };
        if !double && addr.is_none() && access == Access::Write && error & 1 != 0 {
            // A write to a present read-only page: only the image's text
            // and rodata are read-only, but without CR2 not which one.
            crate::boot::fatal(format_args!(
                "{what}: W^X: write to read-only text or rodata (CR2 gave no address) \
                 (rip {rip:#x}, error code {error:#x})"
            ))
        }
        if !matches!(v, Violation::Other { .. }) || vector == 14 {
            crate::boot::fatal(format_args!(
                "{what}: {v} (rip {rip:#x}, rsp {rsp:#x}, error code {error:#x})"
            ))
        }
    }
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
    crate::boot::fatal(format_args!(
        "CPU exception {vector} ({name}) at rip {rip:#x}, error code {error:#x}, fault address {cr2:#x}"
    ))
}

extern "C" {
    static boot_stack: u8;
    static boot_stack_top: u8;
}

/// The rights the page tables give `addr` (`None`: not mapped), walked
/// from the live tables: AND of the writable bits and OR of the NX bits
/// over the levels, as the CPU combines them. Without NX in force every
/// mapped page is executable.
pub fn page_rights(addr: u64) -> Option<crate::protection::PageRights> {
    let (write, nx) = match guest_type() {
        GuestType::Pv => pv::walk(addr)?,
        GuestType::Pvh => pvh::walk(addr)?,
    };
    Some(crate::protection::PageRights {
        write,
        execute: !(nx && nx_enforced()),
    })
}

/// The guard page below the boot stack (the first page of its range).
pub fn boot_stack_guard_page() -> u64 {
    layout().guards[0].0.start
}

/// A 4-level walk from the top table at `root` (a kernel address) for
/// `addr`: `(writable, no-execute)` of the leaf, or `None` if a level is
/// not present. `table_at` turns an entry's frame address into the
/// kernel address of that table (PVH: itself; PV: through the M2P).
fn walk_tables(root: u64, addr: u64, table_at: impl Fn(u64) -> u64) -> Option<(bool, bool)> {
    const ADDR: u64 = 0x000F_FFFF_FFFF_F000;
    let (mut table, mut write, mut nx) = (root, true, false);
    for level in (0..4u32).rev() {
        let index = ((addr >> (12 + 9 * level)) & 511) as usize;
        // SAFETY: `table` is a page-table page, mapped (read-only on PV)
        // at this kernel address; `index` < 512.
        let e = unsafe { core::ptr::read_volatile((table as *const u64).add(index)) };
        if e & pte::PRESENT == 0 {
            return None;
        }
        write &= e & pte::RW != 0;
        nx |= e & pte::NX != 0;
        // Level 0 is a 4 KiB page; bit 7 (PS) makes a level 1 or 2 entry
        // a 2 MiB or 1 GiB page.
        if level == 0 || (level < 3 && e & 0x80 != 0) {
            return Some((write, nx));
        }
        table = table_at(e & ADDR);
    }
    None
}

/// Provokes `probe`'s fault on purpose (the selftest's `selftest.fault=`):
/// with the image mapped as it should be, this never returns, the fault
/// handler reports the violation and crashes the domain. It returns only
/// when the protection is missing.
pub fn provoke(probe: crate::protection::Probe) {
    use crate::protection::Probe;
    match probe {
        Probe::WriteText => {
            let target = provoke as *const () as *mut u8;
            // SAFETY: writes back the byte just read, so the code is
            // unchanged should the write succeed (which is the failure
            // being tested for); nothing else aliases code bytes.
            unsafe { core::ptr::write_volatile(target, core::ptr::read_volatile(target)) };
        }
        Probe::ExecData => {
            let f = RET_IN_DATA.as_ptr() as *const ();
            // SAFETY: RET_IN_DATA holds `ret` instructions: executing them
            // (only possible without NX) returns at once with no effect.
            let f: extern "C" fn() = unsafe { core::mem::transmute(f) };
            f();
        }
        Probe::StackOverflow => {
            core::hint::black_box(recurse(0));
        }
    }
}

/// `ret` (0xC3) bytes in `.data`, for [`provoke`]'s execute-from-data probe
/// (placed there by name: the compiler would put a constant in `.rodata`).
#[link_section = ".data.moat_exec_probe"]
static RET_IN_DATA: [u8; 16] = [0xC3; 16];

/// Recurses with 1 KiB frames until the stack's guard page stops it.
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    let mut frame = [0u8; 1024];
    frame[(depth % 1024) as usize] = depth as u8;
    core::hint::black_box(&mut frame);
    if depth == u64::MAX {
        return 0;
    }
    recurse(depth + 1).wrapping_add(u64::from(frame[0]))
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
