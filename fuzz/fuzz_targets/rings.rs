//! The request/response rings (`xen::ring`, over a simulated shared page)
//! with a hostile peer: the fuzzer drives a frontend end and a backend end
//! of one ring and, between their operations, scribbles anything anywhere
//! in the shared page (indices, event indices, slots). Properties: every
//! call returns a value or a typed `RingError`, never a panic; a ring never
//! reports more outstanding entries than it has slots; a frontend never
//! takes more responses than it pushed requests, nor a backend answer more
//! requests than it took.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xen::ring::RingError;
use xen::shared_page::SharedPage;
use xen::sim::SimHypervisor;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Req {
    id: u16,
    data: u32,
}
xen::impl_plain_data!(Req { id, data });

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Rsp {
    id: u16,
    status: i16,
}
xen::impl_plain_data!(Rsp { id, status });

fuzz_target!(|data: &[u8]| {
    let Some((&first, mut rest)) = data.split_first() else {
        return;
    };
    let hv = SimHypervisor::new();
    let page = hv.alloc_page();
    let raw = SharedPage::new(page.memory().clone());
    let back_page = SharedPage::new(page.memory().clone());
    // Start near the wrap of the 32-bit indices half of the time.
    let start = if first & 1 == 1 { u32::MAX - 3 } else { 0 };
    let mut front = page.into_front_ring::<Req, Rsp>(start);
    let mut back = back_page.into_back_ring::<Req, Rsp>(start);
    let size = front.size();
    assert_eq!(size, back.size());
    let (mut pushed, mut taken_rsp) = (0u64, 0u64);
    let (mut taken_req, mut answered) = (0u64, 0u64);
    while let [op, a, b, tail @ ..] = rest {
        rest = tail;
        match op % 8 {
            0 => match front.queue_request(Req {
                id: u16::from(*a),
                data: u32::from(*b),
            }) {
                Ok(()) => pushed += 1,
                Err(e) => assert_eq!(e, RingError::Full),
            },
            1 => {
                front.push_requests_and_check_notify();
            }
            2 => match front.take_response() {
                Ok(Some(_)) => {
                    taken_rsp += 1;
                    assert!(taken_rsp <= pushed, "more responses than requests");
                }
                Ok(None) => {}
                Err(e) => assert!(matches!(e, RingError::BadProducerIndex { .. })),
            },
            3 => match back.take_request() {
                Ok(Some(_)) => taken_req += 1,
                Ok(None) => {}
                Err(e) => assert!(matches!(e, RingError::BadProducerIndex { .. })),
            },
            4 => match back.queue_response(Rsp {
                id: u16::from(*a),
                status: i16::from(*b as i8),
            }) {
                Ok(()) => {
                    answered += 1;
                    assert!(answered <= taken_req, "answered a request never taken");
                }
                Err(e) => assert_eq!(e, RingError::NoRequestToAnswer),
            },
            5 => {
                back.push_responses_and_check_notify();
                let _ = back.final_check_for_requests();
                let _ = front.final_check_for_responses();
            }
            // The hostile peer: `len` bytes at offset `a * 16 + (b & 15)`.
            _ => {
                let offset = usize::from(*a) * 16 + usize::from(b & 15);
                let len = usize::from(b >> 4) + 1;
                let n = len.min(rest.len());
                let _ = raw.write(offset, &rest[..n]);
                rest = &rest[n..];
            }
        }
        if let Ok(n) = front.unconsumed_responses() {
            assert!(n <= size);
        }
        if let Ok(n) = back.unconsumed_requests() {
            assert!(n <= size);
        }
        assert!(front.free_requests() <= size);
    }
});
