//! The CPU's random-number instructions, where CPUID says they exist:
//! `RDSEED` (leaf 7, EBX bit 18) and `RDRAND` (leaf 1, ECX bit 30).
//!
//! Retries follow Intel's Digital Random Number Generator guide: `RDRAND`
//! failing 10 times in a row means a broken CPU; `RDSEED` may run dry
//! under load and is retried with `PAUSE` in between, then we fall back
//! to `RDRAND`.

use core::sync::atomic::{AtomicU8, Ordering};

use crate::entropy::Source;

/// `RDRAND` attempts before giving up (Intel's recommendation).
const RDRAND_RETRIES: usize = 10;
/// `RDSEED` attempts, with a `PAUSE` between, before falling back.
const RDSEED_RETRIES: usize = 100;

const UNKNOWN: u8 = 0xff;
const HAS_RDRAND: u8 = 1;
const HAS_RDSEED: u8 = 2;
static FEATURES: AtomicU8 = AtomicU8::new(UNKNOWN);

fn features() -> u8 {
    let cached = FEATURES.load(Ordering::Relaxed);
    if cached != UNKNOWN {
        return cached;
    }
    let leaf0 = core::arch::x86_64::__cpuid(0);
    let mut f = 0;
    if leaf0.eax >= 1 && core::arch::x86_64::__cpuid(1).ecx & (1 << 30) != 0 {
        f |= HAS_RDRAND;
    }
    if leaf0.eax >= 7 && core::arch::x86_64::__cpuid_count(7, 0).ebx & (1 << 18) != 0 {
        f |= HAS_RDSEED;
    }
    FEATURES.store(f, Ordering::Relaxed);
    f
}

fn rdrand() -> Option<u64> {
    for _ in 0..RDRAND_RETRIES {
        let mut v = 0u64;
        // SAFETY: only called when CPUID reports RDRAND; the instruction
        // writes `v` and the carry flag only.
        if unsafe { core::arch::x86_64::_rdrand64_step(&mut v) } == 1 {
            return Some(v);
        }
    }
    None
}

fn rdseed() -> Option<u64> {
    for _ in 0..RDSEED_RETRIES {
        let mut v = 0u64;
        // SAFETY: only called when CPUID reports RDSEED; the instruction
        // writes `v` and the carry flag only.
        if unsafe { core::arch::x86_64::_rdseed64_step(&mut v) } == 1 {
            return Some(v);
        }
        core::hint::spin_loop();
    }
    None
}

/// Fills `out` from `RDSEED` (each word falling back to `RDRAND` when
/// `RDSEED` stays dry) and says which instruction the CPU offers; `None`
/// when it has neither or `RDRAND` failed every retry.
pub fn hardware_random(out: &mut [u8]) -> Option<Source> {
    let f = features();
    if f & (HAS_RDRAND | HAS_RDSEED) == 0 {
        return None;
    }
    for chunk in out.chunks_mut(8) {
        let word = if f & HAS_RDSEED != 0 { rdseed() } else { None };
        let word = match word {
            Some(w) => w,
            None if f & HAS_RDRAND != 0 => rdrand()?,
            None => return None,
        };
        chunk.copy_from_slice(&word.to_le_bytes()[..chunk.len()]);
    }
    Some(if f & HAS_RDSEED != 0 {
        Source::Rdseed
    } else {
        Source::Rdrand
    })
}
