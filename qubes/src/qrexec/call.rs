//! One service call on its data vchan, sans I/O: the handshake, the
//! built-in services, and the answer dom0 expects.
//!
//! The data vchan (`agent/qrexec-agent-data.c`): for `MSG_EXEC_CMDLINE`
//! and `MSG_JUST_EXEC` the agent is its **client**
//! (`libvchan_client_init_async(connect_domain, connect_port)`; dom0's
//! qrexec-client serves it with 65536-byte rings). Both ends send a
//! `MSG_HELLO` first and use the smaller version. Then the caller sends
//! `MSG_DATA_STDIN` chunks (length 0 is end of file); the service answers
//! `MSG_DATA_STDOUT`/`MSG_DATA_STDERR` chunks, each ended by a length-0
//! one, then `MSG_DATA_EXIT_CODE` with a 4-byte `int`. A chunk is at most
//! 4096 bytes below version 3, 65536 from 3 (`max_data_chunk_size`).
//! For `MSG_JUST_EXEC` the agent sends only the exit code (0 once the
//! command started). A service that does not exist answers
//! `QREXEC_EXIT_SERVICE_NOT_FOUND` (127), after empty stdout and stderr;
//! an unparsable command line `QREXEC_EXIT_PROBLEM` (125).
//!
//! Services built in (what dom0 asks a service qube for):
//! - `qubes.WaitForSession`: there is no session to wait for: exit 0;
//! - `qubes.SetDateTime`: one line on stdin, `date -u -Iseconds` of dom0;
//!   handed to the [`Clock`]; exit 0 (1 if the line does not parse, as
//!   the shell script's `date -d` would fail);
//! - `qubes.GetDate`: the clock as `date -u -Iseconds`, or with any
//!   argument as `date -u -Ins` (qubes-core-agent-linux's script); exit 1
//!   if the clock was never set.
//!
//! Everything else is 127; there is no shell for plain command lines
//! either (a shell answers 127 for a command it cannot find).

use super::cmdline::{self, Kind};
use super::control::ExecKind;
use super::time::{format_iso, parse_iso, Clock};
use super::wire::{self, Header, MsgType, WireError, HEADER_LEN};
use alloc::vec::Vec;

/// What a call runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// `qubes.WaitForSession`.
    WaitForSession,
    /// `qubes.SetDateTime`.
    SetDateTime,
    /// `qubes.GetDate`; `ns` with an argument.
    GetDate {
        /// Nanosecond precision.
        ns: bool,
    },
    /// Not here: 127.
    NotFound,
    /// Unparsable command line: 125.
    Problem,
}

/// The service a command line asks for.
pub fn choose(cmdline: &[u8]) -> Service {
    match cmdline::parse(cmdline) {
        Err(_) => Service::Problem,
        Ok(c) => match c.kind {
            Kind::Rpc { service, arg, .. } => match service.as_str() {
                "qubes.WaitForSession" => Service::WaitForSession,
                "qubes.SetDateTime" => Service::SetDateTime,
                "qubes.GetDate" => Service::GetDate {
                    ns: arg.is_some_and(|a| !a.is_empty()),
                },
                _ => Service::NotFound,
            },
            Kind::Shell(_) => Service::NotFound,
        },
    }
}

/// The most stdin a service keeps (a date line is ~35 bytes); more is
/// counted and dropped.
pub const STDIN_LIMIT: usize = 4096;

/// One call's data channel and service.
pub struct Call {
    service: Service,
    just_exec: bool,
    version: Option<u32>,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    stdin: Vec<u8>,
    stdin_eof: bool,
    exit: Option<u32>,
    broken: Option<WireError>,
    dropped: u64,
}

impl Call {
    /// A call of `kind` for `cmdline`, our `MSG_HELLO` queued.
    pub fn new(kind: ExecKind, cmdline: &[u8]) -> Self {
        Self {
            service: choose(cmdline),
            just_exec: kind == ExecKind::JustExec,
            version: None,
            inbuf: Vec::new(),
            out: wire::hello().to_vec(),
            stdin: Vec::new(),
            stdin_eof: false,
            exit: None,
            broken: None,
            dropped: 0,
        }
    }

    /// The service.
    pub fn service(&self) -> Service {
        self.service
    }

    /// The negotiated version.
    pub fn version(&self) -> Option<u32> {
        self.version
    }

    /// The exit status, once sent (queued).
    pub fn exit_code(&self) -> Option<u32> {
        self.exit
    }

    /// The error that broke the call.
    pub fn broken(&self) -> Option<WireError> {
        self.broken
    }

    /// Messages ignored or stdin bytes dropped.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Bytes to send.
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    /// `n` bytes of output were sent.
    pub fn consume_output(&mut self, n: usize) {
        self.out.drain(..n.min(self.out.len()));
    }

    fn send(&mut self, t: MsgType, data: &[u8]) {
        let max = wire::max_chunk(self.version.unwrap_or(wire::MIN_VERSION));
        if data.is_empty() {
            // End of file.
            self.out.extend_from_slice(&Header::encode(t, 0));
        }
        for chunk in data.chunks(max) {
            self.out
                .extend_from_slice(&Header::encode(t, chunk.len() as u32));
            self.out.extend_from_slice(chunk);
        }
    }

    fn finish(&mut self, code: u32) {
        if !self.just_exec {
            self.send(MsgType::DataStdout, &[]);
            self.send(MsgType::DataStderr, &[]);
        }
        self.out
            .extend_from_slice(&Header::encode(MsgType::DataExitCode, 4));
        self.out.extend_from_slice(&code.to_le_bytes());
        self.exit = Some(code);
    }

    /// Take bytes from the caller, then run the service as far as its
    /// input allows. Errors are sticky.
    pub fn feed<C: Clock>(&mut self, bytes: &[u8], clock: &mut C) -> Result<(), WireError> {
        if let Some(e) = self.broken {
            return Err(e);
        }
        if self.exit.is_some() {
            // Done: what the caller still sends is not read upstream either.
            return Ok(());
        }
        let mut buf = core::mem::take(&mut self.inbuf);
        let r = crate::framing::take_messages(&mut buf, bytes, |b| self.one(b));
        self.inbuf = buf;
        if let Err(e) = r {
            self.broken = Some(e);
            return Err(e);
        }
        if self.version.is_some() {
            self.run(clock);
        }
        Ok(())
    }

    fn one(&mut self, buf: &[u8]) -> Result<Option<usize>, WireError> {
        let Some(h) = Header::parse(buf)? else {
            return Ok(None);
        };
        let max = match self.version {
            None => wire::PEER_INFO_LEN,
            Some(v) => wire::max_chunk(v),
        };
        if h.len as usize > max {
            return Err(match self.version {
                None => WireError::BadHello,
                Some(_) => WireError::BadLength {
                    msg_type: h.msg_type,
                    len: h.len,
                },
            });
        }
        let total = HEADER_LEN + h.len as usize;
        let Some(body) = buf.get(HEADER_LEN..total) else {
            return Ok(None);
        };
        if self.version.is_none() {
            self.version = Some(wire::negotiate(h, body)?);
            return Ok(Some(total));
        }
        match h.msg_type {
            // Upstream takes a caller's STDOUT as stdin too (with a
            // warning).
            MsgType::DataStdin | MsgType::DataStdout => {
                if body.is_empty() {
                    self.stdin_eof = true;
                } else if !self.stdin_eof {
                    let room = STDIN_LIMIT - self.stdin.len();
                    let take = room.min(body.len());
                    self.stdin.extend_from_slice(&body[..take]);
                    self.dropped += (body.len() - take) as u64;
                }
            }
            // Upstream logs these from a caller and goes on.
            MsgType::DataStderr | MsgType::DataExitCode => self.dropped += 1,
            t => return Err(WireError::Unexpected(t)),
        }
        Ok(Some(total))
    }

    fn run<C: Clock>(&mut self, clock: &mut C) {
        if self.exit.is_some() {
            return;
        }
        if self.just_exec {
            let code = match self.service {
                Service::NotFound => wire::EXIT_SERVICE_NOT_FOUND,
                Service::Problem => wire::EXIT_PROBLEM,
                _ => 0,
            };
            return self.finish(code);
        }
        match self.service {
            Service::WaitForSession => self.finish(0),
            Service::NotFound => self.finish(wire::EXIT_SERVICE_NOT_FOUND),
            Service::Problem => self.finish(wire::EXIT_PROBLEM),
            Service::GetDate { ns } => match clock.now() {
                Some(t) => {
                    let mut line = format_iso(t, ns).into_bytes();
                    line.push(b'\n');
                    self.send(MsgType::DataStdout, &line);
                    self.finish(0);
                }
                None => {
                    self.send(
                        MsgType::DataStderr,
                        b"qubes.GetDate: the clock is not set\n",
                    );
                    self.finish(1);
                }
            },
            Service::SetDateTime => {
                let line_end = self.stdin.iter().position(|&c| c == b'\n');
                if line_end.is_none() && !self.stdin_eof && self.stdin.len() < STDIN_LIMIT {
                    return; // wait for the line
                }
                let line = &self.stdin[..line_end.unwrap_or(self.stdin.len())];
                match core::str::from_utf8(line).ok().map(parse_iso) {
                    Some(Ok(t)) => {
                        clock.set(t);
                        self.finish(0);
                    }
                    _ => {
                        self.send(MsgType::DataStderr, b"qubes.SetDateTime: invalid date\n");
                        self.finish(1);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::time::UnixTime;
    use super::*;

    #[derive(Default)]
    struct TestClock(Option<UnixTime>);
    impl Clock for TestClock {
        fn now(&self) -> Option<UnixTime> {
            self.0
        }
        fn set(&mut self, t: UnixTime) {
            self.0 = Some(t);
        }
    }

    fn msg(t: u32, body: &[u8]) -> Vec<u8> {
        let mut v = t.to_le_bytes().to_vec();
        v.extend_from_slice(&(body.len() as u32).to_le_bytes());
        v.extend_from_slice(body);
        v
    }

    fn hello(v: u32) -> Vec<u8> {
        msg(0x300, &v.to_le_bytes())
    }

    fn answer(stdout: &[u8], stderr: &[u8], code: u32) -> Vec<u8> {
        let mut v = wire::hello().to_vec();
        if !stdout.is_empty() {
            v.extend(msg(0x191, stdout));
        }
        if !stderr.is_empty() {
            v.extend(msg(0x192, stderr));
        }
        v.extend(msg(0x191, b""));
        v.extend(msg(0x192, b""));
        v.extend(msg(0x193, &code.to_le_bytes()));
        v
    }

    #[test]
    fn services() {
        let mut clock = TestClock::default();
        let mut c = Call::new(
            ExecKind::Cmdline,
            b"user:QUBESRPC qubes.WaitForSession dom0",
        );
        c.feed(&hello(3), &mut clock).unwrap();
        assert_eq!(c.output(), &answer(b"", b"", 0)[..]);

        let mut c = Call::new(ExecKind::Cmdline, b"root:QUBESRPC qubes.SetDateTime dom0");
        c.feed(&hello(4), &mut clock).unwrap();
        c.feed(&msg(0x190, b"2015-07-31T16:10:"), &mut clock)
            .unwrap();
        assert_eq!(c.exit_code(), None, "waits for the whole line");
        c.feed(&msg(0x190, b"43+0000\n"), &mut clock).unwrap();
        assert_eq!(c.output(), &answer(b"", b"", 0)[..]);
        assert_eq!(clock.0.map(|t| t.secs), Some(1_438_359_043));

        let mut c = Call::new(ExecKind::Cmdline, b"user:QUBESRPC qubes.GetDate dom0");
        c.feed(&hello(4), &mut clock).unwrap();
        assert_eq!(
            c.output(),
            &answer(b"2015-07-31T16:10:43+00:00\n", b"", 0)[..]
        );
        let mut c = Call::new(ExecKind::Cmdline, b"user:QUBESRPC qubes.GetDate+ns dom0");
        c.feed(&hello(4), &mut clock).unwrap();
        assert_eq!(
            c.output(),
            &answer(b"2015-07-31T16:10:43,000000000+00:00\n", b"", 0)[..]
        );

        let mut c = Call::new(ExecKind::Cmdline, b"user:QUBESRPC qubes.VMShell dom0");
        c.feed(&hello(4), &mut clock).unwrap();
        assert_eq!(c.output(), &answer(b"", b"", 127)[..]);
        let mut c = Call::new(ExecKind::Cmdline, b"no colon");
        c.feed(&hello(4), &mut clock).unwrap();
        assert_eq!(c.exit_code(), Some(125));
        let mut c = Call::new(ExecKind::JustExec, b"user:QUBESRPC qubes.Nothing dom0");
        c.feed(&hello(4), &mut clock).unwrap();
        let mut just = wire::hello().to_vec();
        just.extend(msg(0x193, &127u32.to_le_bytes()));
        assert_eq!(c.output(), &just[..]);
    }

    #[test]
    fn bad_date_and_missing_clock() {
        let mut clock = TestClock::default();
        let mut c = Call::new(ExecKind::Cmdline, b"user:QUBESRPC qubes.GetDate dom0");
        c.feed(&hello(4), &mut clock).unwrap();
        assert_eq!(c.exit_code(), Some(1));
        let mut c = Call::new(ExecKind::Cmdline, b"root:QUBESRPC qubes.SetDateTime dom0");
        c.feed(&hello(4), &mut clock).unwrap();
        c.feed(&msg(0x190, b"yesterday"), &mut clock).unwrap();
        assert_eq!(c.exit_code(), None);
        c.feed(&msg(0x190, b""), &mut clock).unwrap();
        assert_eq!(c.exit_code(), Some(1));
        assert_eq!(clock.0, None);
    }

    #[test]
    fn protocol_errors() {
        let mut clock = TestClock::default();
        let mut c = Call::new(ExecKind::Cmdline, b"root:QUBESRPC qubes.SetDateTime dom0");
        assert_eq!(
            c.feed(&msg(0x190, b"x"), &mut clock),
            Err(WireError::BadHello)
        );
        let mut c = Call::new(ExecKind::Cmdline, b"root:QUBESRPC qubes.SetDateTime dom0");
        c.feed(&hello(2), &mut clock).unwrap();
        assert!(matches!(
            c.feed(&msg(0x190, &[b'a'; 4097]), &mut clock),
            Err(WireError::BadLength { .. })
        ));
        assert!(c.feed(&msg(0x190, b"\n"), &mut clock).is_err(), "sticky");
        let mut c = Call::new(ExecKind::Cmdline, b"root:QUBESRPC qubes.SetDateTime dom0");
        c.feed(&hello(4), &mut clock).unwrap();
        assert_eq!(
            c.feed(&hello(4), &mut clock),
            Err(WireError::Unexpected(MsgType::Hello))
        );
        // 5000 bytes without a line end: dropped beyond the limit, then
        // refused as a date.
        let mut c = Call::new(ExecKind::Cmdline, b"root:QUBESRPC qubes.SetDateTime dom0");
        c.feed(&hello(4), &mut clock).unwrap();
        c.feed(&msg(0x190, &[b'1'; 5000]), &mut clock).unwrap();
        assert_eq!(c.exit_code(), Some(1));
        assert_eq!(c.dropped(), 5000 - STDIN_LIMIT as u64);
    }
}
