//! Packet crafting and checking for the firewall's tests. Packets are
//! built and verified with smoltcp's wire types, independently of the
//! firewall's own checksum code.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use firewall::{
    ClientConfig, ClientId, ClientSideConfig, Config, DnsRedirect, Firewall, Instant, Interface,
    Transmit, UplinkConfig,
};
use qubes::firewall_rules::{Family, LoadedRules, RuleSet};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, Icmpv4Packet, Icmpv6Packet, Icmpv6Repr,
    IpAddress, IpProtocol, Ipv4Packet, Ipv6Packet, NdiscRepr, RawHardwareAddress, TcpPacket,
    UdpPacket,
};

pub const FW_CLIENT_MAC: EthernetAddress = EthernetAddress([0xfe, 0xff, 0xff, 0xff, 0xff, 0xff]);
pub const FW_UPLINK_MAC: EthernetAddress = EthernetAddress([0x00, 0x16, 0x3e, 0x5e, 0x6c, 0x01]);
pub const GATEWAY_MAC: EthernetAddress = EthernetAddress([0x00, 0x16, 0x3e, 0x5e, 0x6c, 0x99]);
pub const A_MAC: EthernetAddress = EthernetAddress([0x00, 0x16, 0x3e, 0x5e, 0x6c, 0x0a]);
pub const B_MAC: EthernetAddress = EthernetAddress([0x00, 0x16, 0x3e, 0x5e, 0x6c, 0x0b]);

pub const UPLINK_IP: Ipv4Addr = Ipv4Addr::new(10, 137, 0, 6);
pub const UPLINK_GW: Ipv4Addr = Ipv4Addr::new(10, 137, 0, 1);
pub const CLIENT_GW: Ipv4Addr = Ipv4Addr::new(10, 138, 0, 1);
pub const A_IP: Ipv4Addr = Ipv4Addr::new(10, 138, 0, 10);
pub const B_IP: Ipv4Addr = Ipv4Addr::new(10, 138, 0, 11);
pub const UPSTREAM_DNS: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 53);
pub const VIRTUAL_DNS: Ipv4Addr = Ipv4Addr::new(10, 139, 1, 1);
pub const WEB: Ipv4Addr = Ipv4Addr::new(93, 184, 216, 34);

pub const UPLINK_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 6);
pub const UPLINK_GW6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
pub const CLIENT_GW6: Ipv6Addr = Ipv6Addr::new(0xfd09, 0x24ef, 0x4179, 0, 0, 0, 0xa89, 1);
pub const A_IP6: Ipv6Addr = Ipv6Addr::new(0xfd09, 0x24ef, 0x4179, 0, 0, 0, 0xa8a, 10);
pub const WEB6: Ipv6Addr = Ipv6Addr::new(0x2606, 0x2800, 0x220, 1, 0x248, 0x1893, 0x25c8, 0x1946);

pub const A: ClientId = ClientId(1);
pub const B: ClientId = ClientId(2);

pub fn t(secs: i64) -> Instant {
    Instant::from_secs(secs)
}

pub fn config(with_ipv6: bool) -> Config {
    let mut config = Config::new(
        UplinkConfig {
            mac: FW_UPLINK_MAC,
            ip4: UPLINK_IP,
            gateway4: UPLINK_GW,
            ip6: with_ipv6.then_some(UPLINK_IP6),
            gateway6: with_ipv6.then_some(UPLINK_GW6),
            gateway_mac: Some(GATEWAY_MAC),
        },
        ClientSideConfig {
            mac: FW_CLIENT_MAC,
            gateway4: CLIENT_GW,
            gateway6: Some(CLIENT_GW6),
        },
        &[UPSTREAM_DNS],
    );
    if with_ipv6 {
        config.dns.push(DnsRedirect {
            virtual_server: IpAddr::V6(firewall::config::QUBES_DNS6[0]),
            upstream: Some(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 53))),
        });
    }
    config
}

/// Rules as dom0 would write them: `entries` are (NNNN, rule) pairs.
pub fn rules(family: Family, policy: &str, entries: &[(&str, &str)]) -> RuleSet {
    let mut all: Vec<(&str, &[u8])> = vec![("policy", policy.as_bytes())];
    all.extend(entries.iter().map(|(k, v)| (*k, v.as_bytes())));
    let loaded = LoadedRules::load(family, all);
    assert_eq!(loaded.error, None);
    loaded.rules
}

/// A firewall with clients A and B, both allowed everything.
/// A deterministic random source for tests (xorshift64).
pub struct TestRandom(pub u64);

impl firewall::RandomSource for TestRandom {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), firewall::NoRandomness> {
        for b in buf {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *b = (self.0 >> 24) as u8;
        }
        Ok(())
    }
}

/// A firewall whose resolver has a (test) random source.
pub fn new_firewall(config: Config) -> Firewall {
    Firewall::with_random(config, Box::new(TestRandom(0x6d6f_6174_0001)))
}

pub fn firewall(with_ipv6: bool) -> Firewall {
    let mut fw = new_firewall(config(with_ipv6));
    fw.add_client(
        A,
        ClientConfig {
            ip4: A_IP,
            ip6: Some(A_IP6),
            mac: Some(A_MAC),
        },
    );
    fw.add_client(
        B,
        ClientConfig {
            ip4: B_IP,
            ip6: None,
            mac: Some(B_MAC),
        },
    );
    let accept = RuleSet::accept_all();
    fw.set_rules(IpAddr::V4(A_IP), accept.clone());
    fw.set_rules(IpAddr::V6(A_IP6), accept.clone());
    fw.set_rules(IpAddr::V4(B_IP), accept);
    fw
}

pub fn eth(
    src: EthernetAddress,
    dst: EthernetAddress,
    ethertype: EthernetProtocol,
    payload: &[u8],
) -> Vec<u8> {
    let mut buf = vec![0u8; 14 + payload.len()];
    let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
    frame.set_src_addr(src);
    frame.set_dst_addr(dst);
    frame.set_ethertype(ethertype);
    frame.payload_mut().copy_from_slice(payload);
    buf
}

pub fn ip4(src: Ipv4Addr, dst: Ipv4Addr, protocol: IpProtocol, l4: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 20 + l4.len()];
    let mut ip = Ipv4Packet::new_unchecked(&mut buf[..]);
    ip.set_version(4);
    ip.set_header_len(20);
    ip.set_total_len((20 + l4.len()) as u16);
    ip.set_ident(0x4242);
    ip.set_hop_limit(64);
    ip.set_next_header(protocol);
    ip.set_src_addr(src);
    ip.set_dst_addr(dst);
    ip.fill_checksum();
    ip.payload_mut().copy_from_slice(l4);
    buf
}

pub fn ip6(src: Ipv6Addr, dst: Ipv6Addr, protocol: IpProtocol, l4: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 40 + l4.len()];
    let mut ip = Ipv6Packet::new_unchecked(&mut buf[..]);
    ip.set_version(6);
    ip.set_payload_len(l4.len() as u16);
    ip.set_hop_limit(64);
    ip.set_next_header(protocol);
    ip.set_src_addr(src);
    ip.set_dst_addr(dst);
    ip.payload_mut().copy_from_slice(l4);
    buf
}

pub fn ip_addr(a: IpAddr) -> IpAddress {
    match a {
        IpAddr::V4(a) => IpAddress::Ipv4(a),
        IpAddr::V6(a) => IpAddress::Ipv6(a),
    }
}

#[derive(Clone, Copy, Default)]
pub struct Flags {
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
}

pub const SYN: Flags = Flags {
    syn: true,
    ack: false,
    fin: false,
    rst: false,
};
pub const SYN_ACK: Flags = Flags {
    syn: true,
    ack: true,
    fin: false,
    rst: false,
};
pub const ACK: Flags = Flags {
    syn: false,
    ack: true,
    fin: false,
    rst: false,
};
pub const FIN: Flags = Flags {
    syn: false,
    ack: true,
    fin: true,
    rst: false,
};
pub const RST: Flags = Flags {
    syn: false,
    ack: false,
    fin: false,
    rst: true,
};

pub fn tcp_segment(
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
    flags: Flags,
    payload: &[u8],
) -> Vec<u8> {
    let mut buf = vec![0u8; 20 + payload.len()];
    let mut tcp = TcpPacket::new_unchecked(&mut buf[..]);
    tcp.set_src_port(sport);
    tcp.set_dst_port(dport);
    tcp.set_header_len(20);
    tcp.set_seq_number(smoltcp::wire::TcpSeqNumber(1000));
    tcp.set_window_len(1024);
    tcp.set_syn(flags.syn);
    tcp.set_ack(flags.ack);
    tcp.set_fin(flags.fin);
    tcp.set_rst(flags.rst);
    tcp.payload_mut().copy_from_slice(payload);
    tcp.fill_checksum(&ip_addr(src), &ip_addr(dst));
    buf
}

pub fn udp_datagram(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 8 + payload.len()];
    let mut udp = UdpPacket::new_unchecked(&mut buf[..]);
    udp.set_src_port(sport);
    udp.set_dst_port(dport);
    udp.set_len((8 + payload.len()) as u16);
    udp.payload_mut().copy_from_slice(payload);
    udp.fill_checksum(&ip_addr(src), &ip_addr(dst));
    buf
}

fn wrap(src: IpAddr, dst: IpAddr, protocol: IpProtocol, l4: &[u8]) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => ip4(s, d, protocol, l4),
        (IpAddr::V6(s), IpAddr::V6(d)) => ip6(s, d, protocol, l4),
        _ => panic!("mixed families"),
    }
}

pub fn tcp(
    src: impl Into<IpAddr>,
    sport: u16,
    dst: impl Into<IpAddr>,
    dport: u16,
    flags: Flags,
) -> Vec<u8> {
    let (src, dst) = (src.into(), dst.into());
    wrap(
        src,
        dst,
        IpProtocol::Tcp,
        &tcp_segment(src, sport, dst, dport, flags, b"hello"),
    )
}

pub fn udp(
    src: impl Into<IpAddr>,
    sport: u16,
    dst: impl Into<IpAddr>,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let (src, dst) = (src.into(), dst.into());
    wrap(
        src,
        dst,
        IpProtocol::Udp,
        &udp_datagram(src, sport, dst, dport, payload),
    )
}

pub fn icmp4_echo(src: Ipv4Addr, dst: Ipv4Addr, ident: u16, request: bool) -> Vec<u8> {
    let mut l4 = vec![0u8; 8 + 4];
    l4[0] = if request { 8 } else { 0 };
    l4[4..6].copy_from_slice(&ident.to_be_bytes());
    l4[6..8].copy_from_slice(&7u16.to_be_bytes());
    l4[8..].copy_from_slice(b"ping");
    Icmpv4Packet::new_unchecked(&mut l4[..]).fill_checksum();
    ip4(src, dst, IpProtocol::Icmp, &l4)
}

pub fn icmp6_echo(src: Ipv6Addr, dst: Ipv6Addr, ident: u16, request: bool) -> Vec<u8> {
    let mut l4 = vec![0u8; 8 + 4];
    l4[0] = if request { 128 } else { 129 };
    l4[4..6].copy_from_slice(&ident.to_be_bytes());
    l4[8..].copy_from_slice(b"ping");
    Icmpv6Packet::new_unchecked(&mut l4[..]).fill_checksum(&src, &dst);
    ip6(src, dst, IpProtocol::Icmpv6, &l4)
}

/// An ICMPv4 error of `icmp_type`/`code` from `src` quoting `quoted`.
pub fn icmp4_error(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    icmp_type: u8,
    code: u8,
    quoted: &[u8],
) -> Vec<u8> {
    let mut l4 = vec![0u8; 8 + quoted.len()];
    l4[0] = icmp_type;
    l4[1] = code;
    l4[8..].copy_from_slice(quoted);
    Icmpv4Packet::new_unchecked(&mut l4[..]).fill_checksum();
    ip4(src, dst, IpProtocol::Icmp, &l4)
}

pub fn from_a(ip: &[u8]) -> Vec<u8> {
    eth(A_MAC, FW_CLIENT_MAC, ethertype_of(ip), ip)
}

pub fn from_b(ip: &[u8]) -> Vec<u8> {
    eth(B_MAC, FW_CLIENT_MAC, ethertype_of(ip), ip)
}

pub fn from_uplink(ip: &[u8]) -> Vec<u8> {
    eth(GATEWAY_MAC, FW_UPLINK_MAC, ethertype_of(ip), ip)
}

pub fn ethertype_of(ip: &[u8]) -> EthernetProtocol {
    if ip[0] >> 4 == 6 {
        EthernetProtocol::Ipv6
    } else {
        EthernetProtocol::Ipv4
    }
}

/// The only frame in `out`, which must go to `interface`; returns its IP
/// packet after checking the Ethernet addresses.
pub fn single(out: Vec<Transmit>, interface: Interface) -> Vec<u8> {
    assert_eq!(out.len(), 1, "expected one frame, got {out:?}");
    let tx = out.into_iter().next().unwrap();
    assert_eq!(tx.interface, interface);
    let frame = EthernetFrame::new_checked(&tx.frame[..]).unwrap();
    match interface {
        Interface::Uplink => {
            assert_eq!(frame.src_addr(), FW_UPLINK_MAC);
            assert_eq!(frame.dst_addr(), GATEWAY_MAC);
        }
        Interface::Client(id) => {
            assert_eq!(frame.src_addr(), FW_CLIENT_MAC);
            assert_eq!(frame.dst_addr(), if id == A { A_MAC } else { B_MAC });
        }
    }
    frame.payload().to_vec()
}

/// Check every checksum of an IPv4 packet carrying TCP, UDP or ICMP.
pub fn assert_valid4(ip: &[u8]) -> Ipv4Packet<&[u8]> {
    let packet = Ipv4Packet::new_checked(ip).unwrap();
    assert!(packet.verify_checksum(), "IPv4 header checksum");
    let src = IpAddress::Ipv4(packet.src_addr());
    let dst = IpAddress::Ipv4(packet.dst_addr());
    match packet.next_header() {
        IpProtocol::Tcp => assert!(TcpPacket::new_checked(packet.payload())
            .unwrap()
            .verify_checksum(&src, &dst)),
        IpProtocol::Udp => assert!(UdpPacket::new_checked(packet.payload())
            .unwrap()
            .verify_checksum(&src, &dst)),
        IpProtocol::Icmp => assert!(Icmpv4Packet::new_checked(packet.payload())
            .unwrap()
            .verify_checksum()),
        other => panic!("unexpected {other}"),
    }
    packet
}

/// Check every checksum of an IPv6 packet carrying TCP, UDP or ICMPv6.
pub fn assert_valid6(ip: &[u8]) -> Ipv6Packet<&[u8]> {
    let packet = Ipv6Packet::new_checked(ip).unwrap();
    let src = packet.src_addr();
    let dst = packet.dst_addr();
    match packet.next_header() {
        IpProtocol::Tcp => assert!(TcpPacket::new_checked(packet.payload())
            .unwrap()
            .verify_checksum(&IpAddress::Ipv6(src), &IpAddress::Ipv6(dst))),
        IpProtocol::Udp => assert!(UdpPacket::new_checked(packet.payload())
            .unwrap()
            .verify_checksum(&IpAddress::Ipv6(src), &IpAddress::Ipv6(dst))),
        IpProtocol::Icmpv6 => assert!(Icmpv6Packet::new_checked(packet.payload())
            .unwrap()
            .verify_checksum(&src, &dst)),
        other => panic!("unexpected {other}"),
    }
    packet
}

pub fn tcp_ports(l4: &[u8]) -> (u16, u16) {
    let tcp = TcpPacket::new_checked(l4).unwrap();
    (tcp.src_port(), tcp.dst_port())
}

pub fn udp_ports(l4: &[u8]) -> (u16, u16) {
    let udp = UdpPacket::new_checked(l4).unwrap();
    (udp.src_port(), udp.dst_port())
}

pub fn checksum_caps() -> ChecksumCapabilities {
    ChecksumCapabilities::default()
}

/// An ICMPv4 message of `icmp_type` with identifier `ident`.
pub fn icmp4(src: Ipv4Addr, dst: Ipv4Addr, icmp_type: u8, ident: u16) -> Vec<u8> {
    let mut l4 = vec![0u8; 8 + 12];
    l4[0] = icmp_type;
    l4[4..6].copy_from_slice(&ident.to_be_bytes());
    Icmpv4Packet::new_unchecked(&mut l4[..]).fill_checksum();
    ip4(src, dst, IpProtocol::Icmp, &l4)
}

/// A neighbour solicitation from client A for `target`, from `src`, with
/// hop limit `hop_limit`.
pub fn ns(src: Ipv6Addr, target: Ipv6Addr, hop_limit: u8) -> Vec<u8> {
    from_a(&ns_packet(src, target, hop_limit, A_MAC))
}

/// The IPv6 packet of a neighbour solicitation for `target` from
/// `src`/`src_mac`.
pub fn ns_packet(
    src: Ipv6Addr,
    target: Ipv6Addr,
    hop_limit: u8,
    src_mac: EthernetAddress,
) -> Vec<u8> {
    let repr = Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit {
        target_addr: target,
        lladdr: Some(RawHardwareAddress::from(src_mac)),
    });
    let mut l4 = vec![0u8; repr.buffer_len()];
    repr.emit(
        &src,
        &target,
        &mut Icmpv6Packet::new_unchecked(&mut l4[..]),
        &checksum_caps(),
    );
    let mut ip = ip6(src, target, IpProtocol::Icmpv6, &l4);
    Ipv6Packet::new_unchecked(&mut ip[..]).set_hop_limit(hop_limit);
    ip
}
