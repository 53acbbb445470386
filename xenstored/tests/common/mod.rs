//! A test harness: domains talking to one [`Server`] through its byte
//! interface, replies matched to requests, watch events collected.
#![allow(dead_code)]

use std::collections::BTreeMap;
use xen::abi::xs_wire::XsdSockmsgType as T;
use xenstored::conn::message;
use xenstored::{Config, Errno, Host, Server};

/// A host recording what it was asked.
#[derive(Default)]
pub struct RecHost {
    pub introduced: Vec<(u16, u64, u32)>,
    pub released: Vec<u16>,
    pub log: Vec<String>,
    pub refuse: bool,
}

impl Host for RecHost {
    fn introduce(&mut self, domid: u16, gfn: u64, port: u32) -> Result<(), Errno> {
        if self.refuse {
            return Err(Errno::Eio);
        }
        self.introduced.push((domid, gfn, port));
        Ok(())
    }
    fn release(&mut self, domid: u16) {
        self.released.push(domid);
    }
    fn log(&mut self, line: &str) {
        self.log.push(line.into());
    }
}

/// One message from the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Msg {
    pub kind: u32,
    pub req_id: u32,
    pub tx_id: u32,
    pub payload: Vec<u8>,
}

pub fn parse_all(bytes: &[u8]) -> Vec<Msg> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 16 {
        let w = |i: usize| u32::from_ne_bytes(rest[i * 4..i * 4 + 4].try_into().unwrap());
        let len = w(3) as usize;
        assert!(len <= 4096, "server sent an oversized payload");
        out.push(Msg {
            kind: w(0),
            req_id: w(1),
            tx_id: w(2),
            payload: rest[16..16 + len].to_vec(),
        });
        rest = &rest[16 + len..];
    }
    assert!(rest.is_empty(), "partial message left");
    out
}

/// NUL-terminated strings, concatenated.
pub fn strs(parts: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(p.as_bytes());
        out.push(0);
    }
    out
}

pub struct H {
    pub s: Server,
    pub host: RecHost,
    pub events: BTreeMap<u16, Vec<(String, String)>>,
    pub replies: BTreeMap<u16, Vec<Msg>>,
    next_req: u32,
}

pub type R = Result<Vec<u8>, String>;

impl H {
    pub fn new() -> Self {
        Self::with(Config::default())
    }

    pub fn with(config: Config) -> Self {
        let mut s = Server::new(config);
        s.connect(0);
        Self {
            s,
            host: RecHost::default(),
            events: BTreeMap::new(),
            replies: BTreeMap::new(),
            next_req: 1,
        }
    }

    /// Introduce `domid` as the toolstack does.
    pub fn intro(&mut self, domid: u16) {
        let r = self.call(
            0,
            T::Introduce,
            0,
            &strs(&[&domid.to_string(), "1234", "5"]),
        );
        assert_eq!(r, Ok(b"OK\0".to_vec()));
    }

    /// Move everything the server queued for `domid` into the harness.
    pub fn drain(&mut self, domid: u16) {
        let mut all = Vec::new();
        let mut buf = [0u8; 333];
        loop {
            let n = self.s.transmit(domid, &mut buf);
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
        for m in parse_all(&all) {
            if m.kind == T::WatchEvent as u32 {
                assert_eq!((m.req_id, m.tx_id), (0, 0));
                let parts: Vec<String> = m
                    .payload
                    .split(|b| *b == 0)
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect();
                assert_eq!(parts.len(), 3, "event payload {parts:?}");
                assert_eq!(parts[2], "");
                self.events
                    .entry(domid)
                    .or_default()
                    .push((parts[0].clone(), parts[1].clone()));
            } else {
                self.replies.entry(domid).or_default().push(m);
            }
        }
    }

    /// Send raw bytes; returns what `receive` said.
    pub fn send_raw(&mut self, domid: u16, bytes: &[u8]) -> Result<usize, xenstored::ConnError> {
        self.s.receive(domid, bytes, &mut self.host)
    }

    /// One request; its reply payload, or the error name.
    pub fn call(&mut self, domid: u16, kind: T, tx: u32, payload: &[u8]) -> R {
        let id = self.next_req;
        self.next_req += 1;
        let msg = message(kind, id, tx, &[payload]);
        let used = self.send_raw(domid, &msg).expect("connection");
        assert_eq!(used, msg.len(), "request not taken");
        self.drain(domid);
        let replies = self.replies.entry(domid).or_default();
        let at = replies
            .iter()
            .position(|m| m.req_id == id)
            .expect("no reply");
        let m = replies.remove(at);
        assert_eq!(m.tx_id, tx);
        self.s.check().unwrap();
        if m.kind == T::Error as u32 {
            assert_eq!(m.payload.last(), Some(&0));
            Err(String::from_utf8(m.payload[..m.payload.len() - 1].to_vec()).unwrap())
        } else {
            assert_eq!(m.kind, kind as u32);
            Ok(m.payload)
        }
    }

    pub fn read(&mut self, d: u16, path: &str) -> Result<String, String> {
        self.read_tx(d, 0, path)
    }
    pub fn read_tx(&mut self, d: u16, tx: u32, path: &str) -> Result<String, String> {
        self.call(d, T::Read, tx, &strs(&[path]))
            .map(|v| String::from_utf8(v).unwrap())
    }
    pub fn write(&mut self, d: u16, path: &str, value: &str) -> Result<(), String> {
        self.write_tx(d, 0, path, value)
    }
    pub fn write_tx(&mut self, d: u16, tx: u32, path: &str, value: &str) -> Result<(), String> {
        let mut p = strs(&[path]);
        p.extend_from_slice(value.as_bytes());
        self.call(d, T::Write, tx, &p)
            .map(|v| assert_eq!(v, b"OK\0"))
    }
    pub fn mkdir(&mut self, d: u16, path: &str) -> Result<(), String> {
        self.call(d, T::Mkdir, 0, &strs(&[path])).map(|_| ())
    }
    pub fn rm(&mut self, d: u16, path: &str) -> Result<(), String> {
        self.rm_tx(d, 0, path)
    }
    pub fn rm_tx(&mut self, d: u16, tx: u32, path: &str) -> Result<(), String> {
        self.call(d, T::Rm, tx, &strs(&[path])).map(|_| ())
    }
    pub fn dir(&mut self, d: u16, path: &str) -> Result<Vec<String>, String> {
        self.call(d, T::Directory, 0, &strs(&[path])).map(|v| {
            v.split(|b| *b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8(s.to_vec()).unwrap())
                .collect()
        })
    }
    pub fn get_perms(&mut self, d: u16, path: &str) -> Result<String, String> {
        self.call(d, T::GetPerms, 0, &strs(&[path])).map(|v| {
            String::from_utf8(v)
                .unwrap()
                .trim_end_matches('\0')
                .replace('\0', " ")
        })
    }
    pub fn set_perms(&mut self, d: u16, path: &str, perms: &str) -> Result<(), String> {
        let mut parts = vec![path];
        parts.extend(perms.split(' '));
        self.call(d, T::SetPerms, 0, &strs(&parts)).map(|_| ())
    }
    pub fn watch(&mut self, d: u16, path: &str, token: &str) -> Result<(), String> {
        self.call(d, T::Watch, 0, &strs(&[path, token])).map(|_| ())
    }
    pub fn unwatch(&mut self, d: u16, path: &str, token: &str) -> Result<(), String> {
        self.call(d, T::Unwatch, 0, &strs(&[path, token]))
            .map(|_| ())
    }
    pub fn start(&mut self, d: u16) -> Result<u32, String> {
        self.call(d, T::TransactionStart, 0, b"\0").map(|v| {
            String::from_utf8(v[..v.len() - 1].to_vec())
                .unwrap()
                .parse()
                .unwrap()
        })
    }
    pub fn end(&mut self, d: u16, tx: u32, commit: bool) -> Result<(), String> {
        self.call(
            d,
            T::TransactionEnd,
            tx,
            &strs(&[if commit { "T" } else { "F" }]),
        )
        .map(|_| ())
    }
    /// Events delivered to `d` since the last call.
    pub fn take_events(&mut self, d: u16) -> Vec<(String, String)> {
        self.drain(d);
        self.events.remove(&d).unwrap_or_default()
    }
}

/// `(path, token)` pairs, for comparisons.
pub fn ev(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(p, t)| (p.to_string(), t.to_string()))
        .collect()
}
