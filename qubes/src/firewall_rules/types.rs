//! Typed firewall rules, as parsed from QubesDB entries.

use alloc::string::String;
use alloc::vec::Vec;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::error::RuleSetError;

/// What a rule (or the policy) does with a new flow it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Let the flow through (and its replies, through connection tracking).
    Accept,
    /// Refuse the flow; the Linux sys-firewall answers with ICMP
    /// administratively-prohibited, and so do we.
    Drop,
}

/// The IP protocol a rule is restricted to (`proto=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP for IPv4 clients, ICMPv6 for IPv6 clients (as Linux does).
    Icmp,
}

/// The address family of a client's rule set: dom0 writes one rule set per
/// client address, `/qubes-firewall/<ipv4>/` and `/qubes-firewall/<ipv6>/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Rules for traffic from the client's IPv4 address.
    V4,
    /// Rules for traffic from the client's IPv6 address.
    V6,
}

impl Family {
    /// The family of a client address (the `<client-ip>` part of the key).
    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

/// Where a rule's traffic goes: `dst4=`, `dst6=` or `dsthost=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// An IPv4 network; host bits beyond the prefix are cleared when parsed.
    V4 {
        /// Network address.
        addr: Ipv4Addr,
        /// Prefix length, 0..=32 (a bare address is /32).
        prefix: u8,
    },
    /// An IPv6 network; host bits beyond the prefix are cleared when parsed.
    V6 {
        /// Network address.
        addr: Ipv6Addr,
        /// Prefix length, 0..=128 (a bare address is /128).
        prefix: u8,
    },
    /// A DNS name, resolved by the firewall to the addresses it may reach.
    Host(String),
}

impl Destination {
    /// Whether `ip` lies in this network. Always false for [`Destination::Host`],
    /// whose addresses are known only to the resolver (see
    /// [`super::MatchContext`]).
    pub fn contains(&self, ip: &IpAddr) -> bool {
        match (self, ip) {
            (Destination::V4 { addr, prefix }, IpAddr::V4(ip)) => mask_v4(*ip, *prefix) == *addr,
            (Destination::V6 { addr, prefix }, IpAddr::V6(ip)) => mask_v6(*ip, *prefix) == *addr,
            _ => false,
        }
    }
}

/// `addr` with every bit after the first `prefix` bits cleared.
pub(crate) fn mask_v4(addr: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let bits = u32::from(addr);
    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0);
    Ipv4Addr::from(bits & mask)
}

/// `addr` with every bit after the first `prefix` bits cleared.
pub(crate) fn mask_v6(addr: Ipv6Addr, prefix: u8) -> Ipv6Addr {
    let bits = u128::from(addr);
    let mask = u128::MAX
        .checked_shl(128 - u32::from(prefix.min(128)))
        .unwrap_or(0);
    Ipv6Addr::from(bits & mask)
}

/// An inclusive destination port range (`dstports=lo-hi`, or one port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    first: u16,
    last: u16,
}

impl PortRange {
    /// A range `first..=last`; `None` when `first > last`.
    pub fn new(first: u16, last: u16) -> Option<PortRange> {
        (first <= last).then_some(PortRange { first, last })
    }

    /// The lowest port of the range.
    pub fn first(&self) -> u16 {
        self.first
    }

    /// The highest port of the range.
    pub fn last(&self) -> u16 {
        self.last
    }

    /// Whether `port` is in the range.
    pub fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }
}

/// A predefined destination (`specialtarget=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecialTarget {
    /// DNS (TCP or UDP port 53) to the firewall's upstream resolvers (where
    /// queries to the virtual DNS servers are translated to), and not to
    /// any other DNS server.
    Dns,
}

/// One numbered rule: an action and the predicates that must all hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// What to do with a matching new flow.
    pub action: Action,
    /// Destination restriction, if any.
    pub destination: Option<Destination>,
    /// Protocol restriction, if any.
    pub proto: Option<Proto>,
    /// Predefined target, if any.
    pub special_target: Option<SpecialTarget>,
    /// Destination ports; only with `proto=tcp` or `proto=udp`.
    pub dst_ports: Option<PortRange>,
    /// ICMP (or ICMPv6) message type; only with `proto=icmp`.
    pub icmp_type: Option<u8>,
}

impl Rule {
    /// A rule that matches everything and applies `action`: how the policy
    /// behaves once no numbered rule matched.
    pub fn catch_all(action: Action) -> Rule {
        Rule {
            action,
            destination: None,
            proto: None,
            special_target: None,
            dst_ports: None,
            icmp_type: None,
        }
    }
}

/// A client's complete rule set for one address family: numbered rules in
/// order, then the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSet {
    /// Rules in the order they are evaluated (ascending rule number).
    pub rules: Vec<Rule>,
    /// The action when no rule matches.
    pub policy: Action,
}

impl RuleSet {
    /// The fail-closed rule set: no rules, policy drop.
    pub fn drop_all() -> RuleSet {
        RuleSet {
            rules: Vec::new(),
            policy: Action::Drop,
        }
    }

    /// A rule set that accepts everything (what dom0 writes by default,
    /// as policy drop plus one `action=accept` rule).
    pub fn accept_all() -> RuleSet {
        RuleSet {
            rules: alloc::vec![Rule::catch_all(Action::Accept)],
            policy: Action::Drop,
        }
    }
}

/// The outcome of loading a client's QubesDB directory: the rules to
/// enforce, and the error that forced drop-all, if any.
///
/// This is the Linux sys-firewall's behaviour: a parse error anywhere blocks
/// all traffic from that client and is reported (QubesDB
/// `/qubes-iptables-error` and the log) rather than half-applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedRules {
    /// The rules to enforce; [`RuleSet::drop_all`] when `error` is set.
    pub rules: RuleSet,
    /// Why the client's rules were replaced by drop-all.
    pub error: Option<RuleSetError>,
}
