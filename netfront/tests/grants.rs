//! Granted memory on every path (docs/drivers.md, "Grant ownership"): a
//! page the backend can still map is never given back to the allocator,
//! and nothing is leaked for good once the backend lets go — after an
//! error part-way through connecting, a dropped or cancelled device, a
//! backend that keeps its mappings forever, and many reconnections.

mod common;

use common::*;
use netfront::{ConnectOptions, Netfront, NetfrontError, TxOffload};
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Waker};
use xen::grant::GrantError;

/// Grants (and pages) of one queue: two rings, 256 TX and 256 RX buffers.
const PER_QUEUE: usize = 514;

fn options() -> ConnectOptions {
    ConnectOptions {
        max_queues: 1,
        ..ConnectOptions::default()
    }
}

/// Grants, pages in use and deferred pages of the frontend's domain.
fn counts(m: &Machine) -> (usize, usize, usize) {
    (
        m.hv.grants_of(FRONT),
        m.hv.frames_in_use(),
        m.hv.deferred_frames(),
    )
}

#[test]
fn more_queues_than_the_grant_table_holds_connect_with_fewer() {
    // Four grant frames (2048 entries, 8 reserved) hold three queues, not
    // the eight asked for (`MAX_QUEUES`) and offered.
    let m = Machine::new();
    m.hv.set_grant_entries(FRONT, 4 * 512);
    m.set(&format!("{BACK_PATH}/multi-queue-max-queues"), "8");
    let mut back = m.backend();
    let mut opts = options();
    opts.max_queues = netfront::front::MAX_QUEUES;
    let mut front = connect(&m, &mut back, opts).expect("connects with fewer queues");
    assert_eq!(front.queues().len(), 3);
    assert_eq!(
        m.get(&format!("{FRONT_ABS}/multi-queue-num-queues"))
            .as_deref(),
        Some("3")
    );
    assert_eq!(counts(&m), (3 * PER_QUEUE, 3 * PER_QUEUE, 0));
    front.send(&pattern(1000, 1), TxOffload::default()).unwrap();
    back.restart();
    let report = run(front.disconnect(), || {});
    assert_eq!((report.revoked, report.leaked), (3 * PER_QUEUE, 0));
    drop(front);
    assert_eq!(counts(&m), (0, 0, 0));
}

#[test]
fn a_queue_that_cannot_be_built_gives_everything_back() {
    // Not even one queue fits: the pages and grants made so far all go.
    let m = Machine::new();
    m.hv.set_grant_entries(FRONT, 300);
    let mut back = m.backend();
    let err = connect(&m, &mut back, options()).err();
    assert_eq!(err, Some(NetfrontError::Grant(GrantError::Exhausted)));
    assert_eq!(counts(&m), (0, 0, 0));
    // And a second queue that does not fit leaves the first one whole.
    let m = Machine::new();
    m.hv.set_grant_entries(FRONT, 8 + PER_QUEUE as u32 + 100);
    m.set(&format!("{BACK_PATH}/multi-queue-max-queues"), "2");
    let mut back = m.backend();
    let mut opts = options();
    opts.max_queues = 2;
    let front = connect(&m, &mut back, opts).unwrap();
    assert_eq!(front.queues().len(), 1);
    assert_eq!(counts(&m), (PER_QUEUE, PER_QUEUE, 0));
}

#[test]
fn a_device_dropped_while_the_backend_keeps_its_mappings() {
    let m = Machine::new();
    let mut back = m.backend();
    let front = connect(&m, &mut back, options()).unwrap();
    assert_eq!(counts(&m), (PER_QUEUE, PER_QUEUE, 0));
    // No disconnect: the device (and its environment) is simply dropped,
    // as by a cancelled task. The backend maps both rings, forever.
    let port = front.port();
    assert!(m.hv.port_open(FRONT, port));
    drop(front);
    assert!(!m.hv.port_open(FRONT, port), "the device's drop closed it");
    assert_eq!(counts(&m), (2, 2, 2), "the two ring pages are deferred");
    // Later allocations and grants retry, but never reuse them.
    for _ in 0..10 {
        let page = m.hv.alloc_page();
        assert!(back.conns[0].tx_page.frame() != page.frame());
        assert!(back.conns[0].rx_page.frame() != page.frame());
    }
    assert_eq!(counts(&m), (2, 2, 2));
    // The backend still reads its own ring, not someone else's page.
    let mut b = [0; 4];
    back.conns[0].tx_page.read(0, &mut b).unwrap();
    // Once it lets go, the next retry frees them.
    back.detach_rings();
    m.hv.retry_deferred();
    assert_eq!(counts(&m), (0, 0, 0));
    assert_eq!(m.hv.deferred_stats(), (2, 2));
}

#[test]
fn a_cancelled_connect_after_the_backend_mapped_the_ring() {
    // The backend maps the rings once we say Connected, then never
    // answers; the caller's timeout drops the connecting future.
    let m = Machine::new();
    let mut back = m.backend();
    {
        let mut fut = pin!(Netfront::connect(m.env(), FRONT_PATH, options()));
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..10_000 {
            assert!(fut.as_mut().poll(&mut cx).is_pending());
            if m.get(&format!("{FRONT_ABS}/state")).as_deref() == Some("4") && back.conns.is_empty()
            {
                back.attach_rings();
            }
            if !back.conns.is_empty() {
                break;
            }
        }
        assert_eq!(back.conns.len(), 1, "the backend mapped the rings");
    }
    let port: u32 = m
        .get(&format!("{FRONT_ABS}/event-channel"))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        !m.hv.port_open(FRONT, port),
        "closed with the dropped future"
    );
    assert_eq!(counts(&m), (2, 2, 2));
    back.detach_rings();
    m.hv.retry_deferred();
    assert_eq!(counts(&m), (0, 0, 0));
}

/// Reconnect after a backend restart. With `slow`, the old backend keeps
/// the old rings mapped until we have connected again (a netback still
/// catching up), and lets go only then.
fn restart_and_reconnect(
    m: &Machine,
    back: &mut SimNetback,
    front: Netfront<SimEnv>,
    slow: bool,
) -> Netfront<SimEnv> {
    let mut front = front;
    let old: Vec<Conn> = if slow {
        std::mem::take(&mut back.conns)
    } else {
        back.detach_rings();
        Vec::new()
    };
    m.set(&format!("{BACK_PATH}/state"), "6");
    assert!(run(front.check_backend(), || {}).is_err());
    let report = run(front.disconnect(), || {});
    assert_eq!(report.revoked + report.leaked, PER_QUEUE);
    assert_eq!(report.leaked, if slow { 2 } else { 0 });
    m.set(&format!("{BACK_PATH}/state"), "2");
    let mut front = reconnect(front.into_env(), back, options()).unwrap();
    if slow {
        assert_eq!(m.hv.deferred_frames(), 2, "old rings deferred, not reused");
        for c in old {
            m.hv.unmap_grant(FRONT, c.tx_ref);
            m.hv.unmap_grant(FRONT, c.rx_ref);
            m.hv.close(BACK, c.port);
        }
        m.hv.retry_deferred();
    }
    front.send(&pattern(200, 7), TxOffload::default()).unwrap();
    assert_eq!(back.process_tx(), 1);
    front
}

#[test]
fn reconnects_leave_grant_and_frame_counts_flat() {
    let m = Machine::new();
    let mut back = m.backend();
    let mut front = connect(&m, &mut back, options()).unwrap();
    let start = counts(&m);
    assert_eq!(start, (PER_QUEUE, PER_QUEUE, 0));
    for i in 0..200 {
        front = restart_and_reconnect(&m, &mut back, front, i % 2 == 1);
        assert_eq!(counts(&m), start, "after reconnect {i}");
    }
    let (deferred, freed) = m.hv.deferred_stats();
    assert_eq!((deferred, freed), (200, 200), "two per slow reconnect");
    back.restart();
    run(front.disconnect(), || {});
    drop(front);
    assert_eq!(counts(&m), (0, 0, 0));
}

#[test]
fn into_env_without_a_disconnect_gives_everything_back() {
    let m = Machine::new();
    let mut back = m.backend();
    let front = connect(&m, &mut back, options()).unwrap();
    let port = front.port();
    back.detach_rings();
    let env = front.into_env();
    assert!(!m.hv.port_open(FRONT, port));
    assert_eq!(counts(&m), (0, 0, 0));
    drop(env);
}

#[test]
fn a_backend_that_keeps_every_old_ring_mapped_costs_deferred_pages_only() {
    // Each restart leaves the old rings mapped (a backend that never lets
    // go): every reconnection defers two pages, none is ever handed out
    // again, and all of them come back once the mappings go.
    let m = Machine::new();
    let mut back = m.backend();
    let mut front = connect(&m, &mut back, options()).unwrap();
    let mut kept: Vec<Conn> = Vec::new();
    for k in 1..=20 {
        kept.extend(std::mem::take(&mut back.conns));
        m.set(&format!("{BACK_PATH}/state"), "6");
        assert!(run(front.check_backend(), || {}).is_err());
        let report = run(front.disconnect(), || {});
        assert_eq!(report.leaked, 2);
        m.set(&format!("{BACK_PATH}/state"), "2");
        front = reconnect(front.into_env(), &mut back, options()).unwrap();
        assert_eq!(
            counts(&m),
            (PER_QUEUE + 2 * k, PER_QUEUE + 2 * k, 2 * k),
            "after reconnect {k}"
        );
        front
            .send(&pattern(100, k as u8), TxOffload::default())
            .unwrap();
        assert_eq!(back.process_tx(), 1);
    }
    for c in kept {
        m.hv.unmap_grant(FRONT, c.tx_ref);
        m.hv.unmap_grant(FRONT, c.rx_ref);
        m.hv.close(BACK, c.port);
    }
    m.hv.retry_deferred();
    assert_eq!(counts(&m), (PER_QUEUE, PER_QUEUE, 0));
}
