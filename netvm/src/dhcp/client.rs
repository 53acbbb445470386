//! The DHCP client's state machine (RFC 2131 section 4.4, figure 5),
//! free of hardware: frames in through [`Client::handle_frame`], frames
//! out of [`Client::poll`], time given by the caller (nanoseconds of any
//! monotonic clock), events ([`Event`]) when a lease begins, changes or
//! ends.
//!
//! - INIT: a DISCOVER is broadcast with a fresh transaction id;
//! - SELECTING: the first usable OFFER (an address, a server identifier)
//!   is taken; the DISCOVER is sent again after 4, 8, 16, 32, then every
//!   64 seconds, each delay moved by a random -1..+1 s (4.1);
//! - REQUESTING: a REQUEST for the offered address, to the offering
//!   server (options 50 and 54, the offer's `xid`), sent again on the same
//!   schedule; the ACK binds, a NAK, or no answer after
//!   [`MAX_REQUESTS`] tries, restarts at INIT;
//! - BOUND until T1 (option 58, else half the lease);
//! - RENEWING: a REQUEST unicast to the server (`ciaddr` set, to the MAC
//!   the last ACK came from), sent again after half the time left until
//!   T2, at least 60 s apart (4.4.5);
//! - REBINDING from T2 (option 59, else 7/8 of the lease): the REQUEST
//!   broadcast, sent again after half the time left of the lease, at least
//!   60 s apart; an ACK in either extends the lease, a NAK ends it;
//! - the lease's end, or a NAK while bound: [`Event::Lost`], and INIT.
//!
//! Lease times count from the first send of the REQUEST that got the ACK
//! (4.4.1); a lease under [`MIN_LEASE_SECS`] is not taken. A reply counts only for this client (`chaddr`), with the
//! transaction id in flight, of the type the state waits for; everything
//! else, and every malformed frame to the client port, is a counted drop
//! ([`Stats`]). No ARP probe of the offered address is made (RFC 2131's
//! DECLINE is a SHOULD); INIT-REBOOT is not used: a restart discovers.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::net::Ipv4Addr;

use super::frame::{self, BROADCAST_MAC};
use super::wire::{MessageType, Packet, Reply, Request};

const SECOND_NS: u64 = 1_000_000_000;
/// The first retransmission delay (RFC 2131 4.1).
const FIRST_DELAY_NS: u64 = 4 * SECOND_NS;
/// The longest retransmission delay.
const MAX_DELAY_NS: u64 = 64 * SECOND_NS;
/// Each delay is moved by up to this much either way.
const JITTER_NS: u64 = SECOND_NS;
/// The shortest wait between two REQUESTs when renewing or rebinding
/// (4.4.5).
const MIN_RENEW_DELAY_NS: u64 = 60 * SECOND_NS;
/// REQUESTs sent while requesting before starting over.
pub const MAX_REQUESTS: u32 = 4;
/// The wait before discovering again after a NAK, so that a server (or an
/// impostor) answering every request with a NAK cannot make the client
/// send without pause.
const NAK_RESTART_NS: u64 = SECOND_NS;
/// Most events kept for [`Client::take_event`] (the oldest go first).
const MAX_EVENTS: usize = 8;
/// The shortest lease taken, in seconds: a shorter one (0 included) is
/// counted as unusable rather than renewed in a loop.
pub const MIN_LEASE_SECS: u32 = 10;

/// Where the client is (RFC 2131 figure 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// No lease; a DISCOVER is due.
    Init,
    /// DISCOVER sent; waiting for an OFFER.
    Selecting,
    /// REQUEST for an offer sent; waiting for the ACK.
    Requesting,
    /// Lease in force, before T1.
    Bound,
    /// Between T1 and T2: renewing with the server that granted it.
    Renewing,
    /// Between T2 and the lease's end: asking any server.
    Rebinding,
}

/// A lease in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Our address.
    pub address: Ipv4Addr,
    /// The subnet mask, if the server gave one.
    pub subnet_mask: Option<Ipv4Addr>,
    /// The first router, if the server gave one.
    pub router: Option<Ipv4Addr>,
    /// The resolvers the server gave, at most
    /// [`super::wire::MAX_DNS_SERVERS`].
    pub dns: Vec<Ipv4Addr>,
    /// The server that granted it (its identifier).
    pub server: Ipv4Addr,
    /// The lease time in seconds (`u32::MAX`: infinite).
    pub lease_time: u32,
    /// When renewing starts (T1); `None` for an infinite lease.
    pub renew_at_ns: Option<u64>,
    /// When rebinding starts (T2); `None` for an infinite lease.
    pub rebind_at_ns: Option<u64>,
    /// When it ends; `None` for an infinite lease.
    pub expires_at_ns: Option<u64>,
}

impl Lease {
    /// Whether `other` configures the link the same way (address, mask,
    /// router, resolvers), whatever its times.
    pub fn same_configuration(&self, other: &Lease) -> bool {
        self.address == other.address
            && self.subnet_mask == other.subnet_mask
            && self.router == other.router
            && self.dns == other.dns
    }
}

/// What happened to the lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A lease began, or a renewal changed what it configures (address,
    /// mask, router or resolvers): configure the link with it.
    Bound(Lease),
    /// The lease was extended; it configures the link as before.
    Renewed(Lease),
    /// The lease ended (expired, or a NAK): the address must no longer be
    /// used.
    Lost,
}

/// Counters: messages sent and taken, and every frame to the client port
/// dropped, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// DISCOVERs sent (retransmissions included).
    pub discovers: u64,
    /// REQUESTs sent (retransmissions included).
    pub requests: u64,
    /// OFFERs taken.
    pub offers: u64,
    /// ACKs taken (each binding or extension).
    pub acks: u64,
    /// NAKs taken (each restarting the client).
    pub naks: u64,
    /// Leases lost (expired or NAKed while in force).
    pub lost: u64,
    /// Times the requesting state gave up unanswered.
    pub request_timeouts: u64,
    /// Dropped: not a well-formed IPv4/UDP datagram from port 67.
    pub dropped_frame: u64,
    /// Dropped: not a well-formed DHCP reply (length, cookie, options,
    /// message type, `op`, hardware type).
    pub dropped_malformed: u64,
    /// Dropped: for another client (`chaddr`).
    pub dropped_other_client: u64,
    /// Dropped: another transaction id.
    pub dropped_xid: u64,
    /// Dropped: a type the state does not wait for (an OFFER while
    /// requesting, anything while bound).
    pub dropped_unexpected: u64,
    /// Dropped: from another server than the one asked.
    pub dropped_wrong_server: u64,
    /// Dropped: an OFFER or ACK the client cannot use (no usable address,
    /// an OFFER without server identifier, an ACK without lease time or
    /// with one under [`MIN_LEASE_SECS`]).
    pub dropped_unusable: u64,
}

impl Stats {
    /// Every dropped frame together.
    pub fn dropped(&self) -> u64 {
        self.dropped_frame
            + self.dropped_malformed
            + self.dropped_other_client
            + self.dropped_xid
            + self.dropped_unexpected
            + self.dropped_wrong_server
            + self.dropped_unusable
    }
}

/// What [`Client::handle_frame`] did with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handled {
    /// Not a datagram to the client port: someone else's to handle.
    NotDhcp,
    /// A datagram to the client port: taken or counted as dropped.
    Consumed,
}

/// The offer being requested.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Offer {
    address: Ipv4Addr,
    server: Ipv4Addr,
}

/// A DHCP client for one Ethernet interface.
#[derive(Clone, Debug)]
pub struct Client {
    mac: [u8; 6],
    rng: u64,
    state: State,
    xid: u32,
    /// When the current exchange's first message was sent (`secs`).
    started_ns: u64,
    /// When the exchange's first REQUEST was sent: the lease counts from
    /// there (RFC 2131 4.4.1).
    requested_ns: u64,
    /// When the next message is due (or the next timer fires).
    deadline_ns: u64,
    /// Messages sent in the current exchange.
    attempts: u32,
    offer: Option<Offer>,
    lease: Option<Lease>,
    /// The MAC the last ACK came from: where a renewal is unicast.
    server_mac: [u8; 6],
    events: VecDeque<Event>,
    stats: Stats,
}

/// Whether a server may give `addr` to a host.
fn usable(addr: Ipv4Addr) -> bool {
    !(addr.is_unspecified()
        || addr.is_broadcast()
        || addr.is_multicast()
        || addr.is_loopback()
        || addr.octets()[0] == 0
        || addr.octets()[0] >= 240)
}

impl Client {
    /// A client for the interface with `mac`, in INIT: the first
    /// [`Client::poll`] sends a DISCOVER. `seed` seeds the transaction
    /// ids and the retransmission jitter: give it random bytes (the
    /// platform's entropy), so that ids differ between boots and clients.
    pub fn new(mac: [u8; 6], seed: u64) -> Self {
        // xorshift needs a non-zero state.
        let rng = seed
            ^ 0x9e37_79b9_7f4a_7c15
            ^ u64::from_be_bytes([0, 0, mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]]);
        Self {
            mac,
            rng: if rng == 0 { 1 } else { rng },
            state: State::Init,
            xid: 0,
            started_ns: 0,
            requested_ns: 0,
            deadline_ns: 0,
            attempts: 0,
            offer: None,
            lease: None,
            server_mac: BROADCAST_MAC,
            events: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    /// The state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The lease in force, if any.
    pub fn lease(&self) -> Option<&Lease> {
        self.lease.as_ref()
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The transaction id in flight (or last used).
    pub fn xid(&self) -> u32 {
        self.xid
    }

    /// When [`Client::poll`] next has something to do (a message or a
    /// timer), on the caller's clock.
    pub fn poll_at(&self) -> u64 {
        self.deadline_ns
    }

    /// The oldest event not taken yet.
    pub fn take_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Forget the lease (reported as [`Event::Lost`] if there was one) and
    /// start over at INIT, discovering at the next poll: for a link that
    /// went down and came back elsewhere.
    pub fn restart(&mut self, now_ns: u64) {
        if self.lease.take().is_some() {
            self.stats.lost += 1;
            self.push_event(Event::Lost);
        }
        self.enter_init(now_ns);
    }

    fn push_event(&mut self, event: Event) {
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    /// xorshift64*.
    fn next_random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn new_xid(&mut self) {
        let previous = self.xid;
        loop {
            self.xid = (self.next_random() >> 32) as u32;
            if self.xid != previous {
                break;
            }
        }
    }

    /// The delay before retransmission `attempt` (0 for the first): 4 s
    /// doubling to 64 s, moved by -1..+1 s.
    fn backoff(&mut self, attempt: u32) -> u64 {
        let base = FIRST_DELAY_NS
            .checked_shl(attempt.min(8))
            .unwrap_or(MAX_DELAY_NS)
            .min(MAX_DELAY_NS);
        let jitter = self.next_random() % (2 * JITTER_NS + 1);
        base - JITTER_NS + jitter
    }

    fn enter_init(&mut self, at_ns: u64) {
        self.state = State::Init;
        self.offer = None;
        self.attempts = 0;
        self.deadline_ns = at_ns;
    }

    fn secs(&self, now_ns: u64) -> u16 {
        (now_ns.saturating_sub(self.started_ns) / SECOND_NS).min(u64::from(u16::MAX)) as u16
    }

    fn message(&self, now_ns: u64, message_type: MessageType) -> Request {
        Request {
            message_type,
            xid: self.xid,
            secs: self.secs(now_ns),
            client_mac: self.mac,
            client_addr: Ipv4Addr::UNSPECIFIED,
            requested_addr: None,
            server_id: None,
        }
    }

    fn broadcast(&self, src: Ipv4Addr, request: &Request) -> Vec<u8> {
        frame::client_frame(
            self.mac,
            BROADCAST_MAC,
            src,
            Ipv4Addr::BROADCAST,
            &request.to_bytes(),
        )
    }

    /// A renewal or rebinding REQUEST for the lease in force.
    fn renewal(&self, now_ns: u64, unicast: bool) -> Option<Vec<u8>> {
        let lease = self.lease.as_ref()?;
        let mut request = self.message(now_ns, MessageType::Request);
        request.client_addr = lease.address;
        Some(if unicast {
            frame::client_frame(
                self.mac,
                self.server_mac,
                lease.address,
                lease.server,
                &request.to_bytes(),
            )
        } else {
            self.broadcast(lease.address, &request)
        })
    }

    /// The frame due at `now_ns`, if any, with the state moved on (a
    /// lease that ended is reported as [`Event::Lost`]). Call it when
    /// [`Client::poll_at`] has come, and after each consumed frame.
    pub fn poll(&mut self, now_ns: u64) -> Option<Vec<u8>> {
        if now_ns < self.deadline_ns {
            return None;
        }
        match self.state {
            State::Init => {
                self.new_xid();
                self.started_ns = now_ns;
                self.attempts = 0;
                self.state = State::Selecting;
                self.send_discover(now_ns)
            }
            State::Selecting => self.send_discover(now_ns),
            State::Requesting => {
                if self.attempts >= MAX_REQUESTS {
                    self.stats.request_timeouts += 1;
                    self.enter_init(now_ns);
                    return self.poll(now_ns);
                }
                let Some(offer) = self.offer else {
                    self.enter_init(now_ns);
                    return self.poll(now_ns);
                };
                if self.attempts == 0 {
                    self.requested_ns = now_ns;
                }
                let mut request = self.message(now_ns, MessageType::Request);
                request.requested_addr = Some(offer.address);
                request.server_id = Some(offer.server);
                let delay = self.backoff(self.attempts);
                self.attempts += 1;
                self.deadline_ns = now_ns.saturating_add(delay);
                self.stats.requests += 1;
                Some(self.broadcast(Ipv4Addr::UNSPECIFIED, &request))
            }
            State::Bound | State::Renewing | State::Rebinding => self.poll_lease(now_ns),
        }
    }

    fn send_discover(&mut self, now_ns: u64) -> Option<Vec<u8>> {
        let request = self.message(now_ns, MessageType::Discover);
        let delay = self.backoff(self.attempts);
        self.attempts = self.attempts.saturating_add(1);
        self.deadline_ns = now_ns.saturating_add(delay);
        self.stats.discovers += 1;
        Some(self.broadcast(Ipv4Addr::UNSPECIFIED, &request))
    }

    /// Timers of a lease in force: its end, T2, T1, and the renewal
    /// retransmissions.
    fn poll_lease(&mut self, now_ns: u64) -> Option<Vec<u8>> {
        let lease = self.lease.as_ref()?;
        let (Some(t1), Some(t2), Some(end)) =
            (lease.renew_at_ns, lease.rebind_at_ns, lease.expires_at_ns)
        else {
            // Infinite: nothing ever falls due.
            self.deadline_ns = u64::MAX;
            return None;
        };
        if now_ns >= end {
            self.lease = None;
            self.stats.lost += 1;
            self.push_event(Event::Lost);
            self.enter_init(now_ns);
            return self.poll(now_ns);
        }
        if now_ns >= t2 {
            if self.state != State::Rebinding {
                // A new exchange: a new id, its own start.
                self.state = State::Rebinding;
                self.new_xid();
                self.started_ns = now_ns;
                self.requested_ns = now_ns;
            }
            self.deadline_ns = renewal_deadline(now_ns, end);
            self.stats.requests += 1;
            return self.renewal(now_ns, false);
        }
        if now_ns >= t1 {
            if self.state != State::Renewing {
                self.state = State::Renewing;
                self.new_xid();
                self.started_ns = now_ns;
                self.requested_ns = now_ns;
            }
            self.deadline_ns = renewal_deadline(now_ns, t2);
            self.stats.requests += 1;
            return self.renewal(now_ns, true);
        }
        self.deadline_ns = t1;
        None
    }

    /// Take `frame` if it is a datagram to the client port: a reply in
    /// its state moves the client on (call [`Client::poll`] next), anything
    /// else to that port is counted as dropped.
    pub fn handle_frame(&mut self, now_ns: u64, frame: &[u8]) -> Handled {
        let datagram = match frame::client_datagram(frame) {
            Ok(None) => return Handled::NotDhcp,
            Ok(Some(d)) => d,
            Err(_) => {
                self.stats.dropped_frame += 1;
                return Handled::Consumed;
            }
        };
        let reply = match Packet::new_checked(datagram.payload).and_then(|p| Reply::parse(&p)) {
            Ok(r) => r,
            Err(_) => {
                self.stats.dropped_malformed += 1;
                return Handled::Consumed;
            }
        };
        if reply.client_mac != self.mac {
            self.stats.dropped_other_client += 1;
            return Handled::Consumed;
        }
        if self.state == State::Init {
            // Nothing in flight.
            self.stats.dropped_unexpected += 1;
            return Handled::Consumed;
        }
        if reply.xid != self.xid {
            self.stats.dropped_xid += 1;
            return Handled::Consumed;
        }
        match (self.state, reply.message_type) {
            (State::Selecting, MessageType::Offer) => self.take_offer(now_ns, &reply),
            (State::Requesting, MessageType::Ack | MessageType::Nak) => {
                let expected = self.offer.map(|o| o.server);
                if reply.server_id.is_some() && reply.server_id != expected {
                    self.stats.dropped_wrong_server += 1;
                } else if reply.message_type == MessageType::Ack {
                    self.take_ack(&reply, datagram.src_mac);
                } else {
                    self.take_nak(now_ns);
                }
            }
            (State::Renewing | State::Rebinding, MessageType::Ack | MessageType::Nak) => {
                let server = self.lease.as_ref().map(|l| l.server);
                let wrong = self.state == State::Renewing
                    && reply.server_id.is_some()
                    && reply.server_id != server;
                if wrong {
                    self.stats.dropped_wrong_server += 1;
                } else if reply.message_type == MessageType::Ack {
                    self.take_ack(&reply, datagram.src_mac);
                } else {
                    self.take_nak(now_ns);
                }
            }
            _ => self.stats.dropped_unexpected += 1,
        }
        Handled::Consumed
    }

    fn take_offer(&mut self, now_ns: u64, reply: &Reply) {
        let (true, Some(server)) = (usable(reply.your_addr), reply.server_id) else {
            self.stats.dropped_unusable += 1;
            return;
        };
        self.stats.offers += 1;
        self.offer = Some(Offer {
            address: reply.your_addr,
            server,
        });
        // REQUESTING keeps the offer's id and the exchange's start; the
        // lease counts from the first REQUEST.
        self.state = State::Requesting;
        self.attempts = 0;
        self.deadline_ns = now_ns;
    }

    fn take_ack(&mut self, reply: &Reply, src_mac: [u8; 6]) {
        let Some(lease_time) = reply
            .lease_time
            .filter(|&t| t >= MIN_LEASE_SECS && usable(reply.your_addr))
        else {
            self.stats.dropped_unusable += 1;
            return;
        };
        let server = reply
            .server_id
            .or(self.offer.map(|o| o.server))
            .or(self.lease.as_ref().map(|l| l.server))
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        let start = self.requested_ns;
        let (renew_at_ns, rebind_at_ns, expires_at_ns) =
            lease_times(start, lease_time, reply.renewal_time, reply.rebinding_time);
        let lease = Lease {
            address: reply.your_addr,
            subnet_mask: reply.subnet_mask,
            router: reply.router,
            dns: reply.dns.clone(),
            server,
            lease_time,
            renew_at_ns,
            rebind_at_ns,
            expires_at_ns,
        };
        self.stats.acks += 1;
        let event = match &self.lease {
            Some(old) if old.same_configuration(&lease) => Event::Renewed(lease.clone()),
            _ => Event::Bound(lease.clone()),
        };
        self.push_event(event);
        self.server_mac = if src_mac[0] & 1 == 0 {
            src_mac
        } else {
            BROADCAST_MAC
        };
        self.lease = Some(lease);
        self.offer = None;
        self.attempts = 0;
        self.state = State::Bound;
        self.deadline_ns = renew_at_ns.unwrap_or(u64::MAX);
    }

    fn take_nak(&mut self, now_ns: u64) {
        self.stats.naks += 1;
        if self.lease.take().is_some() {
            self.stats.lost += 1;
            self.push_event(Event::Lost);
        }
        self.enter_init(now_ns.saturating_add(NAK_RESTART_NS));
    }
}

/// The next renewal or rebinding retransmission before `limit`: half the
/// time left, at least 60 s (and never past `limit`, when the next state
/// begins).
fn renewal_deadline(now_ns: u64, limit: u64) -> u64 {
    let half = limit.saturating_sub(now_ns) / 2;
    now_ns
        .saturating_add(half.max(MIN_RENEW_DELAY_NS))
        .min(limit)
}

/// T1, T2 and the end of a lease of `lease_time` seconds granted for a
/// request first sent at `start_ns`: the server's T1 and T2 when they keep
/// T1 < T2 < lease, else half and seven eighths of the lease (RFC 2131
/// 4.4.5); all `None` for an infinite lease.
fn lease_times(
    start_ns: u64,
    lease_time: u32,
    t1: Option<u32>,
    t2: Option<u32>,
) -> (Option<u64>, Option<u64>, Option<u64>) {
    if lease_time == u32::MAX {
        return (None, None, None);
    }
    let lease_ns = u64::from(lease_time) * SECOND_NS;
    let (t1_ns, t2_ns) = match (t1, t2) {
        (Some(t1), Some(t2)) if t1 < t2 && t2 < lease_time => {
            (u64::from(t1) * SECOND_NS, u64::from(t2) * SECOND_NS)
        }
        (Some(t1), None) if t1 < lease_time && u64::from(t1) * SECOND_NS < lease_ns / 8 * 7 => {
            (u64::from(t1) * SECOND_NS, lease_ns / 8 * 7)
        }
        (None, Some(t2)) if t2 < lease_time && lease_ns / 2 < u64::from(t2) * SECOND_NS => {
            (lease_ns / 2, u64::from(t2) * SECOND_NS)
        }
        _ => (lease_ns / 2, lease_ns / 8 * 7),
    };
    (
        Some(start_ns.saturating_add(t1_ns)),
        Some(start_ns.saturating_add(t2_ns)),
        Some(start_ns.saturating_add(lease_ns)),
    )
}
