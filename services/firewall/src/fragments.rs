//! First-fragment tracking for IPv4 and IPv6: the first fragment of a datagram
//! carries the ports, so it is matched to a flow and translated like any
//! packet; the later fragments only carry the IP header, and are
//! translated by looking up which flow their first fragment belonged to.
//! The incremental checksum update on the first fragment is valid for the
//! whole datagram, so nothing needs reassembling.
//!
//! The table is bounded; a fragment whose datagram is not tracked (its
//! first fragment came late, never, or the table was full) is dropped and
//! counted.
//!
//! Shared by all clients, so bounded per client too (the client of the
//! datagram's flow, whichever way it goes): a client at its share
//! replaces its own oldest datagram, and a full table takes room from the
//! client holding the most, so one client's fragments (a flood of first
//! fragments that never continue holds an entry for 30 s each) cannot
//! starve the others'.

use alloc::collections::BTreeMap;
use core::net::IpAddr;

use smoltcp::time::{Duration, Instant};

use crate::conntrack::ConnId;
use crate::packet::IpHeader;
use crate::ClientId;

/// How long the later fragments of a datagram are expected (Linux's
/// `ipfrag_time`).
const FRAGMENT_LIFETIME: Duration = Duration::from_secs(30);

/// A datagram as seen on the wire before translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DatagramKey {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IPv4 identification or IPv6 fragment identification.
    pub ident: u32,
    /// IP protocol.
    pub protocol: u8,
}

impl DatagramKey {
    /// The key of the datagram `header` belongs to; `None` when it is not
    /// a fragment.
    pub fn of(header: &IpHeader) -> Option<Self> {
        let fragment = header.fragment?;
        Some(DatagramKey {
            src: header.src,
            dst: header.dst,
            ident: fragment.ident,
            protocol: header.protocol,
        })
    }
}

/// A tracked datagram.
#[derive(Debug, Clone, Copy)]
struct Tracked {
    conn: ConnId,
    client: ClientId,
    expires: Instant,
}

/// The bounded datagram → flow map.
#[derive(Debug)]
pub struct FragmentTable {
    datagrams: BTreeMap<DatagramKey, Tracked>,
    /// Datagrams tracked per client.
    per_client: BTreeMap<ClientId, usize>,
    capacity: usize,
    client_capacity: usize,
    /// Datagrams forgotten before their time to make room (a client at
    /// its share, or the table full).
    pub evicted: u64,
}

impl FragmentTable {
    /// An empty table for at most `capacity` datagrams, `client_capacity`
    /// of them for one client (both at least one).
    pub fn new(capacity: usize, client_capacity: usize) -> FragmentTable {
        FragmentTable {
            datagrams: BTreeMap::new(),
            per_client: BTreeMap::new(),
            capacity: capacity.max(1),
            client_capacity: client_capacity.max(1),
            evicted: 0,
        }
    }

    fn remove(&mut self, key: &DatagramKey) {
        if let Some(t) = self.datagrams.remove(key) {
            if let Some(n) = self.per_client.get_mut(&t.client) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.per_client.remove(&t.client);
                }
            }
        }
    }

    /// The datagram of `client` (any client if `None`) closest to its end.
    fn oldest(&self, client: Option<ClientId>) -> Option<DatagramKey> {
        self.datagrams
            .iter()
            .filter(|(_, t)| client.is_none_or(|c| t.client == c))
            .min_by_key(|(_, t)| t.expires)
            .map(|(k, _)| *k)
    }

    fn expire(&mut self, now: Instant) {
        let old: alloc::vec::Vec<DatagramKey> = self
            .datagrams
            .iter()
            .filter(|(_, t)| t.expires <= now)
            .map(|(k, _)| *k)
            .collect();
        for k in old {
            self.remove(&k);
        }
    }

    /// Datagrams tracked for `client`.
    pub fn client_len(&self, client: ClientId) -> usize {
        self.per_client.get(&client).copied().unwrap_or(0)
    }

    /// Remember that datagram `key` belongs to flow `conn` of `client`.
    /// Room is made by forgetting the client's own oldest datagram when it
    /// holds its share, else (the table full of live datagrams) the oldest
    /// of the client holding the most. Always returns true (kept for the
    /// callers' sake: the datagram is tracked).
    pub fn record(
        &mut self,
        now: Instant,
        key: DatagramKey,
        conn: ConnId,
        client: ClientId,
    ) -> bool {
        self.remove(&key);
        if self.client_len(client) >= self.client_capacity {
            self.expire(now);
        }
        if self.client_len(client) >= self.client_capacity {
            if let Some(k) = self.oldest(Some(client)) {
                self.remove(&k);
                self.evicted += 1;
            }
        }
        if self.datagrams.len() >= self.capacity {
            self.expire(now);
        }
        if self.datagrams.len() >= self.capacity {
            let biggest = self
                .per_client
                .iter()
                .max_by_key(|(_, n)| **n)
                .map(|(c, _)| *c);
            if let Some(k) = biggest.and_then(|c| self.oldest(Some(c))) {
                self.remove(&k);
                self.evicted += 1;
            }
        }
        self.datagrams.insert(
            key,
            Tracked {
                conn,
                client,
                expires: now + FRAGMENT_LIFETIME,
            },
        );
        *self.per_client.entry(client).or_insert(0) += 1;
        true
    }

    /// The flow of a later fragment, if its datagram is tracked and fresh.
    pub fn lookup(&self, now: Instant, key: &DatagramKey) -> Option<ConnId> {
        self.datagrams
            .get(key)
            .filter(|t| t.expires > now)
            .map(|t| t.conn)
    }

    /// Number of tracked datagrams.
    pub fn len(&self) -> usize {
        self.datagrams.len()
    }

    /// Whether no datagram is tracked.
    pub fn is_empty(&self) -> bool {
        self.datagrams.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::Ipv4Addr;

    fn key(client: u8, ident: u32) -> DatagramKey {
        DatagramKey {
            src: IpAddr::V4(Ipv4Addr::new(10, 137, 0, client)),
            dst: IpAddr::V4(Ipv4Addr::new(1, 1, 1, 1)),
            ident,
            protocol: 17,
        }
    }

    #[test]
    fn one_client_cannot_starve_the_others_fragments() {
        let mut t = FragmentTable::new(64, 16);
        let now = Instant::from_secs(100);
        // Client 2 has a few datagrams in flight.
        for i in 0..4 {
            assert!(t.record(now, key(2, i), i as u64, ClientId(2)));
        }
        // Client 1 floods first fragments that never continue.
        for i in 0..10_000 {
            t.record(now, key(1, i), 1, ClientId(1));
        }
        assert_eq!(t.client_len(ClientId(1)), 16);
        assert_eq!(t.len(), 20);
        // Client 2's are all still tracked, and the flood keeps its newest.
        for i in 0..4 {
            assert_eq!(t.lookup(now, &key(2, i)), Some(i as u64));
        }
        assert_eq!(t.lookup(now, &key(1, 9_999)), Some(1));
        assert_eq!(t.lookup(now, &key(1, 0)), None);
        // Many clients at their share fill the table: room comes from the
        // client holding the most, never from one below its share.
        for c in 3..10u8 {
            for i in 0..16 {
                t.record(now, key(c, i), u64::from(c), ClientId(u32::from(c)));
            }
        }
        assert!(t.len() <= 64);
        for i in 0..4 {
            assert_eq!(t.lookup(now, &key(2, i)), Some(i as u64));
        }
        // Expired ones make room first, and stop matching.
        let later = now + FRAGMENT_LIFETIME;
        assert_eq!(t.lookup(later, &key(2, 0)), None);
        t.record(later, key(2, 99), 9, ClientId(2));
        assert_eq!(t.len(), 1);
    }
}
