//! A device with several boringtun peers: demultiplexing, cryptokey routing
//! both ways, spoofed sources dropped, unknown peers refused.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use wireguard::config::Config;
use wireguard::device::{DeviceConfig, PeerConfig};
use wireguard::tunnel::Error;
use wireguard::{Action, Device, PeerId, Random};

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

const DEV_KEY: [u8; 32] = [0x44; 32];

fn ipv4(src: [u8; 4], dst: [u8; 4], n: u8) -> Vec<u8> {
    let mut p = vec![n; 60];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&60u16.to_be_bytes());
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

struct Net {
    dev: Device,
    peers: Vec<Tunn>,
    addrs: Vec<SocketAddr>,
    rng: XorShift,
    now: Duration,
}

fn setup() -> Net {
    setup_with_limit(100)
}

fn setup_with_limit(limit: u32) -> Net {
    let dev_public = PublicKey::from(&StaticSecret::from(DEV_KEY));
    let mut dev = Device::new(DeviceConfig {
        private_key: DEV_KEY,
        wall_clock_at_zero: Duration::from_secs(1_700_000_000),
        handshake_load_limit: limit,
    });
    let mut peers = Vec::new();
    let mut addrs = Vec::new();
    let allowed: [&[(IpAddr, u8)]; 3] = [
        &[(ip("0.0.0.0"), 0), (ip("::"), 0)],
        &[(ip("10.2.0.0"), 16)],
        &[(ip("10.2.3.0"), 24), (ip("fd00::"), 64)],
    ];
    for (i, a) in allowed.iter().enumerate() {
        let secret = StaticSecret::from([0x50 + i as u8; 32]);
        let public = PublicKey::from(&secret);
        let addr: SocketAddr = format!("198.51.100.{}:51820", i + 1).parse().unwrap();
        let id = dev
            .add_peer(&PeerConfig {
                public_key: public.to_bytes(),
                preshared_key: None,
                persistent_keepalive: None,
                endpoint: Some(addr),
                allowed_ips: a,
            })
            .unwrap();
        assert_eq!(id, PeerId(i));
        peers.push(Tunn::new(secret, dev_public, None, None, 100 + i as u32, None).unwrap());
        addrs.push(addr);
    }
    Net {
        dev,
        peers,
        addrs,
        rng: XorShift(5),
        now: Duration::from_secs(3),
    }
}

impl Net {
    fn dev_decap(
        &mut self,
        from: usize,
        d: &[u8],
    ) -> (Option<PeerId>, Result<Vec<u8>, Option<Error>>) {
        let mut out = vec![0u8; 2048];
        let (p, a) = self.dev.decapsulate(
            self.now,
            &mut self.rng,
            Some(self.addrs[from]),
            d,
            None,
            &mut out,
        );
        let r = match a {
            Action::WriteToNetwork(b) | Action::WriteToTunnel(b, _) => Ok(b.to_vec()),
            Action::Done => Err(None),
            Action::Err(e) => Err(Some(e)),
        };
        (p, r)
    }

    /// Peer `i` initiates with `first`; the device delivers it.
    fn connect(&mut self, i: usize, first: &[u8]) {
        let mut buf = vec![0u8; 2048];
        let TunnResult::WriteToNetwork(init) = self.peers[i].encapsulate(first, &mut buf) else {
            panic!()
        };
        let init = init.to_vec();
        let (p, resp) = self.dev_decap(i, &init);
        assert_eq!(p, Some(PeerId(i)));
        let resp = resp.unwrap();
        let TunnResult::WriteToNetwork(ka) = self.peers[i].decapsulate(None, &resp, &mut buf)
        else {
            panic!()
        };
        let ka = ka.to_vec();
        assert_eq!(self.dev_decap(i, &ka), (Some(PeerId(i)), Err(None)));
        let TunnResult::WriteToNetwork(d) = self.peers[i].decapsulate(None, &[], &mut buf) else {
            panic!()
        };
        let d = d.to_vec();
        assert_eq!(self.dev_decap(i, &d), (Some(PeerId(i)), Ok(first.to_vec())));
    }
}

#[test]
fn routes_by_longest_prefix_and_demultiplexes() {
    let mut n = setup();
    assert_eq!(n.dev.route(ip("8.8.8.8")), Some(PeerId(0)));
    assert_eq!(n.dev.route(ip("10.2.9.9")), Some(PeerId(1)));
    assert_eq!(n.dev.route(ip("10.2.3.4")), Some(PeerId(2)));
    assert_eq!(n.dev.route(ip("fd00::1")), Some(PeerId(2)));
    assert_eq!(n.dev.route(ip("fd01::1")), Some(PeerId(0)));
    n.connect(0, &ipv4([1, 1, 1, 1], [10, 0, 0, 5], 1));
    n.connect(2, &ipv4([10, 2, 3, 9], [10, 0, 0, 5], 2));
    n.connect(1, &ipv4([10, 2, 200, 1], [10, 0, 0, 5], 3));
    // Outgoing to each peer decrypts only at that peer.
    for (dst, want) in [
        ([9, 9, 9, 9], 0usize),
        ([10, 2, 0, 1], 1),
        ([10, 2, 3, 1], 2),
    ] {
        let pkt = ipv4([10, 0, 0, 5], dst, 7);
        let peer = n.dev.route(IpAddr::V4(Ipv4Addr::from(dst))).unwrap();
        assert_eq!(peer, PeerId(want));
        let mut out = vec![0u8; 2048];
        let Action::WriteToNetwork(d) = n.dev.encapsulate(n.now, &mut n.rng, peer, &pkt, &mut out)
        else {
            panic!()
        };
        let d = d.to_vec();
        let mut buf = vec![0u8; 2048];
        match n.peers[want].decapsulate(None, &d, &mut buf) {
            TunnResult::WriteToTunnelV4(p, _) => assert_eq!(p, &pkt[..]),
            other => panic!("{other:?}"),
        }
        let other = (want + 1) % 3;
        assert!(matches!(
            n.peers[other].decapsulate(None, &d, &mut buf),
            TunnResult::Err(_)
        ));
    }
}

#[test]
fn spoofed_inner_source_is_dropped() {
    let mut n = setup();
    n.connect(1, &ipv4([10, 2, 0, 1], [10, 0, 0, 5], 1));
    // Peer 1 owns 10.2.0.0/16 except 10.2.3.0/24, which is peer 2's.
    let mut buf = vec![0u8; 2048];
    let spoof = ipv4([10, 2, 3, 3], [10, 0, 0, 5], 2);
    let TunnResult::WriteToNetwork(d) = n.peers[1].encapsulate(&spoof, &mut buf) else {
        panic!()
    };
    let d = d.to_vec();
    assert_eq!(
        n.dev_decap(1, &d),
        (Some(PeerId(1)), Err(Some(Error::SourceNotAllowed)))
    );
    let outside = ipv4([8, 8, 8, 8], [10, 0, 0, 5], 3);
    let TunnResult::WriteToNetwork(d) = n.peers[1].encapsulate(&outside, &mut buf) else {
        panic!()
    };
    let d = d.to_vec();
    assert_eq!(n.dev_decap(1, &d).1, Err(Some(Error::SourceNotAllowed)));
}

#[test]
fn unknown_peer_and_bad_mac1_refused() {
    let mut n = setup();
    let dev_public = PublicKey::from(&StaticSecret::from(DEV_KEY));
    let mut stranger = Tunn::new(
        StaticSecret::from([0x77; 32]),
        dev_public,
        None,
        None,
        9,
        None,
    )
    .unwrap();
    let mut buf = vec![0u8; 2048];
    let TunnResult::WriteToNetwork(init) =
        stranger.encapsulate(&ipv4([1, 2, 3, 4], [5, 6, 7, 8], 0), &mut buf)
    else {
        panic!()
    };
    let mut init = init.to_vec();
    assert_eq!(
        n.dev_decap(0, &init).1,
        Err(Some(Error::Handshake(
            wireguard::noise::HandshakeError::WrongPeer
        )))
    );
    init[20] ^= 1;
    assert_eq!(n.dev_decap(0, &init).1, Err(Some(Error::BadMac)));
    // Transport for an index no peer has.
    let mut t = vec![0u8; 32];
    t[0] = 4;
    t[4..8].copy_from_slice(&((99u32 << 8) | 1).to_le_bytes());
    assert_eq!(n.dev_decap(0, &t).1, Err(Some(Error::UnknownIndex)));
}

#[test]
fn device_from_wg_quick_config() {
    let key = |b: u8| wireguard::config::encode_base64(&[b; 32]);
    let pub_of = |b: u8| {
        wireguard::config::encode_base64(PublicKey::from(&StaticSecret::from([b; 32])).as_bytes())
    };
    let text = format!(
        "[Interface]\nPrivateKey = {}\nAddress = 10.0.0.2/32\n[Peer]\nPublicKey = {}\nEndpoint = 192.0.2.1:51820\nAllowedIPs = 0.0.0.0/0\n[Peer]\nPublicKey = {}\nEndpoint = wg.example.net:51820\nAllowedIPs = 10.9.0.0/16\n",
        key(1),
        pub_of(2),
        pub_of(3)
    );
    let c = Config::parse(&text).unwrap();
    let d = Device::from_config(&c, Duration::ZERO, 10).unwrap();
    assert_eq!(d.peer_count(), 2);
    assert_eq!(d.route(ip("10.9.1.1")), Some(PeerId(1)));
    assert_eq!(d.route(ip("1.1.1.1")), Some(PeerId(0)));
    assert_eq!(d.route(ip("::1")), None);
    assert_eq!(
        d.peer(PeerId(0)).unwrap().endpoint(),
        Some("192.0.2.1:51820".parse().unwrap())
    );
    assert_eq!(
        d.peer(PeerId(1)).unwrap().endpoint(),
        None,
        "host names are resolved by the caller"
    );
}

#[test]
fn under_load_the_device_answers_with_a_cookie_before_any_dh() {
    let mut n = setup_with_limit(0);
    let mut buf = vec![0u8; 2048];
    let first = ipv4([10, 2, 3, 9], [10, 0, 0, 5], 2);
    let TunnResult::WriteToNetwork(init) = n.peers[2].encapsulate(&first, &mut buf) else {
        panic!()
    };
    let init = init.to_vec();
    let (peer, reply) = n.dev_decap(2, &init);
    assert_eq!(peer, None, "not demultiplexed: no DH was done");
    let reply = reply.unwrap();
    assert_eq!((reply.len(), reply[0]), (64, 3));
    assert!(matches!(
        n.peers[2].decapsulate(None, &reply, &mut buf),
        TunnResult::Done
    ));
    std::thread::sleep(Duration::from_millis(30));
    let TunnResult::WriteToNetwork(init) = n.peers[2].format_handshake_initiation(&mut buf, true)
    else {
        panic!()
    };
    let init = init.to_vec();
    let (peer, resp) = n.dev_decap(2, &init);
    assert_eq!(peer, Some(PeerId(2)));
    assert_eq!(resp.unwrap().len(), 92);
    // The cookie is bound to the sender's address: the same message from elsewhere gets a new cookie.
    let (_, other) = n.dev_decap(0, &init);
    assert_eq!(other.unwrap().len(), 64);
}

#[test]
fn device_initiates_and_accepts_the_peers_response() {
    // The responder's own index is whatever it likes (boringtun's are
    // `index << 8 | random`, wireguard-go's fully random): the device must
    // find the tunnel by the receiver index, which is ours.
    let mut n = setup();
    let pkt = ipv4([10, 0, 0, 5], [10, 2, 3, 1], 9);
    let peer = n.dev.route(ip("10.2.3.1")).unwrap();
    assert_eq!(peer, PeerId(2));
    let mut out = vec![0u8; 2048];
    let Action::WriteToNetwork(init) = n.dev.encapsulate(n.now, &mut n.rng, peer, &pkt, &mut out)
    else {
        panic!("no initiation")
    };
    let init = init.to_vec();
    let mut buf = vec![0u8; 2048];
    let TunnResult::WriteToNetwork(resp) = n.peers[2].decapsulate(None, &init, &mut buf) else {
        panic!("boringtun did not answer")
    };
    let resp = resp.to_vec();
    assert_eq!(resp[0], 2);
    let responder_index = u32::from_le_bytes([resp[4], resp[5], resp[6], resp[7]]);
    assert_ne!(
        responder_index >> 8,
        3,
        "the test needs an index unlike ours"
    );
    // The response completes the handshake; the queued packet then goes out.
    let (p, r) = n.dev_decap(2, &resp);
    assert_eq!(p, Some(PeerId(2)));
    assert!(!matches!(r, Err(Some(_))), "response refused: {r:?}");
    assert!(n.dev.peer(PeerId(2)).unwrap().has_session(n.now));
    let mut flushed = vec![0u8; 2048];
    let (_, a) = n
        .dev
        .decapsulate(n.now, &mut n.rng, None, &[], Some(PeerId(2)), &mut flushed);
    let Action::WriteToNetwork(d) = a else {
        panic!("queued packet not sent: {a:?}")
    };
    let d = d.to_vec();
    match n.peers[2].decapsulate(None, &d, &mut buf) {
        TunnResult::WriteToTunnelV4(p, _) => assert_eq!(p, &pkt[..]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn only_datagrams_whose_mac1_verified_count_towards_the_load() {
    // A limit of 2 handshakes a second. A flood of initiations with a wrong
    // mac1 (anyone who does not know our public key) must not put the
    // interface under load: the real peer's initiation that follows is
    // answered with a response, not a cookie reply.
    let mut n = setup_with_limit(2);
    let mut buf = vec![0u8; 2048];
    let first = ipv4([10, 2, 3, 9], [10, 0, 0, 5], 2);
    let TunnResult::WriteToNetwork(init) = n.peers[2].encapsulate(&first, &mut buf) else {
        panic!()
    };
    let init = init.to_vec();
    let mut forged = init.clone();
    forged[116] ^= 0x55; // inside mac1
    for _ in 0..100 {
        let (peer, r) = n.dev_decap(1, &forged);
        assert_eq!((peer, r), (None, Err(Some(Error::BadMac))));
    }
    let (peer, resp) = n.dev_decap(2, &init);
    assert_eq!(peer, Some(PeerId(2)));
    assert_eq!(resp.unwrap().len(), 92, "a response, not a cookie reply");
    // Valid initiations do count: past the limit, the next ones are
    // answered with cookie replies (64 bytes, type 3) and no peer.
    let mut cookies = 0;
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(20));
        let TunnResult::WriteToNetwork(again) =
            n.peers[2].format_handshake_initiation(&mut buf, true)
        else {
            panic!()
        };
        let again = again.to_vec();
        // (The one still under the limit reaches the tunnel, which may
        // refuse an initiation this soon after the last: either is fine.)
        if let (None, Ok(r)) = n.dev_decap(2, &again) {
            assert_eq!((r.len(), r[0]), (64, 3));
            cookies += 1;
        }
    }
    assert!(cookies >= 2, "{cookies} cookie replies");
}
