//! The Noise_IKpsk2 handshake of WireGuard (paper section 5.4.2 and 5.4.3):
//! building and consuming initiation and response messages, and deriving the
//! transport keys. mac1/mac2 are added and checked by `cookie`, not here.

use core::time::Duration;

use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::crypto::{self, HASH_LEN};
use crate::wire::{Initiation, Response, INITIATION_LEN, RESPONSE_LEN};
use crate::Random;

/// The protocol name; [`INITIAL_CHAIN_KEY`] is its hash.
#[cfg(test)]
const CONSTRUCTION: &[u8] = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
/// Mixed into [`INITIAL_CHAIN_HASH`].
#[cfg(test)]
const IDENTIFIER: &[u8] = b"WireGuard v1 zx2c4 Jason@zx2c4.com";
/// TAI64 label of 1970-01-01 (2^62 plus the TAI-UTC offset used by wireguard-go and boringtun).
const TAI64_BASE: u64 = (1 << 62) + 37;

/// A 32-byte secret that is zeroed when dropped.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Key(pub [u8; 32]);

/// Why a handshake message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeError {
    /// A field did not decrypt: wrong keys or a forged message.
    Decrypt,
    /// A public key gave an all-zero shared secret (low-order point).
    LowOrderKey,
    /// The initiation came from a static key that is not this peer's.
    WrongPeer,
    /// The timestamp is not newer than one already accepted: a replayed initiation.
    OldTimestamp,
    /// Initiations from this peer arrive faster than the paper allows.
    Flood,
    /// A response that does not answer our outstanding initiation.
    UnexpectedResponse,
}

/// Transport keys that a completed handshake produced.
pub struct SessionKeys {
    /// Key for messages we send.
    pub send: Key,
    /// Key for messages we receive.
    pub recv: Key,
    /// Our index (the peer puts it in the receiver field).
    pub local_index: u32,
    /// The peer's index.
    pub remote_index: u32,
    /// Whether we sent the initiation.
    pub initiator: bool,
}

/// An initiation whose static key and timestamp decrypted: enough to tell the
/// sender, before the per-peer checks of [`Handshake::respond`].
pub struct ConsumedInitiation {
    /// The initiator's static public key.
    pub peer_static: [u8; 32],
    timestamp: [u8; 12],
    sender: u32,
    peer_ephemeral: [u8; 32],
    chaining_key: Key,
    hash: [u8; HASH_LEN],
}

/// Our static key pair.
pub struct StaticKeys {
    secret: StaticSecret,
    /// Our static public key.
    pub public: [u8; 32],
}

impl StaticKeys {
    /// From the 32 secret bytes (clamped by X25519 itself).
    pub fn new(secret: [u8; 32]) -> Self {
        let secret = StaticSecret::from(secret);
        let public = PublicKey::from(&secret).to_bytes();
        Self { secret, public }
    }
}

/// HASH(CONSTRUCTION), the initial chaining key (checked by a test).
const INITIAL_CHAIN_KEY: [u8; HASH_LEN] = [
    0x60, 0xe2, 0x6d, 0xae, 0xf3, 0x27, 0xef, 0xc0, 0x2e, 0xc3, 0x35, 0xe2, 0xa0, 0x25, 0xd2, 0xd0,
    0x16, 0xeb, 0x42, 0x06, 0xf8, 0x72, 0x77, 0xf5, 0x2d, 0x38, 0xd1, 0x98, 0x8b, 0x78, 0xcd, 0x36,
];
/// HASH(INITIAL_CHAIN_KEY || IDENTIFIER), the initial hash (checked by a test).
const INITIAL_CHAIN_HASH: [u8; HASH_LEN] = [
    0x22, 0x11, 0xb3, 0x61, 0x08, 0x1a, 0xc5, 0x66, 0x69, 0x12, 0x43, 0xdb, 0x45, 0x8a, 0xd5, 0x32,
    0x2d, 0x9c, 0x6c, 0x66, 0x22, 0x93, 0xe8, 0xb7, 0x0e, 0xe1, 0x9c, 0x65, 0xba, 0x07, 0x9e, 0xf3,
];

fn mix_key(ck: &mut Key, input: &[u8]) {
    let [c] = crypto::kdf::<1>(&ck.0, input);
    ck.0 = c;
}

fn mix_key_out(ck: &mut Key, input: &[u8]) -> Key {
    let [c, k] = crypto::kdf::<2>(&ck.0, input);
    ck.0 = c;
    Key(k)
}

fn mix_hash(h: &mut [u8; HASH_LEN], data: &[u8]) {
    *h = crypto::hash(&[h, data]);
}

/// The state after the first half of consuming an initiation.
struct StaticDecrypted {
    ck: Key,
    h: [u8; HASH_LEN],
    e: [u8; 32],
    peer_static: [u8; 32],
}

impl Drop for StaticDecrypted {
    fn drop(&mut self) {
        self.h.zeroize();
        self.e.zeroize();
    }
}

/// The first half of consuming an initiation: one DH, then the sender's static key.
fn decrypt_static<T: AsRef<[u8]>>(
    local: &StaticKeys,
    msg: &Initiation<T>,
) -> Result<StaticDecrypted, HandshakeError> {
    let mut ck = Key(INITIAL_CHAIN_KEY);
    let mut h = INITIAL_CHAIN_HASH;
    mix_hash(&mut h, &local.public);
    let e = *msg.ephemeral();
    mix_key(&mut ck, &e);
    mix_hash(&mut h, &e);
    let mut shared = crypto::dh(&local.secret, &e).ok_or(HandshakeError::LowOrderKey)?;
    let k = mix_key_out(&mut ck, &shared);
    shared.zeroize();
    let mut stat = *msg.encrypted_static();
    crypto::open(&k.0, 0, &h, &mut stat).map_err(|_| HandshakeError::Decrypt)?;
    mix_hash(&mut h, msg.encrypted_static());
    let mut peer_static = [0u8; 32];
    peer_static.copy_from_slice(&stat[..32]);
    Ok(StaticDecrypted {
        ck,
        h,
        e,
        peer_static,
    })
}

/// The static public key of an initiation's sender (one DH), to find which
/// peer it is for. The message's macs must have been checked already.
pub fn initiator_static<T: AsRef<[u8]>>(
    local: &StaticKeys,
    msg: &Initiation<T>,
) -> Result<[u8; 32], HandshakeError> {
    decrypt_static(local, msg).map(|d| d.peer_static)
}

/// Decrypts an initiation sent to `local`, before knowing which peer sent it.
/// The message's macs must have been checked already. `known` is a peer's
/// static key with its precomputed DH(our static, its static): when the
/// sender is that peer the second DH is skipped.
pub fn consume_initiation<T: AsRef<[u8]>>(
    local: &StaticKeys,
    msg: &Initiation<T>,
    known: Option<(&[u8; 32], &Key)>,
) -> Result<ConsumedInitiation, HandshakeError> {
    let d = decrypt_static(local, msg)?;
    let mut ck = d.ck.clone();
    let mut h = d.h;
    let k = match known {
        // Public keys: no need for a constant-time comparison.
        Some((peer, ss)) if *peer == d.peer_static => mix_key_out(&mut ck, &ss.0),
        _ => {
            let mut ss =
                crypto::dh(&local.secret, &d.peer_static).ok_or(HandshakeError::LowOrderKey)?;
            let k = mix_key_out(&mut ck, &ss);
            ss.zeroize();
            k
        }
    };
    let mut ts = *msg.encrypted_timestamp();
    crypto::open(&k.0, 0, &h, &mut ts).map_err(|_| HandshakeError::Decrypt)?;
    mix_hash(&mut h, msg.encrypted_timestamp());
    let mut timestamp = [0u8; 12];
    timestamp.copy_from_slice(&ts[..12]);
    Ok(ConsumedInitiation {
        peer_static: d.peer_static,
        timestamp,
        sender: msg.sender(),
        peer_ephemeral: d.e,
        chaining_key: ck,
        hash: h,
    })
}

/// An initiation we sent and whose response we await.
struct Pending {
    local_index: u32,
    ephemeral: StaticSecret,
    chaining_key: Key,
    hash: [u8; HASH_LEN],
}

/// The handshake state of one peer: our keys, theirs, and any outstanding initiation.
pub struct Handshake {
    local: StaticKeys,
    peer: [u8; 32],
    psk: Key,
    /// DH(our static, their static), fixed for the peer's lifetime.
    static_shared: Key,
    pending: Option<Pending>,
    /// Greatest initiation timestamp accepted from the peer.
    last_timestamp: [u8; 12],
    last_initiation_at: Option<Duration>,
}

fn random_secret(rng: &mut dyn Random) -> StaticSecret {
    let mut b = [0u8; 32];
    rng.fill(&mut b);
    let s = StaticSecret::from(b);
    b.zeroize();
    s
}

/// TAI64N of a time since the Unix epoch.
pub fn tai64n(since_unix: Duration) -> [u8; 12] {
    let mut t = [0u8; 12];
    t[..8].copy_from_slice(&(TAI64_BASE + since_unix.as_secs()).to_be_bytes());
    t[8..].copy_from_slice(&since_unix.subsec_nanos().to_be_bytes());
    t
}

impl Handshake {
    /// State for the peer `peer` (static public key) with an optional pre-shared key.
    pub fn new(
        local: StaticKeys,
        peer: [u8; 32],
        psk: Option<[u8; 32]>,
    ) -> Result<Self, HandshakeError> {
        let ss = crypto::dh(&local.secret, &peer).ok_or(HandshakeError::LowOrderKey)?;
        Ok(Self {
            local,
            peer,
            psk: Key(psk.unwrap_or([0; 32])),
            static_shared: Key(ss),
            pending: None,
            last_timestamp: [0; 12],
            last_initiation_at: None,
        })
    }

    /// Our static public key.
    pub fn local_public(&self) -> &[u8; 32] {
        &self.local.public
    }

    /// [`consume_initiation`] for this peer's initiations: DH(static, static)
    /// comes from the value computed once in [`Handshake::new`].
    pub fn consume_initiation<T: AsRef<[u8]>>(
        &self,
        msg: &Initiation<T>,
    ) -> Result<ConsumedInitiation, HandshakeError> {
        consume_initiation(&self.local, msg, Some((&self.peer, &self.static_shared)))
    }

    /// Our static keys.
    pub fn local_keys(&self) -> &StaticKeys {
        &self.local
    }

    /// The peer's static public key.
    pub fn peer_public(&self) -> &[u8; 32] {
        &self.peer
    }

    /// Whether an initiation awaits its response.
    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Forgets any outstanding initiation (its ephemeral key is zeroed).
    pub fn abandon(&mut self) {
        self.pending = None;
    }

    /// Writes an initiation (without macs) into `out`, replacing any outstanding one.
    pub fn initiate(
        &mut self,
        local_index: u32,
        wall_clock: Duration,
        rng: &mut dyn Random,
        out: &mut [u8; INITIATION_LEN],
    ) {
        let mut ck = Key(INITIAL_CHAIN_KEY);
        let mut h = INITIAL_CHAIN_HASH;
        mix_hash(&mut h, &self.peer);
        let ephemeral = random_secret(rng);
        let e_pub = PublicKey::from(&ephemeral).to_bytes();
        let mut msg = Initiation::new_unchecked(&mut out[..]);
        msg.fill_header();
        msg.set_sender(local_index);
        msg.set_ephemeral(&e_pub);
        mix_key(&mut ck, &e_pub);
        mix_hash(&mut h, &e_pub);
        // The peer key was checked in `new`, so this DH is contributory; a zero
        // key would only make the peer reject the message.
        let es = crypto::dh(&ephemeral, &self.peer).unwrap_or([0; 32]);
        let k = mix_key_out(&mut ck, &es);
        let field = msg.encrypted_static_mut();
        field[..32].copy_from_slice(&self.local.public);
        crypto::seal(&k.0, 0, &h, field);
        mix_hash(&mut h, field);
        let k = mix_key_out(&mut ck, &self.static_shared.0);
        let field = msg.encrypted_timestamp_mut();
        field[..12].copy_from_slice(&tai64n(wall_clock));
        crypto::seal(&k.0, 0, &h, field);
        mix_hash(&mut h, field);
        self.pending = Some(Pending {
            local_index,
            ephemeral,
            chaining_key: ck,
            hash: h,
        });
    }

    /// Consumes the peer's response to our outstanding initiation.
    pub fn consume_response<T: AsRef<[u8]>>(
        &mut self,
        msg: &Response<T>,
    ) -> Result<SessionKeys, HandshakeError> {
        let p = self
            .pending
            .as_ref()
            .ok_or(HandshakeError::UnexpectedResponse)?;
        if msg.receiver() != p.local_index {
            return Err(HandshakeError::UnexpectedResponse);
        }
        let mut ck = p.chaining_key.clone();
        let mut h = p.hash;
        let e = *msg.ephemeral();
        mix_key(&mut ck, &e);
        mix_hash(&mut h, &e);
        let ee = crypto::dh(&p.ephemeral, &e).ok_or(HandshakeError::LowOrderKey)?;
        mix_key(&mut ck, &ee);
        let se = crypto::dh(&self.local.secret, &e).ok_or(HandshakeError::LowOrderKey)?;
        mix_key(&mut ck, &se);
        let [c, tau, k] = crypto::kdf::<3>(&ck.0, &self.psk.0);
        ck.0 = c;
        let k = Key(k);
        mix_hash(&mut h, &tau);
        let mut empty = *msg.encrypted_empty();
        crypto::open(&k.0, 0, &h, &mut empty).map_err(|_| HandshakeError::Decrypt)?;
        let [send, recv] = crypto::kdf::<2>(&ck.0, &[]);
        let local_index = p.local_index;
        self.pending = None;
        Ok(SessionKeys {
            send: Key(send),
            recv: Key(recv),
            local_index,
            remote_index: msg.sender(),
            initiator: true,
        })
    }

    /// Accepts a consumed initiation from this peer and writes the response
    /// (without macs) into `out`.
    pub fn respond(
        &mut self,
        init: ConsumedInitiation,
        local_index: u32,
        now: Duration,
        rng: &mut dyn Random,
        out: &mut [u8; RESPONSE_LEN],
    ) -> Result<SessionKeys, HandshakeError> {
        use subtle::ConstantTimeEq;
        if !bool::from(init.peer_static.ct_eq(&self.peer)) {
            return Err(HandshakeError::WrongPeer);
        }
        // TAI64N is big-endian, so byte order is time order.
        if init.timestamp <= self.last_timestamp {
            return Err(HandshakeError::OldTimestamp);
        }
        if self
            .last_initiation_at
            .is_some_and(|t| now.saturating_sub(t) < crate::timers::MIN_INITIATION_INTERVAL)
        {
            return Err(HandshakeError::Flood);
        }
        let mut ck = init.chaining_key.clone();
        let mut h = init.hash;
        let ephemeral = random_secret(rng);
        let e_pub = PublicKey::from(&ephemeral).to_bytes();
        let mut msg = Response::new_unchecked(&mut out[..]);
        msg.fill_header();
        msg.set_sender(local_index);
        msg.set_receiver(init.sender);
        msg.set_ephemeral(&e_pub);
        mix_key(&mut ck, &e_pub);
        mix_hash(&mut h, &e_pub);
        let ee = crypto::dh(&ephemeral, &init.peer_ephemeral).ok_or(HandshakeError::LowOrderKey)?;
        mix_key(&mut ck, &ee);
        let es = crypto::dh(&ephemeral, &init.peer_static).ok_or(HandshakeError::LowOrderKey)?;
        mix_key(&mut ck, &es);
        let [c, tau, k] = crypto::kdf::<3>(&ck.0, &self.psk.0);
        ck.0 = c;
        let k = Key(k);
        mix_hash(&mut h, &tau);
        let field = msg.encrypted_empty_mut();
        crypto::seal(&k.0, 0, &h, field);
        let [recv, send] = crypto::kdf::<2>(&ck.0, &[]);
        self.last_timestamp = init.timestamp;
        self.last_initiation_at = Some(now);
        Ok(SessionKeys {
            send: Key(send),
            recv: Key(recv),
            local_index,
            remote_index: init.sender,
            initiator: false,
        })
    }
}

impl Drop for ConsumedInitiation {
    fn drop(&mut self) {
        self.hash.zeroize();
        self.peer_ephemeral.zeroize();
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.hash.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests_support::CountingRng;

    #[test]
    fn initial_chain_matches_published_constants() {
        // The precomputed HASH(CONSTRUCTION) and HASH(C || IDENTIFIER) that
        // boringtun (src/noise/handshake.rs) ships as INITIAL_CHAIN_KEY/HASH.
        let ck = crypto::hash(&[CONSTRUCTION]);
        let h = crypto::hash(&[&ck, IDENTIFIER]);
        assert_eq!((ck, h), (INITIAL_CHAIN_KEY, INITIAL_CHAIN_HASH));
        assert_eq!(
            ck,
            [
                96, 226, 109, 174, 243, 39, 239, 192, 46, 195, 53, 226, 160, 37, 210, 208, 22, 235,
                66, 6, 248, 114, 119, 245, 45, 56, 209, 152, 139, 120, 205, 54
            ]
        );
        assert_eq!(
            h,
            [
                34, 17, 179, 97, 8, 26, 197, 102, 105, 18, 67, 219, 69, 138, 213, 50, 45, 156, 108,
                102, 34, 147, 232, 183, 14, 225, 156, 101, 186, 7, 158, 243
            ]
        );
    }

    fn pair(psk: Option<[u8; 32]>) -> (Handshake, Handshake) {
        let a = StaticKeys::new([1; 32]);
        let b = StaticKeys::new([2; 32]);
        let (ap, bp) = (a.public, b.public);
        (
            Handshake::new(a, bp, psk).unwrap(),
            Handshake::new(b, ap, psk).unwrap(),
        )
    }

    #[test]
    fn handshake_derives_matching_keys() {
        let (mut a, mut b) = pair(Some([9; 32]));
        let mut rng = CountingRng(3);
        let mut init = [0u8; INITIATION_LEN];
        a.initiate(7, Duration::from_secs(1000), &mut rng, &mut init);
        let msg = Initiation::new_checked(&init[..]).unwrap();
        let consumed = b.consume_initiation(&msg).unwrap();
        assert_eq!(&consumed.peer_static, a.local_public());
        // The precomputed static-static DH gives the state a fresh DH gives.
        let fresh = consume_initiation(b.local_keys(), &msg, None).unwrap();
        assert_eq!(consumed.chaining_key.0, fresh.chaining_key.0);
        assert_eq!(consumed.hash, fresh.hash);
        assert_eq!(consumed.timestamp, fresh.timestamp);
        assert_eq!(
            initiator_static(b.local_keys(), &msg),
            Ok(*a.local_public())
        );
        let mut resp = [0u8; RESPONSE_LEN];
        let kb = b
            .respond(consumed, 9, Duration::ZERO, &mut rng, &mut resp)
            .unwrap();
        let ka = a
            .consume_response(&Response::new_checked(&resp[..]).unwrap())
            .unwrap();
        assert_eq!(ka.send.0, kb.recv.0);
        assert_eq!(ka.recv.0, kb.send.0);
        assert_ne!(ka.send.0, ka.recv.0);
        assert_eq!((ka.local_index, ka.remote_index), (7, 9));
        assert_eq!((kb.local_index, kb.remote_index), (9, 7));
        // Replaying the same initiation is refused by its timestamp.
        let again = consume_initiation(
            b.local_keys(),
            &Initiation::new_checked(&init[..]).unwrap(),
            None,
        )
        .unwrap();
        assert_eq!(
            b.respond(again, 10, Duration::from_secs(1), &mut rng, &mut resp)
                .err(),
            Some(HandshakeError::OldTimestamp)
        );
        // The response cannot be consumed twice.
        assert_eq!(
            a.consume_response(&Response::new_checked(&resp[..]).unwrap())
                .err(),
            Some(HandshakeError::UnexpectedResponse)
        );
    }

    #[test]
    fn psk_mismatch_fails_response() {
        let a = StaticKeys::new([1; 32]);
        let b = StaticKeys::new([2; 32]);
        let (ap, bp) = (a.public, b.public);
        let mut a = Handshake::new(a, bp, Some([1; 32])).unwrap();
        let mut b = Handshake::new(b, ap, Some([2; 32])).unwrap();
        let mut rng = CountingRng(3);
        let mut init = [0u8; INITIATION_LEN];
        a.initiate(7, Duration::from_secs(1000), &mut rng, &mut init);
        let consumed = consume_initiation(
            b.local_keys(),
            &Initiation::new_checked(&init[..]).unwrap(),
            None,
        )
        .unwrap();
        let mut resp = [0u8; RESPONSE_LEN];
        b.respond(consumed, 9, Duration::ZERO, &mut rng, &mut resp)
            .unwrap();
        assert_eq!(
            a.consume_response(&Response::new_checked(&resp[..]).unwrap())
                .err(),
            Some(HandshakeError::Decrypt)
        );
    }

    #[test]
    fn wrong_peer_and_tampering_rejected() {
        let (mut a, _) = pair(None);
        let c = StaticKeys::new([3; 32]);
        let mut c_view = Handshake::new(StaticKeys::new([2; 32]), c.public, None).unwrap();
        let mut rng = CountingRng(3);
        let mut init = [0u8; INITIATION_LEN];
        a.initiate(7, Duration::from_secs(1000), &mut rng, &mut init);
        // The expected peer is c, so the precomputed DH does not apply.
        let consumed = c_view
            .consume_initiation(&Initiation::new_checked(&init[..]).unwrap())
            .unwrap();
        let mut resp = [0u8; RESPONSE_LEN];
        assert_eq!(
            c_view
                .respond(consumed, 1, Duration::ZERO, &mut rng, &mut resp)
                .err(),
            Some(HandshakeError::WrongPeer)
        );
        for i in 8..116 {
            let mut bad = init;
            bad[i] ^= 0x40;
            assert!(
                c_view
                    .consume_initiation(&Initiation::new_checked(&bad[..]).unwrap())
                    .is_err(),
                "byte {i}"
            );
        }
    }

    #[test]
    fn low_order_peer_key_refused() {
        assert_eq!(
            Handshake::new(StaticKeys::new([1; 32]), [0; 32], None).err(),
            Some(HandshakeError::LowOrderKey)
        );
    }
}
