//! The generic shared ring (io/ring.h): a frontend and a backend on one
//! heap page, including index wrap-around at 2^32 and hostile indices.

use proptest::prelude::*;
use std::collections::VecDeque;
use xen::abi::ring::SringHeader;
use xen::ring::{ring_size, BackRing, FrontRing, RingError};

/// A netif-tx-like request: 12 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Request {
    id: u16,
    flags: u16,
    gref: u32,
    len: u32,
}
xen::impl_plain_data!(Request {
    id,
    flags,
    gref,
    len
});

/// A netif-tx-like response: 4 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Response {
    id: u16,
    status: i16,
}
xen::impl_plain_data!(Response { id, status });

#[repr(C, align(4096))]
struct Page([u8; 4096]);

/// One shared page with both ends attached.
struct Pair {
    page: *mut Page,
    front: FrontRing<Request, Response>,
    back: BackRing<Request, Response>,
}

impl Pair {
    fn new(start: u32) -> Self {
        let page = Box::into_raw(Box::new(Page([0xAA; 4096])));
        // SAFETY: a live, 4096-aligned heap page freed only in `Drop`; no
        // reference to it is held while the rings use it.
        let (front, back) = unsafe {
            let front = FrontRing::init_at(page.cast(), 4096, start);
            let back = BackRing::attach(page.cast(), 4096, start);
            (front, back)
        };
        Self { page, front, back }
    }

    fn header(&self) -> SringHeader {
        // SAFETY: the page is live and 64-aligned; a volatile copy.
        unsafe { self.page.cast::<SringHeader>().read_volatile() }
    }

    fn set_header(&mut self, header: SringHeader) {
        // SAFETY: as in `header`; plays the hostile peer.
        unsafe { self.page.cast::<SringHeader>().write_volatile(header) }
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        // SAFETY: from `Box::into_raw` in `new`, freed once.
        drop(unsafe { Box::from_raw(self.page) });
    }
}

fn request(n: u32) -> Request {
    Request {
        id: n as u16,
        flags: (n >> 16) as u16,
        gref: n.wrapping_mul(7),
        len: n ^ 0x5a5a,
    }
}

#[test]
fn ring_size_rounds_down_to_a_power_of_two() {
    // (4096 - 64) / 12 = 336 slots fit; 256 is the power of two below.
    assert_eq!(ring_size::<Request, Response>(4096), 256);
    // 8-byte request, 12-byte response: the union is 12 bytes ...
    assert_eq!(ring_size::<[u32; 2], [u8; 12]>(4096), 256);
    // ... unless the request is 8-aligned: then it is 16 bytes, 252 fit.
    assert_eq!(ring_size::<u64, [u8; 12]>(4096), 128);
    // blkif-sized 112-byte slots: (4096 - 64) / 112 = 36 -> 32.
    assert_eq!(ring_size::<[u8; 112], [u8; 12]>(4096), 32);
    assert_eq!(ring_size::<u8, u8>(64), 0);
    assert_eq!(ring_size::<u8, u8>(65), 1);
    assert_eq!(core::mem::size_of::<SringHeader>(), 64);
}

#[test]
fn init_writes_the_header_like_shared_ring_init() {
    let pair = Pair::new(0);
    let h = pair.header();
    assert_eq!((h.req_prod, h.rsp_prod), (0, 0));
    assert_eq!((h.req_event, h.rsp_event), (1, 1));
    assert_eq!(h.pvt, [0; 4]);
    assert_eq!(h.pad, [0; 44]);
    assert_eq!(pair.front.size(), 256);
    assert_eq!(pair.back.size(), 256);
}

#[test]
fn requests_and_responses_round_trip() {
    let mut p = Pair::new(0);
    for n in 0..10 {
        p.front.queue_request(request(n)).unwrap();
    }
    // Nothing visible before the push.
    assert_eq!(p.back.take_request(), Ok(None));
    assert!(p.front.push_requests_and_check_notify());
    for n in 0..10 {
        let req = p.back.take_request().unwrap().unwrap();
        assert_eq!(req, request(n));
        p.back
            .queue_response(Response {
                id: req.id,
                status: n as i16 - 5,
            })
            .unwrap();
    }
    assert_eq!(p.back.take_request(), Ok(None));
    assert!(p.back.push_responses_and_check_notify());
    for n in 0..10 {
        let rsp = p.front.take_response().unwrap().unwrap();
        assert_eq!(rsp.id, n as u16);
        assert_eq!(rsp.status, n as i16 - 5);
    }
    assert_eq!(p.front.take_response(), Ok(None));
    assert_eq!(p.front.free_requests(), 256);
}

#[test]
fn notification_is_held_off_until_the_peer_rearms() {
    let mut p = Pair::new(0);
    p.front.queue_request(request(1)).unwrap();
    assert!(p.front.push_requests_and_check_notify(), "req_event=1 asks");
    // The backend has not re-armed (req_event still 1): no second kick.
    p.front.queue_request(request(2)).unwrap();
    assert!(!p.front.push_requests_and_check_notify());
    // Backend drains, finds nothing more, re-arms.
    assert!(p.back.take_request().unwrap().is_some());
    assert!(p.back.take_request().unwrap().is_some());
    assert_eq!(p.back.final_check_for_requests(), Ok(false));
    assert_eq!(p.header().req_event, 3);
    p.front.queue_request(request(3)).unwrap();
    assert!(p.front.push_requests_and_check_notify());
    // final check sees a request published before it ran.
    assert_eq!(p.back.final_check_for_requests(), Ok(true));

    // Same on the response side.
    p.back
        .queue_response(Response { id: 1, status: 0 })
        .unwrap();
    assert!(p.back.push_responses_and_check_notify());
    p.back
        .queue_response(Response { id: 2, status: 0 })
        .unwrap();
    assert!(!p.back.push_responses_and_check_notify());
    assert!(p.front.take_response().unwrap().is_some());
    assert!(p.front.take_response().unwrap().is_some());
    assert_eq!(p.front.final_check_for_responses(), Ok(false));
    assert_eq!(p.header().rsp_event, 3);
}

#[test]
fn waiting_for_n_requests_asks_for_the_event_that_brings_them() {
    let mut p = Pair::new(u32::MAX - 2);
    p.front.queue_request(request(1)).unwrap();
    p.front.queue_request(request(2)).unwrap();
    assert!(p.front.push_requests_and_check_notify());
    // Two unconsumed, three wanted: the plain final check re-arms nothing
    // (work is there), so the frontend's next push would not kick us.
    assert_eq!(p.back.final_check_for_requests(), Ok(true));
    let stale = p.header().req_event;
    assert_eq!(p.back.final_check_for_requests_n(3), Ok(false));
    assert_eq!(p.header().req_event, (u32::MAX - 2).wrapping_add(3));
    assert_ne!(p.header().req_event, stale);
    // One more request reaches the third: that push kicks (across 2^32).
    p.front.queue_request(request(3)).unwrap();
    assert!(p.front.push_requests_and_check_notify());
    assert_eq!(p.back.final_check_for_requests_n(3), Ok(true));
    // Enough already there: nothing is touched.
    let before = p.header().req_event;
    assert_eq!(p.back.final_check_for_requests_n(2), Ok(true));
    assert_eq!(p.header().req_event, before);
    // n is clamped to the ring: 0 acts as 1, more than the ring as the ring.
    for _ in 0..3 {
        assert!(p.back.take_request().unwrap().is_some());
    }
    assert_eq!(p.back.final_check_for_requests_n(0), Ok(false));
    assert_eq!(p.header().req_event, (u32::MAX - 2).wrapping_add(4));
    assert_eq!(p.back.final_check_for_requests_n(100_000), Ok(false));
    assert_eq!(p.header().req_event, (u32::MAX - 2).wrapping_add(3 + 256));
}

#[test]
fn full_ring_refuses_more_requests() {
    let mut p = Pair::new(0);
    for n in 0..256 {
        p.front.queue_request(request(n)).unwrap();
    }
    assert!(p.front.is_full());
    assert_eq!(p.front.queue_request(request(999)), Err(RingError::Full));
    p.front.push_requests_and_check_notify();
    let req = p.back.take_request().unwrap().unwrap();
    p.back
        .queue_response(Response {
            id: req.id,
            status: 0,
        })
        .unwrap();
    p.back.push_responses_and_check_notify();
    assert!(
        p.front.is_full(),
        "slot frees only when the response is taken"
    );
    p.front.take_response().unwrap().unwrap();
    assert_eq!(p.front.free_requests(), 1);
    p.front.queue_request(request(256)).unwrap();
}

#[test]
fn backend_cannot_answer_more_than_it_took() {
    let mut p = Pair::new(0);
    assert_eq!(
        p.back.queue_response(Response { id: 0, status: 0 }),
        Err(RingError::NoRequestToAnswer)
    );
}

#[test]
fn indices_wrap_at_u32_max() {
    for start in [u32::MAX - 5, u32::MAX, u32::MAX - 255, 0x8000_0000 - 3] {
        let mut p = Pair::new(start);
        let mut next_req = 0u32;
        let mut next_rsp = 0u32;
        for round in 0..7 {
            let batch = 100 + round * 20;
            for _ in 0..batch {
                p.front.queue_request(request(next_req)).unwrap();
                next_req += 1;
            }
            p.front.push_requests_and_check_notify();
            while let Some(req) = p.back.take_request().unwrap() {
                p.back
                    .queue_response(Response {
                        id: req.id,
                        status: 1,
                    })
                    .unwrap();
            }
            p.back.push_responses_and_check_notify();
            while let Some(rsp) = p.front.take_response().unwrap() {
                assert_eq!(rsp.id, next_rsp as u16);
                next_rsp += 1;
            }
        }
        assert_eq!(next_rsp, next_req);
        assert_eq!(p.header().req_prod, start.wrapping_add(next_req));
    }
}

#[test]
fn hostile_backend_index_is_an_error() {
    let mut p = Pair::new(0);
    p.front.queue_request(request(0)).unwrap();
    p.front.push_requests_and_check_notify();
    let mut h = p.header();
    // Two responses for one request.
    h.rsp_prod = 2;
    p.set_header(h);
    assert!(matches!(
        p.front.take_response(),
        Err(RingError::BadProducerIndex { prod: 2, ours: 0 })
    ));
    assert!(p.front.final_check_for_responses().is_err());
    // "Negative" count.
    h.rsp_prod = u32::MAX;
    p.set_header(h);
    assert!(p.front.take_response().is_err());
}

#[test]
fn hostile_frontend_index_is_an_error() {
    let mut p = Pair::new(10);
    let mut h = p.header();
    h.req_prod = 10 + 257;
    p.set_header(h);
    assert!(matches!(
        p.back.take_request(),
        Err(RingError::BadProducerIndex {
            prod: 267,
            ours: 10
        })
    ));
    assert!(p.back.final_check_for_requests().is_err());
    // Exactly a full ring is legal.
    h.req_prod = 10 + 256;
    p.set_header(h);
    let mut taken = 0;
    while p.back.take_request().unwrap().is_some() {
        taken += 1;
    }
    assert_eq!(taken, 256);
}

#[derive(Clone, Debug)]
enum Op {
    Queue(u8),
    PushRequests,
    TakeRequests(u8),
    Respond(u8),
    PushResponses,
    TakeResponses(u8),
    FinalChecks,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        any::<u8>().prop_map(Op::Queue),
        Just(Op::PushRequests),
        any::<u8>().prop_map(Op::TakeRequests),
        any::<u8>().prop_map(Op::Respond),
        Just(Op::PushResponses),
        any::<u8>().prop_map(Op::TakeResponses),
        Just(Op::FinalChecks),
    ]
}

proptest! {
    /// Any interleaving of well-behaved operations keeps FIFO order, never
    /// loses or invents an entry, and never reports an error.
    #[test]
    fn random_interleavings_match_a_fifo_model(
        start in any::<u32>(),
        ops in proptest::collection::vec(op(), 1..200),
    ) {
        let mut p = Pair::new(start);
        let mut queued = 0u32;
        let mut pushed = 0u32;
        let mut taken: VecDeque<Request> = VecDeque::new();
        let mut next_take = 0u32;
        let mut answered = 0u32;
        let mut published = 0u32;
        let mut received = 0u32;
        for op in ops {
            match op {
                Op::Queue(n) => for _ in 0..n {
                    let free = p.front.free_requests();
                    let r = p.front.queue_request(request(queued));
                    if free == 0 {
                        prop_assert_eq!(r, Err(RingError::Full));
                    } else {
                        prop_assert_eq!(r, Ok(()));
                        queued += 1;
                    }
                },
                Op::PushRequests => {
                    p.front.push_requests_and_check_notify();
                    pushed = queued;
                }
                Op::TakeRequests(n) => for _ in 0..n {
                    match p.back.take_request().unwrap() {
                        Some(req) => {
                            prop_assert_eq!(req, request(next_take));
                            next_take += 1;
                            taken.push_back(req);
                        }
                        None => {
                            prop_assert_eq!(next_take, pushed);
                            break;
                        }
                    }
                },
                Op::Respond(n) => for _ in 0..n {
                    match taken.pop_front() {
                        Some(req) => {
                            p.back.queue_response(Response { id: req.id, status: 0 }).unwrap();
                            answered += 1;
                        }
                        None => {
                            prop_assert_eq!(
                                p.back.queue_response(Response { id: 0, status: 0 }),
                                Err(RingError::NoRequestToAnswer)
                            );
                            break;
                        }
                    }
                },
                Op::PushResponses => {
                    p.back.push_responses_and_check_notify();
                    published = answered;
                }
                Op::TakeResponses(n) => for _ in 0..n {
                    match p.front.take_response().unwrap() {
                        Some(rsp) => {
                            prop_assert_eq!(rsp.id, received as u16);
                            received += 1;
                        }
                        None => {
                            prop_assert_eq!(received, published);
                            break;
                        }
                    }
                },
                Op::FinalChecks => {
                    prop_assert_eq!(p.front.final_check_for_responses().unwrap(), received != published);
                    prop_assert_eq!(p.back.final_check_for_requests().unwrap(), next_take != pushed);
                }
            }
            prop_assert_eq!(p.front.free_requests(), 256 - (queued - received));
        }
    }

    /// Whatever a hostile peer writes into the header, neither end panics or
    /// reads outside the page; bad indices come back as errors.
    #[test]
    fn garbage_headers_never_panic(
        start in any::<u32>(),
        req_prod in any::<u32>(),
        rsp_prod in any::<u32>(),
        req_event in any::<u32>(),
        rsp_event in any::<u32>(),
        steps in 0usize..600,
    ) {
        let mut p = Pair::new(start);
        let mut h = p.header();
        h.req_prod = req_prod;
        h.rsp_prod = rsp_prod;
        h.req_event = req_event;
        h.rsp_event = rsp_event;
        p.set_header(h);
        let mut took = 0;
        for _ in 0..steps {
            match p.back.take_request() {
                Ok(Some(_)) => {
                    took += 1;
                    let _ = p.back.queue_response(Response { id: 0, status: 0 });
                }
                Ok(None) | Err(_) => break,
            }
        }
        prop_assert!(took <= 256);
        let _ = p.back.push_responses_and_check_notify();
        let _ = p.back.final_check_for_requests();
        let mut h = p.header();
        h.rsp_prod = rsp_prod;
        p.set_header(h);
        for _ in 0..steps {
            match p.front.take_response() {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        let _ = p.front.final_check_for_responses();
        let _ = p.front.queue_request(request(0));
        let _ = p.front.push_requests_and_check_notify();
    }
}
