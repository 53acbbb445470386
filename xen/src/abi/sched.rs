//! `xen/sched.h`: scheduler operations.

use super::Port;

/// `SCHEDOP_yield`
pub const SCHEDOP_YIELD: u32 = 0;
/// `SCHEDOP_block`: sleep until an event is pending (unmasks events on PV).
pub const SCHEDOP_BLOCK: u32 = 1;
/// `SCHEDOP_shutdown`
pub const SCHEDOP_SHUTDOWN: u32 = 2;
/// `SCHEDOP_poll`
pub const SCHEDOP_POLL: u32 = 3;

/// `SHUTDOWN_poweroff`
pub const SHUTDOWN_POWEROFF: u32 = 0;
/// `SHUTDOWN_reboot`
pub const SHUTDOWN_REBOOT: u32 = 1;
/// `SHUTDOWN_suspend`
pub const SHUTDOWN_SUSPEND: u32 = 2;
/// `SHUTDOWN_crash`
pub const SHUTDOWN_CRASH: u32 = 3;

/// `struct sched_shutdown`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SchedShutdown {
    /// `SHUTDOWN_*`.
    pub reason: u32,
}

/// `struct sched_poll`
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SchedPoll {
    /// Ports to poll (guest handle).
    pub ports: *mut Port,
    /// Number of ports.
    pub nr_ports: u32,
    /// Absolute system-time timeout in ns (0: none).
    pub timeout: u64,
}
