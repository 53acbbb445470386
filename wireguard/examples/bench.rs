//! Throughput and handshake rate, ours beside boringtun, in one run on one
//! core. Prints figures and ratios; asserts nothing about speed.
//!
//! Run: `cargo run --release -p wireguard --example bench`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
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

const A: [u8; 32] = [0x61; 32];
const B: [u8; 32] = [0x62; 32];
const RUN: Duration = Duration::from_millis(1500);

fn public(k: [u8; 32]) -> [u8; 32] {
    PublicKey::from(&StaticSecret::from(k)).to_bytes()
}

fn ours(me: [u8; 32], peer: [u8; 32], index: u32) -> Tunnel {
    Tunnel::new(&TunnelConfig {
        private_key: me,
        peer_public_key: public(peer),
        preshared_key: None,
        persistent_keepalive: None,
        index,
        endpoint: None,
        wall_clock_at_zero: Duration::from_secs(1_700_000_000),
        handshake_load_limit: u32::MAX,
    })
    .unwrap()
}

fn theirs(me: [u8; 32], peer: [u8; 32], index: u32) -> Tunn {
    let limiter = Arc::new(RateLimiter::new(
        &PublicKey::from(&StaticSecret::from(me)),
        u64::MAX,
    ));
    Tunn::new(
        StaticSecret::from(me),
        PublicKey::from(peer_pub(peer)),
        None,
        None,
        index,
        Some(limiter),
    )
    .unwrap()
}

fn peer_pub(k: [u8; 32]) -> [u8; 32] {
    public(k)
}

fn ip_packet(len: usize) -> Vec<u8> {
    let mut p = vec![0xab; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[12..16].copy_from_slice(&[10, 0, 0, 1]);
    p
}

/// Runs `f` repeatedly for RUN; returns iterations per second.
fn rate(mut f: impl FnMut()) -> f64 {
    for _ in 0..100 {
        f();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < RUN {
        for _ in 0..64 {
            f();
        }
        n += 64;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn ours_pair(rng: &mut XorShift) -> (Tunnel, Tunnel, Duration) {
    let mut a = ours(A, B, 1);
    let mut b = ours(B, A, 2);
    let now = Duration::from_secs(1);
    let mut buf = vec![0u8; 2048];
    let mut buf2 = vec![0u8; 2048];
    let Action::WriteToNetwork(init) = a.force_handshake(now, rng, &mut buf) else {
        panic!()
    };
    let Action::WriteToNetwork(resp) = b.decapsulate(now, rng, None, init, &mut buf2) else {
        panic!()
    };
    let Action::WriteToNetwork(ka) = a.decapsulate(now, rng, None, resp, &mut buf) else {
        panic!()
    };
    assert!(matches!(
        b.decapsulate(now, rng, None, ka, &mut buf2),
        Action::Done
    ));
    (a, b, now)
}

fn theirs_pair() -> (Tunn, Tunn) {
    let mut a = theirs(A, B, 1);
    let mut b = theirs(B, A, 2);
    let mut buf = vec![0u8; 2048];
    let mut buf2 = vec![0u8; 2048];
    let TunnResult::WriteToNetwork(init) = a.format_handshake_initiation(&mut buf, true) else {
        panic!()
    };
    let TunnResult::WriteToNetwork(resp) = b.decapsulate(None, init, &mut buf2) else {
        panic!()
    };
    let TunnResult::WriteToNetwork(ka) = a.decapsulate(None, resp, &mut buf) else {
        panic!()
    };
    assert!(matches!(
        b.decapsulate(None, ka, &mut buf2),
        TunnResult::Done
    ));
    (a, b)
}

fn main() {
    let mut rng = XorShift(42);
    println!(
        "one core, {} ms per figure; encapsulate + decapsulate of one packet per iteration",
        RUN.as_millis()
    );
    for len in [1420usize, 64] {
        let p = ip_packet(len);
        let (mut a, mut b, now) = ours_pair(&mut rng);
        let mut buf = vec![0u8; 2048];
        let mut buf2 = vec![0u8; 2048];
        let r_ours = rate(|| {
            let Action::WriteToNetwork(d) = a.encapsulate(now, &mut rng, &p, &mut buf) else {
                panic!()
            };
            let Action::WriteToTunnel(q, _) = b.decapsulate(now, &mut rng, None, d, &mut buf2)
            else {
                panic!()
            };
            black_box(q);
        });
        let (mut ta, mut tb) = theirs_pair();
        let r_theirs = rate(|| {
            let TunnResult::WriteToNetwork(d) = ta.encapsulate(&p, &mut buf) else {
                panic!()
            };
            let TunnResult::WriteToTunnelV4(q, _) = tb.decapsulate(None, d, &mut buf2) else {
                panic!()
            };
            black_box(q);
        });
        let mb = |r: f64| r * len as f64 / 1e6;
        println!(
            "{len:>5}-byte packets: ours {:8.1} MB/s ({:9.0} pkt/s)   boringtun {:8.1} MB/s ({:9.0} pkt/s)   ratio {:.2}x",
            mb(r_ours),
            r_ours,
            mb(r_theirs),
            r_theirs,
            r_ours / r_theirs
        );
    }
    // A full handshake per iteration: initiation, response, confirmation.
    let mut a = ours(A, B, 1);
    let mut b = ours(B, A, 2);
    let mut now = Duration::from_secs(1);
    let mut buf = vec![0u8; 2048];
    let mut buf2 = vec![0u8; 2048];
    let h_ours = rate(|| {
        now += Duration::from_millis(25); // beyond the responder's flood interval
        let Action::WriteToNetwork(init) = a.force_handshake(now, &mut rng, &mut buf) else {
            panic!()
        };
        let Action::WriteToNetwork(resp) = b.decapsulate(now, &mut rng, None, init, &mut buf2)
        else {
            panic!()
        };
        let Action::WriteToNetwork(ka) = a.decapsulate(now, &mut rng, None, resp, &mut buf) else {
            panic!()
        };
        black_box(ka);
    });
    let mut ta = theirs(A, B, 1);
    let mut tb = theirs(B, A, 2);
    let h_theirs = rate(|| {
        let TunnResult::WriteToNetwork(init) = ta.format_handshake_initiation(&mut buf, true)
        else {
            panic!()
        };
        let TunnResult::WriteToNetwork(resp) = tb.decapsulate(None, init, &mut buf2) else {
            panic!("boringtun refused")
        };
        let TunnResult::WriteToNetwork(ka) = ta.decapsulate(None, resp, &mut buf) else {
            panic!()
        };
        black_box(ka);
    });
    println!(
        "handshakes:          ours {h_ours:8.0} /s                  boringtun {h_theirs:8.0} /s                  ratio {:.2}x",
        h_ours / h_theirs
    );
}
