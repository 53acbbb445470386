//! A file that mirrors QubesDB: one `KEY VALUE` entry per line.
//!
//! ```text
//! # the firewall's own addresses, as QubesDB gives them to sys-firewall
//! /qubes-ip 10.137.0.6
//! /qubes-gateway 10.137.0.1
//! /qubes-netvm-gateway 10.138.0.1
//! /qubes-primary-dns 192.0.2.53
//! /qubes-secondary-dns 192.0.2.54
//! # rules, exactly as dom0 writes them
//! /qubes-firewall/10.138.0.10/policy drop
//! /qubes-firewall/10.138.0.10/0000 action=accept proto=tcp dstports=80-80
//! # the hosted platform's own keys: which TAP device is which link
//! /hosted/uplink fwup
//! /hosted/client/fwa 10.138.0.10
//! /hosted/client/fwb 10.138.0.11 fd09:24ef:4179::a8a:b
//! ```
//!
//! The value is everything after the first space. Blank lines and lines
//! starting with `#` are ignored. The QubesDB keys and their meaning are
//! those of `firewall::store` (docs/firewall.md); without
//! `/qubes-primary-dns` the firewall has no upstream resolver and drops
//! queries to the virtual ones, as Linux does.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use firewall::store::{
    load_config, load_rules, now_or_never, rule_targets, ConfigError, Macs, MemoryStore,
};
use firewall::{Config, EthernetAddress};
use qubes::firewall_rules::LoadedRules;

/// Our MAC on the uplink when the file does not say.
pub const DEFAULT_UPLINK_MAC: EthernetAddress =
    EthernetAddress([0x02, 0x6d, 0x6f, 0x61, 0x74, 0x01]);
/// Our MAC towards clients, as a Qubes vif backend has it.
pub const CLIENT_SIDE_MAC: EthernetAddress = EthernetAddress([0xfe, 0xff, 0xff, 0xff, 0xff, 0xff]);

/// One client link of the hosted firewall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostedClient {
    /// The TAP device name.
    pub tap: String,
    /// The client's IPv4 address.
    pub ip4: Ipv4Addr,
    /// The client's IPv6 address, if any.
    pub ip6: Option<Ipv6Addr>,
}

/// Everything the file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostedConfig {
    /// The uplink TAP device name.
    pub uplink_tap: String,
    /// Firewall configuration.
    pub firewall: Config,
    /// Client links.
    pub clients: Vec<HostedClient>,
    /// Rules per client address, with parse errors (drop-all) reported.
    pub rules: BTreeMap<IpAddr, LoadedRules>,
}

/// Why the file was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    /// 1-based line number, 0 when the error is about a missing key.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.message)
        } else {
            write!(f, "line {}: {}", self.line, self.message)
        }
    }
}

impl std::error::Error for FileError {}

fn error(line: usize, message: impl Into<String>) -> FileError {
    FileError {
        line,
        message: message.into(),
    }
}

/// The entries of the file, in order, with their line numbers.
fn entries(text: &str) -> Result<Vec<(usize, &str, &str)>, FileError> {
    let mut out = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let (key, value) = line.split_once(' ').unwrap_or((line, ""));
        if !key.starts_with('/') {
            return Err(error(
                number,
                format!("key '{key}' does not start with '/'"),
            ));
        }
        out.push((number, key, value));
    }
    Ok(out)
}

fn parse_value<T: std::str::FromStr>(line: usize, key: &str, value: &str) -> Result<T, FileError> {
    value
        .trim()
        .parse()
        .map_err(|_| error(line, format!("invalid value '{value}' for {key}")))
}

/// `aa:bb:cc:dd:ee:ff`.
fn parse_mac(text: &str) -> Option<EthernetAddress> {
    let mut bytes = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut bytes {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(EthernetAddress(bytes))
}

/// The line of `key`'s last entry, 0 if it has none.
fn line_of(lines: &BTreeMap<String, usize>, key: &str) -> usize {
    lines.get(key).copied().unwrap_or(0)
}

impl HostedConfig {
    /// Parse the file's text. The QubesDB keys go into a
    /// [`MemoryStore`] and are read by the firewall's own loaders
    /// (`firewall::store`), so the hosted firewall reads its keys exactly
    /// as the firewall VM reads xenstore.
    pub fn parse(text: &str) -> Result<HostedConfig, FileError> {
        let mut store = MemoryStore::new();
        let mut lines: BTreeMap<String, usize> = BTreeMap::new();
        let mut clients = Vec::new();
        let mut uplink_tap = None;
        let mut uplink_mac = DEFAULT_UPLINK_MAC;
        for (line, key, value) in entries(text)? {
            if let Some(tap) = key.strip_prefix("/hosted/client/") {
                let mut words = value.split_whitespace();
                let ip4 = parse_value(line, key, words.next().unwrap_or(""))?;
                let ip6 = words
                    .next()
                    .map(|w| parse_value(line, key, w))
                    .transpose()?;
                clients.push(HostedClient {
                    tap: tap.to_string(),
                    ip4,
                    ip6,
                });
                continue;
            }
            if lines.insert(key.to_string(), line).is_some() {
                return Err(error(line, format!("{key} given twice")));
            }
            match key {
                "/hosted/uplink" => uplink_tap = Some(value.trim().to_string()),
                "/hosted/uplink-mac" => {
                    uplink_mac = parse_mac(value.trim())
                        .ok_or_else(|| error(line, format!("invalid MAC '{value}'")))?;
                }
                _ => {
                    store.insert(key, value);
                }
            }
        }
        let uplink_tap = uplink_tap.ok_or_else(|| error(0, "missing /hosted/uplink"))?;
        let macs = Macs {
            uplink: uplink_mac,
            client_side: CLIENT_SIDE_MAC,
        };
        let ready = "a memory store answers at once";
        let firewall = now_or_never(load_config(&mut store, macs))
            .ok_or_else(|| error(0, ready))?
            .map_err(|e| {
                let line = match &e {
                    ConfigError::Invalid { key, .. } => line_of(&lines, key),
                    ConfigError::TooLong { key, .. } => line_of(&lines, key),
                    _ => 0,
                };
                error(line, e.to_string())
            })?;
        let targets = now_or_never(rule_targets(&mut store))
            .ok_or_else(|| error(0, ready))?
            .map_err(|e| error(0, e.to_string()))?;
        if targets.ignored > 0 || targets.truncated > 0 {
            return Err(error(
                0,
                "a /qubes-firewall/ directory is not an IP address (or too many)",
            ));
        }
        let mut rules = BTreeMap::new();
        for addr in targets.addrs {
            let loaded = now_or_never(load_rules(&mut store, addr))
                .ok_or_else(|| error(0, ready))?
                .map_err(|e| error(0, e.to_string()))?;
            if let Some(loaded) = loaded {
                rules.insert(addr, loaded);
            }
        }
        Ok(HostedConfig {
            uplink_tap,
            firewall,
            clients,
            rules,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qubes::firewall_rules::{Action, RuleSet};

    const EXAMPLE: &str = "\
# comment
/qubes-ip 10.137.0.6
/qubes-gateway 10.137.0.1
/qubes-netvm-gateway 10.138.0.1
/qubes-primary-dns 192.0.2.53
/qubes-secondary-dns 192.0.2.54
/hosted/uplink fwup
/hosted/client/fwa 10.138.0.10
/hosted/client/fwb 10.138.0.11 fd09:24ef:4179::a8a:b
/qubes-firewall/10.138.0.10 
/qubes-firewall/10.138.0.10/policy drop
/qubes-firewall/10.138.0.10/0005 action=accept proto=tcp dstports=80-80
/qubes-firewall/10.138.0.10/0001 action=drop dst4=192.0.2.99
/qubes-firewall/10.138.0.11/policy accept
/qubes-firewall/10.138.0.11/0000 action=accept proto=gre
";

    #[test]
    fn example_parses() {
        let config = HostedConfig::parse(EXAMPLE).unwrap();
        assert_eq!(config.uplink_tap, "fwup");
        assert_eq!(config.firewall.uplink.ip4, Ipv4Addr::new(10, 137, 0, 6));
        assert_eq!(
            config.firewall.uplink.gateway4,
            Ipv4Addr::new(10, 137, 0, 1)
        );
        assert_eq!(
            config.firewall.client_side.gateway4,
            Ipv4Addr::new(10, 138, 0, 1)
        );
        assert_eq!(config.firewall.uplink.ip6, None);
        assert_eq!(config.firewall.dns.len(), 2);
        assert_eq!(
            config.firewall.dns[1].upstream,
            Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 54)))
        );
        assert_eq!(config.clients.len(), 2);
        assert_eq!(
            config.clients[1].ip6,
            Some("fd09:24ef:4179::a8a:b".parse().unwrap())
        );
        let a = &config.rules[&"10.138.0.10".parse::<IpAddr>().unwrap()];
        assert_eq!(a.error, None);
        assert_eq!(a.rules.policy, Action::Drop);
        assert_eq!(a.rules.rules.len(), 2);
        assert_eq!(a.rules.rules[0].action, Action::Drop, "0001 before 0005");
        let b = &config.rules[&"10.138.0.11".parse::<IpAddr>().unwrap()];
        assert!(b.error.is_some(), "a bad rule is reported");
        assert_eq!(b.rules, RuleSet::drop_all());
    }

    #[test]
    fn the_keys_mean_what_they_mean_to_the_firewall_vm() {
        // No upstream resolver: the virtual ones stay, without upstream
        // (their queries are dropped, as qubes-setup-dnat-to-ns does).
        let none = EXAMPLE
            .replace("/qubes-primary-dns 192.0.2.53\n", "")
            .replace("/qubes-secondary-dns 192.0.2.54\n", "");
        let config = HostedConfig::parse(&none).unwrap();
        assert_eq!(config.firewall.dns.len(), 2);
        assert!(config.firewall.dns.iter().all(|d| d.upstream.is_none()));
        // An IPv6 upstream redirects the IPv6 virtual resolvers.
        let v6 = format!(
            "{EXAMPLE}/qubes-ip6 2001:db8::6\n/qubes-gateway6 2001:db8::1\n/qubes-primary-dns6 2001:db8::53\n"
        );
        let config = HostedConfig::parse(&v6).unwrap();
        assert_eq!(config.firewall.dns.len(), 4);
        assert_eq!(
            config.firewall.dns[2].upstream,
            Some("2001:db8::53".parse().unwrap())
        );
    }

    #[test]
    fn errors_name_the_line() {
        let missing = EXAMPLE.replace("/qubes-ip 10.137.0.6\n", "");
        assert_eq!(
            HostedConfig::parse(&missing).unwrap_err().message,
            "missing /qubes-ip"
        );
        let bad = EXAMPLE.replace("/qubes-gateway 10.137.0.1", "/qubes-gateway 10.137.0");
        assert_eq!(HostedConfig::parse(&bad).unwrap_err().line, 3);
        let twice = format!("{EXAMPLE}/qubes-ip 10.137.0.7\n");
        assert_eq!(HostedConfig::parse(&twice).unwrap_err().line, 16);
        let relative = format!("{EXAMPLE}qubes-ip 1.2.3.4\n");
        assert_eq!(HostedConfig::parse(&relative).unwrap_err().line, 16);
        let mac = format!("{EXAMPLE}/hosted/uplink-mac 02:00:00:00:00:0g\n");
        assert_eq!(HostedConfig::parse(&mac).unwrap_err().line, 16);
        let mac = format!("{EXAMPLE}/hosted/uplink-mac 02:00:00:00:00:0a\n");
        assert_eq!(
            HostedConfig::parse(&mac).unwrap().firewall.uplink.mac,
            EthernetAddress([2, 0, 0, 0, 0, 0x0a])
        );
        let bad_dir = format!("{EXAMPLE}/qubes-firewall/not-an-ip/policy drop\n");
        assert!(HostedConfig::parse(&bad_dir).is_err());
    }
}
