//! Host tests of the executor, driven through a mock [`Idle`].

use super::*;
use alloc::rc::Rc;
use alloc::vec;
use core::future::poll_fn;
use std::cell::RefCell;

/// A scripted hypervisor: a clock, ports that fire at given block calls or
/// when a task injects them, and a record of every `block` call.
#[derive(Default)]
struct MockIdle {
    now: Cell<u64>,
    /// Added to the clock on every `now_ns` call, to model time passing while
    /// tasks run (otherwise only `block` advances time).
    tick_per_read: u64,
    /// Ports a task asks to become pending (shared with the tasks).
    injected: Rc<RefCell<Vec<u32>>>,
    /// Ports that become pending during the n-th `block` call.
    during_block: VecDeque<Vec<u32>>,
    /// Ports reported by `take_pending`, not yet consumed.
    pending: Vec<u32>,
    /// Deadline argument of every `block` call.
    blocks: Vec<Option<u64>>,
    take_pending_calls: u64,
}

impl MockIdle {
    fn new() -> Self {
        Self::default()
    }
}

impl Idle for MockIdle {
    fn now_ns(&self) -> u64 {
        let now = self.now.get() + self.tick_per_read;
        self.now.set(now);
        now
    }

    fn take_pending(&mut self, wake: &mut dyn FnMut(u32)) {
        self.take_pending_calls += 1;
        self.pending.append(&mut self.injected.borrow_mut());
        for port in self.pending.drain(..) {
            wake(port);
        }
    }

    fn block(&mut self, deadline_ns: Option<u64>) {
        self.blocks.push(deadline_ns);
        assert!(
            self.blocks.len() < 100_000,
            "executor is busy-looping on block"
        );
        // A scripted non-empty batch of ports ends the block early (an event
        // arrived); otherwise the block lasts until its deadline.
        if let Some(ports) = self.during_block.pop_front() {
            if !ports.is_empty() {
                self.pending.extend(ports);
                return;
            }
        }
        match deadline_ns {
            Some(deadline) => self.now.set(self.now.get().max(deadline)),
            None => panic!("deadlock: block(None) with no event scripted"),
        }
    }
}

type Log = Rc<RefCell<Vec<&'static str>>>;

#[test]
fn tasks_run_in_spawn_order_and_interleave_at_yields() {
    let mut ex = Executor::new();
    let log: Log = Rc::default();
    for name in [("a1", "a2"), ("b1", "b2"), ("c1", "c2")] {
        let log = log.clone();
        ex.spawn(async move {
            log.borrow_mut().push(name.0);
            yield_now().await;
            log.borrow_mut().push(name.1);
        });
    }
    let mut idle = MockIdle::new();
    let h = ex.handle();
    ex.run_until(&mut idle, async move {
        while h.stats_live() > 0 {
            yield_now().await;
        }
    });
    assert_eq!(*log.borrow(), ["a1", "b1", "c1", "a2", "b2", "c2"]);
    assert!(idle.blocks.is_empty(), "never idle, never blocked");
}

impl Handle {
    /// Test helper: live task count.
    fn stats_live(&self) -> usize {
        self.shared.stats.get().live_tasks
    }
}

#[test]
fn run_until_returns_main_output() {
    let mut ex = Executor::new();
    let h = ex.handle();
    let out = ex.run_until(&mut MockIdle::new(), async move {
        h.sleep(10).await;
        h.now_ns() * 2
    });
    assert_eq!(out, 20);
}

#[test]
fn waking_twice_before_poll_runs_once() {
    let mut ex = Executor::new();
    let polls = Rc::new(Cell::new(0u32));
    let stored: Rc<RefCell<Option<Waker>>> = Rc::default();
    {
        let (polls, stored) = (polls.clone(), stored.clone());
        ex.spawn(poll_fn(move |cx| {
            polls.set(polls.get() + 1);
            *stored.borrow_mut() = Some(cx.waker().clone());
            if polls.get() == 3 {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }));
    }
    let mut idle = MockIdle::new();
    let s = stored.clone();
    let p = polls.clone();
    ex.run_until(&mut idle, async move {
        yield_now().await; // the task has now been polled once
        assert_eq!(p.get(), 1);
        let waker = s.borrow().clone().expect("task registered its waker");
        waker.wake_by_ref();
        waker.wake_by_ref();
        s.borrow_mut().take().expect("stored").wake(); // by value
        yield_now().await;
        yield_now().await;
        assert_eq!(p.get(), 2, "three wakes before the poll: one poll");
    });
    assert_eq!(polls.get(), 2);
}

#[test]
fn wake_during_own_poll_requeues_the_task() {
    let mut ex = Executor::new();
    let h = ex.handle();
    let count = Rc::new(Cell::new(0));
    let c = count.clone();
    ex.spawn(async move {
        for _ in 0..5 {
            c.set(c.get() + 1);
            yield_now().await;
        }
    });
    ex.run_until(&mut MockIdle::new(), async move {
        while h.stats_live() > 0 {
            yield_now().await;
        }
    });
    assert_eq!(count.get(), 5);
}

#[test]
fn equal_deadlines_fire_in_registration_order() {
    let mut ex = Executor::new();
    let h = ex.handle();
    let log: Log = Rc::default();
    for (name, deadline) in [("x", 100), ("y", 100), ("early", 50), ("z", 100)] {
        let (h, log) = (h.clone(), log.clone());
        ex.spawn(async move {
            h.sleep_until(deadline).await;
            log.borrow_mut().push(name);
            assert!(h.now_ns() >= deadline);
        });
    }
    let mut idle = MockIdle::new();
    let hm = h.clone();
    ex.run_until(&mut idle, async move { hm.sleep_until(200).await });
    assert_eq!(*log.borrow(), ["early", "x", "y", "z"]);
    assert_eq!(idle.blocks, [Some(50), Some(100), Some(200)]);
}

#[test]
fn idle_executor_blocks_with_the_sleeping_tasks_deadline() {
    let mut ex = Executor::new();
    let h = ex.handle();
    let done = Rc::new(Cell::new(false));
    let main_waker: Rc<RefCell<Option<Waker>>> = Rc::default();
    {
        let (h, done, main_waker) = (h.clone(), done.clone(), main_waker.clone());
        ex.spawn(async move {
            h.sleep_until(1_000_000).await;
            done.set(true);
            if let Some(w) = main_waker.borrow_mut().take() {
                w.wake();
            }
        });
    }
    let mut idle = MockIdle::new();
    let d = done.clone();
    // Main waits for something only the sleeping task can cause.
    ex.run_until(
        &mut idle,
        poll_fn(move |cx| {
            if d.get() {
                return Poll::Ready(());
            }
            *main_waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        }),
    );
    assert_eq!(idle.blocks, [Some(1_000_000)], "one block, at the deadline");
    assert_eq!(ex.stats().blocks, 1);
    assert_eq!(h.now_ns(), 1_000_000);
}

#[test]
fn one_sleeping_task_blocks_once_with_its_deadline() {
    let mut ex = Executor::new();
    let h = ex.handle();
    let done = Rc::new(Cell::new(false));
    let d = done.clone();
    let hs = h.clone();
    ex.spawn(async move {
        hs.sleep_until(7_777).await;
        d.set(true);
    });
    let mut idle = MockIdle::new();
    // Main waits for a port that fires during the second block, so the only
    // timer the executor can block on is the task's.
    idle.during_block = VecDeque::from([vec![], vec![9]]);
    let ev = h.event(9);
    ex.run_until(&mut idle, ev);
    assert!(done.get());
    assert_eq!(idle.blocks, [Some(7_777), None]);
}

#[test]
fn ten_thousand_tasks_complete_and_are_freed() {
    let mut ex = Executor::new();
    let h = ex.handle();
    let finished = Rc::new(Cell::new(0u32));
    for i in 0..10_000u64 {
        let (h, finished) = (h.clone(), finished.clone());
        ex.spawn(async move {
            h.sleep(i % 97).await;
            yield_now().await;
            finished.set(finished.get() + 1);
        });
    }
    assert_eq!(ex.stats().live_tasks, 10_000);
    let mut idle = MockIdle::new();
    let hm = h.clone();
    ex.run_until(&mut idle, async move {
        while hm.stats_live() > 0 {
            hm.sleep(1).await;
        }
    });
    assert_eq!(finished.get(), 10_000);
    let stats = ex.stats();
    assert_eq!(stats.live_tasks, 0);
    assert_eq!(stats.spawned, 10_000);
    assert_eq!(h.shared.tasks.borrow().live, 0);
    assert!(h.shared.reactor.borrow().timers.is_empty());
    // 97 distinct deadlines: at most one block each (plus main's own).
    assert!(idle.blocks.len() <= 200, "{} blocks", idle.blocks.len());
}

#[test]
fn tasks_spawn_tasks() {
    let mut ex = Executor::new();
    let h = ex.handle();
    let count = Rc::new(Cell::new(0));
    async fn tree(h: Handle, depth: u32, count: Rc<Cell<u32>>) {
        count.set(count.get() + 1);
        if depth > 0 {
            for _ in 0..3 {
                h.spawn(tree(h.clone(), depth - 1, count.clone()));
            }
        }
    }
    ex.spawn(tree(h.clone(), 4, count.clone()));
    ex.run_until(&mut MockIdle::new(), async move {
        while h.stats_live() > 0 {
            yield_now().await;
        }
    });
    // 1 + 3 + 9 + 27 + 81
    assert_eq!(count.get(), 121);
    assert_eq!(ex.stats().spawned, 121);
}

/// Sets its flag when dropped.
struct DropFlag(Rc<Cell<bool>>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.set(true);
    }
}

#[test]
fn finished_task_is_dropped_immediately() {
    let mut ex = Executor::new();
    let h = ex.handle();
    let dropped = Rc::new(Cell::new(false));
    let big = Rc::new(vec![0u8; 4096]);
    {
        let flag = DropFlag(dropped.clone());
        let big = big.clone();
        ex.spawn(async move {
            let _keep = (&flag, &big);
            yield_now().await;
        });
    }
    assert_eq!(Rc::strong_count(&big), 2);
    let d = dropped.clone();
    ex.run_until(&mut MockIdle::new(), async move {
        while !d.get() {
            yield_now().await;
        }
        assert_eq!(h.stats_live(), 0);
    });
    assert_eq!(Rc::strong_count(&big), 1, "task's captures freed");
}

#[test]
fn stale_waker_of_a_finished_task_does_not_poll_the_slot_reuser() {
    let mut ex = Executor::new();
    let h = ex.handle();
    let stale: Rc<RefCell<Option<Waker>>> = Rc::default();
    {
        let stale = stale.clone();
        ex.spawn(poll_fn(move |cx| {
            *stale.borrow_mut() = Some(cx.waker().clone());
            Poll::Ready(())
        }));
    }
    let polls = Rc::new(Cell::new(0));
    let (p, s) = (polls.clone(), stale.clone());
    ex.run_until(&mut MockIdle::new(), async move {
        yield_now().await; // first task done, slot free
        let p2 = p.clone();
        let id = h.spawn(poll_fn(move |_| {
            p2.set(p2.get() + 1);
            Poll::<()>::Pending
        }));
        assert_eq!(id.index, 0, "slot reused");
        yield_now().await;
        assert_eq!(p.get(), 1);
        s.borrow().as_ref().unwrap().wake_by_ref();
        yield_now().await;
        yield_now().await;
        assert_eq!(p.get(), 1, "stale wake ignored");
    });
}

#[test]
fn notification_between_creation_and_first_poll_is_not_lost() {
    let mut ex = Executor::new();
    let h = ex.handle();
    let mut idle = MockIdle::new();
    let ev = h.event(5);
    // The port fires while the future exists but has never been polled.
    idle.injected.borrow_mut().push(5);
    ex.run_until(&mut idle, yield_now());
    assert!(idle.take_pending_calls >= 1);
    assert_eq!(h.shared.reactor.borrow().ports[&5].notifications, 1);
    // No further notification: it must still complete, without blocking.
    ex.run_until(&mut idle, ev);
    assert!(idle.blocks.is_empty());
}

#[test]
fn event_created_after_a_notification_waits_for_the_next() {
    let mut ex = Executor::new();
    let h = ex.handle();
    let mut idle = MockIdle::new();
    let _registered = h.event(5);
    idle.injected.borrow_mut().push(5);
    ex.run_until(&mut idle, yield_now());
    let late = h.event(5);
    let hm = h.clone();
    let winner = ex.run_until(&mut idle, select(late, hm.sleep_until(1_000)));
    assert_eq!(winner, Either::Right(()));
    // And the next notification does complete a fresh event.
    idle.during_block.push_back(vec![5]);
    let winner = ex.run_until(&mut idle, select(h.event(5), h.sleep_until(2_000)));
    assert_eq!(winner, Either::Left(()));
}

#[test]
fn event_from_one_task_wakes_all_its_waiters_only() {
    let mut ex = Executor::new();
    let h = ex.handle();
    let woken = Rc::new(Cell::new(0));
    for port in [1u32, 1, 2] {
        let (h, woken) = (h.clone(), woken.clone());
        ex.spawn(async move {
            h.event(port).await;
            woken.set(woken.get() + 1);
        });
    }
    let mut idle = MockIdle::new();
    let injected = idle.injected.clone();
    let hm = h.clone();
    let w = woken.clone();
    ex.run_until(&mut idle, async move {
        yield_now().await; // all three waiting
        injected.borrow_mut().push(1);
        hm.sleep(10).await;
        assert_eq!(w.get(), 2);
    });
    assert_eq!(ex.stats().live_tasks, 1, "the port-2 waiter still waits");
}

#[test]
fn unclaimed_notifications_are_counted_and_dropped() {
    let mut ex = Executor::new();
    let mut idle = MockIdle::new();
    idle.injected.borrow_mut().extend([40, 41]);
    ex.run_until(&mut idle, yield_now());
    assert_eq!(ex.stats().unclaimed_notifications, 2);
    assert!(ex.handle().shared.reactor.borrow().ports.is_empty());
}

#[test]
fn event_listener_coalesces_bursts_and_never_loses_one() {
    let mut ex = Executor::new();
    let h = ex.handle();
    let mut idle = MockIdle::new();
    let injected = idle.injected.clone();
    let hm = h.clone();
    ex.run_until(&mut idle, async move {
        let mut listener = hm.event_listener(3);
        assert_eq!(listener.port(), 3);
        // Three notifications while the "driver" is busy elsewhere.
        injected.borrow_mut().extend([3, 3, 3]);
        hm.sleep(5).await;
        let before = hm.now_ns();
        listener.wait().await; // completes at once: nothing lost
        assert_eq!(hm.now_ns(), before);
        // The burst was coalesced: the next wait needs a new notification.
        let r = select(listener.wait(), hm.sleep(100)).await;
        assert_eq!(r, Either::Right(()));
    });
}

#[test]
fn self_waking_task_cannot_starve_others_nor_timers() {
    let mut ex = Executor::new();
    let h = ex.handle();
    let spins = Rc::new(Cell::new(0u64));
    {
        let spins = spins.clone();
        ex.spawn(async move {
            loop {
                spins.set(spins.get() + 1);
                yield_now().await;
            }
        });
    }
    let other = Rc::new(Cell::new(0u32));
    {
        let other = other.clone();
        ex.spawn(async move {
            for _ in 0..10 {
                other.set(other.get() + 1);
                yield_now().await;
            }
        });
    }
    let mut idle = MockIdle {
        tick_per_read: 1,
        ..MockIdle::new()
    };
    let hm = h.clone();
    ex.run_until(&mut idle, async move { hm.sleep(50).await });
    assert_eq!(other.get(), 10);
    assert!(spins.get() >= 10);
    assert!(idle.blocks.is_empty(), "always something ready");
    // The same holds for events.
    let hm = h.clone();
    let injected = idle.injected.clone();
    let ev = h.event(8);
    injected.borrow_mut().push(8);
    ex.run_until(&mut idle, async move {
        ev.await;
        hm.now_ns()
    });
}

#[test]
fn cancelled_sleep_releases_its_timer() {
    let mut ex = Executor::new();
    let h = ex.handle();
    let mut idle = MockIdle::new();
    idle.during_block.push_back(vec![3]);
    let winner = ex.run_until(&mut idle, select(h.sleep_until(1_000), h.event(3)));
    assert_eq!(winner, Either::Right(()));
    assert!(h.shared.reactor.borrow().timers.is_empty());
    ex.run_until(&mut idle, h.sleep_until(5_000));
    assert_eq!(idle.blocks, [Some(1_000), Some(5_000)]);
}

#[test]
fn foreign_wakers_work() {
    // A future written against `core` only: completes when another task sets
    // a flag and wakes the waker it stored.
    let mut ex = Executor::new();
    let flag = Rc::new(Cell::new(false));
    let slot: Rc<RefCell<Option<Waker>>> = Rc::default();
    {
        let (flag, slot) = (flag.clone(), slot.clone());
        ex.spawn(async move {
            yield_now().await;
            yield_now().await;
            flag.set(true);
            if let Some(w) = slot.borrow_mut().take() {
                w.wake();
            }
        });
    }
    let mut idle = MockIdle::new();
    ex.run_until(
        &mut idle,
        poll_fn(move |cx| {
            if flag.get() {
                Poll::Ready(())
            } else {
                *slot.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        }),
    );
    assert!(idle.blocks.is_empty());
}

#[test]
fn dropping_the_executor_drops_pending_tasks() {
    let dropped = Rc::new(Cell::new(false));
    {
        let mut ex = Executor::new();
        let h = ex.handle();
        let flag = DropFlag(dropped.clone());
        let hs = h.clone();
        ex.spawn(async move {
            let _flag = flag;
            hs.sleep_until(u64::MAX).await; // holds a handle: an Rc cycle
        });
        ex.run_until(&mut MockIdle::new(), yield_now());
        assert!(!dropped.get());
    }
    assert!(dropped.get());
}

#[test]
fn no_block_when_a_deadline_already_passed() {
    let mut ex = Executor::new();
    let h = ex.handle();
    let mut idle = MockIdle::new();
    idle.now.set(500);
    ex.run_until(&mut idle, async move {
        // Registers at time 500 a timer for the past: completes at once.
        h.sleep_until(10).await;
        h.sleep(0).await;
    });
    assert!(idle.blocks.is_empty());
}

/// Spawns a task from its destructor, like a driver task that hands its
/// device to a cleanup task when dropped.
struct SpawnOnDrop {
    handle: Handle,
    spawned_dropped: Rc<Cell<bool>>,
}

impl Drop for SpawnOnDrop {
    fn drop(&mut self) {
        let flag = DropFlag(self.spawned_dropped.clone());
        self.handle.spawn(async move {
            let _flag = flag;
            core::future::pending::<()>().await;
        });
    }
}

#[test]
fn dropping_the_executor_survives_destructors_that_spawn() {
    let spawned_dropped = Rc::new(Cell::new(false));
    {
        let mut ex = Executor::new();
        let h = ex.handle();
        // Several slots, some freed, so the free list is not empty.
        for _ in 0..3 {
            ex.spawn(async {});
        }
        ex.run_until(&mut MockIdle::new(), yield_now());
        let guard = SpawnOnDrop {
            handle: h.clone(),
            spawned_dropped: spawned_dropped.clone(),
        };
        ex.spawn(async move {
            let _guard = guard;
            core::future::pending::<()>().await;
        });
        ex.run_until(&mut MockIdle::new(), yield_now());
    }
    assert!(
        spawned_dropped.get(),
        "the task spawned during drop was freed too"
    );
}

#[test]
fn each_task_sees_a_fresh_clock() {
    let mut ex = Executor::new();
    let h = ex.handle();
    let seen: Rc<RefCell<Vec<u64>>> = Rc::default();
    for _ in 0..3 {
        let (h, seen) = (h.clone(), seen.clone());
        ex.spawn(async move { seen.borrow_mut().push(h.now_ns()) });
    }
    let mut idle = MockIdle {
        tick_per_read: 10,
        ..MockIdle::new()
    };
    ex.run_until(&mut idle, yield_now());
    let seen = seen.borrow();
    assert_eq!(seen.len(), 3);
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
}

#[test]
fn listener_poll_wait_in_a_hand_written_future() {
    // The shape of a ring client's "wait for the peer" hook.
    struct RingWait<'a> {
        listener: &'a mut EventListener,
        completions: u32,
    }
    impl Future for RingWait<'_> {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            while self.listener.poll_wait(cx).is_ready() {
                self.completions += 1;
                if self.completions == 2 {
                    return Poll::Ready(());
                }
            }
            Poll::Pending
        }
    }
    let mut ex = Executor::new();
    let h = ex.handle();
    let mut idle = MockIdle::new();
    idle.during_block = VecDeque::from([vec![4], vec![4, 4]]);
    let mut listener = h.event_listener(4);
    ex.run_until(
        &mut idle,
        RingWait {
            listener: &mut listener,
            completions: 0,
        },
    );
    // One completion per block: the second burst of two was coalesced.
    assert_eq!(idle.blocks, [None, None]);
    // Dropping a registered listener unregisters it.
    let h2 = h.clone();
    ex.run_until(&mut idle, async move {
        let mut l = h2.event_listener(6);
        let r = select(l.wait(), h2.sleep(10)).await;
        assert_eq!(r, Either::Right(()));
        drop(l);
        assert!(h2.shared.reactor.borrow().ports[&6].waiters.is_empty());
    });
}

/// A figure, not a test: run with
/// `cargo test -p kernel --release executor::tests::bench -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_polls_per_second() {
    let mut ex = Executor::new();
    let h = ex.handle();
    let tasks = 1_000u32;
    let yields = 1_000u32;
    for _ in 0..tasks {
        ex.spawn(async move {
            for _ in 0..yields {
                yield_now().await;
            }
        });
    }
    let start = std::time::Instant::now();
    ex.run_until(&mut MockIdle::new(), async move {
        while h.stats_live() > 0 {
            yield_now().await;
        }
    });
    let elapsed = start.elapsed();
    let polls = ex.stats().polls;
    std::println!(
        "{polls} polls in {elapsed:?}: {:.1} ns/poll (yield + requeue + clock read)",
        elapsed.as_nanos() as f64 / polls as f64
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// One step of the main future in the event model test.
    #[derive(Clone, Debug)]
    enum Step {
        /// Create an event future for the port and hand it to a new task.
        Create(u32),
        /// Make the port pending (delivered at the next round start).
        Notify(u32),
        /// Let a round pass.
        Yield,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u32..4).prop_map(Step::Create),
            (0u32..4).prop_map(Step::Notify),
            Just(Step::Yield),
        ]
    }

    proptest! {
        #[test]
        fn timers_complete_in_deadline_then_registration_order(
            deadlines in prop::collection::vec(1u64..50, 1..60)
        ) {
            let mut ex = Executor::new();
            let h = ex.handle();
            let order: Rc<RefCell<Vec<usize>>> = Rc::default();
            for (i, &deadline) in deadlines.iter().enumerate() {
                let (h, order) = (h.clone(), order.clone());
                ex.spawn(async move {
                    h.sleep_until(deadline).await;
                    order.borrow_mut().push(i);
                });
            }
            let mut idle = MockIdle::new();
            // Main's timer is registered after every task's, so at the last
            // deadline it fires after theirs and adds no block of its own.
            let last = *deadlines.iter().max().unwrap();
            ex.run_until(&mut idle, h.sleep_until(last));
            prop_assert_eq!(ex.stats().live_tasks, 0);
            let mut expected: Vec<usize> = (0..deadlines.len()).collect();
            expected.sort_by_key(|&i| (deadlines[i], i));
            prop_assert_eq!(&*order.borrow(), &expected);
            // One block per distinct deadline, each at that deadline.
            let mut distinct = deadlines.clone();
            distinct.sort_unstable();
            distinct.dedup();
            let blocks: Vec<Option<u64>> = distinct.into_iter().map(Some).collect();
            prop_assert_eq!(idle.blocks, blocks);
        }

        #[test]
        fn events_complete_iff_notified_after_creation(
            steps in prop::collection::vec(step(), 0..60)
        ) {
            let mut ex = Executor::new();
            let h = ex.handle();
            let mut idle = MockIdle::new();
            let injected = idle.injected.clone();
            let done: Rc<RefCell<Vec<bool>>> = Rc::default();
            let (hm, d, plan) = (h.clone(), done.clone(), steps.clone());
            ex.run_until(&mut idle, async move {
                for step in plan {
                    match step {
                        Step::Create(port) => {
                            let event = hm.event(port);
                            let d = d.clone();
                            let index = d.borrow().len();
                            d.borrow_mut().push(false);
                            hm.spawn(async move {
                                event.await;
                                d.borrow_mut()[index] = true;
                            });
                        }
                        Step::Notify(port) => injected.borrow_mut().push(port),
                        Step::Yield => yield_now().await,
                    }
                }
                // Let every delivery and wake run.
                for _ in 0..3 {
                    yield_now().await;
                }
            });
            // Model: a notification made during main's k-th poll is delivered
            // after it, so an event created during poll k' sees it iff k >= k'.
            let mut poll = 0;
            let mut created = Vec::new(); // (port, poll)
            let mut notified = Vec::new(); // (port, poll)
            for step in &steps {
                match *step {
                    Step::Create(port) => created.push((port, poll)),
                    Step::Notify(port) => notified.push((port, poll)),
                    Step::Yield => poll += 1,
                }
            }
            let expected: Vec<bool> = created
                .iter()
                .map(|&(port, at)| notified.iter().any(|&(p, k)| p == port && k >= at))
                .collect();
            prop_assert_eq!(&*done.borrow(), &expected);
            let waiting = expected.iter().filter(|&&x| !x).count();
            prop_assert_eq!(ex.stats().live_tasks, waiting);
        }
    }
}

#[test]
fn select_prefers_the_first_future_and_drops_the_loser() {
    let mut ex = Executor::new();
    let h = ex.handle();
    let mut idle = MockIdle::new();
    // Both ready at the first poll: the first one wins.
    let both = ex.run_until(&mut idle, select(async { 1 }, async { "two" }));
    assert_eq!(both, Either::Left(1));
    // Only the second ready: it wins, and the first (a registered timer and
    // a guard) is dropped before select returns.
    let dropped = Rc::new(Cell::new(false));
    let (hm, flag) = (h.clone(), DropFlag(dropped.clone()));
    let loser = async move {
        let _flag = flag;
        hm.sleep(1_000).await;
        7
    };
    let h2 = h.clone();
    let r = ex.run_until(&mut idle, async move {
        let r = select(loser, async {
            yield_now().await;
            yield_now().await;
        })
        .await;
        // The loser's timer is unregistered, not left to fire later.
        assert!(h2.shared.reactor.borrow().timers.is_empty());
        r
    });
    assert_eq!(r, Either::Right(()));
    assert!(dropped.get(), "the losing future was dropped");
    assert!(
        idle.blocks.is_empty(),
        "nothing waited for the loser's timer"
    );
}

#[test]
fn timeout_returns_the_output_before_the_deadline() {
    let mut ex = Executor::new();
    let h = ex.handle();
    let mut idle = MockIdle::new();
    let hm = h.clone();
    let r = ex.run_until(&mut idle, async move {
        hm.timeout(1_000, async {
            hm.sleep(300).await;
            "done"
        })
        .await
    });
    assert_eq!(r, Ok("done"));
    assert_eq!(idle.now.get(), 300);
    // The deadline's timer went with the timeout: a later block does not
    // wake at 1000 for nothing.
    assert!(h.shared.reactor.borrow().timers.is_empty());
    ex.run_until(&mut idle, h.sleep_until(5_000));
    assert_eq!(idle.blocks, [Some(300), Some(5_000)]);
}

#[test]
fn timeout_gives_up_at_the_deadline_and_cancels_the_future() {
    let mut ex = Executor::new();
    let h = ex.handle();
    let mut idle = MockIdle::new();
    let dropped = Rc::new(Cell::new(false));
    let (hm, flag) = (h.clone(), DropFlag(dropped.clone()));
    let r = ex.run_until(&mut idle, async move {
        // An event that never fires.
        let never = hm.event(9);
        hm.timeout(500, async move {
            let _flag = flag;
            never.await;
        })
        .await
    });
    assert_eq!(r, Err(Elapsed));
    assert_eq!(idle.now.get(), 500);
    assert!(dropped.get(), "the timed-out future was dropped");
    assert!(h.shared.reactor.borrow().ports[&9].waiters.is_empty());
    assert_eq!(Elapsed.to_string(), "deadline elapsed");
}

#[test]
fn timeout_deadline_is_fixed_at_creation_and_a_ready_future_still_wins() {
    let mut ex = Executor::new();
    let h = ex.handle();
    let mut idle = MockIdle::new();
    let hm = h.clone();
    let (late, on_time) = ex.run_until(&mut idle, async move {
        // Created at t=0 with 100 ns, first polled at t=200: already late.
        let t = hm.timeout(100, core::future::pending::<()>());
        hm.sleep(200).await;
        let late = t.await;
        // A future ready in the round its deadline passes wins: the work is
        // polled before the deadline.
        let deadline = hm.now_ns() + 50;
        hm.sleep_until(deadline).await;
        let on_time = hm.timeout_at(deadline, async { 3 }).await;
        (late, on_time)
    });
    assert_eq!(late, Err(Elapsed));
    assert_eq!(on_time, Ok(3));
    assert_eq!(idle.blocks, [Some(200), Some(250)]);
}
