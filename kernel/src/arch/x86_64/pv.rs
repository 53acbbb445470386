//! The PV path: Xen built our page tables and owns them. We map the rest of
//! RAM (Xen maps only the boot image plus at least 512 KiB), map Xen's
//! frames (shared info, grant table) by machine address, and register the
//! event and exception callbacks.
//!
//! Page-table pages are read-only to a PV guest: every write is an
//! `mmu_update` that Xen validates, and a fresh table page must be made
//! read-only in our own mapping before it is hooked in.

use core::ptr::NonNull;

use xen::abi::xen::{
    hypercall as nr, MmuUpdate, StartInfo, TrapInfo, FLAT_KERNEL_CS64, MACH2PHYS_VIRT_START,
    MMU_NORMAL_PT_UPDATE, SET_TRAP_TABLE, SIF_INITDOMAIN, UVMF_INVLPG,
};
use xen::hypercall::{self, XenError};
use xen::shared_info::SharedInfoPage;

use super::{xen_page_addr, GuestType, GUEST};
use crate::boot::{BootInfo, RegionList};

const PTE_PRESENT: u64 = 1;
const PTE_RW: u64 = 2;
const PTE_USER: u64 = 4;
const PTE_ACCESSED: u64 = 0x20;
const PTE_DIRTY: u64 = 0x40;
const PTE_NX: u64 = super::pte::NX;
const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;
/// Leaf mapping of ordinary memory.
const PTE_DATA: u64 = PTE_PRESENT | PTE_RW | PTE_USER | PTE_ACCESSED | PTE_DIRTY;
/// Intermediate tables.
const PTE_TABLE: u64 = PTE_PRESENT | PTE_RW | PTE_USER | PTE_ACCESSED;
/// The foreign-mapping window: 512 GiB up, one L4 slot away from RAM.
const FOREIGN_WINDOW: u64 = 0x80_0000_0000;
const FOREIGN_PAGES: usize = 512;

extern "C" {
    static boot_rsp: u64;
    fn pv_event_callback();
    fn pv_failsafe_callback();
    fn pv_exc_de();
    fn pv_exc_ud();
    fn pv_exc_gp();
    fn pv_exc_pf();
}

/// The PV page-table editor.
struct Mmu {
    l4: u64,
    /// Address of Xen's pfn-to-mfn list (`start_info.mfn_list`).
    mfn_list: u64,
    nr_pages: u64,
    /// Next frame to use for a new page table (inside the mapped region).
    next_pt: u64,
    /// The NX bit when the CPU has it (Xen then allows it in PV
    /// entries), else 0.
    nx: u64,
}

fn m2p(mfn: u64) -> u64 {
    // SAFETY: Xen maps the read-only machine-to-physical table for every
    // 64-bit PV guest at MACH2PHYS_VIRT_START; every machine frame we hold
    // has an entry.
    unsafe { core::ptr::read_volatile((MACH2PHYS_VIRT_START as *const u64).add(mfn as usize)) }
}

fn read_entry(table: u64, index: usize) -> u64 {
    // SAFETY: `table` is the virtual address of a mapped page-table page
    // (Xen's bootstrap tables or ones we made), `index` < 512.
    unsafe { core::ptr::read_volatile((table as *const u64).add(index & 511)) }
}

impl Mmu {
    fn p2m(&self, pfn: u64) -> u64 {
        assert!(pfn < self.nr_pages, "pfn {pfn:#x} beyond nr_pages");
        // SAFETY: Xen maps the pfn-to-mfn list (`mfn_list`, nr_pages entries) in the bootstrap region.
        unsafe { core::ptr::read_volatile((self.mfn_list as *const u64).add(pfn as usize)) }
    }

    fn table_of(entry: u64) -> Option<u64> {
        (entry & PTE_PRESENT != 0).then(|| m2p((entry & ADDR_MASK) >> 12) << 12)
    }

    fn write(&self, table: u64, updates: &[(usize, u64)]) -> Result<(), XenError> {
        let base = self.p2m(table >> 12) << 12;
        let mut reqs = [MmuUpdate::default(); 64];
        for chunk in updates.chunks(reqs.len()) {
            for (r, &(i, v)) in reqs.iter_mut().zip(chunk) {
                *r = MmuUpdate {
                    ptr: (base + (i as u64 & 511) * 8) | MMU_NORMAL_PT_UPDATE,
                    val: v,
                };
            }
            // SAFETY: each request writes one entry of a page table of ours
            // with a frame of ours (or, for tables, a fresh zeroed frame);
            // Xen validates them and no Rust reference covers these VAs.
            unsafe { hypercall::mmu_update(&reqs[..chunk.len()])? };
        }
        Ok(())
    }

    /// Takes the next free frame, zeroes it and makes our mapping of it
    /// read-only, as Xen requires of page-table pages.
    fn new_table(&mut self) -> Result<u64, XenError> {
        let pfn = self.next_pt;
        self.next_pt += 1;
        let va = pfn << 12;
        // SAFETY: `pfn` is a free frame inside the initially mapped region
        // (after Xen's bootstrap stack, within the guaranteed 512 KiB), not
        // used by anything else.
        unsafe { core::ptr::write_bytes(va as *mut u8, 0, 4096) };
        let mfn = self.p2m(pfn);
        // SAFETY: remaps our own free frame read-only at its own address.
        unsafe {
            hypercall::update_va_mapping(
                va,
                (mfn << 12) | PTE_PRESENT | PTE_USER | PTE_ACCESSED | self.nx,
                UVMF_INVLPG,
            )?
        };
        Ok(va)
    }

    fn child(&mut self, table: u64, index: usize) -> Result<u64, XenError> {
        if let Some(t) = Self::table_of(read_entry(table, index)) {
            return Ok(t);
        }
        let new = self.new_table()?;
        self.write(table, &[(index, (self.p2m(new >> 12) << 12) | PTE_TABLE)])?;
        Ok(new)
    }

    /// The L1 table covering `va`, created if missing.
    fn l1_for(&mut self, va: u64) -> Result<u64, XenError> {
        let l3 = self.child(self.l4, (va >> 39) as usize & 511)?;
        let l2 = self.child(l3, (va >> 30) as usize & 511)?;
        self.child(l2, (va >> 21) as usize & 511)
    }

    /// Maps pfn N at VA N << 12, non-executable, for every pfn in `pfns`
    /// not mapped yet, and makes the pages Xen mapped outside the image
    /// (start info, the pfn-to-mfn list, the bootstrap page tables and
    /// stack, the padding) non-executable too, keeping their other bits.
    /// The image's own pages (`image`) are [`Mmu::protect_image`]'s.
    fn map_identity(
        &mut self,
        pfns: core::ops::Range<u64>,
        image: core::ops::Range<u64>,
    ) -> Result<(), XenError> {
        let mut pfn = pfns.start;
        while pfn < pfns.end {
            let chunk_end = ((pfn | 511) + 1).min(pfns.end);
            let l1 = self.l1_for(pfn << 12)?;
            let mut ups = [(0usize, 0u64); 512];
            let mut n = 0;
            for p in pfn..chunk_end {
                let i = (p & 511) as usize;
                let old = read_entry(l1, i);
                if image.contains(&p) {
                    // protect_image's (a guard page stays unmapped).
                    continue;
                } else if old & PTE_PRESENT == 0 {
                    ups[n] = (i, (self.p2m(p) << 12) | PTE_DATA | self.nx);
                    n += 1;
                } else if old & self.nx != self.nx {
                    ups[n] = (i, old | self.nx);
                    n += 1;
                }
            }
            self.write(l1, &ups[..n])?;
            pfn = chunk_end;
        }
        Ok(())
    }

    /// Maps the image's pages by `layout` (W^X): text read-only and
    /// executable, notes and rodata read-only, data/bss/stacks writable,
    /// all but text non-executable, guard pages not present.
    fn protect_image(&mut self, layout: &crate::protection::Layout) -> Result<(), XenError> {
        let (start, end) = (layout.image.start >> 12, layout.image.end.div_ceil(4096));
        let mut pfn = start;
        while pfn < end {
            let chunk_end = ((pfn | 511) + 1).min(end);
            let l1 = self.l1_for(pfn << 12)?;
            let mut ups = [(0usize, 0u64); 512];
            for (n, p) in (pfn..chunk_end).enumerate() {
                let v = match super::leaf_flags(layout.kind(p << 12), self.nx) {
                    Some(f) => {
                        let dirty = if f & PTE_RW != 0 { PTE_DIRTY } else { 0 };
                        (self.p2m(p) << 12) | f | PTE_USER | PTE_ACCESSED | dirty
                    }
                    None => 0,
                };
                ups[n] = ((p & 511) as usize, v);
            }
            self.write(l1, &ups[..(chunk_end - pfn) as usize])?;
            pfn = chunk_end;
        }
        Ok(())
    }
}

/// The page-table editor, set once by [`moat_pv_start`]. A lock rather
/// than a `static mut`, so that no caller ever holds a `&mut Mmu` another
/// can alias: every use is a short critical section in [`with_mmu`].
static MMU: spin::Mutex<Option<Mmu>> = spin::Mutex::new(None);

/// Runs `f` on the page-table editor. Panics (a boot bug) if called
/// before `moat_pv_start` set it up, or from inside `f` (the lock is not
/// re-entrant; nothing in `Mmu` calls back out).
fn with_mmu<R>(f: impl FnOnce(&mut Mmu) -> R) -> R {
    let mut guard = MMU.lock();
    f(guard.as_mut().expect("PV MMU not initialised"))
}

fn register_callbacks() {
    // SAFETY: the handlers are the assembly stubs of boot.S, which follow
    // Xen's PV callback frame layout.
    unsafe {
        hypercall::hypercall(
            nr::SET_CALLBACKS,
            pv_event_callback as *const () as usize,
            pv_failsafe_callback as *const () as usize,
            0,
            0,
            0,
        );
        let traps = [
            TrapInfo {
                vector: 0,
                flags: 0,
                cs: FLAT_KERNEL_CS64,
                address: pv_exc_de as *const () as u64,
            },
            TrapInfo {
                vector: 6,
                flags: 0,
                cs: FLAT_KERNEL_CS64,
                address: pv_exc_ud as *const () as u64,
            },
            TrapInfo {
                vector: 13,
                flags: 0,
                cs: FLAT_KERNEL_CS64,
                address: pv_exc_gp as *const () as u64,
            },
            TrapInfo {
                vector: 14,
                flags: 0,
                cs: FLAT_KERNEL_CS64,
                address: pv_exc_pf as *const () as u64,
            },
            TrapInfo::default(),
        ];
        hypercall::hypercall(SET_TRAP_TABLE, traps.as_ptr() as usize, 0, 0, 0, 0);
    }
}

/// Rust entry of the PV path (called by `pv_entry` on the boot stack).
#[no_mangle]
extern "C" fn moat_pv_start(si: *const StartInfo) -> ! {
    GUEST.store(0, core::sync::atomic::Ordering::Relaxed);
    register_callbacks();
    super::fpu::init_pv();
    // SAFETY: Xen passes a mapped start_info page in %rsi.
    let si = unsafe { core::ptr::read_volatile(si) };

    // SAFETY: boot_rsp was written by pv_entry.
    let first_free =
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!(boot_rsp)) }.div_ceil(4096);
    let nx = if super::cpu_has_nx() { PTE_NX } else { 0 };
    *MMU.lock() = Some(Mmu {
        l4: si.pt_base,
        mfn_list: si.mfn_list,
        nr_pages: si.nr_pages,
        next_pt: first_free,
        nx,
    });
    // W^X and the guard pages, before anything maps over the image.
    let layout = super::layout();
    if let Err(e) = with_mmu(|m| m.protect_image(&layout)) {
        crate::boot::early_fatal(format_args!("cannot protect the image: {e}"));
    }
    super::NX_ON.store(nx != 0, core::sync::atomic::Ordering::Relaxed);

    // Shared info: map Xen's page over our reserved page.
    let shared_va = xen_page_addr(0);
    // SAFETY: XEN_PAGES[0] is reserved for this mapping; nothing references it.
    if let Err(e) = unsafe {
        hypercall::update_va_mapping(shared_va, si.shared_info | PTE_DATA | nx, UVMF_INVLPG)
    } {
        crate::boot::early_fatal(format_args!("cannot map shared info: {e}"));
    }
    // SAFETY: the page at `shared_va` is now the shared info page.
    let shared = unsafe { SharedInfoPage::new(NonNull::new(shared_va as *mut _).unwrap()) };
    shared.set_upcall_mask(0, true);

    // The rest of RAM: pfn N at VA N << 12.
    let image = super::image_frames();
    if let Err(e) = with_mmu(|m| m.map_identity(1..si.nr_pages, image.clone())) {
        crate::boot::early_fatal(format_args!("cannot map RAM: {e}"));
    }
    // The foreign-mapping window gets its page tables now (entries stay empty).
    if let Err(e) = with_mmu(|m| m.l1_for(FOREIGN_WINDOW)) {
        crate::boot::early_fatal(format_args!(
            "cannot create the foreign mapping window: {e}"
        ));
    }
    let mut ram = RegionList::new();
    ram.push(1..image.start);
    ram.push(with_mmu(|m| m.next_pt)..si.nr_pages);

    let initial_domain = si.flags & SIF_INITDOMAIN != 0;
    let console = (!initial_domain && si.console.mfn != 0).then(|| {
        (
            (m2p(si.console.mfn) << 12) as *mut xen::abi::console::XenconsInterface,
            si.console.evtchn,
        )
    });
    let store = (si.store_mfn != 0).then(|| {
        (
            (m2p(si.store_mfn) << 12) as *mut xen::abi::xs_wire::XenstoreDomainInterface,
            si.store_evtchn,
        )
    });

    crate::boot::start(BootInfo {
        guest: GuestType::Pv,
        cmdline: crate::boot::save_cmdline(&si.cmd_line),
        ram,
        memory_source: "start_info.nr_pages",
        shared,
        console,
        store,
        initial_domain,
        total_pages: si.nr_pages,
        entropy_seed: &[],
    })
}

pub(super) fn idle_block(shared: &SharedInfoPage) {
    // SCHEDOP_block unmasks events; the callback (or we, if it did not
    // run) masks them again before anything else executes.
    let _ = hypercall::sched_block();
    shared.set_upcall_mask(0, true);
}

pub(super) fn map_grant_frames(base: u64, frames: usize) -> Result<(), XenError> {
    let mut mfns = [0u64; xen::grant::MAX_TABLE_FRAMES as usize];
    let frames = frames.min(mfns.len());
    hypercall::gnttab_setup_table(&mut mfns[..frames])?;
    for (i, mfn) in mfns[..frames].iter().enumerate() {
        // SAFETY: the `frames` pages at `base` were taken from the frame
        // allocator for the grant table, for good; nothing references them.
        unsafe {
            hypercall::update_va_mapping(
                base + i as u64 * 4096,
                (mfn << 12) | PTE_DATA | with_mmu(|m| m.nx),
                UVMF_INVLPG,
            )?
        };
    }
    Ok(())
}

/// `(writable, no-execute)` of `addr` in our page tables (mapped
/// read-only at their pfn's address; entries hold machine frames).
pub(super) fn walk(addr: u64) -> Option<(bool, bool)> {
    let l4 = with_mmu(|m| m.l4);
    super::walk_tables(l4, addr, |ma| m2p(ma >> 12) << 12)
}

pub(super) fn pfn_to_mfn(pfn: u64) -> u64 {
    with_mmu(|m| m.p2m(pfn))
}

pub(super) fn foreign_window() -> (u64, usize) {
    (FOREIGN_WINDOW, FOREIGN_PAGES)
}

pub(super) fn fault_address() -> u64 {
    // SAFETY: vcpu_info[0].arch.cr2 is at offset 16 of the mapped shared info page.
    unsafe { core::ptr::read_volatile((xen_page_addr(0) + 16) as *const u64) }
}
