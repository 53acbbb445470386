//! smoltcp runs over the frontend: it answers ARP and ping from a peer
//! behind the simulated netback.

mod common;

use common::*;
use netfront::ConnectOptions;
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::time::Instant;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, HardwareAddress, Icmpv4Packet, Icmpv4Repr, IpAddress, IpCidr, IpProtocol,
    Ipv4Address, Ipv4Packet, Ipv4Repr,
};

const PEER_MAC: EthernetAddress = EthernetAddress([0xfe, 0xff, 0xff, 0xff, 0xff, 0xff]);
const PEER_IP: Ipv4Address = Ipv4Address::new(10, 137, 0, 1);
const OUR_IP: Ipv4Address = Ipv4Address::new(10, 137, 0, 5);

fn frame(
    dst: EthernetAddress,
    ethertype: EthernetProtocol,
    payload_len: usize,
    fill: impl FnOnce(&mut [u8]),
) -> Vec<u8> {
    let repr = EthernetRepr {
        src_addr: PEER_MAC,
        dst_addr: dst,
        ethertype,
    };
    let mut buf = vec![0u8; repr.buffer_len() + payload_len];
    let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
    repr.emit(&mut f);
    fill(f.payload_mut());
    buf
}

#[test]
fn smoltcp_answers_arp_and_ping_over_netfront() {
    let m = Machine::new();
    let mut back = m.backend();
    let mut front = connect(&m, &mut back, ConnectOptions::default()).unwrap();
    let our_mac = EthernetAddress(front.mac().0);
    let mut iface = Interface::new(
        Config::new(HardwareAddress::Ethernet(our_mac)),
        &mut front,
        Instant::ZERO,
    );
    iface.update_ip_addrs(|a| a.push(IpCidr::new(IpAddress::Ipv4(OUR_IP), 24)).unwrap());
    let mut sockets = SocketSet::new(vec![]);

    // ARP: who has OUR_IP?
    let arp = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: PEER_MAC,
        source_protocol_addr: PEER_IP,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: OUR_IP,
    };
    let req = frame(
        EthernetAddress::BROADCAST,
        EthernetProtocol::Arp,
        arp.buffer_len(),
        |p| arp.emit(&mut ArpPacket::new_unchecked(p)),
    );
    assert!(back.send_rx(&req, 0, None));
    front.poll().unwrap();
    iface.poll(Instant::ZERO, &mut front, &mut sockets);
    assert_eq!(back.process_tx(), 1);
    let reply = back.received.pop().unwrap().data;
    let eth = EthernetFrame::new_checked(&reply[..]).unwrap();
    assert_eq!((eth.dst_addr(), eth.src_addr()), (PEER_MAC, our_mac));
    let arp_reply = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap()).unwrap();
    assert_eq!(
        arp_reply,
        ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Reply,
            source_hardware_addr: our_mac,
            source_protocol_addr: OUR_IP,
            target_hardware_addr: PEER_MAC,
            target_protocol_addr: PEER_IP,
        }
    );

    // Ping.
    let caps = ChecksumCapabilities::default();
    let data = b"moat netfront ping payload";
    let icmp = Icmpv4Repr::EchoRequest {
        ident: 0x1234,
        seq_no: 7,
        data,
    };
    let ip = Ipv4Repr {
        src_addr: PEER_IP,
        dst_addr: OUR_IP,
        next_header: IpProtocol::Icmp,
        payload_len: icmp.buffer_len(),
        hop_limit: 64,
    };
    let ping = frame(
        our_mac,
        EthernetProtocol::Ipv4,
        ip.buffer_len() + icmp.buffer_len(),
        |p| {
            let mut ipp = Ipv4Packet::new_unchecked(p);
            ip.emit(&mut ipp, &caps);
            icmp.emit(&mut Icmpv4Packet::new_unchecked(ipp.payload_mut()), &caps);
        },
    );
    assert!(back.send_rx(&ping, 0, None));
    front.poll().unwrap();
    iface.poll(Instant::from_millis(10), &mut front, &mut sockets);
    assert_eq!(back.process_tx(), 1);
    let pong = back.received.pop().unwrap().data;
    let eth = EthernetFrame::new_checked(&pong[..]).unwrap();
    assert_eq!(eth.ethertype(), EthernetProtocol::Ipv4);
    let ipp = Ipv4Packet::new_checked(eth.payload()).unwrap();
    assert_eq!((ipp.src_addr(), ipp.dst_addr()), (OUR_IP, PEER_IP));
    let icmp =
        Icmpv4Repr::parse(&Icmpv4Packet::new_checked(ipp.payload()).unwrap(), &caps).unwrap();
    assert_eq!(
        icmp,
        Icmpv4Repr::EchoReply {
            ident: 0x1234,
            seq_no: 7,
            data
        }
    );
}
