//! The portable boot flow on Xen: from the arch entry's [`BootInfo`] to a
//! running service. Memory first (frames, then the heap), then the console
//! and logging, the command line, the grant table, the timer, xenstore, and
//! finally the service's main future on the executor. When it returns, its
//! [`Exit`] becomes the domain's shutdown reason.

use alloc::boxed::Box;
use core::fmt;
use core::future::Future;
use core::pin::Pin;
use core::sync::atomic::{AtomicU64, Ordering};
use core::task::{Context, Poll};

use spin::{Mutex, Once};
use xen::abi::console::XenconsInterface;
use xen::abi::sched::{SHUTDOWN_CRASH, SHUTDOWN_POWEROFF, SHUTDOWN_REBOOT};
use xen::abi::xs_wire::XenstoreDomainInterface;
use xen::abi::Port;
use xen::grant::GrantTable;
use xen::shared_info::SharedInfoPage;
use xen::xenstore::{XenStore, XsEvents, XsRing};

use crate::arch::{self, GuestType};
use crate::cmdline::{CmdlineErrors, KernelSettings, Settings};
use crate::executor::{Event, Executor, Handle, Idle};
use crate::frames::{FrameAllocator, Pfn};
use crate::heap::FramesGrower;
pub use crate::regions::RegionList;

/// What the arch entry found, handed to [`start`].
pub struct BootInfo {
    /// PV or PVH.
    pub guest: GuestType,
    /// The `extra=` command line, as passed (see [`save_cmdline`]).
    pub cmdline: &'static [u8],
    /// Free RAM, as pfn ranges (image and boot structures already removed).
    pub ram: RegionList,
    /// Where the memory map came from.
    pub memory_source: &'static str,
    /// Total pages of the domain.
    pub total_pages: u64,
    /// The mapped shared info page.
    pub shared: SharedInfoPage,
    /// The console ring, if the domain has one.
    pub console: Option<(*mut XenconsInterface, Port)>,
    /// The xenstore ring, if the domain has one.
    pub store: Option<(*mut XenstoreDomainInterface, Port)>,
    /// Whether this is the initial (hardware) domain.
    pub initial_domain: bool,
    /// Random bytes the toolstack gave the domain (arm32: the device
    /// tree's `/chosen/rng-seed`); empty where there are none.
    pub entropy_seed: &'static [u8],
}

/// How the service ended: the domain's shutdown reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// `SHUTDOWN_poweroff`.
    Poweroff,
    /// `SHUTDOWN_reboot`.
    Reboot,
    /// `SHUTDOWN_crash`.
    Crash,
}

/// What the kernel knows about itself, for services and diagnostics.
pub struct Platform {
    /// PV or PVH.
    pub guest: GuestType,
    /// The command line, for display (cut at the first invalid UTF-8).
    pub cmdline: &'static str,
    /// The command line as Xen passed it.
    pub cmdline_bytes: &'static [u8],
    /// Where the memory map came from.
    pub memory_source: &'static str,
    /// Total pages of the domain.
    pub total_pages: u64,
    /// Free RAM at boot, as pfn ranges.
    pub ram: RegionList,
    /// The shared info page.
    pub shared: SharedInfoPage,
    /// The frame allocator.
    pub frames: &'static Mutex<FrameAllocator<'static>>,
    /// This domain's grant table.
    pub grants: Mutex<GrantTable>,
    /// The port `VIRQ_TIMER` is bound to.
    pub timer_port: Port,
    /// TSC at the first instruction.
    pub entry_tsc: u64,
    /// TSC when the service was about to start.
    pub ready_tsc: AtomicU64,
}

/// The environment a service's main function gets.
pub struct Env {
    /// The kernel's state.
    pub platform: &'static Platform,
    /// The executor (spawn tasks, sleep, wait for events).
    pub executor: Handle,
    /// The xenstore client (None for a domain without xenstore).
    pub xenstore: Option<XenStore<XsRing<XsPort>>>,
}

impl Env {
    /// Parses the command line for the kernel's keys and the service's
    /// (`service`), applies the kernel's (`loglevel`), and logs every
    /// error. A service should refuse to start on `Err`.
    pub fn configure(&self, service: &mut dyn Settings) -> Result<(), CmdlineErrors> {
        let mut kernel = KernelSettings::default();
        let result =
            crate::cmdline::parse_bytes(self.platform.cmdline_bytes, &mut [&mut kernel, service]);
        crate::logger::set_level(kernel.loglevel.to_level_filter());
        #[cfg(feature = "syslog")]
        if let Some(collector) = kernel.syslog {
            let level = kernel.syslog_level.unwrap_or(kernel.loglevel);
            crate::logger::start_remote(
                collector,
                level.to_level_filter(),
                moat_syslog::Origin::new("-", "moat", "-"),
            );
        }
        if let Err(errors) = &result {
            for e in &errors.0 {
                log::error!("command line: {e}");
            }
        }
        result
    }
}

/// A service's entry point, as registered by [`crate::service!`].
pub type ServiceMain = fn(Env) -> Pin<Box<dyn Future<Output = Exit>>>;

extern "Rust" {
    fn __moat_service_main(env: Env) -> Pin<Box<dyn Future<Output = Exit>>>;
}

/// The kernel's clock: the PV clock made monotonic (see
/// [`xen::time::Monotonic`]).
pub static CLOCK: xen::time::Monotonic = xen::time::Monotonic::new();

/// Xen system time now, in ns, never behind an earlier reading.
pub fn system_time_ns(shared: &SharedInfoPage) -> u64 {
    CLOCK.read(xen::time::system_time_ns(
        &shared.vcpu_time(0),
        xen::time::rdtsc(),
    ))
}

static PLATFORM: Once<Platform> = Once::new();
static FRAMES: Once<Mutex<FrameAllocator<'static>>> = Once::new();
/// Maps a run of frames for the heap.
type MapRun = fn(Pfn, u64) -> Option<usize>;
static GROWER: Once<FramesGrower<MapRun>> = Once::new();

/// The platform, once boot has set it up.
pub fn platform() -> Option<&'static Platform> {
    PLATFORM.get()
}

static mut CMDLINE: [u8; 1024] = [0; 1024];

/// Copies the boot command line (NUL-terminated, at most 1024 bytes) into
/// kernel memory; the parser checks it (UTF-8, length, syntax).
pub fn save_cmdline(raw: &[u8]) -> &'static [u8] {
    let len = raw
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(raw.len())
        .min(1024);
    // SAFETY: called once during single-threaded boot, before anything reads CMDLINE.
    let buf = unsafe { &mut *core::ptr::addr_of_mut!(CMDLINE) };
    buf[..len].copy_from_slice(&raw[..len]);
    &buf[..len]
}

/// The longest valid UTF-8 prefix, for display.
fn display_prefix(bytes: &'static [u8]) -> &'static str {
    match core::str::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => core::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or(""),
    }
}

/// A fatal error before the console exists: Xen's console (visible for an
/// initial domain or a debug Xen), then crash the domain.
pub fn early_fatal(args: fmt::Arguments<'_>) -> ! {
    crate::console::print(format_args!("moat: fatal: {args}\n"));
    shutdown(Exit::Crash)
}

/// A fatal error: report on the console and crash the domain.
pub fn fatal(args: fmt::Arguments<'_>) -> ! {
    let mut line = crate::console::Line::new();
    let _ = fmt::write(&mut line, format_args!("moat: fatal: {args}\n"));
    crate::console::write_emergency(line.as_bytes());
    shutdown(Exit::Crash)
}

/// Shuts the domain down with `exit`'s reason. Never returns.
pub fn shutdown(exit: Exit) -> ! {
    crate::console::flush();
    let reason = match exit {
        Exit::Poweroff => SHUTDOWN_POWEROFF,
        Exit::Reboot => SHUTDOWN_REBOOT,
        Exit::Crash => SHUTDOWN_CRASH,
    };
    loop {
        let _ = xen::hypercall::sched_shutdown(reason);
        // Xen refused (it never should): poweroff is the one to retry with.
        let _ = xen::hypercall::sched_shutdown(SHUTDOWN_CRASH);
        let _ = xen::hypercall::sched_block();
    }
}

fn identity(first: Pfn, _count: u64) -> Option<usize> {
    // Both guest types map every RAM frame at address pfn << 12.
    usize::try_from(first.addr()).ok()
}

fn init_memory(ram: &RegionList) -> &'static Mutex<FrameAllocator<'static>> {
    let usable = ram.as_slice();
    let Some(storage) = FrameAllocator::place_storage(usable, &[]) else {
        early_fatal(format_args!("no room for the frame allocator's bitmap"));
    };
    let words = FrameAllocator::storage_words(usable);
    // SAFETY: `storage` is a run of free RAM frames, mapped at pfn << 12,
    // that the allocator will never hand out (it is reserved below); it
    // holds at least `words` u64s and lives for the rest of the run.
    let slice =
        unsafe { core::slice::from_raw_parts_mut((storage.start << 12) as *mut u64, words) };
    let frames = match FrameAllocator::new(slice, usable, core::slice::from_ref(&storage)) {
        Ok(f) => f,
        Err(e) => early_fatal(format_args!("frame allocator: {e}")),
    };
    let frames = FRAMES.call_once(|| Mutex::new(frames));
    let grower = GROWER.call_once(|| FramesGrower::new(frames, identity as MapRun));
    crate::HEAP.set_grower(grower);
    frames
}

/// The executor's view of Xen: PV clock, event scan, timer and block.
struct XenIdle {
    shared: SharedInfoPage,
    last_ns: u64,
}

impl XenIdle {
    fn clock(&self) -> u64 {
        system_time_ns(&self.shared)
    }
}

impl Idle for XenIdle {
    fn now_ns(&self) -> u64 {
        // The PV clock is monotonic per vCPU; the max() guards against a
        // record update landing between TSC read and record read.
        self.clock().max(self.last_ns)
    }

    fn take_pending(&mut self, wake: &mut dyn FnMut(u32)) {
        self.last_ns = self.now_ns();
        self.shared.take_pending(0, wake);
    }

    fn block(&mut self, deadline_ns: Option<u64>) {
        // Arm has no VCPUOP_set_singleshot_timer: the virtual timer.
        #[cfg(target_arch = "arm")]
        arch::set_timer(deadline_ns);
        #[cfg(not(target_arch = "arm"))]
        match deadline_ns {
            Some(d) => {
                let _ = xen::hypercall::set_singleshot_timer(0, d);
            }
            None => {
                let _ = xen::hypercall::stop_singleshot_timer(0);
            }
        }
        arch::idle_block(&self.shared);
    }
}

/// Xenstore's event channel as the executor sees it.
pub struct XsPort {
    port: Port,
    handle: Handle,
    event: Event,
}

impl XsEvents for XsPort {
    fn notify(&mut self) {
        let _ = xen::hypercall::evtchn_send(self.port);
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match Pin::new(&mut self.event).poll(cx) {
            Poll::Ready(()) => {
                // Arm for the next notification before the caller re-reads
                // the ring, so none is missed in between.
                self.event = self.handle.event(self.port);
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The boot flow. Never returns.
pub fn start(info: BootInfo) -> ! {
    arch::paint_stack();
    if let Some((page, port)) = info.console {
        // SAFETY: the arch code mapped the console page for good.
        unsafe { crate::console::init(page, port) };
    }
    let frames = init_memory(&info.ram);
    crate::logger::init();
    // Read outside the log statement: formatting may allocate, and the heap
    // grows from the frame allocator, whose lock must not be held then.
    let free_frames = frames.lock().free_count();
    let (maj, min, extra) = xen::hypercall::xen_version().unwrap_or((0, 0, [0; 16]));
    let extra_len = extra.iter().position(|&b| b == 0).unwrap_or(16);
    log::info!(
        "moat {} ({}) on Xen {}.{}{}: {} KiB, {} free in {} ranges ({})",
        env!("CARGO_PKG_VERSION"),
        info.guest.name(),
        maj,
        min,
        core::str::from_utf8(&extra[..extra_len]).unwrap_or(""),
        info.total_pages * 4,
        free_frames * 4,
        info.ram.as_slice().len(),
        info.memory_source
    );
    log::info!(
        "build: commit {}; {}; {}",
        crate::buildinfo::COMMIT,
        crate::buildinfo::RUSTC,
        crate::buildinfo::CARGO
    );

    let source = crate::entropy::init(info.entropy_seed);
    if source.is_weak() {
        log::warn!(
            "entropy: no hardware random source and no toolstack seed; seeded from {} — \
             unpredictable to an off-path attacker at best, not fit for keys",
            source.name()
        );
    } else {
        log::info!("entropy: seeded from {}", source.name());
    }

    let grants = match arch::map_grant_table(frames) {
        // SAFETY: the arch code mapped `len` entries for the domain's lifetime.
        Ok((ptr, len)) => unsafe { GrantTable::new(ptr, len) },
        Err(e) => fatal(format_args!("cannot map the grant table: {e}")),
    };
    let _ = xen::hypercall::stop_periodic_timer(0);
    let timer = match xen::event::EventChannel::bind_virq(xen::abi::event_channel::VIRQ_TIMER, 0) {
        Ok(t) => t,
        Err(e) => fatal(format_args!("cannot bind VIRQ_TIMER: {e}")),
    };

    let platform = PLATFORM.call_once(|| Platform {
        guest: info.guest,
        cmdline: display_prefix(info.cmdline),
        cmdline_bytes: info.cmdline,
        memory_source: info.memory_source,
        total_pages: info.total_pages,
        ram: info.ram.clone(),
        shared: info.shared,
        frames,
        grants: Mutex::new(grants),
        timer_port: timer.port(),
        entry_tsc: arch::entry_tsc(),
        ready_tsc: AtomicU64::new(0),
    });

    let mut executor = Executor::new();
    let handle = executor.handle();
    let xenstore = info.store.map(|(page, port)| {
        let events = XsPort {
            port,
            handle: handle.clone(),
            event: handle.event(port),
        };
        // SAFETY: the arch code mapped the xenstore page for good.
        XenStore::new(unsafe { XsRing::new(page, events) })
    });
    let env = Env {
        platform,
        executor: handle,
        xenstore,
    };
    let mut idle = XenIdle {
        shared: info.shared,
        last_ns: 0,
    };
    platform
        .ready_tsc
        .store(xen::time::rdtsc(), Ordering::Relaxed);
    // SAFETY: `__moat_service_main` is defined by the `service!` macro
    // with exactly this signature.
    let main = unsafe { __moat_service_main(env) };
    log::debug!("service future: {} bytes", core::mem::size_of_val(&*main));
    let exit = executor.run_until(&mut idle, main);
    log::info!("service exited: {exit:?}");
    shutdown(exit)
}

/// Declares the service's async main function: `async fn main(env: Env) -> Exit`.
#[macro_export]
macro_rules! service {
    ($main:path) => {
        #[no_mangle]
        fn __moat_service_main(
            env: $crate::boot::Env,
        ) -> ::core::pin::Pin<
            $crate::alloc_reexport::boxed::Box<
                dyn ::core::future::Future<Output = $crate::boot::Exit>,
            >,
        > {
            $crate::alloc_reexport::boxed::Box::pin($main(env))
        }
    };
}
