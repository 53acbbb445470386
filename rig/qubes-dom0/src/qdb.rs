//! dom0's QubesDB daemon for one VM, the vchan side, sans I/O.
//!
//! Written for the rig from qubes-core-qubesdb's `include/qubesdb.h` and
//! the behaviour of `daemon/db-cmds.c` / `db-core.c` (read for the facts,
//! no code taken; docs/qubes.md lists them). The encoding here is our own
//! and independent of the `qubes` crate's, so the VM side is checked
//! against a second implementation.
//!
//! What dom0's daemon does on the vchan, and so this one:
//! - the VM asks once per connection for the full database
//!   (`QDB_CMD_MULTIREAD`, empty path); every entry goes back as
//!   `QDB_RESP_MULTIREAD` in reverse path order, then one with an empty
//!   path; a second request on the connection is fatal;
//! - dom0's own writes and removals (qubesd's, through the local socket)
//!   are forwarded as `QDB_CMD_WRITE`/`QDB_CMD_RM` only once the VM has
//!   synced, a removal only if it removed something; the VM answers
//!   `QDB_RESP_OK`;
//! - the VM's writes and removals change the database and are answered
//!   `QDB_RESP_OK`; a removal of nothing is answered
//!   `QDB_RESP_ERROR_NOENT` and is fatal (database out of step);
//! - a header the daemon rejects (a type not allowed on the vchan, a bad
//!   path, `data_len >= 3072`) is fatal.
//!
//! Fatal conditions are reported as [`Event::Violation`] (the rig test
//! asserts there are none) and stop the server.

use std::collections::{BTreeMap, VecDeque};

/// `sizeof(struct qdb_hdr)`: u8 type, char path[64], 3 bytes of padding,
/// u32 data_len.
pub const HDR_LEN: usize = 72;
/// `QDB_MAX_PATH`: the path field, NUL included.
pub const PATH_FIELD: usize = 64;
/// `QDB_MAX_DATA`: the daemon refuses `data_len >= 3072`.
pub const MAX_DATA: usize = 3072;
/// Offset of `data_len` in the header.
const LEN_AT: usize = 68;

/// `enum qdb_msg`, numbered from 0.
pub mod msg {
    /// `QDB_CMD_READ` (local socket only).
    pub const CMD_READ: u8 = 0;
    /// `QDB_CMD_WRITE`.
    pub const CMD_WRITE: u8 = 1;
    /// `QDB_CMD_MULTIREAD`.
    pub const CMD_MULTIREAD: u8 = 2;
    /// `QDB_CMD_LIST` (local socket only).
    pub const CMD_LIST: u8 = 3;
    /// `QDB_CMD_RM`.
    pub const CMD_RM: u8 = 4;
    /// `QDB_CMD_WATCH` (local socket only).
    pub const CMD_WATCH: u8 = 5;
    /// `QDB_CMD_UNWATCH` (local socket only).
    pub const CMD_UNWATCH: u8 = 6;
    /// `QDB_RESP_OK`.
    pub const RESP_OK: u8 = 7;
    /// `QDB_RESP_ERROR_NOENT`.
    pub const RESP_ERROR_NOENT: u8 = 8;
    /// `QDB_RESP_ERROR`.
    pub const RESP_ERROR: u8 = 9;
    /// `QDB_RESP_READ` (local socket only).
    pub const RESP_READ: u8 = 10;
    /// `QDB_RESP_MULTIREAD`.
    pub const RESP_MULTIREAD: u8 = 11;
    /// `QDB_RESP_LIST` (local socket only).
    pub const RESP_LIST: u8 = 12;
    /// `QDB_RESP_WATCH` (local socket only).
    pub const RESP_WATCH: u8 = 13;
}

/// Whether `path` passes the daemon's `verify_path`: shorter than 64
/// bytes, only `[A-Za-z0-9_/.:@-]`, no leading `-`. (Empty is allowed: the
/// end marker and the full-sync request.)
pub fn valid_path(path: &str) -> bool {
    path.len() < PATH_FIELD
        && !path.starts_with('-')
        && path
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_/.:@".contains(&c))
}

/// Whether `path` can name an entry (`qubesdb_insert`): a valid path that
/// starts with `/` and does not end with one.
pub fn valid_entry(path: &str) -> bool {
    valid_path(path) && path.starts_with('/') && !path.ends_with('/')
}

/// Why a local write or removal was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused(pub String);

/// One message: header and data.
pub fn encode(t: u8, path: &str, data: &[u8]) -> Vec<u8> {
    let mut m = vec![0u8; HDR_LEN];
    m[0] = t;
    let p = path.as_bytes();
    let n = p.len().min(PATH_FIELD - 1);
    m[1..1 + n].copy_from_slice(&p[..n]);
    m[LEN_AT..HDR_LEN].copy_from_slice(&(data.len() as u32).to_le_bytes());
    m.extend_from_slice(data);
    m
}

/// What the VM did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The VM asked for the database and got `entries` entries.
    Synced {
        /// Entries sent before the end marker.
        entries: usize,
    },
    /// The VM wrote an entry.
    VmWrite {
        /// Its path.
        path: String,
        /// Its value.
        value: Vec<u8>,
    },
    /// The VM removed an entry (or a directory, path ending in `/`).
    VmRm {
        /// The path.
        path: String,
    },
    /// The VM acknowledged one of dom0's changes.
    VmOk {
        /// The path it named.
        path: String,
        /// It was the change forwarded longest ago and not yet answered.
        expected: bool,
    },
    /// The VM answered a change `QDB_RESP_ERROR`.
    VmError {
        /// The path it named.
        path: String,
    },
    /// A command dom0's daemon answers with `QDB_RESP_ERROR` without
    /// closing (a value with a NUL byte, a removal carrying data).
    Refused(String),
    /// Something dom0's daemon treats as fatal; the server stops.
    Violation(String),
}

/// The server's state for one VM.
#[derive(Default)]
pub struct QdbServer {
    db: BTreeMap<String, Vec<u8>>,
    remote_connected: bool,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    awaiting: VecDeque<String>,
    broken: bool,
}

impl QdbServer {
    /// An empty database.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new vchan connection (the VM's daemon reconnected): it must sync
    /// again before changes are forwarded.
    pub fn reconnect(&mut self) {
        self.remote_connected = false;
        self.inbuf.clear();
        self.out.clear();
        self.awaiting.clear();
        self.broken = false;
    }

    /// The VM has synced on this connection.
    pub fn synced(&self) -> bool {
        self.remote_connected
    }

    /// A fatal violation stopped the server.
    pub fn broken(&self) -> bool {
        self.broken
    }

    /// An entry's value.
    pub fn read(&self, path: &str) -> Option<&[u8]> {
        self.db.get(path).map(Vec::as_slice)
    }

    /// Every entry, in path order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.db.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// Bytes to send to the VM.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// dom0 (qubesd) writes an entry; forwarded once the VM synced.
    /// Returns whether it was forwarded.
    pub fn write(&mut self, path: &str, value: &[u8]) -> Result<bool, Refused> {
        if !valid_entry(path) {
            return Err(Refused(format!("not an entry path: {path:?}")));
        }
        if value.len() >= MAX_DATA || value.contains(&0) {
            return Err(Refused(format!(
                "value of {path}: {} bytes or a NUL byte",
                value.len()
            )));
        }
        self.db.insert(path.to_string(), value.to_vec());
        if self.remote_connected && !self.broken {
            self.out.extend(encode(msg::CMD_WRITE, path, value));
            self.awaiting.push_back(path.to_string());
            return Ok(true);
        }
        Ok(false)
    }

    /// Removes `path` (a directory when it ends in `/`); true if
    /// something was removed.
    fn remove(&mut self, path: &str) -> bool {
        if let Some(dir) = path.strip_suffix('/') {
            let prefix = format!("{dir}/");
            let gone: Vec<String> = self
                .db
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .map(|(k, _)| k.clone())
                .collect();
            for k in &gone {
                self.db.remove(k);
            }
            !gone.is_empty()
        } else {
            self.db.remove(path).is_some()
        }
    }

    /// dom0 removes an entry or a directory; forwarded once the VM synced
    /// and only if something was removed. Returns whether it was
    /// forwarded.
    pub fn rm(&mut self, path: &str) -> Result<bool, Refused> {
        if !valid_path(path) || !path.starts_with('/') || path == "/" {
            return Err(Refused(format!("not a removable path: {path:?}")));
        }
        if !self.remove(path) {
            return Ok(false);
        }
        if self.remote_connected && !self.broken {
            self.out.extend(encode(msg::CMD_RM, path, b""));
            self.awaiting.push_back(path.to_string());
            return Ok(true);
        }
        Ok(false)
    }

    fn fatal(&mut self, why: String, events: &mut Vec<Event>) {
        self.broken = true;
        events.push(Event::Violation(why));
    }

    /// Bytes from the VM, in any pieces. Returns what the VM did; answers
    /// go to [`Self::take_output`].
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Event> {
        let mut events = Vec::new();
        if self.broken {
            return events;
        }
        self.inbuf.extend_from_slice(bytes);
        let mut at = 0;
        while self.inbuf.len() - at >= HDR_LEN {
            let h = &self.inbuf[at..at + HDR_LEN];
            let t = h[0];
            let field = &h[1..1 + PATH_FIELD];
            let Some(end) = field.iter().position(|&c| c == 0) else {
                self.fatal("a path field without NUL".into(), &mut events);
                break;
            };
            let path = String::from_utf8_lossy(&field[..end]).into_owned();
            let len = u32::from_le_bytes([h[LEN_AT], h[LEN_AT + 1], h[LEN_AT + 2], h[LEN_AT + 3]])
                as usize;
            let allowed = matches!(
                t,
                msg::CMD_MULTIREAD
                    | msg::CMD_WRITE
                    | msg::CMD_RM
                    | msg::RESP_OK
                    | msg::RESP_ERROR
                    | msg::RESP_MULTIREAD
            );
            if !allowed {
                self.fatal(
                    format!("message type {t} is not allowed on the vchan"),
                    &mut events,
                );
                break;
            }
            if !valid_path(&path) || field[..end].iter().any(|c| !c.is_ascii()) {
                self.fatal(format!("invalid path {path:?}"), &mut events);
                break;
            }
            if len >= MAX_DATA {
                self.fatal(
                    format!("data_len {len} of {path:?} (at most 3071)"),
                    &mut events,
                );
                break;
            }
            if self.inbuf.len() - at < HDR_LEN + len {
                break;
            }
            let data = self.inbuf[at + HDR_LEN..at + HDR_LEN + len].to_vec();
            at += HDR_LEN + len;
            self.handle(t, path, data, &mut events);
            if self.broken {
                break;
            }
        }
        self.inbuf.drain(..at.min(self.inbuf.len()));
        events
    }

    fn handle(&mut self, t: u8, path: String, data: Vec<u8>, events: &mut Vec<Event>) {
        match t {
            msg::CMD_WRITE => {
                if data.contains(&0) {
                    self.out.extend(encode(msg::RESP_ERROR, &path, b""));
                    events.push(Event::Refused(format!(
                        "write of {path}: a NUL byte in the value"
                    )));
                } else if !valid_entry(&path) {
                    self.out.extend(encode(msg::RESP_ERROR, &path, b""));
                    self.fatal(format!("write to {path:?}, not an entry path"), events);
                } else {
                    self.db.insert(path.clone(), data.clone());
                    self.out.extend(encode(msg::RESP_OK, &path, b""));
                    events.push(Event::VmWrite { path, value: data });
                }
            }
            msg::CMD_RM => {
                if !data.is_empty() {
                    self.out.extend(encode(msg::RESP_ERROR, &path, b""));
                    events.push(Event::Refused(format!("removal of {path} with data")));
                } else if path.is_empty() || !self.remove(&path) {
                    self.out.extend(encode(msg::RESP_ERROR_NOENT, &path, b""));
                    self.fatal(
                        format!("removal of {path:?}, which dom0 does not have"),
                        events,
                    );
                } else {
                    self.out.extend(encode(msg::RESP_OK, &path, b""));
                    events.push(Event::VmRm { path });
                }
            }
            msg::CMD_MULTIREAD => {
                if self.remote_connected {
                    self.out.extend(encode(msg::RESP_ERROR, &path, b""));
                    self.fatal(
                        "a second QDB_CMD_MULTIREAD on the connection".into(),
                        events,
                    );
                    return;
                }
                if !data.is_empty() {
                    self.out.extend(encode(msg::RESP_ERROR, &path, b""));
                    events.push(Event::Refused("QDB_CMD_MULTIREAD with data".into()));
                    return;
                }
                let mut n = 0;
                let mut answer = Vec::new();
                if path.is_empty() {
                    for (k, v) in self.db.iter().rev() {
                        answer.extend(encode(msg::RESP_MULTIREAD, k, v));
                        n += 1;
                    }
                } else {
                    for (k, v) in self
                        .db
                        .range(path.clone()..)
                        .take_while(|(k, _)| k.starts_with(&path))
                    {
                        answer.extend(encode(msg::RESP_MULTIREAD, k, v));
                        n += 1;
                    }
                }
                answer.extend(encode(msg::RESP_MULTIREAD, "", b""));
                self.out.extend(answer);
                self.remote_connected = true;
                events.push(Event::Synced { entries: n });
            }
            msg::RESP_OK => {
                let expected = self.awaiting.front() == Some(&path);
                if expected {
                    self.awaiting.pop_front();
                }
                events.push(Event::VmOk { path, expected });
            }
            msg::RESP_ERROR => {
                if !data.is_empty() {
                    self.fatal("QDB_RESP_ERROR with data".into(), events);
                } else {
                    if self.awaiting.front() == Some(&path) {
                        self.awaiting.pop_front();
                    }
                    events.push(Event::VmError { path });
                }
            }
            msg::RESP_MULTIREAD => {
                self.fatal("a QDB_RESP_MULTIREAD nobody asked for".into(), events)
            }
            _ => self.fatal(format!("message type {t}"), events),
        }
    }
}

/// Parses a keys file: one entry per line, `PATH VALUE` (the value is the
/// rest of the line after the first space, maybe empty); blank lines and
/// lines starting with `#` are skipped.
pub fn parse_keys(text: &str) -> Result<Vec<(String, String)>, Refused> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let (path, value) = line.split_once(' ').unwrap_or((line, ""));
        if !valid_entry(path) {
            return Err(Refused(format!(
                "line {}: not an entry path: {path:?}",
                n + 1
            )));
        }
        out.push((path.to_string(), value.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synced(s: &mut QdbServer) -> Vec<u8> {
        let ev = s.feed(&encode(msg::CMD_MULTIREAD, "", b""));
        assert!(matches!(ev[..], [Event::Synced { .. }]), "{ev:?}");
        s.take_output()
    }

    #[test]
    fn paths_as_the_daemon_checks_them() {
        assert!(valid_entry("/qubes-firewall/10.137.0.10/0000"));
        assert!(valid_entry("/a-b_c.d:e@f"));
        assert!(!valid_entry("/a/"));
        assert!(!valid_entry("a"));
        assert!(!valid_path("-a"));
        assert!(!valid_path("/a b"));
        assert!(!valid_path(&format!("/{}", "x".repeat(63))));
        assert!(valid_path(&format!("/{}", "x".repeat(62))));
        assert!(valid_path(""));
    }

    #[test]
    fn the_sync_is_every_entry_in_reverse_order_then_the_marker() {
        let mut s = QdbServer::new();
        s.write("/a", b"1").unwrap();
        s.write("/b/c", b"").unwrap();
        assert!(
            s.take_output().is_empty(),
            "nothing goes out before the sync"
        );
        let out = synced(&mut s);
        let mut want = encode(msg::RESP_MULTIREAD, "/b/c", b"");
        want.extend(encode(msg::RESP_MULTIREAD, "/a", b"1"));
        want.extend(encode(msg::RESP_MULTIREAD, "", b""));
        assert_eq!(out, want);
        let ev = s.feed(&encode(msg::CMD_MULTIREAD, "", b""));
        assert!(
            matches!(ev[..], [Event::Violation(_)]),
            "a second sync is fatal: {ev:?}"
        );
        assert!(s.broken());
    }

    #[test]
    fn dom0_changes_are_forwarded_after_the_sync_and_acknowledged() {
        let mut s = QdbServer::new();
        assert_eq!(s.write("/x", b"1"), Ok(false));
        synced(&mut s);
        assert_eq!(s.write("/x", b"2"), Ok(true));
        assert_eq!(
            s.rm("/nothing/"),
            Ok(false),
            "a removal of nothing is not forwarded"
        );
        assert_eq!(s.rm("/x"), Ok(true));
        let mut want = encode(msg::CMD_WRITE, "/x", b"2");
        want.extend(encode(msg::CMD_RM, "/x", b""));
        assert_eq!(s.take_output(), want);
        let mut answers = encode(msg::RESP_OK, "/x", b"");
        answers.extend(encode(msg::RESP_OK, "/y", b""));
        let ev = s.feed(&answers);
        assert_eq!(
            ev,
            vec![
                Event::VmOk {
                    path: "/x".into(),
                    expected: true
                },
                Event::VmOk {
                    path: "/y".into(),
                    expected: false
                },
            ]
        );
        assert!(s.write("/x/", b"").is_err());
        assert!(s.write("/x", b"a\0b").is_err());
        assert!(s.write("/x", &[b'a'; 3072]).is_err());
    }

    #[test]
    fn vm_writes_and_removals_in_pieces() {
        let mut s = QdbServer::new();
        s.write("/dns/10.137.0.10/a", b"x").unwrap();
        s.write("/dns/10.137.0.10/b", b"y").unwrap();
        s.write("/dns/10.137.0.100", b"z").unwrap();
        synced(&mut s);
        let mut bytes = encode(msg::CMD_WRITE, "/qubes-firewall-handled/10.137.0.10", b"1");
        bytes.extend(encode(msg::CMD_RM, "/dns/10.137.0.10/", b""));
        let mut ev = Vec::new();
        for c in bytes.chunks(5) {
            ev.extend(s.feed(c));
        }
        assert_eq!(
            ev,
            vec![
                Event::VmWrite {
                    path: "/qubes-firewall-handled/10.137.0.10".into(),
                    value: b"1".to_vec()
                },
                Event::VmRm {
                    path: "/dns/10.137.0.10/".into()
                },
            ]
        );
        assert_eq!(
            s.read("/dns/10.137.0.100"),
            Some(&b"z"[..]),
            "a directory removal takes only its children"
        );
        assert_eq!(s.read("/dns/10.137.0.10/a"), None);
        let mut want = encode(msg::RESP_OK, "/qubes-firewall-handled/10.137.0.10", b"");
        want.extend(encode(msg::RESP_OK, "/dns/10.137.0.10/", b""));
        assert_eq!(s.take_output(), want);
        let ev = s.feed(&encode(msg::CMD_RM, "/dns/10.137.0.10/", b""));
        assert!(
            matches!(ev[..], [Event::Violation(_)]),
            "removing nothing is fatal: {ev:?}"
        );
        assert_eq!(
            s.take_output(),
            encode(msg::RESP_ERROR_NOENT, "/dns/10.137.0.10/", b"")
        );
    }

    #[test]
    fn what_the_daemon_rejects() {
        for (bytes, fatal) in [
            (encode(msg::CMD_READ, "/a", b""), true),
            (encode(msg::CMD_WATCH, "/a", b""), true),
            (encode(99, "/a", b""), true),
            (encode(msg::CMD_WRITE, "/a b", b""), true),
            (encode(msg::CMD_WRITE, "/a/", b""), true),
            (encode(msg::RESP_MULTIREAD, "/a", b""), true),
            (encode(msg::RESP_ERROR, "/a", b"x"), true),
            (encode(msg::CMD_WRITE, "/a", b"x\0"), false),
            (encode(msg::CMD_RM, "/a", b"x"), false),
        ] {
            let mut s = QdbServer::new();
            s.write("/a", b"").unwrap();
            synced(&mut s);
            let ev = s.feed(&bytes);
            assert_eq!(ev.len(), 1, "{ev:?}");
            assert_eq!(matches!(ev[0], Event::Violation(_)), fatal, "{ev:?}");
            assert_eq!(s.broken(), fatal);
        }
        let mut s = QdbServer::new();
        let mut h = encode(msg::CMD_WRITE, "/a", b"");
        h[68..72].copy_from_slice(&3072u32.to_le_bytes());
        assert!(matches!(s.feed(&h)[..], [Event::Violation(_)]));
        let mut s = QdbServer::new();
        let mut h = encode(msg::CMD_WRITE, "/a", b"");
        h[1..65].fill(b'a');
        assert!(
            matches!(s.feed(&h)[..], [Event::Violation(_)]),
            "no NUL in the path field"
        );
        assert!(
            s.feed(&encode(msg::CMD_MULTIREAD, "", b"")).is_empty(),
            "broken stays broken"
        );
        s.reconnect();
        assert!(matches!(
            s.feed(&encode(msg::CMD_MULTIREAD, "", b""))[..],
            [Event::Synced { entries: 0 }]
        ));
    }

    #[test]
    fn keys_files() {
        let k = parse_keys(
            "# comment\n/name sys-firewall\n/qubes-firewall/10.137.0.10\n/a two words\n\n",
        )
        .unwrap();
        assert_eq!(
            k,
            vec![
                ("/name".to_string(), "sys-firewall".to_string()),
                ("/qubes-firewall/10.137.0.10".to_string(), String::new()),
                ("/a".to_string(), "two words".to_string()),
            ]
        );
        assert!(parse_keys("relative x\n").is_err());
    }
}
