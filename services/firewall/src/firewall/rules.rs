//! What the client's rules see of a new flow, what they may ask beyond it,
//! and how rules with `dsthost=` names wait for their addresses.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::net::IpAddr;

use qubes::firewall_rules::{Destination, FlowQuery, MatchContext, RuleSet};

use crate::config::DnsRedirect;
use crate::packet::{IpHeader, Transport};

/// A client address's rules in force, with the addresses their `dsthost=`
/// names had when the rules were loaded (the Linux agent resolves them in
/// `prepare_rules` and writes the addresses into the nft rule, once).
#[derive(Debug, Clone)]
pub(super) struct ActiveRules {
    /// The rules.
    pub(super) set: RuleSet,
    /// Each `dsthost=` name and its addresses of the client's family.
    pub(super) hosts: BTreeMap<String, Vec<IpAddr>>,
}

/// Rules loaded for a client address whose `dsthost=` names are being
/// looked up; the address's previous rules (or none) stay in force
/// meanwhile, as the agent's previous nft chain does while it resolves.
#[derive(Debug, Clone)]
pub(super) struct PendingRules {
    /// The rules.
    pub(super) set: RuleSet,
    /// Their `dsthost=` names.
    pub(super) names: Vec<String>,
    /// Whether the lookups were requested.
    pub(super) requested: bool,
}

/// What became of a client address's rules after their `dsthost=` names
/// were looked up (see [`crate::Firewall::take_rule_reports`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleReport {
    /// Every name resolved: the rules are in force.
    Installed {
        /// The client address.
        addr: IpAddr,
    },
    /// A name did not resolve for the client's address family: the client
    /// is blocked (drop-all), as the Linux agent blocks it when
    /// `getaddrinfo` fails ("Failed to resolve ...").
    ResolveFailed {
        /// The client address.
        addr: IpAddr,
        /// The name that failed.
        name: String,
    },
}

/// The `dsthost=` names of `set`, sorted, each once.
pub(super) fn dsthost_names(set: &RuleSet) -> Vec<String> {
    let mut names: Vec<String> = set
        .rules
        .iter()
        .filter_map(|rule| match &rule.destination {
            Some(Destination::Host(name)) => Some(name.clone()),
            _ => None,
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// What rules may ask about beyond the flow: the upstream resolvers and
/// the client's `dsthost=` addresses.
pub(super) struct RuleContext<'a> {
    pub(super) dns: &'a [DnsRedirect],
    pub(super) hosts: &'a BTreeMap<String, Vec<IpAddr>>,
}

impl MatchContext for RuleContext<'_> {
    /// The upstream resolvers, Linux's `dns-addr` set (the nameservers of
    /// the firewall's own `resolv.conf`, `prepare_rules` in
    /// `qubesagent/firewall.py`).
    fn is_dns_server(&self, ip: &IpAddr) -> bool {
        self.dns.iter().any(|d| d.upstream == Some(*ip))
    }

    fn host_resolves_to(&self, host: &str, ip: &IpAddr) -> bool {
        self.hosts.get(host).is_some_and(|addrs| addrs.contains(ip))
    }
}

/// The rule-language view of a new flow whose destination, after DNS
/// redirection, is `dst`.
pub(super) fn flow_query(header: &IpHeader, dst: IpAddr) -> Option<FlowQuery> {
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

/// Whether a packet without a flow may open one, as Linux's conntrack
/// lets it (`tcp_new` in `nf_conntrack_proto_tcp.c`): a TCP SYN, or a bare
/// ACK, which `nf_conntrack_tcp_loose` (on by default) picks up as a
/// connection that began before the firewall started; any UDP datagram;
/// an ICMP query.
pub(super) fn opens_flow(transport: &Transport) -> bool {
    match transport {
        Transport::Tcp { flags, .. } => !flags.rst && !flags.fin && (flags.syn != flags.ack),
        Transport::Udp { .. } => true,
        Transport::IcmpEcho { request, .. } => *request,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::TcpFlags;

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
