//! Packets as the frontend hands them out and takes them in, with the
//! offload metadata the netif protocol carries beside the bytes.

use alloc::vec::Vec;

pub use xen::netif::{Gso, GsoKind};

/// Offload requests for one transmitted packet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxOffload {
    /// The transport checksum is blank; the backend fills it
    /// (`NETTXF_csum_blank`).
    pub csum_blank: bool,
    /// The checksum is known good (`NETTXF_data_validated`).
    pub data_validated: bool,
    /// Segment it (`XEN_NETIF_EXTRA_TYPE_GSO`).
    pub gso: Option<Gso>,
}

/// A received packet and what the backend said about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RxPacket {
    /// The Ethernet frame.
    pub data: Vec<u8>,
    /// The transport checksum is blank (`NETRXF_csum_blank`).
    pub csum_blank: bool,
    /// The checksum was validated (`NETRXF_data_validated`).
    pub data_validated: bool,
    /// The packet is a GSO super-packet.
    pub gso: Option<Gso>,
}
