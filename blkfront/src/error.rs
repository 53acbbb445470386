//! Errors of the block frontend.

use crate::env::EnvError;
use xen::grant::GrantError;
use xen::ring::RingError;
use xen::xenbus::{XenbusError, XenbusState};
use xen::xenstore::XsError;

/// Something the backend did that the protocol does not allow. The
/// frontend stops using the ring after the first one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolViolation {
    /// The response producer index claims more responses than requests.
    Ring(RingError),
    /// A response's id names no request in flight (unknown, stale, or
    /// already answered).
    UnknownId(u64),
    /// A response's operation is not its request's.
    WrongOperation {
        /// The response's id.
        id: u64,
        /// The operation it reported.
        operation: u8,
    },
    /// A status that is none of `BLKIF_RSP_*`.
    BadStatus {
        /// The response's id.
        id: u64,
        /// The status it reported.
        status: i16,
    },
}

/// Why a block operation or the connection failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlkError {
    /// The backend answered `BLKIF_RSP_ERROR`.
    Io,
    /// The backend answered `BLKIF_RSP_EOPNOTSUPP`, or it does not offer the
    /// feature at all.
    NotSupported,
    /// Offset or length not a multiple of the sector size, or past the end
    /// of the disk.
    OutOfRange,
    /// A write to a read-only disk.
    ReadOnly,
    /// The backend broke the protocol; the device is disconnected.
    Protocol(ProtocolViolation),
    /// The device is not connected (disconnected, or broken earlier).
    Disconnected,
    /// The backend left `Connected` (the state it moved to; `Unknown` when
    /// its directory is gone), e.g. `xl block-detach`: the operation may or
    /// may not have reached the disk. [`crate::BlkFront::reconnect`] and
    /// retrying is the way on.
    BackendGone(XenbusState),
    /// The kernel could not provide a page or port.
    Env(EnvError),
    /// A grant operation failed.
    Grant(GrantError),
    /// xenstore failed during the handshake.
    Xenbus(XenbusError),
    /// A backend xenstore key (named, relative to the backend directory)
    /// is missing where required or holds an invalid value.
    BadKey(&'static str),
}

impl From<XenbusError> for BlkError {
    fn from(err: XenbusError) -> Self {
        BlkError::Xenbus(err)
    }
}

impl From<XsError> for BlkError {
    fn from(err: XsError) -> Self {
        BlkError::Xenbus(XenbusError::Xs(err))
    }
}

impl From<EnvError> for BlkError {
    fn from(err: EnvError) -> Self {
        BlkError::Env(err)
    }
}

impl From<GrantError> for BlkError {
    fn from(err: GrantError) -> Self {
        BlkError::Grant(err)
    }
}
