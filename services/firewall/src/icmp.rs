//! ICMP messages the firewall creates: administratively-prohibited errors
//! for refused flows (as Linux's `reject with icmp type admin-prohibited`)
//! and echo replies for pings to the firewall itself.

use alloc::vec;
use alloc::vec::Vec;
use core::net::IpAddr;

use smoltcp::wire::{IpProtocol, Ipv4Packet, Ipv6Packet, Ipv6Repr};

use crate::checksum;
use crate::packet::{self, IpHeader, IpPacket, Transport};

/// Largest IPv4 ICMP error (RFC 1812: at most 576 bytes).
const MAX_ICMPV4_ERROR: usize = 576;
/// Largest ICMPv6 error (RFC 4443: at most the minimum MTU).
const MAX_ICMPV6_ERROR: usize = 1280;
/// ICMP header length.
const ICMP_HEADER_LEN: usize = 8;
/// TTL of packets the firewall creates.
const HOP_LIMIT: u8 = 64;

/// ICMPv4 destination unreachable.
const ICMPV4_UNREACHABLE: u8 = 3;
/// ICMPv4 code "communication administratively prohibited" (RFC 1812).
const ICMPV4_ADMIN_PROHIBITED: u8 = 13;
/// ICMPv4 code "host administratively prohibited" (RFC 1122), what Linux's
/// `reject with icmp type host-prohibited` sends.
const ICMPV4_HOST_PROHIBITED: u8 = 10;
/// ICMPv6 destination unreachable.
const ICMPV6_UNREACHABLE: u8 = 1;
/// ICMPv6 code "communication with destination administratively prohibited".
const ICMPV6_ADMIN_PROHIBITED: u8 = 1;

/// Whether `header` may be answered with an ICMP error at all: never for
/// ICMP errors (no error storms), for later fragments, or towards an
/// unspecified or multicast source.
fn may_answer(header: &IpHeader) -> bool {
    let source_ok = match header.src {
        IpAddr::V4(a) => !a.is_unspecified() && !a.is_multicast() && !a.is_broadcast(),
        IpAddr::V6(a) => !a.is_unspecified() && !a.is_multicast(),
    };
    let dest_ok = match header.dst {
        IpAddr::V4(a) => !a.is_multicast() && !a.is_broadcast(),
        IpAddr::V6(a) => !a.is_multicast(),
    };
    source_ok
        && dest_ok
        && !matches!(
            header.transport,
            Transport::IcmpError { .. } | Transport::LaterFragment
        )
}

/// The ICMP admin-prohibited error, from `from`, answering `original`
/// (whose parsed header is `header`), as Linux's `reject with icmp type
/// admin-prohibited` (ICMPv6: `icmpv6 type admin-prohibited`). `None` when
/// no error may be sent or `from` is of the wrong family.
pub fn admin_prohibited(from: IpAddr, original: &[u8], header: &IpHeader) -> Option<Vec<u8>> {
    error(
        from,
        original,
        header,
        [ICMPV4_UNREACHABLE, ICMPV4_ADMIN_PROHIBITED],
        [ICMPV6_UNREACHABLE, ICMPV6_ADMIN_PROHIBITED],
    )
}

/// ICMP time exceeded in transit (ICMPv6 hop limit exceeded), what a Linux
/// router sends when it would forward a packet whose TTL runs out
/// (`ip_forward`, before the forward chain's rules).
pub fn time_exceeded(from: IpAddr, original: &[u8], header: &IpHeader) -> Option<Vec<u8>> {
    error(from, original, header, [11, 0], [3, 0])
}

/// The error Linux's input chain sends for what a client addresses to the
/// firewall itself: ICMPv4 host-prohibited (`reject with icmp type
/// host-prohibited`, `qubes-ipv4.nft`), ICMPv6 admin-prohibited (`reject
/// with icmpv6 type admin-prohibited`, `qubes-ipv6.nft`).
pub fn host_prohibited(from: IpAddr, original: &[u8], header: &IpHeader) -> Option<Vec<u8>> {
    error(
        from,
        original,
        header,
        [ICMPV4_UNREACHABLE, ICMPV4_HOST_PROHIBITED],
        [ICMPV6_UNREACHABLE, ICMPV6_ADMIN_PROHIBITED],
    )
}

/// An ICMP error of `[type, code]` `v4` (ICMPv4) or `v6` (ICMPv6) from
/// `from`, quoting `original`.
fn error(
    from: IpAddr,
    original: &[u8],
    header: &IpHeader,
    v4: [u8; 2],
    v6: [u8; 2],
) -> Option<Vec<u8>> {
    if !may_answer(header) {
        return None;
    }
    let original = original.get(..header.len)?;
    match (from, header.src) {
        (IpAddr::V4(from), IpAddr::V4(to)) => {
            let quote_len = original.len().min(MAX_ICMPV4_ERROR - 20 - ICMP_HEADER_LEN);
            let quote = original.get(..quote_len)?;
            let total = 20 + ICMP_HEADER_LEN + quote_len;
            let mut buf = vec![0u8; total];
            let mut ip = Ipv4Packet::new_unchecked(&mut buf[..]);
            ip.set_version(4);
            ip.set_header_len(20);
            ip.set_total_len(total as u16);
            ip.set_hop_limit(HOP_LIMIT);
            ip.set_next_header(IpProtocol::Icmp);
            ip.set_src_addr(from);
            ip.set_dst_addr(to);
            ip.fill_checksum();
            let icmp = buf.get_mut(20..)?;
            icmp.get_mut(..2)?.copy_from_slice(&v4);
            icmp.get_mut(ICMP_HEADER_LEN..)?.copy_from_slice(quote);
            let sum = checksum::compute(0, icmp);
            icmp.get_mut(2..4)?.copy_from_slice(&sum.to_be_bytes());
            Some(buf)
        }
        (IpAddr::V6(from), IpAddr::V6(to)) => {
            let quote_len = original.len().min(MAX_ICMPV6_ERROR - 40 - ICMP_HEADER_LEN);
            let quote = original.get(..quote_len)?;
            let icmp_len = ICMP_HEADER_LEN + quote_len;
            let ip = Ipv6Repr {
                src_addr: from,
                dst_addr: to,
                next_header: IpProtocol::Icmpv6,
                payload_len: icmp_len,
                hop_limit: HOP_LIMIT,
            };
            let mut buf = vec![0u8; 40 + icmp_len];
            ip.emit(&mut Ipv6Packet::new_unchecked(&mut buf[..]));
            let icmp = buf.get_mut(40..)?;
            icmp.get_mut(..2)?.copy_from_slice(&v6);
            icmp.get_mut(ICMP_HEADER_LEN..)?.copy_from_slice(quote);
            let pseudo = checksum::pseudo_header_v6(
                &from.octets(),
                &to.octets(),
                packet::proto::ICMPV6,
                icmp_len as u32,
            );
            let sum = checksum::compute(pseudo, icmp);
            icmp.get_mut(2..4)?.copy_from_slice(&sum.to_be_bytes());
            Some(buf)
        }
        _ => None,
    }
}

/// Whether `header` is an ICMP echo request (type 8, or 128 for ICMPv6).
pub fn is_echo_request(header: &IpHeader) -> bool {
    matches!(
        header.transport,
        Transport::IcmpEcho { request: true, icmp_type, .. }
            if icmp_type == if header.is_v6() { 128 } else { 8 }
    )
}

/// The echo reply to `request` (an echo request, parsed as `header`).
pub fn echo_reply(request: &[u8], header: &IpHeader) -> Option<Vec<u8>> {
    let Transport::IcmpEcho {
        request: true,
        icmp_type,
        ..
    } = header.transport
    else {
        return None;
    };
    // Echo only: the other queries (timestamp, ...) are not answered.
    if !is_echo_request(header) {
        return None;
    }
    let mut reply = IpPacket::with_header(request.get(..header.len)?.to_vec(), *header);
    reply.set_src(header.dst);
    reply.set_dst(header.src);
    let mut reply = reply.into_inner();
    // Echo reply is type 0 (ICMP) or 129 (ICMPv6): request type minus 8 or plus 1.
    let reply_type = if header.is_v6() { 129 } else { 0 };
    let at = header.l4_offset;
    let code = *reply.get(at + 1)?;
    let old = [icmp_type, code];
    let new = [reply_type, code];
    reply.get_mut(at..at + 2)?.copy_from_slice(&new);
    let current = u16::from_be_bytes([*reply.get(at + 2)?, *reply.get(at + 3)?]);
    let updated = checksum::adjust(current, &old, &new);
    reply
        .get_mut(at + 2..at + 4)?
        .copy_from_slice(&updated.to_be_bytes());
    Some(reply)
}
