//! Parsing QubesDB entries into typed rules.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::net::{Ipv4Addr, Ipv6Addr};

use super::error::{quote, RuleError, RuleSetError};
use super::types::{
    mask_v4, mask_v6, Action, Destination, Family, LoadedRules, PortRange, Proto, Rule, RuleSet,
    SpecialTarget,
};

/// QubesDB's limit on one entry's length, in bytes.
pub const MAX_ENTRY_LEN: usize = 3072;

/// Longest DNS name accepted in `dsthost=` (RFC 1035 text form).
const MAX_HOSTNAME_LEN: usize = 253;

/// Longest DNS label.
const MAX_LABEL_LEN: usize = 63;

/// The options of one rule, before cross-checks. An option given twice
/// keeps its last value, as the Linux agent's `dict(elem.split('=') ...)`
/// does (`read_rules` in `qubesagent/firewall.py`).
#[derive(Default)]
struct Options<'a> {
    action: Option<&'a str>,
    dst4: Option<&'a str>,
    dst6: Option<&'a str>,
    dsthost: Option<&'a str>,
    proto: Option<&'a str>,
    specialtarget: Option<&'a str>,
    dstports: Option<&'a str>,
    icmptype: Option<&'a str>,
}

impl<'a> Options<'a> {
    /// Split `text` into options, refusing unknown ones: the Linux agent
    /// applies exactly `action`, `proto`, `dst4`, `dst6`, `dsthost`,
    /// `dstports`, `specialtarget` and `icmptype` (`supported_rule_opts`)
    /// and blocks the client on any other, `dpi` and `expire` included.
    fn split(text: &'a str) -> Result<Options<'a>, RuleError> {
        let mut options = Options::default();
        for option in text.split(' ') {
            if option.is_empty() {
                return Err(RuleError::EmptyOption);
            }
            let (key, value) = option
                .split_once('=')
                .ok_or_else(|| RuleError::MissingEquals {
                    option: quote(option),
                })?;
            let slot = match key {
                "action" => &mut options.action,
                "dst4" => &mut options.dst4,
                "dst6" => &mut options.dst6,
                "dsthost" => &mut options.dsthost,
                "proto" => &mut options.proto,
                "specialtarget" => &mut options.specialtarget,
                "dstports" => &mut options.dstports,
                "icmptype" => &mut options.icmptype,
                _ => return Err(RuleError::UnknownOption { key: quote(key) }),
            };
            *slot = Some(value);
        }
        Ok(options)
    }
}

fn invalid(key: &'static str, value: &str) -> RuleError {
    RuleError::InvalidValue {
        key,
        value: quote(value),
    }
}

fn parse_action(key: &'static str, value: &str) -> Result<Action, RuleError> {
    match value {
        "accept" => Ok(Action::Accept),
        "drop" => Ok(Action::Drop),
        _ => Err(invalid(key, value)),
    }
}

/// A decimal number with only ASCII digits (no sign, no spaces), at most
/// `max`.
fn parse_decimal(text: &str, max: u32) -> Option<u32> {
    if text.is_empty() || text.len() > 10 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u32>().ok().filter(|n| *n <= max)
}

/// `addr` or `addr/prefix`; returns the address text and the prefix.
fn split_prefix(text: &str, max_prefix: u32) -> Option<(&str, u8)> {
    match text.split_once('/') {
        None => Some((text, max_prefix as u8)),
        Some((addr, prefix)) => {
            let prefix = parse_decimal(prefix, max_prefix)?;
            Some((addr, prefix as u8))
        }
    }
}

fn parse_dst4(value: &str) -> Result<Destination, RuleError> {
    let (addr, prefix) = split_prefix(value, 32).ok_or_else(|| invalid("dst4", value))?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| invalid("dst4", value))?;
    Ok(Destination::V4 {
        addr: mask_v4(addr, prefix),
        prefix,
    })
}

fn parse_dst6(value: &str) -> Result<Destination, RuleError> {
    let (addr, prefix) = split_prefix(value, 128).ok_or_else(|| invalid("dst6", value))?;
    let addr: Ipv6Addr = addr.parse().map_err(|_| invalid("dst6", value))?;
    Ok(Destination::V6 {
        addr: mask_v6(addr, prefix),
        prefix,
    })
}

/// A DNS name: labels of letters, digits, `-` and `_`, optionally ending
/// in a dot.
fn parse_dsthost(value: &str) -> Result<Destination, RuleError> {
    let name = value.strip_suffix('.').unwrap_or(value);
    let valid_label = |label: &str| {
        !label.is_empty()
            && label.len() <= MAX_LABEL_LEN
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.is_empty() || name.len() > MAX_HOSTNAME_LEN || !name.split('.').all(valid_label) {
        return Err(invalid("dsthost", value));
    }
    Ok(Destination::Host(String::from(name).to_ascii_lowercase()))
}

fn parse_proto(value: &str) -> Result<Proto, RuleError> {
    match value {
        "tcp" => Ok(Proto::Tcp),
        "udp" => Ok(Proto::Udp),
        "icmp" => Ok(Proto::Icmp),
        _ => Err(invalid("proto", value)),
    }
}

fn parse_special_target(value: &str) -> Result<SpecialTarget, RuleError> {
    match value {
        "dns" => Ok(SpecialTarget::Dns),
        _ => Err(invalid("specialtarget", value)),
    }
}

/// `lo-hi` or a single port.
fn parse_ports(value: &str) -> Result<PortRange, RuleError> {
    let port = |text: &str| parse_decimal(text, u32::from(u16::MAX)).map(|p| p as u16);
    let range = match value.split_once('-') {
        Some((first, last)) => port(first).zip(port(last)),
        None => port(value).map(|p| (p, p)),
    };
    range
        .and_then(|(first, last)| PortRange::new(first, last))
        .ok_or_else(|| invalid("dstports", value))
}

fn parse_icmp_type(value: &str) -> Result<u8, RuleError> {
    parse_decimal(value, u32::from(u8::MAX))
        .map(|t| t as u8)
        .ok_or_else(|| invalid("icmptype", value))
}

/// Parse one rule entry (`/qubes-firewall/<ip>/NNNN`) of a client whose
/// address is of `family`.
pub fn parse_rule(family: Family, entry: &[u8]) -> Result<Rule, RuleError> {
    if entry.len() > MAX_ENTRY_LEN {
        return Err(RuleError::TooLong { len: entry.len() });
    }
    let text = core::str::from_utf8(entry).map_err(|_| RuleError::NotUtf8)?;
    let options = Options::split(text)?;

    let action = parse_action("action", options.action.ok_or(RuleError::MissingAction)?)?;

    // The family checks come first, then one destination is used in the
    // order dst4, dst6, dsthost and the others are ignored, as in
    // `prepare_rules` (`qubesagent/firewall.py`): an IPv4 client's
    // `dst4=... dsthost=...` is its dst4, and its `dst6=` is an error.
    if options.dst4.is_some() && family != Family::V4 {
        return Err(RuleError::WrongFamily { key: "dst4" });
    }
    if options.dst6.is_some() && family != Family::V6 {
        return Err(RuleError::WrongFamily { key: "dst6" });
    }
    let destination = match (options.dst4, options.dst6, options.dsthost) {
        (Some(value), _, _) => Some(parse_dst4(value)?),
        (_, Some(value), _) => Some(parse_dst6(value)?),
        // An address literal resolves to itself (as getaddrinfo does).
        (_, _, Some(value)) => match (value.parse::<core::net::IpAddr>(), family) {
            (Ok(core::net::IpAddr::V4(addr)), Family::V4) => {
                Some(Destination::V4 { addr, prefix: 32 })
            }
            (Ok(core::net::IpAddr::V6(addr)), Family::V6) => {
                Some(Destination::V6 { addr, prefix: 128 })
            }
            (Ok(_), _) => return Err(RuleError::WrongFamily { key: "dsthost" }),
            (Err(_), _) => Some(parse_dsthost(value)?),
        },
        (None, None, None) => None,
    };

    let proto = options.proto.map(parse_proto).transpose()?;
    let special_target = options
        .specialtarget
        .map(parse_special_target)
        .transpose()?;
    let dst_ports = options.dstports.map(parse_ports).transpose()?;
    let icmp_type = options.icmptype.map(parse_icmp_type).transpose()?;
    // `icmp type N` alone makes nft match ICMP only (an implicit protocol
    // dependency), so `icmptype=` without `proto=` means `proto=icmp`; with
    // `proto=tcp` or `udp` nft refuses the conflicting protocols.
    let proto = match (icmp_type, proto) {
        (Some(_), None) => Some(Proto::Icmp),
        (Some(_), Some(Proto::Tcp | Proto::Udp)) => return Err(RuleError::IcmpTypeNeedsIcmp),
        (_, proto) => proto,
    };
    // `dstports=` without `proto=` is TCP or UDP (the agent writes one nft
    // rule for each); with ICMP (`proto=icmp`, or implied by `icmptype=`)
    // nft refuses `icmp dport`, and the agent then blocks the client.
    // `specialtarget=dns` sets the port to 53 itself, so it cannot go with
    // ICMP either.
    if proto == Some(Proto::Icmp)
        && (dst_ports.is_some() || special_target == Some(SpecialTarget::Dns))
    {
        return Err(RuleError::PortsNeedTcpOrUdp);
    }

    Ok(Rule {
        action,
        destination,
        proto,
        special_target,
        dst_ports,
        icmp_type,
    })
}

impl RuleSet {
    /// Parse a client's QubesDB directory `/qubes-firewall/<client-ip>/`,
    /// given as `(entry name, value)` pairs with the directory prefix
    /// removed (`policy`, `0000`, `0001`, ...), in any order.
    pub fn parse<'a, I>(family: Family, entries: I) -> Result<RuleSet, RuleSetError>
    where
        I: IntoIterator<Item = (&'a str, &'a [u8])>,
    {
        let mut policy = None;
        let mut numbered: BTreeMap<u16, &[u8]> = BTreeMap::new();
        for (name, value) in entries {
            if name == "policy" {
                if policy.replace(value).is_some() {
                    return Err(RuleSetError::DuplicateEntry { name: quote(name) });
                }
                continue;
            }
            let number = (name.len() == 4)
                .then(|| parse_decimal(name, 9999))
                .flatten()
                .ok_or_else(|| RuleSetError::UnexpectedEntry { name: quote(name) })?;
            if numbered.insert(number as u16, value).is_some() {
                return Err(RuleSetError::DuplicateEntry { name: quote(name) });
            }
        }
        let policy = policy.ok_or(RuleSetError::MissingPolicy)?;
        let policy = core::str::from_utf8(policy)
            .ok()
            .and_then(|text| parse_action("policy", text).ok())
            .ok_or_else(|| RuleSetError::InvalidPolicy {
                value: quote(&String::from_utf8_lossy(policy)),
            })?;
        // Gaps in the numbering are normal: every entry is read, in order.
        let rules = numbered
            .into_iter()
            .map(|(number, entry)| {
                parse_rule(family, entry).map_err(|error| RuleSetError::Rule { number, error })
            })
            .collect::<Result<Vec<Rule>, RuleSetError>>()?;
        Ok(RuleSet { rules, policy })
    }
}

impl LoadedRules {
    /// Load a client's rules like the Linux sys-firewall: the parsed rule set
    /// when it is valid, otherwise drop-all together with the reason.
    pub fn load<'a, I>(family: Family, entries: I) -> LoadedRules
    where
        I: IntoIterator<Item = (&'a str, &'a [u8])>,
    {
        match RuleSet::parse(family, entries) {
            Ok(rules) => LoadedRules { rules, error: None },
            Err(error) => LoadedRules {
                rules: RuleSet::drop_all(),
                error: Some(error),
            },
        }
    }
}
