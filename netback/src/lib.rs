//! The Xen PV network backend: a moat driver domain serving a vif to
//! another domain's netfront (Linux or ours), in copy mode (every byte
//! moves by grant copy; only the two ring pages are mapped).
//!
//! - [`env`](mod@env): what the kernel provides (foreign ring mappings,
//!   local pages, batched grant copy, interdomain event channels), as the
//!   [`NetbackEnv`] trait. One environment and one xenstore connection can
//!   serve many vifs: both are passed to the calls that need them.
//! - [`config`]: the frontend's xenstore keys and our offers, parsed.
//! - [`xenbus`]: the backend side of the handshake for one
//!   `backend/vif/<frontid>/<devid>` directory, and its teardown.
//! - [`vif`]: the data path: frontend TX requests become owned
//!   [`Packet`]s, packets for the frontend fill its RX buffers.
//! - [`packet`]: packets with their offload metadata, and a software
//!   checksum fill for frontends that refuse blank checksums.
//!
//! The frontend is untrusted. Every request is checked before use; a bad
//! one is answered with `NETIF_RSP_ERROR` and counted as a [`Violation`];
//! past [`BackendOptions::violation_limit`] violations, or at once for
//! ring-index or framing errors that leave the ring unparseable, the vif
//! stops ([`Fatal`]) and should be [closed](Vif::close). Work per poll is
//! bounded by a budget so one vif cannot starve others. Nothing the
//! frontend writes can make this crate panic or index out of bounds.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

extern crate alloc;

pub mod config;
pub mod env;
pub mod error;
pub mod packet;
#[cfg(feature = "sim")]
pub mod sim;
pub mod vif;
pub mod xenbus;

pub use config::{BackendOptions, FrontendConfig};
pub use env::{EnvError, NetbackEnv};
pub use error::{Fatal, NetbackError, Violation};
pub use packet::{Gso, GsoKind, Offload, Packet};
pub use vif::{Progress, Vif, VifStats};
pub use xenbus::{connect, BackendDevice, Health, Offer};
