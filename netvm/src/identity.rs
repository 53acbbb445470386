//! Who a client vif is: the keys the toolstack wrote into its backend
//! directory (`mac`, and `ip` when the xl config says `vif=['ip=...']`).
//! Both are written by dom0, but parsed as untrusted input all the same:
//! a bad value is an [`Key::Invalid`], never a panic.

use alloc::string::String;
use alloc::vec::Vec;
use core::net::IpAddr;

use netfront::MacAddress;
use xen::abi::DomId;
use xen::xenstore::{XenStore, XsError, XsTransport};

use crate::ClientId;

/// Most addresses taken from one `ip` key.
pub const MAX_ADDRESSES: usize = 8;
/// Longest `ip` value looked at (xenstore values may be 4 KiB).
pub const MAX_IP_VALUE: usize = 512;

/// A key of the vif's backend directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key<T> {
    /// Not there.
    Absent,
    /// There and valid.
    Valid(T),
    /// There, but not what it should be: why.
    Invalid(String),
}

impl<T> Key<T> {
    /// The value, if valid.
    pub fn valid(&self) -> Option<&T> {
        match self {
            Key::Valid(v) => Some(v),
            _ => None,
        }
    }
}

/// A client vif and who it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientInfo {
    /// Its number, once connected (`ClientId(0)` before: at
    /// [`Service::admit`](crate::Service::admit) time).
    pub id: ClientId,
    /// Its backend directory, e.g. `/local/domain/5/backend/vif/7/0`.
    pub path: String,
    /// The frontend's domain.
    pub frontend_id: DomId,
    /// `mac`: the frontend's MAC.
    pub mac: Key<MacAddress>,
    /// `ip`: the addresses the toolstack gave it (space-separated in the
    /// key, as libxl writes it; IPv4 and IPv6 alike).
    pub ip: Key<Vec<IpAddr>>,
    /// What its frontend asked for when it connected (scatter-gather, GSO
    /// per type, blank checksums per family: what may be delivered to it
    /// as is); `None` before it connected (at
    /// [`Service::admit`](crate::Service::admit) time).
    pub frontend: Option<netback::FrontendConfig>,
}

impl ClientInfo {
    /// Its first IPv4 address, if `ip` is valid and has one.
    pub fn ip4(&self) -> Option<core::net::Ipv4Addr> {
        self.ip.valid()?.iter().find_map(|a| match a {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        })
    }

    /// Its first IPv6 address, if `ip` is valid and has one.
    pub fn ip6(&self) -> Option<core::net::Ipv6Addr> {
        self.ip.valid()?.iter().find_map(|a| match a {
            IpAddr::V6(v6) => Some(*v6),
            IpAddr::V4(_) => None,
        })
    }
}

fn printable(value: &[u8]) -> String {
    let cut = &value[..value.len().min(40)];
    let mut s = String::new();
    for &b in cut {
        if b.is_ascii_graphic() || b == b' ' {
            s.push(b as char);
        } else {
            s.push('?');
        }
    }
    if value.len() > cut.len() {
        s.push_str("...");
    }
    s
}

/// Parse a `mac` value.
pub fn parse_mac(value: &[u8]) -> Key<MacAddress> {
    match MacAddress::parse(value) {
        Ok(m) => Key::Valid(m),
        Err(_) => Key::Invalid(alloc::format!("mac {:?} is not a MAC", printable(value))),
    }
}

/// Parse an `ip` value: one or more IPv4/IPv6 addresses separated by
/// spaces. Empty (or only spaces) counts as absent.
pub fn parse_ip(value: &[u8]) -> Key<Vec<IpAddr>> {
    if value.len() > MAX_IP_VALUE {
        return Key::Invalid(alloc::format!("ip is {} bytes long", value.len()));
    }
    let Ok(text) = core::str::from_utf8(value) else {
        return Key::Invalid(alloc::format!("ip {:?} is not UTF-8", printable(value)));
    };
    let mut out = Vec::new();
    for word in text.split_ascii_whitespace() {
        if out.len() == MAX_ADDRESSES {
            return Key::Invalid(alloc::format!("ip has more than {MAX_ADDRESSES} addresses"));
        }
        match word.parse::<IpAddr>() {
            Ok(a) => out.push(a),
            Err(_) => {
                return Key::Invalid(alloc::format!(
                    "ip {:?} is not an IP address",
                    printable(word.as_bytes())
                ))
            }
        }
    }
    if out.is_empty() {
        Key::Absent
    } else {
        Key::Valid(out)
    }
}

async fn read_key<T: XsTransport>(
    xs: &mut XenStore<T>,
    path: &str,
) -> Result<Option<Vec<u8>>, XsError> {
    match xs.read(path).await {
        Ok(v) => Ok(Some(v)),
        Err(XsError::Enoent) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Read the identity keys of the vif whose backend directory is `path`.
pub async fn read<T: XsTransport>(
    xs: &mut XenStore<T>,
    path: &str,
    frontend_id: DomId,
) -> Result<ClientInfo, XsError> {
    let mac = match read_key(xs, &alloc::format!("{path}/mac")).await? {
        None => Key::Absent,
        Some(v) => parse_mac(&v),
    };
    let ip = match read_key(xs, &alloc::format!("{path}/ip")).await? {
        None => Key::Absent,
        Some(v) => parse_ip(&v),
    };
    Ok(ClientInfo {
        id: ClientId(0),
        path: String::from(path),
        frontend_id,
        mac,
        ip,
        frontend: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn ip_lists_parse_and_bad_ones_are_invalid() {
        assert_eq!(
            parse_ip(b"10.137.0.10"),
            Key::Valid(alloc::vec![IpAddr::V4(Ipv4Addr::new(10, 137, 0, 10))])
        );
        let both = parse_ip(b"10.137.0.10  fd09:24ef:4179::a89:a ");
        assert_eq!(both.valid().map(Vec::len), Some(2));
        let info = ClientInfo {
            id: ClientId(1),
            path: String::new(),
            frontend_id: 3,
            mac: Key::Absent,
            ip: both,
            frontend: None,
        };
        assert_eq!(info.ip4(), Some(Ipv4Addr::new(10, 137, 0, 10)));
        assert_eq!(
            info.ip6(),
            Some(Ipv6Addr::new(0xfd09, 0x24ef, 0x4179, 0, 0, 0, 0xa89, 0xa))
        );
        assert_eq!(parse_ip(b""), Key::Absent);
        assert_eq!(parse_ip(b"   "), Key::Absent);
        assert!(matches!(parse_ip(b"10.137.0"), Key::Invalid(_)));
        assert!(matches!(parse_ip(b"10.137.0.10/24"), Key::Invalid(_)));
        assert!(matches!(parse_ip(&[0xff, 0xfe]), Key::Invalid(_)));
        assert!(matches!(parse_ip(&[b'1'; 600]), Key::Invalid(_)));
        assert!(matches!(
            parse_ip("1.1.1.1 ".repeat(9).as_bytes()),
            Key::Invalid(_)
        ));
    }

    #[test]
    fn macs_parse() {
        assert_eq!(
            parse_mac(b"00:16:3e:00:00:01"),
            Key::Valid(MacAddress([0, 0x16, 0x3e, 0, 0, 1]))
        );
        assert!(matches!(parse_mac(b"00:16:3e"), Key::Invalid(_)));
        assert!(matches!(parse_mac(&[0u8; 17]), Key::Invalid(_)));
    }
}
