//! The arm32 machine layer (bare-metal target only): entry, MMU, GIC,
//! Xen's shared pages, the timer, idle, and grant mappings. The kernel's
//! arch module re-exports this surface (the same names as amd64's).

use core::ptr::{addr_of, addr_of_mut, NonNull};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use xen::abi::console::XenconsInterface;
use xen::abi::hvm::*;
use xen::abi::memory::{XENMAPSPACE_GRANT_TABLE, XENMAPSPACE_SHARED_INFO};
use xen::abi::xen::SharedInfo;
use xen::abi::xs_wire::XenstoreDomainInterface;
use xen::abi::Port;
use xen::hypercall::XenError;
use xen::shared_info::SharedInfoPage;

use crate::fdt::{self, Fdt, GuestInfo};
use crate::sections::{
    coarse, describe_section, page_as_section, Layout, SECT_DEVICE, SECT_NORMAL, SECT_XN,
};

core::arch::global_asm!(include_str!("head.S"));

extern "C" {
    static boot_cntvct: u64;
    static __image_start: u8;
    static __image_end: u8;
    static boot_stack: u8;
    static boot_stack_top: u8;
    static boot_stack_guard: u8;
    static exc_stack_guard: u8;
    static __text_start: u8;
    static __text_end: u8;
    static __data_start: u8;
}

/// The image's layout: link.ld's page-aligned boundaries and head.S's
/// guard pages.
pub fn layout() -> Layout {
    let a = |p: *const u8| p as u32;
    let boot_guard = a(addr_of!(boot_stack_guard));
    let exc_guard = a(addr_of!(exc_stack_guard));
    Layout {
        image: a(addr_of!(__image_start))..a(addr_of!(__image_end)),
        text: a(addr_of!(__text_start))..a(addr_of!(__text_end)),
        data_start: a(addr_of!(__data_start)),
        guards: [
            (boot_guard..boot_guard + 4096, "boot"),
            (exc_guard..exc_guard + 4096, "exception"),
        ],
    }
}

/// How Xen runs us. Arm has one guest type, which is what x86 calls PVH:
/// hardware virtualisation, a translated (pfn = gfn) address space and PV
/// interfaces. The variant carries that name so that portable code's
/// translated-guest branches (`GuestType::Pvh`) apply unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestType {
    /// A Xen Arm guest.
    Pvh,
}

impl GuestType {
    /// "arm32".
    pub fn name(self) -> &'static str {
        "arm32"
    }
}

/// The guest type.
pub fn guest_type() -> GuestType {
    GuestType::Pvh
}

/// The generic timer's virtual count at the first instruction.
pub fn entry_tsc() -> u64 {
    // SAFETY: written once by the entry assembly before any Rust runs.
    unsafe { core::ptr::read_volatile(addr_of!(boot_cntvct)) }
}

/// Pseudo-physical frame range `[start, end)` the image (with .bss)
/// occupies.
pub fn image_frames() -> core::ops::Range<u64> {
    let start = addr_of!(__image_start) as u64;
    let end = addr_of!(__image_end) as u64;
    (start >> 12)..end.div_ceil(4096)
}

/// The pfn of a kernel address (the map is 1:1).
pub fn virt_to_pfn(va: u64) -> u64 {
    va >> 12
}

/// The kernel address of a pfn (the map is 1:1).
pub fn pfn_to_ptr(pfn: u64) -> *mut u8 {
    (pfn << 12) as usize as *mut u8
}

/// The frame number Xen expects for one of our pfns: Arm guests are
/// translated, so it is the pfn itself.
pub fn pfn_to_gfn(pfn: u64) -> u64 {
    pfn
}

// ------------------------------------------------------------------ MMU --

/// The L1 translation table: 4096 1 MiB sections (short descriptors).
#[repr(C, align(16384))]
struct L1([u32; 4096]);
static mut L1_TABLE: L1 = L1([0; 4096]);

/// L2 tables (256 small pages, 1 MiB each) for the MiBs of RAM that hold
/// the image: link.ld asserts it ends below 0x40400000.
#[repr(C, align(1024))]
struct L2([u32; 256]);
const IMAGE_L2: usize = 4;
static mut L2_TABLES: [L2; IMAGE_L2] = [const { L2([0; 256]) }; IMAGE_L2];

/// Below this, everything is device space in Xen's guest layout (GIC,
/// vpl011, MMIO); from here up are the foreign-mapping window, the
/// grant-table region, the magic pages (console, xenstore) and RAM, all
/// Normal memory shared with Xen or other domains.
const NORMAL_FROM: u32 = FOREIGN_BASE as u32;

/// Builds the 1:1 map and turns the MMU, the caches and branch prediction
/// on. Runs once, first thing, with the MMU off.
fn mmu_on() {
    // SAFETY: single-threaded boot, nothing else uses the tables yet.
    let table = unsafe { &mut *addr_of_mut!(L1_TABLE) };
    // SAFETY: as above.
    let l2 = unsafe { &mut *addr_of_mut!(L2_TABLES) };
    let layout = layout();
    // The MiBs holding the image get 4 KiB pages (W^X, guard pages);
    // every other section is execute-never.
    let image_mib = (layout.image.start >> 20)..layout.image.end.div_ceil(1 << 20);
    for (i, e) in table.0.iter_mut().enumerate() {
        let base = (i as u32) << 20;
        *e = if image_mib.contains(&(i as u32)) {
            let t = &mut l2[(i as u32 - image_mib.start) as usize];
            for (k, p) in t.0.iter_mut().enumerate() {
                *p = layout.page_desc(base | ((k as u32) << 12));
            }
            coarse(t.0.as_ptr() as u32)
        } else if base >= NORMAL_FROM {
            base | SECT_NORMAL | SECT_XN
        } else {
            base | SECT_DEVICE
        };
    }
    let ttbr = table.0.as_ptr() as u32
        // IRGN = Write-Back Write-Allocate (IRGN[0] = bit 6), RGN = 01,
        // Inner-Shareable walks (S = 1, NOS = 0).
        | (1 << 6) | (0b01 << 3) | (1 << 1);
    // SAFETY: the table maps every address the kernel uses to itself
    // (1:1), so enabling translation does not move code or data; the
    // barriers make the table visible to the walker first.
    unsafe {
        core::arch::asm!(
            "dsb sy",
            "mcr p15, 0, {zero}, c2, c0, 2",   // TTBCR = 0: TTBR0 only, short descriptors
            "mcr p15, 0, {ttbr}, c2, c0, 0",   // TTBR0
            "mcr p15, 0, {dacr}, c3, c0, 0",   // DACR: domain 0 client
            "mcr p15, 0, {zero}, c8, c7, 0",   // TLBIALL
            "mcr p15, 0, {zero}, c7, c5, 0",   // ICIALLU
            "mcr p15, 0, {zero}, c7, c5, 6",   // BPIALL
            "dsb sy",
            "isb",
            "mrc p15, 0, {tmp}, c1, c0, 0",    // SCTLR
            "bic {tmp}, {tmp}, #(1 << 1)",     // A = 0: unaligned accesses allowed
            "bic {tmp}, {tmp}, #(1 << 28)",    // TRE = 0
            "bic {tmp}, {tmp}, #(1 << 29)",    // AFE = 0
            "orr {tmp}, {tmp}, #1",            // M
            "orr {tmp}, {tmp}, #(1 << 2)",     // C
            "orr {tmp}, {tmp}, #(1 << 11)",    // Z
            "orr {tmp}, {tmp}, #(1 << 12)",    // I
            "mcr p15, 0, {tmp}, c1, c0, 0",
            "isb",
            zero = in(reg) 0u32,
            ttbr = in(reg) ttbr,
            dacr = in(reg) 1u32,
            tmp = out(reg) _,
            options(nostack)
        );
    }
}

// ------------------------------------------------------------------ GIC --

static GICD: AtomicU32 = AtomicU32::new(0);
static GICC: AtomicU32 = AtomicU32::new(0);

// The vGIC is emulated by Xen, which decodes a trapped access from its
// syndrome: only plain single-register loads and stores without writeback
// carry one, so these accessors pin the instruction down in asm.

fn mmio_write(addr: u32, v: u32) {
    // SAFETY: `addr` is a GIC register in the device-mapped region.
    unsafe { core::arch::asm!("str {v}, [{a}]", v = in(reg) v, a = in(reg) addr, options(nostack)) }
}

fn mmio_write8(addr: u32, v: u8) {
    // SAFETY: as in mmio_write, a byte-accessible register.
    unsafe {
        core::arch::asm!("strb {v}, [{a}]", v = in(reg) u32::from(v), a = in(reg) addr, options(nostack))
    }
}

fn mmio_read(addr: u32) -> u32 {
    let v: u32;
    // SAFETY: as in mmio_write.
    unsafe {
        core::arch::asm!("ldr {v}, [{a}]", v = out(reg) v, a = in(reg) addr, options(nostack))
    };
    v
}

/// Enables the distributor and CPU interface and the given PPIs. IRQs stay
/// masked in CPSR: an enabled, pending interrupt still wakes `wfi`, and
/// the kernel polls the event bitmaps after every wake-up (as the amd64
/// PVH path does).
fn gic_init(gicd: u32, gicc: u32, ppis: &[u32]) {
    GICD.store(gicd, Ordering::Relaxed);
    GICC.store(gicc, Ordering::Relaxed);
    mmio_write(gicd, 1); // GICD_CTLR.Enable
    let mut mask = 0u32;
    for &irq in ppis.iter().filter(|&&i| (16..32).contains(&i)) {
        mask |= 1 << irq;
        // GICD_IPRIORITYR: priority 0xa0 for this interrupt (byte access).
        mmio_write8(gicd + 0x400 + irq, 0xa0);
    }
    mmio_write(gicd + 0x100, mask); // GICD_ISENABLER0
    mmio_write(gicc + 0x4, 0xff); // GICC_PMR: let every priority through
    mmio_write(gicc, 1); // GICC_CTLR.Enable
}

/// Acknowledges every interrupt the GIC holds for us (reading IAR until
/// spurious, writing EOIR), so the next `wfi` sleeps.
fn gic_drain() {
    let gicc = GICC.load(Ordering::Relaxed);
    if gicc == 0 {
        return;
    }
    for _ in 0..64 {
        let iar = mmio_read(gicc + 0xc);
        if iar & 0x3ff >= 1020 {
            break;
        }
        mmio_write(gicc + 0x10, iar);
    }
}

// ---------------------------------------------------------------- timer --

static COUNTER_HZ: AtomicU64 = AtomicU64::new(0);

fn clock_record() -> xen::abi::xen::VcpuTimeInfo {
    xen::time::record_for_hz(COUNTER_HZ.load(Ordering::Relaxed))
}

/// Nanoseconds since the counter started: the generic timer's virtual
/// count scaled as [`xen::shared_info::SharedInfoPage::vcpu_time`] does on
/// Arm, so this is the clock the kernel's executor reads.
pub fn now_ns() -> u64 {
    xen::time::system_time_ns(&clock_record(), xen::time::rdtsc())
}

/// Arms the virtual timer (PPI 27) for `deadline_ns` on the [`now_ns`]
/// clock, or disarms it.
pub fn set_timer(deadline_ns: Option<u64>) {
    match deadline_ns {
        Some(d) => {
            // The first count at which the kernel's clock reads >= d (the
            // record's rounding may differ from the exact ratio by a tick).
            let rec = clock_record();
            let mut ticks = xen::time::ns_to_ticks(d, COUNTER_HZ.load(Ordering::Relaxed));
            for _ in 0..4 {
                if xen::time::system_time_ns(&rec, ticks) >= d {
                    break;
                }
                ticks += 1;
            }
            // SAFETY: CNTV_CVAL and CNTV_CTL are this vCPU's virtual timer.
            unsafe {
                core::arch::asm!(
                    "mcrr p15, 3, {lo}, {hi}, c14", // CNTV_CVAL
                    "mcr p15, 0, {one}, c14, c3, 1", // CNTV_CTL: enable, unmasked
                    "isb",
                    lo = in(reg) ticks as u32,
                    hi = in(reg) (ticks >> 32) as u32,
                    one = in(reg) 1u32,
                    options(nostack)
                );
            }
        }
        None => {
            // SAFETY: as above; 0 disables the timer.
            unsafe {
                core::arch::asm!("mcr p15, 0, {z}, c14, c3, 1", "isb", z = in(reg) 0u32,
                                 options(nostack))
            };
        }
    }
}

/// Waits for an interrupt (an event-channel upcall or the timer), unless
/// an event is already pending. There is no `SCHEDOP_block` on Arm: Xen
/// traps `wfi` and deschedules the vCPU until something is pending for it.
pub fn idle_block(shared: &SharedInfoPage) {
    if !shared.upcall_pending(0) {
        // SAFETY: wfi only waits; IRQs stay masked, a pending one wakes it.
        unsafe { core::arch::asm!("dsb sy", "wfi", options(nostack)) };
    }
    gic_drain();
}

// ------------------------------------------------------- Xen's pages --

/// A 4 KiB page inside the image.
#[repr(C, align(4096))]
pub struct Page(pub [u8; 4096]);

/// The page the shared info frame replaces (XENMAPSPACE_shared_info).
static mut SHARED_PAGE: Page = Page([0; 4096]);

/// vCPU 0's `vcpu_info`, registered with `VCPUOP_register_vcpu_info`
/// (Xen's Arm ABI: the shared info page's slot is a legacy).
#[repr(C, align(64))]
struct VcpuInfoSlot(xen::abi::xen::VcpuInfo);
static mut VCPU0_INFO: VcpuInfoSlot = VcpuInfoSlot(xen::abi::xen::VcpuInfo {
    evtchn_upcall_pending: 0,
    evtchn_upcall_mask: 0,
    evtchn_pending_sel: 0,
    arch: xen::abi::xen::ArchVcpuInfo {},
    time: xen::abi::xen::VcpuTimeInfo {
        version: 0,
        pad0: 0,
        tsc_timestamp: 0,
        system_time: 0,
        tsc_to_system_mul: 0,
        tsc_shift: 0,
        flags: 0,
        pad1: [0; 2],
    },
});

/// Most grant-table frames mapped.
pub const GRANT_FRAMES: usize = 4;
static GRANT_BASE: AtomicU64 = AtomicU64::new(0);

/// Maps the grant table frames into the region the device tree's
/// `hypervisor` node reserves; returns the entries' base and count.
pub fn map_grant_table() -> Result<(NonNull<xen::abi::grant_table::GrantEntryV1>, u32), XenError> {
    let base = GRANT_BASE.load(Ordering::Relaxed);
    if base == 0 {
        return Err(XenError::ENOENT);
    }
    let (_cur, max) = xen::hypercall::gnttab_query_size()?;
    let frames = (max as usize).clamp(1, GRANT_FRAMES);
    for i in 0..frames {
        // SAFETY: the grant region is guest-physical space Xen reserved for
        // exactly this (device tree), mapped Normal in our 1:1 map.
        unsafe {
            xen::hypercall::add_to_physmap(
                XENMAPSPACE_GRANT_TABLE,
                i as u64,
                (base >> 12) + i as u64,
            )?
        };
    }
    let ptr = NonNull::new(base as usize as *mut xen::abi::grant_table::GrantEntryV1)
        .ok_or(XenError::EINVAL)?;
    Ok((ptr, (frames as u32) * xen::grant::ENTRIES_PER_FRAME))
}

/// Guest RAM's base in Xen's Arm guest layout (`GUEST_RAM0_BASE`).
const GUEST_RAM_BASE: usize = 0x4000_0000;

/// Where grants of other domains get mapped: guest-physical space below
/// the grant-table region that Xen's guest layout leaves unused.
const FOREIGN_BASE: u64 = 0x3700_0000;
const FOREIGN_PAGES: usize = 512;

/// The foreign-mapping window (base, pages).
pub fn foreign_window() -> (u64, usize) {
    (FOREIGN_BASE, FOREIGN_PAGES)
}

/// What the arm32 entry found, handed to the kernel's boot flow.
pub struct Boot {
    /// The device tree's facts.
    pub dt: GuestInfo<'static>,
    /// The device tree blob's guest-physical range.
    pub dtb: core::ops::Range<u64>,
    /// The mapped shared info page.
    pub shared: SharedInfoPage,
    /// The console ring, if the domain has one.
    pub console: Option<(*mut XenconsInterface, Port)>,
    /// The xenstore ring, if the domain has one.
    pub store: Option<(*mut XenstoreDomainInterface, Port)>,
}

extern "Rust" {
    /// The kernel's side of the boot (kernel/src/lib.rs, arm arch module).
    fn __moat_arm32_main(boot: Boot) -> !;
}

/// Early output before the kernel's console exists: the console ring
/// directly, then an event to xenconsoled.
fn early_print(console: Option<(*mut XenconsInterface, Port)>, msg: &[u8]) {
    if let Some((page, port)) = console {
        // SAFETY: the console page is mapped (magic page, Normal memory).
        let mut ring = unsafe { xen::console::ConsoleRing::new(page) };
        ring.write(msg);
        let _ = xen::hypercall::evtchn_send(port);
    } else {
        let _ = xen::hypercall::console_io_write(msg);
    }
}

fn hvm_page<T>(pfn_param: u32, port_param: u32) -> Option<(*mut T, Port)> {
    let pfn = xen::hypercall::hvm_get_param(pfn_param).ok()?;
    let port = xen::hypercall::hvm_get_param(port_param).ok()?;
    if pfn == 0 || pfn >= (1 << 20) {
        return None;
    }
    Some(((pfn << 12) as usize as *mut T, u32::try_from(port).ok()?))
}

fn early_fail(console: Option<(*mut XenconsInterface, Port)>, what: &[u8]) -> ! {
    early_print(console, b"moat arm32: fatal: ");
    early_print(console, what);
    early_print(console, b"\n");
    loop {
        let _ = xen::hypercall::sched_shutdown(xen::abi::sched::SHUTDOWN_CRASH);
    }
}

/// Called by head.S with the device tree's address; MMU and caches off.
#[no_mangle]
extern "C" fn moat_arm32_start(dtb: usize) -> ! {
    mmu_on();
    COUNTER_HZ.store(xen::time::counter_hz(), Ordering::Relaxed);
    let console = hvm_page::<XenconsInterface>(HVM_PARAM_CONSOLE_PFN, HVM_PARAM_CONSOLE_EVTCHN);
    early_print(console, b"moat arm32: entry, MMU on\n");
    // The device tree: its header gives its size. It must lie in guest RAM
    // (Xen's layout: 0x40000000 up to the 32-bit limit), 8-byte aligned
    // as the boot protocol requires, before anything reads it.
    let in_ram = |start: usize, len: usize| {
        start >= GUEST_RAM_BASE && start.checked_add(len).is_some() && start.is_multiple_of(8)
    };
    if !in_ram(dtb, 8) {
        early_fail(
            console,
            b"no device tree in r2 (not an aligned RAM address)",
        );
    }
    // SAFETY: [dtb, dtb + 8) is in guest RAM (checked above), which the
    // 1:1 map covers as Normal memory.
    let head = unsafe { core::slice::from_raw_parts(dtb as *const u8, 8) };
    let size = match fdt::total_size(head) {
        Ok(s) if s <= 2 << 20 && in_ram(dtb, s) => s,
        _ => early_fail(console, b"no device tree in r2 (bad header)"),
    };
    // SAFETY: as above, `size` bytes (at most 2 MiB) inside the map.
    let blob: &'static [u8] = unsafe { core::slice::from_raw_parts(dtb as *const u8, size) };
    let dt = match Fdt::new(blob).and_then(|f| f.guest_info()) {
        Ok(i) => i,
        Err(_) => early_fail(console, b"device tree rejected"),
    };
    let Some(hv) = dt.hypervisor else {
        early_fail(console, b"no hypervisor node in the device tree")
    };
    GRANT_BASE.store(hv.grant_region.base, Ordering::Relaxed);
    let (gicd, gicc) = dt.gic.unwrap_or((0x0300_1000, 0x0300_2000));
    // The event upcall PPI and the virtual timer's.
    let vtimer = if dt.timer_irqs[2] != 0 {
        dt.timer_irqs[2]
    } else {
        27
    };
    gic_init(gicd as u32, gicc as u32, &[hv.event_irq, vtimer]);
    // Shared info over one of our pages.
    let shared_pfn = addr_of!(SHARED_PAGE) as u64 >> 12;
    // SAFETY: SHARED_PAGE is ours; Xen replaces its frame with the shared
    // info page, which is then only accessed through SharedInfoPage.
    if unsafe { xen::hypercall::add_to_physmap(XENMAPSPACE_SHARED_INFO, 0, shared_pfn) }.is_err() {
        early_fail(console, b"XENMAPSPACE_shared_info failed");
    }
    // SAFETY: the page is mapped for good and only used through the handle.
    let mut shared = unsafe {
        SharedInfoPage::new(NonNull::new_unchecked(
            addr_of_mut!(SHARED_PAGE) as *mut SharedInfo
        ))
    };
    // vCPU 0's vcpu_info in our own memory.
    let info = addr_of_mut!(VCPU0_INFO) as usize;
    // SAFETY: VCPU0_INFO is a static dedicated to this, 64-byte aligned
    // (inside one page), only accessed through the SharedInfoPage after.
    match unsafe {
        xen::hypercall::register_vcpu_info(0, (info >> 12) as u64, (info & 0xfff) as u32)
    } {
        // SAFETY: as above; the pointer is non-null (a static).
        Ok(()) => {
            shared = unsafe { shared.with_vcpu0_info(NonNull::new_unchecked(info as *mut _)) }
        }
        Err(_) => early_print(
            console,
            b"moat arm32: VCPUOP_register_vcpu_info failed; using the shared info slot\n",
        ),
    }
    // What the MMU says about the shared pages: evidence, on the console,
    // that they are Normal Write-Back Inner-Shareable.
    report_attrs(console, b"shared info", addr_of!(SHARED_PAGE) as usize);
    if let Some((page, _)) = console {
        report_attrs(console, b"console ring", page as usize);
    }
    let store = hvm_page::<XenstoreDomainInterface>(HVM_PARAM_STORE_PFN, HVM_PARAM_STORE_EVTCHN);
    let boot = Boot {
        dt,
        dtb: dtb as u64..(dtb + size) as u64,
        shared,
        console,
        store,
    };
    // SAFETY: defined by the kernel with this signature.
    unsafe { __moat_arm32_main(boot) }
}

/// Prints the 1:1 map's attributes for the page at `va` (read back from
/// the translation table the MMU walks) and SCTLR's M, C and I bits.
fn report_attrs(console: Option<(*mut XenconsInterface, Port)>, what: &[u8], va: usize) {
    // SAFETY: reads one entry of the table, which is no longer written.
    let mut desc = unsafe { core::ptr::read_volatile(addr_of!(L1_TABLE.0[va >> 20])) };
    if desc & 0b11 == 0b01 {
        // A coarse table (the image's MiBs): the small page's entry.
        let entry = (desc & !0x3ff) as usize + ((va >> 12) & 0xff) * 4;
        // SAFETY: `entry` is inside one of L2_TABLES (the only coarse
        // tables mmu_on installs), no longer written.
        desc = page_as_section(unsafe { core::ptr::read_volatile(entry as *const u32) });
    }
    let sctlr: u32;
    // SAFETY: reading SCTLR has no side effects.
    unsafe {
        core::arch::asm!("mrc p15, 0, {}, c1, c0, 0", out(reg) sctlr, options(nomem, nostack))
    };
    let mut text = [0u8; 96];
    let n = describe_section(desc, &mut text);
    early_print(console, b"moat arm32: ");
    early_print(console, what);
    early_print(console, b" page: ");
    early_print(console, &text[..n]);
    let on = |bit: u32| {
        if sctlr & (1 << bit) != 0 {
            &b"on"[..]
        } else {
            &b"off"[..]
        }
    };
    early_print(console, b" (MMU ");
    early_print(console, on(0));
    early_print(console, b", D-cache ");
    early_print(console, on(2));
    early_print(console, b", I-cache ");
    early_print(console, on(12));
    early_print(console, b")\n");
}

/// RAM banks as pfn ranges, for the kernel's frame allocator: the part
/// the 32-bit 1:1 map reaches (Xen's second RAM bank, for guests over
/// 3 GiB, lies above 4 GiB and is left out).
pub fn ram_banks<'a>(dt: &'a GuestInfo<'_>) -> impl Iterator<Item = core::ops::Range<u64>> + 'a {
    dt.ram_pfns_below(1 << 32)
}

/// Called by the exception vectors: report and crash the domain.
#[no_mangle]
extern "C" fn moat_arm32_exception(kind: u32, lr: u32) -> ! {
    let name: &[u8] = match kind {
        1 => b"undefined instruction",
        2 => b"svc",
        3 => b"prefetch abort",
        4 => b"data abort",
        6 => b"IRQ",
        7 => b"FIQ",
        _ => b"exception",
    };
    let (dfar, dfsr, ifar, ifsr): (u32, u32, u32, u32);
    // SAFETY: reading the fault registers has no side effects.
    unsafe {
        core::arch::asm!("mrc p15, 0, {}, c6, c0, 0", "mrc p15, 0, {}, c5, c0, 0",
                         "mrc p15, 0, {}, c6, c0, 2", "mrc p15, 0, {}, c5, c0, 1",
                         out(reg) dfar, out(reg) dfsr, out(reg) ifar, out(reg) ifsr,
                         options(nomem, nostack))
    };
    // Which W^X or guard-page property the abort violated, if any.
    let mut why = [0u8; 96];
    let why_len = match kind {
        3 => layout().describe_abort(true, ifsr, ifar, &mut why),
        4 => layout().describe_abort(false, dfsr, dfar, &mut why),
        _ => 0,
    };
    let (dfar, dfsr) = if kind == 3 {
        (ifar, ifsr)
    } else {
        (dfar, dfsr)
    };
    let mut buf = [0u8; 200];
    let mut n = 0;
    let mut put = |s: &[u8]| {
        for &b in s {
            if n < buf.len() {
                buf[n] = b;
                n += 1;
            }
        }
    };
    put(b"moat arm32: fatal: ");
    if why_len > 0 {
        put(name);
        put(b": ");
        put(&why[..why_len]);
        put(b"\n");
        put(b"moat arm32: fatal: ");
    }
    put(name);
    let labels: [&[u8]; 2] = if kind == 3 {
        [b" ifar ", b" ifsr "]
    } else {
        [b" dfar ", b" dfsr "]
    };
    for (label, v) in [(&b" lr "[..], lr), (labels[0], dfar), (labels[1], dfsr)] {
        put(label);
        let mut hex = [0u8; 8];
        for (i, h) in hex.iter_mut().enumerate() {
            *h = b"0123456789abcdef"[((v >> (28 - 4 * i)) & 0xf) as usize];
        }
        put(&hex);
    }
    put(b"\n");
    let console = hvm_page::<XenconsInterface>(HVM_PARAM_CONSOLE_PFN, HVM_PARAM_CONSOLE_EVTCHN);
    early_print(console, &buf[..n]);
    loop {
        let _ = xen::hypercall::sched_shutdown(xen::abi::sched::SHUTDOWN_CRASH);
    }
}

// ---------------------------------------------------------------- stack --

const STACK_PAINT: u8 = 0x5A;

fn stack_bounds() -> (usize, usize) {
    (
        addr_of!(boot_stack) as usize,
        addr_of!(boot_stack_top) as usize,
    )
}

/// Fills the unused part of the boot stack with a pattern, so that
/// [`stack_usage`] can tell how deep it ever got. Called once at boot.
pub fn paint_stack() {
    let (bottom, _) = stack_bounds();
    let sp: usize;
    // SAFETY: reads the stack pointer only.
    unsafe { core::arch::asm!("mov {}, sp", out(reg) sp, options(nomem, nostack)) };
    let end = sp.saturating_sub(512);
    if end > bottom {
        // SAFETY: [bottom, end) is the unused part of the boot stack.
        unsafe { core::ptr::write_bytes(bottom as *mut u8, STACK_PAINT, end - bottom) };
    }
}

/// `(bytes ever used, size)` of the boot stack.
pub fn stack_usage() -> (usize, usize) {
    let (bottom, top) = stack_bounds();
    let mut p = bottom;
    // SAFETY: reads within the boot stack (plain bytes).
    while p < top && unsafe { core::ptr::read_volatile(p as *const u8) } == STACK_PAINT {
        p += 1;
    }
    (top - p, top - bottom)
}

/// `(writable, executable)` of `addr` in the live translation table
/// (`None`: a translation fault). Sections: AP[2] (bit 15) and XN (bit
/// 4); small pages: AP[2] (bit 9) and XN (bit 0). AP[1:0] is 11 or 01
/// everywhere the map writes, so AP[2] alone says read-only.
pub fn page_rights(addr: u32) -> Option<(bool, bool)> {
    // SAFETY: reads one entry of the table, which is no longer written.
    let l1 = unsafe { core::ptr::read_volatile(addr_of!(L1_TABLE.0[(addr >> 20) as usize])) };
    match l1 & 0b11 {
        0b10 => Some((l1 & (1 << 15) == 0, l1 & SECT_XN == 0)),
        0b01 => {
            let entry = (l1 & !0x3ff) as usize + ((addr as usize >> 12) & 0xff) * 4;
            // SAFETY: `entry` is inside one of L2_TABLES (the only coarse
            // tables mmu_on installs), no longer written.
            let page = unsafe { core::ptr::read_volatile(entry as *const u32) };
            (page & 0b10 != 0).then_some((page & (1 << 9) == 0, page & 1 == 0))
        }
        _ => None,
    }
}

/// The guard page below the boot stack.
pub fn boot_stack_guard_page() -> u64 {
    u64::from(layout().guards[0].0.start)
}

// ---------------------------------------------------------------- probes --

/// Writes back a byte of this function's own code: with W^X in force a
/// permission fault (the selftest's `selftest.fault=write-text`); returns
/// only if text is writable.
pub fn provoke_write_text() {
    let target = provoke_write_text as *const () as *mut u8;
    // SAFETY: writes back the byte just read, so the code is unchanged
    // should the write succeed (the failure being tested for).
    unsafe { core::ptr::write_volatile(target, core::ptr::read_volatile(target)) };
}

/// `bx lr` (0xe12fff1e) words in `.data`, for [`provoke_exec_data`]
/// (placed there by name: the compiler would put a constant in `.rodata`).
#[link_section = ".data.moat_exec_probe"]
static BX_LR_IN_DATA: [u32; 4] = [0xe12f_ff1e; 4];

/// Calls a `bx lr` that sits in `.data`: with execute-never in force a
/// prefetch abort; returns only if data is executable.
pub fn provoke_exec_data() {
    let f = BX_LR_IN_DATA.as_ptr() as *const ();
    // SAFETY: the words are `bx lr` in the ARM instruction set (the
    // address is even: called in ARM state), which returns at once.
    let f: extern "C" fn() = unsafe { core::mem::transmute(f) };
    f();
}

/// Recurses with 1 KiB frames until the boot stack runs into its guard
/// page (a translation fault); returns only if there is no guard page.
pub fn provoke_stack_overflow() {
    core::hint::black_box(recurse(0));
}

#[inline(never)]
fn recurse(depth: u32) -> u32 {
    let mut frame = [0u8; 1024];
    frame[(depth % 1024) as usize] = depth as u8;
    core::hint::black_box(&mut frame);
    if depth == u32::MAX {
        return 0;
    }
    recurse(depth + 1).wrapping_add(u32::from(frame[0]))
}
