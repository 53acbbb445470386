//! A `no_std` + `alloc` implementation of the WireGuard protocol, written from
//! the WireGuard paper (Donenfeld, NDSS 2017) and checked against boringtun.
//!
//! We write our own instead of adopting a crate: boringtun needs `std`, and the
//! `no_std` crates on crates.io were not mature enough to pass the interop and
//! timer tests this project requires. Crypto comes from `ring` (ChaCha20-Poly1305
//! on hosted targets), RustCrypto (`chacha20poly1305` on bare metal and for
//! XChaCha20, `blake2`) and `x25519-dalek`/`curve25519-dalek`, all `no_std`;
//! see [`crypto`] and the README for which runs where.
//!
//! The design is sans-io: [`Tunnel`] takes the time and a [`Random`] source as
//! arguments and returns [`Action`]s; it never reads a clock or touches a socket.
//!
//! Modules: [`allowed_ips`] (cryptokey routing), [`config`] (wg-quick files), [`device`] (several peers), [`wire`] (message views), [`crypto`] (primitives), [`noise`]
//! (handshake), [`cookie`] (mac1/mac2/cookies), [`replay`] (replay window),
//! [`session`] (one keypair), [`timers`] (constants), [`tunnel`] (one peer).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod allowed_ips;
pub mod config;
pub mod cookie;
pub mod crypto;
pub mod device;
pub mod noise;
pub mod replay;
pub mod session;
pub mod timers;
pub mod tunnel;
pub mod wire;

pub use device::{Device, PeerId};
pub use tunnel::{Action, Error, Tunnel, TunnelConfig, TunnelStats};

/// A source of cryptographically secure random bytes, supplied by the platform.
pub trait Random {
    /// Fills `buf` with random bytes.
    fn fill(&mut self, buf: &mut [u8]);
}

#[cfg(test)]
pub(crate) mod tests_support {
    /// A deterministic byte stream for unit tests (not random, but distinct per seed).
    pub struct CountingRng(pub u64);

    impl crate::Random for CountingRng {
        fn fill(&mut self, buf: &mut [u8]) {
            for b in buf.iter_mut() {
                self.0 = self
                    .0
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                *b = (self.0 >> 33) as u8;
            }
        }
    }
}
