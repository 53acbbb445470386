//! A WireGuard interface with several peers: demultiplexes incoming datagrams
//! to the right [`Tunnel`] (by receiver index, or for initiations by the
//! static key inside), and applies cryptokey routing both ways through the
//! AllowedIPs table.

use alloc::vec::Vec;
use core::net::{IpAddr, SocketAddr};
use core::time::Duration;

use crate::allowed_ips::AllowedIps;
use crate::config::{Config, Endpoint};
use crate::cookie;
use crate::crypto;
use crate::noise::{self, StaticKeys};
use crate::tunnel::{Action, Error, Tunnel, TunnelConfig};
use crate::wire::{self, Initiation, MessageKind, Response};
use crate::Random;

/// Identifies a peer of a [`Device`] (its position, in configuration order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerId(pub usize);

/// Why a peer could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceError {
    /// The public key is a low-order point.
    BadPeerKey,
    /// A peer with this public key exists already.
    DuplicatePeer,
    /// An AllowedIPs prefix is longer than its address.
    BadPrefix,
    /// More peers than the 24-bit index space allows.
    TooManyPeers,
}

/// Settings of the interface itself (the private key is zeroed on drop).
#[derive(Clone, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
pub struct DeviceConfig {
    /// Our static private key.
    pub private_key: [u8; 32],
    /// Wall-clock time at monotonic zero (see [`TunnelConfig::wall_clock_at_zero`]).
    #[zeroize(skip)]
    pub wall_clock_at_zero: Duration,
    /// Handshakes per second per peer before cookies are demanded.
    #[zeroize(skip)]
    pub handshake_load_limit: u32,
}

/// Settings of one peer.
pub struct PeerConfig<'a> {
    /// The peer's static public key.
    pub public_key: [u8; 32],
    /// Optional pre-shared key.
    pub preshared_key: Option<[u8; 32]>,
    /// Persistent keepalive interval in seconds.
    pub persistent_keepalive: Option<u16>,
    /// Initial endpoint.
    pub endpoint: Option<SocketAddr>,
    /// AllowedIPs prefixes.
    pub allowed_ips: &'a [(IpAddr, u8)],
}

/// An interface with its peers and its AllowedIPs table.
pub struct Device {
    config: DeviceConfig,
    local: StaticKeys,
    mac1_key: [u8; 32],
    /// Interface-wide mac/cookie check, done before any DH so that load
    /// from unknown senders costs us only a MAC.
    macs: cookie::MacVerifier,
    load_window: Duration,
    load_count: u32,
    peers: Vec<Tunnel>,
    allowed: AllowedIps<PeerId>,
}

impl Device {
    /// An interface with no peers.
    pub fn new(config: DeviceConfig) -> Self {
        let local = StaticKeys::new(config.private_key);
        let mac1_key = cookie::mac1_key(&local.public);
        let macs = cookie::MacVerifier::new(&local.public);
        Self {
            config,
            local,
            mac1_key,
            macs,
            load_window: Duration::ZERO,
            load_count: 0,
            peers: Vec::new(),
            allowed: AllowedIps::new(),
        }
    }

    /// An interface from a parsed wg-quick file. Host-name endpoints are left
    /// unset (the caller resolves them and calls [`Device::set_endpoint`]).
    pub fn from_config(
        config: &Config,
        wall_clock_at_zero: Duration,
        handshake_load_limit: u32,
    ) -> Result<Self, DeviceError> {
        let mut d = Self::new(DeviceConfig {
            private_key: config.interface.private_key.0,
            wall_clock_at_zero,
            handshake_load_limit,
        });
        for p in &config.peers {
            let allowed: Vec<(IpAddr, u8)> =
                p.allowed_ips.iter().map(|a| (a.addr, a.len)).collect();
            d.add_peer(&PeerConfig {
                public_key: p.public_key,
                preshared_key: p.preshared_key.as_ref().map(|k| k.0),
                persistent_keepalive: p.persistent_keepalive,
                endpoint: match &p.endpoint {
                    Some(Endpoint::Addr(a)) => Some(*a),
                    _ => None,
                },
                allowed_ips: &allowed,
            })?;
        }
        Ok(d)
    }

    /// Our static public key.
    pub fn public_key(&self) -> &[u8; 32] {
        &self.local.public
    }

    /// Adds a peer; its AllowedIPs take over any prefix another peer had.
    pub fn add_peer(&mut self, p: &PeerConfig<'_>) -> Result<PeerId, DeviceError> {
        if self
            .peers
            .iter()
            .any(|t| t.peer_public_key() == &p.public_key)
        {
            return Err(DeviceError::DuplicatePeer);
        }
        let id = PeerId(self.peers.len());
        let index = u32::try_from(id.0 + 1).map_err(|_| DeviceError::TooManyPeers)?;
        if index > 0x00ff_ffff {
            return Err(DeviceError::TooManyPeers);
        }
        for (addr, len) in p.allowed_ips {
            if *len > if addr.is_ipv4() { 32 } else { 128 } {
                return Err(DeviceError::BadPrefix);
            }
        }
        let tunnel = Tunnel::new(&TunnelConfig {
            private_key: self.config.private_key,
            peer_public_key: p.public_key,
            preshared_key: p.preshared_key,
            persistent_keepalive: p.persistent_keepalive,
            index,
            endpoint: p.endpoint,
            wall_clock_at_zero: self.config.wall_clock_at_zero,
            // The device applies the load limit for the whole interface,
            // before demultiplexing; one cookie secret serves every peer.
            handshake_load_limit: u32::MAX,
        })
        .map_err(|_| DeviceError::BadPeerKey)?;
        for (addr, len) in p.allowed_ips {
            self.allowed
                .insert(*addr, *len, id)
                .map_err(|_| DeviceError::BadPrefix)?;
        }
        self.peers.push(tunnel);
        Ok(id)
    }

    /// Number of peers.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// The tunnel of a peer.
    pub fn peer(&self, id: PeerId) -> Option<&Tunnel> {
        self.peers.get(id.0)
    }

    /// Sets a peer's endpoint (e.g. after resolving a host name).
    pub fn set_endpoint(&mut self, id: PeerId, endpoint: SocketAddr) {
        if let Some(t) = self.peers.get_mut(id.0) {
            t.set_endpoint(endpoint);
        }
    }

    /// Cryptokey routing for an outgoing packet: the peer owning `dst`.
    pub fn route(&self, dst: IpAddr) -> Option<PeerId> {
        self.allowed.lookup(dst).copied()
    }

    /// Encrypts a packet for `peer` (see [`Tunnel::encapsulate`]).
    pub fn encapsulate<'a>(
        &mut self,
        now: Duration,
        rng: &mut dyn Random,
        peer: PeerId,
        packet: &[u8],
        out: &'a mut [u8],
    ) -> Action<'a> {
        match self.peers.get_mut(peer.0) {
            Some(t) => t.encapsulate(now, rng, packet, out),
            None => Error::UnknownIndex.into(),
        }
    }

    /// Runs a peer's timers (see [`Tunnel::update_timers`]).
    pub fn update_timers<'a>(
        &mut self,
        now: Duration,
        rng: &mut dyn Random,
        peer: PeerId,
        out: &'a mut [u8],
    ) -> Action<'a> {
        match self.peers.get_mut(peer.0) {
            Some(t) => t.update_timers(now, rng, out),
            None => Action::Done,
        }
    }

    /// Which peer a datagram is for, without doing any work an attacker could
    /// force for free: initiations must carry a valid mac1 before the DH.
    fn demux(&self, datagram: &[u8]) -> Result<PeerId, Error> {
        let kind = wire::classify(datagram).map_err(Error::Wire)?;
        if kind == MessageKind::Initiation {
            let msg = Initiation::new_checked(datagram).map_err(Error::Wire)?;
            let off = wire::mac1_offset(datagram.len());
            let expect = crypto::mac(&self.mac1_key, &datagram[..off]);
            if !crypto::mac_eq(msg.mac1(), &expect) {
                return Err(Error::BadMac);
            }
            // One DH to learn the sender; the peer's tunnel then finishes
            // the message with its precomputed static-static DH.
            let peer_static =
                noise::initiator_static(&self.local, &msg).map_err(Error::Handshake)?;
            return self
                .peers
                .iter()
                .position(|t| t.peer_public_key() == &peer_static)
                .map(PeerId)
                .ok_or(Error::Handshake(noise::HandshakeError::WrongPeer));
        }
        // Responses, cookie replies and transport messages carry our index,
        // whose upper 24 bits are the peer's position plus one. In a
        // response it follows the responder's own index (bytes 4..8, which
        // the peer chooses freely); in the others it comes first.
        let receiver = if kind == MessageKind::Response {
            Response::new_checked(datagram)
                .map_err(Error::Wire)?
                .receiver()
        } else {
            u32::from_le_bytes([datagram[4], datagram[5], datagram[6], datagram[7]])
        };
        let pos = (receiver >> 8) as usize;
        if pos == 0 || pos > self.peers.len() {
            return Err(Error::UnknownIndex);
        }
        Ok(PeerId(pos - 1))
    }

    /// For handshake messages: mac1, and under load (more than the configured
    /// handshakes per second on the whole interface) a valid mac2, before any
    /// DH work. On a cookie demand the reply is written to `out`.
    ///
    /// Only messages whose mac1 verified count towards the load: a flood of
    /// datagrams from anyone who does not know our public key costs us a
    /// MAC each and never puts the interface under load (which would make
    /// the real peers' handshakes wait for cookies).
    fn check_load(
        &mut self,
        now: Duration,
        rng: &mut dyn Random,
        src: Option<SocketAddr>,
        datagram: &[u8],
        out: &mut [u8],
    ) -> Result<(), Result<usize, Error>> {
        let sender = match wire::classify(datagram) {
            Ok(MessageKind::Initiation) | Ok(MessageKind::Response) => {
                u32::from_le_bytes([datagram[4], datagram[5], datagram[6], datagram[7]])
            }
            _ => return Ok(()),
        };
        let off = wire::mac1_offset(datagram.len());
        let mac1 = datagram
            .get(off..off + crypto::MAC_LEN)
            .and_then(|m| <&[u8; crypto::MAC_LEN]>::try_from(m).ok());
        let (Some(body), Some(mac1)) = (datagram.get(..off), mac1) else {
            return Err(Err(Error::BadMac));
        };
        if !crypto::mac_eq(mac1, &crypto::mac(&self.mac1_key, body)) {
            return Err(Err(Error::BadMac));
        }
        if now.saturating_sub(self.load_window) >= Duration::from_secs(1) {
            self.load_window = now;
            self.load_count = 0;
        }
        self.load_count = self.load_count.saturating_add(1);
        let under_load = self.load_count > self.config.handshake_load_limit;
        let from = src.filter(|_| under_load);
        let mut reply = [0u8; wire::COOKIE_REPLY_LEN];
        match self
            .macs
            .verify(datagram, sender, from.as_ref(), now, rng, &mut reply)
        {
            Ok(()) => Ok(()),
            Err(cookie::MacCheck::BadMac1) => Err(Err(Error::BadMac)),
            Err(cookie::MacCheck::CookieReplyWritten) => match out.get_mut(..reply.len()) {
                Some(o) => {
                    o.copy_from_slice(&reply);
                    Err(Ok(reply.len()))
                }
                None => Err(Err(Error::BufferTooSmall)),
            },
        }
    }

    /// Processes a datagram from `src`. Returns the peer it belonged to (if
    /// any) and the action. Decrypted packets whose source address is not in
    /// that peer's AllowedIPs are dropped with [`Error::SourceNotAllowed`].
    /// An empty datagram with `Some(peer)` flushes that peer's queue.
    pub fn decapsulate<'a>(
        &mut self,
        now: Duration,
        rng: &mut dyn Random,
        src: Option<SocketAddr>,
        datagram: &[u8],
        flush_peer: Option<PeerId>,
        out: &'a mut [u8],
    ) -> (Option<PeerId>, Action<'a>) {
        let peer = if datagram.is_empty() {
            match flush_peer {
                Some(p) => p,
                None => return (None, Action::Done),
            }
        } else {
            match self.check_load(now, rng, src, datagram, out) {
                Ok(()) => {}
                Err(Ok(n)) => return (None, Action::WriteToNetwork(&mut out[..n])),
                Err(Err(e)) => return (None, e.into()),
            }
            match self.demux(datagram) {
                Ok(p) => p,
                Err(e) => return (None, e.into()),
            }
        };
        let Some(tunnel) = self.peers.get_mut(peer.0) else {
            return (None, Error::UnknownIndex.into());
        };
        let action = tunnel.decapsulate(now, rng, src, datagram, out);
        let action = match action {
            Action::WriteToTunnel(p, source) => {
                if self.allowed.lookup(source) == Some(&peer) {
                    Action::WriteToTunnel(p, source)
                } else {
                    Error::SourceNotAllowed.into()
                }
            }
            other => other,
        };
        (Some(peer), action)
    }
}
