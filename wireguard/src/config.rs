//! The wg-quick `.conf` format that VPN providers hand out: one `[Interface]`
//! and any number of `[Peer]` sections of `Key = Value` lines, `#` comments.
//!
//! Parsing is strict: every error names the line and the key, keys must be
//! 44-character base64 of exactly 32 bytes, and unknown keys are refused
//! (except wg-quick's own Linux-only settings, which are listed in
//! [`Config::ignored`] so the caller can warn).

use alloc::borrow::ToOwned;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::net::{IpAddr, SocketAddr};
use core::str::FromStr;

use zeroize::{Zeroize, ZeroizeOnDrop};

/// A 32-byte secret (private or pre-shared key), zeroed on drop.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct SecretKey(pub [u8; 32]);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

/// An address with a prefix length, as in `Address` and `AllowedIPs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpPrefix {
    /// The address as written (host bits kept; `Address` needs them).
    pub addr: IpAddr,
    /// Prefix length, at most 32 (IPv4) or 128 (IPv6).
    pub len: u8,
}

/// Where a peer is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A literal address and port.
    Addr(SocketAddr),
    /// A host name to resolve, and the port.
    Host {
        /// The name.
        host: String,
        /// The UDP port.
        port: u16,
    },
}

/// The `[Interface]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// `PrivateKey`.
    pub private_key: SecretKey,
    /// `Address` (may repeat, comma-separated).
    pub addresses: Vec<IpPrefix>,
    /// The IP entries of `DNS`.
    pub dns: Vec<IpAddr>,
    /// The non-IP entries of `DNS` (search domains).
    pub dns_search: Vec<String>,
    /// `MTU`.
    pub mtu: Option<u16>,
    /// `ListenPort`.
    pub listen_port: Option<u16>,
}

/// A `[Peer]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// `PublicKey`.
    pub public_key: [u8; 32],
    /// `PresharedKey`.
    pub preshared_key: Option<SecretKey>,
    /// `Endpoint`.
    pub endpoint: Option<Endpoint>,
    /// `AllowedIPs` (may repeat, comma-separated).
    pub allowed_ips: Vec<IpPrefix>,
    /// `PersistentKeepalive` in seconds (`off` or 0 means none).
    pub persistent_keepalive: Option<u16>,
}

/// A parsed configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The interface.
    pub interface: Interface,
    /// The peers, in file order.
    pub peers: Vec<Peer>,
    /// wg-quick-only keys that were present and ignored, with their line numbers.
    pub ignored: Vec<(usize, String)>,
}

/// What is wrong on a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// A `[Section]` other than Interface or Peer.
    UnknownSection,
    /// A key that this format does not have.
    UnknownKey,
    /// A key before any section.
    OutsideSection,
    /// A line that is neither a section, a comment nor `Key = Value`.
    Syntax,
    /// A key that may appear once appeared again.
    Duplicate,
    /// Not valid base64.
    BadBase64,
    /// Valid base64 of the wrong length (the decoded length is given).
    BadKeyLength(usize),
    /// Not an IP address.
    BadAddress,
    /// A prefix length that is not a number or too long for the address.
    BadPrefix,
    /// Not a number in range.
    BadNumber,
    /// Not `host:port`, `a.b.c.d:port` or `[v6]:port`.
    BadEndpoint,
    /// A required key is missing from the section that starts on this line.
    Missing,
    /// More than one `[Interface]`, or none at all (line 0 then).
    InterfaceCount,
    /// Two peers with the same public key.
    DuplicatePeer,
}

/// A parse error: the 1-based line, the key (if any) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based line number (0 when the error is about the whole file).
    pub line: usize,
    /// The key concerned, as written in the format (e.g. `PublicKey`).
    pub key: Option<String>,
    /// What is wrong.
    pub kind: ErrorKind,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}", self.line)?;
        if let Some(k) = &self.key {
            write!(f, ", key {k}")?;
        }
        let what = match &self.kind {
            ErrorKind::UnknownSection => "unknown section",
            ErrorKind::UnknownKey => "unknown key",
            ErrorKind::OutsideSection => "key outside any section",
            ErrorKind::Syntax => "expected `Key = Value` or `[Section]`",
            ErrorKind::Duplicate => "given twice",
            ErrorKind::BadBase64 => "not valid base64",
            ErrorKind::BadKeyLength(n) => return write!(f, ": key is {n} bytes, expected 32"),
            ErrorKind::BadAddress => "not an IP address",
            ErrorKind::BadPrefix => "bad prefix length",
            ErrorKind::BadNumber => "not a number in range",
            ErrorKind::BadEndpoint => "expected host:port",
            ErrorKind::Missing => "missing in this section",
            ErrorKind::InterfaceCount => "exactly one [Interface] section is required",
            ErrorKind::DuplicatePeer => "peer public key appears twice",
        };
        write!(f, ": {what}")
    }
}

fn base64_value(c: u8) -> Option<u32> {
    Some(u32::from(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    }))
}

/// Decodes standard padded base64 strictly (no whitespace, canonical padding bits).
pub fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(b.len() / 4 * 3);
    for (i, chunk) in b.chunks_exact(4).enumerate() {
        let last = i + 1 == b.len() / 4;
        let pad = chunk.iter().rev().take_while(|c| **c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = (n << 6) | base64_value(c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = n.to_be_bytes();
        let keep = 3 - pad;
        // Bits below the kept bytes must be zero for a canonical encoding.
        if bytes[1 + keep..].iter().any(|x| *x != 0) {
            return None;
        }
        out.extend_from_slice(&bytes[1..1 + keep]);
    }
    Some(out)
}

/// Encodes bytes as standard padded base64 (for printing public keys).
pub fn encode_base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let mut b = [0u8; 3];
        b[..chunk.len()].copy_from_slice(chunk);
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// Parses a 32-byte key in base64.
pub fn parse_key(s: &str) -> Result<[u8; 32], ErrorKind> {
    let mut v = decode_base64(s).ok_or(ErrorKind::BadBase64)?;
    let r = <[u8; 32]>::try_from(v.as_slice()).map_err(|_| ErrorKind::BadKeyLength(v.len()));
    v.zeroize();
    r
}

fn parse_prefix(s: &str) -> Result<IpPrefix, ErrorKind> {
    let (a, l) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let addr = IpAddr::from_str(a.trim()).map_err(|_| ErrorKind::BadAddress)?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match l {
        None => max,
        Some(l) => l.trim().parse::<u8>().map_err(|_| ErrorKind::BadPrefix)?,
    };
    if len > max {
        return Err(ErrorKind::BadPrefix);
    }
    Ok(IpPrefix { addr, len })
}

fn parse_endpoint(s: &str) -> Result<Endpoint, ErrorKind> {
    if let Ok(a) = SocketAddr::from_str(s) {
        return Ok(Endpoint::Addr(a));
    }
    let (host, port) = s.rsplit_once(':').ok_or(ErrorKind::BadEndpoint)?;
    let port = port.parse::<u16>().map_err(|_| ErrorKind::BadEndpoint)?;
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.');
    if !host_ok {
        return Err(ErrorKind::BadEndpoint);
    }
    Ok(Endpoint::Host {
        host: host.to_owned(),
        port,
    })
}

fn list(v: &str) -> impl Iterator<Item = &str> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// Keys wg-quick understands that only make sense on Linux; accepted and reported.
const WG_QUICK_ONLY: &[&str] = &[
    "table",
    "preup",
    "postup",
    "predown",
    "postdown",
    "saveconfig",
    "fwmark",
];

#[derive(Default)]
struct InterfaceDraft {
    line: usize,
    private_key: Option<SecretKey>,
    addresses: Vec<IpPrefix>,
    dns: Vec<IpAddr>,
    dns_search: Vec<String>,
    mtu: Option<u16>,
    listen_port: Option<u16>,
}

#[derive(Default)]
struct PeerDraft {
    line: usize,
    public_key: Option<[u8; 32]>,
    preshared_key: Option<SecretKey>,
    endpoint: Option<Endpoint>,
    allowed_ips: Vec<IpPrefix>,
    persistent_keepalive: Option<Option<u16>>,
}

enum Section {
    None,
    Interface,
    Peer,
}

fn once<T>(slot: &mut Option<T>, value: T) -> Result<(), ErrorKind> {
    if slot.is_some() {
        return Err(ErrorKind::Duplicate);
    }
    *slot = Some(value);
    Ok(())
}

impl Config {
    /// Parses the text of a `.conf` file.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let mut section = Section::None;
        let mut interface: Option<InterfaceDraft> = None;
        let mut interfaces = 0usize;
        let mut peers: Vec<PeerDraft> = Vec::new();
        let mut ignored = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let err = |key: Option<&str>, kind| ConfigError {
                line: line_no,
                key: key.map(ToOwned::to_owned),
                kind,
            };
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                let name = name.trim();
                if name.eq_ignore_ascii_case("interface") {
                    interfaces += 1;
                    if interfaces > 1 {
                        return Err(err(None, ErrorKind::InterfaceCount));
                    }
                    interface = Some(InterfaceDraft {
                        line: line_no,
                        ..Default::default()
                    });
                    section = Section::Interface;
                } else if name.eq_ignore_ascii_case("peer") {
                    peers.push(PeerDraft {
                        line: line_no,
                        ..Default::default()
                    });
                    section = Section::Peer;
                } else {
                    return Err(err(None, ErrorKind::UnknownSection));
                }
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(err(None, ErrorKind::Syntax));
            };
            let (key, value) = (key.trim(), value.trim());
            let lower = key.to_ascii_lowercase();
            let result = match (&section, lower.as_str()) {
                (Section::None, _) => Err(ErrorKind::OutsideSection),
                (_, k) if WG_QUICK_ONLY.contains(&k) => {
                    ignored.push((line_no, key.to_owned()));
                    Ok(())
                }
                (Section::Interface, k) => match interface.as_mut() {
                    Some(d) => Self::interface_key(d, k, value),
                    None => Err(ErrorKind::OutsideSection),
                },
                (Section::Peer, k) => match peers.last_mut() {
                    Some(d) => Self::peer_key(d, k, value),
                    None => Err(ErrorKind::OutsideSection),
                },
            };
            result.map_err(|kind| err(Some(key), kind))?;
        }
        let Some(d) = interface else {
            return Err(ConfigError {
                line: 0,
                key: None,
                kind: ErrorKind::InterfaceCount,
            });
        };
        let private_key = d.private_key.ok_or(ConfigError {
            line: d.line,
            key: Some("PrivateKey".into()),
            kind: ErrorKind::Missing,
        })?;
        let mut out_peers: Vec<Peer> = Vec::with_capacity(peers.len());
        for p in peers {
            let public_key = p.public_key.ok_or(ConfigError {
                line: p.line,
                key: Some("PublicKey".into()),
                kind: ErrorKind::Missing,
            })?;
            if out_peers.iter().any(|q| q.public_key == public_key) {
                return Err(ConfigError {
                    line: p.line,
                    key: Some("PublicKey".into()),
                    kind: ErrorKind::DuplicatePeer,
                });
            }
            out_peers.push(Peer {
                public_key,
                preshared_key: p.preshared_key,
                endpoint: p.endpoint,
                allowed_ips: p.allowed_ips,
                persistent_keepalive: p.persistent_keepalive.flatten(),
            });
        }
        Ok(Config {
            interface: Interface {
                private_key,
                addresses: d.addresses,
                dns: d.dns,
                dns_search: d.dns_search,
                mtu: d.mtu,
                listen_port: d.listen_port,
            },
            peers: out_peers,
            ignored,
        })
    }

    fn interface_key(d: &mut InterfaceDraft, key: &str, value: &str) -> Result<(), ErrorKind> {
        match key {
            "privatekey" => once(&mut d.private_key, SecretKey(parse_key(value)?)),
            "address" => {
                for item in list(value) {
                    d.addresses.push(parse_prefix(item)?);
                }
                Ok(())
            }
            "dns" => {
                for item in list(value) {
                    match IpAddr::from_str(item) {
                        Ok(a) => d.dns.push(a),
                        Err(_) => d.dns_search.push(item.to_owned()),
                    }
                }
                Ok(())
            }
            "mtu" => {
                let m = value.parse::<u16>().map_err(|_| ErrorKind::BadNumber)?;
                // Below IPv4's minimum (576 minus our 80 bytes of overhead) nothing works.
                if m < 576 {
                    return Err(ErrorKind::BadNumber);
                }
                once(&mut d.mtu, m)
            }
            "listenport" => once(
                &mut d.listen_port,
                value.parse::<u16>().map_err(|_| ErrorKind::BadNumber)?,
            ),
            _ => Err(ErrorKind::UnknownKey),
        }
    }

    fn peer_key(d: &mut PeerDraft, key: &str, value: &str) -> Result<(), ErrorKind> {
        match key {
            "publickey" => once(&mut d.public_key, parse_key(value)?),
            "presharedkey" => once(&mut d.preshared_key, SecretKey(parse_key(value)?)),
            "endpoint" => once(&mut d.endpoint, parse_endpoint(value)?),
            "allowedips" => {
                for item in list(value) {
                    d.allowed_ips.push(parse_prefix(item)?);
                }
                Ok(())
            }
            "persistentkeepalive" => {
                let v = if value.eq_ignore_ascii_case("off") {
                    None
                } else {
                    let n = value.parse::<u16>().map_err(|_| ErrorKind::BadNumber)?;
                    (n > 0).then_some(n)
                };
                once(&mut d.persistent_keepalive, v)
            }
            _ => Err(ErrorKind::UnknownKey),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use alloc::string::ToString;

    const PRIV: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
    const PUB1: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
    const PUB2: &str = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0=";
    const PSK: &str = "FpCyhws9cxwWoV4xELtfJvjJN+zQVRPISllRWgeopVE=";

    fn sample() -> String {
        format!(
            "# from a provider\r\n[Interface]\nPrivateKey = {PRIV}\nAddress = 10.64.0.2/32, fc00:bbbb::2/128\nDNS = 10.64.0.1, 2001:db8::53, corp.example\nMTU = 1420\nListenPort = 51820\nPostUp = iptables -A ...\n\n[Peer]\nPublicKey = {PUB1}\nPresharedKey = {PSK}\nEndpoint = 198.51.100.1:51820\nAllowedIPs = 0.0.0.0/0\nAllowedIPs = ::/0 # second line appends\nPersistentKeepalive = 25\n\n[peer]\npublickey={PUB2}\nendpoint = vpn.example.com:443\nallowedips = 192.168.7.0/24,fd00::/64\npersistentkeepalive = off\n"
        )
    }

    #[test]
    fn parses_provider_config_with_two_peers() {
        let c = Config::parse(&sample()).unwrap();
        assert_eq!(
            c.interface.private_key.0.to_vec(),
            decode_base64(PRIV).unwrap()
        );
        assert_eq!(c.interface.addresses.len(), 2);
        assert_eq!(c.interface.addresses[1].len, 128);
        assert_eq!(c.interface.dns.len(), 2);
        assert_eq!(c.interface.dns_search, ["corp.example"]);
        assert_eq!(c.interface.mtu, Some(1420));
        assert_eq!(c.interface.listen_port, Some(51820));
        assert_eq!(c.ignored, [(8, "PostUp".to_string())]);
        assert_eq!(c.peers.len(), 2);
        let p = &c.peers[0];
        assert_eq!(encode_base64(&p.public_key), PUB1);
        assert!(p.preshared_key.is_some());
        assert_eq!(
            p.endpoint,
            Some(Endpoint::Addr("198.51.100.1:51820".parse().unwrap()))
        );
        assert_eq!(p.allowed_ips.len(), 2);
        assert_eq!(p.allowed_ips[1].len, 0);
        assert_eq!(p.persistent_keepalive, Some(25));
        let q = &c.peers[1];
        assert_eq!(
            q.endpoint,
            Some(Endpoint::Host {
                host: "vpn.example.com".into(),
                port: 443
            })
        );
        assert_eq!(q.persistent_keepalive, None);
        assert_eq!(q.allowed_ips[0].len, 24);
    }

    fn err(text: &str) -> ConfigError {
        Config::parse(text).unwrap_err()
    }

    #[test]
    fn errors_name_line_and_key() {
        let e = err(&format!(
            "[Interface]\nPrivateKey = {PRIV}\n[Peer]\nPublicKey = abc\n"
        ));
        assert_eq!(
            (e.line, e.key.as_deref(), e.kind.clone()),
            (4, Some("PublicKey"), ErrorKind::BadBase64)
        );
        assert_eq!(e.to_string(), "line 4, key PublicKey: not valid base64");
        // 16 bytes of valid base64.
        let e = err(&format!(
            "[Interface]\nPrivateKey = {PRIV}\n[Peer]\nPublicKey = AAAAAAAAAAAAAAAAAAAAAA==\n"
        ));
        assert_eq!(e.kind, ErrorKind::BadKeyLength(16));
        assert_eq!(
            e.to_string(),
            "line 4, key PublicKey: key is 16 bytes, expected 32"
        );
        let e = err(&format!(
            "[Interface]\nPrivateKey = {PRIV}\nAddress = 10.0.0.1/33\n"
        ));
        assert_eq!(
            (e.line, e.key.as_deref(), e.kind),
            (3, Some("Address"), ErrorKind::BadPrefix)
        );
        let e = err(&format!(
            "[Interface]\nPrivateKey = {PRIV}\nListenPort = 70000\n"
        ));
        assert_eq!((e.line, e.kind), (3, ErrorKind::BadNumber));
        let e = err(&format!(
            "[Interface]\nPrivateKey = {PRIV}\nFrobnicate = 1\n"
        ));
        assert_eq!(
            (e.line, e.key.as_deref(), e.kind),
            (3, Some("Frobnicate"), ErrorKind::UnknownKey)
        );
        let e = err(&format!(
            "[Interface]\nPrivateKey = {PRIV}\nPrivateKey = {PRIV}\n"
        ));
        assert_eq!((e.line, e.kind), (3, ErrorKind::Duplicate));
        let e = err(&format!(
            "[Interface]\nPrivateKey = {PRIV}\n[Peer]\nEndpoint = 1.2.3.4\n"
        ));
        assert_eq!((e.line, e.kind), (4, ErrorKind::BadEndpoint));
        let e = err(&format!(
            "[Interface]\nPrivateKey = {PRIV}\n[Peer]\nAllowedIPs = 10.0.0.0/8\n"
        ));
        assert_eq!(
            (e.line, e.key.as_deref(), e.kind),
            (3, Some("PublicKey"), ErrorKind::Missing)
        );
        let e = err("[Interface]\nAddress = 10.0.0.1\n");
        assert_eq!(
            (e.line, e.key.as_deref(), e.kind),
            (1, Some("PrivateKey"), ErrorKind::Missing)
        );
        let e = err("PrivateKey = x\n");
        assert_eq!((e.line, e.kind), (1, ErrorKind::OutsideSection));
        let e = err(&format!("[Interface]\nPrivateKey = {PRIV}\n[Wat]\n"));
        assert_eq!((e.line, e.kind), (3, ErrorKind::UnknownSection));
        let e = err(&format!("[Interface]\nPrivateKey = {PRIV}\njust words\n"));
        assert_eq!((e.line, e.kind), (3, ErrorKind::Syntax));
        let e = err(&format!("[Interface]\nPrivateKey = {PRIV}\n[Peer]\nPublicKey = {PUB1}\n[Peer]\nPublicKey = {PUB1}\n"));
        assert_eq!((e.line, e.kind), (5, ErrorKind::DuplicatePeer));
        assert_eq!(err("").kind, ErrorKind::InterfaceCount);
        let e = err(&format!("[Interface]\nPrivateKey = {PRIV}\n[Interface]\n"));
        assert_eq!((e.line, e.kind), (3, ErrorKind::InterfaceCount));
    }

    #[test]
    fn base64_strict_and_round_trips() {
        for n in 0..40usize {
            let data: Vec<u8> = (0..n as u8).map(|i| i.wrapping_mul(37)).collect();
            assert_eq!(decode_base64(&encode_base64(&data)).unwrap(), data);
        }
        assert_eq!(decode_base64("TWFu").unwrap(), b"Man");
        assert!(decode_base64("TWF").is_none());
        assert!(decode_base64("TW=u").is_none());
        assert!(decode_base64("TWE=TWE=").is_none());
        assert!(
            decode_base64("TWF=").is_none(),
            "non-canonical trailing bits"
        );
        assert!(decode_base64("T===").is_none());
        assert!(decode_base64("TW!u").is_none());
        assert!(parse_key(PUB1).is_ok());
    }

    #[test]
    fn garbage_never_panics() {
        let mut x = 7u64;
        let alphabet = b"[]=#,/:.\n PeerInterfacePublicKeyAllowedIPs0123456789abcdefABCDEF+";
        for _ in 0..2000 {
            let mut s = String::new();
            for _ in 0..(x % 200) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                s.push(char::from(alphabet[(x % alphabet.len() as u64) as usize]));
            }
            let _ = Config::parse(&s);
        }
    }
}
