//! Poly1305 (RFC 8439 section 2.5) in radix 2^64: the accumulator in two
//! 64-bit limbs and a few bits, one 128-bit product per limb pair. Plain
//! integer code, so it runs as it is on the soft-float image targets.

/// A Poly1305 computation over whole 16-byte blocks.
pub(crate) struct Poly1305 {
    r0: u64,
    r1: u64,
    /// 5 * (r1 >> 2): r1 * 2^128 folded back by 2^130 = 5 (mod p).
    s1: u64,
    h0: u64,
    h1: u64,
    h2: u64,
    s: [u64; 2],
}

fn le64(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[..8]);
    u64::from_le_bytes(w)
}

impl Poly1305 {
    /// Starts a MAC with the 32-byte one-time key `r || s`.
    pub(crate) fn new(key: &[u8; 32]) -> Self {
        let r0 = le64(&key[0..8]) & 0x0fff_fffc_0fff_ffff;
        let r1 = le64(&key[8..16]) & 0x0fff_fffc_0fff_fffc;
        Self {
            r0,
            r1,
            s1: r1 + (r1 >> 2),
            h0: 0,
            h1: 0,
            h2: 0,
            s: [le64(&key[16..24]), le64(&key[24..32])],
        }
    }

    /// Absorbs `data` as 16-byte blocks; a short last block is padded with
    /// zeros (the AEAD construction's padding), not with the 0x01 marker.
    pub(crate) fn update_padded(&mut self, data: &[u8]) {
        let mut chunks = data.chunks_exact(16);
        for c in &mut chunks {
            self.block(le64(&c[0..8]), le64(&c[8..16]));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 16];
            b[..rest.len()].copy_from_slice(rest);
            self.block(le64(&b[0..8]), le64(&b[8..16]));
        }
    }

    /// h = (h + m + 2^128) * r mod 2^130 - 5 (partially reduced).
    #[inline(always)]
    pub(crate) fn block(&mut self, m0: u64, m1: u64) {
        let (h0, c) = self.h0.overflowing_add(m0);
        let (h1, c1) = self.h1.overflowing_add(m1);
        let (h1, c2) = h1.overflowing_add(c as u64);
        let h2 = self.h2 + 1 + c1 as u64 + c2 as u64;
        let (r0, r1, s1) = (self.r0 as u128, self.r1 as u128, self.s1 as u128);
        let (h0, h1) = (h0 as u128, h1 as u128);
        // h2 < 8 and r0, r1 < 2^60, so no sum below overflows 128 bits.
        let d0 = h0 * r0 + h1 * s1;
        let d1 = h0 * r1 + h1 * r0 + (h2 as u128) * s1 + (d0 >> 64);
        let d2 = h2 * self.r0 + (d1 >> 64) as u64;
        // Bits from 2^130 up come back multiplied by 5.
        let c = (d2 >> 2) * 5;
        let (n0, k0) = (d0 as u64).overflowing_add(c);
        let (n1, k1) = (d1 as u64).overflowing_add(k0 as u64);
        self.h0 = n0;
        self.h1 = n1;
        self.h2 = (d2 & 3) + k1 as u64;
    }

    /// The 16-byte tag: h fully reduced mod 2^130 - 5, plus s mod 2^128.
    pub(crate) fn finish(self) -> [u8; 16] {
        let (mut h0, mut h1, h2) = (self.h0, self.h1, self.h2);
        // h < 2 * p here; one conditional subtraction of p, in constant time
        // (g = h + 5 - 2^130, taken when it does not borrow).
        let (g0, c) = h0.overflowing_add(5);
        let (g1, c1) = h1.overflowing_add(c as u64);
        let g2 = h2.wrapping_add(c1 as u64).wrapping_sub(4);
        // g2's top bit set: h < p, keep h.
        let keep = (g2 >> 63).wrapping_neg();
        h0 = (h0 & keep) | (g0 & !keep);
        h1 = (h1 & keep) | (g1 & !keep);
        let (t0, c) = h0.overflowing_add(self.s[0]);
        let t1 = h1.wrapping_add(self.s[1]).wrapping_add(c as u64);
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&t0.to_le_bytes());
        out[8..].copy_from_slice(&t1.to_le_bytes());
        out
    }
}

impl Drop for Poly1305 {
    fn drop(&mut self) {
        // The one-time key (r and s) and the state; zeroize's writes stay.
        use zeroize::Zeroize;
        self.r0.zeroize();
        self.r1.zeroize();
        self.s1.zeroize();
        self.s.zeroize();
        self.h0.zeroize();
        self.h1.zeroize();
    }
}
