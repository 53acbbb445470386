use super::*;
use crate::vchan::wire::{Orders, GRANTS, LEFT_ORDER, RIGHT_ORDER};
use proptest::prelude::*;
use xen::sim::{SimHypervisor, SimPage};

/// A server and a client end over the same simulated pages (the client's
/// are clones, as a mapping is the same memory).
fn pair(left: u16, right: u16, start: u32) -> (Stream<SimPage>, Stream<SimPage>) {
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
    for at in [LEFT_CONS, LEFT_PROD, RIGHT_CONS, RIGHT_PROD] {
        control.store_u32(at, start).unwrap();
    }
    let clone = |v: &Vec<SharedPage<SimPage>>| {
        v.iter()
            .map(|p| SharedPage::new(p.memory().clone()))
            .collect::<Vec<_>>()
    };
    let client_control = SharedPage::new(control.memory().clone());
    let (o, g) = read_layout(&client_control).unwrap();
    assert_eq!(o, orders);
    assert_eq!(g, grants);
    let client = Stream::new(Role::Client, client_control, o, clone(&l), clone(&r)).unwrap();
    let server = Stream::new(Role::Server, control, orders, l, r).unwrap();
    (server, client)
}

/// A deterministic byte stream.
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

/// Move `total` bytes from `w` to `r` in chunks of varying sizes; checks
/// every byte arrives in order; returns (events the writer had to send,
/// events the reader had to send).
fn pump(w: &mut Stream<SimPage>, r: &mut Stream<SimPage>, total: usize, seed: u64) -> (u32, u32) {
    let mut src = Pattern(seed);
    let mut expect = Pattern(seed);
    let mut pending: Vec<u8> = Vec::new();
    let (mut sent, mut got) = (0, 0);
    let (mut wn, mut rn) = (0, 0);
    let mut step = 0usize;
    while got < total {
        step += 1;
        let want = [1, 7, 100, 1000, 3000, 5000][step % 6].min(total - sent);
        if pending.is_empty() && want > 0 {
            pending.resize(want, 0);
            src.fill(&mut pending);
        }
        let p = w.write(&pending).unwrap();
        assert!(p.bytes <= pending.len());
        pending.drain(..p.bytes);
        sent += p.bytes;
        wn += p.notify as u32;
        let mut buf = vec![0u8; [4096, 3, 999, 70][step % 4]];
        let p = r.read(&mut buf).unwrap();
        let mut check = vec![0u8; p.bytes];
        expect.fill(&mut check);
        assert_eq!(&buf[..p.bytes], &check[..], "at byte {got}");
        got += p.bytes;
        rn += p.notify as u32;
        assert!(step < 1_000_000, "no progress");
    }
    (wn, rn)
}

#[test]
fn streams_both_ways_in_every_layout_with_wraparound() {
    for (l, r) in [(10, 11), (11, 10), (12, 12), (11, 13), (16, 12), (10, 14)] {
        for start in [0, u32::MAX - 3000, 0x8000_0000] {
            let (mut s, mut c) = pair(l, r, start);
            assert_eq!(c.write_capacity(), 1 << l);
            assert_eq!(c.read_capacity(), 1 << r);
            assert_eq!(s.read_capacity(), 1 << l);
            pump(&mut c, &mut s, 200_000, l as u64);
            pump(&mut s, &mut c, 200_000, r as u64 + 99);
            assert_eq!(s.unread().unwrap(), 0);
            assert_eq!(c.unread().unwrap(), 0);
        }
    }
}

#[test]
fn back_pressure_and_notify_bits() {
    let (mut s, mut c) = pair(12, 12, 0);
    // The server asked to hear of the client's writes when it set up.
    let first = c.write(b"hello").unwrap();
    assert_eq!(
        first,
        Progress {
            bytes: 5,
            notify: true
        }
    );
    // The request is used up: the next write is silent.
    assert!(!c.write(b"!").unwrap().notify);
    let mut buf = [0u8; 16];
    // Reading less than asked for: the server asks for the next write.
    let p = s.read(&mut buf).unwrap();
    assert_eq!((&buf[..p.bytes], p.notify), (&b"hello!"[..], false));
    assert_eq!(
        s.control().load_u8(CLI_NOTIFY).unwrap() & NOTIFY_WRITE,
        NOTIFY_WRITE
    );
    assert!(c.write(b"x").unwrap().notify);
    assert_eq!(s.read(&mut buf).unwrap().bytes, 1);

    // Fill the client's write ring: the rest is refused, and it asks to be
    // told when the server consumes.
    let big = vec![7u8; 5000];
    assert_eq!(c.write(&big).unwrap().bytes, 4096);
    assert_eq!(c.writable().unwrap(), 0);
    assert_eq!(c.write(&big).unwrap(), Progress::default());
    assert_ne!(c.control().load_u8(SRV_NOTIFY).unwrap() & NOTIFY_READ, 0);
    let mut out = vec![0u8; 1000];
    let p = s.read(&mut out).unwrap();
    assert_eq!(
        p,
        Progress {
            bytes: 1000,
            notify: true
        }
    );
    assert_eq!(c.writable().unwrap(), 1000);
    assert_eq!(c.unread().unwrap(), 3096);
    // Empty reads and writes do nothing.
    assert_eq!(c.write(&[]).unwrap(), Progress::default());
    assert_eq!(s.read(&mut []).unwrap(), Progress::default());
}

#[test]
fn live_bytes() {
    let (mut s, mut c) = pair(10, 11, 0);
    assert_eq!(s.peer_live().unwrap(), Live::NotYet);
    assert_eq!(c.peer_live().unwrap(), Live::Connected);
    c.set_live(Live::Connected).unwrap();
    assert_eq!(s.peer_live().unwrap(), Live::Connected);
    s.set_live(Live::Closed).unwrap();
    assert_eq!(c.peer_live().unwrap(), Live::Closed);
    // Data already written stays readable after the writer closed.
    c.write(b"last").unwrap();
    c.set_live(Live::Closed).unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(s.read(&mut buf).unwrap().bytes, 4);
}

#[test]
fn hostile_indices_break_the_stream_and_stay_broken() {
    let (mut s, mut c) = pair(12, 11, 0);
    // The client publishes a producer index 5000 bytes ahead of a 4 KiB ring.
    s.control().store_u32(LEFT_PROD, 5000).unwrap();
    let mut buf = [0u8; 64];
    let e = StreamError::BadIndex {
        ring: Direction::Read,
        cons: 0,
        prod: 5000,
    };
    assert_eq!(s.read(&mut buf), Err(e));
    // Sticky, even once the index looks sane again.
    s.control().store_u32(LEFT_PROD, 0).unwrap();
    assert_eq!(s.readable(), Err(e));
    assert_eq!(s.write(b"x"), Err(e));
    assert_eq!(s.peer_live(), Err(e));
    assert_eq!(s.broken(), Some(e));

    // A consumer index behind our producer by more than the ring (the
    // peer claims to have consumed what we never wrote).
    c.control().store_u32(LEFT_CONS, 10).unwrap();
    assert!(matches!(
        c.write(b"abc"),
        Err(StreamError::BadIndex {
            ring: Direction::Write,
            ..
        })
    ));
}

#[test]
fn the_peer_cannot_move_our_own_indices() {
    let (mut s, mut c) = pair(11, 12, 0);
    c.write(b"abcdef").unwrap();
    let mut buf = [0u8; 3];
    assert_eq!(s.read(&mut buf).unwrap().bytes, 3);
    // The client rewrites the server's consumer index and its own producer
    // index backwards: the server keeps its own count.
    s.control().store_u32(LEFT_CONS, 0).unwrap();
    assert_eq!(s.readable().unwrap(), 3);
    s.read(&mut buf).unwrap();
    assert_eq!(&buf, b"def");
    s.control().store_u32(LEFT_PROD, 1).unwrap();
    // prod 1 - cons 6 wraps to nearly 4 GiB in flight: refused.
    assert!(matches!(s.readable(), Err(StreamError::BadIndex { .. })));
}

#[test]
fn bad_live_and_layouts_are_errors() {
    let (mut s, _c) = pair(10, 11, 0);
    s.control().store_u8(CLI_LIVE, 9).unwrap();
    assert_eq!(s.peer_live(), Err(StreamError::Wire(WireError::BadLive(9))));

    let hv = SimHypervisor::new();
    let page = hv.alloc_page();
    for (l, r, e) in [
        (9, 12, WireError::BadOrder(9)),
        (11, 11, WireError::SameInPageRing(11)),
        (40000, 12, WireError::BadOrder(40000)),
        (20, 10, WireError::GrantsTooLong { grants: 256 }),
    ] {
        page.store_u16(LEFT_ORDER, l).unwrap();
        page.store_u16(RIGHT_ORDER, r).unwrap();
        assert_eq!(read_layout(&page).err(), Some(StreamError::Wire(e)));
    }
    // Pages that do not match the orders.
    let orders = Orders::check(12, 13).unwrap();
    let e = Stream::new(
        Role::Server,
        hv.alloc_page(),
        orders,
        vec![hv.alloc_page()],
        vec![hv.alloc_page()],
    );
    assert_eq!(
        e.err(),
        Some(StreamError::PageCount {
            ring: Direction::Write,
            want: 2,
            got: 1
        })
    );
    let e = Stream::new(
        Role::Client,
        hv.alloc_page(),
        Orders::check(10, 11).unwrap(),
        vec![hv.alloc_page()],
        vec![],
    );
    assert_eq!(
        e.err(),
        Some(StreamError::PageCount {
            ring: Direction::Write,
            want: 0,
            got: 1
        })
    );
    assert!(format_control(&page, orders, &[1, 2]).is_err());
    assert_eq!(GRANTS, 24);
}

#[derive(Clone, Debug)]
enum Op {
    ClientWrite(usize),
    ServerWrite(usize),
    ClientRead(usize),
    ServerRead(usize),
    /// The hostile side scribbles a value over a control-page field.
    Scribble(usize, u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0usize..6000).prop_map(Op::ClientWrite),
        (0usize..6000).prop_map(Op::ServerWrite),
        (0usize..6000).prop_map(Op::ClientRead),
        (0usize..6000).prop_map(Op::ServerRead),
        ((0usize..8), any::<u32>()).prop_map(|(f, v)| Op::Scribble(f * 4, v)),
    ]
}

proptest! {
    /// Whatever the peer writes into the control page, operations return
    /// values or errors and never panic; without scribbling, both streams
    /// carry exactly what was written.
    #[test]
    fn hostile_peer_never_panics(
        layout in prop_oneof![Just((10u16, 11u16)), Just((11, 12)), Just((12, 13)), Just((13, 10))],
        start in any::<u32>(),
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let (mut s, mut c) = pair(layout.0, layout.1, start);
        let mut scribbled = false;
        let (mut to_s, mut to_c) = (Pattern(1), Pattern(2));
        let (mut from_c, mut from_s) = (Pattern(1), Pattern(2));
        for op in ops {
            match op {
                Op::ClientWrite(n) | Op::ServerWrite(n) => {
                    let (end, pat) = if matches!(op, Op::ClientWrite(_)) { (&mut c, &mut to_s) } else { (&mut s, &mut to_c) };
                    let free = end.writable().unwrap_or(0);
                    let mut buf = vec![0u8; n.min(free)];
                    pat.fill(&mut buf);
                    if let Ok(p) = end.write(&buf) {
                        prop_assert!(scribbled || p.bytes == buf.len());
                    }
                }
                Op::ClientRead(n) | Op::ServerRead(n) => {
                    let (end, pat) = if matches!(op, Op::ClientRead(_)) { (&mut c, &mut from_s) } else { (&mut s, &mut from_c) };
                    let mut buf = vec![0u8; n];
                    if let Ok(p) = end.read(&mut buf) {
                        prop_assert!(p.bytes <= n);
                        let mut want = vec![0u8; p.bytes];
                        pat.fill(&mut want);
                        prop_assert!(scribbled || buf[..p.bytes] == want[..]);
                    }
                }
                Op::Scribble(at, v) => {
                    scribbled = true;
                    s.control().store_u32(at, v).unwrap();
                }
            }
            if !scribbled {
                prop_assert!(s.broken().is_none() && c.broken().is_none());
            }
        }
    }
}
