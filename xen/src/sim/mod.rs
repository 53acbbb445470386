//! A simulated hypervisor for host tests of split drivers (feature `sim`):
//! pages, grant tables and event channels of several domains
//! ([`hypervisor`]) and an in-memory xenstored ([`xenstored`]). Frontends
//! and backends written for the kernel run against it in one process.
//!
//! Uses `std` (it only ever runs on the host).
#![allow(missing_docs)]

pub mod hypervisor;
pub mod xenstored;

pub use hypervisor::{gntst, SimError, SimHypervisor, SimMapping, SimPage};
pub use xenstored::{SimTransport, Xenstored};
