//! The arm32 arch layer: the `arm32` crate's surface (the same names as
//! the amd64 module's), and the kernel's side of the arm32 boot, which
//! turns what the arm32 entry found into a [`crate::boot::BootInfo`].

pub use crate::foreign::{ForeignPage, ForeignWriteError, MapError};
pub use arm32::*;

use crate::boot::{BootInfo, RegionList};

/// Maps the grant table into the region the device tree reserves (the
/// arm32 crate's `map_grant_table`; the frame allocator is not needed
/// there, the signature is the amd64 module's).
pub fn map_grant_table(
    _allocator: &spin::Mutex<crate::frames::FrameAllocator<'static>>,
) -> Result<(core::ptr::NonNull<xen::abi::grant_table::GrantEntryV1>, u32), xen::hypercall::XenError>
{
    arm32::map_grant_table()
}

/// Provokes `probe`'s fault on purpose (the selftest's `selftest.fault=`):
/// with the image mapped as it should be this never returns (the abort
/// handler reports the violation and crashes the domain); it returns only
/// when the protection is missing.
pub fn provoke(probe: crate::protection::Probe) {
    use crate::protection::Probe;
    match probe {
        Probe::WriteText => arm32::provoke_write_text(),
        Probe::ExecData => arm32::provoke_exec_data(),
        Probe::StackOverflow => arm32::provoke_stack_overflow(),
    }
}

/// The rights the translation table gives `addr` (`None`: not mapped).
pub fn page_rights(addr: u64) -> Option<crate::protection::PageRights> {
    let (write, execute) = arm32::page_rights(u32::try_from(addr).ok()?)?;
    Some(crate::protection::PageRights { write, execute })
}

/// Execute-never is always in force on ARMv7 (XN).
pub fn nx_enforced() -> bool {
    true
}

/// ARMv7 has no random-number instruction: always `None` (the entropy
/// generator is seeded from the device tree's `/chosen/rng-seed`, or from
/// timer jitter, see `crate::entropy`).
pub fn hardware_random(_out: &mut [u8]) -> Option<crate::entropy::Source> {
    None
}

/// Called by the arm32 entry once the MMU is on and Xen's pages are
/// mapped.
#[no_mangle]
fn __moat_arm32_main(boot: Boot) -> ! {
    let cmdline = crate::boot::save_cmdline(boot.dt.bootargs);
    let mut ram = RegionList::default();
    let mut total_pages = 0;
    for bank in ram_banks(&boot.dt) {
        total_pages += bank.end - bank.start;
        ram.push(bank);
    }
    // The image with its .bss, the device tree, and the low 32 KiB below
    // the image that xl leaves unused (kept out of reach all the same).
    let image = image_frames();
    ram.remove(image.start.saturating_sub(8)..image.end);
    ram.remove((boot.dtb.start >> 12)..boot.dtb.end.div_ceil(4096));
    crate::boot::start(BootInfo {
        guest: guest_type(),
        cmdline,
        ram,
        memory_source: "device tree",
        total_pages,
        shared: boot.shared,
        console: boot.console,
        store: boot.store,
        initial_domain: false,
        entropy_seed: boot.dt.rng_seed,
    })
}
