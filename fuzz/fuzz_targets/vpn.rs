//! The VPN gateway's packet, NAT and DNS paths on arbitrary packets: the
//! packet helpers directly (parse, ports, MSS clamping, address rewriting,
//! NAT both ways, DNS redirection), and a masquerading gateway whose peer
//! (our own tunnel, playing the VPN provider) has a live session, fed
//! client packets and tunnel packets encrypted by the peer, so that every
//! inner packet reaches the inbound NAT and DNS paths. Properties: no
//! panic; every packet is forwarded or counted as a drop; what reaches a
//! client or the tunnel is a parseable IP packet no longer than what came.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use vpn::dns::DnsRedirect;
use vpn::nat::Nat;
use vpn::packet;
use vpn::{Gateway, GatewaySettings, Output};
use wireguard::config::{encode_base64, Config};
use wireguard::device::DeviceConfig;
use wireguard::{Action, Device, Random, Tunnel, TunnelConfig};

struct Counter(u64);

impl Random for Counter {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1);
            *b = (self.0 >> 56) as u8;
        }
    }
}

const GW_KEY: [u8; 32] = [0x10; 32];
const REMOTE_KEY: [u8; 32] = [0x20; 32];
const ZERO: Duration = Duration::from_secs(1_700_000_000);

fn public(k: [u8; 32]) -> [u8; 32] {
    *Device::new(DeviceConfig {
        private_key: k,
        wall_clock_at_zero: Duration::ZERO,
        handshake_load_limit: 10,
    })
    .public_key()
}

fn remote_addr() -> SocketAddr {
    "198.51.100.1:51820".parse().unwrap()
}

/// The packet helpers and NAT/DNS tables on one packet.
fn helpers(data: &[u8]) {
    let Some(info) = packet::parse(data) else {
        return;
    };
    assert!(info.len <= data.len());
    let mut p = data[..info.len].to_vec();
    let ports = packet::ports(&p, &info);
    let _ = packet::clamp_mss(&mut p, &info, 1200);
    assert_eq!(packet::parse(&p).map(|i| i.len), Some(info.len));
    let mut dns = DnsRedirect::new(vec![
        IpAddr::V4(Ipv4Addr::new(10, 64, 0, 1)),
        "fd00::1".parse().unwrap(),
    ]);
    if let Some((sport, _)) = ports {
        if let Some(server) = dns.redirect(info.src, sport, info.protocol, info.dst) {
            assert_eq!(server.is_ipv4(), info.dst.is_ipv4());
            let _ = dns.answer_source(server, info.src, sport, info.protocol);
        }
    }
    let mut nat = Nat::new(
        Some(IpAddr::V4(Ipv4Addr::new(10, 64, 0, 2))),
        Some("fd00::2".parse().unwrap()),
    );
    let now = Duration::from_secs(5);
    let mut q = p.clone();
    if nat.outbound(now, &mut q, &info).is_ok() {
        let out = packet::parse(&q).expect("a NATed packet still parses");
        assert_eq!(out.len, info.len);
    }
    // The same bytes arriving from the tunnel.
    let mut r = p.clone();
    let _ = nat.inbound(now, &mut r, &info);
    let mut s = p;
    let _ = packet::rewrite_address(&mut s, &info, true, IpAddr::V4(Ipv4Addr::new(1, 2, 3, 4)));
    nat.expire(Duration::from_secs(1_000_000));
}

fn check_outputs(out: &[Output], max: usize) {
    for o in out {
        if let Output::Client(p) = o {
            assert!(p.len() <= max, "a client packet grew");
            assert!(
                packet::parse(p).is_some(),
                "an unparseable packet to a client"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    helpers(data);
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let config = Config::parse(&format!(
        "[Interface]\nPrivateKey = {}\nAddress = 10.64.0.2/32, fd00::2/128\nDNS = 10.64.0.1\nMTU = 1420\n[Peer]\nPublicKey = {}\nEndpoint = {}\nAllowedIPs = 0.0.0.0/0, ::/0\n",
        encode_base64(&GW_KEY),
        encode_base64(&public(REMOTE_KEY)),
        remote_addr(),
    ))
    .unwrap();
    let mut gw = Gateway::new(
        &config,
        &GatewaySettings {
            wall_clock_at_zero: ZERO,
            handshake_load_limit: 50,
            masquerade: mode & 1 == 0,
        },
    )
    .unwrap();
    let mut rng = Counter(u64::from(mode));
    let now = Duration::from_secs(1);
    let mut out = Vec::new();
    // Records: [from tunnel?][len: 2][packet].
    let mut records = Vec::new();
    let mut input = rest;
    while let [dir, hi, lo, tail @ ..] = input {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        records.push((dir & 1 == 1, &tail[..len]));
        input = &tail[len..];
    }
    if mode & 2 == 0 {
        // Without a session: client packets start a handshake or are counted.
        for (_, p) in &records {
            out.clear();
            gw.from_client(now, &mut rng, p, &mut out);
            check_outputs(&out, p.len());
        }
        return;
    }
    // The peer, and a session: the gateway initiates on the first client
    // packet, the peer answers, and the gateway's keepalive confirms.
    let mut remote = Tunnel::new(&TunnelConfig {
        private_key: REMOTE_KEY,
        peer_public_key: public(GW_KEY),
        preshared_key: None,
        persistent_keepalive: None,
        index: 1,
        endpoint: None,
        wall_clock_at_zero: ZERO,
        handshake_load_limit: 50,
    })
    .unwrap();
    let gw_addr: SocketAddr = "203.0.113.9:51820".parse().unwrap();
    let mut buf = vec![0u8; 70000];
    let first = [
        0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 137, 0, 5, 93, 184, 216, 34, 0x0f, 0xa0, 0,
        80, 0, 8, 0, 0,
    ];
    out.clear();
    gw.from_client(now, &mut rng, &first, &mut out);
    let Some(Output::Uplink(init)) = out.first().cloned() else {
        panic!("no initiation");
    };
    let resp = match remote.decapsulate(now, &mut rng, Some(gw_addr), init.payload(), &mut buf) {
        Action::WriteToNetwork(b) => b.to_vec(),
        other => panic!("{other:?}"),
    };
    out.clear();
    gw.from_uplink(now, &mut rng, remote_addr(), &resp, &mut out);
    for o in out.clone() {
        if let Output::Uplink(d) = o {
            let _ = remote.decapsulate(now, &mut rng, Some(gw_addr), d.payload(), &mut buf);
        }
    }
    for (from_tunnel, p) in records {
        out.clear();
        if from_tunnel {
            let sealed = match remote.encapsulate(now, &mut rng, p, &mut buf) {
                Action::WriteToNetwork(b) => b.to_vec(),
                _ => continue,
            };
            gw.from_uplink(now, &mut rng, remote_addr(), &sealed, &mut out);
            // WireGuard pads what it seals to 16 bytes: an inner packet
            // shorter than its own IP header says arrives with up to 15
            // bytes of that padding as the rest of its data.
            check_outputs(&out, p.len().next_multiple_of(16));
        } else {
            gw.from_client(now, &mut rng, p, &mut out);
            check_outputs(&out, p.len());
        }
    }
    gw.tick(Duration::from_secs(200), &mut rng, &mut out);
    let _ = gw.counters();
});
