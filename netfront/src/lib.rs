//! The Xen PV network frontend: our NIC, speaking the netif protocol
//! (`io/netif.h`) to a backend (Linux netback, or a moat driver domain).
//!
//! - [`env`](mod@env): what the kernel provides (pages, grants, event channels,
//!   xenstore), as the [`NetEnv`] trait.
//! - [`config`]: values read from xenstore (MAC, backend features), parsed.
//! - [`tx`] / [`rx`]: the two rings with their granted buffer pools.
//! - [`front`]: the device: xenbus handshake, send, receive, disconnect.
//! - `device`: a `smoltcp::phy::Device` over it (feature `smoltcp`).
//!
//! Everything the backend writes (ring indices, response ids, offsets,
//! sizes, statuses, xenstore values) is checked; a violation is a
//! [`NetfrontError`] after which the device refuses work and should be
//! disconnected, never a panic.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

extern crate alloc;

pub mod config;
#[cfg(feature = "smoltcp")]
pub mod device;
pub mod env;
pub mod error;
pub mod front;
pub mod packet;
pub mod rx;
pub mod tx;

pub use config::{BackendFeatures, MacAddress};
pub use env::{EnvError, NetEnv};
pub use error::NetfrontError;
pub use front::{ConnectOptions, Netfront};
pub use packet::{Gso, GsoKind, RxPacket, TxOffload};
