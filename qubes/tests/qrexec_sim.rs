//! The qrexec agent against a fake dom0 over `xen::sim`: a qrexec-daemon
//! (client of the agent's control vchan on port 512) and a qrexec-client
//! (server of each call's data vchan on ports 513...), both encoding
//! `qrexec.h`'s messages by hand (not with `qubes::qrexec::wire`). The
//! calls are the ones a service qube gets at start and for its clock,
//! plus unknown ones and finally garbage.

mod common;

use common::{run, run2, Env, Machine};
use qubes::qrexec::agent::{self, AgentError, Handled};
use qubes::qrexec::wire::WireError;
use qubes::qrexec::{Clock, Control, Service, UnixTime};
use qubes::vchan::wire::qubes_path;
use qubes::vchan::{self, Vchan, VchanEnv};
use xen::shared_page::PageMemory;

const VM: u16 = 9;

#[derive(Default)]
struct TestClock {
    now: Option<UnixTime>,
    sets: Vec<UnixTime>,
}
impl Clock for TestClock {
    fn now(&self) -> Option<UnixTime> {
        self.now
    }
    fn set(&mut self, t: UnixTime) {
        self.now = Some(t);
        self.sets.push(t);
    }
}

/// struct msg_header { uint32_t type, len; } and the body.
fn msg(t: u32, body: &[u8]) -> Vec<u8> {
    let mut v = t.to_le_bytes().to_vec();
    v.extend_from_slice(&(body.len() as u32).to_le_bytes());
    v.extend_from_slice(body);
    v
}

async fn read_exact<M: PageMemory>(v: &mut Vchan<M>, env: &mut Env, n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    let mut at = 0;
    while at < n {
        let got = v.read(env, &mut out[at..]).await.unwrap();
        assert!(got > 0, "early end of stream");
        at += got;
    }
    out
}

async fn recv<M: PageMemory>(v: &mut Vchan<M>, env: &mut Env) -> (u32, Vec<u8>) {
    let h = read_exact(v, env, 8).await;
    let t = u32::from_le_bytes(h[..4].try_into().unwrap());
    let len = u32::from_le_bytes(h[4..].try_into().unwrap()) as usize;
    (t, read_exact(v, env, len).await)
}

/// What dom0's qrexec-client saw of one call.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    agent_version: u32,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    /// Message types in order (data messages collapsed to their type).
    order: Vec<u32>,
    exit: u32,
}

/// dom0's side of one call: MSG_EXEC_CMDLINE/MSG_JUST_EXEC on the control
/// vchan, then the data vchan as its server.
async fn call<M: PageMemory>(
    ctrl: &mut Vchan<M>,
    dom0: &mut Env,
    t: u32,
    port: u32,
    cmdline: &str,
    stdin: &[u8],
) -> Seen {
    let mut body = 0u32.to_le_bytes().to_vec();
    body.extend_from_slice(&port.to_le_bytes());
    body.extend_from_slice(cmdline.as_bytes());
    body.push(0);
    ctrl.write_all(dom0, &msg(t, &body)).await.unwrap();
    let path = qubes_path(0, VM, port);
    let mut v = vchan::listen(dom0, VM, &path, 65536, 65536).await.unwrap();
    v.accept(dom0).await.unwrap();
    v.write_all(dom0, &msg(0x300, &4u32.to_le_bytes()))
        .await
        .unwrap();
    let (ht, hb) = recv(&mut v, dom0).await;
    assert_eq!((ht, hb.len()), (0x300, 4));
    if t == 0x200 {
        if !stdin.is_empty() {
            v.write_all(dom0, &msg(0x190, stdin)).await.unwrap();
        }
        v.write_all(dom0, &msg(0x190, b"")).await.unwrap();
    }
    let mut seen = Seen {
        agent_version: u32::from_le_bytes(hb[..].try_into().unwrap()),
        stdout: vec![],
        stderr: vec![],
        order: vec![],
        exit: u32::MAX,
    };
    loop {
        let (mt, b) = recv(&mut v, dom0).await;
        if seen.order.last() != Some(&mt) || b.is_empty() {
            seen.order.push(mt);
        }
        match mt {
            0x191 => seen.stdout.extend(b),
            0x192 => seen.stderr.extend(b),
            0x193 => {
                seen.exit = u32::from_le_bytes(b[..].try_into().unwrap());
                break;
            }
            other => panic!("unexpected {other:#x}"),
        }
    }
    // The agent frees the port.
    let (ct, cb) = recv(ctrl, dom0).await;
    assert_eq!(ct, 0x211, "MSG_CONNECTION_TERMINATED");
    let mut expect = 0u32.to_le_bytes().to_vec();
    expect.extend_from_slice(&port.to_le_bytes());
    assert_eq!(cb, expect);
    assert!(run_close(v, dom0).await);
    seen
}

async fn run_close<M: PageMemory>(v: Vchan<M>, env: &mut Env) -> bool {
    v.close(env).await.map(|l| l.is_empty()).unwrap_or(false)
}

#[test]
fn dom0_calls_the_services_of_a_service_qube() {
    let m = Machine::new();
    let (mut dom0, mut vm) = (m.env(0), m.env(VM));
    let cpath = agent::control_path(VM);
    assert_eq!(cpath, "/local/domain/9/data/vchan/0/512");
    let (d, a) = run2(
        async {
            vchan::wait_for_server(dom0.xenstore(), &cpath)
                .await
                .unwrap();
            let mut ctrl = vchan::connect(&mut dom0, VM, &cpath).await.unwrap();
            // The agent's HELLO first; a 4.2 daemon answers with version 3.
            assert_eq!(recv(&mut ctrl, &mut dom0).await, (0x300, vec![4, 0, 0, 0]));
            ctrl.write_all(&mut dom0, &msg(0x300, &3u32.to_le_bytes()))
                .await
                .unwrap();
            let mut seen = Vec::new();
            let e = &mut dom0;
            let c = &mut ctrl;
            seen.push(
                call(
                    c,
                    e,
                    0x200,
                    513,
                    "user:QUBESRPC qubes.WaitForSession dom0",
                    b"",
                )
                .await,
            );
            seen.push(
                call(
                    c,
                    e,
                    0x200,
                    514,
                    "root:QUBESRPC qubes.SetDateTime dom0",
                    b"2026-12-07T17:45:52+00:00\n",
                )
                .await,
            );
            seen.push(call(c, e, 0x200, 515, "user:QUBESRPC qubes.GetDate dom0", b"").await);
            seen.push(
                call(
                    c,
                    e,
                    0x200,
                    516,
                    "user:QUBESRPC qubes.VMShell dom0",
                    b"ls\n",
                )
                .await,
            );
            seen.push(call(c, e, 0x201, 517, "user:QUBESRPC qubes.Nothing dom0", b"").await);
            seen.push(call(c, e, 0x200, 518, "user:echo hi", b"").await);
            // MSG_SERVICE_CONNECT for a call nobody triggered: ignored.
            let mut sc = 0u32.to_le_bytes().to_vec();
            sc.extend_from_slice(&600u32.to_le_bytes());
            sc.extend_from_slice(b"SOCKET42\0");
            ctrl.write_all(&mut dom0, &msg(0x202, &sc)).await.unwrap();
            // Garbage.
            ctrl.write_all(&mut dom0, &msg(0x777, b"")).await.unwrap();
            ctrl.flush(&mut dom0).await.unwrap();
            (seen, ctrl)
        },
        async {
            let mut clock = TestClock::default();
            let mut v = agent::listen(&mut vm, VM).await.unwrap();
            let mut ctrl = Control::new();
            let version = agent::handshake(&mut ctrl, &mut v, &mut vm).await.unwrap();
            let mut handled = Vec::new();
            let err = loop {
                match agent::next(&mut ctrl, &mut v, &mut vm, VM, &mut clock).await {
                    Ok(h) => handled.push(h),
                    Err(e) => break e,
                }
            };
            (version, handled, err, clock, v)
        },
    );
    let (seen, dctrl) = d;
    let (version, handled, err, clock, av) = a;
    assert_eq!(version, 3);
    assert_eq!(err, AgentError::Protocol(WireError::BadType(0x777)));
    // Every call's data vchan negotiated with the agent's version 4.
    assert!(seen.iter().all(|s| s.agent_version == 4));
    let eofs = vec![0x191, 0x192, 0x193];
    assert_eq!((seen[0].exit, &seen[0].order), (0, &eofs), "WaitForSession");
    assert_eq!((seen[1].exit, &seen[1].order), (0, &eofs), "SetDateTime");
    let set = UnixTime {
        secs: 1_796_665_552,
        nanos: 0,
    };
    assert_eq!(clock.sets, vec![set]);
    assert_eq!(seen[2].exit, 0, "GetDate");
    assert_eq!(seen[2].stdout, b"2026-12-07T17:45:52+00:00\n");
    assert_eq!(seen[2].order, vec![0x191, 0x191, 0x192, 0x193]);
    assert_eq!(
        (seen[3].exit, &seen[3].order),
        (127, &eofs),
        "unknown service"
    );
    assert!(seen[3].stdout.is_empty() && seen[3].stderr.is_empty());
    assert_eq!(
        (seen[4].exit, &seen[4].order),
        (127, &vec![0x193]),
        "just-exec"
    );
    assert_eq!(seen[5].exit, 127, "no shell");
    let services: Vec<_> = handled
        .iter()
        .map(|h| match h {
            Handled::Call { service, result } => (Some(*service), (*result).ok()),
            _ => (None, None),
        })
        .collect();
    assert_eq!(
        services,
        vec![
            (Some(Service::WaitForSession), Some(0)),
            (Some(Service::SetDateTime), Some(0)),
            (Some(Service::GetDate { ns: false }), Some(0)),
            (Some(Service::NotFound), Some(127)),
            (Some(Service::NotFound), Some(127)),
            (Some(Service::NotFound), Some(127)),
            (None, None),
        ]
    );
    assert_eq!(handled[6], Handled::Ignored);
    run(dctrl.close(&mut dom0)).unwrap();
    assert!(run(av.close(&mut vm)).unwrap().is_empty());
    assert_eq!(m.hv.grants_of(VM), 0, "every data and control page revoked");
}

#[test]
fn a_caller_that_goes_away_still_frees_its_port() {
    let m = Machine::new();
    let (mut dom0, mut vm) = (m.env(0), m.env(VM));
    let cpath = agent::control_path(VM);
    let (d, a) = run2(
        async {
            vchan::wait_for_server(dom0.xenstore(), &cpath)
                .await
                .unwrap();
            let mut ctrl = vchan::connect(&mut dom0, VM, &cpath).await.unwrap();
            recv(&mut ctrl, &mut dom0).await;
            ctrl.write_all(&mut dom0, &msg(0x300, &4u32.to_le_bytes()))
                .await
                .unwrap();
            let mut body = 0u32.to_le_bytes().to_vec();
            body.extend_from_slice(&520u32.to_le_bytes());
            body.extend_from_slice(b"root:QUBESRPC qubes.SetDateTime dom0\0");
            ctrl.write_all(&mut dom0, &msg(0x200, &body)).await.unwrap();
            let path = qubes_path(0, VM, 520);
            let mut v = vchan::listen(&mut dom0, VM, &path, 65536, 65536)
                .await
                .unwrap();
            v.accept(&mut dom0).await.unwrap();
            v.write_all(&mut dom0, &msg(0x300, &4u32.to_le_bytes()))
                .await
                .unwrap();
            assert_eq!(recv(&mut v, &mut dom0).await.0, 0x300);
            // The caller dies before sending the date.
            let lingering = v.close(&mut dom0).await.unwrap();
            let terminated = recv(&mut ctrl, &mut dom0).await;
            (terminated, lingering, ctrl)
        },
        async {
            let mut clock = TestClock::default();
            let mut v = agent::listen(&mut vm, VM).await.unwrap();
            let mut ctrl = Control::new();
            agent::handshake(&mut ctrl, &mut v, &mut vm).await.unwrap();
            let h = agent::next(&mut ctrl, &mut v, &mut vm, VM, &mut clock)
                .await
                .unwrap();
            (h, clock, v)
        },
    );
    let (terminated, mut lingering, dctrl) = d;
    let (handled, clock, av) = a;
    assert_eq!(
        handled,
        Handled::Call {
            service: Service::SetDateTime,
            result: Err(AgentError::Closed)
        }
    );
    assert!(clock.sets.is_empty());
    let mut expect = 0u32.to_le_bytes().to_vec();
    expect.extend_from_slice(&520u32.to_le_bytes());
    assert_eq!(terminated, (0x211, expect));
    assert!(
        lingering.retry(&mut dom0),
        "the agent unmapped the data vchan"
    );
    run(dctrl.close(&mut dom0)).unwrap();
    assert!(run(av.close(&mut vm)).unwrap().is_empty());
}

#[test]
fn the_agent_listens_again_after_the_daemon_goes() {
    let m = Machine::new();
    let (mut dom0, mut vm) = (m.env(0), m.env(VM));
    let cpath = agent::control_path(VM);
    let ended = std::cell::Cell::new(0);
    let (d, a) = run2(
        async {
            let mut outs = Vec::new();
            for (port, service) in [(513, "qubes.WaitForSession"), (514, "qubes.GetDate")] {
                // A new daemon each time (the old one exited).
                vchan::wait_for_server(dom0.xenstore(), &cpath)
                    .await
                    .unwrap();
                let mut ctrl = vchan::connect(&mut dom0, VM, &cpath).await.unwrap();
                assert_eq!(recv(&mut ctrl, &mut dom0).await.0, 0x300);
                ctrl.write_all(&mut dom0, &msg(0x300, &4u32.to_le_bytes()))
                    .await
                    .unwrap();
                let cmd = format!("user:QUBESRPC {service} dom0");
                outs.push(call(&mut ctrl, &mut dom0, 0x200, port, &cmd, b"").await);
                ctrl.close(&mut dom0).await.unwrap();
                // Wait until the agent has left this session.
                while ended.get() < outs.len() {
                    futures_yield().await;
                }
            }
            outs
        },
        async {
            let mut clock = TestClock {
                now: Some(UnixTime { secs: 0, nanos: 0 }),
                sets: vec![],
            };
            let mut ends = Vec::new();
            let mut calls = 0;
            for _ in 0..2 {
                ends.push(agent::session(&mut vm, VM, &mut clock, |_| calls += 1).await);
                ended.set(ended.get() + 1);
            }
            (ends, calls)
        },
    );
    let (ends, calls) = a;
    assert_eq!(calls, 2);
    assert!(ends
        .iter()
        .all(|e| matches!(e, AgentError::Closed | AgentError::Vchan(_))));
    assert_eq!(d[0].exit, 0);
    assert_eq!(d[1].stdout, b"1970-01-01T00:00:00+00:00\n");
    assert_eq!(m.hv.grants_of(VM), 0);
}

/// Give the other future a turn.
async fn futures_yield() {
    let mut first = true;
    std::future::poll_fn(|_| {
        if first {
            first = false;
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await
}
