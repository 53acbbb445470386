//! Arbitrary datagrams (any of the four message types, or garbage) fed to a
//! device whose peer has a live session, and to the typed views directly:
//! every input is answered with an action or an error, never a panic.
#![no_main]

use core::time::Duration;

use libfuzzer_sys::fuzz_target;
use wireguard::device::{DeviceConfig, PeerConfig};
use wireguard::wire::{self, CookieReply, Initiation, Response, Transport};
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

fn public(k: [u8; 32]) -> [u8; 32] {
    // The device computes its own; the peer tunnel needs the device's public key.
    let d = Device::new(DeviceConfig {
        private_key: k,
        wall_clock_at_zero: Duration::ZERO,
        handshake_load_limit: 10,
    });
    *d.public_key()
}

fuzz_target!(|data: &[u8]| {
    let _ = wire::classify(data);
    if let Ok(m) = Initiation::new_checked(data) {
        let _ = (m.sender(), m.ephemeral(), m.mac1(), m.mac2());
    }
    if let Ok(m) = Response::new_checked(data) {
        let _ = (m.sender(), m.receiver(), m.mac2());
    }
    if let Ok(m) = CookieReply::new_checked(data) {
        let _ = (m.receiver(), m.nonce());
    }
    if let Ok(m) = Transport::new_checked(data) {
        let _ = (m.receiver(), m.counter(), m.payload().len());
    }

    // A device with one peer, and a live session so transport messages reach decryption.
    let mut rng = Counter(1);
    let dev_key = [1u8; 32];
    let peer_key = [2u8; 32];
    let mut dev = Device::new(DeviceConfig {
        private_key: dev_key,
        wall_clock_at_zero: Duration::ZERO,
        handshake_load_limit: (data.first().copied().unwrap_or(0) % 3).into(),
    });
    let peer_allowed = [("10.0.0.0".parse().unwrap(), 8u8)];
    let _ = dev.add_peer(&PeerConfig {
        public_key: public(peer_key),
        preshared_key: None,
        persistent_keepalive: None,
        endpoint: None,
        allowed_ips: &peer_allowed,
    });
    let mut peer = Tunnel::new(&TunnelConfig {
        private_key: peer_key,
        peer_public_key: public(dev_key),
        preshared_key: None,
        persistent_keepalive: None,
        index: 5,
        endpoint: None,
        wall_clock_at_zero: Duration::from_secs(1),
        handshake_load_limit: 10,
    })
    .unwrap();
    let now = Duration::from_secs(1);
    let src = Some("192.0.2.1:9".parse().unwrap());
    let mut a = vec![0u8; 2048];
    let mut b = vec![0u8; 2048];
    if let Action::WriteToNetwork(init) = peer.force_handshake(now, &mut rng, &mut a) {
        if let (_, Action::WriteToNetwork(resp)) =
            dev.decapsulate(now, &mut rng, src, init, None, &mut b)
        {
            let _ = peer.decapsulate(now, &mut rng, src, resp, &mut a);
        }
    }
    let mut out = vec![0u8; data.len() + 64];
    let _ = dev.decapsulate(now, &mut rng, src, data, None, &mut out);
    let _ = peer.decapsulate(now, &mut rng, src, data, &mut out);
});
