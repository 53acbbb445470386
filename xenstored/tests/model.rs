//! Property tests: random request sequences against a plain model of the
//! tree, and transactions against the same operations done directly.

mod common;

use common::H;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Clone, Debug)]
enum Op {
    Write(String, String),
    Mkdir(String),
    Rm(String),
    Read(String),
    Dir(String),
}

fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 1..4)
        .prop_map(|parts| format!("/m/{}", parts.join("/")))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (path(), "[a-z]{0,3}").prop_map(|(p, v)| Op::Write(p, v)),
        path().prop_map(Op::Mkdir),
        path().prop_map(Op::Rm),
        path().prop_map(Op::Read),
        path().prop_map(Op::Dir),
    ]
}

fn parent(p: &str) -> &str {
    &p[..p.rfind('/').unwrap()]
}

/// The tree as a map of path to value, under /m.
#[derive(Default)]
struct Model(BTreeMap<String, String>);

impl Model {
    fn create(&mut self, p: &str) {
        let mut at = p;
        while at.len() > 2 && !self.0.contains_key(at) {
            self.0.insert(at.to_string(), String::new());
            at = parent(at);
        }
    }
    fn apply(&mut self, op: &Op) -> Result<String, String> {
        match op {
            Op::Write(p, v) => {
                self.create(p);
                self.0.insert(p.clone(), v.clone());
                Ok(String::new())
            }
            Op::Mkdir(p) => {
                self.create(p);
                Ok(String::new())
            }
            Op::Rm(p) => {
                if self.0.contains_key(p) {
                    let under = format!("{p}/");
                    self.0.retain(|k, _| k != p && !k.starts_with(&under));
                    Ok(String::new())
                } else if parent(p) == "/m" || self.0.contains_key(parent(p)) {
                    Ok(String::new())
                } else {
                    Err("ENOENT".into())
                }
            }
            Op::Read(p) => self.0.get(p).cloned().ok_or_else(|| "ENOENT".into()),
            Op::Dir(p) => {
                if !self.0.contains_key(p) {
                    return Err("ENOENT".into());
                }
                let under = format!("{p}/");
                let mut kids: Vec<&str> = self
                    .0
                    .keys()
                    .filter_map(|k| k.strip_prefix(&under))
                    .filter(|rest| !rest.contains('/'))
                    .collect();
                kids.sort();
                Ok(kids.join(","))
            }
        }
    }
}

fn run(h: &mut H, tx: u32, op: &Op) -> Result<String, String> {
    match op {
        Op::Write(p, v) => h.write_tx(0, tx, p, v).map(|_| String::new()),
        Op::Mkdir(p) => h
            .call(
                0,
                xen::abi::xs_wire::XsdSockmsgType::Mkdir,
                tx,
                &common::strs(&[p]),
            )
            .map(|_| String::new()),
        Op::Rm(p) => h.rm_tx(0, tx, p).map(|_| String::new()),
        Op::Read(p) => h.read_tx(0, tx, p),
        Op::Dir(p) => h
            .call(
                0,
                xen::abi::xs_wire::XsdSockmsgType::Directory,
                tx,
                &common::strs(&[p]),
            )
            .map(|v| {
                let mut kids: Vec<String> = v
                    .split(|b| *b == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| String::from_utf8(s.to_vec()).unwrap())
                    .collect();
                kids.sort();
                kids.join(",")
            }),
    }
}

fn contents(h: &H) -> BTreeMap<String, Vec<u8>> {
    h.s.store()
        .iter()
        .map(|(k, n)| (k.clone(), n.value.clone()))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn requests_behave_like_the_model(ops in prop::collection::vec(op(), 1..60)) {
        let mut h = H::new();
        h.mkdir(0, "/m").unwrap();
        let mut model = Model::default();
        for op in &ops {
            let want = model.apply(op);
            let got = run(&mut h, 0, op);
            prop_assert_eq!(&got, &want, "{:?}", op);
        }
        h.s.check().unwrap();
        let have: BTreeMap<String, String> = contents(&h)
            .into_iter()
            .filter(|(k, _)| k.starts_with("/m/"))
            .map(|(k, v)| (k, String::from_utf8(v).unwrap()))
            .collect();
        prop_assert_eq!(have, model.0);
    }

    #[test]
    fn an_undisturbed_transaction_equals_the_same_requests_done_directly(
        ops in prop::collection::vec(op(), 1..40)
    ) {
        let mut direct = H::new();
        let mut in_tx = H::new();
        for h in [&mut direct, &mut in_tx] {
            h.mkdir(0, "/m").unwrap();
            h.watch(0, "/", "all").unwrap();
            h.take_events(0);
        }
        let tx = in_tx.start(0).unwrap();
        let mut events = BTreeSet::new();
        for op in &ops {
            let a = run(&mut direct, 0, op);
            let b = run(&mut in_tx, tx, op);
            prop_assert_eq!(a, b, "{:?}", op);
            events.extend(direct.take_events(0));
        }
        prop_assert!(in_tx.take_events(0).is_empty(), "events before commit");
        in_tx.end(0, tx, true).unwrap();
        prop_assert_eq!(contents(&direct), contents(&in_tx));
        let tx_events: BTreeSet<_> = in_tx.take_events(0).into_iter().collect();
        prop_assert_eq!(tx_events, events);
        in_tx.s.check().unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// The command line is the toolstack's: any words parse or fail with
    /// the word named, and never panic.
    #[test]
    fn any_command_line_parses_or_names_the_bad_word(
        words in prop::collection::vec(
            prop_oneof![
                "-{1,2}[a-zA-Z-]{0,14}(=[a-z0-9=-]{0,12})?",
                "[0-9]{0,11}",
                "[a-z-]{1,10}=[0-9]{0,6}",
                "\\PC{0,6}",
            ],
            0..8,
        )
    ) {
        let line = words.join(" ");
        match xenstored::args::parse(&line) {
            Ok(a) => {
                prop_assert!(a.config.quotas.path_max <= 2048);
                prop_assert!(a.config.quotas.nodes > 0);
            }
            Err(e) => prop_assert!(line.contains(&e.word), "{:?} not in {:?}", e.word, line),
        }
    }
}
