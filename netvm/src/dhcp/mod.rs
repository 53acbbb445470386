//! A DHCP client (RFC 2131, RFC 2132) for a network VM's uplink: the
//! firewall's when no address is configured, the VPN gateway's likewise.
//!
//! - [`wire`]: the DHCP message as a zero-copy view of its buffer
//!   ([`wire::Packet`]), its options walked in place ([`wire::Options`]),
//!   a server's reply read with every length checked ([`wire::Reply`]) and
//!   a client's message written ([`wire::Request`]);
//! - [`frame`]: the Ethernet/IPv4/UDP around it, read and written;
//! - [`client`]: the state machine ([`Client`]), free of hardware: frames
//!   in, frames out, time from the caller, a [`Lease`] and [`Event`]s out.
//!
//! A service hands each uplink frame to [`Client::handle_frame`] first
//! (it takes only UDP datagrams to port 68), sends what [`Client::poll`]
//! returns on the uplink (after each taken frame and at
//! [`Client::poll_at`]), and configures the uplink from
//! [`Client::take_event`]: [`Event::Bound`] and [`Event::Lost`].

pub mod client;
pub mod frame;
pub mod wire;

#[cfg(test)]
mod tests;

pub use client::{Client, Event, Handled, Lease, State, Stats};
