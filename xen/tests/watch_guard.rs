//! `WatchGuard`: watches that go away with the code that waits on them,
//! even when its future is dropped; against the simulated xenstored.

mod common;

use common::xenstored::{SimTransport, Xenstored};
use common::{block_on, try_block_on};
use std::cell::RefCell;
use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::task::{Context, Waker};
use xen::abi::xs_wire::XsdSockmsgType;
use xen::xenbus::{read_state, write_state, XenbusDevice, XenbusState};
use xen::xenstore::{WatchGuard, XenStore, XsError};

fn sim() -> (Rc<RefCell<Xenstored>>, XenStore<SimTransport>) {
    let daemon = Rc::new(RefCell::new(Xenstored::new(7)));
    let xs = XenStore::new(SimTransport::new(daemon.clone(), 16));
    (daemon, xs)
}

#[test]
fn close_removes_the_watches_and_forgets_their_events() {
    let (daemon, mut xs) = sim();
    block_on(xs.watch("/a", "other")).unwrap();
    let mut g = WatchGuard::new(&mut xs);
    block_on(g.add("/a", "g")).unwrap();
    block_on(g.add("/b", "g")).unwrap();
    assert_eq!(g.len(), 2);
    assert_eq!(daemon.borrow().watch_count(), 3);
    // Events for both tokens, queued while the guard's owner waits.
    daemon.borrow_mut().set("/a/x", b"1");
    assert_eq!(block_on(g.next_watch_event_for("g")).unwrap().path, "/a");
    block_on(g.close()).unwrap();
    assert_eq!(daemon.borrow().watch_count(), 1, "only the other watch");
    // The guard's queued events are gone; the other watch's are not.
    assert!(try_block_on(xs.next_watch_event_for("g"), 200).is_none());
    assert_eq!(block_on(xs.next_watch_event()).unwrap().token, "other");
    assert_eq!(block_on(xs.next_watch_event()).unwrap().path, "/a/x");
    assert_eq!(xs.unwatch_errors(), 0);
}

#[test]
fn a_dropped_guard_is_unwatched_before_the_next_request() {
    let (daemon, mut xs) = sim();
    {
        let mut g = WatchGuard::new(&mut xs);
        block_on(g.add("/a", "t")).unwrap();
        block_on(g.add("b", "t")).unwrap();
    }
    // Nothing can be sent from a destructor.
    assert_eq!(daemon.borrow().watch_count(), 2);
    assert_eq!(xs.queued_unwatches(), 2);
    block_on(xs.write("/c", b"1")).unwrap();
    assert_eq!(daemon.borrow().watch_count(), 0);
    assert_eq!(xs.queued_unwatches(), 0);
    // The unwatches reached the daemon before the write.
    let kinds: Vec<u32> = daemon.borrow().requests.iter().map(|r| r.0).collect();
    assert_eq!(
        kinds[kinds.len() - 3..],
        [
            XsdSockmsgType::Unwatch as u32,
            XsdSockmsgType::Unwatch as u32,
            XsdSockmsgType::Write as u32
        ]
    );
    // So the same watch can be registered again (the daemon refuses a
    // duplicate with EEXIST).
    block_on(xs.watch("/a", "t")).unwrap();
    assert_eq!(block_on(xs.watch("/a", "t")), Err(XsError::Eexist));
    assert_eq!(xs.unwatch_errors(), 0);
}

#[test]
fn waiting_for_events_also_sends_queued_unwatches() {
    let (daemon, mut xs) = sim();
    block_on(xs.watch("/w", "keep")).unwrap();
    drop({
        let mut g = WatchGuard::new(&mut xs);
        block_on(g.add("/a", "t")).unwrap();
        g
    });
    assert_eq!(
        block_on(xs.next_watch_event_for("keep")).unwrap().path,
        "/w"
    );
    assert_eq!(daemon.borrow().watch_count(), 1);
}

#[test]
fn a_watch_the_guard_did_not_create_is_not_taken() {
    let (daemon, mut xs) = sim();
    block_on(xs.watch("/a", "t")).unwrap();
    {
        let mut g = WatchGuard::new(&mut xs);
        assert_eq!(block_on(g.add("/a", "t")), Err(XsError::Eexist));
        assert!(g.is_empty());
    }
    assert_eq!(xs.queued_unwatches(), 0);
    block_on(xs.write("/c", b"1")).unwrap();
    assert_eq!(daemon.borrow().watch_count(), 1, "the first watch stays");
}

#[test]
fn an_add_dropped_before_its_reply_is_still_removed() {
    let (daemon, mut xs) = sim();
    {
        let mut g = WatchGuard::new(&mut xs);
        // The request goes out, the reply is held back.
        g.store().transport().budget = Some(0);
        {
            let mut add = pin!(g.add("/a", "t"));
            let mut cx = Context::from_waker(Waker::noop());
            for _ in 0..10 {
                assert!(add.as_mut().poll(&mut cx).is_pending());
            }
        }
        g.store().transport().budget = None;
    }
    assert_eq!(daemon.borrow().watch_count(), 1, "registered meanwhile");
    assert_eq!(block_on(xs.read("domid")).unwrap(), b"7");
    assert_eq!(daemon.borrow().watch_count(), 0);
    assert_eq!(xs.unwatch_errors(), 0);
}

#[test]
fn unwatch_errors_are_counted_not_fatal() {
    let (daemon, mut xs) = sim();
    {
        let mut g = WatchGuard::new(&mut xs);
        block_on(g.add("/a", "t")).unwrap();
        // Removed behind the guard's back: its unwatch gets ENOENT.
        block_on(g.unwatch("/a", "t")).unwrap();
    }
    block_on(xs.write("/c", b"1")).unwrap();
    assert_eq!(xs.unwatch_errors(), 1);
    // close reports it.
    let mut g = WatchGuard::new(&mut xs);
    block_on(g.add("/b", "u")).unwrap();
    block_on(g.unwatch("/b", "u")).unwrap();
    assert_eq!(block_on(g.close()), Err(XsError::Enoent));
    assert_eq!(xs.unwatch_errors(), 2);
    assert_eq!(daemon.borrow().watch_count(), 0);
    assert_eq!(block_on(xs.read("domid")).unwrap(), b"7");
}

#[test]
fn state_is_written_and_read_through_one_pair() {
    let (daemon, mut xs) = sim();
    block_on(write_state(&mut xs, "device/vif/0", XenbusState::InitWait)).unwrap();
    assert_eq!(
        daemon.borrow().get("device/vif/0/state"),
        Some(b"2".to_vec())
    );
    assert_eq!(
        block_on(read_state(&mut xs, "device/vif/0")),
        Ok(XenbusState::InitWait)
    );
}

#[test]
fn a_wait_for_the_backend_dropped_mid_wait_leaves_no_watch() {
    let (daemon, mut xs) = sim();
    let backend = "/local/domain/0/backend/vif/7/0";
    {
        let mut d = daemon.borrow_mut();
        d.set("device/vif/0/backend", backend.as_bytes());
        d.set("device/vif/0/backend-id", b"0");
        d.set(&format!("{backend}/state"), b"2");
    }
    let dev = block_on(XenbusDevice::open(&mut xs, "device/vif/0")).unwrap();
    for _ in 0..2 {
        {
            let mut wait = pin!(dev.wait_for_backend(&mut xs, XenbusState::Connected));
            let mut cx = Context::from_waker(Waker::noop());
            for _ in 0..50 {
                assert!(wait.as_mut().poll(&mut cx).is_pending());
            }
        }
        assert_eq!(daemon.borrow().watch_count(), 1);
        // The next wait (same node, same token) is not refused.
    }
    daemon
        .borrow_mut()
        .scheduled
        .push_back((format!("{backend}/state"), b"4".to_vec()));
    assert_eq!(
        block_on(dev.wait_for_backend(&mut xs, XenbusState::Connected)),
        Ok(XenbusState::Connected)
    );
    assert_eq!(daemon.borrow().watch_count(), 0);
    assert_eq!(xs.unwatch_errors(), 0);
}
