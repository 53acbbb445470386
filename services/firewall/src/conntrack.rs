//! Connection tracking: a bounded table of flows, indexed from the client
//! side and from the uplink side, with per-state timeouts driven by the time
//! value the caller passes in (there is no global clock).
//!
//! When a client holds its share of the table, its own flow closest to its
//! deadline is evicted, so a flooding client cannot push out the flows of
//! the others. When the whole table is full, the flow closest to its
//! deadline is evicted.
//! That spends half-open and unreplied flows (short deadlines) before
//! established ones (days), which is what Linux's early-drop aims at too.

use alloc::collections::{BTreeMap, BTreeSet};
use core::net::IpAddr;

use qubes::firewall_rules::FlowQuery;
use smoltcp::time::{Duration, Instant};

use crate::packet::TcpFlags;
use crate::ClientId;

/// Identifies a flow in the table.
pub type ConnId = u64;

/// A flow as the client sees it: the packet it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct OrigKey {
    /// IP protocol.
    pub protocol: u8,
    /// Client address.
    pub src: IpAddr,
    /// Client port (echo identifier for ICMP).
    pub src_port: u16,
    /// Destination as addressed by the client (before DNS redirection).
    pub dst: IpAddr,
    /// Destination port (echo identifier for ICMP).
    pub dst_port: u16,
}

/// A flow as the uplink sees it: the reply it sends to our uplink address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReplyKey {
    /// IP protocol.
    pub protocol: u8,
    /// Remote address (the real destination).
    pub remote: IpAddr,
    /// Remote port (echo identifier for ICMP).
    pub remote_port: u16,
    /// Our port on the uplink address (the translated client port).
    pub local_port: u16,
}

/// The TCP state of a flow, coarser than Linux's but with the same timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpState {
    /// The client sent SYN.
    SynSent,
    /// The remote answered SYN-ACK.
    SynReceived,
    /// Picked up from a client's bare ACK, mid-stream (Linux's
    /// `nf_conntrack_tcp_loose`: a connection that began before the
    /// firewall started); not answered yet. Lives as long as
    /// [`TcpState::SynReceived`].
    PickedUp,
    /// The handshake completed.
    Established,
    /// One side sent FIN.
    Closing,
    /// Both sides sent FIN.
    TimeWait,
    /// A side sent RST.
    Closed,
}

/// Per-protocol tracking state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowState {
    /// TCP: state and which directions sent FIN.
    Tcp {
        /// The state.
        state: TcpState,
        /// The client sent FIN.
        fin_orig: bool,
        /// The remote sent FIN.
        fin_reply: bool,
    },
    /// UDP: whether the remote ever answered.
    Udp {
        /// The remote answered.
        replied: bool,
    },
    /// ICMP echo.
    IcmpEcho,
}

/// Which way a packet goes along a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to uplink.
    Original,
    /// Uplink to client.
    Reply,
}

/// One tracked flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// The client that opened it.
    pub client: ClientId,
    /// The client-side key.
    pub orig: OrigKey,
    /// The uplink-side key.
    pub reply: ReplyKey,
    /// The flow as rules saw it, kept to re-check it when rules change.
    pub query: FlowQuery,
    /// Tracking state.
    pub state: FlowState,
    /// When the flow is forgotten unless more packets arrive.
    pub expires: Instant,
}

/// How long each kind of flow lives without traffic (Linux's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP after the client's SYN.
    pub tcp_syn_sent: Duration,
    /// TCP after the remote's SYN-ACK.
    pub tcp_syn_received: Duration,
    /// TCP established.
    pub tcp_established: Duration,
    /// TCP after one FIN.
    pub tcp_closing: Duration,
    /// TCP after both FINs.
    pub tcp_time_wait: Duration,
    /// TCP after RST.
    pub tcp_closed: Duration,
    /// UDP never answered.
    pub udp_unreplied: Duration,
    /// UDP answered.
    pub udp_replied: Duration,
    /// ICMP echo.
    pub icmp: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            tcp_syn_sent: Duration::from_secs(120),
            tcp_syn_received: Duration::from_secs(60),
            tcp_established: Duration::from_secs(5 * 24 * 3600),
            tcp_closing: Duration::from_secs(120),
            tcp_time_wait: Duration::from_secs(120),
            tcp_closed: Duration::from_secs(10),
            udp_unreplied: Duration::from_secs(30),
            udp_replied: Duration::from_secs(120),
            icmp: Duration::from_secs(30),
        }
    }
}

impl Timeouts {
    fn for_state(&self, state: &FlowState) -> Duration {
        match state {
            FlowState::Tcp { state, .. } => match state {
                TcpState::SynSent => self.tcp_syn_sent,
                TcpState::SynReceived | TcpState::PickedUp => self.tcp_syn_received,
                TcpState::Established => self.tcp_established,
                TcpState::Closing => self.tcp_closing,
                TcpState::TimeWait => self.tcp_time_wait,
                TcpState::Closed => self.tcp_closed,
            },
            FlowState::Udp { replied: false } => self.udp_unreplied,
            FlowState::Udp { replied: true } => self.udp_replied,
            FlowState::IcmpEcho => self.icmp,
        }
    }
}

/// Counters of the table's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnTrackStats {
    /// Flows created.
    pub created: u64,
    /// Flows removed because their deadline passed.
    pub expired: u64,
    /// Flows removed to make room for a new one.
    pub evicted: u64,
    /// Flows removed on request (rule change, client gone, reopened).
    pub removed: u64,
}

/// The connection table.
#[derive(Debug)]
pub struct ConnTrack {
    conns: BTreeMap<ConnId, Connection>,
    by_orig: BTreeMap<OrigKey, ConnId>,
    by_reply: BTreeMap<ReplyKey, ConnId>,
    deadlines: BTreeSet<(Instant, ConnId)>,
    client_deadlines: BTreeMap<ClientId, BTreeSet<(Instant, ConnId)>>,
    capacity: usize,
    per_client_capacity: usize,
    next_id: ConnId,
    timeouts: Timeouts,
    stats: ConnTrackStats,
}

impl ConnTrack {
    /// An empty table holding at most `capacity` flows, and at most
    /// `per_client_capacity` of one client (both at least one).
    pub fn new(capacity: usize, per_client_capacity: usize, timeouts: Timeouts) -> ConnTrack {
        ConnTrack {
            conns: BTreeMap::new(),
            by_orig: BTreeMap::new(),
            by_reply: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            client_deadlines: BTreeMap::new(),
            capacity: capacity.max(1),
            per_client_capacity: per_client_capacity.max(1),
            next_id: 0,
            timeouts,
            stats: ConnTrackStats::default(),
        }
    }

    /// Number of flows of `client`.
    pub fn client_len(&self, client: ClientId) -> usize {
        self.client_deadlines.get(&client).map_or(0, BTreeSet::len)
    }

    /// Number of flows.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// The most flows the table holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Counters.
    pub fn stats(&self) -> ConnTrackStats {
        self.stats
    }

    /// The timeouts in force.
    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    /// The flow a client packet belongs to.
    pub fn find_orig(&self, key: &OrigKey) -> Option<ConnId> {
        self.by_orig.get(key).copied()
    }

    /// The flow an uplink packet belongs to.
    pub fn find_reply(&self, key: &ReplyKey) -> Option<ConnId> {
        self.by_reply.get(key).copied()
    }

    /// Whether an uplink-side key is unused (for choosing a NAT port).
    pub fn reply_key_free(&self, key: &ReplyKey) -> bool {
        !self.by_reply.contains_key(key)
    }

    /// A flow by id.
    pub fn get(&self, id: ConnId) -> Option<&Connection> {
        self.conns.get(&id)
    }

    /// All flows (in id order).
    pub fn iter(&self) -> impl Iterator<Item = (&ConnId, &Connection)> {
        self.conns.iter()
    }

    /// Track a new flow whose first packet arrives at `now`; evicts the flow
    /// nearest its deadline when the table is full. Returns `None` if either
    /// key is already in use.
    pub fn insert(
        &mut self,
        now: Instant,
        client: ClientId,
        orig: OrigKey,
        reply: ReplyKey,
        query: FlowQuery,
        state: FlowState,
    ) -> Option<ConnId> {
        if self.by_orig.contains_key(&orig) || self.by_reply.contains_key(&reply) {
            return None;
        }
        self.expire(now);
        while self.client_len(client) >= self.per_client_capacity {
            let Some(victim) = self
                .client_deadlines
                .get(&client)
                .and_then(|d| d.first())
                .map(|(_, id)| *id)
            else {
                break;
            };
            self.unlink(victim);
            self.stats.evicted += 1;
        }
        while self.conns.len() >= self.capacity {
            let Some(&(_, victim)) = self.deadlines.first() else {
                break;
            };
            self.unlink(victim);
            self.stats.evicted += 1;
        }
        let id = self.next_id;
        self.next_id += 1;
        let expires = now + self.timeouts.for_state(&state);
        self.by_orig.insert(orig, id);
        self.by_reply.insert(reply, id);
        self.deadlines.insert((expires, id));
        self.client_deadlines
            .entry(client)
            .or_default()
            .insert((expires, id));
        self.conns.insert(
            id,
            Connection {
                client,
                orig,
                reply,
                query,
                state,
                expires,
            },
        );
        self.stats.created += 1;
        Some(id)
    }

    fn unlink(&mut self, id: ConnId) -> Option<Connection> {
        let conn = self.conns.remove(&id)?;
        self.by_orig.remove(&conn.orig);
        self.by_reply.remove(&conn.reply);
        self.deadlines.remove(&(conn.expires, id));
        if let Some(deadlines) = self.client_deadlines.get_mut(&conn.client) {
            deadlines.remove(&(conn.expires, id));
            if deadlines.is_empty() {
                self.client_deadlines.remove(&conn.client);
            }
        }
        Some(conn)
    }

    /// Forget a flow on request.
    pub fn remove(&mut self, id: ConnId) -> Option<Connection> {
        let conn = self.unlink(id)?;
        self.stats.removed += 1;
        Some(conn)
    }

    /// Forget every flow for which `keep` is false; returns how many.
    pub fn retain(&mut self, mut keep: impl FnMut(&Connection) -> bool) -> usize {
        let doomed: alloc::vec::Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, conn)| !keep(conn))
            .map(|(id, _)| *id)
            .collect();
        for id in &doomed {
            self.remove(*id);
        }
        doomed.len()
    }

    /// Forget every flow whose deadline is not after `now`; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let mut count = 0;
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.unlink(id);
            self.stats.expired += 1;
            count += 1;
        }
        count
    }

    /// Account a packet of flow `id` going `direction` at `now`: advance
    /// the state machine and push the deadline out.
    pub fn on_packet(&mut self, id: ConnId, now: Instant, direction: Direction, flags: TcpFlags) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.state = advance(conn.state, direction, flags);
        let expires = now + self.timeouts.for_state(&conn.state);
        if expires != conn.expires {
            self.deadlines.remove(&(conn.expires, id));
            if let Some(deadlines) = self.client_deadlines.get_mut(&conn.client) {
                deadlines.remove(&(conn.expires, id));
                deadlines.insert((expires, id));
            }
            conn.expires = expires;
            self.deadlines.insert((expires, id));
        }
    }
}

/// The state after a packet going `direction` with `flags`.
fn advance(state: FlowState, direction: Direction, flags: TcpFlags) -> FlowState {
    match state {
        FlowState::Tcp {
            state,
            mut fin_orig,
            mut fin_reply,
        } => {
            let mut next = match (state, direction) {
                _ if flags.rst => TcpState::Closed,
                (TcpState::SynSent, Direction::Reply) if flags.syn && flags.ack => {
                    TcpState::SynReceived
                }
                (TcpState::SynReceived, Direction::Original) if flags.ack && !flags.syn => {
                    TcpState::Established
                }
                (TcpState::PickedUp, Direction::Reply) if flags.ack && !flags.syn => {
                    TcpState::Established
                }
                (other, _) => other,
            };
            if flags.fin && next != TcpState::Closed {
                match direction {
                    Direction::Original => fin_orig = true,
                    Direction::Reply => fin_reply = true,
                }
                next = if fin_orig && fin_reply {
                    TcpState::TimeWait
                } else {
                    TcpState::Closing
                };
            }
            FlowState::Tcp {
                state: next,
                fin_orig,
                fin_reply,
            }
        }
        FlowState::Udp { replied } => FlowState::Udp {
            replied: replied || direction == Direction::Reply,
        },
        FlowState::IcmpEcho => FlowState::IcmpEcho,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::Ipv4Addr;

    fn key(port: u16) -> (OrigKey, ReplyKey, FlowQuery) {
        let client = IpAddr::V4(Ipv4Addr::new(10, 137, 0, 5));
        let remote = IpAddr::V4(Ipv4Addr::new(1, 1, 1, 1));
        (
            OrigKey {
                protocol: 17,
                src: client,
                src_port: port,
                dst: remote,
                dst_port: 53,
            },
            ReplyKey {
                protocol: 17,
                remote,
                remote_port: 53,
                local_port: port,
            },
            FlowQuery::Udp {
                dst: remote,
                port: 53,
            },
        )
    }

    fn insert(table: &mut ConnTrack, now: Instant, port: u16, state: FlowState) -> ConnId {
        let (o, r, q) = key(port);
        table.insert(now, ClientId(0), o, r, q, state).unwrap()
    }

    #[test]
    fn udp_timeouts_follow_replies() {
        let mut table = ConnTrack::new(16, 16, Timeouts::default());
        let t0 = Instant::from_secs(100);
        let id = insert(&mut table, t0, 1000, FlowState::Udp { replied: false });
        assert_eq!(table.get(id).unwrap().expires, t0 + Duration::from_secs(30));
        table.on_packet(id, t0, Direction::Reply, TcpFlags::default());
        assert_eq!(
            table.get(id).unwrap().expires,
            t0 + Duration::from_secs(120)
        );
        assert_eq!(table.expire(t0 + Duration::from_secs(119)), 0);
        assert_eq!(table.expire(t0 + Duration::from_secs(120)), 1);
        assert!(table.is_empty());
        assert_eq!(table.find_orig(&key(1000).0), None);
        assert_eq!(table.find_reply(&key(1000).1), None);
        assert_eq!(table.stats().expired, 1);
    }

    #[test]
    fn tcp_state_machine() {
        let syn = TcpFlags {
            syn: true,
            ..TcpFlags::default()
        };
        let syn_ack = TcpFlags {
            syn: true,
            ack: true,
            ..TcpFlags::default()
        };
        let ack = TcpFlags {
            ack: true,
            ..TcpFlags::default()
        };
        let fin = TcpFlags {
            fin: true,
            ack: true,
            ..TcpFlags::default()
        };
        let rst = TcpFlags {
            rst: true,
            ..TcpFlags::default()
        };
        let start = FlowState::Tcp {
            state: TcpState::SynSent,
            fin_orig: false,
            fin_reply: false,
        };
        let tcp_state = |s: FlowState| match s {
            FlowState::Tcp { state, .. } => state,
            _ => unreachable!(),
        };
        // An ACK before the SYN-ACK does not establish.
        let s = advance(start, Direction::Original, ack);
        assert_eq!(tcp_state(s), TcpState::SynSent);
        let s = advance(s, Direction::Original, syn);
        assert_eq!(tcp_state(s), TcpState::SynSent);
        let s = advance(s, Direction::Reply, syn_ack);
        assert_eq!(tcp_state(s), TcpState::SynReceived);
        let s = advance(s, Direction::Original, ack);
        assert_eq!(tcp_state(s), TcpState::Established);
        let s = advance(s, Direction::Reply, ack);
        assert_eq!(tcp_state(s), TcpState::Established);
        let closing = advance(s, Direction::Original, fin);
        assert_eq!(tcp_state(closing), TcpState::Closing);
        let s = advance(closing, Direction::Original, fin);
        assert_eq!(
            tcp_state(s),
            TcpState::Closing,
            "one side twice is not both"
        );
        let s = advance(s, Direction::Reply, fin);
        assert_eq!(tcp_state(s), TcpState::TimeWait);
        assert_eq!(
            tcp_state(advance(s, Direction::Reply, rst)),
            TcpState::Closed
        );

        let timeouts = Timeouts::default();
        assert_eq!(
            timeouts.for_state(&advance(start, Direction::Reply, rst)),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn full_table_evicts_nearest_deadline_first() {
        let mut table = ConnTrack::new(3, 3, Timeouts::default());
        let t0 = Instant::from_secs(0);
        let established = FlowState::Tcp {
            state: TcpState::Established,
            fin_orig: false,
            fin_reply: false,
        };
        let long = insert(&mut table, t0, 1, established);
        let short = insert(&mut table, t0, 2, FlowState::Udp { replied: false });
        let mid = insert(&mut table, t0, 3, FlowState::Udp { replied: true });
        let newest = insert(&mut table, t0, 4, FlowState::Udp { replied: false });
        assert_eq!(table.len(), 3);
        assert!(table.get(short).is_none(), "the 30 s flow goes first");
        assert!(table.get(long).is_some() && table.get(mid).is_some());
        assert!(table.get(newest).is_some());
        assert_eq!(table.stats().evicted, 1);
        // A flood never grows the table.
        for port in 100..1100 {
            insert(&mut table, t0, port, FlowState::Udp { replied: false });
            assert!(table.len() <= 3);
        }
        assert!(
            table.get(long).is_some(),
            "established flow survives the flood"
        );
        assert_eq!(table.by_orig.len(), 3);
        assert_eq!(table.by_reply.len(), 3);
        assert_eq!(table.deadlines.len(), 3);
        assert_eq!(table.client_len(ClientId(0)), 3);
    }

    #[test]
    fn a_flooding_client_only_evicts_its_own_flows() {
        let mut table = ConnTrack::new(8, 4, Timeouts::default());
        let t0 = Instant::from_secs(0);
        let (o, r, q) = key(1);
        let quiet = table
            .insert(t0, ClientId(1), o, r, q, FlowState::Udp { replied: false })
            .unwrap();
        for port in 100..1100 {
            insert(&mut table, t0, port, FlowState::Udp { replied: false });
            assert!(table.client_len(ClientId(0)) <= 4);
        }
        assert!(
            table.get(quiet).is_some(),
            "the other client's flow survives"
        );
        assert_eq!(table.client_len(ClientId(1)), 1);
        assert_eq!(table.len(), 5);
        table.remove(quiet);
        assert_eq!(table.client_len(ClientId(1)), 0);
        assert!(!table.client_deadlines.contains_key(&ClientId(1)));
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let mut table = ConnTrack::new(4, 4, Timeouts::default());
        let t0 = Instant::from_secs(0);
        insert(&mut table, t0, 7, FlowState::IcmpEcho);
        let (o, r, q) = key(7);
        assert_eq!(
            table.insert(t0, ClientId(1), o, r, q, FlowState::IcmpEcho),
            None
        );
        assert_eq!(table.len(), 1);
    }
}
