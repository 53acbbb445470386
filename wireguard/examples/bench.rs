//! Throughput and handshake rate, ours beside boringtun, in one process on one
//! core. Prints figures and ratios; asserts nothing about speed.
//!
//! Run pinned to one CPU so both sides share a core and its caches:
//!
//! ```text
//! cargo build --release -p wireguard --example bench
//! taskset -c 0 target/release/examples/bench [ROUNDS [ROW]]
//! ```
//!
//! ROW (`1420`, `64` or `handshakes`) runs one row only, e.g. under a profiler.
//!
//! Method: each row runs ROUNDS (default 15) rounds after one warm-up round.
//! A round times ours and boringtun for SLICE each, alternating which goes
//! first, so load from other processes falls on both sides alike. The table
//! gives the median rate of each side and the median of the per-round ratios.
//! Both sides do the same work per iteration: encapsulate one packet on one
//! tunnel and decapsulate it on its peer (MB/s counts the packet once), or
//! one full handshake (initiation, response, first transport message).

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
const SLICE: Duration = Duration::from_millis(200);

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
        PublicKey::from(public(peer)),
        None,
        None,
        index,
        Some(limiter),
    )
    .unwrap()
}

fn ip_packet(len: usize) -> Vec<u8> {
    let mut p = vec![0xab; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[12..16].copy_from_slice(&[10, 0, 0, 1]);
    p
}

/// Runs `f` for SLICE; returns iterations per second.
fn slice(f: &mut dyn FnMut()) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < SLICE {
        for _ in 0..16 {
            f();
        }
        n += 16;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Medians of (ours/s, theirs/s, per-round ratio) over `rounds` interleaved rounds.
fn compare(rounds: usize, ours: &mut dyn FnMut(), theirs: &mut dyn FnMut()) -> (f64, f64, f64) {
    // Warm-up: caches, branch predictors, CPU frequency, lazy CPUID detection.
    slice(ours);
    slice(theirs);
    let (mut o, mut t, mut r) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..rounds {
        let (x, y) = if i % 2 == 0 {
            let x = slice(ours);
            (x, slice(theirs))
        } else {
            let y = slice(theirs);
            (slice(ours), y)
        };
        o.push(x);
        t.push(y);
        r.push(x / y);
    }
    (median(&mut o), median(&mut t), median(&mut r))
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

/// What the kernel lets this process run on, and the CPU, for the header.
fn environment() -> (String, String) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cpus = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "?".into());
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|s| s.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "?".into());
    let simd: Vec<&str> = ["ssse3", "avx2", "avx512f"]
        .into_iter()
        .filter(|f| info.split_whitespace().any(|w| w == *f))
        .collect();
    (cpus, format!("{model} ({})", simd.join(" ")))
}

fn row(name: &str, unit: &str, scale: f64, (o, t, r): (f64, f64, f64)) {
    println!(
        "{name:<22} {:>10.1} {unit:<5} {:>10.1} {unit:<5} {r:>6.2}x",
        o * scale,
        t * scale
    );
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("ROUNDS must be a number"))
        .unwrap_or(15);
    let only = std::env::args().nth(2);
    let wanted = |name: &str| only.as_deref().is_none_or(|o| o == name);
    let (cpus, cpu) = environment();
    println!("cpu: {cpu}; allowed CPUs: {cpus}");
    if cpus.contains([',', '-']) {
        println!("warning: not pinned to one CPU; run under `taskset -c 0` for one shared core");
    }
    println!(
        "{rounds} interleaved rounds of {} ms per side after a warm-up; medians",
        SLICE.as_millis()
    );
    println!(
        "{:<22} {:>16} {:>16} {:>7}",
        "", "ours", "boringtun", "ratio"
    );
    let mut rng = XorShift(42);
    for len in [1420usize, 64] {
        if !wanted(&len.to_string()) {
            continue;
        }
        let p = ip_packet(len);
        let (mut a, mut b, now) = ours_pair(&mut rng);
        let (mut ta, mut tb) = theirs_pair();
        let mut buf = vec![0u8; 2048];
        let mut buf2 = vec![0u8; 2048];
        // Both sides deliver the packet intact before anything is timed.
        let Action::WriteToNetwork(d) = a.encapsulate(now, &mut rng, &p, &mut buf) else {
            panic!()
        };
        let Action::WriteToTunnel(q, _) = b.decapsulate(now, &mut rng, None, d, &mut buf2) else {
            panic!()
        };
        assert_eq!(q, &p[..]);
        let TunnResult::WriteToNetwork(d) = ta.encapsulate(&p, &mut buf) else {
            panic!()
        };
        let TunnResult::WriteToTunnelV4(q, _) = tb.decapsulate(None, d, &mut buf2) else {
            panic!()
        };
        assert_eq!(q, &p[..]);
        let mut run_ours = || {
            let Action::WriteToNetwork(d) = a.encapsulate(now, &mut rng, &p, &mut buf) else {
                panic!()
            };
            let Action::WriteToTunnel(q, _) = b.decapsulate(now, &mut rng, None, d, &mut buf2)
            else {
                panic!()
            };
            black_box(q);
        };
        let mut buf3 = vec![0u8; 2048];
        let mut buf4 = vec![0u8; 2048];
        let mut run_theirs = || {
            let TunnResult::WriteToNetwork(d) = ta.encapsulate(&p, &mut buf3) else {
                panic!()
            };
            let TunnResult::WriteToTunnelV4(q, _) = tb.decapsulate(None, d, &mut buf4) else {
                panic!()
            };
            black_box(q);
        };
        let m = compare(rounds, &mut run_ours, &mut run_theirs);
        row(&format!("{len}-byte packets"), "MB/s", len as f64 / 1e6, m);
    }
    if !wanted("handshakes") {
        return;
    }
    // A full handshake per iteration: initiation, response, confirmation.
    let mut a = ours(A, B, 1);
    let mut b = ours(B, A, 2);
    let mut now = Duration::from_secs(1);
    let (mut buf, mut buf2) = (vec![0u8; 2048], vec![0u8; 2048]);
    let mut run_ours = || {
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
    };
    let mut ta = theirs(A, B, 1);
    let mut tb = theirs(B, A, 2);
    let (mut buf3, mut buf4) = (vec![0u8; 2048], vec![0u8; 2048]);
    let mut run_theirs = || {
        let TunnResult::WriteToNetwork(init) = ta.format_handshake_initiation(&mut buf3, true)
        else {
            panic!()
        };
        let TunnResult::WriteToNetwork(resp) = tb.decapsulate(None, init, &mut buf4) else {
            panic!("boringtun refused")
        };
        let TunnResult::WriteToNetwork(ka) = ta.decapsulate(None, resp, &mut buf3) else {
            panic!()
        };
        black_box(ka);
    };
    let m = compare(rounds, &mut run_ours, &mut run_theirs);
    row("handshakes", "/s", 1.0, m);
}
