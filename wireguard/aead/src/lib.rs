//! ChaCha20-Poly1305 (RFC 8439) for moat's WireGuard, with SIMD routes for
//! amd64 chosen by CPUID at run time: ChaCha20 eight blocks at a time with
//! AVX2, four with SSSE3, or portable code; Poly1305 in radix 2^64.
//!
//! The bare-metal image target (`x86_64-unknown-none`) is soft-float: LLVM
//! emits no vector instructions for it, not even inside
//! `#[target_feature]` functions. So the SIMD block functions
//! (`x86_64_kernels.rs`) are compiled by build.rs for the hard-float
//! `x86_64-unknown-linux-gnu` target into an object the image links, with
//! the same source and flags as the hosted build compiles them in place.
//! The image's kernel enables SSE and AVX state at boot (docs/kernel.md,
//! "Vector state"); CPUID's AVX2 bit counts only with OSXSAVE and XCR0
//! saying the OS enabled the YMM state. SSSE3 needs only CPUID: every amd64
//! kernel here (moat's, Linux) enables SSE state.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
// arm32 images only (built with RUSTC_BOOTSTRAP=1 like every image): the
// NEON intrinsics and `target_feature(enable = "neon")` are unstable there.
#![cfg_attr(
    all(target_arch = "arm", target_os = "none"),
    feature(stdarch_arm_neon_intrinsics, arm_target_feature)
)]
#![warn(missing_docs)]

mod poly1305;

use poly1305::Poly1305;
use zeroize::Zeroize;

/// Length of a Poly1305 tag.
pub const TAG_LEN: usize = 16;

/// The authentication failed: wrong key, nonce, data or tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthFailed;

/// Which ChaCha20 block function runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// AVX2, eight blocks per step (amd64).
    Avx2,
    /// SSSE3, four blocks per step (amd64).
    Ssse3,
    /// NEON, one block per step in four registers (arm32 images).
    Neon,
    /// Portable 32-bit code, one block per step.
    Portable,
}

impl Backend {
    /// "avx2", "ssse3", "neon" or "portable".
    pub fn name(self) -> &'static str {
        match self {
            Backend::Avx2 => "avx2",
            Backend::Ssse3 => "ssse3",
            Backend::Neon => "neon",
            Backend::Portable => "portable",
        }
    }

    /// Whether this CPU (and the kernel's enabled state) can run it.
    pub fn available(self) -> bool {
        match self {
            Backend::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => x86::has_avx2(),
            #[cfg(target_arch = "x86_64")]
            Backend::Ssse3 => x86::has_ssse3(),
            #[cfg(all(target_arch = "arm", target_os = "none"))]
            Backend::Neon => neon::has_neon(),
            _ => false,
        }
    }
}

/// The fastest backend this CPU runs, decided by CPUID on the first call.
pub fn backend() -> Backend {
    [Backend::Avx2, Backend::Ssse3, Backend::Neon]
        .into_iter()
        .find(|b| b.available())
        .unwrap_or(Backend::Portable)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use core::sync::atomic::{AtomicU8, Ordering};

    // What CPUID said, once: KNOWN plus the feature bits. (cpufeatures,
    // which RustCrypto uses, answers `false` for every feature on
    // target_os = "none", so the images detect here.)
    static FEATURES: AtomicU8 = AtomicU8::new(0);
    const KNOWN: u8 = 1;
    const SSSE3: u8 = 2;
    const AVX2: u8 = 4;

    fn detect() -> u8 {
        use core::arch::x86_64::{__cpuid, __cpuid_count};
        let max_leaf = __cpuid(0).eax;
        let c1 = __cpuid(1);
        let mut f = KNOWN;
        if c1.ecx & (1 << 9) != 0 {
            f |= SSSE3;
        }
        // AVX2 counts only when the OS enabled the YMM state: CPUID.1 OSXSAVE
        // (CR4.OSXSAVE) and XCR0's SSE and YMM bits.
        let osxsave_avx = c1.ecx & (1 << 27) != 0 && c1.ecx & (1 << 28) != 0;
        let avx2 = max_leaf >= 7 && __cpuid_count(7, 0).ebx & (1 << 5) != 0;
        if osxsave_avx && avx2 {
            let (lo, _hi): (u32, u32);
            // SAFETY: CPUID.1:ECX.OSXSAVE is set, so XGETBV(0) is defined.
            unsafe {
                core::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") _hi,
                    options(nomem, nostack, preserves_flags))
            };
            if lo & 6 == 6 {
                f |= AVX2;
            }
        }
        f
    }

    fn features() -> u8 {
        let f = FEATURES.load(Ordering::Relaxed);
        if f & KNOWN != 0 {
            return f;
        }
        let f = detect();
        FEATURES.store(f, Ordering::Relaxed);
        f
    }

    pub(crate) fn has_avx2() -> bool {
        features() & AVX2 != 0
    }

    pub(crate) fn has_ssse3() -> bool {
        features() & SSSE3 != 0
    }

    #[cfg(not(target_os = "none"))]
    mod kernels {
        #![allow(clippy::needless_range_loop, clippy::missing_safety_doc)]
        include!("x86_64_kernels.rs");
    }
    #[cfg(not(target_os = "none"))]
    use kernels::{moat_chacha20_xor_avx2, moat_chacha20_xor_ssse3};

    // Built by build.rs from x86_64_kernels.rs into libmoat_simd_kernels.a.
    #[cfg(target_os = "none")]
    extern "C" {
        fn moat_chacha20_xor_avx2(state: *const u32, data: *mut u8, len: usize);
        fn moat_chacha20_xor_ssse3(state: *const u32, data: *mut u8, len: usize);
    }

    /// XORs keystream (from the counter in `state[12]`) into `data`.
    pub(crate) fn xor_stream(avx2: bool, state: &[u32; 16], data: &mut [u8]) {
        if avx2 && has_avx2() {
            // SAFETY: CPUID reports AVX2 with the OS's YMM state enabled;
            // the pointers cover 16 words and `data.len()` bytes.
            unsafe { moat_chacha20_xor_avx2(state.as_ptr(), data.as_mut_ptr(), data.len()) }
        } else if has_ssse3() {
            // SAFETY: CPUID reports SSSE3, and the kernel enables SSE state
            // on every amd64 boot (kernel::arch::simd_state); the pointers
            // cover 16 words and `data.len()` bytes.
            unsafe { moat_chacha20_xor_ssse3(state.as_ptr(), data.as_mut_ptr(), data.len()) }
        } else {
            super::portable_xor_stream(state, data)
        }
    }
}

/// ChaCha20 with NEON on arm32 images: one block per step, each row of the
/// state in one 128-bit register, rotated for the diagonal rounds. The
/// kernel's entry (arm32/src/head.S) gives PL1 cp10/cp11 and sets
/// FPEXC.EN, which enables Advanced SIMD as well (CPACR.ASEDIS stays 0);
/// Xen saves and restores all 32 D registers of a guest's vCPU.
#[cfg(all(target_arch = "arm", target_os = "none"))]
mod neon {
    use core::arch::arm::*;
    use core::sync::atomic::{AtomicU8, Ordering};

    /// 0 unknown, 1 no, 2 yes.
    static NEON: AtomicU8 = AtomicU8::new(0);

    /// MVFR1's Advanced SIMD integer and load/store fields are non-zero.
    pub(crate) fn has_neon() -> bool {
        match NEON.load(Ordering::Relaxed) {
            1 => false,
            2 => true,
            _ => {
                let mvfr1: u32;
                // SAFETY: reading MVFR1 has no side effects; the entry code
                // enabled the FPU (FPEXC.EN), so VMRS does not trap.
                unsafe {
                    core::arch::asm!("vmrs {}, mvfr1", out(reg) mvfr1,
                        options(nomem, nostack, preserves_flags))
                };
                let yes = (mvfr1 >> 8) & 0xf != 0 && mvfr1 & 0xf != 0;
                NEON.store(if yes { 2 } else { 1 }, Ordering::Relaxed);
                yes
            }
        }
    }

    /// XORs keystream (from the counter in `state[12]`) into `data`.
    pub(crate) fn xor_stream(state: &[u32; 16], data: &mut [u8]) {
        if has_neon() {
            // SAFETY: MVFR1 reports Advanced SIMD and the kernel enabled it.
            unsafe { blocks(state, data) }
        } else {
            super::portable_xor_stream(state, data)
        }
    }

    #[target_feature(enable = "neon,v7")]
    unsafe fn blocks(state: &[u32; 16], data: &mut [u8]) {
        macro_rules! rotl {
            ($x:expr, $n:literal, $r:literal) => {{
                let x = $x;
                vsriq_n_u32::<$r>(vshlq_n_u32::<$n>(x), x)
            }};
        }
        // SAFETY: the loads read 16 words of `state`; the full-chunk loads
        // and stores stay inside the 64-byte `chunk`, the others write a
        // local array.
        unsafe {
            let a0 = vld1q_u32(state.as_ptr());
            let b0 = vld1q_u32(state.as_ptr().add(4));
            let c0 = vld1q_u32(state.as_ptr().add(8));
            let mut d0 = vld1q_u32(state.as_ptr().add(12));
            let one = vld1q_u32([1u32, 0, 0, 0].as_ptr());
            for chunk in data.chunks_mut(64) {
                let (mut a, mut b, mut c, mut d) = (a0, b0, c0, d0);
                macro_rules! half {
                    () => {
                        a = vaddq_u32(a, b);
                        d = vreinterpretq_u32_u16(vrev32q_u16(vreinterpretq_u16_u32(veorq_u32(
                            d, a,
                        ))));
                        c = vaddq_u32(c, d);
                        b = rotl!(veorq_u32(b, c), 12, 20);
                        a = vaddq_u32(a, b);
                        d = rotl!(veorq_u32(d, a), 8, 24);
                        c = vaddq_u32(c, d);
                        b = rotl!(veorq_u32(b, c), 7, 25);
                    };
                }
                for _ in 0..10 {
                    half!();
                    b = vextq_u32::<1>(b, b);
                    c = vextq_u32::<2>(c, c);
                    d = vextq_u32::<3>(d, d);
                    half!();
                    b = vextq_u32::<3>(b, b);
                    c = vextq_u32::<2>(c, c);
                    d = vextq_u32::<1>(d, d);
                }
                let k = [
                    vaddq_u32(a, a0),
                    vaddq_u32(b, b0),
                    vaddq_u32(c, c0),
                    vaddq_u32(d, d0),
                ];
                if chunk.len() == 64 {
                    for (i, k) in k.into_iter().enumerate() {
                        let p = chunk.as_mut_ptr().add(16 * i);
                        vst1q_u8(p, veorq_u8(vld1q_u8(p), vreinterpretq_u8_u32(k)));
                    }
                } else {
                    let mut ks = [0u32; 16];
                    for (i, k) in k.into_iter().enumerate() {
                        vst1q_u32(ks.as_mut_ptr().add(4 * i), k);
                    }
                    for (i, w) in chunk.chunks_mut(4).enumerate() {
                        for (o, k) in w.iter_mut().zip(ks[i].to_le_bytes()) {
                            *o ^= k;
                        }
                    }
                    zeroize::Zeroize::zeroize(&mut ks);
                }
                d0 = vaddq_u32(d0, one);
            }
        }
    }
}

fn quarter(x: &mut [u32; 16], a: usize, b: usize, c: usize, d: usize) {
    x[a] = x[a].wrapping_add(x[b]);
    x[d] = (x[d] ^ x[a]).rotate_left(16);
    x[c] = x[c].wrapping_add(x[d]);
    x[b] = (x[b] ^ x[c]).rotate_left(12);
    x[a] = x[a].wrapping_add(x[b]);
    x[d] = (x[d] ^ x[a]).rotate_left(8);
    x[c] = x[c].wrapping_add(x[d]);
    x[b] = (x[b] ^ x[c]).rotate_left(7);
}

/// The portable block function: one block per step.
fn portable_xor_stream(state: &[u32; 16], data: &mut [u8]) {
    let mut st = *state;
    for block in data.chunks_mut(64) {
        let mut x = st;
        for _ in 0..10 {
            quarter(&mut x, 0, 4, 8, 12);
            quarter(&mut x, 1, 5, 9, 13);
            quarter(&mut x, 2, 6, 10, 14);
            quarter(&mut x, 3, 7, 11, 15);
            quarter(&mut x, 0, 5, 10, 15);
            quarter(&mut x, 1, 6, 11, 12);
            quarter(&mut x, 2, 7, 8, 13);
            quarter(&mut x, 3, 4, 9, 14);
        }
        for (i, w) in block.chunks_mut(4).enumerate() {
            let k = x[i].wrapping_add(st[i]).to_le_bytes();
            for (o, k) in w.iter_mut().zip(k) {
                *o ^= k;
            }
        }
        st[12] = st[12].wrapping_add(1);
        x.zeroize();
    }
    st.zeroize();
}

/// A ChaCha20-Poly1305 key, prepared for many messages. Zeroed on drop.
pub struct ChaCha20Poly1305 {
    /// The state words without counter and nonce: constants and key.
    key: [u32; 8],
    backend: Backend,
}

impl Drop for ChaCha20Poly1305 {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

/// This many bytes of message go through one keystream call together with
/// the Poly1305 key block (block 0), so that block 0 costs no SIMD step of
/// its own: 7 blocks, and block 0 makes the eight of one AVX2 step.
const FIRST: usize = 7 * 64;

impl ChaCha20Poly1305 {
    /// Prepares `key` for the fastest backend this CPU runs ([`backend`]).
    pub fn new(key: &[u8; 32]) -> Self {
        Self::with_backend(key, backend())
    }

    /// Prepares `key` for `backend`; one this CPU cannot run falls back to
    /// the best one it can.
    pub fn with_backend(key: &[u8; 32], backend: Backend) -> Self {
        let mut k = [0u32; 8];
        for (w, b) in k.iter_mut().zip(key.chunks_exact(4)) {
            *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        let backend = if backend.available() {
            backend
        } else {
            self::backend()
        };
        Self { key: k, backend }
    }

    /// The backend this key uses.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    fn state(&self, nonce: &[u8; 12], counter: u32) -> [u32; 16] {
        let mut s = [0u32; 16];
        s[..4].copy_from_slice(&[0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574]);
        s[4..12].copy_from_slice(&self.key);
        s[12] = counter;
        for (w, b) in s[13..].iter_mut().zip(nonce.chunks_exact(4)) {
            *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        s
    }

    fn xor_stream(&self, state: &[u32; 16], data: &mut [u8]) {
        match self.backend {
            #[cfg(target_arch = "x86_64")]
            b @ (Backend::Avx2 | Backend::Ssse3) => {
                x86::xor_stream(b == Backend::Avx2, state, data)
            }
            #[cfg(all(target_arch = "arm", target_os = "none"))]
            Backend::Neon => neon::xor_stream(state, data),
            _ => portable_xor_stream(state, data),
        }
    }

    /// Block 0 and the message's first [`FIRST`] bytes in one keystream
    /// call: `first` gets block 0's keystream in bytes 0..64 and the first
    /// bytes of `data` XORed with their keystream after it. Returns how
    /// many bytes of `data` that covers.
    fn first_piece(&self, st: &[u32; 16], data: &[u8], first: &mut [u8; 64 + FIRST]) -> usize {
        let n = data.len().min(FIRST);
        first[..64].fill(0);
        first[64..64 + n].copy_from_slice(&data[..n]);
        self.xor_stream(st, &mut first[..64 + n]);
        n
    }

    /// XORs the keystream of the bytes after the first piece into them.
    fn rest(&self, st: &mut [u32; 16], data: &mut [u8]) {
        if data.len() > FIRST {
            st[12] = st[12].wrapping_add(((64 + FIRST) / 64) as u32);
            self.xor_stream(st, &mut data[FIRST..]);
        }
    }

    fn tag(poly_key: &mut [u8; 32], aad: &[u8], ciphertext: &[u8]) -> [u8; TAG_LEN] {
        let mut mac = Poly1305::new(poly_key);
        poly_key.zeroize();
        mac.update_padded(aad);
        mac.update_padded(ciphertext);
        mac.block(aad.len() as u64, ciphertext.len() as u64);
        mac.finish()
    }

    /// Encrypts `data` in place and returns the tag.
    pub fn seal(&self, nonce: &[u8; 12], aad: &[u8], data: &mut [u8]) -> [u8; TAG_LEN] {
        let mut st = self.state(nonce, 0);
        let mut first = [0u8; 64 + FIRST];
        let n = self.first_piece(&st, data, &mut first);
        data[..n].copy_from_slice(&first[64..64 + n]);
        let mut poly_key = [0u8; 32];
        poly_key.copy_from_slice(&first[..32]);
        // Block 0 holds the one-time Poly1305 key; the rest is ciphertext.
        first[..64].zeroize();
        self.rest(&mut st, data);
        st.zeroize();
        Self::tag(&mut poly_key, aad, data)
    }

    /// Checks `tag` and, when it matches, decrypts `data` in place; on a
    /// mismatch `data` is left as it was.
    pub fn open(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        data: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AuthFailed> {
        let mut st = self.state(nonce, 0);
        let mut first = [0u8; 64 + FIRST];
        let n = self.first_piece(&st, data, &mut first);
        let mut poly_key = [0u8; 32];
        poly_key.copy_from_slice(&first[..32]);
        let expect = Self::tag(&mut poly_key, aad, data);
        let mut diff = 0u8;
        for (a, b) in expect.iter().zip(tag) {
            diff |= a ^ b;
        }
        let result = if core::hint::black_box(diff) != 0 {
            Err(AuthFailed)
        } else {
            data[..n].copy_from_slice(&first[64..64 + n]);
            self.rest(&mut st, data);
            Ok(())
        };
        // Block 0 holds the one-time Poly1305 key; the rest is ciphertext
        // or the plaintext `data` now holds.
        first[..64].zeroize();
        st.zeroize();
        result
    }
}
