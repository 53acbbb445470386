//! The operating system's random bytes (`/dev/urandom`) as the
//! firewall's [`RandomSource`].

use std::io::Read;

use firewall::{NoRandomness, RandomSource};

/// Reads `/dev/urandom` for every request; fails if it cannot.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsRandom;

impl RandomSource for OsRandom {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), NoRandomness> {
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(buf))
            .map_err(|_| NoRandomness)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_reads_differ() {
        let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
        OsRandom.fill(&mut a).unwrap();
        OsRandom.fill(&mut b).unwrap();
        assert_ne!(a, b);
    }
}
