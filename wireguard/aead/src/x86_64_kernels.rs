// ChaCha20 block functions for amd64 with SSSE3 and AVX2.
//
// This file is compiled twice from the same source: as a module of the
// crate on hosted targets, and, for the bare-metal images (whose target is
// soft-float, so LLVM cannot emit vector code there at all), by build.rs as
// a separate object for the hard-float x86_64-unknown-linux-gnu target that
// the image links. Hence plain `extern "C"` functions over raw pointers and
// integers (the same calling convention on both targets), no panics and no
// calls into `core` beyond inlined intrinsics; build.rs checks the object's
// undefined symbols.
//
// State layout (16 words): 4 constants, 8 key words, the 32-bit block
// counter (word 12), 3 nonce words: RFC 8439 section 2.3.

use core::arch::x86_64::*;

macro_rules! quarter_rounds {
    ($x:ident, $add:ident, $xor:ident, $rot16:ident, $rot12:ident, $rot8:ident, $rot7:ident) => {{
        macro_rules! qr {
            ($a:literal, $b:literal, $c:literal, $d:literal) => {
                $x[$a] = $add($x[$a], $x[$b]);
                $x[$d] = $rot16!($xor($x[$d], $x[$a]));
                $x[$c] = $add($x[$c], $x[$d]);
                $x[$b] = $rot12!($xor($x[$b], $x[$c]));
                $x[$a] = $add($x[$a], $x[$b]);
                $x[$d] = $rot8!($xor($x[$d], $x[$a]));
                $x[$c] = $add($x[$c], $x[$d]);
                $x[$b] = $rot7!($xor($x[$b], $x[$c]));
            };
        }
        for _ in 0..10 {
            qr!(0, 4, 8, 12);
            qr!(1, 5, 9, 13);
            qr!(2, 6, 10, 14);
            qr!(3, 7, 11, 15);
            qr!(0, 5, 10, 15);
            qr!(1, 6, 11, 12);
            qr!(2, 7, 8, 13);
            qr!(3, 4, 9, 14);
        }
    }};
}

/// XORs the `n` (0..=16) first bytes of `ks` into `p`.
#[target_feature(enable = "sse2,ssse3")]
unsafe fn xor16(p: *mut u8, ks: __m128i, n: usize) {
    // SAFETY: the caller passes `n` writable bytes at `p`.
    unsafe {
        if n >= 16 {
            let q = p as *mut __m128i;
            _mm_storeu_si128(q, _mm_xor_si128(_mm_loadu_si128(q), ks));
        } else {
            let mut t = [0u8; 16];
            _mm_storeu_si128(t.as_mut_ptr() as *mut __m128i, ks);
            let mut i = 0;
            while i < n {
                *p.add(i) ^= t[i];
                i += 1;
            }
        }
    }
}

/// XORs the `n` (0..=32) first bytes of `ks` into `p`.
#[target_feature(enable = "avx2")]
unsafe fn xor32(p: *mut u8, ks: __m256i, n: usize) {
    // SAFETY: the caller passes `n` writable bytes at `p`.
    unsafe {
        if n >= 32 {
            let q = p as *mut __m256i;
            _mm256_storeu_si256(q, _mm256_xor_si256(_mm256_loadu_si256(q), ks));
        } else {
            xor16(p, _mm256_castsi256_si128(ks), n);
            if n > 16 {
                xor16(p.add(16), _mm256_extracti128_si256(ks, 1), n - 16);
            }
        }
    }
}

/// How many of the `len` bytes from `off` on fall in this piece of `size`.
#[inline(always)]
fn piece(len: usize, off: usize, size: usize) -> usize {
    if off >= len {
        0
    } else if len - off < size {
        len - off
    } else {
        size
    }
}

/// Four blocks at a time in 128-bit registers, each register one state
/// word of the four blocks. XORs the keystream, starting at the state's
/// counter, into the `len` (at most 256) bytes at `data`.
#[target_feature(enable = "sse2,ssse3")]
unsafe fn four_blocks(state: *const u32, data: *mut u8, len: usize) {
    // SAFETY: the caller has SSSE3 and passes 16 state words and `n * 64` bytes
    // of data; every access below stays inside those.
    unsafe {
        let r16 = _mm_setr_epi8(2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
        let r8 = _mm_setr_epi8(3, 0, 1, 2, 7, 4, 5, 6, 11, 8, 9, 10, 15, 12, 13, 14);
        let mut init = [_mm_setzero_si128(); 16];
        let mut i = 0;
        while i < 16 {
            init[i] = _mm_set1_epi32(*state.add(i) as i32);
            i += 1;
        }
        init[12] = _mm_add_epi32(init[12], _mm_setr_epi32(0, 1, 2, 3));
        let mut x = init;
        // Macros, not closures: a closure would not carry the target features.
        macro_rules! rot16 {
            ($v:expr) => {
                _mm_shuffle_epi8($v, r16)
            };
        }
        macro_rules! rot8 {
            ($v:expr) => {
                _mm_shuffle_epi8($v, r8)
            };
        }
        macro_rules! rot12 {
            ($v:expr) => {{
                let v = $v;
                _mm_or_si128(_mm_slli_epi32(v, 12), _mm_srli_epi32(v, 20))
            }};
        }
        macro_rules! rot7 {
            ($v:expr) => {{
                let v = $v;
                _mm_or_si128(_mm_slli_epi32(v, 7), _mm_srli_epi32(v, 25))
            }};
        }
        quarter_rounds!(x, _mm_add_epi32, _mm_xor_si128, rot16, rot12, rot8, rot7);
        let mut i = 0;
        while i < 16 {
            x[i] = _mm_add_epi32(x[i], init[i]);
            i += 1;
        }
        // Transpose each group of four words: out[g][b] = words 4g..4g+4 of block b.
        let mut g = 0;
        while g < 4 {
            let t0 = _mm_unpacklo_epi32(x[4 * g], x[4 * g + 1]);
            let t1 = _mm_unpackhi_epi32(x[4 * g], x[4 * g + 1]);
            let t2 = _mm_unpacklo_epi32(x[4 * g + 2], x[4 * g + 3]);
            let t3 = _mm_unpackhi_epi32(x[4 * g + 2], x[4 * g + 3]);
            let blocks = [
                _mm_unpacklo_epi64(t0, t2),
                _mm_unpackhi_epi64(t0, t2),
                _mm_unpacklo_epi64(t1, t3),
                _mm_unpackhi_epi64(t1, t3),
            ];
            let mut b = 0;
            while b < 4 {
                let off = b * 64 + g * 16;
                xor16(data.add(off), blocks[b], piece(len, off, 16));
                b += 1;
            }
            g += 1;
        }
    }
}

/// Two blocks in four 256-bit registers, each holding one row of the state
/// for both blocks (the low lane block n, the high lane block n + 1), the
/// rows rotated for the diagonal rounds. XORs the keystream into the `len`
/// (at most 128) bytes at `data`.
#[target_feature(enable = "avx2")]
unsafe fn two_blocks(state: *const u32, data: *mut u8, len: usize) {
    // SAFETY: the caller has AVX2 and passes 16 state words and `len` bytes
    // of data; every access below stays inside those.
    unsafe {
        let r16 = _mm256_setr_epi8(
            2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11,
            8, 9, 14, 15, 12, 13,
        );
        let r8 = _mm256_setr_epi8(
            3, 0, 1, 2, 7, 4, 5, 6, 11, 8, 9, 10, 15, 12, 13, 14, 3, 0, 1, 2, 7, 4, 5, 6, 11, 8, 9,
            10, 15, 12, 13, 14,
        );
        let row = |i: usize| _mm_loadu_si128(state.add(4 * i) as *const __m128i);
        let a0 = _mm256_broadcastsi128_si256(row(0));
        let b0 = _mm256_broadcastsi128_si256(row(1));
        let c0 = _mm256_broadcastsi128_si256(row(2));
        let d0 = _mm256_add_epi32(
            _mm256_broadcastsi128_si256(row(3)),
            _mm256_setr_epi32(0, 0, 0, 0, 1, 0, 0, 0),
        );
        let (mut a, mut b, mut c, mut d) = (a0, b0, c0, d0);
        macro_rules! half_round {
            () => {
                a = _mm256_add_epi32(a, b);
                d = _mm256_shuffle_epi8(_mm256_xor_si256(d, a), r16);
                c = _mm256_add_epi32(c, d);
                let t = _mm256_xor_si256(b, c);
                b = _mm256_or_si256(_mm256_slli_epi32(t, 12), _mm256_srli_epi32(t, 20));
                a = _mm256_add_epi32(a, b);
                d = _mm256_shuffle_epi8(_mm256_xor_si256(d, a), r8);
                c = _mm256_add_epi32(c, d);
                let t = _mm256_xor_si256(b, c);
                b = _mm256_or_si256(_mm256_slli_epi32(t, 7), _mm256_srli_epi32(t, 25));
            };
        }
        for _ in 0..10 {
            half_round!();
            b = _mm256_shuffle_epi32(b, 0x39);
            c = _mm256_shuffle_epi32(c, 0x4e);
            d = _mm256_shuffle_epi32(d, 0x93);
            half_round!();
            b = _mm256_shuffle_epi32(b, 0x93);
            c = _mm256_shuffle_epi32(c, 0x4e);
            d = _mm256_shuffle_epi32(d, 0x39);
        }
        a = _mm256_add_epi32(a, a0);
        b = _mm256_add_epi32(b, b0);
        c = _mm256_add_epi32(c, c0);
        d = _mm256_add_epi32(d, d0);
        xor32(
            data,
            _mm256_permute2x128_si256(a, b, 0x20),
            piece(len, 0, 32),
        );
        xor32(
            data.add(32),
            _mm256_permute2x128_si256(c, d, 0x20),
            piece(len, 32, 32),
        );
        xor32(
            data.add(64),
            _mm256_permute2x128_si256(a, b, 0x31),
            piece(len, 64, 32),
        );
        xor32(
            data.add(96),
            _mm256_permute2x128_si256(c, d, 0x31),
            piece(len, 96, 32),
        );
    }
}

/// Eight blocks at a time in 256-bit registers. XORs the keystream into
/// the `len` (at most 512) bytes at `data`.
#[target_feature(enable = "avx2")]
unsafe fn eight_blocks(state: *const u32, data: *mut u8, len: usize) {
    // SAFETY: the caller has AVX2 and passes 16 state words and `n * 64` bytes
    // of data; every access below stays inside those.
    unsafe {
        let r16 = _mm256_setr_epi8(
            2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11,
            8, 9, 14, 15, 12, 13,
        );
        let r8 = _mm256_setr_epi8(
            3, 0, 1, 2, 7, 4, 5, 6, 11, 8, 9, 10, 15, 12, 13, 14, 3, 0, 1, 2, 7, 4, 5, 6, 11, 8, 9,
            10, 15, 12, 13, 14,
        );
        let mut init = [_mm256_setzero_si256(); 16];
        let mut i = 0;
        while i < 16 {
            init[i] = _mm256_set1_epi32(*state.add(i) as i32);
            i += 1;
        }
        init[12] = _mm256_add_epi32(init[12], _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        let mut x = init;
        macro_rules! rot16 {
            ($v:expr) => {
                _mm256_shuffle_epi8($v, r16)
            };
        }
        macro_rules! rot8 {
            ($v:expr) => {
                _mm256_shuffle_epi8($v, r8)
            };
        }
        macro_rules! rot12 {
            ($v:expr) => {{
                let v = $v;
                _mm256_or_si256(_mm256_slli_epi32(v, 12), _mm256_srli_epi32(v, 20))
            }};
        }
        macro_rules! rot7 {
            ($v:expr) => {{
                let v = $v;
                _mm256_or_si256(_mm256_slli_epi32(v, 7), _mm256_srli_epi32(v, 25))
            }};
        }
        quarter_rounds!(
            x,
            _mm256_add_epi32,
            _mm256_xor_si256,
            rot16,
            rot12,
            rot8,
            rot7
        );
        let mut i = 0;
        while i < 16 {
            x[i] = _mm256_add_epi32(x[i], init[i]);
            i += 1;
        }
        // Within each 128-bit lane a 4x4 transpose (low lane: blocks 0-3, high
        // lane: blocks 4-7), then the lanes of word groups 0-3/4-7 (and 8-11/
        // 12-15) are paired: half[h][b] = words 8h..8h+8 of block b.
        let mut half = 0;
        while half < 2 {
            let mut q = [[_mm256_setzero_si256(); 4]; 2];
            let mut g = 0;
            while g < 2 {
                let w = 8 * half + 4 * g;
                let t0 = _mm256_unpacklo_epi32(x[w], x[w + 1]);
                let t1 = _mm256_unpackhi_epi32(x[w], x[w + 1]);
                let t2 = _mm256_unpacklo_epi32(x[w + 2], x[w + 3]);
                let t3 = _mm256_unpackhi_epi32(x[w + 2], x[w + 3]);
                q[g] = [
                    _mm256_unpacklo_epi64(t0, t2),
                    _mm256_unpackhi_epi64(t0, t2),
                    _mm256_unpacklo_epi64(t1, t3),
                    _mm256_unpackhi_epi64(t1, t3),
                ];
                g += 1;
            }
            let mut b = 0;
            while b < 4 {
                let lo = _mm256_permute2x128_si256(q[0][b], q[1][b], 0x20);
                let hi = _mm256_permute2x128_si256(q[0][b], q[1][b], 0x31);
                let off = b * 64 + half * 32;
                xor32(data.add(off), lo, piece(len, off, 32));
                let off = (b + 4) * 64 + half * 32;
                xor32(data.add(off), hi, piece(len, off, 32));
                b += 1;
            }
            half += 1;
        }
    }
}

/// XORs ChaCha20 keystream into the `len` bytes at `data`, the first
/// block with the counter in `state[12]`, with SSSE3.
///
/// # Safety
/// The CPU has SSSE3 and the kernel enabled SSE state; `state` points to
/// 16 readable words and `data` to `len` writable bytes.
#[no_mangle]
#[target_feature(enable = "sse2,ssse3")]
pub unsafe extern "C" fn moat_chacha20_xor_ssse3(state: *const u32, data: *mut u8, len: usize) {
    // SAFETY: as the function's contract says; each step covers at most
    // the `len - done` bytes left.
    unsafe {
        let mut st = [0u32; 16];
        core::ptr::copy_nonoverlapping(state, st.as_mut_ptr(), 16);
        let mut done = 0;
        while done < len {
            four_blocks(st.as_ptr(), data.add(done), piece(len, done, 256));
            st[12] = st[12].wrapping_add(4);
            done += 256;
        }
    }
}

/// Like [`moat_chacha20_xor_ssse3`], eight blocks at a time with AVX2 (a
/// last piece of up to four blocks in 128-bit registers, of up to two in
/// two 128-bit lanes).
///
/// # Safety
/// The CPU has AVX2 and the kernel enabled AVX state; `state` points to 16
/// readable words and `data` to `len` writable bytes.
#[no_mangle]
#[target_feature(enable = "avx2")]
pub unsafe extern "C" fn moat_chacha20_xor_avx2(state: *const u32, data: *mut u8, len: usize) {
    // SAFETY: as the function's contract says; each step covers at most
    // the `len - done` bytes left.
    unsafe {
        let mut st = [0u32; 16];
        core::ptr::copy_nonoverlapping(state, st.as_mut_ptr(), 16);
        let mut done = 0;
        while done < len {
            let n = piece(len, done, 512);
            if n > 256 {
                eight_blocks(st.as_ptr(), data.add(done), n);
                st[12] = st[12].wrapping_add(8);
            } else if n <= 128 {
                two_blocks(st.as_ptr(), data.add(done), n);
                st[12] = st[12].wrapping_add(2);
            } else {
                four_blocks(st.as_ptr(), data.add(done), n);
                st[12] = st[12].wrapping_add(4);
            }
            done += n;
        }
    }
}
