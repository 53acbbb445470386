//! The fast path: GSO super-packets and blank / validated checksums pass
//! through NAT with only their headers rewritten, both ways; a link that
//! does not take them gets complete segments and checksums instead. The
//! checksums are checked independently of the firewall's code: a blank
//! field must be the pseudo-header sum for the new addresses, which is
//! verified by completing it over the segment and comparing with smoltcp's
//! from-scratch checksum.

mod common;

use common::*;
use firewall::conntrack::{FlowState, TcpState};
use firewall::{Capabilities, Gso, GsoKind, Interface, Offload, Transmit};
use qubes::firewall_rules::Family;
use smoltcp::wire::{IpAddress, IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket};
use std::net::IpAddr;

const MSS: u16 = 1448;
/// Three segments' worth: two full and one short.
const DATA: usize = 4000;

fn ones(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|c| u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0)))
        .sum()
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn octets(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The TCP pseudo-header sum (not complemented) for `len` transport bytes:
/// what a blank checksum field holds.
fn pseudo(src: IpAddr, dst: IpAddr, len: usize) -> u16 {
    let len = len as u32;
    fold(ones(&octets(src)) + ones(&octets(dst)) + 6 + (len >> 16) + (len & 0xffff))
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + 3) as u8).collect()
}

/// A TCP packet carrying `len` bytes, its checksum blank as Linux leaves
/// it for a `CHECKSUM_PARTIAL` packet: the pseudo-header sum.
fn blank_tcp(
    src: impl Into<IpAddr>,
    sport: u16,
    dst: impl Into<IpAddr>,
    dport: u16,
    flags: Flags,
    len: usize,
) -> Vec<u8> {
    let (src, dst) = (src.into(), dst.into());
    let mut l4 = tcp_segment(src, sport, dst, dport, flags, &payload(len));
    let field = pseudo(src, dst, l4.len());
    l4[16..18].copy_from_slice(&field.to_be_bytes());
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => ip4(s, d, IpProtocol::Tcp, &l4),
        (IpAddr::V6(s), IpAddr::V6(d)) => ip6(s, d, IpProtocol::Tcp, &l4),
        _ => unreachable!(),
    }
}

fn gso(kind: GsoKind) -> Offload {
    Offload {
        csum_blank: true,
        data_validated: false,
        gso: Some(Gso { kind, mss: MSS }),
    }
}

/// The addresses and transport bytes of an IP packet.
fn split(ip: &[u8]) -> (IpAddr, IpAddr, Vec<u8>) {
    if ip[0] >> 4 == 4 {
        let p = Ipv4Packet::new_checked(ip).unwrap();
        assert!(p.verify_checksum(), "IPv4 header checksum");
        (
            IpAddr::V4(p.src_addr()),
            IpAddr::V4(p.dst_addr()),
            p.payload().to_vec(),
        )
    } else {
        let p = Ipv6Packet::new_checked(ip).unwrap();
        (
            IpAddr::V6(p.src_addr()),
            IpAddr::V6(p.dst_addr()),
            p.payload().to_vec(),
        )
    }
}

fn addr(a: IpAddr) -> IpAddress {
    match a {
        IpAddr::V4(a) => IpAddress::Ipv4(a),
        IpAddr::V6(a) => IpAddress::Ipv6(a),
    }
}

/// Check that the blank checksum field of `ip` is the pseudo-header sum
/// for its (new) addresses: completing it over the segment, as the next
/// hop will, gives smoltcp's from-scratch checksum.
fn assert_blank_field_right(ip: &[u8]) {
    let (src, dst, l4) = split(ip);
    let field = u16::from_be_bytes([l4[16], l4[17]]);
    assert_eq!(field, pseudo(src, dst, l4.len()), "pseudo-header sum");
    let completed = !fold(ones(&l4));
    let mut scratch = l4.clone();
    let mut tcp = TcpPacket::new_unchecked(&mut scratch[..]);
    tcp.fill_checksum(&addr(src), &addr(dst));
    assert_eq!(completed, tcp.checksum(), "completed vs from scratch");
    let mut done = l4.clone();
    done[16..18].copy_from_slice(&completed.to_be_bytes());
    assert!(TcpPacket::new_checked(&done[..])
        .unwrap()
        .verify_checksum(&addr(src), &addr(dst)));
}

/// The one frame of `out`.
fn only(out: Vec<Transmit>) -> Transmit {
    assert_eq!(out.len(), 1, "expected one frame, got {}", out.len());
    out.into_iter().next().unwrap()
}

/// Client B takes port 40000 towards the web server first, so that A's
/// flow from the same port is translated to another: the tests then see a
/// port rewritten too. Returns A's translated port after a handshake.
fn established(fw: &mut firewall::Firewall, a: IpAddr, web: IpAddr) -> u16 {
    if a.is_ipv4() {
        fw.handle(
            t(0),
            Interface::Client(B),
            &from_b(&tcp(B_IP, 40000, WEB, 80, SYN)),
        );
    }
    let out = fw.handle(
        t(0),
        Interface::Client(A),
        &from_a(&tcp(a, 40000, web, 80, SYN)),
    );
    let up = only(out);
    let (_, _, l4) = split(&up.frame[14..]);
    let nat = tcp_ports(&l4).0;
    let uplink = if a.is_ipv4() {
        IpAddr::V4(UPLINK_IP)
    } else {
        IpAddr::V6(UPLINK_IP6)
    };
    fw.handle(
        t(0),
        Interface::Uplink,
        &from_uplink(&tcp(web, 80, uplink, nat, SYN_ACK)),
    );
    fw.handle(
        t(0),
        Interface::Client(A),
        &from_a(&tcp(a, 40000, web, 80, ACK)),
    );
    nat
}

fn flow_state(fw: &firewall::Firewall) -> FlowState {
    fw.conntrack()
        .iter()
        .map(|(_, c)| c)
        .find(|c| c.client == A)
        .unwrap()
        .state
}

#[test]
fn a_client_super_packet_goes_out_as_gso_with_only_its_headers_rewritten() {
    let mut fw = firewall(false);
    fw.set_capabilities(Interface::Uplink, Capabilities::ALL);
    let nat = established(&mut fw, IpAddr::V4(A_IP), IpAddr::V4(WEB));
    assert_ne!(nat, 40000, "B holds 40000: A's port is translated");
    let before = fw.counters();
    let sent = blank_tcp(A_IP, 40000, WEB, 80, ACK, DATA);
    let offload = gso(GsoKind::TcpV4);
    let tx = only(fw.handle_offloaded(t(1), Interface::Client(A), &from_a(&sent), offload));
    assert_eq!(tx.interface, Interface::Uplink);
    assert_eq!(tx.offload, offload, "GSO size, type and flags kept");
    let ip = Ipv4Packet::new_checked(&tx.frame[14..]).unwrap();
    assert!(ip.verify_checksum());
    assert_eq!(ip.src_addr(), UPLINK_IP);
    assert_eq!(ip.dst_addr(), WEB);
    assert_eq!(ip.hop_limit(), 63);
    assert_eq!(
        usize::from(ip.total_len()),
        sent.len(),
        "the super-packet's length"
    );
    assert_eq!(tcp_ports(ip.payload()), (nat, 80));
    assert_eq!(&ip.payload()[20..], &payload(DATA)[..], "data untouched");
    assert_blank_field_right(&tx.frame[14..]);
    let c = fw.counters();
    assert_eq!(c.forwarded_gso - before.forwarded_gso, 1);
    assert_eq!(
        c.forwarded_gso_bytes - before.forwarded_gso_bytes,
        tx.frame.len() as u64
    );
    assert_eq!(c.forwarded_plain, before.forwarded_plain);
    assert_eq!(c.gso_segmented, 0);
}

#[test]
fn an_uplink_super_packet_reaches_the_client_as_gso() {
    let mut fw = firewall(false);
    fw.set_capabilities(Interface::Client(A), Capabilities::ALL);
    let nat = established(&mut fw, IpAddr::V4(A_IP), IpAddr::V4(WEB));
    let sent = blank_tcp(WEB, 80, UPLINK_IP, nat, ACK, DATA);
    let offload = gso(GsoKind::TcpV4);
    let tx = only(fw.handle_offloaded(t(1), Interface::Uplink, &from_uplink(&sent), offload));
    assert_eq!(tx.interface, Interface::Client(A));
    assert_eq!(tx.offload, offload);
    let ip = Ipv4Packet::new_checked(&tx.frame[14..]).unwrap();
    assert_eq!(ip.dst_addr(), A_IP);
    assert_eq!(ip.src_addr(), WEB);
    assert_eq!(ip.hop_limit(), 63);
    assert_eq!(usize::from(ip.total_len()), sent.len());
    assert_eq!(tcp_ports(ip.payload()), (80, 40000));
    assert_blank_field_right(&tx.frame[14..]);
    assert_eq!(fw.counters().forwarded_gso, 1);
}

#[test]
fn ipv6_super_packets_pass_both_ways() {
    let mut fw = firewall(true);
    fw.set_capabilities(Interface::Uplink, Capabilities::ALL);
    fw.set_capabilities(Interface::Client(A), Capabilities::ALL);
    let nat = established(&mut fw, IpAddr::V6(A_IP6), IpAddr::V6(WEB6));
    let offload = gso(GsoKind::TcpV6);
    let out = blank_tcp(A_IP6, 40000, WEB6, 80, ACK, DATA);
    let tx = only(fw.handle_offloaded(t(1), Interface::Client(A), &from_a(&out), offload));
    assert_eq!((tx.interface, tx.offload), (Interface::Uplink, offload));
    let ip = Ipv6Packet::new_checked(&tx.frame[14..]).unwrap();
    assert_eq!(ip.src_addr(), UPLINK_IP6);
    assert_eq!(ip.hop_limit(), 63);
    assert_eq!(usize::from(ip.payload_len()), out.len() - 40);
    assert_blank_field_right(&tx.frame[14..]);

    let back = blank_tcp(WEB6, 80, UPLINK_IP6, nat, ACK, DATA);
    let tx = only(fw.handle_offloaded(t(1), Interface::Uplink, &from_uplink(&back), offload));
    assert_eq!((tx.interface, tx.offload), (Interface::Client(A), offload));
    let ip = Ipv6Packet::new_checked(&tx.frame[14..]).unwrap();
    assert_eq!(ip.dst_addr(), A_IP6);
    assert_eq!(tcp_ports(ip.payload()), (80, 40000));
    assert_blank_field_right(&tx.frame[14..]);
    assert_eq!(fw.counters().forwarded_gso, 2);
}

#[test]
fn a_validated_packet_keeps_its_flag_and_a_right_checksum() {
    let mut fw = firewall(false);
    let nat = established(&mut fw, IpAddr::V4(A_IP), IpAddr::V4(WEB));
    let validated = Offload {
        data_validated: true,
        ..Offload::NONE
    };
    let tx = only(fw.handle_offloaded(
        t(1),
        Interface::Client(A),
        &from_a(&tcp(A_IP, 40000, WEB, 80, ACK)),
        validated,
    ));
    assert_eq!(tx.offload, validated);
    assert_eq!(assert_valid4(&tx.frame[14..]).src_addr(), UPLINK_IP);
    let tx = only(fw.handle_offloaded(
        t(1),
        Interface::Uplink,
        &from_uplink(&tcp(WEB, 80, UPLINK_IP, nat, ACK)),
        validated,
    ));
    assert_eq!(
        (tx.interface, tx.offload),
        (Interface::Client(A), validated)
    );
    assert_eq!(assert_valid4(&tx.frame[14..]).dst_addr(), A_IP);
    let c = fw.counters();
    assert_eq!(
        (c.forwarded_gso, c.csum_completed, c.gso_segmented),
        (0, 0, 0)
    );
}

#[test]
fn refused_super_packets_are_counted_as_dropped() {
    let mut fw = firewall(false);
    fw.set_capabilities(Interface::Uplink, Capabilities::ALL);
    fw.set_rules(
        IpAddr::V4(A_IP),
        rules(
            Family::V4,
            "drop",
            &[("0000", "action=accept dsthost=192.0.2.1")],
        ),
    );
    // A bare ACK opens (picks up) a flow, which A's rules refuse.
    let sent = blank_tcp(A_IP, 40000, WEB, 80, ACK, DATA);
    let out = fw.handle_offloaded(
        t(1),
        Interface::Client(A),
        &from_a(&sent),
        gso(GsoKind::TcpV4),
    );
    assert!(out.iter().all(|tx| tx.interface != Interface::Uplink));
    let c = fw.counters();
    assert_eq!(c.dropped_by_rule, 1);
    assert_eq!(c.dropped_gso, 1);
    assert_eq!(c.forwarded_gso + c.forwarded_plain, 0);
    // From the uplink without a flow.
    let back = blank_tcp(WEB, 80, UPLINK_IP, 40000, ACK, DATA);
    let out = fw.handle_offloaded(
        t(1),
        Interface::Uplink,
        &from_uplink(&back),
        gso(GsoKind::TcpV4),
    );
    assert!(out.is_empty());
    let c = fw.counters();
    assert_eq!(c.dropped_no_flow, 1);
    assert_eq!(c.dropped_gso, 2);
}

#[test]
fn offload_flags_that_do_not_fit_the_packet_drop_it() {
    let mut fw = firewall(true);
    fw.set_capabilities(Interface::Uplink, Capabilities::ALL);
    established(&mut fw, IpAddr::V4(A_IP), IpAddr::V4(WEB));
    let sent = from_a(&blank_tcp(A_IP, 40000, WEB, 80, ACK, DATA));
    let wrong_kind = gso(GsoKind::TcpV6);
    let tiny_mss = Offload {
        gso: Some(Gso {
            kind: GsoKind::TcpV4,
            mss: 8,
        }),
        ..gso(GsoKind::TcpV4)
    };
    let blank_ping = Offload {
        csum_blank: true,
        ..Offload::NONE
    };
    assert!(fw
        .handle_offloaded(t(1), Interface::Client(A), &sent, wrong_kind)
        .is_empty());
    assert!(fw
        .handle_offloaded(t(1), Interface::Client(A), &sent, tiny_mss)
        .is_empty());
    assert!(fw
        .handle_offloaded(
            t(1),
            Interface::Client(A),
            &from_a(&icmp4_echo(A_IP, WEB, 1, true)),
            blank_ping
        )
        .is_empty());
    let c = fw.counters();
    assert_eq!(c.dropped_bad_offload, 3);
    assert_eq!(c.dropped_gso, 2);
    // The same frame with fitting flags goes.
    assert_eq!(
        fw.handle_offloaded(t(1), Interface::Client(A), &sent, gso(GsoKind::TcpV4))
            .len(),
        1
    );
}

#[test]
fn fin_and_rst_in_a_super_packet_are_seen_by_connection_tracking() {
    let mut fw = firewall(false);
    fw.set_capabilities(Interface::Uplink, Capabilities::ALL);
    let nat = established(&mut fw, IpAddr::V4(A_IP), IpAddr::V4(WEB));
    assert!(matches!(
        flow_state(&fw),
        FlowState::Tcp {
            state: TcpState::Established,
            ..
        }
    ));
    let sent = blank_tcp(A_IP, 40000, WEB, 80, FIN, DATA);
    let tx = only(fw.handle_offloaded(
        t(1),
        Interface::Client(A),
        &from_a(&sent),
        gso(GsoKind::TcpV4),
    ));
    assert_eq!(tx.offload, gso(GsoKind::TcpV4));
    assert!(matches!(
        flow_state(&fw),
        FlowState::Tcp {
            state: TcpState::Closing,
            fin_orig: true,
            ..
        }
    ));
    let rst = Flags { rst: true, ..ACK };
    let back = blank_tcp(WEB, 80, UPLINK_IP, nat, rst, DATA);
    fw.handle_offloaded(
        t(1),
        Interface::Uplink,
        &from_uplink(&back),
        gso(GsoKind::TcpV4),
    );
    assert!(matches!(
        flow_state(&fw),
        FlowState::Tcp {
            state: TcpState::Closed,
            ..
        }
    ));
}

#[test]
fn a_link_without_gso_gets_complete_segments() {
    let mut fw = firewall(false);
    // The uplink takes blank checksums but not GSO; client A neither.
    fw.set_capabilities(
        Interface::Uplink,
        Capabilities {
            csum_blank_v4: true,
            ..Capabilities::NONE
        },
    );
    let nat = established(&mut fw, IpAddr::V4(A_IP), IpAddr::V4(WEB));
    for (from, to, sent) in [
        (
            Interface::Client(A),
            Interface::Uplink,
            from_a(&blank_tcp(A_IP, 40000, WEB, 80, FIN, DATA)),
        ),
        (
            Interface::Uplink,
            Interface::Client(A),
            from_uplink(&blank_tcp(WEB, 80, UPLINK_IP, nat, FIN, DATA)),
        ),
    ] {
        let out = fw.handle_offloaded(t(1), from, &sent, gso(GsoKind::TcpV4));
        assert_eq!(out.len(), DATA.div_ceil(usize::from(MSS)));
        let mut data = Vec::new();
        let mut idents = Vec::new();
        for (i, tx) in out.iter().enumerate() {
            assert_eq!(tx.interface, to);
            assert_eq!(
                tx.offload,
                Offload {
                    data_validated: true,
                    ..Offload::NONE
                }
            );
            let ip = assert_valid4(&tx.frame[14..]);
            assert_eq!(ip.hop_limit(), 63);
            idents.push(ip.ident());
            let seg = TcpPacket::new_checked(ip.payload()).unwrap();
            assert_eq!(seg.seq_number().0, 1000 + (i * usize::from(MSS)) as i32);
            assert_eq!(seg.fin(), i + 1 == out.len(), "FIN on the last only");
            assert!(seg.payload().len() <= usize::from(MSS));
            data.extend_from_slice(seg.payload());
        }
        assert_eq!(data, payload(DATA));
        assert_eq!(idents, [0x4242, 0x4243, 0x4244]);
    }
    let c = fw.counters();
    assert_eq!(c.gso_segmented, 2);
    assert_eq!(c.forwarded_gso, 0);
    // Three segments each way, plus the handshake's two client ACK/SYN
    // packets and the SYN-ACK (and B's SYN).
    assert_eq!(c.forwarded_plain, 6 + 4);
}

#[test]
fn a_blank_checksum_is_completed_for_a_link_that_does_not_take_it() {
    let mut fw = firewall(true);
    // GSO but no blank IPv6 checksums on the uplink.
    fw.set_capabilities(
        Interface::Uplink,
        Capabilities {
            csum_blank_v6: false,
            ..Capabilities::ALL
        },
    );
    established(&mut fw, IpAddr::V6(A_IP6), IpAddr::V6(WEB6));
    let blank = Offload {
        csum_blank: true,
        ..Offload::NONE
    };
    let sent = blank_tcp(A_IP6, 40000, WEB6, 80, ACK, 100);
    let tx = only(fw.handle_offloaded(t(1), Interface::Client(A), &from_a(&sent), blank));
    assert_eq!(
        tx.offload,
        Offload {
            data_validated: true,
            ..Offload::NONE
        }
    );
    assert_valid6(&tx.frame[14..]);
    // A super-packet with a blank checksum the link cannot complete is
    // segmented rather than passed.
    let big = blank_tcp(A_IP6, 40000, WEB6, 80, ACK, DATA);
    let out = fw.handle_offloaded(
        t(1),
        Interface::Client(A),
        &from_a(&big),
        gso(GsoKind::TcpV6),
    );
    assert_eq!(out.len(), 3);
    for tx in &out {
        assert_valid6(&tx.frame[14..]);
    }
    let c = fw.counters();
    assert_eq!((c.csum_completed, c.gso_segmented), (1, 1));
}

#[test]
fn a_blank_udp_checksum_follows_nat_too() {
    let mut fw = firewall(false);
    fw.set_capabilities(Interface::Uplink, Capabilities::ALL);
    let mut l4 = udp_datagram(IpAddr::V4(A_IP), 5000, IpAddr::V4(WEB), 443, b"quic-ish");
    let (src, dst) = (IpAddr::V4(A_IP), IpAddr::V4(WEB));
    let len = l4.len() as u32;
    let field = fold(ones(&octets(src)) + ones(&octets(dst)) + 17 + len);
    l4[6..8].copy_from_slice(&field.to_be_bytes());
    let sent = ip4(A_IP, WEB, IpProtocol::Udp, &l4);
    let blank = Offload {
        csum_blank: true,
        ..Offload::NONE
    };
    let tx = only(fw.handle_offloaded(t(1), Interface::Client(A), &from_a(&sent), blank));
    assert_eq!(tx.offload, blank);
    let (src, dst, mut l4) = split(&tx.frame[14..]);
    assert_eq!(src, IpAddr::V4(UPLINK_IP));
    let len = l4.len() as u32;
    let expected = fold(ones(&octets(src)) + ones(&octets(dst)) + 17 + len);
    assert_eq!(u16::from_be_bytes([l4[6], l4[7]]), expected);
    let completed = !fold(ones(&l4));
    l4[6..8].copy_from_slice(&completed.to_be_bytes());
    assert!(smoltcp::wire::UdpPacket::new_checked(&l4[..])
        .unwrap()
        .verify_checksum(&addr(src), &addr(dst)));
}

mod segmentation {
    use super::*;
    use firewall::offload::segment;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Any super-packet cut at any segment size gives complete,
        /// valid segments that carry its data in order, its flags where
        /// they belong.
        #[test]
        fn segments_are_valid_and_carry_the_data(
            len in 0usize..9000,
            mss in 48u16..3000,
            v6 in any::<bool>(),
            fin in any::<bool>(),
        ) {
            let flags = if fin { FIN } else { ACK };
            let ip = if v6 {
                blank_tcp(A_IP6, 40000, WEB6, 80, flags, len)
            } else {
                blank_tcp(A_IP, 40000, WEB, 80, flags, len)
            };
            let segments = segment(&from_a(&ip), mss).unwrap();
            prop_assert_eq!(segments.len(), len.div_ceil(usize::from(mss)).max(1));
            let mut data = Vec::new();
            for (i, seg) in segments.iter().enumerate() {
                let ip = &seg[14..];
                let l4 = if v6 {
                    assert_valid6(ip).payload().to_vec()
                } else {
                    assert_valid4(ip).payload().to_vec()
                };
                let tcp = TcpPacket::new_checked(&l4[..]).unwrap();
                prop_assert_eq!(tcp.seq_number().0, 1000 + (i * usize::from(mss)) as i32);
                prop_assert_eq!(tcp.fin(), fin && i + 1 == segments.len());
                prop_assert!(tcp.ack());
                prop_assert!(tcp.payload().len() <= usize::from(mss));
                data.extend_from_slice(tcp.payload());
            }
            prop_assert_eq!(data, payload(len));
        }
    }
}
