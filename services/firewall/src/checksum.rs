//! Incremental Internet checksum updates (RFC 1624).
//!
//! NAT changes a few 16-bit-aligned fields (addresses, ports, an ICMP
//! identifier); updating the checksum from the old and new field values
//! costs a handful of additions whatever the packet size, and stays correct
//! when only the start of a packet is present (the first fragment of a
//! datagram, or the packet quoted inside an ICMP error).

/// Ones'-complement sum of `data` read as big-endian 16-bit words (an odd
/// trailing byte is padded with zero), not yet folded to 16 bits. Eight
/// bytes are added at a time as two 32-bit words (RFC 1071 2(C): the sum
/// of wider words, folded, is the same), which a segment's whole payload
/// (software segmentation, a completed blank checksum) needs.
fn sum_words(data: &[u8]) -> u32 {
    let mut acc: u64 = 0;
    let mut blocks = data.chunks_exact(8);
    for block in &mut blocks {
        let w = u64::from_be_bytes(block.try_into().unwrap_or([0; 8]));
        acc += (w >> 32) + (w & 0xffff_ffff);
    }
    for pair in blocks.remainder().chunks(2) {
        acc += u64::from(match pair {
            [hi, lo] => u16::from_be_bytes([*hi, *lo]),
            [hi] => u16::from_be_bytes([*hi, 0]),
            _ => 0,
        });
    }
    // Fold to 32 bits (then callers fold to 16).
    while acc > 0xffff_ffff {
        acc = (acc & 0xffff_ffff) + (acc >> 32);
    }
    let acc = acc as u32;
    (acc & 0xffff) + (acc >> 16)
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

    /// The plain definition: 16-bit words, one at a time.
    fn sum16(data: &[u8]) -> u32 {
        data.chunks(2)
            .map(|p| u32::from(p[0]) << 8 | u32::from(*p.get(1).unwrap_or(&0)))
            .sum()
    }

    #[test]
    fn wide_sum_folds_to_the_16_bit_sum() {
        for len in [0usize, 1, 2, 7, 8, 9, 15, 16, 17, 1500, 65535] {
            for fill in [0x00u8, 0xff, 0x5a] {
                let data: alloc::vec::Vec<u8> = (0..len)
                    .map(|i| {
                        if fill == 0x5a {
                            (i * 31 + 7) as u8
                        } else {
                            fill
                        }
                    })
                    .collect();
                assert_eq!(
                    compute(0, &data),
                    !fold(sum16(&data)),
                    "len {len} fill {fill}"
                );
                assert_eq!(compute(0x1234, &data), !fold(0x1234 + sum16(&data)));
            }
        }
    }

    #[test]
    fn odd_length_is_padded() {
        assert_eq!(compute(0, &[0x01]), !0x0100);
        assert_eq!(compute(0, &[]), 0xffff);
    }
}
