//! The link layer: Ethernet framing, ARP and IPv6 neighbour discovery.
//!
//! Client links are point-to-point, so the firewall answers ARP and
//! neighbour solicitations from a client for every address except the
//! client's own with its own MAC: whatever the client wants to reach, the
//! firewall is the next hop. That is what Qubes clients expect.

use alloc::vec;
use alloc::vec::Vec;
use core::net::{Ipv4Addr, Ipv6Addr};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    Icmpv6Packet, Icmpv6Repr, IpAddress, IpProtocol, Ipv4Packet, Ipv6Packet, Ipv6Repr,
    NdiscNeighborFlags, NdiscRepr, RawHardwareAddress, UdpPacket,
};

/// Length of an Ethernet header.
pub const ETHERNET_HEADER_LEN: usize = 14;

/// A frame carrying `payload` from `src` to `dst`.
pub fn ethernet_frame(
    src: EthernetAddress,
    dst: EthernetAddress,
    ethertype: EthernetProtocol,
    payload: &[u8],
) -> Vec<u8> {
    let mut buf = vec![0u8; ETHERNET_HEADER_LEN + payload.len()];
    let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
    frame.set_src_addr(src);
    frame.set_dst_addr(dst);
    frame.set_ethertype(ethertype);
    frame.payload_mut().copy_from_slice(payload);
    buf
}

/// Rewrite the addresses of a frame built around a forwarded packet.
pub fn set_ethernet_addrs(buf: &mut [u8], src: EthernetAddress, dst: EthernetAddress) {
    if buf.len() >= ETHERNET_HEADER_LEN {
        let mut frame = EthernetFrame::new_unchecked(buf);
        frame.set_src_addr(src);
        frame.set_dst_addr(dst);
    }
}

/// An IPv4 UDP packet with valid checksums.
pub fn udp_packet_v4(
    src: Ipv4Addr,
    src_port: u16,
    dst: Ipv4Addr,
    dst_port: u16,
    payload: &[u8],
) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let mut buf = vec![0u8; 20 + udp_len];
    let mut ip = Ipv4Packet::new_unchecked(&mut buf[..]);
    ip.set_version(4);
    ip.set_header_len(20);
    ip.set_total_len((20 + udp_len) as u16);
    ip.set_hop_limit(64);
    ip.set_next_header(IpProtocol::Udp);
    ip.set_src_addr(src);
    ip.set_dst_addr(dst);
    ip.fill_checksum();
    let mut udp = UdpPacket::new_unchecked(ip.payload_mut());
    udp.set_src_port(src_port);
    udp.set_dst_port(dst_port);
    udp.set_len(udp_len as u16);
    udp.payload_mut().copy_from_slice(payload);
    udp.fill_checksum(&IpAddress::Ipv4(src), &IpAddress::Ipv4(dst));
    buf
}

/// An ARP request or reply, parsed.
pub fn parse_arp(payload: &[u8]) -> Option<ArpRepr> {
    let packet = ArpPacket::new_checked(payload).ok()?;
    ArpRepr::parse(&packet).ok()
}

/// An ARP packet in an Ethernet frame.
fn arp_frame(repr: &ArpRepr, eth_src: EthernetAddress, eth_dst: EthernetAddress) -> Vec<u8> {
    let mut payload = vec![0u8; repr.buffer_len()];
    repr.emit(&mut ArpPacket::new_unchecked(&mut payload[..]));
    ethernet_frame(eth_src, eth_dst, EthernetProtocol::Arp, &payload)
}

/// The reply claiming `claimed` for `our_mac` to a request from
/// `requester_mac`/`requester_ip`.
pub fn arp_reply(
    our_mac: EthernetAddress,
    claimed: Ipv4Addr,
    requester_mac: EthernetAddress,
    requester_ip: Ipv4Addr,
) -> Vec<u8> {
    let repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Reply,
        source_hardware_addr: our_mac,
        source_protocol_addr: claimed,
        target_hardware_addr: requester_mac,
        target_protocol_addr: requester_ip,
    };
    arp_frame(&repr, our_mac, requester_mac)
}

/// A broadcast request for `target`'s MAC.
pub fn arp_request(our_mac: EthernetAddress, our_ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: our_mac,
        source_protocol_addr: our_ip,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    };
    arp_frame(&repr, our_mac, EthernetAddress::BROADCAST)
}

/// The target of an IPv6 neighbour solicitation in `ip_packet`, if that is
/// what it is and it passes RFC 4861's validity checks (section 7.1.1):
/// hop limit 255 (it was not forwarded), checksum and code 0, a unicast
/// target, and a solicited-node multicast destination when the source is
/// unspecified (duplicate address detection).
pub fn neighbor_solicitation_target(ip_packet: &[u8]) -> Option<Ipv6Addr> {
    let ip = Ipv6Packet::new_checked(ip_packet).ok()?;
    if ip.next_header() != IpProtocol::Icmpv6 || ip.hop_limit() != 255 {
        return None;
    }
    let icmp = Icmpv6Packet::new_checked(ip.payload()).ok()?;
    if icmp.msg_code() != 0 {
        return None;
    }
    match Icmpv6Repr::parse(
        &ip.src_addr(),
        &ip.dst_addr(),
        &icmp,
        &ChecksumCapabilities::default(),
    )
    .ok()?
    {
        Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit { target_addr, .. }) => {
            let solicited_node = ip.dst_addr().octets().starts_with(&SOLICITED_NODE_PREFIX);
            let dad_ok = !ip.src_addr().is_unspecified() || solicited_node;
            (!target_addr.is_multicast() && dad_ok).then_some(target_addr)
        }
        _ => None,
    }
}

/// The first 13 bytes of every solicited-node multicast address,
/// `ff02::1:ffXX:XXXX` (RFC 4291).
const SOLICITED_NODE_PREFIX: [u8; 13] = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff];

/// The link-local IPv6 address Linux gives an interface with MAC `mac`
/// (modified EUI-64, RFC 4291 appendix A): `fe80::fcff:ffff:feff:ffff` for
/// Qubes' `fe:ff:ff:ff:ff:ff`.
pub fn link_local_of(mac: EthernetAddress) -> Ipv6Addr {
    let m = mac.0;
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        m[0] ^ 0x02,
        m[1],
        m[2],
        0xff,
        0xfe,
        m[3],
        m[4],
        m[5],
    ])
}

/// A neighbour advertisement for `target` → `our_mac`, sent to `dst`
/// (`dst_mac`), marked as coming from a router.
pub fn neighbor_advertisement(
    our_mac: EthernetAddress,
    target: Ipv6Addr,
    dst: Ipv6Addr,
    dst_mac: EthernetAddress,
) -> Vec<u8> {
    let icmp = Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
        flags: NdiscNeighborFlags::ROUTER
            | NdiscNeighborFlags::SOLICITED
            | NdiscNeighborFlags::OVERRIDE,
        target_addr: target,
        lladdr: Some(RawHardwareAddress::from(our_mac)),
    });
    let ip = Ipv6Repr {
        src_addr: target,
        dst_addr: dst,
        next_header: IpProtocol::Icmpv6,
        payload_len: icmp.buffer_len(),
        hop_limit: 255,
    };
    let mut payload = vec![0u8; ip.buffer_len() + icmp.buffer_len()];
    let mut packet = Ipv6Packet::new_unchecked(&mut payload[..]);
    ip.emit(&mut packet);
    icmp.emit(
        &target,
        &dst,
        &mut Icmpv6Packet::new_unchecked(packet.payload_mut()),
        &ChecksumCapabilities::default(),
    );
    ethernet_frame(our_mac, dst_mac, EthernetProtocol::Ipv6, &payload)
}
