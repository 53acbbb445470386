//! blkfront against a simulated blkback serving an in-memory disk, over
//! the real ring code, a simulated grant table and event channel, and the
//! simulated xenstored.

mod sim;

use blkfront::{BlkConfig, BlkError, BlkFront, ProtocolViolation};
use sim::*;
use std::future::Future;
use std::pin::Pin;
use xen::ring::RingError;

/// One block operation, boxed to run beside others.
type IoFuture<'a> = Pin<Box<dyn Future<Output = Result<(), BlkError>> + 'a>>;

fn connect(world: &mut World, config: BlkConfig) -> BlkFront<SimEnv> {
    let env = world.env();
    let backend = world.backend.clone();
    run(
        &backend,
        BlkFront::connect(env, &mut world.xs, DEVICE, config),
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

/// A byte pattern that differs for every 8-byte word of the disk.
fn pattern(offset: usize, len: usize, seed: u64) -> Vec<u8> {
    assert_eq!(offset % 8, 0);
    let mut out = Vec::with_capacity(len);
    for w in (offset / 8)..((offset + len) / 8) {
        let x = (w as u64 ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

#[test]
fn handshake_publishes_ring_and_reads_the_disk() {
    let mut world = World::new(BackendConfig {
        disk_bytes: 64 << 20,
        max_indirect_segments: Some(256),
        ..Default::default()
    });
    let front = connect(&mut world, BlkConfig::default());
    let ring_ref = get(&world, &format!("{DEVICE}/ring-ref")).expect("ring-ref");
    assert!(ring_ref.parse::<u32>().unwrap() >= 8);
    assert_eq!(
        get(&world, &format!("{DEVICE}/event-channel")).as_deref(),
        Some("17")
    );
    assert_eq!(
        get(&world, &format!("{DEVICE}/protocol")).as_deref(),
        Some("x86_64-abi")
    );
    assert_eq!(
        get(&world, &format!("{DEVICE}/state")).as_deref(),
        Some("4")
    );
    assert_eq!(
        get(&world, &format!("{BACKEND}/state")).as_deref(),
        Some("4")
    );
    assert_eq!(get(&world, &format!("{DEVICE}/ring-page-order")), None);
    assert!(world.backend.borrow().connected());

    let info = front.info();
    assert_eq!(info.sector_size, 512);
    assert_eq!(info.capacity_bytes(), 64 << 20);
    assert!(info.flush_cache && info.discard && !info.barrier && info.persistent);
    assert_eq!(info.max_indirect_segments, 256);
    // One page of 112-byte slots: 32 requests in flight.
    assert_eq!(front.ring_size(), 32);
    // We ask for 32 indirect segments even when offered more.
    assert_eq!(front.segments_per_request(), 32);
}

#[test]
fn multi_page_ring_when_offered() {
    let mut world = World::new(BackendConfig {
        max_ring_page_order: Some(2),
        ..Default::default()
    });
    let front = connect(
        &mut world,
        BlkConfig {
            max_ring_page_order: 3,
            ..Default::default()
        },
    );
    assert_eq!(front.ring_page_order(), 2);
    assert_eq!(
        get(&world, &format!("{DEVICE}/ring-page-order")).as_deref(),
        Some("2")
    );
    assert_eq!(get(&world, &format!("{DEVICE}/ring-ref")), None);
    for i in 0..4 {
        assert!(get(&world, &format!("{DEVICE}/ring-ref{i}")).is_some());
    }
    assert_eq!(world.backend.borrow().ring_page_order, 2);
    // (16384 - 64) / 112 = 145 slots, rounded down to 128.
    assert_eq!(front.ring_size(), 128);
    let data = pattern(0, 8192, 1);
    let backend = world.backend.clone();
    run(&backend, front.write(3, &data)).unwrap();
    let mut back = vec![0; 8192];
    run(&backend, front.read(3, &mut back)).unwrap();
    assert_eq!(back, data);
}

#[test]
fn reads_and_writes_of_512_byte_sectors() {
    let mut world = World::new(BackendConfig::default());
    let front = connect(&mut world, BlkConfig::default());
    let backend = world.backend.clone();
    // Lengths around the page and 11-segment boundaries.
    let mut sector = 0u64;
    for (i, sectors) in [1usize, 7, 8, 9, 88, 89, 176, 200].into_iter().enumerate() {
        let data = pattern(sector as usize * 512, sectors * 512, i as u64);
        run(&backend, front.write(sector, &data)).unwrap();
        assert_eq!(
            &backend.borrow().disk[sector as usize * 512..][..data.len()],
            &data[..],
            "{sectors} sectors reached the disk"
        );
        let mut back = vec![0xee; data.len()];
        run(&backend, front.read(sector, &mut back)).unwrap();
        assert_eq!(back, data, "{sectors} sectors read back");
        sector += sectors as u64 + 3;
    }
    let b = backend.borrow();
    assert_eq!(
        b.stats.max_segments, 11,
        "no request over 11 segments without indirect"
    );
    assert_eq!(b.stats.indirect, 0);
    assert_eq!(b.stats.bad_requests, 0);
}

#[test]
fn reads_and_writes_of_4096_byte_sectors() {
    let mut world = World::new(BackendConfig {
        sector_size: 4096,
        ..Default::default()
    });
    let front = connect(&mut world, BlkConfig::default());
    let backend = world.backend.clone();
    let info = front.info();
    assert_eq!(info.sector_size, 4096);
    assert_eq!(info.capacity_sectors(), 256);
    let data = pattern(5 * 4096, 13 * 4096, 9);
    run(&backend, front.write(5, &data)).unwrap();
    assert_eq!(&backend.borrow().disk[5 * 4096..][..data.len()], &data[..]);
    let mut back = vec![0; data.len()];
    run(&backend, front.read(5, &mut back)).unwrap();
    assert_eq!(back, data);
    // Not whole sectors, or past the end: refused before the ring.
    let requests = front.stats().requests;
    assert_eq!(
        run(&backend, front.read(0, &mut [0; 512])),
        Err(BlkError::OutOfRange)
    );
    assert_eq!(
        run(&backend, front.write(255, &[0; 8192])),
        Err(BlkError::OutOfRange)
    );
    assert_eq!(
        run(&backend, front.read(u64::MAX, &mut [0; 4096])),
        Err(BlkError::OutOfRange)
    );
    assert_eq!(front.stats().requests, requests);
    // The last sector is fine.
    run(&backend, front.write(255, &[7; 4096])).unwrap();
    assert!(backend.borrow().disk[255 * 4096..].iter().all(|&b| b == 7));
    assert_eq!(backend.borrow().stats.bad_requests, 0);
}

#[test]
fn many_requests_in_flight_answered_out_of_order() {
    let mut world = World::new(BackendConfig::default());
    let front = connect(&mut world, BlkConfig::default());
    let backend = world.backend.clone();
    backend.borrow_mut().hold = true;
    let datas: Vec<Vec<u8>> = (0..40).map(|i| pattern(i * 4096, 4096, 77)).collect();
    let futures: Vec<IoFuture<'_>> = datas
        .iter()
        .enumerate()
        .map(|(i, d)| Box::pin(front.write(i as u64 * 8, d)) as Pin<Box<dyn Future<Output = _>>>)
        .collect();
    let results = run_all_with(futures, || {
        let mut b = backend.borrow_mut();
        if b.hold {
            b.take_all_held();
            if b.held_len() == 32 {
                // The whole ring is in flight: answer newest first.
                b.hold = false;
                b.release();
            }
        } else {
            b.io_step();
        }
    })
    .expect("stalled");
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(backend.borrow().stats.max_outstanding, 32);
    assert_eq!(front.stats().max_in_flight, 32);
    for (i, d) in datas.iter().enumerate() {
        assert_eq!(&backend.borrow().disk[i * 4096..][..4096], &d[..]);
    }
    // Reads in flight together too.
    let mut bufs: Vec<Vec<u8>> = (0..40).map(|_| vec![0; 4096]).collect();
    let futures: Vec<IoFuture<'_>> = bufs
        .iter_mut()
        .enumerate()
        .map(|(i, b)| Box::pin(front.read(i as u64 * 8, b)) as Pin<Box<dyn Future<Output = _>>>)
        .collect();
    let results = run_all(&backend, futures).expect("stalled");
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(bufs, datas);
}

#[test]
fn indirect_segments_when_offered() {
    let mut world = World::new(BackendConfig {
        disk_bytes: 4 << 20,
        max_indirect_segments: Some(64),
        ..Default::default()
    });
    let front = connect(
        &mut world,
        BlkConfig {
            max_indirect_segments: 48,
            ..Default::default()
        },
    );
    assert_eq!(front.segments_per_request(), 48);
    let backend = world.backend.clone();
    let data = pattern(4096, 1 << 20, 3);
    run(&backend, front.write(8, &data)).unwrap();
    let mut back = vec![0; data.len()];
    run(&backend, front.read(8, &mut back)).unwrap();
    assert_eq!(back, data);
    let b = backend.borrow();
    // 256 pages in requests of 48: 6 of them per direction (5 full, 1 of 16).
    assert_eq!(b.stats.indirect, 12);
    assert_eq!(b.stats.max_segments, 48);
    assert_eq!(front.stats().indirect_requests, 12);
    assert_eq!(b.stats.bad_requests, 0);
}

#[test]
fn flush_barrier_and_discard() {
    // Flush offered.
    let mut world = World::new(BackendConfig::default());
    let front = connect(&mut world, BlkConfig::default());
    let backend = world.backend.clone();
    run(&backend, front.flush()).unwrap();
    assert_eq!(backend.borrow().stats.flushes, 1);
    run(&backend, front.write(0, &[9; 4096])).unwrap();
    run(&backend, front.discard(2, 4)).unwrap();
    assert_eq!(backend.borrow().stats.discards, 1);
    let disk = backend.borrow().disk[..4096].to_vec();
    assert!(disk[..1024].iter().all(|&b| b == 9));
    assert!(
        disk[1024..3072].iter().all(|&b| b == 0),
        "sectors 2..6 discarded"
    );
    assert!(disk[3072..].iter().all(|&b| b == 9));
    assert_eq!(
        run(&backend, front.discard(2040, 9)),
        Err(BlkError::OutOfRange)
    );

    // Only a barrier: flush is an empty barrier.
    let mut world = World::new(BackendConfig {
        flush: false,
        barrier: true,
        discard: false,
        ..Default::default()
    });
    let front = connect(&mut world, BlkConfig::default());
    let backend = world.backend.clone();
    run(&backend, front.flush()).unwrap();
    assert_eq!(backend.borrow().stats.barriers, 1);
    assert_eq!(backend.borrow().stats.flushes, 0);
    assert_eq!(
        run(&backend, front.discard(0, 1)),
        Err(BlkError::NotSupported)
    );

    // Neither: nothing to flush, nothing on the ring.
    let mut world = World::new(BackendConfig {
        flush: false,
        ..Default::default()
    });
    let front = connect(&mut world, BlkConfig::default());
    let backend = world.backend.clone();
    run(&backend, front.flush()).unwrap();
    assert_eq!(front.stats().requests, 0);
}

#[test]
fn pattern_of_64_mib_written_and_read_back() {
    let mut world = World::new(BackendConfig {
        disk_bytes: 64 << 20,
        max_indirect_segments: Some(256),
        ..Default::default()
    });
    let front = connect(&mut world, BlkConfig::default());
    let backend = world.backend.clone();
    let data = pattern(0, 64 << 20, 0x64);
    run(&backend, front.write(0, &data)).unwrap();
    run(&backend, front.flush()).unwrap();
    let mut back = vec![0; data.len()];
    run(&backend, front.read(0, &mut back)).unwrap();
    assert!(back == data, "64 MiB read back identical");
    assert!(backend.borrow().disk == data);
    let stats = front.stats();
    // 16384 pages in requests of 32 pages, each way, plus the flush.
    assert_eq!(stats.requests, 2 * 512 + 1);
    // Bounce pages are granted once: the pool never exceeds the ring's
    // worth, and no grant is made per request.
    let granted = world.hv.borrow().grants_made;
    assert_eq!(granted, u64::from(stats.pool_pages) + 1);
    assert!(stats.pool_pages as usize <= 32 * 33, "{}", stats.pool_pages);
    assert!(stats.max_in_flight > 1);
}

#[test]
fn ring_indices_wrap_around() {
    let mut hv = Hv::default();
    hv.ring_start = u32::MAX - 20;
    let mut world = World::with_hv(BackendConfig::default(), hv);
    let front = connect(&mut world, BlkConfig::default());
    let backend = world.backend.clone();
    for round in 0..100u64 {
        let sector = (round * 24) % 2000;
        let data = pattern(sector as usize * 512, 12 * 512, round);
        run(&backend, front.write(sector, &data)).unwrap();
        let mut back = vec![0; data.len()];
        run(&backend, front.read(sector, &mut back)).unwrap();
        assert_eq!(back, data, "round {round}");
    }
    assert_eq!(front.stats().responses, 200);
    assert_eq!(front.broken(), None);
}

#[test]
fn backend_io_errors_are_reported_and_the_device_stays_up() {
    let mut world = World::new(BackendConfig::default());
    let front = connect(&mut world, BlkConfig::default());
    let backend = world.backend.clone();
    backend.borrow_mut().hostility = Hostility::IoError;
    assert_eq!(run(&backend, front.write(0, &[1; 512])), Err(BlkError::Io));
    let mut buf = [0; 65536];
    assert_eq!(run(&backend, front.read(0, &mut buf)), Err(BlkError::Io));
    backend.borrow_mut().hostility = Hostility::None;
    run(&backend, front.write(0, &[1; 512])).unwrap();
    assert_eq!(front.broken(), None);
}

#[test]
fn hostile_backend_gets_an_error_and_a_disconnect() {
    for hostility in [
        Hostility::UnknownId,
        Hostility::Duplicate,
        Hostility::BadStatus,
        Hostility::WrongOperation,
        Hostility::BadProducerIndex,
    ] {
        let mut world = World::new(BackendConfig::default());
        let front = connect(&mut world, BlkConfig::default());
        let backend = world.backend.clone();
        run(&backend, front.write(0, &[1; 4096])).unwrap();
        backend.borrow_mut().hostility = hostility;
        // Several requests in flight when the garbage arrives.
        let mut buf = vec![0; 200 * 4096];
        let err = run(&backend, front.read(0, &mut buf)).unwrap_err();
        let BlkError::Protocol(violation) = err else {
            panic!("{hostility:?}: {err:?}");
        };
        match (hostility, violation) {
            (Hostility::UnknownId, ProtocolViolation::UnknownId(_))
            | (Hostility::Duplicate, ProtocolViolation::UnknownId(_))
            | (Hostility::BadStatus, ProtocolViolation::BadStatus { status: 7, .. })
            | (Hostility::WrongOperation, ProtocolViolation::WrongOperation { .. })
            | (
                Hostility::BadProducerIndex,
                ProtocolViolation::Ring(RingError::BadProducerIndex { .. }),
            ) => {}
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(front.broken(), Some(violation));
        // Nothing more goes on the ring.
        let requests = front.stats().requests;
        assert_eq!(
            run(&backend, front.write(0, &[2; 512])),
            Err(BlkError::Protocol(violation))
        );
        assert_eq!(front.stats().requests, requests);
        // Disconnect: both ends closed, every grant ended, port closed.
        run(&backend, front.disconnect(&mut world.xs)).unwrap();
        // The backend sees our Closed and follows.
        backend.borrow_mut().xenbus_step();
        assert_eq!(
            get(&world, &format!("{DEVICE}/state")).as_deref(),
            Some("6")
        );
        assert_eq!(
            get(&world, &format!("{BACKEND}/state")).as_deref(),
            Some("6")
        );
        assert_eq!(world.hv.borrow().live_grants(), 0, "{hostility:?}");
        assert!(world.hv.borrow().port_closed);
        assert_eq!(front.stats().leaked_grants, 0);
    }
}

#[test]
fn disconnect_ends_grants_and_later_io_fails() {
    let mut world = World::new(BackendConfig::default());
    let front = connect(&mut world, BlkConfig::default());
    let backend = world.backend.clone();
    run(&backend, front.write(0, &pattern(0, 65536, 5))).unwrap();
    assert!(world.hv.borrow().live_grants() > 1);
    run(&backend, front.disconnect(&mut world.xs)).unwrap();
    assert_eq!(world.hv.borrow().live_grants(), 0);
    assert!(world.hv.borrow().mapped.is_empty());
    assert_eq!(
        get(&world, &format!("{DEVICE}/state")).as_deref(),
        Some("6")
    );
    assert_eq!(
        run(&backend, front.read(0, &mut [0; 512])),
        Err(BlkError::Disconnected)
    );
}

#[test]
fn read_only_disk_refuses_writes() {
    let mut world = World::new(BackendConfig {
        read_only: true,
        ..Default::default()
    });
    let front = connect(&mut world, BlkConfig::default());
    let backend = world.backend.clone();
    assert!(front.info().read_only());
    assert_eq!(
        run(&backend, front.write(0, &[1; 512])),
        Err(BlkError::ReadOnly)
    );
    run(&backend, front.read(0, &mut [1; 512])).unwrap();
    assert_eq!(front.stats().requests, 1);
}

#[test]
fn bad_backend_keys_fail_the_handshake_and_undo_it() {
    let mut world = World::new(BackendConfig {
        sector_size: 1000,
        ..Default::default()
    });
    let env = world.env();
    let backend = world.backend.clone();
    let result = run(
        &backend,
        BlkFront::connect(env, &mut world.xs, DEVICE, BlkConfig::default()),
    );
    assert!(matches!(result, Err(BlkError::BadKey("sector-size"))));
    assert_eq!(
        get(&world, &format!("{DEVICE}/state")).as_deref(),
        Some("6")
    );
    assert!(world.hv.borrow().port_closed);
    // The backend had mapped the ring: that grant cannot be ended yet, so
    // the ring page is deferred by the page type rather than reused.
    assert_eq!(world.hv.borrow().live_grants(), 1);
}

#[test]
fn a_cancelled_operation_gives_its_slots_back() {
    let mut world = World::new(BackendConfig {
        disk_bytes: 4 << 20,
        ..Default::default()
    });
    let front = connect(&mut world, BlkConfig::default());
    let backend = world.backend.clone();
    backend.borrow_mut().hold = true;
    {
        let mut buf = vec![0; 1 << 20];
        let fut = front.read(0, &mut buf);
        // Poll until the ring is full, then drop the future.
        let mut fut = Box::pin(fut);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        for _ in 0..10 {
            assert!(fut.as_mut().poll(&mut cx).is_pending());
            backend.borrow_mut().take_all_held();
        }
        assert_eq!(
            backend.borrow().held_len(),
            24,
            "1 MiB in 24 requests of 11 pages"
        );
    }
    {
        let mut b = backend.borrow_mut();
        b.hold = false;
        b.release();
    }
    // The abandoned requests come back as their responses arrive.
    for round in 0..3u64 {
        let data = pattern(0, 32 * 44 * 1024, round);
        run(&backend, front.write(0, &data)).unwrap();
        let mut back = vec![0; data.len()];
        run(&backend, front.read(0, &mut back)).unwrap();
        assert_eq!(back, data);
    }
    assert_eq!(front.stats().max_in_flight, 32);
}

#[test]
fn wakeups_are_never_lost_under_a_real_executor() {
    let mut world = World::new(BackendConfig {
        disk_bytes: 8 << 20,
        ..Default::default()
    });
    let env = world.env();
    let backend = world.backend.clone();
    let connecting: Vec<Pin<Box<dyn Future<Output = _> + '_>>> = vec![Box::pin(BlkFront::connect(
        env,
        &mut world.xs,
        DEVICE,
        BlkConfig::default(),
    ))];
    let front = run_woken(&backend, connecting)
        .expect("connect stalled")
        .pop()
        .unwrap()
        .unwrap();
    // A slow disk: a few answers per backend run, so tasks finish while
    // others still wait and must take over waiting for events.
    backend.borrow_mut().answer_limit = Some(3);
    // Twelve tasks, each several requests long (up to 96 requests wanted
    // at once on a 32-slot ring), polled only when woken.
    let datas: Vec<Vec<u8>> = (0..12)
        .map(|i| pattern(i * (512 << 10), (i + 1) * 40960, i as u64))
        .collect();
    let writes: Vec<IoFuture<'_>> = datas
        .iter()
        .enumerate()
        .map(|(i, d)| Box::pin(front.write((i * 1024) as u64, d)) as IoFuture<'_>)
        .collect();
    let results = run_woken(&backend, writes).expect("a write lost its wake-up");
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let mut bufs: Vec<Vec<u8>> = datas.iter().map(|d| vec![0; d.len()]).collect();
    let reads: Vec<IoFuture<'_>> = bufs
        .iter_mut()
        .enumerate()
        .map(|(i, b)| Box::pin(front.read((i * 1024) as u64, b)) as IoFuture<'_>)
        .collect();
    let results = run_woken(&backend, reads).expect("a read lost its wake-up");
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(bufs, datas);
    assert_eq!(front.stats().max_in_flight, 32);
    // Events were suppressed while the other end was busy: far fewer than
    // one per request each way.
    let stats = front.stats();
    let hv = world.hv.borrow();
    assert!(stats.notifications < stats.requests, "{stats:?}");
    assert!(
        hv.notifies_to_front < stats.responses,
        "{}",
        hv.notifies_to_front
    );
    drop(hv);

    // A hostile answer wakes every waiter with the error.
    backend.borrow_mut().hostility = Hostility::UnknownId;
    let mut bufs: Vec<Vec<u8>> = (0..6).map(|_| vec![0; 200 << 10]).collect();
    let reads: Vec<IoFuture<'_>> = bufs
        .iter_mut()
        .enumerate()
        .map(|(i, b)| Box::pin(front.read((i * 1024) as u64, b)) as IoFuture<'_>)
        .collect();
    let results = run_woken(&backend, reads).expect("a waiter was not woken by the break");
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Err(BlkError::Protocol(ProtocolViolation::UnknownId(_))))),
        "{results:?}"
    );
}

#[test]
fn short_of_pages_requests_wait_for_each_other() {
    // Room for two 11-page requests at a time (plus change).
    let mut hv = Hv::default();
    hv.page_limit = Some(30);
    let mut world = World::with_hv(BackendConfig::default(), hv);
    let front = connect(&mut world, BlkConfig::default());
    let backend = world.backend.clone();
    let data = pattern(0, 1 << 20, 11);
    run(&backend, front.write(0, &data)).unwrap();
    let mut back = vec![0; data.len()];
    run(&backend, front.read(0, &mut back)).unwrap();
    assert_eq!(back, data);
    let stats = front.stats();
    assert_eq!(stats.pool_pages, 30);
    assert_eq!(stats.max_in_flight, 2);

    // Not even one request's worth, and nothing in flight to wait for.
    let mut hv = Hv::default();
    hv.page_limit = Some(5);
    let mut world = World::with_hv(BackendConfig::default(), hv);
    let front = connect(&mut world, BlkConfig::default());
    let backend = world.backend.clone();
    assert_eq!(
        run(&backend, front.write(0, &[0; 8 * 4096])),
        Err(BlkError::Env(blkfront::EnvError::OutOfMemory))
    );
    // Smaller requests still fit.
    run(&backend, front.write(0, &[3; 4 * 4096])).unwrap();
    assert!(backend.borrow().disk[..4 * 4096].iter().all(|&b| b == 3));
}

#[test]
fn data_survives_a_reconnect_as_after_a_guest_restart() {
    let mut world = World::new(BackendConfig {
        disk_bytes: 4 << 20,
        max_indirect_segments: Some(32),
        ..Default::default()
    });
    let data = pattern(0, 3 << 20, 0xfeed);
    {
        let front = connect(&mut world, BlkConfig::default());
        let backend = world.backend.clone();
        run(&backend, front.write(100, &data)).unwrap();
        run(&backend, front.flush()).unwrap();
        run(&backend, front.disconnect(&mut world.xs)).unwrap();
    }
    world.backend.borrow_mut().reinstall();
    let front = connect(&mut world, BlkConfig::default());
    let backend = world.backend.clone();
    let mut back = vec![0; data.len()];
    run(&backend, front.read(100, &mut back)).unwrap();
    assert!(back == data, "read back identical after reconnecting");
}
