//! The hosted platform: moat services as Linux processes on TAP devices.
//!
//! The firewall's configuration comes from a text file that mirrors the
//! QubesDB keys dom0 writes (see [`qubesdb_file`]), so the same rule sets
//! and addresses drive the hosted process and, later, the VM.
//!
//! The VPN gateway (`hosted-vpn`) does its own Ethernet, ARP, IPv4 and UDP
//! on its two TAP devices with [`link`].
//!
//! Both read each TAP device in a thread of its own and hand the frames to
//! the service loop through [`fair`]: a bounded queue per link, taken in
//! turn, so a flood on one link cannot hold up the others.
//!
//! Their messages go to stderr and, when `--syslog=` names a collector, to
//! a remote syslog collector ([`remote_log`]).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod fair;
pub mod link;
pub mod qubesdb_file;
pub mod random;
pub mod reload;
pub mod remote_log;
