//! Traffic addressed to the firewall itself, and the errors it sends when a
//! client's rules refuse a flow.

use alloc::vec::Vec;

use smoltcp::time::Instant;
use smoltcp::wire::EthernetAddress;

use super::{ip_ethertype, Client, ClientId, Firewall, Transmit};
use crate::icmp;
use crate::link;
use crate::packet::IpHeader;

impl Firewall {
    pub(super) fn addressed_to_firewall(
        &mut self,
        id: ClientId,
        client: &Client,
        header: &IpHeader,
        ip: &[u8],
        out: &mut Vec<Transmit>,
    ) {
        match icmp::echo_reply(ip, header) {
            Some(reply) => {
                let frame = link::ethernet_frame(
                    self.config.client_side.mac,
                    EthernetAddress([0; 6]),
                    ip_ethertype(&reply),
                    &reply,
                );
                if self.send_to_client(client, id, frame, out) {
                    self.counters.echo_replies += 1;
                }
            }
            None => self.counters.dropped_to_firewall += 1,
        }
    }

    pub(super) fn refuse(
        &mut self,
        id: ClientId,
        client: &Client,
        header: &IpHeader,
        ip: &[u8],
        out: &mut Vec<Transmit>,
    ) {
        self.counters.dropped_by_rule += 1;
        let Some(from) = self.client_side_source(header.is_v6()) else {
            return;
        };
        if let Some(error) = icmp::admin_prohibited(from, ip, header) {
            let frame = link::ethernet_frame(
                self.config.client_side.mac,
                EthernetAddress([0; 6]),
                ip_ethertype(&error),
                &error,
            );
            if self.send_to_client(client, id, frame, out) {
                self.counters.admin_prohibited_sent += 1;
            }
        }
    }

    /// A free uplink-side port for a new flow to `remote`:`remote_port`,
    /// preferring the client's own (as Linux masquerading does).
    pub(super) fn uplink_echo_request(
        &mut self,
        now: Instant,
        header: &IpHeader,
        ip: &[u8],
        out: &mut Vec<Transmit>,
    ) {
        match icmp::echo_reply(ip, header) {
            Some(reply) => {
                let frame = link::ethernet_frame(
                    self.config.uplink.mac,
                    EthernetAddress([0; 6]),
                    ip_ethertype(&reply),
                    &reply,
                );
                self.send_to_uplink(now, frame, out);
                self.counters.echo_replies += 1;
            }
            None => self.counters.dropped_malformed += 1,
        }
    }
}
