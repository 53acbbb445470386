//! The firewall as a Qubes qube: its configuration from QubesDB (the VM
//! side in `qubes::qubesdb`, over vchan to dom0's daemon) instead of a
//! xenstore directory, and the write-backs the Linux agent
//! (qubes-core-agent-linux `qubesagent/firewall.py`) makes.
//!
//! - [`QubesDbStore`]: the firewall core's configuration trait
//!   (`firewall::store::ConfigStore`) over the QubesDB mirror. Keys are
//!   QubesDB's own, so it only lists and reads.
//! - [`snapshot`] and [`Shared::take_changes`]: the mirror as the
//!   runtime's [`Snapshot`] (keys as the xenstore directory would hold
//!   them) and its watch events as [`Changed`], so [`FirewallVm`] decides
//!   exactly as on plain Xen (defaults from the command line and the
//!   uplink vif, DHCP, reloads on the write of `/qubes-firewall/<ip>`).
//! - [`pump`]: the QubesDB link's task: connect to dom0's daemon (port
//!   111), sync, then move bytes both ways, waking on the vchan's event or
//!   on the service queueing a write-back; reconnects when dom0's daemon
//!   restarts.
//! - [`QubesFirewall`]: [`FirewallVm`] as a `netvm::Service` fed from
//!   [`Shared`] at each tick, plus the write-backs and the
//!   `/connected-ips` anti-spoofing:
//!   - `/qubes-firewall-handled/<ip>`: a counter, incremented each time
//!     the rules of `<ip>` were (re)loaded (what `update_handled` does;
//!     dom0 tools and tests wait for it to grow after a change);
//!   - `/qubes-iptables-error`: empty after a load without errors, else
//!     the reason of the last refused rule set (qubes-doc's vm-interface
//!     page: "the VM may signal some error, writing a message to the
//!     `/qubes-iptables-error` key");
//!   - `/dns/<ip>/<host>`: the addresses a `dsthost=` name had when the
//!     rules went into force, written as `update_dns_info` does
//!     (`{'a/32', 'b/32'}`, Python's text of a set; ours sorted), the
//!     directory removed first;
//!   - `/connected-ips`, `/connected-ips6` (space-separated addresses of
//!     the clients dom0 connected): a frame from the uplink whose source,
//!     or a frame to the uplink whose destination, is one of them is
//!     dropped and counted, as the Linux agent's `QBS-PREROUTING` and
//!     `QBS-POSTROUTING` chains drop them (`update_connected_ips`).

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::rc::Rc;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::cell::RefCell;
use core::future::{poll_fn, Future};
use core::net::IpAddr;
use core::pin::pin;
use core::task::{Poll, Waker};

use firewall::store::{
    key_to_xenstore, load_rules, now_or_never, rule_targets, ConfigStore, StoreError,
};
use netvm::config::{Changed, Snapshot, MAX_CHANGED};
use netvm::{ClientId, ClientInfo, Link, Packet, Service, Stats, To, Transmit, UplinkInfo};
use qubes::qubesdb::{link, Client, Event};
use qubes::vchan::wire::Live;
use qubes::vchan::{Vchan, VchanEnv, VchanError};
use xen::abi::DomId;
use xen::shared_page::PageMemory;
use xen::xenstore::XsError;

use crate::FirewallVm;

/// The key the rules' error report goes to.
pub const ERROR_KEY: &str = "/qubes-iptables-error";
/// The directory of the handled counters.
pub const HANDLED_DIR: &str = "/qubes-firewall-handled";
/// The directory of the `dsthost=` addresses.
pub const DNS_DIR: &str = "/dns";
/// Clients' IPv4 addresses (space-separated).
pub const CONNECTED_IPS: &str = "/connected-ips";
/// Clients' IPv6 addresses (space-separated).
pub const CONNECTED_IPS6: &str = "/connected-ips6";

/// `firewall::store::ConfigStore` over the QubesDB mirror.
pub struct QubesDbStore<'a>(pub &'a Client);

impl ConfigStore for QubesDbStore<'_> {
    async fn read(&mut self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.0.read(key).map(<[u8]>::to_vec))
    }

    async fn list(&mut self, dir: &str) -> Result<Vec<String>, StoreError> {
        let prefix = format!("{}/", dir.trim_end_matches('/'));
        let mut names: Vec<String> = Vec::new();
        for path in self.0.list(&prefix) {
            let rest = &path[prefix.len()..];
            let name = rest.split('/').next().unwrap_or(rest);
            if !name.is_empty() && names.last().map(String::as_str) != Some(name) {
                names.push(name.to_string());
            }
        }
        names.dedup();
        Ok(names)
    }
}

/// Whether a changed QubesDB path is one of our own write-backs (which
/// the firewall does not read).
fn is_ours(path: &str) -> bool {
    path == ERROR_KEY || path.starts_with("/qubes-firewall-handled/") || path.starts_with("/dns/")
}

/// The mirror as the runtime's snapshot: every entry under its xenstore
/// name (`/qubes-firewall/10.137.0.5/0000` as
/// `qubes-firewall/10-137-0-5/0000`), with the directories above it as
/// empty nodes (xenstore has them; QubesDB has only the entries). An entry
/// that has no xenstore name (a `/qubes-firewall/<x>` whose `<x>` is not an
/// address, a path with an empty component) is left out and counted.
pub fn snapshot(client: &Client) -> (Snapshot, usize) {
    let mut s = Snapshot::default();
    let mut skipped = 0;
    for (path, value) in client.entries("/") {
        if is_ours(path) {
            continue;
        }
        let Ok(rel) = key_to_xenstore(path) else {
            skipped += 1;
            continue;
        };
        let mut at = 0;
        while let Some(i) = rel[at..].find('/') {
            s.nodes.entry(rel[..at + i].to_string()).or_default();
            at += i + 1;
        }
        s.nodes.insert(rel, value.to_vec());
    }
    (s, skipped)
}

/// What the QubesDB link and the service share (one executor, so a
/// `RefCell`; nobody holds a borrow across an await).
pub struct Shared {
    /// The mirror and its queued output.
    pub client: Client,
    changed: Changed,
    /// Something changed since the service last looked.
    dirty: bool,
    /// The link task, waiting for output to send.
    waker: Option<Waker>,
    /// The link is synced with dom0's daemon.
    pub connected: bool,
    /// Link (re)connections.
    pub connects: u64,
    /// Why the link last failed.
    pub last_error: Option<String>,
}

/// A [`Shared`] behind the `Rc` both sides hold.
pub type SharedDb = Rc<RefCell<Shared>>;

impl Shared {
    /// A fresh, unsynced mirror.
    pub fn new() -> SharedDb {
        let mut client = Client::new();
        // One watch on everything; our own write-backs are filtered out.
        let _ = client.watch("/");
        Rc::new(RefCell::new(Shared {
            client,
            changed: Changed::default(),
            dirty: false,
            waker: None,
            connected: false,
            connects: 0,
            last_error: None,
        }))
    }

    /// Take the client's events into the change set.
    fn collect(&mut self) {
        while let Some(ev) = self.client.next_event() {
            match ev {
                Event::Synced => {
                    self.changed.all = true;
                    self.changed.paths.clear();
                    self.dirty = true;
                }
                Event::Watch { path, .. } if !is_ours(&path) => {
                    // An entry without a xenstore name is never in the
                    // snapshot (`snapshot` leaves it out), so its change
                    // cannot change the configuration: qubesd writes
                    // `/mapped-ip/<client ip>/visible-ip` before each
                    // client starts, and taking that for "everything
                    // changed" reloaded every client's rules (and grew
                    // every `/qubes-firewall-handled/<ip>`) each time.
                    let Ok(rel) = key_to_xenstore(&path) else {
                        continue;
                    };
                    self.dirty = true;
                    if self.changed.all {
                        continue;
                    }
                    if self.changed.paths.len() < MAX_CHANGED {
                        self.changed.paths.push(rel)
                    } else {
                        // Too many: look at everything.
                        self.changed.all = true;
                        self.changed.paths.clear();
                    }
                }
                Event::Watch { .. } | Event::Refused { .. } => {}
            }
        }
    }

    /// The changes since the last call, if any (and only once synced).
    pub fn take_changes(&mut self) -> Option<Changed> {
        self.collect();
        if !self.dirty || !self.client.synced() {
            return None;
        }
        self.dirty = false;
        Some(core::mem::take(&mut self.changed))
    }

    /// Wake the link task: output is queued.
    pub fn kick(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

/// Move what is queued and what arrived; true if anything moved.
fn shuttle<E: VchanEnv, M: PageMemory>(
    shared: &SharedDb,
    v: &mut Vchan<M>,
    env: &mut E,
    buf: &mut [u8],
) -> Result<bool, link::LinkError> {
    let mut s = shared.borrow_mut();
    let mut moved = false;
    loop {
        let out = s.client.output();
        if out.is_empty() {
            break;
        }
        let n = v.try_write(env, out)?;
        if n == 0 {
            break;
        }
        s.client.consume_output(n);
        moved = true;
    }
    loop {
        let n = v.try_read(env, buf)?;
        if n == 0 {
            break;
        }
        s.client.feed(&buf[..n])?;
        moved = true;
    }
    s.collect();
    Ok(moved)
}

/// One connection's life: sync and serve until the vchan or the protocol
/// breaks.
async fn serve<E: VchanEnv, M: PageMemory>(
    shared: &SharedDb,
    v: &mut Vchan<M>,
    env: &mut E,
) -> link::LinkError {
    // A sync (again, after a reconnection) swaps the new database in and
    // fires the watch for what changed meanwhile.
    shared.borrow_mut().client.start();
    let mut buf = alloc::vec![0u8; 4096];
    loop {
        match shuttle(shared, v, env, &mut buf) {
            Err(e) => return e,
            Ok(true) => {
                let mut s = shared.borrow_mut();
                if s.client.synced() && !s.connected {
                    s.connected = true;
                    s.connects += 1;
                }
                continue;
            }
            Ok(false) => {}
        }
        match v.peer_live() {
            Ok(Live::Closed) => return link::LinkError::Closed,
            Err(e) => return e.into(),
            Ok(_) => {}
        }
        // Wait for the vchan, or for the service to queue output.
        let mut wait = pin!(v.wait(env));
        let r = poll_fn(|cx| {
            if let Poll::Ready(r) = wait.as_mut().poll(cx) {
                return Poll::Ready(r);
            }
            let mut s = shared.borrow_mut();
            if !s.client.output().is_empty() {
                return Poll::Ready(Ok(()));
            }
            s.waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        if let Err(e) = r {
            return e.into();
        }
    }
}

/// The QubesDB link of VM `me`: connect to dom0's daemon, sync, serve;
/// after a break (dom0's daemon restarted) connect and sync again, as the
/// upstream VM daemon does. A connection that fails (the keys of a daemon
/// that died stay in xenstore, its port and grant gone; the next daemon's
/// may even carry the same numbers, so a change of value cannot be waited
/// for) is tried again after `backoff()` (a second in the image). `print`
/// gets one line per (re)connection and break. Runs for ever.
pub async fn pump<E: VchanEnv, F: Future<Output = ()>>(
    env: &mut E,
    me: DomId,
    shared: SharedDb,
    print: fn(&str),
    mut backoff: impl FnMut() -> F,
) {
    let mut failures = 0u64;
    loop {
        let mut v = match link::connect(env, me).await {
            Ok(v) => v,
            Err(e) => {
                failures += 1;
                if failures.is_power_of_two() {
                    print(&format!(
                        "firewall: qubesdb: cannot connect ({failures} times): {e:?}"
                    ));
                }
                shared.borrow_mut().last_error = Some(format!("{e:?}"));
                if matches!(
                    e,
                    VchanError::Xenstore(XsError::Protocol(_) | XsError::Closed)
                ) {
                    print("firewall: qubesdb: xenstore broken: giving up");
                    return;
                }
                backoff().await;
                continue;
            }
        };
        failures = 0;
        print(&format!(
            "firewall: qubesdb: connected to dom0's daemon ({})",
            link::vchan_path(me)
        ));
        let why = serve(&shared, &mut v, env).await;
        {
            let mut s = shared.borrow_mut();
            s.connected = false;
            s.last_error = Some(format!("{why:?}"));
        }
        print(&format!(
            "firewall: qubesdb: link lost ({why:?}); reconnecting"
        ));
        if let Ok(mut l) = v.close(env).await {
            if !l.retry(env) {
                core::mem::forget(l);
            }
        }
    }
}

/// Counters of the Qubes side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QubesStats {
    /// Configurations applied from QubesDB.
    pub applied: u64,
    /// Entries without a xenstore name, left out of the last snapshot.
    pub skipped: u64,
    /// Write-backs queued.
    pub writes: u64,
    /// Frames dropped by the `/connected-ips` checks.
    pub connected_spoofed: u64,
}

/// [`FirewallVm`] configured from QubesDB.
pub struct QubesFirewall {
    /// The firewall VM.
    pub vm: FirewallVm,
    shared: SharedDb,
    print: fn(&str),
    connected: BTreeSet<IpAddr>,
    /// `/dns/<ip>/` as last written.
    dns_written: BTreeMap<IpAddr, BTreeMap<String, Vec<IpAddr>>>,
    /// The uplink, up before QubesDB was synced: handed on with the first
    /// configuration, so the firewall is never built from the defaults
    /// alone (nor starts DHCP) while dom0's keys are on their way.
    pending_uplink: Option<UplinkInfo>,
    /// When the service first ran (its first tick), for the warning below.
    started_ns: Option<u64>,
    /// When to say again that dom0 has not configured us (0: not said).
    next_warning_ns: u64,
    /// Counters.
    pub stats: QubesStats,
}

/// How long after start the firewall says that dom0's QubesDB daemon has
/// not answered, and how often it says it again.
pub const NO_QUBESDB_WARNING_NS: u64 = 10_000_000_000;
/// The repeat period of that warning.
pub const NO_QUBESDB_REPEAT_NS: u64 = 60_000_000_000;

fn parse_connected(value: Option<&[u8]>) -> impl Iterator<Item = IpAddr> + '_ {
    value
        .and_then(|v| core::str::from_utf8(v).ok())
        .unwrap_or("")
        .split_ascii_whitespace()
        .filter_map(|a| a.parse().ok())
}

/// The source and destination address of an IPv4 or IPv6 frame.
fn addrs(frame: &[u8]) -> Option<(IpAddr, IpAddr)> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    match ethertype {
        0x0800 => {
            let h = frame.get(14..34)?;
            let s: [u8; 4] = h[12..16].try_into().ok()?;
            let d: [u8; 4] = h[16..20].try_into().ok()?;
            Some((IpAddr::from(s), IpAddr::from(d)))
        }
        0x86dd => {
            let h = frame.get(14..54)?;
            let s: [u8; 16] = h[8..24].try_into().ok()?;
            let d: [u8; 16] = h[24..40].try_into().ok()?;
            Some((IpAddr::from(s), IpAddr::from(d)))
        }
        _ => None,
    }
}

/// Python's text of a set of addresses with their full mask, sorted.
fn dns_value(addrs: &[IpAddr]) -> String {
    let mut items: Vec<String> = addrs
        .iter()
        .map(|a| match a {
            IpAddr::V4(_) => format!("'{a}/32'"),
            IpAddr::V6(_) => format!("'{a}/128'"),
        })
        .collect();
    items.sort();
    items.dedup();
    format!("{{{}}}", items.join(", "))
}

impl QubesFirewall {
    /// `vm` fed from `shared` (which [`pump`] keeps in sync).
    pub fn new(vm: FirewallVm, shared: SharedDb, print: fn(&str)) -> Self {
        Self {
            vm,
            shared,
            print,
            connected: BTreeSet::new(),
            dns_written: BTreeMap::new(),
            pending_uplink: None,
            started_ns: None,
            next_warning_ns: 0,
            stats: QubesStats::default(),
        }
    }

    /// The addresses of `/connected-ips` and `/connected-ips6`.
    pub fn connected_ips(&self) -> &BTreeSet<IpAddr> {
        &self.connected
    }

    fn write(&mut self, client: &mut Client, path: &str, value: &[u8]) {
        if client.read(path) == Some(value) {
            return;
        }
        match client.write(path, value) {
            Ok(()) => self.stats.writes += 1,
            Err(e) => (self.print)(&format!("firewall: qubesdb: cannot write {path}: {e:?}")),
        }
    }

    /// `firewall.qubes=on` without dom0's QubesDB daemon (not a Qubes
    /// dom0, or qubesd did not start `qubesdb-daemon` for us): the
    /// firewall stays closed (nothing is forwarded without dom0's
    /// configuration; falling back to another source would let a firewall
    /// run on rules nobody gave it) and keeps waiting, since the daemon
    /// may still come, but says so on the console 10 s after start and
    /// every minute after, and once when the daemon finally answers.
    fn warn_unconfigured(&mut self, now_ns: u64, s: &Shared) {
        let start = *self.started_ns.get_or_insert(now_ns);
        let waited = now_ns.saturating_sub(start) / 1_000_000_000;
        if s.connects > 0 {
            if self.next_warning_ns != 0 {
                self.next_warning_ns = 0;
                (self.print)(&format!(
                    "firewall: qubesdb: dom0's QubesDB daemon answered after {waited} s: configuring"
                ));
            }
            return;
        }
        if now_ns.saturating_sub(start) < NO_QUBESDB_WARNING_NS || now_ns < self.next_warning_ns {
            return;
        }
        self.next_warning_ns = now_ns + NO_QUBESDB_REPEAT_NS;
        let why = s
            .last_error
            .as_deref()
            .map(|e| format!(" (last error: {e})"))
            .unwrap_or_default();
        (self.print)(&format!(
            "firewall: qubesdb: no configuration from dom0 after {waited} s: forwarding nothing until dom0's QubesDB \
             daemon answers on vchan port 111{why}. firewall.qubes=on is for a Qubes dom0, where qubesd starts \
             qubesdb-daemon with the qube; on plain Xen leave it out and configure through xenstore (docs/firewall.md)"
        ));
    }

    /// Apply what changed in QubesDB, then queue the write-backs.
    fn sync(&mut self, now_ns: u64) {
        let shared = self.shared.clone();
        let mut s = shared.borrow_mut();
        self.warn_unconfigured(now_ns, &s);
        if let Some(changed) = s.take_changes() {
            let (snap, skipped) = snapshot(&s.client);
            self.stats.skipped = skipped as u64;
            self.stats.applied += 1;
            for line in self.vm.configure(now_ns, &snap, &changed) {
                (self.print)(&format!("firewall: {line}"));
            }
            if let Some(uplink) = self.pending_uplink.take() {
                self.vm.uplink_up(now_ns, &uplink);
            }
            self.connected = parse_connected(s.client.read(CONNECTED_IPS))
                .chain(parse_connected(s.client.read(CONNECTED_IPS6)))
                .collect();
            self.handled(&mut s.client, &changed);
        }
        self.dns(&mut s.client);
        if !s.client.output().is_empty() {
            s.kick();
        }
    }

    /// The addresses whose rules this change (re)loaded, as the firewall
    /// VM reloads them: every rule directory on a full change, else each
    /// written or removed `/qubes-firewall/<ip>`.
    fn reloaded(client: &Client, changed: &Changed) -> BTreeSet<IpAddr> {
        if changed.all {
            return now_or_never(rule_targets(&mut QubesDbStore(client)))
                .and_then(Result::ok)
                .map(|t| t.addrs.into_iter().collect())
                .unwrap_or_default();
        }
        changed
            .paths
            .iter()
            .filter_map(|p| {
                let rest = p.strip_prefix("qubes-firewall/")?;
                if rest.contains('/') {
                    return None;
                }
                firewall::store::decode_addr_component(rest).ok()
            })
            .collect()
    }

    /// `/qubes-firewall-handled/<ip>` and `/qubes-iptables-error`.
    fn handled(&mut self, client: &mut Client, changed: &Changed) {
        let addrs = Self::reloaded(client, changed);
        let mut error = None;
        for addr in &addrs {
            let loaded = now_or_never(load_rules(&mut QubesDbStore(client), *addr));
            if let Some(Ok(Some(l))) = loaded {
                if let Some(e) = l.error {
                    error = Some(format!(
                        "Failed to parse rules for {addr} ({e}), blocking traffic"
                    ));
                }
            }
            let key = format!("{HANDLED_DIR}/{addr}");
            let count = client
                .read(&key)
                .and_then(|v| core::str::from_utf8(v).ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
            self.write(client, &key, format!("{}", count + 1).as_bytes());
        }
        if changed.all || error.is_some() {
            let msg = error.unwrap_or_default();
            self.write(client, ERROR_KEY, msg.as_bytes());
        }
    }

    /// `/dns/<ip>/<host>` for rules whose names resolved since.
    fn dns(&mut self, client: &mut Client) {
        let Some(fw) = self.vm.firewall() else {
            return;
        };
        let mut now: BTreeMap<IpAddr, BTreeMap<String, Vec<IpAddr>>> = BTreeMap::new();
        let targets = now_or_never(rule_targets(&mut QubesDbStore(client)))
            .and_then(Result::ok)
            .map(|t| t.addrs)
            .unwrap_or_default();
        for addr in targets {
            if let Some(hosts) = fw.dsthost_addresses(&addr) {
                if !hosts.is_empty() {
                    now.insert(addr, hosts.clone());
                }
            }
        }
        if now == self.dns_written {
            return;
        }
        let old = core::mem::take(&mut self.dns_written);
        for (addr, hosts) in &now {
            if old.get(addr) == Some(hosts) {
                continue;
            }
            let _ = client.rm(&format!("{DNS_DIR}/{addr}/"));
            for (host, addrs) in hosts {
                let key = format!("{DNS_DIR}/{addr}/{host}");
                self.write(client, &key, dns_value(addrs).as_bytes());
            }
        }
        for addr in old.keys().filter(|a| !now.contains_key(a)) {
            let _ = client.rm(&format!("{DNS_DIR}/{addr}/"));
        }
        self.dns_written = now;
    }

    fn spoofed(&mut self, from: Link, frame: &[u8]) -> bool {
        if from != Link::Uplink || self.connected.is_empty() {
            return false;
        }
        match addrs(frame) {
            Some((src, _)) if self.connected.contains(&src) => {
                self.stats.connected_spoofed += 1;
                true
            }
            _ => false,
        }
    }
}

/// Whether the link to dom0's QubesDB is synced (for a readiness line).
pub fn synced(shared: &SharedDb) -> bool {
    shared.borrow().client.synced()
}

impl Service for QubesFirewall {
    fn admit(&mut self, client: &ClientInfo) -> Result<(), String> {
        self.vm.admit(client)
    }
    fn client_up(&mut self, now_ns: u64, client: &ClientInfo) {
        self.vm.client_up(now_ns, client)
    }
    fn client_down(&mut self, now_ns: u64, id: ClientId) {
        self.vm.client_down(now_ns, id)
    }
    fn uplink_up(&mut self, now_ns: u64, uplink: &UplinkInfo) {
        if synced(&self.shared) {
            self.vm.uplink_up(now_ns, uplink);
        } else {
            self.pending_uplink = Some(uplink.clone());
        }
        self.sync(now_ns);
    }
    fn uplink_down(&mut self, now_ns: u64) {
        self.pending_uplink = None;
        self.vm.uplink_down(now_ns)
    }
    fn handle(&mut self, now_ns: u64, from: Link, packet: Packet, out: &mut Vec<Transmit>) {
        if self.spoofed(from, &packet.data) {
            return;
        }
        let at = out.len();
        self.vm.handle(now_ns, from, packet, out);
        if !self.connected.is_empty() {
            let connected = &self.connected;
            let mut dropped = 0;
            let mut i = at;
            while i < out.len() {
                let to_client = matches!(
                    addrs(&out[i].packet.data),
                    Some((_, dst)) if out[i].to == To::Uplink && connected.contains(&dst)
                );
                if to_client {
                    out.remove(i);
                    dropped += 1;
                } else {
                    i += 1;
                }
            }
            self.stats.connected_spoofed += dropped;
        }
    }
    fn tick(&mut self, now_ns: u64, out: &mut Vec<Transmit>) {
        self.sync(now_ns);
        self.vm.tick(now_ns, out);
    }
    fn report(&mut self, stats: &Stats) -> Option<String> {
        let line = self.vm.report(stats)?;
        let s = self.shared.borrow();
        Some(format!(
            "{line} qubesdb={}/{} qubesdb-writes={} connected-spoofed={}",
            if s.connected { "up" } else { "down" },
            s.connects,
            self.stats.writes,
            self.stats.connected_spoofed
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qubes::qubesdb::wire::{encode, MsgType};

    /// A synced client holding `entries` (as dom0's full sync).
    fn synced(entries: &[(&str, &str)]) -> Client {
        let mut c = Client::new();
        c.start();
        let _ = c.output().len();
        c.consume_output(c.output().len());
        let mut bytes = Vec::new();
        for (p, v) in entries.iter().chain(&[("", "")]) {
            bytes.extend_from_slice(&encode(MsgType::RespMultiread, p, v.len()).unwrap());
            bytes.extend_from_slice(v.as_bytes());
        }
        c.feed(&bytes).unwrap();
        assert!(c.synced());
        c
    }

    #[test]
    fn the_store_lists_children_once_and_reads_entries() {
        let c = synced(&[
            ("/qubes-ip", "10.99.0.10"),
            ("/qubes-firewall/10.137.0.10", ""),
            ("/qubes-firewall/10.137.0.10/policy", "drop"),
            ("/qubes-firewall/10.137.0.10/0000", "action=accept"),
            ("/qubes-firewall/fd09:24ef:4179::a89:a/policy", "accept"),
            ("/qubes-firewallx/1", "not a child"),
        ]);
        let mut s = QubesDbStore(&c);
        let top = now_or_never(s.list("/qubes-firewall")).unwrap().unwrap();
        assert_eq!(top, ["10.137.0.10", "fd09:24ef:4179::a89:a"]);
        let rules = now_or_never(s.list("/qubes-firewall/10.137.0.10/"))
            .unwrap()
            .unwrap();
        assert_eq!(rules, ["0000", "policy"]);
        assert_eq!(
            now_or_never(s.read("/qubes-ip"))
                .unwrap()
                .unwrap()
                .as_deref(),
            Some(&b"10.99.0.10"[..])
        );
        assert_eq!(now_or_never(s.read("/nothing")).unwrap().unwrap(), None);
    }

    #[test]
    fn the_snapshot_has_xenstore_names_and_their_directories() {
        let c = synced(&[
            ("/qubes-firewall/10.137.0.10/policy", "drop"),
            (
                "/qubes-firewall/fd09:24ef:4179::a89:a/0000",
                "action=accept",
            ),
            ("/qubes-firewall/not-an-address/policy", "drop"),
            ("/qubes-firewall-handled/10.137.0.10", "3"),
        ]);
        let (snap, skipped) = snapshot(&c);
        assert_eq!(skipped, 1);
        let keys: Vec<&str> = snap.nodes.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "qubes-firewall",
                "qubes-firewall/10-137-0-10",
                "qubes-firewall/10-137-0-10/policy",
                "qubes-firewall/fd09_24ef_4179__a89_a",
                "qubes-firewall/fd09_24ef_4179__a89_a/0000",
            ]
        );
        assert_eq!(
            snap.get("qubes-firewall/10-137-0-10/policy"),
            Some(&b"drop"[..])
        );
    }

    #[test]
    fn a_change_of_an_entry_without_a_xenstore_name_changes_nothing() {
        let shared = Shared::new();
        {
            let mut s = shared.borrow_mut();
            s.client = synced(&[("/qubes-ip", "10.99.0.10")]);
            let _ = s.client.watch("/");
            assert!(s.take_changes().is_some_and(|c| c.all), "the sync");
            assert!(s.take_changes().is_none());
            let mut bytes = encode(MsgType::Write, "/mapped-ip/10.137.0.10/visible-ip", 11)
                .unwrap()
                .to_vec();
            bytes.extend_from_slice(b"10.137.0.10");
            s.client.feed(&bytes).unwrap();
            assert_eq!(
                s.take_changes(),
                None,
                "qubesd's /mapped-ip/<ip>/... is no configuration"
            );
            let bytes = encode(MsgType::Write, "/qubes-firewall/10.137.0.10", 0).unwrap();
            s.client.feed(&bytes).unwrap();
            let c = s.take_changes().expect("the reload trigger is a change");
            assert!(!c.all);
            assert_eq!(c.paths, ["qubes-firewall/10-137-0-10"]);
        }
    }

    std::thread_local! {
        static LINES: core::cell::RefCell<Vec<String>> = const { core::cell::RefCell::new(Vec::new()) };
    }

    fn record(line: &str) {
        LINES.with(|l| l.borrow_mut().push(line.to_string()));
    }

    fn recorded() -> Vec<String> {
        LINES.with(|l| core::mem::take(&mut *l.borrow_mut()))
    }

    #[test]
    fn without_dom0_s_daemon_it_says_so_and_forwards_nothing() {
        let shared = Shared::new();
        let vm = FirewallVm::new(crate::FirewallSettings::default(), record);
        let mut fw = QubesFirewall::new(vm, shared.clone(), record);
        let mut out = Vec::new();
        let s = 1_000_000_000u64;
        let t0 = 5 * s;
        fw.tick(t0, &mut out);
        fw.tick(t0 + 9 * s, &mut out);
        assert!(recorded().iter().all(|l| !l.contains("qubesdb")));
        fw.tick(t0 + 10 * s, &mut out);
        let lines = recorded();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].starts_with(
            "firewall: qubesdb: no configuration from dom0 after 10 s: forwarding nothing"
        ));
        fw.tick(t0 + 69 * s, &mut out);
        assert!(recorded().is_empty(), "once a minute");
        fw.tick(t0 + 70 * s, &mut out);
        assert_eq!(recorded().len(), 1);
        assert!(
            fw.vm.firewall().is_none(),
            "no firewall built from the defaults"
        );
        assert!(out.is_empty());
        // dom0's daemon comes after all.
        {
            let mut sh = shared.borrow_mut();
            sh.client = synced(&[("/qubes-ip", "10.99.0.10")]);
            sh.connects = 1;
        }
        fw.tick(t0 + 75 * s, &mut out);
        let lines = recorded();
        assert!(
            lines.iter().any(|l| l
                == "firewall: qubesdb: dom0's QubesDB daemon answered after 75 s: configuring"),
            "{lines:?}"
        );
        fw.tick(t0 + 200 * s, &mut out);
        assert!(recorded().iter().all(|l| !l.contains("qubesdb")));
    }

    #[test]
    fn frame_addresses_and_dns_values() {
        let mut v4 = vec![0u8; 34];
        v4[12..14].copy_from_slice(&[0x08, 0x00]);
        v4[26..30].copy_from_slice(&[10, 137, 0, 10]);
        v4[30..34].copy_from_slice(&[10, 99, 0, 1]);
        assert_eq!(
            addrs(&v4),
            Some(("10.137.0.10".parse().unwrap(), "10.99.0.1".parse().unwrap()))
        );
        let mut v6 = vec![0u8; 54];
        v6[12..14].copy_from_slice(&[0x86, 0xdd]);
        v6[22..38].copy_from_slice(&"fd09::10".parse::<core::net::Ipv6Addr>().unwrap().octets());
        v6[38..54].copy_from_slice(
            &"2001:db8::1"
                .parse::<core::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        assert_eq!(
            addrs(&v6),
            Some(("fd09::10".parse().unwrap(), "2001:db8::1".parse().unwrap()))
        );
        assert_eq!(addrs(&v6[..40]), None, "a truncated header is no address");
        assert_eq!(addrs(&[0u8; 10]), None);
        let a: Vec<IpAddr> = vec![
            "192.0.2.9".parse().unwrap(),
            "192.0.2.7".parse().unwrap(),
            "2001:db8::7".parse().unwrap(),
        ];
        assert_eq!(
            dns_value(&a),
            "{'192.0.2.7/32', '192.0.2.9/32', '2001:db8::7/128'}"
        );
        let c = parse_connected(Some(b" 10.137.0.10  fd09::10 junk\n")).collect::<Vec<_>>();
        assert_eq!(c.len(), 2);
    }
}
