//! `xen/grant_table.h`: grant table v1 entries and operations.

use super::{DomId, GrantRef, XenPfn};

/// `GNTTABOP_map_grant_ref`
pub const GNTTABOP_MAP_GRANT_REF: u32 = 0;
/// `GNTTABOP_unmap_grant_ref`
pub const GNTTABOP_UNMAP_GRANT_REF: u32 = 1;
/// `GNTTABOP_setup_table`
pub const GNTTABOP_SETUP_TABLE: u32 = 2;
/// `GNTTABOP_copy`
pub const GNTTABOP_COPY: u32 = 5;
/// `GNTTABOP_query_size`
pub const GNTTABOP_QUERY_SIZE: u32 = 6;

/// `GTF_permit_access`: the entry grants access.
pub const GTF_PERMIT_ACCESS: u16 = 1;
/// `GTF_readonly`: the grantee may only read.
pub const GTF_READONLY: u16 = 1 << 2;
/// `GTF_reading`: set by Xen while the grantee has the frame mapped or is copying from it.
pub const GTF_READING: u16 = 1 << 3;
/// `GTF_writing`: set by Xen while the grantee may write the frame.
pub const GTF_WRITING: u16 = 1 << 4;

/// `GNTMAP_host_map`
pub const GNTMAP_HOST_MAP: u32 = 1 << 1;
/// `GNTMAP_readonly`
pub const GNTMAP_READONLY: u32 = 1 << 2;

/// `GNTCOPY_source_gref`: the source is a grant reference.
pub const GNTCOPY_SOURCE_GREF: u16 = 1 << 0;
/// `GNTCOPY_dest_gref`: the destination is a grant reference.
pub const GNTCOPY_DEST_GREF: u16 = 1 << 1;

/// `GNTST_okay`
pub const GNTST_OKAY: i16 = 0;
/// `GNTTAB_NR_RESERVED_ENTRIES`: entries the toolstack uses (console, xenstore).
pub const GNTTAB_NR_RESERVED_ENTRIES: u32 = 8;

/// `struct grant_entry_v1`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GrantEntryV1 {
    /// `GTF_*`.
    pub flags: u16,
    /// The grantee.
    pub domid: DomId,
    /// The granted frame (guest frame number).
    pub frame: u32,
}

/// `struct gnttab_setup_table`
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GnttabSetupTable {
    /// `DOMID_SELF`.
    pub dom: DomId,
    /// Frames wanted.
    pub nr_frames: u32,
    /// Out: `GNTST_*`.
    pub status: i16,
    /// Out: machine frames of the table (guest handle).
    pub frame_list: *mut XenPfn,
}

/// `struct gnttab_query_size`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GnttabQuerySize {
    /// `DOMID_SELF`.
    pub dom: DomId,
    /// Out: current frames.
    pub nr_frames: u32,
    /// Out: maximum frames.
    pub max_nr_frames: u32,
    /// Out: `GNTST_*`.
    pub status: i16,
}

/// `struct gnttab_copy_ptr`: one end of a grant copy.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GnttabCopyPtr {
    /// A grant reference or a local frame number (the `u` union).
    pub u: u64,
    /// Domain of the grant (or `DOMID_SELF` for a local frame).
    pub domid: DomId,
    /// Byte offset in the frame.
    pub offset: u16,
}

impl GnttabCopyPtr {
    /// The `u.ref` arm.
    pub fn gref(gref: GrantRef, domid: DomId, offset: u16) -> Self {
        Self {
            u: u64::from(gref),
            domid,
            offset,
        }
    }
    /// The `u.gmfn` arm.
    pub fn frame(gmfn: XenPfn, domid: DomId, offset: u16) -> Self {
        Self {
            u: gmfn,
            domid,
            offset,
        }
    }
}

/// `struct gnttab_copy`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GnttabCopy {
    /// Source.
    pub source: GnttabCopyPtr,
    /// Destination.
    pub dest: GnttabCopyPtr,
    /// Bytes to copy (within one page on both ends).
    pub len: u16,
    /// `GNTCOPY_*`.
    pub flags: u16,
    /// Out: `GNTST_*`.
    pub status: i16,
}

/// `struct gnttab_map_grant_ref`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GnttabMapGrantRef {
    /// Where to map: a virtual address (PV) or guest physical address (PVH).
    pub host_addr: u64,
    /// `GNTMAP_*`.
    pub flags: u32,
    /// The grant.
    pub ref_: GrantRef,
    /// The granting domain.
    pub dom: DomId,
    /// Out: `GNTST_*`.
    pub status: i16,
    /// Out: handle for unmap.
    pub handle: u32,
    /// Out: bus address (device mappings).
    pub dev_bus_addr: u64,
}

/// `struct gnttab_unmap_grant_ref`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GnttabUnmapGrantRef {
    /// The address given to map.
    pub host_addr: u64,
    /// The bus address (0 for host mappings).
    pub dev_bus_addr: u64,
    /// The handle map returned.
    pub handle: u32,
    /// Out: `GNTST_*`.
    pub status: i16,
}
