//! The Xen guest ABI and the protocols built on it.
//!
//! `abi` holds the one definition of every structure shared with Xen, each
//! checked against Xen's public headers by `tests/abi.rs`. The other modules
//! are the logic on top: the hypercall layer (the only place that traps into
//! Xen), event channels, the PV clock, grant tables, the console ring, the
//! generic shared ring, the xenstore client and the xenbus state machine.
//!
//! Everything that touches shared memory or traps into the hypervisor is in
//! `hypercall`, `ring`-style accessors or the `shared` helpers; the protocol
//! logic above them is plain safe Rust and is tested on the host.
#![cfg_attr(not(test), no_std)]
#![deny(missing_docs)]

extern crate alloc;

pub mod abi;
pub mod console;
pub mod event;
pub mod evtchn_status;
pub mod grant;
pub mod hypercall;
pub mod netif;
pub mod ring;
pub mod shared_fields;
pub mod shared_info;
pub mod shared_page;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod time;
pub mod xenbus;
pub mod xenstore;
