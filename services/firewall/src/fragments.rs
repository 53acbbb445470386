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

use alloc::collections::BTreeMap;
use core::net::IpAddr;

use smoltcp::time::{Duration, Instant};

use crate::conntrack::ConnId;
use crate::packet::IpHeader;

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

/// The bounded datagram → flow map.
#[derive(Debug)]
pub struct FragmentTable {
    datagrams: BTreeMap<DatagramKey, (ConnId, Instant)>,
    capacity: usize,
}

impl FragmentTable {
    /// An empty table for at most `capacity` datagrams.
    pub fn new(capacity: usize) -> FragmentTable {
        FragmentTable {
            datagrams: BTreeMap::new(),
            capacity,
        }
    }

    /// Remember that datagram `key` belongs to flow `conn`. Returns false
    /// when the table is full of live datagrams.
    pub fn record(&mut self, now: Instant, key: DatagramKey, conn: ConnId) -> bool {
        if self.datagrams.len() >= self.capacity && !self.datagrams.contains_key(&key) {
            self.datagrams.retain(|_, (_, expires)| *expires > now);
            if self.datagrams.len() >= self.capacity {
                return false;
            }
        }
        self.datagrams.insert(key, (conn, now + FRAGMENT_LIFETIME));
        true
    }

    /// The flow of a later fragment, if its datagram is tracked and fresh.
    pub fn lookup(&self, now: Instant, key: &DatagramKey) -> Option<ConnId> {
        self.datagrams
            .get(key)
            .filter(|(_, expires)| *expires > now)
            .map(|(conn, _)| *conn)
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
