//! Remote syslog for the hosted services, through `moat-syslog`: the
//! service's messages go to stderr as before and, when a collector is
//! named (`--syslog=udp:ADDRESS[:PORT]` or `--syslog=tcp:ADDRESS[:PORT]`),
//! into a bounded queue that a thread of its own sends from (one UDP
//! datagram per message, or octet-counted frames on a TCP connection that
//! it reopens when it breaks). The service thread only formats and queues:
//! a collector that is slow, gone or unreachable costs dropped messages,
//! counted and reported to the collector once it is back, never a wait.

use std::fmt;
use std::io::Write;
use std::net::{TcpStream, UdpSocket};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use moat_syslog::{Collector, LevelFilter, Origin, RemoteLog, Stats, Timestamp, Transport};

pub use log::Level;

/// Queue bound when none is given: messages.
pub const DEFAULT_QUEUE: usize = 256;
/// Queue bound in bytes.
const QUEUE_BYTES: usize = 256 * 1024;
/// How long the sender waits for a connection or a write before it gives
/// the connection up (the queue meanwhile fills and drops).
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the sender sleeps when nothing waits or the collector is
/// unreachable.
const IDLE: Duration = Duration::from_millis(20);
const RETRY: Duration = Duration::from_millis(500);

/// The remote log's options, from the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// The collector.
    pub collector: Collector,
    /// Records less severe are not sent (`--syslog-level=`, default info).
    pub level: LevelFilter,
    /// Messages the queue holds (`--syslog-queue=`).
    pub queue: usize,
}

/// Takes the `--syslog=`, `--syslog-level=` and `--syslog-queue=` options
/// out of `args`; `Ok(None)` when no collector is named.
pub fn take_options(args: &mut Vec<String>) -> Result<Option<Options>, String> {
    let mut collector = None;
    let mut level = LevelFilter::Info;
    let mut queue = DEFAULT_QUEUE;
    let mut rest = Vec::new();
    for arg in args.drain(..) {
        if let Some(v) = arg.strip_prefix("--syslog=") {
            collector = Some(Collector::parse(v).map_err(|e| format!("--syslog={v}: {e}"))?);
        } else if let Some(v) = arg.strip_prefix("--syslog-level=") {
            level = v.parse().map_err(|_| {
                format!("--syslog-level={v}: expected off, error, warn, info, debug or trace")
            })?;
        } else if let Some(v) = arg.strip_prefix("--syslog-queue=") {
            queue = match v.parse() {
                Ok(n) if n > 0 => n,
                _ => return Err(format!("--syslog-queue={v}: expected a positive number")),
            };
        } else {
            rest.push(arg);
        }
    }
    *args = rest;
    Ok(collector.map(|collector| Options {
        collector,
        level,
        queue,
    }))
}

static REMOTE: OnceLock<Arc<Mutex<RemoteLog>>> = OnceLock::new();

fn now() -> Option<Timestamp> {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
    Some(Timestamp {
        unix_secs: d.as_secs(),
        micros: d.subsec_micros(),
    })
}

/// Starts the remote log for the process (once; later calls are ignored)
/// and its sender thread.
pub fn start(options: Options, app_name: &str) {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let origin = Origin::new(host.trim(), app_name, &std::process::id().to_string());
    let log = Arc::new(Mutex::new(RemoteLog::new(
        options.collector,
        options.level,
        origin,
        options.queue,
        QUEUE_BYTES,
    )));
    if REMOTE.set(log.clone()).is_err() {
        return;
    }
    thread::spawn(move || match options.collector.transport {
        Transport::Udp => send_udp(&log, options.collector),
        Transport::Tcp => send_tcp(&log, options.collector),
    });
}

/// What the remote log did so far (`None` without a collector).
pub fn stats() -> Option<Stats> {
    REMOTE
        .get()
        .map(|r| r.lock().map(|r| r.stats()).unwrap_or_default())
}

/// Logs a message: to stderr, and to the collector when there is one and
/// the level lets it through. `target` becomes the message's MSGID.
pub fn say(level: Level, target: &str, args: fmt::Arguments<'_>) {
    let text = args.to_string();
    eprintln!("{text}");
    if let Some(remote) = REMOTE.get() {
        if let Ok(mut r) = remote.lock() {
            r.log(level, now(), target, &text);
        }
    }
}

fn send_udp(log: &Mutex<RemoteLog>, collector: Collector) {
    let bind = if collector.addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let socket = loop {
        match UdpSocket::bind(bind) {
            Ok(s) => break s,
            Err(_) => thread::sleep(RETRY),
        }
    };
    loop {
        let next = log.lock().ok().and_then(|mut r| r.next_datagram(now()));
        match next {
            // A datagram the network refuses (no route yet) is lost, as a
            // datagram may be; the queue goes on.
            Some(m) => {
                let _ = socket.send_to(&m, collector.addr);
            }
            None => thread::sleep(IDLE),
        }
    }
}

fn send_tcp(log: &Mutex<RemoteLog>, collector: Collector) {
    let mut stream: Option<TcpStream> = None;
    loop {
        let Some(s) = stream.as_mut() else {
            match TcpStream::connect_timeout(&collector.addr, IO_TIMEOUT) {
                Ok(s) => {
                    let _ = s.set_write_timeout(Some(IO_TIMEOUT));
                    let _ = s.set_nodelay(true);
                    stream = Some(s);
                }
                Err(_) => thread::sleep(RETRY),
            }
            continue;
        };
        // Copy what is pending, then write without the lock held: the
        // service thread never waits for the network.
        let pending = match log.lock() {
            Ok(mut r) => r.stream_pending(now()).to_vec(),
            Err(_) => return,
        };
        if pending.is_empty() {
            thread::sleep(IDLE);
            continue;
        }
        match s.write(&pending) {
            Ok(n) if n > 0 => {
                if let Ok(mut r) = log.lock() {
                    r.stream_sent(n);
                }
            }
            _ => {
                if let Ok(mut r) = log.lock() {
                    r.stream_reset();
                }
                stream = None;
                thread::sleep(RETRY);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_taken_out_of_the_arguments() {
        let mut args: Vec<String> = [
            "prog",
            "--syslog=tcp:127.0.0.1:6514",
            "conf",
            "--syslog-level=debug",
            "--syslog-queue=8",
            "stats",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let o = take_options(&mut args).unwrap().unwrap();
        assert_eq!(args, ["prog", "conf", "stats"]);
        assert_eq!(o.collector.transport, Transport::Tcp);
        assert_eq!(o.level, LevelFilter::Debug);
        assert_eq!(o.queue, 8);
        let mut none: Vec<String> = vec!["prog".into(), "conf".into()];
        assert_eq!(take_options(&mut none), Ok(None));
        for bad in [
            "--syslog=udp:nowhere",
            "--syslog-level=loud",
            "--syslog-queue=0",
        ] {
            let mut args = vec!["prog".to_string(), bad.to_string()];
            assert!(take_options(&mut args).is_err(), "{bad}");
        }
    }
}
