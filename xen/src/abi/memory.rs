//! `xen/memory.h`: memory reservation and physmap operations.

use super::{DomId, XenPfn};

/// `XENMEM_add_to_physmap`
pub const XENMEM_ADD_TO_PHYSMAP: u32 = 7;
/// `XENMEM_memory_map`: the domain's pseudo-physical E820 map.
pub const XENMEM_MEMORY_MAP: u32 = 9;
/// `XENMAPSPACE_shared_info`
pub const XENMAPSPACE_SHARED_INFO: u32 = 0;
/// `XENMAPSPACE_grant_table`
pub const XENMAPSPACE_GRANT_TABLE: u32 = 1;
/// E820 type of usable RAM.
pub const E820_RAM: u32 = 1;

/// `struct xen_add_to_physmap`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct XenAddToPhysmap {
    /// `DOMID_SELF`.
    pub domid: DomId,
    /// Number of pages (gmfn_range only).
    pub size: u16,
    /// `XENMAPSPACE_*`.
    pub space: u32,
    /// Index in the space (e.g. grant frame number).
    pub idx: u64,
    /// Guest frame to map it at.
    pub gpfn: XenPfn,
}

/// `struct xen_memory_map`
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct XenMemoryMap {
    /// In: capacity of `buffer` in entries; out: entries written.
    pub nr_entries: u32,
    /// Array of [`E820Entry`] (guest handle).
    pub buffer: *mut E820Entry,
}

/// One E820 entry as `XENMEM_memory_map` writes it: the packed 20-byte
/// BIOS layout (Xen's public headers leave it to the PC convention, so this
/// one is checked by size only).
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default)]
pub struct E820Entry {
    /// Base address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// `E820_*` type.
    pub type_: u32,
}
