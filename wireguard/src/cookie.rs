//! mac1, mac2 and cookies (paper section 5.4.4 and 5.4.7): the DoS defence.
//!
//! [`MacSender`] stamps our outgoing handshake messages and remembers the
//! cookie a peer gave us. [`MacVerifier`] checks incoming ones and, when the
//! caller says it is under load, demands a valid mac2 or answers with a cookie
//! reply that binds a cookie to the sender's address.

use core::net::SocketAddr;
use core::time::Duration;

use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::crypto::{self, HASH_LEN, MAC_LEN};
use crate::timers::COOKIE_REFRESH_TIME;
use crate::wire::{self, CookieReply, COOKIE_REPLY_LEN};
use crate::Random;

const LABEL_MAC1: &[u8] = b"mac1----";
const LABEL_COOKIE: &[u8] = b"cookie--";

/// HASH(LABEL_MAC1 || public): the key of mac1 on messages sent to `public`.
pub fn mac1_key(public: &[u8; 32]) -> [u8; HASH_LEN] {
    crypto::hash(&[LABEL_MAC1, public])
}

/// HASH(LABEL_COOKIE || public): the key of cookie replies sent by `public`.
pub fn cookie_key(public: &[u8; 32]) -> [u8; HASH_LEN] {
    crypto::hash(&[LABEL_COOKIE, public])
}

/// The bytes of a source address that a cookie is bound to (IP then port).
fn address_bytes(addr: &SocketAddr, out: &mut [u8; 18]) -> usize {
    match addr {
        SocketAddr::V4(a) => {
            out[..4].copy_from_slice(&a.ip().octets());
            out[4..6].copy_from_slice(&a.port().to_be_bytes());
            6
        }
        SocketAddr::V6(a) => {
            out[..16].copy_from_slice(&a.ip().octets());
            out[16..18].copy_from_slice(&a.port().to_be_bytes());
            18
        }
    }
}

/// Outgoing side: computes mac1/mac2 for handshake messages sent to one peer.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct MacSender {
    mac1_key: [u8; HASH_LEN],
    cookie_key: [u8; HASH_LEN],
    cookie: [u8; MAC_LEN],
    #[zeroize(skip)]
    cookie_received: Option<Duration>,
    last_mac1: Option<[u8; MAC_LEN]>,
}

impl MacSender {
    /// For messages sent to the peer with static public key `peer`.
    pub fn new(peer: &[u8; 32]) -> Self {
        Self {
            mac1_key: mac1_key(peer),
            cookie_key: cookie_key(peer),
            cookie: [0; MAC_LEN],
            cookie_received: None,
            last_mac1: None,
        }
    }

    /// Fills the last 32 bytes of a handshake message: mac1 always, mac2 from a
    /// cookie younger than [`COOKIE_REFRESH_TIME`], zeros otherwise.
    pub fn stamp(&mut self, message: &mut [u8], now: Duration) {
        let off = wire::mac1_offset(message.len());
        let mac1 = crypto::mac(&self.mac1_key, &message[..off]);
        message[off..off + MAC_LEN].copy_from_slice(&mac1);
        self.last_mac1 = Some(mac1);
        let fresh = self
            .cookie_received
            .is_some_and(|t| now.saturating_sub(t) < COOKIE_REFRESH_TIME);
        let mac2 = if fresh {
            crypto::mac(&self.cookie, &message[..off + MAC_LEN])
        } else {
            [0; MAC_LEN]
        };
        message[off + MAC_LEN..off + 2 * MAC_LEN].copy_from_slice(&mac2);
    }

    /// Accepts a cookie reply to the last message we stamped.
    pub fn consume_reply<T: AsRef<[u8]>>(
        &mut self,
        reply: &CookieReply<T>,
        now: Duration,
    ) -> Result<(), crypto::AuthFailed> {
        let aad = self.last_mac1.ok_or(crypto::AuthFailed)?;
        let mut buf = *reply.encrypted_cookie();
        crypto::xopen(&self.cookie_key, reply.nonce(), &aad, &mut buf)?;
        self.cookie.copy_from_slice(&buf[..MAC_LEN]);
        self.cookie_received = Some(now);
        buf.zeroize();
        Ok(())
    }
}

/// Why an incoming handshake message was not accepted by [`MacVerifier`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacCheck {
    /// mac1 is wrong: the sender does not know our public key; drop silently.
    BadMac1,
    /// We are under load and mac2 is missing or wrong: answer with the cookie
    /// reply written to the output buffer (its length is [`COOKIE_REPLY_LEN`]).
    CookieReplyWritten,
}

/// Incoming side: verifies mac1/mac2 of handshake messages sent to us.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct MacVerifier {
    mac1_key: [u8; HASH_LEN],
    cookie_key: [u8; HASH_LEN],
    secret: [u8; HASH_LEN],
    #[zeroize(skip)]
    secret_born: Option<Duration>,
}

impl MacVerifier {
    /// For messages sent to us, whose static public key is `local`.
    pub fn new(local: &[u8; 32]) -> Self {
        Self {
            mac1_key: mac1_key(local),
            cookie_key: cookie_key(local),
            secret: [0; HASH_LEN],
            secret_born: None,
        }
    }

    /// The cookie of `src`: MAC(secret, address), rotating the secret every two minutes.
    fn cookie(&mut self, src: &SocketAddr, now: Duration, rng: &mut dyn Random) -> [u8; MAC_LEN] {
        let stale = self
            .secret_born
            .is_none_or(|t| now.saturating_sub(t) >= COOKIE_REFRESH_TIME);
        if stale {
            rng.fill(&mut self.secret);
            self.secret_born = Some(now);
        }
        let mut a = [0u8; 18];
        let n = address_bytes(src, &mut a);
        crypto::mac(&self.secret, &a[..n])
    }

    /// Checks a handshake message (initiation or response). `under_load_from`
    /// is the sender's address when we are under load (`None` otherwise): then
    /// mac2 must be valid for that address, or a cookie reply is written into
    /// `reply_out`.
    pub fn verify(
        &mut self,
        message: &[u8],
        sender_index: u32,
        under_load_from: Option<&SocketAddr>,
        now: Duration,
        rng: &mut dyn Random,
        reply_out: &mut [u8; COOKIE_REPLY_LEN],
    ) -> Result<(), MacCheck> {
        let off = wire::mac1_offset(message.len());
        let mut mac1 = [0u8; MAC_LEN];
        mac1.copy_from_slice(&message[off..off + MAC_LEN]);
        let expect = crypto::mac(&self.mac1_key, &message[..off]);
        if !crypto::mac_eq(&mac1, &expect) {
            return Err(MacCheck::BadMac1);
        }
        let Some(src) = under_load_from else {
            return Ok(());
        };
        let cookie = self.cookie(src, now, rng);
        let mut mac2 = [0u8; MAC_LEN];
        mac2.copy_from_slice(&message[off + MAC_LEN..off + 2 * MAC_LEN]);
        if crypto::mac_eq(&mac2, &crypto::mac(&cookie, &message[..off + MAC_LEN])) {
            return Ok(());
        }
        let mut nonce = [0u8; 24];
        rng.fill(&mut nonce);
        let mut reply = CookieReply::new_unchecked(&mut reply_out[..]);
        reply.fill_header();
        reply.set_receiver(sender_index);
        reply.set_nonce(&nonce);
        let field = reply.encrypted_cookie_mut();
        field[..MAC_LEN].copy_from_slice(&cookie);
        crypto::xseal(&self.cookie_key, &nonce, &mac1, field);
        Err(MacCheck::CookieReplyWritten)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests_support::CountingRng;

    #[test]
    fn cookie_round_trip_makes_mac2_valid() {
        let responder_pub = [5u8; 32];
        let mut sender = MacSender::new(&responder_pub);
        let mut verifier = MacVerifier::new(&responder_pub);
        let mut rng = CountingRng(1);
        let src: SocketAddr = "192.0.2.1:51820".parse().unwrap();
        let mut msg = [0u8; wire::INITIATION_LEN];
        msg[0] = 1;
        let now = Duration::from_secs(10);
        sender.stamp(&mut msg, now);
        let mut reply = [0u8; COOKIE_REPLY_LEN];
        // Not under load: mac1 suffices.
        assert_eq!(
            verifier.verify(&msg, 1, None, now, &mut rng, &mut reply),
            Ok(())
        );
        // Under load: a cookie reply comes back.
        assert_eq!(
            verifier.verify(&msg, 1, Some(&src), now, &mut rng, &mut reply),
            Err(MacCheck::CookieReplyWritten)
        );
        let r = CookieReply::new_checked(&reply[..]).unwrap();
        assert_eq!(r.receiver(), 1);
        sender.consume_reply(&r, now).unwrap();
        sender.stamp(&mut msg, now);
        assert_eq!(
            verifier.verify(&msg, 1, Some(&src), now, &mut rng, &mut reply),
            Ok(())
        );
        // The cookie is bound to the address.
        let other: SocketAddr = "192.0.2.2:51820".parse().unwrap();
        assert_eq!(
            verifier.verify(&msg, 1, Some(&other), now, &mut rng, &mut reply),
            Err(MacCheck::CookieReplyWritten)
        );
        // And expires on the sender side.
        sender.stamp(&mut msg, now + COOKIE_REFRESH_TIME);
        assert_eq!(&msg[132..], &[0u8; 16]);
        // A corrupted mac1 is rejected.
        msg[116] ^= 1;
        assert_eq!(
            verifier.verify(&msg, 1, None, now, &mut rng, &mut reply),
            Err(MacCheck::BadMac1)
        );
    }

    #[test]
    fn forged_cookie_reply_rejected() {
        let mut sender = MacSender::new(&[5u8; 32]);
        let mut msg = [0u8; wire::RESPONSE_LEN];
        sender.stamp(&mut msg, Duration::ZERO);
        let mut reply = [0u8; COOKIE_REPLY_LEN];
        reply[0] = 3;
        let r = CookieReply::new_checked(&reply[..]).unwrap();
        assert!(sender.consume_reply(&r, Duration::ZERO).is_err());
    }
}
