//! Packets as the backend hands them out and takes them in, with their
//! offload metadata; and a software checksum fill.

use alloc::vec::Vec;

pub use xen::netif::{Gso, GsoKind};

/// Offload metadata travelling with a packet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offload {
    /// The transport checksum is blank (partial): someone must fill it.
    pub csum_blank: bool,
    /// The checksum is known good.
    pub data_validated: bool,
    /// A GSO super-packet.
    pub gso: Option<Gso>,
}

/// One Ethernet frame and its metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Packet {
    /// The frame.
    pub data: Vec<u8>,
    /// Its offloads.
    pub offload: Offload,
}

fn sum16(bytes: &[u8], mut acc: u32) -> u32 {
    let mut chunks = bytes.chunks_exact(2);
    for c in &mut chunks {
        acc = acc.wrapping_add(u32::from(u16::from_be_bytes([c[0], c[1]])));
    }
    if let [last] = chunks.remainder() {
        acc = acc.wrapping_add(u32::from(*last) << 8);
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// Fill a blank TCP or UDP checksum of an IPv4 or IPv6 frame in software
/// (for a frontend that refuses blank checksums). Returns false, changing
/// nothing, for anything it cannot parse (other protocols, IPv6 extension
/// headers, truncated frames).
pub fn fill_checksum(frame: &mut [u8]) -> bool {
    let Some(ethertype) = frame.get(12..14) else {
        return false;
    };
    let (l4, proto, pseudo) = match ethertype {
        [0x08, 0x00] => {
            let Some(&vihl) = frame.get(14) else {
                return false;
            };
            let ihl = usize::from(vihl & 0x0f) * 4;
            let Some(ip) = frame.get(14..14 + 20) else {
                return false;
            };
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            if vihl >> 4 != 4 || ihl < 20 || total < ihl || 14 + total > frame.len() {
                return false;
            }
            let proto = ip[9];
            let len = total - ihl;
            let mut acc = sum16(&ip[12..20], 0);
            acc = acc.wrapping_add(u32::from(proto)).wrapping_add(len as u32);
            (14 + ihl..14 + total, proto, acc)
        }
        [0x86, 0xdd] => {
            let Some(ip) = frame.get(14..14 + 40) else {
                return false;
            };
            let len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            if 54 + len > frame.len() {
                return false;
            }
            let proto = ip[6];
            let mut acc = sum16(&ip[8..40], 0);
            acc = acc.wrapping_add(u32::from(proto)).wrapping_add(len as u32);
            (54..54 + len, proto, acc)
        }
        _ => return false,
    };
    let at = match proto {
        6 => 16,
        17 => 6,
        _ => return false,
    };
    let Some(seg) = frame.get_mut(l4) else {
        return false;
    };
    if seg.len() < at + 2 || (proto == 6 && seg.len() < 20) || (proto == 17 && seg.len() < 8) {
        return false;
    }
    seg[at] = 0;
    seg[at + 1] = 0;
    let mut csum = fold(sum16(seg, pseudo));
    if proto == 17 && csum == 0 {
        csum = 0xffff;
    }
    seg[at..at + 2].copy_from_slice(&csum.to_be_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verify(seg_sum_with_pseudo: u32) -> bool {
        fold(seg_sum_with_pseudo) == 0
    }

    #[test]
    fn filled_checksums_verify_and_junk_is_left_alone() {
        // Ethernet + IPv4 (20) + UDP (8) + 5 bytes payload.
        let mut f = alloc::vec![0u8; 14 + 20 + 8 + 5];
        f[12] = 0x08;
        f[14] = 0x45;
        f[16..18].copy_from_slice(&33u16.to_be_bytes());
        f[23] = 17;
        f[26..30].copy_from_slice(&[10, 0, 0, 1]);
        f[30..34].copy_from_slice(&[10, 0, 0, 2]);
        f[38..40].copy_from_slice(&13u16.to_be_bytes());
        f[42..47].copy_from_slice(b"hello");
        assert!(fill_checksum(&mut f));
        let pseudo = sum16(&f[26..34], 0) + 17 + 13;
        assert!(verify(sum16(&f[34..], pseudo)));
        assert_ne!(&f[40..42], &[0, 0]);

        // IPv6 + TCP (20) + odd payload.
        let mut g = alloc::vec![0u8; 14 + 40 + 20 + 3];
        g[12] = 0x86;
        g[13] = 0xdd;
        g[14] = 0x60;
        g[18..20].copy_from_slice(&23u16.to_be_bytes());
        g[20] = 6;
        g[22] = 0xfe;
        g[53] = 1;
        g[54 + 12] = 0x50;
        g[74..77].copy_from_slice(b"abc");
        assert!(fill_checksum(&mut g));
        let pseudo = sum16(&g[22..54], 0) + 6 + 23;
        assert!(verify(sum16(&g[54..], pseudo)));

        for junk in [&[0u8; 10][..], &[0u8; 60][..]] {
            let mut j = junk.to_vec();
            assert!(!fill_checksum(&mut j));
            assert_eq!(j, junk);
        }
        let mut truncated = f.clone();
        truncated[16..18].copy_from_slice(&200u16.to_be_bytes());
        assert!(!fill_checksum(&mut truncated));
    }
}
