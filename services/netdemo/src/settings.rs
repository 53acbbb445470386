//! netdemo's command-line settings (`extra=` in the xl config) and where
//! its address comes from.

use alloc::format;
use alloc::string::String;
use core::net::Ipv4Addr;

use kernel::cmdline::{self, Ipv4Cidr, SettingError, Settings};

/// `netdemo.*` keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetdemoSettings {
    /// `netdemo.ip=A.B.C.D/N`: a static address.
    pub ip: Option<Ipv4Cidr>,
    /// `netdemo.gw=A.B.C.D`: the default gateway of a static address.
    pub gw: Option<Ipv4Addr>,
    /// `netdemo.dhcp`: ask DHCP even if xenstore has an address.
    pub dhcp: bool,
    /// `netdemo.vif=N`: which `device/vif/N` (default 0).
    pub vif: u32,
    /// `netdemo.tcp-buffer=KiB`: each TCP sink/source buffer (default 256).
    pub tcp_buffer_kib: u64,
    /// `netdemo.rx-offload=0|1`: accept blank checksums and GSO
    /// super-packets from the backend (default 1; see netfront's device).
    pub rx_offload: bool,
    /// `netdemo.queues=N`: most queues to ask for (1..=8, default 1; the
    /// backend's `multi-queue-max-queues` caps it).
    pub queues: u32,
}

impl Default for NetdemoSettings {
    fn default() -> Self {
        Self {
            ip: None,
            gw: None,
            dhcp: false,
            vif: 0,
            tcp_buffer_kib: 256,
            rx_offload: true,
            queues: 1,
        }
    }
}

impl Settings for NetdemoSettings {
    fn set(&mut self, key: &str, value: Option<&str>) -> Result<(), SettingError> {
        match key {
            "netdemo.ip" => self.ip = Some(cmdline::parse_ipv4_cidr(value)?),
            "netdemo.gw" => self.gw = Some(cmdline::parse_ipv4(value)?),
            "netdemo.dhcp" => self.dhcp = cmdline::parse_bool(value)?,
            "netdemo.vif" => self.vif = cmdline::parse_u64_in(value, 0..=255)? as u32,
            "netdemo.tcp-buffer" => self.tcp_buffer_kib = cmdline::parse_u64_in(value, 4..=8192)?,
            "netdemo.rx-offload" => self.rx_offload = cmdline::parse_bool(value)?,
            "netdemo.queues" => self.queues = cmdline::parse_u64_in(value, 1..=8)? as u32,
            _ => return Err(SettingError::Unknown),
        }
        Ok(())
    }

    fn known_keys(&self) -> &'static [&'static str] {
        &[
            "netdemo.ip",
            "netdemo.gw",
            "netdemo.dhcp",
            "netdemo.vif",
            "netdemo.tcp-buffer",
            "netdemo.rx-offload",
            "netdemo.queues",
        ]
    }
}

/// How the interface gets its address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressSource {
    /// A fixed address (and maybe a gateway).
    Static {
        /// Interface address.
        ip: Ipv4Cidr,
        /// Default gateway.
        gw: Option<Ipv4Addr>,
        /// `"cmdline"` or `"xenstore"`.
        from: &'static str,
    },
    /// DHCPv4.
    Dhcp,
}

/// Prefix length given to an address from xenstore, which has none.
pub const XENSTORE_PREFIX_LEN: u8 = 24;

/// The address source, in order: `netdemo.dhcp` forces DHCP; then
/// `netdemo.ip`; then the vif backend's `ip` key (xl's `vif=['ip=...']`,
/// the first of a space-separated list, /24); then DHCP. A malformed
/// xenstore value is an error, not a silent fallback.
pub fn address_source(
    settings: &NetdemoSettings,
    xenstore_ip: Option<&[u8]>,
) -> Result<AddressSource, String> {
    if settings.dhcp {
        return Ok(AddressSource::Dhcp);
    }
    if let Some(ip) = settings.ip {
        return Ok(AddressSource::Static {
            ip,
            gw: settings.gw,
            from: "cmdline",
        });
    }
    if let Some(raw) = xenstore_ip {
        let text = core::str::from_utf8(raw).map_err(|_| String::from("backend ip: not UTF-8"))?;
        let first = text.split_ascii_whitespace().next();
        if let Some(first) = first {
            let addr: Ipv4Addr = first
                .parse()
                .map_err(|_| format!("backend ip: {first:?} is not an IPv4 address"))?;
            return Ok(AddressSource::Static {
                ip: Ipv4Cidr {
                    addr,
                    prefix_len: XENSTORE_PREFIX_LEN,
                },
                gw: settings.gw,
                from: "xenstore",
            });
        }
    }
    Ok(AddressSource::Dhcp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(line: &str) -> Result<NetdemoSettings, kernel::cmdline::CmdlineErrors> {
        let mut s = NetdemoSettings::default();
        cmdline::parse(line, &mut [&mut s]).map(|()| s)
    }

    #[test]
    fn keys_parse_and_bad_values_are_errors() {
        let s = parsed("netdemo.ip=10.99.0.2/24 netdemo.gw=10.99.0.1 netdemo.vif=1").unwrap();
        assert_eq!(s.ip.unwrap().to_string(), "10.99.0.2/24");
        assert_eq!(s.gw, Some(Ipv4Addr::new(10, 99, 0, 1)));
        assert_eq!(s.vif, 1);
        assert!(parsed("netdemo.ip=10.99.0.2").is_err());
        assert!(parsed("netdemo.vif=300").is_err());
        assert!(parsed("netdemo.tcp-buffer=1").is_err());
        assert!(parsed("netdemo.bogus=1").is_err());
    }

    #[test]
    fn address_source_order() {
        let mut s = NetdemoSettings::default();
        assert_eq!(address_source(&s, None), Ok(AddressSource::Dhcp));
        assert_eq!(address_source(&s, Some(b"")), Ok(AddressSource::Dhcp));
        match address_source(&s, Some(b"10.99.0.7 10.99.0.8")).unwrap() {
            AddressSource::Static { ip, from, .. } => {
                assert_eq!(ip.to_string(), "10.99.0.7/24");
                assert_eq!(from, "xenstore");
            }
            other => panic!("{other:?}"),
        }
        assert!(address_source(&s, Some(b"10.99.0.300")).is_err());
        assert!(address_source(&s, Some(&[0xff, 0xfe])).is_err());
        s = parsed("netdemo.ip=10.1.1.1/16").unwrap();
        assert!(matches!(
            address_source(&s, Some(b"10.99.0.7")),
            Ok(AddressSource::Static {
                from: "cmdline",
                ..
            })
        ));
        s.dhcp = true;
        assert_eq!(
            address_source(&s, Some(b"10.99.0.7")),
            Ok(AddressSource::Dhcp)
        );
    }
}
