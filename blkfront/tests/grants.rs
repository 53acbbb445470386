//! Granted memory when connecting is cut short (docs/drivers.md, "Grant
//! ownership"): the caller's timeout drops `BlkFront::connect` while the
//! backend never answers. The ring's grant is ended and the port closed;
//! a ring the backend has mapped keeps its grant (the kernel's page type
//! then defers the page: never freed while mapped).

mod sim;

use blkfront::{BlkConfig, BlkFront};
use sim::*;
use std::future::Future;
use std::task::{Context, Waker};

/// Poll `BlkFront::connect` until the frontend waits for `Connected` from
/// a backend frozen after `InitWait` (optionally mapping the ring), then
/// drop it.
fn cancel_connect(world: &mut World, map_ring: bool) {
    let backend = world.backend.clone();
    let hv = world.hv.clone();
    let daemon = world.daemon.clone();
    let env = world.env();
    let mut fut = Box::pin(BlkFront::connect(
        env,
        &mut world.xs,
        DEVICE,
        BlkConfig::default(),
    ));
    let mut cx = Context::from_waker(Waker::noop());
    let front_state = || {
        daemon
            .borrow()
            .get(&format!("/local/domain/{FRONT_DOMID}/{DEVICE}/state"))
            .map(|v| String::from_utf8(v).unwrap())
    };
    let mut waited = 0;
    for _ in 0..10_000 {
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        if backend.borrow().state == 2 {
            // Frozen: never maps through its own steps, never connects.
            backend.borrow_mut().state = 99;
        }
        if front_state().as_deref() == Some("3") {
            waited += 1;
            if waited > 20 {
                break;
            }
        }
    }
    assert!(waited > 20, "the frontend waits for Connected");
    assert_eq!(hv.borrow().live_grants(), 1, "the ring is granted");
    if map_ring {
        let gref: u32 = daemon
            .borrow()
            .get(&format!("/local/domain/{FRONT_DOMID}/{DEVICE}/ring-ref"))
            .map(|v| String::from_utf8(v).unwrap().parse().unwrap())
            .unwrap();
        hv.borrow_mut().mapped.insert(gref);
    }
    drop(fut);
}

#[test]
fn a_cancelled_connect_ends_the_ring_grant_and_closes_the_port() {
    let mut world = World::new(BackendConfig::default());
    cancel_connect(&mut world, false);
    assert_eq!(world.hv.borrow().live_grants(), 0);
    assert!(world.hv.borrow().port_closed);
}

#[test]
fn a_cancelled_connect_leaves_a_mapped_ring_granted() {
    let mut world = World::new(BackendConfig::default());
    cancel_connect(&mut world, true);
    // The backend maps it: the grant stays (its page is deferred by the
    // page type, not freed); the port is closed all the same.
    assert_eq!(world.hv.borrow().live_grants(), 1);
    assert!(world.hv.borrow().port_closed);
}
