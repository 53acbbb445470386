//! The single-core cooperative async executor at the heart of every moat image.
//!
//! A task runs until it awaits; nothing is preempted and there are no threads.
//! The only hardware the executor needs is behind [`Idle`]: a clock, a way to
//! learn which event-channel ports fired, and a way to halt the vCPU until
//! something happens. The kernel implements it for Xen; tests implement it
//! with a mock.
//!
//! # How tasks reach the executor
//!
//! There is no process-wide static: every executor hands out [`Handle`]s, and
//! futures that need the executor (timers, events, spawning, the clock) are
//! created from a handle. This keeps tests independent when they run on
//! parallel threads, and it is what makes [`Handle::event`] race-free: the
//! future snapshots the port's notification counter *when it is created*, which
//! a handle-less future could only do at its first poll — too late.
//!
//! # Scheduling
//!
//! The executor works in rounds. At the start of a round it reads the clock,
//! collects pending event-channel ports (waking their waiters) and fires the
//! expired timers; then it polls, in FIFO order, exactly the tasks that were
//! ready when the round began. A task that wakes itself goes to the back of the
//! queue and runs in the next round, so it cannot starve other tasks nor the
//! delivery of events and timers. When nothing is ready it blocks the vCPU in
//! the hypervisor until the earliest timer deadline — it never busy-waits.
//!
//! # Wakers
//!
//! Wakers are ordinary [`core::task::Waker`]s, so any future written against
//! `core` (the xen crate's xenstore client, for instance) works. A waker only
//! pushes the task's id onto a spin-locked queue; a task woken several times
//! before it runs is queued once. Wakers must not be invoked from interrupt
//! context: the event upcall should only mark ports pending, and
//! [`Idle::take_pending`] reports them from task context.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::rc::Rc;
use alloc::sync::Arc;
use alloc::task::Wake;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use core::future::Future;
use core::pin::Pin;
use core::sync::atomic::{AtomicBool, Ordering};
use core::task::{Context, Poll, Waker};

/// The hardware seam of the executor: time, pending events, and halting.
///
/// The kernel implements it on top of Xen's shared info page and
/// `SCHEDOP_block`/timer hypercalls; host tests implement it with a mock.
pub trait Idle {
    /// Monotonic time in nanoseconds (Xen system time).
    fn now_ns(&self) -> u64;
    /// Report every event-channel port that became pending since the last call
    /// (and clear them).
    fn take_pending(&mut self, wake: &mut dyn FnMut(u32));
    /// Block the vCPU in the hypervisor until an event arrives or
    /// `deadline_ns` passes (`None`: no deadline). May return early (spurious
    /// wakeups are fine).
    fn block(&mut self, deadline_ns: Option<u64>);
}

/// Identifies a spawned task for as long as it lives.
///
/// The generation makes a stale id (of a finished task whose slot was reused)
/// harmless: wakers carrying it are ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId {
    index: u32,
    generation: u32,
}

impl TaskId {
    /// The reserved slot index of the future passed to [`Executor::run_until`].
    const MAIN_INDEX: u32 = u32::MAX;
}

/// Counters describing what an executor has done, for tests and diagnostics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecutorStats {
    /// Tasks spawned and not yet completed (completed tasks are freed at once).
    pub live_tasks: usize,
    /// Tasks spawned since the executor was created.
    pub spawned: u64,
    /// Task polls performed (the `run_until` future's polls included).
    pub polls: u64,
    /// Times the executor called [`Idle::block`].
    pub blocks: u64,
    /// Event notifications for ports no future has ever waited on; these are
    /// dropped because a later [`Handle::event`] only waits for the *next* one.
    pub unclaimed_notifications: u64,
}

/// The queue of ready task ids, shared with every waker.
///
/// It is the only part of the executor a waker touches, so it is the only part
/// that must be `Send + Sync`; a spin lock is enough on one core.
struct ReadyQueue {
    ids: spin::Mutex<VecDeque<TaskId>>,
}

/// The waker of one task: it remembers whether the task is already queued so
/// that waking a task twice runs it once.
struct TaskWaker {
    id: TaskId,
    queued: AtomicBool,
    ready: Arc<ReadyQueue>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.ready.ids.lock().push_back(self.id);
        }
    }
}

type BoxedTask = Pin<Box<dyn Future<Output = ()>>>;

/// A live task. The future is `None` only while it is being polled: it is
/// taken out of the table so that the task may spawn other tasks meanwhile.
struct TaskSlot {
    future: Option<BoxedTask>,
    waker: Arc<TaskWaker>,
}

/// The task table: a slab indexed by `TaskId::index`, with generations.
#[derive(Default)]
struct TaskTable {
    slots: Vec<(u32, Option<TaskSlot>)>,
    free: Vec<u32>,
    live: usize,
}

/// Timers and event-channel waiters: everything the executor wakes on behalf of
/// the hardware.
#[derive(Default)]
struct Reactor {
    /// Waiting timers, ordered by deadline then by registration order, so that
    /// equal deadlines fire in the order the sleeps were first polled.
    timers: BTreeMap<(u64, u64), Waker>,
    /// Per-port state, created when a future first asks about the port.
    ports: BTreeMap<u32, PortState>,
    /// Source of unique keys for timers and port waiters.
    next_key: u64,
}

impl Reactor {
    fn fresh_key(&mut self) -> u64 {
        self.next_key += 1;
        self.next_key
    }
}

/// One event-channel port as the executor sees it.
#[derive(Default)]
struct PortState {
    /// How many times the port has fired since the executor first heard of it.
    /// Futures compare it with a snapshot, which is what makes a notification
    /// that lands before the first poll impossible to lose.
    notifications: u64,
    /// Wakers of the futures waiting on the port, keyed by a per-future key so
    /// that re-polling replaces rather than duplicates, and dropping removes.
    waiters: BTreeMap<u64, Waker>,
}

/// The state shared between the executor and its handles.
struct Shared {
    tasks: RefCell<TaskTable>,
    reactor: RefCell<Reactor>,
    ready: Arc<ReadyQueue>,
    /// The clock as read before the task being polled was polled.
    now_ns: Cell<u64>,
    stats: Cell<ExecutorStats>,
}

impl Shared {
    fn update_stats(&self, f: impl FnOnce(&mut ExecutorStats)) {
        let mut stats = self.stats.get();
        f(&mut stats);
        self.stats.set(stats);
    }

    fn spawn(&self, future: BoxedTask) -> TaskId {
        let id = {
            let mut tasks = self.tasks.borrow_mut();
            let index = match tasks.free.pop() {
                Some(index) => index,
                None => {
                    let index = u32::try_from(tasks.slots.len())
                        .ok()
                        .filter(|&i| i < TaskId::MAIN_INDEX)
                        .expect("executor: more than 2^32-1 live tasks");
                    tasks.slots.push((0, None));
                    index
                }
            };
            // The index came from `free` or was just pushed, so it is in range.
            let (generation, slot) = &mut tasks.slots[index as usize];
            *generation = generation.wrapping_add(1);
            let id = TaskId {
                index,
                generation: *generation,
            };
            let waker = Arc::new(TaskWaker {
                id,
                queued: AtomicBool::new(false),
                ready: self.ready.clone(),
            });
            *slot = Some(TaskSlot {
                future: Some(future),
                waker: waker.clone(),
            });
            tasks.live += 1;
            waker.wake_by_ref();
            id
        };
        self.update_stats(|s| {
            s.spawned += 1;
            s.live_tasks += 1;
        });
        id
    }

    /// Polls the task `id` once, if it still exists.
    fn poll_task(&self, id: TaskId) {
        let taken = {
            let mut tasks = self.tasks.borrow_mut();
            match tasks.slots.get_mut(id.index as usize) {
                Some((generation, Some(slot))) if *generation == id.generation => slot
                    .future
                    .take()
                    .map(|future| (future, slot.waker.clone())),
                _ => None,
            }
        };
        let Some((mut future, task_waker)) = taken else {
            // A stale id: the task finished after this wake was queued.
            return;
        };
        // Cleared before polling: a wake during the poll must queue it again.
        task_waker.queued.store(false, Ordering::Release);
        let waker = Waker::from(task_waker);
        let mut cx = Context::from_waker(&waker);
        let poll = future.as_mut().poll(&mut cx);
        self.update_stats(|s| s.polls += 1);
        match poll {
            Poll::Pending => {
                let mut tasks = self.tasks.borrow_mut();
                if let Some((_, Some(slot))) = tasks.slots.get_mut(id.index as usize) {
                    slot.future = Some(future);
                }
            }
            Poll::Ready(()) => {
                let slot = {
                    let mut tasks = self.tasks.borrow_mut();
                    let slot = tasks
                        .slots
                        .get_mut(id.index as usize)
                        .and_then(|(_, slot)| slot.take());
                    if slot.is_some() {
                        tasks.free.push(id.index);
                        tasks.live -= 1;
                    }
                    slot
                };
                self.update_stats(|s| s.live_tasks -= 1);
                // Dropped outside the table borrow: its destructor may use a
                // handle (spawn, cancel a timer).
                drop(slot);
                drop(future);
            }
        }
    }

    /// Wakes the waiters of `port` after it fired.
    fn notify(&self, port: u32, to_wake: &mut Vec<Waker>) {
        let mut reactor = self.reactor.borrow_mut();
        match reactor.ports.get_mut(&port) {
            Some(state) => {
                state.notifications = state.notifications.wrapping_add(1);
                to_wake.extend(core::mem::take(&mut state.waiters).into_values());
            }
            None => {
                drop(reactor);
                self.update_stats(|s| s.unclaimed_notifications += 1);
            }
        }
    }

    /// Removes the timers whose deadline has passed, in deadline order.
    fn expire_timers(&self, now: u64, to_wake: &mut Vec<Waker>) {
        let mut reactor = self.reactor.borrow_mut();
        while let Some(entry) = reactor.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            to_wake.push(entry.remove());
        }
    }

    fn earliest_deadline(&self) -> Option<u64> {
        self.reactor
            .borrow()
            .timers
            .first_key_value()
            .map(|(&(deadline, _), _)| deadline)
    }
}

/// A single-core cooperative executor. See the [module docs](self).
pub struct Executor {
    shared: Rc<Shared>,
    /// Counts `run_until` calls so that a waker of an earlier main future
    /// cannot wake the current one.
    runs: u32,
}

impl Default for Executor {
    fn default() -> Self {
        Self::new()
    }
}

impl Executor {
    /// Creates an executor with no tasks.
    pub fn new() -> Self {
        Executor {
            shared: Rc::new(Shared {
                tasks: RefCell::new(TaskTable::default()),
                reactor: RefCell::new(Reactor::default()),
                ready: Arc::new(ReadyQueue {
                    ids: spin::Mutex::new(VecDeque::new()),
                }),
                now_ns: Cell::new(0),
                stats: Cell::new(ExecutorStats::default()),
            }),
            runs: 0,
        }
    }

    /// Returns a handle through which futures reach this executor.
    pub fn handle(&self) -> Handle {
        Handle {
            shared: self.shared.clone(),
        }
    }

    /// Spawns a task; it first runs during the next [`Executor::run_until`].
    pub fn spawn(&self, future: impl Future<Output = ()> + 'static) -> TaskId {
        self.shared.spawn(Box::pin(future))
    }

    /// Returns what the executor has done so far.
    pub fn stats(&self) -> ExecutorStats {
        self.shared.stats.get()
    }

    /// Runs every task until `main` completes, and returns its output.
    ///
    /// Tasks still alive when `main` completes stay in the executor and run
    /// again on the next call.
    pub fn run_until<F: Future>(&mut self, idle: &mut impl Idle, main: F) -> F::Output {
        let shared = &*self.shared;
        self.runs = self.runs.wrapping_add(1);
        let main_waker = Arc::new(TaskWaker {
            id: TaskId {
                index: TaskId::MAIN_INDEX,
                generation: self.runs,
            },
            queued: AtomicBool::new(false),
            ready: shared.ready.clone(),
        });
        main_waker.wake_by_ref();
        let waker = Waker::from(main_waker.clone());
        let mut main = core::pin::pin!(main);
        let mut to_wake = Vec::new();
        loop {
            // Start of a round: learn what the hardware did.
            let now = idle.now_ns();
            shared.now_ns.set(now);
            idle.take_pending(&mut |port| shared.notify(port, &mut to_wake));
            shared.expire_timers(now, &mut to_wake);
            // Woken outside the reactor borrow: a foreign waker may do anything.
            for waker in to_wake.drain(..) {
                waker.wake();
            }

            // Poll exactly the tasks ready at the start of the round; tasks
            // woken meanwhile wait for the next round (fairness).
            let batch = shared.ready.ids.lock().len();
            for _ in 0..batch {
                let Some(id) = shared.ready.ids.lock().pop_front() else {
                    break;
                };
                // A round may be long: give each task a fresh clock, so that
                // timestamps it takes (RTT samples, timeouts it arms) are not
                // stale. Timers still fire only at round starts.
                shared.now_ns.set(idle.now_ns());
                if id.index != TaskId::MAIN_INDEX {
                    shared.poll_task(id);
                    continue;
                }
                if id.generation != self.runs {
                    continue; // A waker left over from an earlier run_until.
                }
                main_waker.queued.store(false, Ordering::Release);
                let mut cx = Context::from_waker(&waker);
                let poll = main.as_mut().poll(&mut cx);
                shared.update_stats(|s| s.polls += 1);
                if let Poll::Ready(output) = poll {
                    return output;
                }
            }

            if shared.ready.ids.lock().is_empty() {
                let deadline = shared.earliest_deadline();
                // A deadline already in the past needs no block: the next round
                // fires it.
                if deadline.is_none_or(|d| d > idle.now_ns()) {
                    shared.update_stats(|s| s.blocks += 1);
                    idle.block(deadline);
                }
            }
        }
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        // Tasks hold handles, and handles hold the task table: free the tasks
        // explicitly to break that cycle. A destructor may spawn again, hence
        // the loop; each task is dropped outside the table borrow.
        loop {
            let slots = {
                let mut tasks = self.shared.tasks.borrow_mut();
                // The free list indexes the slots being taken: reset both, so
                // that a spawn from a destructor starts a fresh table.
                tasks.free.clear();
                tasks.live = 0;
                core::mem::take(&mut tasks.slots)
            };
            if slots.is_empty() {
                break;
            }
            drop(slots);
        }
    }
}

/// A cheap, clonable way for tasks to reach their executor: spawn, read the
/// clock, sleep, wait for events. Handles are not `Send`: one core, one
/// executor.
#[derive(Clone)]
pub struct Handle {
    shared: Rc<Shared>,
}

impl Handle {
    /// Spawns a task; it runs in a later round of the executor.
    pub fn spawn(&self, future: impl Future<Output = ()> + 'static) -> TaskId {
        self.shared.spawn(Box::pin(future))
    }

    /// The executor's clock in nanoseconds, as read just before the current
    /// task was polled (it does not advance while the task runs).
    pub fn now_ns(&self) -> u64 {
        self.shared.now_ns.get()
    }

    /// A future that completes once the clock reaches `deadline_ns`.
    pub fn sleep_until(&self, deadline_ns: u64) -> Sleep {
        Sleep {
            shared: self.shared.clone(),
            deadline_ns,
            key: None,
        }
    }

    /// A future that completes `duration_ns` after the current round's time.
    pub fn sleep(&self, duration_ns: u64) -> Sleep {
        self.sleep_until(self.now_ns().saturating_add(duration_ns))
    }

    /// A future that completes the next time `port` fires after this call.
    ///
    /// A notification that arrives between this call and the first poll is
    /// not lost: the future compares the port's notification counter with the
    /// value it had here.
    pub fn event(&self, port: u32) -> Event {
        let seen = self.port_count(port);
        Event {
            shared: self.shared.clone(),
            port,
            seen,
            key: None,
        }
    }

    /// Runs `future` until it completes or `duration_ns` passes, counted
    /// from the current round's time (as [`Handle::sleep`] counts), whichever
    /// comes first.
    ///
    /// `Err(Elapsed)` means the deadline came first: `future` was dropped
    /// unfinished, which cancels it as any drop does (its destructors run;
    /// work it had handed to another party is not undone). On every wakeup
    /// `future` is polled before the deadline is checked, so a future that
    /// is ready when the deadline passes still wins.
    ///
    /// The deadline is fixed here, when the timeout is created, not at its
    /// first poll.
    pub fn timeout<F: Future>(
        &self,
        duration_ns: u64,
        future: F,
    ) -> impl Future<Output = Result<F::Output, Elapsed>> {
        self.timeout_at(self.now_ns().saturating_add(duration_ns), future)
    }

    /// [`Handle::timeout`] with an absolute deadline on the executor's clock.
    pub fn timeout_at<F: Future>(
        &self,
        deadline_ns: u64,
        future: F,
    ) -> impl Future<Output = Result<F::Output, Elapsed>> {
        let deadline = self.sleep_until(deadline_ns);
        async move {
            match select(future, deadline).await {
                Either::Left(output) => Ok(output),
                Either::Right(()) => Err(Elapsed),
            }
        }
    }

    /// A long-lived listener on `port` for driver loops: every
    /// [`EventListener::wait`] completes once per burst of notifications that
    /// arrived since the previous wait completed (or since the listener was
    /// created), so a notification that lands while the driver is busy is
    /// never lost.
    pub fn event_listener(&self, port: u32) -> EventListener {
        EventListener {
            handle: self.clone(),
            port,
            seen: self.port_count(port),
            key: None,
        }
    }

    /// The port's notification counter, registering the port if new.
    fn port_count(&self, port: u32) -> u64 {
        self.shared
            .reactor
            .borrow_mut()
            .ports
            .entry(port)
            .or_default()
            .notifications
    }
}

/// Future returned by [`Handle::sleep_until`] and [`Handle::sleep`].
pub struct Sleep {
    shared: Rc<Shared>,
    deadline_ns: u64,
    /// The timer's key in the reactor once registered.
    key: Option<(u64, u64)>,
}

impl Sleep {
    /// The time at which this sleep completes.
    pub fn deadline_ns(&self) -> u64 {
        self.deadline_ns
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let mut reactor = this.shared.reactor.borrow_mut();
        if this.shared.now_ns.get() >= this.deadline_ns {
            if let Some(key) = this.key.take() {
                reactor.timers.remove(&key);
            }
            return Poll::Ready(());
        }
        let key = match this.key {
            Some(key) => key,
            None => {
                let key = (this.deadline_ns, reactor.fresh_key());
                this.key = Some(key);
                key
            }
        };
        // Re-inserting after a fire (entry gone) or with a new waker is the same.
        match reactor.timers.get_mut(&key) {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => {
                reactor.timers.insert(key, cx.waker().clone());
            }
        }
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            // A cancelled sleep must not keep waking its task or hold the
            // executor's next block deadline.
            if let Ok(mut reactor) = self.shared.reactor.try_borrow_mut() {
                reactor.timers.remove(&key);
            }
        }
    }
}

/// Future returned by [`Handle::event`].
pub struct Event {
    shared: Rc<Shared>,
    port: u32,
    /// The port's notification counter when the future was created.
    seen: u64,
    /// The waiter's key in the port's waiter table once registered.
    key: Option<u64>,
}

impl Future for Event {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let mut reactor = this.shared.reactor.borrow_mut();
        let key = match this.key {
            Some(key) => key,
            None => reactor.fresh_key(),
        };
        let state = reactor.ports.entry(this.port).or_default();
        if state.notifications != this.seen {
            state.waiters.remove(&key);
            this.key = None;
            return Poll::Ready(());
        }
        match state.waiters.get_mut(&key) {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => {
                state.waiters.insert(key, cx.waker().clone());
            }
        }
        this.key = Some(key);
        Poll::Pending
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            if let Ok(mut reactor) = self.shared.reactor.try_borrow_mut() {
                if let Some(state) = reactor.ports.get_mut(&self.port) {
                    state.waiters.remove(&key);
                }
            }
        }
    }
}

/// A persistent listener on one event-channel port; see
/// [`Handle::event_listener`].
pub struct EventListener {
    handle: Handle,
    port: u32,
    /// The notification count already reported to the owner.
    seen: u64,
    /// The listener's key in the port's waiter table while registered.
    key: Option<u64>,
}

impl EventListener {
    /// The port this listener watches.
    pub fn port(&self) -> u32 {
        self.port
    }

    /// Completes when the port has fired since the last completed wait;
    /// several notifications in between are coalesced into one completion.
    pub async fn wait(&mut self) {
        core::future::poll_fn(|cx| self.poll_wait(cx)).await
    }

    /// The poll form of [`EventListener::wait`], for hand-written futures and
    /// poll-style traits (a ring's "wait for the peer" hook, for instance):
    /// `Ready` once per burst of notifications, otherwise `Pending` with the
    /// task registered to be woken by the next one.
    pub fn poll_wait(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut reactor = self.handle.shared.reactor.borrow_mut();
        let key = match self.key {
            Some(key) => key,
            None => reactor.fresh_key(),
        };
        let state = reactor.ports.entry(self.port).or_default();
        if state.notifications != self.seen {
            self.seen = state.notifications;
            state.waiters.remove(&key);
            self.key = None;
            return Poll::Ready(());
        }
        match state.waiters.get_mut(&key) {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => {
                state.waiters.insert(key, cx.waker().clone());
            }
        }
        self.key = Some(key);
        Poll::Pending
    }
}

impl Drop for EventListener {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            if let Ok(mut reactor) = self.handle.shared.reactor.try_borrow_mut() {
                if let Some(state) = reactor.ports.get_mut(&self.port) {
                    state.waiters.remove(&key);
                }
            }
        }
    }
}

/// Which of the two futures given to [`select`] completed first, with its
/// output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Either<A, B> {
    /// The first future completed first.
    Left(A),
    /// The second future completed first.
    Right(B),
}

/// Runs two futures concurrently (in the calling task) until one of them
/// completes, and returns that one's output; the other is dropped
/// unfinished, which cancels it.
///
/// On every wakeup `a` is polled before `b`, so when both are ready `a`
/// wins: put the work first and the deadline or stop signal second. For the
/// common "this, or give up after a while" case, [`Handle::timeout`] reads
/// better.
pub async fn select<A: Future, B: Future>(a: A, b: B) -> Either<A::Output, B::Output> {
    let mut a = core::pin::pin!(a);
    let mut b = core::pin::pin!(b);
    core::future::poll_fn(|cx| {
        if let Poll::Ready(output) = a.as_mut().poll(cx) {
            return Poll::Ready(Either::Left(output));
        }
        if let Poll::Ready(output) = b.as_mut().poll(cx) {
            return Poll::Ready(Either::Right(output));
        }
        Poll::Pending
    })
    .await
}

/// The error of [`Handle::timeout`] and [`Handle::timeout_at`]: the deadline
/// passed before the future completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Elapsed;

impl core::fmt::Display for Elapsed {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("deadline elapsed")
    }
}

/// Returns `Pending` once, after asking to be polled again: lets the other
/// ready tasks run first.
pub fn yield_now() -> YieldNow {
    YieldNow { yielded: false }
}

/// Future returned by [`yield_now`].
pub struct YieldNow {
    yielded: bool,
}

impl Future for YieldNow {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            return Poll::Ready(());
        }
        self.yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests;
