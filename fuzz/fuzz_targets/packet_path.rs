//! The firewall packet path on arbitrary frames from the uplink and from
//! clients. The input is a sequence of `[interface][length: 2 bytes][frame]`
//! records; a few flows are opened first so that replies and ICMP errors
//! find state to work on.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use firewall::{
    ClientConfig, ClientId, ClientSideConfig, Config, EthernetAddress, Firewall, Instant,
    Interface, UplinkConfig,
};
use libfuzzer_sys::fuzz_target;
use qubes::firewall_rules::{Family, LoadedRules};

const A: ClientId = ClientId(0);
const B: ClientId = ClientId(1);

fn firewall() -> Firewall {
    let mut config = Config::new(
        UplinkConfig {
            mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
            ip4: Ipv4Addr::new(10, 137, 0, 6),
            gateway4: Ipv4Addr::new(10, 137, 0, 1),
            ip6: Some(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 6)),
            gateway6: Some(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
            gateway_mac: None,
        },
        ClientSideConfig {
            mac: EthernetAddress([0xfe, 0xff, 0xff, 0xff, 0xff, 0xff]),
            gateway4: Ipv4Addr::new(10, 138, 0, 1),
            gateway6: Some(Ipv6Addr::new(0xfd09, 0x24ef, 0x4179, 0, 0, 0, 0xa89, 1)),
        },
        &[Ipv4Addr::new(192, 0, 2, 53)],
    );
    // Small tables, so that the fuzzer reaches eviction too.
    config.max_flows = 16;
    config.max_fragmented_datagrams = 4;
    let mut fw = Firewall::new(config);
    fw.add_client(
        A,
        ClientConfig {
            ip4: Ipv4Addr::new(10, 138, 0, 10),
            ip6: Some(Ipv6Addr::new(0xfd09, 0x24ef, 0x4179, 0, 0, 0, 0xa8a, 10)),
            mac: None,
        },
    );
    fw.add_client(
        B,
        ClientConfig {
            ip4: Ipv4Addr::new(10, 138, 0, 11),
            ip6: None,
            mac: Some(EthernetAddress([0, 0x16, 0x3e, 0, 0, 0x0b])),
        },
    );
    let rules: [(&str, &[u8]); 5] = [
        ("policy", b"drop"),
        ("0000", b"action=accept specialtarget=dns"),
        ("0001", b"action=drop proto=tcp dstports=22-22"),
        ("0002", b"action=accept dsthost=example.com proto=tcp"),
        ("0004", b"action=accept"),
    ];
    // dsthost= names are resolved when rules are loaded; answer at once so
    // that client A's rules are in force from the first frame.
    fw.set_host_addresses(
        Instant::from_millis(0),
        "example.com",
        vec![IpAddr::V4(Ipv4Addr::new(93, 184, 216, 34))],
    );
    fw.set_rules(
        IpAddr::V4(Ipv4Addr::new(10, 138, 0, 10)),
        LoadedRules::load(Family::V4, rules).rules,
    );
    fw.set_rules(
        IpAddr::V4(Ipv4Addr::new(10, 138, 0, 11)),
        LoadedRules::load(Family::V4, [("policy", &b"accept"[..])]).rules,
    );
    fw
}

fuzz_target!(|data: &[u8]| {
    let mut fw = firewall();
    let mut rest = data;
    let mut time = 0i64;
    while let [iface, hi, lo, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let (frame, next) = tail.split_at(len);
        rest = next;
        let interface = match iface % 4 {
            0 => Interface::Uplink,
            1 => Interface::Client(A),
            2 => Interface::Client(B),
            _ => Interface::Client(ClientId(9)),
        };
        time += i64::from(iface >> 2) * 1000;
        let now = Instant::from_millis(time);
        fw.handle(now, interface, frame);
        fw.poll(now);
        assert!(fw.conntrack().len() <= 16);
        assert!(fw.tracked_fragmented_datagrams() <= 4);
    }
});
