//! The Qubes firewall service: the packet path between client VMs and the
//! uplink.
//!
//! [`Firewall::handle`] takes one Ethernet frame from an [`Interface`] at a
//! time value the caller provides and returns the frames to send, so the
//! same code runs in the kernel (netback/netfront), hosted on TAP devices
//! and in tests. It enforces each client's Qubes rules (parsed by
//! [`qubes::firewall_rules`]) on new flows, tracks connections in a bounded
//! table, translates client addresses to the uplink address (with ICMP
//! errors translated back; GSO super-packets and blank checksums pass with
//! only their headers rewritten, see [`offload`]), redirects queries to the Qubes virtual DNS
//! servers to the real resolvers, answers ARP and neighbour discovery as
//! Qubes clients expect, refuses spoofed sources, and counts every drop.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod checksum;
pub mod config;
pub mod conntrack;
pub mod counters;
mod firewall;
pub mod fragments;
pub mod icmp;
pub mod link;
pub mod offload;
pub mod packet;
pub mod random;
pub mod resolver;
pub mod store;

pub use config::{ClientConfig, ClientSideConfig, Config, DnsRedirect, UplinkConfig};
pub use counters::Counters;
pub use firewall::{ClientId, Firewall, Interface, RuleReport, Transmit, MAX_RULE_REPORTS};
pub use offload::{Capabilities, Gso, GsoKind, Offload};
pub use random::{NoRandomness, RandomSource};
pub use smoltcp::time::{Duration, Instant};
pub use smoltcp::wire::EthernetAddress;
