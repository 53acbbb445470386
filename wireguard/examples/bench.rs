//! Throughput and handshake rate, ours beside boringtun, in one process on one
//! core. Prints figures and ratios; asserts nothing about speed.
//!
//! ```text
//! cargo build --release -p wireguard --example bench
//! target/release/examples/bench [ROUNDS [ROW]]
//! ```
//!
//! The process pins itself to the first CPU it may run on (`taskset -c N`
//! chooses which), so both sides share one core and its caches.
//!
//! Method: each row runs ROUNDS (default 31) rounds after one warm-up round.
//! A round times ours and boringtun for SLICE each, alternating which goes
//! first. Rates are iterations per second of this thread's CPU time
//! (CLOCK_THREAD_CPUTIME_ID), so time the scheduler gives to other processes
//! on a shared machine does not count against either side. The table gives
//! the median rate of each side, the median of the per-round ratios, and the
//! ratio of the best rounds. Both sides do the same work per iteration:
//! encapsulate one packet on one tunnel and decapsulate it on its peer (MB/s
//! counts the packet once), or one full handshake (initiation, response,
//! first transport message).
//!
//! Each row is measured twice: with the hosted crypto (ring's ChaCha20-
//! Poly1305; X25519 through curve25519-dalek's AVX2 Edwards route where the
//! CPU has AVX2), then, on the indented `image:` line, with the crypto
//! configuration of the bare-metal images (`wg_aead`, whose ChaCha20 route
//! is chosen by CPUID as in the images and named on the line; X25519 by the
//! Montgomery ladder, as the soft-float image target builds it) — the same
//! source and backends, built for the host (`crypto::set_image_crypto`).
//!
//! ROW (`1420`, `64` or `handshakes`) runs one row only (both lines), e.g.
//! under a profiler.

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
const SLICE: Duration = Duration::from_millis(100);

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

/// CPU time this thread has used.
fn thread_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Runs `f` for SLICE of wall time; returns iterations per second of CPU time.
fn slice(f: &mut dyn FnMut()) -> f64 {
    let start = Instant::now();
    let cpu = thread_cpu_time();
    let mut n = 0u64;
    while start.elapsed() < SLICE {
        for _ in 0..16 {
            f();
        }
        n += 16;
    }
    n as f64 / (thread_cpu_time() - cpu).as_secs_f64()
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

/// What [`compare`] measured.
struct Figures {
    ours: f64,
    theirs: f64,
    ratio: f64,
    best_ratio: f64,
}

/// Medians of ours/s and theirs/s, the median per-round ratio and the ratio of
/// the best rounds, over `rounds` interleaved rounds.
fn compare(rounds: usize, ours: &mut dyn FnMut(), theirs: &mut dyn FnMut()) -> Figures {
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
    let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    Figures {
        best_ratio: best(&o) / best(&t),
        ours: median(&mut o),
        theirs: median(&mut t),
        ratio: median(&mut r),
    }
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

/// Pins this thread to the first CPU it may run on; returns that CPU.
fn pin() -> Option<usize> {
    use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};
    let allowed = sched_getaffinity(None).ok()?;
    let cpu = (0..CpuSet::MAX_CPU).find(|&c| allowed.is_set(c))?;
    let mut one = CpuSet::new();
    one.set(cpu);
    sched_setaffinity(None, &one).ok()?;
    Some(cpu)
}

/// The CPU model and its SIMD extensions, for the header.
fn cpu_model() -> String {
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
    format!("{model} ({})", simd.join(" "))
}

fn row(name: &str, unit: &str, scale: f64, f: Figures) {
    println!(
        "{name:<18} {:>10.1} {unit:<4} {:>10.1} {unit:<4} {:>7.2}x {:>7.2}x",
        f.ours * scale,
        f.theirs * scale,
        f.ratio,
        f.best_ratio,
    );
}

/// One packet-size row: encapsulate on one tunnel, decapsulate on its peer.
fn packets(rounds: usize, len: usize, name: &str, rng: &mut XorShift) {
    let p = ip_packet(len);
    let (mut a, mut b, now) = ours_pair(rng);
    let (mut ta, mut tb) = theirs_pair();
    let mut buf = vec![0u8; 2048];
    let mut buf2 = vec![0u8; 2048];
    // Both sides deliver the packet intact before anything is timed.
    let Action::WriteToNetwork(d) = a.encapsulate(now, rng, &p, &mut buf) else {
        panic!()
    };
    let Action::WriteToTunnel(q, _) = b.decapsulate(now, rng, None, d, &mut buf2) else {
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
        let Action::WriteToNetwork(d) = a.encapsulate(now, rng, &p, &mut buf) else {
            panic!()
        };
        let Action::WriteToTunnel(q, _) = b.decapsulate(now, rng, None, d, &mut buf2) else {
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
    row(name, "MB/s", len as f64 / 1e6, m);
}

/// The handshake row: a full handshake per iteration.
fn handshakes(rounds: usize, name: &str, rng: &mut XorShift) {
    // A full handshake per iteration: initiation, response, confirmation.
    let mut a = ours(A, B, 1);
    let mut b = ours(B, A, 2);
    let mut now = Duration::from_secs(1);
    let (mut buf, mut buf2) = (vec![0u8; 2048], vec![0u8; 2048]);
    let mut run_ours = || {
        now += Duration::from_millis(25); // beyond the responder's flood interval
        let Action::WriteToNetwork(init) = a.force_handshake(now, rng, &mut buf) else {
            panic!()
        };
        let Action::WriteToNetwork(resp) = b.decapsulate(now, rng, None, init, &mut buf2) else {
            panic!()
        };
        let Action::WriteToNetwork(ka) = a.decapsulate(now, rng, None, resp, &mut buf) else {
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
    row(name, "/s", 1.0, m);
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("ROUNDS must be a number"))
        .unwrap_or(31);
    let only = std::env::args().nth(2);
    let wanted = |name: &str| only.as_deref().is_none_or(|o| o == name);
    match pin() {
        Some(c) => println!("cpu: {}; pinned to CPU {c}", cpu_model()),
        None => println!("cpu: {}; warning: could not pin to one CPU", cpu_model()),
    }
    println!(
        "{rounds} interleaved rounds of {} ms per side after a warm-up; rates per second of thread CPU time",
        SLICE.as_millis()
    );
    println!(
        "{:<18} {:>15} {:>15} {:>8} {:>8}",
        "(medians)", "ours", "boringtun", "ratio", "best"
    );
    let mut rng = XorShift(42);
    // Each row twice: the hosted configuration (ring's AEAD, X25519 by the
    // AVX2 Edwards route where the CPU has AVX2), then the bare-metal
    // images' (wg_aead's CPUID-chosen ChaCha20 route, X25519 by the ladder).
    let image = format!("image: {}", {
        wireguard::crypto::set_image_crypto(true);
        let b = wireguard::crypto::aead_backend();
        wireguard::crypto::set_image_crypto(false);
        b
    });
    for len in [1420usize, 64] {
        if !wanted(&len.to_string()) {
            continue;
        }
        packets(rounds, len, &format!("{len}-byte packets"), &mut rng);
        wireguard::crypto::set_image_crypto(true);
        packets(rounds, len, &format!("  {image}"), &mut rng);
        wireguard::crypto::set_image_crypto(false);
    }
    if !wanted("handshakes") {
        return;
    }
    handshakes(rounds, "handshakes", &mut rng);
    wireguard::crypto::set_image_crypto(true);
    handshakes(rounds, &format!("  {image}"), &mut rng);
    wireguard::crypto::set_image_crypto(false);
}
