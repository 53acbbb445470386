//! Static configuration of the firewall: its addresses on both sides and
//! the DNS redirection, as the platform learns them from QubesDB
//! (`/qubes-ip`, `/qubes-gateway`, `/qubes-netvm-gateway`,
//! `/qubes-primary-dns`, ...) or from a file when hosted.

use alloc::vec::Vec;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use smoltcp::wire::EthernetAddress;

use crate::conntrack::Timeouts;

/// The Qubes virtual DNS servers clients are told to use.
pub const QUBES_DNS4: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 139, 1, 1), Ipv4Addr::new(10, 139, 1, 2)];

/// The IPv6 twins of [`QUBES_DNS4`].
pub const QUBES_DNS6: [Ipv6Addr; 2] = [
    Ipv6Addr::new(0xfd09, 0x24ef, 0x4179, 0, 0, 0, 0xa8b, 1),
    Ipv6Addr::new(0xfd09, 0x24ef, 0x4179, 0, 0, 0, 0xa8b, 2),
];

/// The firewall's side of the uplink (towards sys-net).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UplinkConfig {
    /// Our MAC on the uplink.
    pub mac: EthernetAddress,
    /// Our IPv4 address, the source of all translated client traffic.
    pub ip4: Ipv4Addr,
    /// The uplink's IPv4 gateway (`/qubes-gateway`).
    pub gateway4: Ipv4Addr,
    /// Our IPv6 address, when the uplink offers IPv6.
    pub ip6: Option<Ipv6Addr>,
    /// The uplink's IPv6 gateway, when the uplink offers IPv6.
    pub gateway6: Option<Ipv6Addr>,
    /// The gateway's MAC if known in advance; otherwise learned by ARP.
    pub gateway_mac: Option<EthernetAddress>,
}

/// The firewall's side of the client links (the vif backends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientSideConfig {
    /// Our MAC towards clients (Qubes uses fe:ff:ff:ff:ff:ff).
    pub mac: EthernetAddress,
    /// The IPv4 gateway address clients use (`/qubes-netvm-gateway`).
    pub gateway4: Ipv4Addr,
    /// The IPv6 gateway address clients use (`/qubes-netvm-gateway6`).
    pub gateway6: Option<Ipv6Addr>,
}

/// One DNS redirection: queries (UDP and TCP port 53) to `virtual_server`
/// go to `upstream`, as `qubes-setup-dnat-to-ns` sets up in Linux.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DnsRedirect {
    /// The address clients query (10.139.1.1, ...).
    pub virtual_server: IpAddr,
    /// The uplink's real resolver (`/qubes-primary-dns`, ...); `None` when
    /// the firewall has none, and then queries to `virtual_server` are
    /// dropped silently (`qubes-setup-dnat-to-ns`: "Drop IPv4 DNS requests
    /// to qubesdb_dns addresses").
    pub upstream: Option<IpAddr>,
}

/// Everything the firewall needs to know before the first packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Uplink addresses.
    pub uplink: UplinkConfig,
    /// Client-side addresses.
    pub client_side: ClientSideConfig,
    /// DNS redirections; their upstream resolvers are what
    /// `specialtarget=dns` matches (Linux's `dns-addr` set).
    pub dns: Vec<DnsRedirect>,
    /// Most tracked flows.
    pub max_flows: usize,
    /// Most tracked flows of one client, so that one client cannot evict
    /// the flows of the others.
    pub max_flows_per_client: usize,
    /// Most IPv4 datagrams tracked for forwarding their later fragments.
    pub max_fragmented_datagrams: usize,
    /// Most of them for one client's flows, so that one client cannot
    /// starve the others' fragments.
    pub max_fragmented_datagrams_per_client: usize,
    /// Flow timeouts.
    pub timeouts: Timeouts,
}

impl Config {
    /// A configuration with Qubes' usual defaults around the given
    /// addresses: DNS redirection of the virtual servers to `upstream_dns4`
    /// (primary, secondary; both to the primary when there is only one;
    /// with none, queries to the virtual servers are dropped), 16384 flows,
    /// 4096 per client.
    pub fn new(
        uplink: UplinkConfig,
        client_side: ClientSideConfig,
        upstream_dns4: &[Ipv4Addr],
    ) -> Config {
        // With a single upstream resolver, both virtual servers use it.
        let dns = QUBES_DNS4
            .iter()
            .enumerate()
            .map(|(index, virtual_server)| DnsRedirect {
                virtual_server: IpAddr::V4(*virtual_server),
                upstream: upstream_dns4
                    .get(index)
                    .or(upstream_dns4.first())
                    .map(|a| IpAddr::V4(*a)),
            })
            .collect();
        Config {
            uplink,
            client_side,
            dns,
            max_flows: 16384,
            max_flows_per_client: 4096,
            max_fragmented_datagrams: 1024,
            max_fragmented_datagrams_per_client: 256,
            timeouts: Timeouts::default(),
        }
    }
}

/// What the firewall knows about one client VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientConfig {
    /// The client's IPv4 address (`/qubes-ip` of the client); the only
    /// IPv4 source it may use.
    pub ip4: Ipv4Addr,
    /// The client's IPv6 address, if any.
    pub ip6: Option<Ipv6Addr>,
    /// The client's MAC if known; otherwise learned from its frames.
    pub mac: Option<EthernetAddress>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(upstream: &[Ipv4Addr]) -> Config {
        Config::new(
            UplinkConfig {
                mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
                ip4: Ipv4Addr::new(10, 137, 0, 6),
                gateway4: Ipv4Addr::new(10, 137, 0, 1),
                ip6: None,
                gateway6: None,
                gateway_mac: None,
            },
            ClientSideConfig {
                mac: EthernetAddress([0xfe, 0xff, 0xff, 0xff, 0xff, 0xff]),
                gateway4: Ipv4Addr::new(10, 138, 0, 1),
                gateway6: None,
            },
            upstream,
        )
    }

    #[test]
    fn virtual_dns_servers_map_to_primary_and_secondary() {
        let primary = Ipv4Addr::new(192, 0, 2, 53);
        let secondary = Ipv4Addr::new(192, 0, 2, 54);
        let upstreams = |c: Config| c.dns.iter().map(|d| d.upstream).collect::<Vec<_>>();
        assert_eq!(
            upstreams(config(&[primary, secondary])),
            [Some(IpAddr::V4(primary)), Some(IpAddr::V4(secondary))]
        );
        assert_eq!(
            upstreams(config(&[primary])),
            [Some(IpAddr::V4(primary)), Some(IpAddr::V4(primary))]
        );
        assert_eq!(upstreams(config(&[])), [None, None]);
        assert_eq!(
            config(&[primary]).dns[1].virtual_server,
            IpAddr::V4(QUBES_DNS4[1])
        );
    }
}
