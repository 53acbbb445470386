//! Checking what crossed the network: a CRC-32 and a deterministic
//! byte stream for the TCP source.

/// CRC-32 as zlib computes it (reflected polynomial 0xEDB88320, the
/// IEEE 802.3 CRC): what busybox's `crc32` in the rig's dom0 and Python's
/// `zlib.crc32` print, so a transfer is compared without storing it.
#[derive(Clone, Debug, Default)]
pub struct Crc32 {
    crc: u32,
    len: u64,
}

/// Slicing-by-8 tables: eight bytes per step instead of one.
const fn tables() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut i = 0;
    while i < 256 {
        let mut k = 1;
        while k < 8 {
            let prev = t[k - 1][i];
            t[k][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            k += 1;
        }
        i += 1;
    }
    t
}

static TABLES: [[u32; 256]; 8] = tables();

impl Crc32 {
    /// Nothing summed yet.
    pub const fn new() -> Self {
        Self { crc: 0, len: 0 }
    }

    /// Add `data` to the sum.
    pub fn update(&mut self, data: &[u8]) {
        let t = &TABLES;
        let mut crc = !self.crc;
        let mut chunks = data.chunks_exact(8);
        for c in &mut chunks {
            let lo = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) ^ crc;
            let hi = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
            crc = t[7][(lo & 0xff) as usize]
                ^ t[6][((lo >> 8) & 0xff) as usize]
                ^ t[5][((lo >> 16) & 0xff) as usize]
                ^ t[4][(lo >> 24) as usize]
                ^ t[3][(hi & 0xff) as usize]
                ^ t[2][((hi >> 8) & 0xff) as usize]
                ^ t[1][((hi >> 16) & 0xff) as usize]
                ^ t[0][(hi >> 24) as usize];
        }
        for &b in chunks.remainder() {
            crc = (crc >> 8) ^ t[0][((crc ^ u32::from(b)) & 0xff) as usize];
        }
        self.crc = !crc;
        self.len += data.len() as u64;
    }

    /// Bytes summed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was summed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The CRC of the bytes so far.
    pub fn value(&self) -> u32 {
        self.crc
    }
}

/// A deterministic pseudo-random byte stream (xorshift64*), cheap enough
/// to saturate a link: what the TCP source sends.
#[derive(Clone, Debug)]
pub struct Pattern {
    state: u64,
    word: [u8; 8],
    used: usize,
}

impl Pattern {
    /// The stream for `seed` (0 is mapped to a fixed non-zero seed).
    pub fn new(seed: u64) -> Self {
        Self {
            state: if seed == 0 {
                0x9E37_79B9_7F4A_7C15
            } else {
                seed
            },
            word: [0; 8],
            used: 8,
        }
    }

    /// Fill `buf` with the next bytes of the stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            if self.used == 8 {
                let mut x = self.state;
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                self.state = x;
                self.word = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
                self.used = 0;
            }
            *b = self.word[self.used];
            self.used += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Values printed by busybox `crc32` and Python's `zlib.crc32`.
    #[test]
    fn matches_zlib_crc32() {
        let mut c = Crc32::new();
        c.update(b"hello\n");
        assert_eq!((c.value(), c.len()), (0x363a_3020, 6));
        let mut z = Crc32::new();
        for _ in 0..100 {
            z.update(&[0u8; 1000]);
        }
        assert_eq!((z.value(), z.len()), (0xd411_957d, 100000));
        assert_eq!(Crc32::new().value(), 0);
        let mut q = Crc32::new();
        q.update(b"The quick brown fox jumps over the lazy dog");
        assert_eq!(q.value(), 0x414f_a339);
    }

    #[test]
    fn split_updates_equal_one_update() {
        let mut p = Pattern::new(7);
        let mut data = vec![0u8; 10_000];
        p.fill(&mut data);
        let mut whole = Crc32::new();
        whole.update(&data);
        let mut parts = Crc32::new();
        for chunk in data.chunks(333) {
            parts.update(chunk);
        }
        assert_eq!(whole.value(), parts.value());
    }

    #[test]
    fn pattern_is_deterministic_across_chunkings() {
        let mut a = Pattern::new(42);
        let mut b = Pattern::new(42);
        let mut x = vec![0u8; 4099];
        a.fill(&mut x);
        let mut y = vec![0u8; 4099];
        for chunk in y.chunks_mut(5) {
            b.fill(chunk);
        }
        assert_eq!(x, y);
        assert_ne!(x[..8], x[8..16]);
    }
}
