//! The VM side of the QubesDB link, sans I/O: a local mirror of dom0's
//! database kept in step with the messages on the vchan, local watches,
//! and writes back to dom0.
//!
//! What crosses the vchan (qubes-core-qubesdb `daemon/db-cmds.c`,
//! `daemon/db-daemon.c`):
//! - we start (and restart after a reconnection) with `QDB_CMD_MULTIREAD`
//!   of the empty path; dom0 answers every entry as `QDB_RESP_MULTIREAD`
//!   (path and value) and ends with one whose path is empty;
//! - dom0 then sends `QDB_CMD_WRITE` and `QDB_CMD_RM` (a path ending in `/`
//!   removes the directory) as its database changes, and we answer each
//!   with `QDB_RESP_OK` (or `QDB_RESP_ERROR`) carrying the same path;
//! - our own writes and removals go to dom0 the same way and dom0 answers
//!   `QDB_RESP_OK`/`QDB_RESP_ERROR`.
//!
//! Read, list and watch are local: they serve from the mirror (the VM's
//! daemon answers its local clients the same way). A watch on a path fires
//! when that path is written or removed; a watch on a path ending in `/`
//! fires for everything under it.
//!
//! Errors: a header or value that breaks the format, or a multiread answer
//! nobody asked for, breaks the link ([`QdbError`], sticky until
//! [`Client::start`]): the daemon treats them as fatal too. A bad command
//! from dom0 whose framing is intact (a write with a NUL in its value, a
//! write to a directory path) is answered with `QDB_RESP_ERROR` and counted.

use super::wire::{self, Header, MsgType, WireError, HEADER_LEN};
use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::{String, ToString};
use alloc::vec::Vec;

/// Identifies a local watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WatchId(pub u32);

/// Something the service may want to act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The full sync after (re)connecting finished; the mirror is dom0's
    /// database.
    Synced,
    /// `path` was written or removed and the watch `id` covers it.
    Watch {
        /// The watch.
        id: WatchId,
        /// The path written or removed (a directory ends in `/`).
        path: String,
    },
    /// dom0 answered `QDB_RESP_ERROR` to one of our writes or removals.
    Refused {
        /// The path of the refused command.
        path: String,
    },
}

/// Why the link broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QdbError {
    /// A malformed message.
    Wire(WireError),
    /// A multiread answer while no sync was asked for.
    SpuriousMultiread,
    /// A multiread entry whose path is not an entry (no leading `/`, or a
    /// trailing one).
    BadEntry,
    /// `QDB_RESP_ERROR` carrying data.
    ErrorWithData,
}

impl From<WireError> for QdbError {
    fn from(e: WireError) -> Self {
        QdbError::Wire(e)
    }
}

/// Counters of things dom0 did that we answered but did not expect.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Commands from dom0 answered with `QDB_RESP_ERROR`.
    pub refused: u64,
    /// Removals from dom0 of paths we did not have (answered OK; the
    /// upstream VM daemon answers `QDB_RESP_ERROR_NOENT`, which dom0's
    /// daemon treats as fatal).
    pub desync: u64,
    /// `QDB_RESP_ERROR` answers from dom0 to our commands.
    pub errors_from_dom0: u64,
    /// `QDB_RESP_OK` answers received.
    pub acks: u64,
}

/// The client: mirror, watches, parser and output queue.
#[derive(Default)]
pub struct Client {
    db: BTreeMap<String, Vec<u8>>,
    /// The entries of a sync in progress.
    staging: Option<BTreeMap<String, Vec<u8>>>,
    synced: bool,
    watches: Vec<(WatchId, String)>,
    next_watch: u32,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    events: VecDeque<Event>,
    broken: Option<QdbError>,
    stats: Stats,
}

/// Whether `path` names an entry: leading `/`, no trailing `/`.
fn is_entry(path: &str) -> bool {
    path.starts_with('/') && !path.ends_with('/')
}

/// Whether a change of `changed` concerns a watch on `watched`: the
/// daemon's rule (exact, or prefix for a watch ending in `/`), and also a
/// directory removal above the watched path.
fn covers(watched: &str, changed: &str) -> bool {
    if watched.ends_with('/') {
        if changed.starts_with(watched) {
            return true;
        }
    } else if watched == changed {
        return true;
    }
    changed.ends_with('/') && watched.starts_with(changed)
}

impl Client {
    /// A client with an empty mirror; call [`Client::start`] once the vchan
    /// is connected.
    pub fn new() -> Self {
        Self::default()
    }

    /// Begin (or begin again after a reconnection) a session: forget any
    /// partial input and output and any error, and queue the full sync
    /// request. The mirror stays as it was until the sync finishes; then
    /// every entry that changed, appeared or went fires its watches.
    pub fn start(&mut self) {
        self.inbuf.clear();
        self.out.clear();
        self.broken = None;
        self.synced = false;
        self.staging = Some(BTreeMap::new());
        // The empty path and no data: always encodable.
        if let Ok(h) = wire::encode(MsgType::Multiread, "", 0) {
            self.out.extend_from_slice(&h);
        }
    }

    /// Whether the last full sync finished (and no reconnection began).
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// The error that broke the link, if any.
    pub fn broken(&self) -> Option<QdbError> {
        self.broken
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Bytes to send to dom0.
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    /// `n` bytes of [`Client::output`] were sent.
    pub fn consume_output(&mut self, n: usize) {
        self.out.drain(..n.min(self.out.len()));
    }

    /// The next event, oldest first.
    pub fn next_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// A value of the mirror.
    pub fn read(&self, path: &str) -> Option<&[u8]> {
        self.db.get(path).map(|v| v.as_slice())
    }

    /// Paths starting with `prefix` (`QDB_CMD_LIST`: a plain prefix, so
    /// `/a` also lists `/ab`), in order.
    pub fn list<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.entries(prefix).map(|(p, _)| p)
    }

    /// Entries whose path starts with `prefix` (`QDB_CMD_MULTIREAD`), in
    /// order.
    pub fn entries<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a [u8])> + 'a {
        self.db
            .range::<str, _>((
                core::ops::Bound::Included(prefix),
                core::ops::Bound::Unbounded,
            ))
            .take_while(move |(p, _)| p.starts_with(prefix))
            .map(|(p, v)| (p.as_str(), v.as_slice()))
    }

    /// Watch `path` (an entry, or a directory ending in `/`; it need not
    /// exist).
    pub fn watch(&mut self, path: &str) -> Result<WatchId, WireError> {
        wire::check_path(path.as_bytes())?;
        if path.is_empty() {
            return Err(WireError::BadPath);
        }
        let id = WatchId(self.next_watch);
        self.next_watch = self.next_watch.wrapping_add(1);
        self.watches.push((id, path.to_string()));
        Ok(id)
    }

    /// Remove a watch; false if there was none.
    pub fn unwatch(&mut self, id: WatchId) -> bool {
        let before = self.watches.len();
        self.watches.retain(|(w, _)| *w != id);
        before != self.watches.len()
    }

    fn fire(&mut self, path: &str) {
        for (id, watched) in &self.watches {
            if covers(watched, path) {
                self.events.push_back(Event::Watch {
                    id: *id,
                    path: path.to_string(),
                });
            }
        }
    }

    /// Write `value` to `path` in the mirror and to dom0 (fires our
    /// watches).
    pub fn write(&mut self, path: &str, value: &[u8]) -> Result<(), WireError> {
        if !is_entry(path) {
            return Err(WireError::BadPath);
        }
        wire::check_data(value)?;
        let h = wire::encode(MsgType::Write, path, value.len())?;
        self.out.extend_from_slice(&h);
        self.out.extend_from_slice(value);
        self.store(path, value);
        self.fire(path);
        Ok(())
    }

    /// Remove `path` (a directory if it ends in `/`) from the mirror and,
    /// if anything was removed, from dom0; returns whether anything was.
    /// (dom0's daemon treats a removal of a missing path from the VM as
    /// fatal, so none is sent.)
    pub fn rm(&mut self, path: &str) -> Result<bool, WireError> {
        wire::check_path(path.as_bytes())?;
        if !path.starts_with('/') {
            return Err(WireError::BadPath);
        }
        if !self.remove(path) {
            return Ok(false);
        }
        let h = wire::encode(MsgType::Rm, path, 0)?;
        self.out.extend_from_slice(&h);
        self.fire(path);
        Ok(true)
    }

    fn store(&mut self, path: &str, value: &[u8]) {
        if let Some(s) = self.staging.as_mut() {
            s.insert(path.to_string(), value.to_vec());
        }
        self.db.insert(path.to_string(), value.to_vec());
    }

    fn remove(&mut self, path: &str) -> bool {
        fn rm(map: &mut BTreeMap<String, Vec<u8>>, path: &str) -> bool {
            if path.ends_with('/') {
                let before = map.len();
                map.retain(|p, _| !p.starts_with(path));
                before != map.len()
            } else {
                map.remove(path).is_some()
            }
        }
        if let Some(s) = self.staging.as_mut() {
            rm(s, path);
        }
        rm(&mut self.db, path)
    }

    fn answer(&mut self, t: MsgType, path: &str) {
        // The path came from a checked header: always encodable.
        if let Ok(h) = wire::encode(t, path, 0) {
            self.out.extend_from_slice(&h);
        }
    }

    /// Take bytes received from dom0; complete messages are applied at
    /// once (answers queued in [`Client::output`], events in
    /// [`Client::next_event`]). An error breaks the link until
    /// [`Client::start`].
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), QdbError> {
        if let Some(e) = self.broken {
            return Err(e);
        }
        let mut buf = core::mem::take(&mut self.inbuf);
        let r = crate::framing::take_messages(&mut buf, bytes, |b| self.one(b));
        self.inbuf = buf;
        if let Err(e) = r {
            self.broken = Some(e);
        }
        r
    }

    /// Apply the message at the start of `buf`; its length, or `None` if
    /// it is not all there yet.
    fn one(&mut self, buf: &[u8]) -> Result<Option<usize>, QdbError> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let h = Header::parse_vchan(buf)?;
        let total = HEADER_LEN + h.data_len();
        let Some(data) = buf.get(HEADER_LEN..total) else {
            return Ok(None);
        };
        let path = h.path();
        match h.msg_type() {
            MsgType::RespMultiread => {
                let Some(staging) = self.staging.as_mut() else {
                    return Err(QdbError::SpuriousMultiread);
                };
                if path.is_empty() {
                    self.finish_sync();
                } else {
                    if !is_entry(path) {
                        return Err(QdbError::BadEntry);
                    }
                    wire::check_data(data)?;
                    staging.insert(path.to_string(), data.to_vec());
                }
            }
            MsgType::Write => {
                if !is_entry(path) || wire::check_data(data).is_err() {
                    self.stats.refused += 1;
                    self.answer(MsgType::RespError, path);
                } else {
                    self.store(path, data);
                    self.answer(MsgType::RespOk, path);
                    self.fire(path);
                }
            }
            MsgType::Rm => {
                if !data.is_empty() || !path.starts_with('/') {
                    self.stats.refused += 1;
                    self.answer(MsgType::RespError, path);
                } else {
                    if !self.remove(path) {
                        self.stats.desync += 1;
                    }
                    self.answer(MsgType::RespOk, path);
                    self.fire(path);
                }
            }
            MsgType::Multiread => {
                // Only the VM asks for a dump; the daemon refuses a second
                // one with an error too.
                self.stats.refused += 1;
                self.answer(MsgType::RespError, path);
            }
            MsgType::RespOk => self.stats.acks += 1,
            MsgType::RespError => {
                if !data.is_empty() {
                    return Err(QdbError::ErrorWithData);
                }
                self.stats.errors_from_dom0 += 1;
                self.events.push_back(Event::Refused {
                    path: path.to_string(),
                });
            }
            // parse_vchan let only the types above through.
            t => return Err(QdbError::Wire(WireError::NotOnVchan(t))),
        }
        Ok(Some(total))
    }

    fn finish_sync(&mut self) {
        let Some(new) = self.staging.take() else {
            return;
        };
        let old = core::mem::replace(&mut self.db, new);
        let mut changed: Vec<String> = Vec::new();
        for (p, v) in &self.db {
            if old.get(p) != Some(v) {
                changed.push(p.clone());
            }
        }
        for p in old.keys() {
            if !self.db.contains_key(p) {
                changed.push(p.clone());
            }
        }
        changed.sort();
        for p in changed {
            self.fire(&p);
        }
        self.synced = true;
        self.events.push_back(Event::Synced);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(t: MsgType, path: &str, data: &[u8]) -> Vec<u8> {
        let mut v = wire::encode(t, path, data.len()).unwrap().to_vec();
        v.extend_from_slice(data);
        v
    }

    fn synced(entries: &[(&str, &[u8])]) -> Client {
        let mut c = Client::new();
        c.start();
        assert_eq!(c.output(), &msg(MsgType::Multiread, "", b"")[..]);
        c.consume_output(HEADER_LEN);
        for (p, v) in entries {
            c.feed(&msg(MsgType::RespMultiread, p, v)).unwrap();
        }
        c.feed(&msg(MsgType::RespMultiread, "", b"")).unwrap();
        assert!(c.synced());
        c
    }

    #[test]
    fn sync_then_writes_and_removals_from_dom0() {
        let mut c = synced(&[("/qubes-ip", b"10.137.0.5"), ("/a/b", b"1"), ("/a/c", b"2")]);
        assert_eq!(c.next_event(), Some(Event::Synced));
        assert_eq!(c.read("/qubes-ip"), Some(&b"10.137.0.5"[..]));
        let w = c.watch("/a/").unwrap();
        let x = c.watch("/qubes-ip").unwrap();
        // Byte by byte: nothing happens until the message is complete.
        let m = msg(MsgType::Write, "/a/d", b"4");
        for b in &m[..m.len() - 1] {
            c.feed(core::slice::from_ref(b)).unwrap();
        }
        assert!(c.output().is_empty());
        c.feed(&m[m.len() - 1..]).unwrap();
        assert_eq!(c.output(), &msg(MsgType::RespOk, "/a/d", b"")[..]);
        c.consume_output(usize::MAX);
        assert_eq!(
            c.next_event(),
            Some(Event::Watch {
                id: w,
                path: "/a/d".into()
            })
        );
        c.feed(&msg(MsgType::Rm, "/a/", b"")).unwrap();
        assert_eq!(c.list("/a").count(), 0);
        assert_eq!(c.output(), &msg(MsgType::RespOk, "/a/", b"")[..]);
        assert!(matches!(c.next_event(), Some(Event::Watch { id, .. }) if id == w));
        assert_eq!(c.next_event(), None);
        c.feed(&msg(MsgType::Rm, "/qubes-ip", b"")).unwrap();
        assert!(matches!(c.next_event(), Some(Event::Watch { id, .. }) if id == x));
        assert_eq!(c.stats().desync, 0);
    }

    #[test]
    fn our_writes_go_to_dom0_and_fire_local_watches() {
        let mut c = synced(&[]);
        c.next_event();
        let w = c.watch("/qubes-firewall-handled/").unwrap();
        c.write("/qubes-firewall-handled/10.137.0.7", b"1").unwrap();
        assert_eq!(
            c.output(),
            &msg(MsgType::Write, "/qubes-firewall-handled/10.137.0.7", b"1")[..]
        );
        assert!(matches!(c.next_event(), Some(Event::Watch { id, .. }) if id == w));
        c.consume_output(usize::MAX);
        assert_eq!(c.rm("/nothing"), Ok(false));
        assert!(c.output().is_empty(), "no rm of a missing path is sent");
        assert_eq!(c.rm("/qubes-firewall-handled/"), Ok(true));
        assert_eq!(
            c.output(),
            &msg(MsgType::Rm, "/qubes-firewall-handled/", b"")[..]
        );
        assert!(matches!(c.next_event(), Some(Event::Watch { id, .. }) if id == w));
        assert_eq!(c.write("/dir/", b"x"), Err(WireError::BadPath));
        assert_eq!(c.write("/x", b"a\0"), Err(WireError::NulInData));
        assert_eq!(
            c.write("/x", &[b'a'; 3072]),
            Err(WireError::DataTooLong(3072))
        );
        c.feed(&msg(MsgType::RespOk, "/x", b"")).unwrap();
        c.feed(&msg(MsgType::RespError, "/y", b"")).unwrap();
        assert_eq!(c.next_event(), Some(Event::Refused { path: "/y".into() }));
        assert_eq!(c.stats().acks, 1);
    }

    #[test]
    fn bad_commands_are_answered_with_errors_and_framing_errors_break() {
        let mut c = synced(&[]);
        let mut m = msg(MsgType::Write, "/x", b"a\0");
        c.feed(&m).unwrap();
        assert_eq!(c.output(), &msg(MsgType::RespError, "/x", b"")[..]);
        assert_eq!(c.read("/x"), None);
        c.consume_output(usize::MAX);
        c.feed(&msg(MsgType::Write, "/dir/", b"1")).unwrap();
        assert_eq!(c.output(), &msg(MsgType::RespError, "/dir/", b"")[..]);
        assert_eq!(c.stats().refused, 2);
        // Framing errors are sticky.
        m = msg(MsgType::RespMultiread, "/late", b"v");
        assert_eq!(c.feed(&m), Err(QdbError::SpuriousMultiread));
        assert_eq!(
            c.feed(&msg(MsgType::RespOk, "/x", b"")),
            Err(QdbError::SpuriousMultiread)
        );
        c.start();
        assert!(c.feed(&msg(MsgType::RespOk, "/x", b"")).is_ok());
        let mut m = msg(MsgType::RespOk, "/x", b"");
        m[0] = MsgType::RespWatch as u8;
        assert_eq!(
            c.feed(&m),
            Err(QdbError::Wire(WireError::NotOnVchan(MsgType::RespWatch)))
        );
    }

    #[test]
    fn resync_fires_watches_for_what_changed_only() {
        let mut c = synced(&[("/a", b"1"), ("/b", b"2"), ("/c", b"3")]);
        while c.next_event().is_some() {}
        let w = c.watch("/").unwrap();
        c.start();
        for (p, v) in [("/a", &b"1"[..]), ("/b", b"22"), ("/d", b"4")] {
            c.feed(&msg(MsgType::RespMultiread, p, v)).unwrap();
        }
        assert_eq!(c.read("/c"), Some(&b"3"[..]), "old mirror until the end");
        c.feed(&msg(MsgType::RespMultiread, "", b"")).unwrap();
        let fired: Vec<_> = core::iter::from_fn(|| c.next_event()).collect();
        let paths: Vec<_> = fired
            .iter()
            .filter_map(|e| match e {
                Event::Watch { id, path } if *id == w => Some(path.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(paths, ["/b", "/c", "/d"]);
        assert_eq!(fired.last(), Some(&Event::Synced));
        assert_eq!(c.read("/c"), None);
    }
}
