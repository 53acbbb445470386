//! `io/netif.h`: the PV network device protocol's ring slots.
//!
//! Two rings per queue: TX (guest to backend) carries [`NetifTxRequest`] /
//! [`NetifTxResponse`], RX (backend to guest) carries [`NetifRxRequest`] /
//! [`NetifRxResponse`]. A [`NetifExtraInfo`] overlays a TX request slot (when
//! the previous request has `NETTXF_extra_info`) or an RX response slot (when
//! the previous response has `NETRXF_extra_info`); it converts to and from
//! those slot types by its bytes, at the C layout's offsets.

use super::GrantRef;

/// `XEN_NETIF_NR_SLOTS_MIN`: the fewest slots a backend must accept for one
/// packet; a frontend never uses more.
pub const XEN_NETIF_NR_SLOTS_MIN: usize = 18;
/// `XEN_NETIF_MAX_TX_SIZE`: largest packet one TX request chain describes.
pub const XEN_NETIF_MAX_TX_SIZE: usize = 0xFFFF;

/// `NETTXF_csum_blank`: the protocol checksum is blank (to be filled).
pub const NETTXF_CSUM_BLANK: u16 = 1 << 0;
/// `NETTXF_data_validated`: the packet's checksum was already validated.
pub const NETTXF_DATA_VALIDATED: u16 = 1 << 1;
/// `NETTXF_more_data`: the packet continues in the next request.
pub const NETTXF_MORE_DATA: u16 = 1 << 2;
/// `NETTXF_extra_info`: the next slot is a [`NetifExtraInfo`].
pub const NETTXF_EXTRA_INFO: u16 = 1 << 3;

/// `NETRXF_data_validated`: the backend validated the checksum.
pub const NETRXF_DATA_VALIDATED: u16 = 1 << 0;
/// `NETRXF_csum_blank`: the protocol checksum is blank.
pub const NETRXF_CSUM_BLANK: u16 = 1 << 1;
/// `NETRXF_more_data`: the packet continues in the next response.
pub const NETRXF_MORE_DATA: u16 = 1 << 2;
/// `NETRXF_extra_info`: the next slot is a [`NetifExtraInfo`].
pub const NETRXF_EXTRA_INFO: u16 = 1 << 3;
/// `NETRXF_gso_prefix`: deprecated GSO prefix descriptor.
pub const NETRXF_GSO_PREFIX: u16 = 1 << 4;

/// `XEN_NETIF_EXTRA_TYPE_NONE`: never valid.
pub const XEN_NETIF_EXTRA_TYPE_NONE: u8 = 0;
/// `XEN_NETIF_EXTRA_TYPE_GSO`: segmentation offload (`u.gso`).
pub const XEN_NETIF_EXTRA_TYPE_GSO: u8 = 1;
/// `XEN_NETIF_EXTRA_TYPE_MCAST_ADD`: subscribe a multicast address.
pub const XEN_NETIF_EXTRA_TYPE_MCAST_ADD: u8 = 2;
/// `XEN_NETIF_EXTRA_TYPE_MCAST_DEL`: unsubscribe a multicast address.
pub const XEN_NETIF_EXTRA_TYPE_MCAST_DEL: u8 = 3;
/// `XEN_NETIF_EXTRA_TYPE_HASH`: a packet hash value (`u.hash`).
pub const XEN_NETIF_EXTRA_TYPE_HASH: u8 = 4;
/// `XEN_NETIF_EXTRA_TYPE_MAX`: one past the last known type.
pub const XEN_NETIF_EXTRA_TYPE_MAX: u8 = 5;
/// `XEN_NETIF_EXTRA_FLAG_MORE`: another extra info slot follows.
pub const XEN_NETIF_EXTRA_FLAG_MORE: u8 = 1 << 0;

/// `XEN_NETIF_GSO_TYPE_NONE`: no segmentation.
pub const XEN_NETIF_GSO_TYPE_NONE: u8 = 0;
/// `XEN_NETIF_GSO_TYPE_TCPV4`: TCP over IPv4 segmentation.
pub const XEN_NETIF_GSO_TYPE_TCPV4: u8 = 1;
/// `XEN_NETIF_GSO_TYPE_TCPV6`: TCP over IPv6 segmentation.
pub const XEN_NETIF_GSO_TYPE_TCPV6: u8 = 2;

/// `NETIF_RSP_DROPPED`: the packet was dropped.
pub const NETIF_RSP_DROPPED: i16 = -2;
/// `NETIF_RSP_ERROR`: the request was malformed or failed.
pub const NETIF_RSP_ERROR: i16 = -1;
/// `NETIF_RSP_OKAY`: done.
pub const NETIF_RSP_OKAY: i16 = 0;
/// `NETIF_RSP_NULL`: a response for an extra info slot.
pub const NETIF_RSP_NULL: i16 = 1;

/// `struct netif_tx_request`: one fragment of a packet to send.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetifTxRequest {
    /// The granted page holding the fragment.
    pub gref: GrantRef,
    /// Offset of the fragment in that page.
    pub offset: u16,
    /// `NETTXF_*`.
    pub flags: u16,
    /// Echoed in the response.
    pub id: u16,
    /// In the first request: the whole packet's size; later: this fragment's.
    pub size: u16,
}
crate::impl_plain_data!(NetifTxRequest {
    gref,
    offset,
    flags,
    id,
    size
});

/// `struct netif_tx_response`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetifTxResponse {
    /// The request's `id`.
    pub id: u16,
    /// `NETIF_RSP_*`.
    pub status: i16,
}
crate::impl_plain_data!(NetifTxResponse { id, status });

/// `struct netif_rx_request`: a granted page the backend may fill.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetifRxRequest {
    /// Echoed in the response.
    pub id: u16,
    /// Padding (`pad`).
    pub pad: u16,
    /// The granted page.
    pub gref: GrantRef,
}
crate::impl_plain_data!(NetifRxRequest { id, pad, gref });

/// `struct netif_rx_response`: a filled buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetifRxResponse {
    /// The request's `id`.
    pub id: u16,
    /// Offset of the data in the page.
    pub offset: u16,
    /// `NETRXF_*`.
    pub flags: u16,
    /// Bytes of data if positive, else `NETIF_RSP_*`.
    pub status: i16,
}
crate::impl_plain_data!(NetifRxResponse {
    id,
    offset,
    flags,
    status
});

/// `struct netif_extra_info`; the union `u` is kept as its six raw bytes,
/// read through the typed accessors for the arm `type_` selects.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetifExtraInfo {
    /// `XEN_NETIF_EXTRA_TYPE_*`.
    pub type_: u8,
    /// `XEN_NETIF_EXTRA_FLAG_*`.
    pub flags: u8,
    /// The union's bytes.
    pub u: [u8; 6],
}
crate::impl_plain_data!(NetifExtraInfo { type_, flags, u });

/// The `u.gso` arm of [`NetifExtraInfo`], laid out as the whole struct (its
/// offsets are the C struct's, checked by the ABI test).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetifExtraInfoGso {
    /// `XEN_NETIF_EXTRA_TYPE_GSO`.
    pub type_: u8,
    /// `XEN_NETIF_EXTRA_FLAG_*`.
    pub flags: u8,
    /// `u.gso.size`: maximum payload of one segment.
    pub size: u16,
    /// `u.gso.type`: `XEN_NETIF_GSO_TYPE_*`.
    pub gso_type: u8,
    /// `u.gso.pad`.
    pub pad: u8,
    /// `u.gso.features`: none defined; zero.
    pub features: u16,
}

impl NetifExtraInfo {
    /// The slot's eight bytes, as they sit in the ring.
    pub fn to_bytes(self) -> [u8; 8] {
        let mut b = [0; 8];
        b[0] = self.type_;
        b[1] = self.flags;
        b[2..].copy_from_slice(&self.u);
        b
    }

    /// From the slot's eight bytes.
    pub fn from_bytes(b: [u8; 8]) -> Self {
        let [type_, flags, u0, u1, u2, u3, u4, u5] = b;
        Self {
            type_,
            flags,
            u: [u0, u1, u2, u3, u4, u5],
        }
    }

    /// A GSO extra info.
    pub fn gso(gso: NetifExtraInfoGso) -> Self {
        let [s0, s1] = gso.size.to_ne_bytes();
        let [f0, f1] = gso.features.to_ne_bytes();
        Self {
            type_: gso.type_,
            flags: gso.flags,
            u: [s0, s1, gso.gso_type, gso.pad, f0, f1],
        }
    }

    /// The `u.gso` view of this slot (meaningful when `type_` is GSO).
    pub fn as_gso(self) -> NetifExtraInfoGso {
        let [s0, s1, gso_type, pad, f0, f1] = self.u;
        NetifExtraInfoGso {
            type_: self.type_,
            flags: self.flags,
            size: u16::from_ne_bytes([s0, s1]),
            gso_type,
            pad,
            features: u16::from_ne_bytes([f0, f1]),
        }
    }

    /// This extra info as the TX request slot it occupies.
    pub fn to_tx_request(self) -> NetifTxRequest {
        let [a, b, c, d, e, f, g, h] = self.to_bytes();
        NetifTxRequest {
            gref: u32::from_ne_bytes([a, b, c, d]),
            offset: u16::from_ne_bytes([e, f]),
            flags: u16::from_ne_bytes([g, h]),
            id: 0,
            size: 0,
        }
    }

    /// The extra info a TX request slot holds.
    pub fn from_tx_request(req: NetifTxRequest) -> Self {
        let [a, b, c, d] = req.gref.to_ne_bytes();
        let [e, f] = req.offset.to_ne_bytes();
        let [g, h] = req.flags.to_ne_bytes();
        Self::from_bytes([a, b, c, d, e, f, g, h])
    }

    /// This extra info as the RX response slot it occupies.
    pub fn to_rx_response(self) -> NetifRxResponse {
        let [a, b, c, d, e, f, g, h] = self.to_bytes();
        NetifRxResponse {
            id: u16::from_ne_bytes([a, b]),
            offset: u16::from_ne_bytes([c, d]),
            flags: u16::from_ne_bytes([e, f]),
            status: i16::from_ne_bytes([g, h]),
        }
    }

    /// The extra info an RX response slot holds.
    pub fn from_rx_response(rsp: NetifRxResponse) -> Self {
        let [a, b] = rsp.id.to_ne_bytes();
        let [c, d] = rsp.offset.to_ne_bytes();
        let [e, f] = rsp.flags.to_ne_bytes();
        let [g, h] = rsp.status.to_ne_bytes();
        Self::from_bytes([a, b, c, d, e, f, g, h])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_info_round_trips_through_both_slot_kinds() {
        let gso = NetifExtraInfoGso {
            type_: XEN_NETIF_EXTRA_TYPE_GSO,
            flags: XEN_NETIF_EXTRA_FLAG_MORE,
            size: 1448,
            gso_type: XEN_NETIF_GSO_TYPE_TCPV6,
            pad: 0,
            features: 0x0102,
        };
        let e = NetifExtraInfo::gso(gso);
        assert_eq!(e.as_gso(), gso);
        assert_eq!(NetifExtraInfo::from_tx_request(e.to_tx_request()), e);
        assert_eq!(NetifExtraInfo::from_rx_response(e.to_rx_response()), e);
        assert_eq!(e.to_bytes()[0], XEN_NETIF_EXTRA_TYPE_GSO);
        assert_eq!(&e.to_bytes()[2..4], &1448u16.to_ne_bytes());
    }
}
