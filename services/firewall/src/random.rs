//! Where the firewall's unpredictable numbers come from: the `dsthost=`
//! resolver's source ports and DNS transaction ids.
//!
//! The core stays hardware-free: the platform passes a [`RandomSource`]
//! in ([`crate::Firewall::with_random`]) — the kernel's entropy generator
//! on Xen (`kernel::entropy`), the operating system's on the hosted
//! platform. A source that fails makes the resolver send nothing (counted
//! in [`crate::resolver::ResolverStats::no_randomness`]) rather than
//! queries an off-path attacker could predict and answer.

/// The source had no bytes to give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoRandomness;

/// Unpredictable bytes.
pub trait RandomSource {
    /// Fills `buf` entirely, or fails without handing out anything.
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), NoRandomness>;
}

/// A source that never has bytes: what [`crate::Firewall::new`] uses, so
/// that a platform which passes none gets no DNS queries instead of
/// guessable ones.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unavailable;

impl RandomSource for Unavailable {
    fn fill(&mut self, _buf: &mut [u8]) -> Result<(), NoRandomness> {
        Err(NoRandomness)
    }
}
