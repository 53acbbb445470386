//! Just enough of IPv4, IPv6, TCP and UDP for the gateway: addresses, ports,
//! TCP flags and options, and incremental checksum updates (RFC 1624) for the
//! fields we rewrite. Every accessor is bounds-checked; a packet we cannot
//! parse is reported as such, never indexed blindly.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IP protocol number of TCP.
pub const TCP: u8 = 6;
/// IP protocol number of UDP.
pub const UDP: u8 = 17;

/// The parsed layout of an IP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpInfo {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Transport protocol (IPv6: the first next-header; extension headers are not walked).
    pub protocol: u8,
    /// Offset of the transport header, or `None` for non-first fragments.
    pub l4_offset: Option<usize>,
    /// Length of the packet per its header (may be less than the buffer).
    pub len: usize,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at + 2)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

/// Parses the IP header; `None` for anything that is not a sane IPv4/IPv6 packet.
pub fn parse(b: &[u8]) -> Option<IpInfo> {
    match b.first()? >> 4 {
        4 => {
            let ihl = usize::from(b.first()? & 0x0f) * 4;
            let len = usize::from(be16(b, 2)?);
            if ihl < 20 || len < ihl || len > b.len() {
                return None;
            }
            let frag = be16(b, 6)? & 0x1fff;
            let s: [u8; 4] = b.get(12..16)?.try_into().ok()?;
            let d: [u8; 4] = b.get(16..20)?.try_into().ok()?;
            Some(IpInfo {
                src: IpAddr::V4(Ipv4Addr::from(s)),
                dst: IpAddr::V4(Ipv4Addr::from(d)),
                protocol: *b.get(9)?,
                l4_offset: (frag == 0).then_some(ihl),
                len,
            })
        }
        6 => {
            let len = 40 + usize::from(be16(b, 4)?);
            if len > b.len() {
                return None;
            }
            let s: [u8; 16] = b.get(8..24)?.try_into().ok()?;
            let d: [u8; 16] = b.get(24..40)?.try_into().ok()?;
            Some(IpInfo {
                src: IpAddr::V6(Ipv6Addr::from(s)),
                dst: IpAddr::V6(Ipv6Addr::from(d)),
                protocol: *b.get(6)?,
                l4_offset: Some(40),
                len,
            })
        }
        _ => None,
    }
}

/// Source and destination ports of a TCP or UDP packet.
pub fn ports(b: &[u8], info: &IpInfo) -> Option<(u16, u16)> {
    if info.protocol != TCP && info.protocol != UDP {
        return None;
    }
    let off = info.l4_offset?;
    Some((be16(b, off)?, be16(b, off + 2)?))
}

/// Offset of the transport checksum field, if the header is present.
fn l4_checksum_offset(b: &[u8], info: &IpInfo) -> Option<usize> {
    let off = info.l4_offset?;
    let at = match info.protocol {
        TCP => off + 16,
        UDP => off + 6,
        _ => return None,
    };
    (at + 2 <= info.len.min(b.len())).then_some(at)
}

/// RFC 1624 incremental update of a one's-complement checksum when `old`
/// bytes (even length) become `new`.
pub fn checksum_adjust(checksum: u16, old: &[u8], new: &[u8]) -> u16 {
    let mut sum = u32::from(!checksum);
    for c in old.chunks(2) {
        let w = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
        sum += u32::from(!w);
    }
    for c in new.chunks(2) {
        let w = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn adjust_field(b: &mut [u8], at: usize, old: &[u8], new: &[u8], udp_zero_means_none: bool) {
    let Some(f) = b.get_mut(at..at + 2) else {
        return;
    };
    let c = u16::from_be_bytes([f[0], f[1]]);
    if udp_zero_means_none && c == 0 {
        return;
    }
    let mut n = checksum_adjust(c, old, new);
    if udp_zero_means_none && n == 0 {
        n = 0xffff;
    }
    f.copy_from_slice(&n.to_be_bytes());
}

/// Rewrites the source (`source == true`) or destination address, fixing the
/// IPv4 header checksum and the TCP/UDP checksum. Returns false (packet
/// untouched) if the family differs or the packet is too short.
pub fn rewrite_address(b: &mut [u8], info: &IpInfo, source: bool, new: IpAddr) -> bool {
    let (at, old_bytes, new_bytes): (usize, [u8; 16], [u8; 16]);
    let width;
    match (if source { info.src } else { info.dst }, new) {
        (IpAddr::V4(o), IpAddr::V4(n)) => {
            at = if source { 12 } else { 16 };
            width = 4;
            let mut ob = [0u8; 16];
            let mut nb = [0u8; 16];
            ob[..4].copy_from_slice(&o.octets());
            nb[..4].copy_from_slice(&n.octets());
            (old_bytes, new_bytes) = (ob, nb);
        }
        (IpAddr::V6(o), IpAddr::V6(n)) => {
            at = if source { 8 } else { 24 };
            width = 16;
            (old_bytes, new_bytes) = (o.octets(), n.octets());
        }
        _ => return false,
    }
    let Some(field) = b.get_mut(at..at + width) else {
        return false;
    };
    field.copy_from_slice(&new_bytes[..width]);
    if width == 4 {
        adjust_field(b, 10, &old_bytes[..4], &new_bytes[..4], false);
    }
    if let Some(c) = l4_checksum_offset(b, info) {
        adjust_field(
            b,
            c,
            &old_bytes[..width],
            &new_bytes[..width],
            info.protocol == UDP,
        );
    }
    true
}

/// IP protocol number of ICMP.
pub const ICMP: u8 = 1;
/// IP protocol number of ICMPv6.
pub const ICMPV6: u8 = 58;

/// The Internet checksum (RFC 1071) of `data`.
pub fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Reads the 16-bit big-endian field at `at`.
pub fn get_u16(b: &[u8], at: usize) -> Option<u16> {
    be16(b, at)
}

/// Writes the 16-bit field at `at` and adjusts the checksum at `checksum_at`
/// (a UDP checksum when `udp` is set: zero stays "no checksum"). Returns
/// false (packet untouched) if either field is out of bounds.
pub fn set_u16(b: &mut [u8], at: usize, value: u16, checksum_at: usize, udp: bool) -> bool {
    let (Some(old), true) = (be16(b, at), checksum_at + 2 <= b.len()) else {
        return false;
    };
    b[at..at + 2].copy_from_slice(&value.to_be_bytes());
    adjust_field(
        b,
        checksum_at,
        &old.to_be_bytes(),
        &value.to_be_bytes(),
        udp,
    );
    true
}

/// Adjusts the checksum at `checksum_at` for `old` bytes having become `new`
/// elsewhere (e.g. an address in a pseudo-header). False if out of bounds.
pub fn adjust_checksum(b: &mut [u8], checksum_at: usize, old: &[u8], new: &[u8]) -> bool {
    if checksum_at + 2 > b.len() {
        return false;
    }
    adjust_field(b, checksum_at, old, new, false);
    true
}

/// Lowers the MSS option of a TCP SYN to `max`; returns whether it changed.
pub fn clamp_mss(b: &mut [u8], info: &IpInfo, max: u16) -> bool {
    if info.protocol != TCP {
        return false;
    }
    let Some(off) = info.l4_offset else {
        return false;
    };
    let end = info.len.min(b.len());
    let (Some(&flags), Some(&data_off)) = (b.get(off + 13), b.get(off + 12)) else {
        return false;
    };
    if flags & 0x02 == 0 {
        return false; // not a SYN
    }
    let header_end = (off + usize::from(data_off >> 4) * 4).min(end);
    let mut i = off + 20;
    while i < header_end {
        let Some(&kind) = b.get(i) else {
            return false;
        };
        match kind {
            0 => return false,
            1 => i += 1,
            _ => {
                let Some(&len) = b.get(i + 1) else {
                    return false;
                };
                let len = usize::from(len);
                if len < 2 || i + len > header_end {
                    return false;
                }
                if kind == 2 && len == 4 {
                    let Some(cur) = be16(b, i + 2) else {
                        return false;
                    };
                    if cur <= max {
                        return false;
                    }
                    let old = cur.to_be_bytes();
                    let new = max.to_be_bytes();
                    b[i + 2..i + 4].copy_from_slice(&new);
                    adjust_field(b, off + 16, &old, &new, false);
                    return true;
                }
                i += len;
            }
        }
    }
    false
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Full one's-complement checksum, for checking the incremental updates.
    pub fn checksum(data: &[u8]) -> u16 {
        let mut sum = 0u32;
        for c in data.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    /// Builds an IPv4 TCP or UDP packet with correct checksums.
    pub fn v4(
        proto: u8,
        src: [u8; 4],
        dst: [u8; 4],
        sport: u16,
        dport: u16,
        tcp_opts: &[u8],
        payload: &[u8],
    ) -> Vec<u8> {
        let l4h = if proto == TCP { 20 + tcp_opts.len() } else { 8 };
        let total = 20 + l4h + payload.len();
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[8] = 64;
        p[9] = proto;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        let c = checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p[20..22].copy_from_slice(&sport.to_be_bytes());
        p[22..24].copy_from_slice(&dport.to_be_bytes());
        if proto == TCP {
            p[32] = ((l4h / 4) as u8) << 4;
            p[33] = 0x02; // SYN
            p[40..40 + tcp_opts.len()].copy_from_slice(tcp_opts);
        } else {
            p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        }
        p[20 + l4h..].copy_from_slice(payload);
        let c = l4_checksum(&p);
        let at = if proto == TCP { 36 } else { 26 };
        p[at..at + 2].copy_from_slice(&c.to_be_bytes());
        p
    }

    /// The TCP/UDP checksum an IPv4 packet should carry (computed with the field zeroed).
    pub fn l4_checksum(p: &[u8]) -> u16 {
        let proto = p[9];
        let at = if proto == TCP { 36 } else { 26 };
        let mut seg = p[20..].to_vec();
        seg[at - 20] = 0;
        seg[at - 19] = 0;
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&p[12..20]);
        pseudo.extend_from_slice(&[0, proto]);
        pseudo.extend_from_slice(&(seg.len() as u16).to_be_bytes());
        pseudo.extend_from_slice(&seg);
        checksum(&pseudo)
    }

    pub fn checksums_valid(p: &[u8]) -> bool {
        let at = if p[9] == TCP { 36 } else { 26 };
        checksum(&p[..20]) == 0 && u16::from_be_bytes([p[at], p[at + 1]]) == l4_checksum(p)
    }

    #[test]
    fn rewrite_keeps_checksums_valid() {
        let mut p = v4(
            UDP,
            [10, 137, 0, 5],
            [10, 139, 1, 1],
            5555,
            53,
            &[],
            b"query!",
        );
        assert!(checksums_valid(&p));
        let info = parse(&p).unwrap();
        assert_eq!(ports(&p, &info), Some((5555, 53)));
        assert!(rewrite_address(
            &mut p,
            &info,
            false,
            "9.9.9.9".parse().unwrap()
        ));
        assert_eq!(parse(&p).unwrap().dst, "9.9.9.9".parse::<IpAddr>().unwrap());
        assert!(checksums_valid(&p));
        let info = parse(&p).unwrap();
        assert!(!rewrite_address(
            &mut p,
            &info,
            true,
            "::1".parse().unwrap()
        ));
    }

    #[test]
    fn mss_clamped_only_when_larger() {
        let opts = [2, 4, 0x05, 0xb4, 1, 1, 4, 2]; // MSS 1460, NOP, NOP, SACK-permitted
        let mut p = v4(TCP, [10, 0, 0, 1], [1, 1, 1, 1], 40000, 443, &opts, &[]);
        let info = parse(&p).unwrap();
        assert!(clamp_mss(&mut p, &info, 1380));
        assert_eq!(&p[42..44], &1380u16.to_be_bytes());
        assert!(checksums_valid(&p));
        assert!(!clamp_mss(&mut p, &info, 1400));
        assert_eq!(&p[42..44], &1380u16.to_be_bytes());
    }

    #[test]
    fn truncated_and_lying_headers_rejected() {
        let p = v4(UDP, [10, 0, 0, 1], [1, 1, 1, 1], 1, 2, &[], b"x");
        for cut in 0..p.len() {
            assert!(parse(&p[..cut]).is_none(), "{cut}");
        }
        let mut bad = p.clone();
        bad[0] = 0x44; // IHL 16 bytes
        assert!(parse(&bad).is_none());
        let mut opts_lie = v4(
            TCP,
            [10, 0, 0, 1],
            [1, 1, 1, 1],
            1,
            2,
            &[2, 4, 0xff, 0xff],
            &[],
        );
        opts_lie[32] = 0xf0; // data offset 60 bytes, beyond the packet
        let info = parse(&opts_lie).unwrap();
        let _ = clamp_mss(&mut opts_lie, &info, 1000);
    }
}
