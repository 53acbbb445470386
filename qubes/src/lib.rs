//! Qubes OS protocols for moat services.
//!
//! Today this holds the Qubes 4.x firewall rule language
//! ([`firewall_rules`]): the `key=value` entries dom0 writes into QubesDB
//! under `/qubes-firewall/<client-ip>/`, parsed into typed rules with the
//! semantics of the Linux sys-firewall (qubes-core-agent-linux); and
//! [`vchan`], libxenvchan's inter-domain byte streams, on which
//! [`qubesdb`] (the VM's configuration database) and [`qrexec`] (the agent
//! answering dom0's service calls) run.
//!
//! Everything here is plain `no_std` + `alloc` logic with no hardware access,
//! so it runs unchanged in the kernel and is tested on the host.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod firewall_rules;
mod framing;
pub mod qrexec;
pub mod qubesdb;
pub mod vchan;
pub mod xs_share;
