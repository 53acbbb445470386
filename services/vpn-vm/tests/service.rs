//! The VPN VM's service on the host: configuration from xenstore and the
//! disk (bad ones refused with a clear line, nothing sent), client frames
//! through the tunnel to a remote peer (our own `wireguard::Tunnel`) over an
//! uplink where only ARP and WireGuard's UDP ever appear, answers back to
//! the right client, spoofed sources dropped, no key on the console.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use netvm::config::{Changed, Snapshot};
use netvm::identity::Key;
use netvm::{ClientId, ClientInfo, Link, Packet, Service, To, Transmit, UplinkInfo};
use vpn::link::{self, Uplink, ETH_ARP, ETH_IPV4};
use vpn_vm::{disk_text, Ipv4Cidr, Secret, VpnSettings, VpnVm, CLIENT_SIDE_MAC};
use wireguard::config::encode_base64;
use wireguard::{Action, Random, Tunnel, TunnelConfig};

thread_local! {
    static LINES: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

fn print(line: &str) {
    LINES.with(|l| l.borrow_mut().push(line.to_string()));
}

fn lines() -> Vec<String> {
    LINES.with(|l| l.borrow().clone())
}

struct XorShift(u64);

impl Random for XorShift {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *b = self.0 as u8;
        }
    }
}

const VM_KEY: [u8; 32] = [0x31; 32];
const REMOTE_KEY: [u8; 32] = [0x42; 32];
const VM_MAC: [u8; 6] = [0x00, 0x16, 0x3e, 0, 0, 1];
const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
const CLIENT_MAC: [u8; 6] = [0x00, 0x16, 0x3e, 0, 0, 7];
const SECOND: u64 = 1_000_000_000;

fn public(k: [u8; 32]) -> [u8; 32] {
    x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(k)).to_bytes()
}

fn remote_endpoint() -> SocketAddr {
    "198.51.100.1:51820".parse().unwrap()
}

fn wg_conf() -> String {
    format!(
        "[Interface]\nPrivateKey = {}\nAddress = 10.64.0.2/32\nDNS = 10.64.0.1\n\
         [Peer]\nPublicKey = {}\nEndpoint = {}\nAllowedIPs = 0.0.0.0/0, ::/0\n",
        encode_base64(&VM_KEY),
        encode_base64(&public(REMOTE_KEY)),
        remote_endpoint()
    )
}

fn settings() -> VpnSettings {
    VpnSettings {
        ip: Some(Ipv4Cidr {
            addr: Ipv4Addr::new(192, 0, 2, 2),
            prefix: 24,
        }),
        gw: Some(Ipv4Addr::new(192, 0, 2, 1)),
        disk: None,
    }
}

fn vm(disk: Option<&str>) -> VpnVm {
    VpnVm::new(
        settings(),
        print,
        Box::new(XorShift(7)),
        Duration::from_secs(1_700_000_000),
        disk.map(|d| Secret::new(d.to_string())),
    )
}

fn uplink_info() -> UplinkInfo {
    UplinkInfo {
        mac: netfront::MacAddress(VM_MAC),
        backend: "/local/domain/0/backend/vif/5/0".into(),
        ip: Key::Absent,
        features: Default::default(),
    }
}

fn client_info(id: u32, ip: &str) -> ClientInfo {
    ClientInfo {
        id: ClientId(id),
        path: format!("backend/vif/{}/0", 10 + id),
        frontend_id: 10 + id as u16,
        mac: Key::Valid(netfront::MacAddress(CLIENT_MAC)),
        ip: Key::Valid(vec![ip.parse().unwrap()]),
        frontend: None,
    }
}

fn snapshot(pairs: &[(&str, &str)]) -> Snapshot {
    let mut nodes = BTreeMap::new();
    for (k, v) in pairs {
        nodes.insert(k.to_string(), v.as_bytes().to_vec());
    }
    Snapshot { nodes }
}

fn all() -> Changed {
    Changed {
        paths: Vec::new(),
        all: true,
    }
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 UDP packet (UDP checksum 0: none).
fn udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let total = 28 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    let c = checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    p
}

fn raw(data: Vec<u8>) -> Packet {
    Packet {
        data,
        offload: Default::default(),
    }
}

fn from_client(ip_packet: &[u8]) -> Packet {
    raw(link::ethernet(
        CLIENT_SIDE_MAC,
        CLIENT_MAC,
        ETH_IPV4,
        ip_packet,
    ))
}

/// Every frame for the uplink is ARP or an IPv4 UDP datagram from our
/// address and port whose payload is a WireGuard message.
fn assert_only_wireguard(out: &[Transmit]) {
    for t in out.iter().filter(|t| t.to == To::Uplink) {
        let f = &t.packet.data;
        assert_eq!(&f[6..12], &VM_MAC);
        match link::be16(f, 12) {
            Some(ETH_ARP) => {}
            Some(ETH_IPV4) => {
                assert_eq!(f[14 + 9], 17, "UDP only");
                assert_eq!(&f[14 + 12..14 + 16], &[192, 0, 2, 2]);
                assert_eq!(link::be16(f, 34), Some(51820));
                assert!(
                    wireguard::wire::classify(&f[42..]).is_ok(),
                    "not a WireGuard message"
                );
            }
            other => panic!("ethertype {other:?} on the uplink"),
        }
    }
}

#[test]
fn without_a_configuration_nothing_is_sent_and_the_console_says_why() {
    let mut v = vm(None);
    v.uplink_up(0, &uplink_info());
    // (The runtime reads the configuration directory after the uplink is
    // up: no complaint before that read.)
    assert!(lines().is_empty(), "{:?}", lines());
    v.configure(0, &snapshot(&[]), &all());
    v.client_up(0, &client_info(1, "10.137.0.5"));
    let mut out = Vec::new();
    let p = udp([10, 137, 0, 5], [1, 1, 1, 1], 4000, 53, b"q");
    v.handle(SECOND, Link::Client(ClientId(1)), from_client(&p), &mut out);
    v.tick(2 * SECOND, &mut out);
    assert!(out.is_empty());
    assert_eq!(v.stats.unconfigured, 1);
    assert!(v.problem().unwrap().contains("no WireGuard configuration"));
    assert!(lines()
        .iter()
        .any(|l| l.starts_with("vpn: not forwarding: no WireGuard configuration")));
}

#[test]
fn a_bad_configuration_is_a_clear_error_sends_nothing_and_prints_no_key() {
    let key = encode_base64(&VM_KEY);
    let mut v = vm(None);
    v.uplink_up(0, &uplink_info());
    // A truncated public key on line 6.
    let bad = wg_conf().replace(&encode_base64(&public(REMOTE_KEY)), "AAAA");
    v.configure(0, &snapshot(&[("wg-quick", &bad)]), &all());
    let why = v.problem().unwrap().to_string();
    assert!(
        why.starts_with("bad wg-quick configuration in xenstore vpn/wg-quick: line 6"),
        "{why}"
    );
    v.client_up(0, &client_info(1, "10.137.0.5"));
    let mut out = Vec::new();
    let p = udp([10, 137, 0, 5], [1, 1, 1, 1], 4000, 53, b"q");
    v.handle(SECOND, Link::Client(ClientId(1)), from_client(&p), &mut out);
    v.tick(2 * SECOND, &mut out);
    assert!(out.is_empty());
    // A host name as endpoint: refused too (the VM has no DNS of its own).
    let host = wg_conf().replace(&remote_endpoint().to_string(), "vpn.example.com:51820");
    v.configure(0, &snapshot(&[("wg-quick", &host)]), &all());
    assert!(
        v.problem().unwrap().contains("host name"),
        "{:?}",
        v.problem()
    );
    // Fixed: forwarding; broken again: stopped again, and says so.
    v.configure(0, &snapshot(&[("wg-quick", &wg_conf())]), &all());
    assert!(v.gateway().is_some() && v.problem().is_none());
    v.configure(0, &snapshot(&[("wg-quick", "[Interface]\n")]), &all());
    assert!(v.gateway().is_none());
    v.handle(
        3 * SECOND,
        Link::Client(ClientId(1)),
        from_client(&p),
        &mut out,
    );
    assert!(out.is_empty());
    for l in lines() {
        assert!(!l.contains(&key), "a key printed: {l}");
        assert!(!l.contains("PrivateKey ="), "{l}");
    }
    assert!(lines().iter().any(|l| l.contains("stopped forwarding")));
}

#[test]
fn xenstore_wins_over_the_disk_and_the_disk_alone_works() {
    let mut v = vm(Some(&wg_conf()));
    v.uplink_up(0, &uplink_info());
    v.configure(0, &snapshot(&[]), &all());
    assert!(v.gateway().is_some(), "{:?}", v.problem());
    assert!(lines()
        .iter()
        .any(|l| l.contains("tunnel from the disk: 1 peer(s)")));
    let two = format!(
        "{}[Peer]\nPublicKey = {}\nEndpoint = 203.0.113.7:51820\nAllowedIPs = 10.99.0.0/16\n",
        wg_conf().replace("0.0.0.0/0, ::/0", "0.0.0.0/1"),
        encode_base64(&public([0x55; 32]))
    );
    v.configure(
        0,
        &snapshot(&[
            ("wg-quick", &two),
            ("ip", "192.0.2.9/24"),
            ("gateway", "192.0.2.254"),
        ]),
        &all(),
    );
    assert_eq!(v.gateway().unwrap().device().peer_count(), 2);
    assert!(lines().iter().any(|l| l.contains(
        "tunnel from xenstore vpn/wg-quick: 2 peer(s), address 10.64.0.2/32, dns 10.64.0.1, \
         uplink 192.0.2.9/24 gateway 192.0.2.254"
    )));
}

#[test]
fn disk_text_stops_at_the_first_nul_and_refuses_empty_disks() {
    let mut disk = wg_conf().into_bytes();
    disk.resize(4096, 0);
    assert_eq!(disk_text(&disk).unwrap().as_str(), wg_conf());
    assert!(disk_text(&[0u8; 4096]).is_err());
    assert!(disk_text(&[0xff, 0xfe, 0]).is_err());
}

struct Remote {
    tunnel: Tunnel,
    router: Uplink,
    rng: XorShift,
}

impl Remote {
    fn new() -> Self {
        Self {
            tunnel: Tunnel::new(&TunnelConfig {
                private_key: REMOTE_KEY,
                peer_public_key: public(VM_KEY),
                preshared_key: None,
                persistent_keepalive: None,
                index: 9,
                endpoint: None,
                wall_clock_at_zero: Duration::from_secs(1_700_000_000),
                handshake_load_limit: 50,
            })
            .unwrap(),
            // The uplink's router, at 192.0.2.1 (it answers ARP).
            router: Uplink::new(
                ROUTER_MAC,
                Ipv4Addr::new(192, 0, 2, 1),
                24,
                Ipv4Addr::new(192, 0, 2, 254),
                51820,
            ),
            rng: XorShift(3),
        }
    }

    fn decap(&mut self, d: &[u8]) -> Action<'static> {
        let mut buf = vec![0u8; 2048];
        let a = self
            .tunnel
            .decapsulate(Duration::from_secs(1), &mut self.rng, None, d, &mut buf);
        match a {
            Action::WriteToNetwork(b) => Action::WriteToNetwork(b.to_vec().leak()),
            Action::WriteToTunnel(b, s) => Action::WriteToTunnel(b.to_vec().leak(), s),
            Action::Done => Action::Done,
            Action::Err(e) => Action::Err(e),
        }
    }
}

/// The UDP payload of an uplink frame to the remote endpoint.
fn wg_payload(f: &[u8]) -> Option<Vec<u8>> {
    (link::be16(f, 12) == Some(ETH_IPV4) && f[23] == 17 && f[30..34] == [198, 51, 100, 1])
        .then(|| f[42..].to_vec())
}

/// A frame from the router carrying `payload` from the remote endpoint to us.
fn from_remote(payload: &[u8]) -> Packet {
    let ip = udp([198, 51, 100, 1], [192, 0, 2, 2], 51820, 51820, payload);
    raw(link::ethernet(VM_MAC, ROUTER_MAC, ETH_IPV4, &ip))
}

#[test]
fn client_traffic_goes_only_through_the_tunnel_and_answers_come_back() {
    let mut v = vm(None);
    let mut remote = Remote::new();
    v.uplink_up(0, &uplink_info());
    v.configure(0, &snapshot(&[("wg-quick", &wg_conf())]), &all());
    v.client_up(0, &client_info(1, "10.137.0.5"));
    v.client_up(0, &client_info(2, "10.137.0.6"));
    let mut out = Vec::new();
    // The client asks for its gateway's MAC: answered as the gateway.
    let arp = link::arp_frame(
        link::BROADCAST,
        1,
        CLIENT_MAC,
        Ipv4Addr::new(10, 137, 0, 5),
        [0; 6],
        Ipv4Addr::new(10, 137, 0, 1),
    );
    v.handle(SECOND, Link::Client(ClientId(1)), raw(arp), &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].to, To::Client(ClientId(1)));
    assert_eq!(&out[0].packet.data[6..12], &CLIENT_SIDE_MAC);
    out.clear();
    // A datagram from the client: the uplink first resolves its gateway.
    let p = udp(
        [10, 137, 0, 5],
        [93, 184, 216, 34],
        4000,
        7,
        b"secret payload",
    );
    v.handle(SECOND, Link::Client(ClientId(1)), from_client(&p), &mut out);
    assert_only_wireguard(&out);
    assert_eq!(out.len(), 1, "an ARP request for 192.0.2.1");
    let mut answers = Vec::new();
    remote.router.receive(&out[0].packet.data, &mut answers);
    out.clear();
    assert_eq!(answers.len(), 1);
    v.handle(SECOND, Link::Uplink, raw(answers.remove(0)), &mut out);
    assert_only_wireguard(&out);
    let init = wg_payload(&out[0].packet.data).expect("the initiation, to the endpoint");
    assert_eq!((init.len(), init[0]), (148, 1));
    out.clear();
    // The remote answers; the queued datagram follows the keepalive.
    let Action::WriteToNetwork(resp) = remote.decap(&init) else {
        panic!("no response")
    };
    v.handle(SECOND, Link::Uplink, from_remote(resp), &mut out);
    assert_only_wireguard(&out);
    let mut delivered = Vec::new();
    for t in &out {
        let d = wg_payload(&t.packet.data).unwrap();
        if let Action::WriteToTunnel(b, _) = remote.decap(&d) {
            delivered.push(b.to_vec());
        }
    }
    assert_eq!(delivered.len(), 1);
    let inner = &delivered[0];
    assert_eq!(
        &inner[12..16],
        &[10, 64, 0, 2],
        "masqueraded as the tunnel's address"
    );
    assert_eq!(&inner[28..], b"secret payload");
    out.clear();
    // The answer comes back to client 1 only, with its MAC.
    let reply = udp([93, 184, 216, 34], [10, 64, 0, 2], 7, 4000, b"answer");
    let mut buf = vec![0u8; 2048];
    let d =
        match remote
            .tunnel
            .encapsulate(Duration::from_secs(1), &mut remote.rng, &reply, &mut buf)
        {
            Action::WriteToNetwork(b) => b.to_vec(),
            other => panic!("{other:?}"),
        };
    v.handle(SECOND, Link::Uplink, from_remote(&d), &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].to, To::Client(ClientId(1)));
    let f = &out[0].packet.data;
    assert_eq!(
        (&f[0..6], &f[6..12]),
        (&CLIENT_MAC[..], &CLIENT_SIDE_MAC[..])
    );
    assert_eq!(&f[14 + 16..14 + 20], &[10, 137, 0, 5]);
    assert_eq!(&f[14 + 28..], b"answer");
    out.clear();
    // Client 2 claiming client 1's address: dropped, counted, nothing sent.
    let spoof = udp([10, 137, 0, 5], [93, 184, 216, 34], 4001, 7, b"x");
    v.handle(
        2 * SECOND,
        Link::Client(ClientId(2)),
        from_client(&spoof),
        &mut out,
    );
    assert!(out.is_empty());
    assert_eq!(v.stats.spoofed, 1);
    // IPv6 from a client with no IPv6 address: link-local is not tunnelled.
    let mut v6 = vec![0u8; 48];
    v6[0] = 0x60;
    v6[4..6].copy_from_slice(&8u16.to_be_bytes());
    v6[6] = 17;
    v6[8] = 0xfe;
    v6[9] = 0x80;
    v6[24] = 0x20;
    let frame = link::ethernet(CLIENT_SIDE_MAC, CLIENT_MAC, link::ETH_IPV6, &v6);
    v.handle(2 * SECOND, Link::Client(ClientId(1)), raw(frame), &mut out);
    assert!(out.is_empty());
    assert_eq!(v.stats.link_local, 1);
    // The timers send only WireGuard (keepalives, rekeys) for a minute.
    for s in 3..63 {
        v.tick(s * SECOND, &mut out);
    }
    assert_only_wireguard(&out);
}
