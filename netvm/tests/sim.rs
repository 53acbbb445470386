//! The network-VM runtime over the simulated hypervisor: one machine with
//! dom0 serving the VM's uplink (our netback), the VM (domain 2) running
//! `netvm::run` with a test service, and client domains running our
//! netfront against the VM's netback. Everything runs on the kernel's
//! executor with a virtual clock (a block jumps to the next deadline).

mod common;
use common::*;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::task::Context;

use kernel::executor::{Executor, Handle};
use netback::sim::SimNetbackEnv;
use netback::{BackendOptions, Packet};
use netfront::{ConnectOptions, Netfront, TxOffload};
use netvm::config::{Changed, Snapshot};
use netvm::{ClientId, ClientInfo, Link, Options, Service, Stats, Stop, To, Transmit, UplinkInfo};
use xen::abi::{DomId, GrantRef};
use xen::shared_page::SharedPage;
use xen::sim::{SimHypervisor, SimPage};

const VM: DomId = 2;
const MS: u64 = 1_000_000;
const SECOND: u64 = 1_000_000_000;

/// What the test service saw.
#[derive(Default)]
struct Log {
    up: Vec<ClientInfo>,
    down: Vec<ClientId>,
    uplinks: Vec<UplinkInfo>,
    uplink_downs: u32,
    configs: Vec<Snapshot>,
    changes: Vec<Changed>,
    from_clients: Vec<(ClientId, Vec<u8>)>,
    from_uplink: Vec<Vec<u8>>,
    stats: Option<Stats>,
}

/// A hub: client frames go to the uplink and the other clients, uplink
/// frames to every client. Refuses clients without an `ip`.
struct Hub(Rc<RefCell<Log>>);

impl Service for Hub {
    fn admit(&mut self, client: &ClientInfo) -> Result<(), String> {
        if client.ip4().is_none() {
            return Err("no ip".into());
        }
        Ok(())
    }
    fn client_up(&mut self, _now: u64, client: &ClientInfo) {
        self.0.borrow_mut().up.push(client.clone());
    }
    fn client_down(&mut self, _now: u64, id: ClientId) {
        self.0.borrow_mut().down.push(id);
    }
    fn uplink_up(&mut self, _now: u64, uplink: &UplinkInfo) {
        self.0.borrow_mut().uplinks.push(uplink.clone());
    }
    fn uplink_down(&mut self, _now: u64) {
        self.0.borrow_mut().uplink_downs += 1;
    }
    fn handle(&mut self, _now: u64, from: Link, packet: Packet, out: &mut Vec<Transmit>) {
        match from {
            Link::Uplink => {
                self.0.borrow_mut().from_uplink.push(packet.data.clone());
                out.push(Transmit {
                    to: To::Clients { except: None },
                    packet,
                });
            }
            Link::Client(id) => {
                self.0
                    .borrow_mut()
                    .from_clients
                    .push((id, packet.data.clone()));
                out.push(Transmit {
                    to: To::Clients { except: Some(id) },
                    packet: packet.clone(),
                });
                out.push(Transmit {
                    to: To::Uplink,
                    packet,
                });
            }
        }
    }
    fn configure(&mut self, _now: u64, snapshot: &Snapshot, changed: &Changed) -> Vec<String> {
        self.0.borrow_mut().configs.push(snapshot.clone());
        self.0.borrow_mut().changes.push(changed.clone());
        vec![format!("configured ({} keys)", snapshot.nodes.len())]
    }
    fn report(&mut self, stats: &Stats) -> Option<String> {
        self.0.borrow_mut().stats = Some(stats.clone());
        None
    }
}

fn print(line: &str) {
    println!("{line}");
}

fn options() -> Options {
    let mut o = Options::new("vm", print);
    o.backend = BackendOptions {
        gso_tcpv4: false,
        gso_tcpv6: false,
        ..BackendOptions::default()
    };
    o.report_ns = 100 * MS;
    o
}

/// A frame from `src` (a MAC) with a payload tag.
fn frame(dst: [u8; 6], src: [u8; 6], tag: u8) -> Vec<u8> {
    let mut f = vec![0u8; 60];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12] = 0x88;
    f[13] = 0xb5;
    f[14] = tag;
    f
}

/// An IPv4 frame from `src` (a MAC) and `ip`, with a tag after the IP
/// header (byte 34).
fn ip4_frame(src: [u8; 6], ip: [u8; 4], tag: u8) -> Vec<u8> {
    let mut f = vec![0u8; 60];
    f[0..6].fill(0xff);
    f[6..12].copy_from_slice(&src);
    f[12] = 0x08;
    f[14] = 0x45;
    f[26..30].copy_from_slice(&ip);
    f[34] = tag;
    f
}

/// dom0's side of the VM's uplink: our netback; it records what the VM
/// sent and sends what the test queues. `restart` makes it close the vif
/// and offer it again (a dom0 netback restart).
#[derive(Default)]
struct Dom0 {
    got: Vec<Vec<u8>>,
    to_send: VecDeque<Vec<u8>>,
    restart: bool,
    /// Do not offer the uplink (at start: its state stays `Initialising`;
    /// after a restart: `Closed`; never `InitWait`) while this is set.
    hang: bool,
    connections: u32,
}

async fn dom0_uplink(m: Machine, h: Handle, state: Rc<RefCell<Dom0>>) {
    let mut env = SimNetbackEnv {
        hv: m.hv.clone(),
        dom: 0,
    };
    let mut xs = m.xs_for(0);
    let path = Machine::back_path(VM, 0);
    let options = BackendOptions::default();
    loop {
        while state.borrow().hang {
            h.sleep(MS).await;
        }
        let mut vif = match netback::connect(&mut env, &mut xs, &path, &options).await {
            Ok(v) => v,
            Err(e) => panic!("dom0 netback: {e:?}"),
        };
        state.borrow_mut().connections += 1;
        loop {
            let mut got = Vec::new();
            let _ = vif.poll(&mut env, 64, &mut got);
            let restart = {
                let mut s = state.borrow_mut();
                s.got.extend(got.into_iter().map(|p| p.data));
                while let Some(f) = s.to_send.pop_front() {
                    vif.send(Packet {
                        data: f,
                        offload: Default::default(),
                    });
                }
                core::mem::take(&mut s.restart)
            };
            let _ = vif.deliver(&mut env, 64);
            if restart {
                let _ = vif.close(&mut env, &mut xs).await;
                // As Linux netback after a rebind: offer again once the
                // frontend noticed (a frontend still Connected would be
                // taken back on its old rings).
                let fstate = format!("{}/state", Machine::front_path(VM));
                while m.get(&fstate).as_deref() == Some("4") {
                    h.sleep(MS).await;
                }
                // Away for longer than the VM's scan period: the VM must
                // keep returning to the executor meanwhile (it once spun
                // on its overdue scan deadline and, on Xen, never got the
                // xenstore events its reconnection waited for; this test
                // then hangs).
                h.sleep(3 * SECOND).await;
                break;
            }
            h.sleep(MS).await;
        }
    }
}

/// A client domain: our netfront; records what it receives, sends what
/// the test queues; `leave` makes it disconnect and end.
#[derive(Default)]
struct Front {
    got: Vec<Vec<u8>>,
    to_send: VecDeque<Vec<u8>>,
    connected: bool,
    leave: bool,
    left: bool,
}

async fn client(m: Machine, h: Handle, dom: DomId, state: Rc<RefCell<Front>>) {
    let bstate = format!("{}/state", Machine::back_path(dom, VM));
    while m.get(&bstate).as_deref() != Some("2") {
        h.sleep(MS).await;
    }
    let options = ConnectOptions {
        max_queues: 1,
        ..ConnectOptions::default()
    };
    let mut nf = match Netfront::connect(m.front_env(dom), "device/vif/0", options).await {
        Ok(nf) => nf,
        Err((_, e)) => panic!("client {dom}: {e}"),
    };
    state.borrow_mut().connected = true;
    loop {
        nf.poll().expect("client poll");
        while let Some(p) = nf.receive() {
            state.borrow_mut().got.push(p.data);
        }
        let (sends, leave) = {
            let mut s = state.borrow_mut();
            (core::mem::take(&mut s.to_send), s.leave)
        };
        for f in sends {
            nf.send(&f, TxOffload::default()).expect("client send");
        }
        if leave {
            nf.disconnect().await;
            state.borrow_mut().left = true;
            return;
        }
        h.sleep(MS).await;
    }
}

/// Wait (virtual time) until `cond`, at most `limit_ns`.
async fn until(h: &Handle, limit_ns: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let end = h.now_ns() + limit_ns;
    while !cond() {
        assert!(h.now_ns() < end, "timed out waiting for {what}");
        h.sleep(MS).await;
    }
}

struct World {
    m: Machine,
    h: Handle,
    log: Rc<RefCell<Log>>,
    dom0: Rc<RefCell<Dom0>>,
    result: Rc<RefCell<Option<(Stop, Stats)>>>,
}

fn start(ex: &Executor, m: &Machine, options: Options) -> World {
    let h = ex.handle();
    m.add_vif(VM, 0, Some("10.0.0.2"));
    let dom0 = Rc::new(RefCell::new(Dom0::default()));
    h.spawn(dom0_uplink(m.clone(), h.clone(), dom0.clone()));
    let log = Rc::new(RefCell::new(Log::default()));
    let result = Rc::new(RefCell::new(None));
    {
        let (m, h, log, result) = (m.clone(), h.clone(), log.clone(), result.clone());
        h.clone().spawn(async move {
            let uplink = m.front_env(VM);
            let back = SimNetbackEnv {
                hv: m.hv.clone(),
                dom: VM,
            };
            let mut hub = Hub(log);
            let r = netvm::run(&h, uplink, back, &mut hub, &options).await;
            *result.borrow_mut() = Some(r);
        });
    }
    World {
        m: m.clone(),
        h,
        log,
        dom0,
        result,
    }
}

fn spawn_client(w: &World, dom: DomId) -> Rc<RefCell<Front>> {
    let s = Rc::new(RefCell::new(Front::default()));
    w.h.spawn(client(w.m.clone(), w.h.clone(), dom, s.clone()));
    s
}

thread_local! {
    /// The virtual time of this test (each runs on its own thread), kept
    /// across `run_main` calls.
    static NOW: Cell<u64> = const { Cell::new(0) };
}

fn run_main<F: core::future::Future>(ex: &mut Executor, f: F) -> F::Output {
    let mut clock = Clock {
        now: Cell::new(NOW.with(Cell::get)),
    };
    let r = ex.run_until(&mut clock, f);
    NOW.with(|n| n.set(clock.now.get()));
    r
}

#[test]
fn clients_connect_with_their_identity_and_frames_flow_both_ways() {
    let mut ex = Executor::new();
    let m = Machine::new();
    let w = start(&ex, &m, options());
    m.add_vif(3, VM, Some("10.137.0.10"));
    m.add_vif(4, VM, Some("10.137.0.11 fd09:24ef:4179::a89:b"));
    let c3 = spawn_client(&w, 3);
    let c4 = spawn_client(&w, 4);
    let h = w.h.clone();
    run_main(&mut ex, async {
        until(&h, 30 * SECOND, "two clients", || {
            w.log.borrow().up.len() == 2
        })
        .await;
        until(&h, SECOND, "frontends", || {
            c3.borrow().connected && c4.borrow().connected
        })
        .await;
        {
            let log = w.log.borrow();
            assert_eq!(log.uplinks.len(), 1);
            assert_eq!(
                log.uplinks[0].ip.valid().map(|v| v[0].to_string()),
                Some("10.0.0.2".into())
            );
            let by_dom = |d: DomId| log.up.iter().find(|c| c.frontend_id == d).unwrap();
            assert_eq!(by_dom(3).ip4().unwrap().to_string(), "10.137.0.10");
            assert_eq!(
                by_dom(4).ip6().unwrap().to_string(),
                "fd09:24ef:4179::a89:b"
            );
            assert_eq!(by_dom(3).mac.valid().unwrap().0, mac_bytes(3));
            assert_ne!(by_dom(3).id, by_dom(4).id);
        }
        // client 3 -> uplink and client 4
        c3.borrow_mut()
            .to_send
            .push_back(frame([0xff; 6], mac_bytes(3), 1));
        // a spoofed source MAC is dropped at the door
        c3.borrow_mut()
            .to_send
            .push_back(frame([0xff; 6], mac_bytes(9), 2));
        // its own IPv4 address passes, client 4's does not
        c3.borrow_mut()
            .to_send
            .push_back(ip4_frame(mac_bytes(3), [10, 137, 0, 11], 6));
        c3.borrow_mut()
            .to_send
            .push_back(ip4_frame(mac_bytes(3), [10, 137, 0, 10], 5));
        until(&h, 5 * SECOND, "frame at dom0", || {
            w.dom0.borrow().got.iter().any(|f| f[14] == 1)
        })
        .await;
        until(&h, 5 * SECOND, "IPv4 frame at dom0", || {
            w.dom0.borrow().got.iter().any(|f| f[12] == 8 && f[34] == 5)
        })
        .await;
        until(&h, 5 * SECOND, "frame at client 4", || {
            c4.borrow().got.iter().any(|f| f[14] == 1)
        })
        .await;
        // uplink -> both clients
        w.dom0
            .borrow_mut()
            .to_send
            .push_back(frame([0xff; 6], [2, 0, 0, 0, 0, 1], 3));
        until(&h, 5 * SECOND, "uplink frame at clients", || {
            c3.borrow().got.iter().any(|f| f[14] == 3) && c4.borrow().got.iter().any(|f| f[14] == 3)
        })
        .await;
        h.sleep(200 * MS).await;
        assert!(!w.dom0.borrow().got.iter().any(|f| f[14] == 2));
        assert!(!w.dom0.borrow().got.iter().any(|f| f[12] == 8 && f[34] == 6));
        assert!(!c4.borrow().got.iter().any(|f| f[12] == 8 && f[34] == 6));
        let stats = w.log.borrow().stats.clone().unwrap();
        assert_eq!(stats.spoofed, 2);
        assert_eq!(stats.clients, 2);
        // xl shutdown
        m.set("/local/domain/2/control/shutdown", "poweroff");
        until(&h, 5 * SECOND, "the runtime to stop", || {
            w.result.borrow().is_some()
        })
        .await;
    });
    let (stop, stats) = w.result.borrow_mut().take().unwrap();
    assert_eq!(
        stop,
        Stop::Requested(kernel::control::ShutdownRequest::Poweroff)
    );
    assert_eq!(stats.connected, 2);
    assert_eq!(w.log.borrow().down.len(), 2);
    // The loop slept between events (it is not polling), and slept for
    // virtual time: the test's clock only moves while the loop waits.
    assert!(
        stats.sleeps > 0 && stats.sleeps <= stats.rounds,
        "{stats:?}"
    );
    assert!(stats.slept_ns > 0, "{stats:?}");
    // Both vifs were closed in order, the shutdown acknowledged.
    assert_eq!(
        m.get(&format!("{}/state", Machine::back_path(3, VM)))
            .as_deref(),
        Some("6")
    );
    assert_eq!(
        m.get("/local/domain/2/control/shutdown").as_deref(),
        Some("")
    );
}

#[test]
fn a_vif_without_an_ip_is_refused_and_counted() {
    let mut ex = Executor::new();
    let m = Machine::new();
    let w = start(&ex, &m, options());
    m.add_vif(3, VM, None);
    m.add_vif(4, VM, Some("10.137.0.11"));
    let c4 = spawn_client(&w, 4);
    let h = w.h.clone();
    run_main(&mut ex, async {
        until(&h, 30 * SECOND, "client 4", || c4.borrow().connected).await;
        h.sleep(3 * SECOND).await;
    });
    let stats = w.log.borrow().stats.clone().unwrap();
    assert_eq!(stats.refused, 1);
    assert_eq!(stats.clients, 1);
    assert_eq!(
        m.get(&format!("{}/state", Machine::back_path(3, VM)))
            .as_deref(),
        Some("6"),
        "refused: Closed, never InitWait"
    );
    assert_eq!(w.log.borrow().up.len(), 1);
}

#[test]
fn a_refused_or_offered_vif_detached_goes_before_its_frontend_does() {
    let mut ex = Executor::new();
    let m = Machine::new();
    let w = start(&ex, &m, options());
    // 3 is refused (no ip); 5 is offered but its frontend never connects.
    m.add_vif(3, VM, None);
    m.add_vif(5, VM, Some("10.137.0.15"));
    let h = w.h.clone();
    let (b3, b5) = (Machine::back_path(3, VM), Machine::back_path(5, VM));
    run_main(&mut ex, async {
        until(&h, 5 * SECOND, "3 refused, 5 offered", || {
            m.get(&format!("{b3}/state")).as_deref() == Some("6")
                && m.get(&format!("{b5}/state")).as_deref() == Some("2")
        })
        .await;
        // xl network-detach of both, in libxl's order: the frontends'
        // directories stay until the backends' are gone. (libxl leaves a
        // Closed backend Closed.)
        m.set(&format!("{b3}/online"), "0");
        m.detach(5, VM);
        let t = h.now_ns();
        until(&h, 5 * SECOND, "both backend directories removed", || {
            m.get(&format!("{b3}/frontend")).is_none() && m.get(&format!("{b5}/frontend")).is_none()
        })
        .await;
        let took = h.now_ns() - t;
        assert!(
            (900 * MS..3 * SECOND).contains(&took),
            "removed {took} ns after Closed"
        );
        h.sleep(2 * SECOND).await;
    });
    assert!(m
        .get(&format!("{}/state", Machine::front_path(3)))
        .is_some());
    assert!(m
        .get(&format!("{}/state", Machine::front_path(5)))
        .is_some());
    let stats = w.log.borrow().stats.clone().unwrap();
    assert_eq!((stats.refused, stats.removed, stats.offered), (1, 2, 0));
    assert!(w.log.borrow().up.is_empty());
}

fn ports_open(hv: &SimHypervisor, dom: DomId) -> usize {
    (0..4096).filter(|p| hv.port_open(dom, *p)).count()
}

#[test]
fn clients_come_and_go_and_leave_nothing_behind() {
    const CYCLES: u32 = 100;
    let mut ex = Executor::new();
    let m = Machine::new();
    let w = start(&ex, &m, options());
    // A client that stays, and one that comes and goes.
    m.add_vif(3, VM, Some("10.137.0.10"));
    let stay = spawn_client(&w, 3);
    let h = w.h.clone();
    let before = run_main(&mut ex, async {
        until(&h, 30 * SECOND, "client 3", || stay.borrow().connected).await;
        h.sleep(100 * MS).await;
        (
            ports_open(&m.hv, VM),
            m.hv.maps_of(VM, 4),
            m.hv.grants_of(4),
        )
    });
    for cycle in 0..CYCLES {
        let tag = (cycle % 200) as u8 + 10;
        m.add_vif(4, VM, Some("10.137.0.11"));
        let c = spawn_client(&w, 4);
        run_main(&mut ex, async {
            until(&h, 30 * SECOND, "client 4", || c.borrow().connected).await;
            c.borrow_mut()
                .to_send
                .push_back(frame([0xff; 6], mac_bytes(4), tag));
            until(&h, 5 * SECOND, "its frame at client 3", || {
                stay.borrow().got.iter().any(|f| f[14] == tag)
            })
            .await;
            stay.borrow_mut().got.clear();
            // xl network-detach in libxl 4.17's order: online 0 and
            // Closing; it waits for our Closed, then for the backend
            // directory to go (10 s, then it fails), and only then removes
            // the frontend's. The VM must not wait for the frontend's.
            m.detach(4, VM);
            let b = Machine::back_path(4, VM);
            until(&h, 5 * SECOND, "the VM to close the vif", || {
                matches!(m.get(&format!("{b}/state")).as_deref(), Some("6") | None)
            })
            .await;
            let closed = h.now_ns();
            until(&h, 5 * SECOND, "the backend directory removed", || {
                m.get(&format!("{b}/frontend")).is_none()
            })
            .await;
            // Not at once: libxl reads our Closed first (a state node
            // already gone fails its wait); then it waits 10 s.
            let took = h.now_ns() - closed;
            assert!(
                (900 * MS..3 * SECOND).contains(&took),
                "removed {took} ns after Closed"
            );
            assert!(m
                .get(&format!("{}/state", Machine::front_path(4)))
                .is_some());
            c.borrow_mut().leave = true;
            until(&h, 5 * SECOND, "client 4 to leave", || c.borrow().left).await;
            m.xsd.borrow_mut().remove(&Machine::front_path(4));
        });
    }
    let after = run_main(&mut ex, async {
        h.sleep(100 * MS).await;
        (
            ports_open(&m.hv, VM),
            m.hv.maps_of(VM, 4),
            m.hv.grants_of(4),
        )
    });
    println!("before {before:?} after {after:?} ({CYCLES} cycles)");
    assert_eq!(before, after);
    let stats = w.log.borrow().stats.clone().unwrap();
    assert_eq!(stats.connected, 1 + u64::from(CYCLES));
    assert_eq!(stats.closed, u64::from(CYCLES));
    assert_eq!(stats.removed, u64::from(CYCLES));
    assert_eq!(stats.clients, 1);
    assert!(stay.borrow().connected);
}

#[test]
fn the_configuration_directory_is_watched() {
    let mut ex = Executor::new();
    let m = Machine::new();
    let mut o = options();
    o.config = Some("data/vm".into());
    // A long scan period: only the watch can explain a prompt reload.
    o.scan_ns = 3600 * SECOND;
    let w = start(&ex, &m, o);
    let h = w.h.clone();
    run_main(&mut ex, async {
        until(&h, 10 * SECOND, "the first read", || {
            !w.log.borrow().configs.is_empty()
        })
        .await;
        assert!(w.log.borrow().configs[0].nodes.is_empty());
        assert!(w.log.borrow().changes[0].all);
        m.set(
            "/local/domain/2/data/vm/qubes-firewall/10-137-0-10/policy",
            "drop",
        );
        until(&h, SECOND, "a reload", || {
            w.log
                .borrow()
                .configs
                .last()
                .is_some_and(|c| c.get("qubes-firewall/10-137-0-10/policy") == Some(b"drop"))
        })
        .await;
        assert_eq!(
            w.log.borrow().changes.last().unwrap().paths,
            ["qubes-firewall/10-137-0-10/policy"]
        );
        // The same value written again is still a change (QubesDB's
        // "written last" signal).
        m.set("/local/domain/2/data/vm/qubes-firewall/10-137-0-10", "");
        m.set("/local/domain/2/data/vm/qubes-firewall/10-137-0-10", "");
        until(&h, SECOND, "a reload for the rewrite", || {
            w.log
                .borrow()
                .changes
                .last()
                .is_some_and(|c| c.paths.iter().all(|p| p == "qubes-firewall/10-137-0-10"))
        })
        .await;
        m.xsd
            .borrow_mut()
            .remove("/local/domain/2/data/vm/qubes-firewall");
        until(&h, SECOND, "a reload after the removal", || {
            w.log
                .borrow()
                .configs
                .last()
                .is_some_and(|c| c.nodes.is_empty())
        })
        .await;
    });
}

#[test]
fn clients_are_served_while_the_uplink_backend_restarts() {
    let mut ex = Executor::new();
    let m = Machine::new();
    let w = start(&ex, &m, options());
    m.add_vif(3, VM, Some("10.137.0.10"));
    m.add_vif(4, VM, Some("10.137.0.11"));
    let c3 = spawn_client(&w, 3);
    let c4 = spawn_client(&w, 4);
    let h = w.h.clone();
    run_main(&mut ex, async {
        until(&h, 30 * SECOND, "clients", || {
            c3.borrow().connected && c4.borrow().connected && w.log.borrow().up.len() == 2
        })
        .await;
        w.dom0.borrow_mut().restart = true;
        until(&h, 5 * SECOND, "the VM to notice", || {
            w.log.borrow().uplink_downs == 1
        })
        .await;
        // Meanwhile client to client still works.
        c3.borrow_mut()
            .to_send
            .push_back(frame([0xff; 6], mac_bytes(3), 7));
        until(&h, 5 * SECOND, "client 4 served during the outage", || {
            c4.borrow().got.iter().any(|f| f[14] == 7)
        })
        .await;
        until(&h, 30 * SECOND, "the uplink back", || {
            w.log.borrow().uplinks.len() == 2
        })
        .await;
        assert_eq!(w.dom0.borrow().connections, 2);
        c3.borrow_mut()
            .to_send
            .push_back(frame([0xff; 6], mac_bytes(3), 8));
        until(&h, 5 * SECOND, "the uplink carrying again", || {
            w.dom0.borrow().got.iter().any(|f| f[14] == 8)
        })
        .await;
    });
    let stats = w.log.borrow().stats.clone().unwrap();
    assert_eq!(stats.uplink_lost, 1);
    assert_eq!(stats.clients, 2);
    assert!(w.log.borrow().down.is_empty(), "no client was disturbed");
}

#[test]
fn an_uplink_backend_that_never_comes_back_does_not_stall_the_clients() {
    let mut ex = Executor::new();
    let m = Machine::new();
    let w = start(&ex, &m, options());
    m.add_vif(3, VM, Some("10.137.0.10"));
    m.add_vif(4, VM, Some("10.137.0.11"));
    let c3 = spawn_client(&w, 3);
    let c4 = spawn_client(&w, 4);
    let h = w.h.clone();
    let mut worst = 0;
    let mut new_vif = 0;
    let mut stopped = 0;
    run_main(&mut ex, async {
        until(&h, 30 * SECOND, "clients", || {
            c3.borrow().connected && c4.borrow().connected && w.log.borrow().up.len() == 2
        })
        .await;
        // dom0's netback goes and stays away: its state stays Closed,
        // never InitWait again.
        {
            let mut d = w.dom0.borrow_mut();
            d.hang = true;
            d.restart = true;
        }
        until(&h, 5 * SECOND, "the VM to notice", || {
            w.log.borrow().uplink_downs == 1
        })
        .await;
        let rounds = w.log.borrow().stats.clone().unwrap().rounds;
        // 60 s of outage (six of the reconnection's 10 s stall periods):
        // client 3's frame every second reaches client 4 at once.
        for k in 0..60u8 {
            let sent = h.now_ns();
            c3.borrow_mut()
                .to_send
                .push_back(frame([0xff; 6], mac_bytes(3), 100 + k));
            until(&h, SECOND, "client 4 served during the outage", || {
                c4.borrow().got.iter().any(|f| f[14] == 100 + k)
            })
            .await;
            worst = worst.max(h.now_ns() - sent);
            h.sleep(SECOND).await;
        }
        // The loop kept going round (and reporting).
        let later = w.log.borrow().stats.clone().unwrap();
        assert!(later.rounds > rounds + 60, "{later:?}");
        assert_eq!(later.uplink_lost, 1);
        assert_eq!(w.log.borrow().uplinks.len(), 1, "not back");
        // A new vif attached meanwhile is offered and served (xenstore is
        // worked between the bounded reconnection attempts).
        m.add_vif(5, VM, Some("10.137.0.12"));
        let c5 = spawn_client(&w, 5);
        let attached = h.now_ns();
        until(&h, 30 * SECOND, "client 5 during the outage", || {
            c5.borrow().connected && w.log.borrow().up.len() == 3
        })
        .await;
        new_vif = h.now_ns() - attached;
        c3.borrow_mut()
            .to_send
            .push_back(frame([0xff; 6], mac_bytes(3), 200));
        until(&h, SECOND, "client 5 served", || {
            c5.borrow().got.iter().any(|f| f[14] == 200)
        })
        .await;
        // The toolstack asks us to stop, the backend still away: done
        // within one stall period of the reconnection (10 s) and a pause.
        m.set("/local/domain/2/control/shutdown", "poweroff");
        let asked = h.now_ns();
        until(&h, 15 * SECOND, "the runtime to stop", || {
            w.result.borrow().is_some()
        })
        .await;
        stopped = h.now_ns() - asked;
    });
    println!(
        "outage: a new vif connected {new_vif} ns after its attach, shutdown took {stopped} ns"
    );
    // Each frame took a few ms of virtual time (the clients' 1 ms polls).
    println!("outage: worst client-to-client delivery {worst} ns");
    assert!(worst < 20 * MS, "worst {worst} ns");
    let (stop, stats) = w.result.borrow_mut().take().unwrap();
    assert_eq!(
        stop,
        Stop::Requested(kernel::control::ShutdownRequest::Poweroff)
    );
    assert_eq!(stats.uplink_lost, 1);
    assert_eq!(w.log.borrow().down.len(), 3);
    assert_eq!(w.log.borrow().uplinks.len(), 1, "never back");
}

#[test]
fn an_uplink_backend_whose_domain_died_is_waited_for() {
    // The uplink's backend domain dies (a sys-net destroyed): its
    // directory answers EACCES to us, not ENOENT. The runtime must keep
    // trying (it used to stop: `uplink reconnect failed: xenstore:
    // EACCES`, a firewall without uplink for good, seen on the rig) and
    // take the backend that comes back, serving the clients meanwhile.
    let mut ex = Executor::new();
    let m = Machine::new();
    let w = start(&ex, &m, options());
    m.add_vif(3, VM, Some("10.137.0.10"));
    m.add_vif(4, VM, Some("10.137.0.11"));
    let c3 = spawn_client(&w, 3);
    let c4 = spawn_client(&w, 4);
    let h = w.h.clone();
    run_main(&mut ex, async {
        until(&h, 30 * SECOND, "clients", || {
            c3.borrow().connected && c4.borrow().connected && w.log.borrow().up.len() == 2
        })
        .await;
        m.xsd.borrow_mut().hide("/local/domain/0/backend");
        w.dom0.borrow_mut().restart = true;
        until(&h, 5 * SECOND, "the VM to notice", || {
            w.log.borrow().uplink_downs == 1
        })
        .await;
        for k in 0..20u8 {
            c3.borrow_mut()
                .to_send
                .push_back(frame([0xff; 6], mac_bytes(3), 50 + k));
            until(
                &h,
                SECOND,
                "client 4 served while the backend is dead",
                || c4.borrow().got.iter().any(|f| f[14] == 50 + k),
            )
            .await;
            h.sleep(SECOND).await;
        }
        assert!(w.result.borrow().is_none(), "the runtime stopped");
        assert_eq!(w.log.borrow().uplinks.len(), 1, "not back yet");
        m.xsd.borrow_mut().unhide();
        until(&h, 30 * SECOND, "the uplink back", || {
            w.log.borrow().uplinks.len() == 2
        })
        .await;
        c3.borrow_mut()
            .to_send
            .push_back(frame([0xff; 6], mac_bytes(3), 99));
        until(&h, 5 * SECOND, "the uplink carrying again", || {
            w.dom0.borrow().got.iter().any(|f| f[14] == 99)
        })
        .await;
    });
    assert!(w.log.borrow().down.is_empty(), "no client was disturbed");
}

#[test]
fn clients_are_served_before_an_uplink_backend_that_is_late_at_boot() {
    let mut ex = Executor::new();
    let m = Machine::new();
    let w = start(&ex, &m, options());
    // dom0 does not serve the uplink yet: its backend never reaches
    // InitWait until released.
    w.dom0.borrow_mut().hang = true;
    m.add_vif(3, VM, Some("10.137.0.10"));
    m.add_vif(4, VM, Some("10.137.0.11"));
    let c3 = spawn_client(&w, 3);
    let c4 = spawn_client(&w, 4);
    let h = w.h.clone();
    run_main(&mut ex, async {
        until(&h, 30 * SECOND, "clients without an uplink", || {
            c3.borrow().connected && c4.borrow().connected && w.log.borrow().up.len() == 2
        })
        .await;
        c3.borrow_mut()
            .to_send
            .push_back(frame([0xff; 6], mac_bytes(3), 9));
        until(&h, SECOND, "client 4 served without an uplink", || {
            c4.borrow().got.iter().any(|f| f[14] == 9)
        })
        .await;
        assert!(w.log.borrow().uplinks.is_empty());
        // dom0 serves it at last: the next attempt connects.
        w.dom0.borrow_mut().hang = false;
        until(&h, 30 * SECOND, "the uplink up", || {
            w.log.borrow().uplinks.len() == 1
        })
        .await;
        c3.borrow_mut()
            .to_send
            .push_back(frame([0xff; 6], mac_bytes(3), 10));
        until(&h, 5 * SECOND, "the uplink carrying", || {
            w.dom0.borrow().got.iter().any(|f| f[14] == 10)
        })
        .await;
        m.set("/local/domain/2/control/shutdown", "poweroff");
        until(&h, 5 * SECOND, "the runtime to stop", || {
            w.result.borrow().is_some()
        })
        .await;
    });
    let (stop, stats) = w.result.borrow_mut().take().unwrap();
    assert_eq!(
        stop,
        Stop::Requested(kernel::control::ShutdownRequest::Poweroff)
    );
    assert_eq!(stats.uplink_lost, 0);
    assert_eq!(w.dom0.borrow().connections, 1);
}

/// Routes by destination MAC like a learnt switch: a frame for a client's
/// MAC goes to that client only, anything else as [`Hub`] sends it.
struct Unicast {
    log: Rc<RefCell<Log>>,
    macs: Vec<([u8; 6], ClientId)>,
}

impl Service for Unicast {
    fn client_up(&mut self, _now: u64, client: &ClientInfo) {
        if let Some(mac) = client.mac.valid() {
            self.macs.push((mac.0, client.id));
        }
        self.log.borrow_mut().up.push(client.clone());
    }
    fn client_down(&mut self, _now: u64, id: ClientId) {
        self.macs.retain(|m| m.1 != id);
    }
    fn handle(&mut self, _now: u64, from: Link, packet: Packet, out: &mut Vec<Transmit>) {
        let dst = packet
            .data
            .get(0..6)
            .and_then(|d| self.macs.iter().find(|m| m.0[..] == *d).map(|m| m.1));
        match (from, dst) {
            (Link::Client(me), Some(id)) if me == id => {}
            (_, Some(id)) => out.push(Transmit {
                to: To::Client(id),
                packet,
            }),
            (Link::Uplink, None) => out.push(Transmit {
                to: To::Clients { except: None },
                packet,
            }),
            (Link::Client(id), None) => {
                out.push(Transmit {
                    to: To::Clients { except: Some(id) },
                    packet: packet.clone(),
                });
                out.push(Transmit {
                    to: To::Uplink,
                    packet,
                });
            }
        }
    }
    fn report(&mut self, stats: &Stats) -> Option<String> {
        self.log.borrow_mut().stats = Some(stats.clone());
        None
    }
}

/// What the Linux-like client saw.
#[derive(Default)]
struct LinuxLog {
    connected: bool,
    /// Sequence numbers of the stream frames, in arrival order.
    stream: Vec<u32>,
    pings_answered: u32,
    rx_kicks: u64,
    tx_kicks: u64,
}

const PING: u8 = 0xe1;
const PONG: u8 = 0xe2;
const DATA: u8 = 0xd0;

/// A client domain behaving like Linux's netfront (the parts that matter
/// for wake-ups): split event channels; RX buffers refilled after each
/// poll and pushed only when at least 19 are outstanding; a kick only when
/// a push crosses the backend's event index, never otherwise; polling RX
/// only after an RX event or when the last poll used its whole budget
/// (NAPI), `napi_budget` responses a millisecond (a slow receiver); pings
/// answered on TX.
async fn linux_like(
    m: Machine,
    h: Handle,
    dom: DomId,
    napi_budget: usize,
    log: Rc<RefCell<LinuxLog>>,
) {
    use xen::abi::netif::*;
    let b = Machine::back_path(dom, VM);
    let f = Machine::front_path(dom);
    while m.get(&format!("{b}/state")).as_deref() != Some("2") {
        h.sleep(MS).await;
    }
    assert_eq!(
        m.get(&format!("{b}/feature-split-event-channels"))
            .as_deref(),
        Some("1")
    );
    let hv = m.hv.clone();
    let tx_page = hv.alloc_page_of(dom);
    let rx_page = hv.alloc_page_of(dom);
    let tx_ref = hv.grant_access(dom, VM, tx_page.frame(), false).unwrap();
    let rx_ref = hv.grant_access(dom, VM, rx_page.frame(), false).unwrap();
    let tx_port = hv.alloc_unbound(dom, VM).unwrap();
    let rx_port = hv.alloc_unbound(dom, VM).unwrap();
    let mut tx = tx_page.into_front_ring::<NetifTxRequest, NetifTxResponse>(0);
    let mut rx = rx_page.into_front_ring::<NetifRxRequest, NetifRxResponse>(0);
    let size = rx.size();
    let bufs: Vec<(SharedPage<SimPage>, GrantRef)> = (0..size)
        .map(|_| {
            let p = hv.alloc_page_of(dom);
            let g = hv.grant_access(dom, VM, p.frame(), false).unwrap();
            (p, g)
        })
        .collect();
    let tx_pages: Vec<(SharedPage<SimPage>, GrantRef)> = (0..tx.size())
        .map(|_| {
            let p = hv.alloc_page_of(dom);
            let g = hv.grant_access(dom, VM, p.frame(), true).unwrap();
            (p, g)
        })
        .collect();
    for (k, v) in [
        ("tx-ring-ref", tx_ref.to_string()),
        ("rx-ring-ref", rx_ref.to_string()),
        ("event-channel-tx", tx_port.to_string()),
        ("event-channel-rx", rx_port.to_string()),
        ("request-rx-copy", "1".into()),
        ("feature-rx-notify", "1".into()),
        ("feature-sg", "1".into()),
        ("state", "4".into()),
    ] {
        m.set(&format!("{f}/{k}"), &v);
    }
    let mut req_prod: u32 = 0;
    let mut rsp_cons: u32 = 0;
    let mut tx_prod: u32 = 0;
    let refill =
        |rx: &mut xen::shared_page::PageFrontRing<SimPage, NetifRxRequest, NetifRxResponse>,
         req_prod: &mut u32,
         rsp_cons: u32,
         log: &Rc<RefCell<LinuxLog>>| {
            while req_prod.wrapping_sub(rsp_cons) < size {
                let id = (*req_prod % size) as u16;
                let gref = bufs[usize::from(id)].1;
                rx.queue_request(NetifRxRequest { id, pad: 0, gref })
                    .unwrap();
                *req_prod = req_prod.wrapping_add(1);
            }
            // xennet_alloc_rx_buffers: push only with NET_RX_SLOTS_MIN (19)
            // outstanding, kick only when the push crosses req_event.
            if req_prod.wrapping_sub(rsp_cons) >= 19 && rx.push_requests_and_check_notify() {
                log.borrow_mut().rx_kicks += 1;
                let _ = hv.send(dom, rx_port);
            }
        };
    refill(&mut rx, &mut req_prod, rsp_cons, &log);
    while m.get(&format!("{b}/state")).as_deref() != Some("4") {
        h.sleep(MS).await;
    }
    log.borrow_mut().connected = true;
    let mut napi = true;
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut pongs: VecDeque<Vec<u8>> = VecDeque::new();
    loop {
        // The RX interrupt schedules NAPI; TX completions are collected
        // whenever we run (as xennet_tx_buf_gc from start_xmit).
        if hv.poll_event(dom, rx_port, &mut cx).is_ready() {
            napi = true;
        }
        let _ = hv.poll_event(dom, tx_port, &mut cx);
        while tx.take_response().unwrap().is_some() {}
        let _ = tx.final_check_for_responses();
        if napi {
            let mut work = 0;
            while work < napi_budget {
                let Some(r) = rx.take_response().unwrap() else {
                    break;
                };
                rsp_cons = rsp_cons.wrapping_add(1);
                work += 1;
                assert!(r.status > 0, "RX error {}", r.status);
                assert_eq!(r.flags & NETRXF_MORE_DATA, 0, "single-slot frames only");
                let mut data = vec![0u8; r.status as usize];
                bufs[usize::from(r.id)]
                    .0
                    .read(usize::from(r.offset), &mut data)
                    .unwrap();
                match data.get(14) {
                    Some(&DATA) => {
                        let seq = u32::from_be_bytes([data[15], data[16], data[17], data[18]]);
                        log.borrow_mut().stream.push(seq);
                    }
                    Some(&PING) => {
                        let mut pong = data.clone();
                        pong[0..6].copy_from_slice(&data[6..12]);
                        pong[6..12].copy_from_slice(&mac_bytes(dom));
                        pong[14] = PONG;
                        pongs.push_back(pong);
                    }
                    _ => {}
                }
            }
            refill(&mut rx, &mut req_prod, rsp_cons, &log);
            if work < napi_budget {
                // napi_complete_done + RING_FINAL_CHECK_FOR_RESPONSES
                napi = rx.final_check_for_responses().unwrap();
            }
        }
        // Answers go out on TX, kicked only across req_event.
        let mut queued = false;
        while tx.free_requests() > 0 {
            let Some(p) = pongs.pop_front() else { break };
            let id = (tx_prod % tx.size()) as u16;
            let (page, gref) = &tx_pages[usize::from(id)];
            page.write(0, &p).unwrap();
            tx.queue_request(NetifTxRequest {
                gref: *gref,
                offset: 0,
                flags: 0,
                id,
                size: p.len() as u16,
            })
            .unwrap();
            tx_prod = tx_prod.wrapping_add(1);
            queued = true;
            log.borrow_mut().pings_answered += 1;
        }
        if queued && tx.push_requests_and_check_notify() {
            log.borrow_mut().tx_kicks += 1;
            let _ = hv.send(dom, tx_port);
        }
        h.sleep(MS).await;
    }
}

/// A frame of the stream: DATA, then its sequence number.
fn data_frame(dst: [u8; 6], src: [u8; 6], seq: u32, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12] = 0x88;
    f[13] = 0xb5;
    f[14] = DATA;
    f[15..19].copy_from_slice(&seq.to_be_bytes());
    f
}

/// A client (our netfront) that sends `count` frames to `dst` as fast as
/// its TX ring takes them, like a TCP sender with a large window and no
/// congestion control (netdemo's smoltcp source).
async fn streamer(
    m: Machine,
    h: Handle,
    dom: DomId,
    dst: [u8; 6],
    count: u32,
    sent: Rc<Cell<u32>>,
) {
    let bstate = format!("{}/state", Machine::back_path(dom, VM));
    while m.get(&bstate).as_deref() != Some("2") {
        h.sleep(MS).await;
    }
    let options = ConnectOptions {
        max_queues: 1,
        ..ConnectOptions::default()
    };
    let mut nf = match Netfront::connect(m.front_env(dom), "device/vif/0", options).await {
        Ok(nf) => nf,
        Err((_, e)) => panic!("streamer {dom}: {e}"),
    };
    let mut seq = 0;
    while seq < count {
        nf.poll().expect("streamer poll");
        while nf.receive().is_some() {}
        while seq < count {
            match nf.send(
                &data_frame(dst, mac_bytes(dom), seq, 1514),
                TxOffload::default(),
            ) {
                Ok(()) => seq += 1,
                Err(netfront::error::TxError::Busy) => break,
                Err(e) => panic!("streamer send: {e:?}"),
            }
        }
        sent.set(seq);
        h.sleep(MS / 4).await;
    }
    loop {
        nf.poll().expect("streamer poll");
        while nf.receive().is_some() {}
        h.sleep(MS).await;
    }
}

/// A fast sender and a slow Linux-like receiver behind the VM, pings from
/// the uplink to the receiver meanwhile: nothing may be lost. Before the
/// backpressure between clients, the receiver's queue (256 frames)
/// overflowed within milliseconds and frames were dropped (a TCP sender
/// like smoltcp's then stalls for minutes: the rig's domU-to-domU pull).
#[test]
fn a_slow_linux_like_receiver_slows_its_sender_down_without_losses() {
    const FRAMES: u32 = 20_000;
    const PINGS: u32 = 50;
    let mut ex = Executor::new();
    let m = Machine::new();
    let h = ex.handle();
    m.add_vif(VM, 0, Some("10.0.0.2"));
    let dom0 = Rc::new(RefCell::new(Dom0::default()));
    h.spawn(dom0_uplink(m.clone(), h.clone(), dom0.clone()));
    let log = Rc::new(RefCell::new(Log::default()));
    {
        let (m, h, log) = (m.clone(), h.clone(), log.clone());
        h.clone().spawn(async move {
            let mut svc = Unicast {
                log,
                macs: Vec::new(),
            };
            let uplink = m.front_env(VM);
            let back = SimNetbackEnv {
                hv: m.hv.clone(),
                dom: VM,
            };
            let _ = netvm::run(&h, uplink, back, &mut svc, &options()).await;
        });
    }
    m.add_vif(4, VM, Some("10.137.0.11"));
    let linux = Rc::new(RefCell::new(LinuxLog::default()));
    h.spawn(linux_like(m.clone(), h.clone(), 4, 16, linux.clone()));
    run_main(&mut ex, async {
        until(&h, 30 * SECOND, "the Linux-like client", || {
            linux.borrow().connected && log.borrow().up.len() == 1
        })
        .await;
    });
    m.add_vif(3, VM, Some("10.137.0.10"));
    let sent = Rc::new(Cell::new(0));
    h.spawn(streamer(
        m.clone(),
        h.clone(),
        3,
        mac_bytes(4),
        FRAMES,
        sent.clone(),
    ));
    let start = run_main(&mut ex, async {
        until(&h, 30 * SECOND, "the streamer", || {
            log.borrow().up.len() == 2 && sent.get() > 0
        })
        .await;
        h.now_ns()
    });
    run_main(&mut ex, async {
        let uplink_mac = [2, 0, 0, 0, 0, 1];
        let mut rtt_max = 0;
        for n in 0..PINGS {
            let mut p = frame(mac_bytes(4), uplink_mac, PING);
            p[15..19].copy_from_slice(&n.to_be_bytes());
            let sent_at = h.now_ns();
            w_push(&dom0, p);
            // Its answer, before the next: a lost wake-up would show as
            // the runtime's 100 ms tick.
            until(&h, SECOND, "the pong", || {
                dom0.borrow()
                    .got
                    .iter()
                    .any(|f| f[14] == PONG && f[15..19] == n.to_be_bytes())
            })
            .await;
            rtt_max = rtt_max.max(h.now_ns() - sent_at);
            h.sleep(5 * MS).await;
        }
        println!("ping rtt max {} ms during the stream", rtt_max / MS);
        // Behind at most a ring (256) and half a queue (128) of the
        // stream, taken 16 a millisecond: some 25 ms.
        assert!(rtt_max < 50 * MS, "ping rtt {} ms", rtt_max / MS);
        until(&h, 60 * SECOND, "the whole stream", || {
            linux.borrow().stream.len() as u32 >= FRAMES
        })
        .await;
        until(&h, 5 * SECOND, "every pong", || {
            dom0.borrow().got.iter().filter(|f| f[14] == PONG).count() as u32 >= PINGS
        })
        .await;
        h.sleep(200 * MS).await;
    });
    let took = NOW.with(Cell::get) - start;
    let l = linux.borrow();
    let stats = log.borrow().stats.clone().unwrap();
    println!(
        "{FRAMES} frames in {} ms virtual; stats {stats:?}; kicks rx {} tx {}",
        took / MS,
        l.rx_kicks,
        l.tx_kicks
    );
    assert_eq!(stats.client_tx_dropped, 0, "frames dropped: {stats:?}");
    let expected: Vec<u32> = (0..FRAMES).collect();
    assert_eq!(l.stream, expected, "every frame once, in order");
    assert_eq!(l.pings_answered, PINGS);
    assert!(
        stats.client_held > 0,
        "the receiver was slower than the sender"
    );
    assert!(stats.client_full > 0);
}

fn w_push(dom0: &Rc<RefCell<Dom0>>, f: Vec<u8>) {
    dom0.borrow_mut().to_send.push_back(f);
}

/// A client that stops taking frames (posts no more RX buffers) cannot hold
/// its senders up: after `hold_ns` of no delivery it counts as stalled,
/// what waited for it is dropped, and the sender is read again.
#[test]
fn a_receiver_that_stops_reading_does_not_hold_its_sender_up() {
    const FRAMES: u32 = 3000;
    let mut ex = Executor::new();
    let m = Machine::new();
    let h = ex.handle();
    m.add_vif(VM, 0, Some("10.0.0.2"));
    let dom0 = Rc::new(RefCell::new(Dom0::default()));
    h.spawn(dom0_uplink(m.clone(), h.clone(), dom0.clone()));
    let log = Rc::new(RefCell::new(Log::default()));
    {
        let (m, h, log) = (m.clone(), h.clone(), log.clone());
        h.clone().spawn(async move {
            let mut svc = Unicast {
                log,
                macs: Vec::new(),
            };
            let uplink = m.front_env(VM);
            let back = SimNetbackEnv {
                hv: m.hv.clone(),
                dom: VM,
            };
            let _ = netvm::run(&h, uplink, back, &mut svc, &options()).await;
        });
    }
    // napi budget 0: it never takes a response, so it never re-posts.
    m.add_vif(4, VM, Some("10.137.0.11"));
    let linux = Rc::new(RefCell::new(LinuxLog::default()));
    h.spawn(linux_like(m.clone(), h.clone(), 4, 0, linux.clone()));
    run_main(&mut ex, async {
        until(&h, 30 * SECOND, "the stuck client", || {
            linux.borrow().connected && log.borrow().up.len() == 1
        })
        .await;
    });
    m.add_vif(3, VM, Some("10.137.0.10"));
    let sent = Rc::new(Cell::new(0));
    h.spawn(streamer(
        m.clone(),
        h.clone(),
        3,
        mac_bytes(4),
        FRAMES,
        sent.clone(),
    ));
    let start = run_main(&mut ex, async {
        until(&h, 30 * SECOND, "the streamer", || sent.get() > 0).await;
        h.now_ns()
    });
    run_main(&mut ex, async {
        until(&h, 10 * SECOND, "the whole stream sent", || {
            sent.get() >= FRAMES
        })
        .await;
        h.sleep(500 * MS).await;
    });
    let took = NOW.with(Cell::get) - start;
    let stats = log.borrow().stats.clone().unwrap();
    println!("sent in {} ms virtual; stats {stats:?}", took / MS);
    // 256 frames fill its ring, 256 its queue (once it is stalled nothing
    // is held for it): the rest is dropped.
    assert!(stats.client_held > 0);
    assert_eq!(stats.client_tx, 512, "{stats:?}");
    assert_eq!(stats.client_tx_dropped, u64::from(FRAMES) - 512);
    assert!(
        took < 4 * SECOND,
        "held up for {} ms (hold_ns 1 s)",
        took / MS
    );
}

/// Sends a frame to every client at each tick, noting when.
struct Ticker {
    log: Rc<RefCell<Log>>,
    ticks: Rc<RefCell<Vec<(u8, u64)>>>,
}

impl Service for Ticker {
    fn client_up(&mut self, _now: u64, client: &ClientInfo) {
        self.log.borrow_mut().up.push(client.clone());
    }
    fn handle(&mut self, _now: u64, _from: Link, _packet: Packet, _out: &mut Vec<Transmit>) {}
    fn tick(&mut self, now: u64, out: &mut Vec<Transmit>) {
        let mut t = self.ticks.borrow_mut();
        let tag = t.len() as u8;
        t.push((tag, now));
        out.push(Transmit {
            to: To::Clients { except: None },
            packet: Packet {
                data: frame([0xff; 6], [2, 0, 0, 0, 0, 9], tag),
                offload: Default::default(),
            },
        });
    }
}

/// A frame the service emits from `tick` reaches the client at once, not
/// at the next wake-up (the loop once ticked after filling the clients'
/// rings, and slept with the frame queued: up to a tick period late).
#[test]
fn frames_from_a_tick_are_delivered_in_the_same_round() {
    let mut ex = Executor::new();
    let m = Machine::new();
    let h = ex.handle();
    m.add_vif(VM, 0, Some("10.0.0.2"));
    let dom0 = Rc::new(RefCell::new(Dom0::default()));
    h.spawn(dom0_uplink(m.clone(), h.clone(), dom0.clone()));
    let log = Rc::new(RefCell::new(Log::default()));
    let ticks = Rc::new(RefCell::new(Vec::new()));
    {
        let (m, h, log, ticks) = (m.clone(), h.clone(), log.clone(), ticks.clone());
        h.clone().spawn(async move {
            let mut svc = Ticker { log, ticks };
            let uplink = m.front_env(VM);
            let back = SimNetbackEnv {
                hv: m.hv.clone(),
                dom: VM,
            };
            let _ = netvm::run(&h, uplink, back, &mut svc, &options()).await;
        });
    }
    m.add_vif(3, VM, Some("10.137.0.10"));
    let got: Rc<RefCell<Vec<(u8, u64)>>> = Rc::new(RefCell::new(Vec::new()));
    {
        let (m, h, got) = (m.clone(), h.clone(), got.clone());
        h.clone().spawn(async move {
            let bstate = format!("{}/state", Machine::back_path(3, VM));
            while m.get(&bstate).as_deref() != Some("2") {
                h.sleep(MS).await;
            }
            let options = ConnectOptions {
                max_queues: 1,
                ..ConnectOptions::default()
            };
            let Ok(mut nf) = Netfront::connect(m.front_env(3), "device/vif/0", options).await
            else {
                panic!("client 3 did not connect");
            };
            loop {
                nf.poll().expect("poll");
                while let Some(p) = nf.receive() {
                    got.borrow_mut().push((p.data[14], h.now_ns()));
                }
                h.sleep(MS).await;
            }
        });
    }
    run_main(&mut ex, async {
        until(&h, 30 * SECOND, "the client", || log.borrow().up.len() == 1).await;
        // Past the first scans: the VM is otherwise idle.
        h.sleep(3 * SECOND).await;
        got.borrow_mut().clear();
        let from = ticks.borrow().len();
        h.sleep(3 * SECOND).await;
        let ticks = ticks.borrow();
        let got = got.borrow();
        let mut worst = 0;
        for (tag, at) in &ticks[from..ticks.len() - 1] {
            let Some((_, arrived)) = got.iter().find(|g| g.0 == *tag) else {
                panic!("tick {tag} never arrived");
            };
            worst = worst.max(arrived - at);
        }
        println!(
            "{} ticks, worst delivery {} ms",
            ticks.len() - 1 - from,
            worst / MS
        );
        assert!(worst < 10 * MS, "a tick's frame took {} ms", worst / MS);
    });
}

/// A frontend that connects (keys and rings as a netfront writes them),
/// then breaks its TX ring (a producer index far past it) and stays
/// `Connected` with the broken ring, until `leave` is set: then it goes
/// to Initialising, as a frontend that starts over does.
async fn ring_breaker(m: Machine, h: Handle, dom: DomId, leave: Rc<Cell<bool>>) {
    use xen::abi::netif::*;
    let b = Machine::back_path(dom, VM);
    let f = Machine::front_path(dom);
    while m.get(&format!("{b}/state")).as_deref() != Some("2") {
        h.sleep(MS).await;
    }
    let hv = m.hv.clone();
    let tx_page = hv.alloc_page_of(dom);
    let rx_page = hv.alloc_page_of(dom);
    let tx_ref = hv.grant_access(dom, VM, tx_page.frame(), false).unwrap();
    let rx_ref = hv.grant_access(dom, VM, rx_page.frame(), false).unwrap();
    let port = hv.alloc_unbound(dom, VM).unwrap();
    let raw = SharedPage::new(tx_page.memory().clone());
    let _tx = tx_page.into_front_ring::<NetifTxRequest, NetifTxResponse>(0);
    let _rx = rx_page.into_front_ring::<NetifRxRequest, NetifRxResponse>(0);
    for (k, v) in [
        ("tx-ring-ref", tx_ref.to_string()),
        ("rx-ring-ref", rx_ref.to_string()),
        ("event-channel", port.to_string()),
        ("request-rx-copy", "1".into()),
        ("feature-rx-notify", "1".into()),
        ("state", "4".into()),
    ] {
        m.set(&format!("{f}/{k}"), &v);
    }
    while m.get(&format!("{b}/state")).as_deref() != Some("4") {
        h.sleep(MS).await;
    }
    // req_prod (the ring's first word) 10 000 past the ring
    raw.write(0, &10_000u32.to_le_bytes()).unwrap();
    let _ = hv.send(dom, port);
    while !leave.get() {
        h.sleep(MS).await;
    }
    m.set(&format!("{f}/state"), "1");
}

#[test]
fn a_frontend_that_broke_its_ring_is_offered_again_only_once_it_left_connected() {
    let mut ex = Executor::new();
    let m = Machine::new();
    let w = start(&ex, &m, options());
    m.add_vif(3, VM, Some("10.137.0.10"));
    let leave = Rc::new(Cell::new(false));
    w.h.spawn(ring_breaker(m.clone(), w.h.clone(), 3, leave.clone()));
    let (h, log) = (w.h.clone(), w.log.clone());
    let bstate = format!("{}/state", Machine::back_path(3, VM));
    run_main(&mut ex, async {
        until(&h, 30 * SECOND, "the vif connected", || {
            log.borrow().up.len() == 1
        })
        .await;
        until(&h, 5 * SECOND, "the broken ring closed", || {
            log.borrow().down.len() == 1
        })
        .await;
        // The frontend still says Connected with its broken ring: the vif
        // is not offered again (before, it was offered, mapped, found
        // broken and closed again every second).
        h.sleep(10 * SECOND).await;
        assert_eq!(log.borrow().up.len(), 1, "connected again to a broken ring");
        assert_eq!(log.borrow().down.len(), 1);
        assert_eq!(m.get(&bstate).as_deref(), Some("6"), "left Closed");
        // The frontend starts over: offered again.
        leave.set(true);
        until(&h, 5 * SECOND, "offered again", || {
            m.get(&bstate).as_deref() == Some("2")
        })
        .await;
    });
}
