//! The link layer's neighbours: ARP and IPv6 neighbour discovery on both
//! sides, and the uplink gateway's MAC (learned, requested, and the frames
//! that wait for it).

use alloc::vec::Vec;
use core::net::{IpAddr, Ipv6Addr};

use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{ArpOperation, ArpRepr, EthernetAddress};

use super::{Client, ClientId, Firewall, Interface, Transmit};
use crate::link;
use crate::offload::Offload;
use crate::packet::IpHeader;

/// Least time between two ARP requests for the uplink gateway.
const ARP_RETRY: Duration = Duration::from_secs(1);
/// Most frames held while the uplink gateway's MAC is unknown.
const MAX_AWAITING_GATEWAY: usize = 32;
/// ICMPv6 neighbour solicitation.
pub(super) const ICMPV6_NEIGHBOR_SOLICIT: u8 = 135;

impl Firewall {
    /// An ARP packet from a client: a request for any address but its own
    /// is answered with our MAC (Linux's `proxy_arp` on the vif); a request
    /// from another address than the client's is spoofed.
    pub(super) fn client_arp(
        &mut self,
        id: ClientId,
        client: &Client,
        payload: &[u8],
        out: &mut Vec<Transmit>,
    ) {
        let Some(ArpRepr::EthernetIpv4 {
            operation,
            source_hardware_addr,
            source_protocol_addr,
            target_protocol_addr,
            ..
        }) = link::parse_arp(payload)
        else {
            self.counters.dropped_malformed += 1;
            return;
        };
        if source_protocol_addr != client.config.ip4 && !source_protocol_addr.is_unspecified() {
            self.counters.dropped_spoofed += 1;
            return;
        }
        // Every address but the client's own is behind the firewall.
        if operation != ArpOperation::Request || target_protocol_addr == client.config.ip4 {
            return;
        }
        let reply = link::arp_reply(
            self.config.client_side.mac,
            target_protocol_addr,
            source_hardware_addr,
            source_protocol_addr,
        );
        out.push(Transmit::plain(Interface::Client(id), reply));
        self.counters.neighbor_replies += 1;
    }

    /// A neighbour solicitation from a client: answered only for an
    /// address the firewall owns on the client link, its gateway address
    /// (`/qubes-netvm-gateway6`) and its link-local address, as Linux's
    /// neighbour discovery answers for the vif's own addresses (the vif
    /// has `proxy_ndp` on, but vif-route-qubes adds no proxy entries).
    /// Never forwarded, and never an answer for another address: the
    /// client reaches everything else through the gateway, and its rules.
    ///
    /// The source must be the client's address, as Linux's antispoof chain
    /// demands of every packet, or its link-local or the unspecified
    /// address, which a guest without Qubes' static neighbour entry for
    /// the gateway uses (Linux drops those; answering them only tells the
    /// client the gateway's MAC).
    pub(super) fn client_neighbor_solicitation(
        &mut self,
        id: ClientId,
        client: &Client,
        header: &IpHeader,
        ip: &[u8],
        out: &mut Vec<Transmit>,
    ) {
        let Some(target) = link::neighbor_solicitation_target(ip.get(..header.len).unwrap_or(ip))
        else {
            self.counters.dropped_malformed += 1;
            return;
        };
        let IpAddr::V6(src) = header.src else {
            return;
        };
        if client.config.ip6 != Some(src) && !src.is_unicast_link_local() && !src.is_unspecified() {
            self.counters.dropped_spoofed += 1;
            return;
        }
        let owned = self.config.client_side.gateway6 == Some(target)
            || link::link_local_of(self.config.client_side.mac) == target;
        if !owned {
            self.counters.neighbor_ignored += 1;
            return;
        }
        let Some(mac) = client.mac else {
            return;
        };
        // Duplicate address detection comes from "::" and is answered to
        // all nodes.
        let dst = if src.is_unspecified() {
            Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1)
        } else {
            src
        };
        let frame = link::neighbor_advertisement(self.config.client_side.mac, target, dst, mac);
        out.push(Transmit::plain(Interface::Client(id), frame));
        self.counters.neighbor_replies += 1;
    }

    /// Ask for the uplink gateway's MAC, at most once per `ARP_RETRY`.
    pub(super) fn request_gateway_mac(&mut self, now: Instant, out: &mut Vec<Transmit>) {
        let due = self
            .last_arp_request
            .is_none_or(|last| now >= last + ARP_RETRY);
        if due {
            self.last_arp_request = Some(now);
            out.push(Transmit::plain(
                Interface::Uplink,
                link::arp_request(
                    self.config.uplink.mac,
                    self.config.uplink.ip4,
                    self.config.uplink.gateway4,
                ),
            ));
        }
    }

    /// Send `frame` to the uplink gateway, or hold it (a few, oldest
    /// dropped first) until the gateway's MAC is known.
    pub(super) fn send_to_uplink(&mut self, now: Instant, frame: Vec<u8>, out: &mut Vec<Transmit>) {
        self.forward_to_uplink(now, frame, Offload::NONE, false, out);
    }

    /// [`Firewall::send_to_uplink`] with `offload` (fitted to the uplink's
    /// capabilities); `forwarded` counts it as forwarded traffic.
    pub(super) fn forward_to_uplink(
        &mut self,
        now: Instant,
        mut frame: Vec<u8>,
        offload: Offload,
        forwarded: bool,
        out: &mut Vec<Transmit>,
    ) {
        let Some(gateway_mac) = self.gateway_mac else {
            // Hold a few frames until the gateway answers, as a neighbour
            // table would; the oldest goes first when the queue is full.
            if self.awaiting_gateway.len() >= MAX_AWAITING_GATEWAY {
                self.awaiting_gateway.pop_front();
                self.counters.dropped_no_neighbor += 1;
            }
            self.awaiting_gateway.push_back((frame, offload, forwarded));
            self.request_gateway_mac(now, out);
            return;
        };
        link::set_ethernet_addrs(&mut frame, self.config.uplink.mac, gateway_mac);
        let capabilities = self.uplink_capabilities;
        self.emit(
            Interface::Uplink,
            capabilities,
            frame,
            offload,
            forwarded,
            out,
        );
    }

    /// Record the gateway's MAC and release the frames that waited for it.
    pub(super) fn learn_gateway_mac(
        &mut self,
        now: Instant,
        mac: EthernetAddress,
        out: &mut Vec<Transmit>,
    ) {
        self.gateway_mac = Some(mac);
        while let Some((frame, offload, forwarded)) = self.awaiting_gateway.pop_front() {
            self.forward_to_uplink(now, frame, offload, forwarded, out);
        }
    }

    /// An ARP packet from the uplink: the gateway's MAC is learned from it,
    /// and a request for our uplink address answered.
    pub(super) fn uplink_arp(&mut self, now: Instant, payload: &[u8], out: &mut Vec<Transmit>) {
        let Some(ArpRepr::EthernetIpv4 {
            operation,
            source_hardware_addr,
            source_protocol_addr,
            target_protocol_addr,
            ..
        }) = link::parse_arp(payload)
        else {
            self.counters.dropped_malformed += 1;
            return;
        };
        if source_protocol_addr == self.config.uplink.gateway4 && source_hardware_addr.is_unicast()
        {
            self.learn_gateway_mac(now, source_hardware_addr, out);
        }
        if operation == ArpOperation::Request && target_protocol_addr == self.config.uplink.ip4 {
            out.push(Transmit::plain(
                Interface::Uplink,
                link::arp_reply(
                    self.config.uplink.mac,
                    self.config.uplink.ip4,
                    source_hardware_addr,
                    source_protocol_addr,
                ),
            ));
            self.counters.neighbor_replies += 1;
        }
    }

    /// A neighbour solicitation from the uplink: answered for our
    /// uplink and link-local addresses only; the gateway's MAC is learned.
    pub(super) fn uplink_neighbor_solicitation(
        &mut self,
        now: Instant,
        src_mac: EthernetAddress,
        header: &IpHeader,
        ip: &[u8],
        out: &mut Vec<Transmit>,
    ) {
        let Some(target) = link::neighbor_solicitation_target(ip.get(..header.len).unwrap_or(ip))
        else {
            self.counters.dropped_malformed += 1;
            return;
        };
        let IpAddr::V6(src) = header.src else {
            return;
        };
        // Our uplink address, when the uplink has IPv6, and our link-local
        // address there (Linux gives the interface one).
        let ours = self.config.uplink.ip6 == Some(target)
            || (self.config.uplink.ip6.is_some()
                && link::link_local_of(self.config.uplink.mac) == target);
        if !ours || !src_mac.is_unicast() {
            self.counters.neighbor_ignored += 1;
            return;
        }
        if self.config.uplink.gateway6 == Some(src) {
            self.learn_gateway_mac(now, src_mac, out);
        }
        let dst = if src.is_unspecified() {
            Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1)
        } else {
            src
        };
        out.push(Transmit::plain(
            Interface::Uplink,
            link::neighbor_advertisement(self.config.uplink.mac, target, dst, src_mac),
        ));
        self.counters.neighbor_replies += 1;
    }
}
