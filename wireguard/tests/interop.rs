//! Interoperability with boringtun's `Tunn`, in one process: our tunnel as
//! initiator and as responder, data both ways, lost and reordered handshake
//! and data packets, replays, rekeying after simulated time, and cookies.
//!
//! boringtun reads the real clock; ours is driven by a simulated one, so the
//! time-based cases move only our clock (boringtun never sees old keys expire
//! within a test run).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use wireguard::tunnel::Error;
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

const OUR_KEY: [u8; 32] = [0x11; 32];
const THEIR_KEY: [u8; 32] = [0x22; 32];
const PSK: [u8; 32] = [0x33; 32];

fn their_addr() -> SocketAddr {
    "198.51.100.2:51820".parse().unwrap()
}

fn our_addr() -> SocketAddr {
    "203.0.113.1:40000".parse().unwrap()
}

struct Pair {
    ours: Tunnel,
    theirs: Tunn,
    now: Duration,
    rng: XorShift,
}

fn pair_with(load_limit: u32, their_limiter: Option<u64>) -> Pair {
    let their_secret = StaticSecret::from(THEIR_KEY);
    let their_public = PublicKey::from(&their_secret);
    let our_public = PublicKey::from(&StaticSecret::from(OUR_KEY));
    let limiter = their_limiter.map(|l| Arc::new(RateLimiter::new(&their_public, l)));
    let theirs = Tunn::new(their_secret, our_public, Some(PSK), None, 7, limiter).unwrap();
    let ours = Tunnel::new(&TunnelConfig {
        private_key: OUR_KEY,
        peer_public_key: their_public.to_bytes(),
        preshared_key: Some(PSK),
        persistent_keepalive: None,
        index: 3,
        endpoint: Some(their_addr()),
        wall_clock_at_zero: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap(),
        handshake_load_limit: load_limit,
    })
    .unwrap();
    Pair {
        ours,
        theirs,
        now: Duration::from_secs(1),
        rng: XorShift(0x9e3779b97f4a7c15),
    }
}

fn pair() -> Pair {
    pair_with(100, None)
}

/// An IPv4 packet from `src` with `len` bytes of payload (checksum not needed by either side).
fn ipv4(src: [u8; 4], payload_len: usize, fill: u8) -> Vec<u8> {
    let total = 20 + payload_len;
    let mut p = vec![fill; total];
    p[0] = 0x45;
    p[1] = 0;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&[10, 0, 0, 9]);
    p
}

fn net(a: Action<'_>) -> Vec<u8> {
    match a {
        Action::WriteToNetwork(b) => b.to_vec(),
        other => panic!("expected WriteToNetwork, got {other:?}"),
    }
}

fn bt_net(r: TunnResult<'_>) -> Vec<u8> {
    match r {
        TunnResult::WriteToNetwork(b) => b.to_vec(),
        other => panic!("expected boringtun WriteToNetwork, got {other:?}"),
    }
}

impl Pair {
    fn ours_encap(&mut self, packet: &[u8]) -> Action<'static> {
        let out = Box::leak(vec![0u8; 2048].into_boxed_slice());
        self.ours.encapsulate(self.now, &mut self.rng, packet, out)
    }

    fn ours_decap(&mut self, datagram: &[u8]) -> Action<'static> {
        let out = Box::leak(vec![0u8; 2048].into_boxed_slice());
        self.ours
            .decapsulate(self.now, &mut self.rng, Some(their_addr()), datagram, out)
    }

    fn ours_timers(&mut self) -> Action<'static> {
        let out = Box::leak(vec![0u8; 2048].into_boxed_slice());
        self.ours.update_timers(self.now, &mut self.rng, out)
    }

    fn bt_decap(&mut self, datagram: &[u8]) -> TunnResult<'static> {
        let out = Box::leak(vec![0u8; 2048].into_boxed_slice());
        self.theirs
            .decapsulate(Some(our_addr().ip()), datagram, out)
    }

    fn bt_encap(&mut self, packet: &[u8]) -> TunnResult<'static> {
        let out = Box::leak(vec![0u8; 2048].into_boxed_slice());
        self.theirs.encapsulate(packet, out)
    }

    /// Our side initiates (with `first` queued); returns after both sides have a session.
    fn establish_ours_initiating(&mut self, first: &[u8]) {
        let init = net(self.ours_encap(first));
        assert_eq!(init.len(), 148);
        let resp = bt_net(self.bt_decap(&init));
        assert_eq!(resp.len(), 92);
        let keepalive = net(self.ours_decap(&resp));
        assert_eq!(keepalive.len(), 32);
        assert!(matches!(self.bt_decap(&keepalive), TunnResult::Done));
        let data = net(self.ours_decap(&[]));
        self.expect_bt_receives(&data, first);
        assert!(matches!(self.ours_decap(&[]), Action::Done));
    }

    fn expect_bt_receives(&mut self, datagram: &[u8], packet: &[u8]) {
        match self.bt_decap(datagram) {
            TunnResult::WriteToTunnelV4(p, src) => {
                assert_eq!(&p[..], packet);
                assert_eq!(
                    src,
                    Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15])
                );
            }
            other => panic!("boringtun did not deliver: {other:?}"),
        }
    }

    fn expect_ours_receives(&mut self, datagram: &[u8], packet: &[u8]) {
        match self.ours_decap(datagram) {
            Action::WriteToTunnel(p, src) => {
                assert_eq!(&p[..], packet);
                assert_eq!(
                    src,
                    IpAddr::V4(Ipv4Addr::new(
                        packet[12], packet[13], packet[14], packet[15]
                    ))
                );
            }
            other => panic!("we did not deliver: {other:?}"),
        }
    }

    fn data_both_ways(&mut self, round: u8) {
        for len in [0usize, 1, 15, 16, 17, 100, 1400] {
            let p = ipv4([10, 0, 0, 1], len, round);
            let d = net(self.ours_encap(&p));
            self.expect_bt_receives(&d, &p);
            let q = ipv4([10, 0, 0, 2], len, round.wrapping_add(1));
            let d = bt_net(self.bt_encap(&q));
            self.expect_ours_receives(&d, &q);
        }
    }
}

#[test]
fn ours_as_initiator_data_both_ways() {
    let mut p = pair();
    p.establish_ours_initiating(&ipv4([10, 0, 0, 1], 50, 0xaa));
    p.data_both_ways(1);
    assert_eq!(p.ours.stats().handshakes, 1);
}

#[test]
fn ours_as_responder_data_both_ways() {
    let mut p = pair();
    let first = ipv4([10, 0, 0, 2], 60, 0x55);
    let init = bt_net(p.bt_encap(&first));
    assert_eq!(init.len(), 148);
    let resp = net(p.ours_decap(&init));
    assert_eq!(resp.len(), 92);
    // Before confirmation we may not send with the new keys: our packet is queued.
    let early = ipv4([10, 0, 0, 1], 10, 1);
    assert!(matches!(p.ours_encap(&early), Action::Done));
    let keepalive = bt_net(p.bt_decap(&resp));
    let queued = bt_net(p.bt_decap(&[]));
    assert!(matches!(p.ours_decap(&keepalive), Action::Done));
    p.expect_ours_receives(&queued, &first);
    let d = net(p.ours_decap(&[]));
    p.expect_bt_receives(&d, &early);
    p.data_both_ways(2);
    assert_eq!(p.ours.endpoint(), Some(their_addr()));
}

#[test]
fn lost_initiation_is_retransmitted_after_rekey_timeout() {
    let mut p = pair();
    let first = ipv4([10, 0, 0, 1], 20, 3);
    let _lost = net(p.ours_encap(&first));
    // Nothing before REKEY_TIMEOUT.
    p.now += Duration::from_secs(4);
    assert!(matches!(p.ours_timers(), Action::Done));
    // Not more than REKEY_TIMEOUT plus the 333 ms jitter.
    p.now += Duration::from_millis(1334);
    let init = net(p.ours_timers());
    let resp = bt_net(p.bt_decap(&init));
    let keepalive = net(p.ours_decap(&resp));
    assert!(matches!(p.bt_decap(&keepalive), TunnResult::Done));
    let data = net(p.ours_decap(&[]));
    p.expect_bt_receives(&data, &first);
}

#[test]
fn stale_response_to_superseded_initiation_is_rejected() {
    let mut p = pair();
    let first = ipv4([10, 0, 0, 1], 20, 3);
    let init1 = net(p.ours_encap(&first));
    p.now += Duration::from_secs(6);
    let init2 = net(p.ours_timers());
    let resp1 = bt_net(p.bt_decap(&init1));
    // boringtun's own flood limit may refuse a second initiation at once; wait it out.
    std::thread::sleep(Duration::from_millis(30));
    let resp2 = bt_net(p.bt_decap(&init2));
    // Reordered: the newer response first works, the old one is refused after.
    let keepalive = net(p.ours_decap(&resp2));
    assert!(matches!(
        p.ours_decap(&resp1),
        Action::Err(Error::Handshake(_))
    ));
    assert!(matches!(p.bt_decap(&keepalive), TunnResult::Done));
    let data = net(p.ours_decap(&[]));
    p.expect_bt_receives(&data, &first);
}

#[test]
fn lost_response_then_boringtun_retries() {
    let mut p = pair();
    let first = ipv4([10, 0, 0, 2], 20, 4);
    let init1 = bt_net(p.bt_encap(&first));
    let _lost = net(p.ours_decap(&init1));
    std::thread::sleep(Duration::from_millis(30));
    p.now += Duration::from_millis(30);
    let init2 = bt_net(p.theirs.format_handshake_initiation(&mut [0u8; 256], true));
    let resp = net(p.ours_decap(&init2));
    let keepalive = bt_net(p.bt_decap(&resp));
    assert!(matches!(p.ours_decap(&keepalive), Action::Done));
    let queued = bt_net(p.bt_decap(&[]));
    p.expect_ours_receives(&queued, &first);
    // A replay of the first initiation is refused (old timestamp).
    assert!(matches!(
        p.ours_decap(&init1),
        Action::Err(Error::Handshake(_))
    ));
}

#[test]
fn reordered_data_accepted_once_and_replays_rejected() {
    let mut p = pair();
    p.establish_ours_initiating(&ipv4([10, 0, 0, 1], 10, 0));
    let packets: Vec<Vec<u8>> = (0..64).map(|i| ipv4([10, 0, 0, 2], 40, i)).collect();
    let datagrams: Vec<Vec<u8>> = packets.iter().map(|q| bt_net(p.bt_encap(q))).collect();
    // Deliver in a scrambled order: reversed odd ones, then even ones.
    let mut order: Vec<usize> = (0..64).filter(|i| i % 2 == 1).rev().collect();
    order.extend((0..64).filter(|i| i % 2 == 0));
    for &i in &order {
        p.expect_ours_receives(&datagrams[i], &packets[i]);
    }
    for d in &datagrams {
        assert!(matches!(
            p.ours_decap(d),
            Action::Err(Error::Session(wireguard::session::SessionError::Replay))
        ));
    }
    // And boringtun rejects replays of ours.
    let q = ipv4([10, 0, 0, 1], 40, 9);
    let d = net(p.ours_encap(&q));
    p.expect_bt_receives(&d, &q);
    assert!(matches!(p.bt_decap(&d), TunnResult::Err(_)));
    // A tampered packet is rejected and does not burn its counter.
    let d = net(p.ours_encap(&q));
    let mut bad = d.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(matches!(p.bt_decap(&bad), TunnResult::Err(_)));
    p.expect_bt_receives(&d, &q);
}

#[test]
fn rekey_after_simulated_rekey_after_time() {
    let mut p = pair();
    p.establish_ours_initiating(&ipv4([10, 0, 0, 1], 10, 0));
    p.data_both_ways(1);
    // A packet boringtun sends under the old keys, delivered after the rekey.
    let late = ipv4([10, 0, 0, 2], 30, 0x77);
    let late_d = bt_net(p.bt_encap(&late));
    p.now += Duration::from_secs(121);
    // Sending still works with the old keys but asks for a rekey.
    let q = ipv4([10, 0, 0, 1], 30, 1);
    let d = net(p.ours_encap(&q));
    p.expect_bt_receives(&d, &q);
    let init = net(p.ours_timers());
    assert_eq!(init.len(), 148);
    let resp = bt_net(p.bt_decap(&init));
    let keepalive = net(p.ours_decap(&resp));
    assert!(matches!(p.bt_decap(&keepalive), TunnResult::Done));
    assert_eq!(p.ours.stats().handshakes, 2);
    // The previous keypair still opens in-flight packets.
    p.expect_ours_receives(&late_d, &late);
    p.data_both_ways(2);
}

#[test]
fn keys_rejected_after_reject_after_time_and_new_handshake_started() {
    let mut p = pair();
    p.establish_ours_initiating(&ipv4([10, 0, 0, 1], 10, 0));
    let old = bt_net(p.bt_encap(&ipv4([10, 0, 0, 2], 10, 0)));
    p.now += Duration::from_secs(181);
    assert!(!p.ours.has_session(p.now));
    assert!(matches!(
        p.ours_decap(&old),
        Action::Err(Error::Session(wireguard::session::SessionError::Expired))
    ));
    // Sending queues the packet and starts a handshake.
    let q = ipv4([10, 0, 0, 1], 10, 5);
    let init = net(p.ours_encap(&q));
    assert_eq!(init.len(), 148);
    let resp = bt_net(p.bt_decap(&init));
    let keepalive = net(p.ours_decap(&resp));
    assert!(matches!(p.bt_decap(&keepalive), TunnResult::Done));
    let d = net(p.ours_decap(&[]));
    p.expect_bt_receives(&d, &q);
}

#[test]
fn cookie_from_boringtun_under_load() {
    // boringtun with a limit of 0 handshakes is always "under load".
    let mut p = pair_with(100, Some(0));
    let first = ipv4([10, 0, 0, 1], 10, 0);
    let init = net(p.ours_encap(&first));
    let cookie = bt_net(p.bt_decap(&init));
    assert_eq!(cookie.len(), 64);
    assert!(matches!(p.ours_decap(&cookie), Action::Done));
    // The retransmission carries a valid mac2 and is answered.
    p.now += Duration::from_millis(5334);
    let init = net(p.ours_timers());
    let resp = bt_net(p.bt_decap(&init));
    assert_eq!(resp.len(), 92);
    let keepalive = net(p.ours_decap(&resp));
    assert!(matches!(p.bt_decap(&keepalive), TunnResult::Done));
    let d = net(p.ours_decap(&[]));
    p.expect_bt_receives(&d, &first);
}

#[test]
fn cookie_to_boringtun_when_we_are_under_load() {
    let mut p = pair_with(0, None);
    let first = ipv4([10, 0, 0, 2], 10, 0);
    let init = bt_net(p.bt_encap(&first));
    let cookie = net(p.ours_decap(&init));
    assert_eq!(cookie.len(), 64);
    assert_eq!(p.ours.stats().cookie_replies_sent, 1);
    assert!(matches!(p.bt_decap(&cookie), TunnResult::Done));
    std::thread::sleep(Duration::from_millis(30));
    let init = bt_net(p.theirs.format_handshake_initiation(&mut [0u8; 256], true));
    let resp = net(p.ours_decap(&init));
    assert_eq!(resp.len(), 92);
    let keepalive = bt_net(p.bt_decap(&resp));
    assert!(matches!(p.ours_decap(&keepalive), Action::Done));
    let queued = bt_net(p.bt_decap(&[]));
    p.expect_ours_receives(&queued, &first);
}

#[test]
fn garbage_and_truncations_never_panic() {
    let mut p = pair();
    p.establish_ours_initiating(&ipv4([10, 0, 0, 1], 10, 0));
    let d = bt_net(p.bt_encap(&ipv4([10, 0, 0, 2], 100, 1)));
    for cut in 0..d.len() {
        assert!(matches!(
            p.ours_decap(&d[..cut]),
            Action::Err(_) | Action::Done
        ));
    }
    let mut x = 1u32;
    for len in [1usize, 4, 31, 32, 64, 92, 148, 200] {
        for t in 0..8u8 {
            let mut g = vec![0u8; len];
            for b in g.iter_mut() {
                x = x.wrapping_mul(1103515245).wrapping_add(12345);
                *b = (x >> 16) as u8;
            }
            g[0] = t;
            if len >= 4 {
                g[1..4].fill(0);
            }
            assert!(matches!(p.ours_decap(&g), Action::Err(_)));
        }
    }
    // The session still works.
    p.data_both_ways(3);
}

#[test]
fn lossy_reordering_link_soak() {
    // 30% loss and random reordering of everything, handshakes included, for
    // several simulated rekey periods. Our timers must recover every time, and
    // nothing may be delivered twice or corrupted.
    let mut p = pair();
    let mut x = XorShift(0xfeed);
    let mut coin = move |percent: u64| {
        let mut b = [0u8; 8];
        x.fill(&mut b);
        u64::from_le_bytes(b) % 100 < percent
    };
    let mut to_them: Vec<Vec<u8>> = Vec::new();
    let mut to_us: Vec<Vec<u8>> = Vec::new();
    let mut sent_by_us = std::collections::HashSet::new();
    let mut sent_by_them = std::collections::HashSet::new();
    let mut got_by_them = std::collections::HashSet::new();
    let mut got_by_us = std::collections::HashSet::new();
    let mut seq = 0u32;
    for _step in 0..4000 {
        p.now += Duration::from_millis(100);
        seq += 1;
        // Our side sends a numbered packet; theirs answers with one.
        let mut pkt = ipv4([10, 0, 0, 1], 8, 0);
        pkt[20..24].copy_from_slice(&seq.to_be_bytes());
        sent_by_us.insert(seq);
        if let Action::WriteToNetwork(d) = p.ours_encap(&pkt) {
            to_them.push(d.to_vec());
        }
        if let Action::WriteToNetwork(d) = p.ours_timers() {
            to_them.push(d.to_vec());
        }
        let mut q = ipv4([10, 0, 0, 2], 8, 0);
        q[20..24].copy_from_slice(&seq.to_be_bytes());
        if let TunnResult::WriteToNetwork(d) = p.bt_encap(&q) {
            let d = d.to_vec();
            if d[0] == 4 {
                sent_by_them.insert(seq);
            }
            to_us.push(d);
        }
        // Deliver a random subset in a random order; drop 30%.
        for ours in [false, true] {
            let mut batch = std::mem::take(if ours { &mut to_us } else { &mut to_them });
            if coin(50) {
                batch.reverse();
            }
            for d in batch {
                if coin(30) {
                    continue;
                }
                if ours {
                    let mut input = d;
                    loop {
                        match p.ours_decap(&input) {
                            Action::WriteToNetwork(r) => to_them.push(r.to_vec()),
                            Action::WriteToTunnel(b, _) => {
                                let n = u32::from_be_bytes(b[20..24].try_into().unwrap());
                                assert!(got_by_us.insert(n), "delivered twice: {n}");
                                break;
                            }
                            _ => break,
                        }
                        input = Vec::new();
                    }
                } else {
                    let mut input = d;
                    loop {
                        match p.bt_decap(&input) {
                            TunnResult::WriteToNetwork(r) => to_us.push(r.to_vec()),
                            TunnResult::WriteToTunnelV4(b, _) => {
                                let n = u32::from_be_bytes(b[20..24].try_into().unwrap());
                                assert!(got_by_them.insert(n), "delivered twice: {n}");
                                break;
                            }
                            _ => break,
                        }
                        input = Vec::new();
                    }
                }
            }
        }
    }
    eprintln!(
        "soak: {:?}, delivered to them {}, to us {}",
        p.ours.stats(),
        got_by_them.len(),
        got_by_us.len()
    );
    // 4000 steps of 100 ms: 400 simulated seconds, over three REKEY_AFTER_TIMEs.
    assert!(p.ours.stats().handshakes >= 3, "{:?}", p.ours.stats());
    assert!(got_by_them.len() > 1500, "{}", got_by_them.len());
    assert!(got_by_us.len() > 1500, "{}", got_by_us.len());
    assert!(got_by_them.is_subset(&sent_by_us));
    assert!(got_by_us.is_subset(&sent_by_them));
}
