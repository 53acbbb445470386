//! What can go wrong, with the backend blamed precisely.

use xen::grant::GrantError;
use xen::ring::RingError;
use xen::xenbus::{XenbusError, XenbusState};
use xen::xenstore::XsError;

use crate::config::ValuePrefix;
use crate::env::EnvError;

/// Why the frontend failed or stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetfrontError {
    /// A xenbus step failed.
    Xenbus(XenbusError),
    /// The platform could not provide a page or port.
    Env(EnvError),
    /// Granting failed.
    Grant(GrantError),
    /// `mac` is not `xx:xx:xx:xx:xx:xx`.
    BadMac(ValuePrefix),
    /// A `feature-*` key holds something other than `0` or `1`.
    BadFeature(ValuePrefix),
    /// The backend does not offer `feature-rx-copy` (we only do copy mode).
    NoRxCopy,
    /// The backend published impossible ring indices.
    Ring(RingError),
    /// A TX response named an id that is not in flight.
    BadTxId(u16),
    /// An RX response's id is not the one of its slot.
    BadRxId {
        /// The id expected at this ring position.
        expected: u16,
        /// The id the backend wrote.
        got: u16,
    },
    /// An RX response's offset + size leaves the page.
    BadRxSize {
        /// Offset in the page.
        offset: u16,
        /// Size.
        size: i16,
    },
    /// The backend left (`Closing`, `Closed`, or gone from xenstore).
    BackendGone(XenbusState),
    /// The device was disconnected earlier because of this error.
    Disconnected,
}

impl From<XenbusError> for NetfrontError {
    fn from(e: XenbusError) -> Self {
        NetfrontError::Xenbus(e)
    }
}

impl From<XsError> for NetfrontError {
    fn from(e: XsError) -> Self {
        NetfrontError::Xenbus(XenbusError::Xs(e))
    }
}

impl From<EnvError> for NetfrontError {
    fn from(e: EnvError) -> Self {
        NetfrontError::Env(e)
    }
}

impl From<GrantError> for NetfrontError {
    fn from(e: GrantError) -> Self {
        NetfrontError::Grant(e)
    }
}

impl From<RingError> for NetfrontError {
    fn from(e: RingError) -> Self {
        NetfrontError::Ring(e)
    }
}

impl core::fmt::Display for NetfrontError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            NetfrontError::Xenbus(XenbusError::Xs(e)) => write!(f, "xenstore: {e}"),
            NetfrontError::Xenbus(e) => write!(f, "xenbus: {e:?}"),
            NetfrontError::Env(e) => write!(f, "platform: {e:?}"),
            NetfrontError::Grant(e) => write!(f, "grant table: {e}"),
            NetfrontError::BadMac(v) => write!(f, "bad mac {v:?}"),
            NetfrontError::BadFeature(v) => write!(f, "bad feature flag {v:?}"),
            NetfrontError::NoRxCopy => f.write_str("backend lacks feature-rx-copy"),
            NetfrontError::Ring(e) => write!(f, "backend broke the ring: {e:?}"),
            NetfrontError::BadTxId(id) => write!(f, "backend answered unknown tx id {id}"),
            NetfrontError::BadRxId { expected, got } => {
                write!(f, "backend answered rx id {got}, expected {expected}")
            }
            NetfrontError::BadRxSize { offset, size } => {
                write!(
                    f,
                    "backend rx response leaves the page (offset {offset}, size {size})"
                )
            }
            NetfrontError::BackendGone(state) => write!(f, "backend left (state {state:?})"),
            NetfrontError::Disconnected => f.write_str("disconnected"),
        }
    }
}

/// Why a packet was not queued for sending (the device stays usable).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxError {
    /// Not enough free slots now; retry after responses came back.
    Busy,
    /// Empty, or larger than the protocol allows (64 KiB - 1), or larger
    /// than a page without backend scatter-gather.
    BadSize(usize),
    /// The backend does not offer the requested offload.
    Unsupported,
    /// The device is disconnected.
    Disconnected,
}
