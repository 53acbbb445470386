//! Where the firewall's configuration comes from: one small trait,
//! [`ConfigStore`], over a key-value store whose keys are named and valued
//! exactly as QubesDB's, and the logic that turns such a store into a
//! [`Config`] and per-client rule sets, and a watch event into the clients
//! to reload.
//!
//! The same firewall is fed by three stores: the hosted process's text file
//! (`services/hosted`'s `qubesdb_file`), xenstore on plain Xen (the firewall
//! VM, with client addresses encoded by [`encode_addr_component`] because
//! xenstore path components cannot hold `.` or `:`) and QubesDB itself under
//! Qubes. A store only maps keys; every decision is made here.
//!
//! # Keys
//!
//! | key | value | used as |
//! | --- | --- | --- |
//! | `/qubes-ip` | IPv4 address, required | our uplink address ([`UplinkConfig::ip4`]) |
//! | `/qubes-gateway` | IPv4 address, required | the uplink gateway |
//! | `/qubes-ip6`, `/qubes-gateway6` | IPv6 address | the same for IPv6 (both or neither) |
//! | `/qubes-netvm-gateway` | IPv4 address, required | our address towards clients |
//! | `/qubes-netvm-gateway6` | IPv6 address | the same for IPv6 |
//! | `/qubes-primary-dns`, `/qubes-secondary-dns` | IPv4 address | the upstream resolvers (what `/etc/resolv.conf` holds in a Linux sys-firewall) |
//! | `/qubes-primary-dns6`, `/qubes-secondary-dns6` | IPv6 address | IPv6 upstream resolvers |
//! | `/qubes-netvm-primary-dns`, `/qubes-netvm-secondary-dns` | IPv4 address | the virtual resolvers clients query; default 10.139.1.1 and .2 |
//! | `/qubes-netvm-primary-dns6`, `/qubes-netvm-secondary-dns6` | IPv6 address | their IPv6 twins; default [`QUBES_DNS6`] |
//! | `/qubes-firewall/<ip>` | anything (dom0 writes it empty) | written last: "the rules of `<ip>` changed" |
//! | `/qubes-firewall/<ip>/policy` | `accept` or `drop` | the client's policy |
//! | `/qubes-firewall/<ip>/NNNN` | a rule (`action=accept proto=tcp ...`) | the client's rules, in numeric order |
//!
//! Values are bytes, at most [`MAX_VALUE_LEN`]; addresses may carry
//! surrounding whitespace (a trailing newline from a shell), which is
//! trimmed. A directory holds at most [`MAX_LIST_LEN`] children.
//!
//! # Using it
//!
//! ```
//! # use firewall::store::*;
//! # use firewall::EthernetAddress;
//! let mut store = MemoryStore::new();
//! store.insert("/qubes-ip", "10.137.0.6");
//! store.insert("/qubes-gateway", "10.137.0.1");
//! store.insert("/qubes-netvm-gateway", "10.138.0.1");
//! store.insert("/qubes-primary-dns", "192.0.2.53");
//! store.insert("/qubes-firewall/10.138.0.10/policy", "drop");
//! store.insert("/qubes-firewall/10.138.0.10/0000", "action=accept proto=tcp dstports=443");
//! store.insert("/qubes-firewall/10.138.0.10", "");
//! let macs = Macs { uplink: EthernetAddress([2, 0, 0, 0, 0, 1]), client_side: QUBES_CLIENT_SIDE_MAC };
//! let config = now_or_never(load_config(&mut store, macs)).unwrap().unwrap();
//! # assert_eq!(config.uplink.ip4, core::net::Ipv4Addr::new(10, 137, 0, 6));
//! let mut firewall = firewall::Firewall::new(config);
//! let targets = now_or_never(rule_targets(&mut store)).unwrap().unwrap();
//! for addr in targets.addrs {
//!     let rules = now_or_never(load_rules(&mut store, addr)).unwrap().unwrap();
//!     if let Some(error) = rules.as_ref().and_then(|r| r.error.as_ref()) {
//!         // log it, as Linux writes /qubes-iptables-error
//! #       panic!("{error:?}");
//!     }
//!     firewall.apply_loaded_rules(addr, rules.as_ref());
//! }
//! # assert!(firewall.has_rules(&"10.138.0.10".parse().unwrap()));
//! ```
//!
//! On a watch event, [`Reload::from_keys`] says which clients to reload:
//! like the Linux agent (`qubesagent/firewall.py`, `main()`), a client is
//! reloaded on the write of `/qubes-firewall/<ip>` itself, which dom0 does
//! after writing the rules, not on each rule entry. For each, run
//! [`load_rules`] and [`crate::Firewall::apply_loaded_rules`] again; when
//! [`Reload::all_clients`] is set, reload every address of
//! [`rule_targets`] and every address that had rules before (a directory
//! that went away is `None`). When [`Reload::config`] is set, the
//! firewall's own addresses changed: build a new [`Config`] with
//! [`load_config`]. docs/firewall.md ("Semantics") says what each key
//! means to the packet path.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::future::Future;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use core::str::FromStr;
use core::task::{Context, Poll, Waker};

use qubes::firewall_rules::{Family, LoadedRules, MAX_ENTRY_LEN};
use smoltcp::wire::EthernetAddress;

use crate::config::{ClientSideConfig, Config, DnsRedirect, UplinkConfig, QUBES_DNS4, QUBES_DNS6};

/// Longest value read from the store, in bytes (QubesDB's limit on one
/// entry). A longer value is refused as [`ConfigError::TooLong`]; a longer
/// rule makes its client drop-all.
pub const MAX_VALUE_LEN: usize = MAX_ENTRY_LEN;

/// Most children of one directory: a client's rule directory holds at most
/// `policy` and `0000`..`9999`; more clients than this are not served.
pub const MAX_LIST_LEN: usize = 10_001;

/// The QubesDB key names the firewall reads.
pub mod keys {
    /// Our uplink IPv4 address.
    pub const IP: &str = "/qubes-ip";
    /// Our uplink IPv6 address.
    pub const IP6: &str = "/qubes-ip6";
    /// The uplink's IPv4 gateway.
    pub const GATEWAY: &str = "/qubes-gateway";
    /// The uplink's IPv6 gateway.
    pub const GATEWAY6: &str = "/qubes-gateway6";
    /// Our IPv4 address towards clients.
    pub const NETVM_GATEWAY: &str = "/qubes-netvm-gateway";
    /// Our IPv6 address towards clients.
    pub const NETVM_GATEWAY6: &str = "/qubes-netvm-gateway6";
    /// The primary upstream IPv4 resolver.
    pub const PRIMARY_DNS: &str = "/qubes-primary-dns";
    /// The secondary upstream IPv4 resolver.
    pub const SECONDARY_DNS: &str = "/qubes-secondary-dns";
    /// The primary upstream IPv6 resolver.
    pub const PRIMARY_DNS6: &str = "/qubes-primary-dns6";
    /// The secondary upstream IPv6 resolver.
    pub const SECONDARY_DNS6: &str = "/qubes-secondary-dns6";
    /// The primary virtual resolver clients query (IPv4).
    pub const NETVM_PRIMARY_DNS: &str = "/qubes-netvm-primary-dns";
    /// The secondary virtual resolver clients query (IPv4).
    pub const NETVM_SECONDARY_DNS: &str = "/qubes-netvm-secondary-dns";
    /// The primary virtual resolver clients query (IPv6).
    pub const NETVM_PRIMARY_DNS6: &str = "/qubes-netvm-primary-dns6";
    /// The secondary virtual resolver clients query (IPv6).
    pub const NETVM_SECONDARY_DNS6: &str = "/qubes-netvm-secondary-dns6";
    /// The directory of per-client rule directories (no trailing `/`).
    pub const FIREWALL: &str = "/qubes-firewall";
    /// Every key [`super::load_config`] reads: a watch event on one of them
    /// means the firewall's own configuration changed.
    pub const CONFIG_KEYS: [&str; 14] = [
        IP,
        IP6,
        GATEWAY,
        GATEWAY6,
        NETVM_GATEWAY,
        NETVM_GATEWAY6,
        PRIMARY_DNS,
        SECONDARY_DNS,
        PRIMARY_DNS6,
        SECONDARY_DNS6,
        NETVM_PRIMARY_DNS,
        NETVM_SECONDARY_DNS,
        NETVM_PRIMARY_DNS6,
        NETVM_SECONDARY_DNS6,
    ];
}

/// Why a store could not answer. Absence is not an error: a missing key is
/// `Ok(None)`, a missing directory an empty list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The store could not be reached or refused the request (a broken
    /// connection, a permission error); nothing can be concluded.
    Unavailable {
        /// The store's reason, for the log (at most 64 bytes are kept by
        /// this module's errors).
        reason: String,
    },
    /// The key cannot be expressed in this store (for a xenstore-backed
    /// store: see [`key_to_xenstore`]).
    BadKey {
        /// The key (truncated).
        key: String,
    },
}

/// Why a configuration could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// The store failed.
    Store(StoreError),
    /// A required key is absent.
    Missing {
        /// The key.
        key: &'static str,
    },
    /// A key's value is not what it must be (an address of the right
    /// family).
    Invalid {
        /// The key.
        key: &'static str,
        /// The refused value (truncated, lossy UTF-8).
        value: String,
    },
    /// A value longer than [`MAX_VALUE_LEN`].
    TooLong {
        /// The key (truncated).
        key: String,
        /// Its length in bytes.
        len: usize,
    },
    /// `/qubes-ip6` without `/qubes-gateway6` or the other way round.
    Ipv6Incomplete,
}

impl From<StoreError> for ConfigError {
    fn from(error: StoreError) -> ConfigError {
        ConfigError::Store(error)
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Unavailable { reason } => write!(f, "store unavailable: {reason}"),
            StoreError::BadKey { key } => write!(f, "key '{key}' cannot be stored"),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Store(error) => write!(f, "{error}"),
            ConfigError::Missing { key } => write!(f, "missing {key}"),
            ConfigError::Invalid { key, value } => write!(f, "invalid value '{value}' for {key}"),
            ConfigError::TooLong { key, len } => {
                write!(f, "{key} is {len} bytes, more than {MAX_VALUE_LEN}")
            }
            ConfigError::Ipv6Incomplete => {
                write!(f, "{} and {} go together", keys::IP6, keys::GATEWAY6)
            }
        }
    }
}

/// Longest piece of untrusted text copied into an error.
const MAX_QUOTED: usize = 64;

/// A bounded, owned copy of untrusted text for an error.
fn quote(text: &str) -> String {
    let mut end = text.len().min(MAX_QUOTED);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    String::from(text.get(..end).unwrap_or(""))
}

/// A key-value store named like QubesDB: the firewall's only source of
/// configuration.
///
/// Keys are QubesDB names: absolute, `/`-separated, without a trailing `/`
/// (`/qubes-ip`, `/qubes-firewall/10.137.0.10/policy`); client addresses
/// appear in their usual text form, whatever the store does with them.
/// Implementations only map keys onto their store (see
/// [`key_to_xenstore`] and [`child_from_xenstore`] for xenstore); they need
/// not bound what they return, the loaders here do.
///
/// The methods are `async` because xenstore and QubesDB are reached over
/// rings; a store that answers at once (a file, a map) returns ready
/// futures, which [`now_or_never`] runs without an executor.
// The firewall runs on a single-threaded executor, so the futures need
// not be `Send`.
#[allow(async_fn_in_trait)]
pub trait ConfigStore {
    /// The value of `key`, or `Ok(None)` when there is no such key.
    async fn read(&mut self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// The names of the direct children of the directory `dir` (one path
    /// component each, e.g. `list("/qubes-firewall")` gives
    /// `["10.137.0.10", ...]` and `list("/qubes-firewall/10.137.0.10")`
    /// gives `["policy", "0000", ...]`), in any order; empty when `dir` has
    /// no children or does not exist.
    async fn list(&mut self, dir: &str) -> Result<Vec<String>, StoreError>;
}

/// Runs `future` to completion if it completes at its first poll (as the
/// futures of [`MemoryStore`] and other synchronous stores do); `None` if
/// it would have to wait.
pub fn now_or_never<F: Future>(future: F) -> Option<F::Output> {
    let mut future = core::pin::pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

/// A [`ConfigStore`] in memory: a map from key to value. The hosted
/// platform fills one from its file; tests use it directly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryStore {
    entries: BTreeMap<String, Vec<u8>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Set `key` to `value`; returns the previous value.
    pub fn insert(&mut self, key: &str, value: impl AsRef<[u8]>) -> Option<Vec<u8>> {
        self.entries
            .insert(key.to_string(), value.as_ref().to_vec())
    }

    /// Remove `key` and every key below it (as `xenstore-rm` does);
    /// returns how many keys were removed.
    pub fn remove(&mut self, key: &str) -> usize {
        let before = self.entries.len();
        self.entries.retain(|k, _| !(k == key || is_below(k, key)));
        before - self.entries.len()
    }

    /// The value of `key`, if any.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.entries.get(key).map(Vec::as_slice)
    }

    /// Every key, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Every key whose value differs between `self` and `other` (present
    /// in one only, or with another value): the watch events that turn one
    /// into the other.
    pub fn changed_keys(&self, other: &MemoryStore) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (key, value) in &self.entries {
            if other.entries.get(key) != Some(value) {
                out.push(key.clone());
            }
        }
        for key in other.entries.keys() {
            if !self.entries.contains_key(key) {
                out.push(key.clone());
            }
        }
        out.sort();
        out
    }
}

/// Whether `key` lies strictly below the directory `dir`.
fn is_below(key: &str, dir: &str) -> bool {
    key.strip_prefix(dir)
        .is_some_and(|rest| rest.starts_with('/') && rest.len() > 1)
        || (dir == "/" && key.len() > 1)
}

impl ConfigStore for MemoryStore {
    async fn read(&mut self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.entries.get(key).cloned())
    }

    async fn list(&mut self, dir: &str) -> Result<Vec<String>, StoreError> {
        let dir = dir.strip_suffix('/').unwrap_or(dir);
        // A set: the children of `a` in `a/b`, `a/b-c`, `a/b/d` are not
        // adjacent in key order ('-' sorts before '/').
        let mut children: BTreeSet<&str> = BTreeSet::new();
        for key in self.entries.keys() {
            let Some(rest) = key.strip_prefix(dir).and_then(|r| r.strip_prefix('/')) else {
                continue;
            };
            let child = rest.split('/').next().unwrap_or("");
            if !child.is_empty() {
                children.insert(child);
            }
        }
        Ok(children.into_iter().map(String::from).collect())
    }
}

/// The MACs, which QubesDB does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Macs {
    /// Our MAC on the uplink.
    pub uplink: EthernetAddress,
    /// Our MAC towards clients.
    pub client_side: EthernetAddress,
}

/// The MAC a Qubes vif backend has towards its client.
pub const QUBES_CLIENT_SIDE_MAC: EthernetAddress =
    EthernetAddress([0xfe, 0xff, 0xff, 0xff, 0xff, 0xff]);

/// Read `key`, bounded.
async fn read_bounded<S: ConfigStore>(
    store: &mut S,
    key: &str,
) -> Result<Option<Vec<u8>>, ConfigError> {
    match store.read(key).await? {
        Some(value) if value.len() > MAX_VALUE_LEN => Err(ConfigError::TooLong {
            key: quote(key),
            len: value.len(),
        }),
        other => Ok(other),
    }
}

/// Read an address-valued key; `None` when absent.
async fn read_addr<S: ConfigStore, A: FromStr>(
    store: &mut S,
    key: &'static str,
) -> Result<Option<A>, ConfigError> {
    let Some(value) = read_bounded(store, key).await? else {
        return Ok(None);
    };
    let invalid = || ConfigError::Invalid {
        key,
        value: quote(&String::from_utf8_lossy(&value)),
    };
    let text = core::str::from_utf8(&value).map_err(|_| invalid())?;
    text.trim().parse().map(Some).map_err(|_| invalid())
}

async fn required_v4<S: ConfigStore>(
    store: &mut S,
    key: &'static str,
) -> Result<Ipv4Addr, ConfigError> {
    read_addr(store, key)
        .await?
        .ok_or(ConfigError::Missing { key })
}

/// Pair virtual resolvers with upstream ones as `qubes-setup-dnat-to-ns`
/// does (`zip(qubesdb_dns, cycle(dns_resolved))`): the first virtual server
/// to the first upstream, the second to the second, or to the first again
/// when there is only one; with no upstream at all, every virtual server
/// gets `None` (queries to it are dropped).
fn pair_dns(virtual_servers: &[IpAddr], upstreams: &[IpAddr]) -> Vec<DnsRedirect> {
    virtual_servers
        .iter()
        .enumerate()
        .map(|(index, virtual_server)| DnsRedirect {
            virtual_server: *virtual_server,
            upstream: if upstreams.is_empty() {
                None
            } else {
                upstreams.get(index % upstreams.len()).copied()
            },
        })
        .collect()
}

/// The firewall's own configuration from `store` (the keys in the module
/// documentation), with `macs` and the defaults of [`Config::new`] for the
/// table sizes.
///
/// IPv4 virtual resolvers are always set up (to be redirected, or dropped
/// when there is no IPv4 upstream, as `qubes-setup-dnat-to-ns` does); the
/// IPv6 ones only when there is an IPv6 upstream resolver.
pub async fn load_config<S: ConfigStore>(store: &mut S, macs: Macs) -> Result<Config, ConfigError> {
    let ip4 = required_v4(store, keys::IP).await?;
    let gateway4 = required_v4(store, keys::GATEWAY).await?;
    let ip6: Option<Ipv6Addr> = read_addr(store, keys::IP6).await?;
    let gateway6: Option<Ipv6Addr> = read_addr(store, keys::GATEWAY6).await?;
    if ip6.is_some() != gateway6.is_some() {
        return Err(ConfigError::Ipv6Incomplete);
    }
    let client_gateway4 = required_v4(store, keys::NETVM_GATEWAY).await?;
    let client_gateway6: Option<Ipv6Addr> = read_addr(store, keys::NETVM_GATEWAY6).await?;

    let mut upstream4 = Vec::new();
    for key in [keys::PRIMARY_DNS, keys::SECONDARY_DNS] {
        if let Some(addr) = read_addr::<_, Ipv4Addr>(store, key).await? {
            upstream4.push(IpAddr::V4(addr));
        }
    }
    let mut upstream6 = Vec::new();
    for key in [keys::PRIMARY_DNS6, keys::SECONDARY_DNS6] {
        if let Some(addr) = read_addr::<_, Ipv6Addr>(store, key).await? {
            upstream6.push(IpAddr::V6(addr));
        }
    }
    let mut virtual4 = Vec::new();
    for (key, default) in [
        (keys::NETVM_PRIMARY_DNS, QUBES_DNS4[0]),
        (keys::NETVM_SECONDARY_DNS, QUBES_DNS4[1]),
    ] {
        let addr = read_addr::<_, Ipv4Addr>(store, key).await?;
        virtual4.push(IpAddr::V4(addr.unwrap_or(default)));
    }
    let mut virtual6 = Vec::new();
    for (key, default) in [
        (keys::NETVM_PRIMARY_DNS6, QUBES_DNS6[0]),
        (keys::NETVM_SECONDARY_DNS6, QUBES_DNS6[1]),
    ] {
        let addr = read_addr::<_, Ipv6Addr>(store, key).await?;
        virtual6.push(IpAddr::V6(addr.unwrap_or(default)));
    }

    let mut config = Config::new(
        UplinkConfig {
            mac: macs.uplink,
            ip4,
            gateway4,
            ip6,
            gateway6,
            gateway_mac: None,
        },
        ClientSideConfig {
            mac: macs.client_side,
            gateway4: client_gateway4,
            gateway6: client_gateway6,
        },
        &[],
    );
    config.dns = pair_dns(&virtual4, &upstream4);
    if !upstream6.is_empty() {
        config.dns.extend(pair_dns(&virtual6, &upstream6));
    }
    Ok(config)
}

/// The client addresses that have a rule directory under
/// `/qubes-firewall/`, with the names that are not addresses left out and
/// counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Targets {
    /// The client addresses, sorted, each once.
    pub addrs: Vec<IpAddr>,
    /// Children of `/qubes-firewall` that are not an address in its usual
    /// text form (ignored).
    pub ignored: usize,
    /// Children beyond [`MAX_LIST_LEN`] (ignored).
    pub truncated: usize,
}

/// The addresses with a rule directory (`list("/qubes-firewall")`).
pub async fn rule_targets<S: ConfigStore>(store: &mut S) -> Result<Targets, StoreError> {
    let children = store.list(keys::FIREWALL).await?;
    let mut targets = Targets::default();
    let mut addrs = BTreeSet::new();
    for (index, child) in children.iter().enumerate() {
        if index >= MAX_LIST_LEN {
            targets.truncated += 1;
            continue;
        }
        // Only the usual text form (what dom0 writes, Python's
        // `str(ipaddress)`): the rules are read back under that name.
        match child.parse::<IpAddr>() {
            Ok(addr) if addr.to_string() == *child => {
                addrs.insert(addr);
            }
            _ => targets.ignored += 1,
        }
    }
    targets.addrs = addrs.into_iter().collect();
    Ok(targets)
}

/// The rule directory key of a client address, `/qubes-firewall/<addr>`.
pub fn rules_dir(addr: IpAddr) -> String {
    alloc::format!("{}/{addr}", keys::FIREWALL)
}

/// Load the rules of client address `addr` as the Linux agent does
/// (`read_rules` in `qubesagent/firewall.py`):
///
/// * `Ok(None)` when `/qubes-firewall/<addr>` does not exist at all: the
///   client has no rules, and its traffic is dropped silently (the Linux
///   forward chain's policy);
/// * otherwise the parsed rule set for `addr`'s family, or drop-all with
///   the reason (a missing policy, a bad rule, a rule or directory beyond
///   the bounds), whose refusals are rejected like any rule's.
///
/// An entry listed but gone by the time it is read (dom0 is rewriting the
/// rules) is skipped: dom0's final write of `/qubes-firewall/<addr>`
/// triggers another load.
pub async fn load_rules<S: ConfigStore>(
    store: &mut S,
    addr: IpAddr,
) -> Result<Option<LoadedRules>, StoreError> {
    let dir = rules_dir(addr);
    let names = store.list(&dir).await?;
    if names.is_empty() && store.read(&dir).await?.is_none() {
        return Ok(None);
    }
    let family = Family::of(&addr);
    if names.len() > MAX_LIST_LEN {
        // More entries than policy + 0000..9999: one of them is surely not
        // a rule; let the parser say which.
        let bogus = [("too-many-entries", &b""[..])];
        return Ok(Some(LoadedRules::load(family, bogus)));
    }
    let mut entries: Vec<(String, Vec<u8>)> = Vec::with_capacity(names.len());
    for name in names {
        let key = alloc::format!("{dir}/{name}");
        let Some(mut value) = store.read(&key).await? else {
            continue;
        };
        // One byte over the limit is enough for the parser to refuse it.
        value.truncate(MAX_VALUE_LEN + 1);
        entries.push((name, value));
    }
    Ok(Some(LoadedRules::load(
        family,
        entries.iter().map(|(n, v)| (n.as_str(), v.as_slice())),
    )))
}

/// What a batch of changed keys (watch events) asks the firewall to do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reload {
    /// Clients whose rules must be reloaded ([`load_rules`]): a write or
    /// removal of `/qubes-firewall/<addr>` itself.
    pub clients: BTreeSet<IpAddr>,
    /// Reload every client: `/qubes-firewall` itself changed (removed, or
    /// the watch's first event), so any directory may have gone.
    pub all_clients: bool,
    /// One of [`keys::CONFIG_KEYS`] changed: the firewall's own
    /// configuration must be read again ([`load_config`]).
    pub config: bool,
    /// Changed keys that matter to nobody: a rule entry (which waits for
    /// its directory's write), a directory name that is not an address, or
    /// an unknown key.
    pub ignored: usize,
}

impl Reload {
    /// What the changed `keys` (QubesDB names) ask for. A change to a rule
    /// entry (`/qubes-firewall/<addr>/NNNN`) alone reloads nothing, as in
    /// the Linux agent (`main()` in `qubesagent/firewall.py` acts on
    /// `/qubes-firewall/<addr>` only): dom0 writes that key after the
    /// entries, so a client never runs on half-written rules.
    pub fn from_keys<'a, I>(keys: I) -> Reload
    where
        I: IntoIterator<Item = &'a str>,
    {
        let mut reload = Reload::default();
        for key in keys {
            reload.add(key);
        }
        reload
    }

    /// Account for one changed key.
    pub fn add(&mut self, key: &str) {
        let key = key.strip_suffix('/').unwrap_or(key);
        if key == keys::FIREWALL {
            self.all_clients = true;
        } else if let Some(rest) = key
            .strip_prefix(keys::FIREWALL)
            .and_then(|r| r.strip_prefix('/'))
        {
            match (rest.contains('/'), rest.parse::<IpAddr>()) {
                // The usual text form only, as in `rule_targets`.
                (false, Ok(addr)) if addr.to_string() == rest => {
                    self.clients.insert(addr);
                }
                _ => self.ignored += 1,
            }
        } else if keys::CONFIG_KEYS.contains(&key) {
            self.config = true;
        } else {
            self.ignored += 1;
        }
    }

    /// Whether nothing needs reloading.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty() && !self.all_clients && !self.config
    }
}

// ----- xenstore encoding -----

/// Why a name cannot be mapped between QubesDB and xenstore form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodingError {
    /// A path component that is not an address where one must be.
    NotAnAddress {
        /// The component (truncated).
        component: String,
    },
    /// A character xenstore cannot hold (outside `[A-Za-z0-9-/_@]`) in a
    /// component that is not a client address.
    BadCharacter {
        /// The key (truncated).
        key: String,
    },
    /// A key that is not absolute, or has an empty component.
    Malformed {
        /// The key (truncated).
        key: String,
    },
}

impl fmt::Display for EncodingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodingError::NotAnAddress { component } => {
                write!(f, "'{component}' is not a client address")
            }
            EncodingError::BadCharacter { key } => {
                write!(f, "'{key}' has a character xenstore cannot hold")
            }
            EncodingError::Malformed { key } => write!(f, "'{key}' is not an absolute key"),
        }
    }
}

/// Characters C xenstored accepts in a path (`valid_chars` in
/// `tools/xenstored/core.c`).
fn xenstore_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '/' | '_' | '@')
}

/// A client address as one xenstore path component: the address's usual
/// text form with `.` written as `-` and `:` as `_` (`10.137.0.10` →
/// `10-137-0-10`, `fd09:24ef:4179::a89:a` → `fd09_24ef_4179__a89_a`), since
/// xenstore path components hold only `[A-Za-z0-9-_@]`.
pub fn encode_addr_component(addr: IpAddr) -> String {
    addr.to_string()
        .chars()
        .map(|c| match c {
            '.' => '-',
            ':' => '_',
            other => other,
        })
        .collect()
}

/// The inverse of [`encode_addr_component`]: `-` read as `.`, `_` as `:`.
/// Only the encoding of the address's usual text form is accepted
/// (`fd09_24ef_4179__a89_a`, not `fd09_24ef_4179_0_0_0_a89_a`), because
/// keys below it are read back under that encoding: another spelling
/// would name a directory whose rules are never found.
pub fn decode_addr_component(component: &str) -> Result<IpAddr, EncodingError> {
    let text: String = component
        .chars()
        .map(|c| match c {
            '-' => '.',
            '_' => ':',
            other => other,
        })
        .collect();
    text.parse()
        .ok()
        .filter(|addr| encode_addr_component(*addr) == component)
        .ok_or_else(|| EncodingError::NotAnAddress {
            component: quote(component),
        })
}

/// Split an absolute key into components, refusing empty ones.
fn components(key: &str) -> Result<Vec<&str>, EncodingError> {
    let malformed = || EncodingError::Malformed { key: quote(key) };
    let rest = key.strip_prefix('/').ok_or_else(malformed)?;
    let parts: Vec<&str> = rest.split('/').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(malformed());
    }
    Ok(parts)
}

/// A QubesDB key as a xenstore path relative to the store's base directory
/// (no leading `/`): `/qubes-ip` → `qubes-ip`,
/// `/qubes-firewall/10.137.0.10/0001` → `qubes-firewall/10-137-0-10/0001`.
/// Only the address under `/qubes-firewall/` is encoded
/// ([`encode_addr_component`]); every other component must already be
/// valid in xenstore.
pub fn key_to_xenstore(key: &str) -> Result<String, EncodingError> {
    let parts = components(key)?;
    let mut out = String::with_capacity(key.len());
    for (index, part) in parts.iter().enumerate() {
        if index > 0 {
            out.push('/');
        }
        if index == 1 && parts[0] == &keys::FIREWALL[1..] {
            let addr = part
                .parse::<IpAddr>()
                .map_err(|_| EncodingError::NotAnAddress {
                    component: quote(part),
                })?;
            out.push_str(&encode_addr_component(addr));
        } else if part.chars().all(xenstore_char) {
            out.push_str(part);
        } else {
            return Err(EncodingError::BadCharacter { key: quote(key) });
        }
    }
    Ok(out)
}

/// The inverse of [`key_to_xenstore`]: a xenstore path relative to the
/// store's base directory (with or without a leading `/`, as a watch event
/// gives it once the base is stripped) as a QubesDB key:
/// `qubes-firewall/10-137-0-10` → `/qubes-firewall/10.137.0.10`.
pub fn xenstore_to_key(path: &str) -> Result<String, EncodingError> {
    let absolute = if path.starts_with('/') {
        String::from(path)
    } else {
        alloc::format!("/{path}")
    };
    let parts = components(&absolute)?;
    let mut out = String::with_capacity(absolute.len() + 8);
    for (index, part) in parts.iter().enumerate() {
        out.push('/');
        if index == 1 && parts[0] == &keys::FIREWALL[1..] {
            out.push_str(&decode_addr_component(part)?.to_string());
        } else {
            out.push_str(part);
        }
    }
    Ok(out)
}

/// A child name from a xenstore `directory` of the QubesDB directory `dir`,
/// as [`ConfigStore::list`] must return it: client addresses under
/// `/qubes-firewall` decoded, other names unchanged.
pub fn child_from_xenstore(dir: &str, child: &str) -> Result<String, EncodingError> {
    let dir = dir.strip_suffix('/').unwrap_or(dir);
    if dir == keys::FIREWALL {
        Ok(decode_addr_component(child)?.to_string())
    } else {
        Ok(String::from(child))
    }
}

#[cfg(test)]
mod tests;
