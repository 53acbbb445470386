//! Incremental Internet checksum updates (RFC 1624).
//!
//! NAT changes a few 16-bit-aligned fields (addresses, ports, an ICMP
//! identifier); updating the checksum from the old and new field values
//! costs a handful of additions whatever the packet size, and stays correct
//! when only the start of a packet is present (the first fragment of a
//! datagram, or the packet quoted inside an ICMP error).

/// Ones'-complement sum of `data` read as big-endian 16-bit words (an odd
/// trailing byte is padded with zero), not yet folded.
fn sum_words(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|pair| match pair {
            [hi, lo] => u32::from(u16::from_be_bytes([*hi, *lo])),
            [hi] => u32::from(u16::from_be_bytes([*hi, 0])),
            _ => 0,
        })
        .sum()
}

/// Fold carries back into 16 bits.
fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The checksum `checksum` after the covered bytes `old` were replaced by
/// `new` (same length, starting at an even offset of the covered data):
/// `HC' = ~(~HC + ~m + m')`, RFC 1624 equation 3.
pub fn adjust(checksum: u16, old: &[u8], new: &[u8]) -> u16 {
    let old_sum = fold(sum_words(old));
    let sum = u32::from(!checksum) + u32::from(!old_sum) + sum_words(new);
    !fold(sum)
}

/// The full Internet checksum of `data` with `initial` (for example a
/// pseudo-header sum) already added.
pub fn compute(initial: u32, data: &[u8]) -> u16 {
    !fold(initial.wrapping_add(sum_words(data)))
}

/// Sum of the IPv4 pseudo-header (RFC 793 section 3.1, RFC 768), for
/// TCP and UDP.
pub fn pseudo_header_v4(src: &[u8; 4], dst: &[u8; 4], protocol: u8, len: u32) -> u32 {
    let mut sum = sum_words(src) + sum_words(dst);
    sum += (len >> 16) + (len & 0xffff);
    sum + u32::from(protocol)
}

/// The partial (not complemented) sum `partial` after the pseudo-header
/// bytes `old` were replaced by `new`: what a blank (`CHECKSUM_PARTIAL`)
/// checksum field must become when NAT rewrites an address, RFC 1624's
/// update applied to the sum itself.
pub fn adjust_partial(partial: u16, old: &[u8], new: &[u8]) -> u16 {
    !adjust(!partial, old, new)
}

/// Sum of the IPv6 pseudo-header (RFC 8200 section 8.1), for ICMPv6.
pub fn pseudo_header_v6(src: &[u8; 16], dst: &[u8; 16], next_header: u8, len: u32) -> u32 {
    let mut sum = sum_words(src) + sum_words(dst);
    sum += (len >> 16) + (len & 0xffff);
    sum + u32::from(next_header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjust_matches_recomputation() {
        let mut data = [
            0x45u8, 0x00, 0x00, 0x54, 0x12, 0x34, 0x40, 0x00, 0x40, 0x01, 0x00, 0x00, 10, 137, 0,
            5, 1, 1, 1, 1,
        ];
        let before = compute(0, &data);
        let old = [10u8, 137, 0, 5];
        let new = [192u8, 168, 7, 200];
        data[12..16].copy_from_slice(&new);
        let recomputed = compute(0, &data);
        assert_eq!(adjust(before, &old, &new), recomputed);
        assert_ne!(before, recomputed);
    }

    #[test]
    fn odd_length_is_padded() {
        assert_eq!(compute(0, &[0x01]), !0x0100);
        assert_eq!(compute(0, &[]), 0xffff);
    }
}
