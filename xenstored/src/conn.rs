//! One domain's byte stream, free of rings: requests are assembled from
//! whatever bytes the transport has (a shared ring later, a mock in tests),
//! replies and watch events wait in a bounded queue until the transport
//! takes them.

use crate::decode::Header;
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use xen::abi::xs_wire::XsdSockmsgType;
use xen::xenstore::wire::{WireError, HEADER_LEN};

/// Why a connection no longer works.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnError {
    /// The client announced a payload above `XENSTORE_PAYLOAD_MAX`: the
    /// protocol says the connection is then killed (the shared page's
    /// `error` field gets `XENSTORE_ERROR_PROTO`).
    PayloadTooLarge(u32),
    /// No such connection.
    NotConnected,
    /// The client published ring indices with more bytes in flight than
    /// the ring holds (`XENSTORE_ERROR_RINGIDX`).
    BadRingIndex,
}

#[derive(Debug)]
struct Outgoing {
    bytes: Vec<u8>,
    reply: bool,
}

/// Build a whole message.
pub fn message(kind: XsdSockmsgType, req_id: u32, tx_id: u32, payload: &[&[u8]]) -> Vec<u8> {
    let len: usize = payload.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(HEADER_LEN + len);
    for word in [kind as u32, req_id, tx_id, len as u32] {
        out.extend_from_slice(&word.to_ne_bytes());
    }
    for part in payload {
        out.extend_from_slice(part);
    }
    out
}

/// A domain's connection state.
#[derive(Debug, Default)]
pub struct Connection {
    input: Vec<u8>,
    header: Option<Header>,
    output: VecDeque<Outgoing>,
    sent: usize,
    queued: usize,
    outstanding: u32,
    broken: Option<ConnError>,
}

impl Connection {
    /// A fresh connection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Why it is broken, if it is.
    pub fn broken(&self) -> Option<ConnError> {
        self.broken
    }

    /// Replies queued and not yet fully taken.
    pub fn outstanding(&self) -> u32 {
        self.outstanding
    }

    /// Bytes queued for the client (not yet taken).
    pub fn queued_bytes(&self) -> usize {
        self.queued - self.sent
    }

    /// Messages queued (the first possibly partly taken).
    pub fn queued_messages(&self) -> usize {
        self.output.len()
    }

    /// How many more bytes complete the piece being read (the header, or
    /// the payload it announced); 0 once broken. A transport that gives
    /// at most this many never gives bytes the connection cannot take.
    pub fn wants(&self) -> usize {
        if self.broken.is_some() {
            return 0;
        }
        let total = HEADER_LEN + self.header.map_or(0, |h| h.len as usize);
        total - self.input.len()
    }

    /// Take bytes of a request from `bytes`: returns how many were used
    /// and, once one is whole, the request (header and payload). An
    /// oversized header breaks the connection.
    pub fn take(&mut self, bytes: &[u8]) -> Result<(usize, Option<Vec<u8>>), ConnError> {
        if let Some(err) = self.broken {
            return Err(err);
        }
        let mut used = 0;
        if self.header.is_none() {
            let want = HEADER_LEN - self.input.len();
            let n = want.min(bytes.len());
            self.input.extend_from_slice(&bytes[..n]);
            used = n;
            if self.input.len() < HEADER_LEN {
                return Ok((used, None));
            }
            match Header::parse(&self.input) {
                Ok(h) => self.header = Some(h),
                Err(WireError::PayloadTooLarge(len)) => {
                    self.broken = Some(ConnError::PayloadTooLarge(len));
                    self.input.clear();
                    return Err(ConnError::PayloadTooLarge(len));
                }
                Err(WireError::Truncated) => return Ok((used, None)),
            }
        }
        let total = HEADER_LEN + self.header.map_or(0, |h| h.len as usize);
        let n = (total - self.input.len()).min(bytes.len() - used);
        self.input.extend_from_slice(&bytes[used..used + n]);
        used += n;
        if self.input.len() < total {
            return Ok((used, None));
        }
        self.header = None;
        Ok((used, Some(core::mem::take(&mut self.input))))
    }

    /// Queue a reply (never dropped: the outstanding quota bounds them).
    pub fn queue_reply(&mut self, bytes: Vec<u8>) {
        self.queued += bytes.len();
        self.outstanding += 1;
        self.output.push_back(Outgoing { bytes, reply: true });
    }

    /// Queue a watch event unless the queue would exceed `limit` bytes
    /// (`false`: dropped) or the same event is already waiting (`true`,
    /// nothing queued, as C xenstored folds duplicates).
    pub fn queue_event(&mut self, bytes: Vec<u8>, limit: usize) -> bool {
        let special = bytes.get(HEADER_LEN) == Some(&b'@');
        if !special
            && self
                .output
                .iter()
                .skip(usize::from(self.sent > 0))
                .any(|o| !o.reply && o.bytes == bytes)
        {
            return true;
        }
        if self.queued_bytes() + bytes.len() > limit {
            return false;
        }
        self.queued += bytes.len();
        self.output.push_back(Outgoing {
            bytes,
            reply: false,
        });
        true
    }

    /// Copy queued bytes into `buf` without taking them; returns how many.
    pub fn peek(&self, buf: &mut [u8]) -> usize {
        let mut done = 0;
        let mut skip = self.sent;
        for out in &self.output {
            if done == buf.len() {
                break;
            }
            let rest = &out.bytes[skip..];
            skip = 0;
            let n = rest.len().min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&rest[..n]);
            done += n;
        }
        done
    }

    /// Take `n` queued bytes (after [`peek`](Self::peek) showed them).
    pub fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.output.front() else {
                break;
            };
            let step = (front.bytes.len() - self.sent).min(n);
            self.sent += step;
            n -= step;
            if self.sent == front.bytes.len() {
                if front.reply {
                    self.outstanding -= 1;
                }
                self.queued -= front.bytes.len();
                self.sent = 0;
                self.output.pop_front();
            }
        }
    }

    /// Copy queued bytes into `buf` and take them; returns how many.
    pub fn transmit(&mut self, buf: &mut [u8]) -> usize {
        let n = self.peek(buf);
        self.advance(n);
        n
    }

    /// Mark the connection broken (the transport found the client's ring
    /// indices impossible).
    pub fn cut(&mut self, err: ConnError) {
        self.broken = Some(err);
        self.input.clear();
        self.header = None;
    }

    /// Forget partial input and queued output (a reintroduced domain).
    pub fn reset(&mut self) {
        *self = Self::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_assemble_from_any_split() {
        let msg = message(XsdSockmsgType::Read, 7, 0, &[b"/a\0"]);
        for split in 0..=msg.len() {
            let mut c = Connection::new();
            let (n, none) = c.take(&msg[..split]).unwrap();
            assert_eq!(n, split);
            let got = if split == msg.len() {
                none
            } else {
                assert!(none.is_none());
                c.take(&msg[split..]).unwrap().1
            };
            assert_eq!(got.as_deref(), Some(&msg[..]));
        }
        // Two messages in one buffer: one at a time.
        let mut two = msg.clone();
        two.extend_from_slice(&msg);
        let mut c = Connection::new();
        let (n, got) = c.take(&two).unwrap();
        assert_eq!((n, got.as_deref()), (msg.len(), Some(&msg[..])));
    }

    #[test]
    fn an_oversized_header_breaks_the_connection() {
        let mut msg = message(XsdSockmsgType::Read, 7, 0, &[]);
        msg[12..16].copy_from_slice(&5000u32.to_ne_bytes());
        let mut c = Connection::new();
        assert_eq!(c.take(&msg), Err(ConnError::PayloadTooLarge(5000)));
        assert_eq!(c.take(b"x"), Err(ConnError::PayloadTooLarge(5000)));
    }

    #[test]
    fn output_is_bounded_and_counted() {
        let mut c = Connection::new();
        c.queue_reply(message(XsdSockmsgType::Read, 1, 0, &[b"x"]));
        assert_eq!(c.outstanding(), 1);
        let ev = message(XsdSockmsgType::WatchEvent, 0, 0, &[b"/a\0t\0"]);
        assert!(c.queue_event(ev.clone(), 64));
        assert!(c.queue_event(ev.clone(), 64)); // folded
        assert_eq!(c.queued_messages(), 2);
        let ev2 = message(XsdSockmsgType::WatchEvent, 0, 0, &[b"/b/c/d/e/f/g/h\0t\0"]);
        assert!(!c.queue_event(ev2, 64));
        let mut buf = [0u8; 5];
        assert_eq!(c.transmit(&mut buf), 5);
        assert_eq!(c.outstanding(), 1);
        let mut rest = [0u8; 100];
        let n = c.transmit(&mut rest);
        assert_eq!(n + 5, 17 + ev.len());
        assert_eq!((c.outstanding(), c.queued_bytes()), (0, 0));
    }
}
