//! The services netdemo offers, as smoltcp sockets driven by [`Apps::run`]:
//!
//! | port | proto | what |
//! |------|-------|------|
//! | 7    | TCP   | echo (two connections at a time) |
//! | 7    | UDP   | echo |
//! | 9    | UDP   | discard, counted (packets/s benchmark) |
//! | 5001 | TCP   | sink: reads until the peer closes, reports bytes and CRC-32 |
//! | 5002 | TCP   | source: reads a decimal byte count and a newline, sends that many bytes of [`Pattern`] and closes, reports their CRC-32 |
//!
//! Everything here is portable: the image runs it over netfront, the host
//! tests over smoltcp's loopback device.

use alloc::vec;
use alloc::vec::Vec;
use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::{tcp, udp};

use netdemo::stream::{Crc32, Pattern};

/// TCP echo port (also UDP echo).
pub const ECHO_PORT: u16 = 7;
/// UDP discard port.
pub const DISCARD_PORT: u16 = 9;
/// TCP sink port.
pub const SINK_PORT: u16 = 5001;
/// TCP source port.
pub const SOURCE_PORT: u16 = 5002;
/// Seed of the source's byte stream.
pub const SOURCE_SEED: u64 = 0x6d6f_6174;
/// Longest accepted length line of the source (digits and newline).
const MAX_LENGTH_LINE: usize = 24;

/// A finished transfer, for the console.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

/// The sockets of every service and their progress.
pub struct Apps {
    tcp_echo: Vec<SocketHandle>,
    udp_echo: SocketHandle,
    udp_discard: SocketHandle,
    sinks: Vec<Sink>,
    sources: Vec<Source>,
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
        let mut apps = Self {
            tcp_echo,
            udp_echo,
            udp_discard,
            sinks,
            sources,
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
