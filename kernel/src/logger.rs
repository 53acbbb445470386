//! The `log` facade onto the console: `[seconds.micros] LEVEL message`,
//! with the PV clock as the time base.

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
        metadata.level() as usize <= LEVEL.load(Ordering::Relaxed)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let t = now_ns();
        crate::console::print(format_args!(
            "[{:5}.{:06}] {:<5} {}\n",
            t / 1_000_000_000,
            (t / 1000) % 1_000_000,
            record.level(),
            record.args()
        ));
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

/// Changes the log level.
pub fn set_level(level: LevelFilter) {
    LEVEL.store(level as usize, Ordering::Relaxed);
    log::set_max_level(level);
}
