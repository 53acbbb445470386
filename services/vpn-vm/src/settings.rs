//! The VPN VM's command-line keys (`extra=` in its xl config). Each is a
//! default: the same setting in the configuration directory (xenstore)
//! wins, as DESIGN.md orders the sources.

use core::net::Ipv4Addr;

use kernel::cmdline::{self, SettingError, Settings};

/// An IPv4 address with a prefix length (`A.B.C.D/N`; `/24` when absent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Cidr {
    /// The address.
    pub addr: Ipv4Addr,
    /// The prefix length (0..=32).
    pub prefix: u8,
}

/// The prefix length taken when an address comes without one.
pub const DEFAULT_PREFIX: u8 = 24;

/// Parses `A.B.C.D` or `A.B.C.D/N`.
pub fn parse_cidr(v: &str) -> Option<Ipv4Cidr> {
    let (addr, prefix) = match v.trim().split_once('/') {
        Some((a, p)) => (a, p.parse::<u8>().ok().filter(|p| *p <= 32)?),
        None => (v.trim(), DEFAULT_PREFIX),
    };
    Some(Ipv4Cidr {
        addr: addr.parse().ok()?,
        prefix,
    })
}

/// `vpn.*` keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VpnSettings {
    /// `vpn.ip=A.B.C.D[/N]`: our uplink address (else the `ip` key of the
    /// configuration directory, else the uplink vif's `ip` with `/24`).
    pub ip: Option<Ipv4Cidr>,
    /// `vpn.gw=A.B.C.D`: the uplink's gateway.
    pub gw: Option<Ipv4Addr>,
    /// `vpn.disk=0|1`: read the configuration from the first disk (default
    /// 1: when the VM has a disk).
    pub disk: Option<bool>,
}

impl Settings for VpnSettings {
    fn set(&mut self, key: &str, value: Option<&str>) -> Result<(), SettingError> {
        match key {
            "vpn.ip" => {
                let v = cmdline::require(value)?;
                self.ip = Some(parse_cidr(v).ok_or(SettingError::malformed(
                    "an IPv4 address with an optional /N, such as 192.0.2.2/24",
                ))?)
            }
            "vpn.gw" => self.gw = Some(cmdline::parse_ipv4(value)?),
            "vpn.disk" => self.disk = Some(cmdline::parse_bool(value)?),
            _ => return Err(SettingError::Unknown),
        }
        Ok(())
    }

    fn known_keys(&self) -> &'static [&'static str] {
        &["vpn.ip", "vpn.gw", "vpn.disk"]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse() {
        let mut s = VpnSettings::default();
        cmdline::parse(
            "vpn.ip=192.0.2.2/25 vpn.gw=192.0.2.1 vpn.disk=0",
            &mut [&mut s],
        )
        .unwrap();
        assert_eq!(
            s.ip,
            Some(Ipv4Cidr {
                addr: Ipv4Addr::new(192, 0, 2, 2),
                prefix: 25
            })
        );
        assert_eq!(s.gw, Some(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(s.disk, Some(false));
        assert_eq!(parse_cidr("10.0.0.1").map(|c| c.prefix), Some(24));
        for bad in [
            "vpn.ip=10.0.0.1/33",
            "vpn.ip=10.0.0",
            "vpn.gw=x",
            "vpn.disk=maybe",
        ] {
            let mut t = VpnSettings::default();
            assert!(cmdline::parse(bad, &mut [&mut t]).is_err(), "{bad}");
        }
    }
}
