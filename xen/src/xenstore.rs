//! The xenstore client: wire format ([`wire`]), errors ([`error`]), the
//! transport seam and the shared-page transport ([`transport`]), and the
//! async client on top ([`client`]); the server's side of a xenstore page
//! ([`server_page`]), for moat's xenstored.
//!
//! Facts from `io/xs_wire.h`, `docs/misc/xenstore.txt` and
//! `docs/misc/xenstore-ring.txt`. Everything xenstored sends is untrusted:
//! it is parsed into typed values and bounded by `XENSTORE_PAYLOAD_MAX`.

pub mod client;
pub mod error;
pub mod server_page;
pub mod transport;
pub mod wire;

pub use client::{Transaction, TxId, WatchEvent, WatchGuard, XenStore};
pub use error::{ProtocolError, XsError};
pub use server_page::XsServerPage;
pub use transport::{XsEvents, XsRing, XsTransport};
