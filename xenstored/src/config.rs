//! Quotas and the privileged domains, with C xenstored's defaults and
//! names (`-Q <name>=<value>` on its command line, `XS_CONTROL quota`).

use crate::errno::Errno;
use crate::path::parse_decimal;
use xen::abi::xs_wire::XENSTORE_REL_PATH_MAX;

/// Per-domain limits. Privileged domains have none. Each quota `N` allows
/// exactly `N` (C xenstored's comparisons differ by one here and there;
/// docs/xenstored.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quotas {
    /// Nodes a domain may own (`nodes`, default 1000).
    pub nodes: u32,
    /// Largest node record, in C xenstored's accounting: 24 bytes of
    /// header, 8 per permission entry, the value and the children's names
    /// with their NULs (`node-size`, default 2048; a record of this size
    /// or more is refused, as in C).
    pub node_size: u32,
    /// Watches per domain (`watches`, default 128).
    pub watches: u32,
    /// Open transactions per domain (`transactions`, default 10).
    pub transactions: u32,
    /// Nodes one transaction may touch (`transaction-nodes`, default 1024).
    pub transaction_nodes: u32,
    /// Replies queued and not yet in the domain's response ring before its
    /// requests are no longer read (`outstanding`, default 20; as in C, a
    /// reply counts until it is in the ring).
    pub outstanding: u32,
    /// Permission entries per node (`node-permissions`, default 5).
    pub perms: u32,
    /// Longest path after `/local/domain/<domid>/` (`path-max`, default
    /// and at most `XENSTORE_REL_PATH_MAX`).
    pub path_max: u32,
    /// Bytes a domain may make the server hold: the nodes it owns (record
    /// and path), what its transactions hold, its watches' paths and
    /// tokens (`memory`, default 2621440, C's hard memory quota); past it
    /// a request that would add is `ENOMEM`, as in C.
    pub memory: u32,
    /// Bytes of replies and events queued for a domain; a watch event that
    /// would exceed it is dropped and counted (`output-bytes`, default
    /// 262144; C xenstored bounds this with its memory quota).
    pub output_bytes: u32,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            nodes: 1000,
            node_size: 2048,
            watches: 128,
            transactions: 10,
            transaction_nodes: 1024,
            outstanding: 20,
            perms: 5,
            path_max: XENSTORE_REL_PATH_MAX as u32,
            memory: 2 * 1024 * 1024 + 512 * 1024,
            output_bytes: 256 * 1024,
        }
    }
}

impl Quotas {
    /// Every quota name, in the order `XS_CONTROL quota` lists them.
    pub const NAMES: [&'static str; 10] = [
        "nodes",
        "node-size",
        "watches",
        "transactions",
        "transaction-nodes",
        "outstanding",
        "node-permissions",
        "path-max",
        "memory",
        "output-bytes",
    ];

    fn slot(&mut self, name: &[u8]) -> Option<&mut u32> {
        Some(match name {
            b"nodes" => &mut self.nodes,
            b"node-size" => &mut self.node_size,
            b"watches" => &mut self.watches,
            b"transactions" => &mut self.transactions,
            b"transaction-nodes" => &mut self.transaction_nodes,
            b"outstanding" => &mut self.outstanding,
            b"node-permissions" => &mut self.perms,
            b"path-max" => &mut self.path_max,
            b"memory" => &mut self.memory,
            b"output-bytes" => &mut self.output_bytes,
            _ => return None,
        })
    }

    /// The value of the quota called `name`.
    pub fn get(&self, name: &[u8]) -> Option<u32> {
        let mut copy = *self;
        copy.slot(name).map(|v| *v)
    }

    /// Set the quota called `name` (path-max is capped at
    /// `XENSTORE_REL_PATH_MAX`; zero is refused, as C refuses it).
    pub fn set(&mut self, name: &[u8], value: u32) -> Result<(), Errno> {
        if value == 0 {
            return Err(Errno::Einval);
        }
        let slot = self.slot(name).ok_or(Errno::Einval)?;
        *slot = value;
        self.path_max = self.path_max.min(XENSTORE_REL_PATH_MAX as u32);
        Ok(())
    }

    /// Apply one `name=value` setting (a command-line word).
    pub fn apply(&mut self, setting: &[u8]) -> Result<(), Errno> {
        let eq = setting
            .iter()
            .position(|b| *b == b'=')
            .ok_or(Errno::Einval)?;
        let value = parse_decimal(&setting[eq + 1..])
            .and_then(|v| u32::try_from(v).ok())
            .ok_or(Errno::Einval)?;
        self.set(&setting[..eq], value)
    }
}

/// The server's configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Per-domain limits.
    pub quotas: Quotas,
    /// A privileged domain besides dom0 (C xenstored's `--priv-domid`).
    pub priv_domid: Option<u16>,
    /// The domain this server runs in (never introduced or released).
    pub store_domid: u16,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            quotas: Quotas::default(),
            priv_domid: None,
            store_domid: 0x7ff0,
        }
    }
}

impl Config {
    /// Whether `domid` is privileged (dom0 or the configured one).
    pub fn is_privileged(&self, domid: u16) -> bool {
        domid == 0 || self.priv_domid == Some(domid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_and_bad_ones_are_refused() {
        let mut q = Quotas::default();
        q.apply(b"nodes=5").unwrap();
        q.apply(b"path-max=99999").unwrap();
        assert_eq!((q.nodes, q.path_max), (5, 2048));
        for bad in [
            &b"nodes"[..],
            b"nodes=",
            b"nodes=x",
            b"nodes=0",
            b"what=1",
            b"nodes=4294967296",
        ] {
            assert_eq!(q.apply(bad), Err(Errno::Einval));
        }
        for name in Quotas::NAMES {
            assert!(q.get(name.as_bytes()).is_some(), "{name}");
        }
    }
}
