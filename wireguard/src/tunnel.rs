//! The sans-io tunnel to one peer: [`Tunnel::encapsulate`],
//! [`Tunnel::decapsulate`] and [`Tunnel::update_timers`] take the current time
//! and a random source and return an [`Action`] for the caller to perform.
//! This is the shape of boringtun's `Tunn`, so the kernel, the hosted platform
//! and the tests drive it identically.
//!
//! Keypair rotation follows the paper: the initiator switches to new keys as
//! soon as the response arrives (current becomes previous); the responder
//! keeps new keys in `next` until the first transport message under them
//! arrives, which confirms the handshake.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use core::time::Duration;

use crate::cookie::{MacCheck, MacSender, MacVerifier};
use crate::noise::{Handshake, HandshakeError, StaticKeys};
use crate::session::{Keypair, SessionError};
use crate::timers::*;
use crate::wire::{self, CookieReply, Initiation, MessageKind, Response, Transport, WireError};
use crate::Random;

/// Packets held while no session exists; beyond this new packets are dropped and counted.
pub const MAX_QUEUED_PACKETS: usize = 256;

/// Everything needed to set up a tunnel to one peer.
#[derive(Clone)]
pub struct TunnelConfig {
    /// Our static private key.
    pub private_key: [u8; 32],
    /// The peer's static public key.
    pub peer_public_key: [u8; 32],
    /// Optional pre-shared key (all zeros when absent, as the protocol says).
    pub preshared_key: Option<[u8; 32]>,
    /// Send a keepalive after this many seconds without sending anything.
    pub persistent_keepalive: Option<u16>,
    /// A 24-bit number unique per peer on this interface; session indices are
    /// `index << 8 | n`, so a device can find the tunnel from a receiver index.
    pub index: u32,
    /// Where the peer is, if known; updated by roaming.
    pub endpoint: Option<SocketAddr>,
    /// Wall-clock time (since the Unix epoch) at monotonic time zero, for the
    /// TAI64N timestamps in initiations.
    pub wall_clock_at_zero: Duration,
    /// Handshake messages per second from this peer above which we answer with
    /// cookie replies instead of doing the DH work.
    pub handshake_load_limit: u32,
}

impl zeroize::Zeroize for TunnelConfig {
    fn zeroize(&mut self) {
        self.private_key.zeroize();
        self.preshared_key.zeroize();
    }
}

impl Drop for TunnelConfig {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(self);
    }
}

/// Why a call did not produce a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Malformed datagram.
    Wire(WireError),
    /// mac1 wrong or a cookie reply that does not authenticate.
    BadMac,
    /// The handshake message was refused.
    Handshake(HandshakeError),
    /// A transport message could not be opened.
    Session(SessionError),
    /// A transport message for an index we do not have.
    UnknownIndex,
    /// The decrypted payload is not a well-formed IPv4 or IPv6 packet.
    BadInnerPacket,
    /// The output buffer is too small for the message.
    BufferTooSmall,
    /// No session and too many packets already queued: this packet was dropped.
    QueueFull,
    /// The handshake got no response within REKEY_ATTEMPT_TIME; queued packets were dropped.
    HandshakeTimedOut,
    /// A decrypted packet's source address is not in the sending peer's AllowedIPs.
    SourceNotAllowed,
}

/// What the caller must do after a call.
#[derive(Debug)]
pub enum Action<'a> {
    /// Nothing to send.
    Done,
    /// Send these bytes to the peer's endpoint over UDP.
    WriteToNetwork(&'a mut [u8]),
    /// Deliver this decrypted IP packet, whose source address is given; the
    /// caller checks it against the peer's AllowedIPs.
    WriteToTunnel(&'a mut [u8], IpAddr),
    /// The input was dropped for this reason.
    Err(Error),
}

impl From<Error> for Action<'_> {
    fn from(e: Error) -> Self {
        Action::Err(e)
    }
}

/// Counters of a tunnel.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TunnelStats {
    /// Plaintext bytes sent.
    pub tx_bytes: u64,
    /// Plaintext bytes received.
    pub rx_bytes: u64,
    /// Packets dropped because the queue was full or a handshake timed out.
    pub dropped_packets: u64,
    /// Cookie replies we sent because we were under load.
    pub cookie_replies_sent: u64,
    /// Completed handshakes.
    pub handshakes: u64,
}

/// A WireGuard tunnel to one peer.
pub struct Tunnel {
    handshake: Handshake,
    macs_out: MacSender,
    macs_in: MacVerifier,
    current: Option<Keypair>,
    previous: Option<Keypair>,
    next: Option<Keypair>,
    queue: VecDeque<Vec<u8>>,
    index: u32,
    index_counter: u8,
    persistent_keepalive: Option<Duration>,
    wall_clock_at_zero: Duration,
    load_limit: u32,
    load_window: Duration,
    load_count: u32,
    endpoint: Option<SocketAddr>,
    /// Start of the current series of initiation attempts.
    attempt_started: Option<Duration>,
    retransmit_at: Option<Duration>,
    last_sent: Option<Duration>,
    last_handshake: Option<Duration>,
    /// Send a keepalive at this time unless something else is sent first.
    keepalive_due: Option<Duration>,
    /// Start a handshake at this time unless something is received first.
    handshake_due: Option<Duration>,
    rekey_wanted: bool,
    stats: TunnelStats,
}

fn inner_packet(buf: &[u8]) -> Result<(usize, IpAddr), Error> {
    let version = buf.first().ok_or(Error::BadInnerPacket)? >> 4;
    let field = |at: usize| -> Result<usize, Error> {
        let b = buf.get(at..at + 2).ok_or(Error::BadInnerPacket)?;
        Ok(usize::from(u16::from_be_bytes([b[0], b[1]])))
    };
    let (len, src) = match version {
        4 => {
            let len = field(2)?;
            let s = buf.get(12..16).ok_or(Error::BadInnerPacket)?;
            if len < 20 {
                return Err(Error::BadInnerPacket);
            }
            (len, IpAddr::V4(Ipv4Addr::new(s[0], s[1], s[2], s[3])))
        }
        6 => {
            let len = 40 + field(4)?;
            let s: [u8; 16] = buf
                .get(8..24)
                .and_then(|s| s.try_into().ok())
                .ok_or(Error::BadInnerPacket)?;
            (len, IpAddr::V6(Ipv6Addr::from(s)))
        }
        _ => return Err(Error::BadInnerPacket),
    };
    if len > buf.len() {
        return Err(Error::BadInnerPacket);
    }
    Ok((len, src))
}

fn jitter(rng: &mut dyn Random) -> Duration {
    let mut b = [0u8; 2];
    rng.fill(&mut b);
    Duration::from_millis(u64::from(u16::from_le_bytes(b)) % (REKEY_TIMEOUT_JITTER_MS + 1))
}

impl Tunnel {
    /// A tunnel with no session yet. Fails only if the peer's key is a low-order point.
    pub fn new(config: &TunnelConfig) -> Result<Self, HandshakeError> {
        let keys = StaticKeys::new(config.private_key);
        let local_public = keys.public;
        let handshake = Handshake::new(keys, config.peer_public_key, config.preshared_key)?;
        Ok(Self {
            handshake,
            macs_out: MacSender::new(&config.peer_public_key),
            macs_in: MacVerifier::new(&local_public),
            current: None,
            previous: None,
            next: None,
            queue: VecDeque::new(),
            index: config.index & 0x00ff_ffff,
            index_counter: 0,
            persistent_keepalive: config
                .persistent_keepalive
                .filter(|s| *s > 0)
                .map(|s| Duration::from_secs(u64::from(s))),
            wall_clock_at_zero: config.wall_clock_at_zero,
            load_limit: config.handshake_load_limit,
            load_window: Duration::ZERO,
            load_count: 0,
            endpoint: config.endpoint,
            attempt_started: None,
            retransmit_at: None,
            last_sent: None,
            last_handshake: None,
            keepalive_due: None,
            handshake_due: None,
            rekey_wanted: false,
            stats: TunnelStats::default(),
        })
    }

    /// Our static public key.
    pub fn local_public_key(&self) -> &[u8; 32] {
        self.handshake.local_public()
    }

    /// The peer's static public key.
    pub fn peer_public_key(&self) -> &[u8; 32] {
        self.handshake.peer_public()
    }

    /// The peer's current endpoint (the configured one, or where it last sent
    /// an authenticated packet from).
    pub fn endpoint(&self) -> Option<SocketAddr> {
        self.endpoint
    }

    /// Sets the peer's endpoint (e.g. a resolved host name).
    pub fn set_endpoint(&mut self, endpoint: SocketAddr) {
        self.endpoint = Some(endpoint);
    }

    /// The per-peer index given in the configuration.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Counters.
    pub fn stats(&self) -> TunnelStats {
        self.stats
    }

    /// Whether a session that can send exists at `now`.
    pub fn has_session(&self, now: Duration) -> bool {
        self.current.as_ref().is_some_and(|k| k.is_valid(now))
    }

    /// Number of packets waiting for a session.
    pub fn queued_packets(&self) -> usize {
        self.queue.len()
    }

    fn new_local_index(&mut self) -> u32 {
        self.index_counter = self.index_counter.wrapping_add(1);
        (self.index << 8) | u32::from(self.index_counter)
    }

    fn under_load(&mut self, now: Duration) -> bool {
        if now.saturating_sub(self.load_window) >= Duration::from_secs(1) {
            self.load_window = now;
            self.load_count = 0;
        }
        self.load_count = self.load_count.saturating_add(1);
        self.load_count > self.load_limit
    }

    fn send_initiation<'a>(
        &mut self,
        now: Duration,
        rng: &mut dyn Random,
        out: &'a mut [u8],
    ) -> Action<'a> {
        let Some(buf) = out.get_mut(..wire::INITIATION_LEN) else {
            return Error::BufferTooSmall.into();
        };
        let Ok(msg) = <&mut [u8; wire::INITIATION_LEN]>::try_from(buf) else {
            return Error::BufferTooSmall.into();
        };
        let index = self.new_local_index();
        self.handshake
            .initiate(index, self.wall_clock_at_zero + now, rng, msg);
        self.macs_out.stamp(msg, now);
        if self.attempt_started.is_none() {
            self.attempt_started = Some(now);
        }
        self.retransmit_at = Some(now + REKEY_TIMEOUT + jitter(rng));
        self.rekey_wanted = false;
        self.handshake_due = None;
        self.last_sent = Some(now);
        Action::WriteToNetwork(msg)
    }

    /// Starts a handshake now unless one is already in flight.
    pub fn force_handshake<'a>(
        &mut self,
        now: Duration,
        rng: &mut dyn Random,
        out: &'a mut [u8],
    ) -> Action<'a> {
        if self.handshake.is_pending() {
            return Action::Done;
        }
        self.send_initiation(now, rng, out)
    }

    /// Encrypts an IP packet from the tunnel interface. Without a session the
    /// packet is queued and a handshake initiation is returned instead.
    /// `out` needs `packet.len() + 32` bytes (rounded up to 16) and at least 148.
    pub fn encapsulate<'a>(
        &mut self,
        now: Duration,
        rng: &mut dyn Random,
        packet: &[u8],
        out: &'a mut [u8],
    ) -> Action<'a> {
        if let Some(kp) = self.current.as_mut() {
            // `seal` refuses expired or exhausted keys; then fall through to a new handshake.
            match kp.seal(now, packet, out) {
                Ok(n) => {
                    if kp.wants_rekey_after_send(now) {
                        self.rekey_wanted = true;
                    }
                    self.last_sent = Some(now);
                    self.keepalive_due = None;
                    if !packet.is_empty() && self.handshake_due.is_none() {
                        self.handshake_due = Some(now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT);
                    }
                    self.stats.tx_bytes += packet.len() as u64;
                    return Action::WriteToNetwork(&mut out[..n]);
                }
                Err(SessionError::BufferTooSmall) => return Error::BufferTooSmall.into(),
                Err(_) => {}
            }
        }
        if packet.is_empty() {
            // A keepalive is pointless without a session; do not queue it.
        } else if self.queue.len() >= MAX_QUEUED_PACKETS {
            self.stats.dropped_packets += 1;
            return Error::QueueFull.into();
        } else {
            self.queue.push_back(packet.to_vec());
        }
        // As responder we wait briefly for the initiator to confirm `next`.
        let awaiting_confirmation = self
            .next
            .as_ref()
            .is_some_and(|k| now.saturating_sub(k.created) < REKEY_TIMEOUT);
        if self.handshake.is_pending() || awaiting_confirmation {
            return Action::Done;
        }
        self.send_initiation(now, rng, out)
    }

    /// Processes a UDP datagram from `src`. An empty datagram sends the next
    /// queued packet: after `WriteToNetwork` from a datagram, call again with an
    /// empty one until `Done` to flush packets queued during the handshake.
    pub fn decapsulate<'a>(
        &mut self,
        now: Duration,
        rng: &mut dyn Random,
        src: Option<SocketAddr>,
        datagram: &[u8],
        out: &'a mut [u8],
    ) -> Action<'a> {
        if datagram.is_empty() {
            return self.send_queued(now, rng, out);
        }
        let kind = match wire::classify(datagram) {
            Ok(k) => k,
            Err(e) => return Error::Wire(e).into(),
        };
        match kind {
            MessageKind::Initiation => self.on_initiation(now, rng, src, datagram, out),
            MessageKind::Response => self.on_response(now, rng, src, datagram, out),
            MessageKind::CookieReply => self.on_cookie_reply(now, datagram),
            MessageKind::Transport => self.on_transport(now, src, datagram, out),
        }
    }

    fn send_queued<'a>(
        &mut self,
        now: Duration,
        rng: &mut dyn Random,
        out: &'a mut [u8],
    ) -> Action<'a> {
        if !self.has_session(now) {
            return Action::Done;
        }
        match self.queue.pop_front() {
            Some(p) => self.encapsulate(now, rng, &p, out),
            None => Action::Done,
        }
    }

    /// Checks macs; on a cookie demand writes the reply to `out` and returns its length.
    fn check_macs(
        &mut self,
        now: Duration,
        rng: &mut dyn Random,
        src: Option<SocketAddr>,
        datagram: &[u8],
        sender: u32,
        out: &mut [u8],
    ) -> Result<(), Result<usize, Error>> {
        // Without a source address no cookie can be bound; mac1 then suffices.
        let load_from = src.filter(|_| self.under_load(now));
        let mut reply = [0u8; wire::COOKIE_REPLY_LEN];
        match self
            .macs_in
            .verify(datagram, sender, load_from.as_ref(), now, rng, &mut reply)
        {
            Ok(()) => Ok(()),
            Err(MacCheck::BadMac1) => Err(Err(Error::BadMac)),
            Err(MacCheck::CookieReplyWritten) => {
                let Some(o) = out.get_mut(..reply.len()) else {
                    return Err(Err(Error::BufferTooSmall));
                };
                o.copy_from_slice(&reply);
                self.stats.cookie_replies_sent += 1;
                Err(Ok(reply.len()))
            }
        }
    }

    fn on_initiation<'a>(
        &mut self,
        now: Duration,
        rng: &mut dyn Random,
        src: Option<SocketAddr>,
        datagram: &[u8],
        out: &'a mut [u8],
    ) -> Action<'a> {
        let Ok(msg) = Initiation::new_checked(datagram) else {
            return Error::Wire(WireError::BadLength).into();
        };
        match self.check_macs(now, rng, src, datagram, msg.sender(), out) {
            Ok(()) => {}
            Err(Ok(n)) => return Action::WriteToNetwork(&mut out[..n]),
            Err(Err(e)) => return e.into(),
        }
        let consumed = match self.handshake.consume_initiation(&msg) {
            Ok(c) => c,
            Err(e) => return Error::Handshake(e).into(),
        };
        let Some(buf) = out.get_mut(..wire::RESPONSE_LEN) else {
            return Error::BufferTooSmall.into();
        };
        let Ok(resp) = <&mut [u8; wire::RESPONSE_LEN]>::try_from(buf) else {
            return Error::BufferTooSmall.into();
        };
        let index = self.new_local_index();
        let keys = match self.handshake.respond(consumed, index, now, rng, resp) {
            Ok(k) => k,
            Err(e) => return Error::Handshake(e).into(),
        };
        self.macs_out.stamp(resp, now);
        self.next = Some(Keypair::new(keys, now));
        self.after_authenticated(now, src);
        self.last_handshake = Some(now);
        self.stats.handshakes += 1;
        self.last_sent = Some(now);
        Action::WriteToNetwork(resp)
    }

    fn on_response<'a>(
        &mut self,
        now: Duration,
        rng: &mut dyn Random,
        src: Option<SocketAddr>,
        datagram: &[u8],
        out: &'a mut [u8],
    ) -> Action<'a> {
        let Ok(msg) = Response::new_checked(datagram) else {
            return Error::Wire(WireError::BadLength).into();
        };
        match self.check_macs(now, rng, src, datagram, msg.sender(), out) {
            Ok(()) => {}
            Err(Ok(n)) => return Action::WriteToNetwork(&mut out[..n]),
            Err(Err(e)) => return e.into(),
        }
        let keys = match self.handshake.consume_response(&msg) {
            Ok(k) => k,
            Err(e) => return Error::Handshake(e).into(),
        };
        self.previous = self.current.take();
        self.current = Some(Keypair::new(keys, now));
        self.next = None;
        self.attempt_started = None;
        self.retransmit_at = None;
        self.last_handshake = Some(now);
        self.stats.handshakes += 1;
        self.after_authenticated(now, src);
        // Confirm the session to the responder right away (paper 5.4.3: the
        // initiator must send first); queued packets follow via empty decapsulate calls.
        self.encapsulate(now, rng, &[], out)
    }

    fn on_cookie_reply<'a>(&mut self, now: Duration, datagram: &[u8]) -> Action<'a> {
        let Ok(msg) = CookieReply::new_checked(datagram) else {
            return Error::Wire(WireError::BadLength).into();
        };
        match self.macs_out.consume_reply(&msg, now) {
            Ok(()) => Action::Done,
            Err(_) => Error::BadMac.into(),
        }
    }

    fn on_transport<'a>(
        &mut self,
        now: Duration,
        src: Option<SocketAddr>,
        datagram: &[u8],
        out: &'a mut [u8],
    ) -> Action<'a> {
        let Ok(msg) = Transport::new_checked(datagram) else {
            return Error::Wire(WireError::BadLength).into();
        };
        let receiver = msg.receiver();
        let is = |s: &Option<Keypair>| s.as_ref().is_some_and(|k| k.local_index == receiver);
        let (kp, is_next) = if is(&self.current) {
            (self.current.as_mut(), false)
        } else if is(&self.previous) {
            (self.previous.as_mut(), false)
        } else if is(&self.next) {
            (self.next.as_mut(), true)
        } else {
            (None, false)
        };
        let Some(kp) = kp else {
            return Error::UnknownIndex.into();
        };
        let len = match kp.open(now, &msg, out) {
            Ok(n) => n,
            Err(e) => return Error::Session(e).into(),
        };
        if is_next {
            // The initiator used the new keys: the handshake is confirmed.
            self.previous = self.current.take();
            self.current = self.next.take();
        }
        self.after_authenticated(now, src);
        if self
            .current
            .as_ref()
            .is_some_and(|c| c.wants_rekey_after_receive(now))
        {
            self.rekey_wanted = true;
        }
        if len == 0 {
            return Action::Done; // keepalive
        }
        let (real_len, source) = match inner_packet(&out[..len]) {
            Ok(x) => x,
            Err(e) => return e.into(),
        };
        if self.keepalive_due.is_none() {
            self.keepalive_due = Some(now + KEEPALIVE_TIMEOUT);
        }
        self.stats.rx_bytes += real_len as u64;
        Action::WriteToTunnel(&mut out[..real_len], source)
    }

    /// Bookkeeping for any authenticated packet: roaming and the
    /// "nothing received after sending" timer.
    fn after_authenticated(&mut self, _now: Duration, src: Option<SocketAddr>) {
        if let Some(s) = src {
            self.endpoint = Some(s);
        }
        self.handshake_due = None;
    }

    /// Drives the timers of the paper; call at least every few hundred
    /// milliseconds. Returns a packet to send (retransmitted initiation,
    /// keepalive) or `Done`.
    pub fn update_timers<'a>(
        &mut self,
        now: Duration,
        rng: &mut dyn Random,
        out: &'a mut [u8],
    ) -> Action<'a> {
        if self
            .last_handshake
            .is_some_and(|t| now.saturating_sub(t) >= KEY_ERASE_TIME)
        {
            self.erase_all();
            return Action::Done;
        }
        for slot in [&mut self.current, &mut self.previous, &mut self.next] {
            if slot.as_ref().is_some_and(|k| !k.is_valid(now)) {
                *slot = None; // dropping zeroes the keys
            }
        }
        if self.handshake.is_pending() {
            if self
                .attempt_started
                .is_some_and(|t| now.saturating_sub(t) >= REKEY_ATTEMPT_TIME)
            {
                self.handshake.abandon();
                self.attempt_started = None;
                self.retransmit_at = None;
                self.stats.dropped_packets += self.queue.len() as u64;
                self.queue.clear();
                return Error::HandshakeTimedOut.into();
            }
            if self.retransmit_at.is_some_and(|t| now >= t) {
                return self.send_initiation(now, rng, out);
            }
        } else if self.rekey_wanted || self.handshake_due.is_some_and(|t| now >= t) {
            return self.send_initiation(now, rng, out);
        }
        if self.keepalive_due.is_some_and(|t| now >= t) {
            self.keepalive_due = None;
            if self.has_session(now) {
                return self.encapsulate(now, rng, &[], out);
            }
        }
        if let Some(interval) = self.persistent_keepalive {
            let quiet = self
                .last_sent
                .is_none_or(|t| now.saturating_sub(t) >= interval);
            if quiet {
                if self.has_session(now) {
                    return self.encapsulate(now, rng, &[], out);
                }
                if !self.handshake.is_pending() {
                    return self.send_initiation(now, rng, out);
                }
            }
        }
        Action::Done
    }

    fn erase_all(&mut self) {
        self.current = None;
        self.previous = None;
        self.next = None;
        self.handshake.abandon();
        self.stats.dropped_packets += self.queue.len() as u64;
        self.queue.clear();
        self.last_handshake = None;
        self.attempt_started = None;
        self.retransmit_at = None;
        self.keepalive_due = None;
        self.handshake_due = None;
        self.rekey_wanted = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests_support::CountingRng;

    fn public(k: [u8; 32]) -> [u8; 32] {
        StaticKeys::new(k).public
    }

    fn tunnel(me: [u8; 32], peer: [u8; 32]) -> Tunnel {
        Tunnel::new(&TunnelConfig {
            private_key: me,
            peer_public_key: public(peer),
            preshared_key: None,
            persistent_keepalive: None,
            index: u32::from(me[0]),
            endpoint: None,
            wall_clock_at_zero: Duration::from_secs(1_000_000),
            handshake_load_limit: 10,
        })
        .unwrap()
    }

    fn connected() -> (Tunnel, Tunnel, CountingRng, Duration) {
        let mut a = tunnel([1; 32], [2; 32]);
        let mut b = tunnel([2; 32], [1; 32]);
        let mut rng = CountingRng(9);
        let now = Duration::from_secs(5);
        let (mut x, mut y) = ([0u8; 256], [0u8; 256]);
        let Action::WriteToNetwork(init) = a.force_handshake(now, &mut rng, &mut x) else {
            panic!()
        };
        let Action::WriteToNetwork(resp) = b.decapsulate(now, &mut rng, None, init, &mut y) else {
            panic!()
        };
        let Action::WriteToNetwork(ka) = a.decapsulate(now, &mut rng, None, resp, &mut x) else {
            panic!()
        };
        assert!(matches!(
            b.decapsulate(now, &mut rng, None, ka, &mut y),
            Action::Done
        ));
        (a, b, rng, now)
    }

    const PKT: [u8; 20] = [
        0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ];

    #[test]
    fn rekey_after_messages_asks_for_a_handshake() {
        let (mut a, _, mut rng, now) = connected();
        let mut out = [0u8; 256];
        a.current.as_mut().unwrap().send_counter = REKEY_AFTER_MESSAGES - 1;
        assert!(matches!(
            a.encapsulate(now, &mut rng, &PKT, &mut out),
            Action::WriteToNetwork(_)
        ));
        assert!(
            matches!(a.update_timers(now, &mut rng, &mut out), Action::WriteToNetwork(m) if m.len() == 148)
        );
    }

    #[test]
    fn reject_after_messages_stops_sending_and_starts_a_handshake() {
        let (mut a, mut b, mut rng, now) = connected();
        let (mut out, mut got) = ([0u8; 256], [0u8; 256]);
        a.current.as_mut().unwrap().send_counter = REJECT_AFTER_MESSAGES - 1;
        // The last usable counter still works (and is accepted by the peer)...
        let Action::WriteToNetwork(d) = a.encapsulate(now, &mut rng, &PKT, &mut out) else {
            panic!()
        };
        assert!(matches!(
            b.decapsulate(now, &mut rng, None, d, &mut got),
            Action::WriteToTunnel(..)
        ));
        // ...the next is refused: the packet is queued and an initiation goes out instead.
        let Action::WriteToNetwork(m) = a.encapsulate(now, &mut rng, &PKT, &mut out) else {
            panic!()
        };
        assert_eq!(m.len(), 148);
        assert_eq!(a.queued_packets(), 1);
    }

    #[test]
    fn previous_keypair_is_replaced_on_second_rotation() {
        let (mut a, mut b, mut rng, mut now) = connected();
        let (mut x, mut y) = ([0u8; 256], [0u8; 256]);
        let first = a.current.as_ref().unwrap().local_index;
        for _ in 0..2 {
            now += Duration::from_secs(1);
            let Action::WriteToNetwork(init) = a.force_handshake(now, &mut rng, &mut x) else {
                panic!()
            };
            let Action::WriteToNetwork(resp) = b.decapsulate(now, &mut rng, None, init, &mut y)
            else {
                panic!()
            };
            let Action::WriteToNetwork(_) = a.decapsulate(now, &mut rng, None, resp, &mut x) else {
                panic!()
            };
        }
        let slots: Vec<u32> = [&a.current, &a.previous]
            .iter()
            .map(|s| s.as_ref().unwrap().local_index)
            .collect();
        assert!(
            !slots.contains(&first),
            "the oldest keypair is gone (and zeroed)"
        );
        assert!(a.next.is_none());
    }
}
