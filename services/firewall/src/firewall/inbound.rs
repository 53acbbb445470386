//! Uplink to client: replies of tracked flows translated back to the
//! client, their later fragments, ICMP errors about outbound flows, and the
//! dispatch of everything else the uplink sends.

use alloc::vec::Vec;
use core::net::IpAddr;

use smoltcp::time::Instant;
use smoltcp::wire::EthernetAddress;

use super::neighbor::ICMPV6_NEIGHBOR_SOLICIT;
use super::{flow_ports, frame_around, packet_in, Firewall, Transmit, DNS_PORT};
use crate::conntrack::{Direction, ReplyKey};
use crate::fragments::DatagramKey;
use crate::packet::{self, IpHeader, IpPacket, Transport};

impl Firewall {
    /// An IP packet from the uplink: neighbour solicitations, answers for
    /// the `dsthost=` resolver, pings to us, and replies, fragments and ICMP
    /// errors of tracked flows; everything else is dropped and counted.
    pub(super) fn uplink_ip(
        &mut self,
        now: Instant,
        src_mac: EthernetAddress,
        ip: &[u8],
        out: &mut Vec<Transmit>,
    ) {
        let Ok(header) = packet::parse(ip) else {
            self.counters.dropped_malformed += 1;
            return;
        };
        if self.refused_ipv4_options(ip, &header) {
            return;
        }
        if let Transport::IcmpOther { icmp_type } = header.transport {
            if header.is_v6() && icmp_type == ICMPV6_NEIGHBOR_SOLICIT {
                self.uplink_neighbor_solicitation(now, src_mac, &header, ip, out);
            } else {
                self.counters.dropped_unsupported += 1;
            }
            return;
        }
        if self.uplink_addr(header.is_v6()) != Some(header.dst) {
            self.counters.dropped_not_for_us += 1;
            return;
        }
        if self.client_with_addr(&header.src).is_some() {
            // Only a client may use a client's address.
            self.counters.dropped_spoofed += 1;
            return;
        }
        let from_gateway = match header.src {
            IpAddr::V4(a) => a == self.config.uplink.gateway4,
            IpAddr::V6(a) => self.config.uplink.gateway6 == Some(a),
        };
        if from_gateway && src_mac.is_unicast() {
            self.learn_gateway_mac(now, src_mac, out);
        }
        if let Transport::Udp { src_port, dst_port } = header.transport {
            if src_port == DNS_PORT && self.resolver.expects(header.src, dst_port) {
                // For the dsthost= resolver, not a client's flow (NAT
                // never gives a flow to that resolver this port); the
                // resolver checks the rest and counts what it ignores.
                let packet = IpPacket::with_header(ip, header);
                self.resolver.on_response(
                    now,
                    header.src,
                    src_port,
                    dst_port,
                    packet.udp_payload().unwrap_or_default(),
                );
                return;
            }
        }
        match header.transport {
            Transport::IcmpEcho { request: true, .. } => {
                self.uplink_echo_request(now, &header, ip, out)
            }
            Transport::IcmpError { .. } => self.uplink_icmp_error(now, &header, ip, out),
            Transport::LaterFragment => self.uplink_later_fragment(now, &header, ip, out),
            Transport::Tcp { .. } | Transport::Udp { .. } | Transport::IcmpEcho { .. } => {
                self.uplink_flow_packet(now, &header, ip, out)
            }
            _ => self.counters.dropped_unsupported += 1,
        }
    }

    /// A reply of a tracked flow: translated back to the client (its
    /// address and port, and the virtual DNS server it asked).
    pub(super) fn uplink_flow_packet(
        &mut self,
        now: Instant,
        header: &IpHeader,
        ip: &[u8],
        out: &mut Vec<Transmit>,
    ) {
        let Some((src_port, dst_port, flags)) = flow_ports(&header.transport) else {
            return;
        };
        let key = match header.transport {
            // An echo reply carries our translated identifier.
            Transport::IcmpEcho { ident, .. } => ReplyKey {
                protocol: header.protocol,
                remote: header.src,
                remote_port: 0,
                local_port: ident,
            },
            _ => ReplyKey {
                protocol: header.protocol,
                remote: header.src,
                remote_port: src_port,
                local_port: dst_port,
            },
        };
        let Some(conn_id) = self.conntrack.find_reply(&key) else {
            self.counters.dropped_no_flow += 1;
            return;
        };
        self.conntrack
            .on_packet(conn_id, now, Direction::Reply, flags);
        let Some(conn) = self.conntrack.get(conn_id).cloned() else {
            return;
        };
        let Some((client_id, client)) = self.client_for_conn(&conn) else {
            self.counters.dropped_no_flow += 1;
            return;
        };
        if header.hop_limit <= 1 {
            // Linux's ip_forward answers, after conntrack saw it.
            self.counters.dropped_ttl += 1;
            self.uplink_time_exceeded(now, header, ip, out);
            return;
        }
        let Some(mut frame) = frame_around(ip, header) else {
            return;
        };
        // Only the headers change, whatever the size (a GSO super-packet)
        // or the state of the checksum field (blank or complete).
        let offload = self.ingress;
        if let Some(pkt) = packet_in(&mut frame, header) {
            let mut pkt = pkt.with_partial_checksum(offload.csum_blank);
            pkt.decrement_hop_limit();
            pkt.set_dst(conn.orig.src);
            pkt.set_dst_port(conn.orig.src_port);
            // The virtual DNS server the client asked, when redirected.
            pkt.set_src(conn.orig.dst);
        }
        if let Some(key) = DatagramKey::of(header) {
            self.fragments.record(now, key, conn_id, conn.client);
        }
        if self.forward_to_client(&client, client_id, frame, offload, true, out) {
            self.counters.forwarded_in += 1;
        }
    }

    /// A later fragment from the uplink, which follows its first
    /// fragment's flow.
    pub(super) fn uplink_later_fragment(
        &mut self,
        now: Instant,
        header: &IpHeader,
        ip: &[u8],
        out: &mut Vec<Transmit>,
    ) {
        let Some(key) = DatagramKey::of(header) else {
            return;
        };
        let Some(conn) = self.fragment_flow(now, &key) else {
            return;
        };
        let Some((client_id, client)) = self.client_for_conn(&conn) else {
            self.counters.dropped_fragment += 1;
            return;
        };
        if header.hop_limit <= 1 {
            self.counters.dropped_ttl += 1;
            return;
        }
        let Some(mut frame) = frame_around(ip, header) else {
            return;
        };
        if let Some(mut pkt) = packet_in(&mut frame, header) {
            pkt.decrement_hop_limit();
            pkt.set_dst(conn.orig.src);
            pkt.set_src(conn.orig.dst);
        }
        let offload = self.ingress;
        if self.forward_to_client(&client, client_id, frame, offload, true, out) {
            self.counters.forwarded_in += 1;
        }
    }

    /// An ICMP error from the uplink about a packet we translated: rewrite
    /// the quoted packet back to the client's view, then the outer header.
    pub(super) fn uplink_icmp_error(
        &mut self,
        now: Instant,
        header: &IpHeader,
        ip: &[u8],
        out: &mut Vec<Transmit>,
    ) {
        let Some(inner) = IpPacket::with_header(ip, *header)
            .icmp_quoted()
            .map(|quoted| *quoted.header())
        else {
            self.counters.dropped_malformed += 1;
            return;
        };
        if Some(inner.src) != self.uplink_addr(header.is_v6()) {
            self.counters.dropped_no_flow += 1;
            return;
        }
        let key = match inner.transport {
            Transport::Tcp {
                src_port, dst_port, ..
            }
            | Transport::Udp { src_port, dst_port } => ReplyKey {
                protocol: inner.protocol,
                remote: inner.dst,
                remote_port: dst_port,
                local_port: src_port,
            },
            Transport::IcmpEcho { ident, .. } => ReplyKey {
                protocol: inner.protocol,
                remote: inner.dst,
                remote_port: 0,
                local_port: ident,
            },
            _ => {
                self.counters.dropped_no_flow += 1;
                return;
            }
        };
        let Some(conn) = self
            .conntrack
            .find_reply(&key)
            .and_then(|conn_id| self.conntrack.get(conn_id))
            .cloned()
        else {
            self.counters.dropped_no_flow += 1;
            return;
        };
        let Some((client_id, client)) = self.client_for_conn(&conn) else {
            self.counters.dropped_no_flow += 1;
            return;
        };
        if header.hop_limit <= 1 {
            self.counters.dropped_ttl += 1;
            return;
        }
        let Some(mut frame) = frame_around(ip, header) else {
            return;
        };
        let Some(mut pkt) = packet_in(&mut frame, header) else {
            return;
        };
        // The quoted packet as the client sent it, then the outer header.
        if let Some(mut quoted) = pkt.icmp_quoted_mut() {
            quoted.set_src(conn.orig.src);
            quoted.set_src_port(conn.orig.src_port);
            quoted.set_dst(conn.orig.dst);
        }
        pkt.decrement_hop_limit();
        pkt.set_dst(conn.orig.src);
        if header.src == conn.reply.remote {
            pkt.set_src(conn.orig.dst);
        }
        pkt.fill_icmp_checksum();
        if self.send_to_client(&client, client_id, frame, out) {
            self.counters.icmp_errors_translated += 1;
        }
        let _ = now;
    }
}
