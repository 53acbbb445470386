//! moat's xenstored driven by whole request sequences from several
//! domains at once: dom0 and three domUs write, read, list, remove, set
//! permissions, watch (relative, absolute, special), run transactions
//! (interleaved, conflicting, abandoned), flood without reading replies,
//! and dom0 introduces, releases, resumes and destroys domains. Small
//! quotas so every limit is reached. After every step: the tree's
//! invariants (parents list each child once, children exist, owner counts
//! right), every unprivileged domain within its watch, transaction and
//! outstanding quotas, no domain grew past its node or memory quota by its
//! own requests, every reply and event a whole message within the payload
//! limit, with the request's id.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xen::abi::xs_wire::{XsdSockmsgType as T, XENSTORE_PAYLOAD_MAX};
use xenstored::conn::message;
use xenstored::decode::Header;
use xenstored::{Config, NoHost, Quotas, Server};

const DOMAINS: [u16; 4] = [0, 3, 4, 5];
const PATHS: [&str; 12] = [
    "/",
    "/local/domain/3",
    "/local/domain/4/a",
    "/local/domain/5/a/b",
    "a",
    "a/b",
    "a/b/c",
    "data",
    "/shared",
    "/shared/x",
    "@releaseDomain",
    "@introduceDomain",
];

struct Input<'a> {
    data: &'a [u8],
    at: usize,
}

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let b = self.data.get(self.at).copied();
        self.at += 1;
        b
    }
}

/// Drain `domid`'s output, checking every message; returns the ids of
/// replies seen.
fn drain(server: &mut Server, domid: u16) -> Vec<u32> {
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let n = server.transmit(domid, &mut buf);
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    let mut ids = Vec::new();
    let mut rest = &out[..];
    while !rest.is_empty() {
        let h = Header::parse(rest).expect("bad header from the server");
        assert!(h.len as usize <= XENSTORE_PAYLOAD_MAX);
        assert!(rest.len() >= 16 + h.len as usize);
        if h.kind != T::WatchEvent as u32 {
            ids.push(h.req_id);
        }
        rest = &rest[16 + h.len as usize..];
    }
    ids
}

fn strs(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(p);
        out.push(0);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let quotas = Quotas {
        nodes: 12,
        node_size: 160,
        watches: 4,
        transactions: 3,
        transaction_nodes: 16,
        outstanding: 4,
        perms: 3,
        path_max: 64,
        memory: 2500,
        output_bytes: 1500,
    };
    // What transactions' touch records may add beyond the memory quota
    // (bounded by the transaction quotas instead).
    let touch_slack = u64::from(quotas.transactions * quotas.transaction_nodes * (64 + 8 + 20));
    let mut server = Server::new(Config {
        quotas,
        ..Config::default()
    });
    server.connect(0);
    let mut input = Input { data, at: 0 };
    let mut req_id = 1u32;
    // Transaction ids each domain was given (the fuzzer may also invent).
    let mut txs: Vec<(u16, u32)> = Vec::new();
    let mut pending: Vec<(u16, u32)> = Vec::new();
    while let Some(sel) = input.byte() {
        let domid = DOMAINS[usize::from(sel & 3)];
        let op = sel >> 2;
        let a = input.byte().unwrap_or(0);
        let b = input.byte().unwrap_or(0);
        let path = PATHS[usize::from(a) % PATHS.len()].as_bytes();
        let tx = match b & 3 {
            0 | 1 => 0,
            2 => txs.iter().rev().find(|t| t.0 == domid).map_or(0, |t| t.1),
            _ => u32::from(b >> 2),
        };
        if !server.is_connected(domid) && domid != 0 {
            // Introduce it first, as dom0 would.
            let home = format!("/local/domain/{domid}");
            for m in [
                message(T::Mkdir, 0, 0, &[&strs(&[home.as_bytes()])]),
                message(
                    T::SetPerms,
                    0,
                    0,
                    &[&strs(&[
                        home.as_bytes(),
                        format!("n{domid}").as_bytes(),
                        b"r0",
                    ])],
                ),
                message(
                    T::Introduce,
                    0,
                    0,
                    &[&strs(&[domid.to_string().as_bytes(), b"1", b"1"])],
                ),
            ] {
                server.receive(0, &m, &mut NoHost).unwrap();
            }
            drain(&mut server, 0);
        }
        let value_len = usize::from(b >> 2) * 3;
        let value = vec![b'v'; value_len];
        let payload: Vec<u8> = match op % 20 {
            0 | 1 => [strs(&[path]), value].concat(),
            2 => strs(&[path]),
            3 => strs(&[path]),
            4 => strs(&[path]),
            5 => strs(&[path, b"tok"]),
            6 => strs(&[path, b"tok"]),
            7 => b"\0".to_vec(),
            8 => strs(&[if b & 4 == 0 { b"T" } else { b"F" }]),
            9 => strs(&[
                path,
                format!("n{}", DOMAINS[usize::from(b & 3)]).as_bytes(),
                b"r3",
                b"w5",
            ]),
            10 => strs(&[path]),
            11 => strs(&[path, (b as u32 * 3).to_string().as_bytes()]),
            12 => strs(&[DOMAINS[usize::from(b & 3)].to_string().as_bytes()]),
            13 => strs(&[DOMAINS[usize::from(b & 3)].to_string().as_bytes()]),
            14 => b"\0".to_vec(),
            15 => strs(&[b"check"]),
            16 => strs(&[
                DOMAINS[usize::from(b & 3)].to_string().as_bytes(),
                DOMAINS[usize::from(a & 3)].to_string().as_bytes(),
            ]),
            17 => {
                // The platform saw a domain shut down or go away.
                let victim = DOMAINS[usize::from(b & 3)];
                if b & 4 == 0 {
                    server.domain_shutdown(victim);
                } else {
                    server.domain_destroyed(victim, &mut NoHost);
                    txs.retain(|t| t.0 != victim);
                }
                server.check().expect("invariants");
                continue;
            }
            18 => {
                drain(&mut server, domid);
                pending.retain(|p| p.0 != domid);
                continue;
            }
            _ => Vec::new(),
        };
        let kind = match op % 20 {
            0 | 1 => T::Write,
            2 => T::Read,
            3 => T::Rm,
            4 => T::Directory,
            5 => T::Watch,
            6 => T::Unwatch,
            7 => T::TransactionStart,
            8 => T::TransactionEnd,
            9 => T::SetPerms,
            10 => T::GetPerms,
            11 => T::DirectoryPart,
            12 => T::Release,
            13 => T::Resume,
            14 => T::ResetWatches,
            15 => T::Control,
            16 => T::SetTarget,
            _ => T::Mkdir,
        };
        let payload = if op % 20 == 19 {
            strs(&[path])
        } else {
            payload
        };
        req_id += 1;
        let msg = message(kind, req_id, tx, &[&payload]);
        let owned_before = server.store().owned(domid);
        let usage_before = server.usage(domid);
        let privileged = server.config().is_privileged(domid);
        let used = server
            .receive(domid, &msg, &mut NoHost)
            .expect("well-formed header");
        if used < msg.len() {
            // Throttled: the domain has its quota of unread replies.
            assert!(!privileged);
            assert_eq!(
                server.connection(domid).unwrap().outstanding(),
                quotas.outstanding
            );
            // A partial request stays in the connection: finish it later.
            drain(&mut server, domid);
            let more = server.receive(domid, &msg[used..], &mut NoHost).unwrap();
            assert_eq!(used + more, msg.len());
        }
        pending.push((domid, req_id));
        let owned_after = server.store().owned(domid);
        if !privileged && owned_after > owned_before {
            assert!(
                owned_after <= quotas.nodes,
                "dom{domid} grew past its node quota"
            );
        }
        let usage_after = server.usage(domid);
        if !privileged && usage_after > usage_before {
            assert!(
                usage_after <= u64::from(quotas.memory) + touch_slack,
                "dom{domid} grew past its memory quota: {usage_after}"
            );
        }
        if kind == T::TransactionStart && domid != 0 {
            // Learn the id from the reply (drain only this domain).
            for id in drain(&mut server, domid) {
                pending.retain(|p| p.1 != id);
            }
            txs.push((domid, 1 + txs.len() as u32));
        }
        if sel & 0x80 != 0 {
            for id in drain(&mut server, domid) {
                assert!(
                    pending.iter().any(|p| *p == (domid, id)),
                    "reply with an unknown id"
                );
                pending.retain(|p| p.1 != id);
            }
        }
        server.check().expect("invariants");
    }
});
