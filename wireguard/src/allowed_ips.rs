//! Cryptokey routing: the AllowedIPs table, a longest-prefix-match map from
//! IPv4 and IPv6 prefixes to a peer (paper section 2).
//!
//! Outgoing packets pick the peer whose prefix best matches the destination;
//! incoming decrypted packets are accepted only if the best match for their
//! source is the peer they came from. Prefixes are stored with host bits
//! cleared, one ordered map per prefix length, and looked up from the longest
//! length present down: O(lengths × log n), no allocation on lookup.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::net::IpAddr;

/// A prefix length larger than the address (over 32 for IPv4, 128 for IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixTooLong;

#[derive(Clone)]
struct Family<T> {
    /// (prefix length, network → value), longest first.
    by_length: Vec<(u8, BTreeMap<u128, T>)>,
    bits: u8,
}

fn mask(addr: u128, len: u8, bits: u8) -> u128 {
    if len == 0 {
        0
    } else {
        let shift = u32::from(bits - len);
        (addr >> shift) << shift
    }
}

impl<T> Family<T> {
    const fn new(bits: u8) -> Self {
        Self {
            by_length: Vec::new(),
            bits,
        }
    }

    fn insert(&mut self, addr: u128, len: u8, value: T) -> Result<Option<T>, PrefixTooLong> {
        if len > self.bits {
            return Err(PrefixTooLong);
        }
        let net = mask(addr, len, self.bits);
        let pos = match self.by_length.binary_search_by(|(l, _)| len.cmp(l)) {
            Ok(p) => p,
            Err(p) => {
                self.by_length.insert(p, (len, BTreeMap::new()));
                p
            }
        };
        Ok(self.by_length[pos].1.insert(net, value))
    }

    fn lookup(&self, addr: u128) -> Option<(&T, u8)> {
        self.by_length
            .iter()
            .find_map(|(len, map)| map.get(&mask(addr, *len, self.bits)).map(|v| (v, *len)))
    }

    fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        for (_, map) in self.by_length.iter_mut() {
            map.retain(|_, v| keep(v));
        }
        self.by_length.retain(|(_, m)| !m.is_empty());
    }

    fn len(&self) -> usize {
        self.by_length.iter().map(|(_, m)| m.len()).sum()
    }
}

/// The AllowedIPs table of an interface, mapping prefixes to values (usually a peer id).
#[derive(Clone)]
pub struct AllowedIps<T> {
    v4: Family<T>,
    v6: Family<T>,
}

impl<T> Default for AllowedIps<T> {
    fn default() -> Self {
        Self::new()
    }
}

fn split(addr: IpAddr) -> (bool, u128) {
    match addr {
        IpAddr::V4(a) => (true, u128::from(u32::from(a))),
        IpAddr::V6(a) => (false, u128::from(a)),
    }
}

impl<T> AllowedIps<T> {
    /// An empty table.
    pub const fn new() -> Self {
        Self {
            v4: Family::new(32),
            v6: Family::new(128),
        }
    }

    fn family(&mut self, v4: bool) -> &mut Family<T> {
        if v4 {
            &mut self.v4
        } else {
            &mut self.v6
        }
    }

    /// Maps `addr/len` (host bits ignored) to `value`; returns the value it replaced.
    /// As in WireGuard, a prefix belongs to one peer: inserting it again moves it.
    pub fn insert(&mut self, addr: IpAddr, len: u8, value: T) -> Result<Option<T>, PrefixTooLong> {
        let (v4, a) = split(addr);
        self.family(v4).insert(a, len, value)
    }

    /// The value of the longest prefix containing `addr`.
    pub fn lookup(&self, addr: IpAddr) -> Option<&T> {
        self.lookup_with_len(addr).map(|(v, _)| v)
    }

    /// The value of the longest prefix containing `addr`, and that prefix's length.
    pub fn lookup_with_len(&self, addr: IpAddr) -> Option<(&T, u8)> {
        let (v4, a) = split(addr);
        if v4 {
            self.v4.lookup(a)
        } else {
            self.v6.lookup(a)
        }
    }

    /// Removes every prefix whose value fails `keep` (e.g. all of a removed peer).
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.v4.retain(&mut keep);
        self.v6.retain(&mut keep);
    }

    /// Number of prefixes.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn table() -> AllowedIps<u32> {
        let mut t = AllowedIps::new();
        t.insert(ip("0.0.0.0"), 0, 1).unwrap();
        t.insert(ip("10.0.0.0"), 8, 2).unwrap();
        t.insert(ip("10.1.0.0"), 16, 3).unwrap();
        t.insert(ip("10.1.2.3"), 32, 4).unwrap();
        t.insert(ip("192.168.1.77"), 24, 5).unwrap(); // host bits ignored
        t.insert(ip("::"), 0, 6).unwrap();
        t.insert(ip("fd00::"), 8, 7).unwrap();
        t.insert(ip("fd00:1::"), 32, 8).unwrap();
        t
    }

    #[test]
    fn longest_prefix_wins_v4() {
        let t = table();
        assert_eq!(t.lookup(ip("8.8.8.8")), Some(&1));
        assert_eq!(t.lookup(ip("10.200.0.1")), Some(&2));
        assert_eq!(t.lookup(ip("10.1.9.9")), Some(&3));
        assert_eq!(t.lookup(ip("10.1.2.3")), Some(&4));
        assert_eq!(t.lookup(ip("10.1.2.4")), Some(&3));
        assert_eq!(t.lookup(ip("192.168.1.1")), Some(&5));
        assert_eq!(t.lookup(ip("192.168.2.1")), Some(&1));
        assert_eq!(t.lookup_with_len(ip("10.1.2.3")), Some((&4, 32)));
    }

    #[test]
    fn longest_prefix_wins_v6_and_families_are_separate() {
        let t = table();
        assert_eq!(t.lookup(ip("2001:db8::1")), Some(&6));
        assert_eq!(t.lookup(ip("fd99::1")), Some(&7));
        assert_eq!(t.lookup(ip("fd00:1::5")), Some(&8));
        let mut only4 = AllowedIps::new();
        only4.insert(ip("0.0.0.0"), 0, 1).unwrap();
        assert_eq!(only4.lookup(ip("::1")), None);
        // An IPv4-mapped IPv6 address is an IPv6 address here.
        assert_eq!(only4.lookup(ip("::ffff:10.0.0.1")), None);
    }

    #[test]
    fn reinsert_moves_prefix_and_retain_removes_peer() {
        let mut t = table();
        assert_eq!(t.insert(ip("10.0.0.0"), 8, 9).unwrap(), Some(2));
        assert_eq!(t.lookup(ip("10.9.9.9")), Some(&9));
        let before = t.len();
        t.retain(|v| *v != 9);
        assert_eq!(t.len(), before - 1);
        assert_eq!(t.lookup(ip("10.9.9.9")), Some(&1));
        t.retain(|_| false);
        assert!(t.is_empty());
        assert_eq!(t.lookup(ip("10.9.9.9")), None);
    }

    #[test]
    fn prefix_length_checked() {
        let mut t = AllowedIps::new();
        assert_eq!(t.insert(ip("1.2.3.4"), 33, 1), Err(PrefixTooLong));
        assert_eq!(t.insert(ip("::1"), 129, 1), Err(PrefixTooLong));
        assert!(t.insert(ip("::1"), 128, 1).is_ok());
    }

    #[test]
    fn matches_brute_force_on_random_tables() {
        let mut x = 12345u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut t = AllowedIps::new();
        let mut reference: Vec<(u32, u8, u32)> = Vec::new();
        for v in 0..300u32 {
            let addr = (next() as u32) & 0xff00_ffff;
            let len = (next() % 33) as u8;
            let net = mask(u128::from(addr), len, 32) as u32;
            t.insert(IpAddr::V4(addr.into()), len, v).unwrap();
            reference.retain(|(n, l, _)| !(*n == net && *l == len));
            reference.push((net, len, v));
        }
        for _ in 0..3000 {
            let a = (next() as u32) & 0xff00_ffff;
            let expect = reference
                .iter()
                .filter(|(n, l, _)| mask(u128::from(a), *l, 32) as u32 == *n)
                .max_by_key(|(_, l, _)| *l)
                .map(|(_, _, v)| v);
            assert_eq!(t.lookup(IpAddr::V4(a.into())), expect);
        }
    }
}
