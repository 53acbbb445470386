//! Remote syslog for moat's images, without I/O: the messages (RFC 5424),
//! their framing on a TCP stream (RFC 6587 octet counting) and a bounded
//! queue between the logger and whatever sends them.
//!
//! The logging path must never wait for the network: a record is formatted
//! and queued, or, when the queue is full (the collector is slow, gone, or
//! was never reachable), dropped and counted. The sender (an image's
//! network stack, or a socket on the hosted platform) takes messages from
//! the queue when it can: [`RemoteLog::next_datagram`] for UDP (one message
//! per datagram, RFC 5426), [`RemoteLog::stream_pending`] /
//! [`RemoteLog::stream_sent`] for TCP (octet-counted frames; a connection
//! that breaks mid-frame resends that frame whole on the next one,
//! [`RemoteLog::stream_reset`]). Drops are reported to the collector itself
//! as soon as there is room again: one warning message saying how many were
//! lost.
//!
//! The collector is named on the boot command line or in the
//! configuration as `udp:ADDRESS[:PORT]` or `tcp:ADDRESS[:PORT]` (an IPv6
//! address in brackets; port 514 when none is given): [`Collector::parse`].
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

extern crate alloc;

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::net::{IpAddr, Ipv6Addr, SocketAddr};

pub use log::LevelFilter;

/// The port used when a collector is named without one (syslog's UDP
/// port; rsyslog's and syslog-ng's TCP listeners are commonly set to it
/// too).
pub const DEFAULT_PORT: u16 = 514;

/// The default bound on one message (header and text), in bytes: it fits
/// one Ethernet frame with IPv6 and UDP headers, so that an image's stack
/// never has to fragment it. Longer texts are cut at a character boundary.
pub const DEFAULT_MAX_MESSAGE: usize = 1024;

/// How messages reach the collector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// One message per UDP datagram (RFC 5426).
    Udp,
    /// A TCP stream of octet-counted messages (RFC 6587, 3.4.1).
    Tcp,
}

/// A collector: where the messages go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Collector {
    /// UDP or TCP.
    pub transport: Transport,
    /// The collector's address and port.
    pub addr: SocketAddr,
}

/// Why a collector's name did not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CollectorError {
    /// Not `udp:` or `tcp:` before the address.
    Transport,
    /// The address is not an IPv4 address or a bracketed IPv6 address.
    Address,
    /// The port is not a number in 1..=65535.
    Port,
}

impl fmt::Display for CollectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CollectorError::Transport => "expected udp:ADDRESS[:PORT] or tcp:ADDRESS[:PORT]",
            CollectorError::Address => "not an IPv4 address or a bracketed IPv6 address",
            CollectorError::Port => "the port must be a number from 1 to 65535",
        })
    }
}

impl Collector {
    /// Parses `udp:ADDRESS[:PORT]` or `tcp:ADDRESS[:PORT]`, e.g.
    /// `udp:10.137.0.1`, `tcp:192.0.2.7:601`, `tcp:[2001:db8::1]:6514`.
    pub fn parse(s: &str) -> Result<Collector, CollectorError> {
        let (transport, rest) = if let Some(rest) = s.strip_prefix("udp:") {
            (Transport::Udp, rest)
        } else if let Some(rest) = s.strip_prefix("tcp:") {
            (Transport::Tcp, rest)
        } else {
            return Err(CollectorError::Transport);
        };
        let (ip, port) = if let Some(rest) = rest.strip_prefix('[') {
            let (addr, after) = rest.split_once(']').ok_or(CollectorError::Address)?;
            let ip: Ipv6Addr = addr.parse().map_err(|_| CollectorError::Address)?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or(CollectorError::Port)?),
            };
            (IpAddr::V6(ip), port)
        } else {
            let (addr, port) = match rest.split_once(':') {
                Some((a, p)) => (a, Some(p)),
                None => (rest, None),
            };
            let ip = addr
                .parse::<core::net::Ipv4Addr>()
                .map_err(|_| CollectorError::Address)?;
            (IpAddr::V4(ip), port)
        };
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(CollectorError::Port),
                Ok(p) => p,
            },
        };
        Ok(Collector {
            transport,
            addr: SocketAddr::new(ip, port),
        })
    }
}

/// A syslog severity (RFC 5424, 6.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Severity {
    /// 0: the system is unusable.
    Emergency = 0,
    /// 1: action must be taken immediately.
    Alert = 1,
    /// 2: critical conditions.
    Critical = 2,
    /// 3: error conditions.
    Error = 3,
    /// 4: warning conditions.
    Warning = 4,
    /// 5: normal but significant.
    Notice = 5,
    /// 6: informational.
    Informational = 6,
    /// 7: debug-level messages.
    Debug = 7,
}

impl From<log::Level> for Severity {
    fn from(level: log::Level) -> Severity {
        match level {
            log::Level::Error => Severity::Error,
            log::Level::Warn => Severity::Warning,
            log::Level::Info => Severity::Informational,
            log::Level::Debug | log::Level::Trace => Severity::Debug,
        }
    }
}

/// The facility of every message (RFC 5424, 6.2.1): `daemon` (3).
pub const FACILITY_DAEMON: u8 = 3;

/// A UTC time for the TIMESTAMP field: seconds since 1970 and
/// microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timestamp {
    /// Seconds since 1970-01-01T00:00:00Z.
    pub unix_secs: u64,
    /// Microseconds within the second (values above 999999 are clamped).
    pub micros: u32,
}

impl fmt::Display for Timestamp {
    /// RFC 3339 as RFC 5424 restricts it: `2026-12-07T23:45:01.123456Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = self.unix_secs / 86_400;
        let rem = self.unix_secs % 86_400;
        let (y, m, d) = civil_from_days(days);
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
            y,
            m,
            d,
            rem / 3600,
            (rem / 60) % 60,
            rem % 60,
            self.micros.min(999_999)
        )
    }
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (the
/// well-known era-based conversion).
fn civil_from_days(days: u64) -> (u64, u32, u32) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// A header field as RFC 5424 allows it: printable US-ASCII (33..=126),
/// at most `max` characters, `-` (the NILVALUE) when empty. Other
/// characters become `_`.
pub fn header_field(value: &str, max: usize) -> String {
    let s: String = value
        .chars()
        .take(max)
        .map(|c| if ('!'..='~').contains(&c) { c } else { '_' })
        .collect();
    if s.is_empty() {
        String::from("-")
    } else {
        s
    }
}

/// Who sends: the header fields that are the same in every message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    hostname: String,
    app_name: String,
    procid: String,
}

impl Origin {
    /// The HOSTNAME (e.g. the domain's name), APP-NAME (the image) and
    /// PROCID (e.g. the domain id) fields, made valid ([`header_field`]).
    pub fn new(hostname: &str, app_name: &str, procid: &str) -> Origin {
        Origin {
            hostname: header_field(hostname, 255),
            app_name: header_field(app_name, 48),
            procid: header_field(procid, 128),
        }
    }
}

/// Formats one RFC 5424 message:
/// `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG`, with no
/// structured data, MSGID from the record's target ([`header_field`], 32
/// characters), the text cut at a character boundary so that the whole
/// message is at most `max` bytes (but never shorter than its header).
/// Returns the message and whether the text was cut.
pub fn format_message(
    origin: &Origin,
    severity: Severity,
    time: Option<Timestamp>,
    msgid: &str,
    text: &str,
    max: usize,
) -> (Vec<u8>, bool) {
    let pri = u16::from(FACILITY_DAEMON) * 8 + severity as u16;
    let time = match time {
        Some(t) => format!("{t}"),
        None => String::from("-"),
    };
    let header = format!(
        "<{pri}>1 {time} {} {} {} {} - ",
        origin.hostname,
        origin.app_name,
        origin.procid,
        header_field(msgid, 32)
    );
    let text = text.trim_end_matches(['\n', '\r']);
    let room = max.saturating_sub(header.len());
    let mut cut = text.len().min(room);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = Vec::with_capacity(header.len() + cut);
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(text.as_bytes().get(..cut).unwrap_or_default());
    (out, cut < text.len())
}

/// A bounded first-in first-out queue of messages, by count and by bytes.
#[derive(Debug)]
pub struct Queue {
    messages: VecDeque<Vec<u8>>,
    bytes: usize,
    max_messages: usize,
    max_bytes: usize,
}

impl Queue {
    /// A queue holding at most `max_messages` messages and `max_bytes`
    /// bytes of them.
    pub fn new(max_messages: usize, max_bytes: usize) -> Queue {
        Queue {
            messages: VecDeque::new(),
            bytes: 0,
            max_messages,
            max_bytes,
        }
    }

    /// Adds a message at the back; gives it back when it does not fit.
    pub fn push(&mut self, message: Vec<u8>) -> Result<(), Vec<u8>> {
        if self.messages.len() >= self.max_messages
            || self.bytes.saturating_add(message.len()) > self.max_bytes
        {
            return Err(message);
        }
        self.bytes += message.len();
        self.messages.push_back(message);
        Ok(())
    }

    /// Takes the oldest message.
    pub fn pop(&mut self) -> Option<Vec<u8>> {
        let m = self.messages.pop_front()?;
        self.bytes -= m.len();
        Some(m)
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether no message waits.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Bytes of the messages waiting.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// What happened to the records given to a [`RemoteLog`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages queued.
    pub queued: u64,
    /// Messages handed to the sender (datagrams taken, or frames whose
    /// last byte was written).
    pub sent: u64,
    /// Records dropped because the queue was full.
    pub dropped: u64,
    /// Of those, how many a drop notice has already reported to the
    /// collector.
    pub dropped_reported: u64,
    /// Records below the level, not queued.
    pub filtered: u64,
    /// Messages whose text was cut to the size bound.
    pub truncated: u64,
    /// Frames resent whole because the TCP connection broke under them.
    pub resent: u64,
}

/// The remote log: a collector, a level, the origin, the queue, and the
/// TCP frame in flight.
#[derive(Debug)]
pub struct RemoteLog {
    collector: Collector,
    level: LevelFilter,
    origin: Origin,
    max_message: usize,
    queue: Queue,
    stats: Stats,
    /// The octet-counted frame being written on the stream, and how much of
    /// it was written.
    frame: Option<(Vec<u8>, usize)>,
}

impl RemoteLog {
    /// A remote log to `collector` of the records at `level` or more
    /// severe, from `origin`, queueing at most `max_messages` messages and
    /// `max_bytes` bytes while the sender cannot keep up.
    pub fn new(
        collector: Collector,
        level: LevelFilter,
        origin: Origin,
        max_messages: usize,
        max_bytes: usize,
    ) -> RemoteLog {
        RemoteLog {
            collector,
            level,
            origin,
            max_message: DEFAULT_MAX_MESSAGE,
            queue: Queue::new(max_messages, max_bytes),
            stats: Stats::default(),
            frame: None,
        }
    }

    /// Sets the bound on one message's size (default
    /// [`DEFAULT_MAX_MESSAGE`]).
    pub fn set_max_message(&mut self, bytes: usize) {
        self.max_message = bytes;
    }

    /// The collector.
    pub fn collector(&self) -> Collector {
        self.collector
    }

    /// The level: records less severe are not sent.
    pub fn level(&self) -> LevelFilter {
        self.level
    }

    /// What happened so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Messages waiting to be sent.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Whether a record at `level` would be sent.
    pub fn enabled(&self, level: log::Level) -> bool {
        level <= self.level
    }

    /// Formats and queues a record; never waits. Returns whether it was
    /// queued (not filtered, not dropped).
    pub fn log(
        &mut self,
        level: log::Level,
        time: Option<Timestamp>,
        target: &str,
        text: &str,
    ) -> bool {
        if !self.enabled(level) {
            self.stats.filtered += 1;
            return false;
        }
        let (message, cut) = format_message(
            &self.origin,
            level.into(),
            time,
            target,
            text,
            self.max_message,
        );
        if cut {
            self.stats.truncated += 1;
        }
        match self.queue.push(message) {
            Ok(()) => {
                self.stats.queued += 1;
                true
            }
            Err(_) => {
                self.stats.dropped += 1;
                false
            }
        }
    }

    /// The warning that reports drops not yet reported, if any.
    fn drop_notice(&mut self, time: Option<Timestamp>) -> Option<Vec<u8>> {
        let unreported = self.stats.dropped - self.stats.dropped_reported;
        if unreported == 0 {
            return None;
        }
        self.stats.dropped_reported = self.stats.dropped;
        let text =
            format!("{unreported} log messages dropped: the queue to this collector was full");
        Some(
            format_message(
                &self.origin,
                Severity::Warning,
                time,
                "syslog",
                &text,
                self.max_message,
            )
            .0,
        )
    }

    /// The next message to send as one UDP datagram: a drop notice first
    /// when messages were dropped since the last one, then the queue in
    /// order. `time` stamps the notice.
    pub fn next_datagram(&mut self, time: Option<Timestamp>) -> Option<Vec<u8>> {
        // The notice goes out once the queue has drained to where the drops
        // happened, so that it sits between the messages before and after
        // the gap only approximately; what matters is that it is sent.
        let m = match self.queue.pop() {
            Some(m) => m,
            None => self.drop_notice(time)?,
        };
        self.stats.sent += 1;
        Some(m)
    }

    /// The bytes to write next on the TCP stream: the rest of the frame in
    /// flight, or the next message framed as `LENGTH SP MESSAGE`
    /// (RFC 6587 octet counting). Empty when nothing waits. Report what
    /// the stream took with [`RemoteLog::stream_sent`].
    pub fn stream_pending(&mut self, time: Option<Timestamp>) -> &[u8] {
        if self.frame.is_none() {
            let next = match self.queue.pop() {
                Some(m) => Some(m),
                None => self.drop_notice(time),
            };
            if let Some(m) = next {
                let mut frame = Vec::with_capacity(m.len() + 6);
                frame.extend_from_slice(format!("{} ", m.len()).as_bytes());
                frame.extend_from_slice(&m);
                self.frame = Some((frame, 0));
            }
        }
        match &self.frame {
            Some((frame, done)) => frame.get(*done..).unwrap_or_default(),
            None => &[],
        }
    }

    /// `n` bytes of [`RemoteLog::stream_pending`]'s were written.
    pub fn stream_sent(&mut self, n: usize) {
        if let Some((frame, done)) = &mut self.frame {
            *done = (*done + n).min(frame.len());
            if *done == frame.len() {
                self.frame = None;
                self.stats.sent += 1;
            }
        }
    }

    /// The TCP connection broke (or was replaced): a frame partly written
    /// on it is written again whole on the next connection, since the
    /// collector discards a partial frame.
    pub fn stream_reset(&mut self) {
        if let Some((_, done)) = &mut self.frame {
            if *done > 0 {
                *done = 0;
                self.stats.resent += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests;
