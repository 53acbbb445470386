//! The VPN gateway's Ethernet links, done by hand: the platform only gives
//! us frames (netfront and netback in the VM image, TAP devices in
//! `hosted-vpn`). `no_std` + `alloc`; moved here from the hosted platform so
//! that the VM and the hosted process share it.
//!
//! - [`Uplink`]: our IPv4 address on the outside network. It answers ARP for
//!   that address, resolves its next hop with ARP, accepts UDP datagrams to
//!   our listen port and sends UDP datagrams from it. Nothing else is ever
//!   built here, so the uplink sees ARP and WireGuard's UDP and nothing more.
//! - [`ClientLink`]: the clients' network. It answers every ARP request as
//!   the clients' gateway (as Qubes' net VMs do), learns each client's MAC
//!   from the frames it sends and hands their IP packets over.
//!
//! Frames from the network are untrusted: every field is bounds-checked and
//! anything unexpected is counted and dropped.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use core::time::Duration;

/// An Ethernet address.
pub type Mac = [u8; 6];

/// The broadcast Ethernet address.
pub const BROADCAST: Mac = [0xff; 6];
/// Ethertype of ARP.
pub const ETH_ARP: u16 = 0x0806;
/// Ethertype of IPv4.
pub const ETH_IPV4: u16 = 0x0800;
/// Ethertype of IPv6.
pub const ETH_IPV6: u16 = 0x86dd;
/// Length of an Ethernet header (no VLAN tag).
pub const ETH_HEADER: usize = 14;
const ARP_LEN: usize = 28;
/// Neighbours remembered per link (the oldest is forgotten first).
pub const MAX_NEIGHBOURS: usize = 256;
/// Datagrams held on the uplink while their next hop is being resolved.
pub const MAX_PENDING: usize = 64;
/// The largest UDP payload one IPv4 packet can carry.
pub const MAX_UDP_PAYLOAD: usize = 65535 - 20 - 8;
/// Time between two ARP requests for the same address.
pub const ARP_RETRY: Duration = Duration::from_secs(1);

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<Mac> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The big-endian 16-bit value at `at` in `b`.
pub fn be16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

fn ipv4_at(b: &[u8], at: usize) -> Option<Ipv4Addr> {
    let s: [u8; 4] = b.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(Ipv4Addr::from(s))
}

/// The Ethernet address at `at` in `b`.
pub fn mac_at(b: &[u8], at: usize) -> Option<Mac> {
    b.get(at..at.checked_add(6)?)?.try_into().ok()
}

/// The Internet checksum of `data`, starting from a partial `sum`.
fn checksum(mut sum: u32, data: &[u8]) -> u16 {
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn pseudo_sum(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, len: usize) -> u32 {
    let s = src.octets();
    let d = dst.octets();
    let mut sum = 0u32;
    for pair in [[s[0], s[1]], [s[2], s[3]], [d[0], d[1]], [d[2], d[3]]] {
        sum += u32::from(u16::from_be_bytes(pair));
    }
    sum + u32::from(protocol) + (len as u32 & 0xffff)
}

/// An Ethernet frame.
pub fn ethernet(dst: Mac, src: Mac, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_HEADER + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An ARP packet (Ethernet/IPv4) in a frame.
pub fn arp_frame(dst: Mac, op: u16, sha: Mac, spa: Ipv4Addr, tha: Mac, tpa: Ipv4Addr) -> Vec<u8> {
    let mut a = Vec::with_capacity(ARP_LEN);
    a.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4]);
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&sha);
    a.extend_from_slice(&spa.octets());
    a.extend_from_slice(&tha);
    a.extend_from_slice(&tpa.octets());
    ethernet(dst, sha, ETH_ARP, &a)
}

/// A parsed Ethernet/IPv4 ARP packet.
pub struct Arp {
    /// 1 request, 2 reply.
    pub op: u16,
    /// Sender's Ethernet address.
    pub sha: Mac,
    /// Sender's IPv4 address.
    pub spa: Ipv4Addr,
    /// Target's IPv4 address.
    pub tpa: Ipv4Addr,
}

/// The ARP packet (Ethernet/IPv4 only) of a frame's payload.
pub fn parse_arp(b: &[u8]) -> Option<Arp> {
    if b.get(..6)? != [0, 1, 0x08, 0x00, 6, 4] || b.len() < ARP_LEN {
        return None;
    }
    Some(Arp {
        op: be16(b, 6)?,
        sha: mac_at(b, 8)?,
        spa: ipv4_at(b, 14)?,
        tpa: ipv4_at(b, 24)?,
    })
}

/// A bounded neighbour table: address to Ethernet address.
struct Neighbours<K: Ord + Copy> {
    map: BTreeMap<K, Mac>,
    order: VecDeque<K>,
}

impl<K: Ord + Copy> Neighbours<K> {
    fn new() -> Self {
        Self {
            map: BTreeMap::new(),
            order: VecDeque::new(),
        }
    }

    fn get(&self, k: &K) -> Option<Mac> {
        self.map.get(k).copied()
    }

    fn learn(&mut self, k: K, mac: Mac) {
        if self.map.insert(k, mac).is_none() {
            self.order.push_back(k);
            if self.order.len() > MAX_NEIGHBOURS {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }
}

/// Counters of the uplink (every dropped frame lands in exactly one).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UplinkCounters {
    /// WireGuard datagrams received on our listen port.
    pub rx_datagrams: u64,
    /// Datagrams sent.
    pub tx_datagrams: u64,
    /// ARP requests we answered.
    pub arp_replies: u64,
    /// ARP requests we sent.
    pub arp_requests: u64,
    /// Frames dropped: not ARP or IPv4 for us (other hosts, IPv6, ...).
    pub rx_not_ours: u64,
    /// IPv4 packets for us that are not UDP to our port (ICMP errors, probes).
    pub rx_not_wireguard: u64,
    /// Malformed frames (bad lengths, bad checksums, fragments).
    pub rx_malformed: u64,
    /// Datagrams to an IPv6 endpoint (this uplink is IPv4 only).
    pub tx_no_ipv6: u64,
    /// Datagrams dropped while their next hop did not answer ARP.
    pub tx_unresolved: u64,
    /// Datagrams too large for one IPv4 packet.
    pub tx_too_big: u64,
}

/// A WireGuard datagram received on the uplink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Where it came from.
    pub src: SocketAddr,
    /// The UDP payload.
    pub payload: Vec<u8>,
}

/// Our end of the uplink: one IPv4 address, one UDP port.
pub struct Uplink {
    mac: Mac,
    ip: Ipv4Addr,
    prefix: u8,
    gateway: Ipv4Addr,
    port: u16,
    neighbours: Neighbours<Ipv4Addr>,
    pending: VecDeque<(Ipv4Addr, Vec<u8>)>,
    requested: BTreeMap<Ipv4Addr, Duration>,
    ip_id: u16,
    counters: UplinkCounters,
}

impl Uplink {
    /// Our address `ip/prefix` on the link, the default gateway, and our UDP port.
    pub fn new(mac: Mac, ip: Ipv4Addr, prefix: u8, gateway: Ipv4Addr, port: u16) -> Self {
        Self {
            mac,
            ip,
            prefix: prefix.min(32),
            gateway,
            port,
            neighbours: Neighbours::new(),
            pending: VecDeque::new(),
            requested: BTreeMap::new(),
            ip_id: 1,
            counters: UplinkCounters::default(),
        }
    }

    /// The counters.
    pub fn counters(&self) -> UplinkCounters {
        self.counters
    }

    fn on_link(&self, addr: Ipv4Addr) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0);
        u32::from(addr) & mask == u32::from(self.ip) & mask
    }

    /// A frame from the link. Returns the WireGuard datagram it carried, if
    /// any; frames to send in answer (ARP replies, datagrams whose next hop
    /// just got resolved) are appended to `tx`.
    pub fn receive(&mut self, frame: &[u8], tx: &mut Vec<Vec<u8>>) -> Option<Received> {
        let (Some(dst), Some(ethertype)) = (mac_at(frame, 0), be16(frame, 12)) else {
            self.counters.rx_malformed += 1;
            return None;
        };
        let body = frame.get(ETH_HEADER..).unwrap_or_default();
        if dst != self.mac && dst != BROADCAST {
            self.counters.rx_not_ours += 1;
            return None;
        }
        match ethertype {
            ETH_ARP => {
                self.receive_arp(body, tx);
                None
            }
            ETH_IPV4 if dst == self.mac => self.receive_ipv4(body),
            _ => {
                self.counters.rx_not_ours += 1;
                None
            }
        }
    }

    fn receive_arp(&mut self, body: &[u8], tx: &mut Vec<Vec<u8>>) {
        let Some(arp) = parse_arp(body) else {
            self.counters.rx_malformed += 1;
            return;
        };
        // Only neighbours on our subnet, and only senders that talk to us or
        // that we asked about, enter the table.
        let asked = self.requested.contains_key(&arp.spa);
        if self.on_link(arp.spa) && arp.spa != self.ip && (arp.tpa == self.ip || asked) {
            self.neighbours.learn(arp.spa, arp.sha);
            self.requested.remove(&arp.spa);
            self.flush_pending(arp.spa, arp.sha, tx);
        }
        if arp.op == 1 && arp.tpa == self.ip {
            self.counters.arp_replies += 1;
            tx.push(arp_frame(arp.sha, 2, self.mac, self.ip, arp.sha, arp.spa));
        } else if arp.op != 2 && arp.op != 1 {
            self.counters.rx_malformed += 1;
        }
    }

    fn flush_pending(&mut self, hop: Ipv4Addr, mac: Mac, tx: &mut Vec<Vec<u8>>) {
        let mut keep = VecDeque::new();
        while let Some((h, packet)) = self.pending.pop_front() {
            if h == hop {
                self.counters.tx_datagrams += 1;
                tx.push(ethernet(mac, self.mac, ETH_IPV4, &packet));
            } else {
                keep.push_back((h, packet));
            }
        }
        self.pending = keep;
    }

    fn receive_ipv4(&mut self, b: &[u8]) -> Option<Received> {
        let malformed = |s: &mut Self| {
            s.counters.rx_malformed += 1;
            None
        };
        let Some(&v_ihl) = b.first() else {
            return malformed(self);
        };
        let ihl = usize::from(v_ihl & 0x0f) * 4;
        let Some(total) = be16(b, 2).map(usize::from) else {
            return malformed(self);
        };
        if v_ihl >> 4 != 4 || ihl < 20 || total < ihl || total > b.len() {
            return malformed(self);
        }
        let header = &b[..ihl];
        if checksum(0, header) != 0 {
            return malformed(self);
        }
        let (Some(flags_frag), Some(&protocol), Some(src), Some(dst)) =
            (be16(b, 6), b.get(9), ipv4_at(b, 12), ipv4_at(b, 16))
        else {
            return malformed(self);
        };
        if dst != self.ip {
            self.counters.rx_not_ours += 1;
            return None;
        }
        if flags_frag & 0x3fff != 0 {
            return malformed(self); // fragments: WireGuard messages never need them here
        }
        let l4 = &b[ihl..total];
        if protocol != 17 || be16(l4, 2) != Some(self.port) {
            self.counters.rx_not_wireguard += 1;
            return None;
        }
        let (Some(sport), Some(udp_len), Some(udp_sum)) = (be16(l4, 0), be16(l4, 4), be16(l4, 6))
        else {
            return malformed(self);
        };
        let udp_len = usize::from(udp_len);
        if udp_len < 8 || udp_len > l4.len() {
            return malformed(self);
        }
        let udp = &l4[..udp_len];
        if udp_sum != 0 && checksum(pseudo_sum(src, dst, 17, udp_len), udp) != 0 {
            return malformed(self);
        }
        self.counters.rx_datagrams += 1;
        Some(Received {
            src: SocketAddr::V4(SocketAddrV4::new(src, sport)),
            payload: udp[8..].to_vec(),
        })
    }

    /// Sends `payload` from our port to `dst`: the frame is appended to `tx`,
    /// or (next hop unknown) the datagram waits for ARP and a request goes out.
    pub fn send(&mut self, now: Duration, dst: SocketAddr, payload: &[u8], tx: &mut Vec<Vec<u8>>) {
        let SocketAddr::V4(dst) = dst else {
            self.counters.tx_no_ipv6 += 1;
            return;
        };
        if payload.len() > MAX_UDP_PAYLOAD {
            self.counters.tx_too_big += 1;
            return;
        }
        let packet = self.udp_packet(*dst.ip(), dst.port(), payload);
        let hop = if self.on_link(*dst.ip()) {
            *dst.ip()
        } else {
            self.gateway
        };
        if let Some(mac) = self.neighbours.get(&hop) {
            self.counters.tx_datagrams += 1;
            tx.push(ethernet(mac, self.mac, ETH_IPV4, &packet));
            return;
        }
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
            self.counters.tx_unresolved += 1;
        }
        self.pending.push_back((hop, packet));
        self.request(now, hop, tx);
    }

    fn request(&mut self, now: Duration, hop: Ipv4Addr, tx: &mut Vec<Vec<u8>>) {
        if let Some(&at) = self.requested.get(&hop) {
            if now.saturating_sub(at) < ARP_RETRY {
                return;
            }
        }
        if self.requested.len() >= MAX_NEIGHBOURS {
            self.requested.clear();
        }
        self.requested.insert(hop, now);
        self.counters.arp_requests += 1;
        tx.push(arp_frame(BROADCAST, 1, self.mac, self.ip, [0; 6], hop));
    }

    /// Re-asks for unresolved next hops and forgets datagrams that waited
    /// more than a few retries. Call a few times per second.
    pub fn poll(&mut self, now: Duration, tx: &mut Vec<Vec<u8>>) {
        let hops: Vec<Ipv4Addr> = self.pending.iter().map(|(h, _)| *h).collect();
        for hop in hops {
            if self
                .requested
                .get(&hop)
                .is_some_and(|&at| now.saturating_sub(at) >= ARP_RETRY * 3)
            {
                let before = self.pending.len();
                self.pending.retain(|(h, _)| *h != hop);
                self.counters.tx_unresolved += (before - self.pending.len()) as u64;
                self.requested.remove(&hop);
            } else {
                self.request(now, hop, tx);
            }
        }
    }

    fn udp_packet(&mut self, dst: Ipv4Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
        let udp_len = 8 + payload.len();
        let total = 20 + udp_len;
        let mut p = Vec::with_capacity(total);
        p.extend_from_slice(&[0x45, 0]);
        p.extend_from_slice(&(total as u16).to_be_bytes());
        p.extend_from_slice(&self.ip_id.to_be_bytes());
        self.ip_id = self.ip_id.wrapping_add(1);
        p.extend_from_slice(&[0x40, 0, 64, 17, 0, 0]); // DF, TTL 64, UDP
        p.extend_from_slice(&self.ip.octets());
        p.extend_from_slice(&dst.octets());
        let c = checksum(0, &p);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p.extend_from_slice(&self.port.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&(udp_len as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(payload);
        let mut c = checksum(pseudo_sum(self.ip, dst, 17, udp_len), &p[20..]);
        if c == 0 {
            c = 0xffff;
        }
        p[26..28].copy_from_slice(&c.to_be_bytes());
        p
    }
}

/// Counters of the clients' link.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ClientCounters {
    /// IP packets handed to the gateway.
    pub rx_packets: u64,
    /// IP packets delivered to clients.
    pub tx_packets: u64,
    /// ARP requests answered.
    pub arp_replies: u64,
    /// Frames dropped: not addressed to us, or neither ARP nor IP.
    pub rx_not_ours: u64,
    /// Malformed frames.
    pub rx_malformed: u64,
    /// Packets for a client whose Ethernet address we have not learnt.
    pub tx_no_neighbour: u64,
}

/// Our end of the clients' network.
pub struct ClientLink {
    mac: Mac,
    gateway: Ipv4Addr,
    neighbours: Neighbours<IpAddr>,
    counters: ClientCounters,
}

impl ClientLink {
    /// `gateway` is the address clients route through (used as the ARP
    /// sender address of our own requests).
    pub fn new(mac: Mac, gateway: Ipv4Addr) -> Self {
        Self {
            mac,
            gateway,
            neighbours: Neighbours::new(),
            counters: ClientCounters::default(),
        }
    }

    /// The counters.
    pub fn counters(&self) -> ClientCounters {
        self.counters
    }

    /// A frame from a client: returns the IP packet it carried, if any; ARP
    /// replies are appended to `tx`.
    pub fn receive(&mut self, frame: &[u8], tx: &mut Vec<Vec<u8>>) -> Option<Vec<u8>> {
        let (Some(dst), Some(src), Some(ethertype)) =
            (mac_at(frame, 0), mac_at(frame, 6), be16(frame, 12))
        else {
            self.counters.rx_malformed += 1;
            return None;
        };
        let body = frame.get(ETH_HEADER..).unwrap_or_default();
        match ethertype {
            ETH_ARP if dst == self.mac || dst == BROADCAST => {
                let Some(arp) = parse_arp(body) else {
                    self.counters.rx_malformed += 1;
                    return None;
                };
                if arp.spa != Ipv4Addr::UNSPECIFIED {
                    self.neighbours.learn(IpAddr::V4(arp.spa), arp.sha);
                }
                // Every address but the asker's own is behind us.
                if arp.op == 1 && arp.tpa != arp.spa {
                    self.counters.arp_replies += 1;
                    tx.push(arp_frame(arp.sha, 2, self.mac, arp.tpa, arp.sha, arp.spa));
                }
                None
            }
            ETH_IPV4 | ETH_IPV6 if dst == self.mac => {
                let source = if ethertype == ETH_IPV4 {
                    ipv4_at(body, 12).map(IpAddr::V4)
                } else {
                    body.get(8..24)
                        .and_then(|s| <[u8; 16]>::try_from(s).ok())
                        .map(|s| IpAddr::V6(Ipv6Addr::from(s)))
                };
                let Some(source) = source else {
                    self.counters.rx_malformed += 1;
                    return None;
                };
                if !source.is_unspecified() {
                    self.neighbours.learn(source, src);
                }
                self.counters.rx_packets += 1;
                Some(body.to_vec())
            }
            _ => {
                self.counters.rx_not_ours += 1;
                None
            }
        }
    }

    /// An IP packet for a client: its frame is appended to `tx`.
    pub fn send(&mut self, packet: &[u8], tx: &mut Vec<Vec<u8>>) {
        let dst = match packet.first().map(|b| b >> 4) {
            Some(4) => ipv4_at(packet, 16).map(IpAddr::V4),
            Some(6) => packet
                .get(24..40)
                .and_then(|s| <[u8; 16]>::try_from(s).ok())
                .map(|s| IpAddr::V6(Ipv6Addr::from(s))),
            _ => None,
        };
        let Some(dst) = dst else {
            self.counters.tx_no_neighbour += 1;
            return;
        };
        match self.neighbours.get(&dst) {
            Some(mac) => {
                self.counters.tx_packets += 1;
                let ethertype = if dst.is_ipv4() { ETH_IPV4 } else { ETH_IPV6 };
                tx.push(ethernet(mac, self.mac, ethertype, packet));
            }
            None => {
                self.counters.tx_no_neighbour += 1;
                if let IpAddr::V4(v4) = dst {
                    tx.push(arp_frame(BROADCAST, 1, self.mac, self.gateway, [0; 6], v4));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: Mac = [2, 0, 0, 0, 0, 1];
    const ROUTER: Mac = [2, 0, 0, 0, 0, 2];
    const CLIENT: Mac = [2, 0, 0, 0, 0, 3];

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn uplink() -> Uplink {
        Uplink::new(OURS, ip("192.0.2.2"), 24, ip("192.0.2.1"), 51820)
    }

    fn arp_reply_from_router() -> Vec<u8> {
        arp_frame(OURS, 2, ROUTER, ip("192.0.2.1"), OURS, ip("192.0.2.2"))
    }

    #[test]
    fn mac_parsing() {
        assert_eq!(
            parse_mac("02:6d:6f:61:74:01"),
            Some([2, 0x6d, 0x6f, 0x61, 0x74, 1])
        );
        for bad in [
            "02:6d:6f:61:74",
            "02:6d:6f:61:74:01:00",
            "2:6d:6f:61:74:01",
            "zz:6d:6f:61:74:01",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn uplink_resolves_the_gateway_then_sends_valid_udp() {
        let mut up = uplink();
        let mut tx = Vec::new();
        let dst: SocketAddr = "198.51.100.7:51821".parse().unwrap();
        up.send(Duration::ZERO, dst, b"\x01\0\0\0hello", &mut tx);
        // Only an ARP request for the gateway leaves.
        assert_eq!(tx.len(), 1);
        assert_eq!(be16(&tx[0], 12), Some(ETH_ARP));
        assert_eq!(ipv4_at(&tx[0], ETH_HEADER + 24), Some(ip("192.0.2.1")));
        tx.clear();
        up.send(Duration::from_millis(10), dst, b"second", &mut tx);
        assert!(tx.is_empty(), "no second ARP request within a second");
        assert!(up.receive(&arp_reply_from_router(), &mut tx).is_none());
        assert_eq!(tx.len(), 2, "both held datagrams flushed");
        let f = &tx[0];
        assert_eq!(mac_at(f, 0), Some(ROUTER));
        let p = &f[ETH_HEADER..];
        assert_eq!(checksum(0, &p[..20]), 0);
        assert_eq!(
            checksum(
                pseudo_sum(ip("192.0.2.2"), ip("198.51.100.7"), 17, p.len() - 20),
                &p[20..]
            ),
            0
        );
        assert_eq!(be16(p, 20), Some(51820));
        assert_eq!(be16(p, 22), Some(51821));
        assert_eq!(&p[28..], b"\x01\0\0\0hello");
        assert_eq!(up.counters().tx_datagrams, 2);
    }

    #[test]
    fn uplink_receives_only_udp_to_its_port() {
        let mut up = uplink();
        let mut tx = Vec::new();
        up.receive(&arp_reply_from_router(), &mut tx);
        // Build a datagram from the peer to us by sending one from a mirror uplink.
        let mut peer = Uplink::new(ROUTER, ip("192.0.2.1"), 24, ip("192.0.2.254"), 51820);
        let mut ptx = Vec::new();
        peer.receive(
            &arp_frame(ROUTER, 2, OURS, ip("192.0.2.2"), ROUTER, ip("192.0.2.1")),
            &mut ptx,
        );
        peer.send(
            Duration::ZERO,
            "192.0.2.2:51820".parse().unwrap(),
            b"payload",
            &mut ptx,
        );
        let frame = ptx.pop().unwrap();
        let got = up.receive(&frame, &mut tx).unwrap();
        assert_eq!(got.src, "192.0.2.1:51820".parse::<SocketAddr>().unwrap());
        assert_eq!(got.payload, b"payload");
        // A corrupted UDP checksum, another port, a truncated frame: dropped and counted.
        let mut bad = frame.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(up.receive(&bad, &mut tx).is_none());
        let mut other_port = frame.clone();
        other_port[ETH_HEADER + 23] ^= 1;
        assert!(up.receive(&other_port, &mut tx).is_none());
        for cut in 0..frame.len() {
            assert!(up.receive(&frame[..cut], &mut tx).is_none(), "{cut}");
        }
        let c = up.counters();
        assert_eq!(c.rx_datagrams, 1);
        assert!(c.rx_malformed >= 2);
        assert!(c.rx_not_wireguard >= 1);
    }

    #[test]
    fn uplink_answers_arp_only_for_its_address() {
        let mut up = uplink();
        let mut tx = Vec::new();
        let ask = |target| arp_frame(BROADCAST, 1, ROUTER, ip("192.0.2.1"), [0; 6], ip(target));
        up.receive(&ask("192.0.2.9"), &mut tx);
        assert!(tx.is_empty());
        up.receive(&ask("192.0.2.2"), &mut tx);
        assert_eq!(tx.len(), 1);
        let reply = parse_arp(&tx[0][ETH_HEADER..]).unwrap();
        assert_eq!((reply.op, reply.sha, reply.spa), (2, OURS, ip("192.0.2.2")));
    }

    #[test]
    fn unresolved_datagrams_are_dropped_and_counted() {
        let mut up = uplink();
        let mut tx = Vec::new();
        for _ in 0..MAX_PENDING + 5 {
            up.send(
                Duration::ZERO,
                "192.0.2.1:1".parse().unwrap(),
                b"x",
                &mut tx,
            );
        }
        assert_eq!(up.counters().tx_unresolved, 5);
        up.poll(Duration::from_secs(5), &mut tx);
        assert_eq!(up.counters().tx_unresolved, MAX_PENDING as u64 + 5);
        assert!(tx.iter().all(|f| be16(f, 12) == Some(ETH_ARP)));
        up.send(
            Duration::ZERO,
            "[2001:db8::1]:1".parse().unwrap(),
            b"x",
            &mut tx,
        );
        assert_eq!(up.counters().tx_no_ipv6, 1);
    }

    #[test]
    fn client_link_answers_arp_learns_and_delivers() {
        let mut link = ClientLink::new(OURS, ip("10.138.0.1"));
        let mut tx = Vec::new();
        let req = arp_frame(
            BROADCAST,
            1,
            CLIENT,
            ip("10.138.0.10"),
            [0; 6],
            ip("10.138.0.1"),
        );
        assert!(link.receive(&req, &mut tx).is_none());
        let reply = parse_arp(&tx[0][ETH_HEADER..]).unwrap();
        assert_eq!(
            (reply.op, reply.sha, reply.spa),
            (2, OURS, ip("10.138.0.1"))
        );
        tx.clear();
        let mut packet = vec![0x45, 0, 0, 20, 0, 0, 0, 0, 64, 1, 0, 0];
        packet.extend_from_slice(&[10, 138, 0, 10, 192, 0, 2, 80]);
        let frame = ethernet(OURS, CLIENT, ETH_IPV4, &packet);
        assert_eq!(link.receive(&frame, &mut tx), Some(packet.clone()));
        let not_ours = ethernet(ROUTER, CLIENT, ETH_IPV4, &packet);
        assert_eq!(link.receive(&not_ours, &mut tx), None);
        let mut back = packet.clone();
        back[12..16].copy_from_slice(&[192, 0, 2, 80]);
        back[16..20].copy_from_slice(&[10, 138, 0, 10]);
        link.send(&back, &mut tx);
        assert_eq!(tx.len(), 1);
        assert_eq!(mac_at(&tx[0], 0), Some(CLIENT));
        back[19] = 99;
        link.send(&back, &mut tx);
        assert_eq!(link.counters().tx_no_neighbour, 1);
        assert_eq!(link.counters().rx_not_ours, 1);
        assert_eq!(link.counters().rx_packets, 1);
    }
}
