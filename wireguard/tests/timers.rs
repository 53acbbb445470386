//! Every timer of the paper, driven by a simulated clock between two of our
//! own tunnels (boringtun reads the real clock, so it cannot be used here).

use std::net::SocketAddr;
use std::time::Duration;

use wireguard::timers::*;
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

fn public(secret: [u8; 32]) -> [u8; 32] {
    x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(secret)).to_bytes()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn tunnel(me: [u8; 32], peer: [u8; 32], keepalive: Option<u16>) -> Tunnel {
    Tunnel::new(&TunnelConfig {
        private_key: me,
        peer_public_key: public(peer),
        preshared_key: None,
        persistent_keepalive: keepalive,
        index: u32::from(me[0]),
        endpoint: None,
        wall_clock_at_zero: Duration::from_secs(1_700_000_000),
        handshake_load_limit: 100,
    })
    .unwrap()
}

const A: [u8; 32] = [0xa1; 32];
const B: [u8; 32] = [0xb2; 32];

fn ip_packet(n: u8) -> Vec<u8> {
    let mut p = vec![n; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p
}

struct World {
    a: Tunnel,
    b: Tunnel,
    now: Duration,
    rng: XorShift,
    buf: Vec<u8>,
}

enum Out {
    Done,
    Net(Vec<u8>),
    Tun(Vec<u8>),
    Err(Error),
}

fn conv(a: Action<'_>) -> Out {
    match a {
        Action::Done => Out::Done,
        Action::WriteToNetwork(b) => Out::Net(b.to_vec()),
        Action::WriteToTunnel(b, _) => Out::Tun(b.to_vec()),
        Action::Err(e) => Out::Err(e),
    }
}

impl World {
    fn new(a_keepalive: Option<u16>) -> Self {
        Self {
            a: tunnel(A, B, a_keepalive),
            b: tunnel(B, A, None),
            now: Duration::from_secs(10),
            rng: XorShift(77),
            buf: vec![0; 2048],
        }
    }
    fn a_send(&mut self, p: &[u8]) -> Out {
        conv(
            self.a
                .encapsulate(self.now, &mut self.rng, p, &mut self.buf),
        )
    }
    fn b_send(&mut self, p: &[u8]) -> Out {
        conv(
            self.b
                .encapsulate(self.now, &mut self.rng, p, &mut self.buf),
        )
    }
    fn a_recv(&mut self, d: &[u8]) -> Out {
        conv(self.a.decapsulate(
            self.now,
            &mut self.rng,
            Some(addr("192.0.2.2:2")),
            d,
            &mut self.buf,
        ))
    }
    fn b_recv_from(&mut self, from: &str, d: &[u8]) -> Out {
        conv(
            self.b
                .decapsulate(self.now, &mut self.rng, Some(addr(from)), d, &mut self.buf),
        )
    }
    fn b_recv(&mut self, d: &[u8]) -> Out {
        self.b_recv_from("192.0.2.1:1", d)
    }
    fn a_timers(&mut self) -> Out {
        conv(self.a.update_timers(self.now, &mut self.rng, &mut self.buf))
    }
    fn b_timers(&mut self) -> Out {
        conv(self.b.update_timers(self.now, &mut self.rng, &mut self.buf))
    }

    /// A initiates; after this both have a confirmed session.
    fn handshake(&mut self) {
        let Out::Net(init) = self.a_send(&ip_packet(1)) else {
            panic!("no initiation")
        };
        let Out::Net(resp) = self.b_recv(&init) else {
            panic!("no response")
        };
        let Out::Net(ka) = self.a_recv(&resp) else {
            panic!("no keepalive")
        };
        assert!(matches!(self.b_recv(&ka), Out::Done));
        let Out::Net(d) = self.a_recv(&[]) else {
            panic!("queued packet not sent")
        };
        assert!(matches!(self.b_recv(&d), Out::Tun(p) if p == ip_packet(1)));
    }
}

fn net_len(o: Out) -> usize {
    match o {
        Out::Net(b) => b.len(),
        Out::Done => 0,
        Out::Tun(_) => panic!("unexpected tunnel packet"),
        Out::Err(e) => panic!("unexpected error {e:?}"),
    }
}

#[test]
fn keepalive_after_keepalive_timeout_of_silence() {
    let mut w = World::new(None);
    w.handshake();
    // B received data at t0 and sent nothing back.
    let t0 = w.now;
    w.now = t0 + KEEPALIVE_TIMEOUT - Duration::from_millis(1);
    assert_eq!(net_len(w.b_timers()), 0);
    w.now = t0 + KEEPALIVE_TIMEOUT;
    assert_eq!(net_len(w.b_timers()), 32, "keepalive is header + tag");
    // Only once.
    assert_eq!(net_len(w.b_timers()), 0);
}

#[test]
fn sending_data_cancels_the_keepalive() {
    let mut w = World::new(None);
    w.handshake();
    w.now += Duration::from_secs(3);
    assert!(matches!(w.b_send(&ip_packet(2)), Out::Net(_)));
    w.now += KEEPALIVE_TIMEOUT;
    assert_eq!(net_len(w.b_timers()), 0);
}

#[test]
fn new_handshake_when_data_gets_no_reply() {
    let mut w = World::new(None);
    w.handshake();
    let t0 = w.now;
    let Out::Net(_lost) = w.a_send(&ip_packet(2)) else {
        panic!()
    };
    w.now = t0 + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT - Duration::from_millis(1);
    assert_eq!(net_len(w.a_timers()), 0);
    w.now = t0 + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT;
    assert_eq!(net_len(w.a_timers()), 148);
}

#[test]
fn any_reply_cancels_the_unanswered_data_timer() {
    let mut w = World::new(None);
    w.handshake();
    let t0 = w.now;
    let Out::Net(d) = w.a_send(&ip_packet(2)) else {
        panic!()
    };
    assert!(matches!(w.b_recv(&d), Out::Tun(_)));
    w.now = t0 + KEEPALIVE_TIMEOUT;
    let Out::Net(ka) = w.b_timers() else {
        panic!("keepalive")
    };
    assert!(matches!(w.a_recv(&ka), Out::Done));
    w.now = t0 + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + Duration::from_secs(1);
    assert_eq!(net_len(w.a_timers()), 0);
}

#[test]
fn retransmits_with_jitter_then_gives_up_after_rekey_attempt_time() {
    let mut w = World::new(None);
    let start = w.now;
    assert_eq!(net_len(w.a_send(&ip_packet(1))), 148);
    assert_eq!(
        net_len(w.a_send(&ip_packet(2))),
        0,
        "one initiation in flight"
    );
    assert_eq!(w.a.queued_packets(), 2);
    let mut sent_at = vec![start];
    let mut gave_up = None;
    while w.now < start + REKEY_ATTEMPT_TIME + Duration::from_secs(10) {
        w.now += Duration::from_millis(50);
        match w.a_timers() {
            Out::Net(b) => {
                assert_eq!(b.len(), 148);
                sent_at.push(w.now);
            }
            Out::Err(Error::HandshakeTimedOut) => {
                gave_up = Some(w.now);
                break;
            }
            Out::Done => {}
            _ => panic!(),
        }
    }
    for pair in sent_at.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= REKEY_TIMEOUT && gap <= REKEY_TIMEOUT + Duration::from_millis(400),
            "{gap:?}"
        );
    }
    // About 90 s / 5.17 s of attempts.
    assert!((16..=19).contains(&sent_at.len()), "{}", sent_at.len());
    let gave_up = gave_up.expect("never gave up");
    assert!(
        gave_up >= start + REKEY_ATTEMPT_TIME
            && gave_up < start + REKEY_ATTEMPT_TIME + REKEY_TIMEOUT
    );
    assert_eq!(w.a.queued_packets(), 0);
    assert_eq!(w.a.stats().dropped_packets, 2);
    // After giving up, it stays quiet.
    w.now += Duration::from_secs(30);
    assert_eq!(net_len(w.a_timers()), 0);
}

#[test]
fn keys_erased_after_three_reject_after_times() {
    let mut w = World::new(None);
    w.handshake();
    let t0 = w.now;
    let Out::Net(old) = w.b_send(&ip_packet(3)) else {
        panic!()
    };
    w.now = t0 + REJECT_AFTER_TIME * 3 - Duration::from_millis(1);
    let _ = w.a_timers();
    w.now = t0 + REJECT_AFTER_TIME * 3;
    assert_eq!(net_len(w.a_timers()), 0);
    assert!(!w.a.has_session(w.now));
    // The keypair is gone, not just expired.
    assert!(matches!(w.a_recv(&old), Out::Err(Error::UnknownIndex)));
}

#[test]
fn expired_keypairs_are_dropped_by_timers() {
    let mut w = World::new(None);
    w.handshake();
    let Out::Net(old) = w.b_send(&ip_packet(3)) else {
        panic!()
    };
    w.now += REJECT_AFTER_TIME;
    let _ = w.a_timers();
    assert!(matches!(w.a_recv(&old), Out::Err(Error::UnknownIndex)));
}

#[test]
fn persistent_keepalive() {
    let mut w = World::new(Some(25));
    // With no session it starts a handshake.
    assert_eq!(net_len(w.a_timers()), 148);
    w.a = tunnel(A, B, Some(25));
    w.handshake();
    // B answers, so A owes a (normal) keepalive after KEEPALIVE_TIMEOUT.
    let Out::Net(d) = w.b_send(&ip_packet(2)) else {
        panic!()
    };
    assert!(matches!(w.a_recv(&d), Out::Tun(_)));
    let t0 = w.now;
    w.now = t0 + KEEPALIVE_TIMEOUT;
    assert_eq!(net_len(w.a_timers()), 32);
    // Then one every 25 s of silence.
    w.now = t0 + KEEPALIVE_TIMEOUT + Duration::from_secs(24);
    assert_eq!(net_len(w.a_timers()), 0);
    w.now = t0 + KEEPALIVE_TIMEOUT + Duration::from_secs(25);
    assert_eq!(net_len(w.a_timers()), 32);
    w.now += Duration::from_secs(1);
    assert_eq!(net_len(w.a_timers()), 0);
    w.now += Duration::from_secs(24);
    assert_eq!(net_len(w.a_timers()), 32);
}

#[test]
fn only_the_initiator_rekeys_after_rekey_after_time() {
    let mut w = World::new(None);
    w.handshake();
    w.now += REKEY_AFTER_TIME;
    let Out::Net(d) = w.b_send(&ip_packet(4)) else {
        panic!()
    };
    assert!(matches!(w.a_recv(&d), Out::Tun(_)));
    // B (responder) does not start a handshake when sending on old keys.
    assert_eq!(net_len(w.b_timers()), 0);
    // A does.
    assert!(matches!(w.a_send(&ip_packet(5)), Out::Net(_)));
    assert_eq!(net_len(w.a_timers()), 148);
}

#[test]
fn initiator_rekeys_when_receiving_on_old_keys() {
    let mut w = World::new(None);
    w.handshake();
    w.now += REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT;
    let Out::Net(d) = w.b_send(&ip_packet(4)) else {
        panic!()
    };
    assert!(matches!(w.a_recv(&d), Out::Tun(_)));
    assert_eq!(net_len(w.a_timers()), 148);
}

#[test]
fn rekey_rotates_keypairs_and_keeps_previous() {
    let mut w = World::new(None);
    w.handshake();
    let Out::Net(in_flight) = w.b_send(&ip_packet(6)) else {
        panic!()
    };
    w.now += Duration::from_secs(1);
    let Out::Net(init) =
        w.a.force_handshake(w.now, &mut w.rng, &mut w.buf)
            .into_out()
    else {
        panic!()
    };
    let Out::Net(resp) = w.b_recv(&init) else {
        panic!()
    };
    // B keeps sending on its current keys until A confirms.
    let Out::Net(d_old) = w.b_send(&ip_packet(7)) else {
        panic!()
    };
    let Out::Net(ka) = w.a_recv(&resp) else {
        panic!()
    };
    assert!(
        matches!(w.a_recv(&d_old), Out::Tun(_)),
        "previous keypair still receives"
    );
    assert!(matches!(w.a_recv(&in_flight), Out::Tun(_)));
    assert!(matches!(w.b_recv(&ka), Out::Done));
    let Out::Net(d_new) = w.b_send(&ip_packet(8)) else {
        panic!()
    };
    assert_ne!(d_new[4..8], d_old[4..8], "new receiver index");
    assert!(matches!(w.a_recv(&d_new), Out::Tun(p) if p == ip_packet(8)));
}

#[test]
fn endpoint_roams_only_on_authenticated_packets() {
    let mut w = World::new(None);
    w.handshake();
    assert_eq!(w.b.endpoint(), Some(addr("192.0.2.1:1")));
    let Out::Net(d) = w.a_send(&ip_packet(9)) else {
        panic!()
    };
    let mut forged = d.clone();
    forged[20] ^= 1;
    assert!(matches!(
        w.b_recv_from("198.51.100.66:6", &forged),
        Out::Err(_)
    ));
    assert_eq!(w.b.endpoint(), Some(addr("192.0.2.1:1")));
    assert!(matches!(w.b_recv_from("198.51.100.7:7", &d), Out::Tun(_)));
    assert_eq!(w.b.endpoint(), Some(addr("198.51.100.7:7")));
}

#[test]
fn handshake_flood_from_one_peer_is_limited() {
    let mut w = World::new(None);
    let Out::Net(init1) = w.a_send(&ip_packet(1)) else {
        panic!()
    };
    assert_eq!(net_len(w.b_recv(&init1)), 92);
    let Out::Net(init2) = w.a.retransmit_later(w.now, 1, &mut w.rng, &mut w.buf) else {
        panic!()
    };
    assert!(matches!(w.b_recv(&init2), Out::Err(Error::Handshake(_))));
    w.now += MIN_INITIATION_INTERVAL;
    let Out::Net(init3) = w.a.retransmit_later(w.now, 2, &mut w.rng, &mut w.buf) else {
        panic!()
    };
    assert_eq!(net_len(w.b_recv(&init3)), 92);
}

trait IntoOut {
    fn into_out(self) -> Out;
}

impl IntoOut for Action<'_> {
    fn into_out(self) -> Out {
        conv(self)
    }
}

trait Retransmit {
    fn retransmit_later(
        &mut self,
        now: Duration,
        nth: u32,
        rng: &mut XorShift,
        buf: &mut [u8],
    ) -> Out;
}

impl Retransmit for Tunnel {
    /// The `nth` retransmitted initiation, made by running this tunnel's clock
    /// ahead of the receiver's, so the receiver sees several initiations
    /// within its own short interval.
    fn retransmit_later(
        &mut self,
        now: Duration,
        nth: u32,
        rng: &mut XorShift,
        buf: &mut [u8],
    ) -> Out {
        conv(self.update_timers(
            now + (REKEY_TIMEOUT + Duration::from_millis(400)) * 2 * nth,
            rng,
            buf,
        ))
    }
}
