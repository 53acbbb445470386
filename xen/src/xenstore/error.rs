//! Errors of xenstore operations: the daemon's error strings, protocol
//! violations by the daemon, and local misuse.

use core::fmt;

/// Longest unknown error name kept (longer ones are truncated).
pub const UNKNOWN_ERROR_MAX: usize = 16;

/// An error string xenstored sent that is not one of the known names; kept
/// (truncated to [`UNKNOWN_ERROR_MAX`] bytes) for logging.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct UnknownErrorName {
    bytes: [u8; UNKNOWN_ERROR_MAX],
    len: u8,
}

impl UnknownErrorName {
    /// Keep at most [`UNKNOWN_ERROR_MAX`] bytes of `name`.
    pub fn new(name: &[u8]) -> Self {
        let len = name.len().min(UNKNOWN_ERROR_MAX);
        let mut bytes = [0; UNKNOWN_ERROR_MAX];
        bytes[..len].copy_from_slice(&name[..len]);
        Self {
            bytes,
            len: len as u8,
        }
    }

    /// The kept bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl fmt::Debug for UnknownErrorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.as_bytes().escape_ascii())
    }
}

/// The daemon broke the protocol. The connection is unusable afterwards:
/// every later call returns the same error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// A message header announced more than `XENSTORE_PAYLOAD_MAX` bytes.
    PayloadTooLarge(u32),
    /// A reply of a type other than the request's (or `XS_ERROR`).
    UnexpectedType {
        /// The type of the request.
        expected: u32,
        /// The type received.
        got: u32,
    },
    /// A reply whose request id is not the one outstanding.
    RequestIdMismatch {
        /// The id of the outstanding request.
        expected: u32,
        /// The id received.
        got: u32,
    },
    /// A reply arrived while no request was outstanding.
    UnsolicitedReply(u32),
    /// The daemon published an impossible ring index pair.
    BadRingIndex,
    /// The daemon flagged an error in the page's `error` field.
    ServerError(u32),
    /// A reply payload did not have the required shape.
    MalformedReply,
    /// A reply that must be text was not UTF-8.
    NotUtf8,
}

/// Why a xenstore operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XsError {
    /// `EINVAL`: invalid argument.
    Einval,
    /// `EACCES`: permission denied.
    Eacces,
    /// `EEXIST`: node exists.
    Eexist,
    /// `EISDIR`: is a directory.
    Eisdir,
    /// `ENOENT`: no such node.
    Enoent,
    /// `ENOMEM`: out of memory.
    Enomem,
    /// `ENOSPC`: no space (quota).
    Enospc,
    /// `EIO`: I/O error.
    Eio,
    /// `ENOTEMPTY`: directory not empty.
    Enotempty,
    /// `ENOSYS`: operation not supported.
    Enosys,
    /// `EROFS`: read-only.
    Erofs,
    /// `EBUSY`: busy.
    Ebusy,
    /// `EAGAIN`: try again (a transaction conflicted).
    Eagain,
    /// `EISCONN`: already connected.
    Eisconn,
    /// `E2BIG`: argument too big.
    E2big,
    /// `EPERM`: operation not permitted.
    Eperm,
    /// An error string not in the list above.
    Unknown(UnknownErrorName),
    /// The daemon broke the protocol; see [`ProtocolError`].
    Protocol(ProtocolError),
    /// Our own request would exceed `XENSTORE_PAYLOAD_MAX`, or a path
    /// exceeds `XENSTORE_ABS_PATH_MAX`.
    RequestTooLarge,
    /// A path or token contains a NUL byte, which the wire cannot carry.
    NulInArgument,
    /// A transaction still conflicted after the retry limit.
    RetriesExhausted,
    /// The transport reports the connection is gone (for transports that
    /// can tell, e.g. a socket to a hosted xenstored; the shared page
    /// cannot).
    Closed,
}

/// The error names of `xsd_errors`, in header order.
const NAMED: [(&[u8], XsError); 16] = [
    (b"EINVAL", XsError::Einval),
    (b"EACCES", XsError::Eacces),
    (b"EEXIST", XsError::Eexist),
    (b"EISDIR", XsError::Eisdir),
    (b"ENOENT", XsError::Enoent),
    (b"ENOMEM", XsError::Enomem),
    (b"ENOSPC", XsError::Enospc),
    (b"EIO", XsError::Eio),
    (b"ENOTEMPTY", XsError::Enotempty),
    (b"ENOSYS", XsError::Enosys),
    (b"EROFS", XsError::Erofs),
    (b"EBUSY", XsError::Ebusy),
    (b"EAGAIN", XsError::Eagain),
    (b"EISCONN", XsError::Eisconn),
    (b"E2BIG", XsError::E2big),
    (b"EPERM", XsError::Eperm),
];

impl XsError {
    /// Parse the payload of an `XS_ERROR` reply (a name, normally
    /// NUL-terminated).
    pub fn from_wire(payload: &[u8]) -> Self {
        let name = match payload.iter().position(|b| *b == 0) {
            Some(end) => &payload[..end],
            None => payload,
        };
        NAMED
            .iter()
            .find(|(known, _)| *known == name)
            .map(|(_, err)| *err)
            .unwrap_or_else(|| XsError::Unknown(UnknownErrorName::new(name)))
    }

    /// The wire name of a daemon error (`"ENOENT"`), or `None` for local
    /// and protocol errors.
    pub fn wire_name(&self) -> Option<&'static str> {
        NAMED
            .iter()
            .find(|(_, err)| err == self)
            .and_then(|(name, _)| core::str::from_utf8(name).ok())
    }
}

impl From<ProtocolError> for XsError {
    fn from(err: ProtocolError) -> Self {
        XsError::Protocol(err)
    }
}

impl fmt::Display for XsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.wire_name() {
            Some(name) => write!(f, "xenstore: {name}"),
            None => write!(f, "xenstore: {self:?}"),
        }
    }
}
