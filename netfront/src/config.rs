//! Values the frontend reads from xenstore, parsed strictly: they come from
//! the toolstack and the backend's domain.

use alloc::format;
use xen::xenstore::{XenStore, XsError, XsTransport};

use crate::error::NetfrontError;

pub use xen::xenbus::{ValuePrefix, VALUE_PREFIX_MAX};

/// An Ethernet MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MacAddress(pub [u8; 6]);

impl core::fmt::Display for MacAddress {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl MacAddress {
    /// Parse `xx:xx:xx:xx:xx:xx` (hex digits, either case), nothing else.
    pub fn parse(value: &[u8]) -> Result<Self, NetfrontError> {
        let bad = || NetfrontError::BadMac(ValuePrefix::new(value));
        if value.len() != 17 {
            return Err(bad());
        }
        let mut mac = [0u8; 6];
        for (i, byte) in mac.iter_mut().enumerate() {
            let at = i * 3;
            let hi = value.get(at).and_then(|c| (*c as char).to_digit(16));
            let lo = value.get(at + 1).and_then(|c| (*c as char).to_digit(16));
            let sep = value.get(at + 2).copied();
            match (hi, lo, sep) {
                (Some(h), Some(l), None | Some(b':')) if (i == 5) == sep.is_none() => {
                    *byte = (h * 16 + l) as u8;
                }
                _ => return Err(bad()),
            }
        }
        Ok(Self(mac))
    }
}

/// What the backend offers (`feature-*` keys in its directory).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendFeatures {
    /// `feature-rx-copy`: it copies into our RX buffers (required).
    pub rx_copy: bool,
    /// `feature-sg`: multi-slot TX packets.
    pub sg: bool,
    /// `feature-gso-tcpv4`: TCPv4 segmentation offload on TX.
    pub gso_tcpv4: bool,
    /// `feature-gso-tcpv6`: TCPv6 segmentation offload on TX.
    pub gso_tcpv6: bool,
    /// Not `feature-no-csum-offload`: it fills blank IPv4 checksums.
    pub ipv4_csum_offload: bool,
    /// `feature-ipv6-csum-offload`: it fills blank IPv6 checksums.
    pub ipv6_csum_offload: bool,
    /// `feature-rx-notify`: it sends an event when RX requests run out.
    pub rx_notify: bool,
    /// `multi-queue-max-queues` (1 when absent).
    pub max_queues: u32,
}

/// Parse a boolean feature value: `0` or `1`.
pub fn parse_flag(value: &[u8]) -> Result<bool, NetfrontError> {
    match value {
        b"0" => Ok(false),
        b"1" => Ok(true),
        _ => Err(NetfrontError::BadFeature(ValuePrefix::new(value))),
    }
}

/// Parse a decimal `u32`, nothing else.
pub fn parse_u32(value: &[u8]) -> Result<u32, NetfrontError> {
    xen::xenbus::parse_decimal_u32(value)
        .ok_or_else(|| NetfrontError::BadFeature(ValuePrefix::new(value)))
}

async fn read_flag<T: XsTransport>(
    xs: &mut XenStore<T>,
    dir: &str,
    key: &str,
    absent: bool,
) -> Result<bool, NetfrontError> {
    match xs.read(&format!("{dir}/{key}")).await {
        Ok(v) => parse_flag(&v),
        Err(XsError::Enoent) => Ok(absent),
        Err(e) => Err(e.into()),
    }
}

impl BackendFeatures {
    /// Read the backend's features from its directory `backend`.
    pub async fn read<T: XsTransport>(
        xs: &mut XenStore<T>,
        backend: &str,
    ) -> Result<Self, NetfrontError> {
        let max_queues = match xs.read(&format!("{backend}/multi-queue-max-queues")).await {
            Ok(v) => parse_u32(&v)?,
            Err(XsError::Enoent) => 1,
            Err(e) => return Err(e.into()),
        };
        Ok(Self {
            rx_copy: read_flag(xs, backend, "feature-rx-copy", false).await?,
            sg: read_flag(xs, backend, "feature-sg", false).await?,
            gso_tcpv4: read_flag(xs, backend, "feature-gso-tcpv4", false).await?,
            gso_tcpv6: read_flag(xs, backend, "feature-gso-tcpv6", false).await?,
            ipv4_csum_offload: !read_flag(xs, backend, "feature-no-csum-offload", false).await?,
            ipv6_csum_offload: read_flag(xs, backend, "feature-ipv6-csum-offload", false).await?,
            rx_notify: read_flag(xs, backend, "feature-rx-notify", false).await?,
            max_queues,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parses_only_the_exact_form() {
        assert_eq!(
            MacAddress::parse(b"00:16:3e:5A:0b:ff"),
            Ok(MacAddress([0, 0x16, 0x3e, 0x5a, 0x0b, 0xff]))
        );
        for bad in [
            &b""[..],
            b"00:16:3e:5a:0b",
            b"00:16:3e:5a:0b:ff:",
            b"00-16-3e-5a-0b-ff",
            b"0g:16:3e:5a:0b:ff",
            b"00:16:3e:5a:0b:f\xff",
            b"001:6:3e:5a:0b:ff",
        ] {
            assert!(
                matches!(MacAddress::parse(bad), Err(NetfrontError::BadMac(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn flags_and_numbers_are_strict() {
        assert_eq!(parse_flag(b"1"), Ok(true));
        assert_eq!(parse_flag(b"0"), Ok(false));
        assert!(parse_flag(b"2").is_err());
        assert!(parse_flag(b"1\0").is_err());
        assert!(parse_flag(b"").is_err());
        assert_eq!(parse_u32(b"8"), Ok(8));
        assert!(parse_u32(b"4294967296").is_err());
        assert!(parse_u32(b"-1").is_err());
        assert!(parse_u32(b"").is_err());
    }
}
