//! The VPN gateway: client packets enter the tunnel chosen by AllowedIPs,
//! decrypted packets go back to the clients. It is fail-closed by
//! construction: the only thing ever handed to the uplink is an
//! [`UplinkDatagram`], which can only be built from a well-formed WireGuard
//! message that the tunnel produced, addressed to that peer's endpoint. With no
//! session, client packets wait in the tunnel's bounded queue or are dropped
//! and counted; they never leave in clear. The gateway has no traffic of its
//! own: endpoints must be literal addresses (host names are refused).

use alloc::vec;
use alloc::vec::Vec;
use core::net::SocketAddr;
use core::time::Duration;

use wireguard::config::{Config, Endpoint};
use wireguard::wire;
use wireguard::{Action, Device, PeerId, Random};

use crate::dns::{DnsRedirect, QUBES_DNS1, QUBES_DNS2};
use crate::nat::{Nat, NatError};
use crate::packet::{self, TCP, UDP};

/// A UDP payload for the uplink: always a WireGuard message, always to a peer endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkDatagram {
    dst: SocketAddr,
    payload: Vec<u8>,
}

impl UplinkDatagram {
    /// Only WireGuard messages pass; anything else is refused (returns `None`).
    fn new(dst: SocketAddr, payload: &[u8]) -> Option<Self> {
        wire::classify(payload).ok()?;
        Some(Self {
            dst,
            payload: payload.to_vec(),
        })
    }

    /// The peer endpoint to send to.
    pub fn dst(&self) -> SocketAddr {
        self.dst
    }

    /// The UDP payload.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
}

/// What the gateway asks its platform to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send a WireGuard datagram from our listen port.
    Uplink(UplinkDatagram),
    /// Deliver an IP packet to the clients' network.
    Client(Vec<u8>),
}

/// Why the gateway could not be built from a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetupError {
    /// A peer's endpoint is a host name; resolving it would be traffic of our own.
    HostEndpoint(usize),
    /// A peer has no endpoint, so nothing could ever be sent to it.
    MissingEndpoint(usize),
    /// The device refused a peer.
    Device(wireguard::device::DeviceError),
    /// Masquerading was asked for but the interface has no `Address`.
    NoAddressToMasquerade,
}

/// Drop counters (every dropped packet lands in exactly one).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Client packets that are not parseable IP.
    pub client_malformed: u64,
    /// Client IPv4 packets with no AllowedIPs match.
    pub no_route_v4: u64,
    /// Client IPv6 packets with no AllowedIPs match.
    pub no_route_v6: u64,
    /// DNS queries with no tunnel DNS server of their family.
    pub dns_no_server: u64,
    /// Client packets dropped by the tunnel (queue full, no session after retries).
    pub tunnel_dropped: u64,
    /// Datagrams from the uplink the tunnel refused (bad, replayed, unknown, spoofed).
    pub uplink_rejected: u64,
    /// Packets the tunnel produced while the peer's endpoint was unknown.
    pub no_endpoint: u64,
    /// DNS queries redirected into the tunnel.
    pub dns_redirected: u64,
    /// TCP SYNs whose MSS was lowered.
    pub mss_clamped: u64,
    /// Client packets masquerading cannot map (other protocols, fragments,
    /// the tunnel's own address as source).
    pub nat_unsupported: u64,
    /// Packets from the tunnel that answer no mapping (unsolicited).
    pub nat_no_mapping: u64,
    /// Cookie replies sent (under load, to handshake initiations or
    /// responses without a valid mac2; not a drop).
    pub cookie_replies: u64,
    /// Client packets of an address family the tunnel has no `Address`
    /// for while masquerading: dropped, never sent with the client's own
    /// (internal) address.
    pub no_tunnel_address: u64,
}

/// Gateway settings beyond the WireGuard configuration.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// Wall clock at monotonic zero (for handshake timestamps).
    pub wall_clock_at_zero: Duration,
    /// Handshakes per second per peer before cookies are demanded.
    pub handshake_load_limit: u32,
    /// Masquerade clients as the interface's `Address` (its first IPv4 and
    /// first IPv6 address), as VPN providers expect; packets from the tunnel
    /// then reach clients only as answers to what they sent. Off: client
    /// addresses are kept (the peer must allow them, as a site-to-site peer would).
    pub masquerade: bool,
}

/// The VPN gateway.
pub struct Gateway {
    device: Device,
    dns: DnsRedirect,
    mtu: usize,
    counters: Counters,
    nat: Option<Nat>,
    last_uplink_error: Option<wireguard::Error>,
    buf: Vec<u8>,
}

impl Gateway {
    /// Builds the gateway from a wg-quick configuration.
    pub fn new(config: &Config, settings: &GatewaySettings) -> Result<Self, SetupError> {
        for (i, p) in config.peers.iter().enumerate() {
            match p.endpoint {
                Some(Endpoint::Addr(_)) => {}
                Some(Endpoint::Host { .. }) => return Err(SetupError::HostEndpoint(i)),
                None => return Err(SetupError::MissingEndpoint(i)),
            }
        }
        let device = Device::from_config(
            config,
            settings.wall_clock_at_zero,
            settings.handshake_load_limit,
        )
        .map_err(SetupError::Device)?;
        let mtu = usize::from(config.interface.mtu.unwrap_or(1420));
        let nat = if settings.masquerade {
            let addrs = &config.interface.addresses;
            let v4 = addrs.iter().map(|a| a.addr).find(|a| a.is_ipv4());
            let v6 = addrs.iter().map(|a| a.addr).find(|a| a.is_ipv6());
            if v4.is_none() && v6.is_none() {
                return Err(SetupError::NoAddressToMasquerade);
            }
            Some(Nat::new(v4, v6))
        } else {
            None
        };
        Ok(Self {
            device,
            dns: DnsRedirect::new(config.interface.dns.clone()),
            mtu,
            counters: Counters::default(),
            nat,
            last_uplink_error: None,
            buf: vec![0; 65535 + 64],
        })
    }

    /// Drop and event counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Why the tunnel last refused a datagram from the uplink (for logs).
    pub fn last_uplink_error(&self) -> Option<wireguard::Error> {
        self.last_uplink_error
    }

    /// The masquerading state, if enabled.
    pub fn nat(&self) -> Option<&Nat> {
        self.nat.as_ref()
    }

    /// The WireGuard device (peers, sessions, statistics).
    pub fn device(&self) -> &Device {
        &self.device
    }

    fn mss_limit(&self, info: &packet::IpInfo) -> u16 {
        let ip_tcp = if info.src.is_ipv4() { 40 } else { 60 };
        u16::try_from(self.mtu.saturating_sub(ip_tcp)).unwrap_or(u16::MAX)
    }

    fn emit(&mut self, peer: PeerId, n_or_action: Option<usize>, out: &mut Vec<Output>) {
        let Some(n) = n_or_action else { return };
        let endpoint = self.device.peer(peer).and_then(|t| t.endpoint());
        let datagram =
            endpoint.and_then(|ep| self.buf.get(..n).and_then(|b| UplinkDatagram::new(ep, b)));
        match datagram {
            Some(d) => out.push(Output::Uplink(d)),
            None => self.counters.no_endpoint += 1,
        }
    }

    /// A packet from a client. Appends what to send to `out`.
    pub fn from_client(
        &mut self,
        now: Duration,
        rng: &mut dyn Random,
        packet: &[u8],
        out: &mut Vec<Output>,
    ) {
        let Some(info) = packet::parse(packet) else {
            self.counters.client_malformed += 1;
            return;
        };
        // Masquerading, a family the tunnel has no address of could only
        // leave with the client's own (internal) address: drop it.
        if self
            .nat
            .as_ref()
            .is_some_and(|nat| nat.address_for(info.src).is_none())
        {
            self.counters.no_tunnel_address += 1;
            return;
        }
        let mut p = packet.get(..info.len).unwrap_or(packet).to_vec();
        let mut info = info;
        if let Some((sport, dport)) = packet::ports(&p, &info) {
            let virtual_dns = info.dst == QUBES_DNS1 || info.dst == QUBES_DNS2;
            if dport == 53 || virtual_dns {
                match self.dns.redirect(info.src, sport, info.protocol, info.dst) {
                    Some(server) => {
                        packet::rewrite_address(&mut p, &info, false, server);
                        info.dst = server;
                        self.counters.dns_redirected += 1;
                    }
                    None => {
                        self.counters.dns_no_server += 1;
                        return;
                    }
                }
            }
        }
        if info.protocol == TCP && packet::clamp_mss(&mut p, &info, self.mss_limit(&info)) {
            self.counters.mss_clamped += 1;
        }
        let Some(peer) = self.device.route(info.dst) else {
            if info.dst.is_ipv4() {
                self.counters.no_route_v4 += 1;
            } else {
                self.counters.no_route_v6 += 1;
            }
            return;
        };
        if let Some(nat) = &mut self.nat {
            if nat.outbound(now, &mut p, &info) == Err(NatError::Unsupported) {
                self.counters.nat_unsupported += 1;
                return;
            }
        }
        let mut buf = core::mem::take(&mut self.buf);
        let n = match self.device.encapsulate(now, rng, peer, &p, &mut buf) {
            Action::WriteToNetwork(b) => Some(b.len()),
            Action::Err(_) => {
                self.counters.tunnel_dropped += 1;
                None
            }
            Action::Done | Action::WriteToTunnel(..) => None,
        };
        self.buf = buf;
        self.emit(peer, n, out);
    }

    /// A UDP datagram that arrived on our listen port from `src`.
    pub fn from_uplink(
        &mut self,
        now: Duration,
        rng: &mut dyn Random,
        src: SocketAddr,
        datagram: &[u8],
        out: &mut Vec<Output>,
    ) {
        let mut input: &[u8] = datagram;
        let mut flush: Option<PeerId> = None;
        // The first call handles the datagram; while it produces network
        // output, empty calls flush packets queued during a handshake.
        for _ in 0..=wireguard::tunnel::MAX_QUEUED_PACKETS {
            let mut buf = core::mem::take(&mut self.buf);
            let (peer, action) =
                self.device
                    .decapsulate(now, rng, Some(src), input, flush, &mut buf);
            let (net, client) = match action {
                Action::WriteToNetwork(b) => (Some(b.len()), None),
                Action::WriteToTunnel(b, _) => (None, Some(b.to_vec())),
                Action::Err(e) => {
                    if input.is_empty() {
                        self.counters.tunnel_dropped += 1;
                    } else {
                        self.counters.uplink_rejected += 1;
                        self.last_uplink_error = Some(e);
                    }
                    (None, None)
                }
                Action::Done => (None, None),
            };
            self.buf = buf;
            if let Some(c) = client {
                self.deliver_to_client(now, c, out);
                return;
            }
            let (Some(peer), Some(_)) = (peer, net) else {
                // Output without a peer is a cookie reply: we are under
                // load and the sender's mac2 was missing or stale. It goes
                // back to the address the datagram came from (to which the
                // cookie is bound), so that real peers get through a flood
                // of initiations with their next, cookie-stamped, attempt.
                if let (None, Some(n)) = (peer, net) {
                    self.send_cookie_reply(src, n, out);
                }
                return;
            };
            self.emit(peer, net, out);
            input = &[];
            flush = Some(peer);
        }
    }

    fn send_cookie_reply(&mut self, src: SocketAddr, n: usize, out: &mut Vec<Output>) {
        let reply = self
            .buf
            .get(..n)
            .filter(|b| matches!(wire::classify(b), Ok(wire::MessageKind::CookieReply)));
        match reply.and_then(|b| UplinkDatagram::new(src, b)) {
            Some(d) => {
                self.counters.cookie_replies += 1;
                out.push(Output::Uplink(d));
            }
            None => self.counters.no_endpoint += 1,
        }
    }

    fn deliver_to_client(&mut self, now: Duration, mut p: Vec<u8>, out: &mut Vec<Output>) {
        let Some(mut info) = packet::parse(&p) else {
            self.counters.uplink_rejected += 1;
            return;
        };
        p.truncate(info.len);
        if let Some(nat) = &mut self.nat {
            if nat.inbound(now, &mut p, &info).is_err() {
                self.counters.nat_no_mapping += 1;
                return;
            }
            let Some(translated) = packet::parse(&p) else {
                self.counters.uplink_rejected += 1;
                return;
            };
            info = translated;
        }
        if info.protocol == UDP || info.protocol == TCP {
            if let Some((sport, dport)) = packet::ports(&p, &info) {
                if sport == 53 {
                    if let Some(asked) =
                        self.dns
                            .answer_source(info.src, info.dst, dport, info.protocol)
                    {
                        packet::rewrite_address(&mut p, &info, true, asked);
                    }
                }
            }
            if info.protocol == TCP && packet::clamp_mss(&mut p, &info, self.mss_limit(&info)) {
                self.counters.mss_clamped += 1;
            }
        }
        out.push(Output::Client(p));
    }

    /// Runs every peer's timers; call a few times per second.
    pub fn tick(&mut self, now: Duration, rng: &mut dyn Random, out: &mut Vec<Output>) {
        if let Some(nat) = &mut self.nat {
            nat.expire(now);
        }
        for i in 0..self.device.peer_count() {
            let peer = PeerId(i);
            let mut buf = core::mem::take(&mut self.buf);
            let n = match self.device.update_timers(now, rng, peer, &mut buf) {
                Action::WriteToNetwork(b) => Some(b.len()),
                Action::Err(wireguard::Error::HandshakeTimedOut) => {
                    self.counters.tunnel_dropped += 1;
                    None
                }
                _ => None,
            };
            self.buf = buf;
            self.emit(peer, n, out);
        }
    }
}
