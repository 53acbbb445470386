//! The runtime of moat's network VMs.
//!
//! netbridge (a driver domain), the firewall and the VPN gateway are one
//! kind of VM: an uplink (our netfront, e.g. on dom0's bridge), client vifs
//! served by our netback that come and go as the toolstack attaches and
//! detaches them, a per-vif identity (the `mac` and `ip` keys libxl writes
//! into the vif's backend directory), budgets so that no vif starves
//! another, and counters. They differ only in what they do with a frame.
//! This crate is that common part, written once; a VM plugs its frame
//! handler into it as a [`Service`]:
//!
//! - [`Service::handle`]`(now, from, packet, out)`: one frame in, any
//!   number of frames out (the shape of `firewall::Firewall::handle`);
//! - [`Service::uplink_up`], [`Service::uplink_down`]: the uplink
//!   connected (its MAC and the `ip` key of its vif) or went away;
//! - [`Service::tick`]: a timer hook (flow expiry, DNS, ARP retries);
//! - [`Service::configure`]: a configuration hook, given a consistent
//!   [`config::Snapshot`] of a xenstore directory each time it changes
//!   (a watch);
//! - [`Service::admit`], [`Service::client_up`], [`Service::client_down`]:
//!   clients and their [`ClientInfo`] (identity), refused or accepted
//!   before they are offered a connection.
//!
//! [`run`] is the loop: it watches `backend/vif` (and lists it once a
//! second as a backstop), offers each new vif (`netback::Offer`, a step at
//! a time, never waiting on one frontend), removes the backend directory of
//! a vif the toolstack is done with (as `xl devd` does in a Linux driver
//! domain), moves at most a budget of packets per vif and per round,
//! reconnects the uplink when its backend goes away (the clients are served
//! meanwhile), and ends on the toolstack's `xl shutdown`. See
//! [`runtime`](run) for the details and `docs/netvm.md` for the design.
//!
//! Everything here is generic over the drivers' environments
//! (`netfront::NetEnv`, `netback::NetbackEnv`), so the same loop runs on
//! Xen (`kernel::devices::XenEnv`) and in host tests over `xen::sim`, on
//! the kernel's executor in both cases.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

extern crate alloc;

pub mod binding;
pub mod config;
pub mod dhcp;
pub mod identity;
mod runtime;

use alloc::string::String;
use alloc::vec::Vec;

pub use identity::{ClientInfo, Key};
pub use netback::{Offload, Packet};
pub use runtime::{run, Options, Stats, Stop, UplinkInfo};

/// A client vif, numbered by the runtime in the order they connect. An id
/// is never reused while the VM runs (a vif that reconnects gets a new
/// one), so a frame for a client that went away cannot reach another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientId(pub u32);

/// Where a frame came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// The uplink (our netfront).
    Uplink,
    /// A client vif (served by our netback).
    Client(ClientId),
}

/// Where a frame goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum To {
    /// Out of the uplink.
    Uplink,
    /// To one client; dropped (and counted) if it is gone.
    Client(ClientId),
    /// To every connected client, but `except` (a flood).
    Clients {
        /// The client not to send it to (where it came from).
        except: Option<ClientId>,
    },
}

/// A frame to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Where.
    pub to: To,
    /// The frame and its offload flags (checksum blank or validated: passed
    /// on to the uplink's backend or the client's frontend).
    pub packet: Packet,
}

impl Transmit {
    /// A frame with no offload flags.
    pub fn frame(to: To, data: Vec<u8>) -> Self {
        Self {
            to,
            packet: Packet {
                data,
                offload: Offload::default(),
            },
        }
    }
}

/// What a network VM does with frames. Every method but
/// [`handle`](Service::handle) has a default that does nothing.
///
/// Times are the executor's clock (Xen system time) in nanoseconds.
/// Strings returned are printed on the console prefixed with the VM's name
/// ([`Options::name`]).
pub trait Service {
    /// Whether a new vif may be offered a connection. Called before the
    /// offer, with its identity; an `Err` refuses it (the reason is
    /// printed once and counted in [`Stats::refused`]) and the vif is
    /// never offered while its backend directory lives.
    fn admit(&mut self, client: &ClientInfo) -> Result<(), String> {
        let _ = client;
        Ok(())
    }

    /// A vif connected: frames from it arrive as [`Link::Client`]`(id)`.
    fn client_up(&mut self, now_ns: u64, client: &ClientInfo) {
        let _ = (now_ns, client);
    }

    /// A vif closed (its frontend left, the toolstack detached it, or it
    /// misbehaved past its violation limit).
    fn client_down(&mut self, now_ns: u64, id: ClientId) {
        let _ = (now_ns, id);
    }

    /// The uplink is connected (at start, and again after its backend came
    /// back): frames may be sent to [`To::Uplink`].
    fn uplink_up(&mut self, now_ns: u64, uplink: &UplinkInfo) {
        let _ = (now_ns, uplink);
    }

    /// The uplink's backend went away; the runtime is reconnecting.
    /// Frames sent to [`To::Uplink`] meanwhile are dropped (counted in
    /// [`Stats::uplink_tx_dropped`]); clients are still served.
    fn uplink_down(&mut self, now_ns: u64) {
        let _ = now_ns;
    }

    /// One frame arrived on `from`: push the frames to send onto `out`.
    fn handle(&mut self, now_ns: u64, from: Link, packet: Packet, out: &mut Vec<Transmit>);

    /// Timers, every [`Options::tick_ns`].
    fn tick(&mut self, now_ns: u64, out: &mut Vec<Transmit>) {
        let _ = (now_ns, out);
    }

    /// The watched configuration directory ([`Options::config`]) changed
    /// (or was read for the first time, then `changed.all`): `snapshot` is
    /// all of it, read in one transaction after the writes in `changed`.
    /// Returns lines to print.
    fn configure(
        &mut self,
        now_ns: u64,
        snapshot: &config::Snapshot,
        changed: &config::Changed,
    ) -> Vec<String> {
        let _ = (now_ns, snapshot, changed);
        Vec::new()
    }

    /// A periodic statistics line (every [`Options::report_every_ns`]);
    /// `None` prints nothing.
    fn report(&mut self, stats: &Stats) -> Option<String> {
        let _ = stats;
        None
    }
}
