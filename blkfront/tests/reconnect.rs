//! blkfront when the backend goes away and comes back: `xl block-detach`
//! with requests in flight, the device directories removed and created
//! again (with a new backend path), an online backend restart, and a
//! backend that never returns (the caller's bound).

mod sim;

use blkfront::{BlkConfig, BlkError, BlkFront};
use sim::*;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Waker};
use xen::xenbus::XenbusState;

fn connect(world: &mut World) -> BlkFront<SimEnv> {
    let env = world.env();
    let backend = world.backend.clone();
    run(
        &backend,
        BlkFront::connect(env, &mut world.xs, DEVICE, BlkConfig::default()),
    )
    .expect("connect")
}

fn get(world: &World, path: &str) -> Option<String> {
    world
        .daemon
        .borrow()
        .get(path)
        .map(|v| String::from_utf8(v).unwrap())
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed ^ (i >> 9) as u8)
        .collect()
}

/// The toolstack's side of `xl block-detach` then `xl block-attach`, one
/// step per scheduling round: detach when `start` says so, remove the
/// directories once the backend is `Closed` (recording what the frontend
/// had published by then), attach at `new_path` after `gap` more rounds
/// (never, if `None`).
struct Toolstack {
    phase: u32,
    rounds: u32,
    gap: u32,
    new_path: Option<String>,
    /// The frontend's state when the backend reached `Closed`.
    front_state_at_closed: Option<String>,
}

impl Toolstack {
    fn new(gap: u32, new_path: Option<&str>) -> Self {
        Self {
            phase: 0,
            rounds: 0,
            gap,
            new_path: new_path.map(str::to_string),
            front_state_at_closed: None,
        }
    }

    fn step(
        &mut self,
        world_daemon: &std::rc::Rc<std::cell::RefCell<xenstored::Xenstored>>,
        b: &mut Blkback,
        start: bool,
    ) {
        match self.phase {
            0 if start => {
                b.toolstack_detach();
                self.phase = 1;
            }
            1 if b.state == 6 => {
                self.front_state_at_closed = world_daemon
                    .borrow()
                    .get(&format!("{DEVICE}/state"))
                    .map(|v| String::from_utf8(v).unwrap());
                b.toolstack_remove();
                self.phase = 2;
            }
            2 => {
                self.rounds += 1;
                if self.rounds >= self.gap {
                    if let Some(path) = self.new_path.take() {
                        b.toolstack_attach(&path);
                        self.phase = 3;
                    }
                }
            }
            _ => {}
        }
    }
}

#[test]
fn backend_closing_with_requests_in_flight_fails_them_and_reconnects() {
    let mut world = World::new(BackendConfig::default());
    let front = connect(&mut world);
    let backend = world.backend.clone();
    let hv = world.hv.clone();
    let daemon = world.daemon.clone();
    let old = pattern(64 << 10, 1);
    run(&backend, front.write(0, &old)).unwrap();

    // 256 KiB in flight: the backend takes the requests (mapping their
    // pages) and never answers; then `xl block-detach`.
    let data = pattern(256 << 10, 2);
    let mut ts = Toolstack::new(0, None);
    let mut mapped = Vec::new();
    let result = {
        let fut = front.guard(&mut world.xs, front.write(0, &data));
        run_all_with(vec![Box::pin(fut)], || {
            let mut b = backend.borrow_mut();
            b.xenbus_step();
            if ts.phase == 0 && b.unconsumed() > 0 {
                b.take_all_held();
                mapped = b.stats.distinct_grefs.iter().copied().collect();
                hv.borrow_mut().mapped.extend(mapped.iter().copied());
            }
            let start = b.held_len() > 0;
            ts.step(&daemon, &mut b, start);
        })
        .expect("the guarded write must end")
        .pop()
        .unwrap()
    };
    assert_eq!(result, Err(BlkError::BackendGone(XenbusState::Closing)));
    assert!(!mapped.is_empty());
    // Later operations fail at once, without touching the ring.
    let requests = front.stats().requests;
    let mut buf = vec![0; 4096];
    assert_eq!(
        run(&backend, front.read(0, &mut buf)),
        Err(BlkError::BackendGone(XenbusState::Closing))
    );
    assert_eq!(front.stats().requests, requests);

    // Close: `Closed` published before the backend closed (xl is not kept
    // waiting), grants the backend still maps leaked, the rest ended.
    let stats = {
        let fut = front.close(&mut world.xs);
        run_all_with(vec![Box::pin(fut)], || {
            let mut b = backend.borrow_mut();
            b.xenbus_step();
            ts.step(&daemon, &mut b, false);
        })
        .expect("close must end")
        .pop()
        .unwrap()
    };
    assert_eq!(ts.front_state_at_closed.as_deref(), Some("6"));
    assert_eq!(stats.leaked_grants as usize, mapped.len());
    assert_eq!(hv.borrow().live_grants(), mapped.len());
    assert!(hv.borrow().port_closed);
    for g in &mapped {
        assert!(hv.borrow().mapped.contains(g));
    }

    // Re-attached: wait, connect anew, retry the write that failed.
    ts.phase = 2;
    ts.gap = 5;
    ts.new_path = Some(BACKEND.to_string());
    let env = world.env();
    let front = {
        let xs = &mut world.xs;
        let fut = async move {
            blkfront::front::wait_backend_ready(xs, DEVICE).await?;
            BlkFront::connect(env, xs, DEVICE, BlkConfig::default()).await
        };
        run_all_with(vec![Box::pin(fut)], || {
            let mut b = backend.borrow_mut();
            b.xenbus_step();
            b.io_step();
            ts.step(&daemon, &mut b, false);
        })
        .expect("reconnect must end")
        .pop()
        .unwrap()
        .expect("reconnected")
    };
    assert_eq!(ts.phase, 3);
    // The retried write uses only new grants, none the old backend maps.
    let before = backend.borrow().stats.distinct_grefs.clone();
    run(&backend, front.write(0, &data)).unwrap();
    let after = backend.borrow().stats.distinct_grefs.clone();
    let fresh: Vec<_> = after.difference(&before).collect();
    assert!(!fresh.is_empty());
    assert!(fresh.iter().all(|g| !mapped.contains(g)));
    assert!(mapped.iter().all(|g| hv.borrow().mapped.contains(g)));
    run(&backend, front.flush()).unwrap();
    let mut back = vec![0; data.len()];
    run(&backend, front.read(0, &mut back)).unwrap();
    assert_eq!(back, data);
    assert_eq!(&backend.borrow().disk[..data.len()], &data[..]);
}

#[test]
fn device_directory_disappears_and_comes_back_at_a_new_backend_path() {
    let mut world = World::new(BackendConfig::default());
    let front = connect(&mut world);
    let backend = world.backend.clone();
    let daemon = world.daemon.clone();
    let new_backend = "/local/domain/0/backend/vbd/7/51712-again";

    // The detach while idle: the watch sees it.
    let mut ts = Toolstack::new(50, Some(new_backend));
    let gone = {
        let fut = front.watch_backend(&mut world.xs);
        run_all_with(vec![Box::pin(fut)], || {
            let mut b = backend.borrow_mut();
            b.xenbus_step();
            ts.step(&daemon, &mut b, true);
        })
        .unwrap()
        .pop()
        .unwrap()
    };
    assert_eq!(gone, BlkError::BackendGone(XenbusState::Closing));

    let env = world.env();
    let front = {
        let fut = front.reconnect(env, &mut world.xs, BlkConfig::default());
        run_all_with(vec![Box::pin(fut)], || {
            let mut b = backend.borrow_mut();
            b.xenbus_step();
            b.io_step();
            ts.step(&daemon, &mut b, false);
        })
        .expect("reconnect must end")
        .pop()
        .unwrap()
        .expect("reconnected")
    };
    assert_eq!(ts.front_state_at_closed.as_deref(), Some("6"));
    assert_eq!(
        ts.phase, 3,
        "the directories were removed and created again"
    );
    assert_eq!(front.device().backend, new_backend);
    assert_eq!(
        get(&world, &format!("{DEVICE}/state")).as_deref(),
        Some("4")
    );
    assert_eq!(
        get(&world, &format!("{new_backend}/state")).as_deref(),
        Some("4")
    );
    let data = pattern(64 << 10, 3);
    run(&backend, front.write(8, &data)).unwrap();
    let mut back = vec![0; data.len()];
    run(&backend, front.read(8, &mut back)).unwrap();
    assert_eq!(back, data);
    // The old watches are gone: only the new device's are left (none).
    assert_eq!(world.daemon.borrow().watch_count(), 0);
}

#[test]
fn an_online_backend_that_closes_is_asked_to_reconnect() {
    let mut world = World::new(BackendConfig::default());
    let front = connect(&mut world);
    let backend = world.backend.clone();
    // A backend restart that keeps the device (online stays 1).
    backend.borrow_mut().hold = true;
    let mut started = false;
    let mut buf = vec![0; 8192];
    let result = {
        let fut = front.guard(&mut world.xs, front.read(0, &mut buf));
        run_all_with(vec![Box::pin(fut)], || {
            let mut b = backend.borrow_mut();
            b.xenbus_step();
            if !started && b.unconsumed() > 0 {
                started = true;
                world
                    .daemon
                    .borrow_mut()
                    .set(&format!("{BACKEND}/state"), b"5");
                b.state = 5;
            }
        })
        .unwrap()
        .pop()
        .unwrap()
    };
    assert_eq!(result, Err(BlkError::BackendGone(XenbusState::Closing)));
    backend.borrow_mut().hold = false;
    let env = world.env();
    let front = run(
        &backend,
        front.reconnect(env, &mut world.xs, BlkConfig::default()),
    )
    .expect("reconnected");
    // The read that failed, retried.
    run(&backend, front.read(0, &mut buf)).unwrap();
    assert_eq!(
        get(&world, &format!("{BACKEND}/state")).as_deref(),
        Some("4")
    );
}

#[test]
fn a_backend_that_never_comes_back_waits_until_the_caller_gives_up() {
    let mut world = World::new(BackendConfig::default());
    let front = connect(&mut world);
    let backend = world.backend.clone();
    let hv = world.hv.clone();
    let daemon = world.daemon.clone();
    let data = pattern(32 << 10, 4);
    run(&backend, front.write(0, &data)).unwrap();
    assert!(hv.borrow().live_grants() > 0);

    let mut ts = Toolstack::new(0, None);
    let env = world.env();
    {
        let mut fut: Pin<Box<dyn Future<Output = Result<BlkFront<SimEnv>, BlkError>>>> =
            Box::pin(front.reconnect(env, &mut world.xs, BlkConfig::default()));
        let mut cx = Context::from_waker(Waker::noop());
        // The caller's bound: 20,000 scheduling rounds.
        for _ in 0..20_000 {
            assert!(fut.as_mut().poll(&mut cx).is_pending());
            let mut b = backend.borrow_mut();
            b.xenbus_step();
            ts.step(&daemon, &mut b, true);
        }
        assert_eq!(ts.phase, 2, "detached and removed, never attached");
        // Closed and released before waiting: nothing is left granted.
        assert_eq!(hv.borrow().live_grants(), 0);
        assert!(hv.borrow().port_closed);
        // The caller gives up.
        drop(fut);
    }
    assert_eq!(hv.borrow().live_grants(), 0);

    // Later the disk is attached again: a new wait (the dropped one's
    // watches were queued for removal by its guard) and a connection succeed.
    ts.gap = 10;
    ts.new_path = Some(BACKEND.to_string());
    let env = world.env();
    let front = {
        let xs = &mut world.xs;
        let fut = async move {
            blkfront::front::wait_backend_ready(xs, DEVICE).await?;
            BlkFront::connect(env, xs, DEVICE, BlkConfig::default()).await
        };
        run_all_with(vec![Box::pin(fut)], || {
            let mut b = backend.borrow_mut();
            b.xenbus_step();
            b.io_step();
            ts.step(&daemon, &mut b, false);
        })
        .expect("the second wait must end")
        .pop()
        .unwrap()
        .expect("connected after all")
    };
    assert_eq!(ts.phase, 3);
    let mut back = vec![0; data.len()];
    run(&backend, front.read(0, &mut back)).unwrap();
    assert_eq!(back, data);
}

#[test]
fn dropping_a_connected_device_ends_its_grants() {
    let mut world = World::new(BackendConfig::default());
    let front = connect(&mut world);
    let backend = world.backend.clone();
    let hv = world.hv.clone();
    run(&backend, front.write(0, &pattern(16 << 10, 5))).unwrap();
    // The backend maps the ring while connected: that page is leaked.
    drop(front);
    assert_eq!(hv.borrow().live_grants(), 1);
    assert!(hv.borrow().port_closed);
}
