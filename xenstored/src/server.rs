//! The server: the store, the connected domains (each with its watches,
//! transactions and connection), and the request handlers. Transports feed
//! bytes in with [`Server::receive`] and take replies and events out with
//! [`Server::transmit`]; what needs the hypervisor (mapping a domain's
//! page, binding its event channel) is asked of a [`Host`].

use crate::config::Config;
use crate::conn::{message, ConnError, Connection};
use crate::decode::{ignores_tx, privileged_only, Header, Request};
use crate::errno::Errno;
use crate::path::{
    basename, canonicalize, domain_path, is_child, join, parent, INTRODUCE_DOMAIN, RELEASE_DOMAIN,
};
use crate::perms::{Access, Perms, Who};
use crate::store::{commit, Change, Event, Node, Store, Transaction, View};
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use xen::abi::xs_wire::{XsdSockmsgType, XENSTORE_PAYLOAD_MAX};
use xen::xenstore::wire::HEADER_LEN;

/// `DOMID_SELF`: `XS_IS_DOMAIN_INTRODUCED` of it is always true.
pub const DOMID_SELF: u16 = 0x7ff0;

/// What the server needs from the platform.
pub trait Host {
    /// Map domain `domid`'s xenstore page `gfn` and bind its event channel
    /// `port` (again, for a domain already introduced).
    fn introduce(&mut self, domid: u16, gfn: u64, port: u32) -> Result<(), Errno>;
    /// Unmap and unbind what `introduce` set up.
    fn release(&mut self, domid: u16);
    /// A line for the log (`XS_CONTROL print`).
    fn log(&mut self, _line: &str) {}
}

/// A host that needs nothing (tests, fuzzing).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoHost;

impl Host for NoHost {
    fn introduce(&mut self, _domid: u16, _gfn: u64, _port: u32) -> Result<(), Errno> {
        Ok(())
    }
    fn release(&mut self, _domid: u16) {}
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests handled.
    pub requests: u64,
    /// Of which answered with an error.
    pub errors: u64,
    /// Watch events queued.
    pub events: u64,
    /// Watch events dropped (output queue full, or longer than a payload).
    pub events_dropped: u64,
    /// Connections cut for a protocol violation.
    pub broken: u64,
    /// Times a domain's input was left unread for its outstanding quota.
    pub throttled: u64,
}

#[derive(Clone, Debug)]
struct Watch {
    path: String,
    token: Vec<u8>,
    prefix_len: usize,
}

#[derive(Debug, Default)]
struct Domain {
    conn: Connection,
    target: Option<u16>,
    shutdown: bool,
    watches: Vec<Watch>,
    transactions: BTreeMap<u32, Transaction>,
    next_tx: u32,
}

/// What a store operation does: its reply, and the changes and events to
/// apply (to the store, or to the transaction) once it is known to succeed.
struct Outcome {
    reply: Vec<u8>,
    changes: Vec<Change>,
    events: Vec<Event>,
}

impl Outcome {
    fn reply(reply: Vec<u8>) -> Self {
        Self {
            reply,
            changes: Vec::new(),
            events: Vec::new(),
        }
    }

    fn ok(changes: Vec<Change>, events: Vec<Event>) -> Self {
        Self {
            reply: OK.to_vec(),
            changes,
            events,
        }
    }
}

const OK: &[u8] = b"OK\0";

/// The xenstore server.
pub struct Server {
    config: Config,
    store: Store,
    domains: BTreeMap<u16, Domain>,
    specials: BTreeMap<String, Perms>,
    notify: BTreeSet<u16>,
    /// An event to queue after the current reply (a new watch's first).
    after: Option<Vec<u8>>,
    stats: Stats,
}

/// `check_access` of a node: `Ok` if it exists and `who` has `need`; else
/// `ENOENT` or `EACCES`, where `ENOENT` is told only to a domain the
/// nearest existing ancestor grants some of `need` (C xenstored hides a
/// node's existence the same way).
fn check_access(view: &mut View<'_>, who: &Who, path: &str, need: Access) -> Result<(), Errno> {
    let err = match view.get(path)? {
        Some(node) if node.perms.access_for(who).contains(need) => return Ok(()),
        Some(_) => Errno::Eacces,
        None => Errno::Enoent,
    };
    let mut up = parent(path);
    while let Some(p) = up {
        if let Some(node) = view.get(p)? {
            return Err(if node.perms.access_for(who).intersects(need) {
                err
            } else {
                Errno::Eacces
            });
        }
        up = parent(p);
    }
    Err(Errno::Eacces)
}

fn size_ok(who: &Who, node: &Node, config: &Config) -> Result<(), Errno> {
    if !who.privileged && node.size() >= config.quotas.node_size as usize {
        return Err(Errno::Enospc);
    }
    Ok(())
}

fn event(path: &str, exact: bool, readers: Vec<Perms>) -> Event {
    Event {
        path: String::from(path),
        exact,
        readers,
    }
}

/// Create `path` (with `value`) and its missing parents, inheriting
/// permissions; an unprivileged creator owns what it creates.
fn create(
    view: &mut View<'_>,
    who: &Who,
    config: &Config,
    path: &str,
    value: &[u8],
) -> Result<Outcome, Errno> {
    let mut missing = vec![path];
    let mut up = parent(path);
    let existing = loop {
        let p = up.ok_or(Errno::Eio)?;
        if view.get(p)?.is_some() {
            break p;
        }
        missing.push(p);
        up = parent(p);
    };
    if !who.privileged
        && view.owned(who.domid) as usize + missing.len() > config.quotas.nodes as usize
    {
        return Err(Errno::Enospc);
    }
    let mut top = view.peek(existing).cloned().ok_or(Errno::Eio)?;
    top.children
        .push(String::from(basename(missing[missing.len() - 1])));
    size_ok(who, &top, config)?;
    let mut inherited = top.perms.clone();
    let mut changes = vec![Change {
        path: String::from(existing),
        node: Some(top),
    }];
    let mut parent_perms = inherited.clone();
    for (i, p) in missing.iter().enumerate().rev() {
        if !who.privileged {
            inherited.set_owner(who.domid);
        }
        let mut node = Node::new(inherited.clone());
        if i == 0 {
            node.value = value.to_vec();
        } else {
            node.children.push(String::from(basename(missing[i - 1])));
        }
        size_ok(who, &node, config)?;
        if i == 0 {
            parent_perms = changes
                .last()
                .and_then(|c| c.node.as_ref())
                .map_or(parent_perms, |n| n.perms.clone());
        }
        changes.push(Change {
            path: String::from(*p),
            node: Some(node),
        });
    }
    let readers = vec![inherited, parent_perms];
    Ok(Outcome::ok(changes, vec![event(path, false, readers)]))
}

fn op_write(
    view: &mut View<'_>,
    who: &Who,
    config: &Config,
    path: &str,
    value: &[u8],
) -> Result<Outcome, Errno> {
    match check_access(view, who, path, Access::WRITE) {
        Ok(()) => {
            let mut node = view.peek(path).cloned().ok_or(Errno::Eio)?;
            node.value = value.to_vec();
            size_ok(who, &node, config)?;
            let mut readers = vec![node.perms.clone()];
            if let Some(p) = parent(path).and_then(|p| view.peek(p)) {
                readers.push(p.perms.clone());
            }
            let ev = event(path, false, readers);
            Ok(Outcome::ok(
                vec![Change {
                    path: String::from(path),
                    node: Some(node),
                }],
                vec![ev],
            ))
        }
        Err(Errno::Enoent) => create(view, who, config, path, value),
        Err(e) => Err(e),
    }
}

fn op_mkdir(view: &mut View<'_>, who: &Who, config: &Config, path: &str) -> Result<Outcome, Errno> {
    match check_access(view, who, path, Access::WRITE) {
        Ok(()) => Ok(Outcome::reply(OK.to_vec())),
        Err(Errno::Enoent) => create(view, who, config, path, b""),
        Err(e) => Err(e),
    }
}

fn op_rm(view: &mut View<'_>, who: &Who, path: &str) -> Result<Outcome, Errno> {
    match check_access(view, who, path, Access::WRITE) {
        Ok(()) => {}
        Err(Errno::Enoent) => {
            let p = parent(path).ok_or(Errno::Enoent)?;
            return match view.get(p)? {
                Some(_) => Ok(Outcome::reply(OK.to_vec())),
                None => Err(Errno::Enoent),
            };
        }
        Err(e) => return Err(e),
    }
    let parent_path = parent(path).ok_or(Errno::Einval)?;
    let mut top = view.get(parent_path)?.cloned().ok_or(Errno::Einval)?;
    let mut removed: Vec<(String, Perms, Perms)> = Vec::new();
    let mut stack = vec![(String::from(path), top.perms.clone())];
    while let Some((p, parent_perms)) = stack.pop() {
        let Some(node) = view.get(&p)? else { continue };
        for c in &node.children {
            stack.push((join(&p, c), node.perms.clone()));
        }
        let perms = node.perms.clone();
        removed.push((p, perms, parent_perms));
    }
    let name = basename(path);
    top.children.retain(|c| c != name);
    let mut changes = Vec::with_capacity(removed.len() + 1);
    let mut events = Vec::with_capacity(removed.len());
    for (p, perms, parent_perms) in removed.into_iter().rev() {
        events.push(event(&p, p != path, vec![perms, parent_perms]));
        changes.push(Change {
            path: p,
            node: None,
        });
    }
    changes.push(Change {
        path: String::from(parent_path),
        node: Some(top),
    });
    Ok(Outcome::ok(changes, events))
}

fn op_set_perms(
    view: &mut View<'_>,
    who: &Who,
    config: &Config,
    path: &str,
    perms: &Perms,
) -> Result<Outcome, Errno> {
    check_access(view, who, path, Access::WRITE.union(Access::OWNER))?;
    let mut node = view.peek(path).cloned().ok_or(Errno::Eio)?;
    if !who.privileged && perms.owner() != node.perms.owner() {
        return Err(Errno::Eperm);
    }
    let old = core::mem::replace(&mut node.perms, perms.clone());
    size_ok(who, &node, config)?;
    let mut readers = vec![old, perms.clone()];
    if let Some(p) = parent(path).and_then(|p| view.peek(p)) {
        readers.push(p.perms.clone());
    }
    Ok(Outcome::ok(
        vec![Change {
            path: String::from(path),
            node: Some(node),
        }],
        vec![event(path, false, readers)],
    ))
}

/// How much an operation's `changes` add to `domid`'s memory use: in a
/// transaction every written node (the transaction holds it), else the
/// nodes it owns afterwards less those it owned before.
fn memory_delta(view: &View<'_>, domid: u16, changes: &[Change]) -> i64 {
    let mut delta = 0i64;
    for c in changes {
        let new = c
            .node
            .as_ref()
            .map_or(0, |n| crate::store::node_cost(&c.path, n)) as i64;
        if view.in_transaction() {
            delta += new;
            continue;
        }
        if c.node.as_ref().is_some_and(|n| n.perms.owner() == domid) {
            delta += new;
        }
        if let Some(old) = view
            .store()
            .get(&c.path)
            .filter(|n| n.perms.owner() == domid)
        {
            delta -= crate::store::node_cost(&c.path, old) as i64;
        }
    }
    delta
}

fn op_directory_part(node: &Node, offset: u32) -> Vec<u8> {
    let children = node.children_wire();
    let mut out = Vec::from(format!("{}", node.generation).as_bytes());
    out.push(0);
    let off = offset as usize;
    if off >= children.len() {
        out.push(0);
        return out;
    }
    let max = XENSTORE_PAYLOAD_MAX - out.len() - 1;
    let mut len = 0;
    while off + len < children.len() {
        let rest = &children[off + len..];
        let name = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
        if len + name >= max {
            break;
        }
        len += name + 1;
    }
    let end = (off + len).min(children.len());
    out.extend_from_slice(&children[off..end]);
    if end == children.len() {
        out.push(0);
    }
    out
}

impl Server {
    /// A server with the initial tree and no domain connected.
    pub fn new(config: Config) -> Self {
        let mut specials = BTreeMap::new();
        specials.insert(String::from(INTRODUCE_DOMAIN), Perms::owner_only(0));
        specials.insert(String::from(RELEASE_DOMAIN), Perms::owner_only(0));
        Self {
            config,
            store: Store::new(),
            domains: BTreeMap::new(),
            specials,
            notify: BTreeSet::new(),
            after: None,
            stats: Stats::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The committed store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Connect a domain the platform set up itself (dom0 from the command
    /// line at boot): no `@introduceDomain` event. Returns whether it was
    /// new.
    pub fn connect(&mut self, domid: u16) -> bool {
        if self.domains.contains_key(&domid) {
            return false;
        }
        self.domains.insert(domid, Domain::default());
        true
    }

    /// Whether `domid` is connected.
    pub fn is_connected(&self, domid: u16) -> bool {
        self.domains.contains_key(&domid)
    }

    /// The connected domains.
    pub fn domains(&self) -> impl Iterator<Item = u16> + '_ {
        self.domains.keys().copied()
    }

    /// How many watches `domid` has.
    pub fn watch_count(&self, domid: u16) -> usize {
        self.domains.get(&domid).map_or(0, |d| d.watches.len())
    }

    /// How many transactions `domid` has open.
    pub fn transaction_count(&self, domid: u16) -> usize {
        self.domains.get(&domid).map_or(0, |d| d.transactions.len())
    }

    /// `domid`'s connection.
    pub fn connection(&self, domid: u16) -> Option<&Connection> {
        self.domains.get(&domid).map(|d| &d.conn)
    }

    /// The domains whose output grew since the last call (to notify).
    pub fn take_notify(&mut self) -> Vec<u16> {
        let out = self.notify.iter().copied().collect();
        self.notify.clear();
        out
    }

    fn who(&self, domid: u16) -> Who {
        Who {
            domid,
            target: self.domains.get(&domid).and_then(|d| d.target),
            privileged: self.config.is_privileged(domid),
        }
    }

    /// Feed bytes `domid` sent; whole requests are handled at once.
    /// Returns how many bytes were used: fewer than given when the domain
    /// has its outstanding quota of replies not yet taken (the rest stays
    /// in the transport until [`transmit`](Self::transmit) drains some).
    /// A header announcing more than `XENSTORE_PAYLOAD_MAX` breaks the
    /// connection for good.
    pub fn receive(
        &mut self,
        domid: u16,
        bytes: &[u8],
        host: &mut dyn Host,
    ) -> Result<usize, ConnError> {
        let mut used = 0;
        loop {
            let privileged = self.config.is_privileged(domid);
            let limit = self.config.quotas.outstanding;
            let domain = self
                .domains
                .get_mut(&domid)
                .ok_or(ConnError::NotConnected)?;
            if let Some(err) = domain.conn.broken() {
                return Err(err);
            }
            if used == bytes.len() {
                return Ok(used);
            }
            if !privileged && domain.conn.outstanding() >= limit {
                self.stats.throttled += 1;
                return Ok(used);
            }
            let (n, request) = match domain.conn.take(&bytes[used..]) {
                Ok(taken) => taken,
                Err(err) => {
                    self.stats.broken += 1;
                    return Err(err);
                }
            };
            used += n;
            if let Some(request) = request {
                self.process(domid, &request, host);
            }
        }
    }

    /// How many request bytes `domid`'s connection takes next: 0 while it
    /// has its outstanding quota of replies not yet taken, or is broken or
    /// unknown. A transport reads at most this many from the domain's ring
    /// and hands them to [`receive`](Self::receive), which then takes them
    /// all; a throttled domain's requests stay in its ring.
    pub fn wants(&self, domid: u16) -> usize {
        let Some(domain) = self.domains.get(&domid) else {
            return 0;
        };
        if !self.config.is_privileged(domid)
            && domain.conn.outstanding() >= self.config.quotas.outstanding
        {
            return 0;
        }
        domain.conn.wants()
    }

    /// Copy bytes queued for `domid` into `buf`; returns how many.
    pub fn transmit(&mut self, domid: u16, buf: &mut [u8]) -> usize {
        self.domains
            .get_mut(&domid)
            .map_or(0, |d| d.conn.transmit(buf))
    }

    /// Copy bytes queued for `domid` into `buf` without taking them.
    pub fn peek_output(&self, domid: u16, buf: &mut [u8]) -> usize {
        self.domains.get(&domid).map_or(0, |d| d.conn.peek(buf))
    }

    /// Take `n` bytes of `domid`'s output (after a peek).
    pub fn advance_output(&mut self, domid: u16, n: usize) {
        if let Some(d) = self.domains.get_mut(&domid) {
            d.conn.advance(n);
        }
    }

    /// Cut `domid`'s connection for a transport-level violation; it takes
    /// no more requests (its watches and transactions stay until the
    /// domain is released or destroyed).
    pub fn cut(&mut self, domid: u16, err: ConnError) {
        if let Some(d) = self.domains.get_mut(&domid) {
            if d.conn.broken().is_none() {
                self.stats.broken += 1;
            }
            d.conn.cut(err);
        }
    }

    /// Handle one whole request (header and payload) from `domid`.
    pub fn process(&mut self, domid: u16, request: &[u8], host: &mut dyn Host) {
        let Ok(header) = Header::parse(request) else {
            return;
        };
        let payload = request.get(HEADER_LEN..).unwrap_or(&[]);
        let payload = payload.get(..header.len as usize).unwrap_or(payload);
        self.stats.requests += 1;
        self.after = None;
        let result = self.dispatch(domid, &header, payload, host);
        let reply = match result {
            Ok((kind, body)) if body.len() <= XENSTORE_PAYLOAD_MAX => {
                message(kind, header.req_id, header.tx_id, &[&body])
            }
            Ok(_) => self.error(&header, Errno::E2big),
            Err(e) => self.error(&header, e),
        };
        let after = self.after.take();
        if let Some(domain) = self.domains.get_mut(&domid) {
            domain.conn.queue_reply(reply);
            if let Some(ev) = after {
                Self::queue_event(&mut self.stats, &self.config, domid, &mut domain.conn, ev);
            }
            self.notify.insert(domid);
        }
    }

    fn error(&mut self, header: &Header, e: Errno) -> Vec<u8> {
        self.stats.errors += 1;
        let mut name = Vec::from(e.name().as_bytes());
        name.push(0);
        message(XsdSockmsgType::Error, header.req_id, header.tx_id, &[&name])
    }

    fn queue_event(
        stats: &mut Stats,
        config: &Config,
        domid: u16,
        conn: &mut Connection,
        ev: Vec<u8>,
    ) {
        let limit = if config.is_privileged(domid) {
            usize::MAX
        } else {
            config.quotas.output_bytes as usize
        };
        if conn.queue_event(ev, limit) {
            stats.events += 1;
        } else {
            stats.events_dropped += 1;
        }
    }

    fn dispatch(
        &mut self,
        domid: u16,
        header: &Header,
        payload: &[u8],
        host: &mut dyn Host,
    ) -> Result<(XsdSockmsgType, Vec<u8>), Errno> {
        use XsdSockmsgType as T;
        let kind = XsdSockmsgType::from_u32(header.kind)
            .filter(|k| !matches!(k, T::WatchEvent | T::Error | T::Invalid))
            .ok_or(Errno::Enosys)?;
        let who = self.who(domid);
        if privileged_only(kind) && !who.privileged {
            return Err(Errno::Eacces);
        }
        let tx_id = if ignores_tx(kind) { 0 } else { header.tx_id };
        let domain = self.domains.get(&domid).ok_or(Errno::Einval)?;
        if tx_id != 0 && !domain.transactions.contains_key(&tx_id) {
            return Err(Errno::Enoent);
        }
        let request = Request::parse(kind, payload)?;
        let path_max = self.config.quotas.path_max as usize;
        let canon = |raw: &[u8], special: bool| canonicalize(raw, domid, special, path_max);
        let body = match request {
            Request::Read(p) => {
                let path = canon(p, false)?.path;
                self.run(domid, tx_id, |view, who, _| {
                    check_access(view, who, &path, Access::READ)?;
                    Ok(Outcome::reply(
                        view.peek(&path)
                            .map(|n| n.value.clone())
                            .unwrap_or_default(),
                    ))
                })?
            }
            Request::Directory(p) => {
                let path = canon(p, false)?.path;
                self.run(domid, tx_id, |view, who, _| {
                    check_access(view, who, &path, Access::READ)?;
                    Ok(Outcome::reply(
                        view.peek(&path)
                            .map(Node::children_wire)
                            .unwrap_or_default(),
                    ))
                })?
            }
            Request::DirectoryPart { path, offset } => {
                let path = canon(path, false)?.path;
                self.run(domid, tx_id, |view, who, _| {
                    check_access(view, who, &path, Access::READ)?;
                    let node = view.peek(&path).ok_or(Errno::Eio)?;
                    Ok(Outcome::reply(op_directory_part(node, offset)))
                })?
            }
            Request::Write { path, value } => {
                let path = canon(path, false)?.path;
                self.run(domid, tx_id, |view, who, config| {
                    op_write(view, who, config, &path, value)
                })?
            }
            Request::Mkdir(p) => {
                let path = canon(p, false)?.path;
                self.run(domid, tx_id, |view, who, config| {
                    op_mkdir(view, who, config, &path)
                })?
            }
            Request::Rm(p) => {
                let path = canon(p, false)?.path;
                self.run(domid, tx_id, |view, who, _| op_rm(view, who, &path))?
            }
            Request::GetPerms(p) => {
                let path = canon(p, true)?.path;
                if path.starts_with('@') {
                    let perms = self.specials.get(&path).ok_or(Errno::Enoent)?;
                    if !perms.access_for(&who).contains(Access::READ) {
                        return Err(Errno::Eacces);
                    }
                    perms.to_wire()
                } else {
                    self.run(domid, tx_id, |view, who, _| {
                        check_access(view, who, &path, Access::READ)?;
                        Ok(Outcome::reply(
                            view.peek(&path)
                                .map(|n| n.perms.to_wire())
                                .unwrap_or_default(),
                        ))
                    })?
                }
            }
            Request::SetPerms { path, perms } => {
                if !who.privileged && perms.len() > self.config.quotas.perms as usize {
                    return Err(Errno::Enospc);
                }
                let path = canon(path, true)?.path;
                if path.starts_with('@') {
                    self.set_special_perms(&who, &path, perms)?
                } else {
                    self.run(domid, tx_id, |view, who, config| {
                        op_set_perms(view, who, config, &path, &perms)
                    })?
                }
            }
            Request::Watch { path, token } => self.watch(domid, &who, canon(path, true)?, token)?,
            Request::Unwatch { path, token } => {
                let path = canon(path, true)?.path;
                let domain = self.domains.get_mut(&domid).ok_or(Errno::Einval)?;
                let at = domain
                    .watches
                    .iter()
                    .position(|w| w.path == path && w.token == token)
                    .ok_or(Errno::Enoent)?;
                domain.watches.remove(at);
                OK.to_vec()
            }
            Request::TransactionStart => self.transaction_start(domid, &who, tx_id)?,
            Request::TransactionEnd { commit } => {
                self.transaction_end(domid, &who, tx_id, commit)?
            }
            Request::Introduce {
                domid: d,
                gfn,
                port,
            } => self.introduce(d, gfn, port, host)?,
            Request::Release(d) => {
                self.check_releasable(d)?;
                self.remove_domain(d, host);
                OK.to_vec()
            }
            Request::Resume(d) => {
                self.check_releasable(d)?;
                if let Some(domain) = self.domains.get_mut(&d) {
                    domain.shutdown = false;
                }
                OK.to_vec()
            }
            Request::GetDomainPath(d) => {
                let mut path = Vec::from(domain_path(d).as_bytes());
                path.push(0);
                path
            }
            Request::IsDomainIntroduced(d) => {
                let yes = d == DOMID_SELF || self.domains.contains_key(&d);
                Vec::from(if yes { &b"T\0"[..] } else { &b"F\0"[..] })
            }
            Request::SetTarget { domid: d, target } => {
                if !self.domains.contains_key(&target) {
                    return Err(Errno::Enoent);
                }
                self.domains.get_mut(&d).ok_or(Errno::Enoent)?.target = Some(target);
                OK.to_vec()
            }
            Request::ResetWatches => {
                let domain = self.domains.get_mut(&domid).ok_or(Errno::Einval)?;
                domain.watches.clear();
                domain.transactions.clear();
                OK.to_vec()
            }
            Request::Control { command, args } => self.control(command, &args, host)?,
        };
        Ok((kind, body))
    }

    /// Run a store operation for `domid`, in transaction `tx_id` (0: none):
    /// its changes go to the transaction, or to the store with their
    /// events fired.
    fn run(
        &mut self,
        domid: u16,
        tx_id: u32,
        op: impl FnOnce(&mut View<'_>, &Who, &Config) -> Result<Outcome, Errno>,
    ) -> Result<Vec<u8>, Errno> {
        let who = self.who(domid);
        let mut tx = match tx_id {
            0 => None,
            id => Some(
                self.domains
                    .get_mut(&domid)
                    .and_then(|d| d.transactions.remove(&id))
                    .ok_or(Errno::Enoent)?,
            ),
        };
        let limit = if who.privileged {
            usize::MAX
        } else {
            self.config.quotas.transaction_nodes as usize
        };
        let base = self.usage(domid);
        let memory = u64::from(self.config.quotas.memory);
        let (result, direct) = {
            let mut view = View::new(&self.store, tx.as_mut(), limit);
            match op(&mut view, &who, &self.config) {
                Ok(outcome) => {
                    let delta = memory_delta(&view, domid, &outcome.changes);
                    if !who.privileged
                        && delta > 0
                        && base + view.tx_bytes() + delta as u64 > memory
                    {
                        (Err(Errno::Enomem), None)
                    } else {
                        let direct = view.apply(outcome.changes, outcome.events);
                        (Ok(outcome.reply), direct)
                    }
                }
                Err(e) => (Err(e), None),
            }
        };
        if let Some(tx) = tx {
            if let Some(domain) = self.domains.get_mut(&domid) {
                domain.transactions.insert(tx_id, tx);
            }
        }
        if let Some((changes, events)) = direct {
            for change in changes {
                self.store.set(&change.path, change.node);
            }
            self.fire(&events);
        }
        result
    }

    /// What `domid` makes the server hold against its memory quota
    /// (without a transaction taken out of its map for a request).
    pub fn usage(&self, domid: u16) -> u64 {
        let mut total = self.store.owned_bytes(domid);
        if let Some(d) = self.domains.get(&domid) {
            total += d.transactions.values().map(Transaction::bytes).sum::<u64>();
            total += d
                .watches
                .iter()
                .map(|w| (w.path.len() + w.token.len()) as u64)
                .sum::<u64>();
        }
        total
    }

    fn set_special_perms(&mut self, who: &Who, path: &str, perms: Perms) -> Result<Vec<u8>, Errno> {
        let current = self.specials.get_mut(path).ok_or(Errno::Enoent)?;
        if !current
            .access_for(who)
            .contains(Access::WRITE.union(Access::OWNER))
        {
            return Err(Errno::Eacces);
        }
        if !who.privileged && perms.owner() != current.owner() {
            return Err(Errno::Eperm);
        }
        let old = core::mem::replace(current, perms.clone());
        self.fire(&[event(path, false, vec![old, perms])]);
        Ok(OK.to_vec())
    }

    fn watch(
        &mut self,
        domid: u16,
        who: &Who,
        path: crate::path::Resolved,
        token: &[u8],
    ) -> Result<Vec<u8>, Errno> {
        let limit = self.config.quotas.watches as usize;
        let domain = self.domains.get_mut(&domid).ok_or(Errno::Einval)?;
        if domain
            .watches
            .iter()
            .any(|w| w.path == path.path && w.token == token)
        {
            return Err(Errno::Eexist);
        }
        if !who.privileged && domain.watches.len() >= limit {
            return Err(Errno::Enospc);
        }
        let cost = (path.path.len() + token.len()) as u64;
        if !who.privileged && self.usage(domid) + cost > u64::from(self.config.quotas.memory) {
            return Err(Errno::Enomem);
        }
        let domain = self.domains.get_mut(&domid).ok_or(Errno::Einval)?;
        let shown = path.path.get(path.prefix_len..).unwrap_or(&path.path);
        let body = [shown.as_bytes(), b"\0", token, b"\0"].concat();
        if body.len() <= XENSTORE_PAYLOAD_MAX {
            self.after = Some(message(XsdSockmsgType::WatchEvent, 0, 0, &[&body]));
        }
        domain.watches.push(Watch {
            path: path.path,
            token: token.to_vec(),
            prefix_len: path.prefix_len,
        });
        Ok(OK.to_vec())
    }

    fn transaction_start(&mut self, domid: u16, who: &Who, tx_id: u32) -> Result<Vec<u8>, Errno> {
        if tx_id != 0 {
            return Err(Errno::Ebusy);
        }
        let limit = self.config.quotas.transactions as usize;
        let domain = self.domains.get_mut(&domid).ok_or(Errno::Einval)?;
        if !who.privileged && domain.transactions.len() >= limit {
            return Err(Errno::Enospc);
        }
        let mut id = domain.next_tx;
        while id == 0 || domain.transactions.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        domain.next_tx = id.wrapping_add(1);
        domain.transactions.insert(id, Transaction::default());
        let mut body = Vec::from(format!("{id}").as_bytes());
        body.push(0);
        Ok(body)
    }

    fn transaction_end(
        &mut self,
        domid: u16,
        who: &Who,
        tx_id: u32,
        commit_it: bool,
    ) -> Result<Vec<u8>, Errno> {
        if tx_id == 0 {
            return Err(Errno::Enoent);
        }
        let tx = self
            .domains
            .get_mut(&domid)
            .and_then(|d| d.transactions.remove(&tx_id))
            .ok_or(Errno::Enoent)?;
        if !commit_it {
            return Ok(OK.to_vec());
        }
        if !who.privileged && tx.created() {
            let after = i64::from(self.store.owned(domid)) + tx.owned_delta(&self.store, domid);
            if after > i64::from(self.config.quotas.nodes) {
                return Err(Errno::Enospc);
            }
        }
        let events = commit(&mut self.store, tx)?;
        self.fire(&events);
        Ok(OK.to_vec())
    }

    fn introduce(
        &mut self,
        domid: u16,
        gfn: u64,
        port: u32,
        host: &mut dyn Host,
    ) -> Result<Vec<u8>, Errno> {
        if domid == self.config.store_domid || domid == DOMID_SELF {
            return Err(Errno::Einval);
        }
        host.introduce(domid, gfn, port)?;
        if let Some(domain) = self.domains.get_mut(&domid) {
            // Introduced again (after a resume): a fresh connection.
            domain.conn.reset();
            domain.watches.clear();
            domain.transactions.clear();
        } else {
            self.domains.insert(domid, Domain::default());
            if !self.config.is_privileged(domid) {
                self.fire_special(INTRODUCE_DOMAIN);
            }
        }
        Ok(OK.to_vec())
    }

    fn check_releasable(&self, domid: u16) -> Result<(), Errno> {
        if self.config.is_privileged(domid) || domid == self.config.store_domid {
            return Err(Errno::Einval);
        }
        if !self.domains.contains_key(&domid) {
            return Err(Errno::Enoent);
        }
        Ok(())
    }

    fn remove_domain(&mut self, domid: u16, host: &mut dyn Host) {
        let was = self.domains.remove(&domid).is_some();
        if was {
            host.release(domid);
        }
        self.notify.remove(&domid);
        self.forget_domain(domid);
        if was {
            self.fire_special(RELEASE_DOMAIN);
        }
    }

    /// A domain is gone for good: nothing keeps rights for its id.
    fn forget_domain(&mut self, domid: u16) {
        self.store.forget_domain(domid, 0);
        for perms in self.specials.values_mut() {
            perms.forget_domain(domid, 0);
        }
        for domain in self.domains.values_mut() {
            if domain.target == Some(domid) {
                domain.target = None;
            }
            for tx in domain.transactions.values_mut() {
                tx.forget_domain(domid, 0);
            }
        }
    }

    /// The platform saw `domid` shut down (or crash): `@releaseDomain`
    /// fires once, until [`XS_RESUME`](XsdSockmsgType::Resume).
    pub fn domain_shutdown(&mut self, domid: u16) {
        if let Some(domain) = self.domains.get_mut(&domid) {
            if !domain.shutdown {
                domain.shutdown = true;
                self.fire_special(RELEASE_DOMAIN);
            }
        }
    }

    /// The platform saw `domid` destroyed: as `XS_RELEASE`, and its watches
    /// and transactions are gone.
    pub fn domain_destroyed(&mut self, domid: u16, host: &mut dyn Host) {
        if self.config.is_privileged(domid) {
            return;
        }
        self.remove_domain(domid, host);
    }

    fn fire_special(&mut self, name: &str) {
        let readers = self.specials.get(name).cloned().into_iter().collect();
        self.fire(&[event(name, false, readers)]);
    }

    fn fire(&mut self, events: &[Event]) {
        for ev in events {
            for (&domid, domain) in self.domains.iter_mut() {
                if domain.watches.is_empty() {
                    continue;
                }
                let who = Who {
                    domid,
                    target: domain.target,
                    privileged: self.config.is_privileged(domid),
                };
                if !ev
                    .readers
                    .iter()
                    .any(|p| p.access_for(&who).contains(Access::READ))
                {
                    continue;
                }
                for w in &domain.watches {
                    let hit = if ev.exact {
                        ev.path == w.path
                    } else {
                        is_child(&ev.path, &w.path)
                    };
                    if !hit {
                        continue;
                    }
                    let shown = ev.path.get(w.prefix_len..).unwrap_or(&ev.path);
                    let body = [shown.as_bytes(), b"\0", &w.token, b"\0"].concat();
                    if body.len() > XENSTORE_PAYLOAD_MAX {
                        self.stats.events_dropped += 1;
                        continue;
                    }
                    let msg = message(XsdSockmsgType::WatchEvent, 0, 0, &[&body]);
                    Self::queue_event(&mut self.stats, &self.config, domid, &mut domain.conn, msg);
                    self.notify.insert(domid);
                }
            }
        }
    }

    fn control(
        &mut self,
        command: &[u8],
        args: &[&[u8]],
        host: &mut dyn Host,
    ) -> Result<Vec<u8>, Errno> {
        let mut out = match command {
            b"check" => {
                self.check().map_err(|_| Errno::Eio)?;
                Vec::from(&b"OK"[..])
            }
            b"log" => Vec::from(&b"OK"[..]),
            b"print" => {
                let line = args.first().copied().unwrap_or_default();
                host.log(core::str::from_utf8(line).unwrap_or("(not UTF-8)"));
                Vec::from(&b"OK"[..])
            }
            b"help" => Vec::from(&b"check\nhelp\nlog\nprint\nquota\n"[..]),
            b"quota" => match args {
                [] => {
                    let mut list = String::new();
                    for name in crate::config::Quotas::NAMES {
                        let value = self.config.quotas.get(name.as_bytes()).unwrap_or(0);
                        list.push_str(&format!("{name} {value}\n"));
                    }
                    list.into_bytes()
                }
                [name] => {
                    let value = self.config.quotas.get(name).ok_or(Errno::Einval)?;
                    Vec::from(format!("{value}").as_bytes())
                }
                [name, value] => {
                    let value = crate::path::parse_decimal(value)
                        .and_then(|v| u32::try_from(v).ok())
                        .ok_or(Errno::Einval)?;
                    self.config.quotas.set(name, value)?;
                    Vec::from(&b"OK"[..])
                }
                _ => return Err(Errno::Einval),
            },
            _ => return Err(Errno::Einval),
        };
        out.push(0);
        Ok(out)
    }

    /// Check the server's invariants: the tree (see [`Store::check`]), and
    /// for every unprivileged domain its watches, transactions and
    /// outstanding replies within quota.
    pub fn check(&self) -> Result<(), String> {
        self.store.check()?;
        let q = &self.config.quotas;
        for (&domid, d) in &self.domains {
            if self.config.is_privileged(domid) {
                continue;
            }
            if d.watches.len() > q.watches as usize
                || d.transactions.len() > q.transactions as usize
                || d.conn.outstanding() > q.outstanding
            {
                return Err(format!("dom{domid} over quota"));
            }
            if d.transactions
                .values()
                .any(|t| !who_ok(t, q.transaction_nodes))
            {
                return Err(format!("dom{domid}: transaction over its node quota"));
            }
        }
        Ok(())
    }
}

fn who_ok(tx: &Transaction, limit: u32) -> bool {
    tx.accessed() <= limit as usize
}
