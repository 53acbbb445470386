//! Counters of what the firewall did with each packet it did not simply
//! forward: every drop has a reason, and every reason a counter.

/// Packet counters; they only grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    /// Frames received on any interface.
    pub frames_in: u64,
    /// Frames sent on any interface.
    pub frames_out: u64,
    /// Packets forwarded client → uplink.
    pub forwarded_out: u64,
    /// Packets forwarded uplink → client.
    pub forwarded_in: u64,
    /// ARP replies and neighbour advertisements sent.
    pub neighbor_replies: u64,
    /// Neighbour solicitations not answered: their target is not an
    /// address the firewall owns on that link.
    pub neighbor_ignored: u64,
    /// Echo replies sent by the firewall itself.
    pub echo_replies: u64,
    /// ICMP admin-prohibited errors sent for refused flows.
    pub admin_prohibited_sent: u64,
    /// ICMP host-prohibited (ICMPv6 admin-prohibited) errors sent for
    /// packets a client addressed to the firewall itself.
    pub host_prohibited_sent: u64,
    /// ICMP time-exceeded errors sent to clients, or to remotes on the
    /// uplink, whose packets' TTL ran out here.
    pub time_exceeded_sent: u64,
    /// ICMP errors not sent because their client had received its share
    /// (one a second after a burst of six per address, as Linux).
    pub icmp_errors_rate_limited: u64,
    /// ICMP errors from the uplink translated to a client.
    pub icmp_errors_translated: u64,
    /// Flows refused by the client's rules.
    pub dropped_by_rule: u64,
    /// Frames or packets that failed to parse.
    pub dropped_malformed: u64,
    /// Packets with a source address the sender may not use.
    pub dropped_spoofed: u64,
    /// Client-to-client packets that were not part of an allowed flow.
    pub dropped_inter_client: u64,
    /// Packets that neither open a flow nor belong to one.
    pub dropped_no_flow: u64,
    /// IPv6 packets from clients while the uplink has no IPv6 (or the
    /// firewall none at all).
    pub dropped_ipv6_no_uplink: u64,
    /// Protocols or message types the firewall does not forward.
    pub dropped_unsupported: u64,
    /// Packets whose TTL / hop limit ran out.
    pub dropped_ttl: u64,
    /// Later fragments of datagrams whose first fragment was not seen.
    pub dropped_fragment: u64,
    /// IPv4 packets carrying a loose or strict source route option, which
    /// the Linux sys-firewall drops on input (`accept_source_route` 0, see
    /// [`crate::packet::ipv4_options`]).
    pub dropped_source_route: u64,
    /// Packets that could not be sent because the next hop's MAC is unknown.
    pub dropped_no_neighbor: u64,
    /// New flows refused because no NAT port was free.
    pub dropped_nat_exhausted: u64,
    /// Uplink packets not addressed to the firewall.
    pub dropped_not_for_us: u64,
    /// Frames on an interface that is not (or no longer) configured.
    pub dropped_unknown_interface: u64,
    /// Packets for the firewall itself that it does not serve.
    pub dropped_to_firewall: u64,
    /// New flows of a client address that has no rules at all (no
    /// `/qubes-firewall/<ip>` directory): dropped silently, as by the
    /// policy of Linux's forward chain.
    pub dropped_no_rules: u64,
    /// DNS queries to a virtual resolver while the firewall has no
    /// upstream resolver: dropped silently (`qubes-setup-dnat-to-ns`).
    pub dropped_dns_no_upstream: u64,
    /// Flows removed because new rules forbid them.
    pub flows_killed_by_rules: u64,
    /// Forwarded packets (both ways) sent as GSO super-packets.
    pub forwarded_gso: u64,
    /// Bytes (Ethernet frames) of those.
    pub forwarded_gso_bytes: u64,
    /// Forwarded packets (both ways) sent without GSO, software segments
    /// included.
    pub forwarded_plain: u64,
    /// Bytes (Ethernet frames) of those.
    pub forwarded_plain_bytes: u64,
    /// Super-packets cut into segments in software, for a link that does
    /// not take GSO of their kind.
    pub gso_segmented: u64,
    /// Blank checksums completed in software, for a link that does not
    /// take them.
    pub csum_completed: u64,
    /// GSO super-packets that came in and were not forwarded (the reason
    /// is counted too).
    pub dropped_gso: u64,
    /// Frames whose offload flags do not fit the packet (a blank checksum
    /// on something other than unfragmented TCP or UDP, GSO on something
    /// other than unfragmented TCP of the kind's family or with a segment
    /// size below `offload::MIN_MSS`).
    pub dropped_bad_offload: u64,
}
