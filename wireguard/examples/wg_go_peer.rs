//! Our tunnel over a real UDP socket against wireguard-go (run by
//! `tests/wireguard-go.sh` inside a network namespace). Pings the kernel
//! address behind wireguard-go through the tunnel (`initiate` mode) or waits
//! for wireguard-go to connect and answers its pings (`respond` mode).
//!
//! Usage: wg_go_peer initiate|respond OUR_PRIVATE_KEY THEIR_PUBLIC_KEY LOCAL_PORT PEER_PORT

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wireguard::config::parse_key;
use wireguard::{Action, Random, Tunnel, TunnelConfig};

struct Urandom(std::fs::File);

impl Random for Urandom {
    fn fill(&mut self, buf: &mut [u8]) {
        use std::io::Read;
        self.0.read_exact(buf).expect("/dev/urandom");
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

/// An ICMP echo (request when `reply` is false) from `src` to `dst`.
fn icmp_echo(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    reply: bool,
    ident_seq: [u8; 4],
    payload: &[u8],
) -> Vec<u8> {
    let total = 20 + 8 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 1;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20] = if reply { 0 } else { 8 };
    p[24..28].copy_from_slice(&ident_seq);
    p[28..].copy_from_slice(payload);
    let c = checksum(&p[20..]);
    p[22..24].copy_from_slice(&c.to_be_bytes());
    p
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, mode, ours, theirs, lport, pport] = &args[..] else {
        eprintln!("usage: wg_go_peer initiate|respond PRIV PEER_PUB LOCAL_PORT PEER_PORT");
        std::process::exit(2);
    };
    let start = Instant::now();
    let mut rng = Urandom(std::fs::File::open("/dev/urandom").unwrap());
    let peer: SocketAddr = format!("127.0.0.1:{pport}").parse().unwrap();
    let mut t = Tunnel::new(&TunnelConfig {
        private_key: parse_key(ours).expect("private key"),
        peer_public_key: parse_key(theirs).expect("public key"),
        preshared_key: None,
        persistent_keepalive: None,
        index: 1,
        endpoint: Some(peer),
        wall_clock_at_zero: SystemTime::now().duration_since(UNIX_EPOCH).unwrap(),
        handshake_load_limit: 100,
    })
    .unwrap();
    let sock = UdpSocket::bind(format!("127.0.0.1:{lport}")).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let me = Ipv4Addr::new(10, 99, 0, 2);
    let them = Ipv4Addr::new(10, 99, 0, 1);
    let mut out = vec![0u8; 2048];
    let mut rx = vec![0u8; 2048];
    let mut replies = 0u32;
    let mut answered = 0u32;
    let mut next_ping = Duration::ZERO;
    let mut seq = 0u16;
    while start.elapsed() < Duration::from_secs(20) {
        let now = start.elapsed();
        if mode == "initiate" && now >= next_ping {
            seq += 1;
            let mut id = [0x12, 0x34, 0, 0];
            id[2..].copy_from_slice(&seq.to_be_bytes());
            let p = icmp_echo(me, them, false, id, b"moat wireguard interop");
            if let Action::WriteToNetwork(d) = t.encapsulate(now, &mut rng, &p, &mut out) {
                sock.send_to(d, peer).unwrap();
            }
            next_ping = now + Duration::from_millis(300);
        }
        if let Action::WriteToNetwork(d) = t.update_timers(now, &mut rng, &mut out) {
            sock.send_to(d, peer).unwrap();
        }
        let Ok((n, from)) = sock.recv_from(&mut rx) else {
            continue;
        };
        let mut input = rx[..n].to_vec();
        loop {
            match t.decapsulate(start.elapsed(), &mut rng, Some(from), &input, &mut out) {
                Action::WriteToNetwork(d) => {
                    sock.send_to(d, t.endpoint().unwrap_or(peer)).unwrap();
                }
                Action::WriteToTunnel(p, src) => {
                    let p = p.to_vec();
                    let icmp_type = p.get(20).copied();
                    if mode == "initiate" && icmp_type == Some(0) && src == them {
                        replies += 1;
                        println!("echo reply {replies} from {src} through wireguard-go");
                    } else if mode == "respond" && icmp_type == Some(8) {
                        let mut id = [0u8; 4];
                        id.copy_from_slice(&p[24..28]);
                        let r = icmp_echo(me, them, true, id, &p[28..]);
                        if let Action::WriteToNetwork(d) =
                            t.encapsulate(start.elapsed(), &mut rng, &r, &mut out)
                        {
                            sock.send_to(d, t.endpoint().unwrap_or(peer)).unwrap();
                            answered += 1;
                            println!("answered echo request {answered} from wireguard-go");
                        }
                    }
                    break;
                }
                Action::Err(e) => {
                    eprintln!("dropped: {e:?}");
                    break;
                }
                Action::Done => break,
            }
            input.clear();
        }
        if (mode == "initiate" && replies >= 3) || (mode == "respond" && answered >= 3) {
            println!(
                "{mode}: ok, {} handshake(s), stats {:?}",
                t.stats().handshakes,
                t.stats()
            );
            return;
        }
    }
    eprintln!("{mode}: FAILED (replies {replies}, answered {answered})");
    std::process::exit(1);
}
