//! The guest console: the PV console ring (xenconsoled shows it with
//! `xl console` and logs it), with `HYPERVISOR_console_io` as the early and
//! emergency path (release Xen builds drop it for unprivileged domains, so
//! it is only a last resort) and the only path for an initial domain.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use spin::Mutex;
use xen::abi::console::XenconsInterface;
use xen::console::ConsoleRing;

struct Console {
    ring: ConsoleRing,
    page: *mut XenconsInterface,
    port: u32,
}

// SAFETY: the kernel is single-vCPU; the raw page pointer is only used
// under the mutex.
unsafe impl Send for Console {}

static CONSOLE: Mutex<Option<Console>> = Mutex::new(None);
/// Bytes dropped because the backend did not drain the ring in time.
static DROPPED: AtomicU64 = AtomicU64::new(0);
static PORT: AtomicU32 = AtomicU32::new(u32::MAX);

/// Attaches the console ring.
///
/// # Safety
/// `page` must be the mapped console ring page for the domain's lifetime.
pub unsafe fn init(page: *mut XenconsInterface, port: u32) {
    // SAFETY: forwarded from the caller.
    let ring = unsafe { ConsoleRing::new(page) };
    PORT.store(port, Ordering::Relaxed);
    *CONSOLE.lock() = Some(Console { ring, page, port });
}

/// The console ring's event channel, if attached.
pub fn port() -> Option<u32> {
    let p = PORT.load(Ordering::Relaxed);
    (p != u32::MAX).then_some(p)
}

/// Bytes dropped because the console backend stopped draining.
pub fn dropped_bytes() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

impl Console {
    fn unconsumed(&self) -> u32 {
        // SAFETY: out_cons/out_prod are aligned u32 fields of the mapped page,
        // read atomically (the backend writes out_cons concurrently).
        unsafe {
            let cons = AtomicU32::from_ptr(core::ptr::addr_of_mut!((*self.page).out_cons))
                .load(Ordering::Acquire);
            let prod = AtomicU32::from_ptr(core::ptr::addr_of_mut!((*self.page).out_prod))
                .load(Ordering::Acquire);
            prod.wrapping_sub(cons)
        }
    }

    /// Writes everything, waiting (yielding the vCPU to dom0's
    /// xenconsoled) while the ring is full. Gives up after about a second
    /// of a stuck backend and counts what was dropped.
    fn write_all(&mut self, mut bytes: &[u8]) {
        let mut stalls = 0u32;
        while !bytes.is_empty() {
            let n = self.ring.write(bytes);
            bytes = &bytes[n..];
            let _ = xen::hypercall::evtchn_send(self.port);
            if n == 0 {
                stalls += 1;
                if stalls > 20_000 {
                    DROPPED.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    return;
                }
                let _ = xen::hypercall::sched_yield();
            } else {
                stalls = 0;
            }
        }
    }

    fn flush(&mut self) {
        for _ in 0..20_000 {
            if self.unconsumed() == 0 {
                return;
            }
            let _ = xen::hypercall::evtchn_send(self.port);
            let _ = xen::hypercall::sched_yield();
        }
    }
}

/// Writes bytes to the console.
pub fn write_bytes(bytes: &[u8]) {
    let mut guard = CONSOLE.lock();
    match guard.as_mut() {
        Some(c) => c.write_all(bytes),
        None => {
            let _ = xen::hypercall::console_io_write(bytes);
        }
    }
}

/// Waits (bounded) until the backend has read everything written, so the
/// last lines survive a shutdown.
pub fn flush() {
    if let Some(c) = CONSOLE.lock().as_mut() {
        c.flush();
    }
}

/// Writes from a context that may have interrupted a console writer
/// (panic, exception): never waits for the lock.
pub fn write_emergency(bytes: &[u8]) {
    match CONSOLE.try_lock() {
        Some(mut g) => match g.as_mut() {
            Some(c) => {
                c.write_all(bytes);
                c.flush();
            }
            None => {
                let _ = xen::hypercall::console_io_write(bytes);
            }
        },
        None => {
            // SAFETY-free fallback: the holder was interrupted for good.
            let _ = xen::hypercall::console_io_write(bytes);
        }
    }
}

/// `core::fmt::Write` onto the console.
pub struct ConsoleWriter;

impl Write for ConsoleWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_bytes(s.as_bytes());
        Ok(())
    }
}

/// Prints formatted text to the console (the `print!` of moat).
pub fn print(args: fmt::Arguments<'_>) {
    // Format into a line buffer first so one line is one ring write.
    let mut buf = LineBuf {
        buf: [0; 512],
        len: 0,
    };
    let _ = buf.write_fmt(args);
    write_bytes(&buf.buf[..buf.len]);
}

struct LineBuf {
    buf: [u8; 512],
    len: usize,
}

impl Write for LineBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len == self.buf.len() {
                write_bytes(&self.buf);
                self.len = 0;
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        Ok(())
    }
}

/// Prints to the console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::print(format_args!($($arg)*)) };
}

/// Prints a line to the console.
#[macro_export]
macro_rules! println {
    () => { $crate::console::print(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::console::print(format_args!("{}\n", format_args!($($arg)*))) };
}

/// A fixed-size line buffer for formatting without the heap (panic and
/// exception reports). Text beyond its capacity is cut.
pub struct Line {
    buf: [u8; 1024],
    len: usize,
}

impl Default for Line {
    fn default() -> Self {
        Self::new()
    }
}

impl Line {
    /// An empty line.
    pub const fn new() -> Self {
        Self {
            buf: [0; 1024],
            len: 0,
        }
    }
    /// The bytes written so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}
