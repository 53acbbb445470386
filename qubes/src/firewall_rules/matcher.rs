//! First-match evaluation of a rule set against a new flow.

use core::net::IpAddr;

use super::types::{Action, Destination, Proto, Rule, RuleSet, SpecialTarget};

/// The DNS port `specialtarget=dns` is about.
const DNS_PORT: u16 = 53;

/// The facts about a new flow that rules can test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowQuery {
    /// A TCP flow to `dst`, port `port`.
    Tcp {
        /// Destination address.
        dst: IpAddr,
        /// Destination port.
        port: u16,
    },
    /// A UDP flow to `dst`, port `port`.
    Udp {
        /// Destination address.
        dst: IpAddr,
        /// Destination port.
        port: u16,
    },
    /// An ICMP (or ICMPv6) message to `dst` of type `icmp_type`.
    Icmp {
        /// Destination address.
        dst: IpAddr,
        /// The ICMP message type.
        icmp_type: u8,
    },
    /// Any other IP protocol to `dst`.
    Other {
        /// Destination address.
        dst: IpAddr,
        /// IP protocol number (next header for IPv6).
        protocol: u8,
    },
}

impl FlowQuery {
    /// The destination address of the flow.
    pub fn dst(&self) -> IpAddr {
        match *self {
            FlowQuery::Tcp { dst, .. }
            | FlowQuery::Udp { dst, .. }
            | FlowQuery::Icmp { dst, .. }
            | FlowQuery::Other { dst, .. } => dst,
        }
    }

    /// The destination port, for TCP and UDP.
    pub fn port(&self) -> Option<u16> {
        match *self {
            FlowQuery::Tcp { port, .. } | FlowQuery::Udp { port, .. } => Some(port),
            _ => None,
        }
    }
}

/// What the rules need to know beyond the flow itself: the firewall's DNS
/// servers and what `dsthost=` names resolve to.
pub trait MatchContext {
    /// Whether `ip` is one of the firewall's upstream DNS resolvers, the
    /// addresses the virtual DNS servers are translated to (the target of
    /// `specialtarget=dns`, Linux's `dns-addr` set). Rules are evaluated
    /// on the translated destination, as Linux's forward chain sees it
    /// after the prerouting DNAT.
    fn is_dns_server(&self, ip: &IpAddr) -> bool;
    /// Whether the name `host` currently resolves to `ip`.
    fn host_resolves_to(&self, host: &str, ip: &IpAddr) -> bool;
}

impl Rule {
    /// Whether every predicate of this rule holds for `flow`.
    pub fn matches(&self, flow: &FlowQuery, ctx: &dyn MatchContext) -> bool {
        let dst = flow.dst();
        let destination_ok = match &self.destination {
            None => true,
            Some(Destination::Host(name)) => ctx.host_resolves_to(name, &dst),
            Some(net) => net.contains(&dst),
        };
        let proto_ok = match self.proto {
            None => true,
            Some(Proto::Tcp) => matches!(flow, FlowQuery::Tcp { .. }),
            Some(Proto::Udp) => matches!(flow, FlowQuery::Udp { .. }),
            Some(Proto::Icmp) => matches!(flow, FlowQuery::Icmp { .. }),
        };
        let ports_ok = match self.dst_ports {
            None => true,
            Some(range) => flow.port().is_some_and(|port| range.contains(port)),
        };
        let icmp_ok = match (self.icmp_type, flow) {
            (None, _) => true,
            (Some(wanted), FlowQuery::Icmp { icmp_type, .. }) => wanted == *icmp_type,
            (Some(_), _) => false,
        };
        let special_ok = match self.special_target {
            None => true,
            // Linux skips a DNS rule whose ports are anything but 53, even a
            // range containing 53, so such a rule matches nothing.
            Some(SpecialTarget::Dns) => {
                let ports_are_dns = self
                    .dst_ports
                    .is_none_or(|r| r.first() == DNS_PORT && r.last() == DNS_PORT);
                ports_are_dns && flow.port() == Some(DNS_PORT) && ctx.is_dns_server(&dst)
            }
        };
        destination_ok && proto_ok && ports_ok && icmp_ok && special_ok
    }
}

impl RuleSet {
    /// The action for a new flow: that of the first matching rule, else the
    /// policy.
    pub fn evaluate(&self, flow: &FlowQuery, ctx: &dyn MatchContext) -> Action {
        self.rules
            .iter()
            .find(|rule| rule.matches(flow, ctx))
            .map_or(self.policy, |rule| rule.action)
    }
}
