//! Reconnection against a model of Linux's xen-netback (its xenbus side):
//! dom0's netback let go of the vif and took it again (sysfs unbind +
//! bind, as `rig/test_firewall.py --uplink-restart` does), with netback's
//! reaction to each of our state changes arriving late, at every delay and
//! interleaving tried. And the toolstack removing our directory
//! (`xl network-detach`): our state is never written into it again.

mod common;

use common::*;
use netfront::front::{FnClock, ReconnectStats, RECONNECT_STALL_NS};
use netfront::{ConnectOptions, Netfront, NetfrontError, TxOffload};
use netfront::{EnvError, NetEnv};
use std::cell::Cell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Context, Poll};
use xen::abi::xs_wire::XsdSockmsgType;
use xen::abi::{DomId, GrantRef, Port};
use xen::grant::GrantError;
use xen::shared_page::SharedPage;
use xen::sim::{SimHypervisor, SimPage, SimTransport};
use xen::xenbus::XenbusState as S;
use xen::xenstore::{XenStore, XsError, XsTransport};

fn options() -> ConnectOptions {
    ConnectOptions {
        max_queues: 1,
        ..ConnectOptions::default()
    }
}

/// The frontend's xenstore connection, throttled: at most the bytes the
/// test grants between two steps of the other domains, so they can act
/// between any two of our requests (the simulated daemon answers at once).
struct Throttled {
    inner: SimTransport,
    budget: Rc<Cell<usize>>,
}

impl XsTransport for Throttled {
    fn send(&mut self, buf: &[u8]) -> Result<usize, XsError> {
        self.inner.send(buf)
    }
    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, XsError> {
        let max = buf.len().min(self.budget.get());
        let n = self.inner.recv(&mut buf[..max])?;
        self.budget.set(self.budget.get() - n);
        Ok(n)
    }
    fn notify(&mut self) {
        self.inner.notify()
    }
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.budget.get() == 0 {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.inner.poll_event(cx)
    }
}

/// [`SimEnv`] over a [`Throttled`] xenstore connection.
struct TEnv {
    hv: SimHypervisor,
    xs: XenStore<Throttled>,
}

impl NetEnv for TEnv {
    type Page = SimPage;
    type Xs = Throttled;

    fn alloc_page(&mut self) -> Result<SharedPage<SimPage>, EnvError> {
        Ok(self.hv.alloc_page())
    }
    fn grant_access(&mut self, domid: DomId, frame: u64, ro: bool) -> Result<GrantRef, GrantError> {
        self.hv.grant_access(FRONT, domid, frame, ro)
    }
    fn end_access(&mut self, gref: GrantRef) -> Result<(), GrantError> {
        self.hv.end_access(FRONT, gref)
    }
    fn alloc_unbound(&mut self, remote: DomId) -> Result<Port, EnvError> {
        self.hv
            .alloc_unbound(FRONT, remote)
            .map_err(|_| EnvError::Hypercall(-3))
    }
    fn notify(&mut self, port: Port) {
        let _ = self.hv.send(FRONT, port);
    }
    fn poll_event(&mut self, port: Port, cx: &mut Context<'_>) -> Poll<()> {
        self.hv.poll_event(FRONT, port, cx)
    }
    fn close_port(&mut self, port: Port) {
        self.hv.close(FRONT, port)
    }
    fn xenstore(&mut self) -> &mut XenStore<Throttled> {
        &mut self.xs
    }
}

/// The frontend's environment, its xenstore connection allowed `budget`
/// bytes.
fn throttled_env(m: &Machine, budget: &Rc<Cell<usize>>) -> TEnv {
    TEnv {
        hv: m.hv.clone(),
        xs: XenStore::new(Throttled {
            inner: SimTransport::new(m.xsd.clone(), 64),
            budget: budget.clone(),
        }),
    }
}

/// Linux's xen-netback as far as xenbus goes (drivers/net/xen-netback/
/// xenbus.c, read for the facts): `be->state` moves toward the state the
/// frontend's asks for by the shortest path through InitWait, Connected,
/// Closing and Closed, publishing each step (held back while a
/// `hotplug-status` watch is pending, then the latest published at once);
/// the rings are mapped on InitWait -> Connected and unmapped on leaving
/// Connected. A change of the frontend's state is handled `delay` steps
/// later, reading the frontend's state *then* (as the otherend watch
/// callback does), so several quick changes are seen as the last one.
struct LinuxNetback {
    back: SimNetback,
    /// `be->state`.
    state: S,
    /// The driver is bound (watching the frontend).
    bound: bool,
    delay: usize,
    now: usize,
    /// Due times of frontend-state watch events not handled yet.
    events: VecDeque<usize>,
    seen_front: Option<Option<String>>,
    /// Requests of the frontend's xenstore connection looked at.
    seen_requests: usize,
    /// The hotplug-status watch (state changes held back meanwhile).
    hotplug_watch: bool,
    hotplug_events: VecDeque<usize>,
    seen_hotplug: Option<Option<String>>,
    /// Frontend `Initialising` events to ignore (a backend that misses
    /// our nudge), for the bounded reconnection.
    ignore_initialising: usize,
    /// Every state published, in order.
    published: Vec<S>,
}

fn xs_get(back: &SimNetback, path: &str) -> Option<String> {
    back.xsd
        .borrow()
        .get(path)
        .map(|v| String::from_utf8_lossy(&v).into_owned())
}

impl LinuxNetback {
    /// Bound and in `InitWait`, as after `xl create`.
    fn new(m: &Machine, delay: usize) -> Self {
        m.set(&format!("{BACK_PATH}/online"), "1");
        m.set(&format!("{BACK_PATH}/hotplug-status"), "connected");
        let back = m.backend();
        let seen_front = Some(xs_get(&back, &format!("{FRONT_ABS}/state")));
        Self {
            back,
            state: S::InitWait,
            bound: true,
            delay,
            now: 0,
            events: VecDeque::new(),
            seen_front,
            seen_requests: 0,
            hotplug_watch: false,
            hotplug_events: VecDeque::new(),
            seen_hotplug: None,
            ignore_initialising: 0,
            published: vec![S::InitWait],
        }
    }

    fn publish(&mut self, state: S) {
        self.back
            .xsd
            .borrow_mut()
            .set(&format!("{BACK_PATH}/state"), state.to_value().as_bytes());
        self.published.push(state);
    }

    fn switch(&mut self, state: S) {
        self.state = state;
        if !self.hotplug_watch {
            self.publish(state);
        }
    }

    /// One step from `from` toward `to` (netback's transition table).
    fn next(from: S, to: S) -> S {
        match (from, to) {
            (S::Initialising, S::Closed) => S::Closed,
            (S::Initialising, _) => S::InitWait,
            (S::Closed, S::Closing) => S::Closing,
            (S::Closed, _) => S::InitWait,
            (S::InitWait, S::Connected) => S::Connected,
            (S::InitWait, _) => S::Closing,
            (S::Connected, _) => S::Closing,
            (S::Closing, _) => S::Closed,
            (s, t) => panic!("netback has no way from {s:?} to {t:?}"),
        }
    }

    fn set_backend_state(&mut self, target: S) {
        while self.state != target {
            let next = Self::next(self.state, target);
            match (self.state, next) {
                (S::InitWait, S::Connected) => self.connect(),
                (S::Connected, _) => self.back.detach_rings(),
                _ => {}
            }
            self.switch(next);
        }
    }

    fn connect(&mut self) {
        self.back.attach_rings();
        // The hotplug-status watch, if the node exists (it fires once).
        if xs_get(&self.back, &format!("{BACK_PATH}/hotplug-status")).is_some() {
            self.hotplug_watch = true;
            self.seen_hotplug = None;
        }
    }

    fn frontend_changed(&mut self) {
        let front = xs_get(&self.back, &format!("{FRONT_ABS}/state"));
        let state = front
            .as_deref()
            .and_then(|v| S::parse(v.as_bytes()).ok())
            .unwrap_or(S::Unknown);
        match state {
            S::Initialising if self.ignore_initialising > 0 => self.ignore_initialising -= 1,
            S::Initialising => self.set_backend_state(S::InitWait),
            S::Connected => self.set_backend_state(S::Connected),
            S::Closing => self.set_backend_state(S::Closing),
            // Online: it stays, waiting for the frontend to start again.
            S::Closed => self.set_backend_state(S::Closed),
            S::Unknown => {
                self.set_backend_state(S::Closed);
                self.bound = false;
            }
            _ => {}
        }
    }

    /// Time passes: notice changes, handle the events that are due.
    fn step(&mut self) {
        self.now += 1;
        if !self.bound {
            return;
        }
        // A watch event for every write the frontend may have made (the
        // simulated daemon answers at once, so several requests can pass
        // between two steps: the value alone would miss a 1 -> 6 -> 1),
        // and for every change of the value (the toolstack's removal).
        let requests = self.back.xsd.borrow().requests.len();
        let wrote = self.back.xsd.borrow().requests[self.seen_requests..]
            .iter()
            .any(|(kind, _, tx)| {
                (*kind == XsdSockmsgType::Write as u32 && *tx == 0)
                    || *kind == XsdSockmsgType::TransactionEnd as u32
            });
        self.seen_requests = requests;
        let front = Some(xs_get(&self.back, &format!("{FRONT_ABS}/state")));
        if wrote || front != self.seen_front {
            self.seen_front = front;
            self.events.push_back(self.now + self.delay);
        }
        while self.events.front().is_some_and(|due| *due <= self.now) {
            self.events.pop_front();
            self.frontend_changed();
        }
        if self.hotplug_watch {
            let hotplug = Some(xs_get(&self.back, &format!("{BACK_PATH}/hotplug-status")));
            if hotplug != self.seen_hotplug {
                self.seen_hotplug = hotplug;
                self.hotplug_events.push_back(self.now + self.delay);
            }
            while self
                .hotplug_events
                .front()
                .is_some_and(|due| *due <= self.now)
            {
                self.hotplug_events.pop_front();
                let status = xs_get(&self.back, &format!("{BACK_PATH}/hotplug-status"));
                if status.as_deref() == Some("connected") {
                    self.hotplug_watch = false;
                    self.hotplug_events.clear();
                    let state = self.state;
                    self.publish(state);
                }
            }
        }
    }

    /// `echo vif-.. > .../unbind`: netback's remove.
    fn unbind(&mut self) {
        self.set_backend_state(S::Closed);
        self.hotplug_watch = false;
        self.hotplug_events.clear();
        self.back.detach_rings();
        self.back
            .xsd
            .borrow_mut()
            .remove(&format!("{BACK_PATH}/hotplug-status"));
        self.bound = false;
        self.events.clear();
    }

    /// `echo vif-.. > .../bind`: netback's probe, then the frontend watch
    /// (which fires once at once).
    fn bind(&mut self) {
        self.state = S::Initialising;
        self.publish(S::Initialising);
        self.bound = true;
        self.seen_front = None;
    }
}

/// Traffic both ways over a connected pair.
fn carries_traffic<E: NetEnv>(
    front: &mut Netfront<E>,
    nb: &mut LinuxNetback,
    seed: u8,
) -> Result<(), String> {
    let fail = |what: &str| Err(format!("traffic {seed}: {what}"));
    if nb.back.conns.len() != 1 {
        return fail(&format!("netback has {} connections", nb.back.conns.len()));
    }
    front
        .send(&pattern(1500, seed), TxOffload::default())
        .map_err(|e| format!("send: {e:?}"))?;
    if nb.back.process_tx() != 1 || nb.back.received.last().unwrap().data != pattern(1500, seed) {
        return fail("netback did not get our packet");
    }
    if !nb.back.send_rx(&pattern(700, !seed), 0, None) {
        return fail("no RX buffers posted");
    }
    front.poll().map_err(|e| format!("poll: {e}"))?;
    match front.receive() {
        Some(p) if p.data == pattern(700, !seed) => Ok(()),
        _ => fail("we did not get netback's packet"),
    }
}

/// Connect (our xenstore replies limited to `bytes_per_step` between two
/// steps of the others), then dom0 unbinds and binds netback: its reactions
/// `delay` steps late, the bind `bind_after` steps after the unbind, the
/// hotplug script's `connected` `hotplug_after` steps after the bind, and
/// the frontend noticing `notice_after` steps after the bind. Returns the
/// reconnection's result.
fn uplink_restart(
    bytes_per_step: usize,
    delay: usize,
    bind_after: usize,
    hotplug_after: Option<usize>,
    notice_after: usize,
) -> Result<(), String> {
    let m = Machine::new();
    let mut nb = LinuxNetback::new(&m, delay);
    let budget = Rc::new(Cell::new(0));
    let mut front = run(
        Netfront::connect(throttled_env(&m, &budget), FRONT_PATH, options()),
        || {
            nb.step();
            budget.set(budget.get().saturating_add(bytes_per_step));
        },
    )
    .map_err(|(_, e)| format!("first connect: {e}"))?;
    for _ in 0..delay + 2 {
        nb.step();
    }
    assert_eq!(nb.state, S::Connected);
    carries_traffic(&mut front, &mut nb, 1)?;
    nb.unbind();
    for _ in 0..bind_after {
        nb.step();
    }
    nb.bind();
    let bound_at = nb.now;
    let hotplug = |nb: &mut LinuxNetback| {
        if hotplug_after.is_some_and(|after| nb.now == bound_at + after) {
            nb.back
                .xsd
                .borrow_mut()
                .set(&format!("{BACK_PATH}/hotplug-status"), b"connected");
        }
    };
    for _ in 0..notice_after {
        nb.step();
        hotplug(&mut nb);
    }
    budget.set(usize::MAX / 2);
    if run(front.check_backend(), || {}).is_ok() {
        // netback took the rings we still offer (the "kept" outcome).
        carries_traffic(&mut front, &mut nb, 2)?;
        return Ok(());
    }
    budget.set(0);
    let mut front = run(front.reconnect(options()), || {
        nb.step();
        hotplug(&mut nb);
        budget.set(budget.get().saturating_add(bytes_per_step));
    })
    .map_err(|(_, e)| format!("{e} (backend published {:?})", nb.published))?;
    for _ in 0..delay + 2 {
        nb.step();
        hotplug(&mut nb);
    }
    if nb.state != S::Connected {
        return Err(format!("netback ended {:?}", nb.state));
    }
    carries_traffic(&mut front, &mut nb, 3)?;
    Ok(())
}

/// Before the fix, 84 of these 1424 interleavings failed. 20 as the
/// rig's run did (`BackendClosed(Closed)`): netback, bound again, read our
/// old `Connected` and took our old rings (publishing InitWait, its
/// Connected held back by the hotplug watch); we saw the InitWait, closed,
/// took the InitWait still there for an answer, said Initialising, met
/// netback's Closing/Closed answering our Closed, and gave up; netback
/// then answered our Initialising with InitWait, and both ends waited for
/// each other (we Initialising, it InitWait). 64 (unthrottled) went quiet
/// on the old rings: netback saw our Closing..Connected as one Connected.
#[test]
fn dom0_netback_rebound_at_every_delay_reconnects() {
    let mut failures = Vec::new();
    let mut cases = 0;
    // 24 bytes: about a reply a step; unthrottled: whole sequences of
    // ours between two steps of netback.
    for bytes in [24, usize::MAX / 4] {
        for delay in [0, 1, 2, 3, 5, 8, 13, 21, 34] {
            for bind_after in [0, 4] {
                for hotplug_after in [None, Some(0), Some(3), Some(9)] {
                    for notice_after in (0..delay + 8).step_by(1 + delay / 8) {
                        cases += 1;
                        if let Err(e) =
                            uplink_restart(bytes, delay, bind_after, hotplug_after, notice_after)
                        {
                            failures.push(format!(
                            "bytes {bytes} delay {delay} bind {bind_after} hotplug {hotplug_after:?} notice {notice_after}: {e}"
                        ));
                        }
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {cases} interleavings failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A clock for tests: time moves only when the test says so.
#[derive(Clone, Default)]
struct TestClock(Rc<Cell<u64>>);

impl TestClock {
    fn clock(&self) -> impl netfront::front::Clock {
        let (a, b) = (self.0.clone(), self.0.clone());
        FnClock {
            now: move || a.get(),
            sleep: move |deadline: u64| {
                let now = b.clone();
                poll_fn(move |_| {
                    if now.get() >= deadline {
                        Poll::Ready(())
                    } else {
                        Poll::Pending
                    }
                })
            },
        }
    }
}

#[test]
fn a_backend_that_misses_our_nudge_is_asked_again_after_a_stall() {
    // netback rebound, but it never acts on our first `Initialising`: both
    // ends would wait for each other (we Initialising, it Closed). The
    // bounded reconnection starts over after the stall: Closed, then
    // Initialising again, which it answers.
    let m = Machine::new();
    let mut nb = LinuxNetback::new(&m, 1);
    let front = run(Netfront::connect(m.env(), FRONT_PATH, options()), || {
        nb.step()
    })
    .map_err(|(_, e)| e)
    .unwrap();
    for _ in 0..4 {
        nb.step();
    }
    nb.unbind();
    nb.bind();
    let time = TestClock::default();
    let mut front = front;
    assert!(run(front.check_backend(), || {}).is_err());
    nb.ignore_initialising = 1;
    let t = time.0.clone();
    let mut front = run(
        front.reconnect_bounded(options(), time.clock(), RECONNECT_STALL_NS),
        || {
            nb.step();
            // 10 ms a step: a stall is 1000 steps without progress.
            t.set(t.get() + 10_000_000);
        },
    )
    .map_err(|(_, e)| e)
    .expect("reconnected after starting over");
    let stats = front.reconnect_stats();
    assert_eq!(
        stats,
        ReconnectStats {
            attempts: 2,
            stalled: 1,
            last_error: Some(NetfrontError::Xenbus(xen::xenbus::XenbusError::Stalled)),
        }
    );
    assert!(
        t.get() >= RECONNECT_STALL_NS,
        "started over only after the stall"
    );
    for _ in 0..4 {
        nb.step();
    }
    carries_traffic(&mut front, &mut nb, 4).unwrap();
}

#[test]
fn disconnect_after_the_toolstack_removed_our_directory_leaves_it_removed() {
    // The toolstack removed our directory (libxl does at the end of `xl
    // network-detach`) before we noticed the backend left. Our disconnect,
    // and the reconnection that waits for a new vif, must not write our
    // state into it again.
    let m = Machine::new();
    let mut back = m.backend();
    let mut front = connect(&m, &mut back, options()).unwrap();
    back.restart();
    m.set(&format!("{BACK_PATH}/online"), "0");
    m.xsd.borrow_mut().remove(FRONT_ABS);
    assert!(run(front.check_backend(), || {}).is_err());
    let report = run(front.disconnect(), || {});
    assert_eq!(report.leaked, 0);
    assert_eq!(m.get(FRONT_ABS), None, "our directory stays removed");
    assert_eq!(m.get(&format!("{FRONT_ABS}/state")), None);
}

#[test]
fn reconnection_after_a_detach_waits_for_the_next_attach_without_writing() {
    let m = Machine::new();
    let mut back = m.backend();
    let front = connect(&m, &mut back, options()).unwrap();
    back.restart();
    m.set(&format!("{BACK_PATH}/online"), "0");
    m.xsd.borrow_mut().remove(FRONT_ABS);
    m.xsd.borrow_mut().remove(BACK_PATH);
    let mut steps = 0;
    let mut front = run(front.reconnect(options()), || {
        steps += 1;
        if steps < 500 {
            assert_eq!(m.get(FRONT_ABS), None, "written into at step {steps}");
        }
        if steps == 500 {
            // `xl network-attach`: a new vif, backend in InitWait.
            let mut d = m.xsd.borrow_mut();
            d.set(&format!("{BACK_PATH}/state"), b"2");
            d.set(&format!("{BACK_PATH}/online"), b"1");
            d.set(&format!("{BACK_PATH}/feature-rx-copy"), b"1");
            d.set(&format!("{FRONT_ABS}/backend-id"), b"0");
            d.set(&format!("{FRONT_ABS}/mac"), MAC.as_bytes());
            d.set(&format!("{FRONT_ABS}/state"), b"1");
            d.set(&format!("{FRONT_ABS}/backend"), BACK_PATH.as_bytes());
        }
        back.step()
    })
    .map_err(|(_, e)| e)
    .expect("reconnected to the new vif");
    assert!(steps >= 500);
    assert_eq!(front.reconnect_stats().attempts, 1);
    front.send(&pattern(900, 7), TxOffload::default()).unwrap();
    assert_eq!(back.process_tx(), 1);
}

#[test]
fn a_key_missing_from_a_directory_that_stays_ends_the_reconnection() {
    // Not round and round: our directory is there, its `mac` is not.
    let m = Machine::new();
    let mut back = m.backend();
    let front = connect(&m, &mut back, options()).unwrap();
    back.restart();
    m.xsd.borrow_mut().remove(&format!("{FRONT_ABS}/mac"));
    m.set(&format!("{BACK_PATH}/state"), "2");
    let e = run(front.reconnect(options()), || back.step())
        .err()
        .map(|(_, e)| e);
    assert_eq!(
        e,
        Some(NetfrontError::Xenbus(xen::xenbus::XenbusError::Xs(
            xen::xenstore::XsError::Enoent
        )))
    );
    assert_eq!(m.hv.grants_of(FRONT), 0, "every grant revoked");
}
