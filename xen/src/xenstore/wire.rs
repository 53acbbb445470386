//! The xenstore message format: a 16-byte `xsd_sockmsg` header (four
//! native-endian `u32`s: type, request id, transaction id, payload length)
//! followed by the payload, usually NUL-terminated strings.
//!
//! [`Message`] is a zero-copy typed view over a byte buffer; building and
//! splitting payloads are plain functions beside it.

use super::error::{ProtocolError, XsError};
use crate::abi::xs_wire::{XsdSockmsgType, XENSTORE_ABS_PATH_MAX, XENSTORE_PAYLOAD_MAX};
use alloc::string::String;
use alloc::vec::Vec;
use core::mem::{offset_of, size_of};

use crate::abi::xs_wire::XsdSockmsg;

/// Length of the message header.
pub const HEADER_LEN: usize = size_of::<XsdSockmsg>();

const TYPE: usize = offset_of!(XsdSockmsg, type_);
const REQ_ID: usize = offset_of!(XsdSockmsg, req_id);
const TX_ID: usize = offset_of!(XsdSockmsg, tx_id);
const LEN: usize = offset_of!(XsdSockmsg, len);

/// Why a buffer is not a whole message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// Shorter than the header, or than header plus announced payload.
    Truncated,
    /// The header announces more than `XENSTORE_PAYLOAD_MAX` bytes.
    PayloadTooLarge(u32),
}

impl From<WireError> for XsError {
    fn from(err: WireError) -> Self {
        match err {
            WireError::Truncated => XsError::Protocol(ProtocolError::MalformedReply),
            WireError::PayloadTooLarge(n) => XsError::Protocol(ProtocolError::PayloadTooLarge(n)),
        }
    }
}

/// A typed view of one xenstore message in `buffer`.
#[derive(Clone, Copy, Debug)]
pub struct Message<T: AsRef<[u8]>> {
    buffer: T,
}

fn get_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    if let Some(src) = bytes.get(at..at + 4) {
        word.copy_from_slice(src);
    }
    u32::from_ne_bytes(word)
}

impl<T: AsRef<[u8]>> Message<T> {
    /// Wrap `buffer` without checking it; accessors on a short buffer read
    /// missing bytes as zero and never panic, but call
    /// [`check_len`](Self::check_len) before trusting them.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wrap `buffer` after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let message = Self::new_unchecked(buffer);
        message.check_len()?;
        Ok(message)
    }

    /// Check the header is present, its length within
    /// `XENSTORE_PAYLOAD_MAX`, and the whole payload present.
    pub fn check_len(&self) -> Result<(), WireError> {
        let bytes = self.buffer.as_ref();
        if bytes.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let len = self.payload_len();
        if len as usize > XENSTORE_PAYLOAD_MAX {
            return Err(WireError::PayloadTooLarge(len));
        }
        if bytes.len() < HEADER_LEN + len as usize {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    /// The raw message type.
    pub fn raw_type(&self) -> u32 {
        get_u32(self.buffer.as_ref(), TYPE)
    }

    /// The message type, if it is a known one.
    pub fn kind(&self) -> Option<XsdSockmsgType> {
        XsdSockmsgType::from_u32(self.raw_type())
    }

    /// The request id.
    pub fn req_id(&self) -> u32 {
        get_u32(self.buffer.as_ref(), REQ_ID)
    }

    /// The transaction id (0 outside a transaction).
    pub fn tx_id(&self) -> u32 {
        get_u32(self.buffer.as_ref(), TX_ID)
    }

    /// The announced payload length.
    pub fn payload_len(&self) -> u32 {
        get_u32(self.buffer.as_ref(), LEN)
    }

    /// Header plus announced payload, in bytes.
    pub fn total_len(&self) -> usize {
        HEADER_LEN + self.payload_len() as usize
    }

    /// The payload (empty or short if the buffer is; see `check_len`).
    pub fn payload(&self) -> &[u8] {
        let bytes = self.buffer.as_ref();
        let end = self.total_len().min(bytes.len());
        bytes.get(HEADER_LEN..end).unwrap_or(&[])
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Message<T> {
    fn set_u32(&mut self, at: usize, value: u32) {
        if let Some(dst) = self.buffer.as_mut().get_mut(at..at + 4) {
            dst.copy_from_slice(&value.to_ne_bytes());
        }
    }

    /// Set the message type.
    pub fn set_type(&mut self, kind: XsdSockmsgType) {
        self.set_u32(TYPE, kind as u32)
    }

    /// Set the request id.
    pub fn set_req_id(&mut self, id: u32) {
        self.set_u32(REQ_ID, id)
    }

    /// Set the transaction id.
    pub fn set_tx_id(&mut self, id: u32) {
        self.set_u32(TX_ID, id)
    }

    /// Set the announced payload length.
    pub fn set_payload_len(&mut self, len: u32) {
        self.set_u32(LEN, len)
    }

    /// The payload, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = self.total_len().min(self.buffer.as_ref().len());
        self.buffer
            .as_mut()
            .get_mut(HEADER_LEN..end)
            .unwrap_or(&mut [])
    }
}

/// One argument of a request payload.
#[derive(Clone, Copy, Debug)]
pub enum Arg<'a> {
    /// A path or token: checked for NULs and length, sent NUL-terminated.
    Str(&'a str),
    /// Raw bytes sent as they are (the value of `XS_WRITE`, last).
    Raw(&'a [u8]),
}

/// Build a whole request message.
pub fn build_request(
    kind: XsdSockmsgType,
    req_id: u32,
    tx_id: u32,
    args: &[Arg<'_>],
) -> Result<Vec<u8>, XsError> {
    let mut len = 0usize;
    for arg in args {
        len += match arg {
            Arg::Str(s) => {
                if s.as_bytes().contains(&0) {
                    return Err(XsError::NulInArgument);
                }
                if s.len() > XENSTORE_ABS_PATH_MAX {
                    return Err(XsError::RequestTooLarge);
                }
                s.len() + 1
            }
            Arg::Raw(bytes) => bytes.len(),
        };
    }
    if len > XENSTORE_PAYLOAD_MAX {
        return Err(XsError::RequestTooLarge);
    }
    let mut buf = Vec::with_capacity(HEADER_LEN + len);
    buf.resize(HEADER_LEN, 0);
    for arg in args {
        match arg {
            Arg::Str(s) => {
                buf.extend_from_slice(s.as_bytes());
                buf.push(0);
            }
            Arg::Raw(bytes) => buf.extend_from_slice(bytes),
        }
    }
    let mut message = Message::new_unchecked(&mut buf[..]);
    message.set_type(kind);
    message.set_req_id(req_id);
    message.set_tx_id(tx_id);
    message.set_payload_len(len as u32);
    Ok(buf)
}

/// Split a payload of NUL-terminated strings (a directory listing, a watch
/// event). A final string without its NUL is accepted; an empty payload is
/// an empty list.
pub fn split_strings(payload: &[u8]) -> impl Iterator<Item = &[u8]> {
    let body = payload.strip_suffix(&[0]).unwrap_or(payload);
    let mut parts = body.split(|b| *b == 0);
    let empty = body.is_empty();
    core::iter::from_fn(move || if empty { None } else { parts.next() })
}

/// The payload as one string, without its NUL terminator if any.
pub fn payload_str(payload: &[u8]) -> Result<String, XsError> {
    let body = payload.strip_suffix(&[0]).unwrap_or(payload);
    core::str::from_utf8(body)
        .map(String::from)
        .map_err(|_| XsError::Protocol(ProtocolError::NotUtf8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let buf = build_request(
            XsdSockmsgType::Write,
            7,
            9,
            &[Arg::Str("a/b"), Arg::Raw(b"xyz")],
        )
        .unwrap();
        let m = Message::new_checked(&buf[..]).unwrap();
        assert_eq!(m.kind(), Some(XsdSockmsgType::Write));
        assert_eq!((m.req_id(), m.tx_id(), m.payload_len()), (7, 9, 7));
        assert_eq!(m.payload(), b"a/b\0xyz");
        assert_eq!(&buf[..4], &11u32.to_ne_bytes());
    }

    #[test]
    fn check_len_rejects_short_and_oversized() {
        assert_eq!(
            Message::new_checked(&[0u8; 15][..]).err(),
            Some(WireError::Truncated)
        );
        let mut buf = [0u8; 20];
        Message::new_unchecked(&mut buf[..]).set_payload_len(5);
        assert_eq!(
            Message::new_checked(&buf[..]).err(),
            Some(WireError::Truncated)
        );
        Message::new_unchecked(&mut buf[..]).set_payload_len(4097);
        assert_eq!(
            Message::new_checked(&buf[..]).err(),
            Some(WireError::PayloadTooLarge(4097))
        );
        let m = Message::new_unchecked(&buf[..3]);
        assert_eq!((m.raw_type(), m.payload()), (0, &[][..]));
    }

    #[test]
    fn requests_are_bounded() {
        let big = alloc::vec![b'a'; 4096];
        assert_eq!(
            build_request(
                XsdSockmsgType::Write,
                1,
                0,
                &[Arg::Str("p"), Arg::Raw(&big)]
            ),
            Err(XsError::RequestTooLarge)
        );
        assert_eq!(
            build_request(XsdSockmsgType::Read, 1, 0, &[Arg::Str("a\0b")]),
            Err(XsError::NulInArgument)
        );
        assert!(build_request(
            XsdSockmsgType::Write,
            1,
            0,
            &[Arg::Str("p"), Arg::Raw(&big[..4094])]
        )
        .is_ok());
    }

    #[test]
    fn strings_split() {
        let v: Vec<&[u8]> = split_strings(b"a\0bc\0").collect();
        assert_eq!(v, [&b"a"[..], b"bc"]);
        assert_eq!(split_strings(b"").count(), 0);
        assert_eq!(split_strings(b"\0").count(), 0);
        let v: Vec<&[u8]> = split_strings(b"x\0y").collect();
        assert_eq!(v, [&b"x"[..], b"y"]);
    }

    #[test]
    fn every_error_name_parses_and_unknown_ones_are_bounded() {
        for name in [
            "EINVAL",
            "EACCES",
            "EEXIST",
            "EISDIR",
            "ENOENT",
            "ENOMEM",
            "ENOSPC",
            "EIO",
            "ENOTEMPTY",
            "ENOSYS",
            "EROFS",
            "EBUSY",
            "EAGAIN",
            "EISCONN",
            "E2BIG",
            "EPERM",
        ] {
            let mut wire = alloc::vec::Vec::from(name.as_bytes());
            wire.push(0);
            let err = XsError::from_wire(&wire);
            assert_eq!(err.wire_name(), Some(name));
        }
        assert_eq!(XsError::from_wire(b"ENOENT"), XsError::Enoent);
        match XsError::from_wire(b"EWHATEVER_THIS_IS_LONG\0") {
            XsError::Unknown(name) => assert_eq!(name.as_bytes(), b"EWHATEVER_THIS_I"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_message_type_has_its_header_value() {
        assert_eq!(XsdSockmsgType::Control as u32, 0);
        assert_eq!(XsdSockmsgType::Write as u32, 11);
        assert_eq!(XsdSockmsgType::WatchEvent as u32, 15);
        assert_eq!(XsdSockmsgType::Error as u32, 16);
        assert_eq!(XsdSockmsgType::ResetWatches as u32, 21);
        assert_eq!(XsdSockmsgType::DirectoryPart as u32, 22);
        for t in XsdSockmsgType::ALL {
            assert_eq!(XsdSockmsgType::from_u32(t as u32), Some(t));
        }
        assert_eq!(XsdSockmsgType::from_u32(20), None);
        assert_eq!(XsdSockmsgType::from_u32(23), None);
    }
}
