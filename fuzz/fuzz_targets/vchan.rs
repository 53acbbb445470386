//! The Qubes vchan wire (libxenvchan's control page and rings, `qubes::vchan`)
//! with a hostile peer: a client's first look at a control page of
//! arbitrary bytes (orders, grant list), and a server and a client end
//! over simulated pages whose traffic the fuzzer interleaves with writes of
//! anything anywhere in the control page and the ring pages (indices, live
//! and notify bytes, orders). Properties: values or typed errors, never a
//! panic; a broken stream stays broken; no read returns more than asked;
//! until the fuzzer scribbles, both directions carry exactly the bytes
//! written and neither end breaks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qubes::vchan::stream::{format_control, read_layout, Role, Stream};
use qubes::vchan::wire::{self, Live, Orders, Place, PAGE_SIZE};
use xen::shared_page::SharedPage;
use xen::sim::{SimHypervisor, SimPage};

/// What a client makes of a control page of arbitrary bytes.
fn layout(data: &[u8]) {
    let hv = SimHypervisor::new();
    let page = hv.alloc_page();
    let _ = page.write(0, &data[..data.len().min(PAGE_SIZE)]);
    if let Ok((orders, grants)) = read_layout(&page) {
        assert_eq!(grants.len(), orders.grant_count());
        assert!(Orders::check(orders.left, orders.right).is_ok());
    }
    for &b in data.iter().take(4) {
        if let Ok(live) = Live::parse(b) {
            assert_eq!(live.byte(), b);
        }
    }
    if let [a, b, ..] = data {
        let _ = Orders::negotiate(usize::from(*a) << 6, usize::from(*b) << 8);
    }
}

struct Pattern(u64);

impl Pattern {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *b = (self.0 >> 56) as u8;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    layout(data);
    let [sel, s0, s1, s2, s3, tail @ ..] = data else {
        return;
    };
    let mut rest: &[u8] = tail;
    let (left, right) = [
        (10u16, 11u16),
        (11, 12),
        (12, 13),
        (13, 10),
        (12, 12),
        (14, 12),
    ][usize::from(*sel) % 6];
    let start = u32::from_le_bytes([*s0, *s1, *s2, *s3]);
    let hv = SimHypervisor::new();
    let orders = Orders::check(left, right).unwrap();
    let control = hv.alloc_page();
    let pages = |order: u16| match wire::place(order) {
        Place::Pages { count } => (0..count).map(|_| hv.alloc_page()).collect::<Vec<_>>(),
        Place::InPage { .. } => Vec::new(),
    };
    let (l, r) = (pages(left), pages(right));
    let grants: Vec<u32> = (100..100 + orders.grant_count() as u32).collect();
    format_control(&control, orders, &grants).unwrap();
    for at in [
        wire::LEFT_CONS,
        wire::LEFT_PROD,
        wire::RIGHT_CONS,
        wire::RIGHT_PROD,
    ] {
        control.store_u32(at, start).unwrap();
    }
    let clone = |v: &Vec<SharedPage<SimPage>>| {
        v.iter()
            .map(|p| SharedPage::new(p.memory().clone()))
            .collect::<Vec<_>>()
    };
    // The fuzzer's own handles on every page.
    let raw_control = SharedPage::new(control.memory().clone());
    let raw_rings: Vec<_> = clone(&l).into_iter().chain(clone(&r)).collect();
    let client_control = SharedPage::new(control.memory().clone());
    let (o, g) = read_layout(&client_control).unwrap();
    assert_eq!((o, &g), (orders, &grants));
    let mut c = Stream::new(Role::Client, client_control, o, clone(&l), clone(&r)).unwrap();
    let mut s = Stream::new(Role::Server, control, orders, l, r).unwrap();
    let mut scribbled = false;
    let (mut to_s, mut to_c) = (Pattern(1), Pattern(2));
    let (mut from_c, mut from_s) = (Pattern(1), Pattern(2));
    let mut rounds = 0;
    while let [op, a, b, tail @ ..] = rest {
        rest = tail;
        rounds += 1;
        if rounds > 256 {
            break;
        }
        let (s_broken, c_broken) = (s.broken(), c.broken());
        let n = usize::from(u16::from_le_bytes([*a, *b]));
        match op % 8 {
            0 | 1 => {
                let client = op % 8 == 0;
                let (end, pat) = if client {
                    (&mut c, &mut to_s)
                } else {
                    (&mut s, &mut to_c)
                };
                let free = end.writable().unwrap_or(0);
                let mut buf = vec![0u8; n.min(free)];
                pat.fill(&mut buf);
                if let Ok(p) = end.write(&buf) {
                    assert!(scribbled || p.bytes == buf.len());
                }
            }
            2 | 3 => {
                let client = op % 8 == 2;
                let (end, pat) = if client {
                    (&mut c, &mut from_s)
                } else {
                    (&mut s, &mut from_c)
                };
                let mut buf = vec![0u8; n];
                if let Ok(p) = end.read(&mut buf) {
                    assert!(p.bytes <= n);
                    let mut want = vec![0u8; p.bytes];
                    pat.fill(&mut want);
                    assert!(scribbled || buf[..p.bytes] == want[..], "bytes changed");
                }
            }
            4 => {
                let end = if op & 8 == 0 { &mut s } else { &mut c };
                let _ = end.peer_live();
                let _ = end.unread();
                let _ = end.request(*a);
                let _ = end.set_live(if *b & 1 == 0 {
                    Live::Connected
                } else {
                    Live::Closed
                });
            }
            // The hostile peer: `len` bytes at `n` in the control page.
            5 => {
                let len = usize::from(op >> 3) % 16 + 1;
                let bytes = &rest[..len.min(rest.len())];
                let _ = raw_control.write(n % PAGE_SIZE, bytes);
                rest = &rest[bytes.len()..];
                scribbled = true;
            }
            // ... or in a ring page.
            6 => {
                if let Some(page) = raw_rings.get(usize::from(op >> 3) % raw_rings.len().max(1)) {
                    let len = usize::from(*a % 32) + 1;
                    let bytes = &rest[..len.min(rest.len())];
                    let _ = page.write(n % PAGE_SIZE, bytes);
                    rest = &rest[bytes.len()..];
                    scribbled = true;
                }
            }
            _ => {
                let _ = (s.readable(), s.writable(), c.readable(), c.writable());
            }
        }
        // Broken stays broken (with its first error).
        if let Some(e) = s_broken {
            assert_eq!(s.broken(), Some(e));
        }
        if let Some(e) = c_broken {
            assert_eq!(c.broken(), Some(e));
        }
        if !scribbled {
            assert!(s.broken().is_none() && c.broken().is_none());
        }
    }
});
