//! The WireGuard VPN gateway service: client VMs behind it reach the network
//! only through the tunnel, and nothing leaves in clear.
//!
//! Modules: [`gateway`] (the fail-closed forwarding logic), [`dns`] (DNS
//! redirection into the tunnel), [`link`] (Ethernet, ARP, IPv4 and UDP of
//! the uplink; ARP of the clients' side), [`nat`] (masquerading clients as the
//! tunnel's address), [`packet`] (the IP/TCP/UDP fields we touch).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod dns;
pub mod gateway;
pub mod link;
pub mod nat;
pub mod packet;

pub use gateway::{Counters, Gateway, GatewaySettings, Output, SetupError, UplinkDatagram};
