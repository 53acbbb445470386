//! The firewall's command-line keys (`extra=` in its xl config). Each is a
//! default: the same setting in the configuration directory (xenstore)
//! wins, as DESIGN.md orders the sources.

use alloc::vec::Vec;
use core::net::{Ipv4Addr, Ipv6Addr};

use kernel::cmdline::{self, SettingError, Settings};

/// `firewall.*` keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FirewallSettings {
    /// `firewall.ip=A.B.C.D` (a `/N` suffix is accepted and ignored): our
    /// uplink address (QubesDB's `/qubes-ip`). Else the uplink vif's `ip`,
    /// else DHCP.
    pub ip: Option<Ipv4Addr>,
    /// `firewall.gw=A.B.C.D`: the uplink's gateway (`/qubes-gateway`).
    pub gw: Option<Ipv4Addr>,
    /// `firewall.dns=A.B.C.D[,A.B.C.D]`: the upstream resolvers
    /// (`/qubes-primary-dns`, `/qubes-secondary-dns`).
    pub dns: Vec<Ipv4Addr>,
    /// `firewall.client-gw=A.B.C.D`: our address towards the clients
    /// (`/qubes-netvm-gateway`); default: the uplink address, as in Qubes.
    pub client_gw: Option<Ipv4Addr>,
    /// `firewall.ip6=ADDR` (a `/N` suffix is accepted and ignored): our
    /// IPv6 uplink address (`/qubes-ip6`). Else the first IPv6 address of
    /// the uplink vif's `ip`.
    pub ip6: Option<Ipv6Addr>,
    /// `firewall.gw6=ADDR`: the uplink's IPv6 gateway (`/qubes-gateway6`).
    pub gw6: Option<Ipv6Addr>,
    /// `firewall.qubes=on`: run as a Qubes qube: the configuration comes
    /// from QubesDB (dom0's daemon, over vchan) instead of the xenstore
    /// directory, and the qrexec agent answers dom0 (docs/qubes.md).
    pub qubes: bool,
}

fn ipv6(value: Option<&str>) -> Result<Ipv6Addr, SettingError> {
    let v = cmdline::require(value)?;
    let addr = v.split('/').next().unwrap_or(v);
    addr.parse()
        .map_err(|_| SettingError::malformed("an IPv6 address, such as 2001:db8::10"))
}

fn ipv4_maybe_cidr(value: Option<&str>) -> Result<Ipv4Addr, SettingError> {
    let v = cmdline::require(value)?;
    let addr = v.split('/').next().unwrap_or(v);
    cmdline::parse_ipv4(Some(addr))
}

impl Settings for FirewallSettings {
    fn set(&mut self, key: &str, value: Option<&str>) -> Result<(), SettingError> {
        match key {
            "firewall.ip" => self.ip = Some(ipv4_maybe_cidr(value)?),
            "firewall.gw" => self.gw = Some(cmdline::parse_ipv4(value)?),
            "firewall.client-gw" => self.client_gw = Some(cmdline::parse_ipv4(value)?),
            "firewall.ip6" => self.ip6 = Some(ipv6(value)?),
            "firewall.gw6" => {
                if value.is_some_and(|v| v.contains('/')) {
                    return Err(SettingError::malformed("an IPv6 address without /N"));
                }
                self.gw6 = Some(ipv6(value)?)
            }
            "firewall.qubes" => self.qubes = cmdline::parse_bool(value)?,
            "firewall.dns" => {
                let v = cmdline::require(value)?;
                let mut dns = Vec::new();
                for part in v.split(',') {
                    if dns.len() == 2 {
                        return Err(SettingError::malformed(
                            "at most two addresses: A.B.C.D,A.B.C.D",
                        ));
                    }
                    dns.push(cmdline::parse_ipv4(Some(part))?);
                }
                self.dns = dns;
            }
            _ => return Err(SettingError::Unknown),
        }
        Ok(())
    }

    fn known_keys(&self) -> &'static [&'static str] {
        &[
            "firewall.ip",
            "firewall.gw",
            "firewall.dns",
            "firewall.client-gw",
            "firewall.ip6",
            "firewall.gw6",
            "firewall.qubes",
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse() {
        let mut s = FirewallSettings::default();
        cmdline::parse(
            "firewall.ip=10.99.0.10/24 firewall.gw=10.99.0.1 firewall.dns=10.99.0.1,9.9.9.9",
            &mut [&mut s],
        )
        .unwrap();
        assert_eq!(s.ip, Some(Ipv4Addr::new(10, 99, 0, 10)));
        assert_eq!(s.gw, Some(Ipv4Addr::new(10, 99, 0, 1)));
        assert_eq!(s.dns.len(), 2);
        let mut t = FirewallSettings::default();
        assert!(cmdline::parse("firewall.dns=1.1.1.1,2.2.2.2,3.3.3.3", &mut [&mut t]).is_err());
        assert!(cmdline::parse("firewall.ip=10.99.0", &mut [&mut t]).is_err());
        assert!(!t.qubes);
        let mut q = FirewallSettings::default();
        cmdline::parse("firewall.qubes=on", &mut [&mut q]).unwrap();
        assert!(q.qubes);
        assert!(cmdline::parse("firewall.qubes=maybe", &mut [&mut q]).is_err());
    }

    #[test]
    fn ipv6_keys_parse() {
        let mut s = FirewallSettings::default();
        cmdline::parse(
            "firewall.ip6=2001:db8::10/64 firewall.gw6=fe80::1",
            &mut [&mut s],
        )
        .unwrap();
        assert_eq!(s.ip6, Some("2001:db8::10".parse().unwrap()));
        assert_eq!(s.gw6, Some("fe80::1".parse().unwrap()));
        for bad in [
            "firewall.ip6=10.0.0.1",
            "firewall.ip6=2001:db8::g",
            "firewall.gw6=fe80::1/64",
            "firewall.gw6",
        ] {
            let mut t = FirewallSettings::default();
            assert!(cmdline::parse(bad, &mut [&mut t]).is_err(), "{bad}");
        }
    }
}
