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
    fn new(handler: u64) -> Gate {
        Gate {
            offset_lo: handler as u16,
            selector: 0x08,
            ist: 0,
            attrs: 0x8E, // present, DPL 0, interrupt gate (IF cleared on entry)
            offset_mid: (handler >> 16) as u16,
            offset_hi: (handler >> 32) as u32,
            reserved: 0,
        }
    }
}

static mut IDT: [Gate; 256] = [Gate::EMPTY; 256];

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
            idt[v] = Gate::new(h as *const () as u64);
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
    load_idt();
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
