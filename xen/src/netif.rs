//! Typed values of the netif protocol that both halves use (the raw
//! structs and constants are in [`crate::abi::netif`]).

use crate::abi::netif::{XEN_NETIF_GSO_TYPE_TCPV4, XEN_NETIF_GSO_TYPE_TCPV6};

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

    /// From the wire value; `None` for none or unknown.
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
    /// Largest segment payload.
    pub mss: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gso_kinds_round_trip_and_unknown_is_none() {
        for k in [GsoKind::TcpV4, GsoKind::TcpV6] {
            assert_eq!(GsoKind::from_wire(k.to_wire()), Some(k));
        }
        assert_eq!(GsoKind::from_wire(0), None);
        assert_eq!(GsoKind::from_wire(200), None);
    }
}
