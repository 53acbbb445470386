//! The QubesDB client against a model: random syncs, dom0 writes and
//! removals (entries and directories, in random pieces across message
//! boundaries) and local writes and removals. The mirror must equal the
//! model, every dom0 command must be answered `QDB_RESP_OK` with its path
//! in order, our own commands must go out exactly when something changed,
//! and a watch on `/` must fire once per change. Messages are encoded by
//! hand from `qubesdb.h`'s layout.

use proptest::prelude::*;
use qubes::qubesdb::{Client, Event};
use std::collections::BTreeMap;

const PATHS: [&str; 6] = [
    "/a",
    "/a/b",
    "/a/c",
    "/b",
    "/b/x",
    "/qubes-firewall/10.137.0.5",
];
const DIRS: [&str; 3] = ["/a/", "/b/", "/qubes-firewall/"];

fn hdr(t: u8, path: &str, data: &[u8]) -> Vec<u8> {
    let mut m = vec![0u8; 72];
    m[0] = t;
    m[1..1 + path.len()].copy_from_slice(path.as_bytes());
    m[68..72].copy_from_slice(&(data.len() as u32).to_le_bytes());
    m.extend_from_slice(data);
    m
}

/// Split a message stream into (type, path, data).
fn split(mut out: &[u8]) -> Vec<(u8, String, Vec<u8>)> {
    let mut v = Vec::new();
    while !out.is_empty() {
        let end = out[1..65].iter().position(|&c| c == 0).unwrap();
        let len = u32::from_le_bytes(out[68..72].try_into().unwrap()) as usize;
        v.push((
            out[0],
            String::from_utf8(out[1..1 + end].to_vec()).unwrap(),
            out[72..72 + len].to_vec(),
        ));
        out = &out[72 + len..];
    }
    v
}

#[derive(Clone, Debug)]
enum Op {
    DomWrite(usize, Vec<u8>),
    DomRm(usize),
    DomRmDir(usize),
    LocalWrite(usize, Vec<u8>),
    LocalRm(usize),
    LocalRmDir(usize),
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(b'a'..=b'z', 0..12)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..PATHS.len(), value()).prop_map(|(p, v)| Op::DomWrite(p, v)),
        (0..PATHS.len()).prop_map(Op::DomRm),
        (0..DIRS.len()).prop_map(Op::DomRmDir),
        (0..PATHS.len(), value()).prop_map(|(p, v)| Op::LocalWrite(p, v)),
        (0..PATHS.len()).prop_map(Op::LocalRm),
        (0..DIRS.len()).prop_map(Op::LocalRmDir),
    ]
}

fn rm(model: &mut BTreeMap<String, Vec<u8>>, path: &str) -> bool {
    let before = model.len();
    if path.ends_with('/') {
        model.retain(|p, _| !p.starts_with(path));
    } else {
        model.remove(path);
    }
    before != model.len()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn mirror_follows_the_model(
        initial in proptest::collection::btree_map(0..PATHS.len(), value(), 0..6),
        ops in proptest::collection::vec(op(), 0..40),
        cuts in proptest::collection::vec(1usize..100, 1..8),
    ) {
        let mut c = Client::new();
        let all = c.watch("/").unwrap();
        c.start();
        let mut model: BTreeMap<String, Vec<u8>> =
            initial.iter().map(|(p, v)| (PATHS[*p].to_string(), v.clone())).collect();
        let mut sync = Vec::new();
        for (p, v) in model.iter().rev() {
            sync.extend(hdr(11, p, v));
        }
        sync.extend(hdr(11, "", b""));
        // Expected output and watch count.
        let mut expect_out = hdr(2, "", b"");
        let mut fired = model.len();
        let mut cut = cuts.iter().cycle();
        let mut feed = |c: &mut Client, bytes: &[u8]| {
            let mut at = 0;
            while at < bytes.len() {
                let n = (*cut.next().unwrap()).min(bytes.len() - at);
                c.feed(&bytes[at..at + n]).unwrap();
                at += n;
            }
        };
        // dom0 commands are batched so pieces cross message boundaries.
        let mut batch = sync;
        for op in &ops {
            let local = matches!(op, Op::LocalWrite(..) | Op::LocalRm(_) | Op::LocalRmDir(_));
            if local && !batch.is_empty() {
                feed(&mut c, &batch);
                batch.clear();
            }
            match op {
                Op::DomWrite(p, v) => {
                    batch.extend(hdr(1, PATHS[*p], v));
                    model.insert(PATHS[*p].into(), v.clone());
                    expect_out.extend(hdr(7, PATHS[*p], b""));
                    fired += 1;
                }
                Op::DomRm(p) | Op::DomRmDir(p) => {
                    let path = if let Op::DomRm(_) = op { PATHS[*p] } else { DIRS[*p] };
                    batch.extend(hdr(4, path, b""));
                    rm(&mut model, path);
                    expect_out.extend(hdr(7, path, b""));
                    fired += 1;
                }
                Op::LocalWrite(p, v) => {
                    c.write(PATHS[*p], v).unwrap();
                    model.insert(PATHS[*p].into(), v.clone());
                    expect_out.extend(hdr(1, PATHS[*p], v));
                    fired += 1;
                }
                Op::LocalRm(p) | Op::LocalRmDir(p) => {
                    let path = if let Op::LocalRm(_) = op { PATHS[*p] } else { DIRS[*p] };
                    let removed = rm(&mut model, path);
                    prop_assert_eq!(c.rm(path), Ok(removed));
                    if removed {
                        expect_out.extend(hdr(4, path, b""));
                        fired += 1;
                    }
                }
            }
        }
        feed(&mut c, &batch);
        prop_assert!(c.synced());
        let mirror: BTreeMap<String, Vec<u8>> =
            c.entries("").map(|(p, v)| (p.to_string(), v.to_vec())).collect();
        prop_assert_eq!(&mirror, &model);
        prop_assert_eq!(split(c.output()), split(&expect_out));
        let events: Vec<Event> = std::iter::from_fn(|| c.next_event()).collect();
        let watch = events.iter().filter(|e| matches!(e, Event::Watch { id, .. } if *id == all)).count();
        prop_assert_eq!(watch, fired);
        prop_assert_eq!(events.iter().filter(|e| **e == Event::Synced).count(), 1);
        prop_assert_eq!(c.stats().refused, 0);
    }
}
