//! Tests of the rule language against the format document and the Linux
//! sys-firewall's behaviour.

use super::*;
use alloc::string::String;
use alloc::vec::Vec;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use proptest::prelude::*;

fn rule4(text: &str) -> Result<Rule, RuleError> {
    parse_rule(Family::V4, text.as_bytes())
}

fn rule6(text: &str) -> Result<Rule, RuleError> {
    parse_rule(Family::V6, text.as_bytes())
}

fn set(family: Family, entries: &[(&str, &str)]) -> Result<RuleSet, RuleSetError> {
    RuleSet::parse(family, entries.iter().map(|(k, v)| (*k, v.as_bytes())))
}

/// DNS servers 10.139.1.1 and fd09:24ef:4179::a8b:1; `example.com` resolves
/// to 93.184.216.34.
struct Ctx;

impl MatchContext for Ctx {
    fn is_dns_server(&self, ip: &IpAddr) -> bool {
        *ip == IpAddr::V4(Ipv4Addr::new(10, 139, 1, 1))
            || *ip == "fd09:24ef:4179::a8b:1".parse::<IpAddr>().unwrap()
    }
    fn host_resolves_to(&self, host: &str, ip: &IpAddr) -> bool {
        host == "example.com" && *ip == IpAddr::V4(Ipv4Addr::new(93, 184, 216, 34))
    }
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn tcp(dst: IpAddr, port: u16) -> FlowQuery {
    FlowQuery::Tcp { dst, port }
}

fn udp(dst: IpAddr, port: u16) -> FlowQuery {
    FlowQuery::Udp { dst, port }
}

#[test]
fn format_document_examples_parse() {
    let r = rule4("action=accept dst4=8.8.8.8 proto=udp dstports=53-53").unwrap();
    assert_eq!(r.action, Action::Accept);
    assert_eq!(
        r.destination,
        Some(Destination::V4 {
            addr: Ipv4Addr::new(8, 8, 8, 8),
            prefix: 32
        })
    );
    assert_eq!(r.proto, Some(Proto::Udp));
    assert_eq!(r.dst_ports, PortRange::new(53, 53));

    let r = rule6("action=drop dst6=2a00:1450:4000::/37 proto=tcp").unwrap();
    assert_eq!(r.action, Action::Drop);
    assert_eq!(
        r.destination,
        Some(Destination::V6 {
            addr: "2a00:1450:4000::".parse().unwrap(),
            prefix: 37
        })
    );

    let r = rule4("action=accept specialtarget=dns").unwrap();
    assert_eq!(r.special_target, Some(SpecialTarget::Dns));
    assert_eq!(r.proto, None);

    let r = rule4("action=drop proto=tcp specialtarget=dns").unwrap();
    assert_eq!(r.proto, Some(Proto::Tcp));

    assert_eq!(rule4("action=drop").unwrap(), Rule::catch_all(Action::Drop));
}

#[test]
fn all_options_in_any_order() {
    let r = rule4("icmptype=8 proto=icmp dst4=10.0.0.0/8 action=accept").unwrap();
    assert_eq!(r.icmp_type, Some(8));
    assert_eq!(r.proto, Some(Proto::Icmp));
    let r = rule4("action=accept dsthost=Example.COM. proto=tcp dstports=443").unwrap();
    assert_eq!(r.destination, Some(Destination::Host("example.com".into())));
    assert_eq!(r.dst_ports, PortRange::new(443, 443));
}

#[test]
fn dsthost_address_literals_are_addresses_of_the_right_family() {
    assert_eq!(
        rule4("action=accept dsthost=192.0.2.7")
            .unwrap()
            .destination,
        Some(Destination::V4 {
            addr: Ipv4Addr::new(192, 0, 2, 7),
            prefix: 32
        })
    );
    assert_eq!(
        rule6("action=accept dsthost=2001:db8::7")
            .unwrap()
            .destination,
        Some(Destination::V6 {
            addr: "2001:db8::7".parse().unwrap(),
            prefix: 128
        })
    );
    assert_eq!(
        rule6("action=accept dsthost=192.0.2.7"),
        Err(RuleError::WrongFamily { key: "dsthost" })
    );
    assert_eq!(
        rule4("action=accept dsthost=2001:db8::7"),
        Err(RuleError::WrongFamily { key: "dsthost" })
    );
}

#[test]
fn bare_addresses_are_host_routes_and_host_bits_are_cleared() {
    assert_eq!(
        rule6("action=accept dst6=2001:db8::1").unwrap().destination,
        Some(Destination::V6 {
            addr: "2001:db8::1".parse().unwrap(),
            prefix: 128
        })
    );
    assert_eq!(
        rule4("action=accept dst4=192.168.1.77/24")
            .unwrap()
            .destination,
        Some(Destination::V4 {
            addr: Ipv4Addr::new(192, 168, 1, 0),
            prefix: 24
        })
    );
    assert_eq!(
        rule4("action=accept dst4=1.2.3.4/0").unwrap().destination,
        Some(Destination::V4 {
            addr: Ipv4Addr::UNSPECIFIED,
            prefix: 0
        })
    );
}

#[test]
fn precise_errors() {
    use RuleError::*;
    let cases: &[(&str, RuleError)] = &[
        ("", EmptyOption),
        ("action=accept ", EmptyOption),
        ("action=accept  proto=tcp", EmptyOption),
        (
            "action=accept proto",
            MissingEquals {
                option: "proto".into(),
            },
        ),
        (
            "action=accept expire=123",
            UnknownOption {
                key: "expire".into(),
            },
        ),
        ("proto=tcp", MissingAction),
        (
            "action=ACCEPT",
            InvalidValue {
                key: "action",
                value: "ACCEPT".into(),
            },
        ),
        (
            "action=accept dst4=1.2.3.4 dst6=::1",
            WrongFamily { key: "dst6" },
        ),
        (
            "action=accept dst4=1.2.3.4/33",
            InvalidValue {
                key: "dst4",
                value: "1.2.3.4/33".into(),
            },
        ),
        (
            "action=accept dst4=1.2.3",
            InvalidValue {
                key: "dst4",
                value: "1.2.3".into(),
            },
        ),
        (
            "action=accept dst4=1.2.3.4/",
            InvalidValue {
                key: "dst4",
                value: "1.2.3.4/".into(),
            },
        ),
        (
            "action=accept dst4=1.2.3.4/+8",
            InvalidValue {
                key: "dst4",
                value: "1.2.3.4/+8".into(),
            },
        ),
        ("action=accept dst6=::1", WrongFamily { key: "dst6" }),
        (
            "action=accept proto=sctp",
            InvalidValue {
                key: "proto",
                value: "sctp".into(),
            },
        ),
        (
            "action=accept specialtarget=ntp",
            InvalidValue {
                key: "specialtarget",
                value: "ntp".into(),
            },
        ),
        ("action=accept proto=icmp dstports=1-2", PortsNeedTcpOrUdp),
        (
            "action=accept proto=tcp dstports=90-80",
            InvalidValue {
                key: "dstports",
                value: "90-80".into(),
            },
        ),
        (
            "action=accept proto=tcp dstports=1-65536",
            InvalidValue {
                key: "dstports",
                value: "1-65536".into(),
            },
        ),
        (
            "action=accept proto=tcp dstports=-5",
            InvalidValue {
                key: "dstports",
                value: "-5".into(),
            },
        ),
        ("action=accept proto=tcp icmptype=8", IcmpTypeNeedsIcmp),
        (
            "action=accept proto=icmp icmptype=256",
            InvalidValue {
                key: "icmptype",
                value: "256".into(),
            },
        ),
        (
            "action=accept dpi=HTTP",
            UnknownOption { key: "dpi".into() },
        ),
        ("action=accept dpi=NO", UnknownOption { key: "dpi".into() }),
        (
            "action=drop proto=icmp specialtarget=dns",
            PortsNeedTcpOrUdp,
        ),
        // Found by fuzz/ (rule_parser): ICMP implied by `icmptype=` refuses
        // ports as `proto=icmp` does.
        ("action=accept dstports=80-80 icmptype=8", PortsNeedTcpOrUdp),
        (
            "action=accept icmptype=0 specialtarget=dns",
            PortsNeedTcpOrUdp,
        ),
        (
            "action=accept dsthost=-bad.example",
            InvalidValue {
                key: "dsthost",
                value: "-bad.example".into(),
            },
        ),
        (
            "action=accept dsthost=a..b",
            InvalidValue {
                key: "dsthost",
                value: "a..b".into(),
            },
        ),
        (
            "action=accept dsthost=",
            InvalidValue {
                key: "dsthost",
                value: "".into(),
            },
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(rule4(text).as_ref(), Err(expected), "rule {text:?}");
    }
    assert_eq!(
        rule6("action=accept dst4=1.2.3.4"),
        Err(WrongFamily { key: "dst4" })
    );
    assert_eq!(
        parse_rule(Family::V4, b"action=accept\xff"),
        Err(RuleError::NotUtf8)
    );
}

#[test]
fn size_limit_is_3072_bytes() {
    // A valid rule padded with a long hostname-free option list is not
    // possible, so pad the dsthost: 3072 bytes exactly must still be judged
    // on content, 3073 is refused on length alone.
    let mut at_limit = String::from("action=accept dsthost=");
    while at_limit.len() < MAX_ENTRY_LEN {
        at_limit.push('a');
    }
    assert_eq!(at_limit.len(), MAX_ENTRY_LEN);
    // Too long a name, but refused for its value, not its length.
    assert!(matches!(
        rule4(&at_limit),
        Err(RuleError::InvalidValue { key: "dsthost", .. })
    ));
    at_limit.push('a');
    assert_eq!(rule4(&at_limit), Err(RuleError::TooLong { len: 3073 }));
}

#[test]
fn error_values_are_bounded() {
    let long_key: String = core::iter::repeat_n('k', 2000).collect();
    let text = alloc::format!("action=accept {long_key}=1");
    match rule4(&text) {
        Err(RuleError::UnknownOption { key }) => assert!(key.len() <= 64),
        other => panic!("unexpected {other:?}"),
    }
    // Truncation respects UTF-8 boundaries.
    let text = alloc::format!("action={}", "é".repeat(100));
    match rule4(&text) {
        Err(RuleError::InvalidValue { value, .. }) => {
            assert!(value.len() <= 64 && value.chars().all(|c| c == 'é'))
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn rule_set_reads_every_entry_in_order_despite_gaps() {
    let rules = set(
        Family::V4,
        &[
            ("0007", "action=drop proto=udp"),
            ("policy", "accept"),
            ("0000", "action=accept proto=tcp dstports=80-80"),
            ("0003", "action=drop proto=tcp"),
        ],
    )
    .unwrap();
    assert_eq!(rules.policy, Action::Accept);
    assert_eq!(rules.rules.len(), 3);
    assert_eq!(rules.rules[0].dst_ports, PortRange::new(80, 80));
    assert_eq!(rules.rules[1].proto, Some(Proto::Tcp));
    assert_eq!(rules.rules[2].proto, Some(Proto::Udp));
    let dst = v4(1, 1, 1, 1);
    assert_eq!(rules.evaluate(&tcp(dst, 80), &Ctx), Action::Accept);
    assert_eq!(rules.evaluate(&tcp(dst, 81), &Ctx), Action::Drop);
    // The rule after the gap is enforced (mirage stops at the first gap).
    assert_eq!(rules.evaluate(&udp(dst, 1), &Ctx), Action::Drop);
    assert_eq!(
        rules.evaluate(&FlowQuery::Icmp { dst, icmp_type: 8 }, &Ctx),
        Action::Accept
    );
}

#[test]
fn rule_set_errors() {
    assert_eq!(
        set(Family::V4, &[("0000", "action=accept")]),
        Err(RuleSetError::MissingPolicy)
    );
    assert_eq!(
        set(Family::V4, &[("policy", "DROP")]),
        Err(RuleSetError::InvalidPolicy {
            value: "DROP".into()
        })
    );
    assert_eq!(
        set(Family::V4, &[("policy", "drop"), ("123", "action=accept")]),
        Err(RuleSetError::UnexpectedEntry { name: "123".into() })
    );
    assert_eq!(
        set(Family::V4, &[("policy", "drop"), ("00a1", "action=accept")]),
        Err(RuleSetError::UnexpectedEntry {
            name: "00a1".into()
        })
    );
    assert_eq!(
        set(Family::V4, &[("policy", "drop"), ("policy", "accept")]),
        Err(RuleSetError::DuplicateEntry {
            name: "policy".into()
        })
    );
    assert_eq!(
        set(
            Family::V4,
            &[("policy", "drop"), ("0001", "a"), ("0000", "action=accept")]
        ),
        Err(RuleSetError::Rule {
            number: 1,
            error: RuleError::MissingEquals { option: "a".into() }
        })
    );
    let message = alloc::format!(
        "{}",
        set(Family::V4, &[("policy", "drop"), ("0042", "action=maybe")]).unwrap_err()
    );
    assert_eq!(message, "rule 0042: invalid value 'maybe' for 'action'");
}

#[test]
fn a_bad_rule_makes_the_client_drop_all_with_the_reason() {
    let entries: [(&str, &[u8]); 3] = [
        ("policy", b"accept"),
        ("0000", b"action=accept"),
        ("0001", b"action=accept proto=gre"),
    ];
    let loaded = LoadedRules::load(Family::V4, entries);
    assert_eq!(loaded.rules, RuleSet::drop_all());
    assert_eq!(
        loaded.error,
        Some(RuleSetError::Rule {
            number: 1,
            error: RuleError::InvalidValue {
                key: "proto",
                value: "gre".into()
            }
        })
    );
    assert_eq!(
        loaded.rules.evaluate(&tcp(v4(8, 8, 8, 8), 443), &Ctx),
        Action::Drop
    );

    let good: [(&str, &[u8]); 2] = [("policy", b"drop"), ("0000", b"action=accept")];
    let loaded = LoadedRules::load(Family::V4, good);
    assert_eq!(loaded.error, None);
    assert_eq!(loaded.rules, RuleSet::accept_all());
}

#[test]
fn specialtarget_dns_follows_linux() {
    let dns = v4(10, 139, 1, 1);
    let other_dns = v4(8, 8, 8, 8);
    let any = rule4("action=accept specialtarget=dns").unwrap();
    assert!(any.matches(&udp(dns, 53), &Ctx));
    assert!(any.matches(&tcp(dns, 53), &Ctx));
    assert!(
        !any.matches(&udp(other_dns, 53), &Ctx),
        "not any DNS server"
    );
    assert!(!any.matches(&udp(dns, 54), &Ctx));
    assert!(!any.matches(
        &FlowQuery::Icmp {
            dst: dns,
            icmp_type: 8
        },
        &Ctx
    ));

    // With proto: DNS over that protocol only.
    let tcp_only = rule4("action=drop proto=tcp specialtarget=dns").unwrap();
    assert!(tcp_only.matches(&tcp(dns, 53), &Ctx));
    assert!(!tcp_only.matches(&udp(dns, 53), &Ctx));

    // With dstports: only exactly 53 keeps the rule; a wider range drops it.
    let exact = rule4("action=accept proto=udp specialtarget=dns dstports=53-53").unwrap();
    assert!(exact.matches(&udp(dns, 53), &Ctx));
    let wide = rule4("action=accept proto=udp specialtarget=dns dstports=1-1024").unwrap();
    assert!(!wide.matches(&udp(dns, 53), &Ctx));

    // With a destination: the intersection with the DNS servers.
    let narrowed = rule4("action=accept specialtarget=dns dst4=10.139.1.0/24").unwrap();
    assert!(narrowed.matches(&udp(dns, 53), &Ctx));
    let disjoint = rule4("action=accept specialtarget=dns dst4=8.8.8.8").unwrap();
    assert!(!disjoint.matches(&udp(other_dns, 53), &Ctx));
    assert!(!disjoint.matches(&udp(dns, 53), &Ctx));

    // IPv6 DNS server.
    let v6dns: IpAddr = "fd09:24ef:4179::a8b:1".parse().unwrap();
    let any6 = rule6("action=accept specialtarget=dns").unwrap();
    assert!(any6.matches(&udp(v6dns, 53), &Ctx));
}

#[test]
fn predicates_match_as_documented() {
    let r = rule4("action=accept dst4=192.168.0.0/16 proto=tcp dstports=1000-2000").unwrap();
    assert!(r.matches(&tcp(v4(192, 168, 5, 5), 1000), &Ctx));
    assert!(r.matches(&tcp(v4(192, 168, 5, 5), 2000), &Ctx));
    assert!(!r.matches(&tcp(v4(192, 168, 5, 5), 999), &Ctx));
    assert!(!r.matches(&tcp(v4(192, 168, 5, 5), 2001), &Ctx));
    assert!(!r.matches(&udp(v4(192, 168, 5, 5), 1500), &Ctx));
    assert!(!r.matches(&tcp(v4(192, 169, 0, 0), 1500), &Ctx));

    let ping = rule4("action=accept proto=icmp icmptype=8").unwrap();
    let dst = v4(1, 2, 3, 4);
    assert!(ping.matches(&FlowQuery::Icmp { dst, icmp_type: 8 }, &Ctx));
    assert!(!ping.matches(&FlowQuery::Icmp { dst, icmp_type: 13 }, &Ctx));
    assert!(!ping.matches(&tcp(dst, 8), &Ctx));

    let host = rule4("action=accept dsthost=example.com").unwrap();
    assert!(host.matches(&tcp(v4(93, 184, 216, 34), 443), &Ctx));
    assert!(!host.matches(&tcp(v4(93, 184, 216, 35), 443), &Ctx));

    let gre = FlowQuery::Other { dst, protocol: 47 };
    assert!(!rule4("action=accept proto=tcp")
        .unwrap()
        .matches(&gre, &Ctx));
    assert!(rule4("action=accept").unwrap().matches(&gre, &Ctx));

    // A v4 network never contains a v6 address.
    let v6dst = IpAddr::V6(Ipv6Addr::LOCALHOST);
    assert!(!rule4("action=accept dst4=0.0.0.0/0")
        .unwrap()
        .matches(&tcp(v6dst, 1), &Ctx));
}

#[test]
fn first_match_wins() {
    let rules = set(
        Family::V4,
        &[
            ("policy", "drop"),
            ("0000", "action=drop dst4=1.1.1.1"),
            ("0001", "action=accept dst4=1.1.0.0/16"),
        ],
    )
    .unwrap();
    assert_eq!(rules.evaluate(&tcp(v4(1, 1, 1, 1), 1), &Ctx), Action::Drop);
    assert_eq!(
        rules.evaluate(&tcp(v4(1, 1, 1, 2), 1), &Ctx),
        Action::Accept
    );
    assert_eq!(rules.evaluate(&tcp(v4(1, 2, 1, 2), 1), &Ctx), Action::Drop);
}

/// Text built from the format's own vocabulary, so that the property test
/// explores near-valid rules as well as noise.
fn rule_like() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        Just("action=accept".to_string()),
        Just("action=drop".to_string()),
        Just("proto=tcp".to_string()),
        Just("proto=icmp".to_string()),
        Just("specialtarget=dns".to_string()),
        "dst4=[0-9./]{0,20}",
        "dst6=[0-9a-f:/]{0,45}",
        "dsthost=[a-z0-9.-]{0,30}",
        "dstports=[0-9-]{0,12}",
        "icmptype=[0-9]{0,4}",
        "[a-z=]{0,10}",
        ".{0,8}",
    ];
    prop::collection::vec(token, 0..8).prop_map(|tokens| tokens.join(" ").into_bytes())
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..4000)) {
        let _ = parse_rule(Family::V4, &bytes);
        let _ = parse_rule(Family::V6, &bytes);
    }

    #[test]
    fn rule_like_text_never_panics_and_errors_are_bounded(bytes in rule_like()) {
        for family in [Family::V4, Family::V6] {
            match parse_rule(family, &bytes) {
                Ok(rule) => {
                    // A parsed rule obeys the format's cross-option constraints.
                    if rule.dst_ports.is_some() {
                        prop_assert!(rule.proto != Some(Proto::Icmp));
                    }
                    if rule.icmp_type.is_some() {
                        prop_assert_eq!(rule.proto, Some(Proto::Icmp));
                    }
                }
                Err(error) => {
                    let message = alloc::format!("{}", error);
                    prop_assert!(message.len() < 200);
                }
            }
        }
    }

    #[test]
    fn arbitrary_directories_never_panic(
        entries in prop::collection::vec(("[0-9a-z]{0,6}", rule_like()), 0..12)
    ) {
        let loaded = LoadedRules::load(
            Family::V4,
            entries.iter().map(|(k, v)| (k.as_str(), v.as_slice())),
        );
        if loaded.error.is_some() {
            prop_assert_eq!(loaded.rules, RuleSet::drop_all());
        }
    }
}

/// Lines dom0 never writes, read as the Linux agent reads them
/// (qubes-core-agent-linux `qubesagent/firewall.py`).
#[test]
fn lines_dom0_never_writes_follow_linux() {
    // read_rules: `dict(elem.split('=') for elem in rule.split(' '))`
    // keeps the last of a repeated option.
    let r = rule4("action=drop proto=tcp action=accept proto=udp").unwrap();
    assert_eq!(r.action, Action::Accept);
    assert_eq!(r.proto, Some(Proto::Udp));

    // prepare_rules: "if dstports is not None: if 'proto' not in rule:"
    // appends a `tcp dport` and a `udp dport` rule.
    let ports = rule4("action=accept dstports=80-80").unwrap();
    assert_eq!(ports.proto, None);
    assert!(ports.matches(&tcp(v4(192, 0, 2, 1), 80), &Ctx));
    assert!(ports.matches(&udp(v4(192, 0, 2, 1), 80), &Ctx));
    assert!(!ports.matches(&tcp(v4(192, 0, 2, 1), 81), &Ctx));
    assert!(!ports.matches(
        &FlowQuery::Icmp {
            dst: v4(192, 0, 2, 1),
            icmp_type: 8
        },
        &Ctx
    ));

    // prepare_rules: "if 'dst4' in rule: ... elif 'dst6' in rule: ...
    // elif 'dsthost' in rule:" uses one destination, after "if 'dst6' in
    // rule and family == 4: raise RuleParseError".
    let two = rule4("action=accept dsthost=example.com dst4=192.0.2.0/24").unwrap();
    assert_eq!(
        two.destination,
        Some(Destination::V4 {
            addr: Ipv4Addr::new(192, 0, 2, 0),
            prefix: 24
        })
    );
    let two6 = rule6("action=accept dsthost=example.com dst6=2001:db8::/32").unwrap();
    assert!(matches!(two6.destination, Some(Destination::V6 { .. })));
    assert_eq!(
        rule6("action=accept dst6=2001:db8::/32 dst4=192.0.2.1"),
        Err(RuleError::WrongFamily { key: "dst4" })
    );

    // `icmp type 8` without `ip protocol icmp`: nft adds the protocol
    // dependency itself.
    let ping = rule4("action=accept icmptype=8").unwrap();
    assert_eq!(ping.proto, Some(Proto::Icmp));

    // supported_rule_opts = ['action', 'proto', 'dst4', 'dst6', 'dsthost',
    // 'dstports', 'specialtarget', 'icmptype']: "Unsupported rule
    // option(s)" blocks the client, dpi= included.
    let loaded = LoadedRules::load(
        Family::V4,
        [
            ("policy", &b"accept"[..]),
            ("0000", &b"action=accept proto=tcp dpi=NO"[..]),
        ],
    );
    assert_eq!(
        loaded.error,
        Some(RuleSetError::Rule {
            number: 0,
            error: RuleError::UnknownOption { key: "dpi".into() }
        })
    );
    assert_eq!(loaded.rules, RuleSet::drop_all());
}
