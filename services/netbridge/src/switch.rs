//! A learning Ethernet switch: which port a MAC address was last seen on,
//! and where a frame goes.
//!
//! Hardened against its own clients (issue 14 item 2):
//! - a client port bound to its vif's `mac` has that address **pinned**
//!   ([`Switch::pin`]): it never moves to another port, and a frame from
//!   another port with it as source (a domain behind the uplink, or an
//!   unbound client, posing as the client) is dropped and counted
//!   ([`Switch::stolen`]); the runtime's binding already keeps a bound
//!   client from sending with any other source;
//! - learnt entries **age**: one not seen for [`AGE_NS`] is forgotten
//!   (Linux's bridge default, 300 s), so a MAC that went is flooded to
//!   again rather than sent to a port that no longer has it;
//! - **per-port limits**: a client port learns at most [`MAX_PER_CLIENT`]
//!   addresses and the uplink [`MAX_PER_UPLINK`]; a port at its limit
//!   replaces its own least recently seen entry, and a full table its
//!   least recently seen one overall, so no port can fill the table and
//!   make the others' unicast flood.

use alloc::collections::BTreeMap;
#[cfg(test)]
use alloc::vec::Vec;

/// Most addresses learnt in all (pinned ones come on top: one per
/// client).
pub const MAX_ENTRIES: usize = 1024;
/// Most addresses learnt on one client port.
pub const MAX_PER_CLIENT: usize = 16;
/// Most addresses learnt on the uplink (port 0).
pub const MAX_PER_UPLINK: usize = 768;
/// How long a learnt address is kept without a frame from it.
pub const AGE_NS: u64 = 300_000_000_000;

/// Where a frame goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Forward {
    /// To this one port.
    One(usize),
    /// To every port but the one it came in on.
    Flood,
    /// Nowhere: too short, or its destination is where it came from.
    Drop,
    /// Nowhere: its source is pinned to another port.
    Stolen,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    port: usize,
    seen: u64,
    pinned: bool,
}

/// The table of a learning switch.
#[derive(Default)]
pub struct Switch {
    table: BTreeMap<[u8; 6], Entry>,
    /// Learnt (not pinned) entries per port.
    learnt: BTreeMap<usize, usize>,
    /// Frames dropped because their source is pinned to another port.
    pub stolen: u64,
    /// Entries forgotten because they were not seen for [`AGE_NS`].
    pub aged: u64,
    /// Entries replaced to make room (a port at its limit, or the table
    /// full).
    pub evicted: u64,
}

impl Switch {
    /// An empty table.
    #[cfg(test)]
    pub fn new() -> Self {
        Self::default()
    }

    fn limit(port: usize) -> usize {
        if port == 0 {
            MAX_PER_UPLINK
        } else {
            MAX_PER_CLIENT
        }
    }

    fn learnt_total(&self) -> usize {
        self.learnt.values().sum()
    }

    fn remove(&mut self, mac: &[u8; 6]) {
        if let Some(e) = self.table.remove(mac) {
            if !e.pinned {
                if let Some(n) = self.learnt.get_mut(&e.port) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.learnt.remove(&e.port);
                    }
                }
            }
        }
    }

    /// The least recently seen learnt entry (of `port`, if given).
    fn oldest(&self, port: Option<usize>) -> Option<[u8; 6]> {
        self.table
            .iter()
            .filter(|(_, e)| !e.pinned && port.is_none_or(|p| e.port == p))
            .min_by_key(|(_, e)| e.seen)
            .map(|(m, _)| *m)
    }

    /// `mac` belongs to client `port` (its vif's `mac`): pinned there
    /// until [`Switch::forget_port`].
    pub fn pin(&mut self, port: usize, mac: [u8; 6]) {
        self.remove(&mac);
        self.table.insert(
            mac,
            Entry {
                port,
                seen: 0,
                pinned: true,
            },
        );
    }

    fn learn(&mut self, now: u64, port: usize, mac: [u8; 6]) {
        match self.table.get_mut(&mac) {
            Some(e) if e.port == port => {
                e.seen = now;
                return;
            }
            Some(_) => self.remove(&mac),
            None => {}
        }
        if self.learnt.get(&port).copied().unwrap_or(0) >= Self::limit(port) {
            if let Some(old) = self.oldest(Some(port)) {
                self.remove(&old);
                self.evicted += 1;
            }
        } else if self.learnt_total() >= MAX_ENTRIES {
            if let Some(old) = self.oldest(None) {
                self.remove(&old);
                self.evicted += 1;
            }
        }
        self.table.insert(
            mac,
            Entry {
                port,
                seen: now,
                pinned: false,
            },
        );
        *self.learnt.entry(port).or_insert(0) += 1;
    }

    /// Learn the source of `frame` (arrived on `port` at `now`) and decide
    /// where it goes.
    pub fn route(&mut self, now: u64, port: usize, frame: &[u8]) -> Forward {
        let (Some(dst), Some(src)) = (frame.get(0..6), frame.get(6..12)) else {
            return Forward::Drop;
        };
        let mut s = [0u8; 6];
        s.copy_from_slice(src);
        match self.table.get(&s) {
            Some(e) if e.pinned && e.port != port => {
                self.stolen += 1;
                return Forward::Stolen;
            }
            Some(e) if e.pinned => {}
            // Only unicast sources are learnt (a multicast source is bogus).
            _ if s[0] & 1 == 0 => self.learn(now, port, s),
            _ => {}
        }
        if dst[0] & 1 != 0 {
            return Forward::Flood;
        }
        match self.table.get(dst) {
            Some(e) if !e.pinned && now.saturating_sub(e.seen) > AGE_NS => Forward::Flood,
            Some(e) if e.port == port => Forward::Drop,
            Some(e) => Forward::One(e.port),
            None => Forward::Flood,
        }
    }

    /// Forget learnt entries not seen for [`AGE_NS`].
    pub fn expire(&mut self, now: u64) {
        let old: alloc::vec::Vec<[u8; 6]> = self
            .table
            .iter()
            .filter(|(_, e)| !e.pinned && now.saturating_sub(e.seen) > AGE_NS)
            .map(|(m, _)| *m)
            .collect();
        for m in old {
            self.remove(&m);
            self.aged += 1;
        }
    }

    /// Forget every address of `port`, pinned or learnt (its vif went
    /// away).
    pub fn forget_port(&mut self, port: usize) {
        self.table.retain(|_, e| e.port != port);
        self.learnt.remove(&port);
    }

    /// Addresses known.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no address is known.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The ports of every entry (for tests).
    #[cfg(test)]
    pub fn ports(&self) -> Vec<usize> {
        self.table.values().map(|e| e.port).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x08, 0x00, 0, 0]);
        f
    }
    const A: [u8; 6] = [0, 0x16, 0x3e, 0, 0, 1];
    const B: [u8; 6] = [0, 0x16, 0x3e, 0, 0, 2];
    const S: u64 = 1_000_000_000;

    #[test]
    fn learns_floods_unknown_and_forwards_known() {
        let mut s = Switch::new();
        assert_eq!(s.route(0, 0, &frame(B, A)), Forward::Flood);
        assert_eq!(s.route(0, 1, &frame(A, B)), Forward::One(0));
        assert_eq!(s.route(0, 0, &frame(B, A)), Forward::One(1));
        assert_eq!(s.route(0, 0, &frame([0xff; 6], A)), Forward::Flood);
        assert_eq!(s.route(0, 0, &frame(A, A)), Forward::Drop);
        assert_eq!(s.route(0, 0, &[1, 2, 3]), Forward::Drop);
        s.forget_port(1);
        assert_eq!(s.route(0, 0, &frame(B, A)), Forward::Flood);
    }

    #[test]
    fn multicast_sources_are_not_learnt_and_ports_are_bounded() {
        let mut s = Switch::new();
        s.route(0, 0, &frame(A, [1, 0, 0, 0, 0, 9]));
        assert!(s.is_empty());
        // A client port keeps its 16 most recent addresses.
        for i in 0..100u32 {
            let b = i.to_be_bytes();
            s.route(u64::from(i), 2, &frame(A, [0, 2, b[0], b[1], b[2], b[3]]));
        }
        assert_eq!(s.len(), MAX_PER_CLIENT);
        assert_eq!(s.evicted, 100 - MAX_PER_CLIENT as u64);
        assert_eq!(
            s.route(200, 0, &frame([0, 2, 0, 0, 0, 99], B)),
            Forward::One(2)
        );
        assert_eq!(
            s.route(200, 0, &frame([0, 2, 0, 0, 0, 0], B)),
            Forward::Flood
        );
        // The uplink is bounded too, and many clients together by the
        // table: the oldest entries overall make room.
        for i in 0..2000u32 {
            let b = i.to_be_bytes();
            s.route(
                1000 + u64::from(i),
                0,
                &frame(A, [0, 4, b[0], b[1], b[2], b[3]]),
            );
        }
        assert!(s.ports().iter().filter(|&&p| p == 0).count() <= MAX_PER_UPLINK);
        for port in 3..100usize {
            for i in 0..MAX_PER_CLIENT as u32 {
                let b = i.to_be_bytes();
                let src = [0, 6, port as u8, b[1], b[2], b[3]];
                s.route(5000 + port as u64, port, &frame(A, src));
            }
        }
        assert!(s.len() <= MAX_ENTRIES);
        // The newest client's addresses are all there.
        assert_eq!(
            s.ports().iter().filter(|&&p| p == 99).count(),
            MAX_PER_CLIENT
        );
    }

    #[test]
    fn a_pinned_mac_stays_with_its_client() {
        let mut s = Switch::new();
        s.pin(1, A);
        // From the uplink or another client, A's MAC as a source is stolen.
        assert_eq!(s.route(0, 0, &frame(B, A)), Forward::Stolen);
        assert_eq!(s.route(0, 2, &frame(B, A)), Forward::Stolen);
        assert_eq!(s.stolen, 2);
        // Frames to A still go to client 1, and from it out.
        assert_eq!(s.route(0, 0, &frame(A, B)), Forward::One(1));
        assert_eq!(s.route(0, 1, &frame(B, A)), Forward::One(0));
        // Pinned entries never age; learnt ones do.
        assert_eq!(s.route(10 * AGE_NS, 0, &frame(A, B)), Forward::One(1));
        assert_eq!(
            s.route(10 * AGE_NS + 400 * S, 1, &frame(B, A)),
            Forward::Flood
        );
        s.expire(10 * AGE_NS + 400 * S);
        assert_eq!(s.aged, 1);
        assert_eq!(s.len(), 1);
        // The client went: A is free.
        s.forget_port(1);
        assert_eq!(s.route(0, 2, &frame(B, A)), Forward::Flood);
        assert_eq!(s.ports(), [2]);
    }
}
