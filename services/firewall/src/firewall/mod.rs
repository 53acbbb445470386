//! The packet path: `Firewall::handle(now, interface, frame)` takes one
//! Ethernet frame from the uplink or a client and returns the frames to
//! send, updating connection tracking and counters on the way.
//!
//! One idea per module: [`rules`] (what a client's rules see of a flow),
//! [`outbound`] (client to uplink: checks, rules, NAT, DNS redirection),
//! [`inbound`] (uplink to client), [`local`] (traffic for the firewall
//! itself, and refusals) and [`neighbor`] (ARP, neighbour discovery, the
//! gateway's MAC). This file holds the state and the public API.

mod inbound;
mod local;
mod neighbor;
mod outbound;
mod rules;

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;
use core::net::{IpAddr, Ipv4Addr};

use qubes::firewall_rules::{Action, LoadedRules, RuleSet};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, EthernetFrame, EthernetProtocol};

use crate::config::{ClientConfig, Config};
use crate::conntrack::{ConnTrack, Connection, ReplyKey};
use crate::counters::Counters;
use crate::fragments::{DatagramKey, FragmentTable};
use crate::link;
use crate::offload::{self, Capabilities, Fitted, Offload};
use crate::packet::{IpHeader, IpPacket, TcpFlags, Transport};
use crate::random::{RandomSource, Unavailable};
use crate::resolver::{Outcome, RecordType, Resolver, ResolverStats};
use outbound::NAT_PORT_FIRST;
pub use rules::RuleReport;
use rules::{ActiveRules, PendingRules, RuleContext};

/// Most [`RuleReport`]s kept for [`Firewall::take_rule_reports`].
pub const MAX_RULE_REPORTS: usize = 64;

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
    /// What the link must still do with it (a forwarded super-packet or
    /// blank checksum the link accepts, see
    /// [`Firewall::set_capabilities`]); [`Offload::NONE`] for every frame
    /// the firewall makes itself.
    pub offload: Offload,
}

impl Transmit {
    /// A complete frame (no offload).
    pub fn plain(interface: Interface, frame: Vec<u8>) -> Transmit {
        Transmit {
            interface,
            frame,
            offload: Offload::NONE,
        }
    }
}

/// The DNS port.
const DNS_PORT: u16 = crate::resolver::DNS_PORT;
/// The IP protocol number of UDP.
const UDP_PROTOCOL: u8 = 17;

/// A client as the firewall tracks it.
#[derive(Debug, Clone, Copy)]
struct Client {
    config: ClientConfig,
    mac: Option<EthernetAddress>,
    /// The ICMP errors the firewall may still send to the client's IPv4
    /// and IPv6 address.
    error_budgets: [local::ErrorBudget; 2],
    /// The offloads its link takes.
    capabilities: Capabilities,
}

/// The firewall: clients, their rules, connection tracking and NAT.
#[derive(Debug)]
pub struct Firewall {
    config: Config,
    clients: BTreeMap<ClientId, Client>,
    rules: BTreeMap<IpAddr, ActiveRules>,
    pending_rules: BTreeMap<IpAddr, PendingRules>,
    rule_reports: VecDeque<RuleReport>,
    /// The ICMP errors the firewall may still send to any client.
    error_budget: local::ErrorBudget,
    /// The ICMP errors the firewall may still send to remotes on the
    /// uplink, per hashed address ([`local::UPLINK_ERROR_SLOTS`]).
    uplink_error_budgets: Vec<local::ErrorBudget>,
    resolver: Resolver,
    conntrack: ConnTrack,
    fragments: FragmentTable,
    gateway_mac: Option<EthernetAddress>,
    last_arp_request: Option<Instant>,
    /// Frames waiting for the gateway's MAC, with their offload and
    /// whether they are forwarded (for the counters).
    awaiting_gateway: VecDeque<(Vec<u8>, Offload, bool)>,
    next_nat_port: u16,
    counters: Counters,
    /// The offloads the uplink takes.
    uplink_capabilities: Capabilities,
    /// The offload of the frame being handled (checked against it).
    ingress: Offload,
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

/// The view of the packet in a frame built by [`frame_around`].
fn packet_in<'a>(frame: &'a mut [u8], header: &IpHeader) -> Option<IpPacket<&'a mut [u8]>> {
    Some(IpPacket::with_header(
        frame.get_mut(link::ETHERNET_HEADER_LEN..)?,
        *header,
    ))
}

fn ip_ethertype(ip: &[u8]) -> EthernetProtocol {
    match ip.first().map(|b| b >> 4) {
        Some(6) => EthernetProtocol::Ipv6,
        _ => EthernetProtocol::Ipv4,
    }
}

impl Firewall {
    /// A firewall with no clients yet and no random source: its
    /// `dsthost=` resolver sends no query (each counted in
    /// [`ResolverStats::no_randomness`]), so rules naming hosts block
    /// their client. Platforms use [`Firewall::with_random`].
    pub fn new(config: Config) -> Firewall {
        Firewall::with_random(config, Box::new(Unavailable))
    }

    /// A firewall with no clients yet whose `dsthost=` resolver takes its
    /// source ports and transaction ids from `random`.
    pub fn with_random(config: Config, random: Box<dyn RandomSource>) -> Firewall {
        Firewall {
            conntrack: ConnTrack::new(
                config.max_flows,
                config.max_flows_per_client,
                config.timeouts,
            ),
            fragments: FragmentTable::new(
                config.max_fragmented_datagrams,
                config.max_fragmented_datagrams_per_client,
            ),
            gateway_mac: config.uplink.gateway_mac,
            config,
            clients: BTreeMap::new(),
            rules: BTreeMap::new(),
            pending_rules: BTreeMap::new(),
            rule_reports: VecDeque::new(),
            error_budget: Default::default(),
            uplink_error_budgets: alloc::vec![Default::default(); local::UPLINK_ERROR_SLOTS],
            resolver: Resolver::new(random),
            last_arp_request: None,
            awaiting_gateway: VecDeque::new(),
            next_nat_port: NAT_PORT_FIRST,
            counters: Counters::default(),
            uplink_capabilities: Capabilities::NONE,
            ingress: Offload::NONE,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Replace the configuration (a watch saw one of
    /// [`crate::store::keys::CONFIG_KEYS`] change), keeping clients, rules
    /// and the flows that still make sense; returns how many flows ended.
    ///
    /// A new uplink address ends every flow (they are translated to the
    /// old one); a new gateway is looked up again. As Linux's
    /// `qubes-setup-dnat-to-ns` reloads the agent, which handles every
    /// address again (`firewall.py` 364-370), every client's rules are
    /// installed again: flows the rules now refuse (a `specialtarget=dns`
    /// rule after the upstream resolvers changed) end, and `dsthost=`
    /// names are looked up again. The table sizes and timeouts keep the
    /// values of [`Firewall::new`].
    pub fn set_config(&mut self, mut config: Config) -> usize {
        let old = &self.config;
        let mut ended = 0;
        if config.uplink.ip4 != old.uplink.ip4 || config.uplink.ip6 != old.uplink.ip6 {
            ended += self.conntrack.retain(|_| false);
            self.fragments = FragmentTable::new(
                old.max_fragmented_datagrams,
                old.max_fragmented_datagrams_per_client,
            );
        }
        if config.uplink.gateway4 != old.uplink.gateway4
            || config.uplink.gateway6 != old.uplink.gateway6
            || config.uplink.mac != old.uplink.mac
            || config.uplink.gateway_mac.is_some()
        {
            self.gateway_mac = config.uplink.gateway_mac;
            self.awaiting_gateway.clear();
            self.last_arp_request = None;
        }
        config.max_flows = old.max_flows;
        config.max_flows_per_client = old.max_flows_per_client;
        config.max_fragmented_datagrams = old.max_fragmented_datagrams;
        config.max_fragmented_datagrams_per_client = old.max_fragmented_datagrams_per_client;
        config.timeouts = old.timeouts;
        self.config = config;
        let active: Vec<(IpAddr, RuleSet)> = self
            .rules
            .iter()
            .filter(|(addr, _)| !self.pending_rules.contains_key(addr))
            .map(|(addr, active)| (*addr, active.set.clone()))
            .collect();
        for (addr, set) in active {
            ended += self.set_rules(addr, set);
        }
        for pending in self.pending_rules.values_mut() {
            pending.requested = false;
        }
        ended
    }

    /// Whether the IPv4 options of `ip` refuse it, counted: a source
    /// route (LSRR/SSRR) or options that do not parse. Linux checks
    /// options on input, before routing (`ip_rcv_options` in
    /// net/ipv4/ip_input.c): malformed ones fail `ip_options_compile` and
    /// a source route is dropped unless `accept_source_route` is set on
    /// both `all` and the interface, which sys-firewall's Fedora and Debian
    /// templates never do (systemd's sysctl.d/50-default.conf sets
    /// `net.ipv4.conf.*.accept_source_route = 0`, "Do not accept source
    /// routing"). Every other option is forwarded as it came.
    fn refused_ipv4_options(&mut self, ip: &[u8], header: &IpHeader) -> bool {
        match crate::packet::ipv4_options(ip, header) {
            Ok(crate::packet::Ipv4Options::Forwardable) => false,
            Ok(crate::packet::Ipv4Options::SourceRoute) => {
                self.counters.dropped_source_route += 1;
                true
            }
            Err(_) => {
                self.counters.dropped_malformed += 1;
                true
            }
        }
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

    /// Connect a client link. Until rules are set for its addresses, its
    /// new flows are dropped silently (fail closed, as Linux's forward
    /// chain policy).
    pub fn add_client(&mut self, id: ClientId, config: ClientConfig) {
        self.remove_client(id);
        self.clients.insert(
            id,
            Client {
                config,
                mac: config.mac,
                error_budgets: Default::default(),
                capabilities: Capabilities::NONE,
            },
        );
    }

    /// Which offloads `interface`'s link takes on the way out (what its
    /// peer offered: `feature-gso-tcpv4`/`v6`, checksum offload). A
    /// forwarded super-packet or blank checksum the link does not take is
    /// segmented or completed in software. The default, and what a client
    /// gets again when it is added, is [`Capabilities::NONE`]. Returns
    /// false for a client that is not connected.
    pub fn set_capabilities(&mut self, interface: Interface, capabilities: Capabilities) -> bool {
        match interface {
            Interface::Uplink => {
                self.uplink_capabilities = capabilities;
                true
            }
            Interface::Client(id) => match self.clients.get_mut(&id) {
                Some(c) => {
                    c.capabilities = capabilities;
                    true
                }
                None => false,
            },
        }
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
    ///
    /// Rules with `dsthost=` names wait until every name is looked up for
    /// the address's family (the next [`Firewall::poll`] sends the
    /// queries), as the Linux agent resolves them while it loads the rules;
    /// the address's previous rules, or none, stay in force meanwhile. Then
    /// they are installed with the addresses found, which they keep until
    /// the next load; if a name does not resolve, the address gets
    /// drop-all instead. Either is reported by
    /// [`Firewall::take_rule_reports`], and flows are killed then.
    pub fn set_rules(&mut self, client_addr: IpAddr, rules: RuleSet) -> usize {
        let names = rules::dsthost_names(&rules);
        if names.is_empty() {
            self.pending_rules.remove(&client_addr);
            return self.install_rules(
                client_addr,
                ActiveRules {
                    set: rules,
                    hosts: BTreeMap::new(),
                },
            );
        }
        self.pending_rules.insert(
            client_addr,
            PendingRules {
                set: rules,
                names,
                requested: false,
            },
        );
        0
    }

    /// Put `active` in force for `client_addr`, killing the flows it
    /// refuses; returns how many.
    fn install_rules(&mut self, client_addr: IpAddr, active: ActiveRules) -> usize {
        let ctx = RuleContext {
            dns: &self.config.dns,
            hosts: &active.hosts,
        };
        let killed = self.conntrack.retain(|conn| {
            conn.orig.src != client_addr || active.set.evaluate(&conn.query, &ctx) == Action::Accept
        });
        self.rules.insert(client_addr, active);
        let names = self.dsthost_names();
        self.resolver
            .retain(|name| names.binary_search_by(|n| n.as_str().cmp(name)).is_ok());
        self.counters.flows_killed_by_rules += killed as u64;
        killed
    }

    /// Move the pending rule sets whose names are all looked up into
    /// force (or drop-all for those with a name that failed).
    fn settle_pending_rules(&mut self, now: Instant) {
        if self.pending_rules.is_empty() {
            return;
        }
        let addrs: Vec<IpAddr> = self.pending_rules.keys().copied().collect();
        for addr in addrs {
            let record_type = RecordType::for_family_of(&addr);
            let Some(pending) = self.pending_rules.get_mut(&addr) else {
                continue;
            };
            if !pending.requested {
                pending.requested = true;
                for name in &pending.names {
                    self.resolver.request(name, record_type, now);
                }
            }
        }
        if self.upstream_resolver().is_none() {
            // No resolver to ask: getaddrinfo fails at once.
            self.resolver.fail_pending();
        }
        for addr in self.pending_rules.keys().copied().collect::<Vec<_>>() {
            let record_type = RecordType::for_family_of(&addr);
            let Some(pending) = self.pending_rules.get(&addr) else {
                continue;
            };
            let mut hosts = BTreeMap::new();
            let mut failed = None;
            let mut waiting = false;
            for name in &pending.names {
                match self.resolver.outcome(name, record_type, now) {
                    Outcome::Resolved(found) => {
                        hosts.insert(name.clone(), found);
                    }
                    Outcome::Pending => waiting = true,
                    Outcome::Failed => {
                        failed = Some(name.clone());
                        break;
                    }
                }
            }
            if waiting && failed.is_none() {
                continue;
            }
            let Some(pending) = self.pending_rules.remove(&addr) else {
                continue;
            };
            let (active, report) = match failed {
                Some(name) => (
                    ActiveRules {
                        set: RuleSet::drop_all(),
                        hosts: BTreeMap::new(),
                    },
                    RuleReport::ResolveFailed { addr, name },
                ),
                None => (
                    ActiveRules {
                        set: pending.set,
                        hosts,
                    },
                    RuleReport::Installed { addr },
                ),
            };
            self.install_rules(addr, active);
            if self.rule_reports.len() >= MAX_RULE_REPORTS {
                self.rule_reports.pop_front();
            }
            self.rule_reports.push_back(report);
        }
    }

    /// What became of rule sets that waited for their `dsthost=` names
    /// since the last call, oldest first (at most [`MAX_RULE_REPORTS`]
    /// are kept). A platform logs a [`RuleReport::ResolveFailed`] as the
    /// Linux agent reports a rule error.
    pub fn take_rule_reports(&mut self) -> Vec<RuleReport> {
        self.rule_reports.drain(..).collect()
    }

    /// The addresses the `dsthost=` names of `client_addr`'s rules in
    /// force had when they were loaded, name by name: what the Linux agent
    /// writes to QubesDB as `/dns/<ip>/<name>` (`update_dns_info` in
    /// `qubesagent/firewall.py`) for applications to pin.
    pub fn dsthost_addresses(
        &self,
        client_addr: &IpAddr,
    ) -> Option<&BTreeMap<String, Vec<IpAddr>>> {
        self.rules.get(client_addr).map(|active| &active.hosts)
    }

    /// Whether rules for `client_addr` wait for their `dsthost=` names.
    pub fn rules_pending(&self, client_addr: &IpAddr) -> bool {
        self.pending_rules.contains_key(client_addr)
    }

    /// The first IPv4 upstream resolver, which the `dsthost=` lookups ask.
    fn upstream_resolver(&self) -> Option<core::net::Ipv4Addr> {
        self.upstream_resolvers().first().copied()
    }

    /// The IPv4 upstream resolvers, each once, in order: a lookup's
    /// retries go to each in turn, as glibc's resolver tries each
    /// `nameserver` of `resolv.conf`.
    fn upstream_resolvers(&self) -> Vec<core::net::Ipv4Addr> {
        let mut upstreams: Vec<core::net::Ipv4Addr> = Vec::new();
        for redirect in &self.config.dns {
            if let Some(IpAddr::V4(a)) = redirect.upstream {
                if !upstreams.contains(&a) {
                    upstreams.push(a);
                }
            }
        }
        upstreams
    }

    /// Install what [`crate::store::load_rules`] read for `client_addr`, as
    /// the Linux agent's `handle_addr` does (`qubesagent/firewall.py`):
    ///
    /// * `Some(loaded)`: its rules, which are drop-all when it carries an
    ///   error (report `loaded.error` as Linux reports
    ///   `/qubes-iptables-error`);
    /// * `None` (no `/qubes-firewall/<addr>` at all): nothing changes for
    ///   an address that never had rules, whose new flows are dropped
    ///   silently; an address that had rules keeps a drop-all rule set, as
    ///   Linux keeps the client's chain and finds no policy in the empty
    ///   directory.
    ///
    /// Returns the number of flows killed.
    pub fn apply_loaded_rules(
        &mut self,
        client_addr: IpAddr,
        loaded: Option<&LoadedRules>,
    ) -> usize {
        match loaded {
            Some(loaded) => self.set_rules(client_addr, loaded.rules.clone()),
            None if self.rules.contains_key(&client_addr)
                || self.pending_rules.contains_key(&client_addr) =>
            {
                self.set_rules(client_addr, RuleSet::drop_all())
            }
            None => 0,
        }
    }

    /// Whether `client_addr` has rules (its new flows are judged by them;
    /// without, they are dropped silently).
    pub fn has_rules(&self, client_addr: &IpAddr) -> bool {
        self.rules.contains_key(client_addr)
    }

    /// Every `dsthost=` name in the installed and the pending rules,
    /// sorted, each once.
    pub fn dsthost_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .rules
            .values()
            .flat_map(|active| active.hosts.keys().cloned())
            .chain(
                self.pending_rules
                    .values()
                    .flat_map(|pending| pending.names.iter().cloned()),
            )
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Record what `name` resolves to for `dsthost=` rules loaded from now
    /// on, bypassing the firewall's own resolver (for platforms with
    /// another source of names); rules in force keep the addresses they
    /// were loaded with.
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
        self.settle_pending_rules(now);
        let mut out = Vec::new();
        if self.gateway_mac.is_none() && !self.awaiting_gateway.is_empty() {
            self.request_gateway_mac(now, &mut out);
        }
        let upstreams: Vec<IpAddr> = self
            .upstream_resolvers()
            .into_iter()
            .map(IpAddr::V4)
            .collect();
        let conntrack = &self.conntrack;
        let queries = self
            .resolver
            .due_queries(now, &upstreams, |upstream, port| {
                conntrack.reply_key_free(&ReplyKey {
                    protocol: UDP_PROTOCOL,
                    remote: upstream,
                    remote_port: DNS_PORT,
                    local_port: port,
                })
            });
        for query in queries {
            let IpAddr::V4(upstream) = query.upstream else {
                continue;
            };
            let packet = link::udp_packet_v4(
                self.config.uplink.ip4,
                query.src_port,
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
        self.counters.frames_out += out.len() as u64;
        out
    }

    /// A UDP datagram of the firewall's own (e.g. a remote syslog message)
    /// from its uplink address and `src_port` to `dst`:`dst_port`, sent to
    /// the uplink gateway as the DNS queries are (held, a few, until the
    /// gateway's MAC is known). Returns the frames to send.
    pub fn send_udp_from_uplink(
        &mut self,
        now: Instant,
        src_port: u16,
        dst: Ipv4Addr,
        dst_port: u16,
        payload: &[u8],
    ) -> Vec<Transmit> {
        let packet = link::udp_packet_v4(self.config.uplink.ip4, src_port, dst, dst_port, payload);
        let frame = link::ethernet_frame(
            self.config.uplink.mac,
            EthernetAddress([0; 6]),
            EthernetProtocol::Ipv4,
            &packet,
        );
        let mut out = Vec::new();
        self.send_to_uplink(now, frame, &mut out);
        self.counters.frames_out += out.len() as u64;
        out
    }

    /// Process one frame received at `now` on `interface`; returns the
    /// frames to send.
    pub fn handle(&mut self, now: Instant, interface: Interface, frame: &[u8]) -> Vec<Transmit> {
        self.handle_offloaded(now, interface, frame, Offload::NONE)
    }

    /// Process one frame received at `now` on `interface` with the offload
    /// flags its link gave it (see [`crate::offload`]); returns the frames
    /// to send.
    ///
    /// A forwarded TCP or UDP packet keeps its flags: only its headers are
    /// rewritten (addresses, ports, TTL / hop limit, the IPv4 header
    /// checksum), a blank checksum field is updated as the pseudo-header
    /// sum it is, and a GSO super-packet is judged by connection tracking
    /// and the rules as the one segment its header describes (SYN, ACK,
    /// FIN and RST as they are there). The egress link's
    /// [capabilities](Firewall::set_capabilities) decide whether it leaves
    /// as it came or segmented / completed in software. Flags that do not
    /// fit the packet drop it (counted in
    /// [`Counters::dropped_bad_offload`]).
    pub fn handle_offloaded(
        &mut self,
        now: Instant,
        interface: Interface,
        frame: &[u8],
        offload: Offload,
    ) -> Vec<Transmit> {
        if offload::check(frame, &offload).is_err() {
            self.counters.frames_in += 1;
            self.counters.dropped_bad_offload += 1;
            if offload.gso.is_some() {
                self.counters.dropped_gso += 1;
            }
            return Vec::new();
        }
        self.ingress = offload;
        let forwarded = self.counters.forwarded_out + self.counters.forwarded_in;
        let out = self.handle_inner(now, interface, frame);
        self.ingress = Offload::NONE;
        if offload.gso.is_some()
            && self.counters.forwarded_out + self.counters.forwarded_in == forwarded
        {
            self.counters.dropped_gso += 1;
        }
        out
    }

    fn handle_inner(&mut self, now: Instant, interface: Interface, frame: &[u8]) -> Vec<Transmit> {
        let mut out = Vec::new();
        self.counters.frames_in += 1;
        // Forget flows past their deadline before anything looks them up.
        self.conntrack.expire(now);
        self.settle_pending_rules(now);
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
        frame: Vec<u8>,
        out: &mut Vec<Transmit>,
    ) -> bool {
        self.forward_to_client(client, id, frame, Offload::NONE, false, out)
    }

    /// Send `frame` to client `id` with `offload` (fitted to its link);
    /// `forwarded` counts it as forwarded traffic.
    fn forward_to_client(
        &mut self,
        client: &Client,
        id: ClientId,
        mut frame: Vec<u8>,
        offload: Offload,
        forwarded: bool,
        out: &mut Vec<Transmit>,
    ) -> bool {
        let Some(mac) = client.mac else {
            self.counters.dropped_no_neighbor += 1;
            return false;
        };
        link::set_ethernet_addrs(&mut frame, self.config.client_side.mac, mac);
        self.emit(
            Interface::Client(id),
            client.capabilities,
            frame,
            offload,
            forwarded,
            out,
        )
    }

    /// Push `frame` for `interface`, fitted to `capabilities`, and count
    /// it; false if its offload could not be honoured.
    fn emit(
        &mut self,
        interface: Interface,
        capabilities: Capabilities,
        frame: Vec<u8>,
        offload: Offload,
        forwarded: bool,
        out: &mut Vec<Transmit>,
    ) -> bool {
        let count = |counters: &mut Counters, frame: &[u8], gso: bool| {
            if !forwarded {
                return;
            }
            if gso {
                counters.forwarded_gso += 1;
                counters.forwarded_gso_bytes += frame.len() as u64;
            } else {
                counters.forwarded_plain += 1;
                counters.forwarded_plain_bytes += frame.len() as u64;
            }
        };
        match offload::fit(frame, offload, &capabilities) {
            Fitted::Pass(frame, offload) => {
                count(&mut self.counters, &frame, offload.gso.is_some());
                out.push(Transmit {
                    interface,
                    frame,
                    offload,
                });
            }
            Fitted::Completed(frame, offload) => {
                self.counters.csum_completed += 1;
                count(&mut self.counters, &frame, false);
                out.push(Transmit {
                    interface,
                    frame,
                    offload,
                });
            }
            Fitted::Segmented(segments) => {
                self.counters.gso_segmented += 1;
                for frame in segments {
                    count(&mut self.counters, &frame, false);
                    out.push(Transmit {
                        interface,
                        frame,
                        offload: Offload {
                            csum_blank: false,
                            data_validated: true,
                            gso: None,
                        },
                    });
                }
            }
            Fitted::Failed => {
                self.counters.dropped_bad_offload += 1;
                return false;
            }
        }
        true
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

    /// The flow whose first fragment recorded datagram `key`; a miss (the
    /// first fragment never came, or its flow ended) counts a dropped
    /// fragment.
    fn fragment_flow(&mut self, now: Instant, key: &DatagramKey) -> Option<Connection> {
        let conn = self
            .fragments
            .lookup(now, key)
            .and_then(|conn_id| self.conntrack.get(conn_id))
            .cloned();
        if conn.is_none() {
            self.counters.dropped_fragment += 1;
        }
        conn
    }

    fn client_for_conn(&self, conn: &Connection) -> Option<(ClientId, Client)> {
        self.clients.get(&conn.client).map(|c| (conn.client, *c))
    }
}
