//! Values exchanged through xenstore: what we offer the frontend, and what
//! it publishes (parsed; anything malformed is an error, never a panic).

use crate::error::NetbackError;
use alloc::format;
use alloc::string::String;
use xen::abi::{GrantRef, Port};
use xen::xenstore::{XenStore, XsError, XsTransport};

pub use xen::xenbus::{ValuePrefix, VALUE_PREFIX_MAX};

/// A decimal `u32`: digits only, no sign, no spaces, no overflow.
pub fn parse_u32(value: &[u8]) -> Option<u32> {
    xen::xenbus::parse_decimal_u32(value)
}

/// What this backend offers (written to its directory before `InitWait`)
/// and how it treats its frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendOptions {
    /// Accept multi-slot TX packets and fill RX in several slots
    /// (`feature-sg`).
    pub sg: bool,
    /// Accept TCPv4 GSO super-packets (`feature-gso-tcpv4`).
    pub gso_tcpv4: bool,
    /// Accept TCPv6 GSO super-packets (`feature-gso-tcpv6`).
    pub gso_tcpv6: bool,
    /// Accept blank IPv6 checksums (`feature-ipv6-csum-offload`).
    pub ipv6_csum_offload: bool,
    /// Offer separate TX and RX event channels
    /// (`feature-split-event-channels`).
    pub split_event_channels: bool,
    /// Violations after which the vif is disconnected.
    pub violation_limit: u32,
    /// Packets kept for the frontend while it has no RX buffer posted;
    /// more are dropped (counted).
    pub rx_queue_max: usize,
    /// Bytes kept in that queue at most (a frontend that never posts
    /// buffers costs us no more than this).
    pub rx_queue_bytes_max: usize,
}

impl Default for BackendOptions {
    fn default() -> Self {
        Self {
            sg: true,
            gso_tcpv4: true,
            gso_tcpv6: true,
            ipv6_csum_offload: true,
            split_event_channels: true,
            violation_limit: 32,
            rx_queue_max: 256,
            rx_queue_bytes_max: 1 << 20,
        }
    }
}

impl BackendOptions {
    /// The `feature-*` keys and values we publish.
    pub fn feature_keys(&self) -> [(&'static str, &'static str); 8] {
        let flag = |b: bool| if b { "1" } else { "0" };
        [
            ("feature-rx-copy", "1"),
            ("feature-rx-flip", "0"),
            ("feature-sg", flag(self.sg)),
            ("feature-gso-tcpv4", flag(self.gso_tcpv4)),
            ("feature-gso-tcpv6", flag(self.gso_tcpv6)),
            ("feature-ipv6-csum-offload", flag(self.ipv6_csum_offload)),
            (
                "feature-split-event-channels",
                flag(self.split_event_channels),
            ),
            // Not offered: multi-queue, multicast control, hashing, ctrl ring.
            ("feature-multicast-control", "0"),
        ]
    }
}

/// Event channel(s) the frontend allocated for us to bind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventChannels {
    /// One for both rings (`event-channel`).
    Shared(Port),
    /// `event-channel-tx` and `event-channel-rx`.
    Split {
        /// For TX.
        tx: Port,
        /// For RX.
        rx: Port,
    },
}

/// What a frontend published before going `Connected`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrontendConfig {
    /// `tx-ring-ref`.
    pub tx_ring_ref: GrantRef,
    /// `rx-ring-ref`.
    pub rx_ring_ref: GrantRef,
    /// The event channel(s).
    pub events: EventChannels,
    /// `feature-sg`: it accepts multi-slot RX packets.
    pub sg: bool,
    /// `feature-gso-tcpv4`: it accepts TCPv4 GSO packets.
    pub gso_tcpv4: bool,
    /// `feature-gso-tcpv6`.
    pub gso_tcpv6: bool,
    /// Accepts blank IPv4 checksums (`feature-no-csum-offload` unset).
    pub csum_v4: bool,
    /// Accepts blank IPv6 checksums (`feature-ipv6-csum-offload`).
    pub csum_v6: bool,
}

async fn read_opt<T: XsTransport>(
    xs: &mut XenStore<T>,
    dir: &str,
    key: &str,
) -> Result<Option<u32>, NetbackError> {
    match xs.read(&format!("{dir}/{key}")).await {
        Ok(v) => parse_u32(&v).map(Some).ok_or(NetbackError::BadValue {
            key: String::from(key),
            value: ValuePrefix::new(&v),
        }),
        Err(XsError::Enoent) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

async fn read_req<T: XsTransport>(
    xs: &mut XenStore<T>,
    dir: &str,
    key: &str,
) -> Result<u32, NetbackError> {
    read_opt(xs, dir, key)
        .await?
        .ok_or_else(|| NetbackError::Missing(String::from(key)))
}

async fn read_flag<T: XsTransport>(
    xs: &mut XenStore<T>,
    dir: &str,
    key: &str,
) -> Result<bool, NetbackError> {
    Ok(read_opt(xs, dir, key).await?.unwrap_or(0) != 0)
}

impl FrontendConfig {
    /// Read and check the frontend's keys in `dir`, given what we offered.
    pub async fn read<T: XsTransport>(
        xs: &mut XenStore<T>,
        dir: &str,
        offered: &BackendOptions,
    ) -> Result<Self, NetbackError> {
        if let Some(n) = read_opt(xs, dir, "multi-queue-num-queues").await? {
            if n != 1 {
                return Err(NetbackError::Queues(n));
            }
        }
        if !read_flag(xs, dir, "request-rx-copy").await? {
            return Err(NetbackError::NoRxCopy);
        }
        if !read_flag(xs, dir, "feature-rx-notify").await? {
            return Err(NetbackError::NoRxNotify);
        }
        let tx_ring_ref = read_req(xs, dir, "tx-ring-ref").await?;
        let rx_ring_ref = read_req(xs, dir, "rx-ring-ref").await?;
        let events = match read_opt(xs, dir, "event-channel").await? {
            Some(port) => EventChannels::Shared(port),
            None if offered.split_event_channels => EventChannels::Split {
                tx: read_req(xs, dir, "event-channel-tx").await?,
                rx: read_req(xs, dir, "event-channel-rx").await?,
            },
            None => return Err(NetbackError::Missing(String::from("event-channel"))),
        };
        Ok(Self {
            tx_ring_ref,
            rx_ring_ref,
            events,
            sg: read_flag(xs, dir, "feature-sg").await?,
            gso_tcpv4: read_flag(xs, dir, "feature-gso-tcpv4").await?,
            gso_tcpv6: read_flag(xs, dir, "feature-gso-tcpv6").await?,
            csum_v4: !read_flag(xs, dir, "feature-no-csum-offload").await?,
            csum_v6: read_flag(xs, dir, "feature-ipv6-csum-offload").await?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_parse_strictly() {
        assert_eq!(parse_u32(b"0"), Some(0));
        assert_eq!(parse_u32(b"4294967295"), Some(u32::MAX));
        for bad in [
            &b""[..],
            b"4294967296",
            b"-1",
            b"+1",
            b" 1",
            b"1 ",
            b"0x10",
            b"12345678901",
            b"\xff",
        ] {
            assert_eq!(parse_u32(bad), None, "{:?}", bad.escape_ascii());
        }
    }
}
