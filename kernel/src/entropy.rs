//! Random bytes for services: a ChaCha20 generator seeded at boot from the
//! best source the platform has, and told which one that was.
//!
//! Sources, best first:
//! - amd64: the CPU's `RDSEED` (a conditioned entropy source), else
//!   `RDRAND` (a DRBG the CPU reseeds itself), each only where CPUID says
//!   it exists. With either, every [`fill`] also mixes fresh hardware
//!   output into the generator's key.
//! - arm32: the 128 random bytes libxl (`xl create`, Xen 4.16 and later)
//!   puts in the guest's device tree as `/chosen/rng-seed`. A dom0less
//!   domain gets none (Xen's own domain builder writes no seed), and
//!   ARMv7 has no random-number instruction.
//! - Otherwise: timer jitter, the low bits of the cycle counter around a
//!   few thousand hypercalls. That is [`Source::TimerJitter`], which is
//!   **weak** — fine to make DNS transaction ids hard to guess for an
//!   off-path attacker who cannot watch the boot, not fit for keys — and
//!   the boot log says so.
//!
//! [`fill`] fails (it never hands out zeros) before the generator is
//! seeded or when the hardware source stops answering; callers decide what
//! a failure means for them (the firewall's resolver sends no query).
//!
//! The generator uses fast key erasure: each request runs ChaCha20 (RFC
//! 8439) under the current key, the first 32 bytes of output become the
//! next key and the rest is handed out, so a later key reveals nothing of
//! earlier output.

/// Where the generator's seed came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The CPU's `RDSEED` instruction (amd64).
    Rdseed,
    /// The CPU's `RDRAND` instruction (amd64).
    Rdrand,
    /// The toolstack's `/chosen/rng-seed` in the device tree (arm32).
    ToolstackSeed,
    /// Cycle-counter jitter: weak, see the module documentation.
    TimerJitter,
}

impl Source {
    /// Whether output from this source is unfit for secrets.
    pub fn is_weak(self) -> bool {
        self == Source::TimerJitter
    }

    /// A short name for logs.
    pub fn name(self) -> &'static str {
        match self {
            Source::Rdseed => "RDSEED",
            Source::Rdrand => "RDRAND",
            Source::ToolstackSeed => "the toolstack's /chosen/rng-seed",
            Source::TimerJitter => "timer jitter (WEAK)",
        }
    }
}

/// Why [`fill`] gave no bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntropyError {
    /// The generator was never seeded (before boot's `init`, or on the
    /// host).
    Unseeded,
    /// The hardware source failed every retry (Intel: a failed `RDRAND`
    /// after 10 tries means a broken CPU, not a busy one).
    HardwareFailed,
}

impl core::fmt::Display for EntropyError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            EntropyError::Unseeded => f.write_str("no entropy source seeded"),
            EntropyError::HardwareFailed => f.write_str("hardware random source failed"),
        }
    }
}

/// The ChaCha20 block function (RFC 8439 section 2.3): 64 bytes of key
/// stream for `key`, block `counter` and `nonce`.
pub fn chacha20_block(key: &[u8; 32], counter: u32, nonce: &[u8; 12]) -> [u8; 64] {
    fn word(b: &[u8]) -> u32 {
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
    let mut init = [0u32; 16];
    init[..4].copy_from_slice(&[0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574]);
    for (i, chunk) in key.chunks_exact(4).enumerate() {
        init[4 + i] = word(chunk);
    }
    init[12] = counter;
    for (i, chunk) in nonce.chunks_exact(4).enumerate() {
        init[13 + i] = word(chunk);
    }
    let mut x = init;
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
    let mut out = [0u8; 64];
    for (i, chunk) in out.chunks_exact_mut(4).enumerate() {
        chunk.copy_from_slice(&x[i].wrapping_add(init[i]).to_le_bytes());
    }
    out
}

/// A ChaCha20 generator with fast key erasure. Plain logic, tested on the
/// host; the kernel keeps one behind [`fill`].
#[derive(Clone)]
pub struct Generator {
    key: [u8; 32],
    /// Requests served: the nonce, so no (key, nonce) pair repeats even
    /// if a key did.
    requests: u64,
}

impl core::fmt::Debug for Generator {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Generator { .. }")
    }
}

impl Generator {
    /// A generator with an all-zero key; [`Generator::absorb`] the seed.
    pub const fn new() -> Generator {
        Generator {
            key: [0; 32],
            requests: 0,
        }
    }

    /// Mixes `input` (any length) into the key: each 32-byte piece is
    /// XORed in and the key replaced by ChaCha20 output under it, so every
    /// input bit influences all of the key.
    pub fn absorb(&mut self, input: &[u8]) {
        for piece in input.chunks(32) {
            for (k, b) in self.key.iter_mut().zip(piece) {
                *k ^= b;
            }
            self.rekey();
        }
    }

    fn rekey(&mut self) {
        self.requests = self.requests.wrapping_add(1);
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&self.requests.to_le_bytes());
        let block = chacha20_block(&self.key, 0, &nonce);
        self.key.copy_from_slice(&block[..32]);
    }

    /// Fills `out` with key stream and moves to a fresh key.
    pub fn fill(&mut self, out: &mut [u8]) {
        self.requests = self.requests.wrapping_add(1);
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&self.requests.to_le_bytes());
        // Block 0: the next key and 32 bytes of output; then blocks 1.. .
        let first = chacha20_block(&self.key, 0, &nonce);
        let (head, rest) = out.split_at_mut(out.len().min(32));
        head.copy_from_slice(&first[32..32 + head.len()]);
        for (i, chunk) in rest.chunks_mut(64).enumerate() {
            let block = chacha20_block(&self.key, i as u32 + 1, &nonce);
            chunk.copy_from_slice(&block[..chunk.len()]);
        }
        self.key.copy_from_slice(&first[..32]);
    }
}

impl Default for Generator {
    fn default() -> Self {
        Generator::new()
    }
}

/// Folds cycle-counter samples into `generator`: the low byte of each
/// difference between consecutive `sample()` readings, `count` of them.
/// `between` runs between readings (a hypercall, whose duration varies).
pub fn absorb_jitter(
    generator: &mut Generator,
    count: usize,
    mut sample: impl FnMut() -> u64,
    mut between: impl FnMut(),
) {
    let mut buf = [0u8; 32];
    let mut last = sample();
    for i in 0..count {
        between();
        let now = sample();
        buf[i % 32] ^= (now.wrapping_sub(last) as u8).rotate_left((i / 32) as u32 % 8);
        last = now;
        if i % 32 == 31 {
            generator.absorb(&buf);
        }
    }
    generator.absorb(&buf);
}

#[cfg(target_os = "none")]
mod global {
    use super::*;

    struct State {
        generator: Generator,
        source: Source,
    }

    static STATE: spin::Mutex<Option<State>> = spin::Mutex::new(None);

    /// Seeds the generator at boot from the best source there is (see the
    /// module documentation); `toolstack_seed` is the device tree's
    /// `/chosen/rng-seed` (empty where there is none). Returns the source.
    pub fn init(toolstack_seed: &[u8]) -> Source {
        let mut generator = Generator::new();
        let mut hw = [0u8; 64];
        let source = if let Some(source) = crate::arch::hardware_random(&mut hw) {
            generator.absorb(&hw);
            source
        } else if toolstack_seed.len() >= 32 {
            generator.absorb(toolstack_seed);
            Source::ToolstackSeed
        } else {
            absorb_jitter(&mut generator, 4096, xen::time::rdtsc, || {
                let _ = xen::hypercall::xen_version();
            });
            Source::TimerJitter
        };
        // Whatever the source, the toolstack's seed adds to it.
        generator.absorb(toolstack_seed);
        *STATE.lock() = Some(State { generator, source });
        source
    }

    /// Fills `buf` with random bytes; says where the seed came from (check
    /// [`Source::is_weak`] before using them for secrets).
    pub fn fill(buf: &mut [u8]) -> Result<Source, EntropyError> {
        let mut state = STATE.lock();
        let state = state.as_mut().ok_or(EntropyError::Unseeded)?;
        if matches!(state.source, Source::Rdseed | Source::Rdrand) {
            let mut fresh = [0u8; 32];
            if crate::arch::hardware_random(&mut fresh).is_none() {
                return Err(EntropyError::HardwareFailed);
            }
            state.generator.absorb(&fresh);
        }
        state.generator.fill(buf);
        Ok(state.source)
    }

    /// The source the generator was seeded from, once it is.
    pub fn source() -> Option<Source> {
        STATE.lock().as_ref().map(|s| s.source)
    }
}
#[cfg(target_os = "none")]
pub use global::{fill, init, source};

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 8439 section 2.3.2's test vector for the block function.
    #[test]
    fn chacha20_block_matches_rfc_8439() {
        let mut key = [0u8; 32];
        for (i, k) in key.iter_mut().enumerate() {
            *k = i as u8;
        }
        let nonce = [0, 0, 0, 9, 0, 0, 0, 0x4a, 0, 0, 0, 0];
        let out = chacha20_block(&key, 1, &nonce);
        assert_eq!(out[..16].to_vec(), hex("10f1e7e4d13b5915500fdd1fa32071c4"));
        assert_eq!(out[48..].to_vec(), hex("b5129cd1de164eb9cbd083e8a2503c4e"));
    }

    #[test]
    fn generator_output_depends_on_every_seed_byte_and_never_repeats() {
        let seed = [7u8; 128];
        let mut a = Generator::new();
        a.absorb(&seed);
        let mut b = Generator::new();
        let mut other = seed;
        other[127] ^= 1;
        b.absorb(&other);
        let (mut x, mut y) = ([0u8; 100], [0u8; 100]);
        a.fill(&mut x);
        b.fill(&mut y);
        assert_ne!(x, y, "the last seed byte changed the output");
        let mut again = a.clone();
        let mut z = [0u8; 100];
        a.fill(&mut z);
        assert_ne!(x, z, "a second request gives new bytes");
        let mut w = [0u8; 100];
        again.fill(&mut w);
        assert_eq!(z, w, "deterministic for one key");
        assert!(x.iter().any(|&v| v != 0));
    }

    #[test]
    fn fills_of_any_length_are_filled() {
        let mut g = Generator::new();
        g.absorb(b"seed");
        for len in [0usize, 1, 31, 32, 33, 95, 96, 97, 300] {
            let mut buf = vec![0u8; len];
            g.fill(&mut buf);
            // 8+ bytes of key stream are all zero with odds of 2^-64.
            if len >= 8 {
                assert!(buf.iter().any(|&v| v != 0), "length {len}");
            }
            // The tail is filled too (not left at zero).
            if len >= 40 {
                assert!(buf[len - 8..].iter().any(|&v| v != 0), "tail of {len}");
            }
        }
    }

    #[test]
    fn jitter_is_absorbed() {
        let mut t = 0u64;
        let mut a = Generator::new();
        absorb_jitter(
            &mut a,
            100,
            || {
                t += 1000 + (t * 7919) % 13;
                t
            },
            || {},
        );
        let mut b = Generator::new();
        absorb_jitter(&mut b, 100, || 5, || {});
        let (mut x, mut y) = ([0u8; 32], [0u8; 32]);
        a.fill(&mut x);
        b.fill(&mut y);
        assert_ne!(x, y);
    }
}
