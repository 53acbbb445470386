//! The firewall against the Linux sys-firewall, one behaviour per test.
//!
//! Each test cites the line of qubes-core-agent-linux (commit a37fac93,
//! `qubesagent/firewall.py`, `network/qubes-ipv4.nft`, `qubes-ipv6.nft`,
//! `qubes-setup-dnat-to-ns`, `vif-route-qubes`) or of Linux's netfilter
//! whose behaviour it checks. docs/firewall.md ("Semantics") lists them
//! and the differences that remain.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use common::*;
use firewall::{ClientConfig, Config, Firewall, Interface};
use qubes::firewall_rules::{Family, LoadedRules, RuleSet};
use smoltcp::wire::{Icmpv4Packet, Icmpv6Packet, IpProtocol};

/// The ICMP type and code of an ICMPv4 packet.
fn icmp4_type_code(ip: &[u8]) -> (u8, u8) {
    let packet = assert_valid4(ip);
    let icmp = Icmpv4Packet::new_checked(packet.payload()).unwrap();
    (u8::from(icmp.msg_type()), icmp.msg_code())
}

/// The ICMPv6 type and code of an IPv6 packet.
fn icmp6_type_code(ip: &[u8]) -> (u8, u8) {
    let packet = assert_valid6(ip);
    let icmp = Icmpv6Packet::new_checked(packet.payload()).unwrap();
    (u8::from(icmp.msg_type()), icmp.msg_code())
}

/// Client A's rules from dom0's lines.
fn set_a_rules(fw: &mut Firewall, policy: &str, entries: &[(&str, &str)]) {
    fw.set_rules(IpAddr::V4(A_IP), rules(Family::V4, policy, entries));
}

/// A firewall with client A and no rules for it.
fn firewall_without_rules(config: Config) -> Firewall {
    let mut fw = new_firewall(config);
    fw.add_client(
        A,
        ClientConfig {
            ip4: A_IP,
            ip6: Some(A_IP6),
            mac: Some(A_MAC),
        },
    );
    fw
}

fn refused_with_admin_prohibited(fw: &mut Firewall, packet: &[u8]) {
    let out = single(
        fw.handle(t(0), Interface::Client(A), &from_a(packet)),
        Interface::Client(A),
    );
    assert_eq!(icmp4_type_code(&out), (3, 13), "admin-prohibited");
}

fn forwarded(fw: &mut Firewall, packet: &[u8]) -> Vec<u8> {
    single(
        fw.handle(t(0), Interface::Client(A), &from_a(packet)),
        Interface::Uplink,
    )
}

/// firewall.py:414-415 `supported_rule_opts` has no `dpi`, and 522-526
/// raise "Unsupported rule option(s)"; `handle_addr` (313-318) then
/// applies `[{'action': 'drop'}]`, a reject.
#[test]
fn rule_keys_linux_does_not_apply_block_the_client() {
    let mut fw = firewall(false);
    let loaded = LoadedRules::load(
        Family::V4,
        [
            ("policy", &b"accept"[..]),
            ("0000", &b"action=accept proto=tcp dstports=443 dpi=NO"[..]),
        ],
    );
    assert!(loaded.error.is_some());
    fw.apply_loaded_rules(IpAddr::V4(A_IP), Some(&loaded));
    refused_with_admin_prohibited(&mut fw, &tcp(A_IP, 40000, WEB, 443, SYN));
    refused_with_admin_prohibited(&mut fw, &tcp(A_IP, 40001, WEB, 80, SYN));
}

/// firewall.py:449-463 creates a client's chain (`saddr jump`) only for an
/// address with rules, and 658-663 give the forward chain `policy drop`:
/// an address without `/qubes-firewall/<ip>` falls through to a silent
/// drop. Once it had rules, a removed directory is read as one without a
/// policy (122-123 "No 'policy' defined") and the client is refused.
#[test]
fn a_client_without_rules_is_dropped_silently() {
    let mut fw = firewall_without_rules(config(false));
    let syn = tcp(A_IP, 40000, WEB, 80, SYN);
    assert!(fw
        .handle(t(0), Interface::Client(A), &from_a(&syn))
        .is_empty());
    fw.apply_loaded_rules(IpAddr::V4(A_IP), None);
    assert!(fw
        .handle(t(0), Interface::Client(A), &from_a(&syn))
        .is_empty());
    assert_eq!(fw.counters().dropped_no_rules, 2);
    assert_eq!(fw.counters().admin_prohibited_sent, 0);

    fw.set_rules(IpAddr::V4(A_IP), RuleSet::accept_all());
    forwarded(&mut fw, &syn);
    fw.apply_loaded_rules(IpAddr::V4(A_IP), None);
    refused_with_admin_prohibited(&mut fw, &tcp(A_IP, 40001, WEB, 80, SYN));
}

/// qubes-setup-dnat-to-ns:112-121: with no upstream resolver, "Drop IPv4
/// DNS requests to qubesdb_dns addresses", UDP and TCP port 53, in the nat
/// prerouting chain, before any client rule (so silently, even when the
/// rules would refuse it).
#[test]
fn dns_to_the_virtual_resolvers_without_upstream_is_dropped_silently() {
    let mut no_upstream = config(false);
    for redirect in &mut no_upstream.dns {
        redirect.upstream = None;
    }
    let mut fw = firewall_without_rules(no_upstream);
    for policy in ["accept", "drop"] {
        set_a_rules(&mut fw, policy, &[]);
        let udp_query = udp(A_IP, 33333, VIRTUAL_DNS, 53, b"query");
        let tcp_query = tcp(A_IP, 33334, VIRTUAL_DNS, 53, SYN);
        for query in [udp_query, tcp_query] {
            assert!(fw
                .handle(t(0), Interface::Client(A), &from_a(&query))
                .is_empty());
        }
    }
    assert_eq!(fw.counters().dropped_dns_no_upstream, 4);
    assert_eq!(fw.counters().admin_prohibited_sent, 0);
    // Only port 53 is translated or dropped; a ping is an ordinary flow.
    set_a_rules(&mut fw, "accept", &[]);
    let ip = forwarded(&mut fw, &icmp4_echo(A_IP, VIRTUAL_DNS, 7, true));
    assert_eq!(assert_valid4(&ip).dst_addr(), VIRTUAL_DNS);
}

/// firewall.py:569-574 match `daddr @dns-addr`, and 600-604 fill that set
/// with `dns_addresses()`, the nameservers of the firewall's own
/// resolv.conf: the upstream resolvers. The forward chain sees a query to
/// a virtual resolver after qubes-setup-dnat-to-ns:123-129 translated it
/// to the upstream, so that is the destination the rules judge.
#[test]
fn specialtarget_dns_matches_the_upstream_resolvers() {
    let mut fw = firewall(false);
    set_a_rules(
        &mut fw,
        "drop",
        &[("0000", "action=accept specialtarget=dns")],
    );
    let ip = forwarded(&mut fw, &udp(A_IP, 33333, VIRTUAL_DNS, 53, b"q"));
    assert_eq!(assert_valid4(&ip).dst_addr(), UPSTREAM_DNS);
    let ip = forwarded(&mut fw, &tcp(A_IP, 33334, UPSTREAM_DNS, 53, SYN));
    assert_eq!(assert_valid4(&ip).dst_addr(), UPSTREAM_DNS);
    refused_with_admin_prohibited(
        &mut fw,
        &udp(A_IP, 33335, Ipv4Addr::new(8, 8, 8, 8), 53, b"q"),
    );

    // A dst4= rule on the virtual address does not see translated queries.
    set_a_rules(
        &mut fw,
        "drop",
        &[
            ("0000", "action=drop dst4=10.139.1.1"),
            ("0001", "action=accept proto=udp dstports=53"),
        ],
    );
    let ip = forwarded(&mut fw, &udp(A_IP, 33336, VIRTUAL_DNS, 53, b"q"));
    assert_eq!(assert_valid4(&ip).dst_addr(), UPSTREAM_DNS);
}

/// qubes-ipv4.nft, chain input, for packets from a vif (`iifgroup 2`):
/// line 13 drops `ct state invalid`, 14 drops UDP to port 68, 16 accepts
/// ICMP (the kernel answers an echo request and consumes the rest), 18
/// rejects everything else `with icmp type host-prohibited`. Both the
/// client-side gateway and the uplink address are the firewall's own.
#[test]
fn traffic_to_the_firewall_itself_v4() {
    let mut fw = firewall(false);
    let to_us =
        |fw: &mut Firewall, packet: &[u8]| fw.handle(t(0), Interface::Client(A), &from_a(packet));
    let reply = single(
        to_us(&mut fw, &icmp4_echo(A_IP, CLIENT_GW, 9, true)),
        Interface::Client(A),
    );
    assert_eq!(icmp4_type_code(&reply), (0, 0));
    // Other ICMP: accepted by the input chain, no answer.
    assert!(to_us(&mut fw, &icmp4(A_IP, CLIENT_GW, 13, 9)).is_empty());
    assert!(to_us(&mut fw, &icmp4(A_IP, CLIENT_GW, 10, 0)).is_empty());
    // DHCP client port: dropped.
    assert!(to_us(&mut fw, &udp(A_IP, 67, CLIENT_GW, 68, b"dhcp")).is_empty());
    // TCP conntrack cannot open (RST, SYN+ACK): invalid, dropped.
    assert!(to_us(&mut fw, &tcp(A_IP, 40000, CLIENT_GW, 22, RST)).is_empty());
    assert!(to_us(&mut fw, &tcp(A_IP, 40000, CLIENT_GW, 22, SYN_ACK)).is_empty());
    // Everything else: host-prohibited, from the address it was sent to.
    for (packet, dst) in [
        (tcp(A_IP, 40000, CLIENT_GW, 22, SYN), CLIENT_GW),
        (udp(A_IP, 40000, CLIENT_GW, 53, b"q"), CLIENT_GW),
        (tcp(A_IP, 40001, UPLINK_IP, 80, SYN), UPLINK_IP),
    ] {
        let error = single(to_us(&mut fw, &packet), Interface::Client(A));
        assert_eq!(icmp4_type_code(&error), (3, 10), "host-prohibited");
        assert_eq!(assert_valid4(&error).src_addr(), dst);
    }
    assert_eq!(fw.counters().forwarded_out, 0, "nothing reached the uplink");
    assert_eq!(fw.counters().host_prohibited_sent, 3);
}

/// qubes-ipv6.nft:21 sends a vif's input to `_icmpv6`, whose line 11
/// rejects every non-ICMPv6 packet `with icmpv6 type admin-prohibited` and
/// line 13 accepts ICMPv6 (the echo is answered). Line 14's UDP port 68
/// drop is IPv4 only.
#[test]
fn traffic_to_the_firewall_itself_v6() {
    let mut fw = firewall(true);
    let reply = single(
        fw.handle(
            t(0),
            Interface::Client(A),
            &from_a(&icmp6_echo(A_IP6, CLIENT_GW6, 3, true)),
        ),
        Interface::Client(A),
    );
    assert_eq!(icmp6_type_code(&reply), (129, 0));
    // The link-local address is the firewall's too.
    let link_local: Ipv6Addr = "fe80::fcff:ffff:feff:ffff".parse().unwrap();
    let reply = single(
        fw.handle(
            t(0),
            Interface::Client(A),
            &from_a(&icmp6_echo(A_IP6, link_local, 4, true)),
        ),
        Interface::Client(A),
    );
    assert_eq!(icmp6_type_code(&reply), (129, 0));
    for packet in [
        tcp(A_IP6, 40000, CLIENT_GW6, 22, SYN),
        udp(A_IP6, 40000, CLIENT_GW6, 68, b"x"),
        tcp(A_IP6, 40001, UPLINK_IP6, 22, SYN),
    ] {
        let error = single(
            fw.handle(t(0), Interface::Client(A), &from_a(&packet)),
            Interface::Client(A),
        );
        assert_eq!(icmp6_type_code(&error), (1, 1), "admin-prohibited");
    }
    assert_eq!(fw.counters().forwarded_out, 0);
}

/// Linux's conntrack opens ICMP flows for the queries in `valid_new`
/// (nf_conntrack_proto_icmp.c: echo, timestamp, information, address
/// mask) and the forward chain judges them by the client's rules
/// (firewall.py:576-580 `icmp type`), rejecting what they drop like any
/// protocol (537-538); any other type is `ct state invalid`
/// (qubes-ipv4.nft:25), dropped before the rules.
#[test]
fn icmp_queries_of_any_type_are_judged_by_the_rules() {
    let mut fw = firewall(false);
    set_a_rules(
        &mut fw,
        "drop",
        &[("0000", "action=accept proto=icmp icmptype=13")],
    );
    // A timestamp request is accepted, and its reply comes back.
    let ip = forwarded(&mut fw, &icmp4(A_IP, WEB, 13, 0x4242));
    let packet = assert_valid4(&ip);
    let ident = Icmpv4Packet::new_checked(packet.payload())
        .unwrap()
        .echo_ident();
    let back = single(
        fw.handle(
            t(0),
            Interface::Uplink,
            &from_uplink(&icmp4(WEB, UPLINK_IP, 14, ident)),
        ),
        Interface::Client(A),
    );
    assert_eq!(icmp4_type_code(&back), (14, 0));
    assert_eq!(assert_valid4(&back).dst_addr(), A_IP);
    // An echo request is not type 13: rejected like any refused flow.
    refused_with_admin_prohibited(&mut fw, &icmp4_echo(A_IP, WEB, 1, true));
    // Address-mask and information requests are queries too.
    refused_with_admin_prohibited(&mut fw, &icmp4(A_IP, WEB, 17, 2));
    refused_with_admin_prohibited(&mut fw, &icmp4(A_IP, WEB, 15, 3));
    // A router solicitation or a stray reply cannot open a flow.
    assert!(fw
        .handle(
            t(0),
            Interface::Client(A),
            &from_a(&icmp4(A_IP, WEB, 10, 0))
        )
        .is_empty());
    assert!(fw
        .handle(t(0), Interface::Client(A), &from_a(&icmp4(A_IP, WEB, 0, 5)))
        .is_empty());
}

/// vif-route-qubes:252-258 give the vif the gateway address (and Linux
/// gives it a link-local one) and turn `proxy_ndp` on without adding any
/// proxy entry, so Linux answers a client's solicitation for those
/// addresses only; every other address is reached through the gateway,
/// and the rules.
#[test]
fn neighbour_solicitations_are_answered_for_owned_addresses_only() {
    let mut fw = firewall(true);
    let link_local: Ipv6Addr = "fe80::fcff:ffff:feff:ffff".parse().unwrap();
    let a_link_local: Ipv6Addr = "fe80::216:3eff:fe5e:6c0a".parse().unwrap();
    for (src, target) in [
        (A_IP6, CLIENT_GW6),
        (A_IP6, link_local),
        (a_link_local, CLIENT_GW6),
    ] {
        let out = fw.handle(t(0), Interface::Client(A), &ns(src, target, 255));
        assert_eq!(out.len(), 1, "{target} is ours");
    }
    for target in [
        WEB6,
        UPLINK_IP6,
        "fd09:24ef:4179::a8a:b".parse().unwrap(),
        A_IP6,
    ] {
        assert!(
            fw.handle(t(0), Interface::Client(A), &ns(A_IP6, target, 255))
                .is_empty(),
            "{target} is not ours"
        );
    }
    // Forwarded (hop limit below 255) or spoofed: not answered.
    assert!(fw
        .handle(t(0), Interface::Client(A), &ns(A_IP6, CLIENT_GW6, 64))
        .is_empty());
    assert!(fw
        .handle(t(0), Interface::Client(A), &ns(WEB6, CLIENT_GW6, 255))
        .is_empty());
    assert_eq!(fw.counters().neighbor_replies, 3);
    assert_eq!(fw.counters().forwarded_out, 0);
    // On the uplink: the uplink address and its link-local one only.
    let uplink_link_local: Ipv6Addr = "fe80::216:3eff:fe5e:6c01".parse().unwrap();
    for (target, answered) in [
        (UPLINK_IP6, true),
        (uplink_link_local, true),
        (CLIENT_GW6, false),
        (A_IP6, false),
    ] {
        let packet = ns_packet(UPLINK_GW6, target, 255, GATEWAY_MAC);
        let out = fw.handle(t(0), Interface::Uplink, &from_uplink(&packet));
        assert_eq!(out.len(), usize::from(answered), "{target}");
    }
}

/// An ICMPv6 message of `icmp_type` (code 0, 8 bytes of body) from client
/// A's `src` to `dst`, hop limit 255.
fn icmp6_message(src: Ipv6Addr, dst: Ipv6Addr, icmp_type: u8) -> Vec<u8> {
    let mut l4 = vec![0u8; 8 + 16];
    l4[0] = icmp_type;
    Icmpv6Packet::new_unchecked(&mut l4[..]).fill_checksum(&src, &dst);
    let mut ip = ip6(src, dst, IpProtocol::Icmpv6, &l4);
    smoltcp::wire::Ipv6Packet::new_unchecked(&mut ip[..]).set_hop_limit(255);
    ip
}

/// Where moat differs on purpose (docs/firewall.md, "Where moat still
/// differs"): Linux's conntrack leaves ICMPv6 router and neighbour
/// discovery and MLD messages untracked (`noct_valid_new` in
/// nf_conntrack_icmpv6_error, nf_conntrack_proto_icmpv6.c: types
/// 130-134, 136, 143), so one sent to a global address is neither invalid
/// (qubes-ipv6.nft 31) nor masqueraded, and the client's rules decide
/// (firewall.py 658-663) whether it leaves with the client's own address.
/// moat drops every one of them, even under accept-all rules, and never
/// puts the client's address on the uplink; ICMPv6 echo, which conntrack
/// tracks, still goes through the rules and NAT.
#[test]
fn icmpv6_link_scope_messages_to_a_routable_address_are_dropped() {
    let mut fw = firewall(true);
    fw.set_rules(IpAddr::V6(A_IP6), RuleSet::accept_all());
    for icmp_type in [130, 131, 132, 133, 134, 136, 143] {
        let frame = from_a(&icmp6_message(A_IP6, WEB6, icmp_type));
        assert!(
            fw.handle(t(0), Interface::Client(A), &frame).is_empty(),
            "type {icmp_type}"
        );
    }
    assert_eq!(fw.counters().dropped_no_flow, 7);
    assert_eq!(fw.counters().forwarded_out, 0);
    assert_eq!(fw.counters().admin_prohibited_sent, 0);
    let out = single(
        fw.handle(
            t(0),
            Interface::Client(A),
            &from_a(&icmp6_echo(A_IP6, WEB6, 5, true)),
        ),
        Interface::Uplink,
    );
    assert_eq!(assert_valid6(&out).src_addr(), UPLINK_IP6);
}

/// firewall.py:585-592: `dstports` without `proto` becomes a `tcp dport`
/// and a `udp dport` rule.
#[test]
fn dstports_without_proto_is_tcp_and_udp() {
    let mut fw = firewall(false);
    set_a_rules(&mut fw, "drop", &[("0000", "action=accept dstports=443")]);
    forwarded(&mut fw, &tcp(A_IP, 40000, WEB, 443, SYN));
    forwarded(&mut fw, &udp(A_IP, 40001, WEB, 443, b"quic"));
    refused_with_admin_prohibited(&mut fw, &icmp4_echo(A_IP, WEB, 1, true));
}

/// How the fake upstream resolver answers a question of `qtype` (1 = A,
/// 28 = AAAA).
#[derive(Clone, Copy)]
enum Upstream {
    /// A records only: AAAA questions get an empty answer (NODATA).
    V4Only(Ipv4Addr),
    /// NXDOMAIN.
    NoSuchName,
    /// No answer at all.
    Silent,
}

/// Poll `fw` from `from` to `to` seconds, every 100 ms, answering its DNS
/// queries as `upstream` does.
fn run_resolver(fw: &mut Firewall, upstream: Upstream, from: i64, to: i64) {
    for tenth in from * 10..to * 10 {
        let now = firewall::Instant::from_millis(tenth * 100);
        for tx in fw.poll(now) {
            let ip = single(vec![tx], Interface::Uplink);
            let packet = assert_valid4(&ip);
            let udp = smoltcp::wire::UdpPacket::new_checked(packet.payload()).unwrap();
            let query = udp.payload().to_vec();
            let qtype = u16::from_be_bytes([query[query.len() - 4], query[query.len() - 3]]);
            let mut answer = query.clone();
            answer[2] = 0x81;
            answer[3] = 0x80;
            match upstream {
                Upstream::Silent => continue,
                Upstream::NoSuchName => answer[3] = 0x83,
                Upstream::V4Only(addr) if qtype == 1 => {
                    answer[6..8].copy_from_slice(&1u16.to_be_bytes());
                    answer.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
                    answer.extend_from_slice(&addr.octets());
                }
                Upstream::V4Only(_) => {}
            }
            let l4 = udp_datagram(
                IpAddr::V4(UPSTREAM_DNS),
                53,
                IpAddr::V4(UPLINK_IP),
                udp.src_port(),
                &answer,
            );
            let reply = ip4(UPSTREAM_DNS, UPLINK_IP, IpProtocol::Udp, &l4);
            assert!(fw
                .handle(now, Interface::Uplink, &from_uplink(&reply))
                .is_empty());
        }
    }
}

/// firewall.py:146-150: `getaddrinfo(fqdn, None, AF_INET or AF_INET6)`
/// failing raises "Failed to resolve", a RuleParseError, and
/// `handle_addr` (313-318) blocks the client: NXDOMAIN, a name without an
/// address of the client's family, no answer, or no resolver. The lookup
/// happens once, when the rules are loaded (555-560 write the addresses
/// into the nft rule): a later change of the name's addresses changes
/// nothing until the next load.
#[test]
fn a_dsthost_that_does_not_resolve_at_load_blocks_the_client() {
    let dsthost = |family| {
        rules(
            family,
            "drop",
            &[
                ("0000", "action=accept dsthost=example.com proto=tcp"),
                ("0001", "action=accept proto=udp dstports=9"),
            ],
        )
    };
    let blocked = |fw: &mut Firewall, addr: IpAddr| {
        assert_eq!(
            fw.take_rule_reports(),
            vec![firewall::RuleReport::ResolveFailed {
                addr,
                name: "example.com".into()
            }]
        );
        // Drop-all: even the rule without dsthost= is gone, and refusals
        // are rejected.
        match addr {
            IpAddr::V4(_) => refused_with_admin_prohibited(fw, &udp(A_IP, 1, WEB, 9, b"x")),
            IpAddr::V6(_) => {
                let error = single(
                    fw.handle(
                        t(100),
                        Interface::Client(A),
                        &from_a(&udp(A_IP6, 1, WEB6, 9, b"x")),
                    ),
                    Interface::Client(A),
                );
                assert_eq!(icmp6_type_code(&error), (1, 1));
            }
        }
    };

    // NXDOMAIN.
    let mut fw = firewall_without_rules(config(false));
    fw.set_rules(IpAddr::V4(A_IP), dsthost(Family::V4));
    run_resolver(&mut fw, Upstream::NoSuchName, 0, 1);
    blocked(&mut fw, IpAddr::V4(A_IP));

    // An IPv6 client whose name has only IPv4 addresses.
    let mut fw = firewall_without_rules(config(true));
    fw.set_rules(IpAddr::V6(A_IP6), dsthost(Family::V6));
    run_resolver(&mut fw, Upstream::V4Only(WEB), 0, 1);
    blocked(&mut fw, IpAddr::V6(A_IP6));

    // No answer: pending (the address has no rules yet, so silence), then
    // blocked after the retries.
    let mut fw = firewall_without_rules(config(false));
    fw.set_rules(IpAddr::V4(A_IP), dsthost(Family::V4));
    run_resolver(&mut fw, Upstream::Silent, 0, 10);
    assert!(fw.rules_pending(&IpAddr::V4(A_IP)));
    assert!(fw
        .handle(
            t(10),
            Interface::Client(A),
            &from_a(&udp(A_IP, 1, WEB, 9, b"x"))
        )
        .is_empty());
    run_resolver(&mut fw, Upstream::Silent, 10, 20);
    blocked(&mut fw, IpAddr::V4(A_IP));

    // No upstream resolver at all: blocked at once.
    let mut no_upstream = config(false);
    for redirect in &mut no_upstream.dns {
        redirect.upstream = None;
    }
    let mut fw = firewall_without_rules(no_upstream);
    fw.set_rules(IpAddr::V4(A_IP), dsthost(Family::V4));
    assert!(fw.poll(t(0)).is_empty());
    blocked(&mut fw, IpAddr::V4(A_IP));

    // Resolved once: the rules keep the addresses of their load.
    let mut fw = firewall_without_rules(config(false));
    fw.set_rules(IpAddr::V4(A_IP), dsthost(Family::V4));
    run_resolver(&mut fw, Upstream::V4Only(WEB), 0, 1);
    forwarded(&mut fw, &tcp(A_IP, 40000, WEB, 443, SYN));
    let moved = Ipv4Addr::new(192, 0, 2, 80);
    run_resolver(&mut fw, Upstream::V4Only(moved), 1, 600);
    assert_eq!(fw.resolver_stats().queries, 1, "never asked again");
    forwarded(&mut fw, &tcp(A_IP, 40001, WEB, 443, SYN));
    refused_with_admin_prohibited(&mut fw, &tcp(A_IP, 40002, moved, 443, SYN));
}

/// nf_conntrack_proto_tcp.c `tcp_new`: with `nf_conntrack_tcp_loose` (1 by
/// default) a bare ACK without a connection is picked up as a new one in
/// the established state, and the forward chain judges it as NEW by the
/// client's rules (firewall.py 658-663); a FIN, RST or SYN+ACK without a
/// connection is invalid and dropped (qubes-ipv4.nft 25). So a client's
/// connection survives a restart of the firewall: masquerading keeps the
/// client's port, and the remote sees the same address and port.
#[test]
fn a_tcp_connection_is_picked_up_mid_stream() {
    let mut fw = firewall(false);
    let ip = forwarded(&mut fw, &tcp(A_IP, 40000, WEB, 443, ACK));
    let packet = assert_valid4(&ip);
    assert_eq!(packet.src_addr(), UPLINK_IP);
    assert_eq!(tcp_ports(packet.payload()), (40000, 443), "port kept");
    let back = single(
        fw.handle(
            t(0),
            Interface::Uplink,
            &from_uplink(&tcp(WEB, 443, UPLINK_IP, 40000, ACK)),
        ),
        Interface::Client(A),
    );
    assert_eq!(assert_valid4(&back).dst_addr(), A_IP);
    let (_, conn) = fw.conntrack().iter().next().unwrap();
    assert!(matches!(
        conn.state,
        firewall::conntrack::FlowState::Tcp {
            state: firewall::conntrack::TcpState::Established,
            ..
        }
    ));
    // The rules judge it: refused, rejected.
    set_a_rules(
        &mut fw,
        "drop",
        &[("0000", "action=accept proto=tcp dstports=443")],
    );
    refused_with_admin_prohibited(&mut fw, &tcp(A_IP, 40001, WEB, 80, ACK));
    // Invalid without a connection: dropped before the rules.
    for flags in [FIN, RST, SYN_ACK] {
        assert!(fw
            .handle(
                t(0),
                Interface::Client(A),
                &from_a(&tcp(A_IP, 40002, WEB, 80, flags))
            )
            .is_empty());
    }
    // Unsolicited from the uplink: nothing is picked up that way.
    assert!(fw
        .handle(
            t(0),
            Interface::Uplink,
            &from_uplink(&tcp(WEB, 443, UPLINK_IP, 40009, ACK))
        )
        .is_empty());
}

/// ip_forward (net/ipv4/ip_forward.c) sends ICMP time exceeded for a packet
/// whose TTL would run out, before the forward chain's rules see it, so
/// traceroute from a client shows the firewall's hop.
#[test]
fn an_expiring_ttl_is_answered_with_time_exceeded() {
    let mut fw = firewall(true);
    let mut syn = tcp(A_IP, 40000, WEB, 80, SYN);
    let mut header = smoltcp::wire::Ipv4Packet::new_unchecked(&mut syn[..]);
    header.set_hop_limit(1);
    header.fill_checksum();
    let error = single(
        fw.handle(t(0), Interface::Client(A), &from_a(&syn)),
        Interface::Client(A),
    );
    assert_eq!(icmp4_type_code(&error), (11, 0));
    assert_eq!(assert_valid4(&error).src_addr(), CLIENT_GW);
    let mut syn6 = tcp(A_IP6, 40000, WEB6, 80, SYN);
    smoltcp::wire::Ipv6Packet::new_unchecked(&mut syn6[..]).set_hop_limit(1);
    let error = single(
        fw.handle(t(0), Interface::Client(A), &from_a(&syn6)),
        Interface::Client(A),
    );
    assert_eq!(icmp6_type_code(&error), (3, 0));
    assert_eq!(fw.counters().forwarded_out, 0);
}

/// The same from the uplink: conntrack (prerouting) undoes the masquerade
/// of a reply, the packet is routed towards the client's vif, and
/// `ip_forward` answers a TTL that runs out with time exceeded from the
/// address `icmp_send` picks for the remote, the uplink's; the error is
/// RELATED to the flow, so NAT (`nf_nat_icmp_reply_translation`) gives
/// the quoted packet back the uplink address and port the remote used.
/// Errors to each remote are limited as to each client (below).
#[test]
fn an_expiring_ttl_from_the_uplink_is_answered_with_time_exceeded() {
    let mut fw = firewall(true);
    forwarded(&mut fw, &tcp(A_IP, 40000, WEB, 443, SYN));
    let expiring = |packet: Vec<u8>| {
        let mut packet = packet;
        if packet[0] >> 4 == 4 {
            let mut header = smoltcp::wire::Ipv4Packet::new_unchecked(&mut packet[..]);
            header.set_hop_limit(1);
            header.fill_checksum();
        } else {
            smoltcp::wire::Ipv6Packet::new_unchecked(&mut packet[..]).set_hop_limit(1);
        }
        from_uplink(&packet)
    };
    let reply = expiring(tcp(WEB, 443, UPLINK_IP, 40000, SYN_ACK));
    let error = single(
        fw.handle(t(0), Interface::Uplink, &reply),
        Interface::Uplink,
    );
    assert_eq!(icmp4_type_code(&error), (11, 0));
    let ip = assert_valid4(&error);
    assert_eq!((ip.src_addr(), ip.dst_addr()), (UPLINK_IP, WEB));
    // The quoted packet is the remote's, as it sent it.
    let quoted = smoltcp::wire::Ipv4Packet::new_unchecked(&ip.payload()[8..]);
    assert_eq!((quoted.src_addr(), quoted.dst_addr()), (WEB, UPLINK_IP));
    assert_eq!(tcp_ports(quoted.payload()), (443, 40000));
    assert_eq!(fw.counters().forwarded_in, 0);
    assert_eq!(fw.counters().dropped_ttl, 1);
    // Six at once to one remote, then one a second.
    let answered: usize = (0..9)
        .map(|_| fw.handle(t(0), Interface::Uplink, &reply).len())
        .sum();
    assert_eq!(answered, 5);
    assert_eq!(fw.handle(t(1), Interface::Uplink, &reply).len(), 1);
    // IPv6: hop limit exceeded.
    forwarded(&mut fw, &tcp(A_IP6, 40000, WEB6, 443, SYN));
    let reply6 = expiring(tcp(WEB6, 443, UPLINK_IP6, 40000, SYN_ACK));
    let error6 = single(
        fw.handle(t(1), Interface::Uplink, &reply6),
        Interface::Uplink,
    );
    assert_eq!(icmp6_type_code(&error6), (3, 0));
    assert_eq!(assert_valid6(&error6).src_addr(), UPLINK_IP6);
    // A packet of no flow is not forwarded, so not answered.
    let stray = expiring(tcp(WEB, 443, UPLINK_IP, 40999, SYN_ACK));
    assert!(fw.handle(t(5), Interface::Uplink, &stray).is_empty());
}

/// Linux limits the destination-unreachable and time-exceeded errors it
/// sends to one address (`icmp_ratemask`, `icmp_ratelimit` = 1000 ms in
/// Documentation/networking/ip-sysctl.rst) with a token bucket of six
/// (`inet_peer_xrlim_allow`, `XRLIM_BURST_FACTOR` in net/ipv4/inetpeer.c):
/// a client refused in a loop gets six errors, then one a second.
#[test]
fn refusals_are_rate_limited_per_client_address() {
    let mut fw = firewall(true);
    set_a_rules(&mut fw, "drop", &[]);
    let mut answered = 0;
    for port in 0..10 {
        let syn = tcp(A_IP, 40000 + port, WEB, 80, SYN);
        answered += fw.handle(t(0), Interface::Client(A), &from_a(&syn)).len();
    }
    assert_eq!(answered, 6);
    assert_eq!(fw.counters().icmp_errors_rate_limited, 4);
    assert_eq!(fw.counters().dropped_by_rule, 10);
    refused_with_admin_prohibited_at(&mut fw, 1, &tcp(A_IP, 40100, WEB, 80, SYN));
    // The IPv6 address has its own budget; echo replies have none.
    let syn6 = tcp(A_IP6, 40000, WEB6, 80, SYN);
    fw.set_rules(IpAddr::V6(A_IP6), rules(Family::V6, "drop", &[]));
    assert_eq!(
        fw.handle(t(1), Interface::Client(A), &from_a(&syn6)).len(),
        1
    );
    for ident in 0..20 {
        let ping = icmp4_echo(A_IP, CLIENT_GW, ident, true);
        assert_eq!(
            fw.handle(t(1), Interface::Client(A), &from_a(&ping)).len(),
            1
        );
    }
}

fn refused_with_admin_prohibited_at(fw: &mut Firewall, secs: i64, packet: &[u8]) {
    let out = single(
        fw.handle(t(secs), Interface::Client(A), &from_a(packet)),
        Interface::Client(A),
    );
    assert_eq!(icmp4_type_code(&out), (3, 13), "admin-prohibited");
}

/// qubes-iptables 33-39 load qubes-ipv6-disabled.nft when the firewall has
/// neither `/qubes-ip6` nor `/qubes-netvm-gateway6`: input and forward
/// drop every IPv6 packet, so not even a neighbour solicitation is
/// answered.
#[test]
fn without_any_ipv6_address_every_ipv6_packet_is_dropped() {
    let mut no_ipv6 = config(false);
    no_ipv6.client_side.gateway6 = None;
    let mut fw = firewall_without_rules(no_ipv6);
    fw.set_rules(IpAddr::V6(A_IP6), RuleSet::accept_all());
    let link_local: Ipv6Addr = "fe80::fcff:ffff:feff:ffff".parse().unwrap();
    for frame in [
        ns(A_IP6, link_local, 255),
        from_a(&icmp6_echo(A_IP6, link_local, 1, true)),
        from_a(&tcp(A_IP6, 40000, WEB6, 80, SYN)),
    ] {
        assert!(fw.handle(t(0), Interface::Client(A), &frame).is_empty());
    }
    assert_eq!(fw.counters().dropped_ipv6_no_uplink, 3);
}

/// `packet` (IPv4, 20-byte header) with `options` (a multiple of 4
/// bytes) inserted after its fixed header, lengths and checksum fixed.
fn with_ipv4_options(packet: &[u8], options: &[u8]) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0);
    let mut buf = packet[..20].to_vec();
    buf.extend_from_slice(options);
    buf.extend_from_slice(&packet[20..]);
    let mut ip = smoltcp::wire::Ipv4Packet::new_unchecked(&mut buf[..]);
    ip.set_header_len(20 + options.len() as u8);
    ip.set_total_len((packet.len() + options.len()) as u16);
    ip.fill_checksum();
    buf
}

/// A loose source route through 192.0.2.1 (type 131, length 7, pointer
/// 4), padded with an end-of-options byte.
const LSRR: [u8; 8] = [131, 7, 4, 192, 0, 2, 1, 0];
/// The same as a strict source route (type 137).
const SSRR: [u8; 8] = [137, 7, 4, 192, 0, 2, 1, 0];
/// Record route with room for one address (type 7), after a no-op.
const RECORD_ROUTE: [u8; 8] = [1, 7, 7, 4, 0, 0, 0, 0];

/// Linux drops a source-routed packet on input, before routing, unless
/// `accept_source_route` is on for both `all` and the interface
/// (`ip_rcv_options` in net/ipv4/ip_input.c; ip-sysctl.rst,
/// `accept_source_route`); the Fedora and Debian templates sys-firewall
/// runs on leave it off (systemd's sysctl.d/50-default.conf: "Do not
/// accept source routing", `net.ipv4.conf.*.accept_source_route = 0`).
/// Other options are forwarded; options that do not parse fail
/// `ip_options_compile` and are dropped.
#[test]
fn source_routed_ipv4_is_dropped_other_options_forwarded() {
    let mut fw = firewall(false);
    let plain = udp(IpAddr::V4(A_IP), 40000, IpAddr::V4(WEB), 53, b"query");
    for option in [LSRR, SSRR] {
        let routed = with_ipv4_options(&plain, &option);
        assert!(fw
            .handle(t(0), Interface::Client(A), &from_a(&routed))
            .is_empty());
    }
    assert_eq!(fw.counters().dropped_source_route, 2);
    assert_eq!(fw.counters().forwarded_out, 0);

    // From the uplink too, whatever it is addressed to.
    let inbound = udp(IpAddr::V4(WEB), 53, IpAddr::V4(UPLINK_IP), 40000, b"answer");
    let routed = with_ipv4_options(&inbound, &LSRR);
    assert!(fw
        .handle(t(0), Interface::Uplink, &from_uplink(&routed))
        .is_empty());
    assert_eq!(fw.counters().dropped_source_route, 3);

    // Record route goes through, options and all.
    let recorded = with_ipv4_options(&plain, &RECORD_ROUTE);
    let out = forwarded(&mut fw, &recorded);
    let ip = assert_valid4(&out);
    assert_eq!(ip.header_len(), 28);
    assert_eq!(&out[20..28], &RECORD_ROUTE);
    assert_eq!(udp_ports(ip.payload()), (40000, 53));
    assert_eq!(fw.counters().dropped_source_route, 3);

    // An option whose length runs past the header is malformed.
    let malformed_before = fw.counters().dropped_malformed;
    let bad = with_ipv4_options(&plain, &[7, 9, 4, 0]);
    assert!(fw
        .handle(t(0), Interface::Client(A), &from_a(&bad))
        .is_empty());
    assert_eq!(fw.counters().dropped_malformed, malformed_before + 1);
    // So is one that claims a length below 2.
    let bad = with_ipv4_options(&plain, &[68, 1, 0, 0]);
    assert!(fw
        .handle(t(0), Interface::Client(A), &from_a(&bad))
        .is_empty());
    assert_eq!(fw.counters().dropped_malformed, malformed_before + 2);
}
