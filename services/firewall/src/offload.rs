//! The fast path's offloads: what a frame's link says about its checksum
//! and segmentation ([`Offload`], the flags of Xen's netif protocol:
//! `NETTXF_csum_blank`, `NETTXF_data_validated`, the GSO extra info), what
//! a link accepts ([`Capabilities`]), and the software fallbacks for a link
//! that does not: completing a blank checksum ([`complete_checksum`]) and
//! cutting a TCP super-packet into segments ([`segment`]).
//!
//! A blank ("partial") checksum field holds the sum of the pseudo-header
//! only, not complemented (Linux's `CHECKSUM_PARTIAL`); whoever sends the
//! frame on (a NIC, dom0, or [`complete_checksum`]) adds the segment's
//! bytes and complements. NAT keeps such a field right by adding the change
//! of a pseudo-header field (an address) and leaving it alone when a field
//! of the segment (a port) changes: see [`crate::packet::IpPacket`]. The
//! partial sum of a GSO super-packet covers the super-packet's length, as
//! Linux's segmentation expects.

use alloc::vec::Vec;

use crate::checksum;
use crate::link::ETHERNET_HEADER_LEN;
use crate::packet::{self, IpHeader, Transport};

/// Which TCP segmentation offload a super-packet asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GsoKind {
    /// TCP over IPv4 (`XEN_NETIF_GSO_TYPE_TCPV4`).
    TcpV4,
    /// TCP over IPv6 (`XEN_NETIF_GSO_TYPE_TCPV6`).
    TcpV6,
}

/// A GSO super-packet: to be cut into TCP segments of `mss` payload bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gso {
    /// The protocol.
    pub kind: GsoKind,
    /// Largest segment payload.
    pub mss: u16,
}

/// A frame's offload flags, as its link gave them or as they go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offload {
    /// The TCP/UDP checksum field holds only the pseudo-header sum: the
    /// next hop fills it.
    pub csum_blank: bool,
    /// The checksum was verified (or is known good).
    pub data_validated: bool,
    /// A GSO super-packet.
    pub gso: Option<Gso>,
}

impl Offload {
    /// No offload: a complete frame with a complete checksum.
    pub const NONE: Offload = Offload {
        csum_blank: false,
        data_validated: false,
        gso: None,
    };
}

/// What a link accepts on the way out: the features its peer offered
/// (`feature-gso-tcpv4`/`v6`, checksum offload for IPv4 and IPv6). A frame
/// needing more is segmented or completed in software before it is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// TCPv4 super-packets.
    pub gso_tcpv4: bool,
    /// TCPv6 super-packets.
    pub gso_tcpv6: bool,
    /// Blank IPv4 TCP/UDP checksums.
    pub csum_blank_v4: bool,
    /// Blank IPv6 TCP/UDP checksums.
    pub csum_blank_v6: bool,
}

impl Capabilities {
    /// Accepts every offload.
    pub const ALL: Capabilities = Capabilities {
        gso_tcpv4: true,
        gso_tcpv6: true,
        csum_blank_v4: true,
        csum_blank_v6: true,
    };

    /// Accepts none: every frame leaves complete.
    pub const NONE: Capabilities = Capabilities {
        gso_tcpv4: false,
        gso_tcpv6: false,
        csum_blank_v4: false,
        csum_blank_v6: false,
    };

    fn gso(&self, kind: GsoKind) -> bool {
        match kind {
            GsoKind::TcpV4 => self.gso_tcpv4,
            GsoKind::TcpV6 => self.gso_tcpv6,
        }
    }

    fn csum_blank(&self, v6: bool) -> bool {
        if v6 {
            self.csum_blank_v6
        } else {
            self.csum_blank_v4
        }
    }
}

/// The smallest segment size a super-packet may ask for (Linux's
/// `TCP_MIN_SND_MSS`); less would make one frame thousands of segments.
pub const MIN_MSS: u16 = 48;

/// Why a frame's offload flags were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadOffload;

/// Check that `offload` fits the frame it came with: a blank checksum only
/// on an unfragmented TCP or UDP packet, GSO only on an unfragmented TCP
/// packet of the kind's family (no IPv6 extension header) with a segment
/// size of at least [`MIN_MSS`]. `data_validated` alone needs nothing.
/// The frame is only read; a frame that does not parse is refused.
pub fn check(frame: &[u8], offload: &Offload) -> Result<(), BadOffload> {
    if !offload.csum_blank && offload.gso.is_none() {
        return Ok(());
    }
    let header = parse_frame(frame).ok_or(BadOffload)?;
    if header.fragment.is_some() {
        return Err(BadOffload);
    }
    let tcp = matches!(header.transport, Transport::Tcp { .. });
    let udp = matches!(header.transport, Transport::Udp { .. });
    if offload.csum_blank && !(tcp || udp) {
        return Err(BadOffload);
    }
    if let Some(gso) = offload.gso {
        let family = match gso.kind {
            GsoKind::TcpV4 => !header.is_v6(),
            GsoKind::TcpV6 => header.is_v6() && header.l4_offset == 40,
        };
        if !tcp || !family || gso.mss < MIN_MSS {
            return Err(BadOffload);
        }
    }
    Ok(())
}

/// The IP header of an Ethernet frame carrying IPv4 or IPv6.
fn parse_frame(frame: &[u8]) -> Option<IpHeader> {
    match frame.get(12..14)? {
        [0x08, 0x00] | [0x86, 0xdd] => {}
        _ => return None,
    }
    packet::parse(frame.get(ETHERNET_HEADER_LEN..)?).ok()
}

/// Where the transport checksum of a TCP or UDP packet lives, relative to
/// its transport header.
fn checksum_at(header: &IpHeader) -> Option<usize> {
    match header.transport {
        Transport::Tcp { .. } => Some(16),
        Transport::Udp { .. } => Some(6),
        _ => None,
    }
}

/// The pseudo-header sum of `header`'s packet for `l4_len` transport bytes.
fn pseudo_header(header: &IpHeader, l4_len: usize) -> u32 {
    let len = l4_len as u32;
    match (header.src, header.dst) {
        (core::net::IpAddr::V6(s), core::net::IpAddr::V6(d)) => {
            checksum::pseudo_header_v6(&s.octets(), &d.octets(), header.protocol, len)
        }
        (core::net::IpAddr::V4(s), core::net::IpAddr::V4(d)) => {
            checksum::pseudo_header_v4(&s.octets(), &d.octets(), header.protocol, len)
        }
        _ => 0,
    }
}

/// Write the complete TCP/UDP checksum of the transport bytes `l4` (of a
/// packet with `header`) from scratch, whatever the field held.
fn fill_l4(l4: &mut [u8], header: &IpHeader, at: usize) -> Option<()> {
    l4.get_mut(at..at + 2)?.copy_from_slice(&[0, 0]);
    let mut sum = checksum::compute(pseudo_header(header, l4.len()), l4);
    if sum == 0 && matches!(header.transport, Transport::Udp { .. }) {
        sum = 0xffff;
    }
    l4.get_mut(at..at + 2)?.copy_from_slice(&sum.to_be_bytes());
    Some(())
}

/// Fill the blank TCP/UDP checksum of `frame` (an Ethernet frame) in
/// software, from scratch. Returns false, changing nothing, for a frame
/// that is not an unfragmented TCP or UDP packet.
pub fn complete_checksum(frame: &mut [u8]) -> bool {
    let Some(header) = parse_frame(frame) else {
        return false;
    };
    if header.fragment.is_some() {
        return false;
    }
    let Some(at) = checksum_at(&header) else {
        return false;
    };
    let start = ETHERNET_HEADER_LEN + header.l4_offset;
    let end = ETHERNET_HEADER_LEN + header.len;
    match frame.get_mut(start..end) {
        Some(l4) => fill_l4(l4, &header, at).is_some(),
        None => false,
    }
}

/// Cut the TCP super-packet `frame` into segments of at most `mss` payload
/// bytes, each a complete frame with complete checksums, as a NIC's TSO
/// would: the headers are copied, the sequence number advances, IPv4
/// identifications count up from the super-packet's, FIN and PSH stay on
/// the last segment only and CWR on the first. `None` for a frame that is
/// not an unfragmented TCP packet, or an `mss` of 0.
pub fn segment(frame: &[u8], mss: u16) -> Option<Vec<Vec<u8>>> {
    let header = parse_frame(frame)?;
    if header.fragment.is_some() || !matches!(header.transport, Transport::Tcp { .. }) {
        return None;
    }
    let mss = usize::from(mss);
    if mss == 0 {
        return None;
    }
    let l4_start = ETHERNET_HEADER_LEN + header.l4_offset;
    let end = ETHERNET_HEADER_LEN + header.len;
    let data_offset = usize::from(*frame.get(l4_start + 12)? >> 4) * 4;
    let payload_start = l4_start + data_offset;
    let headers = frame.get(..payload_start)?;
    let payload = frame.get(payload_start..end)?;
    let seq = u32::from_be_bytes(frame.get(l4_start + 4..l4_start + 8)?.try_into().ok()?);
    let flags = *frame.get(l4_start + 13)?;
    let ident = u16::from_be_bytes(frame.get(18..20)?.try_into().ok()?);
    let count = payload.len().div_ceil(mss).max(1);
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let chunk = payload.get(i * mss..((i + 1) * mss).min(payload.len()))?;
        let mut seg = Vec::with_capacity(headers.len() + chunk.len());
        seg.extend_from_slice(headers);
        seg.extend_from_slice(chunk);
        let ip_len = seg.len() - ETHERNET_HEADER_LEN;
        if header.is_v6() {
            let payload_len = (ip_len - 40) as u16;
            seg.get_mut(18..20)?
                .copy_from_slice(&payload_len.to_be_bytes());
        } else {
            seg.get_mut(16..18)?
                .copy_from_slice(&(ip_len as u16).to_be_bytes());
            let id = ident.wrapping_add(i as u16);
            seg.get_mut(18..20)?.copy_from_slice(&id.to_be_bytes());
            seg.get_mut(24..26)?.copy_from_slice(&[0, 0]);
            let ihl = header.l4_offset;
            let sum =
                checksum::compute(0, seg.get(ETHERNET_HEADER_LEN..ETHERNET_HEADER_LEN + ihl)?);
            seg.get_mut(24..26)?.copy_from_slice(&sum.to_be_bytes());
        }
        let offset = (i * mss) as u32;
        seg.get_mut(l4_start + 4..l4_start + 8)?
            .copy_from_slice(&seq.wrapping_add(offset).to_be_bytes());
        let mut f = flags;
        if i + 1 < count {
            // FIN (0x01) and PSH (0x08) end the data.
            f &= !0x09;
        }
        if i > 0 {
            // CWR (0x80) is for the first segment.
            f &= !0x80;
        }
        *seg.get_mut(l4_start + 13)? = f;
        fill_l4(seg.get_mut(l4_start..)?, &header, 16)?;
        out.push(seg);
    }
    Some(out)
}

/// What became of a frame fitted to a link's [`Capabilities`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fitted {
    /// Sent as it is (its offload accepted by the link).
    Pass(Vec<u8>, Offload),
    /// Its blank checksum was completed in software.
    Completed(Vec<u8>, Offload),
    /// A super-packet cut into complete segments in software.
    Segmented(Vec<Vec<u8>>),
    /// Its offload could not be honoured (it does not parse any more).
    Failed,
}

/// Make `frame` with `offload` acceptable to a link with `caps`: a GSO
/// super-packet the link does not take is segmented, a blank checksum it
/// does not take is completed; the flags that stay say what the link must
/// still do.
pub fn fit(mut frame: Vec<u8>, offload: Offload, caps: &Capabilities) -> Fitted {
    let v6 = frame.get(12..14) == Some(&[0x86, 0xdd][..]);
    if let Some(gso) = offload.gso {
        if caps.gso(gso.kind) && (!offload.csum_blank || caps.csum_blank(v6)) {
            return Fitted::Pass(frame, offload);
        }
        return match segment(&frame, gso.mss) {
            Some(segments) => Fitted::Segmented(segments),
            None => Fitted::Failed,
        };
    }
    if offload.csum_blank && !caps.csum_blank(v6) {
        if !complete_checksum(&mut frame) {
            return Fitted::Failed;
        }
        return Fitted::Completed(
            frame,
            Offload {
                csum_blank: false,
                data_validated: true,
                gso: None,
            },
        );
    }
    Fitted::Pass(frame, offload)
}
