//! The `log` facade onto the console: `[seconds.micros] LEVEL message`,
//! with the PV clock as the time base; with the `syslog` feature, also
//! into the queue of a remote syslog collector (`syslog=` on the command
//! line), which the image's network stack drains ([`with_remote`]). Queueing
//! never waits: a full queue drops and counts (`moat_syslog::RemoteLog`).

use core::sync::atomic::{AtomicUsize, Ordering};
use log::{LevelFilter, Log, Metadata, Record};

struct ConsoleLogger;

static LOGGER: ConsoleLogger = ConsoleLogger;
static LEVEL: AtomicUsize = AtomicUsize::new(LevelFilter::Info as usize);

fn now_ns() -> u64 {
    #[cfg(target_os = "none")]
    if let Some(p) = crate::boot::platform() {
        return xen::time::system_time_ns(&p.shared.vcpu_time(0), xen::time::rdtsc());
    }
    0
}

impl Log for ConsoleLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() as usize <= LEVEL.load(Ordering::Relaxed) || remote_enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if record.level() as usize <= LEVEL.load(Ordering::Relaxed) {
            let t = now_ns();
            crate::console::print(format_args!(
                "[{:5}.{:06}] {:<5} {}\n",
                t / 1_000_000_000,
                (t / 1000) % 1_000_000,
                record.level(),
                record.args()
            ));
        }
        #[cfg(feature = "syslog")]
        remote::log(record);
    }

    fn flush(&self) {
        crate::console::flush();
    }
}

/// Installs the console logger (idempotent).
pub fn init() {
    let _ = log::set_logger(&LOGGER);
    let level = match LEVEL.load(Ordering::Relaxed) {
        0 => LevelFilter::Off,
        1 => LevelFilter::Error,
        2 => LevelFilter::Warn,
        3 => LevelFilter::Info,
        4 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    };
    set_level(level);
}

/// Changes the console's log level.
pub fn set_level(level: LevelFilter) {
    LEVEL.store(level as usize, Ordering::Relaxed);
    update_max_level();
}

/// The `log` crate's filter: the more verbose of the console's level and
/// the collector's.
fn update_max_level() {
    let console = LEVEL.load(Ordering::Relaxed);
    #[cfg(feature = "syslog")]
    let console = console.max(remote::LEVEL.load(Ordering::Relaxed));
    log::set_max_level(match console {
        0 => LevelFilter::Off,
        1 => LevelFilter::Error,
        2 => LevelFilter::Warn,
        3 => LevelFilter::Info,
        4 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    });
}

#[cfg(feature = "syslog")]
fn remote_enabled(metadata: &Metadata<'_>) -> bool {
    metadata.level() as usize <= remote::LEVEL.load(Ordering::Relaxed)
}

#[cfg(not(feature = "syslog"))]
fn remote_enabled(_: &Metadata<'_>) -> bool {
    false
}

#[cfg(feature = "syslog")]
pub use remote::{busy_drops, remote_only, start_remote, wallclock, with_remote, RemoteLog};

#[cfg(feature = "syslog")]
mod remote {
    use alloc::string::String;
    use core::fmt::Write;
    use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use log::{LevelFilter, Record};
    pub use moat_syslog::RemoteLog;
    use moat_syslog::{Collector, Origin, Timestamp};

    /// The collector's level (0, off, until [`start_remote`]).
    pub(super) static LEVEL: AtomicUsize = AtomicUsize::new(0);
    static REMOTE: spin::Mutex<Option<RemoteLog>> = spin::Mutex::new(None);
    /// Records lost because the queue was in use (a record logged while
    /// the sender held it): never waited for.
    static BUSY: AtomicU64 = AtomicU64::new(0);
    /// Messages the queue holds, and their bytes.
    const QUEUE: usize = 128;
    const QUEUE_BYTES: usize = 64 * 1024;

    /// The wall clock for the messages' TIMESTAMP: Xen's wallclock plus
    /// the system time (None before the platform is up).
    pub fn wallclock() -> Option<Timestamp> {
        #[cfg(target_os = "none")]
        if let Some(p) = crate::boot::platform() {
            let now = super::now_ns();
            let (secs, nanos) = xen::time::wallclock_at(p.shared.wallclock_base(), now);
            return Some(Timestamp {
                unix_secs: secs,
                micros: nanos / 1000,
            });
        }
        None
    }

    /// Starts queueing records at `level` or above for `collector`, as
    /// `origin` (HOSTNAME, APP-NAME, PROCID of every message).
    pub fn start_remote(collector: Collector, level: LevelFilter, origin: Origin) {
        *REMOTE.lock() = Some(RemoteLog::new(collector, level, origin, QUEUE, QUEUE_BYTES));
        LEVEL.store(level as usize, Ordering::Relaxed);
        super::update_max_level();
    }

    /// Runs `f` on the remote log (the sender's side: take datagrams or
    /// stream bytes); None when no collector was named or the log is in use.
    pub fn with_remote<R>(f: impl FnOnce(&mut RemoteLog) -> R) -> Option<R> {
        let mut guard = REMOTE.try_lock()?;
        guard.as_mut().map(f)
    }

    /// Queues a message for the collector alone (a line the service
    /// already printed on the console its own way); nothing without a
    /// collector or below its level.
    pub fn remote_only(level: log::Level, target: &str, args: core::fmt::Arguments<'_>) {
        if level as usize > LEVEL.load(Ordering::Relaxed) {
            return;
        }
        let Some(mut guard) = REMOTE.try_lock() else {
            BUSY.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if let Some(r) = guard.as_mut() {
            let mut text = String::new();
            let _ = write!(text, "{args}");
            r.log(level, wallclock(), target, &text);
        }
    }

    /// Records lost because the queue was in use when they were logged.
    pub fn busy_drops() -> u64 {
        BUSY.load(Ordering::Relaxed)
    }

    pub(super) fn log(record: &Record<'_>) {
        if record.level() as usize > LEVEL.load(Ordering::Relaxed) {
            return;
        }
        let Some(mut guard) = REMOTE.try_lock() else {
            BUSY.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if let Some(r) = guard.as_mut() {
            let mut text = String::new();
            let _ = write!(text, "{}", record.args());
            r.log(record.level(), wallclock(), record.target(), &text);
        }
    }
}
