//! The qrexec agent (`qubes::qrexec`) fed anything dom0 could send: the
//! control channel and one call's data channel on bytes in pieces of any
//! size, the command-line parser and the date parser. Properties: values
//! or typed errors, never a panic; errors stay; whatever the agent sends
//! is a sequence of well-formed messages (known type, length within the
//! negotiated chunk, exit code last and alone); a parsed date of years
//! 0000-9999 prints and parses back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qubes::qrexec::time::{format_iso, parse_iso};
use qubes::qrexec::wire::{self, Header, MsgType, HEADER_LEN};
use qubes::qrexec::{cmdline, Call, Clock, Control, ExecKind, UnixTime};

struct FuzzClock(Option<UnixTime>);
impl Clock for FuzzClock {
    fn now(&self) -> Option<UnixTime> {
        self.0
    }
    fn set(&mut self, t: UnixTime) {
        assert!(t.nanos < 1_000_000_000);
        self.0 = Some(t);
    }
}

/// Split our output into messages; the types and lengths must be sane.
fn messages(out: &[u8]) -> Vec<(MsgType, usize)> {
    let mut v = Vec::new();
    let mut at = 0;
    while at < out.len() {
        let h = Header::parse(&out[at..]).unwrap().expect("whole header");
        assert!(h.len as usize <= wire::MAX_DATA_CHUNK_V3);
        at += HEADER_LEN + h.len as usize;
        assert!(at <= out.len());
        v.push((h.msg_type, h.len as usize));
    }
    v
}

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = core::str::from_utf8(data) {
        if let Ok(t) = parse_iso(s) {
            // An offset can move the date out of years 0000-9999, which
            // the parser (four digits) does not take back.
            let f = format_iso(t, true);
            if !f.starts_with('-') && f.as_bytes().get(4) == Some(&b'-') {
                assert_eq!(parse_iso(&f), Ok(t));
            }
        }
    }
    let _ = cmdline::parse(data);
    let [step, kind, rest @ ..] = data else {
        return;
    };
    let step = usize::from(*step % 61) + 1;
    // The control channel.
    let mut ctrl = Control::new();
    for chunk in rest.chunks(step) {
        let before = ctrl.broken();
        let r = ctrl.feed(chunk);
        if let Some(e) = before {
            assert_eq!(r, Err(e));
        }
        while ctrl.next_request().is_some() {}
    }
    ctrl.terminated(0, 513);
    for (t, _) in messages(ctrl.output()) {
        assert!(matches!(t, MsgType::Hello | MsgType::ConnectionTerminated));
    }
    // One call: the command line is the input up to a NUL, the rest is
    // the caller's traffic.
    let (cmd, traffic) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let kind = if kind & 1 == 0 {
        ExecKind::Cmdline
    } else {
        ExecKind::JustExec
    };
    let mut call = Call::new(kind, cmd);
    let mut clock = FuzzClock(Some(UnixTime {
        secs: 1_796_665_552,
        nanos: 7,
    }));
    for chunk in traffic.chunks(step) {
        let before = call.broken();
        let r = call.feed(chunk, &mut clock);
        if let Some(e) = before {
            assert_eq!(r, Err(e));
        }
    }
    let msgs = messages(call.output());
    assert_eq!(msgs.first(), Some(&(MsgType::Hello, 4)));
    if let Some(code) = call.exit_code() {
        assert_eq!(msgs.last(), Some(&(MsgType::DataExitCode, 4)));
        let exits = msgs.iter().filter(|m| m.0 == MsgType::DataExitCode).count();
        assert_eq!(exits, 1);
        assert!([0, 1, 125, 127].contains(&code));
    }
});
