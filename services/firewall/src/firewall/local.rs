//! Traffic addressed to the firewall itself, and the errors it sends when a
//! client's rules refuse a flow.
//!
//! What a client sends to one of the firewall's own addresses (its gateway
//! addresses on the client side and its uplink addresses) never leaves the
//! firewall and is judged as Linux's input chain judges it for traffic from
//! a vif (`iifgroup 2`):
//!
//! * IPv4 (`qubes-ipv4.nft`): UDP to port 68 is dropped; ICMP is accepted,
//!   so an echo request is answered and other ICMP messages end here; the
//!   rest is rejected with ICMP host-prohibited;
//! * IPv6 (`qubes-ipv6.nft`, chain `_icmpv6`): ICMPv6 is accepted (an echo
//!   request is answered); the rest is rejected with ICMPv6
//!   admin-prohibited;
//! * in both, what conntrack calls invalid is dropped first: TCP that could
//!   not open a connection (a RST, a SYN with ACK, a FIN) and later
//!   fragments.

use alloc::vec::Vec;
use core::net::IpAddr;

use smoltcp::time::Instant;
use smoltcp::wire::EthernetAddress;

use super::{ip_ethertype, Client, ClientId, Firewall, Transmit};
use crate::icmp;
use crate::link;
use crate::packet::{IpHeader, Transport};

/// The DHCP client port (`udp dport 68 drop` in `qubes-ipv4.nft`).
const DHCP_CLIENT_PORT: u16 = 68;

/// What the input chain does with a packet from a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// ICMP echo request: answered.
    Echo,
    /// Accepted and consumed (other ICMP), or dropped: no answer.
    Silent,
    /// Rejected with an ICMP error.
    Reject,
}

/// The input chain's verdict on `header`, addressed to the firewall.
fn verdict(header: &IpHeader) -> Verdict {
    match header.transport {
        Transport::IcmpEcho { .. } if icmp::is_echo_request(header) => Verdict::Echo,
        Transport::IcmpEcho { .. } | Transport::IcmpError { .. } | Transport::IcmpOther { .. } => {
            Verdict::Silent
        }
        Transport::LaterFragment => Verdict::Silent,
        Transport::Udp {
            dst_port: DHCP_CLIENT_PORT,
            ..
        } if !header.is_v6() => Verdict::Silent,
        // conntrack opens a connection on a SYN, or on a bare ACK (loose
        // pick-up); any other flag combination is invalid and dropped.
        Transport::Tcp { flags, .. } if flags.rst || flags.fin || (flags.syn && flags.ack) => {
            Verdict::Silent
        }
        Transport::Tcp { flags, .. } if !flags.syn && !flags.ack => Verdict::Silent,
        Transport::Tcp { .. } | Transport::Udp { .. } | Transport::Other => Verdict::Reject,
    }
}

impl Firewall {
    /// Whether `addr` is one of the firewall's own addresses: the gateway
    /// addresses clients use and the uplink addresses.
    pub(super) fn is_own_addr(&self, addr: &IpAddr) -> bool {
        match addr {
            IpAddr::V4(a) => *a == self.config.client_side.gateway4 || *a == self.config.uplink.ip4,
            IpAddr::V6(a) => {
                self.config.client_side.gateway6 == Some(*a) || self.config.uplink.ip6 == Some(*a)
            }
        }
    }

    /// A packet from client `id` addressed to the firewall itself (its
    /// source already checked).
    pub(super) fn addressed_to_firewall(
        &mut self,
        id: ClientId,
        client: &Client,
        header: &IpHeader,
        ip: &[u8],
        out: &mut Vec<Transmit>,
    ) {
        let answer = match verdict(header) {
            Verdict::Echo => icmp::echo_reply(ip, header),
            Verdict::Silent => None,
            // From the address the client sent to, as Linux answers from a
            // local destination.
            Verdict::Reject => icmp::host_prohibited(header.dst, ip, header),
        };
        let Some(answer) = answer else {
            self.counters.dropped_to_firewall += 1;
            return;
        };
        let frame = link::ethernet_frame(
            self.config.client_side.mac,
            EthernetAddress([0; 6]),
            ip_ethertype(&answer),
            &answer,
        );
        if self.send_to_client(client, id, frame, out) {
            if verdict(header) == Verdict::Echo {
                self.counters.echo_replies += 1;
            } else {
                self.counters.host_prohibited_sent += 1;
            }
        }
    }

    /// Refuse a new flow the client's rules drop: ICMP admin-prohibited
    /// from the client-side gateway address, as Linux's `reject with icmp
    /// type admin-prohibited` (`prepare_rules` in `qubesagent/firewall.py`).
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

    /// A client's packet whose TTL runs out here: ICMP time exceeded from
    /// the client-side gateway address, as a Linux router sends it (so
    /// traceroute shows the firewall).
    pub(super) fn time_exceeded(
        &mut self,
        id: ClientId,
        client: &Client,
        header: &IpHeader,
        ip: &[u8],
        out: &mut Vec<Transmit>,
    ) {
        let Some(from) = self.client_side_source(header.is_v6()) else {
            return;
        };
        if let Some(error) = icmp::time_exceeded(from, ip, header) {
            let frame = link::ethernet_frame(
                self.config.client_side.mac,
                EthernetAddress([0; 6]),
                ip_ethertype(&error),
                &error,
            );
            if self.send_to_client(client, id, frame, out) {
                self.counters.time_exceeded_sent += 1;
            }
        }
    }

    /// An echo request from the uplink to our uplink address: answered.
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
            None => self.counters.dropped_to_firewall += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::TcpFlags;
    use core::net::Ipv4Addr;

    fn header(transport: Transport) -> IpHeader {
        IpHeader {
            src: IpAddr::V4(Ipv4Addr::new(10, 138, 0, 10)),
            dst: IpAddr::V4(Ipv4Addr::new(10, 138, 0, 1)),
            protocol: 6,
            hop_limit: 64,
            l4_offset: 20,
            len: 40,
            fragment: None,
            transport,
        }
    }

    fn tcp(syn: bool, ack: bool, fin: bool, rst: bool) -> Transport {
        Transport::Tcp {
            src_port: 1,
            dst_port: 22,
            flags: TcpFlags { syn, ack, fin, rst },
        }
    }

    #[test]
    fn tcp_that_conntrack_calls_invalid_is_dropped_not_rejected() {
        assert_eq!(
            verdict(&header(tcp(true, false, false, false))),
            Verdict::Reject
        );
        assert_eq!(
            verdict(&header(tcp(false, true, false, false))),
            Verdict::Reject
        );
        for invalid in [
            tcp(true, true, false, false),
            tcp(false, true, true, false),
            tcp(false, false, false, true),
            tcp(false, false, false, false),
        ] {
            assert_eq!(verdict(&header(invalid)), Verdict::Silent);
        }
    }
}
