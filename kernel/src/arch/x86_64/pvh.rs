//! The PVH path: we run in a hardware container with our own page tables
//! (boot.S identity-maps the low 4 GiB with 2 MiB pages), find Xen through
//! its CPUID leaves, install the hypercall page through the MSR Xen names,
//! and receive events as an interrupt vector (`HVM_PARAM_CALLBACK_IRQ`).

use core::ptr::NonNull;

use xen::abi::hvm::*;
use xen::abi::memory::{E820Entry, E820_RAM, XENMAPSPACE_GRANT_TABLE, XENMAPSPACE_SHARED_INFO};
use xen::hypercall::{self, XenError};
use xen::shared_info::SharedInfoPage;

use super::{xen_page_addr, GuestType, GUEST};
use crate::boot::{BootInfo, RegionList};

/// The vector Xen raises for event channel upcalls.
const EVENT_VECTOR: u8 = 0xF3;
/// Our identity map covers this much; everything we touch must be below.
const IDENTITY_LIMIT: u64 = 4 << 30;
const FOREIGN_PAGES: usize = 512;

extern "C" {
    static hypercall_page: u8;
    static mut pvh_upcall_pending_ptr: u64;
    fn pvh_event_vector();
    fn pvh_exc_de();
    fn pvh_exc_db();
    fn pvh_exc_nmi();
    fn pvh_exc_bp();
    fn pvh_exc_of();
    fn pvh_exc_br();
    fn pvh_exc_ud();
    fn pvh_exc_nm();
    fn pvh_exc_df();
    fn pvh_exc_ts();
    fn pvh_exc_np();
    fn pvh_exc_ss();
    fn pvh_exc_gp();
    fn pvh_exc_pf();
    fn pvh_exc_mf();
    fn pvh_exc_ac();
    fn pvh_exc_mc();
    fn pvh_exc_xm();
}

/// An IDT gate (64-bit interrupt gate).
#[repr(C)]
#[derive(Clone, Copy)]
struct Gate {
    offset_lo: u16,
    selector: u16,
    ist: u8,
    attrs: u8,
    offset_mid: u16,
    offset_hi: u32,
    reserved: u32,
}

impl Gate {
    const EMPTY: Gate = Gate {
        offset_lo: 0,
        selector: 0,
        ist: 0,
        attrs: 0,
        offset_mid: 0,
        offset_hi: 0,
        reserved: 0,
    };
    fn new(handler: u64, ist: u8) -> Gate {
        Gate {
            offset_lo: handler as u16,
            selector: 0x08,
            ist,
            attrs: 0x8E, // present, DPL 0, interrupt gate (IF cleared on entry)
            offset_mid: (handler >> 16) as u16,
            offset_hi: (handler >> 32) as u32,
            reserved: 0,
        }
    }
}

static mut IDT: [Gate; 256] = [Gate::EMPTY; 256];

/// The 64-bit TSS: only IST1 is used, the double-fault stack.
#[repr(C, packed)]
struct Tss {
    reserved0: u32,
    rsp: [u64; 3],
    reserved1: u64,
    ist: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    iomap_base: u16,
}

static mut TSS: Tss = Tss {
    reserved0: 0,
    rsp: [0; 3],
    reserved1: 0,
    ist: [0; 7],
    reserved2: 0,
    reserved3: 0,
    // No I/O bitmap: its offset is the TSS's size.
    iomap_base: core::mem::size_of::<Tss>() as u16,
};

/// The GDT Rust runs with: boot.S's code and data descriptors (same
/// selectors, 0x08 and 0x10) plus the TSS at 0x18. In `.data`, not
/// `.rodata`: `ltr` writes the TSS descriptor's busy bit.
static mut GDT: [u64; 5] = [0, 0x00af_9a00_0000_ffff, 0x00cf_9200_0000_ffff, 0, 0];

/// Installs the GDT with a TSS whose IST1 is the double-fault stack.
fn load_gdt_tss() {
    extern "C" {
        static df_stack_top: u8;
    }
    // SAFETY: single-threaded boot, interrupts disabled; TSS and GDT are
    // statics that live forever; the selectors of the code and data
    // segments in use stay the same, so no segment register changes
    // meaning when the new table is loaded.
    unsafe {
        let tss = &mut *core::ptr::addr_of_mut!(TSS);
        tss.ist[0] = core::ptr::addr_of!(df_stack_top) as u64;
        let base = core::ptr::addr_of!(TSS) as u64;
        let limit = (core::mem::size_of::<Tss>() - 1) as u64;
        let gdt = &mut *core::ptr::addr_of_mut!(GDT);
        gdt[3] = (limit & 0xffff)
            | ((base & 0xff_ffff) << 16)
            | (0x89 << 40) // present, DPL 0, available 64-bit TSS
            | (((limit >> 16) & 0xf) << 48)
            | (((base >> 24) & 0xff) << 56);
        gdt[4] = base >> 32;
        #[repr(C, packed)]
        struct Desc {
            limit: u16,
            base: u64,
        }
        let desc = Desc {
            limit: (core::mem::size_of::<[u64; 5]>() - 1) as u16,
            base: gdt.as_ptr() as u64,
        };
        core::arch::asm!("lgdt ({})", in(reg) &desc, options(att_syntax, readonly, nostack));
        core::arch::asm!("ltr {0:x}", in(reg) 0x18u16, options(att_syntax, nostack));
    }
}

/// A page-table page.
#[repr(C, align(4096))]
struct Table([u64; 512]);

/// How many 2 MiB directory entries may cover the image (link.ld asserts
/// the image ends below 8 MiB): each becomes a table of 4 KiB pages.
const IMAGE_TABLES: usize = 4;
static mut IMAGE_L1: [Table; IMAGE_TABLES] = [const { Table([0; 512]) }; IMAGE_TABLES];

/// Remaps boot.S's identity map with W^X: the 2 MiB pages that hold the
/// image become 4 KiB pages mapped by [`super::layout`] (text read-only
/// and executable, notes and rodata read-only, data/bss/stacks writable,
/// guard pages absent), and every other page (RAM, heap, shared and
/// foreign pages) is non-executable. Returns whether NX is in force.
fn protect_image() -> bool {
    extern "C" {
        static mut pvh_pd: [u64; 2048];
    }
    let efer: u64 = {
        let (lo, hi): (u32, u32);
        // SAFETY: reading EFER has no side effects; PVH runs in ring 0.
        unsafe {
            core::arch::asm!("rdmsr", in("ecx") 0xC000_0080u32, out("eax") lo, out("edx") hi,
                options(nomem, nostack))
        };
        (u64::from(hi) << 32) | u64::from(lo)
    };
    let nx = if efer & (1 << 11) != 0 {
        super::pte::NX
    } else {
        0
    };
    let layout = super::layout();
    let regions = layout.image.end.div_ceil(2 << 20) as usize;
    // SAFETY: single-threaded boot; the tables are statics of this
    // module and boot.S's page directories, written only here. Every
    // address keeps its identity mapping; only the rights narrow, and
    // the code and stack in use stay mapped (text executable, stack
    // writable), so the switch is safe at every step; the CR3 reload
    // flushes the TLB's old 2 MiB entries.
    unsafe {
        let tables = &mut *core::ptr::addr_of_mut!(IMAGE_L1);
        let pd = &mut *core::ptr::addr_of_mut!(pvh_pd);
        for (r, table) in tables.iter_mut().enumerate().take(regions) {
            for (i, e) in table.0.iter_mut().enumerate() {
                let addr = ((r as u64) << 21) | ((i as u64) << 12);
                *e = super::leaf_flags(layout.kind(addr), nx).map_or(0, |f| addr | f);
            }
            pd[r] = table.0.as_ptr() as u64 | super::pte::PRESENT | super::pte::RW;
        }
        for e in pd.iter_mut().skip(regions) {
            *e |= nx;
        }
        core::arch::asm!("mov %cr3, {t}", "mov {t}, %cr3", t = out(reg) _,
            options(att_syntax, nostack));
    }
    nx != 0
}

/// `(writable, no-execute)` of `addr` in the live tables (CR3's).
pub(super) fn walk(addr: u64) -> Option<(bool, bool)> {
    let cr3: u64;
    // SAFETY: reading CR3 has no side effects; PVH runs in ring 0.
    unsafe { core::arch::asm!("mov %cr3, {}", out(reg) cr3, options(att_syntax, nomem, nostack)) };
    // Every table lies in the identity map: its address is its frame's.
    super::walk_tables(cr3 & 0x000F_FFFF_FFFF_F000, addr, |pa| pa)
}

fn load_idt() {
    let handlers: [(usize, unsafe extern "C" fn()); 19] = [
        (0, pvh_exc_de),
        (1, pvh_exc_db),
        (2, pvh_exc_nmi),
        (3, pvh_exc_bp),
        (4, pvh_exc_of),
        (5, pvh_exc_br),
        (6, pvh_exc_ud),
        (7, pvh_exc_nm),
        (8, pvh_exc_df),
        (10, pvh_exc_ts),
        (11, pvh_exc_np),
        (12, pvh_exc_ss),
        (13, pvh_exc_gp),
        (14, pvh_exc_pf),
        (16, pvh_exc_mf),
        (17, pvh_exc_ac),
        (18, pvh_exc_mc),
        (19, pvh_exc_xm),
        (EVENT_VECTOR as usize, pvh_event_vector),
    ];
    // SAFETY: single-threaded boot, interrupts disabled; the IDT is a
    // static that lives forever and the handlers are boot.S stubs.
    unsafe {
        let idt = &mut *core::ptr::addr_of_mut!(IDT);
        for (v, h) in handlers {
            // The double fault runs on IST1 (its own stack, see load_gdt_tss).
            idt[v] = Gate::new(h as *const () as u64, if v == 8 { 1 } else { 0 });
        }
        #[repr(C, packed)]
        struct Desc {
            limit: u16,
            base: u64,
        }
        let desc = Desc {
            limit: (core::mem::size_of::<[Gate; 256]>() - 1) as u16,
            base: idt.as_ptr() as u64,
        };
        core::arch::asm!("lidt ({})", in(reg) &desc, options(att_syntax, readonly, nostack));
    }
}

/// Finds Xen's CPUID leaves and writes the hypercall page address to the
/// MSR they name. Returns the leaf base.
fn install_hypercall_page() -> Option<u32> {
    for base in (0x4000_0000u32..0x4001_0000).step_by(0x100) {
        let r = core::arch::x86_64::__cpuid(base);
        // "XenVMMXenVMM"
        if (r.ebx, r.ecx, r.edx) == (0x566e_6558, 0x6558_4d4d, 0x4d4d_566e) && r.eax >= base + 2 {
            let msr = core::arch::x86_64::__cpuid(base + 2).ebx;
            let page = core::ptr::addr_of!(hypercall_page) as u64;
            // SAFETY: writing the hypercall-page MSR Xen advertises makes
            // Xen fill our page-aligned, identity-mapped `hypercall_page`.
            unsafe {
                core::arch::asm!("wrmsr", in("ecx") msr, in("eax") page as u32, in("edx") (page >> 32) as u32,
                    options(nostack));
            }
            return Some(base);
        }
    }
    None
}

static mut FOREIGN_BASE: u64 = 0;

/// Rust entry of the PVH path (called by `pvh_entry64` on the boot stack).
#[no_mangle]
extern "C" fn moat_pvh_start(start_info_pa: u64) -> ! {
    GUEST.store(1, core::sync::atomic::Ordering::Relaxed);
    load_gdt_tss();
    load_idt();
    let nx = protect_image();
    super::NX_ON.store(nx, core::sync::atomic::Ordering::Relaxed);
    if install_hypercall_page().is_none() {
        // No hypercalls, no console: nothing can be reported. Halt.
        loop {
            // SAFETY: interrupts are off; hlt parks the vCPU for good.
            unsafe { core::arch::asm!("cli; hlt", options(nomem, nostack)) };
        }
    }
    super::fpu::init_pvh();
    // SAFETY: Xen passes the physical address of hvm_start_info in %ebx,
    // inside our identity map.
    let si = unsafe { core::ptr::read_volatile(start_info_pa as *const HvmStartInfo) };
    if si.magic != XEN_HVM_START_MAGIC_VALUE {
        crate::boot::early_fatal(format_args!("bad hvm_start_info magic {:#x}", si.magic));
    }

    let shared_va = xen_page_addr(0);
    // SAFETY: XEN_PAGES[0] is reserved for the shared info page.
    if let Err(e) =
        unsafe { hypercall::add_to_physmap(XENMAPSPACE_SHARED_INFO, 0, shared_va >> 12) }
    {
        crate::boot::early_fatal(format_args!("cannot map shared info: {e}"));
    }
    // SAFETY: the page at `shared_va` is now the shared info page.
    let shared = unsafe { SharedInfoPage::new(NonNull::new(shared_va as *mut _).unwrap()) };
    // SAFETY: the boot.S vector stub reads this pointer; it now points at
    // vcpu_info[0].evtchn_upcall_pending (offset 0 of the page).
    unsafe { *core::ptr::addr_of_mut!(pvh_upcall_pending_ptr) = shared_va };
    // SAFETY: the IDT has the EVENT_VECTOR gate installed.
    if let Err(e) = unsafe {
        hypercall::hvm_set_param(
            HVM_PARAM_CALLBACK_IRQ,
            (HVM_PARAM_CALLBACK_TYPE_VECTOR << 56) | EVENT_VECTOR as u64,
        )
    } {
        crate::boot::early_fatal(format_args!("cannot set the event callback vector: {e}"));
    }

    // Memory map: hvm_start_info (version >= 1), else XENMEM_memory_map.
    let mut ram = RegionList::new();
    let mut top = 0u64;
    let mut add = |addr: u64, size: u64| {
        let start = addr.div_ceil(4096).max(0x100); // below 1 MiB: firmware-ish, left alone
        let end = (addr.saturating_add(size).min(IDENTITY_LIMIT)) / 4096;
        if end > start {
            ram.push(start..end);
            top = top.max(end);
        }
    };
    let mut source = "hvm_start_info memmap";
    if si.version >= 1 && si.memmap_entries > 0 && si.memmap_paddr != 0 {
        for i in 0..si.memmap_entries.min(128) as u64 {
            // SAFETY: Xen's memmap table, identity mapped, `memmap_entries` long.
            let e = unsafe {
                core::ptr::read_volatile(
                    (si.memmap_paddr as *const HvmMemmapTableEntry).add(i as usize),
                )
            };
            if e.type_ == XEN_HVM_MEMMAP_TYPE_RAM {
                add(e.addr, e.size);
            }
        }
    } else {
        source = "XENMEM_memory_map";
        let mut buf = [E820Entry::default(); 32];
        match hypercall::memory_map(&mut buf) {
            Ok(n) => {
                for e in &buf[..n] {
                    let (addr, size, ty) = (e.addr, e.size, e.type_);
                    if ty == E820_RAM {
                        add(addr, size);
                    }
                }
            }
            Err(e) => crate::boot::early_fatal(format_args!("no memory map: {e}")),
        }
    }
    let image = super::image_frames();
    ram.remove(image.clone());
    // The start info, its command line and memory map are copied before
    // the allocator runs, except the start info page itself, kept for
    // diagnostics.
    ram.remove((start_info_pa >> 12)..(start_info_pa >> 12) + 1);
    let total_pages = ram.total() + (image.end - image.start);
    // SAFETY: single-threaded boot.
    unsafe { *core::ptr::addr_of_mut!(FOREIGN_BASE) = top.next_multiple_of(1 << 18) << 12 };

    let cmdline = if si.cmdline_paddr != 0 && si.cmdline_paddr < IDENTITY_LIMIT {
        // SAFETY: a NUL-terminated string Xen placed in our memory; read at most 1024 bytes.
        let raw = unsafe { core::slice::from_raw_parts(si.cmdline_paddr as *const u8, 1024) };
        crate::boot::save_cmdline(raw)
    } else {
        &[]
    };

    let param = |p| hypercall::hvm_get_param(p).ok().filter(|&v| v != 0);
    let console = param(HVM_PARAM_CONSOLE_PFN)
        .zip(param(HVM_PARAM_CONSOLE_EVTCHN))
        .map(|(pfn, ch)| {
            (
                (pfn << 12) as *mut xen::abi::console::XenconsInterface,
                ch as u32,
            )
        });
    let store = param(HVM_PARAM_STORE_PFN)
        .zip(param(HVM_PARAM_STORE_EVTCHN))
        .map(|(pfn, ch)| {
            (
                (pfn << 12) as *mut xen::abi::xs_wire::XenstoreDomainInterface,
                ch as u32,
            )
        });

    crate::boot::start(BootInfo {
        guest: GuestType::Pvh,
        cmdline,
        ram,
        memory_source: source,
        shared,
        console,
        store,
        initial_domain: si.flags & xen::abi::xen::SIF_INITDOMAIN != 0,
        total_pages,
        entropy_seed: &[],
    })
}

pub(super) fn idle_block() {
    // `sti; hlt` is atomic with respect to interrupts (the STI shadow), so
    // an event that arrives after the executor's last scan still wakes us:
    // Xen sees IF=1 at the HLT and does not block while one is pending.
    // SAFETY: the IDT's event gate is installed; the vector stub only
    // clears the upcall flag. Interrupts are disabled again before return.
    unsafe { core::arch::asm!("sti; hlt; cli", options(nomem, nostack)) };
}

pub(super) fn map_grant_frames(base: u64, frames: usize) -> Result<(), XenError> {
    for i in 0..frames {
        // SAFETY: the `frames` frames at `base` were taken from the frame
        // allocator for the grant table, for good.
        unsafe {
            hypercall::add_to_physmap(XENMAPSPACE_GRANT_TABLE, i as u64, (base >> 12) + i as u64)?
        };
    }
    Ok(())
}

pub(super) fn foreign_window() -> (u64, usize) {
    // SAFETY: written once at boot.
    (unsafe { *core::ptr::addr_of!(FOREIGN_BASE) }, FOREIGN_PAGES)
}
