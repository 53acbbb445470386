//! The Xen PV block frontend: our disk, served by a backend such as Linux
//! blkback over the blkif protocol (`io/blkif.h`).
//!
//! The crate is protocol logic only. Everything it needs from the kernel
//! (pages it can share, grants, an event channel) comes through the
//! [`BlkEnv`] trait, and xenstore through the shared
//! [`xen::xenstore::XenStore`] client, so the same code runs on Xen and
//! against the simulated backend of the tests.
//!
//! - [`env`](mod@env): the seam to the kernel.
//! - [`info`]: the backend's xenstore keys, parsed strictly into
//!   [`DiskInfo`].
//! - [`pool`]: bounce pages granted once and reused.
//! - [`front`]: the handshake and the async block API ([`BlkFront`]).
//!
//! For the kernel: implement [`BlkEnv`] (a page allocator whose pages are
//! `xen::shared_page::PageMemory`, a one-page ring as
//! `SharedPage::into_front_ring`, grant/revoke on the grant table, an
//! unbound event channel with notify and an async wait), then
//! `BlkFront::connect(env, &mut xenstore, "device/vbd/<id>",
//! BlkConfig::default())` from a task, and call `read`/`write`/`flush` from
//! any number of tasks. On an error of kind [`BlkError::Protocol`] call
//! [`BlkFront::disconnect`].
//!
//! The backend may go away (`xl block-detach`, a backend restart): run
//! operations under [`BlkFront::guard`] (or [`BlkFront::watch_backend`]
//! beside them) so they fail with [`BlkError::BackendGone`] instead of
//! waiting for answers that will never come, then
//! [`BlkFront::reconnect`] (bounded by a timeout of the caller's) and
//! retry. docs/drivers.md says what a failed write means and why a flush
//! must follow on the new connection.
//!
//! Units: the API addresses the disk in its logical sectors
//! ([`DiskInfo::sector_size`], 512 or 4096 bytes); the ring always speaks in
//! 512-byte sectors, as Linux blkback does.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

extern crate alloc;

pub mod env;
pub mod error;
pub mod front;
pub mod info;
pub mod pool;

pub use env::{BlkEnv, EnvError, RingPages};
pub use error::{BlkError, ProtocolViolation};
pub use front::{BlkConfig, BlkFront, BlkStats};
pub use info::DiskInfo;
