//! The firewall's configuration on plain Xen: a xenstore directory,
//! `/local/domain/<firewall>/qubesdb/`, holding QubesDB's keys without
//! their leading `/` and with client addresses encoded for xenstore
//! (`firewall::store::key_to_xenstore`: `.` → `-`, `:` → `_`):
//!
//! ```text
//! qubesdb/qubes-ip                              10.99.0.10
//! qubesdb/qubes-gateway                         10.99.0.1
//! qubesdb/qubes-primary-dns                     10.99.0.1
//! qubesdb/qubes-firewall/10-137-0-10/policy     drop
//! qubesdb/qubes-firewall/10-137-0-10/0000       action=accept proto=tcp dstports=80-80
//! qubesdb/qubes-firewall/10-137-0-10            (written last: "reload this client")
//! ```
//!
//! The runtime hands over the whole directory as a [`Snapshot`];
//! [`EffectiveStore`] serves it through `firewall::store::ConfigStore`,
//! with [`Defaults`] (the command line, the uplink vif's `ip`, a DHCP
//! lease) for the firewall's own keys that the directory lacks.
//! [`UplinkDhcp`] runs the DHCP client while no other source gives the
//! uplink an IPv4 address ([`needs_dhcp`]).

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::net::{IpAddr, Ipv4Addr};

use firewall::store::{child_from_xenstore, key_to_xenstore, keys, ConfigStore, StoreError};
use netvm::config::Snapshot;
use netvm::dhcp::{self, Event, Handled, Lease};

use crate::settings::FirewallSettings;

/// Values of QubesDB keys used when the directory does not hold them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Defaults {
    values: BTreeMap<&'static str, String>,
    /// `/qubes-netvm-gateway` follows the effective `/qubes-ip` (no
    /// `firewall.client-gw=`).
    client_gw_follows_ip: bool,
}

impl Defaults {
    /// From the command line and the uplink vif's first IPv4 `ip`:
    /// `/qubes-ip` (`firewall.ip`, else the vif's), `/qubes-gateway`
    /// (`firewall.gw`), `/qubes-netvm-gateway` (`firewall.client-gw`, else
    /// our uplink address, as Qubes gives clients the firewall's own
    /// address), `/qubes-primary-dns` and `/qubes-secondary-dns`
    /// (`firewall.dns`), and the IPv6 keys of [`Defaults::with_uplink`].
    pub fn new(settings: &FirewallSettings, uplink_ip: Option<Ipv4Addr>) -> Self {
        let addrs: Vec<IpAddr> = uplink_ip.map(IpAddr::V4).into_iter().collect();
        Self::with_uplink(settings, &addrs, None)
    }

    /// From the command line, the addresses of the uplink vif's `ip` key
    /// (IPv4 and IPv6, space-separated) and the DHCP `lease`, each key
    /// from the first source that has it:
    ///
    /// | key | sources |
    /// | --- | --- |
    /// | `/qubes-ip` | `firewall.ip`, the vif's first IPv4 address, the lease's address |
    /// | `/qubes-gateway` | `firewall.gw`, the lease's router |
    /// | `/qubes-primary-dns`, `/qubes-secondary-dns` | `firewall.dns`, the lease's first two resolvers |
    /// | `/qubes-netvm-gateway` | `firewall.client-gw`, the `/qubes-ip` in use (the directory's first) |
    /// | `/qubes-ip6` | `firewall.ip6`, the vif's first IPv6 address |
    /// | `/qubes-gateway6` | `firewall.gw6` |
    /// | `/qubes-netvm-gateway6` | the `/qubes-ip6` in use (the directory's first) |
    ///
    /// [`EffectiveStore`] serves the IPv6 ones only as a pair: an IPv6
    /// address without a gateway (or the other way round) is left out
    /// rather than failing the whole configuration.
    pub fn with_uplink(
        settings: &FirewallSettings,
        vif_addrs: &[IpAddr],
        lease: Option<&Lease>,
    ) -> Self {
        let mut values = BTreeMap::new();
        let vif4 = vif_addrs.iter().find_map(|a| match a {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        });
        let vif6 = vif_addrs.iter().find_map(|a| match a {
            IpAddr::V6(v6) => Some(*v6),
            IpAddr::V4(_) => None,
        });
        let ip = settings.ip.or(vif4).or(lease.map(|l| l.address));
        if let Some(ip) = ip {
            values.insert(keys::IP, ip.to_string());
        }
        if let Some(gw) = settings.gw.or(lease.and_then(|l| l.router)) {
            values.insert(keys::GATEWAY, gw.to_string());
        }
        if let Some(gw) = settings.client_gw.or(ip) {
            values.insert(keys::NETVM_GATEWAY, gw.to_string());
        }
        let dns: &[Ipv4Addr] = if settings.dns.is_empty() {
            lease.map(|l| l.dns.as_slice()).unwrap_or(&[])
        } else {
            &settings.dns
        };
        for (key, addr) in [keys::PRIMARY_DNS, keys::SECONDARY_DNS]
            .into_iter()
            .zip(dns.iter())
        {
            values.insert(key, addr.to_string());
        }
        let ip6 = settings.ip6.or(vif6);
        if let Some(ip6) = ip6 {
            values.insert(keys::IP6, ip6.to_string());
            values.insert(keys::NETVM_GATEWAY6, ip6.to_string());
        }
        if let Some(gw6) = settings.gw6 {
            values.insert(keys::GATEWAY6, gw6.to_string());
        }
        Self {
            values,
            client_gw_follows_ip: settings.client_gw.is_none(),
        }
    }

    /// The default of `key`, if any.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }
}

/// The configuration directory's snapshot over [`Defaults`], as a
/// `ConfigStore` (every future is ready at once: use
/// `firewall::store::now_or_never`).
pub struct EffectiveStore<'a> {
    snapshot: &'a Snapshot,
    defaults: &'a Defaults,
}

impl<'a> EffectiveStore<'a> {
    /// `snapshot` first, then `defaults`.
    pub fn new(snapshot: &'a Snapshot, defaults: &'a Defaults) -> Self {
        Self { snapshot, defaults }
    }
}

impl EffectiveStore<'_> {
    /// The directory's value of `key`.
    fn in_directory(&self, key: &str) -> Option<&[u8]> {
        key_to_xenstore(key)
            .ok()
            .and_then(|rel| self.snapshot.get(&rel))
    }

    /// Whether `key` has a value in the directory or the defaults.
    fn known(&self, key: &str) -> bool {
        self.in_directory(key).is_some() || self.defaults.get(key).is_some()
    }
}

impl ConfigStore for EffectiveStore<'_> {
    async fn read(&mut self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let rel = key_to_xenstore(key).map_err(|_| StoreError::BadKey {
            key: key.chars().take(64).collect(),
        })?;
        if let Some(v) = self.snapshot.get(&rel) {
            return Ok(Some(v.to_vec()));
        }
        // The clients' gateway defaults to the uplink address in use, the
        // directory's when dom0 wrote one.
        let follows = match key {
            keys::NETVM_GATEWAY if self.defaults.client_gw_follows_ip => Some(keys::IP),
            keys::NETVM_GATEWAY6 => Some(keys::IP6),
            _ => None,
        };
        if let Some(v) = follows.and_then(|ip| self.in_directory(ip)) {
            return Ok(Some(v.to_vec()));
        }
        // The IPv6 uplink defaults come as a pair: an address from the vif
        // without a gateway from anywhere must not stop IPv4.
        let ipv6_default = [keys::IP6, keys::GATEWAY6, keys::NETVM_GATEWAY6].contains(&key);
        if ipv6_default && !(self.known(keys::IP6) && self.known(keys::GATEWAY6)) {
            return Ok(None);
        }
        Ok(self.defaults.get(key).map(|v| v.as_bytes().to_vec()))
    }

    async fn list(&mut self, dir: &str) -> Result<Vec<String>, StoreError> {
        let dir = dir.strip_suffix('/').unwrap_or(dir);
        let rel = key_to_xenstore(dir).map_err(|_| StoreError::BadKey {
            key: dir.chars().take(64).collect(),
        })?;
        Ok(self
            .snapshot
            .children(&rel)
            .map(|c| {
                // A name that is not an encoded address is passed on as
                // it is: the loaders count it as ignored.
                child_from_xenstore(dir, c).unwrap_or_else(|_| c.to_string())
            })
            .collect())
    }
}

/// Whether the uplink needs DHCP for its IPv4 address: none of
/// `qubesdb/qubes-ip` (in `snapshot`), `firewall.ip=` and the uplink vif's
/// `ip` key (`vif_addrs`) gives one.
pub fn needs_dhcp(settings: &FirewallSettings, snapshot: &Snapshot, vif_addrs: &[IpAddr]) -> bool {
    let in_directory = key_to_xenstore(keys::IP).is_ok_and(|rel| snapshot.get(&rel).is_some());
    !(in_directory || settings.ip.is_some() || vif_addrs.iter().any(IpAddr::is_ipv4))
}

/// The uplink's DHCP client ([`netvm::dhcp::Client`]) while
/// [`needs_dhcp`] says so, and the lease it holds for [`Defaults`].
#[derive(Debug, Default)]
pub struct UplinkDhcp {
    client: Option<dhcp::Client>,
    lease: Option<Lease>,
}

impl UplinkDhcp {
    /// Not running.
    pub fn new() -> Self {
        Self::default()
    }

    /// Start the client (for the uplink's `mac`, its ids seeded from
    /// `seed`, random bytes) when `needed` and not running, stop it when
    /// not `needed`. Returns true when a lease in use was dropped (the
    /// configuration must be rebuilt).
    pub fn set_needed(&mut self, needed: bool, mac: [u8; 6], seed: u64) -> bool {
        match (needed, self.client.is_some()) {
            (true, false) => {
                self.client = Some(dhcp::Client::new(mac, seed));
                false
            }
            (false, true) => {
                self.client = None;
                self.lease.take().is_some()
            }
            _ => false,
        }
    }

    /// Whether the client runs.
    pub fn running(&self) -> bool {
        self.client.is_some()
    }

    /// The lease in use, if any.
    pub fn lease(&self) -> Option<&Lease> {
        self.lease.as_ref()
    }

    /// The client's counters, while it runs.
    pub fn stats(&self) -> Option<dhcp::Stats> {
        self.client.as_ref().map(dhcp::Client::stats)
    }

    /// An uplink frame: true if it was a datagram to the DHCP client port
    /// (taken or counted as dropped: not for the firewall core), while the
    /// client runs. Call [`UplinkDhcp::poll`] after a true.
    pub fn handle(&mut self, now_ns: u64, frame: &[u8]) -> bool {
        self.client
            .as_mut()
            .is_some_and(|c| c.handle_frame(now_ns, frame) == Handled::Consumed)
    }

    /// Run the client's timers: the frames to send on the uplink go to
    /// `frames`, lines to print to `lines`. Returns true when the lease in
    /// use changed in what it configures (a new lease, another address,
    /// router or resolvers, or the lease lost): rebuild the configuration.
    pub fn poll(
        &mut self,
        now_ns: u64,
        frames: &mut Vec<Vec<u8>>,
        lines: &mut Vec<String>,
    ) -> bool {
        let Some(client) = self.client.as_mut() else {
            return false;
        };
        // A lost lease restarts at once: a few rounds at most.
        for _ in 0..4 {
            match client.poll(now_ns) {
                Some(frame) => frames.push(frame),
                None => break,
            }
        }
        let mut changed = false;
        while let Some(event) = client.take_event() {
            match event {
                Event::Bound(lease) => {
                    lines.push(describe(&lease));
                    self.lease = Some(lease);
                    changed = true;
                }
                Event::Renewed(lease) => self.lease = Some(lease),
                Event::Lost => {
                    lines.push(String::from("dhcp: lease lost; discovering again"));
                    changed |= self.lease.take().is_some();
                }
            }
        }
        changed
    }
}

/// A console line for a new lease.
fn describe(lease: &Lease) -> String {
    let prefix = lease
        .subnet_mask
        .map(|m| format!("/{}", u32::from(m).leading_ones()))
        .unwrap_or_default();
    let router = lease
        .router
        .map(|r| r.to_string())
        .unwrap_or_else(|| String::from("none"));
    let dns: Vec<String> = lease.dns.iter().map(|a| a.to_string()).collect();
    let time = if lease.lease_time == u32::MAX {
        String::from("infinite")
    } else {
        format!("{} s", lease.lease_time)
    };
    format!(
        "dhcp: lease {}{prefix} router {router} dns {} from {} for {time}",
        lease.address,
        if dns.is_empty() {
            String::from("none")
        } else {
            dns.join(",")
        },
        lease.server
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use firewall::store::{load_config, load_rules, now_or_never, rule_targets, Macs};
    use firewall::EthernetAddress;

    fn snapshot(pairs: &[(&str, &str)]) -> Snapshot {
        let mut s = Snapshot::default();
        for (k, v) in pairs {
            // as config::read gives it: every directory on the way too
            let mut at = 0;
            while let Some(i) = k[at..].find('/') {
                s.nodes.entry(k[..at + i].to_string()).or_default();
                at += i + 1;
            }
            s.nodes.insert(k.to_string(), v.as_bytes().to_vec());
        }
        s
    }

    #[test]
    fn the_directory_wins_over_the_defaults_and_addresses_are_decoded() {
        let settings = FirewallSettings {
            ip: Some(Ipv4Addr::new(10, 99, 0, 10)),
            gw: Some(Ipv4Addr::new(10, 99, 0, 1)),
            dns: alloc::vec![Ipv4Addr::new(10, 99, 0, 1)],
            client_gw: None,
            ..FirewallSettings::default()
        };
        let d = Defaults::new(&settings, Some(Ipv4Addr::new(10, 99, 0, 77)));
        let s = snapshot(&[
            ("qubes-gateway", "10.99.0.254"),
            ("qubes-firewall/10-137-0-10/policy", "drop"),
            (
                "qubes-firewall/10-137-0-10/0000",
                "action=accept proto=tcp dstports=80-80",
            ),
            ("qubes-firewall/10-137-0-10", ""),
            ("qubes-firewall/not-an-address", ""),
        ]);
        let mut store = EffectiveStore::new(&s, &d);
        let macs = Macs {
            uplink: EthernetAddress([0, 0x16, 0x3e, 0, 0, 1]),
            client_side: firewall::store::QUBES_CLIENT_SIDE_MAC,
        };
        let config = now_or_never(load_config(&mut store, macs))
            .unwrap()
            .unwrap();
        assert_eq!(config.uplink.ip4, Ipv4Addr::new(10, 99, 0, 10));
        assert_eq!(config.uplink.gateway4, Ipv4Addr::new(10, 99, 0, 254));
        assert_eq!(config.client_side.gateway4, Ipv4Addr::new(10, 99, 0, 10));
        let targets = now_or_never(rule_targets(&mut store)).unwrap().unwrap();
        assert_eq!(
            targets.addrs,
            ["10.137.0.10".parse::<core::net::IpAddr>().unwrap()]
        );
        assert_eq!(targets.ignored, 1);
        let rules = now_or_never(load_rules(&mut store, targets.addrs[0]))
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(rules.error.is_none(), "{:?}", rules.error);
        assert_eq!(rules.rules.rules.len(), 1);
        // Without the command line, the uplink vif's ip is the address.
        let d2 = Defaults::new(
            &FirewallSettings::default(),
            Some(Ipv4Addr::new(10, 99, 0, 77)),
        );
        assert_eq!(d2.get(keys::IP), Some("10.99.0.77"));
        assert_eq!(d2.get(keys::NETVM_GATEWAY), Some("10.99.0.77"));
        assert_eq!(d2.get(keys::GATEWAY), None);
    }

    fn macs() -> Macs {
        Macs {
            uplink: EthernetAddress(UPLINK_MAC),
            client_side: firewall::store::QUBES_CLIENT_SIDE_MAC,
        }
    }

    const UPLINK_MAC: [u8; 6] = [0, 0x16, 0x3e, 0, 0, 1];
    const SERVER_MAC: [u8; 6] = [0, 0x16, 0x3e, 0, 0, 0x99];
    const SERVER: Ipv4Addr = Ipv4Addr::new(192, 168, 7, 1);
    const LEASED: Ipv4Addr = Ipv4Addr::new(192, 168, 7, 42);

    fn config_of(
        settings: &FirewallSettings,
        s: &Snapshot,
        vif: &[IpAddr],
        lease: Option<&Lease>,
    ) -> Result<firewall::Config, firewall::store::ConfigError> {
        let d = Defaults::with_uplink(settings, vif, lease);
        let mut store = EffectiveStore::new(s, &d);
        now_or_never(load_config(&mut store, macs())).unwrap()
    }

    /// docs/firewall.md "Configuration on plain Xen": the vif's `ip` may
    /// carry an IPv6 address after the IPv4 one; it is the uplink's IPv6
    /// address once a gateway is known (`firewall.gw6=` or
    /// `qubesdb/qubes-gateway6`), and is left out without one rather than
    /// failing IPv4.
    #[test]
    fn the_vif_ipv6_address_is_the_uplinks_with_a_gateway() {
        let vif: [IpAddr; 2] = [
            "10.99.0.10".parse().unwrap(),
            "2001:db8::10".parse().unwrap(),
        ];
        let settings = FirewallSettings {
            gw: Some(Ipv4Addr::new(10, 99, 0, 1)),
            ..FirewallSettings::default()
        };
        // No IPv6 gateway anywhere: IPv4 only, no error.
        let config = config_of(&settings, &Snapshot::default(), &vif, None).unwrap();
        assert_eq!(config.uplink.ip4, Ipv4Addr::new(10, 99, 0, 10));
        assert_eq!((config.uplink.ip6, config.uplink.gateway6), (None, None));
        assert_eq!(config.client_side.gateway6, None);
        // firewall.gw6=: the pair, and the clients' IPv6 gateway.
        let with_gw6 = FirewallSettings {
            gw6: Some("fe80::1".parse().unwrap()),
            ..settings.clone()
        };
        let config = config_of(&with_gw6, &Snapshot::default(), &vif, None).unwrap();
        assert_eq!(config.uplink.ip6, Some("2001:db8::10".parse().unwrap()));
        assert_eq!(config.uplink.gateway6, Some("fe80::1".parse().unwrap()));
        assert_eq!(
            config.client_side.gateway6,
            Some("2001:db8::10".parse().unwrap())
        );
        // The gateway from the directory works as well; the directory's
        // address wins over the vif's, firewall.ip6= over the vif's.
        let s = snapshot(&[("qubes-gateway6", "2001:db8::1")]);
        let config = config_of(&settings, &s, &vif, None).unwrap();
        assert_eq!(config.uplink.ip6, Some("2001:db8::10".parse().unwrap()));
        let s = snapshot(&[
            ("qubes-gateway6", "2001:db8::1"),
            ("qubes-ip6", "2001:db8::77"),
        ]);
        let config = config_of(&settings, &s, &vif, None).unwrap();
        assert_eq!(config.uplink.ip6, Some("2001:db8::77".parse().unwrap()));
        assert_eq!(
            config.client_side.gateway6,
            Some("2001:db8::77".parse().unwrap())
        );
        let own = FirewallSettings {
            ip6: Some("2001:db8::5".parse().unwrap()),
            ..with_gw6.clone()
        };
        let config = config_of(&own, &Snapshot::default(), &vif, None).unwrap();
        assert_eq!(config.uplink.ip6, Some("2001:db8::5".parse().unwrap()));
        // A gateway without any address is left out too.
        let v4_only = [vif[0]];
        let config = config_of(&with_gw6, &Snapshot::default(), &v4_only, None).unwrap();
        assert_eq!(config.uplink.gateway6, None);
        // dom0's own incomplete pair is still an error.
        let s = snapshot(&[("qubes-ip6", "2001:db8::77")]);
        assert!(config_of(&settings, &s, &v4_only, None).is_err());
    }

    fn lease() -> Lease {
        Lease {
            address: LEASED,
            subnet_mask: Some(Ipv4Addr::new(255, 255, 255, 0)),
            router: Some(SERVER),
            dns: alloc::vec![SERVER, Ipv4Addr::new(9, 9, 9, 9), Ipv4Addr::new(1, 1, 1, 1)],
            server: SERVER,
            lease_time: 600,
            renew_at_ns: Some(300),
            rebind_at_ns: Some(500),
            expires_at_ns: Some(600),
        }
    }

    /// The lease is the last source of each key it has.
    #[test]
    fn a_lease_fills_what_nothing_else_gives() {
        let l = lease();
        let config = config_of(
            &FirewallSettings::default(),
            &Snapshot::default(),
            &[],
            Some(&l),
        )
        .unwrap();
        assert_eq!(config.uplink.ip4, LEASED);
        assert_eq!(config.uplink.gateway4, SERVER);
        assert_eq!(config.client_side.gateway4, LEASED);
        let upstreams: Vec<_> = config.dns.iter().map(|d| d.upstream).collect();
        assert_eq!(
            upstreams,
            [
                Some(IpAddr::V4(SERVER)),
                Some(IpAddr::V4(Ipv4Addr::new(9, 9, 9, 9)))
            ]
        );
        // The command line, the vif and the directory come first.
        let settings = FirewallSettings {
            gw: Some(Ipv4Addr::new(192, 168, 7, 254)),
            dns: alloc::vec![Ipv4Addr::new(8, 8, 8, 8)],
            ..FirewallSettings::default()
        };
        let vif = [IpAddr::V4(Ipv4Addr::new(192, 168, 7, 9))];
        let config = config_of(&settings, &Snapshot::default(), &vif, Some(&l)).unwrap();
        assert_eq!(config.uplink.ip4, Ipv4Addr::new(192, 168, 7, 9));
        assert_eq!(config.uplink.gateway4, Ipv4Addr::new(192, 168, 7, 254));
        assert_eq!(
            config.dns[0].upstream,
            Some(IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8)))
        );
        let s = snapshot(&[("qubes-ip", "192.168.7.3")]);
        let config = config_of(&settings, &s, &vif, Some(&l)).unwrap();
        assert_eq!(config.uplink.ip4, Ipv4Addr::new(192, 168, 7, 3));
    }

    /// As in Qubes, the clients' gateway is the firewall's own uplink
    /// address unless named: the one dom0 wrote when it wrote one.
    #[test]
    fn the_clients_gateway_follows_the_uplink_address_in_use() {
        let settings = FirewallSettings {
            gw: Some(Ipv4Addr::new(10, 99, 0, 1)),
            ..FirewallSettings::default()
        };
        let s = snapshot(&[("qubes-ip", "10.99.0.7")]);
        let vif = [IpAddr::V4(Ipv4Addr::new(10, 99, 0, 77))];
        for vif in [&vif[..], &[]] {
            let config = config_of(&settings, &s, vif, None).unwrap();
            assert_eq!(config.uplink.ip4, Ipv4Addr::new(10, 99, 0, 7));
            assert_eq!(config.client_side.gateway4, Ipv4Addr::new(10, 99, 0, 7));
        }
        // Named on the command line or in the directory: that one.
        let named = FirewallSettings {
            client_gw: Some(Ipv4Addr::new(10, 137, 0, 1)),
            ..settings.clone()
        };
        let config = config_of(&named, &s, &[], None).unwrap();
        assert_eq!(config.client_side.gateway4, Ipv4Addr::new(10, 137, 0, 1));
        let s2 = snapshot(&[
            ("qubes-ip", "10.99.0.7"),
            ("qubes-netvm-gateway", "10.138.0.1"),
        ]);
        let config = config_of(&settings, &s2, &[], None).unwrap();
        assert_eq!(config.client_side.gateway4, Ipv4Addr::new(10, 138, 0, 1));
    }

    #[test]
    fn dhcp_runs_only_without_another_address() {
        let none = FirewallSettings::default();
        let empty = Snapshot::default();
        assert!(needs_dhcp(&none, &empty, &[]));
        // An IPv6 address alone in the vif's ip is no IPv4 address.
        assert!(needs_dhcp(&none, &empty, &["2001:db8::1".parse().unwrap()]));
        assert!(!needs_dhcp(&none, &empty, &["10.0.0.2".parse().unwrap()]));
        let settings = FirewallSettings {
            ip: Some(Ipv4Addr::new(10, 0, 0, 2)),
            ..FirewallSettings::default()
        };
        assert!(!needs_dhcp(&settings, &empty, &[]));
        assert!(!needs_dhcp(
            &none,
            &snapshot(&[("qubes-ip", "10.0.0.2")]),
            &[]
        ));
    }

    /// A scripted server's reply of `message_type` to the client's `frame`.
    fn answer(frame: &[u8], message_type: dhcp::wire::MessageType) -> Vec<u8> {
        use dhcp::wire::{option, Packet, BOOTREPLY, HTYPE_ETHERNET, MIN_LEN};
        let (_, _, _, payload) = dhcp::frame::client_payload(frame).unwrap();
        let request = Packet::new_checked(payload).unwrap();
        let mut buf = alloc::vec![0u8; MIN_LEN];
        {
            let mut p = Packet::new_unchecked(&mut buf[..]);
            p.set_op(BOOTREPLY);
            p.set_htype(HTYPE_ETHERNET);
            p.set_hlen(6);
            p.set_xid(request.xid());
            p.set_yiaddr(LEASED);
            p.set_client_mac(request.client_mac());
            p.clear_names_and_set_cookie();
        }
        buf.extend_from_slice(&[option::MESSAGE_TYPE, 1, message_type.to_u8()]);
        buf.extend_from_slice(&[option::SERVER_ID, 4]);
        buf.extend_from_slice(&SERVER.octets());
        buf.extend_from_slice(&[option::ROUTER, 4]);
        buf.extend_from_slice(&SERVER.octets());
        buf.extend_from_slice(&[option::DNS, 4]);
        buf.extend_from_slice(&SERVER.octets());
        buf.extend_from_slice(&[option::LEASE_TIME, 4, 0, 0, 0, 100]);
        buf.push(option::END);
        dhcp::frame::server_frame(SERVER_MAC, UPLINK_MAC, SERVER, LEASED, &buf)
    }

    /// The uplink without any address: DHCP runs, its frames are taken
    /// from the uplink, the lease configures the firewall, and its loss
    /// unconfigures it.
    #[test]
    fn the_uplink_address_comes_from_dhcp_when_nothing_else_gives_one() {
        use dhcp::wire::MessageType;
        const S: u64 = 1_000_000_000;
        let settings = FirewallSettings::default();
        let empty = Snapshot::default();
        assert!(config_of(&settings, &empty, &[], None).is_err());
        let mut uplink = UplinkDhcp::new();
        assert!(!uplink.handle(0, &[0u8; 64]), "not running: takes nothing");
        assert!(!uplink.set_needed(needs_dhcp(&settings, &empty, &[]), UPLINK_MAC, 5));
        assert!(uplink.running());
        let (mut frames, mut lines) = (Vec::new(), Vec::new());
        assert!(!uplink.poll(0, &mut frames, &mut lines));
        let discover = frames.pop().unwrap();
        assert!(uplink.handle(S, &answer(&discover, MessageType::Offer)));
        assert!(!uplink.poll(S, &mut frames, &mut lines));
        let request = frames.pop().unwrap();
        assert!(uplink.handle(S, &answer(&request, MessageType::Ack)));
        assert!(uplink.poll(S, &mut frames, &mut lines), "a new lease");
        assert!(frames.is_empty());
        assert_eq!(
            lines,
            ["dhcp: lease 192.168.7.42 router 192.168.7.1 dns 192.168.7.1 from 192.168.7.1 for 100 s"]
        );
        let config = config_of(&settings, &empty, &[], uplink.lease()).unwrap();
        assert_eq!(config.uplink.ip4, LEASED);
        assert_eq!(config.uplink.gateway4, SERVER);
        // Other uplink frames are the core's.
        let mut tcp = answer(&request, MessageType::Ack);
        tcp[14 + 9] = 6;
        assert!(!uplink.handle(S, &tcp));
        // Renewal at T1 (50 s after the request), unicast; no answer until
        // the end: the lease is lost and the firewall must stop using it.
        lines.clear();
        assert!(!uplink.poll(51 * S, &mut frames, &mut lines));
        let renew = frames.pop().unwrap();
        let (dst_mac, src, dst, _) = dhcp::frame::client_payload(&renew).unwrap();
        assert_eq!((dst_mac, src, dst), (SERVER_MAC, LEASED, SERVER));
        assert!(uplink.poll(101 * S, &mut frames, &mut lines), "lost");
        assert_eq!(lines, ["dhcp: lease lost; discovering again"]);
        assert!(uplink.lease().is_none());
        assert!(config_of(&settings, &empty, &[], uplink.lease()).is_err());
        let s = uplink.stats().unwrap();
        assert_eq!((s.offers, s.acks, s.lost), (1, 1, 1));
        // An address from dom0 stops the client.
        let s = snapshot(&[("qubes-ip", "10.0.0.2")]);
        assert!(!uplink.set_needed(needs_dhcp(&settings, &s, &[]), UPLINK_MAC, 5));
        assert!(!uplink.running());
    }
}
