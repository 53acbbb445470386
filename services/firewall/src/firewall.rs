//! The packet path: `Firewall::handle(now, interface, frame)` takes one
//! Ethernet frame from the uplink or a client and returns the frames to
//! send, updating connection tracking and counters on the way.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;
use core::net::{IpAddr, Ipv6Addr};

use qubes::firewall_rules::{Action, FlowQuery, MatchContext, RuleSet};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{ArpOperation, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol};

use crate::config::{ClientConfig, Config, DnsRedirect};
use crate::conntrack::{
    ConnId, ConnTrack, Connection, Direction, FlowState, OrigKey, ReplyKey, TcpState,
};
use crate::counters::Counters;
use crate::fragments::{DatagramKey, FragmentTable};
use crate::icmp;
use crate::link::{self, ETHERNET_HEADER_LEN};
use crate::packet::{self, IpHeader, TcpFlags, Transport};
use crate::resolver::{RecordType, Resolver, ResolverStats, RESOLVER_PORT};

/// Identifies a client link (for example its vif number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientId(pub u32);

/// Where a frame comes from or goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interface {
    /// The link towards sys-net.
    Uplink,
    /// The link to one client VM.
    Client(ClientId),
}

/// A frame to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The link to send it on.
    pub interface: Interface,
    /// The Ethernet frame.
    pub frame: Vec<u8>,
}

/// NAT ports are picked from here when the client's own port is taken.
const NAT_PORT_FIRST: u16 = 1024;
/// How many candidate ports a new flow may try before it is refused.
const NAT_PORT_PROBES: usize = 4096;
/// Least time between two ARP requests for the uplink gateway.
const ARP_RETRY: Duration = Duration::from_secs(1);
/// Most frames held while the uplink gateway's MAC is unknown.
const MAX_AWAITING_GATEWAY: usize = 32;
/// The DNS port.
const DNS_PORT: u16 = 53;

/// ICMPv6 neighbour solicitation.
const ICMPV6_NEIGHBOR_SOLICIT: u8 = 135;

/// A client as the firewall tracks it.
#[derive(Debug, Clone, Copy)]
struct Client {
    config: ClientConfig,
    mac: Option<EthernetAddress>,
}

/// What rules may ask about beyond the flow: the DNS servers and the
/// current `dsthost=` resolutions.
struct RuleContext<'a> {
    dns: &'a [DnsRedirect],
    resolver: &'a Resolver,
}

impl MatchContext for RuleContext<'_> {
    fn is_dns_server(&self, ip: &IpAddr) -> bool {
        self.dns.iter().any(|d| d.virtual_server == *ip)
    }

    fn host_resolves_to(&self, host: &str, ip: &IpAddr) -> bool {
        self.resolver.resolves_to(host, ip)
    }
}

/// The firewall: clients, their rules, connection tracking and NAT.
#[derive(Debug)]
pub struct Firewall {
    config: Config,
    clients: BTreeMap<ClientId, Client>,
    rules: BTreeMap<IpAddr, RuleSet>,
    resolver: Resolver,
    conntrack: ConnTrack,
    fragments: FragmentTable,
    gateway_mac: Option<EthernetAddress>,
    last_arp_request: Option<Instant>,
    awaiting_gateway: VecDeque<Vec<u8>>,
    next_nat_port: u16,
    counters: Counters,
}

/// The ports of a flow-carrying packet: TCP/UDP ports, or the echo
/// identifier as source "port" and 0 as destination.
fn flow_ports(transport: &Transport) -> Option<(u16, u16, TcpFlags)> {
    match *transport {
        Transport::Tcp {
            src_port,
            dst_port,
            flags,
        } => Some((src_port, dst_port, flags)),
        Transport::Udp { src_port, dst_port } => Some((src_port, dst_port, TcpFlags::default())),
        Transport::IcmpEcho { ident, .. } => Some((ident, 0, TcpFlags::default())),
        _ => None,
    }
}

/// The rule-language view of a new flow.
fn flow_query(header: &IpHeader) -> Option<FlowQuery> {
    let dst = header.dst;
    match header.transport {
        Transport::Tcp { dst_port, .. } => Some(FlowQuery::Tcp {
            dst,
            port: dst_port,
        }),
        Transport::Udp { dst_port, .. } => Some(FlowQuery::Udp {
            dst,
            port: dst_port,
        }),
        Transport::IcmpEcho { icmp_type, .. } => Some(FlowQuery::Icmp { dst, icmp_type }),
        _ => None,
    }
}

/// Whether a packet without a flow may open one.
fn opens_flow(transport: &Transport) -> bool {
    match transport {
        Transport::Tcp { flags, .. } => flags.syn && !flags.ack && !flags.rst,
        Transport::Udp { .. } => true,
        Transport::IcmpEcho { request, .. } => *request,
        _ => false,
    }
}

fn initial_state(transport: &Transport) -> FlowState {
    match transport {
        Transport::Tcp { .. } => FlowState::Tcp {
            state: TcpState::SynSent,
            fin_orig: false,
            fin_reply: false,
        },
        Transport::IcmpEcho { .. } => FlowState::IcmpEcho,
        _ => FlowState::Udp { replied: false },
    }
}

/// A frame around a copy of `ip` (trimmed to the packet's length), ready
/// for in-place rewriting of the packet at [`ETHERNET_HEADER_LEN`].
fn frame_around(ip: &[u8], header: &IpHeader) -> Option<Vec<u8>> {
    let packet = ip.get(..header.len)?;
    let ethertype = if header.is_v6() {
        EthernetProtocol::Ipv6
    } else {
        EthernetProtocol::Ipv4
    };
    let zero = EthernetAddress([0; 6]);
    Some(link::ethernet_frame(zero, zero, ethertype, packet))
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

fn ip_ethertype(ip: &[u8]) -> EthernetProtocol {
    match ip.first().map(|b| b >> 4) {
        Some(6) => EthernetProtocol::Ipv6,
        _ => EthernetProtocol::Ipv4,
    }
}

impl Firewall {
    /// A firewall with no clients yet.
    pub fn new(config: Config) -> Firewall {
        let record_types = if config.uplink.ip6.is_some() {
            alloc::vec![RecordType::A, RecordType::Aaaa]
        } else {
            alloc::vec![RecordType::A]
        };
        let seed = u32::from(config.uplink.ip4) ^ 0x6d6f_6174;
        Firewall {
            conntrack: ConnTrack::new(
                config.max_flows,
                config.max_flows_per_client,
                config.timeouts,
            ),
            fragments: FragmentTable::new(config.max_fragmented_datagrams),
            gateway_mac: config.uplink.gateway_mac,
            config,
            clients: BTreeMap::new(),
            rules: BTreeMap::new(),
            resolver: Resolver::new(record_types, seed),
            last_arp_request: None,
            awaiting_gateway: VecDeque::new(),
            next_nat_port: NAT_PORT_FIRST,
            counters: Counters::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Packet counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The connection table (read only).
    pub fn conntrack(&self) -> &ConnTrack {
        &self.conntrack
    }

    /// Number of datagrams tracked for their later fragments.
    pub fn tracked_fragmented_datagrams(&self) -> usize {
        self.fragments.len()
    }

    /// The uplink gateway's MAC, once known.
    pub fn gateway_mac(&self) -> Option<EthernetAddress> {
        self.gateway_mac
    }

    /// Connect a client link. Until rules are set for its addresses, all
    /// its new flows are refused (fail closed).
    pub fn add_client(&mut self, id: ClientId, config: ClientConfig) {
        self.remove_client(id);
        self.clients.insert(
            id,
            Client {
                config,
                mac: config.mac,
            },
        );
    }

    /// Disconnect a client link and forget its flows; returns how many.
    pub fn remove_client(&mut self, id: ClientId) -> usize {
        if self.clients.remove(&id).is_none() {
            return 0;
        }
        self.conntrack.retain(|conn| conn.client != id)
    }

    /// Install the rules dom0 wrote under `/qubes-firewall/<client_addr>/`.
    /// They apply to the next packet; existing flows from that address that
    /// the new rules refuse are killed, the others live on. Returns the
    /// number of flows killed.
    pub fn set_rules(&mut self, client_addr: IpAddr, rules: RuleSet) -> usize {
        let ctx = RuleContext {
            dns: &self.config.dns,
            resolver: &self.resolver,
        };
        let killed = self.conntrack.retain(|conn| {
            conn.orig.src != client_addr || rules.evaluate(&conn.query, &ctx) == Action::Accept
        });
        self.rules.insert(client_addr, rules);
        let names = self.dsthost_names();
        self.resolver.set_names(&names);
        self.counters.flows_killed_by_rules += killed as u64;
        killed
    }

    /// Every `dsthost=` name in the installed rules, for the resolver.
    pub fn dsthost_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .rules
            .values()
            .flat_map(|set| set.rules.iter())
            .filter_map(|rule| match &rule.destination {
                Some(qubes::firewall_rules::Destination::Host(name)) => Some(name.clone()),
                _ => None,
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Record what `name` resolves to, for `dsthost=` rules, bypassing
    /// the firewall's own resolver (for platforms with another source).
    pub fn set_host_addresses(&mut self, now: Instant, name: &str, addrs: Vec<IpAddr>) {
        self.resolver.set_addresses(name, addrs, now);
    }

    /// Counters of the `dsthost=` resolver.
    pub fn resolver_stats(&self) -> ResolverStats {
        self.resolver.stats()
    }

    /// Housekeeping at `now`, to be called regularly (every 100 ms is
    /// plenty): forget expired flows and send the DNS queries that are due
    /// for `dsthost=` rules. Returns the frames to send.
    pub fn poll(&mut self, now: Instant) -> Vec<Transmit> {
        self.conntrack.expire(now);
        let mut out = Vec::new();
        if self.gateway_mac.is_none() && !self.awaiting_gateway.is_empty() {
            self.request_gateway_mac(now, &mut out);
        }
        let upstream = self.config.dns.iter().find_map(|d| match d.upstream {
            Some(IpAddr::V4(a)) => Some(a),
            _ => None,
        });
        let queries = self.resolver.due_queries(now);
        if let Some(upstream) = upstream {
            for query in queries {
                let packet = link::udp_packet_v4(
                    self.config.uplink.ip4,
                    RESOLVER_PORT,
                    upstream,
                    DNS_PORT,
                    &query.message,
                );
                let frame = link::ethernet_frame(
                    self.config.uplink.mac,
                    EthernetAddress([0; 6]),
                    EthernetProtocol::Ipv4,
                    &packet,
                );
                self.send_to_uplink(now, frame, &mut out);
            }
        }
        self.counters.frames_out += out.len() as u64;
        out
    }

    /// Process one frame received at `now` on `interface`; returns the
    /// frames to send.
    pub fn handle(&mut self, now: Instant, interface: Interface, frame: &[u8]) -> Vec<Transmit> {
        let mut out = Vec::new();
        self.counters.frames_in += 1;
        // Forget flows past their deadline before anything looks them up.
        self.conntrack.expire(now);
        match interface {
            Interface::Uplink => self.uplink_frame(now, frame, &mut out),
            Interface::Client(id) => self.client_frame(now, id, frame, &mut out),
        }
        self.counters.frames_out += out.len() as u64;
        out
    }

    fn client_with_addr(&self, addr: &IpAddr) -> Option<ClientId> {
        self.clients
            .iter()
            .find(|(_, c)| match addr {
                IpAddr::V4(a) => c.config.ip4 == *a,
                IpAddr::V6(a) => c.config.ip6 == Some(*a),
            })
            .map(|(id, _)| *id)
    }

    fn is_own_client_side_addr(&self, addr: &IpAddr) -> bool {
        match addr {
            IpAddr::V4(a) => *a == self.config.client_side.gateway4,
            IpAddr::V6(a) => self.config.client_side.gateway6 == Some(*a),
        }
    }

    fn client_side_source(&self, v6: bool) -> Option<IpAddr> {
        if v6 {
            self.config.client_side.gateway6.map(IpAddr::V6)
        } else {
            Some(IpAddr::V4(self.config.client_side.gateway4))
        }
    }

    fn uplink_addr(&self, v6: bool) -> Option<IpAddr> {
        if v6 {
            self.config.uplink.ip6.map(IpAddr::V6)
        } else {
            Some(IpAddr::V4(self.config.uplink.ip4))
        }
    }

    // ----- client side -----

    fn client_frame(&mut self, now: Instant, id: ClientId, frame: &[u8], out: &mut Vec<Transmit>) {
        let Some(client) = self.clients.get_mut(&id) else {
            self.counters.dropped_unknown_interface += 1;
            return;
        };
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            self.counters.dropped_malformed += 1;
            return;
        };
        let src_mac = eth.src_addr();
        if !src_mac.is_unicast() {
            self.counters.dropped_malformed += 1;
            return;
        }
        // The link is point-to-point: whoever sends on it is the client.
        client.mac = Some(src_mac);
        let client = *client;
        match eth.ethertype() {
            EthernetProtocol::Arp => self.client_arp(id, &client, eth.payload(), out),
            EthernetProtocol::Ipv4 | EthernetProtocol::Ipv6 => {
                self.client_ip(now, id, &client, eth.payload(), out)
            }
            _ => self.counters.dropped_unsupported += 1,
        }
    }

    fn send_to_client(
        &mut self,
        client: &Client,
        id: ClientId,
        mut frame: Vec<u8>,
        out: &mut Vec<Transmit>,
    ) -> bool {
        let Some(mac) = client.mac else {
            self.counters.dropped_no_neighbor += 1;
            return false;
        };
        link::set_ethernet_addrs(&mut frame, self.config.client_side.mac, mac);
        out.push(Transmit {
            interface: Interface::Client(id),
            frame,
        });
        true
    }

    fn client_arp(
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
        out.push(Transmit {
            interface: Interface::Client(id),
            frame: reply,
        });
        self.counters.neighbor_replies += 1;
    }

    fn client_ip(
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
        if let Transport::IcmpOther { icmp_type } = header.transport {
            if header.is_v6() && icmp_type == ICMPV6_NEIGHBOR_SOLICIT {
                self.client_neighbor_solicitation(id, client, &header, ip, out);
            } else {
                // Router solicitations, MLD reports and the like: nothing
                // to forward.
                self.counters.dropped_unsupported += 1;
            }
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
        if self.is_own_client_side_addr(&header.dst) {
            self.addressed_to_firewall(id, client, &header, ip, out);
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
        if self.client_with_addr(&header.dst).is_some() {
            // Client-to-client: flows are only ever opened towards the
            // uplink, so no such packet is a reply to an allowed flow.
            self.counters.dropped_inter_client += 1;
            return;
        }
        if header.hop_limit <= 1 {
            self.counters.dropped_ttl += 1;
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
            _ => self.counters.dropped_unsupported += 1,
        }
    }

    /// An ICMP error from a client about a packet of one of its flows that
    /// came from the uplink (say, port unreachable for a late UDP reply):
    /// rewrite the quoted packet back to the uplink's view, then the outer
    /// header, as Linux does for RELATED traffic.
    fn client_icmp_error(
        &mut self,
        now: Instant,
        header: &IpHeader,
        ip: &[u8],
        uplink_ip: IpAddr,
        out: &mut Vec<Transmit>,
    ) {
        const ICMP_HEADER_LEN: usize = 8;
        let quoted_at = header.l4_offset + ICMP_HEADER_LEN;
        let Some(quoted) = ip.get(quoted_at..header.len) else {
            self.counters.dropped_malformed += 1;
            return;
        };
        let Ok(inner) = packet::parse_quoted(quoted) else {
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
        let Some(pkt) = frame.get_mut(ETHERNET_HEADER_LEN..) else {
            return;
        };
        if let Some(inner_pkt) = pkt.get_mut(quoted_at..) {
            if conn.reply.remote != inner.src {
                packet::set_src(inner_pkt, &inner, conn.reply.remote);
            }
            packet::set_dst(inner_pkt, &inner, uplink_ip);
            packet::set_dst_port(inner_pkt, &inner, conn.reply.local_port);
        }
        packet::decrement_hop_limit(pkt, header);
        packet::set_src(pkt, header, uplink_ip);
        if conn.reply.remote != header.dst {
            packet::set_dst(pkt, header, conn.reply.remote);
        }
        let mut outer = *header;
        outer.src = uplink_ip;
        outer.dst = conn.reply.remote;
        icmp::refill_checksum(pkt, &outer);
        self.send_to_uplink(now, frame, out);
        self.counters.icmp_errors_translated += 1;
    }

    fn client_neighbor_solicitation(
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
        if client.config.ip6 == Some(target) {
            return;
        }
        let (Some(mac), IpAddr::V6(src)) = (client.mac, header.src) else {
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
        out.push(Transmit {
            interface: Interface::Client(id),
            frame,
        });
        self.counters.neighbor_replies += 1;
    }

    fn addressed_to_firewall(
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

    fn refuse(
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
    fn allocate_nat_port(
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
        // The resolver's own port is never handed out.
        if preferred >= NAT_PORT_FIRST
            && preferred != RESOLVER_PORT
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
            if candidate != RESOLVER_PORT && self.conntrack.reply_key_free(&key(candidate)) {
                return Some(candidate);
            }
        }
        None
    }

    /// Where a new flow really goes: queries to a virtual DNS server go to
    /// the matching upstream resolver.
    fn redirect(&self, header: &IpHeader, dst_port: u16) -> IpAddr {
        let is_dns = dst_port == DNS_PORT
            && matches!(
                header.transport,
                Transport::Tcp { .. } | Transport::Udp { .. }
            );
        self.config
            .dns
            .iter()
            .find(|d| is_dns && d.virtual_server == header.dst)
            .and_then(|d| d.upstream)
            .unwrap_or(header.dst)
    }

    #[allow(clippy::too_many_arguments)]
    fn client_flow_packet(
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
        if let Some(pkt) = frame.get_mut(ETHERNET_HEADER_LEN..) {
            packet::decrement_hop_limit(pkt, header);
            packet::set_src(pkt, header, uplink_ip);
            packet::set_src_port(pkt, header, conn.reply.local_port);
            if conn.reply.remote != header.dst {
                packet::set_dst(pkt, header, conn.reply.remote);
            }
        }
        if let Some(fragment) = header.fragment {
            self.fragments.record(
                now,
                DatagramKey {
                    src: header.src,
                    dst: header.dst,
                    ident: fragment.ident,
                    protocol: header.protocol,
                },
                conn_id,
            );
        }
        self.send_to_uplink(now, frame, out);
        self.counters.forwarded_out += 1;
    }

    #[allow(clippy::too_many_arguments)]
    fn open_flow(
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
        let query = flow_query(header)?;
        let ctx = RuleContext {
            dns: &self.config.dns,
            resolver: &self.resolver,
        };
        let action = self
            .rules
            .get(&header.src)
            .map_or(Action::Drop, |rules| rules.evaluate(&query, &ctx));
        if action == Action::Drop {
            self.refuse(id, client, header, ip, out);
            return None;
        }
        let remote = self.redirect(header, orig.dst_port);
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

    fn client_later_fragment(
        &mut self,
        now: Instant,
        header: &IpHeader,
        ip: &[u8],
        uplink_ip: IpAddr,
        out: &mut Vec<Transmit>,
    ) {
        let Some(fragment) = header.fragment else {
            return;
        };
        let key = DatagramKey {
            src: header.src,
            dst: header.dst,
            ident: fragment.ident,
            protocol: header.protocol,
        };
        let Some(conn) = self
            .fragments
            .lookup(now, &key)
            .and_then(|conn_id| self.conntrack.get(conn_id))
            .cloned()
        else {
            self.counters.dropped_fragment += 1;
            return;
        };
        let Some(mut frame) = frame_around(ip, header) else {
            return;
        };
        if let Some(pkt) = frame.get_mut(ETHERNET_HEADER_LEN..) {
            packet::decrement_hop_limit(pkt, header);
            packet::set_src(pkt, header, uplink_ip);
            if conn.reply.remote != header.dst {
                packet::set_dst(pkt, header, conn.reply.remote);
            }
        }
        self.send_to_uplink(now, frame, out);
        self.counters.forwarded_out += 1;
    }

    fn request_gateway_mac(&mut self, now: Instant, out: &mut Vec<Transmit>) {
        let due = self
            .last_arp_request
            .is_none_or(|last| now >= last + ARP_RETRY);
        if due {
            self.last_arp_request = Some(now);
            out.push(Transmit {
                interface: Interface::Uplink,
                frame: link::arp_request(
                    self.config.uplink.mac,
                    self.config.uplink.ip4,
                    self.config.uplink.gateway4,
                ),
            });
        }
    }

    fn send_to_uplink(&mut self, now: Instant, mut frame: Vec<u8>, out: &mut Vec<Transmit>) {
        let Some(gateway_mac) = self.gateway_mac else {
            // Hold a few frames until the gateway answers, as a neighbour
            // table would; the oldest goes first when the queue is full.
            if self.awaiting_gateway.len() >= MAX_AWAITING_GATEWAY {
                self.awaiting_gateway.pop_front();
                self.counters.dropped_no_neighbor += 1;
            }
            self.awaiting_gateway.push_back(frame);
            self.request_gateway_mac(now, out);
            return;
        };
        link::set_ethernet_addrs(&mut frame, self.config.uplink.mac, gateway_mac);
        out.push(Transmit {
            interface: Interface::Uplink,
            frame,
        });
    }

    /// Record the gateway's MAC and release the frames that waited for it.
    fn learn_gateway_mac(&mut self, now: Instant, mac: EthernetAddress, out: &mut Vec<Transmit>) {
        self.gateway_mac = Some(mac);
        while let Some(frame) = self.awaiting_gateway.pop_front() {
            self.send_to_uplink(now, frame, out);
        }
    }

    // ----- uplink side -----

    fn uplink_frame(&mut self, now: Instant, frame: &[u8], out: &mut Vec<Transmit>) {
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            self.counters.dropped_malformed += 1;
            return;
        };
        match eth.ethertype() {
            EthernetProtocol::Arp => self.uplink_arp(now, eth.payload(), out),
            EthernetProtocol::Ipv4 | EthernetProtocol::Ipv6 => {
                self.uplink_ip(now, eth.src_addr(), eth.payload(), out)
            }
            _ => self.counters.dropped_unsupported += 1,
        }
    }

    fn uplink_arp(&mut self, now: Instant, payload: &[u8], out: &mut Vec<Transmit>) {
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
            out.push(Transmit {
                interface: Interface::Uplink,
                frame: link::arp_reply(
                    self.config.uplink.mac,
                    self.config.uplink.ip4,
                    source_hardware_addr,
                    source_protocol_addr,
                ),
            });
            self.counters.neighbor_replies += 1;
        }
    }

    fn uplink_ip(
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
        if let Transport::Udp {
            src_port: DNS_PORT,
            dst_port: RESOLVER_PORT,
        } = header.transport
        {
            if self
                .config
                .dns
                .iter()
                .any(|d| d.upstream == Some(header.src))
            {
                // An answer for the dsthost= resolver, not a client's flow.
                let payload = ip.get(header.l4_offset + 8..header.len).unwrap_or_default();
                self.resolver.on_response(now, payload);
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

    fn uplink_neighbor_solicitation(
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
        let (Some(ours), IpAddr::V6(src)) = (self.config.uplink.ip6, header.src) else {
            return;
        };
        if target != ours || !src_mac.is_unicast() {
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
        out.push(Transmit {
            interface: Interface::Uplink,
            frame: link::neighbor_advertisement(self.config.uplink.mac, ours, dst, src_mac),
        });
        self.counters.neighbor_replies += 1;
    }

    fn uplink_echo_request(
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

    fn client_for_conn(&self, conn: &Connection) -> Option<(ClientId, Client)> {
        self.clients.get(&conn.client).map(|c| (conn.client, *c))
    }

    fn uplink_flow_packet(
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
            self.counters.dropped_ttl += 1;
            return;
        }
        let Some(mut frame) = frame_around(ip, header) else {
            return;
        };
        if let Some(pkt) = frame.get_mut(ETHERNET_HEADER_LEN..) {
            packet::decrement_hop_limit(pkt, header);
            packet::set_dst(pkt, header, conn.orig.src);
            packet::set_dst_port(pkt, header, conn.orig.src_port);
            if conn.orig.dst != header.src {
                packet::set_src(pkt, header, conn.orig.dst);
            }
        }
        if let Some(fragment) = header.fragment {
            self.fragments.record(
                now,
                DatagramKey {
                    src: header.src,
                    dst: header.dst,
                    ident: fragment.ident,
                    protocol: header.protocol,
                },
                conn_id,
            );
        }
        if self.send_to_client(&client, client_id, frame, out) {
            self.counters.forwarded_in += 1;
        }
    }

    fn uplink_later_fragment(
        &mut self,
        now: Instant,
        header: &IpHeader,
        ip: &[u8],
        out: &mut Vec<Transmit>,
    ) {
        let Some(fragment) = header.fragment else {
            return;
        };
        let key = DatagramKey {
            src: header.src,
            dst: header.dst,
            ident: fragment.ident,
            protocol: header.protocol,
        };
        let Some(conn) = self
            .fragments
            .lookup(now, &key)
            .and_then(|conn_id| self.conntrack.get(conn_id))
            .cloned()
        else {
            self.counters.dropped_fragment += 1;
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
        if let Some(pkt) = frame.get_mut(ETHERNET_HEADER_LEN..) {
            packet::decrement_hop_limit(pkt, header);
            packet::set_dst(pkt, header, conn.orig.src);
            if conn.orig.dst != header.src {
                packet::set_src(pkt, header, conn.orig.dst);
            }
        }
        if self.send_to_client(&client, client_id, frame, out) {
            self.counters.forwarded_in += 1;
        }
    }

    /// An ICMP error from the uplink about a packet we translated: rewrite
    /// the quoted packet back to the client's view, then the outer header.
    fn uplink_icmp_error(
        &mut self,
        now: Instant,
        header: &IpHeader,
        ip: &[u8],
        out: &mut Vec<Transmit>,
    ) {
        const ICMP_HEADER_LEN: usize = 8;
        let quoted_at = header.l4_offset + ICMP_HEADER_LEN;
        let Some(quoted) = ip.get(quoted_at..header.len) else {
            self.counters.dropped_malformed += 1;
            return;
        };
        let Ok(inner) = packet::parse_quoted(quoted) else {
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
        let Some(pkt) = frame.get_mut(ETHERNET_HEADER_LEN..) else {
            return;
        };
        if let Some(inner_pkt) = pkt.get_mut(quoted_at..) {
            packet::set_src(inner_pkt, &inner, conn.orig.src);
            packet::set_src_port(inner_pkt, &inner, conn.orig.src_port);
            if conn.orig.dst != inner.dst {
                packet::set_dst(inner_pkt, &inner, conn.orig.dst);
            }
        }
        packet::decrement_hop_limit(pkt, header);
        packet::set_dst(pkt, header, conn.orig.src);
        if header.src == conn.reply.remote && conn.orig.dst != conn.reply.remote {
            packet::set_src(pkt, header, conn.orig.dst);
        }
        let mut outer = *header;
        outer.dst = conn.orig.src;
        if header.src == conn.reply.remote {
            outer.src = conn.orig.dst;
        }
        icmp::refill_checksum(pkt, &outer);
        if self.send_to_client(&client, client_id, frame, out) {
            self.counters.icmp_errors_translated += 1;
        }
        let _ = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_flow_openers_open_flows() {
        let syn = Transport::Tcp {
            src_port: 1,
            dst_port: 2,
            flags: TcpFlags {
                syn: true,
                ..TcpFlags::default()
            },
        };
        let syn_ack = Transport::Tcp {
            src_port: 1,
            dst_port: 2,
            flags: TcpFlags {
                syn: true,
                ack: true,
                ..TcpFlags::default()
            },
        };
        assert!(opens_flow(&syn));
        assert!(!opens_flow(&syn_ack));
        assert!(opens_flow(&Transport::Udp {
            src_port: 1,
            dst_port: 2
        }));
        assert!(opens_flow(&Transport::IcmpEcho {
            request: true,
            ident: 1,
            icmp_type: 8
        }));
        assert!(!opens_flow(&Transport::IcmpEcho {
            request: false,
            ident: 1,
            icmp_type: 0
        }));
        assert!(!opens_flow(&Transport::IcmpError { icmp_type: 3 }));
    }
}
