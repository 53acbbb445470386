//! QubesDB, the VM side: the configuration database dom0 keeps for each VM
//! (`/qubes-ip`, `/qubes-firewall/...`), mirrored in the VM over a vchan
//! (qubes-core-qubesdb; docs/qubes.md, "QubesDB").
//!
//! - [`wire`]: `struct qdb_hdr` and its checks;
//! - [`client`]: the sans-I/O client (mirror, watches, writes back);
//! - [`link`]: driving it over a [`crate::vchan::Vchan`] to dom0, and
//!   reconnecting.

pub mod client;
pub mod link;
pub mod wire;

pub use client::{Client, Event, QdbError, Stats, WatchId};
pub use link::LinkError;
