//! What can go wrong: per-request violations, fatal faults of a vif, and
//! handshake errors.

use crate::config::ValuePrefix;
use crate::env::EnvError;
use alloc::string::String;
use xen::abi::GrantRef;
use xen::ring::RingError;
use xen::xenbus::{XenbusError, XenbusState};
use xen::xenstore::XsError;

/// A bad request from the frontend: answered with `NETIF_RSP_ERROR`, the
/// packet dropped, counted; the vif keeps going until
/// [`BackendOptions::violation_limit`](crate::BackendOptions::violation_limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Violation {
    /// A TX packet of size 0.
    EmptyPacket,
    /// A TX packet shorter than an Ethernet header.
    Runt,
    /// A slot's `offset + size` leaves the page.
    SlotOutOfPage,
    /// The follow-on slots hold more bytes than the first slot's total.
    SizeMismatch,
    /// More than `XEN_NETIF_NR_SLOTS_MIN` data slots in one packet.
    TooManySlots,
    /// An extra info slot of unknown type, or a malformed GSO one.
    BadExtra,
    /// GSO of a kind we did not offer.
    GsoNotOffered,
    /// A grant copy from a TX slot's grant failed (bad reference, not
    /// granted to us, ...).
    BadTxGrant,
    /// A grant copy into a posted RX buffer failed.
    BadRxGrant,
}

impl Violation {
    /// Every kind, in [`index`](Self::index) order.
    pub const ALL: [Violation; 9] = [
        Violation::EmptyPacket,
        Violation::Runt,
        Violation::SlotOutOfPage,
        Violation::SizeMismatch,
        Violation::TooManySlots,
        Violation::BadExtra,
        Violation::GsoNotOffered,
        Violation::BadTxGrant,
        Violation::BadRxGrant,
    ];

    /// Position in [`ALL`](Self::ALL) (and in the per-kind counters).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Why a vif stopped: it should now be [closed](crate::Vif::close).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fatal {
    /// A producer index claims more requests than the ring holds.
    BadRingIndex(RingError),
    /// A packet's slot chain (`more_data` or extra info) runs past the
    /// requests published: the ring can no longer be parsed.
    IncompletePacket,
    /// Too many extra info slots chained to one packet.
    ExtraChain,
    /// The frontend kept sending bad requests.
    TooManyViolations,
    /// The frontend closed or vanished, or the toolstack detached the vif.
    Closed,
}

/// A handshake or teardown failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetbackError {
    /// A xenstore operation failed.
    Xs(XsError),
    /// A xenbus step failed.
    Xenbus(XenbusError),
    /// A key we need is missing.
    Missing(String),
    /// A key's value does not parse.
    BadValue {
        /// The key.
        key: String,
        /// Its value's start.
        value: ValuePrefix,
    },
    /// The frontend did not set `request-rx-copy` (flipping is obsolete).
    NoRxCopy,
    /// The frontend did not set `feature-rx-notify`.
    NoRxNotify,
    /// The frontend asked for more queues than we offer (one).
    Queues(u32),
    /// The frontend went to this state instead of connecting.
    FrontendClosed(XenbusState),
    /// Mapping a ring page failed.
    Map {
        /// The frontend's grant.
        gref: GrantRef,
        /// Why.
        error: EnvError,
    },
    /// The platform failed (binding, page allocation).
    Env(EnvError),
}

impl From<XsError> for NetbackError {
    fn from(e: XsError) -> Self {
        NetbackError::Xs(e)
    }
}

impl From<XenbusError> for NetbackError {
    fn from(e: XenbusError) -> Self {
        NetbackError::Xenbus(e)
    }
}

impl From<EnvError> for NetbackError {
    fn from(e: EnvError) -> Self {
        NetbackError::Env(e)
    }
}
