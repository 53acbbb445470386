//! The gateway against a remote peer (our own WireGuard tunnel playing the VPN
//! provider): traffic both ways, fail-closed behaviour without a session, DNS
//! redirection, MSS clamping, drops counted.

use std::net::SocketAddr;
use std::time::Duration;

use vpn::{Gateway, GatewaySettings, Output};
use wireguard::config::{encode_base64, Config};
use wireguard::{Action, Random, Tunnel, TunnelConfig};

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

const GW_KEY: [u8; 32] = [0x10; 32];
const REMOTE_KEY: [u8; 32] = [0x20; 32];

fn public(k: [u8; 32]) -> [u8; 32] {
    x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(k)).to_bytes()
}

fn remote_addr() -> SocketAddr {
    "198.51.100.1:51820".parse().unwrap()
}

fn conf(extra_peer_line: &str) -> Config {
    Config::parse(&format!(
        "[Interface]\nPrivateKey = {}\nAddress = 10.64.0.2/32\nDNS = 10.64.0.1\nMTU = 1420\n[Peer]\nPublicKey = {}\nEndpoint = {}\nAllowedIPs = 0.0.0.0/0\n{extra_peer_line}",
        encode_base64(&GW_KEY),
        encode_base64(&public(REMOTE_KEY)),
        remote_addr(),
    ))
    .unwrap()
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

fn l4_ok(p: &[u8]) -> bool {
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&p[12..20]);
    pseudo.extend_from_slice(&[0, p[9]]);
    pseudo.extend_from_slice(&((p.len() - 20) as u16).to_be_bytes());
    pseudo.extend_from_slice(&p[20..]);
    checksum(&pseudo) == 0 && checksum(&p[..20]) == 0
}

/// IPv4 UDP or TCP-SYN packet with valid checksums.
fn packet(
    tcp: bool,
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let l4 = if tcp { 24 } else { 8 };
    let total = 20 + l4 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = if tcp { 6 } else { 17 };
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    let c = checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    if tcp {
        p[32] = 6 << 4;
        p[33] = 0x02;
        p[40..44].copy_from_slice(&[2, 4, 0x05, 0xb4]); // MSS 1460
    } else {
        p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    }
    p[20 + l4..].copy_from_slice(payload);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&p[12..20]);
    pseudo.extend_from_slice(&[0, p[9]]);
    pseudo.extend_from_slice(&((total - 20) as u16).to_be_bytes());
    pseudo.extend_from_slice(&p[20..]);
    let c = checksum(&pseudo);
    let at = if tcp { 36 } else { 26 };
    p[at..at + 2].copy_from_slice(&c.to_be_bytes());
    assert!(l4_ok(&p));
    p
}

struct World {
    gw: Gateway,
    remote: Tunnel,
    now: Duration,
    rng: XorShift,
    gw_addr: SocketAddr,
}

fn world() -> World {
    let gw = Gateway::new(
        &conf(""),
        &GatewaySettings {
            wall_clock_at_zero: Duration::from_secs(1_700_000_000),
            handshake_load_limit: 50,
            masquerade: false,
        },
    )
    .unwrap();
    let remote = Tunnel::new(&TunnelConfig {
        private_key: REMOTE_KEY,
        peer_public_key: public(GW_KEY),
        preshared_key: None,
        persistent_keepalive: None,
        index: 1,
        endpoint: None,
        wall_clock_at_zero: Duration::from_secs(1_700_000_000),
        handshake_load_limit: 50,
    })
    .unwrap();
    World {
        gw,
        remote,
        now: Duration::from_secs(1),
        rng: XorShift(99),
        gw_addr: "203.0.113.9:51820".parse().unwrap(),
    }
}

fn uplink_only(out: &[Output]) -> Vec<Vec<u8>> {
    out.iter()
        .map(|o| match o {
            Output::Uplink(d) => {
                assert_eq!(d.dst(), remote_addr());
                d.payload().to_vec()
            }
            Output::Client(_) => panic!("unexpected client output"),
        })
        .collect()
}

impl World {
    fn client(&mut self, p: &[u8]) -> Vec<Output> {
        let mut out = Vec::new();
        self.gw.from_client(self.now, &mut self.rng, p, &mut out);
        out
    }
    fn uplink(&mut self, d: &[u8]) -> Vec<Output> {
        let mut out = Vec::new();
        self.gw
            .from_uplink(self.now, &mut self.rng, remote_addr(), d, &mut out);
        out
    }
    /// The remote peer receives `d`; returns (network replies, delivered packets).
    fn remote_recv(&mut self, d: &[u8]) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let mut buf = vec![0u8; 2048];
        let mut net = Vec::new();
        let mut tun = Vec::new();
        let mut input = d.to_vec();
        loop {
            match self.remote.decapsulate(
                self.now,
                &mut self.rng,
                Some(self.gw_addr),
                &input,
                &mut buf,
            ) {
                Action::WriteToNetwork(b) => net.push(b.to_vec()),
                Action::WriteToTunnel(b, _) => {
                    tun.push(b.to_vec());
                    break;
                }
                _ => break,
            }
            input.clear();
        }
        (net, tun)
    }
    fn remote_send(&mut self, p: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; 2048];
        match self
            .remote
            .encapsulate(self.now, &mut self.rng, p, &mut buf)
        {
            Action::WriteToNetwork(b) => b.to_vec(),
            other => panic!("{other:?}"),
        }
    }

    /// Client sends `first`; handshake completes; returns what the remote got.
    fn connect(&mut self, first: &[u8]) -> Vec<u8> {
        let out = uplink_only(&self.client(first));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0][0], 1, "an initiation, not the packet");
        let (resp, _) = self.remote_recv(&out[0]);
        let out = uplink_only(&self.uplink(&resp[0]));
        assert_eq!(out.len(), 2, "keepalive then the queued packet");
        let (_, t) = self.remote_recv(&out[0]);
        assert!(t.is_empty());
        let (_, t) = self.remote_recv(&out[1]);
        t.into_iter().next().expect("queued packet delivered")
    }
}

#[test]
fn traffic_flows_both_ways_through_the_tunnel() {
    let mut w = world();
    let p = packet(
        false,
        [10, 137, 0, 5],
        [93, 184, 216, 34],
        4000,
        80,
        b"hello",
    );
    assert_eq!(w.connect(&p), p);
    let reply = packet(
        false,
        [93, 184, 216, 34],
        [10, 137, 0, 5],
        80,
        4000,
        b"world",
    );
    let d = w.remote_send(&reply);
    assert_eq!(w.uplink(&d), vec![Output::Client(reply)]);
    let p2 = packet(false, [10, 137, 0, 5], [1, 1, 1, 1], 4001, 443, b"again");
    let out = uplink_only(&w.client(&p2));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0][0], 4, "transport data");
    assert_eq!(w.remote_recv(&out[0]).1, vec![p2]);
}

#[test]
fn fail_closed_without_a_session() {
    let mut w = world();
    let mut uplink = Vec::new();
    for i in 0..400u16 {
        let p = packet(
            false,
            [10, 137, 0, 5],
            [93, 184, 216, 34],
            4000 + i,
            80,
            b"secret data",
        );
        uplink.extend(uplink_only(&w.client(&p)));
    }
    // 90 s of the peer never answering.
    for _ in 0..(100 * 4) {
        w.now += Duration::from_millis(250);
        let mut out = Vec::new();
        w.gw.tick(w.now, &mut w.rng, &mut out);
        uplink.extend(uplink_only(&out));
    }
    assert!(!uplink.is_empty());
    for d in &uplink {
        assert_eq!(d.len(), 148, "only handshake initiations leave");
        assert_eq!(d[0], 1);
        assert!(!d.windows(11).any(|x| x == b"secret data"));
    }
    let c = w.gw.counters();
    // 256 queued then dropped at the give-up, 144 dropped at once.
    assert_eq!(c.tunnel_dropped, 400 - 256 + 1);
    assert_eq!(
        w.gw.device()
            .peer(wireguard::PeerId(0))
            .unwrap()
            .stats()
            .dropped_packets,
        400
    );
}

#[test]
fn dns_goes_to_the_tunnel_dns_server_and_answers_come_back_from_the_virtual_address() {
    let mut w = world();
    let q = packet(
        false,
        [10, 137, 0, 5],
        [10, 139, 1, 1],
        5353,
        53,
        b"\x12\x34query",
    );
    let seen = w.connect(&q);
    assert_eq!(
        &seen[16..20],
        &[10, 64, 0, 1],
        "redirected to the tunnel's DNS"
    );
    assert!(l4_ok(&seen), "checksums fixed");
    let answer = packet(
        false,
        [10, 64, 0, 1],
        [10, 137, 0, 5],
        53,
        5353,
        b"\x12\x34answer",
    );
    let d = w.remote_send(&answer);
    let out = w.uplink(&d);
    let [Output::Client(a)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(&a[12..16], &[10, 139, 1, 1]);
    assert!(l4_ok(a));
    // Any port-53 destination is redirected too.
    let q = packet(false, [10, 137, 0, 5], [8, 8, 8, 8], 5354, 53, b"q2");
    let out = uplink_only(&w.client(&q));
    let got = w.remote_recv(&out[0]).1;
    assert_eq!(&got[0][16..20], &[10, 64, 0, 1]);
    assert_eq!(w.gw.counters().dns_redirected, 2);
}

#[test]
fn tcp_mss_is_clamped_to_the_tunnel_mtu() {
    let mut w = world();
    let syn = packet(true, [10, 137, 0, 5], [93, 184, 216, 34], 40000, 443, &[]);
    let seen = w.connect(&syn);
    assert_eq!(&seen[42..44], &(1420u16 - 40).to_be_bytes());
    assert!(l4_ok(&seen));
    assert_eq!(w.gw.counters().mss_clamped, 1);
}

#[test]
fn unroutable_ipv6_and_garbage_are_dropped_and_counted() {
    let mut w = world();
    let mut v6 = vec![0u8; 48];
    v6[0] = 0x60;
    v6[4..6].copy_from_slice(&8u16.to_be_bytes());
    v6[6] = 17;
    v6[24] = 0x20;
    assert!(w.client(&v6).is_empty());
    assert!(w.client(&[0x45, 0, 0]).is_empty());
    assert!(w.uplink(b"definitely not wireguard").is_empty());
    assert!(w
        .uplink(&[
            4, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
            13, 14, 15, 16
        ])
        .is_empty());
    let c = w.gw.counters();
    assert_eq!(
        (c.no_route_v6, c.client_malformed, c.uplink_rejected),
        (1, 1, 2)
    );
}

#[test]
fn host_name_endpoints_are_refused() {
    let text = format!(
        "[Interface]\nPrivateKey = {}\n[Peer]\nPublicKey = {}\nEndpoint = vpn.example.com:51820\nAllowedIPs = 0.0.0.0/0\n",
        encode_base64(&GW_KEY),
        encode_base64(&public(REMOTE_KEY))
    );
    let c = Config::parse(&text).unwrap();
    let s = GatewaySettings {
        wall_clock_at_zero: Duration::ZERO,
        handshake_load_limit: 1,
        masquerade: false,
    };
    assert_eq!(
        Gateway::new(&c, &s).err(),
        Some(vpn::SetupError::HostEndpoint(0))
    );
}

#[test]
fn spoofed_answers_from_the_tunnel_still_reach_only_valid_clients() {
    // A packet from the remote whose inner source is outside its AllowedIPs is dropped.
    let text = format!(
        "[Interface]\nPrivateKey = {}\nDNS = 10.64.0.1\n[Peer]\nPublicKey = {}\nEndpoint = {}\nAllowedIPs = 10.64.0.0/16\n",
        encode_base64(&GW_KEY),
        encode_base64(&public(REMOTE_KEY)),
        remote_addr()
    );
    let mut w = world();
    w.gw = Gateway::new(
        &Config::parse(&text).unwrap(),
        &GatewaySettings {
            wall_clock_at_zero: Duration::from_secs(1_700_000_000),
            handshake_load_limit: 50,
            masquerade: false,
        },
    )
    .unwrap();
    let p = packet(false, [10, 137, 0, 5], [10, 64, 9, 9], 4000, 80, b"x");
    assert_eq!(w.connect(&p), p);
    let spoof = packet(
        false,
        [93, 184, 216, 34],
        [10, 137, 0, 5],
        80,
        4000,
        b"evil",
    );
    let d = w.remote_send(&spoof);
    assert!(w.uplink(&d).is_empty());
    assert_eq!(w.gw.counters().uplink_rejected, 1);
}

fn masquerading_world() -> World {
    let mut w = world();
    w.gw = Gateway::new(
        &conf(""),
        &GatewaySettings {
            wall_clock_at_zero: Duration::from_secs(1_700_000_000),
            handshake_load_limit: 50,
            masquerade: true,
        },
    )
    .unwrap();
    w
}

#[test]
fn masquerading_clients_as_the_tunnel_address() {
    let mut w = masquerading_world();
    let p = packet(
        false,
        [10, 137, 0, 5],
        [93, 184, 216, 34],
        4000,
        80,
        b"hello",
    );
    let seen = w.connect(&p);
    assert_eq!(
        &seen[12..16],
        &[10, 64, 0, 2],
        "source is the tunnel's Address"
    );
    assert_eq!(&seen[20..22], &4000u16.to_be_bytes(), "free port kept");
    assert!(l4_ok(&seen));
    let reply = packet(
        false,
        [93, 184, 216, 34],
        [10, 64, 0, 2],
        80,
        4000,
        b"world",
    );
    let d = w.remote_send(&reply);
    let out = w.uplink(&d);
    let [Output::Client(got)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(&got[16..20], &[10, 137, 0, 5]);
    assert_eq!(&got[22..24], &4000u16.to_be_bytes());
    assert!(l4_ok(got));
    // Unsolicited: to another port, and straight to a client's address.
    for (dst, dport) in [([10, 64, 0, 2], 5555), ([10, 137, 0, 5], 4000)] {
        let p = packet(false, [93, 184, 216, 34], dst, 80, dport, b"unasked");
        let d = w.remote_send(&p);
        assert!(w.uplink(&d).is_empty());
    }
    assert_eq!(w.gw.counters().nat_no_mapping, 2);
    assert_eq!(w.gw.nat().unwrap().len(), 1);
    // Mappings expire with the timers.
    let mut out = Vec::new();
    w.now += vpn::nat::UDP_TIMEOUT + Duration::from_secs(1);
    w.gw.tick(w.now, &mut w.rng, &mut out);
    assert!(w.gw.nat().unwrap().is_empty());
}

#[test]
fn masqueraded_dns_answers_come_back_from_the_virtual_address() {
    let mut w = masquerading_world();
    let q = packet(
        false,
        [10, 137, 0, 5],
        [10, 139, 1, 1],
        5353,
        53,
        b"\x12\x34query",
    );
    let seen = w.connect(&q);
    assert_eq!(&seen[12..20], &[10, 64, 0, 2, 10, 64, 0, 1]);
    assert!(l4_ok(&seen));
    let answer = packet(
        false,
        [10, 64, 0, 1],
        [10, 64, 0, 2],
        53,
        5353,
        b"\x12\x34answer",
    );
    let d = w.remote_send(&answer);
    let out = w.uplink(&d);
    let [Output::Client(a)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(&a[12..20], &[10, 139, 1, 1, 10, 137, 0, 5]);
    assert_eq!(&a[22..24], &5353u16.to_be_bytes());
    assert!(l4_ok(a));
}

#[test]
fn masquerading_needs_an_address() {
    let text = format!(
        "[Interface]\nPrivateKey = {}\n[Peer]\nPublicKey = {}\nEndpoint = {}\nAllowedIPs = 0.0.0.0/0\n",
        encode_base64(&GW_KEY),
        encode_base64(&public(REMOTE_KEY)),
        remote_addr()
    );
    let s = GatewaySettings {
        wall_clock_at_zero: Duration::ZERO,
        handshake_load_limit: 1,
        masquerade: true,
    };
    assert_eq!(
        Gateway::new(&Config::parse(&text).unwrap(), &s).err(),
        Some(vpn::SetupError::NoAddressToMasquerade)
    );
}

/// A gateway that is always under load (a limit of 0 handshakes a second).
fn loaded_world() -> World {
    let mut w = world();
    w.gw = Gateway::new(
        &conf(""),
        &GatewaySettings {
            wall_clock_at_zero: Duration::from_secs(1_700_000_000),
            handshake_load_limit: 0,
            masquerade: false,
        },
    )
    .unwrap();
    w
}

#[test]
fn under_load_initiations_get_cookie_replies_sent_back_to_their_source() {
    let mut w = loaded_world();
    let mut buf = vec![0u8; 2048];
    let init = match w.remote.force_handshake(w.now, &mut w.rng, &mut buf) {
        Action::WriteToNetwork(b) => b.to_vec(),
        other => panic!("{other:?}"),
    };
    // The peer's first initiation carries no mac2: a cookie reply goes back
    // to the address it came from (an attacker's address gets its own).
    let attacker: SocketAddr = "192.0.2.66:40000".parse().unwrap();
    let mut out = Vec::new();
    w.gw.from_uplink(w.now, &mut w.rng, attacker, &init, &mut out);
    let [Output::Uplink(d)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(
        (d.dst(), d.payload().len(), d.payload()[0]),
        (attacker, 64, 3)
    );
    let reply = w.uplink(&init);
    let [Output::Uplink(d)] = &reply[..] else {
        panic!("{reply:?}")
    };
    assert_eq!(
        (d.dst(), d.payload().len(), d.payload()[0]),
        (remote_addr(), 64, 3)
    );
    assert_eq!(w.gw.counters().cookie_replies, 2);
    // The peer takes the cookie; its next initiation (mac2 valid for its
    // address) completes the handshake under load.
    let (net, tun) = w.remote_recv(d.payload());
    assert!(net.is_empty() && tun.is_empty());
    w.now += Duration::from_secs(6);
    let init = match w.remote.update_timers(w.now, &mut w.rng, &mut buf) {
        Action::WriteToNetwork(b) => b.to_vec(),
        other => panic!("{other:?}"),
    };
    let out = uplink_only(&w.uplink(&init));
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].len(), out[0][0]), (92, 2), "a handshake response");
    assert_eq!(w.gw.counters().cookie_replies, 2);
    // Forged initiations (wrong mac1) get nothing at all.
    let mut forged = init.clone();
    forged[116] ^= 1;
    assert!(w.uplink(&forged).is_empty());
    assert_eq!(w.gw.counters().cookie_replies, 2);
}

#[test]
fn a_family_the_tunnel_has_no_address_of_is_dropped_and_counted() {
    // Address = 10.64.0.2/32 only, AllowedIPs covering IPv6 too.
    let mut w = world();
    w.gw = Gateway::new(
        &conf("AllowedIPs = ::/0\n"),
        &GatewaySettings {
            wall_clock_at_zero: Duration::from_secs(1_700_000_000),
            handshake_load_limit: 50,
            masquerade: true,
        },
    )
    .unwrap();
    let mut v6 = vec![0u8; 48];
    v6[0] = 0x60;
    v6[4..6].copy_from_slice(&8u16.to_be_bytes());
    v6[6] = 17;
    v6[8] = 0xfd; // from fd00::5, the client's internal address
    v6[23] = 5;
    v6[24] = 0x20; // to 2000::
    assert!(
        w.client(&v6).is_empty(),
        "nothing sent, not even an initiation"
    );
    let c = w.gw.counters();
    assert_eq!((c.no_tunnel_address, c.no_route_v6), (1, 0));
    // IPv4 still goes (an initiation first).
    let p = packet(false, [10, 137, 0, 5], [1, 1, 1, 1], 4000, 53, b"q");
    assert_eq!(uplink_only(&w.client(&p)).len(), 1);
}
