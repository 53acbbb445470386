//! The header of a generic shared ring page (`xen/include/public/io/ring.h`,
//! `struct NAME_sring` from `DEFINE_RING_TYPES`). The slot array of
//! `union { req; rsp; }` follows at [`SRING_SLOTS_OFFSET`].

/// Free-running ring index (`RING_IDX`).
pub type RingIdx = u32;

/// Header of a shared ring page (the fixed part of `struct NAME_sring`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SringHeader {
    /// Requests published by the frontend.
    pub req_prod: RingIdx,
    /// The backend wants an event when `req_prod` passes this.
    pub req_event: RingIdx,
    /// Responses published by the backend.
    pub rsp_prod: RingIdx,
    /// The frontend wants an event when `rsp_prod` passes this.
    pub rsp_event: RingIdx,
    /// Protocol-private bytes (`pvt`: `netif.smartpoll_active` etc.).
    pub pvt: [u8; 4],
    /// Padding up to the slot array (`__pad`).
    pub pad: [u8; 44],
}

/// Offset of the slot array in the page (`offsetof(struct NAME_sring, ring)`
/// for slots aligned to at most 64 bytes).
pub const SRING_SLOTS_OFFSET: usize = core::mem::size_of::<SringHeader>();
