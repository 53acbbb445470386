//! The firewall VM's service on the host, driven as the runtime drives it:
//! the uplink comes up with its vif's `ip`, the configuration directory is
//! read (rules written as dom0 writes them), a client without `ip` is
//! refused, one with it connects; its allowed flow is NATed to the uplink,
//! its denied one answered with ICMP admin-prohibited, and a rule change
//! (only the client's directory key reported written) opens the port.

use std::net::{IpAddr, Ipv4Addr};

use firewall_vm::{FirewallSettings, FirewallVm};
use netfront::MacAddress;
use netvm::config::{Changed, Snapshot};
use netvm::identity::Key;
use netvm::{ClientId, ClientInfo, Link, Offload, Packet, Service, To, Transmit, UplinkInfo};

const FW_MAC: [u8; 6] = [0, 0x16, 0x3e, 0x6d, 0x6f, 0x10];
const GW_MAC: [u8; 6] = [0, 0x16, 0x3e, 0, 0, 0x01];
const CLIENT_MAC: [u8; 6] = [0, 0x16, 0x3e, 0x6d, 0x6f, 0x20];
const FW_IP: [u8; 4] = [10, 99, 0, 10];
const GW_IP: [u8; 4] = [10, 99, 0, 1];
const CLIENT_IP: [u8; 4] = [10, 137, 0, 10];

fn print(line: &str) {
    println!("{line}");
}

fn ip_checksum(header: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in header.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A TCP SYN from the client; with `blank`, its checksum left to the
/// backend as a Linux netfront sends it: the field holds the
/// pseudo-header sum.
fn syn(dport: u16, blank: bool) -> Packet {
    let mut f = vec![0u8; 14 + 20 + 20];
    f[0..6].copy_from_slice(&[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff]);
    f[6..12].copy_from_slice(&CLIENT_MAC);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&CLIENT_IP);
    ip[16..20].copy_from_slice(&GW_IP);
    let c = ip_checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let tcp = &mut f[34..54];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
    tcp[12] = 0x50;
    tcp[13] = 0x02;
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    if blank {
        let mut sum = 6u32 + 20;
        for c in f[26..34].chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        f[50..52].copy_from_slice(&(sum as u16).to_be_bytes());
    } else {
        assert!(netback::packet::fill_checksum(&mut f));
    }
    Packet {
        data: f,
        offload: Offload {
            csum_blank: blank,
            ..Offload::default()
        },
    }
}

fn arp_reply() -> Packet {
    let mut f = vec![0u8; 42];
    f[0..6].copy_from_slice(&FW_MAC);
    f[6..12].copy_from_slice(&GW_MAC);
    f[12..14].copy_from_slice(&[0x08, 0x06]);
    let a = &mut f[14..42];
    a[0..2].copy_from_slice(&1u16.to_be_bytes());
    a[2..4].copy_from_slice(&0x0800u16.to_be_bytes());
    a[4] = 6;
    a[5] = 4;
    a[6..8].copy_from_slice(&2u16.to_be_bytes());
    a[8..14].copy_from_slice(&GW_MAC);
    a[14..18].copy_from_slice(&GW_IP);
    a[18..24].copy_from_slice(&FW_MAC);
    a[24..28].copy_from_slice(&FW_IP);
    Packet {
        data: f,
        offload: Offload::default(),
    }
}

fn rules(extra: &[(&str, &str)]) -> Snapshot {
    let mut s = Snapshot::default();
    for (k, v) in [
        ("qubes-firewall", ""),
        ("qubes-firewall/10-137-0-10", ""),
        ("qubes-firewall/10-137-0-10/policy", "drop"),
        (
            "qubes-firewall/10-137-0-10/0000",
            "action=accept proto=tcp dstports=8080-8080",
        ),
    ]
    .iter()
    .chain(extra)
    {
        s.nodes.insert(k.to_string(), v.as_bytes().to_vec());
    }
    s
}

fn client(ip: Option<&str>) -> ClientInfo {
    ClientInfo {
        id: ClientId(0),
        path: "backend/vif/5/0".into(),
        frontend_id: 5,
        mac: Key::Valid(MacAddress(CLIENT_MAC)),
        ip: match ip {
            Some(a) => Key::Valid(vec![a.parse::<IpAddr>().unwrap()]),
            None => Key::Absent,
        },
        frontend: None,
    }
}

/// The TCP destination port and IPv4 source of an IPv4/TCP frame.
fn tcp_of(frame: &[u8]) -> Option<(u16, Ipv4Addr)> {
    if frame.get(12..14)? != [0x08, 0x00] || *frame.get(23)? != 6 {
        return None;
    }
    let src = Ipv4Addr::new(frame[26], frame[27], frame[28], frame[29]);
    Some((u16::from_be_bytes([frame[36], frame[37]]), src))
}

/// Complete a blank TCP checksum as the next hop does: sum the segment
/// (the field holds the pseudo-header sum) and complement.
fn complete(frame: &[u8]) -> Vec<u8> {
    let mut copy = frame.to_vec();
    let mut sum = 0u32;
    for c in copy[34..54].chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    copy[50..52].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    copy
}

fn tcp_checksum_ok(frame: &[u8]) -> bool {
    let mut copy = frame.to_vec();
    let before = [copy[50], copy[51]];
    assert!(netback::packet::fill_checksum(&mut copy));
    [copy[50], copy[51]] == before
}

#[test]
fn clients_rules_and_rule_changes_through_the_service() {
    let settings = FirewallSettings {
        gw: Some(Ipv4Addr::from(GW_IP)),
        dns: vec![Ipv4Addr::from(GW_IP)],
        client_gw: Some(Ipv4Addr::new(10, 137, 0, 1)),
        ..FirewallSettings::default()
    };
    let mut vm = FirewallVm::new(settings, print);
    let mut out: Vec<Transmit> = Vec::new();
    // Before the uplink: nothing is forwarded.
    vm.handle(1, Link::Client(ClientId(1)), syn(8080, false), &mut out);
    assert!(out.is_empty());
    vm.uplink_up(
        1,
        &UplinkInfo {
            mac: MacAddress(FW_MAC),
            backend: "/local/domain/0/backend/vif/7/0".into(),
            ip: Key::Valid(vec![IpAddr::from(FW_IP)]),
            // Blank IPv4 checksums only (no feature-gso-*).
            features: netfront::BackendFeatures {
                rx_copy: true,
                sg: true,
                ipv4_csum_offload: true,
                max_queues: 1,
                ..Default::default()
            },
        },
    );
    let lines = vm.configure(
        2,
        &rules(&[]),
        &Changed {
            paths: vec![],
            all: true,
        },
    );
    // (configured at the uplink's arrival already: the command line and
    // the vif's ip are enough; the directory's first read adds the rules)
    assert!(vm.firewall().is_some());
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("rules of 10.137.0.10: 1 rules")),
        "{lines:?}"
    );

    // A client without ip is refused (and counted), one with it admitted.
    assert!(vm.admit(&client(None)).is_err());
    assert_eq!(vm.stats.refused, 1);
    let mut c = client(Some("10.137.0.10"));
    assert!(vm.admit(&c).is_ok());
    c.id = ClientId(1);
    vm.client_up(3, &c);

    // Allowed: held until the gateway's MAC is known (ARP), then NATed.
    vm.handle(10, Link::Client(ClientId(1)), syn(8080, true), &mut out);
    assert!(out.iter().all(|t| t.to == To::Uplink), "{out:?}");
    out.clear();
    vm.handle(11, Link::Uplink, arp_reply(), &mut out);
    let sent: Vec<_> = out
        .iter()
        .filter(|t| t.to == To::Uplink)
        .filter_map(|t| tcp_of(&t.packet.data).map(|x| (x, t.packet.clone())))
        .collect();
    assert_eq!(sent.len(), 1, "{out:?}");
    assert_eq!(sent[0].0, (8080, Ipv4Addr::from(FW_IP)));
    // The uplink takes blank IPv4 checksums: it stays blank, its
    // pseudo-header sum updated for the uplink address.
    assert!(sent[0].1.offload.csum_blank);
    assert!(
        tcp_checksum_ok(&complete(&sent[0].1.data)),
        "the blank checksum's pseudo-header sum follows NAT"
    );
    out.clear();

    // An uplink that takes no blank checksum gets it completed.
    vm.set_uplink_capabilities(firewall::Capabilities::NONE);
    let mut again = syn(8080, true);
    again.data[34..36].copy_from_slice(&40001u16.to_be_bytes());
    vm.handle(12, Link::Client(ClientId(1)), again, &mut out);
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(!out[0].packet.offload.csum_blank);
    assert!(out[0].packet.offload.data_validated);
    assert!(tcp_checksum_ok(&out[0].packet.data));
    assert_eq!(vm.firewall().unwrap().counters().csum_completed, 1);
    vm.set_uplink_capabilities(firewall_vm::ASSUMED_UPLINK);
    out.clear();

    // Denied: ICMP admin-prohibited (type 3 code 13) back to the client.
    vm.handle(20, Link::Client(ClientId(1)), syn(8081, false), &mut out);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].to, To::Client(ClientId(1)));
    let icmp = &out[0].packet.data;
    assert_eq!((icmp[23], icmp[34], icmp[35]), (1, 3, 13));
    out.clear();

    // dom0 adds a rule; only the directory key is reported written.
    let lines = vm.configure(
        30,
        &rules(&[(
            "qubes-firewall/10-137-0-10/0001",
            "action=accept proto=tcp dstports=8081-8081",
        )]),
        &Changed {
            paths: vec!["qubes-firewall/10-137-0-10".into()],
            all: false,
        },
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("rules of 10.137.0.10: 2 rules")),
        "{lines:?}"
    );
    vm.handle(31, Link::Client(ClientId(1)), syn(8081, false), &mut out);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].to, To::Uplink);
    assert_eq!(tcp_of(&out[0].packet.data).map(|x| x.0), Some(8081));
    out.clear();

    // A rule entry written alone reloads nothing (Linux agent semantics).
    let lines = vm.configure(
        40,
        &rules(&[]),
        &Changed {
            paths: vec!["qubes-firewall/10-137-0-10/0001".into()],
            all: false,
        },
    );
    assert!(lines.is_empty(), "{lines:?}");

    // The client goes: its frames are no longer forwarded.
    vm.client_down(50, ClientId(1));
    vm.handle(51, Link::Client(ClientId(1)), syn(8080, false), &mut out);
    assert!(out.is_empty());
}

#[test]
fn link_capabilities_follow_what_the_peers_offered() {
    use firewall::Capabilities;
    use firewall_vm::{client_capabilities, uplink_capabilities};
    let mut features = netfront::BackendFeatures {
        sg: true,
        gso_tcpv4: true,
        gso_tcpv6: false,
        ipv4_csum_offload: true,
        ipv6_csum_offload: true,
        ..Default::default()
    };
    assert_eq!(
        uplink_capabilities(&features),
        Capabilities {
            gso_tcpv6: false,
            ..Capabilities::ALL
        }
    );
    // netfront sends no super-packet without scatter-gather.
    features.sg = false;
    features.ipv4_csum_offload = false;
    assert_eq!(
        uplink_capabilities(&features),
        Capabilities {
            csum_blank_v6: true,
            ..Capabilities::NONE
        }
    );
    let mut front = netback::FrontendConfig {
        tx_ring_ref: 8,
        rx_ring_ref: 9,
        events: netback::config::EventChannels::Shared(3),
        sg: true,
        gso_tcpv4: true,
        gso_tcpv6: true,
        csum_v4: false,
        csum_v6: false,
    };
    // Blank checksums always: netback completes them for the frontend.
    assert_eq!(client_capabilities(&front), Capabilities::ALL);
    front.sg = false;
    assert_eq!(
        client_capabilities(&front),
        Capabilities {
            gso_tcpv4: false,
            gso_tcpv6: false,
            ..Capabilities::ALL
        }
    );
}

/// A TCP/IPv4 segment (a super-packet with `gso`) from `src` to `dst`,
/// with `payload` bytes and a blank checksum (the field holds the
/// pseudo-header sum, as Linux sends it).
#[allow(clippy::too_many_arguments)]
fn tcp(
    macs: ([u8; 6], [u8; 6]),
    src: ([u8; 4], u16),
    dst: ([u8; 4], u16),
    seq: u32,
    flags: u8,
    payload: usize,
    gso: Option<u16>,
) -> Packet {
    let mut f = vec![0u8; 14 + 20 + 20 + payload];
    f[0..6].copy_from_slice(&macs.1);
    f[6..12].copy_from_slice(&macs.0);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let total = (40 + payload) as u16;
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[6] = 0x40;
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src.0);
    ip[16..20].copy_from_slice(&dst.0);
    let c = ip_checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let t = &mut f[34..54];
    t[0..2].copy_from_slice(&src.1.to_be_bytes());
    t[2..4].copy_from_slice(&dst.1.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&1u32.to_be_bytes());
    t[12] = 0x50;
    t[13] = flags;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    for (i, b) in f[54..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let mut sum = 6u32 + u32::from(total - 20);
    for c in f[26..34].chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    f[50..52].copy_from_slice(&(sum as u16).to_be_bytes());
    Packet {
        data: f,
        offload: Offload {
            csum_blank: true,
            data_validated: false,
            gso: gso.map(|mss| xen::netif::Gso {
                kind: xen::netif::GsoKind::TcpV4,
                mss,
            }),
        },
    }
}

fn frontend(gso: bool) -> netback::FrontendConfig {
    netback::FrontendConfig {
        tx_ring_ref: 8,
        rx_ring_ref: 9,
        events: netback::config::EventChannels::Shared(3),
        sg: true,
        gso_tcpv4: gso,
        gso_tcpv6: gso,
        csum_v4: true,
        csum_v6: true,
    }
}

/// What the runtime says the peers offered decides the path: a client's
/// super-packet reaches an uplink whose backend offers GSO as one (NATed
/// in its headers), and is cut here for one that does not (the backend
/// restarted with other features); the uplink's super-packet reaches a
/// client whose frontend asked for GSO as one, and is cut for one that
/// did not.
#[test]
fn gso_follows_the_features_the_runtime_reports() {
    const MSS: u16 = 1448;
    const LEN: usize = 10 * MSS as usize;
    let settings = FirewallSettings {
        gw: Some(Ipv4Addr::from(GW_IP)),
        dns: vec![Ipv4Addr::from(GW_IP)],
        client_gw: Some(Ipv4Addr::new(10, 137, 0, 1)),
        ..FirewallSettings::default()
    };
    let mut vm = FirewallVm::new(settings, print);
    let mut uplink = UplinkInfo {
        mac: MacAddress(FW_MAC),
        backend: "/local/domain/0/backend/vif/7/0".into(),
        ip: Key::Valid(vec![IpAddr::from(FW_IP)]),
        features: netfront::BackendFeatures {
            rx_copy: true,
            sg: true,
            gso_tcpv4: true,
            gso_tcpv6: true,
            ipv4_csum_offload: true,
            ipv6_csum_offload: true,
            rx_notify: true,
            max_queues: 1,
        },
    };
    vm.uplink_up(1, &uplink);
    let other_mac = [0, 0x16, 0x3e, 0x6d, 0x6f, 0x21];
    let snapshot = rules(&[
        ("qubes-firewall/10-137-0-11", ""),
        ("qubes-firewall/10-137-0-11/policy", "accept"),
    ]);
    vm.configure(
        2,
        &snapshot,
        &Changed {
            paths: vec![],
            all: true,
        },
    );
    // Client 1 asked for GSO, client 2 did not.
    let mut c1 = client(Some("10.137.0.10"));
    c1.id = ClientId(1);
    c1.frontend = Some(frontend(true));
    vm.client_up(3, &c1);
    let mut c2 = client(Some("10.137.0.11"));
    c2.id = ClientId(2);
    c2.mac = Key::Valid(MacAddress(other_mac));
    c2.frontend = Some(frontend(false));
    vm.client_up(3, &c2);
    let mut out: Vec<Transmit> = Vec::new();
    vm.handle(4, Link::Uplink, arp_reply(), &mut out);
    out.clear();
    let gw_side = [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff];
    // Each client opens a flow to GW:8080; the NATed port is read off
    // the SYN and the gateway answers it.
    let mut ports = Vec::new();
    for (id, mac, ip) in [(1, CLIENT_MAC, CLIENT_IP), (2, other_mac, [10, 137, 0, 11])] {
        let syn = tcp((mac, gw_side), (ip, 40000), (GW_IP, 8080), 1, 0x02, 0, None);
        vm.handle(5, Link::Client(ClientId(id)), syn, &mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].to, To::Uplink);
        let port = u16::from_be_bytes([out[0].packet.data[34], out[0].packet.data[35]]);
        out.clear();
        let synack = tcp(
            (GW_MAC, FW_MAC),
            (GW_IP, 8080),
            (FW_IP, port),
            1,
            0x12,
            0,
            None,
        );
        vm.handle(6, Link::Uplink, synack, &mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].to, To::Client(ClientId(id)));
        out.clear();
        ports.push(port);
    }
    // Client 1 -> uplink with GSO: one super-packet, its size unchanged.
    let big = tcp(
        (CLIENT_MAC, gw_side),
        (CLIENT_IP, 40000),
        (GW_IP, 8080),
        2,
        0x18,
        LEN,
        Some(MSS),
    );
    vm.handle(7, Link::Client(ClientId(1)), big.clone(), &mut out);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].to, To::Uplink);
    assert_eq!(out[0].packet.data.len(), 54 + LEN);
    assert_eq!(out[0].packet.offload.gso.map(|g| g.mss), Some(MSS));
    assert!(out[0].packet.offload.csum_blank);
    out.clear();
    // The uplink's backend comes back without GSO: cut here.
    uplink.features.gso_tcpv4 = false;
    uplink.features.gso_tcpv6 = false;
    vm.uplink_up(8, &uplink);
    vm.handle(9, Link::Client(ClientId(1)), big, &mut out);
    assert_eq!(out.len(), 10, "ten segments of {MSS}");
    assert!(out
        .iter()
        .all(|t| t.to == To::Uplink && t.packet.offload.gso.is_none()));
    out.clear();
    // Uplink -> client 1 (GSO asked for): one; -> client 2: ten segments.
    for (id, port, segments) in [(1, ports[0], 1), (2, ports[1], 10)] {
        let down = tcp(
            (GW_MAC, FW_MAC),
            (GW_IP, 8080),
            (FW_IP, port),
            2,
            0x18,
            LEN,
            Some(MSS),
        );
        vm.handle(10, Link::Uplink, down, &mut out);
        assert_eq!(out.len(), segments, "client {id}: {out:?}");
        assert!(out.iter().all(|t| t.to == To::Client(ClientId(id))));
        assert_eq!(out[0].packet.offload.gso.is_some(), segments == 1);
        out.clear();
    }
    let c = vm.firewall().unwrap().counters();
    assert_eq!((c.forwarded_gso, c.gso_segmented), (2, 2), "{c:?}");
}
