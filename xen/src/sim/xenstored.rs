//! A simulated xenstored (moved here from `xen/tests/common` so other
//! crates' tests can use it): an in-memory tree without permissions,
//! transactions (which can be forced to conflict), watches that fire on
//! changes, speaking the real wire format; plus transports that connect the
//! real client to it, directly or through a real shared page.

extern crate std;

use crate::abi::xs_wire::{XenstoreDomainInterface, XsdSockmsgType, XENSTORE_RING_SIZE};
use crate::ring::bytes::{ByteRingReader, ByteRingWriter};
use crate::xenstore::wire::{Message, HEADER_LEN};
use crate::xenstore::{XsError, XsEvents, XsTransport};
use core::ptr::addr_of_mut;
use std::boxed::Box;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::format;
use std::rc::Rc;
use std::string::{String, ToString};
use std::task::{Context, Poll};
use std::vec::Vec;

type Tree = BTreeMap<String, Vec<u8>>;

struct SimTransaction {
    tree: Tree,
    base_generation: u64,
    changed: Vec<String>,
}

struct Watch {
    /// As registered (possibly relative): events report paths in the same
    /// form.
    path: String,
    token: String,
    /// The connection that registered it (0: the default one).
    conn: u32,
}

/// A further client connection ([`Xenstored::connect`]): another domain
/// talking to the same daemon, with its own buffers, watches and home.
struct Connection {
    domid: u16,
    input: Vec<u8>,
    output: VecDeque<u8>,
}

/// The simulated daemon.
pub struct Xenstored {
    pub domid: u16,
    tree: Tree,
    generation: u64,
    transactions: HashMap<u32, SimTransaction>,
    next_tx: u32,
    watches: Vec<Watch>,
    input: Vec<u8>,
    output: VecDeque<u8>,
    /// Commits still to be answered with EAGAIN whatever happened.
    pub force_conflicts: u32,
    /// Added to every reply's request id (to test mismatches).
    pub reply_id_offset: u32,
    /// Every request seen: (type, req_id, tx_id).
    pub requests: Vec<(u32, u32, u32)>,
    pub commits: u32,
    /// Changes another domain will make, one per [`tick`](Self::tick).
    pub scheduled: VecDeque<(String, Vec<u8>)>,
    /// The first event of a new watch, sent after the reply.
    deferred_event: Option<Vec<u8>>,
    /// Connections beyond the default one (number 0), by number.
    conns: BTreeMap<u32, Connection>,
    /// The connection whose request is being handled.
    current: u32,
    /// Paths whose reads and listings answer `EACCES` (see
    /// [`Xenstored::hide`]).
    hidden: Vec<String>,
}

fn parent(path: &str) -> Option<&str> {
    match path.rfind('/') {
        Some(0) if path.len() > 1 => Some("/"),
        Some(0) | None => None,
        Some(at) => Some(&path[..at]),
    }
}

fn is_under(path: &str, top: &str) -> bool {
    path == top || top == "/" || path.starts_with(&format!("{top}/"))
}

fn create_with_parents(tree: &mut Tree, path: &str) {
    let mut p = Some(path);
    while let Some(node) = p {
        tree.entry(node.to_string()).or_default();
        p = parent(node);
    }
}

impl Xenstored {
    pub fn new(domid: u16) -> Self {
        let mut tree = Tree::new();
        tree.insert("/".into(), Vec::new());
        let mut d = Self {
            domid,
            tree,
            generation: 0,
            transactions: HashMap::new(),
            next_tx: 1,
            watches: Vec::new(),
            input: Vec::new(),
            output: VecDeque::new(),
            force_conflicts: 0,
            reply_id_offset: 0,
            requests: Vec::new(),
            commits: 0,
            deferred_event: None,
            scheduled: VecDeque::new(),
            conns: BTreeMap::new(),
            current: 0,
            hidden: Vec::new(),
        };
        let home = d.home();
        d.set(&format!("{home}/domid"), domid.to_string().as_bytes());
        d.output.clear();
        d
    }

    /// Reads and listings of `prefix` and below answer `EACCES` to every
    /// domain but dom0 until [`unhide`](Self::unhide): what a domain sees
    /// of a dead domain's directory (C xenstored checks the nearest
    /// existing ancestor, which the reader may not read; dom0 is
    /// privileged).
    pub fn hide(&mut self, prefix: &str) {
        self.hidden.push(prefix.to_string());
    }

    /// Undo every [`hide`](Self::hide).
    pub fn unhide(&mut self) {
        self.hidden.clear();
    }

    fn is_hidden(&self, path: &str) -> bool {
        self.conn_domid(self.current) != 0 && self.hidden.iter().any(|h| is_under(path, h))
    }

    pub fn home(&self) -> String {
        format!("/local/domain/{}", self.domid)
    }

    /// Open another connection, for domain `domid` (relative paths resolve
    /// under its home); talk over it with [`SimTransport::connection`].
    /// The default connection is number 0, for [`domid`](Self::domid).
    pub fn connect(&mut self, domid: u16) -> u32 {
        let conn = self.conns.keys().next_back().map_or(1, |last| last + 1);
        self.conns.insert(
            conn,
            Connection {
                domid,
                input: Vec::new(),
                output: VecDeque::new(),
            },
        );
        let node = format!("/local/domain/{domid}/domid");
        create_with_parents(&mut self.tree, &node);
        self.tree.insert(node, domid.to_string().into_bytes());
        conn
    }

    fn conn_domid(&self, conn: u32) -> u16 {
        self.conns.get(&conn).map_or(self.domid, |c| c.domid)
    }

    fn conn_home(&self) -> String {
        format!("/local/domain/{}", self.conn_domid(self.current))
    }

    fn output_of(&mut self, conn: u32) -> &mut VecDeque<u8> {
        match self.conns.get_mut(&conn) {
            Some(c) => &mut c.output,
            None => &mut self.output,
        }
    }

    fn resolve(&self, path: &str) -> String {
        if path.starts_with('/') {
            path.to_string()
        } else {
            format!("{}/{}", self.conn_home(), path)
        }
    }

    /// Another domain (or the toolstack) writes a node: fires watches.
    pub fn set(&mut self, path: &str, value: &[u8]) {
        let abs = self.resolve(path);
        create_with_parents(&mut self.tree, &abs);
        self.tree.insert(abs.clone(), value.to_vec());
        self.generation += 1;
        self.fire(&abs);
    }

    /// The toolstack removes a subtree (say, a destroyed domain's home):
    /// fires watches.
    pub fn remove(&mut self, path: &str) {
        let abs = self.resolve(path);
        self.tree.retain(|k, _| !is_under(k, &abs));
        self.generation += 1;
        self.fire(&abs);
    }

    /// Time passes while the client waits: apply one scheduled change.
    pub fn tick(&mut self) {
        if let Some((path, value)) = self.scheduled.pop_front() {
            self.set(&path, &value);
        }
    }

    /// A node's value, as the toolstack would see it.
    pub fn get(&self, path: &str) -> Option<Vec<u8>> {
        self.tree.get(&self.resolve(path)).cloned()
    }

    pub fn watch_count(&self) -> usize {
        self.watches.len()
    }

    /// The tokens of every registered watch, on all connections.
    pub fn watch_tokens(&self) -> Vec<String> {
        self.watches.iter().map(|w| w.token.clone()).collect()
    }

    /// Bytes the daemon has queued for the client.
    pub fn pending_output(&self) -> usize {
        self.output.len()
    }

    /// Queue raw bytes for the client (to test garbage from the daemon).
    pub fn inject(&mut self, bytes: &[u8]) {
        self.output.extend(bytes)
    }

    fn emit(&mut self, kind: u32, req_id: u32, tx_id: u32, payload: &[u8]) {
        self.emit_to(self.current, kind, req_id, tx_id, payload)
    }

    fn emit_to(&mut self, conn: u32, kind: u32, req_id: u32, tx_id: u32, payload: &[u8]) {
        let mut header = [0u8; HEADER_LEN];
        for (i, v) in [kind, req_id, tx_id, payload.len() as u32]
            .into_iter()
            .enumerate()
        {
            header[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes());
        }
        let out = self.output_of(conn);
        out.extend(header);
        out.extend(payload);
    }

    fn fire(&mut self, changed_abs: &str) {
        let mut events = Vec::new();
        for w in &self.watches {
            let home = format!("/local/domain/{}/", self.conn_domid(w.conn));
            let watched = if w.path.starts_with('/') {
                w.path.clone()
            } else {
                format!("{home}{}", w.path)
            };
            if is_under(changed_abs, &watched) || is_under(&watched, changed_abs) {
                let reported = if w.path.starts_with('/') {
                    changed_abs.to_string()
                } else {
                    changed_abs
                        .strip_prefix(&home)
                        .unwrap_or(changed_abs)
                        .to_string()
                };
                events.push((w.conn, format!("{reported}\0{}\0", w.token)));
            }
        }
        for (conn, e) in events {
            self.emit_to(conn, XsdSockmsgType::WatchEvent as u32, 0, 0, e.as_bytes());
        }
    }

    /// Bytes from the client: process every whole message.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.feed_from(0, bytes)
    }

    /// Bytes from connection `conn` (see [`connect`](Self::connect)).
    pub fn feed_from(&mut self, conn: u32, bytes: &[u8]) {
        let conn = if self.conns.contains_key(&conn) {
            conn
        } else {
            0
        };
        self.current = conn;
        match self.conns.get_mut(&conn) {
            Some(c) => c.input.extend_from_slice(bytes),
            None => self.input.extend_from_slice(bytes),
        }
        loop {
            let input = match self.conns.get_mut(&conn) {
                Some(c) => &mut c.input,
                None => &mut self.input,
            };
            let Ok(m) = Message::new_checked(&input[..]) else {
                self.current = 0;
                return;
            };
            let (kind, req_id, tx_id) = (m.raw_type(), m.req_id(), m.tx_id());
            let payload = m.payload().to_vec();
            let total = m.total_len();
            input.drain(..total);
            self.requests.push((kind, req_id, tx_id));
            let reply_id = req_id.wrapping_add(self.reply_id_offset);
            match self.handle(kind, tx_id, &payload) {
                Ok(body) => self.emit(kind, reply_id, tx_id, &body),
                Err(name) => {
                    let body = format!("{name}\0");
                    self.emit(
                        XsdSockmsgType::Error as u32,
                        reply_id,
                        tx_id,
                        body.as_bytes(),
                    )
                }
            }
            if let Some(event) = self.deferred_event.take() {
                self.emit(XsdSockmsgType::WatchEvent as u32, 0, 0, &event);
            }
        }
    }

    /// Up to `max` bytes for the client.
    pub fn take_output(&mut self, max: usize) -> Vec<u8> {
        self.take_output_from(0, max)
    }

    /// Up to `max` bytes of replies and events for connection `conn`.
    pub fn take_output_from(&mut self, conn: u32, max: usize) -> Vec<u8> {
        let out = self.output_of(conn);
        let n = max.min(out.len());
        out.drain(..n).collect()
    }

    fn tree_for(&mut self, tx_id: u32) -> Result<&mut Tree, &'static str> {
        if tx_id == 0 {
            Ok(&mut self.tree)
        } else {
            self.transactions
                .get_mut(&tx_id)
                .map(|t| &mut t.tree)
                .ok_or("ENOENT")
        }
    }

    /// After a change outside a transaction: bump the generation and fire;
    /// inside one: remember it for the commit.
    fn changed(&mut self, tx_id: u32, abs: &str) {
        if tx_id == 0 {
            self.generation += 1;
            self.fire(abs);
        } else if let Some(t) = self.transactions.get_mut(&tx_id) {
            t.changed.push(abs.to_string());
        }
    }

    fn handle(&mut self, kind: u32, tx_id: u32, payload: &[u8]) -> Result<Vec<u8>, &'static str> {
        let args: Vec<&[u8]> = payload.split(|b| *b == 0).collect();
        let arg = |i: usize| -> Result<String, &'static str> {
            let raw = args.get(i).ok_or("EINVAL")?;
            String::from_utf8(raw.to_vec()).map_err(|_| "EINVAL")
        };
        let ok = b"OK\0".to_vec();
        let Some(kind) = XsdSockmsgType::from_u32(kind) else {
            return Err("EINVAL");
        };
        match kind {
            XsdSockmsgType::Read => {
                let path = self.resolve(&arg(0)?);
                if self.is_hidden(&path) {
                    return Err("EACCES");
                }
                self.tree_for(tx_id)?.get(&path).cloned().ok_or("ENOENT")
            }
            XsdSockmsgType::Write => {
                let split = payload.iter().position(|b| *b == 0).ok_or("EINVAL")?;
                let path = std::str::from_utf8(&payload[..split]).map_err(|_| "EINVAL")?;
                let path = self.resolve(path);
                let value = payload[split + 1..].to_vec();
                let tree = self.tree_for(tx_id)?;
                create_with_parents(tree, &path);
                tree.insert(path.clone(), value);
                self.changed(tx_id, &path);
                Ok(ok)
            }
            XsdSockmsgType::Mkdir => {
                let path = self.resolve(&arg(0)?);
                let tree = self.tree_for(tx_id)?;
                if !tree.contains_key(&path) {
                    create_with_parents(tree, &path);
                    self.changed(tx_id, &path);
                }
                Ok(ok)
            }
            XsdSockmsgType::Rm => {
                let path = self.resolve(&arg(0)?);
                let tree = self.tree_for(tx_id)?;
                if !tree.contains_key(&path) {
                    return Err("ENOENT");
                }
                tree.retain(|k, _| !is_under(k, &path));
                self.changed(tx_id, &path);
                Ok(ok)
            }
            XsdSockmsgType::Directory => {
                let path = self.resolve(&arg(0)?);
                if self.is_hidden(&path) {
                    return Err("EACCES");
                }
                let tree = self.tree_for(tx_id)?;
                if !tree.contains_key(&path) {
                    return Err("ENOENT");
                }
                let prefix = if path == "/" {
                    "/".to_string()
                } else {
                    format!("{path}/")
                };
                let mut out = Vec::new();
                for k in tree.keys() {
                    if let Some(rest) = k.strip_prefix(&prefix) {
                        if !rest.is_empty() && !rest.contains('/') {
                            out.extend_from_slice(rest.as_bytes());
                            out.push(0);
                        }
                    }
                }
                Ok(out)
            }
            XsdSockmsgType::GetDomainPath => {
                let id: u16 = arg(0)?.parse().map_err(|_| "EINVAL")?;
                Ok(format!("/local/domain/{id}\0").into_bytes())
            }
            XsdSockmsgType::Watch => {
                let (path, token) = (arg(0)?, arg(1)?);
                // As C xenstored: the same path and token twice on one
                // connection is refused.
                let (abs, conn) = (self.resolve(&path), self.current);
                if self
                    .watches
                    .iter()
                    .any(|w| w.conn == conn && w.token == token && self.resolve(&w.path) == abs)
                {
                    return Err("EEXIST");
                }
                self.watches.push(Watch {
                    path: path.clone(),
                    token: token.clone(),
                    conn: self.current,
                });
                // The daemon fires a new watch once, after the reply.
                self.deferred_event = Some(format!("{path}\0{token}\0").into_bytes());
                Ok(ok)
            }
            XsdSockmsgType::Unwatch => {
                let (path, token) = (arg(0)?, arg(1)?);
                let before = self.watches.len();
                let conn = self.current;
                self.watches
                    .retain(|w| !(w.path == path && w.token == token && w.conn == conn));
                if self.watches.len() == before {
                    Err("ENOENT")
                } else {
                    Ok(ok)
                }
            }
            XsdSockmsgType::TransactionStart => {
                let id = self.next_tx;
                self.next_tx += 1;
                self.transactions.insert(
                    id,
                    SimTransaction {
                        tree: self.tree.clone(),
                        base_generation: self.generation,
                        changed: Vec::new(),
                    },
                );
                Ok(format!("{id}\0").into_bytes())
            }
            XsdSockmsgType::TransactionEnd => {
                let commit = match arg(0)?.as_str() {
                    "T" => true,
                    "F" => false,
                    _ => return Err("EINVAL"),
                };
                let t = self.transactions.remove(&tx_id).ok_or("ENOENT")?;
                if !commit {
                    return Ok(ok);
                }
                if self.force_conflicts > 0 {
                    self.force_conflicts -= 1;
                    return Err("EAGAIN");
                }
                if t.base_generation != self.generation {
                    return Err("EAGAIN");
                }
                self.tree = t.tree;
                self.generation += 1;
                self.commits += 1;
                for path in t.changed {
                    self.fire(&path);
                }
                Ok(ok)
            }
            _ => Err("ENOSYS"),
        }
    }
}

/// A transport straight into the simulated daemon, moving at most `chunk`
/// bytes per call (to exercise partial sends and receives) and answering
/// every other `poll_event` with `Pending` (to exercise the wait path).
pub struct SimTransport {
    pub daemon: Rc<RefCell<Xenstored>>,
    pub chunk: usize,
    pub notifies: u64,
    /// If set, at most this many more bytes are delivered to the client.
    pub budget: Option<usize>,
    ready_next: bool,
    /// The daemon connection this transport speaks on (0: the default).
    pub conn: u32,
}

impl SimTransport {
    pub fn new(daemon: Rc<RefCell<Xenstored>>, chunk: usize) -> Self {
        Self {
            daemon,
            chunk,
            notifies: 0,
            budget: None,
            ready_next: false,
            conn: 0,
        }
    }

    /// A transport over a further connection `conn` of the daemon (from
    /// [`Xenstored::connect`]), so several domains' clients can share it.
    pub fn connection(daemon: Rc<RefCell<Xenstored>>, conn: u32, chunk: usize) -> Self {
        Self {
            conn,
            ..Self::new(daemon, chunk)
        }
    }
}

impl XsTransport for SimTransport {
    fn send(&mut self, buf: &[u8]) -> Result<usize, XsError> {
        let n = buf.len().min(self.chunk);
        self.daemon.borrow_mut().feed_from(self.conn, &buf[..n]);
        Ok(n)
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, XsError> {
        let max = buf
            .len()
            .min(self.chunk)
            .min(self.budget.unwrap_or(usize::MAX));
        let bytes = self.daemon.borrow_mut().take_output_from(self.conn, max);
        if let Some(budget) = &mut self.budget {
            *budget -= bytes.len();
        }
        buf[..bytes.len()].copy_from_slice(&bytes);
        Ok(bytes.len())
    }

    fn notify(&mut self) {
        self.notifies += 1;
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.ready_next = !self.ready_next;
        if self.ready_next {
            cx.waker().wake_by_ref();
            Poll::Pending
        } else {
            self.daemon.borrow_mut().tick();
            Poll::Ready(())
        }
    }
}

/// A real xenstore page (heap-allocated) with the simulated daemon on the
/// other side of its rings; the daemon runs whenever the client waits for
/// an event, as the real one runs when the event channel fires.
pub struct PageEvents {
    pub daemon: Rc<RefCell<Xenstored>>,
    requests: ByteRingReader,
    responses: ByteRingWriter,
    pub notifies: u64,
}

/// A heap xenstore page, freed on drop.
pub struct XenstorePage(pub *mut XenstoreDomainInterface);

impl XenstorePage {
    pub fn new() -> Self {
        Self(Box::into_raw(Box::new(XenstoreDomainInterface::zeroed())))
    }
}

impl Default for XenstorePage {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for XenstorePage {
    fn drop(&mut self) {
        // SAFETY: from `Box::into_raw` in `new`, freed once; tests drop the
        // client before the page.
        drop(unsafe { Box::from_raw(self.0) });
    }
}

impl PageEvents {
    /// The daemon's ends of the rings in `page`.
    pub fn new(daemon: Rc<RefCell<Xenstored>>, page: &XenstorePage) -> Self {
        let p = page.0;
        // SAFETY: the page outlives the client in every test, and only raw
        // pointers are used to reach it.
        unsafe {
            Self {
                daemon,
                requests: ByteRingReader::new(
                    addr_of_mut!((*p).req).cast(),
                    XENSTORE_RING_SIZE,
                    addr_of_mut!((*p).req_cons),
                    addr_of_mut!((*p).req_prod),
                ),
                responses: ByteRingWriter::new(
                    addr_of_mut!((*p).rsp).cast(),
                    XENSTORE_RING_SIZE,
                    addr_of_mut!((*p).rsp_cons),
                    addr_of_mut!((*p).rsp_prod),
                ),
                notifies: 0,
            }
        }
    }

    fn pump(&mut self) {
        let mut buf = [0u8; 300];
        loop {
            let n = self.requests.read(&mut buf).expect("client indices");
            if n == 0 {
                break;
            }
            self.daemon.borrow_mut().feed(&buf[..n]);
        }
        let room = self.responses.free().expect("client indices");
        let out = self.daemon.borrow_mut().take_output(room);
        assert_eq!(self.responses.write(&out), Ok(out.len()));
    }
}

impl XsEvents for PageEvents {
    fn notify(&mut self) {
        self.notifies += 1;
    }

    fn poll_event(&mut self, _cx: &mut Context<'_>) -> Poll<()> {
        self.pump();
        Poll::Ready(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xenstore::XenStore;
    use core::future::Future;
    use core::pin::pin;
    use std::task::Waker;

    fn run<F: Future>(f: F) -> F::Output {
        let mut f = pin!(f);
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }

    #[test]
    fn connections_have_their_own_replies_watches_and_home() {
        let d = Rc::new(RefCell::new(Xenstored::new(0)));
        let c1 = d.borrow_mut().connect(1);
        let c2 = d.borrow_mut().connect(2);
        let mut a = XenStore::new(SimTransport::connection(d.clone(), c1, 7));
        let mut b = XenStore::new(SimTransport::connection(d.clone(), c2, 64));
        run(a.write("device/x", b"1")).unwrap();
        assert_eq!(
            d.borrow().get("/local/domain/1/device/x"),
            Some(b"1".to_vec())
        );
        run(b.watch("/local/domain/1/device/x", "tb")).unwrap();
        assert_eq!(run(b.next_watch_event_for("tb")).unwrap().token, "tb");
        // A's write fires B's watch only; A's replies stay A's.
        run(a.write("device/x", b"2")).unwrap();
        assert_eq!(run(a.read("device/x")).unwrap(), b"2");
        let e = run(b.next_watch_event_for("tb")).unwrap();
        assert_eq!(e.path, "/local/domain/1/device/x");
        assert_eq!(run(b.read("domid")).unwrap(), b"2");
        assert_eq!(d.borrow().pending_output(), 0);
        d.borrow_mut().remove("/local/domain/1");
        assert_eq!(d.borrow().get("/local/domain/1/device/x"), None);
        assert!(run(b.next_watch_event_for("tb")).is_ok());
    }
}
