//! Remote syslog from the firewall VM (docs/syslog.md): with a UDP
//! collector named (`syslog=udp:...`, here started as the kernel's command
//! line would), the VM's console lines and log records leave by the
//! uplink, at each tick, as RFC 5424 datagrams from its uplink address to
//! the collector through the gateway. In a test binary of its own: the
//! kernel's logger is one per process.

use std::net::{IpAddr, Ipv4Addr};

use firewall_vm::{FirewallSettings, FirewallVm};
use netfront::MacAddress;
use netvm::config::{Changed, Snapshot};
use netvm::identity::Key;
use netvm::{Service, Transmit, UplinkInfo};
use smoltcp::wire::{EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet, UdpPacket};

fn print(line: &str) {
    println!("{line}");
}

/// The UDP payloads to 10.99.0.1:514 among `out`'s uplink frames.
fn syslog_datagrams(out: &[Transmit]) -> Vec<String> {
    let mut got = Vec::new();
    for t in out {
        let Ok(eth) = EthernetFrame::new_checked(&t.packet.data[..]) else {
            continue;
        };
        if eth.ethertype() != EthernetProtocol::Ipv4 {
            continue;
        }
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        if ip.next_header() != IpProtocol::Udp || ip.dst_addr() != Ipv4Addr::new(10, 99, 0, 1) {
            continue;
        }
        assert_eq!(ip.src_addr(), Ipv4Addr::new(10, 99, 0, 10));
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        if udp.dst_port() == 514 {
            got.push(String::from_utf8_lossy(udp.payload()).into_owned());
        }
    }
    got
}

#[test]
fn console_lines_and_records_reach_a_udp_collector() {
    kernel::logger::init();
    kernel::logger::start_remote(
        moat_syslog::Collector::parse("udp:10.99.0.1").unwrap(),
        log::LevelFilter::Info,
        moat_syslog::Origin::new("-", "moat", "-"),
    );
    let settings = FirewallSettings {
        gw: Some(Ipv4Addr::new(10, 99, 0, 1)),
        dns: vec![Ipv4Addr::new(10, 99, 0, 1)],
        client_gw: Some(Ipv4Addr::new(10, 137, 0, 1)),
        ..FirewallSettings::default()
    };
    let mut vm = FirewallVm::new(settings, print);
    vm.uplink_up(
        1,
        &UplinkInfo {
            mac: MacAddress([0, 0x16, 0x3e, 0x6d, 0x6f, 0x10]),
            backend: "/local/domain/0/backend/vif/7/0".into(),
            ip: Key::Valid(vec![IpAddr::from([10, 99, 0, 10])]),
            features: netfront::BackendFeatures::default(),
        },
    );
    let mut snapshot = Snapshot::default();
    for (k, v) in [
        ("qubes-firewall", ""),
        ("qubes-firewall/10-137-0-10", ""),
        ("qubes-firewall/10-137-0-10/policy", "drop"),
    ] {
        snapshot.nodes.insert(k.to_string(), v.as_bytes().to_vec());
    }
    vm.configure(
        2,
        &snapshot,
        &Changed {
            paths: vec![],
            all: true,
        },
    );
    log::warn!(target: "syslog_test", "a record of the log crate");
    // The gateway's MAC is learnt by ARP first: the datagrams wait for it
    // (a few) as other frames of the firewall's own do; answer it.
    let mut out: Vec<Transmit> = Vec::new();
    vm.tick(3, &mut out);
    let arp = out
        .iter()
        .find(|t| {
            EthernetFrame::new_checked(&t.packet.data[..])
                .map(|e| e.ethertype() == EthernetProtocol::Arp)
                .unwrap_or(false)
        })
        .map(|t| t.packet.data.clone());
    let mut got = syslog_datagrams(&out);
    if let Some(request) = arp {
        let reply = arp_reply(&request, [0, 0x16, 0x3e, 0, 0, 1]);
        let mut more = Vec::new();
        vm.handle(
            4,
            netvm::Link::Uplink,
            netvm::Packet {
                data: reply,
                offload: Default::default(),
            },
            &mut more,
        );
        vm.tick(5, &mut more);
        got.extend(syslog_datagrams(&more));
    }
    assert!(
        got.iter().any(|m| m.starts_with("<28>1 ")
            && m.contains(" moat - syslog_test - a record of the log crate")),
        "{got:#?}"
    );
    assert!(
        got.iter()
            .any(|m| m.starts_with("<30>1 ") && m.contains(" firewall - firewall: ")),
        "{got:#?}"
    );
}

/// The gateway's reply to the firewall's ARP request.
fn arp_reply(request: &[u8], mac: [u8; 6]) -> Vec<u8> {
    use smoltcp::wire::{ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetRepr};
    let eth = EthernetFrame::new_checked(request).unwrap();
    let ArpRepr::EthernetIpv4 {
        source_hardware_addr,
        source_protocol_addr,
        target_protocol_addr,
        ..
    } = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap()).unwrap()
    else {
        panic!("not an IPv4 ARP request");
    };
    let repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Reply,
        source_hardware_addr: EthernetAddress(mac),
        source_protocol_addr: target_protocol_addr,
        target_hardware_addr: source_hardware_addr,
        target_protocol_addr: source_protocol_addr,
    };
    let e = EthernetRepr {
        src_addr: EthernetAddress(mac),
        dst_addr: source_hardware_addr,
        ethertype: EthernetProtocol::Arp,
    };
    let mut frame = vec![0u8; e.buffer_len() + repr.buffer_len()];
    let mut f = EthernetFrame::new_unchecked(&mut frame[..]);
    e.emit(&mut f);
    repr.emit(&mut ArpPacket::new_unchecked(f.payload_mut()));
    frame
}
