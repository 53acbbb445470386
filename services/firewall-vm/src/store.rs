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
//! with [`Defaults`] (the command line, the uplink vif's `ip`) for the
//! firewall's own keys that the directory lacks.

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::net::Ipv4Addr;

use firewall::store::{child_from_xenstore, key_to_xenstore, keys, ConfigStore, StoreError};
use netvm::config::Snapshot;

use crate::settings::FirewallSettings;

/// Values of QubesDB keys used when the directory does not hold them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Defaults {
    values: BTreeMap<&'static str, String>,
}

impl Defaults {
    /// From the command line and the uplink vif's first IPv4 `ip`:
    /// `/qubes-ip` (`firewall.ip`, else the vif's), `/qubes-gateway`
    /// (`firewall.gw`), `/qubes-netvm-gateway` (`firewall.client-gw`, else
    /// our uplink address, as Qubes gives clients the firewall's own
    /// address), `/qubes-primary-dns` and `/qubes-secondary-dns`
    /// (`firewall.dns`).
    pub fn new(settings: &FirewallSettings, uplink_ip: Option<Ipv4Addr>) -> Self {
        let mut values = BTreeMap::new();
        let ip = settings.ip.or(uplink_ip);
        if let Some(ip) = ip {
            values.insert(keys::IP, ip.to_string());
        }
        if let Some(gw) = settings.gw {
            values.insert(keys::GATEWAY, gw.to_string());
        }
        if let Some(gw) = settings.client_gw.or(ip) {
            values.insert(keys::NETVM_GATEWAY, gw.to_string());
        }
        for (key, addr) in [keys::PRIMARY_DNS, keys::SECONDARY_DNS]
            .into_iter()
            .zip(settings.dns.iter())
        {
            values.insert(key, addr.to_string());
        }
        Self { values }
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

impl ConfigStore for EffectiveStore<'_> {
    async fn read(&mut self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let rel = key_to_xenstore(key).map_err(|_| StoreError::BadKey {
            key: key.chars().take(64).collect(),
        })?;
        if let Some(v) = self.snapshot.get(&rel) {
            return Ok(Some(v.to_vec()));
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
}
