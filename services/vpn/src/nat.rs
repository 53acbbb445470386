//! Source NAT ("masquerade") of client packets to the tunnel's own address,
//! as a VPN provider expects: its side of the tunnel only accepts the
//! `Address` it handed out. Client VMs keep their own addresses behind the
//! gateway.
//!
//! Mappings are endpoint-dependent: an answer must come from exactly the
//! remote address and port the client's packet went to, so nothing
//! unsolicited gets in. TCP and UDP map ports (the client's port is kept when
//! free), ICMP and ICMPv6 echo map the identifier, and ICMPv4 errors about a
//! mapped flow are translated back (outer and quoted inner header). Anything
//! else is refused. The table is bounded; idle mappings expire.
//!
//! Clients cannot evict each other's mappings at will: each holds at most
//! [`MAX_PER_CLIENT`] (a client past it loses its own least recently used
//! one), and when the whole table ([`MAX_ENTRIES`]) is full the mapping
//! evicted is the least recently used one of the client holding the most
//! (the one asking, if it holds as many). A client within its fair share of
//! the table therefore never loses a mapping to another's flood.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::net::IpAddr;
use core::time::Duration;

use crate::packet::{self, IpInfo, ICMP, ICMPV6, TCP, UDP};

/// Most mappings held at once.
pub const MAX_ENTRIES: usize = 4096;
/// Most mappings one client (source address) holds at once: past it, a new
/// flow of that client replaces its own least recently used mapping.
pub const MAX_PER_CLIENT: usize = 1024;
/// Idle time after which a TCP mapping expires (RFC 5382: at least 2 h 4 min).
pub const TCP_TIMEOUT: Duration = Duration::from_secs(7440);
/// Idle time after which a UDP mapping expires.
pub const UDP_TIMEOUT: Duration = Duration::from_secs(180);
/// Idle time after which an ICMP echo mapping expires.
pub const ICMP_TIMEOUT: Duration = Duration::from_secs(30);
/// Lowest port given out when the client's own port is taken.
const FIRST_PORT: u16 = 1024;

/// Why a packet was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatError {
    /// Outgoing: a protocol, ICMP type or fragment we cannot map, or a
    /// client using the tunnel's own address as its source.
    Unsupported,
    /// Incoming: nothing was sent to where this comes from, or it is not
    /// addressed to the tunnel's address.
    NoMapping,
}

/// Our side of a mapping, as the remote sees it (the address is the tunnel's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Outside {
    protocol: u8,
    port: u16,
    remote: IpAddr,
    remote_port: u16,
}

/// The client's side of a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Inside {
    protocol: u8,
    client: IpAddr,
    port: u16,
    remote: IpAddr,
    remote_port: u16,
}

struct Entry {
    inside: Inside,
    last_used: Duration,
}

/// Where the mappable fields of a packet are.
struct Fields {
    /// Our port (outgoing: source port; incoming: destination port) or echo id.
    local_at: usize,
    /// The remote's port, or 0 for ICMP.
    remote_port: u16,
    /// The transport checksum.
    checksum_at: usize,
    /// UDP: a zero checksum means none.
    udp: bool,
}

/// The NAT state.
pub struct Nat {
    v4: Option<IpAddr>,
    v6: Option<IpAddr>,
    by_outside: BTreeMap<Outside, Entry>,
    by_inside: BTreeMap<Inside, Outside>,
    /// Mappings held per client address.
    per_client: BTreeMap<IpAddr, usize>,
    next_port: u16,
    evicted: u64,
}

fn timeout(protocol: u8) -> Duration {
    match protocol {
        TCP => TCP_TIMEOUT,
        UDP => UDP_TIMEOUT,
        _ => ICMP_TIMEOUT,
    }
}

/// The mappable fields of a packet whose transport header is at `off`.
/// `outgoing`: a client's packet (source port is ours); else an answer.
fn fields(b: &[u8], info: &IpInfo, off: usize, outgoing: bool) -> Option<Fields> {
    let (local_at, remote_at) = if outgoing {
        (off, off + 2)
    } else {
        (off + 2, off)
    };
    match info.protocol {
        TCP | UDP => {
            let udp = info.protocol == UDP;
            let checksum_at = off + if udp { 6 } else { 16 };
            (checksum_at + 2 <= b.len()).then_some(())?;
            Some(Fields {
                local_at,
                remote_port: packet::get_u16(b, remote_at)?,
                checksum_at,
                udp,
            })
        }
        ICMP | ICMPV6 => {
            let echo = match (info.protocol, outgoing) {
                (ICMP, true) => 8,
                (ICMP, false) => 0,
                (_, true) => 128,
                (_, false) => 129,
            };
            (*b.get(off)? == echo && *b.get(off + 1)? == 0).then_some(())?;
            packet::get_u16(b, off + 4)?;
            Some(Fields {
                local_at: off + 4,
                remote_port: 0,
                checksum_at: off + 2,
                udp: false,
            })
        }
        _ => None,
    }
}

fn octets(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

impl Nat {
    /// Masquerades IPv4 clients as `v4` and IPv6 clients as `v6`; a family
    /// without an address is passed through unchanged.
    pub fn new(v4: Option<IpAddr>, v6: Option<IpAddr>) -> Self {
        Self {
            v4: v4.filter(IpAddr::is_ipv4),
            v6: v6.filter(IpAddr::is_ipv6),
            by_outside: BTreeMap::new(),
            by_inside: BTreeMap::new(),
            per_client: BTreeMap::new(),
            next_port: FIRST_PORT,
            evicted: 0,
        }
    }

    /// Mappings currently held.
    pub fn len(&self) -> usize {
        self.by_outside.len()
    }

    /// Whether no mapping is held.
    pub fn is_empty(&self) -> bool {
        self.by_outside.is_empty()
    }

    /// Mappings evicted because the table was full.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Mappings held for the client at `client`.
    pub fn client_len(&self, client: IpAddr) -> usize {
        self.per_client.get(&client).copied().unwrap_or(0)
    }

    /// The tunnel address packets of `family_of`'s family are masqueraded
    /// as; `None`: the tunnel has no address of that family.
    pub fn address_for(&self, family_of: IpAddr) -> Option<IpAddr> {
        self.own(family_of)
    }

    fn own(&self, family_of: IpAddr) -> Option<IpAddr> {
        if family_of.is_ipv4() {
            self.v4
        } else {
            self.v6
        }
    }

    /// Forgets mappings idle for longer than their protocol's timeout.
    pub fn expire(&mut self, now: Duration) {
        let stale: Vec<Outside> = self
            .by_outside
            .iter()
            .filter(|(o, e)| now.saturating_sub(e.last_used) > timeout(o.protocol))
            .map(|(o, _)| *o)
            .collect();
        for o in stale {
            self.remove(o);
        }
    }

    /// Forgets one mapping.
    fn remove(&mut self, o: Outside) -> bool {
        let Some(e) = self.by_outside.remove(&o) else {
            return false;
        };
        self.by_inside.remove(&e.inside);
        if let Some(n) = self.per_client.get_mut(&e.inside.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_client.remove(&e.inside.client);
            }
        }
        true
    }

    /// Evicts the least recently used mapping of `client`.
    fn evict_oldest_of(&mut self, client: IpAddr) {
        let oldest = self
            .by_outside
            .iter()
            .filter(|(_, e)| e.inside.client == client)
            .min_by_key(|(_, e)| e.last_used)
            .map(|(o, _)| *o);
        if let Some(o) = oldest {
            if self.remove(o) {
                self.evicted += 1;
            }
        }
    }

    fn allocate(&mut self, now: Duration, inside: Inside) -> Outside {
        if let Some(&o) = self.by_inside.get(&inside) {
            if let Some(e) = self.by_outside.get_mut(&o) {
                e.last_used = now;
            }
            return o;
        }
        let mine = self.client_len(inside.client);
        if mine >= MAX_PER_CLIENT {
            self.evict_oldest_of(inside.client);
        } else if self.by_outside.len() >= MAX_ENTRIES {
            // The client holding the most pays; the asker when it holds as many.
            let victim = self
                .per_client
                .iter()
                .max_by_key(|(_, n)| **n)
                .filter(|(_, n)| **n > mine)
                .map(|(c, _)| *c)
                .unwrap_or(inside.client);
            self.evict_oldest_of(victim);
        }
        let mut candidate = Outside {
            protocol: inside.protocol,
            port: inside.port,
            remote: inside.remote,
            remote_port: inside.remote_port,
        };
        // At most MAX_ENTRIES ports are taken, so this ends quickly.
        while self.by_outside.contains_key(&candidate) {
            candidate.port = self.next_port;
            self.next_port = self.next_port.checked_add(1).unwrap_or(FIRST_PORT);
        }
        self.by_outside.insert(
            candidate,
            Entry {
                inside,
                last_used: now,
            },
        );
        self.by_inside.insert(inside, candidate);
        *self.per_client.entry(inside.client).or_insert(0) += 1;
        candidate
    }

    /// A client's packet about to enter the tunnel: its source becomes the
    /// tunnel's address and a mapped port. `b` holds exactly the packet.
    pub fn outbound(&mut self, now: Duration, b: &mut [u8], info: &IpInfo) -> Result<(), NatError> {
        let Some(own) = self.own(info.src) else {
            return Ok(());
        };
        if info.src == own {
            return Err(NatError::Unsupported);
        }
        let off = info.l4_offset.ok_or(NatError::Unsupported)?;
        let f = fields(b, info, off, true).ok_or(NatError::Unsupported)?;
        let port = packet::get_u16(b, f.local_at).ok_or(NatError::Unsupported)?;
        let outside = self.allocate(
            now,
            Inside {
                protocol: info.protocol,
                client: info.src,
                port,
                remote: info.dst,
                remote_port: f.remote_port,
            },
        );
        if !packet::rewrite_address(b, info, true, own) {
            return Err(NatError::Unsupported);
        }
        if info.protocol == ICMPV6 {
            packet::adjust_checksum(b, f.checksum_at, &octets(info.src), &octets(own));
        }
        packet::set_u16(b, f.local_at, outside.port, f.checksum_at, f.udp);
        Ok(())
    }

    /// A packet out of the tunnel: its destination becomes the client of the
    /// mapping it answers. `b` holds exactly the packet.
    pub fn inbound(&mut self, now: Duration, b: &mut [u8], info: &IpInfo) -> Result<(), NatError> {
        let Some(own) = self.own(info.dst) else {
            return Ok(());
        };
        if info.dst != own {
            return Err(NatError::NoMapping);
        }
        let off = info.l4_offset.ok_or(NatError::NoMapping)?;
        if info.protocol == ICMP && matches!(b.get(off), Some(3 | 11 | 12)) {
            return self.inbound_icmp_error(now, b, info, off, own);
        }
        let f = fields(b, info, off, false).ok_or(NatError::NoMapping)?;
        let port = packet::get_u16(b, f.local_at).ok_or(NatError::NoMapping)?;
        let outside = Outside {
            protocol: info.protocol,
            port,
            remote: info.src,
            remote_port: f.remote_port,
        };
        let entry = self
            .by_outside
            .get_mut(&outside)
            .ok_or(NatError::NoMapping)?;
        entry.last_used = now;
        let inside = entry.inside;
        if !packet::rewrite_address(b, info, false, inside.client) {
            return Err(NatError::NoMapping);
        }
        if info.protocol == ICMPV6 {
            packet::adjust_checksum(b, f.checksum_at, &octets(own), &octets(inside.client));
        }
        packet::set_u16(b, f.local_at, inside.port, f.checksum_at, f.udp);
        Ok(())
    }

    /// An ICMPv4 error quoting one of our mapped packets: the outer
    /// destination and the quoted source go back to the client.
    fn inbound_icmp_error(
        &mut self,
        now: Duration,
        b: &mut [u8],
        info: &IpInfo,
        off: usize,
        own: IpAddr,
    ) -> Result<(), NatError> {
        let inner = off + 8;
        let quoted = b.get(inner..).ok_or(NatError::NoMapping)?;
        let &v_ihl = quoted.first().ok_or(NatError::NoMapping)?;
        let ihl = usize::from(v_ihl & 0x0f) * 4;
        if v_ihl >> 4 != 4 || ihl < 20 || quoted.len() < ihl + 8 {
            return Err(NatError::NoMapping);
        }
        let protocol = quoted[9];
        let src =
            IpAddr::from(<[u8; 4]>::try_from(&quoted[12..16]).map_err(|_| NatError::NoMapping)?);
        let dst =
            IpAddr::from(<[u8; 4]>::try_from(&quoted[16..20]).map_err(|_| NatError::NoMapping)?);
        if src != own {
            return Err(NatError::NoMapping);
        }
        let l4 = ihl;
        let (port_at, remote_port) = match protocol {
            TCP | UDP => (l4, u16::from_be_bytes([quoted[l4 + 2], quoted[l4 + 3]])),
            ICMP if quoted[l4] == 8 => (l4 + 4, 0),
            _ => return Err(NatError::NoMapping),
        };
        let port = u16::from_be_bytes([quoted[port_at], quoted[port_at + 1]]);
        let outside = Outside {
            protocol,
            port,
            remote: dst,
            remote_port,
        };
        let entry = self
            .by_outside
            .get_mut(&outside)
            .ok_or(NatError::NoMapping)?;
        entry.last_used = now;
        let inside = entry.inside;
        let IpAddr::V4(client) = inside.client else {
            return Err(NatError::NoMapping);
        };
        if !packet::rewrite_address(b, info, false, inside.client) {
            return Err(NatError::NoMapping);
        }
        // Rewrite the quote, then recompute its header checksum and the
        // ICMP checksum (which covers the quote) from scratch.
        let q = &mut b[inner..];
        q[12..16].copy_from_slice(&client.octets());
        q[port_at..port_at + 2].copy_from_slice(&inside.port.to_be_bytes());
        q[10..12].copy_from_slice(&[0, 0]);
        let c = packet::internet_checksum(&q[..ihl]);
        q[10..12].copy_from_slice(&c.to_be_bytes());
        let end = info.len.min(b.len());
        b[off + 2..off + 4].copy_from_slice(&[0, 0]);
        let c = packet::internet_checksum(&b[off..end]);
        b[off + 2..off + 4].copy_from_slice(&c.to_be_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::tests::{checksums_valid, v4};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nat() -> Nat {
        Nat::new(Some(ip("10.64.0.2")), None)
    }

    fn out(n: &mut Nat, p: &mut [u8]) -> Result<(), NatError> {
        let info = packet::parse(p).unwrap();
        n.outbound(Duration::ZERO, p, &info)
    }

    fn back(n: &mut Nat, p: &mut [u8]) -> Result<(), NatError> {
        let info = packet::parse(p).unwrap();
        n.inbound(Duration::from_secs(1), p, &info)
    }

    #[test]
    fn ports_kept_when_free_remapped_on_collision() {
        let mut n = nat();
        let mut a = v4(UDP, [10, 137, 0, 5], [1, 1, 1, 1], 4000, 53, &[], b"a");
        let mut b = v4(UDP, [10, 137, 0, 6], [1, 1, 1, 1], 4000, 53, &[], b"b");
        out(&mut n, &mut a).unwrap();
        out(&mut n, &mut b).unwrap();
        assert_eq!(&a[12..16], &[10, 64, 0, 2]);
        assert_eq!(&b[12..16], &[10, 64, 0, 2]);
        assert_eq!(packet::get_u16(&a, 20), Some(4000));
        let b_port = packet::get_u16(&b, 20).unwrap();
        assert_ne!(b_port, 4000);
        assert!(checksums_valid(&a) && checksums_valid(&b));
        // The same flow again reuses its mapping.
        let mut a2 = v4(UDP, [10, 137, 0, 5], [1, 1, 1, 1], 4000, 53, &[], b"a2");
        out(&mut n, &mut a2).unwrap();
        assert_eq!(packet::get_u16(&a2, 20), Some(4000));
        assert_eq!(n.len(), 2);
        // Answers go to the right client.
        let mut ra = v4(UDP, [1, 1, 1, 1], [10, 64, 0, 2], 53, 4000, &[], b"ra");
        let mut rb = v4(UDP, [1, 1, 1, 1], [10, 64, 0, 2], 53, b_port, &[], b"rb");
        back(&mut n, &mut ra).unwrap();
        back(&mut n, &mut rb).unwrap();
        assert_eq!(
            (&ra[16..20], packet::get_u16(&ra, 22)),
            (&[10, 137, 0, 5][..], Some(4000))
        );
        assert_eq!(
            (&rb[16..20], packet::get_u16(&rb, 22)),
            (&[10, 137, 0, 6][..], Some(4000))
        );
        assert!(checksums_valid(&ra) && checksums_valid(&rb));
    }

    #[test]
    fn only_the_exact_remote_endpoint_gets_in() {
        let mut n = nat();
        let mut a = v4(TCP, [10, 137, 0, 5], [1, 1, 1, 1], 4000, 443, &[], b"");
        out(&mut n, &mut a).unwrap();
        for (src, sport, dport) in [
            ([1, 1, 1, 2], 443, 4000),
            ([1, 1, 1, 1], 444, 4000),
            ([1, 1, 1, 1], 443, 4001),
        ] {
            let mut r = v4(TCP, src, [10, 64, 0, 2], sport, dport, &[], b"");
            assert_eq!(back(&mut n, &mut r), Err(NatError::NoMapping));
        }
        let mut udp = v4(UDP, [1, 1, 1, 1], [10, 64, 0, 2], 443, 4000, &[], b"");
        assert_eq!(back(&mut n, &mut udp), Err(NatError::NoMapping));
        // Straight to a client's own address: refused while masquerading.
        let mut direct = v4(TCP, [1, 1, 1, 1], [10, 137, 0, 5], 443, 4000, &[], b"");
        assert_eq!(back(&mut n, &mut direct), Err(NatError::NoMapping));
        // A client claiming the tunnel's address.
        let mut spoof = v4(UDP, [10, 64, 0, 2], [1, 1, 1, 1], 4000, 53, &[], b"");
        assert_eq!(out(&mut n, &mut spoof), Err(NatError::Unsupported));
    }

    #[test]
    fn expiry_and_eviction() {
        let mut n = nat();
        let mut a = v4(UDP, [10, 137, 0, 5], [1, 1, 1, 1], 4000, 53, &[], b"");
        out(&mut n, &mut a).unwrap();
        n.expire(UDP_TIMEOUT);
        assert_eq!(n.len(), 1);
        n.expire(UDP_TIMEOUT + Duration::from_secs(1));
        assert!(n.is_empty());
        // One client past its own limit replaces its own oldest mappings.
        for port in 0..(MAX_PER_CLIENT as u16 + 3) {
            let mut p = v4(UDP, [10, 137, 0, 5], [1, 1, 1, 1], port, 53, &[], b"");
            out(&mut n, &mut p).unwrap();
        }
        assert_eq!(n.len(), MAX_PER_CLIENT);
        assert_eq!(n.client_len(ip("10.137.0.5")), MAX_PER_CLIENT);
        assert_eq!(n.evicted(), 3);
        let mut first = v4(UDP, [1, 1, 1, 1], [10, 64, 0, 2], 53, 0, &[], b"");
        assert_eq!(back(&mut n, &mut first), Err(NatError::NoMapping));
        let mut last = v4(UDP, [1, 1, 1, 1], [10, 64, 0, 2], 53, 1026, &[], b"");
        assert_eq!(back(&mut n, &mut last), Ok(()));
    }

    #[test]
    fn a_flooding_client_cannot_evict_another_clients_mappings() {
        let mut n = nat();
        let t = |s| Duration::from_secs(s);
        // Client A: ten flows, the oldest of the table.
        for port in 0..10u16 {
            let mut p = v4(
                TCP,
                [10, 137, 0, 5],
                [1, 1, 1, 1],
                5000 + port,
                443,
                &[],
                b"",
            );
            let info = packet::parse(&p).unwrap();
            n.outbound(t(1), &mut p, &info).unwrap();
        }
        // Five other clients open as many flows as they can: the table
        // fills, and then each pays for its own new flows.
        for c in 6..11u8 {
            for port in 0..(MAX_PER_CLIENT as u16 + 50) {
                let mut p = v4(UDP, [10, 137, 0, c], [2, 2, 2, 2], port, 53, &[], b"");
                let info = packet::parse(&p).unwrap();
                n.outbound(t(2), &mut p, &info).unwrap();
            }
        }
        assert_eq!(n.len(), MAX_ENTRIES);
        assert_eq!(
            n.client_len(ip("10.137.0.5")),
            10,
            "A kept all of its flows"
        );
        for c in 6..11u8 {
            assert!(n.client_len(IpAddr::from([10, 137, 0, c])) <= MAX_PER_CLIENT);
        }
        // A's answers still come in.
        for port in 0..10u16 {
            let mut r = v4(
                TCP,
                [1, 1, 1, 1],
                [10, 64, 0, 2],
                443,
                5000 + port,
                &[],
                b"",
            );
            let info = packet::parse(&r).unwrap();
            assert_eq!(n.inbound(t(3), &mut r, &info), Ok(()), "port {port}");
            assert_eq!(&r[16..20], &[10, 137, 0, 5]);
        }
    }

    #[test]
    fn other_protocols_and_fragments_refused_ipv6_without_address_passes() {
        let mut n = nat();
        let mut gre = v4(UDP, [10, 137, 0, 5], [1, 1, 1, 1], 1, 2, &[], b"");
        gre[9] = 47;
        assert_eq!(out(&mut n, &mut gre), Err(NatError::Unsupported));
        let mut frag = v4(UDP, [10, 137, 0, 5], [1, 1, 1, 1], 1, 2, &[], b"");
        frag[7] = 8; // fragment offset 64
        assert_eq!(out(&mut n, &mut frag), Err(NatError::Unsupported));
        let mut v6 = vec![0u8; 48];
        v6[0] = 0x60;
        v6[5] = 8;
        v6[6] = UDP;
        let before = v6.clone();
        let info = packet::parse(&v6).unwrap();
        assert_eq!(n.outbound(Duration::ZERO, &mut v6, &info), Ok(()));
        assert_eq!(v6, before);
    }

    fn icmp(src: [u8; 4], dst: [u8; 4], kind: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
        let total = 28 + body.len();
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[8] = 64;
        p[9] = ICMP;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        let c = packet::internet_checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p[20] = kind;
        p[24..28].copy_from_slice(&rest);
        p[28..].copy_from_slice(body);
        let c = packet::internet_checksum(&p[20..]);
        p[22..24].copy_from_slice(&c.to_be_bytes());
        p
    }

    fn icmp_valid(p: &[u8]) -> bool {
        packet::internet_checksum(&p[..20]) == 0 && packet::internet_checksum(&p[20..]) == 0
    }

    #[test]
    fn icmp_echo_ids_mapped_and_errors_translated_back() {
        let mut n = nat();
        let mut ping = icmp(
            [10, 137, 0, 5],
            [9, 9, 9, 9],
            8,
            [0x12, 0x34, 0, 1],
            b"ping",
        );
        out(&mut n, &mut ping).unwrap();
        assert_eq!(&ping[12..16], &[10, 64, 0, 2]);
        assert!(icmp_valid(&ping));
        let id = [ping[24], ping[25]];
        let mut pong = icmp(
            [9, 9, 9, 9],
            [10, 64, 0, 2],
            0,
            [id[0], id[1], 0, 1],
            b"ping",
        );
        back(&mut n, &mut pong).unwrap();
        assert_eq!(
            (&pong[16..20], &pong[24..26]),
            (&[10, 137, 0, 5][..], &[0x12, 0x34][..])
        );
        assert!(icmp_valid(&pong));
        // A router's "port unreachable" about a mapped UDP flow (port remapped).
        let mut first = v4(UDP, [10, 137, 0, 5], [1, 1, 1, 1], 4000, 9, &[], b"x");
        let mut other = v4(UDP, [10, 137, 0, 6], [1, 1, 1, 1], 4000, 9, &[], b"y");
        out(&mut n, &mut first).unwrap();
        out(&mut n, &mut other).unwrap();
        let mut err = icmp([203, 0, 113, 1], [10, 64, 0, 2], 3, [0; 4], &other[..28]);
        err[21] = 3;
        let c = {
            err[22..24].copy_from_slice(&[0, 0]);
            packet::internet_checksum(&err[20..])
        };
        err[22..24].copy_from_slice(&c.to_be_bytes());
        back(&mut n, &mut err).unwrap();
        assert_eq!(&err[16..20], &[10, 137, 0, 6]);
        assert_eq!(&err[28 + 12..28 + 16], &[10, 137, 0, 6], "quoted source");
        assert_eq!(packet::get_u16(&err, 48), Some(4000), "quoted source port");
        assert!(icmp_valid(&err));
        assert_eq!(
            packet::internet_checksum(&err[28..48]),
            0,
            "quoted header checksum"
        );
        // An error about something we never sent.
        let mut stray = icmp([203, 0, 113, 1], [10, 64, 0, 2], 3, [0; 4], &first[..28]);
        stray[28 + 23] ^= 1; // another destination port
        assert_eq!(back(&mut n, &mut stray), Err(NatError::NoMapping));
        // Truncated quotes are refused, not read past.
        for cut in 28..48 {
            let mut short = err.clone();
            short.truncate(cut);
            short[2..4].copy_from_slice(&(cut as u16).to_be_bytes());
            let info = packet::parse(&short).unwrap();
            let _ = n.inbound(Duration::ZERO, &mut short, &info);
        }
    }
}
