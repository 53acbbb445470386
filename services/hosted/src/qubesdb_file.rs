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
//! starting with `#` are ignored. Optional keys: `/qubes-ip6`,
//! `/qubes-gateway6`, `/qubes-netvm-gateway6`, `/qubes-primary-dns6`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use firewall::config::QUBES_DNS6;
use firewall::EthernetAddress;
use firewall::{ClientSideConfig, Config, DnsRedirect, UplinkConfig};
use qubes::firewall_rules::{Family, LoadedRules};

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

impl HostedConfig {
    /// Parse the file's text.
    pub fn parse(text: &str) -> Result<HostedConfig, FileError> {
        let mut singles: BTreeMap<&str, (usize, &str)> = BTreeMap::new();
        let mut clients = Vec::new();
        let mut rule_dirs: BTreeMap<&str, Vec<(&str, &[u8])>> = BTreeMap::new();
        for (line, key, value) in entries(text)? {
            if let Some(rest) = key.strip_prefix("/qubes-firewall/") {
                let Some((addr, entry)) = rest.split_once('/') else {
                    // The empty write dom0 does after an update.
                    continue;
                };
                rule_dirs
                    .entry(addr)
                    .or_default()
                    .push((entry, value.as_bytes()));
            } else if let Some(tap) = key.strip_prefix("/hosted/client/") {
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
            } else if singles.insert(key, (line, value)).is_some() {
                return Err(error(line, format!("{key} given twice")));
            }
        }
        let required = |key: &str| {
            singles
                .get(key)
                .copied()
                .ok_or_else(|| error(0, format!("missing {key}")))
        };
        let optional = |key: &str| singles.get(key).copied();
        let v4 = |key: &str| -> Result<Ipv4Addr, FileError> {
            let (line, value) = required(key)?;
            parse_value(line, key, value)
        };
        let v6 = |key: &str| -> Result<Option<Ipv6Addr>, FileError> {
            optional(key)
                .map(|(line, value)| parse_value(line, key, value))
                .transpose()
        };
        let uplink_tap = required("/hosted/uplink")?.1.trim().to_string();
        let uplink_mac = match optional("/hosted/uplink-mac") {
            Some((line, value)) => parse_mac(value.trim())
                .ok_or_else(|| error(line, format!("invalid MAC '{value}'")))?,
            None => DEFAULT_UPLINK_MAC,
        };
        let mut upstream4 = vec![v4("/qubes-primary-dns")?];
        if optional("/qubes-secondary-dns").is_some() {
            upstream4.push(v4("/qubes-secondary-dns")?);
        }
        let mut firewall = Config::new(
            UplinkConfig {
                mac: uplink_mac,
                ip4: v4("/qubes-ip")?,
                gateway4: v4("/qubes-gateway")?,
                ip6: v6("/qubes-ip6")?,
                gateway6: v6("/qubes-gateway6")?,
                gateway_mac: None,
            },
            ClientSideConfig {
                mac: CLIENT_SIDE_MAC,
                gateway4: v4("/qubes-netvm-gateway")?,
                gateway6: v6("/qubes-netvm-gateway6")?,
            },
            &upstream4,
        );
        if let Some(dns6) = v6("/qubes-primary-dns6")? {
            firewall.dns.push(DnsRedirect {
                virtual_server: IpAddr::V6(QUBES_DNS6[0]),
                upstream: Some(IpAddr::V6(dns6)),
            });
        }
        let mut rules = BTreeMap::new();
        for (addr, dir) in rule_dirs {
            let addr: IpAddr = addr
                .parse()
                .map_err(|_| error(0, format!("/qubes-firewall/{addr}/ is not an IP address")))?;
            rules.insert(addr, LoadedRules::load(Family::of(&addr), dir));
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
