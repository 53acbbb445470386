//! The rig's dom0 daemons (this crate) against moat's VM side (the
//! `qubes` crate's QubesDB client and qrexec agent state machines), bytes
//! passed between them in small pieces: the two independent encodings must
//! agree before the rig runs them over a real vchan.

use qubes::qrexec::{Call, Clock, Control, ExecKind, Request, UnixTime};
use qubes::qubesdb::{Client, Event};
use qubes_dom0::qdb::{self, QdbServer};
use qubes_dom0::qrexec::{ControlClient, CtlEvent, DataEvent, DataServer};

/// Moves bytes both ways in 7-byte pieces until nothing moves; returns the
/// server's events.
fn pump(c: &mut Client, s: &mut QdbServer) -> Vec<qdb::Event> {
    let mut events = Vec::new();
    loop {
        let out = c.output().to_vec();
        c.consume_output(out.len());
        for piece in out.chunks(7) {
            events.extend(s.feed(piece));
        }
        let back = s.take_output();
        for piece in back.chunks(7) {
            c.feed(piece).unwrap();
        }
        if out.is_empty() && back.is_empty() {
            return events;
        }
    }
}

#[test]
fn qubesdb_sync_changes_and_write_backs() {
    let mut s = QdbServer::new();
    for (p, v) in [
        ("/name", "sys-moat"),
        ("/qubes-ip", "10.99.0.10"),
        ("/qubes-firewall/10.137.0.10/policy", "drop"),
        (
            "/qubes-firewall/10.137.0.10/0000",
            "action=accept proto=tcp dstports=8080-8080",
        ),
        ("/qubes-firewall/10.137.0.10", ""),
    ] {
        assert_eq!(s.write(p, v.as_bytes()), Ok(false));
    }
    let mut c = Client::new();
    c.watch("/").unwrap();
    c.start();
    let ev = pump(&mut c, &mut s);
    assert_eq!(ev, vec![qdb::Event::Synced { entries: 5 }]);
    assert!(c.synced());
    assert_eq!(c.read("/qubes-ip"), Some(&b"10.99.0.10"[..]));
    while c.next_event().is_some() {}

    // The VM writes back, as the firewall does after loading rules.
    c.write("/qubes-firewall-handled/10.137.0.10", b"1")
        .unwrap();
    let ev = pump(&mut c, &mut s);
    assert_eq!(
        ev,
        vec![qdb::Event::VmWrite {
            path: "/qubes-firewall-handled/10.137.0.10".into(),
            value: b"1".to_vec()
        }]
    );
    assert_eq!(
        s.read("/qubes-firewall-handled/10.137.0.10"),
        Some(&b"1"[..])
    );

    // dom0 reloads the rules as qubesd's reload_firewall_for_vm does.
    assert_eq!(s.rm("/qubes-firewall/10.137.0.10/"), Ok(true));
    s.write("/qubes-firewall/10.137.0.10/policy", b"drop")
        .unwrap();
    s.write(
        "/qubes-firewall/10.137.0.10/0000",
        b"action=accept proto=tcp dstports=8081-8081",
    )
    .unwrap();
    s.write("/qubes-firewall/10.137.0.10", b"").unwrap();
    let ev = pump(&mut c, &mut s);
    assert_eq!(ev.len(), 4, "{ev:?}");
    assert!(
        ev.iter()
            .all(|e| matches!(e, qdb::Event::VmOk { expected: true, .. })),
        "{ev:?}"
    );
    assert_eq!(
        c.read("/qubes-firewall/10.137.0.10/0000"),
        Some(&b"action=accept proto=tcp dstports=8081-8081"[..])
    );
    let mut watched = Vec::new();
    while let Some(e) = c.next_event() {
        if let Event::Watch { path, .. } = e {
            watched.push(path);
        }
    }
    assert_eq!(
        watched.last().map(String::as_str),
        Some("/qubes-firewall/10.137.0.10"),
        "the trigger last: {watched:?}"
    );
    assert_eq!(c.stats().refused, 0);
    assert!(!s.broken());
}

struct FixedClock(Option<UnixTime>);

impl Clock for FixedClock {
    fn now(&self) -> Option<UnixTime> {
        self.0
    }
    fn set(&mut self, t: UnixTime) {
        self.0 = Some(t);
    }
}

/// One call from dom0's side to the agent's `Call`, in 5-byte pieces.
fn call(
    ctl: &mut ControlClient,
    agent: &mut Control,
    clock: &mut FixedClock,
    port: u32,
    cmdline: &str,
    stdin: &[u8],
) -> DataServer {
    ctl.exec(port, cmdline);
    for piece in ctl.take_output().chunks(5) {
        agent.feed(piece).unwrap();
    }
    let Some(Request::Exec {
        kind,
        domain,
        port: p,
        cmdline: got,
    }) = agent.next_request()
    else {
        panic!("no request")
    };
    assert_eq!(
        (kind, domain, p, got.as_slice()),
        (ExecKind::Cmdline, 0, port, cmdline.as_bytes())
    );
    let mut data = DataServer::new(stdin, 4);
    let mut vm = Call::new(kind, &got);
    let mut exit = None;
    for _ in 0..20 {
        let down = data.take_output();
        for piece in down.chunks(5) {
            vm.feed(piece, clock).unwrap();
        }
        let up = vm.output().to_vec();
        vm.consume_output(up.len());
        for piece in up.chunks(5) {
            for ev in data.feed(piece).unwrap() {
                if let DataEvent::Exit(c) = ev {
                    exit = Some(c);
                }
            }
        }
        if down.is_empty() && up.is_empty() {
            break;
        }
    }
    assert!(exit.is_some(), "{cmdline}: no exit code");
    assert!(data.streams_ended());
    agent.terminated(0, port);
    let t = agent.output().to_vec();
    agent.consume_output(t.len());
    assert_eq!(
        ctl.feed(&t).unwrap(),
        vec![CtlEvent::Terminated { domain: 0, port }]
    );
    data
}

#[test]
fn qrexec_handshake_and_the_services_dom0_calls() {
    let mut agent = Control::new();
    let mut ctl = ControlClient::new(None);
    let hello = agent.output().to_vec();
    agent.consume_output(hello.len());
    assert_eq!(
        ctl.feed(&hello).unwrap(),
        vec![CtlEvent::Hello { version: 4 }]
    );
    agent.feed(&ctl.take_output()).unwrap();
    assert_eq!(agent.version(), Some(4));
    let mut clock = FixedClock(None);
    let d = call(
        &mut ctl,
        &mut agent,
        &mut clock,
        513,
        "root:QUBESRPC qubes.SetDateTime dom0",
        b"2031-05-06T07:08:09+00:00\n",
    );
    assert_eq!(d.exit(), Some(0));
    assert_eq!(clock.0.map(|t| t.secs), Some(1_935_817_689));
    let d = call(
        &mut ctl,
        &mut agent,
        &mut clock,
        514,
        "root:QUBESRPC qubes.GetDate dom0",
        b"",
    );
    assert_eq!(
        (d.exit(), String::from_utf8_lossy(&d.stdout).trim()),
        (Some(0), "2031-05-06T07:08:09+00:00")
    );
    let d = call(
        &mut ctl,
        &mut agent,
        &mut clock,
        515,
        "user:QUBESRPC qubes.WaitForSession dom0",
        b"",
    );
    assert_eq!(d.exit(), Some(0));
    let d = call(
        &mut ctl,
        &mut agent,
        &mut clock,
        516,
        "user:QUBESRPC qubes.VMShell dom0",
        b"",
    );
    assert_eq!((d.exit(), d.stdout.len()), (Some(127), 0));
    assert!(ctl.broken().is_none());
}
