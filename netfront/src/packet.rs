//! Packets as the frontend hands them out and takes them in, with the
//! offload metadata the netif protocol carries beside the bytes.

use alloc::vec::Vec;
use xen::abi::netif::{XEN_NETIF_GSO_TYPE_TCPV4, XEN_NETIF_GSO_TYPE_TCPV6};

/// Which segmentation offload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GsoKind {
    /// TCP over IPv4 (`XEN_NETIF_GSO_TYPE_TCPV4`).
    TcpV4,
    /// TCP over IPv6 (`XEN_NETIF_GSO_TYPE_TCPV6`).
    TcpV6,
}

impl GsoKind {
    /// The wire value.
    pub fn to_wire(self) -> u8 {
        match self {
            GsoKind::TcpV4 => XEN_NETIF_GSO_TYPE_TCPV4,
            GsoKind::TcpV6 => XEN_NETIF_GSO_TYPE_TCPV6,
        }
    }

    /// From the wire value; `None` for none/unknown.
    pub fn from_wire(v: u8) -> Option<Self> {
        match v {
            XEN_NETIF_GSO_TYPE_TCPV4 => Some(GsoKind::TcpV4),
            XEN_NETIF_GSO_TYPE_TCPV6 => Some(GsoKind::TcpV6),
            _ => None,
        }
    }
}

/// A large packet to be (or that was) cut into `mss`-sized TCP segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gso {
    /// Protocol.
    pub kind: GsoKind,
    /// Maximum segment payload.
    pub mss: u16,
}

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
