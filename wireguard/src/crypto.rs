//! The primitives of the WireGuard paper (section 5.4): BLAKE2s hashing, HMAC and
//! the HKDF-style KDF built on it, keyed BLAKE2s MACs, ChaCha20-Poly1305 and
//! XChaCha20-Poly1305 AEADs, and X25519.
//!
//! Everything here works on fixed-size arrays so that lengths are checked by
//! the type system; the callers in `noise` and `cookie` only slice buffers whose
//! lengths the wire views have already validated.

use blake2::digest::consts::U16;
use blake2::digest::{FixedOutput, Update};
use blake2::{Blake2s256, Blake2sMac, Digest};
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305};
use zeroize::Zeroize;

/// Length of a BLAKE2s-256 hash and of every symmetric key in the protocol.
pub const HASH_LEN: usize = 32;
/// Length of a keyed-BLAKE2s MAC (mac1, mac2, cookie).
pub const MAC_LEN: usize = 16;
/// Length of a Poly1305 authentication tag.
pub const TAG_LEN: usize = 16;

/// BLAKE2s block size, used by HMAC padding.
const BLOCK_LEN: usize = 64;

/// The authentication failed: wrong key, wrong data or a forged message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthFailed;

/// HASH(a || b || ...) with BLAKE2s-256.
pub fn hash(parts: &[&[u8]]) -> [u8; HASH_LEN] {
    let mut h = Blake2s256::new();
    for part in parts {
        Digest::update(&mut h, part);
    }
    h.finalize().into()
}

/// HMAC-BLAKE2s (RFC 2104) over the concatenation of `parts`.
pub fn hmac(key: &[u8; HASH_LEN], parts: &[&[u8]]) -> [u8; HASH_LEN] {
    let mut pad = [0u8; BLOCK_LEN];
    pad[..HASH_LEN].copy_from_slice(key);
    for b in pad.iter_mut() {
        *b ^= 0x36;
    }
    let mut inner = Blake2s256::new();
    Digest::update(&mut inner, pad);
    for part in parts {
        Digest::update(&mut inner, part);
    }
    let mut inner_hash: [u8; HASH_LEN] = inner.finalize().into();
    // Turn the ipad into the opad without keeping the key around twice.
    for b in pad.iter_mut() {
        *b ^= 0x36 ^ 0x5c;
    }
    let mut outer = Blake2s256::new();
    Digest::update(&mut outer, pad);
    Digest::update(&mut outer, inner_hash);
    let out = outer.finalize().into();
    pad.zeroize();
    inner_hash.zeroize();
    out
}

/// KDF_n(key, input) of the paper, returning the first `N` (1..=3) outputs.
pub fn kdf<const N: usize>(key: &[u8; HASH_LEN], input: &[u8]) -> [[u8; HASH_LEN]; N] {
    let mut prk = hmac(key, &[input]);
    let mut out = [[0u8; HASH_LEN]; N];
    let mut prev: Option<[u8; HASH_LEN]> = None;
    for (i, slot) in out.iter_mut().enumerate() {
        // The counter byte is 1-based; N is at most 3 in the protocol.
        let counter = [(i as u8).wrapping_add(1)];
        let t = match &prev {
            None => hmac(&prk, &[&counter]),
            Some(p) => hmac(&prk, &[p, &counter]),
        };
        *slot = t;
        prev = Some(t);
    }
    prk.zeroize();
    if let Some(mut p) = prev {
        p.zeroize();
    }
    out
}

/// MAC(key, input): keyed BLAKE2s with a 16-byte output.
pub fn mac(key: &[u8], input: &[u8]) -> [u8; MAC_LEN] {
    // Keys here are 16 or 32 bytes, within BLAKE2s's key limit, so this cannot fail;
    // an all-zero MAC would simply never verify if it did.
    match <Blake2sMac<U16> as KeyInit>::new_from_slice(key) {
        Ok(mut m) => {
            Update::update(&mut m, input);
            m.finalize_fixed().into()
        }
        Err(_) => [0u8; MAC_LEN],
    }
}

/// Constant-time equality of two MACs.
pub fn mac_eq(a: &[u8; MAC_LEN], b: &[u8; MAC_LEN]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

fn counter_nonce(counter: u64) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&counter.to_le_bytes());
    nonce
}

/// A ChaCha20-Poly1305 key prepared once for many messages: the transport keys
/// of a session. With ring the key object is built once; building it per
/// packet cost about 150 instructions, a tenth of sealing 64 bytes.
pub struct AeadKey(aead::Prepared);

impl AeadKey {
    /// Prepares `key`.
    pub fn new(key: &[u8; HASH_LEN]) -> Self {
        Self(aead::Prepared::new(key))
    }

    /// AEAD(key, counter, plaintext, aad) in place: `buf` holds the plaintext
    /// in its first `buf.len() - TAG_LEN` bytes and receives ciphertext || tag.
    pub fn seal(&self, counter: u64, aad: &[u8], buf: &mut [u8]) {
        let split = buf.len().saturating_sub(TAG_LEN);
        let (data, tag_out) = buf.split_at_mut(split);
        self.0.seal(&counter_nonce(counter), aad, data, tag_out);
    }

    /// Inverse of [`AeadKey::seal`]: `buf` holds ciphertext || tag; on
    /// success its first `buf.len() - TAG_LEN` bytes are the plaintext.
    pub fn open(&self, counter: u64, aad: &[u8], buf: &mut [u8]) -> Result<(), AuthFailed> {
        if buf.len() < TAG_LEN {
            return Err(AuthFailed);
        }
        self.0.open(&counter_nonce(counter), aad, buf)
    }
}

/// AEAD(key, counter, plaintext, aad) in place with a one-off key (handshake
/// fields); see [`AeadKey::seal`].
pub fn seal(key: &[u8; HASH_LEN], counter: u64, aad: &[u8], buf: &mut [u8]) {
    AeadKey::new(key).seal(counter, aad, buf);
}

/// Inverse of [`seal`]; see [`AeadKey::open`].
pub fn open(
    key: &[u8; HASH_LEN],
    counter: u64,
    aad: &[u8],
    buf: &mut [u8],
) -> Result<(), AuthFailed> {
    AeadKey::new(key).open(counter, aad, buf)
}

/// Hosted builds only: whether new transport keys and X25519 take the
/// images' routes (see [`set_image_crypto`]).
#[cfg(not(target_os = "none"))]
static IMAGE_CRYPTO: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Hosted builds only: makes keys prepared from now on, and X25519, use the
/// crypto configuration of the bare-metal images (`wg_aead`'s CPUID-chosen
/// ChaCha20 route and radix-2^64 Poly1305; X25519 by the Montgomery
/// ladder) instead of ring and the AVX2 Edwards route, so that benchmarks
/// and tests can measure and check the images' code on the host.
#[cfg(not(target_os = "none"))]
pub fn set_image_crypto(on: bool) {
    IMAGE_CRYPTO.store(on, core::sync::atomic::Ordering::Relaxed);
}

#[cfg(not(target_os = "none"))]
fn image_crypto() -> bool {
    IMAGE_CRYPTO.load(core::sync::atomic::Ordering::Relaxed)
}

/// The ChaCha20 route the transport keys take here: `ring` on hosted
/// builds (unless [`set_image_crypto`]), else `wg_aead`'s backend name
/// (`avx2`, `ssse3` or `portable`).
pub fn aead_backend() -> &'static str {
    #[cfg(not(target_os = "none"))]
    if !image_crypto() {
        return "ring";
    }
    wg_aead::backend().name()
}

/// ChaCha20-Poly1305 (RFC 8439) on hosted targets: ring's assembly, whose
/// SSSE3/AVX2 paths are chosen at run time with CPUID, or the images'
/// `wg_aead` when [`set_image_crypto`] asked for it.
///
/// ring does not zero its key objects when they are dropped; like any value
/// Rust moves, the copy stays in memory until overwritten.
#[cfg(not(target_os = "none"))]
mod aead {
    use super::{AuthFailed, HASH_LEN, TAG_LEN};
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};

    // One per session, built once and never moved on the packet path: the
    // size difference between the variants costs nothing there.
    #[allow(clippy::large_enum_variant)]
    pub(super) enum Prepared {
        Ring(Option<LessSafeKey>),
        Image(super::image::Prepared),
    }

    impl Prepared {
        pub(super) fn new(k: &[u8; HASH_LEN]) -> Self {
            if super::image_crypto() {
                return Self::Image(super::image::Prepared::new(k));
            }
            // ring refuses only keys of the wrong length, which the type rules
            // out; a refused key would seal nothing and open nothing.
            Self::Ring(
                UnboundKey::new(&CHACHA20_POLY1305, k)
                    .ok()
                    .map(LessSafeKey::new),
            )
        }

        pub(super) fn seal(
            &self,
            nonce: &[u8; 12],
            aad: &[u8],
            data: &mut [u8],
            tag_out: &mut [u8],
        ) {
            let k = match self {
                Self::Image(k) => return k.seal(nonce, aad, data, tag_out),
                Self::Ring(Some(k)) => k,
                Self::Ring(None) => return,
            };
            // Sealing fails only for messages longer than 256 GiB.
            if let Ok(tag) = k.seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                data,
            ) {
                tag_out.copy_from_slice(tag.as_ref());
            }
        }

        /// `buf` is ciphertext || tag, at least TAG_LEN long.
        pub(super) fn open(
            &self,
            nonce: &[u8; 12],
            aad: &[u8],
            buf: &mut [u8],
        ) -> Result<(), AuthFailed> {
            debug_assert!(buf.len() >= TAG_LEN);
            let k = match self {
                Self::Image(k) => return k.open(nonce, aad, buf),
                Self::Ring(k) => k.as_ref().ok_or(AuthFailed)?,
            };
            k.open_in_place(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), buf)
                .map(|_| ())
                .map_err(|_| AuthFailed)
        }
    }
}

/// ChaCha20-Poly1305 of the bare-metal images: `wg_aead`, whose ChaCha20
/// route (AVX2, SSSE3 or portable) is chosen by CPUID at run time, after
/// the kernel enabled the vector state. The key is zeroed on drop.
mod image {
    use super::{AuthFailed, HASH_LEN, TAG_LEN};

    pub(crate) struct Prepared(pub(crate) wg_aead::ChaCha20Poly1305);

    impl Prepared {
        pub(crate) fn new(k: &[u8; HASH_LEN]) -> Self {
            Self(wg_aead::ChaCha20Poly1305::new(k))
        }

        pub(crate) fn seal(
            &self,
            nonce: &[u8; 12],
            aad: &[u8],
            data: &mut [u8],
            tag_out: &mut [u8],
        ) {
            let tag = self.0.seal(nonce, aad, data);
            let n = tag_out.len().min(TAG_LEN);
            tag_out[..n].copy_from_slice(&tag[..n]);
        }

        /// `buf` is ciphertext || tag, at least TAG_LEN long.
        pub(crate) fn open(
            &self,
            nonce: &[u8; 12],
            aad: &[u8],
            buf: &mut [u8],
        ) -> Result<(), AuthFailed> {
            let split = buf.len().checked_sub(TAG_LEN).ok_or(AuthFailed)?;
            let (data, tag) = buf.split_at_mut(split);
            let mut t = [0u8; TAG_LEN];
            t.copy_from_slice(tag);
            self.0.open(nonce, aad, data, &t).map_err(|_| AuthFailed)
        }
    }
}

#[cfg(target_os = "none")]
use image as aead;

/// XAEAD(key, nonce, plaintext, aad) in place (XChaCha20-Poly1305), used by cookie replies.
pub fn xseal(key: &[u8; HASH_LEN], nonce: &[u8; 24], aad: &[u8], buf: &mut [u8]) {
    let split = buf.len().saturating_sub(TAG_LEN);
    let (data, tag_out) = buf.split_at_mut(split);
    let cipher = XChaCha20Poly1305::new(key.into());
    if let Ok(tag) = cipher.encrypt_in_place_detached(nonce.into(), aad, data) {
        tag_out.copy_from_slice(&tag);
    }
}

/// Inverse of [`xseal`].
pub fn xopen(
    key: &[u8; HASH_LEN],
    nonce: &[u8; 24],
    aad: &[u8],
    buf: &mut [u8],
) -> Result<(), AuthFailed> {
    if buf.len() < TAG_LEN {
        return Err(AuthFailed);
    }
    let (data, tag) = buf.split_at_mut(buf.len() - TAG_LEN);
    let cipher = XChaCha20Poly1305::new(key.into());
    cipher
        .decrypt_in_place_detached(nonce.into(), aad, data, (&*tag).into())
        .map_err(|_| AuthFailed)
}

/// X25519 Diffie-Hellman. Returns `None` for a low-order peer point (an
/// all-zero shared secret), which the protocol must reject.
pub fn dh(secret: &x25519_dalek::StaticSecret, public: &[u8; 32]) -> Option<[u8; 32]> {
    use subtle::ConstantTimeEq;
    let mut scalar = secret.to_bytes();
    let shared = x25519(&scalar, public);
    scalar.zeroize();
    if bool::from(shared.ct_eq(&[0u8; 32])) {
        None
    } else {
        Some(shared)
    }
}

/// X25519(k, u) of RFC 7748. With AVX2 (detected at run time) and a `u` on
/// the curve rather than its twist, the scalar multiplication runs on the
/// birationally equivalent Edwards curve, where curve25519-dalek has an AVX2
/// backend: about 30% faster than the Montgomery ladder, which has none.
/// The `u`-coordinate of [k]P does not depend on which of the two Edwards
/// points with that `u` is used, so the result is the ladder's, bit for bit.
fn x25519(k: &[u8; 32], u: &[u8; 32]) -> [u8; 32] {
    use curve25519_dalek::montgomery::MontgomeryPoint;
    let point = MontgomeryPoint(*u);
    if simd_available() {
        // `u` is public: whether it is on the twist may show in the timing.
        if let Some(p) = point.to_edwards(0) {
            return p.mul_clamped(*k).to_montgomery().0;
        }
    }
    point.mul_clamped(*k).0
}

#[cfg(all(target_arch = "x86_64", not(target_os = "none")))]
cpufeatures::new!(cpuid_avx2, "avx2");

/// Whether curve25519-dalek's AVX2 backend runs here (it picks it by CPUID too).
#[cfg(all(target_arch = "x86_64", not(target_os = "none")))]
fn simd_available() -> bool {
    cpuid_avx2::get() && !image_crypto()
}

/// Bare-metal images and other architectures use the serial backend, where the
/// Edwards detour only adds the conversions. (The images' target is
/// soft-float: LLVM cannot build curve25519-dalek's AVX2 backend for it, and
/// its serial field arithmetic in 64-bit limbs is what they run.)
#[cfg(not(all(target_arch = "x86_64", not(target_os = "none"))))]
fn simd_available() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> alloc::vec::Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn blake2s_empty_known_answer() {
        // RFC 7693 / BLAKE2 reference: BLAKE2s-256("").
        assert_eq!(
            hash(&[]).to_vec(),
            hex("69217a3079908094e11121d042354a7c1f55b6482ca1a51e1b250dfd1ed0eef9")
        );
    }

    #[test]
    fn construction_hash_known_answer() {
        // The initial chaining key C = HASH(CONSTRUCTION), as in wireguard-go and the kernel.
        assert_eq!(
            hash(&[b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"]).to_vec(),
            hex("60e26daef327efc02ec335e2a025d2d016eb4206f87277f52d38d1988b78cd36")
        );
    }

    #[test]
    fn hmac_matches_generic_hmac_construction() {
        // Cross-check against the hmac crate is not available in no_std deps, so
        // check the RFC 2104 property on a key shorter than a block:
        // HMAC(k, m) == H((k^opad) || H((k^ipad) || m)).
        let key = [7u8; 32];
        let mut ipad = [0x36u8; 64];
        let mut opad = [0x5cu8; 64];
        for i in 0..32 {
            ipad[i] ^= key[i];
            opad[i] ^= key[i];
        }
        let inner = hash(&[&ipad, b"message"]);
        let expect = hash(&[&opad, &inner]);
        assert_eq!(hmac(&key, &[b"mess", b"age"]), expect);
    }

    #[test]
    fn aead_round_trip_and_tamper() {
        let key = [1u8; 32];
        let mut buf = *b"hello world.....0123456789abcdef";
        seal(&key, 5, b"ad", &mut buf);
        let mut bad = buf;
        bad[0] ^= 1;
        assert_eq!(open(&key, 5, b"ad", &mut bad), Err(AuthFailed));
        let mut wrong_counter = buf;
        assert_eq!(open(&key, 6, b"ad", &mut wrong_counter), Err(AuthFailed));
        open(&key, 5, b"ad", &mut buf).unwrap();
        assert_eq!(&buf[..16], b"hello world.....");
    }

    #[test]
    fn chacha20poly1305_rfc8439_vector() {
        // RFC 8439 section 2.8.2, through the backend this target uses (the
        // RFC's nonce does not have our 4 leading zero bytes).
        let key: [u8; 32] = hex("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f")
            .try_into()
            .unwrap();
        let nonce: [u8; 12] = hex("070000004041424344454647").try_into().unwrap();
        let aad = hex("50515253c0c1c2c3c4c5c6c7");
        let plain = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
        let mut msg = plain.to_vec();
        let mut tag = [0u8; TAG_LEN];
        let k = aead::Prepared::new(&key);
        k.seal(&nonce, &aad, &mut msg, &mut tag);
        assert_eq!(tag.to_vec(), hex("1ae10b594f09e26a7e902ecbd0600691"));
        assert_eq!(&msg[..4], &hex("d31a8d34")[..]);
        msg.extend_from_slice(&tag);
        k.open(&nonce, &aad, &mut msg).unwrap();
        assert_eq!(&msg[..plain.len()], &plain[..]);
    }

    #[test]
    fn aead_backend_matches_rustcrypto() {
        // The hosted backend (ring) and the bare-metal one (RustCrypto) must
        // produce identical messages: check every length around the block and
        // SIMD-batch boundaries, with and without associated data.
        use chacha20poly1305::ChaCha20Poly1305;
        let key = [0x5au8; 32];
        for len in (0..600).chain([1419, 1420, 1421, 4096]) {
            for aad in [&b""[..], &b"associated data"[..]] {
                let plain: alloc::vec::Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
                let counter = len as u64 * 1_000_003;
                let mut ours = plain.clone();
                ours.resize(len + TAG_LEN, 0);
                seal(&key, counter, aad, &mut ours);
                let mut theirs = plain.clone();
                let tag = ChaCha20Poly1305::new((&key).into())
                    .encrypt_in_place_detached(&counter_nonce(counter).into(), aad, &mut theirs)
                    .unwrap();
                theirs.extend_from_slice(&tag);
                assert_eq!(ours, theirs, "len {len}");
                open(&key, counter, aad, &mut theirs).unwrap();
                assert_eq!(theirs[..len], plain[..]);
            }
        }
    }

    #[test]
    fn image_aead_matches_hosted_aead() {
        // The images' wg_aead (every route this CPU runs) against this
        // target's backend (ring on hosted builds), both directions.
        let key = [0x33u8; 32];
        let ours = aead::Prepared::new(&key);
        let routes = [
            wg_aead::Backend::Avx2,
            wg_aead::Backend::Ssse3,
            wg_aead::Backend::Portable,
        ];
        for route in routes.into_iter().filter(|r| r.available()) {
            let img = image::Prepared(wg_aead::ChaCha20Poly1305::with_backend(&key, route));
            for len in (0..300).chain([1419, 1420, 1421, 4096]) {
                let nonce = counter_nonce(len as u64 + 77);
                let plain: alloc::vec::Vec<u8> = (0..len).map(|i| (i * 13 + 1) as u8).collect();
                let mut a = plain.clone();
                a.resize(len + TAG_LEN, 0);
                let (d, t) = a.split_at_mut(len);
                ours.seal(&nonce, b"ad", d, t);
                let mut b = plain.clone();
                b.resize(len + TAG_LEN, 0);
                let (d, t) = b.split_at_mut(len);
                img.seal(&nonce, b"ad", d, t);
                assert_eq!(a, b, "{route:?} len {len}");
                img.open(&nonce, b"ad", &mut a).unwrap();
                assert_eq!(a[..len], plain[..]);
                // Sealed by wg_aead, opened by the hosted backend; then tampered.
                let mut b = plain.clone();
                b.resize(len + TAG_LEN, 0);
                let (d, t) = b.split_at_mut(len);
                img.seal(&nonce, b"ad", d, t);
                let mut tampered = b.clone();
                tampered[len / 2] ^= 4;
                assert_eq!(img.open(&nonce, b"ad", &mut tampered), Err(AuthFailed));
                ours.open(&nonce, b"ad", &mut b).unwrap();
                assert_eq!(b[..len], plain[..]);
            }
            assert_eq!(
                img.open(&counter_nonce(1), b"", &mut [0u8; 15]),
                Err(AuthFailed)
            );
        }
    }

    #[test]
    fn x25519_edwards_route_matches_ladder() {
        use curve25519_dalek::montgomery::MontgomeryPoint;
        let ladder = |k: &[u8; 32], u: &[u8; 32]| MontgomeryPoint(*u).mul_clamped(*k).0;
        let mut k = [7u8; 32];
        let mut u = MontgomeryPoint::mul_base_clamped([9u8; 32]).0;
        let (mut on_curve, mut twist) = (0, 0);
        for i in 0..64u8 {
            // Public keys, and arbitrary 32-byte strings (half of them on the twist).
            let mut v = if i % 2 == 0 { u } else { hash(&[&u, &[i]]) };
            if i % 7 == 0 {
                v[31] |= 0x80; // the ignored top bit
            }
            assert_eq!(x25519(&k, &v), ladder(&k, &v), "u {v:?}");
            if MontgomeryPoint(v).to_edwards(0).is_some() {
                on_curve += 1;
            } else {
                twist += 1;
            }
            u = ladder(&k, &u);
            k = hash(&[&k]);
        }
        assert!(on_curve > 32 && twist > 8, "{on_curve} {twist}");
        // Low-order points give zero both ways (u = 0, 1, and p - 1 which is on the twist).
        let mut minus_one = [0xffu8; 32];
        minus_one[0] = 0xec;
        minus_one[31] = 0x7f;
        let mut one = [0u8; 32];
        one[0] = 1;
        for v in [[0u8; 32], one, minus_one] {
            assert_eq!(x25519(&k, &v), ladder(&k, &v));
        }
        assert_eq!(x25519(&k, &[0u8; 32]), [0u8; 32]);
    }

    #[test]
    fn x25519_rfc7748_vector_and_low_order_rejected() {
        let a: [u8; 32] = hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
            .try_into()
            .unwrap();
        let b_pub: [u8; 32] =
            hex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
                .try_into()
                .unwrap();
        let s = x25519_dalek::StaticSecret::from(a);
        assert_eq!(
            dh(&s, &b_pub).unwrap().to_vec(),
            hex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
        );
        assert_eq!(dh(&s, &[0u8; 32]), None);
    }
}
