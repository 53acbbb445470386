//! A hostile netfront, for tests of the backends that serve client vifs
//! (the firewall VM, netbridge, the VPN VM), and a hostile netback
//! ([`back`]), for tests of the netfronts of moat images (the firewall
//! VM's uplink): each vif of the `hostile`
//! image runs one [`Attack`] on the backend serving it, while the test
//! checks that the backend's other clients are still served, that it
//! counts what it refused, and that its memory, grants and event channels
//! come back when the hostile domain is gone (issue 12 item 7, issue 14
//! item 7).
//!
//! The handshake is done by hand (keys and states as a netfront writes
//! them) and the rings are driven byte by byte ([`ring::RawRing`]), so
//! the attacks can write what no well-behaved driver would. Everything an
//! attack writes is bounded by its own pages: the image never attacks Xen
//! or its own memory.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod back;
pub mod back_ring;
pub mod frames;
pub mod ring;
pub mod vif;

use alloc::vec::Vec;
use core::net::Ipv4Addr;

/// What a vif does to its backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attack {
    /// TX requests naming grants the backend may not use (random
    /// references, a page granted to dom0): netback's `BadTxGrant`.
    BadGrant,
    /// Malformed TX requests in turn: empty, runt, out of the page, a
    /// follow-on slot larger than the total, 20 data slots, an unknown
    /// extra info type, GSO of size 0 (a good frame between them).
    Malformed,
    /// The ring's indices: a producer index 10,000 past the ring, or a
    /// `more_data` chain running past what was published.
    Index,
    /// Well-formed UDP frames to the target, as fast as the ring takes
    /// them.
    Flood,
    /// A TCP SYN to the target from a new port pair each time: a flood of
    /// new flows (connection tracking, NAT).
    Flows,
    /// First fragments (more to follow) of UDP datagrams with new ids,
    /// never completed: the reassembly table.
    Frags,
    /// Pings (their answers come back to us) with no RX buffer posted for
    /// 5 s, then RX buffers whose grants are bogus.
    RxStall,
}

impl Attack {
    /// Every attack, in the order of their names.
    pub const ALL: [Attack; 7] = [
        Attack::BadGrant,
        Attack::Malformed,
        Attack::Index,
        Attack::Flood,
        Attack::Flows,
        Attack::Frags,
        Attack::RxStall,
    ];

    /// The attack's name on the command line (`hostile.attacks=`).
    pub fn name(self) -> &'static str {
        match self {
            Attack::BadGrant => "bad-grant",
            Attack::Malformed => "malformed",
            Attack::Index => "index",
            Attack::Flood => "flood",
            Attack::Flows => "flows",
            Attack::Frags => "frags",
            Attack::RxStall => "rx-stall",
        }
    }

    /// The attack named `name`.
    pub fn parse(name: &str) -> Option<Attack> {
        Attack::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// The attacks of a comma-separated list, in order (vif N runs the N-th).
pub fn parse_attacks(list: &str) -> Result<Vec<Attack>, &str> {
    list.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| Attack::parse(s).ok_or(s))
        .collect()
}

/// A small generator for the attacks' random choices (xorshift64*): not
/// for secrets.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value).
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15 | 1)
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The image's settings: `hostile.attacks=a,b,...` (vif N runs the N-th;
/// default: every attack, one per vif), `hostile.seconds=N` (each vif's
/// attack time from its first connection; default 20),
/// `hostile.target=A.B.C.D` (where frames go; default 10.99.0.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// One attack per vif.
    pub attacks: Vec<Attack>,
    /// How long each vif attacks, from its first connection.
    pub seconds: u32,
    /// Where frames go.
    pub target: Ipv4Addr,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            attacks: Attack::ALL.to_vec(),
            seconds: 20,
            target: Ipv4Addr::new(10, 99, 0, 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attack_names_round_trip() {
        for a in Attack::ALL {
            assert_eq!(Attack::parse(a.name()), Some(a));
        }
        assert_eq!(
            parse_attacks("flood,index"),
            Ok(alloc::vec![Attack::Flood, Attack::Index])
        );
        assert_eq!(parse_attacks("flood,nope"), Err("nope"));
    }

    #[test]
    fn rng_moves() {
        let mut r = Rng::new(0);
        let a = r.next_u64();
        let b = r.next_u64();
        assert_ne!(a, b);
        assert_ne!(a, 0);
    }
}
