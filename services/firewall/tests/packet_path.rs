//! The firewall's packet path, exercised with crafted frames.

mod common;

use std::net::{IpAddr, Ipv4Addr};

use common::*;
use firewall::{ClientConfig, Firewall, Interface};
use qubes::firewall_rules::{Family, LoadedRules, RuleSet};
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    Icmpv4Packet, IpProtocol, Ipv4Packet, Ipv6Packet,
};

fn arp_request(sender_mac: EthernetAddress, sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: sender_mac,
        source_protocol_addr: sender,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    };
    let mut payload = vec![0u8; repr.buffer_len()];
    repr.emit(&mut ArpPacket::new_unchecked(&mut payload[..]));
    eth(
        sender_mac,
        EthernetAddress::BROADCAST,
        EthernetProtocol::Arp,
        &payload,
    )
}

fn parse_arp(frame: &[u8]) -> ArpRepr {
    let eth = EthernetFrame::new_checked(frame).unwrap();
    assert_eq!(eth.ethertype(), EthernetProtocol::Arp);
    ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap()).unwrap()
}

#[test]
fn arp_from_a_client_is_answered_for_every_address_but_its_own() {
    let mut fw = firewall(false);
    for target in [CLIENT_GW, WEB, B_IP, Ipv4Addr::new(10, 138, 0, 200)] {
        let out = fw.handle(
            t(0),
            Interface::Client(A),
            &arp_request(A_MAC, A_IP, target),
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].interface, Interface::Client(A));
        match parse_arp(&out[0].frame) {
            ArpRepr::EthernetIpv4 {
                operation,
                source_hardware_addr,
                source_protocol_addr,
                target_hardware_addr,
                target_protocol_addr,
            } => {
                assert_eq!(operation, ArpOperation::Reply);
                assert_eq!(source_hardware_addr, FW_CLIENT_MAC);
                assert_eq!(source_protocol_addr, target);
                assert_eq!(target_hardware_addr, A_MAC);
                assert_eq!(target_protocol_addr, A_IP);
            }
            other => panic!("{other:?}"),
        }
    }
    // Its own address: no answer (duplicate address detection must pass).
    assert!(fw
        .handle(t(0), Interface::Client(A), &arp_request(A_MAC, A_IP, A_IP))
        .is_empty());
    // An ARP request claiming another sender address is spoofing.
    let before = fw.counters().dropped_spoofed;
    assert!(fw
        .handle(
            t(0),
            Interface::Client(A),
            &arp_request(A_MAC, B_IP, CLIENT_GW)
        )
        .is_empty());
    assert_eq!(fw.counters().dropped_spoofed, before + 1);
    assert_eq!(fw.counters().neighbor_replies, 4);
}

#[test]
fn uplink_arp_is_answered_for_our_address_and_teaches_the_gateway_mac() {
    let mut cfg = config(false);
    cfg.uplink.gateway_mac = None;
    let mut fw = new_firewall(cfg);
    fw.add_client(
        A,
        ClientConfig {
            ip4: A_IP,
            ip6: None,
            mac: Some(A_MAC),
        },
    );
    fw.set_rules(IpAddr::V4(A_IP), RuleSet::accept_all());

    // Without the gateway's MAC, forwarding asks for it (once per second)
    // and holds the frames.
    let syn = from_a(&tcp(A_IP, 40000, WEB, 80, SYN));
    let syn2 = from_a(&tcp(A_IP, 40001, WEB, 80, SYN));
    let out = fw.handle(t(0), Interface::Client(A), &syn);
    assert_eq!(out.len(), 1);
    match parse_arp(&out[0].frame) {
        ArpRepr::EthernetIpv4 {
            operation,
            target_protocol_addr,
            source_protocol_addr,
            ..
        } => {
            assert_eq!(operation, ArpOperation::Request);
            assert_eq!(target_protocol_addr, UPLINK_GW);
            assert_eq!(source_protocol_addr, UPLINK_IP);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        fw.handle(t(0), Interface::Client(A), &syn2).is_empty(),
        "rate limited"
    );
    assert!(fw.poll(t(0)).is_empty());
    assert_eq!(fw.poll(t(1)).len(), 1, "asked again a second later");

    // The gateway asks for us: we answer, learn its MAC and release the
    // held frames.
    let out = fw.handle(
        t(1),
        Interface::Uplink,
        &arp_request(GATEWAY_MAC, UPLINK_GW, UPLINK_IP),
    );
    assert_eq!(out.len(), 3);
    for (tx, port) in out[..2].iter().zip([40000u16, 40001]) {
        let ip = single(vec![tx.clone()], Interface::Uplink);
        assert_eq!(tcp_ports(assert_valid4(&ip).payload()).0, port);
    }
    match parse_arp(&out[2].frame) {
        ArpRepr::EthernetIpv4 {
            operation,
            source_hardware_addr,
            source_protocol_addr,
            ..
        } => {
            assert_eq!(operation, ArpOperation::Reply);
            assert_eq!(source_hardware_addr, FW_UPLINK_MAC);
            assert_eq!(source_protocol_addr, UPLINK_IP);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(fw.gateway_mac(), Some(GATEWAY_MAC));
    assert_eq!(fw.counters().dropped_no_neighbor, 0);
    // Requests for other addresses on the uplink are not ours to answer.
    assert!(fw
        .handle(
            t(0),
            Interface::Uplink,
            &arp_request(GATEWAY_MAC, UPLINK_GW, A_IP)
        )
        .is_empty());
    single(
        fw.handle(t(1), Interface::Client(A), &syn),
        Interface::Uplink,
    );
}

#[test]
fn allowed_tcp_is_translated_both_ways() {
    let mut fw = firewall(false);
    let out = fw.handle(
        t(0),
        Interface::Client(A),
        &from_a(&tcp(A_IP, 40000, WEB, 80, SYN)),
    );
    let ip = single(out, Interface::Uplink);
    let packet = assert_valid4(&ip);
    assert_eq!(packet.src_addr(), UPLINK_IP);
    assert_eq!(packet.dst_addr(), WEB);
    assert_eq!(packet.hop_limit(), 63, "TTL decremented");
    let (sport, dport) = tcp_ports(packet.payload());
    assert_eq!(
        (sport, dport),
        (40000, 80),
        "the client's port is kept when free"
    );
    assert_eq!(fw.conntrack().len(), 1);

    let reply = from_uplink(&tcp(WEB, 80, UPLINK_IP, sport, SYN_ACK));
    let ip = single(
        fw.handle(t(1), Interface::Uplink, &reply),
        Interface::Client(A),
    );
    let packet = assert_valid4(&ip);
    assert_eq!(packet.src_addr(), WEB);
    assert_eq!(packet.dst_addr(), A_IP);
    assert_eq!(tcp_ports(packet.payload()), (80, 40000));

    // Data flows once established.
    single(
        fw.handle(
            t(2),
            Interface::Client(A),
            &from_a(&tcp(A_IP, 40000, WEB, 80, ACK)),
        ),
        Interface::Uplink,
    );
    single(
        fw.handle(
            t(2),
            Interface::Uplink,
            &from_uplink(&tcp(WEB, 80, UPLINK_IP, sport, ACK)),
        ),
        Interface::Client(A),
    );
    let counters = fw.counters();
    assert_eq!(counters.forwarded_out, 2);
    assert_eq!(counters.forwarded_in, 2);
}

#[test]
fn packets_without_a_flow_are_dropped() {
    let mut fw = firewall(false);
    // A mid-stream FIN or RST opens nothing (a bare ACK is picked up:
    // linux_semantics.rs).
    for flags in [FIN, RST] {
        assert!(fw
            .handle(
                t(0),
                Interface::Client(A),
                &from_a(&tcp(A_IP, 40000, WEB, 80, flags))
            )
            .is_empty());
    }
    // Unsolicited traffic from the uplink reaches no client.
    assert!(fw
        .handle(
            t(0),
            Interface::Uplink,
            &from_uplink(&tcp(WEB, 80, UPLINK_IP, 40000, SYN))
        )
        .is_empty());
    assert!(fw
        .handle(
            t(0),
            Interface::Uplink,
            &from_uplink(&udp(WEB, 53, UPLINK_IP, 40000, b"x"))
        )
        .is_empty());
    assert_eq!(fw.counters().dropped_no_flow, 4);
    assert_eq!(fw.conntrack().len(), 0);
}

fn assert_admin_prohibited4(ip: &[u8], original: &[u8]) {
    let packet = assert_valid4(ip);
    assert_eq!(packet.src_addr(), CLIENT_GW);
    assert_eq!(packet.dst_addr(), A_IP);
    assert_eq!(packet.next_header(), IpProtocol::Icmp);
    let icmp = Icmpv4Packet::new_checked(packet.payload()).unwrap();
    assert_eq!(u8::from(icmp.msg_type()), 3);
    assert_eq!(icmp.msg_code(), 13);
    assert_eq!(
        &icmp.data()[..original.len()],
        original,
        "quotes the refused packet"
    );
}

#[test]
fn refused_flows_get_icmp_admin_prohibited() {
    let mut fw = firewall(false);
    fw.set_rules(
        IpAddr::V4(A_IP),
        rules(
            Family::V4,
            "drop",
            &[("0000", "action=accept proto=tcp dstports=80-80")],
        ),
    );
    let refused = tcp(A_IP, 40001, WEB, 22, SYN);
    let ip = single(
        fw.handle(t(0), Interface::Client(A), &from_a(&refused)),
        Interface::Client(A),
    );
    assert_admin_prohibited4(&ip, &refused);
    assert_eq!(fw.counters().dropped_by_rule, 1);
    assert_eq!(fw.counters().admin_prohibited_sent, 1);
    assert_eq!(fw.conntrack().len(), 0);

    // Explicit drop rules answer the same way (Linux: reject).
    fw.set_rules(
        IpAddr::V4(A_IP),
        rules(Family::V4, "accept", &[("0000", "action=drop proto=udp")]),
    );
    let refused = udp(A_IP, 5000, WEB, 123, b"ntp");
    let ip = single(
        fw.handle(t(0), Interface::Client(A), &from_a(&refused)),
        Interface::Client(A),
    );
    assert_admin_prohibited4(&ip, &refused);
    // ...but an allowed one passes.
    single(
        fw.handle(
            t(0),
            Interface::Client(A),
            &from_a(&tcp(A_IP, 1, WEB, 22, SYN)),
        ),
        Interface::Uplink,
    );
}

#[test]
fn clients_without_rules_or_with_broken_rules_get_nothing_through() {
    let mut fw = new_firewall(config(false));
    fw.add_client(
        A,
        ClientConfig {
            ip4: A_IP,
            ip6: None,
            mac: Some(A_MAC),
        },
    );
    let syn = tcp(A_IP, 40000, WEB, 80, SYN);
    // No rules at all: dropped silently (linux_semantics.rs has the why).
    assert!(fw
        .handle(t(0), Interface::Client(A), &from_a(&syn))
        .is_empty());
    assert_eq!(fw.counters().dropped_no_rules, 1);

    let broken: [(&str, &[u8]); 3] = [
        ("policy", b"accept"),
        ("0000", b"action=accept"),
        ("0001", b"action=accept proto=tcp dpi=NO"),
    ];
    let loaded = LoadedRules::load(Family::V4, broken);
    assert!(loaded.error.is_some(), "the error is reported");
    fw.set_rules(IpAddr::V4(A_IP), loaded.rules);
    let out = single(
        fw.handle(t(0), Interface::Client(A), &from_a(&syn)),
        Interface::Client(A),
    );
    assert_admin_prohibited4(&out, &syn);
    assert_eq!(fw.counters().forwarded_out, 0);
}

#[test]
fn dns_to_the_virtual_server_goes_to_the_real_resolver() {
    let mut fw = firewall(false);
    fw.set_rules(
        IpAddr::V4(A_IP),
        rules(
            Family::V4,
            "drop",
            &[("0000", "action=accept specialtarget=dns")],
        ),
    );
    let query = udp(A_IP, 33333, VIRTUAL_DNS, 53, b"query");
    let ip = single(
        fw.handle(t(0), Interface::Client(A), &from_a(&query)),
        Interface::Uplink,
    );
    let packet = assert_valid4(&ip);
    assert_eq!(packet.src_addr(), UPLINK_IP);
    assert_eq!(packet.dst_addr(), UPSTREAM_DNS);
    let (sport, dport) = udp_ports(packet.payload());
    assert_eq!(dport, 53);

    let answer = udp(UPSTREAM_DNS, 53, UPLINK_IP, sport, b"answer");
    let ip = single(
        fw.handle(t(0), Interface::Uplink, &from_uplink(&answer)),
        Interface::Client(A),
    );
    let packet = assert_valid4(&ip);
    assert_eq!(
        packet.src_addr(),
        VIRTUAL_DNS,
        "the client sees the server it asked"
    );
    assert_eq!(packet.dst_addr(), A_IP);
    assert_eq!(udp_ports(packet.payload()), (53, 33333));

    // specialtarget=dns is not "any DNS server".
    let other = udp(A_IP, 33334, Ipv4Addr::new(8, 8, 8, 8), 53, b"query");
    let ip = single(
        fw.handle(t(0), Interface::Client(A), &from_a(&other)),
        Interface::Client(A),
    );
    assert_admin_prohibited4(&ip, &other);
}

#[test]
fn icmp_echo_is_translated_by_identifier() {
    let mut fw = firewall(false);
    let ip = single(
        fw.handle(
            t(0),
            Interface::Client(A),
            &from_a(&icmp4_echo(A_IP, WEB, 0x1234, true)),
        ),
        Interface::Uplink,
    );
    let packet = assert_valid4(&ip);
    assert_eq!(packet.src_addr(), UPLINK_IP);
    let ident = Icmpv4Packet::new_checked(packet.payload())
        .unwrap()
        .echo_ident();
    let ip = single(
        fw.handle(
            t(0),
            Interface::Uplink,
            &from_uplink(&icmp4_echo(WEB, UPLINK_IP, ident, false)),
        ),
        Interface::Client(A),
    );
    let packet = assert_valid4(&ip);
    assert_eq!(packet.dst_addr(), A_IP);
    assert_eq!(
        Icmpv4Packet::new_checked(packet.payload())
            .unwrap()
            .echo_ident(),
        0x1234
    );
}

#[test]
fn the_firewall_answers_pings_to_its_own_addresses() {
    let mut fw = firewall(false);
    let ip = single(
        fw.handle(
            t(0),
            Interface::Client(A),
            &from_a(&icmp4_echo(A_IP, CLIENT_GW, 9, true)),
        ),
        Interface::Client(A),
    );
    let packet = assert_valid4(&ip);
    assert_eq!((packet.src_addr(), packet.dst_addr()), (CLIENT_GW, A_IP));
    assert_eq!(
        u8::from(
            Icmpv4Packet::new_checked(packet.payload())
                .unwrap()
                .msg_type()
        ),
        0
    );
    let ip = single(
        fw.handle(
            t(0),
            Interface::Uplink,
            &from_uplink(&icmp4_echo(UPLINK_GW, UPLINK_IP, 9, true)),
        ),
        Interface::Uplink,
    );
    let packet = assert_valid4(&ip);
    assert_eq!(
        (packet.src_addr(), packet.dst_addr()),
        (UPLINK_IP, UPLINK_GW)
    );
    assert_eq!(fw.counters().echo_replies, 2);
}

#[test]
fn spoofed_sources_are_dropped_on_both_sides() {
    let mut fw = firewall(false);
    // A client using another address (here B's, then a random one).
    for src in [B_IP, Ipv4Addr::new(1, 2, 3, 4)] {
        assert!(fw
            .handle(
                t(0),
                Interface::Client(A),
                &from_a(&tcp(src, 1, WEB, 80, SYN))
            )
            .is_empty());
    }
    // The uplink claiming to be a client.
    assert!(fw
        .handle(
            t(0),
            Interface::Uplink,
            &from_uplink(&tcp(A_IP, 1, UPLINK_IP, 80, SYN))
        )
        .is_empty());
    assert_eq!(fw.counters().dropped_spoofed, 3);
    assert_eq!(fw.conntrack().len(), 0);
    // Frames from a client on a link that was never configured.
    assert!(fw
        .handle(
            t(0),
            Interface::Client(firewall::ClientId(99)),
            &from_a(&tcp(A_IP, 1, WEB, 80, SYN))
        )
        .is_empty());
    assert_eq!(fw.counters().dropped_unknown_interface, 1);
}

#[test]
fn clients_cannot_reach_each_other() {
    let mut fw = firewall(false);
    assert!(fw
        .handle(
            t(0),
            Interface::Client(A),
            &from_a(&tcp(A_IP, 1, B_IP, 80, SYN))
        )
        .is_empty());
    assert!(fw
        .handle(
            t(0),
            Interface::Client(B),
            &from_b(&udp(B_IP, 1, A_IP, 80, b"x"))
        )
        .is_empty());
    // Not even something that looks like a reply.
    assert!(fw
        .handle(
            t(0),
            Interface::Client(B),
            &from_b(&tcp(B_IP, 80, A_IP, 1, SYN_ACK))
        )
        .is_empty());
    assert_eq!(fw.counters().dropped_inter_client, 3);
}

#[test]
fn rule_changes_apply_at_once_and_kill_only_forbidden_flows() {
    let mut fw = firewall(false);
    let web_syn = tcp(A_IP, 40000, WEB, 80, SYN);
    let tls_syn = tcp(A_IP, 40001, WEB, 443, SYN);
    single(
        fw.handle(t(0), Interface::Client(A), &from_a(&web_syn)),
        Interface::Uplink,
    );
    single(
        fw.handle(t(0), Interface::Client(A), &from_a(&tls_syn)),
        Interface::Uplink,
    );
    // B's flow to 443 is not A's business.
    single(
        fw.handle(
            t(0),
            Interface::Client(B),
            &from_b(&tcp(B_IP, 40002, WEB, 443, SYN)),
        ),
        Interface::Uplink,
    );
    assert_eq!(fw.conntrack().len(), 3);

    let killed = fw.set_rules(
        IpAddr::V4(A_IP),
        rules(
            Family::V4,
            "drop",
            &[("0000", "action=accept proto=tcp dstports=80-80")],
        ),
    );
    assert_eq!(killed, 1);
    assert_eq!(fw.conntrack().len(), 2);
    assert_eq!(fw.counters().flows_killed_by_rules, 1);
    // The surviving flow still works both ways.
    single(
        fw.handle(
            t(1),
            Interface::Client(A),
            &from_a(&tcp(A_IP, 40000, WEB, 80, ACK)),
        ),
        Interface::Uplink,
    );
    single(
        fw.handle(
            t(1),
            Interface::Uplink,
            &from_uplink(&tcp(WEB, 80, UPLINK_IP, 40000, ACK)),
        ),
        Interface::Client(A),
    );
    // The killed one is gone in both directions...
    assert!(fw
        .handle(
            t(1),
            Interface::Uplink,
            &from_uplink(&tcp(WEB, 443, UPLINK_IP, 40001, ACK))
        )
        .is_empty());
    // (the client's next ACK is judged as a picked-up connection, as in
    // Linux once `conntrack -D` removed it, and refused)...
    let ack = tcp(A_IP, 40001, WEB, 443, ACK);
    let ip = single(
        fw.handle(t(1), Interface::Client(A), &from_a(&ack)),
        Interface::Client(A),
    );
    assert_admin_prohibited4(&ip, &ack);
    // ...and cannot be reopened.
    let ip = single(
        fw.handle(t(1), Interface::Client(A), &from_a(&tls_syn)),
        Interface::Client(A),
    );
    assert_admin_prohibited4(&ip, &tls_syn);
    // B is unaffected.
    single(
        fw.handle(
            t(1),
            Interface::Client(B),
            &from_b(&tcp(B_IP, 40002, WEB, 443, ACK)),
        ),
        Interface::Uplink,
    );
}

#[test]
fn port_collisions_between_clients_get_distinct_nat_ports() {
    let mut fw = firewall(false);
    let ip_a = single(
        fw.handle(
            t(0),
            Interface::Client(A),
            &from_a(&udp(A_IP, 5353, WEB, 9999, b"a")),
        ),
        Interface::Uplink,
    );
    let ip_b = single(
        fw.handle(
            t(0),
            Interface::Client(B),
            &from_b(&udp(B_IP, 5353, WEB, 9999, b"b")),
        ),
        Interface::Uplink,
    );
    let port_a = udp_ports(assert_valid4(&ip_a).payload()).0;
    let port_b = udp_ports(assert_valid4(&ip_b).payload()).0;
    assert_eq!(port_a, 5353);
    assert_ne!(port_a, port_b);
    let to_b = single(
        fw.handle(
            t(0),
            Interface::Uplink,
            &from_uplink(&udp(WEB, 9999, UPLINK_IP, port_b, b"B")),
        ),
        Interface::Client(B),
    );
    assert_eq!(assert_valid4(&to_b).dst_addr(), B_IP);
    assert_eq!(
        udp_ports(Ipv4Packet::new_checked(&to_b[..]).unwrap().payload()),
        (9999, 5353)
    );
    let to_a = single(
        fw.handle(
            t(0),
            Interface::Uplink,
            &from_uplink(&udp(WEB, 9999, UPLINK_IP, port_a, b"A")),
        ),
        Interface::Client(A),
    );
    assert_eq!(assert_valid4(&to_a).dst_addr(), A_IP);
}

#[test]
fn icmp_errors_from_the_uplink_are_translated_with_their_quoted_packet() {
    let mut fw = firewall(false);
    fw.set_rules(
        IpAddr::V4(A_IP),
        rules(
            Family::V4,
            "drop",
            &[("0000", "action=accept specialtarget=dns")],
        ),
    );
    let query = udp(A_IP, 33333, VIRTUAL_DNS, 53, b"query-with-some-bytes");
    let sent = single(
        fw.handle(t(0), Interface::Client(A), &from_a(&query)),
        Interface::Uplink,
    );
    let nat_port = udp_ports(Ipv4Packet::new_checked(&sent[..]).unwrap().payload()).0;

    // The resolver answers "port unreachable", quoting what it received.
    let router = Ipv4Addr::new(192, 168, 1, 254);
    for (from, expected_outer_src) in [(UPSTREAM_DNS, VIRTUAL_DNS), (router, router)] {
        let error = icmp4_error(from, UPLINK_IP, 3, 3, &sent[..28]);
        let ip = single(
            fw.handle(t(0), Interface::Uplink, &from_uplink(&error)),
            Interface::Client(A),
        );
        let outer = assert_valid4(&ip);
        assert_eq!(outer.dst_addr(), A_IP);
        assert_eq!(outer.src_addr(), expected_outer_src);
        let icmp = Icmpv4Packet::new_checked(outer.payload()).unwrap();
        assert_eq!((u8::from(icmp.msg_type()), icmp.msg_code()), (3, 3));
        let quoted = Ipv4Packet::new_unchecked(icmp.data());
        assert!(quoted.verify_checksum(), "quoted header checksum fixed");
        assert_eq!(quoted.src_addr(), A_IP);
        assert_eq!(quoted.dst_addr(), VIRTUAL_DNS);
        assert_eq!(&icmp.data()[20..22], &33333u16.to_be_bytes());
        assert_eq!(&icmp.data()[22..24], &53u16.to_be_bytes());
    }
    assert_eq!(fw.counters().icmp_errors_translated, 2);

    // An error about a flow we do not know goes nowhere.
    let mut unknown = sent[..28].to_vec();
    unknown[20..22].copy_from_slice(&(nat_port.wrapping_add(1)).to_be_bytes());
    let error = icmp4_error(router, UPLINK_IP, 3, 3, &unknown);
    assert!(fw
        .handle(t(0), Interface::Uplink, &from_uplink(&error))
        .is_empty());
}

#[test]
fn icmp_errors_quoting_tcp_fix_the_quoted_checksum_when_present() {
    let mut fw = firewall(false);
    let sent = single(
        fw.handle(
            t(0),
            Interface::Client(A),
            &from_a(&tcp(A_IP, 40000, WEB, 80, SYN)),
        ),
        Interface::Uplink,
    );
    let router = Ipv4Addr::new(192, 168, 1, 254);
    // Linux quotes the whole packet; then the quoted TCP checksum is checkable.
    let error = icmp4_error(router, UPLINK_IP, 11, 0, &sent);
    let ip = single(
        fw.handle(t(0), Interface::Uplink, &from_uplink(&error)),
        Interface::Client(A),
    );
    let outer = assert_valid4(&ip);
    let icmp = Icmpv4Packet::new_checked(outer.payload()).unwrap();
    let quoted = assert_valid4(icmp.data());
    assert_eq!(quoted.src_addr(), A_IP);
    assert_eq!(tcp_ports(quoted.payload()), (40000, 80));
}

#[test]
fn fragments_follow_their_first_fragment() {
    let mut fw = firewall(false);
    // A UDP datagram split in two: the first fragment has the header.
    let full = udp_datagram(IpAddr::V4(A_IP), 7000, IpAddr::V4(WEB), 7001, &[0xab; 64]);
    let (first_part, rest) = full.split_at(40);
    let mut first = ip4(A_IP, WEB, IpProtocol::Udp, first_part);
    let mut later = ip4(A_IP, WEB, IpProtocol::Udp, rest);
    {
        let mut p = Ipv4Packet::new_unchecked(&mut first[..]);
        p.set_more_frags(true);
        p.fill_checksum();
        let mut p = Ipv4Packet::new_unchecked(&mut later[..]);
        p.set_frag_offset(40);
        p.fill_checksum();
    }
    // A later fragment before any first fragment is dropped.
    assert!(fw
        .handle(t(0), Interface::Client(A), &from_a(&later))
        .is_empty());
    assert_eq!(fw.counters().dropped_fragment, 1);

    let out_first = single(
        fw.handle(t(0), Interface::Client(A), &from_a(&first)),
        Interface::Uplink,
    );
    let out_later = single(
        fw.handle(t(0), Interface::Client(A), &from_a(&later)),
        Interface::Uplink,
    );
    for p in [&out_first, &out_later] {
        let packet = Ipv4Packet::new_checked(&p[..]).unwrap();
        assert!(packet.verify_checksum());
        assert_eq!(packet.src_addr(), UPLINK_IP);
    }
    // Reassembled, the translated datagram has a valid UDP checksum.
    let mut datagram = Ipv4Packet::new_checked(&out_first[..])
        .unwrap()
        .payload()
        .to_vec();
    datagram.extend_from_slice(Ipv4Packet::new_checked(&out_later[..]).unwrap().payload());
    let udp = smoltcp::wire::UdpPacket::new_checked(&datagram[..]).unwrap();
    assert!(udp.verify_checksum(&ip_addr(IpAddr::V4(UPLINK_IP)), &ip_addr(IpAddr::V4(WEB))));
    assert_eq!(fw.tracked_fragmented_datagrams(), 1);
}

#[test]
fn flows_expire_with_the_time_passed_in() {
    let mut fw = firewall(false);
    single(
        fw.handle(
            t(100),
            Interface::Client(A),
            &from_a(&udp(A_IP, 6000, WEB, 6001, b"x")),
        ),
        Interface::Uplink,
    );
    // Unreplied UDP lives 30 s.
    fw.poll(t(129));
    assert_eq!(fw.conntrack().len(), 1);
    single(
        fw.handle(
            t(129),
            Interface::Uplink,
            &from_uplink(&udp(WEB, 6001, UPLINK_IP, 6000, b"y")),
        ),
        Interface::Client(A),
    );
    // Replied UDP lives 120 s from the last packet.
    fw.poll(t(248));
    assert_eq!(fw.conntrack().len(), 1);
    fw.poll(t(249));
    assert_eq!(fw.conntrack().len(), 0);
    assert!(fw
        .handle(
            t(250),
            Interface::Uplink,
            &from_uplink(&udp(WEB, 6001, UPLINK_IP, 6000, b"late"))
        )
        .is_empty());
    assert_eq!(fw.conntrack().stats().expired, 1);
}

#[test]
fn tcp_teardown_shortens_the_timeout_and_a_new_syn_is_judged_again() {
    let mut fw = firewall(false);
    let syn = tcp(A_IP, 41000, WEB, 80, SYN);
    single(
        fw.handle(t(0), Interface::Client(A), &from_a(&syn)),
        Interface::Uplink,
    );
    single(
        fw.handle(
            t(0),
            Interface::Uplink,
            &from_uplink(&tcp(WEB, 80, UPLINK_IP, 41000, SYN_ACK)),
        ),
        Interface::Client(A),
    );
    single(
        fw.handle(
            t(0),
            Interface::Client(A),
            &from_a(&tcp(A_IP, 41000, WEB, 80, ACK)),
        ),
        Interface::Uplink,
    );
    // Established flows live for days.
    fw.poll(t(3600));
    assert_eq!(fw.conntrack().len(), 1);
    single(
        fw.handle(
            t(3600),
            Interface::Uplink,
            &from_uplink(&tcp(WEB, 80, UPLINK_IP, 41000, RST)),
        ),
        Interface::Client(A),
    );
    fw.poll(t(3611));
    assert_eq!(fw.conntrack().len(), 0, "closed flows go after 10 s");

    single(
        fw.handle(t(4000), Interface::Client(A), &from_a(&syn)),
        Interface::Uplink,
    );
    single(
        fw.handle(
            t(4000),
            Interface::Client(A),
            &from_a(&tcp(A_IP, 41000, WEB, 80, FIN)),
        ),
        Interface::Uplink,
    );
    single(
        fw.handle(
            t(4000),
            Interface::Uplink,
            &from_uplink(&tcp(WEB, 80, UPLINK_IP, 41000, FIN)),
        ),
        Interface::Client(A),
    );
    // In TIME_WAIT a new SYN is a new connection, judged by the rules.
    fw.set_rules(IpAddr::V4(A_IP), rules(Family::V4, "drop", &[]));
    assert_eq!(fw.conntrack().len(), 0, "the rule change killed it anyway");
    let ip = single(
        fw.handle(t(4001), Interface::Client(A), &from_a(&syn)),
        Interface::Client(A),
    );
    assert_admin_prohibited4(&ip, &syn);
}

#[test]
fn a_flood_of_new_flows_keeps_memory_bounded() {
    let mut cfg = config(false);
    cfg.max_flows = 64;
    cfg.max_flows_per_client = 64;
    let mut fw = new_firewall(cfg);
    fw.add_client(
        A,
        ClientConfig {
            ip4: A_IP,
            ip6: None,
            mac: Some(A_MAC),
        },
    );
    fw.set_rules(IpAddr::V4(A_IP), RuleSet::accept_all());
    // One established flow that must survive the flood.
    single(
        fw.handle(
            t(0),
            Interface::Client(A),
            &from_a(&tcp(A_IP, 50000, WEB, 443, SYN)),
        ),
        Interface::Uplink,
    );
    single(
        fw.handle(
            t(0),
            Interface::Uplink,
            &from_uplink(&tcp(WEB, 443, UPLINK_IP, 50000, SYN_ACK)),
        ),
        Interface::Client(A),
    );
    single(
        fw.handle(
            t(0),
            Interface::Client(A),
            &from_a(&tcp(A_IP, 50000, WEB, 443, ACK)),
        ),
        Interface::Uplink,
    );
    for i in 0..5000u32 {
        let dst = Ipv4Addr::from(0x0b00_0000 + i);
        let out = fw.handle(
            t(1),
            Interface::Client(A),
            &from_a(&udp(A_IP, 1024 + (i % 60000) as u16, dst, 9, b"x")),
        );
        assert_eq!(out.len(), 1);
        assert!(fw.conntrack().len() <= 64);
    }
    assert_eq!(fw.conntrack().len(), 64);
    assert!(fw.conntrack().stats().evicted >= 5000 - 63);
    single(
        fw.handle(
            t(2),
            Interface::Uplink,
            &from_uplink(&tcp(WEB, 443, UPLINK_IP, 50000, ACK)),
        ),
        Interface::Client(A),
    );
}

#[test]
fn removing_a_client_forgets_its_flows() {
    let mut fw = firewall(false);
    single(
        fw.handle(
            t(0),
            Interface::Client(A),
            &from_a(&udp(A_IP, 6000, WEB, 6001, b"x")),
        ),
        Interface::Uplink,
    );
    single(
        fw.handle(
            t(0),
            Interface::Client(B),
            &from_b(&udp(B_IP, 6000, WEB, 6002, b"x")),
        ),
        Interface::Uplink,
    );
    assert_eq!(fw.remove_client(A), 1);
    assert_eq!(fw.conntrack().len(), 1);
    assert!(fw
        .handle(
            t(0),
            Interface::Uplink,
            &from_uplink(&udp(WEB, 6001, UPLINK_IP, 6000, b"y"))
        )
        .is_empty());
}

#[test]
fn dsthost_rules_use_the_resolved_addresses() {
    let mut fw = firewall(false);
    fw.set_host_addresses(t(0), "Example.com", vec![IpAddr::V4(WEB)]);
    fw.set_rules(
        IpAddr::V4(A_IP),
        rules(
            Family::V4,
            "drop",
            &[("0000", "action=accept dsthost=example.com proto=tcp")],
        ),
    );
    assert_eq!(fw.dsthost_names(), vec!["example.com".to_string()]);
    single(
        fw.handle(
            t(0),
            Interface::Client(A),
            &from_a(&tcp(A_IP, 1, WEB, 443, SYN)),
        ),
        Interface::Uplink,
    );
    let other = tcp(A_IP, 2, Ipv4Addr::new(192, 0, 2, 9), 443, SYN);
    let ip = single(
        fw.handle(t(0), Interface::Client(A), &from_a(&other)),
        Interface::Client(A),
    );
    assert_admin_prohibited4(&ip, &other);
    assert_eq!(
        fw.take_rule_reports(),
        vec![firewall::RuleReport::Installed {
            addr: IpAddr::V4(A_IP)
        }]
    );
    let hosts = fw.dsthost_addresses(&IpAddr::V4(A_IP)).unwrap();
    assert_eq!(hosts["example.com"], vec![IpAddr::V4(WEB)]);
}

/// The DNS answer to `query` (a UDP payload) giving `addr` with `ttl`.
fn dns_answer(query: &[u8], ttl: u32, addr: Ipv4Addr) -> Vec<u8> {
    let mut out = query.to_vec();
    out[2] = 0x81;
    out[3] = 0x80;
    out[6..8].copy_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
    out.extend_from_slice(&ttl.to_be_bytes());
    out.extend_from_slice(&[0, 4]);
    out.extend_from_slice(&addr.octets());
    out
}

#[test]
fn dsthost_names_are_resolved_through_the_uplink_when_loaded() {
    let mut fw = new_firewall(config(false));
    fw.add_client(
        A,
        ClientConfig {
            ip4: A_IP,
            ip6: None,
            mac: Some(A_MAC),
        },
    );
    let dsthost = rules(
        Family::V4,
        "drop",
        &[("0000", "action=accept dsthost=example.com proto=tcp")],
    );
    fw.set_rules(IpAddr::V4(A_IP), dsthost.clone());
    assert!(fw.rules_pending(&IpAddr::V4(A_IP)));
    let syn = tcp(A_IP, 1, WEB, 443, SYN);
    let mut queries = 0;
    // Five minutes of polling every 100 ms; the answer's TTL is 60 s.
    for tenth in 0..3000 {
        let now = firewall::Instant::from_millis(tenth * 100);
        if tenth == 1500 {
            // A reload after the TTL asks again.
            fw.set_rules(IpAddr::V4(A_IP), dsthost.clone());
        }
        for tx in fw.poll(now) {
            queries += 1;
            let ip = single(vec![tx], Interface::Uplink);
            let packet = assert_valid4(&ip);
            assert_eq!(
                (packet.src_addr(), packet.dst_addr()),
                (UPLINK_IP, UPSTREAM_DNS)
            );
            let udp = smoltcp::wire::UdpPacket::new_checked(packet.payload()).unwrap();
            assert_eq!(udp.dst_port(), 53);
            if tenth == 0 {
                // Before the answer the client has no rules yet.
                assert!(fw
                    .handle(now, Interface::Client(A), &from_a(&syn))
                    .is_empty());
            }
            let answer = udp_datagram(
                IpAddr::V4(UPSTREAM_DNS),
                53,
                IpAddr::V4(UPLINK_IP),
                udp.src_port(),
                &dns_answer(udp.payload(), 60, WEB),
            );
            let answer = ip4(UPSTREAM_DNS, UPLINK_IP, IpProtocol::Udp, &answer);
            assert!(fw
                .handle(now, Interface::Uplink, &from_uplink(&answer))
                .is_empty());
        }
        if tenth == 5 {
            // Resolved: the flow is allowed.
            single(
                fw.handle(now, Interface::Client(A), &from_a(&syn)),
                Interface::Uplink,
            );
        }
    }
    assert_eq!(queries, 2, "one query per load, none to refresh");
    assert_eq!(fw.resolver_stats().answers, 2);
    // A forged answer (no query in flight) is not the resolver's: it is
    // a packet of no flow, dropped and counted as one.
    let no_flow = fw.counters().dropped_no_flow;
    let forged = udp(UPSTREAM_DNS, 53, UPLINK_IP, 40000, &[0u8; 40]);
    assert!(fw
        .handle(t(400), Interface::Uplink, &from_uplink(&forged))
        .is_empty());
    assert_eq!(fw.counters().dropped_no_flow, no_flow + 1);
    assert_eq!(fw.resolver_stats().answers, 2);
}

/// The resolver's queries leave from random ports with random ids; an
/// answer from the right resolver to the port asked from, but with
/// another id, is counted and changes nothing; NAT never gives a client
/// the port a query waits on.
#[test]
fn dsthost_queries_use_random_ports_and_ids() {
    let mut fw = new_firewall(config(false));
    fw.add_client(
        A,
        ClientConfig {
            ip4: A_IP,
            ip6: None,
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
    fw.set_rules(IpAddr::V4(B_IP), RuleSet::accept_all());
    let mut seen = Vec::new();
    for i in 0..8 {
        let name = format!("h{i}.example");
        let set = rules(
            Family::V4,
            "drop",
            &[("0000", &format!("action=accept dsthost={name}"))],
        );
        fw.set_rules(IpAddr::V4(A_IP), set);
        for tx in fw.poll(t(i)) {
            let ip = single(vec![tx], Interface::Uplink);
            let packet = assert_valid4(&ip);
            let udp = smoltcp::wire::UdpPacket::new_checked(packet.payload()).unwrap();
            let id = u16::from_be_bytes([udp.payload()[0], udp.payload()[1]]);
            seen.push((udp.src_port(), id));
        }
    }
    assert!(seen.len() >= 8, "{seen:?}");
    let mut ports: Vec<u16> = seen.iter().map(|s| s.0).collect();
    ports.sort();
    ports.dedup();
    assert!(ports.len() >= seen.len() - 1, "ports repeat: {seen:?}");
    assert!(ports.iter().all(|p| *p >= 1024));
    let (port, id) = *seen.last().unwrap();
    // A client's flow to the resolver from the port a query waits on
    // gets another port.
    let out = single(
        fw.handle(
            t(9),
            Interface::Client(B),
            &from_b(&udp(B_IP, port, UPSTREAM_DNS, 53, b"q")),
        ),
        Interface::Uplink,
    );
    let translated = smoltcp::wire::UdpPacket::new_checked(assert_valid4(&out).payload())
        .unwrap()
        .src_port();
    assert_ne!(translated, port);
    // The right resolver and port, another id: ignored, counted.
    let ignored = fw.resolver_stats().ignored;
    let mut message = vec![0u8; 40];
    message[..2].copy_from_slice(&(id ^ 1).to_be_bytes());
    let forged = udp(UPSTREAM_DNS, 53, UPLINK_IP, port, &message);
    assert!(fw
        .handle(t(9), Interface::Uplink, &from_uplink(&forged))
        .is_empty());
    assert_eq!(fw.resolver_stats().ignored, ignored + 1);
}

// ----- IPv6 -----

#[test]
fn ipv6_is_dropped_and_counted_when_the_uplink_has_none() {
    let mut fw = firewall(false);
    assert!(fw
        .handle(
            t(0),
            Interface::Client(A),
            &from_a(&tcp(A_IP6, 1, WEB6, 80, SYN))
        )
        .is_empty());
    assert_eq!(fw.counters().dropped_ipv6_no_uplink, 1);
    assert_eq!(fw.counters().forwarded_out, 0);
}

#[test]
fn ipv6_is_translated_and_dst6_rules_enforced() {
    let mut fw = firewall(true);
    fw.set_rules(
        IpAddr::V6(A_IP6),
        rules(
            Family::V6,
            "drop",
            &[("0000", "action=accept dst6=2606:2800::/24 proto=tcp")],
        ),
    );
    let ip = single(
        fw.handle(
            t(0),
            Interface::Client(A),
            &from_a(&tcp(A_IP6, 40000, WEB6, 80, SYN)),
        ),
        Interface::Uplink,
    );
    let packet = assert_valid6(&ip);
    assert_eq!(packet.src_addr(), UPLINK_IP6);
    assert_eq!(packet.dst_addr(), WEB6);
    assert_eq!(packet.hop_limit(), 63);
    let sport = tcp_ports(packet.payload()).0;
    let ip = single(
        fw.handle(
            t(0),
            Interface::Uplink,
            &from_uplink(&tcp(WEB6, 80, UPLINK_IP6, sport, SYN_ACK)),
        ),
        Interface::Client(A),
    );
    let packet = assert_valid6(&ip);
    assert_eq!(packet.dst_addr(), A_IP6);
    assert_eq!(tcp_ports(packet.payload()), (80, 40000));

    // Outside the dst6 network: ICMPv6 admin-prohibited.
    let other = std::net::Ipv6Addr::new(0x2a00, 0x1450, 0, 0, 0, 0, 0, 1);
    let refused = tcp(A_IP6, 40001, other, 80, SYN);
    let ip = single(
        fw.handle(t(0), Interface::Client(A), &from_a(&refused)),
        Interface::Client(A),
    );
    let packet = assert_valid6(&ip);
    assert_eq!(packet.src_addr(), CLIENT_GW6);
    assert_eq!(packet.dst_addr(), A_IP6);
    let payload = packet.payload();
    assert_eq!((payload[0], payload[1]), (1, 1));
    assert_eq!(&payload[8..8 + refused.len()], &refused[..]);

    // ICMPv6 echo through the firewall, translated by identifier.
    fw.set_rules(IpAddr::V6(A_IP6), RuleSet::accept_all());
    let ip = single(
        fw.handle(
            t(0),
            Interface::Client(A),
            &from_a(&icmp6_echo(A_IP6, WEB6, 77, true)),
        ),
        Interface::Uplink,
    );
    let packet = assert_valid6(&ip);
    let ident = u16::from_be_bytes([packet.payload()[4], packet.payload()[5]]);
    let ip = single(
        fw.handle(
            t(0),
            Interface::Uplink,
            &from_uplink(&icmp6_echo(WEB6, UPLINK_IP6, ident, false)),
        ),
        Interface::Client(A),
    );
    let packet = assert_valid6(&ip);
    assert_eq!(packet.dst_addr(), A_IP6);
    assert_eq!(
        u16::from_be_bytes([packet.payload()[4], packet.payload()[5]]),
        77
    );

    // A v4-only client sending IPv6 is spoofing.
    assert!(fw
        .handle(
            t(0),
            Interface::Client(B),
            &from_b(&tcp(A_IP6, 1, WEB6, 80, SYN))
        )
        .is_empty());
}

#[test]
fn neighbor_solicitations_from_clients_are_answered_for_the_gateway() {
    use smoltcp::wire::{Icmpv6Packet, Icmpv6Repr, NdiscRepr, RawHardwareAddress};
    let mut fw = firewall(true);
    let ns = |target: std::net::Ipv6Addr| {
        let repr = Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit {
            target_addr: target,
            lladdr: Some(RawHardwareAddress::from(A_MAC)),
        });
        let mut l4 = vec![0u8; repr.buffer_len()];
        repr.emit(
            &A_IP6,
            &target,
            &mut Icmpv6Packet::new_unchecked(&mut l4[..]),
            &checksum_caps(),
        );
        let mut ip = ip6(A_IP6, target, IpProtocol::Icmpv6, &l4);
        Ipv6Packet::new_unchecked(&mut ip[..]).set_hop_limit(255);
        from_a(&ip)
    };
    let out = fw.handle(t(0), Interface::Client(A), &ns(CLIENT_GW6));
    let ip = single(out, Interface::Client(A));
    let packet = assert_valid6(&ip);
    let icmp = Icmpv6Packet::new_checked(packet.payload()).unwrap();
    match Icmpv6Repr::parse(
        &packet.src_addr(),
        &packet.dst_addr(),
        &icmp,
        &checksum_caps(),
    )
    .unwrap()
    {
        Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
            target_addr,
            lladdr,
            ..
        }) => {
            assert_eq!(target_addr, CLIENT_GW6);
            assert_eq!(lladdr, Some(RawHardwareAddress::from(FW_CLIENT_MAC)));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        fw.handle(t(0), Interface::Client(A), &ns(A_IP6)).is_empty(),
        "not for its own address"
    );
}

#[test]
fn uplink_traffic_not_for_us_is_dropped() {
    let mut fw = firewall(false);
    assert!(fw
        .handle(
            t(0),
            Interface::Uplink,
            &from_uplink(&udp(WEB, 1, Ipv4Addr::new(10, 137, 0, 99), 2, b"x"))
        )
        .is_empty());
    assert_eq!(fw.counters().dropped_not_for_us, 1);
    // Bad IPv4 header checksum.
    let mut bad = udp(WEB, 1, UPLINK_IP, 2, b"x");
    bad[10] ^= 0xff;
    assert!(fw
        .handle(t(0), Interface::Uplink, &from_uplink(&bad))
        .is_empty());
    assert_eq!(fw.counters().dropped_malformed, 1);
    // TTL exhausted: not forwarded (time exceeded goes back to the client,
    // linux_semantics.rs).
    let mut dying = tcp(A_IP, 1, WEB, 80, SYN);
    {
        let mut p = Ipv4Packet::new_unchecked(&mut dying[..]);
        p.set_hop_limit(1);
        p.fill_checksum();
    }
    single(
        fw.handle(t(0), Interface::Client(A), &from_a(&dying)),
        Interface::Client(A),
    );
    assert_eq!(fw.counters().dropped_ttl, 1);
    assert_eq!(fw.counters().forwarded_out, 0);
}

#[test]
fn broadcast_multicast_and_link_local_destinations_are_not_forwarded() {
    let mut fw = firewall(true);
    for dst in [
        IpAddr::V4(Ipv4Addr::BROADCAST),
        IpAddr::V4(Ipv4Addr::new(224, 0, 0, 251)),
        IpAddr::V4(Ipv4Addr::new(169, 254, 1, 1)),
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
    ] {
        assert!(fw
            .handle(
                t(0),
                Interface::Client(A),
                &from_a(&udp(A_IP, 5353, dst, 5353, b"m"))
            )
            .is_empty());
    }
    let mdns6: std::net::Ipv6Addr = "ff02::fb".parse().unwrap();
    let link_local: std::net::Ipv6Addr = "fe80::1".parse().unwrap();
    for dst in [mdns6, link_local] {
        assert!(fw
            .handle(
                t(0),
                Interface::Client(A),
                &from_a(&udp(A_IP6, 5353, dst, 5353, b"m"))
            )
            .is_empty());
    }
    assert_eq!(fw.counters().dropped_unsupported, 6);
    assert_eq!(fw.conntrack().len(), 0);
}

#[test]
fn flows_past_their_deadline_are_not_used_even_without_poll() {
    let mut fw = firewall(false);
    single(
        fw.handle(
            t(0),
            Interface::Client(A),
            &from_a(&udp(A_IP, 6000, WEB, 6001, b"x")),
        ),
        Interface::Uplink,
    );
    // No poll in between: the reply 31 s later finds no flow.
    assert!(fw
        .handle(
            t(31),
            Interface::Uplink,
            &from_uplink(&udp(WEB, 6001, UPLINK_IP, 6000, b"y"))
        )
        .is_empty());
    assert_eq!(fw.counters().dropped_no_flow, 1);
}

#[test]
fn icmp_errors_from_a_client_about_its_flows_are_translated_to_the_uplink() {
    let mut fw = firewall(false);
    fw.set_rules(
        IpAddr::V4(A_IP),
        rules(
            Family::V4,
            "drop",
            &[("0000", "action=accept specialtarget=dns")],
        ),
    );
    let sent = single(
        fw.handle(
            t(0),
            Interface::Client(A),
            &from_a(&udp(A_IP, 33333, VIRTUAL_DNS, 53, b"q")),
        ),
        Interface::Uplink,
    );
    let nat_port = udp_ports(Ipv4Packet::new_checked(&sent[..]).unwrap().payload()).0;
    let reply = single(
        fw.handle(
            t(0),
            Interface::Uplink,
            &from_uplink(&udp(UPSTREAM_DNS, 53, UPLINK_IP, nat_port, b"late answer")),
        ),
        Interface::Client(A),
    );
    // The client's socket is gone: it answers port unreachable, quoting
    // the reply as it received it (from the virtual DNS server).
    let error = icmp4_error(A_IP, VIRTUAL_DNS, 3, 3, &reply);
    let ip = single(
        fw.handle(t(0), Interface::Client(A), &from_a(&error)),
        Interface::Uplink,
    );
    let outer = assert_valid4(&ip);
    assert_eq!(
        (outer.src_addr(), outer.dst_addr()),
        (UPLINK_IP, UPSTREAM_DNS)
    );
    let icmp = Icmpv4Packet::new_checked(outer.payload()).unwrap();
    let quoted = assert_valid4(icmp.data());
    assert_eq!(
        (quoted.src_addr(), quoted.dst_addr()),
        (UPSTREAM_DNS, UPLINK_IP)
    );
    assert_eq!(udp_ports(quoted.payload()), (53, nat_port));
    assert_eq!(fw.counters().icmp_errors_translated, 1);

    // An error quoting a packet that was not for this client is refused.
    let forged = icmp4_error(A_IP, WEB, 3, 3, &udp(WEB, 80, B_IP, 1234, b"x"));
    assert!(fw
        .handle(t(0), Interface::Client(A), &from_a(&forged))
        .is_empty());
    // ...and one about no known flow goes nowhere.
    let unknown = icmp4_error(A_IP, WEB, 3, 3, &udp(WEB, 80, A_IP, 1234, b"x"));
    assert!(fw
        .handle(t(0), Interface::Client(A), &from_a(&unknown))
        .is_empty());
    assert_eq!(fw.counters().icmp_errors_translated, 1);
}

#[test]
fn a_flooding_client_cannot_evict_another_clients_flows() {
    let mut cfg = config(false);
    cfg.max_flows = 64;
    cfg.max_flows_per_client = 16;
    let mut fw = new_firewall(cfg);
    for (id, ip, mac) in [(A, A_IP, A_MAC), (B, B_IP, B_MAC)] {
        fw.add_client(
            id,
            ClientConfig {
                ip4: ip,
                ip6: None,
                mac: Some(mac),
            },
        );
        fw.set_rules(IpAddr::V4(ip), RuleSet::accept_all());
    }
    // B opens a flow that nobody answers yet: the easiest one to evict.
    single(
        fw.handle(
            t(0),
            Interface::Client(B),
            &from_b(&udp(B_IP, 7000, WEB, 7001, b"b")),
        ),
        Interface::Uplink,
    );
    for i in 0..2000u32 {
        let dst = Ipv4Addr::from(0x0b00_0000 + i);
        fw.handle(
            t(0),
            Interface::Client(A),
            &from_a(&udp(A_IP, 2000, dst, 9, b"x")),
        );
    }
    assert_eq!(fw.conntrack().client_len(A), 16);
    assert_eq!(fw.conntrack().client_len(B), 1);
    single(
        fw.handle(
            t(1),
            Interface::Uplink,
            &from_uplink(&udp(WEB, 7001, UPLINK_IP, 7000, b"r")),
        ),
        Interface::Client(B),
    );
}

#[test]
fn ipv6_fragments_follow_their_first_fragment() {
    let mut fw = firewall(true);
    let src = IpAddr::V6(A_IP6);
    let dst = IpAddr::V6(WEB6);
    let full = udp_datagram(src, 7000, dst, 7001, &[0xcd; 64]);
    let (first_part, rest) = full.split_at(40);
    // IPv6 header, then a fragment header (next header UDP).
    let fragment = |offset: u16, more: bool, part: &[u8]| {
        let mut l4 = vec![17u8, 0];
        l4.extend_from_slice(&((offset << 3) | u16::from(more)).to_be_bytes());
        l4.extend_from_slice(&0xdead_beefu32.to_be_bytes());
        l4.extend_from_slice(part);
        ip6(A_IP6, WEB6, IpProtocol::Unknown(44), &l4)
    };
    let first = fragment(0, true, first_part);
    let later = fragment(5, false, rest);
    assert!(fw
        .handle(t(0), Interface::Client(A), &from_a(&later))
        .is_empty());
    assert_eq!(fw.counters().dropped_fragment, 1);
    let out_first = single(
        fw.handle(t(0), Interface::Client(A), &from_a(&first)),
        Interface::Uplink,
    );
    let out_later = single(
        fw.handle(t(0), Interface::Client(A), &from_a(&later)),
        Interface::Uplink,
    );
    let mut datagram = Vec::new();
    for p in [&out_first, &out_later] {
        let packet = Ipv6Packet::new_checked(&p[..]).unwrap();
        assert_eq!(packet.src_addr(), UPLINK_IP6);
        assert_eq!(packet.hop_limit(), 63);
        datagram.extend_from_slice(&packet.payload()[8..]);
    }
    let udp = smoltcp::wire::UdpPacket::new_checked(&datagram[..]).unwrap();
    assert!(udp.verify_checksum(&ip_addr(IpAddr::V6(UPLINK_IP6)), &ip_addr(dst)));
}

#[test]
fn a_new_configuration_keeps_the_flows_that_still_hold() {
    let mut fw = firewall(false);
    set_a_dns_only(&mut fw);
    let web = tcp(A_IP, 40000, WEB, 80, SYN);
    // Client B (accept-all) has a web flow, A a DNS flow.
    single(
        fw.handle(
            t(0),
            Interface::Client(B),
            &from_b(&tcp(B_IP, 40000, WEB, 80, SYN)),
        ),
        Interface::Uplink,
    );
    single(
        fw.handle(
            t(0),
            Interface::Client(A),
            &from_a(&udp(A_IP, 5353, VIRTUAL_DNS, 53, b"q")),
        ),
        Interface::Uplink,
    );
    assert_eq!(fw.conntrack().len(), 2);
    // New upstream resolver: A's DNS flow no longer matches
    // specialtarget=dns and ends; B's web flow stays.
    let mut moved = config(false);
    moved.dns = firewall::Config::new(
        moved.uplink,
        moved.client_side,
        &[Ipv4Addr::new(192, 0, 2, 153)],
    )
    .dns;
    assert_eq!(fw.set_config(moved.clone()), 1);
    assert_eq!(fw.conntrack().len(), 1);
    let ip = single(
        fw.handle(
            t(1),
            Interface::Client(A),
            &from_a(&udp(A_IP, 5354, VIRTUAL_DNS, 53, b"q")),
        ),
        Interface::Uplink,
    );
    assert_eq!(assert_valid4(&ip).dst_addr(), Ipv4Addr::new(192, 0, 2, 153));
    let refused = single(
        fw.handle(t(1), Interface::Client(A), &from_a(&web)),
        Interface::Client(A),
    );
    assert_admin_prohibited4(&refused, &web);
    // A new uplink address ends every flow.
    moved.uplink.ip4 = Ipv4Addr::new(10, 137, 0, 7);
    assert_eq!(fw.set_config(moved), 2);
    assert!(fw.conntrack().is_empty());
    let ip = single(
        fw.handle(
            t(2),
            Interface::Client(B),
            &from_b(&tcp(B_IP, 40001, WEB, 80, SYN)),
        ),
        Interface::Uplink,
    );
    assert_eq!(assert_valid4(&ip).src_addr(), Ipv4Addr::new(10, 137, 0, 7));
}

fn set_a_dns_only(fw: &mut Firewall) {
    fw.set_rules(
        IpAddr::V4(A_IP),
        rules(
            Family::V4,
            "drop",
            &[("0000", "action=accept specialtarget=dns")],
        ),
    );
}

#[test]
fn dsthost_lookups_try_each_upstream_resolver_in_turn() {
    let secondary = Ipv4Addr::new(192, 168, 1, 54);
    let mut config = config(false);
    config.dns = firewall::Config::new(
        config.uplink,
        config.client_side,
        &[UPSTREAM_DNS, secondary],
    )
    .dns;
    let mut fw = new_firewall(config);
    fw.set_rules(
        IpAddr::V4(A_IP),
        rules(
            Family::V4,
            "drop",
            &[("0000", "action=accept dsthost=example.com")],
        ),
    );
    let mut asked = Vec::new();
    for second in 0..10 {
        for tx in fw.poll(t(second)) {
            let ip = single(vec![tx], Interface::Uplink);
            asked.push(assert_valid4(&ip).dst_addr());
        }
    }
    assert_eq!(asked, vec![UPSTREAM_DNS, secondary, UPSTREAM_DNS]);
}

#[test]
fn a_datagram_of_our_own_leaves_by_the_uplink_gateway() {
    use smoltcp::wire::{IpAddress, UdpPacket};
    let mut fw = firewall(false);
    let collector = Ipv4Addr::new(192, 0, 2, 7);
    let before = fw.counters().frames_out;
    let out = fw.send_udp_from_uplink(t(0), 50514, collector, 514, b"<30>1 - - moat - t - hello");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].interface, Interface::Uplink);
    let eth = EthernetFrame::new_checked(&out[0].frame[..]).unwrap();
    assert_eq!(eth.src_addr(), FW_UPLINK_MAC);
    assert_eq!(eth.dst_addr(), GATEWAY_MAC);
    let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
    assert!(ip.verify_checksum());
    assert_eq!((ip.src_addr(), ip.dst_addr()), (UPLINK_IP, collector));
    assert_eq!(ip.next_header(), IpProtocol::Udp);
    let udp = UdpPacket::new_checked(ip.payload()).unwrap();
    assert!(udp.verify_checksum(&IpAddress::Ipv4(UPLINK_IP), &IpAddress::Ipv4(collector)));
    assert_eq!((udp.src_port(), udp.dst_port()), (50514, 514));
    assert_eq!(udp.payload(), b"<30>1 - - moat - t - hello");
    assert_eq!(fw.counters().frames_out, before + 1);
}
