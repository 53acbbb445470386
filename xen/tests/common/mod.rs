//! Test support shared by the integration tests: a tiny executor and a
//! simulated xenstored with transports to reach it.
#![allow(dead_code)]

pub use xen::sim::xenstored;

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

/// Poll `future` with a no-op waker until it completes, or give up after
/// `max_polls` polls (the future is stuck: nothing will ever wake it).
pub fn try_block_on<F: Future>(future: F, max_polls: usize) -> Option<F::Output> {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..max_polls {
        if let Poll::Ready(value) = future.as_mut().poll(&mut cx) {
            return Some(value);
        }
    }
    None
}

/// [`try_block_on`] that fails the test if the future stalls.
pub fn block_on<F: Future>(future: F) -> F::Output {
    try_block_on(future, 100_000).expect("future stalled: nothing would wake it")
}
