//! The server side of iperf3's control protocol, without I/O: enough of it
//! for Debian's `iperf3 -c` (3.x) to measure one TCP stream to us (`-c`)
//! or from us (`-R`), so that dom0's iperf3 measures netdemo exactly as it
//! measures a Linux domU running `iperf3 -s`.
//!
//! # The protocol, as this server speaks it
//!
//! Everything goes over one TCP *control* connection to port 5201 except
//! the data, which uses a second TCP connection to the same port:
//!
//! 1. client → server: a 37-byte cookie (36 characters and a NUL);
//! 2. server → client: the state byte `PARAM_EXCHANGE` (9);
//! 3. client → server: the test parameters, a 4-byte big-endian length and
//!    that many bytes of JSON (`tcp`, `reverse`, `parallel`, `len`, ...);
//! 4. server → client: `CREATE_STREAMS` (10); the client opens the data
//!    connection and sends the same cookie on it;
//! 5. server → client: `TEST_START` (1), then `TEST_RUNNING` (2); data
//!    flows, client to server, or server to client with `reverse`;
//! 6. client → server: `TEST_END` (4) when its time is up;
//! 7. server → client: `EXCHANGE_RESULTS` (13); client → server: its
//!    results (length + JSON); server → client: ours (length + JSON:
//!    `cpu_util_*`, `sender_has_retransmits` and one stream with `id` 1,
//!    `bytes`, `retransmits`, `jitter`, `errors`, `packets`);
//! 8. server → client: `DISPLAY_RESULTS` (14); client → server:
//!    `IPERF_DONE` (16); the server closes.
//!
//! A client may end the test at any time with `CLIENT_TERMINATE` (12).
//! What this server does not support (UDP, SCTP, several streams, a
//! bidirectional test) is refused with `ACCESS_DENIED` (-1, the byte
//! 0xff), which iperf3 reports as a busy server; [`Control::refusal`]
//! says why, for the console.
//!
//! Everything the client sends is untrusted: lengths are bounded by
//! [`MAX_JSON`], JSON is parsed by the bounded [`crate::json`] reader, and
//! every departure from the sequence above is a [`ProtocolError`], never a
//! panic.
//!
//! [`Control`] is fed the control connection's bytes ([`Control::feed`])
//! and hands back the bytes to send ([`Control::output`]); the caller owns
//! the sockets, accepts the data connection when [`Control::wants_stream`]
//! says so, checks its cookie with [`Control::stream_cookie_ok`], moves the
//! data and reports the byte count with [`Control::set_stream_bytes`].

use crate::json::{self, Value};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// The port iperf3 uses by default, for control and data.
pub const PORT: u16 = 5201;
/// Length of the cookie that opens both connections.
pub const COOKIE_LEN: usize = 37;
/// Longest JSON message accepted from a client (iperf3 sends a few hundred
/// bytes of parameters; results grow with the streams' interval data,
/// which 3.x does not send in results).
pub const MAX_JSON: usize = 16 * 1024;

/// The state bytes of the control connection (`iperf_api.h`).
pub mod state {
    /// Both ends start the test.
    pub const TEST_START: u8 = 1;
    /// Data flows.
    pub const TEST_RUNNING: u8 = 2;
    /// The client's time is up.
    pub const TEST_END: u8 = 4;
    /// The server asks for the parameters.
    pub const PARAM_EXCHANGE: u8 = 9;
    /// The server asks for the data connections.
    pub const CREATE_STREAMS: u8 = 10;
    /// The client gives up.
    pub const CLIENT_TERMINATE: u8 = 12;
    /// Results are exchanged.
    pub const EXCHANGE_RESULTS: u8 = 13;
    /// The client prints its results.
    pub const DISPLAY_RESULTS: u8 = 14;
    /// The client is done.
    pub const IPERF_DONE: u8 = 16;
    /// The server refuses the test (-1 as a signed byte).
    pub const ACCESS_DENIED: u8 = 0xff;
}

/// The test parameters this server acts on, from the client's JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    /// `-R`: the server sends, the client receives.
    pub reverse: bool,
    /// `-l`: the client's block size (bytes), also ours when sending.
    pub block_len: u32,
    /// `-t`: seconds the client runs the test (0 when given by bytes).
    pub seconds: u64,
}

/// Where the control connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Reading the cookie.
    Cookie,
    /// `PARAM_EXCHANGE` sent, reading the parameters.
    Params,
    /// `CREATE_STREAMS` sent, waiting for the data connection.
    WaitStream,
    /// `TEST_RUNNING` sent: data flows until the client's `TEST_END`.
    Running,
    /// `EXCHANGE_RESULTS` sent, reading the client's results.
    ClientResults,
    /// Our results and `DISPLAY_RESULTS` sent, waiting for `IPERF_DONE`.
    Display,
    /// The test is over (done, refused or failed): close the connections.
    Closed,
}

/// A client that departed from the protocol.
#[derive(Clone, Debug, PartialEq)]
pub enum ProtocolError {
    /// A state byte that makes no sense in this phase.
    UnexpectedState {
        /// The byte.
        byte: u8,
        /// Where we were.
        phase: Phase,
    },
    /// A JSON message longer than [`MAX_JSON`] (or empty).
    BadLength(u32),
    /// A JSON message that does not parse.
    BadJson(json::Error),
    /// Parameters that are not a JSON object.
    BadParams,
    /// Bytes after the client's `IPERF_DONE` or during a refusal.
    TrailingBytes,
}

/// What a finished (or aborted) test measured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Bytes the data connection moved (received, or sent with `-R`).
    pub bytes: u64,
    /// Whether the test ran to the client's `IPERF_DONE`.
    pub completed: bool,
    /// Whether we were the sender.
    pub reverse: bool,
}

/// One control connection's protocol state.
#[derive(Debug)]
pub struct Control {
    phase: Phase,
    cookie: Vec<u8>,
    /// A JSON message being read: its length once known, and its bytes.
    msg_len: Option<usize>,
    msg: Vec<u8>,
    params: Option<Params>,
    out: Vec<u8>,
    stream_bytes: u64,
    stream_seconds_ns: u64,
    refusal: Option<String>,
    completed: bool,
}

impl Default for Control {
    fn default() -> Self {
        Self::new()
    }
}

impl Control {
    /// A fresh control connection (just accepted).
    pub fn new() -> Self {
        Control {
            phase: Phase::Cookie,
            cookie: Vec::with_capacity(COOKIE_LEN),
            msg_len: None,
            msg: Vec::new(),
            params: None,
            out: Vec::new(),
            stream_bytes: 0,
            stream_seconds_ns: 0,
            refusal: None,
            completed: false,
        }
    }

    /// Where the connection is.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The parameters, once received and accepted.
    pub fn params(&self) -> Option<&Params> {
        self.params.as_ref()
    }

    /// Why the test was refused, if it was.
    pub fn refusal(&self) -> Option<&str> {
        self.refusal.as_deref()
    }

    /// Bytes waiting to go out on the control connection.
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    /// The first `n` bytes of [`output`](Self::output) were sent.
    pub fn consume_output(&mut self, n: usize) {
        self.out.drain(..n.min(self.out.len()));
    }

    /// Whether the data connection should be accepted now.
    pub fn wants_stream(&self) -> bool {
        self.phase == Phase::WaitStream
    }

    /// Whether data should flow now.
    pub fn running(&self) -> bool {
        self.phase == Phase::Running
    }

    /// Whether the data connection must be closed now: the test is past
    /// running (the client's `TEST_END`, as iperf3's own server closes its
    /// streams then; a client in `-R` waits for that before it sends its
    /// results) or over.
    pub fn stream_done(&self) -> bool {
        matches!(
            self.phase,
            Phase::ClientResults | Phase::Display | Phase::Closed
        )
    }

    /// What the test measured so far.
    pub fn outcome(&self) -> Outcome {
        Outcome {
            bytes: self.stream_bytes,
            completed: self.completed,
            reverse: self.params.as_ref().is_some_and(|p| p.reverse),
        }
    }

    /// The data connection's bytes moved so far, and for how long (from
    /// `TEST_RUNNING`, nanoseconds): what our results report.
    pub fn set_stream_bytes(&mut self, bytes: u64, elapsed_ns: u64) {
        self.stream_bytes = bytes;
        self.stream_seconds_ns = elapsed_ns;
    }

    /// The data connection sent its 37-byte `cookie`: true (and the test
    /// starts) when it is this test's; false means close that connection.
    pub fn stream_cookie_ok(&mut self, cookie: &[u8]) -> bool {
        if self.phase != Phase::WaitStream || cookie != self.cookie.as_slice() {
            return false;
        }
        self.out.push(state::TEST_START);
        self.out.push(state::TEST_RUNNING);
        self.phase = Phase::Running;
        true
    }

    /// Bytes received on the control connection. Returns how many were
    /// taken; the rest (if any) wait for the phase to move on (never while
    /// the caller has fed everything it has: every phase takes bytes
    /// unless it is [`Phase::Closed`] or waits for the data connection).
    ///
    /// After an error the connection is [`Phase::Closed`]: close it.
    pub fn feed(&mut self, input: &[u8]) -> Result<usize, ProtocolError> {
        let result = self.feed_inner(input);
        if result.is_err() {
            self.phase = Phase::Closed;
            self.msg.clear();
            self.msg_len = None;
        }
        result
    }

    fn feed_inner(&mut self, input: &[u8]) -> Result<usize, ProtocolError> {
        let mut used = 0;
        while used < input.len() {
            let rest = &input[used..];
            let n = match self.phase {
                Phase::Cookie => {
                    let n = rest.len().min(COOKIE_LEN - self.cookie.len());
                    self.cookie.extend_from_slice(&rest[..n]);
                    if self.cookie.len() == COOKIE_LEN {
                        self.out.push(state::PARAM_EXCHANGE);
                        self.phase = Phase::Params;
                    }
                    n
                }
                Phase::Params => {
                    let (n, done) = self.read_message(rest)?;
                    if done {
                        self.take_params()?;
                    }
                    n
                }
                Phase::WaitStream | Phase::Running => {
                    self.control_byte(rest[0])?;
                    1
                }
                Phase::ClientResults => {
                    let (n, done) = self.read_message(rest)?;
                    if done {
                        // The client's view is not needed: ours is what it
                        // prints as the server's side. It must parse.
                        json::parse(&self.msg).map_err(ProtocolError::BadJson)?;
                        self.msg.clear();
                        self.send_results();
                        self.out.push(state::DISPLAY_RESULTS);
                        self.phase = Phase::Display;
                    }
                    n
                }
                Phase::Display => {
                    match rest[0] {
                        state::IPERF_DONE => {
                            self.completed = true;
                            self.phase = Phase::Closed;
                        }
                        state::CLIENT_TERMINATE => self.phase = Phase::Closed,
                        byte => {
                            return Err(ProtocolError::UnexpectedState {
                                byte,
                                phase: self.phase,
                            })
                        }
                    }
                    1
                }
                Phase::Closed => return Err(ProtocolError::TrailingBytes),
            };
            used += n;
        }
        Ok(used)
    }

    /// A state byte from the client while waiting for the stream or
    /// running.
    fn control_byte(&mut self, byte: u8) -> Result<(), ProtocolError> {
        match byte {
            state::TEST_END if self.phase == Phase::Running => {
                self.out.push(state::EXCHANGE_RESULTS);
                self.phase = Phase::ClientResults;
                Ok(())
            }
            state::CLIENT_TERMINATE => {
                self.phase = Phase::Closed;
                Ok(())
            }
            byte => Err(ProtocolError::UnexpectedState {
                byte,
                phase: self.phase,
            }),
        }
    }

    /// Reads a length-prefixed JSON message; (bytes taken, complete).
    fn read_message(&mut self, input: &[u8]) -> Result<(usize, bool), ProtocolError> {
        let mut used = 0;
        if self.msg_len.is_none() {
            let n = input.len().min(4 - self.msg.len());
            self.msg.extend_from_slice(&input[..n]);
            used += n;
            if self.msg.len() < 4 {
                return Ok((used, false));
            }
            let len = u32::from_be_bytes([self.msg[0], self.msg[1], self.msg[2], self.msg[3]]);
            if len == 0 || len as usize > MAX_JSON {
                return Err(ProtocolError::BadLength(len));
            }
            self.msg_len = Some(len as usize);
            self.msg.clear();
        }
        let want = self.msg_len.unwrap_or(0) - self.msg.len();
        let n = (input.len() - used).min(want);
        self.msg.extend_from_slice(&input[used..used + n]);
        used += n;
        let done = self.msg.len() == self.msg_len.unwrap_or(0);
        if done {
            self.msg_len = None;
        }
        Ok((used, done))
    }

    /// The parameters are in `self.msg`: accept them (`CREATE_STREAMS`) or
    /// refuse the test (`ACCESS_DENIED`).
    fn take_params(&mut self) -> Result<(), ProtocolError> {
        let v = json::parse(&self.msg).map_err(ProtocolError::BadJson)?;
        self.msg.clear();
        if !matches!(v, Value::Object(_)) {
            return Err(ProtocolError::BadParams);
        }
        let flag = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
        let num = |k: &str| v.get(k).and_then(Value::as_u64);
        let refusal = if flag("udp") {
            Some(String::from("UDP tests are not supported (TCP only)"))
        } else if flag("sctp") {
            Some(String::from("SCTP tests are not supported (TCP only)"))
        } else if num("parallel").unwrap_or(1) > 1 {
            Some(format!(
                "{} parallel streams asked; one is supported",
                num("parallel").unwrap_or(0)
            ))
        } else if flag("bidirectional") {
            Some(String::from("bidirectional tests are not supported"))
        } else {
            None
        };
        if let Some(why) = refusal {
            self.refusal = Some(why);
            self.out.push(state::ACCESS_DENIED);
            self.phase = Phase::Closed;
            return Ok(());
        }
        self.params = Some(Params {
            reverse: flag("reverse"),
            block_len: num("len")
                .and_then(|l| u32::try_from(l).ok())
                .filter(|l| *l > 0)
                .unwrap_or(128 * 1024),
            seconds: num("time").unwrap_or(0),
        });
        self.out.push(state::CREATE_STREAMS);
        self.phase = Phase::WaitStream;
        Ok(())
    }

    /// Appends our results message (length + JSON).
    fn send_results(&mut self) {
        let secs = self.stream_seconds_ns / 1_000_000_000;
        let frac = self.stream_seconds_ns % 1_000_000_000;
        // As a sender we cannot count retransmissions: -1, and
        // sender_has_retransmits 0, so the client prints none.
        let body = format!(
            "{{\"cpu_util_total\":0,\"cpu_util_user\":0,\"cpu_util_system\":0,\
             \"sender_has_retransmits\":0,\"streams\":[{{\"id\":1,\"bytes\":{},\
             \"retransmits\":-1,\"jitter\":0,\"errors\":0,\"packets\":0,\
             \"start_time\":0,\"end_time\":{secs}.{frac:09}}}]}}",
            self.stream_bytes
        );
        self.out
            .extend_from_slice(&(body.len() as u32).to_be_bytes());
        self.out.extend_from_slice(body.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOKIE: &[u8; COOKIE_LEN] = b"abcdefghijklmnopqrstuvwxyz0123456789\0";

    fn message(json: &str) -> Vec<u8> {
        let mut v = (json.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(json.as_bytes());
        v
    }

    fn take(c: &mut Control) -> Vec<u8> {
        let out = c.output().to_vec();
        c.consume_output(out.len());
        out
    }

    /// Runs a whole test, feeding the client's bytes `chunk` at a time.
    fn whole_test(params: &str, chunk: usize) -> Control {
        let mut c = Control::new();
        let feed = |c: &mut Control, bytes: &[u8]| {
            for part in bytes.chunks(chunk) {
                assert_eq!(c.feed(part).unwrap(), part.len());
            }
        };
        feed(&mut c, COOKIE);
        assert_eq!(take(&mut c), [state::PARAM_EXCHANGE]);
        feed(&mut c, &message(params));
        assert_eq!(take(&mut c), [state::CREATE_STREAMS]);
        assert!(c.wants_stream());
        assert!(!c.stream_cookie_ok(b"not the cookie"));
        assert!(c.stream_cookie_ok(COOKIE));
        assert_eq!(take(&mut c), [state::TEST_START, state::TEST_RUNNING]);
        assert!(c.running());
        c.set_stream_bytes(123_456_789, 10_000_000_001);
        feed(&mut c, &[state::TEST_END]);
        assert_eq!(take(&mut c), [state::EXCHANGE_RESULTS]);
        feed(&mut c, &message("{\"cpu_util_total\":1,\"streams\":[]}"));
        let out = take(&mut c);
        let len = u32::from_be_bytes([out[0], out[1], out[2], out[3]]) as usize;
        assert_eq!(out.len(), 4 + len + 1);
        assert_eq!(out[4 + len], state::DISPLAY_RESULTS);
        let results = json::parse(&out[4..4 + len]).unwrap();
        for key in [
            "cpu_util_total",
            "cpu_util_user",
            "cpu_util_system",
            "sender_has_retransmits",
        ] {
            assert!(results.get(key).is_some(), "{key}");
        }
        let Some(Value::Array(streams)) = results.get("streams") else {
            panic!("no streams: {results:?}")
        };
        let s = &streams[0];
        assert_eq!(s.get("id").and_then(Value::as_u64), Some(1));
        assert_eq!(s.get("bytes").and_then(Value::as_u64), Some(123_456_789));
        for key in ["retransmits", "jitter", "errors", "packets"] {
            assert!(s.get(key).is_some(), "{key}");
        }
        assert_eq!(
            s.get("end_time"),
            Some(&Value::Number(10.000000001)),
            "seconds with nanoseconds"
        );
        feed(&mut c, &[state::IPERF_DONE]);
        assert_eq!(c.phase(), Phase::Closed);
        assert!(c.outcome().completed);
        c
    }

    #[test]
    fn a_whole_test_in_one_piece_and_byte_by_byte() {
        let params = "{\"tcp\":true,\"omit\":0,\"time\":10,\"num\":0,\"blockcount\":0,\
                      \"parallel\":1,\"len\":131072,\"pacing_timer\":1000,\
                      \"client_version\":\"3.12\"}";
        for chunk in [usize::MAX, 1, 3] {
            let c = whole_test(params, chunk.min(4096));
            let p = c.params().unwrap();
            assert!(!p.reverse);
            assert_eq!(p.block_len, 131072);
            assert_eq!(p.seconds, 10);
            assert_eq!(c.outcome().bytes, 123_456_789);
        }
    }

    #[test]
    fn reverse_makes_us_the_sender() {
        let c = whole_test(
            "{\"tcp\":true,\"reverse\":true,\"time\":2,\"parallel\":1}",
            7,
        );
        assert!(c.params().unwrap().reverse);
        assert!(c.outcome().reverse);
        assert_eq!(c.params().unwrap().block_len, 128 * 1024, "default block");
    }

    #[test]
    fn unsupported_tests_are_refused_with_a_reason() {
        for (params, why) in [
            ("{\"udp\":true}", "UDP"),
            ("{\"tcp\":true,\"parallel\":4}", "4 parallel"),
            ("{\"tcp\":true,\"bidirectional\":true}", "bidirectional"),
        ] {
            let mut c = Control::new();
            c.feed(COOKIE).unwrap();
            take(&mut c);
            c.feed(&message(params)).unwrap();
            assert_eq!(take(&mut c), [state::ACCESS_DENIED]);
            assert_eq!(c.phase(), Phase::Closed);
            assert!(c.refusal().unwrap().contains(why), "{:?}", c.refusal());
            assert_eq!(c.feed(b"x"), Err(ProtocolError::TrailingBytes));
        }
    }

    #[test]
    fn departures_from_the_protocol_are_errors() {
        let start = || {
            let mut c = Control::new();
            c.feed(COOKIE).unwrap();
            take(&mut c);
            c
        };
        let mut c = start();
        assert_eq!(
            c.feed(&0u32.to_be_bytes()),
            Err(ProtocolError::BadLength(0))
        );
        let mut c2 = start();
        assert_eq!(
            c2.feed(&u32::MAX.to_be_bytes()),
            Err(ProtocolError::BadLength(u32::MAX))
        );
        let mut c3 = start();
        assert!(matches!(
            c3.feed(&message("{\"tcp\":")),
            Err(ProtocolError::BadJson(_))
        ));
        let mut c4 = start();
        assert_eq!(c4.feed(&message("[1,2]")), Err(ProtocolError::BadParams));
        // TEST_END before the stream exists.
        let mut c5 = start();
        c5.feed(&message("{\"tcp\":true}")).unwrap();
        assert_eq!(
            c5.feed(&[state::TEST_END]),
            Err(ProtocolError::UnexpectedState {
                byte: state::TEST_END,
                phase: Phase::WaitStream
            })
        );
        // A client may give up at any time.
        let mut c6 = start();
        c6.feed(&message("{\"tcp\":true}")).unwrap();
        c6.feed(&[state::CLIENT_TERMINATE]).unwrap();
        assert_eq!(c6.phase(), Phase::Closed);
        assert!(!c6.outcome().completed);
        assert!(!c6.stream_cookie_ok(COOKIE), "no stream after the end");
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic fuzz: every prefix of a valid exchange with
        // one byte flipped.
        let mut valid = COOKIE.to_vec();
        valid.extend(message("{\"tcp\":true,\"time\":1}"));
        for i in 0..valid.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut input = valid.clone();
                input[i] ^= flip;
                let mut c = Control::new();
                let _ = c.feed(&input);
                let _ = c.stream_cookie_ok(COOKIE);
                let _ = c.feed(&[state::TEST_END, 0, 0, 0, 2, b'{', b'}', 16]);
            }
        }
    }
}
