//! The services netdemo offers, as smoltcp sockets driven by [`Apps::run`]:
//!
//! | port | proto | what |
//! |------|-------|------|
//! | 7    | TCP   | echo (two connections at a time) |
//! | 7    | UDP   | echo |
//! | 9    | UDP   | discard, counted (packets/s benchmark) |
//! | 5001 | TCP   | sink: reads until the peer closes, reports bytes and CRC-32 |
//! | 5002 | TCP   | source: reads a decimal byte count and a newline, sends that many bytes of [`Pattern`] and closes, reports their CRC-32 |
//! | 5201 | TCP   | iperf3 server: one TCP stream to us (`iperf3 -c`) or from us (`-R`), one test at a time ([`netdemo::iperf3`]) |
//!
//! Everything here is portable: the image runs it over netfront, the host
//! tests over smoltcp's loopback device.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::{tcp, udp};

use netdemo::iperf3::{self, Control, ProtocolError, COOKIE_LEN};
use netdemo::stream::{Crc32, Pattern};

/// TCP echo port (also UDP echo).
pub const ECHO_PORT: u16 = 7;
/// UDP discard port.
pub const DISCARD_PORT: u16 = 9;
/// TCP sink port.
pub const SINK_PORT: u16 = 5001;
/// TCP source port.
pub const SOURCE_PORT: u16 = 5002;
/// iperf3's port (control and data connections).
pub const IPERF_PORT: u16 = iperf3::PORT;
/// Seed of the source's byte stream.
pub const SOURCE_SEED: u64 = 0x6d6f_6174;
/// Longest accepted length line of the source (digits and newline).
const MAX_LENGTH_LINE: usize = 24;

/// A finished transfer, for the console.
#[derive(Clone, Debug, PartialEq)]
pub enum Report {
    /// The sink's peer closed after sending `bytes` with this CRC-32.
    Sink {
        /// Bytes received.
        bytes: u64,
        /// Their CRC-32 (zlib's).
        crc32: u32,
        /// From the first byte to the close, in ns.
        elapsed_ns: u64,
    },
    /// The source sent `bytes` (as asked) with this CRC-32.
    Source {
        /// Bytes sent.
        bytes: u64,
        /// Their CRC-32 (zlib's).
        crc32: u32,
        /// From the request to the last byte queued, in ns.
        elapsed_ns: u64,
    },
    /// A source client sent something other than a byte count.
    BadSourceRequest,
    /// An iperf3 test ended (completed, or the client went away).
    Iperf3 {
        /// Bytes the data connection moved.
        bytes: u64,
        /// We sent (`-R`) rather than received.
        reverse: bool,
        /// The client finished the protocol (`IPERF_DONE`).
        completed: bool,
        /// From the first data byte's connection to the client's end, ns.
        elapsed_ns: u64,
    },
    /// An iperf3 test we refused (`ACCESS_DENIED`), and why.
    Iperf3Refused(String),
    /// An iperf3 client that broke the protocol: its connection closed.
    Iperf3Error(ProtocolError),
}

/// Counters of the datagram services.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// UDP echo datagrams answered.
    pub udp_echoed: u64,
    /// UDP discard datagrams counted.
    pub udp_discarded: u64,
    /// TCP echo bytes returned.
    pub tcp_echoed: u64,
}

enum SourceState {
    Listening,
    Reading(Vec<u8>),
    Sending {
        remaining: u64,
        pattern: Pattern,
        sum: Crc32,
        started_ns: u64,
    },
    Closing,
}

struct Sink {
    handle: SocketHandle,
    sum: Crc32,
    started_ns: Option<u64>,
}

struct Source {
    handle: SocketHandle,
    state: SourceState,
}

/// The iperf3 server: a control and a data socket, one test at a time.
struct Iperf {
    control: SocketHandle,
    data: SocketHandle,
    /// The test of the current control connection.
    session: Option<Control>,
    /// The data connection's cookie so far, and whether it was accepted.
    cookie: Vec<u8>,
    streaming: bool,
    bytes: u64,
    started_ns: u64,
    /// When the control connection was closed (not reset), if it is not
    /// closed yet.
    closing_since: Option<u64>,
}

/// How long a closed control connection may wait for the client's FIN
/// before it is reset, ns.
const IPERF_LINGER_NS: u64 = 5_000_000_000;

/// The sockets of every service and their progress.
pub struct Apps {
    tcp_echo: Vec<SocketHandle>,
    udp_echo: SocketHandle,
    udp_discard: SocketHandle,
    sinks: Vec<Sink>,
    sources: Vec<Source>,
    iperf: Iperf,
    counters: Counters,
}

/// Sockets per TCP service. One: with several listening on a port, a
/// retransmitted SYN can land on a second socket, whose SYN-ACK makes the
/// peer reset the connection the first one holds.
const SOCKETS_PER_SERVICE: usize = 1;

fn tcp_socket(buffer: usize) -> tcp::Socket<'static> {
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; buffer]),
        tcp::SocketBuffer::new(vec![0; buffer]),
    );
    s.set_nagle_enabled(false);
    // smoltcp 0.12 sends no zero-window probes: when the peer's window is
    // zero and the ACK that reopens it is lost, the retransmit timer goes
    // idle and the sender waits forever (seen on the rig: a transfer
    // through netbridge stalled for its whole 380 s limit while dom0's
    // reader was slow). A keep-alive after 1 s of silence is the probe:
    // the peer answers it with an ACK that carries its current window.
    s.set_keep_alive(Some(KEEP_ALIVE));
    s
}

/// Silence after which a TCP socket sends a keep-alive (our zero-window
/// probe, see [`tcp_socket`]).
const KEEP_ALIVE: smoltcp::time::Duration = smoltcp::time::Duration::from_millis(1000);

fn udp_socket(packets: usize) -> udp::Socket<'static> {
    udp::Socket::new(
        udp::PacketBuffer::new(
            vec![udp::PacketMetadata::EMPTY; packets],
            vec![0; packets * 1500],
        ),
        udp::PacketBuffer::new(
            vec![udp::PacketMetadata::EMPTY; packets],
            vec![0; packets * 1500],
        ),
    )
}

fn relisten(s: &mut tcp::Socket<'_>, port: u16) -> bool {
    // A finished connection we closed first would keep the port
    // unavailable for TIME-WAIT's two minutes: the peer has closed too, so
    // end it now and listen again.
    if s.state() == tcp::State::TimeWait {
        s.abort();
    }
    if s.state() == tcp::State::Closed {
        // Only fails for port 0 or an open socket, neither possible here.
        let _ = s.listen(port);
        return true;
    }
    false
}

impl Apps {
    /// Add every service's sockets to `sockets`, TCP sockets with
    /// `tcp_buffer` bytes each way.
    pub fn new(sockets: &mut SocketSet<'static>, tcp_buffer: usize) -> Self {
        let tcp_echo = (0..SOCKETS_PER_SERVICE)
            .map(|_| sockets.add(tcp_socket(16 * 1024)))
            .collect();
        let mut echo = udp_socket(64);
        let _ = echo.bind(ECHO_PORT);
        let udp_echo = sockets.add(echo);
        let mut discard = udp_socket(256);
        let _ = discard.bind(DISCARD_PORT);
        let udp_discard = sockets.add(discard);
        let sinks = (0..SOCKETS_PER_SERVICE)
            .map(|_| Sink {
                handle: sockets.add(tcp_socket(tcp_buffer)),
                sum: Crc32::new(),
                started_ns: None,
            })
            .collect();
        let sources = (0..SOCKETS_PER_SERVICE)
            .map(|_| Source {
                handle: sockets.add(tcp_socket(tcp_buffer)),
                state: SourceState::Listening,
            })
            .collect();
        let iperf = Iperf {
            control: sockets.add(tcp_socket(4 * 1024)),
            data: sockets.add(tcp_socket(tcp_buffer)),
            session: None,
            cookie: Vec::new(),
            streaming: false,
            bytes: 0,
            started_ns: 0,
            closing_since: None,
        };
        let mut apps = Self {
            tcp_echo,
            udp_echo,
            udp_discard,
            sinks,
            sources,
            iperf,
            counters: Counters::default(),
        };
        apps.run(sockets, 0, &mut |_| {});
        apps
    }

    /// Counters so far.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Move data between the sockets and the services (call after every
    /// interface poll); finished transfers go to `report`.
    pub fn run(
        &mut self,
        sockets: &mut SocketSet<'static>,
        now_ns: u64,
        report: &mut dyn FnMut(Report),
    ) {
        self.run_tcp_echo(sockets);
        self.run_udp(sockets);
        for sink in &mut self.sinks {
            run_sink(sink, sockets, now_ns, report);
        }
        for source in &mut self.sources {
            run_source(source, sockets, now_ns, report);
        }
        self.iperf.run(sockets, now_ns, report);
    }

    fn run_tcp_echo(&mut self, sockets: &mut SocketSet<'static>) {
        for &h in &self.tcp_echo {
            let s = sockets.get_mut::<tcp::Socket>(h);
            if relisten(s, ECHO_PORT) {
                continue;
            }
            while s.can_recv() && s.can_send() {
                let room = s.send_capacity() - s.send_queue();
                let chunk = s.recv(|buf| {
                    let n = buf.len().min(room);
                    (n, buf[..n].to_vec())
                });
                match chunk {
                    Ok(data) if !data.is_empty() => {
                        // `room` bytes fit, so this queues all of them.
                        let _ = s.send_slice(&data);
                        self.counters.tcp_echoed += data.len() as u64;
                    }
                    _ => break,
                }
            }
            if !s.may_recv() && s.may_send() && s.send_queue() == 0 {
                s.close();
            }
        }
    }

    fn run_udp(&mut self, sockets: &mut SocketSet<'static>) {
        let echo = sockets.get_mut::<udp::Socket>(self.udp_echo);
        while echo.can_send() {
            let Ok((data, meta)) = echo.recv() else { break };
            let data = data.to_vec();
            let _ = echo.send_slice(&data, meta.endpoint);
            self.counters.udp_echoed += 1;
        }
        let discard = sockets.get_mut::<udp::Socket>(self.udp_discard);
        while discard.recv().is_ok() {
            self.counters.udp_discarded += 1;
        }
    }
}

fn run_sink(
    sink: &mut Sink,
    sockets: &mut SocketSet<'static>,
    now_ns: u64,
    report: &mut dyn FnMut(Report),
) {
    let s = sockets.get_mut::<tcp::Socket>(sink.handle);
    if relisten(s, SINK_PORT) {
        sink.sum = Crc32::new();
        sink.started_ns = None;
        return;
    }
    while s.can_recv() {
        let sum = &mut sink.sum;
        let _ = s.recv(|buf| {
            sum.update(buf);
            (buf.len(), ())
        });
        sink.started_ns.get_or_insert(now_ns);
    }
    // Only once the peer has closed its side (`CloseWait`), not while
    // the connection is still being set up.
    if s.state() == tcp::State::CloseWait {
        report(Report::Sink {
            bytes: sink.sum.len(),
            crc32: sink.sum.value(),
            elapsed_ns: now_ns.saturating_sub(sink.started_ns.unwrap_or(now_ns)),
        });
        s.close();
        sink.sum = Crc32::new();
        sink.started_ns = None;
    }
}

fn run_source(
    src: &mut Source,
    sockets: &mut SocketSet<'static>,
    now_ns: u64,
    report: &mut dyn FnMut(Report),
) {
    let s = sockets.get_mut::<tcp::Socket>(src.handle);
    if relisten(s, SOURCE_PORT) {
        src.state = SourceState::Listening;
        return;
    }
    loop {
        match &mut src.state {
            SourceState::Listening => {
                if !s.is_active() {
                    return;
                }
                src.state = SourceState::Reading(Vec::new());
            }
            SourceState::Reading(line) => {
                let mut done = false;
                while s.can_recv() && !done {
                    let _ = s.recv(|buf| {
                        let mut used = 0;
                        for &b in buf.iter() {
                            used += 1;
                            if b == b'\n' {
                                done = true;
                                break;
                            }
                            line.push(b);
                            if line.len() > MAX_LENGTH_LINE {
                                done = true;
                                break;
                            }
                        }
                        (used, ())
                    });
                }
                if !done {
                    if s.state() == tcp::State::CloseWait {
                        report(Report::BadSourceRequest);
                        s.close();
                        src.state = SourceState::Closing;
                    }
                    return;
                }
                let count = core::str::from_utf8(line)
                    .ok()
                    .map(|t| t.trim_end_matches('\r'))
                    .and_then(|t| t.parse::<u64>().ok());
                match count {
                    Some(n) => {
                        src.state = SourceState::Sending {
                            remaining: n,
                            pattern: Pattern::new(SOURCE_SEED),
                            sum: Crc32::new(),
                            started_ns: now_ns,
                        }
                    }
                    None => {
                        report(Report::BadSourceRequest);
                        s.close();
                        src.state = SourceState::Closing;
                        return;
                    }
                }
            }
            SourceState::Sending {
                remaining,
                pattern,
                sum,
                started_ns,
            } => {
                while *remaining > 0 && s.can_send() {
                    let want = *remaining;
                    let sent = s
                        .send(|buf| {
                            let n = buf.len().min(usize::try_from(want).unwrap_or(usize::MAX));
                            pattern.fill(&mut buf[..n]);
                            sum.update(&buf[..n]);
                            (n, n)
                        })
                        .unwrap_or(0);
                    if sent == 0 {
                        break;
                    }
                    *remaining -= sent as u64;
                }
                if *remaining == 0 {
                    report(Report::Source {
                        bytes: sum.len(),
                        crc32: sum.value(),
                        elapsed_ns: now_ns.saturating_sub(*started_ns),
                    });
                    s.close();
                    src.state = SourceState::Closing;
                } else if !s.may_send() {
                    // The peer reset or went away mid-transfer.
                    src.state = SourceState::Closing;
                }
                return;
            }
            SourceState::Closing => return,
        }
    }
}

impl Iperf {
    /// One step of the iperf3 server: the control connection's protocol
    /// (`Control`), the data connection (listening only while the test
    /// waits for it, so that a second client's control connection is never
    /// taken for our data connection), and the data.
    fn run(
        &mut self,
        sockets: &mut SocketSet<'static>,
        now_ns: u64,
        report: &mut dyn FnMut(Report),
    ) {
        let c = sockets.get_mut::<tcp::Socket>(self.control);
        if self.session.is_none() {
            // A client that never closes its side must not keep the port
            // from listening again.
            if let Some(since) = self.closing_since {
                if now_ns.saturating_sub(since) > IPERF_LINGER_NS {
                    c.abort();
                }
            }
            if relisten(c, IPERF_PORT) {
                self.closing_since = None;
                return;
            }
            if c.state() != tcp::State::Established {
                return;
            }
            self.closing_since = None;
            self.session = Some(Control::new());
            self.cookie.clear();
            self.streaming = false;
            self.bytes = 0;
        }
        let Some(session) = self.session.as_mut() else {
            return;
        };
        let mut error = None;
        while c.can_recv() && error.is_none() {
            let used = c
                .recv(|buf| match session.feed(buf) {
                    Ok(n) => (n, n),
                    Err(e) => {
                        error = Some(e);
                        (buf.len(), buf.len())
                    }
                })
                .unwrap_or(0);
            if used == 0 {
                break;
            }
        }
        if !session.output().is_empty() && c.can_send() {
            if let Ok(n) = c.send_slice(session.output()) {
                session.consume_output(n);
            }
        }
        if let Some(e) = error {
            report(Report::Iperf3Error(e));
        }
        let peer_gone = !c.may_recv();

        let d = sockets.get_mut::<tcp::Socket>(self.data);
        if session.wants_stream() && !self.streaming && d.state() == tcp::State::Closed {
            let _ = d.listen(IPERF_PORT);
        }
        if !self.streaming && d.state() == tcp::State::Established {
            while self.cookie.len() < COOKIE_LEN && d.can_recv() {
                let want = COOKIE_LEN - self.cookie.len();
                let cookie = &mut self.cookie;
                let _ = d.recv(|buf| {
                    let n = buf.len().min(want);
                    cookie.extend_from_slice(&buf[..n]);
                    (n, ())
                });
            }
            if self.cookie.len() == COOKIE_LEN {
                if session.stream_cookie_ok(&self.cookie) {
                    self.streaming = true;
                    self.started_ns = now_ns;
                } else {
                    d.abort();
                    self.cookie.clear();
                }
            }
        }
        if self.streaming && session.running() {
            let reverse = session.params().is_some_and(|p| p.reverse);
            if reverse {
                while d.can_send() {
                    let n = d
                        .send(|buf| {
                            buf.fill(0);
                            (buf.len(), buf.len())
                        })
                        .unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    self.bytes += n as u64;
                }
            } else {
                while d.can_recv() {
                    let n = d.recv(|buf| (buf.len(), buf.len())).unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    self.bytes += n as u64;
                }
            }
            session.set_stream_bytes(self.bytes, now_ns.saturating_sub(self.started_ns));
        }
        if (session.stream_done() || peer_gone) && d.state() != tcp::State::Closed {
            // As iperf3's own server at TEST_END: data still unread is
            // reset (we received), data we queued still goes (we sent).
            if session.params().is_some_and(|p| p.reverse) {
                d.close();
            } else {
                d.abort();
            }
        }
        if (session.phase() == iperf3::Phase::Closed && session.output().is_empty()) || peer_gone {
            let outcome = session.outcome();
            match session.refusal() {
                Some(why) => report(Report::Iperf3Refused(String::from(why))),
                None if self.streaming => report(Report::Iperf3 {
                    bytes: outcome.bytes,
                    reverse: outcome.reverse,
                    completed: outcome.completed,
                    elapsed_ns: now_ns.saturating_sub(self.started_ns),
                }),
                None => {}
            }
            let c = sockets.get_mut::<tcp::Socket>(self.control);
            if outcome.completed {
                // The client answered DISPLAY_RESULTS: it has everything.
                c.abort();
            } else {
                // A refusal or an error still queued goes before the FIN;
                // the close is bounded by IPERF_LINGER_NS.
                c.close();
                self.closing_since = Some(now_ns);
            }
            self.session = None;
            self.streaming = false;
        }
    }
}
