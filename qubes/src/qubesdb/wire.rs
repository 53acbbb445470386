//! QubesDB's message format (`struct qdb_hdr` of qubes-core-qubesdb's
//! `include/qubesdb.h`), as a zero-copy typed view over received bytes and
//! an encoder for the messages we send.
//!
//! ```text
//! offset  size  field
//!      0     1  type      enum qdb_msg (QDB_CMD_*, QDB_RESP_*)
//!      1    64  path      NUL-terminated, so at most 63 bytes
//!     65     3  (padding: data_len is a u32 aligned to 4)
//!     68     4  data_len  bytes of data following the header, little endian
//!     72        data[data_len]
//! ```
//!
//! The struct is sent as its C layout on x86, so 72 bytes with the padding
//! (whose contents mean nothing); [`HEADER_LEN`] and the offsets are checked
//! against the header's text in `qubes/tests/qubesdb_abi.rs`.
//!
//! Validation is the daemon's (`daemon/db-cmds.c`: `verify_hdr`,
//! `verify_path`, `verify_data`): a type known on the vchan, a path of
//! `[A-Za-z0-9_/.:@-]` with no leading `-`, `data_len < QDB_MAX_DATA` and
//! no NUL byte in data. We also insist on the NUL inside the path field
//! (the daemon silently truncates).

use core::fmt;

/// `QDB_MAX_DATA`: the daemon refuses `data_len >= 3072`, so a value is at
/// most 3071 bytes.
pub const MAX_DATA: usize = 3072;
/// `QDB_MAX_PATH`: the path field's size, NUL included (63 bytes of path).
pub const MAX_PATH: usize = 64;
/// Offset of `type`.
pub const TYPE: usize = 0;
/// Offset of `path`.
pub const PATH: usize = 1;
/// Offset of `data_len`.
pub const DATA_LEN: usize = 68;
/// `sizeof(struct qdb_hdr)`.
pub const HEADER_LEN: usize = 72;
/// The vchan port of the QubesDB link (`QUBESDB_VCHAN_PORT`,
/// `daemon/qubesdb_internal.h`).
pub const VCHAN_PORT: u32 = 111;

/// `enum qdb_msg`, in the header's order (C numbering from 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum MsgType {
    /// `QDB_CMD_READ` (local socket only).
    Read = 0,
    /// `QDB_CMD_WRITE`: path and value.
    Write = 1,
    /// `QDB_CMD_MULTIREAD`: every entry under a prefix ("" is all).
    Multiread = 2,
    /// `QDB_CMD_LIST` (local socket only).
    List = 3,
    /// `QDB_CMD_RM`: a path, or a directory if it ends with `/`.
    Rm = 4,
    /// `QDB_CMD_WATCH` (local socket only).
    Watch = 5,
    /// `QDB_CMD_UNWATCH` (local socket only).
    Unwatch = 6,
    /// `QDB_RESP_OK`: path copied from the command.
    RespOk = 7,
    /// `QDB_RESP_ERROR_NOENT` (local socket only, see `verify_hdr`).
    RespErrorNoent = 8,
    /// `QDB_RESP_ERROR`.
    RespError = 9,
    /// `QDB_RESP_READ` (local socket only).
    RespRead = 10,
    /// `QDB_RESP_MULTIREAD`: one entry; an empty path ends the answer.
    RespMultiread = 11,
    /// `QDB_RESP_LIST` (local socket only).
    RespList = 12,
    /// `QDB_RESP_WATCH` (local socket only).
    RespWatch = 13,
}

impl MsgType {
    /// The type of a received byte.
    pub fn parse(b: u8) -> Result<Self, WireError> {
        use MsgType::*;
        Ok(match b {
            0 => Read,
            1 => Write,
            2 => Multiread,
            3 => List,
            4 => Rm,
            5 => Watch,
            6 => Unwatch,
            7 => RespOk,
            8 => RespErrorNoent,
            9 => RespError,
            10 => RespRead,
            11 => RespMultiread,
            12 => RespList,
            13 => RespWatch,
            _ => return Err(WireError::BadType(b)),
        })
    }

    /// Whether the daemon accepts this type on the inter-VM vchan
    /// (`verify_hdr(hdr, vchan = 1)`): write, multiread, rm and the
    /// responses ok, error and multiread.
    pub fn valid_on_vchan(self) -> bool {
        use MsgType::*;
        matches!(
            self,
            Write | Multiread | Rm | RespOk | RespError | RespMultiread
        )
    }
}

/// A malformed message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// Fewer than [`HEADER_LEN`] bytes.
    Truncated,
    /// Not a `qdb_msg` value.
    BadType(u8),
    /// A type the vchan link does not carry.
    NotOnVchan(MsgType),
    /// No NUL in the 64-byte path field.
    PathNotTerminated,
    /// A byte outside `[A-Za-z0-9_/.:@-]`, or a leading `-`.
    BadPath,
    /// `data_len >= 3072`.
    DataTooLong(u32),
    /// A NUL byte in a value.
    NulInData,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Truncated => write!(f, "message shorter than its header"),
            WireError::BadType(t) => write!(f, "unknown message type {t}"),
            WireError::NotOnVchan(t) => write!(f, "{t:?} is not valid on the vchan"),
            WireError::PathNotTerminated => write!(f, "path not NUL-terminated"),
            WireError::BadPath => write!(f, "forbidden character in path"),
            WireError::DataTooLong(n) => write!(f, "data length {n} >= {MAX_DATA}"),
            WireError::NulInData => write!(f, "NUL byte in value"),
        }
    }
}

/// Check a path as the daemon's `verify_path` does: shorter than 64 bytes,
/// only `[A-Za-z0-9_/.:@-]`, no leading `-`. The empty path is valid (it is
/// the end marker of a multiread answer and the "everything" prefix).
pub fn check_path(path: &[u8]) -> Result<&str, WireError> {
    if path.len() >= MAX_PATH {
        return Err(WireError::BadPath);
    }
    for (i, &c) in path.iter().enumerate() {
        let ok = c.is_ascii_alphanumeric()
            || matches!(c, b'_' | b'/' | b'.' | b':' | b'@')
            || (c == b'-' && i > 0);
        if !ok {
            return Err(WireError::BadPath);
        }
    }
    // Only ASCII was accepted.
    core::str::from_utf8(path).map_err(|_| WireError::BadPath)
}

/// Check a value as `verify_data` does (no NUL byte) and its length.
pub fn check_data(data: &[u8]) -> Result<(), WireError> {
    if data.len() >= MAX_DATA {
        return Err(WireError::DataTooLong(data.len() as u32));
    }
    if data.contains(&0) {
        return Err(WireError::NulInData);
    }
    Ok(())
}

/// A received header, checked: known type, terminated and valid path,
/// bounded data length. Borrowed from the receive buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header<'a> {
    msg_type: MsgType,
    path: &'a str,
    data_len: u32,
}

impl<'a> Header<'a> {
    /// View the first [`HEADER_LEN`] bytes of `buf` as a header and check
    /// it (any type; see [`Header::parse_vchan`] for the link's rules).
    pub fn parse(buf: &'a [u8]) -> Result<Self, WireError> {
        let b = buf.get(..HEADER_LEN).ok_or(WireError::Truncated)?;
        let msg_type = MsgType::parse(b[TYPE])?;
        let field = &b[PATH..PATH + MAX_PATH];
        let end = field
            .iter()
            .position(|&c| c == 0)
            .ok_or(WireError::PathNotTerminated)?;
        let path = check_path(&field[..end])?;
        let mut len = [0u8; 4];
        len.copy_from_slice(&b[DATA_LEN..DATA_LEN + 4]);
        let data_len = u32::from_le_bytes(len);
        if data_len as usize >= MAX_DATA {
            return Err(WireError::DataTooLong(data_len));
        }
        Ok(Self {
            msg_type,
            path,
            data_len,
        })
    }

    /// [`Header::parse`], then refuse the types the vchan does not carry.
    pub fn parse_vchan(buf: &'a [u8]) -> Result<Self, WireError> {
        let h = Self::parse(buf)?;
        if !h.msg_type.valid_on_vchan() {
            return Err(WireError::NotOnVchan(h.msg_type));
        }
        Ok(h)
    }

    /// The message type.
    pub fn msg_type(&self) -> MsgType {
        self.msg_type
    }

    /// The path (up to its NUL).
    pub fn path(&self) -> &'a str {
        self.path
    }

    /// Bytes of data after the header (below [`MAX_DATA`]).
    pub fn data_len(&self) -> usize {
        self.data_len as usize
    }
}

/// Encode a header. The path must be valid ([`check_path`]) and
/// `data_len` below [`MAX_DATA`].
pub fn encode(
    msg_type: MsgType,
    path: &str,
    data_len: usize,
) -> Result<[u8; HEADER_LEN], WireError> {
    check_path(path.as_bytes())?;
    if data_len >= MAX_DATA {
        return Err(WireError::DataTooLong(data_len as u32));
    }
    let mut b = [0u8; HEADER_LEN];
    b[TYPE] = msg_type as u8;
    b[PATH..PATH + path.len()].copy_from_slice(path.as_bytes());
    b[DATA_LEN..DATA_LEN + 4].copy_from_slice(&(data_len as u32).to_le_bytes());
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_bounds() {
        let b = encode(MsgType::Write, "/qubes-ip", 9).unwrap();
        assert_eq!(b[0], 1);
        assert_eq!(&b[1..10], b"/qubes-ip");
        assert_eq!(&b[68..72], &[9, 0, 0, 0]);
        let h = Header::parse_vchan(&b).unwrap();
        assert_eq!(
            (h.msg_type(), h.path(), h.data_len()),
            (MsgType::Write, "/qubes-ip", 9)
        );
        assert_eq!(Header::parse(&b[..71]), Err(WireError::Truncated));
        assert!(encode(MsgType::Write, "/x", 3072).is_err());
        assert!(encode(MsgType::Write, "/x", 3071).is_ok());
        let long = "/".repeat(63);
        assert!(encode(MsgType::Write, &long, 0).is_ok());
        assert_eq!(
            encode(MsgType::Write, &"/".repeat(64), 0),
            Err(WireError::BadPath)
        );
    }

    #[test]
    fn malformed_headers_are_typed_errors() {
        let mut b = encode(MsgType::RespOk, "/a", 0).unwrap();
        b[0] = 14;
        assert_eq!(Header::parse(&b), Err(WireError::BadType(14)));
        b[0] = MsgType::Watch as u8;
        assert_eq!(
            Header::parse_vchan(&b),
            Err(WireError::NotOnVchan(MsgType::Watch))
        );
        let mut b = encode(MsgType::Write, "/a", 0).unwrap();
        b[PATH..PATH + MAX_PATH].fill(b'a');
        assert_eq!(Header::parse(&b), Err(WireError::PathNotTerminated));
        let mut b = encode(MsgType::Write, "/a", 0).unwrap();
        b[2] = b' ';
        assert_eq!(Header::parse(&b), Err(WireError::BadPath));
        let mut b = encode(MsgType::Write, "/a", 0).unwrap();
        b[1] = b'-';
        assert_eq!(Header::parse(&b), Err(WireError::BadPath));
        let mut b = encode(MsgType::Write, "/a", 0).unwrap();
        b[DATA_LEN..DATA_LEN + 4].copy_from_slice(&3072u32.to_le_bytes());
        assert_eq!(Header::parse(&b), Err(WireError::DataTooLong(3072)));
        // Padding bytes and bytes after the NUL mean nothing.
        let mut b = encode(MsgType::Write, "/a-b", 0).unwrap();
        b[65..68].fill(0xff);
        b[10..20].fill(b'!');
        assert_eq!(Header::parse(&b).unwrap().path(), "/a-b");
        assert_eq!(check_data(b"a\0b"), Err(WireError::NulInData));
        assert!(check_data(&[b'x'; 3071]).is_ok());
    }
}
