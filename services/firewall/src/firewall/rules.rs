//! What the client's rules see of a new flow, and what they may ask
//! beyond it.

use core::net::IpAddr;

use qubes::firewall_rules::{FlowQuery, MatchContext};

use crate::config::DnsRedirect;
use crate::packet::{IpHeader, Transport};
use crate::resolver::Resolver;

/// What rules may ask about beyond the flow: the DNS servers and the
/// current `dsthost=` resolutions.
pub(super) struct RuleContext<'a> {
    pub(super) dns: &'a [DnsRedirect],
    pub(super) resolver: &'a Resolver,
}

impl MatchContext for RuleContext<'_> {
    /// The upstream resolvers, Linux's `dns-addr` set (the nameservers of
    /// the firewall's own `resolv.conf`, `prepare_rules` in
    /// `qubesagent/firewall.py`).
    fn is_dns_server(&self, ip: &IpAddr) -> bool {
        self.dns.iter().any(|d| d.upstream == Some(*ip))
    }

    fn host_resolves_to(&self, host: &str, ip: &IpAddr) -> bool {
        self.resolver.resolves_to(host, ip)
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

/// Whether a packet without a flow may open one.
pub(super) fn opens_flow(transport: &Transport) -> bool {
    match transport {
        Transport::Tcp { flags, .. } => flags.syn && !flags.ack && !flags.rst,
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
