//! A learning Ethernet switch: which port a MAC address was last seen on,
//! and where a frame goes.

use alloc::collections::BTreeMap;
#[cfg(test)]
use alloc::vec::Vec;

/// Most addresses remembered; beyond it, frames to unknown addresses are
/// flooded (a domain cannot grow the table without bound).
pub const MAX_ENTRIES: usize = 1024;

/// Where a frame goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Forward {
    /// To this one port.
    One(usize),
    /// To every port but the one it came in on.
    Flood,
    /// Nowhere: too short, or its destination is where it came from.
    Drop,
}

/// The table of a learning switch.
#[derive(Default)]
pub struct Switch {
    table: BTreeMap<[u8; 6], usize>,
}

impl Switch {
    /// An empty table.
    #[cfg(test)]
    pub fn new() -> Self {
        Self::default()
    }

    /// Learn the source of `frame` (arrived on `port`) and decide where it
    /// goes.
    pub fn route(&mut self, port: usize, frame: &[u8]) -> Forward {
        let (Some(dst), Some(src)) = (frame.get(0..6), frame.get(6..12)) else {
            return Forward::Drop;
        };
        let mut s = [0u8; 6];
        s.copy_from_slice(src);
        // Only unicast sources are learnt (a multicast source is bogus).
        if s[0] & 1 == 0 && (self.table.len() < MAX_ENTRIES || self.table.contains_key(&s)) {
            self.table.insert(s, port);
        }
        if dst[0] & 1 != 0 {
            return Forward::Flood;
        }
        match self.table.get(dst) {
            Some(&p) if p == port => Forward::Drop,
            Some(&p) => Forward::One(p),
            None => Forward::Flood,
        }
    }

    /// Forget every address learnt on `port` (its vif went away).
    pub fn forget_port(&mut self, port: usize) {
        self.table.retain(|_, p| *p != port);
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
        self.table.values().copied().collect()
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

    #[test]
    fn learns_floods_unknown_and_forwards_known() {
        let mut s = Switch::new();
        assert_eq!(s.route(0, &frame(B, A)), Forward::Flood);
        assert_eq!(s.route(1, &frame(A, B)), Forward::One(0));
        assert_eq!(s.route(0, &frame(B, A)), Forward::One(1));
        assert_eq!(s.route(0, &frame([0xff; 6], A)), Forward::Flood);
        assert_eq!(s.route(0, &frame(A, A)), Forward::Drop);
        assert_eq!(s.route(0, &[1, 2, 3]), Forward::Drop);
        s.forget_port(1);
        assert_eq!(s.route(0, &frame(B, A)), Forward::Flood);
    }

    #[test]
    fn multicast_sources_are_not_learnt_and_the_table_is_bounded() {
        let mut s = Switch::new();
        s.route(0, &frame(A, [1, 0, 0, 0, 0, 9]));
        assert!(s.is_empty());
        for i in 0..(MAX_ENTRIES as u32 + 100) {
            let b = i.to_be_bytes();
            s.route(2, &frame(A, [0, 2, b[0], b[1], b[2], b[3]]));
        }
        assert_eq!(s.len(), MAX_ENTRIES);
        assert!(s.ports().iter().all(|&p| p == 2));
    }
}
