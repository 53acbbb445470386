//! The arm32 1:1 map's section descriptors (short-descriptor format,
//! TEX remap off) and a decoder for them, so the boot can print what the
//! MMU walks and host tests can check the attribute bits.

/// Section attributes: Normal, Inner/Outer Write-Back Write-Allocate
/// (TEX=001 C=1 B=1), Inner-Shareable (S=1), full access (AP=11).
pub const SECT_NORMAL: u32 = 0b10 | (1 << 2) | (1 << 3) | (0b11 << 10) | (0b001 << 12) | (1 << 16);
/// Shareable Device (TEX=000 C=0 B=1), execute-never, full access.
pub const SECT_DEVICE: u32 = 0b10 | (1 << 2) | (1 << 4) | (0b11 << 10);

/// Decodes a short-descriptor section entry's memory type (TEX, C, B,
/// with TRE off) and shareability: "Normal inner WB-WA outer WB-WA
/// inner-shareable" and the like. Returns the length written to `out`.
pub fn describe_section(desc: u32, out: &mut [u8; 96]) -> usize {
    fn cache(v: u32) -> &'static [u8] {
        match v {
            0 => b"NC",
            1 => b"WB-WA",
            2 => b"WT",
            _ => b"WB",
        }
    }
    let mut n = 0;
    let mut put = |s: &[u8]| {
        for &b in s {
            if n < out.len() {
                out[n] = b;
                n += 1;
            }
        }
    };
    if desc & 0b11 != 0b10 || desc & (1 << 18) != 0 {
        put(b"not a section");
        return n;
    }
    let (tex, c, b) = ((desc >> 12) & 7, (desc >> 3) & 1, (desc >> 2) & 1);
    let normal = if tex & 0b100 != 0 {
        // TEX[2] = 1: cacheable memory, outer policy TEX[1:0], inner C:B.
        put(b"Normal inner ");
        put(cache((c << 1) | b));
        put(b" outer ");
        put(cache(tex & 3));
        true
    } else {
        match (tex, c, b) {
            (0, 0, 0) => put(b"Strongly-ordered"),
            (0, 0, 1) => put(b"Shareable Device"),
            (0, 1, 0) => put(b"Normal inner WT outer WT"),
            (0, 1, 1) => put(b"Normal inner WB outer WB"),
            (1, 0, 0) => put(b"Normal inner NC outer NC"),
            (1, 1, 1) => put(b"Normal inner WB-WA outer WB-WA"),
            (2, 0, 0) => put(b"Non-shareable Device"),
            _ => put(b"reserved"),
        }
        !(tex == 0 && c == 0) && tex != 2
    };
    if normal {
        put(if desc & (1 << 16) != 0 {
            b" inner-shareable"
        } else {
            b" non-shareable"
        });
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(desc: u32) -> String {
        let mut out = [0u8; 96];
        let n = describe_section(desc, &mut out);
        String::from_utf8(out[..n].to_vec()).unwrap()
    }

    #[test]
    fn shared_pages_are_normal_write_back_inner_shareable() {
        assert_eq!(
            text(SECT_NORMAL | 0x4000_0000),
            "Normal inner WB-WA outer WB-WA inner-shareable"
        );
        assert_eq!(SECT_NORMAL & (1 << 4), 0, "RAM must be executable");
        assert_eq!((SECT_NORMAL >> 10) & 3, 0b11, "full access");
    }

    #[test]
    fn device_space_is_shareable_device_and_execute_never() {
        assert_eq!(text(SECT_DEVICE), "Shareable Device");
        assert_ne!(SECT_DEVICE & (1 << 4), 0);
    }

    #[test]
    fn other_encodings() {
        assert_eq!(text(0b10), "Strongly-ordered");
        assert_eq!(
            text(0b10 | (0b110 << 12) | (1 << 3) | (1 << 16)),
            "Normal inner WT outer WT inner-shareable"
        );
        assert_eq!(
            text(0b10 | (0b101 << 12) | (1 << 2)),
            "Normal inner WB-WA outer WB-WA non-shareable"
        );
        assert_eq!(text(0b01), "not a section");
        assert_eq!(text(0b10 | (1 << 18)), "not a section");
    }
}
