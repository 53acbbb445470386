//! Client to uplink: the checks every client packet passes (source,
//! destination, TTL), new flows judged by the client's rules, source NAT to
//! the uplink address, DNS redirection, fragments and ICMP errors about
//! inbound flows.

use alloc::vec::Vec;
use core::net::IpAddr;

use smoltcp::time::Instant;

use super::neighbor::ICMPV6_NEIGHBOR_SOLICIT;
use super::rules::{flow_query, opens_flow, RuleContext};
use super::{
    flow_ports, frame_around, packet_in, Client, ClientId, Firewall, Transmit, DNS_PORT,
    UDP_PROTOCOL,
};
use crate::conntrack::{ConnId, Direction, FlowState, OrigKey, ReplyKey, TcpState};
use crate::fragments::DatagramKey;
use crate::packet::{self, IpHeader, IpPacket, Transport};
use qubes::firewall_rules::Action;

/// NAT ports are picked from here when the client's own port is taken.
pub(super) const NAT_PORT_FIRST: u16 = 1024;
/// How many candidate ports a new flow may try before it is refused.
const NAT_PORT_PROBES: usize = 4096;

fn initial_state(transport: &Transport) -> FlowState {
    match transport {
        Transport::Tcp { flags, .. } => FlowState::Tcp {
            state: if flags.syn {
                TcpState::SynSent
            } else {
                TcpState::PickedUp
            },
            fin_orig: false,
            fin_reply: false,
        },
        Transport::IcmpEcho { .. } => FlowState::IcmpEcho,
        _ => FlowState::Udp { replied: false },
    }
}

/// Whether a client may send to `addr` through the firewall: not to
/// broadcast, multicast, loopback, unspecified or link-local addresses,
/// which Linux does not forward either.
fn is_routable(addr: &IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => {
            !(a.is_broadcast()
                || a.is_multicast()
                || a.is_loopback()
                || a.is_unspecified()
                || a.is_link_local())
        }
        IpAddr::V6(a) => {
            !(a.is_multicast()
                || a.is_loopback()
                || a.is_unspecified()
                || a.is_unicast_link_local())
        }
    }
}

impl Firewall {
    /// An IP packet from client `id`: anti-spoofing, traffic to the
    /// firewall itself, TTL, client-to-client, then the flow it belongs to
    /// or opens.
    pub(super) fn client_ip(
        &mut self,
        now: Instant,
        id: ClientId,
        client: &Client,
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
        if header.is_v6() && !self.ipv6_enabled() {
            // Linux loads qubes-ipv6-disabled.nft: every IPv6 packet is
            // dropped, neighbour discovery included.
            self.counters.dropped_ipv6_no_uplink += 1;
            return;
        }
        if header.is_v6()
            && header.transport
                == (Transport::IcmpOther {
                    icmp_type: ICMPV6_NEIGHBOR_SOLICIT,
                })
        {
            // Answered for the firewall's own addresses, never forwarded.
            self.client_neighbor_solicitation(id, client, &header, ip, out);
            return;
        }
        let own_source = match header.src {
            IpAddr::V4(a) => a == client.config.ip4,
            IpAddr::V6(a) => client.config.ip6 == Some(a),
        };
        if !own_source {
            self.counters.dropped_spoofed += 1;
            return;
        }
        if self.is_own_addr(&header.dst) {
            self.addressed_to_firewall(now, id, client, &header, ip, out);
            return;
        }
        let Some(uplink_ip) = self.uplink_addr(header.is_v6()) else {
            self.counters.dropped_ipv6_no_uplink += 1;
            return;
        };
        if !is_routable(&header.dst) {
            // Broadcast, multicast, link-local and the like stay on the
            // client's link.
            self.counters.dropped_unsupported += 1;
            return;
        }
        if header.hop_limit <= 1 {
            // Linux's ip_forward answers before the forward chain's rules.
            self.counters.dropped_ttl += 1;
            self.time_exceeded(now, id, client, &header, ip, out);
            return;
        }
        if self.client_with_addr(&header.dst).is_some() {
            // Client-to-client: flows are only ever opened towards the
            // uplink, so no such packet is a reply to an allowed flow.
            self.counters.dropped_inter_client += 1;
            return;
        }
        match header.transport {
            Transport::LaterFragment => {
                self.client_later_fragment(now, &header, ip, uplink_ip, out)
            }
            Transport::Tcp { .. } | Transport::Udp { .. } | Transport::IcmpEcho { .. } => {
                self.client_flow_packet(now, id, client, &header, ip, uplink_ip, out)
            }
            Transport::IcmpError { .. } => self.client_icmp_error(now, &header, ip, uplink_ip, out),
            // ICMP types conntrack cannot open a flow with (router
            // solicitations, MLD reports, a stray reply): invalid in Linux,
            // dropped before the rules.
            Transport::IcmpOther { .. } => self.counters.dropped_no_flow += 1,
            Transport::Other => self.counters.dropped_unsupported += 1,
        }
    }

    /// An ICMP error from a client about a packet of one of its flows that
    /// came from the uplink (say, port unreachable for a late UDP reply):
    /// rewrite the quoted packet back to the uplink's view, then the outer
    /// header, as Linux does for RELATED traffic.
    pub(super) fn client_icmp_error(
        &mut self,
        now: Instant,
        header: &IpHeader,
        ip: &[u8],
        uplink_ip: IpAddr,
        out: &mut Vec<Transmit>,
    ) {
        let Some(inner) = IpPacket::with_header(ip, *header)
            .icmp_quoted()
            .map(|quoted| *quoted.header())
        else {
            self.counters.dropped_malformed += 1;
            return;
        };
        // The quoted packet went from the remote (as the client saw it) to
        // the client.
        let key = match inner.transport {
            Transport::Tcp {
                src_port, dst_port, ..
            }
            | Transport::Udp { src_port, dst_port } => OrigKey {
                protocol: inner.protocol,
                src: inner.dst,
                src_port: dst_port,
                dst: inner.src,
                dst_port: src_port,
            },
            Transport::IcmpEcho { ident, .. } => OrigKey {
                protocol: inner.protocol,
                src: inner.dst,
                src_port: ident,
                dst: inner.src,
                dst_port: 0,
            },
            _ => {
                self.counters.dropped_no_flow += 1;
                return;
            }
        };
        if inner.dst != header.src {
            self.counters.dropped_spoofed += 1;
            return;
        }
        let Some(conn) = self
            .conntrack
            .find_orig(&key)
            .and_then(|conn_id| self.conntrack.get(conn_id))
            .cloned()
        else {
            self.counters.dropped_no_flow += 1;
            return;
        };
        let Some(mut frame) = frame_around(ip, header) else {
            return;
        };
        let Some(mut pkt) = packet_in(&mut frame, header) else {
            return;
        };
        // The quoted packet as the uplink sent it, then the outer header.
        if let Some(mut quoted) = pkt.icmp_quoted_mut() {
            quoted.set_src(conn.reply.remote);
            quoted.set_dst(uplink_ip);
            quoted.set_dst_port(conn.reply.local_port);
        }
        pkt.decrement_hop_limit();
        pkt.set_src(uplink_ip);
        pkt.set_dst(conn.reply.remote);
        pkt.fill_icmp_checksum();
        self.send_to_uplink(now, frame, out);
        self.counters.icmp_errors_translated += 1;
    }

    /// A free uplink-side port for a new flow to `remote`:`remote_port`,
    /// preferring the client's own (as Linux masquerading does).
    pub(super) fn allocate_nat_port(
        &mut self,
        protocol: u8,
        remote: IpAddr,
        remote_port: u16,
        preferred: u16,
    ) -> Option<u16> {
        let key = |local_port| ReplyKey {
            protocol,
            remote,
            remote_port,
            local_port,
        };
        // A port the dsthost= resolver awaits an answer on from this
        // remote is never handed out (its answers must not reach a client).
        let resolver_awaits =
            |port| protocol == UDP_PROTOCOL && self.resolver.expects(remote, port);
        if preferred >= NAT_PORT_FIRST
            && !resolver_awaits(preferred)
            && self.conntrack.reply_key_free(&key(preferred))
        {
            return Some(preferred);
        }
        for _ in 0..NAT_PORT_PROBES {
            let candidate = self.next_nat_port;
            self.next_nat_port = if candidate == u16::MAX {
                NAT_PORT_FIRST
            } else {
                candidate + 1
            };
            if !resolver_awaits(candidate) && self.conntrack.reply_key_free(&key(candidate)) {
                return Some(candidate);
            }
        }
        None
    }

    /// Where a new flow really goes, as Linux's prerouting DNAT
    /// (`qubes-setup-dnat-to-ns`) decides before the rules see it: DNS
    /// (TCP or UDP port 53) to a virtual resolver goes to its upstream
    /// resolver; `None` when that virtual resolver has no upstream of the
    /// packet's family, and the query is dropped ("Drop IPv4 DNS requests
    /// to qubesdb_dns addresses").
    pub(super) fn redirect(&self, header: &IpHeader, dst_port: u16) -> Option<IpAddr> {
        let is_dns = dst_port == DNS_PORT
            && matches!(
                header.transport,
                Transport::Tcp { .. } | Transport::Udp { .. }
            );
        if !is_dns {
            return Some(header.dst);
        }
        match self
            .config
            .dns
            .iter()
            .find(|d| d.virtual_server == header.dst)
        {
            Some(redirect) => redirect
                .upstream
                .filter(|upstream| upstream.is_ipv6() == header.is_v6()),
            None => Some(header.dst),
        }
    }

    /// A TCP, UDP or ICMP query packet from a client: forwarded on its
    /// flow, or on a new one the rules accept, translated to the uplink.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn client_flow_packet(
        &mut self,
        now: Instant,
        id: ClientId,
        client: &Client,
        header: &IpHeader,
        ip: &[u8],
        uplink_ip: IpAddr,
        out: &mut Vec<Transmit>,
    ) {
        let Some((src_port, dst_port, flags)) = flow_ports(&header.transport) else {
            return;
        };
        let orig = OrigKey {
            protocol: header.protocol,
            src: header.src,
            src_port,
            dst: header.dst,
            dst_port,
        };
        let mut existing = self.conntrack.find_orig(&orig);
        if let Some(conn_id) = existing {
            // A fresh SYN on a finished connection starts a new one, which
            // the rules must judge again.
            let finished = matches!(
                self.conntrack.get(conn_id).map(|c| c.state),
                Some(FlowState::Tcp {
                    state: TcpState::TimeWait | TcpState::Closed,
                    ..
                })
            );
            if finished && flags.syn && !flags.ack {
                self.conntrack.remove(conn_id);
                existing = None;
            }
        }
        let conn_id = match existing {
            Some(conn_id) => conn_id,
            None => match self.open_flow(now, id, client, header, ip, orig, out) {
                Some(conn_id) => conn_id,
                None => return,
            },
        };
        self.conntrack
            .on_packet(conn_id, now, Direction::Original, flags);
        let Some(conn) = self.conntrack.get(conn_id).cloned() else {
            return;
        };
        let Some(mut frame) = frame_around(ip, header) else {
            self.counters.dropped_malformed += 1;
            return;
        };
        // Only the headers change, whatever the size (a GSO super-packet)
        // or the state of the checksum field (blank or complete).
        let offload = self.ingress;
        if let Some(pkt) = packet_in(&mut frame, header) {
            let mut pkt = pkt.with_partial_checksum(offload.csum_blank);
            pkt.decrement_hop_limit();
            pkt.set_src(uplink_ip);
            pkt.set_src_port(conn.reply.local_port);
            // The upstream resolver, when redirected.
            pkt.set_dst(conn.reply.remote);
        }
        if let Some(key) = DatagramKey::of(header) {
            self.fragments.record(now, key, conn_id, conn.client);
        }
        self.forward_to_uplink(now, frame, offload, true, out);
        self.counters.forwarded_out += 1;
    }

    /// A new flow from a client: DNS redirection, then the client's rules
    /// on the translated destination, then a NAT port. `None` when it is
    /// dropped or refused (the refusal is sent).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn open_flow(
        &mut self,
        now: Instant,
        id: ClientId,
        client: &Client,
        header: &IpHeader,
        ip: &[u8],
        orig: OrigKey,
        out: &mut Vec<Transmit>,
    ) -> Option<ConnId> {
        if !opens_flow(&header.transport) {
            self.counters.dropped_no_flow += 1;
            return None;
        }
        let Some(remote) = self.redirect(header, orig.dst_port) else {
            self.counters.dropped_dns_no_upstream += 1;
            return None;
        };
        // The rules judge the translated destination, as Linux's forward
        // chain runs after the prerouting DNAT.
        let query = flow_query(header, remote)?;
        let Some(rules) = self.rules.get(&header.src) else {
            // No rule directory at all: Linux has no chain for the address
            // and the forward chain's policy drops silently.
            self.counters.dropped_no_rules += 1;
            return None;
        };
        let ctx = RuleContext {
            dns: &self.config.dns,
            hosts: &rules.hosts,
        };
        if rules.set.evaluate(&query, &ctx) == Action::Drop {
            self.refuse(now, id, client, header, ip, out);
            return None;
        }
        let Some(local_port) =
            self.allocate_nat_port(header.protocol, remote, orig.dst_port, orig.src_port)
        else {
            self.counters.dropped_nat_exhausted += 1;
            return None;
        };
        let reply = ReplyKey {
            protocol: header.protocol,
            remote,
            remote_port: orig.dst_port,
            local_port,
        };
        self.conntrack.insert(
            now,
            id,
            orig,
            reply,
            query,
            initial_state(&header.transport),
        )
    }

    /// A later fragment from a client, which follows its first
    /// fragment's flow.
    pub(super) fn client_later_fragment(
        &mut self,
        now: Instant,
        header: &IpHeader,
        ip: &[u8],
        uplink_ip: IpAddr,
        out: &mut Vec<Transmit>,
    ) {
        let Some(key) = DatagramKey::of(header) else {
            return;
        };
        let Some(conn) = self.fragment_flow(now, &key) else {
            return;
        };
        let Some(mut frame) = frame_around(ip, header) else {
            return;
        };
        if let Some(mut pkt) = packet_in(&mut frame, header) {
            pkt.decrement_hop_limit();
            pkt.set_src(uplink_ip);
            pkt.set_dst(conn.reply.remote);
        }
        let offload = self.ingress;
        self.forward_to_uplink(now, frame, offload, true, out);
        self.counters.forwarded_out += 1;
    }
}
