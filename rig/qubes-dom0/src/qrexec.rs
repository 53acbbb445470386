//! dom0's qrexec side for one VM, sans I/O: the daemon's control channel
//! (`qrexec-daemon`, the client of the agent's port 512) and one call's
//! data channel (`qrexec-client`, the server of a port from 513 on).
//!
//! Written for the rig from qubes-core-qrexec's `libqrexec/qrexec.h` and
//! the behaviour of `daemon/qrexec-daemon.c`, `daemon/qrexec-client.c` and
//! `libqrexec/remote.c` (facts only; docs/qubes.md lists them). The
//! encoding is our own, independent of the `qubes` crate's agent.
//!
//! - Control: the agent speaks first (`MSG_HELLO`, `peer_info { u32
//!   version }`); the daemon answers with its own, which current daemons
//!   make a copy of the agent's (`handle_agent_hello`). A call is
//!   `MSG_EXEC_CMDLINE` with `exec_params { u32 connect_domain, u32
//!   connect_port, char cmdline[] }` (NUL-terminated); the agent says
//!   `MSG_CONNECTION_TERMINATED` with the domain and port (no command
//!   line) when the call is over.
//! - Data: both ends send `MSG_HELLO`; then dom0 sends stdin as
//!   `MSG_DATA_STDIN` chunks, a zero-length one for end of file, and
//!   reads `MSG_DATA_STDOUT`/`MSG_DATA_STDERR` chunks (each stream ended
//!   by a zero-length one) and `MSG_DATA_EXIT_CODE` (a 4-byte int).
//!   Chunks are at most 4096 bytes in version 2, 65536 from version 3.
//!
//! Anything else from the agent is an [`Violation`] (the rig test asserts
//! there are none); the channel is then left alone.

use std::fmt;

/// `struct msg_header`: u32 type, u32 len.
pub const HEADER_LEN: usize = 8;
/// `QREXEC_PROTOCOL_VERSION` of Qubes 4.3.
pub const PROTOCOL_VERSION: u32 = 4;
/// The lowest version either side accepts.
pub const MIN_VERSION: u32 = 2;

/// Message types (`qrexec.h`).
pub mod msg {
    /// `MSG_DATA_STDIN`.
    pub const DATA_STDIN: u32 = 0x190;
    /// `MSG_DATA_STDOUT`.
    pub const DATA_STDOUT: u32 = 0x191;
    /// `MSG_DATA_STDERR`.
    pub const DATA_STDERR: u32 = 0x192;
    /// `MSG_DATA_EXIT_CODE`.
    pub const DATA_EXIT_CODE: u32 = 0x193;
    /// `MSG_EXEC_CMDLINE`.
    pub const EXEC_CMDLINE: u32 = 0x200;
    /// `MSG_JUST_EXEC`.
    pub const JUST_EXEC: u32 = 0x201;
    /// `MSG_SERVICE_CONNECT`.
    pub const SERVICE_CONNECT: u32 = 0x202;
    /// `MSG_SERVICE_REFUSED`.
    pub const SERVICE_REFUSED: u32 = 0x203;
    /// `MSG_TRIGGER_SERVICE`.
    pub const TRIGGER_SERVICE: u32 = 0x210;
    /// `MSG_CONNECTION_TERMINATED`.
    pub const CONNECTION_TERMINATED: u32 = 0x211;
    /// `MSG_TRIGGER_SERVICE3`.
    pub const TRIGGER_SERVICE3: u32 = 0x212;
    /// `MSG_TRIGGER_SERVICE4`.
    pub const TRIGGER_SERVICE4: u32 = 0x213;
    /// `MSG_HELLO`.
    pub const HELLO: u32 = 0x300;
}

/// The largest data chunk of a protocol version.
pub fn max_chunk(version: u32) -> usize {
    if version >= 3 {
        65536
    } else {
        4096
    }
}

/// A header.
pub fn header(t: u32, len: usize) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(&t.to_le_bytes());
    h[4..].copy_from_slice(&(len as u32).to_le_bytes());
    h
}

/// `MSG_HELLO` with `version`.
pub fn hello(version: u32) -> Vec<u8> {
    let mut m = header(msg::HELLO, 4).to_vec();
    m.extend_from_slice(&version.to_le_bytes());
    m
}

/// Something the agent sent that the upstream daemon or client would
/// refuse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation(pub String);

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Takes one complete message off `buf`: `(type, body)`, or `None` when
/// it is not all there yet; a type `limit` refuses (`None`) or a body
/// longer than `limit(type)` is a violation.
fn take_one(
    buf: &mut Vec<u8>,
    limit: impl Fn(u32) -> Option<usize>,
) -> Result<Option<(u32, Vec<u8>)>, Violation> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let t = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let len = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
    match limit(t) {
        None => return Err(Violation(format!("message type {t:#x}"))),
        Some(max) if len > max => {
            return Err(Violation(format!(
                "message {t:#x} of {len} bytes (at most {max})"
            )))
        }
        Some(_) => {}
    }
    if buf.len() - HEADER_LEN < len {
        return Ok(None);
    }
    let body = buf[HEADER_LEN..HEADER_LEN + len].to_vec();
    buf.drain(..HEADER_LEN + len);
    Ok(Some((t, body)))
}

/// What the agent said on the control channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CtlEvent {
    /// Its `MSG_HELLO` (our answer is queued).
    Hello {
        /// The version it offered.
        version: u32,
    },
    /// `MSG_CONNECTION_TERMINATED` for a data vchan.
    Terminated {
        /// The data vchan's server domain.
        domain: u32,
        /// Its port.
        port: u32,
    },
    /// A call the VM asks for (`MSG_TRIGGER_SERVICE*`), not served here.
    Trigger {
        /// The message type.
        kind: u32,
    },
}

/// The daemon's end of the control vchan.
#[derive(Default)]
pub struct ControlClient {
    inbuf: Vec<u8>,
    out: Vec<u8>,
    version: Option<u32>,
    /// Our `MSG_HELLO`'s version; `None`: a copy of the agent's, as
    /// current daemons answer.
    answer: Option<u32>,
    broken: Option<Violation>,
}

impl ControlClient {
    /// A daemon answering the agent's hello with `answer` (`None`: with
    /// the agent's own version).
    pub fn new(answer: Option<u32>) -> Self {
        Self {
            answer,
            ..Self::default()
        }
    }

    /// The version in use once both hellos passed: the smaller offer.
    pub fn version(&self) -> Option<u32> {
        self.version
    }

    /// The violation that stopped the channel.
    pub fn broken(&self) -> Option<&Violation> {
        self.broken.as_ref()
    }

    /// Bytes to send to the agent.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Queues a call: `MSG_EXEC_CMDLINE` whose data vchan dom0 (domain 0)
    /// serves on `port`.
    pub fn exec(&mut self, port: u32, cmdline: &str) {
        let mut body = Vec::with_capacity(8 + cmdline.len() + 1);
        body.extend_from_slice(&0u32.to_le_bytes());
        body.extend_from_slice(&port.to_le_bytes());
        body.extend_from_slice(cmdline.as_bytes());
        body.push(0);
        self.out
            .extend_from_slice(&header(msg::EXEC_CMDLINE, body.len()));
        self.out.extend(body);
    }

    /// Bytes from the agent.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<CtlEvent>, Violation> {
        if let Some(v) = &self.broken {
            return Err(v.clone());
        }
        self.inbuf.extend_from_slice(bytes);
        let mut events = Vec::new();
        let result = (|| loop {
            let hello_done = self.version.is_some();
            let Some((t, body)) = take_one(&mut self.inbuf, |t| match t {
                msg::HELLO => Some(4),
                msg::CONNECTION_TERMINATED if hello_done => Some(8),
                msg::TRIGGER_SERVICE | msg::TRIGGER_SERVICE3 | msg::TRIGGER_SERVICE4
                    if hello_done =>
                {
                    Some(65536 + 1024)
                }
                _ => None,
            })?
            else {
                return Ok(());
            };
            match t {
                msg::HELLO => {
                    if self.version.is_some() {
                        return Err(Violation("a second MSG_HELLO".into()));
                    }
                    let v = u32_at(&body, 0)
                        .ok_or_else(|| Violation("MSG_HELLO of less than 4 bytes".into()))?;
                    if v < MIN_VERSION {
                        return Err(Violation(format!("agent version {v}")));
                    }
                    let ours = self.answer.unwrap_or(v);
                    self.out.extend(hello(ours));
                    self.version = Some(v.min(ours));
                    events.push(CtlEvent::Hello { version: v });
                }
                msg::CONNECTION_TERMINATED => {
                    let (Some(domain), Some(port)) = (u32_at(&body, 0), u32_at(&body, 4)) else {
                        return Err(Violation(
                            "MSG_CONNECTION_TERMINATED of less than 8 bytes".into(),
                        ));
                    };
                    events.push(CtlEvent::Terminated { domain, port });
                }
                kind => events.push(CtlEvent::Trigger { kind }),
            }
        })();
        match result {
            Ok(()) => Ok(events),
            Err(v) => {
                self.broken = Some(v.clone());
                Err(v)
            }
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// What the service said on a data vchan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataEvent {
    /// Its `MSG_HELLO`.
    Hello {
        /// The version it offered.
        version: u32,
    },
    /// The exit code came: the call is over.
    Exit(i32),
}

/// `qrexec-client`'s end of one call's data vchan.
pub struct DataServer {
    inbuf: Vec<u8>,
    out: Vec<u8>,
    ours: u32,
    version: Option<u32>,
    stdin: Vec<u8>,
    /// What the service printed.
    pub stdout: Vec<u8>,
    /// What it printed on stderr.
    pub stderr: Vec<u8>,
    stdout_eof: bool,
    stderr_eof: bool,
    exit: Option<i32>,
    broken: Option<Violation>,
}

impl DataServer {
    /// A call whose service gets `stdin`; we offer `version`.
    pub fn new(stdin: &[u8], version: u32) -> Self {
        Self {
            inbuf: Vec::new(),
            out: hello(version),
            ours: version,
            version: None,
            stdin: stdin.to_vec(),
            stdout: Vec::new(),
            stderr: Vec::new(),
            stdout_eof: false,
            stderr_eof: false,
            exit: None,
            broken: None,
        }
    }

    /// The exit code, once it came.
    pub fn exit(&self) -> Option<i32> {
        self.exit
    }

    /// Both streams were ended by a zero-length chunk.
    pub fn streams_ended(&self) -> bool {
        self.stdout_eof && self.stderr_eof
    }

    /// The violation that stopped the call.
    pub fn broken(&self) -> Option<&Violation> {
        self.broken.as_ref()
    }

    /// Bytes to send to the service.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Bytes from the service.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<DataEvent>, Violation> {
        if let Some(v) = &self.broken {
            return Err(v.clone());
        }
        self.inbuf.extend_from_slice(bytes);
        let mut events = Vec::new();
        let result = (|| {
            loop {
                let (version, over) = (self.version, self.exit.is_some());
                let Some((t, body)) = take_one(&mut self.inbuf, |t| match (t, version) {
                    _ if over => None,
                    (msg::HELLO, None) => Some(4),
                    (msg::DATA_STDOUT | msg::DATA_STDERR, Some(v)) => Some(max_chunk(v)),
                    (msg::DATA_EXIT_CODE, Some(_)) => Some(4),
                    _ => None,
                })?
                else {
                    return Ok(());
                };
                match t {
                    msg::HELLO => {
                        let v = u32_at(&body, 0)
                            .ok_or_else(|| Violation("MSG_HELLO of less than 4 bytes".into()))?;
                        if v < MIN_VERSION {
                            return Err(Violation(format!("service version {v}")));
                        }
                        let use_v = v.min(self.ours);
                        self.version = Some(use_v);
                        events.push(DataEvent::Hello { version: v });
                        // Now stdin, then its end.
                        let stdin = std::mem::take(&mut self.stdin);
                        for chunk in stdin.chunks(max_chunk(use_v)) {
                            self.out
                                .extend_from_slice(&header(msg::DATA_STDIN, chunk.len()));
                            self.out.extend_from_slice(chunk);
                        }
                        self.out.extend_from_slice(&header(msg::DATA_STDIN, 0));
                    }
                    msg::DATA_STDOUT | msg::DATA_STDERR => {
                        let (eof, buf) = if t == msg::DATA_STDOUT {
                            (&mut self.stdout_eof, &mut self.stdout)
                        } else {
                            (&mut self.stderr_eof, &mut self.stderr)
                        };
                        if *eof {
                            return Err(Violation(format!("data of {t:#x} after its end")));
                        }
                        if body.is_empty() {
                            *eof = true;
                        } else {
                            buf.extend(body);
                        }
                    }
                    _ => {
                        let code = u32_at(&body, 0)
                            .ok_or_else(|| Violation("an exit code of less than 4 bytes".into()))?;
                        self.exit = Some(code as i32);
                        events.push(DataEvent::Exit(code as i32));
                    }
                }
            }
        })();
        match result {
            Ok(()) => Ok(events),
            Err(v) => {
                self.broken = Some(v.clone());
                Err(v)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(t: u32, body: &[u8]) -> Vec<u8> {
        let mut v = header(t, body.len()).to_vec();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn the_control_handshake_echoes_and_calls_go_out() {
        let mut c = ControlClient::new(None);
        assert!(c.take_output().is_empty(), "the agent speaks first");
        let ev = c.feed(&hello(4)[..5]).unwrap();
        assert!(ev.is_empty());
        assert_eq!(
            c.feed(&hello(4)[5..]).unwrap(),
            vec![CtlEvent::Hello { version: 4 }]
        );
        assert_eq!(c.take_output(), hello(4));
        assert_eq!(c.version(), Some(4));
        c.exec(513, "root:QUBESRPC qubes.GetDate dom0");
        let out = c.take_output();
        assert_eq!(&out[..8], &header(msg::EXEC_CMDLINE, 8 + 32 + 1));
        assert_eq!(&out[8..16], &[0, 0, 0, 0, 1, 2, 0, 0]);
        assert_eq!(&out[16..], b"root:QUBESRPC qubes.GetDate dom0\0");
        let mut t = 0u32.to_le_bytes().to_vec();
        t.extend_from_slice(&513u32.to_le_bytes());
        assert_eq!(
            c.feed(&m(msg::CONNECTION_TERMINATED, &t)).unwrap(),
            vec![CtlEvent::Terminated {
                domain: 0,
                port: 513
            }]
        );
        let mut c3 = ControlClient::new(Some(3));
        c3.feed(&hello(4)).unwrap();
        assert_eq!(c3.take_output(), hello(3));
        assert_eq!(c3.version(), Some(3));
    }

    #[test]
    fn the_control_channel_refuses() {
        for bytes in [
            m(msg::CONNECTION_TERMINATED, &[0; 8]),
            hello(1),
            m(msg::HELLO, &[4, 0, 0, 0, 0]),
            m(0x777, &[]),
        ] {
            let mut c = ControlClient::new(None);
            assert!(c.feed(&bytes).is_err(), "{bytes:?}");
            assert!(c.feed(&hello(4)).is_err(), "sticky");
        }
        let mut c = ControlClient::new(None);
        c.feed(&hello(4)).unwrap();
        assert!(c.feed(&hello(4)).is_err());
    }

    #[test]
    fn a_call_sends_stdin_after_the_hello_and_collects_the_answer() {
        let mut d = DataServer::new(b"2031-05-06T07:08:09+00:00\n", 4);
        assert_eq!(d.take_output(), hello(4));
        assert_eq!(
            d.feed(&hello(3)).unwrap(),
            vec![DataEvent::Hello { version: 3 }]
        );
        let mut want = m(msg::DATA_STDIN, b"2031-05-06T07:08:09+00:00\n");
        want.extend(m(msg::DATA_STDIN, b""));
        assert_eq!(d.take_output(), want);
        let mut answer = m(msg::DATA_STDOUT, b"2031-05-06T");
        answer.extend(m(msg::DATA_STDOUT, b"07:08:10+00:00\n"));
        answer.extend(m(msg::DATA_STDOUT, b""));
        answer.extend(m(msg::DATA_STDERR, b""));
        answer.extend(m(msg::DATA_EXIT_CODE, &0u32.to_le_bytes()));
        let mut ev = Vec::new();
        for c in answer.chunks(3) {
            ev.extend(d.feed(c).unwrap());
        }
        assert_eq!(ev, vec![DataEvent::Exit(0)]);
        assert_eq!(d.stdout, b"2031-05-06T07:08:10+00:00\n");
        assert!(d.streams_ended());
        assert!(
            d.feed(&m(msg::DATA_STDOUT, b"x")).is_err(),
            "nothing after the exit code"
        );
    }

    #[test]
    fn a_call_refuses() {
        for bytes in [
            m(msg::DATA_STDOUT, b"x"),
            [hello(2), m(msg::DATA_STDOUT, &[b'x'; 4097])].concat(),
            [hello(4), m(msg::DATA_STDIN, b"x")].concat(),
            [
                hello(4),
                m(msg::DATA_STDOUT, b""),
                m(msg::DATA_STDOUT, b"x"),
            ]
            .concat(),
            [hello(4), m(msg::DATA_EXIT_CODE, &[0, 0])].concat(),
        ] {
            let mut d = DataServer::new(b"", 4);
            assert!(d.feed(&bytes).is_err(), "{bytes:?}");
        }
        let mut d = DataServer::new(b"", 4);
        d.feed(&[hello(4), m(msg::DATA_STDOUT, &[b'x'; 65536])].concat())
            .unwrap();
        assert_eq!(d.stdout.len(), 65536);
    }
}
