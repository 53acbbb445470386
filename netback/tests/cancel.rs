//! A connect whose future is dropped (a driver domain's connect timeout)
//! must leave no xenstore watch behind, wherever it was cancelled, and the
//! same client must be able to connect the vif afterwards.

mod common;

use common::*;
use netback::BackendOptions;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Waker};

/// Watches registered by netback (its tokens are `netback:<path>`).
fn netback_watches(m: &Machine) -> usize {
    m.xsd
        .borrow()
        .watch_tokens()
        .iter()
        .filter(|t| t.starts_with("netback:"))
        .count()
}

/// No limit on the reply bytes a connect may read.
const UNLIMITED: usize = 1 << 20;

/// Polls a netback connect of `FRONT`'s vif `polls` times with the
/// backend's xenstore replies limited to `budget` bytes, then drops it.
/// Returns whether it was still pending (it must be: no frontend runs)
/// and how many reply bytes it read.
fn cancelled_connect(back: &mut Backend, budget: usize, polls: usize) -> (bool, usize) {
    back.xs.transport().budget = Some(budget);
    let options = BackendOptions::default();
    let path = back_path(FRONT);
    let pending = {
        let mut attempt = pin!(netback::connect(
            &mut back.env,
            &mut back.xs,
            &path,
            &options
        ));
        let mut cx = Context::from_waker(Waker::noop());
        (0..polls).all(|_| attempt.as_mut().poll(&mut cx).is_pending())
    };
    let left = back.xs.transport().budget.take().unwrap_or(0);
    (pending, budget - left)
}

#[test]
fn a_connect_dropped_mid_wait_leaves_no_watch_and_the_retry_connects() {
    let m = Machine::new();
    m.add_vif(FRONT);
    let mut back = Backend::new(&m);
    assert!(cancelled_connect(&mut back, UNLIMITED, 50).0);
    // It got as far as waiting for the frontend: advertised, both watches
    // registered.
    assert_eq!(
        m.get(&format!("{}/state", back_path(FRONT))).as_deref(),
        Some("2")
    );
    // A destructor cannot talk to xenstored: the watches are still there,
    // queued for removal by the client.
    assert_eq!(netback_watches(&m), 2);
    assert_eq!(back.xs.queued_unwatches(), 2);
    // Any next request on the client removes them first.
    let home = run(back.xs.read("domid")).expect("read");
    assert_eq!(home, b"2");
    assert_eq!(netback_watches(&m), 0, "the cancelled connect's watches");
    assert_eq!(back.xs.queued_unwatches(), 0);
    assert_eq!(back.xs.unwatch_errors(), 0);

    // Cancel once more, then connect on the same client (which watches
    // the same nodes with the same token: refused with EEXIST if the old
    // watches were still registered).
    assert!(cancelled_connect(&mut back, UNLIMITED, 50).0);
    let (front, vif) = connect_pair(
        &m,
        &mut back,
        FRONT,
        front_options(),
        BackendOptions::default(),
    );
    front.expect("netfront connects");
    vif.expect("netback connects after a cancelled attempt");
    assert_eq!(netback_watches(&m), 0, "no watch outlives a connect");
    assert_eq!(back.xs.unwatch_errors(), 0);
}

#[test]
fn a_connect_dropped_at_any_reply_byte_leaves_no_watch() {
    // How many reply bytes the backend reads before it waits for the
    // frontend.
    let total = {
        let m = Machine::new();
        m.add_vif(FRONT);
        let mut back = Backend::new(&m);
        let (pending, read) = cancelled_connect(&mut back, UNLIMITED, 50);
        assert!(pending);
        assert_eq!(netback_watches(&m), 2, "it was waiting, with both watches");
        read
    };
    assert!(total > 200, "only {total} reply bytes before the wait");
    for budget in 0..=total {
        let m = Machine::new();
        m.add_vif(FRONT);
        let mut back = Backend::new(&m);
        assert!(cancelled_connect(&mut back, budget, 20).0);
        // Whatever it had registered goes with the next request (here, an
        // explicit flush; a daemon error, such as ENOENT for a watch whose
        // request never reached the daemon, is reported but harmless).
        let _ = run(back.xs.flush_unwatches());
        assert_eq!(netback_watches(&m), 0, "cancelled at reply byte {budget}");
        assert_eq!(back.xs.queued_unwatches(), 0);
        let (front, vif) = connect_pair(
            &m,
            &mut back,
            FRONT,
            front_options(),
            BackendOptions::default(),
        );
        front.expect("netfront connects");
        vif.unwrap_or_else(|e| panic!("cancelled at reply byte {budget}, then: {e:?}"));
        assert_eq!(netback_watches(&m), 0);
    }
}

#[test]
fn a_finished_connect_leaves_no_watch_either_way() {
    // Success.
    let m = Machine::new();
    m.add_vif(FRONT);
    let mut back = Backend::new(&m);
    let (_, vif) = connect_pair(
        &m,
        &mut back,
        FRONT,
        front_options(),
        BackendOptions::default(),
    );
    vif.expect("connects");
    assert_eq!(netback_watches(&m), 0);
    // Failure while waiting: the frontend goes Closing.
    let m = Machine::new();
    m.add_vif(FRONT);
    let mut back = Backend::new(&m);
    m.set(&format!("{}/state", front_path(FRONT)), "5");
    let options = BackendOptions::default();
    let r = run(netback::connect(
        &mut back.env,
        &mut back.xs,
        &back_path(FRONT),
        &options,
    ));
    assert!(r.is_err());
    assert_eq!(netback_watches(&m), 0);
    assert_eq!(back.xs.queued_unwatches(), 0);
    assert_eq!(
        m.get(&format!("{}/state", back_path(FRONT))).as_deref(),
        Some("6")
    );
}
