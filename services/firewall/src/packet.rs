//! The firewall's IP wire format: [`IpPacket`], a zero-copy view of an IPv4
//! or IPv6 packet in a buffer (in the manner of smoltcp's `Ipv4Packet`)
//! with the facts the packet path needs parsed once into an [`IpHeader`],
//! and the in-place rewrites NAT needs, each keeping every checksum that
//! covers the rewritten field right. No policy lives here.
//!
//! The IP headers are validated with smoltcp's wire types. Transport fields
//! are read from raw bytes with bounds checks instead of smoltcp's
//! `TcpPacket`/`UdpPacket`, because NAT must also handle packets whose
//! transport data is incomplete by design: the first fragment of a datagram
//! (the UDP length field covers bytes that are not there) and the packet
//! quoted inside an ICMP error (often only 8 bytes of transport header).

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use core::ops::Range;

use smoltcp::wire::{Ipv4Packet, Ipv6Packet};

use crate::checksum;

/// IP protocol numbers used here.
pub mod proto {
    /// ICMP for IPv4.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
}

/// Why a packet could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// TCP flags that drive connection tracking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpFlags {
    /// SYN.
    pub syn: bool,
    /// ACK.
    pub ack: bool,
    /// FIN.
    pub fin: bool,
    /// RST.
    pub rst: bool,
}

/// The transport-level facts of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// TCP with its ports and flags (flags all clear when they are not
    /// present, as in a short quoted packet).
    Tcp {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
        /// Flags.
        flags: TcpFlags,
    },
    /// UDP with its ports.
    Udp {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
    },
    /// ICMP / ICMPv6 echo request or reply, or another query / reply pair
    /// tracked by its identifier (see [`icmp_query`]).
    IcmpEcho {
        /// True for a request (a query), false for a reply.
        request: bool,
        /// The identifier, which NAT treats like a port.
        ident: u16,
        /// The ICMP type.
        icmp_type: u8,
    },
    /// An ICMP / ICMPv6 error quoting another packet after its 8-byte header.
    IcmpError {
        /// The ICMP type.
        icmp_type: u8,
    },
    /// Any other ICMP / ICMPv6 message.
    IcmpOther {
        /// The ICMP type.
        icmp_type: u8,
    },
    /// Another protocol (or an IPv6 extension header other than a leading
    /// fragment header).
    Other,
    /// A non-first fragment: no transport header.
    LaterFragment,
}

/// Fragmentation facts: IPv4 fragments, and IPv6 fragments whose fragment
/// header directly follows the IPv6 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    /// The IPv4 identification field or the IPv6 fragment identification.
    pub ident: u32,
    /// True for the fragment at offset 0.
    pub first: bool,
}

/// A parsed IP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpHeader {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol (IPv4) or first next-header (IPv6).
    pub protocol: u8,
    /// TTL or hop limit.
    pub hop_limit: u8,
    /// Offset of the transport header.
    pub l4_offset: usize,
    /// Length of the packet in the buffer (Ethernet padding excluded).
    pub len: usize,
    /// IPv4 fragmentation, when the packet is a fragment.
    pub fragment: Option<Fragment>,
    /// Transport facts.
    pub transport: Transport,
}

impl IpHeader {
    /// Whether this is an IPv6 packet.
    pub fn is_v6(&self) -> bool {
        self.src.is_ipv6()
    }
}

fn byte(buf: &[u8], at: usize) -> Option<u8> {
    buf.get(at).copied()
}

fn be16(buf: &[u8], at: usize) -> Option<u16> {
    let bytes = buf.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]))
}

fn is_icmp_error(v6: bool, icmp_type: u8) -> bool {
    if v6 {
        matches!(icmp_type, 1..=4)
    } else {
        matches!(icmp_type, 3 | 11 | 12)
    }
}

/// Whether an ICMP type is a query (`Some(true)`) or the reply to one
/// (`Some(false)`) of the kinds Linux's conntrack tracks by identifier and
/// lets open a flow (`valid_new` in `nf_conntrack_proto_icmp.c` and
/// `icmpv6.c`): echo, timestamp, information and address mask for IPv4;
/// echo and node information for IPv6.
pub fn icmp_query(v6: bool, icmp_type: u8) -> Option<bool> {
    if v6 {
        match icmp_type {
            128 | 139 => Some(true),
            129 | 140 => Some(false),
            _ => None,
        }
    } else {
        match icmp_type {
            8 | 13 | 15 | 17 => Some(true),
            0 | 14 | 16 | 18 => Some(false),
            _ => None,
        }
    }
}

/// Read the transport facts of `l4` (the bytes after the IP header).
/// `complete` says the whole transport header must be present.
fn parse_transport(
    v6: bool,
    protocol: u8,
    l4: &[u8],
    complete: bool,
) -> Result<Transport, Malformed> {
    let icmp = if v6 { proto::ICMPV6 } else { proto::ICMP };
    match protocol {
        proto::TCP => {
            let src_port = be16(l4, 0).ok_or(Malformed)?;
            let dst_port = be16(l4, 2).ok_or(Malformed)?;
            if complete {
                let data_offset = usize::from(byte(l4, 12).ok_or(Malformed)? >> 4) * 4;
                if data_offset < 20 || data_offset > l4.len() {
                    return Err(Malformed);
                }
            }
            let flags = byte(l4, 13)
                .map(|f| TcpFlags {
                    fin: f & 0x01 != 0,
                    syn: f & 0x02 != 0,
                    rst: f & 0x04 != 0,
                    ack: f & 0x10 != 0,
                })
                .unwrap_or_default();
            Ok(Transport::Tcp {
                src_port,
                dst_port,
                flags,
            })
        }
        proto::UDP => {
            if l4.len() < 8 {
                return Err(Malformed);
            }
            Ok(Transport::Udp {
                src_port: be16(l4, 0).ok_or(Malformed)?,
                dst_port: be16(l4, 2).ok_or(Malformed)?,
            })
        }
        p if p == icmp => {
            if l4.len() < 8 {
                return Err(Malformed);
            }
            let icmp_type = byte(l4, 0).ok_or(Malformed)?;
            if let Some(request) = icmp_query(v6, icmp_type) {
                Ok(Transport::IcmpEcho {
                    request,
                    ident: be16(l4, 4).ok_or(Malformed)?,
                    icmp_type,
                })
            } else if is_icmp_error(v6, icmp_type) {
                Ok(Transport::IcmpError { icmp_type })
            } else {
                Ok(Transport::IcmpOther { icmp_type })
            }
        }
        _ => Ok(Transport::Other),
    }
}

/// Parse a complete IP packet as received on a link.
pub fn parse(buf: &[u8]) -> Result<IpHeader, Malformed> {
    parse_inner(buf, false)
}

/// IPv4 option: end of the option list (RFC 791).
const IPOPT_END: u8 = 0;
/// IPv4 option: no operation (RFC 791).
const IPOPT_NOOP: u8 = 1;
/// IPv4 option: loose source and record route (RFC 791).
pub const IPOPT_LSRR: u8 = 131;
/// IPv4 option: strict source and record route (RFC 791).
pub const IPOPT_SSRR: u8 = 137;

/// What an IPv4 header's options hold, as far as forwarding cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ipv4Options {
    /// No options, or only ones a router forwards (record route,
    /// timestamp, router alert, padding, ...).
    Forwardable,
    /// A loose or strict source route: the sender chose the path.
    SourceRoute,
}

/// Walks the options of the IPv4 packet `ip` (the bytes between the fixed
/// 20-byte header and `header.l4_offset`). An option whose length byte is
/// missing, below 2 or past the header is [`Malformed`]; an IPv6 packet
/// has no IPv4 options.
pub fn ipv4_options(ip: &[u8], header: &IpHeader) -> Result<Ipv4Options, Malformed> {
    if header.is_v6() {
        return Ok(Ipv4Options::Forwardable);
    }
    let mut options = ip.get(20..header.l4_offset).ok_or(Malformed)?;
    let mut verdict = Ipv4Options::Forwardable;
    while let Some((&kind, rest)) = options.split_first() {
        match kind {
            IPOPT_END => break,
            IPOPT_NOOP => options = rest,
            _ => {
                let len = usize::from(*rest.first().ok_or(Malformed)?);
                if len < 2 || len > options.len() {
                    return Err(Malformed);
                }
                if kind == IPOPT_LSRR || kind == IPOPT_SSRR {
                    verdict = Ipv4Options::SourceRoute;
                }
                options = options.get(len..).ok_or(Malformed)?;
            }
        }
    }
    Ok(verdict)
}

/// Parse the (usually truncated) packet quoted inside an ICMP error.
pub fn parse_quoted(buf: &[u8]) -> Result<IpHeader, Malformed> {
    parse_inner(buf, true)
}

/// Length of the ICMP header before an error's quoted packet.
const ICMP_ERROR_HEADER_LEN: usize = 8;
/// Length of the UDP header.
const UDP_HEADER_LEN: usize = 8;

/// A zero-copy view of an IP packet at the start of `buffer`, with its
/// parsed [`IpHeader`]. Accessors read the buffer; setters rewrite it in
/// place, fix every checksum that covers the field, and keep the header in
/// step, so that a later setter or checksum sees the packet as it now is.
/// Every access is bounds-checked: a view never panics, whatever the bytes.
#[derive(Debug, Clone)]
pub struct IpPacket<T> {
    buffer: T,
    header: IpHeader,
    /// The transport checksum field is blank (partial): it holds only the
    /// pseudo-header sum.
    partial: bool,
}

impl<T: AsRef<[u8]>> IpPacket<T> {
    /// A view of a complete packet as received on a link (see [`parse`]).
    pub fn new_checked(buffer: T) -> Result<IpPacket<T>, Malformed> {
        let header = parse(buffer.as_ref())?;
        Ok(IpPacket {
            buffer,
            header,
            partial: false,
        })
    }

    /// A view of the (usually truncated) packet quoted in an ICMP error
    /// (see [`parse_quoted`]).
    pub fn new_quoted(buffer: T) -> Result<IpPacket<T>, Malformed> {
        let header = parse_quoted(buffer.as_ref())?;
        Ok(IpPacket {
            buffer,
            header,
            partial: false,
        })
    }

    /// A view of `buffer` with a `header` parsed earlier from the same
    /// bytes (from the packet a copy was made of, typically). A header of
    /// other bytes makes the view wrong, never unsafe.
    pub fn with_header(buffer: T, header: IpHeader) -> IpPacket<T> {
        IpPacket {
            buffer,
            header,
            partial: false,
        }
    }

    /// The same view of a packet whose TCP/UDP checksum field is blank
    /// (`partial`: it holds the pseudo-header sum, not complemented, as a
    /// frame flagged `csum_blank` carries it) or complete. The setters keep
    /// a blank field right by adding address changes (the pseudo-header)
    /// and leaving port changes (covered by the sum still to be made)
    /// alone.
    pub fn with_partial_checksum(mut self, partial: bool) -> IpPacket<T> {
        self.partial = partial;
        self
    }

    /// The parsed facts, as the setters left them.
    pub fn header(&self) -> &IpHeader {
        &self.header
    }

    /// The packet's bytes (without what follows it in the buffer, such as
    /// Ethernet padding).
    pub fn as_bytes(&self) -> &[u8] {
        let buffer = self.buffer.as_ref();
        buffer.get(..self.header.len).unwrap_or(buffer)
    }

    /// The payload of a UDP datagram (`None` for another transport).
    pub fn udp_payload(&self) -> Option<&[u8]> {
        match self.header.transport {
            Transport::Udp { .. } => self
                .as_bytes()
                .get(self.header.l4_offset.checked_add(UDP_HEADER_LEN)?..),
            _ => None,
        }
    }

    /// Where an ICMP error's quoted packet starts.
    fn quoted_at(&self) -> Option<usize> {
        match self.header.transport {
            Transport::IcmpError { .. } => self.header.l4_offset.checked_add(ICMP_ERROR_HEADER_LEN),
            _ => None,
        }
    }

    /// The packet quoted in an ICMP error, as a view (`None` for anything
    /// else, or when it does not parse).
    pub fn icmp_quoted(&self) -> Option<IpPacket<&[u8]>> {
        let at = self.quoted_at()?;
        IpPacket::new_quoted(self.as_bytes().get(at..)?).ok()
    }

    /// The buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> IpPacket<T> {
    /// Rewrite the source address (of the packet's family; another family
    /// is ignored).
    pub fn set_src(&mut self, addr: IpAddr) {
        if addr != self.header.src && addr.is_ipv6() == self.header.is_v6() {
            set_src(self.buffer.as_mut(), &self.header, addr, self.partial);
            self.header.src = addr;
        }
    }

    /// Rewrite the destination address (of the packet's family).
    pub fn set_dst(&mut self, addr: IpAddr) {
        if addr != self.header.dst && addr.is_ipv6() == self.header.is_v6() {
            set_dst(self.buffer.as_mut(), &self.header, addr, self.partial);
            self.header.dst = addr;
        }
    }

    /// Rewrite the source port (TCP, UDP) or the identifier (ICMP query).
    pub fn set_src_port(&mut self, port: u16) {
        set_src_port(self.buffer.as_mut(), &self.header, port, self.partial);
        match &mut self.header.transport {
            Transport::Tcp { src_port, .. } | Transport::Udp { src_port, .. } => *src_port = port,
            Transport::IcmpEcho { ident, .. } => *ident = port,
            _ => {}
        }
    }

    /// Rewrite the destination port (TCP, UDP) or the identifier (ICMP
    /// query).
    pub fn set_dst_port(&mut self, port: u16) {
        set_dst_port(self.buffer.as_mut(), &self.header, port, self.partial);
        match &mut self.header.transport {
            Transport::Tcp { dst_port, .. } | Transport::Udp { dst_port, .. } => *dst_port = port,
            Transport::IcmpEcho { ident, .. } => *ident = port,
            _ => {}
        }
    }

    /// Decrement the TTL / hop limit (the caller checked it is above 1).
    pub fn decrement_hop_limit(&mut self) {
        decrement_hop_limit(self.buffer.as_mut(), &self.header);
        self.header.hop_limit = self.header.hop_limit.saturating_sub(1);
    }

    /// The packet quoted in an ICMP error, as a mutable view (`None` for
    /// anything else, or when it does not parse). Rewriting it leaves the
    /// ICMP checksum stale: call [`IpPacket::fill_icmp_checksum`] after.
    pub fn icmp_quoted_mut(&mut self) -> Option<IpPacket<&mut [u8]>> {
        let at = self.quoted_at()?;
        let len = self.header.len;
        let quoted = self.buffer.as_mut().get_mut(at..len)?;
        IpPacket::new_quoted(quoted).ok()
    }

    /// Recompute the checksum of an ICMP or ICMPv6 message from its bytes
    /// and the current addresses.
    pub fn fill_icmp_checksum(&mut self) {
        let header = self.header;
        let Some(icmp) = self.buffer.as_mut().get_mut(header.l4_offset..header.len) else {
            return;
        };
        if let Some(field) = icmp.get_mut(2..4) {
            field.copy_from_slice(&[0, 0]);
        }
        let pseudo = match (header.src, header.dst) {
            (IpAddr::V6(src), IpAddr::V6(dst)) => checksum::pseudo_header_v6(
                &src.octets(),
                &dst.octets(),
                proto::ICMPV6,
                icmp.len() as u32,
            ),
            _ => 0,
        };
        let sum = checksum::compute(pseudo, icmp);
        if let Some(field) = icmp.get_mut(2..4) {
            field.copy_from_slice(&sum.to_be_bytes());
        }
    }
}

fn parse_inner(buf: &[u8], quoted: bool) -> Result<IpHeader, Malformed> {
    match byte(buf, 0).ok_or(Malformed)? >> 4 {
        4 => parse_v4(buf, quoted),
        6 => parse_v6(buf, quoted),
        _ => Err(Malformed),
    }
}

fn parse_v4(buf: &[u8], quoted: bool) -> Result<IpHeader, Malformed> {
    let packet = Ipv4Packet::new_unchecked(buf);
    let header_len = usize::from(byte(buf, 0).ok_or(Malformed)? & 0x0f) * 4;
    if header_len < 20 || buf.len() < header_len {
        return Err(Malformed);
    }
    let len = if quoted {
        buf.len()
    } else {
        let checked = Ipv4Packet::new_checked(buf).map_err(|_| Malformed)?;
        if !checked.verify_checksum() {
            return Err(Malformed);
        }
        usize::from(checked.total_len())
    };
    let l4 = buf.get(header_len..len).ok_or(Malformed)?;
    let protocol = u8::from(packet.next_header());
    let frag_offset = packet.frag_offset();
    let fragment = (packet.more_frags() || frag_offset != 0).then(|| Fragment {
        ident: u32::from(packet.ident()),
        first: frag_offset == 0,
    });
    let transport = match fragment {
        Some(Fragment { first: false, .. }) => Transport::LaterFragment,
        // A first fragment carries the transport header but not the rest.
        Some(_) => parse_transport(false, protocol, l4, false)?,
        None => parse_transport(false, protocol, l4, !quoted)?,
    };
    Ok(IpHeader {
        src: IpAddr::V4(packet.src_addr()),
        dst: IpAddr::V4(packet.dst_addr()),
        protocol,
        hop_limit: packet.hop_limit(),
        l4_offset: header_len,
        len,
        fragment,
        transport,
    })
}

/// IPv6 next-header value of the fragment header.
const IPV6_FRAGMENT: u8 = 44;

fn parse_v6(buf: &[u8], quoted: bool) -> Result<IpHeader, Malformed> {
    const HEADER_LEN: usize = 40;
    const FRAGMENT_HEADER_LEN: usize = 8;
    if buf.len() < HEADER_LEN {
        return Err(Malformed);
    }
    let packet = Ipv6Packet::new_unchecked(buf);
    let len = if quoted {
        buf.len()
    } else {
        let checked = Ipv6Packet::new_checked(buf).map_err(|_| Malformed)?;
        HEADER_LEN + usize::from(checked.payload_len())
    };
    let first_header = u8::from(packet.next_header());
    // A fragment header right after the IPv6 header is walked (Linux
    // reassembles these before conntrack); other extension headers are
    // left to the caller as `Transport::Other`.
    let (protocol, l4_offset, fragment) = if first_header == IPV6_FRAGMENT {
        let next = byte(buf, HEADER_LEN).ok_or(Malformed)?;
        let offset_flags = be16(buf, HEADER_LEN + 2).ok_or(Malformed)?;
        let ident = buf
            .get(HEADER_LEN + 4..HEADER_LEN + 8)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_be_bytes)
            .ok_or(Malformed)?;
        let fragment = Fragment {
            ident,
            first: offset_flags >> 3 == 0,
        };
        (next, HEADER_LEN + FRAGMENT_HEADER_LEN, Some(fragment))
    } else {
        (first_header, HEADER_LEN, None)
    };
    let l4 = buf.get(l4_offset..len).ok_or(Malformed)?;
    let transport = match fragment {
        Some(Fragment { first: false, .. }) => Transport::LaterFragment,
        Some(_) => parse_transport(true, protocol, l4, false)?,
        None => parse_transport(true, protocol, l4, !quoted)?,
    };
    Ok(IpHeader {
        src: IpAddr::V6(packet.src_addr()),
        dst: IpAddr::V6(packet.dst_addr()),
        protocol,
        hop_limit: packet.hop_limit(),
        l4_offset,
        len,
        fragment,
        transport,
    })
}

/// Where the transport checksum lives, relative to the transport header.
fn l4_checksum_offset(header: &IpHeader) -> Option<usize> {
    match header.transport {
        Transport::Tcp { .. } => Some(16),
        Transport::Udp { .. } => Some(6),
        Transport::IcmpEcho { .. } | Transport::IcmpError { .. } | Transport::IcmpOther { .. } => {
            Some(2)
        }
        Transport::Other | Transport::LaterFragment => None,
    }
}

/// Whether the transport checksum covers the IP addresses (pseudo-header):
/// TCP, UDP and ICMPv6 do, ICMPv4 does not.
fn pseudo_header_covers(header: &IpHeader) -> bool {
    match header.transport {
        Transport::Tcp { .. } | Transport::Udp { .. } => true,
        Transport::IcmpEcho { .. } | Transport::IcmpError { .. } | Transport::IcmpOther { .. } => {
            header.is_v6()
        }
        Transport::Other | Transport::LaterFragment => false,
    }
}

/// Update the transport checksum for `old` → `new` covered bytes; skipped
/// when the checksum field is not in the buffer (a short quoted packet) or
/// is the UDP-over-IPv4 "no checksum" value. A blank field (`partial`)
/// takes only pseudo-header changes (`pseudo`): the rest of the packet is
/// summed by whoever completes it.
fn adjust_l4_checksum(
    pkt: &mut [u8],
    header: &IpHeader,
    old: &[u8],
    new: &[u8],
    pseudo: bool,
    partial: bool,
) {
    let Some(offset) = l4_checksum_offset(header) else {
        return;
    };
    let at = header.l4_offset.saturating_add(offset);
    let Some(current) = be16(pkt, at) else {
        return;
    };
    if partial {
        if pseudo {
            let updated = checksum::adjust_partial(current, old, new);
            if let Some(f) = pkt.get_mut(at..at.saturating_add(2)) {
                f.copy_from_slice(&updated.to_be_bytes());
            }
        }
        return;
    }
    let is_udp = matches!(header.transport, Transport::Udp { .. });
    if is_udp && current == 0 && !header.is_v6() {
        return;
    }
    let mut updated = checksum::adjust(current, old, new);
    if is_udp && updated == 0 {
        updated = 0xffff;
    }
    if let Some(field) = pkt.get_mut(at..at.saturating_add(2)) {
        field.copy_from_slice(&updated.to_be_bytes());
    }
}

fn adjust_ipv4_header_checksum(pkt: &mut [u8], old: &[u8], new: &[u8]) {
    if let Some(current) = be16(pkt, 10) {
        let updated = checksum::adjust(current, old, new);
        if let Some(field) = pkt.get_mut(10..12) {
            field.copy_from_slice(&updated.to_be_bytes());
        }
    }
}

/// Replace the bytes at `range` with `new`, returning the old bytes (16 max).
fn swap_bytes(pkt: &mut [u8], range: Range<usize>, new: &[u8]) -> Option<[u8; 16]> {
    let field = pkt.get_mut(range)?;
    if field.len() != new.len() || new.len() > 16 {
        return None;
    }
    let mut old = [0u8; 16];
    old.get_mut(..new.len())?.copy_from_slice(field);
    field.copy_from_slice(new);
    Some(old)
}

fn set_addr(
    pkt: &mut [u8],
    header: &IpHeader,
    v4_range: Range<usize>,
    v6_range: Range<usize>,
    new: IpAddr,
    partial: bool,
) {
    match new {
        IpAddr::V4(addr) if !header.is_v6() => {
            let new = addr.octets();
            if let Some(old) = swap_bytes(pkt, v4_range, &new) {
                let old = &old[..4];
                adjust_ipv4_header_checksum(pkt, old, &new);
                if pseudo_header_covers(header) {
                    adjust_l4_checksum(pkt, header, old, &new, true, partial);
                }
            }
        }
        IpAddr::V6(addr) if header.is_v6() => {
            let new = addr.octets();
            if let Some(old) = swap_bytes(pkt, v6_range, &new) {
                if pseudo_header_covers(header) {
                    adjust_l4_checksum(pkt, header, &old, &new, true, partial);
                }
            }
        }
        // Families never mix: NAT maps v4 to v4 and v6 to v6.
        _ => {}
    }
}

/// Rewrite the source address, fixing the checksums it is covered by.
fn set_src(pkt: &mut [u8], header: &IpHeader, new: IpAddr, partial: bool) {
    set_addr(pkt, header, 12..16, 8..24, new, partial);
}

/// Rewrite the destination address, fixing the checksums it is covered by.
fn set_dst(pkt: &mut [u8], header: &IpHeader, new: IpAddr, partial: bool) {
    set_addr(pkt, header, 16..20, 24..40, new, partial);
}

fn set_l4_u16(pkt: &mut [u8], header: &IpHeader, offset: usize, value: u16, partial: bool) {
    let at = header.l4_offset.saturating_add(offset);
    let new = value.to_be_bytes();
    if let Some(old) = swap_bytes(pkt, at..at.saturating_add(2), &new) {
        adjust_l4_checksum(pkt, header, &old[..2], &new, false, partial);
    }
}

/// Rewrite the source port (TCP/UDP) or the echo identifier (ICMP echo).
fn set_src_port(pkt: &mut [u8], header: &IpHeader, port: u16, partial: bool) {
    match header.transport {
        Transport::Tcp { .. } | Transport::Udp { .. } => set_l4_u16(pkt, header, 0, port, partial),
        Transport::IcmpEcho { .. } => set_l4_u16(pkt, header, 4, port, partial),
        _ => {}
    }
}

/// Rewrite the destination port (TCP/UDP) or the echo identifier (ICMP echo).
fn set_dst_port(pkt: &mut [u8], header: &IpHeader, port: u16, partial: bool) {
    match header.transport {
        Transport::Tcp { .. } | Transport::Udp { .. } => set_l4_u16(pkt, header, 2, port, partial),
        Transport::IcmpEcho { .. } => set_l4_u16(pkt, header, 4, port, partial),
        _ => {}
    }
}

/// Decrement the TTL / hop limit (the caller checked it is above 1).
fn decrement_hop_limit(pkt: &mut [u8], header: &IpHeader) {
    let new_limit = header.hop_limit.saturating_sub(1);
    if header.is_v6() {
        if let Some(field) = pkt.get_mut(7) {
            *field = new_limit;
        }
    } else if let Some(word) = pkt.get_mut(8..10) {
        let old = [header.hop_limit, word.get(1).copied().unwrap_or(0)];
        let new = [new_limit, old[1]];
        word.copy_from_slice(&new);
        adjust_ipv4_header_checksum(pkt, &old, &new);
    }
}

/// The IPv4 address of `addr`, if it is one.
pub fn as_v4(addr: IpAddr) -> Option<Ipv4Addr> {
    match addr {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    }
}

/// The IPv6 address of `addr`, if it is one.
pub fn as_v6(addr: IpAddr) -> Option<Ipv6Addr> {
    match addr {
        IpAddr::V6(a) => Some(a),
        IpAddr::V4(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;
    use proptest::prelude::*;
    use smoltcp::wire::{IpAddress, IpProtocol, Ipv4Packet, TcpPacket};

    /// A TCP SYN from 10.0.0.1:1000 to 10.0.0.2:80 with valid checksums.
    fn syn() -> Vec<u8> {
        let mut buf = vec![0u8; 40];
        let src = Ipv4Addr::new(10, 0, 0, 1);
        let dst = Ipv4Addr::new(10, 0, 0, 2);
        {
            let mut ip = Ipv4Packet::new_unchecked(&mut buf[..]);
            ip.set_version(4);
            ip.set_header_len(20);
            ip.set_total_len(40);
            ip.set_hop_limit(64);
            ip.set_next_header(IpProtocol::Tcp);
            ip.set_src_addr(src);
            ip.set_dst_addr(dst);
            ip.fill_checksum();
        }
        let mut tcp = TcpPacket::new_unchecked(&mut buf[20..]);
        tcp.set_src_port(1000);
        tcp.set_dst_port(80);
        tcp.set_header_len(20);
        tcp.set_syn(true);
        tcp.fill_checksum(&IpAddress::Ipv4(src), &IpAddress::Ipv4(dst));
        buf
    }

    #[test]
    fn setters_rewrite_in_place_and_keep_the_header_in_step() {
        let mut packet = IpPacket::new_checked(syn()).unwrap();
        let nat = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 6));
        packet.set_src(nat);
        packet.set_src_port(40000);
        packet.decrement_hop_limit();
        // Another family is ignored.
        packet.set_dst(IpAddr::V6(Ipv6Addr::LOCALHOST));
        let header = *packet.header();
        assert_eq!(header.src, nat);
        assert_eq!(header.hop_limit, 63);
        assert!(matches!(
            header.transport,
            Transport::Tcp {
                src_port: 40000,
                ..
            }
        ));
        let bytes = packet.into_inner();
        let ip = Ipv4Packet::new_checked(&bytes[..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(IpAddr::V4(ip.src_addr()), nat);
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!(tcp.src_port(), 40000);
        assert!(tcp.verify_checksum(
            &IpAddress::Ipv4(ip.src_addr()),
            &IpAddress::Ipv4(ip.dst_addr())
        ));
        // The view re-parses to what it says.
        assert_eq!(parse(&bytes).unwrap(), header);
    }

    #[test]
    fn the_quoted_packet_of_an_icmp_error_is_a_view_too() {
        let quoted = syn();
        let mut buf = vec![0u8; 28 + quoted.len()];
        {
            let mut ip = Ipv4Packet::new_unchecked(&mut buf[..]);
            ip.set_version(4);
            ip.set_header_len(20);
            ip.set_total_len((28 + quoted.len()) as u16);
            ip.set_hop_limit(64);
            ip.set_next_header(IpProtocol::Icmp);
            ip.set_src_addr(Ipv4Addr::new(10, 0, 0, 2));
            ip.set_dst_addr(Ipv4Addr::new(10, 0, 0, 1));
            ip.fill_checksum();
        }
        buf[20] = 3;
        buf[21] = 3;
        buf[28..].copy_from_slice(&quoted);
        let mut packet = IpPacket::new_checked(&mut buf[..]).unwrap();
        assert_eq!(packet.icmp_quoted().unwrap().as_bytes(), &quoted[..]);
        packet.icmp_quoted_mut().unwrap().set_dst_port(8080);
        packet.fill_icmp_checksum();
        let icmp = smoltcp::wire::Icmpv4Packet::new_checked(&buf[20..]).unwrap();
        assert!(icmp.verify_checksum());
        // The quoted TCP header starts at 28 + 20; its destination port at +2.
        assert_eq!(u16::from_be_bytes([buf[50], buf[51]]), 8080);
    }

    fn any_transport() -> impl Strategy<Value = Transport> {
        prop_oneof![
            (any::<u16>(), any::<u16>()).prop_map(|(s, d)| Transport::Tcp {
                src_port: s,
                dst_port: d,
                flags: TcpFlags::default()
            }),
            (any::<u16>(), any::<u16>()).prop_map(|(s, d)| Transport::Udp {
                src_port: s,
                dst_port: d
            }),
            any::<u8>().prop_map(|t| Transport::IcmpError { icmp_type: t }),
            (any::<bool>(), any::<u16>()).prop_map(|(r, i)| Transport::IcmpEcho {
                request: r,
                ident: i,
                icmp_type: 8
            }),
        ]
    }

    proptest! {
        #[test]
        fn views_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..120),
            l4_offset in prop_oneof![0usize..130, Just(usize::MAX)],
            len in prop_oneof![0usize..130, Just(usize::MAX)],
            v6 in any::<bool>(),
            transport in any_transport(),
        ) {
            let _ = IpPacket::new_checked(&bytes[..]);
            let _ = IpPacket::new_quoted(&bytes[..]);
            let (src, dst) = if v6 {
                (IpAddr::V6(Ipv6Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::UNSPECIFIED))
            } else {
                (IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V4(Ipv4Addr::UNSPECIFIED))
            };
            let header = IpHeader {
                src,
                dst,
                protocol: 6,
                hop_limit: 1,
                l4_offset,
                len,
                fragment: None,
                transport,
            };
            let mut packet = IpPacket::with_header(bytes.clone(), header);
            let _ = packet.udp_payload();
            let _ = packet.icmp_quoted();
            if let Some(mut quoted) = packet.icmp_quoted_mut() {
                quoted.set_dst_port(1);
            }
            packet.set_src(dst);
            packet.set_dst(src);
            packet.set_src_port(2);
            packet.set_dst_port(3);
            packet.decrement_hop_limit();
            packet.fill_icmp_checksum();
        }
    }
}
