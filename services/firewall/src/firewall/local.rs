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

use smoltcp::time::{Duration, Instant};
use smoltcp::wire::EthernetAddress;

use super::{ip_ethertype, Client, ClientId, Firewall, Transmit};
use crate::icmp;
use crate::link;
use crate::packet::{IpHeader, Transport};

/// The DHCP client port (`udp dport 68 drop` in `qubes-ipv4.nft`).
const DHCP_CLIENT_PORT: u16 = 68;

/// Least time between two ICMP errors to one address once the burst is
/// spent: Linux's `icmp_ratelimit` and `icmpv6 ratelimit` (1000 ms).
const PER_ADDRESS_INTERVAL: Duration = Duration::from_millis(1000);
/// Errors sent to one address at once before the interval applies
/// (`XRLIM_BURST_FACTOR`).
const PER_ADDRESS_BURST: i64 = 6;
/// Least time between two ICMP errors of all, once the burst is spent:
/// Linux's `icmp_msgs_per_sec` (1000).
const GLOBAL_INTERVAL: Duration = Duration::from_millis(1);
/// Errors sent at once before the global interval applies
/// (`icmp_msgs_burst`, 50).
const GLOBAL_BURST: i64 = 50;

/// Budgets for the ICMP errors sent to remotes on the uplink, one per
/// slot: a remote's address picks its slot by hash, and addresses that
/// share one share its budget (so never more errors per address than
/// Linux's per-destination limit, in bounded memory).
pub(super) const UPLINK_ERROR_SLOTS: usize = 256;

/// The slot of `addr` among [`UPLINK_ERROR_SLOTS`] (FNV-1a of its bytes).
fn uplink_slot(addr: &IpAddr) -> usize {
    let octets: &[u8] = match addr {
        IpAddr::V4(a) => &a.octets(),
        IpAddr::V6(a) => &a.octets(),
    };
    let mut hash: u32 = 0x811c_9dc5;
    for &b in octets {
        hash = (hash ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    hash as usize % UPLINK_ERROR_SLOTS
}

/// A token bucket of ICMP errors, as Linux keeps one per destination
/// (`inet_peer_xrlim_allow`, for the destination-unreachable and
/// time-exceeded errors of `icmp_ratemask`) and one for all
/// (`icmp_global_allow`). Echo replies are not limited.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ErrorBudget {
    /// Microseconds of credit, at most `burst` intervals.
    tokens_us: i64,
    /// When the credit was last updated; `None` before the first error.
    last: Option<Instant>,
}

impl ErrorBudget {
    /// Whether an error may be sent at `now` with one every `interval`
    /// after a burst of `burst`; spends it if so.
    fn allow(&mut self, now: Instant, interval: Duration, burst: i64) -> bool {
        let interval = interval.total_micros() as i64;
        let full = burst.saturating_mul(interval);
        let elapsed = match self.last {
            None => full,
            // A clock that went back gives no credit.
            Some(last) if now < last => 0,
            Some(last) => (now - last).total_micros() as i64,
        };
        self.tokens_us = self.tokens_us.saturating_add(elapsed).min(full);
        self.last = Some(now);
        if self.tokens_us >= interval {
            self.tokens_us -= interval;
            true
        } else {
            false
        }
    }
}

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
    /// Whether an ICMP error about `header` may go to client `id` at `now`
    /// (its [`ErrorBudget`] for the packet's family); counts it if not.
    fn error_allowed(&mut self, now: Instant, id: ClientId, header: &IpHeader) -> bool {
        let family = usize::from(header.is_v6());
        // Per destination first, then the global budget (the order of
        // Linux since "icmp: change the order of rate limits", 2024).
        let allowed = self
            .clients
            .get_mut(&id)
            .and_then(|client| client.error_budgets.get_mut(family))
            .is_some_and(|budget| budget.allow(now, PER_ADDRESS_INTERVAL, PER_ADDRESS_BURST))
            && self.error_budget.allow(now, GLOBAL_INTERVAL, GLOBAL_BURST);
        if !allowed {
            self.counters.icmp_errors_rate_limited += 1;
        }
        allowed
    }

    /// Whether an ICMP error may go to `remote` on the uplink at `now`:
    /// its slot's budget, then the global one; counts it if not.
    fn uplink_error_allowed(&mut self, now: Instant, remote: &IpAddr) -> bool {
        let allowed = self
            .uplink_error_budgets
            .get_mut(uplink_slot(remote))
            .is_some_and(|budget| budget.allow(now, PER_ADDRESS_INTERVAL, PER_ADDRESS_BURST))
            && self.error_budget.allow(now, GLOBAL_INTERVAL, GLOBAL_BURST);
        if !allowed {
            self.counters.icmp_errors_rate_limited += 1;
        }
        allowed
    }

    /// A packet of a tracked flow from the uplink whose TTL (hop limit)
    /// runs out here, on its way to a client: ICMP time exceeded from the
    /// uplink address to its sender, quoting it as it came, as Linux's
    /// `ip_forward` sends it after conntrack undid the NAT (and NAT
    /// translates the quoted packet back on the way out), limited per
    /// remote as Linux limits errors per destination.
    pub(super) fn uplink_time_exceeded(
        &mut self,
        now: Instant,
        header: &IpHeader,
        ip: &[u8],
        out: &mut Vec<Transmit>,
    ) {
        let Some(from) = self.uplink_addr(header.is_v6()) else {
            return;
        };
        if !self.uplink_error_allowed(now, &header.src) {
            return;
        }
        if let Some(error) = icmp::time_exceeded(from, ip, header) {
            let frame = link::ethernet_frame(
                self.config.uplink.mac,
                EthernetAddress([0; 6]),
                ip_ethertype(&error),
                &error,
            );
            self.send_to_uplink(now, frame, out);
            self.counters.time_exceeded_sent += 1;
        }
    }

    /// Whether the firewall does IPv6 at all: as Linux's qubes-iptables
    /// (33-39) decides, when it has an IPv6 uplink address or an IPv6
    /// gateway address for clients; otherwise it drops every IPv6 packet
    /// (qubes-ipv6-disabled.nft).
    pub(super) fn ipv6_enabled(&self) -> bool {
        self.config.uplink.ip6.is_some() || self.config.client_side.gateway6.is_some()
    }

    /// Whether `addr` is one of the firewall's own addresses: the gateway
    /// addresses clients use, the uplink addresses, and the link-local
    /// addresses of both sides.
    pub(super) fn is_own_addr(&self, addr: &IpAddr) -> bool {
        match addr {
            IpAddr::V4(a) => *a == self.config.client_side.gateway4 || *a == self.config.uplink.ip4,
            IpAddr::V6(a) => {
                self.config.client_side.gateway6 == Some(*a)
                    || self.config.uplink.ip6 == Some(*a)
                    || (self.ipv6_enabled()
                        && (link::link_local_of(self.config.client_side.mac) == *a
                            || link::link_local_of(self.config.uplink.mac) == *a))
            }
        }
    }

    /// A packet from client `id` addressed to the firewall itself (its
    /// source already checked).
    pub(super) fn addressed_to_firewall(
        &mut self,
        now: Instant,
        id: ClientId,
        client: &Client,
        header: &IpHeader,
        ip: &[u8],
        out: &mut Vec<Transmit>,
    ) {
        let answer = match verdict(header) {
            Verdict::Echo => icmp::echo_reply(ip, header),
            Verdict::Silent => None,
            Verdict::Reject if !self.error_allowed(now, id, header) => None,
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
        now: Instant,
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
        if !self.error_allowed(now, id, header) {
            return;
        }
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
        now: Instant,
        id: ClientId,
        client: &Client,
        header: &IpHeader,
        ip: &[u8],
        out: &mut Vec<Transmit>,
    ) {
        let Some(from) = self.client_side_source(header.is_v6()) else {
            return;
        };
        if !self.error_allowed(now, id, header) {
            return;
        }
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

    #[test]
    fn errors_are_limited_to_one_a_second_after_a_burst_of_six() {
        let mut budget = ErrorBudget::default();
        let at = |ms| Instant::from_millis(ms);
        let mut allow = |ms| budget.allow(at(ms), PER_ADDRESS_INTERVAL, PER_ADDRESS_BURST);
        assert_eq!((0..10).filter(|_| allow(0)).count(), 6);
        assert!(!allow(999));
        assert!(allow(1000));
        assert!(!allow(1500));
        // Ten quiet seconds refill the burst, no more.
        assert_eq!((0..10).filter(|_| allow(12_000)).count(), 6);
        // A clock that goes back gives nothing.
        assert!(!allow(5_000));
    }

    #[test]
    fn all_errors_together_are_limited_to_a_thousand_a_second() {
        let mut budget = ErrorBudget::default();
        let sent = (0..2000)
            .filter(|i| budget.allow(Instant::from_micros(i * 100), GLOBAL_INTERVAL, GLOBAL_BURST))
            .count();
        // 50 at once, then one a millisecond over 0.2 s.
        assert!((240..=251).contains(&sent), "{sent}");
    }

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
