//! The frames a hostile client sends: well-formed Ethernet/IPv4 (correct
//! checksums, its own MAC and address, so that they pass every check a
//! backend makes of a client and load what lies behind), built into a
//! buffer.

use alloc::vec::Vec;
use core::net::Ipv4Addr;

/// The addresses of a client's frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoints {
    /// Our MAC (the vif's `mac`).
    pub mac: [u8; 6],
    /// The MAC frames go to (Qubes' gateway MAC `fe:ff:ff:ff:ff:ff`).
    pub gw_mac: [u8; 6],
    /// Our address (the vif's `ip`).
    pub ip: Ipv4Addr,
}

/// The ones' complement sum of `data` folded to 16 bits, added to `start`.
fn sum(start: u32, data: &[u8]) -> u32 {
    let mut s = start;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        s += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        s += u32::from(*last) << 8;
    }
    s
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// An IPv4 packet in an Ethernet frame: `l4` after a 20-byte header of
/// protocol `proto` to `dst`, with identification `id` and the fragment
/// field `frag` (flags and offset in 8-byte units). The L4 checksum (at
/// `csum_at` into `l4`, for TCP and UDP) is filled over the pseudo header
/// when the packet is not a fragment.
fn ipv4(
    ep: &Endpoints,
    dst: Ipv4Addr,
    proto: u8,
    id: u16,
    frag: u16,
    mut l4: Vec<u8>,
    csum_at: Option<usize>,
) -> Vec<u8> {
    let total = 20 + l4.len();
    if let Some(at) = csum_at {
        if frag & 0x3fff == 0 && at + 2 <= l4.len() {
            l4[at] = 0;
            l4[at + 1] = 0;
            let mut s = sum(0, &ep.ip.octets());
            s = sum(s, &dst.octets());
            s += u32::from(proto) + l4.len() as u32;
            let c = fold(sum(s, &l4));
            let c = if c == 0 && proto == 17 { 0xffff } else { c };
            l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
    }
    let mut f = Vec::with_capacity(14 + total);
    f.extend_from_slice(&ep.gw_mac);
    f.extend_from_slice(&ep.mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    h[4..6].copy_from_slice(&id.to_be_bytes());
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&ep.ip.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let c = fold(sum(0, &h));
    h[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&h);
    f.extend_from_slice(&l4);
    f
}

/// A UDP datagram of `payload` bytes from `sport` to `dst:dport`.
pub fn udp(ep: &Endpoints, dst: Ipv4Addr, sport: u16, dport: u16, payload: usize) -> Vec<u8> {
    let len = 8 + payload;
    let mut l4 = alloc::vec![0u8; len];
    l4[0..2].copy_from_slice(&sport.to_be_bytes());
    l4[2..4].copy_from_slice(&dport.to_be_bytes());
    l4[4..6].copy_from_slice(&(len as u16).to_be_bytes());
    for (i, b) in l4[8..].iter_mut().enumerate() {
        *b = i as u8;
    }
    ipv4(ep, dst, 17, sport, 0x4000, l4, Some(6))
}

/// A TCP SYN from `sport` to `dst:dport` with sequence number `seq`: a
/// new flow for every port pair.
pub fn tcp_syn(ep: &Endpoints, dst: Ipv4Addr, sport: u16, dport: u16, seq: u32) -> Vec<u8> {
    let mut l4 = alloc::vec![0u8; 20];
    l4[0..2].copy_from_slice(&sport.to_be_bytes());
    l4[2..4].copy_from_slice(&dport.to_be_bytes());
    l4[4..8].copy_from_slice(&seq.to_be_bytes());
    l4[12] = 5 << 4;
    l4[13] = 0x02; // SYN
    l4[14..16].copy_from_slice(&64240u16.to_be_bytes());
    ipv4(ep, dst, 6, sport, 0x4000, l4, Some(16))
}

/// The first fragment (more fragments follow, offset 0) of a UDP datagram
/// with identification `id`, `payload` bytes long: never completed.
pub fn udp_first_fragment(ep: &Endpoints, dst: Ipv4Addr, id: u16, payload: usize) -> Vec<u8> {
    let payload = payload & !7;
    let mut l4 = alloc::vec![0u8; 8 + payload];
    l4[0..2].copy_from_slice(&id.to_be_bytes());
    l4[2..4].copy_from_slice(&9u16.to_be_bytes());
    l4[4..6].copy_from_slice(&((8 + 2 * payload) as u16).to_be_bytes());
    ipv4(ep, dst, 17, id, 0x2000, l4, None)
}

/// An ICMP echo request to `dst` (answers come back to us).
pub fn ping(ep: &Endpoints, dst: Ipv4Addr, seq: u16) -> Vec<u8> {
    let mut l4 = alloc::vec![0u8; 8 + 32];
    l4[0] = 8;
    l4[4..6].copy_from_slice(&0x6d6fu16.to_be_bytes());
    l4[6..8].copy_from_slice(&seq.to_be_bytes());
    let c = fold(sum(0, &l4));
    l4[2..4].copy_from_slice(&c.to_be_bytes());
    ipv4(ep, dst, 1, seq, 0x4000, l4, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EP: Endpoints = Endpoints {
        mac: [0x00, 0x16, 0x3e, 1, 2, 3],
        gw_mac: [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff],
        ip: Ipv4Addr::new(10, 137, 0, 40),
    };
    const DST: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);

    fn verifies(data: &[u8]) -> bool {
        fold(sum(0, data)) == 0
    }

    fn pseudo_verifies(f: &[u8]) -> bool {
        let ip = &f[14..34];
        let l4 = &f[34..];
        let mut s = sum(0, &ip[12..20]);
        s += u32::from(ip[9]) + l4.len() as u32;
        fold(sum(s, l4)) == 0
    }

    #[test]
    fn headers_and_checksums_verify() {
        for f in [
            udp(&EP, DST, 4000, 9, 18),
            udp(&EP, DST, 4000, 9, 1001),
            tcp_syn(&EP, DST, 40000, 80, 1234),
        ] {
            assert_eq!(&f[6..12], &EP.mac);
            assert_eq!(&f[12..14], &[8, 0]);
            assert!(verifies(&f[14..34]), "IPv4 header checksum");
            assert_eq!(
                usize::from(u16::from_be_bytes([f[16], f[17]])),
                f.len() - 14
            );
            assert!(pseudo_verifies(&f), "L4 checksum");
        }
        let p = ping(&EP, DST, 7);
        assert!(verifies(&p[34..]), "ICMP checksum");
    }

    #[test]
    fn a_first_fragment_says_more_follow() {
        let f = udp_first_fragment(&EP, DST, 77, 1000);
        assert!(verifies(&f[14..34]));
        assert_eq!(u16::from_be_bytes([f[20], f[21]]), 0x2000, "MF, offset 0");
        assert_eq!(f.len(), 14 + 20 + 8 + 1000);
    }
}
