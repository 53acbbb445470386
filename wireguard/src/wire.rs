//! Zero-copy typed views of the four WireGuard messages (paper section 5.4).
//!
//! Each view wraps any `T: AsRef<[u8]>`; `new_checked` validates the length and
//! the type/reserved header so every accessor afterwards is in bounds. Mutable
//! setters exist where `T: AsMut<[u8]>`. No protocol logic lives here.

use crate::crypto::{MAC_LEN, TAG_LEN};

/// Message type of a handshake initiation.
pub const TYPE_INITIATION: u8 = 1;
/// Message type of a handshake response.
pub const TYPE_RESPONSE: u8 = 2;
/// Message type of a cookie reply.
pub const TYPE_COOKIE_REPLY: u8 = 3;
/// Message type of a transport data message.
pub const TYPE_TRANSPORT: u8 = 4;

/// Length of a handshake initiation.
pub const INITIATION_LEN: usize = 148;
/// Length of a handshake response.
pub const RESPONSE_LEN: usize = 92;
/// Length of a cookie reply.
pub const COOKIE_REPLY_LEN: usize = 64;
/// Length of a transport data header (type, receiver, counter).
pub const TRANSPORT_HEADER_LEN: usize = 16;
/// Smallest transport message: header and the tag of an empty (keepalive) payload.
pub const TRANSPORT_MIN_LEN: usize = TRANSPORT_HEADER_LEN + TAG_LEN;

/// Why a datagram is not a well-formed WireGuard message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// Shorter than the header, or not the exact length of its type.
    BadLength,
    /// Unknown message type or non-zero reserved bytes.
    BadType,
}

/// The kind of a message, read from its first four bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// [`Initiation`].
    Initiation,
    /// [`Response`].
    Response,
    /// [`CookieReply`].
    CookieReply,
    /// [`Transport`].
    Transport,
}

/// Classifies a datagram by its header and checks its length for that type.
pub fn classify(datagram: &[u8]) -> Result<MessageKind, WireError> {
    let header = datagram.get(..4).ok_or(WireError::BadLength)?;
    if header[1..] != [0, 0, 0] {
        return Err(WireError::BadType);
    }
    let (kind, ok) = match header[0] {
        TYPE_INITIATION => (MessageKind::Initiation, datagram.len() == INITIATION_LEN),
        TYPE_RESPONSE => (MessageKind::Response, datagram.len() == RESPONSE_LEN),
        TYPE_COOKIE_REPLY => (MessageKind::CookieReply, datagram.len() == COOKIE_REPLY_LEN),
        TYPE_TRANSPORT => (MessageKind::Transport, datagram.len() >= TRANSPORT_MIN_LEN),
        _ => return Err(WireError::BadType),
    };
    if ok {
        Ok(kind)
    } else {
        Err(WireError::BadLength)
    }
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

fn array<const N: usize>(b: &[u8], at: usize) -> &[u8; N] {
    // Lengths were checked by `new_checked`; the conversion cannot fail.
    <&[u8; N]>::try_from(&b[at..at + N]).unwrap_or(&[0u8; N])
}

macro_rules! view {
    ($(#[$doc:meta])* $name:ident, $kind:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy)]
        pub struct $name<T: AsRef<[u8]>> {
            buffer: T,
        }

        impl<T: AsRef<[u8]>> $name<T> {
            /// Wraps `buffer` after checking its header and length.
            pub fn new_checked(buffer: T) -> Result<Self, WireError> {
                if classify(buffer.as_ref())? == $kind {
                    Ok(Self { buffer })
                } else {
                    Err(WireError::BadType)
                }
            }

            /// Wraps a buffer of exactly the message's size, to be filled in.
            /// Crate-internal: accessors on a short buffer would panic.
            pub(crate) fn new_unchecked(buffer: T) -> Self {
                Self { buffer }
            }

            /// The underlying buffer.
            pub fn into_inner(self) -> T {
                self.buffer
            }

            /// The whole message.
            pub fn as_bytes(&self) -> &[u8] {
                self.buffer.as_ref()
            }
        }
    };
}

view!(
    /// Handshake initiation (type 1, 148 bytes).
    Initiation,
    MessageKind::Initiation
);
view!(
    /// Handshake response (type 2, 92 bytes).
    Response,
    MessageKind::Response
);
view!(
    /// Cookie reply (type 3, 64 bytes).
    CookieReply,
    MessageKind::CookieReply
);
view!(
    /// Transport data (type 4, 16-byte header then the encrypted packet and its tag).
    Transport,
    MessageKind::Transport
);

mod initiation {
    pub const SENDER: usize = 4;
    pub const EPHEMERAL: usize = 8;
    pub const STATIC: usize = 40;
    pub const TIMESTAMP: usize = 88;
    pub const MAC1: usize = 116;
    pub const MAC2: usize = 132;
}

mod response {
    pub const SENDER: usize = 4;
    pub const RECEIVER: usize = 8;
    pub const EPHEMERAL: usize = 12;
    pub const EMPTY: usize = 44;
    pub const MAC1: usize = 60;
    pub const MAC2: usize = 76;
}

mod cookie {
    pub const RECEIVER: usize = 4;
    pub const NONCE: usize = 8;
    pub const COOKIE: usize = 32;
}

/// Encrypted static key length (key and tag).
pub const ENCRYPTED_STATIC_LEN: usize = 32 + TAG_LEN;
/// Encrypted TAI64N timestamp length (timestamp and tag).
pub const ENCRYPTED_TIMESTAMP_LEN: usize = 12 + TAG_LEN;
/// Encrypted cookie length (cookie and tag).
pub const ENCRYPTED_COOKIE_LEN: usize = MAC_LEN + TAG_LEN;

impl<T: AsRef<[u8]>> Initiation<T> {
    /// The initiator's index for this handshake.
    pub fn sender(&self) -> u32 {
        read_u32(self.buffer.as_ref(), initiation::SENDER)
    }
    /// The initiator's ephemeral public key.
    pub fn ephemeral(&self) -> &[u8; 32] {
        array(self.buffer.as_ref(), initiation::EPHEMERAL)
    }
    /// The initiator's encrypted static public key.
    pub fn encrypted_static(&self) -> &[u8; ENCRYPTED_STATIC_LEN] {
        array(self.buffer.as_ref(), initiation::STATIC)
    }
    /// The encrypted TAI64N timestamp.
    pub fn encrypted_timestamp(&self) -> &[u8; ENCRYPTED_TIMESTAMP_LEN] {
        array(self.buffer.as_ref(), initiation::TIMESTAMP)
    }
    /// mac1.
    pub fn mac1(&self) -> &[u8; MAC_LEN] {
        array(self.buffer.as_ref(), initiation::MAC1)
    }
    /// mac2.
    pub fn mac2(&self) -> &[u8; MAC_LEN] {
        array(self.buffer.as_ref(), initiation::MAC2)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Initiation<T> {
    /// Writes the type and reserved bytes.
    pub fn fill_header(&mut self) {
        self.buffer.as_mut()[..4].copy_from_slice(&[TYPE_INITIATION, 0, 0, 0]);
    }
    /// Sets the sender index.
    pub fn set_sender(&mut self, v: u32) {
        self.buffer.as_mut()[initiation::SENDER..initiation::SENDER + 4]
            .copy_from_slice(&v.to_le_bytes());
    }
    /// Sets the ephemeral public key.
    pub fn set_ephemeral(&mut self, v: &[u8; 32]) {
        self.buffer.as_mut()[initiation::EPHEMERAL..initiation::STATIC].copy_from_slice(v);
    }
    /// Mutable encrypted static field (sealed in place).
    pub fn encrypted_static_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[initiation::STATIC..initiation::TIMESTAMP]
    }
    /// Mutable encrypted timestamp field (sealed in place).
    pub fn encrypted_timestamp_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[initiation::TIMESTAMP..initiation::MAC1]
    }
}

impl<T: AsRef<[u8]>> Response<T> {
    /// The responder's index.
    pub fn sender(&self) -> u32 {
        read_u32(self.buffer.as_ref(), response::SENDER)
    }
    /// The initiator's index, echoed.
    pub fn receiver(&self) -> u32 {
        read_u32(self.buffer.as_ref(), response::RECEIVER)
    }
    /// The responder's ephemeral public key.
    pub fn ephemeral(&self) -> &[u8; 32] {
        array(self.buffer.as_ref(), response::EPHEMERAL)
    }
    /// The encrypted empty payload (only a tag).
    pub fn encrypted_empty(&self) -> &[u8; TAG_LEN] {
        array(self.buffer.as_ref(), response::EMPTY)
    }
    /// mac1.
    pub fn mac1(&self) -> &[u8; MAC_LEN] {
        array(self.buffer.as_ref(), response::MAC1)
    }
    /// mac2.
    pub fn mac2(&self) -> &[u8; MAC_LEN] {
        array(self.buffer.as_ref(), response::MAC2)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Response<T> {
    /// Writes the type and reserved bytes.
    pub fn fill_header(&mut self) {
        self.buffer.as_mut()[..4].copy_from_slice(&[TYPE_RESPONSE, 0, 0, 0]);
    }
    /// Sets the sender index.
    pub fn set_sender(&mut self, v: u32) {
        self.buffer.as_mut()[response::SENDER..response::SENDER + 4]
            .copy_from_slice(&v.to_le_bytes());
    }
    /// Sets the receiver index.
    pub fn set_receiver(&mut self, v: u32) {
        self.buffer.as_mut()[response::RECEIVER..response::RECEIVER + 4]
            .copy_from_slice(&v.to_le_bytes());
    }
    /// Sets the ephemeral public key.
    pub fn set_ephemeral(&mut self, v: &[u8; 32]) {
        self.buffer.as_mut()[response::EPHEMERAL..response::EMPTY].copy_from_slice(v);
    }
    /// Mutable encrypted empty field (sealed in place).
    pub fn encrypted_empty_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[response::EMPTY..response::MAC1]
    }
}

impl<T: AsRef<[u8]>> CookieReply<T> {
    /// The index of the handshake message this answers.
    pub fn receiver(&self) -> u32 {
        read_u32(self.buffer.as_ref(), cookie::RECEIVER)
    }
    /// The XChaCha20 nonce.
    pub fn nonce(&self) -> &[u8; 24] {
        array(self.buffer.as_ref(), cookie::NONCE)
    }
    /// The encrypted cookie and its tag.
    pub fn encrypted_cookie(&self) -> &[u8; ENCRYPTED_COOKIE_LEN] {
        array(self.buffer.as_ref(), cookie::COOKIE)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> CookieReply<T> {
    /// Writes the type and reserved bytes.
    pub fn fill_header(&mut self) {
        self.buffer.as_mut()[..4].copy_from_slice(&[TYPE_COOKIE_REPLY, 0, 0, 0]);
    }
    /// Sets the receiver index.
    pub fn set_receiver(&mut self, v: u32) {
        self.buffer.as_mut()[cookie::RECEIVER..cookie::RECEIVER + 4]
            .copy_from_slice(&v.to_le_bytes());
    }
    /// Sets the nonce.
    pub fn set_nonce(&mut self, v: &[u8; 24]) {
        self.buffer.as_mut()[cookie::NONCE..cookie::COOKIE].copy_from_slice(v);
    }
    /// Mutable encrypted cookie field (sealed in place).
    pub fn encrypted_cookie_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[cookie::COOKIE..COOKIE_REPLY_LEN]
    }
}

impl<T: AsRef<[u8]>> Transport<T> {
    /// The receiver's session index.
    pub fn receiver(&self) -> u32 {
        read_u32(self.buffer.as_ref(), 4)
    }
    /// The 64-bit nonce counter.
    pub fn counter(&self) -> u64 {
        let mut v = [0u8; 8];
        v.copy_from_slice(&self.buffer.as_ref()[8..16]);
        u64::from_le_bytes(v)
    }
    /// Encrypted packet and tag.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[TRANSPORT_HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Transport<T> {
    /// Writes the type, receiver and counter.
    pub fn fill_header(&mut self, receiver: u32, counter: u64) {
        let b = self.buffer.as_mut();
        b[..4].copy_from_slice(&[TYPE_TRANSPORT, 0, 0, 0]);
        b[4..8].copy_from_slice(&receiver.to_le_bytes());
        b[8..16].copy_from_slice(&counter.to_le_bytes());
    }
    /// Mutable encrypted packet and tag.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[TRANSPORT_HEADER_LEN..]
    }
}

/// Offset of mac1 in a handshake message of length `len` (initiation or response):
/// mac1 covers everything before it, mac2 everything before mac2.
pub fn mac1_offset(len: usize) -> usize {
    len - 2 * MAC_LEN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_checks_lengths_and_reserved() {
        let mut init = [0u8; INITIATION_LEN];
        init[0] = 1;
        assert_eq!(classify(&init), Ok(MessageKind::Initiation));
        assert_eq!(classify(&init[..147]), Err(WireError::BadLength));
        init[2] = 1;
        assert_eq!(classify(&init), Err(WireError::BadType));
        let mut resp = [0u8; RESPONSE_LEN];
        resp[0] = 2;
        assert_eq!(classify(&resp), Ok(MessageKind::Response));
        let mut c = [0u8; COOKIE_REPLY_LEN];
        c[0] = 3;
        assert_eq!(classify(&c), Ok(MessageKind::CookieReply));
        let mut t = [0u8; TRANSPORT_MIN_LEN];
        t[0] = 4;
        assert_eq!(classify(&t), Ok(MessageKind::Transport));
        assert_eq!(classify(&t[..31]), Err(WireError::BadLength));
        assert_eq!(classify(&[5, 0, 0, 0]), Err(WireError::BadType));
        assert_eq!(classify(&[1, 0]), Err(WireError::BadLength));
        assert_eq!(classify(&[]), Err(WireError::BadLength));
    }

    #[test]
    fn transport_fields_round_trip() {
        let mut buf = [0u8; 40];
        let mut t = Transport::new_unchecked(&mut buf[..]);
        t.fill_header(0xdeadbeef, 0x0102030405060708);
        let t = Transport::new_checked(&buf[..]).unwrap();
        assert_eq!(t.receiver(), 0xdeadbeef);
        assert_eq!(t.counter(), 0x0102030405060708);
        assert_eq!(t.payload().len(), 24);
        assert!(Initiation::new_checked(&buf[..]).is_err());
    }

    #[test]
    fn initiation_fields_round_trip() {
        let mut buf = [0u8; INITIATION_LEN];
        let mut m = Initiation::new_unchecked(&mut buf[..]);
        m.fill_header();
        m.set_sender(7);
        m.set_ephemeral(&[9; 32]);
        m.encrypted_static_mut().fill(3);
        let m = Initiation::new_checked(&buf[..]).unwrap();
        assert_eq!(m.sender(), 7);
        assert_eq!(m.ephemeral(), &[9; 32]);
        assert_eq!(m.encrypted_static(), &[3; 48]);
        assert_eq!(m.encrypted_timestamp(), &[0; 28]);
    }
}
