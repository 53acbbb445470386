//! What the Qubes protocols (`qubes::vchan`, QubesDB, the qrexec agent)
//! get from the kernel (cargo feature `qubes`):
//!
//! - [`KernelVchanEnv`]: `qubes::vchan::VchanEnv` on real Xen. Pages,
//!   grants and unbound ports come from [`XenEnv`] as netfront gets them,
//!   foreign mappings and interdomain binding as netback gets them (the
//!   same `ForeignPage` window), so granted memory follows the kernel's one
//!   owner model (a page whose grant the peer still maps is never freed).
//!   The xenstore connection is a parameter: the kernel's own
//!   ([`crate::devices::KernelXenStore`]) for an image that has nothing
//!   else on xenstore, or a share of it for an image that runs a vchan
//!   beside other xenstore users.
//! - [`WallClock`]: `qubes::qrexec::Clock`, the wall clock
//!   `qubes.SetDateTime` sets and `qubes.GetDate` reads: Xen's wall clock
//!   (shared info `wc_*` plus system time) until dom0 sets it, then the
//!   time dom0 gave, carried forward by system time. Kept for the whole
//!   kernel ([`wall_time`]), not per agent.
//!
//! Foreign grants are always mapped read-write: libxenvchan servers grant
//! every page writable, and the kernel's foreign window maps read-write
//! only (a read-only mapping would fault on the first `SharedPage` write,
//! which the vchan stream never issues on the ring it reads, but the page
//! type cannot promise that).

use core::task::{Context, Poll};

use netback::env::NetbackEnv;
use netfront::NetEnv;
use qubes::qrexec::{Clock, UnixTime};
use qubes::vchan::{EnvError, VchanEnv};
use xen::abi::{DomId, GrantRef, Port};
use xen::grant::GrantError;
use xen::shared_page::SharedPage;
use xen::xenstore::{XenStore, XsTransport};

use crate::devices::{ForeignMapping, SharedFrame, XenEnv};

/// `qubes::vchan::VchanEnv` over the kernel: a [`XenEnv`] for pages,
/// grants, mappings and ports, and a xenstore connection over `T`.
pub struct KernelVchanEnv<T: XsTransport> {
    env: XenEnv,
    xs: XenStore<T>,
    /// Whether [`VchanEnv::peer_closed`] asks Xen (`EVTCHNOP_status`).
    status: bool,
}

impl<T: XsTransport> KernelVchanEnv<T> {
    /// Over `env` (built without the xenstore connection: `XenEnv::new(..,
    /// None)`) and the xenstore client `xs`.
    pub fn new(env: XenEnv, xs: XenStore<T>) -> Self {
        Self {
            env,
            xs,
            status: true,
        }
    }

    /// Whether a vanished peer is looked up with `EVTCHNOP_status` after a
    /// wake-up (default on; off answers "not gone" always, for
    /// experiments).
    pub fn set_peer_status(&mut self, on: bool) {
        self.status = on;
    }

    /// The driver environment (grants outstanding, ...).
    pub fn env(&mut self) -> &mut XenEnv {
        &mut self.env
    }
}

fn net(e: netfront::EnvError) -> EnvError {
    match e {
        netfront::EnvError::OutOfMemory => EnvError::OutOfMemory,
        netfront::EnvError::Hypercall(x) => EnvError::Hypercall(x),
    }
}

fn back(e: netback::env::EnvError) -> EnvError {
    match e {
        netback::env::EnvError::OutOfMemory => EnvError::OutOfMemory,
        netback::env::EnvError::Grant(s) => EnvError::Grant(s),
        netback::env::EnvError::Hypercall(x) => EnvError::Hypercall(x),
    }
}

/// The same environment serves a netfront (the network runtime's uplink)
/// whose xenstore client is not the kernel's own: a Qubes service VM's
/// runtime, QubesDB link and qrexec agent each hold a client of one shared
/// connection (`qubes::xs_share`).
impl<T: XsTransport> NetEnv for KernelVchanEnv<T> {
    type Page = SharedFrame;
    type Xs = T;

    fn alloc_page(&mut self) -> Result<SharedPage<SharedFrame>, netfront::EnvError> {
        NetEnv::alloc_page(&mut self.env)
    }
    fn grant_access(
        &mut self,
        domid: DomId,
        frame: u64,
        readonly: bool,
    ) -> Result<GrantRef, GrantError> {
        NetEnv::grant_access(&mut self.env, domid, frame, readonly)
    }
    fn end_access(&mut self, gref: GrantRef) -> Result<(), GrantError> {
        NetEnv::end_access(&mut self.env, gref)
    }
    fn alloc_unbound(&mut self, remote: DomId) -> Result<Port, netfront::EnvError> {
        NetEnv::alloc_unbound(&mut self.env, remote)
    }
    fn notify(&mut self, port: Port) {
        NetEnv::notify(&mut self.env, port)
    }
    fn poll_event(&mut self, port: Port, cx: &mut Context<'_>) -> Poll<()> {
        NetEnv::poll_event(&mut self.env, port, cx)
    }
    fn close_port(&mut self, port: Port) {
        NetEnv::close_port(&mut self.env, port)
    }
    fn xenstore(&mut self) -> &mut XenStore<T> {
        &mut self.xs
    }
}

impl<T: XsTransport> VchanEnv for KernelVchanEnv<T> {
    type Page = SharedFrame;
    type Mapping = ForeignMapping;
    type Xs = T;

    fn alloc_page(&mut self) -> Result<SharedPage<SharedFrame>, EnvError> {
        NetEnv::alloc_page(&mut self.env).map_err(net)
    }
    fn grant_access(
        &mut self,
        domid: DomId,
        frame: u64,
        readonly: bool,
    ) -> Result<GrantRef, GrantError> {
        NetEnv::grant_access(&mut self.env, domid, frame, readonly)
    }
    fn end_access(&mut self, gref: GrantRef) -> Result<(), GrantError> {
        NetEnv::end_access(&mut self.env, gref)
    }
    /// Always read-write (see the module documentation).
    fn map_grant(
        &mut self,
        domid: DomId,
        gref: GrantRef,
        _readonly: bool,
    ) -> Result<SharedPage<ForeignMapping>, EnvError> {
        NetbackEnv::map_grant(&mut self.env, domid, gref).map_err(back)
    }
    fn alloc_unbound(&mut self, remote: DomId) -> Result<Port, EnvError> {
        NetEnv::alloc_unbound(&mut self.env, remote).map_err(net)
    }
    fn bind_interdomain(&mut self, remote: DomId, remote_port: Port) -> Result<Port, EnvError> {
        NetbackEnv::bind_interdomain(&mut self.env, remote, remote_port).map_err(back)
    }
    fn notify(&mut self, port: Port) {
        NetEnv::notify(&mut self.env, port)
    }
    fn poll_event(&mut self, port: Port, cx: &mut Context<'_>) -> Poll<()> {
        NetEnv::poll_event(&mut self.env, port, cx)
    }
    /// `EVTCHNOP_status` says our end is no longer interdomain.
    fn peer_closed(&mut self, port: Port) -> bool {
        use xen::evtchn_status::{evtchn_status, PortState};
        self.status
            && matches!(
                evtchn_status(port),
                Ok(PortState::Unbound { .. } | PortState::Closed)
            )
    }
    fn close_port(&mut self, port: Port) {
        NetEnv::close_port(&mut self.env, port)
    }
    fn xenstore(&mut self) -> &mut XenStore<T> {
        &mut self.xs
    }
}

/// Nanoseconds between Xen's system time and the wall clock dom0 set
/// (`wall = system + offset`); `None` until `qubes.SetDateTime`.
static WALL_OFFSET_NS: spin::Mutex<Option<i128>> = spin::Mutex::new(None);

/// A difference the clock does not correct (qubes-core-agent-linux's
/// `qubes.SetDateTime` leaves a clock within 2 s alone).
pub const SET_TOLERANCE_NS: i128 = 2_000_000_000;

fn system_ns() -> Option<u64> {
    crate::boot::platform().map(|p| crate::boot::system_time_ns(&p.shared))
}

fn split(ns: i128) -> UnixTime {
    UnixTime {
        secs: ns.div_euclid(1_000_000_000) as i64,
        nanos: ns.rem_euclid(1_000_000_000) as u32,
    }
}

/// The wall clock now: dom0's time once set, else Xen's wall clock, else
/// `None` (a wall clock of 0 s: the toolstack did not set one).
pub fn wall_time() -> Option<UnixTime> {
    let system = system_ns()?;
    if let Some(offset) = *WALL_OFFSET_NS.lock() {
        return Some(split(i128::from(system) + offset));
    }
    let base = crate::boot::platform()?.shared.wallclock_base();
    if base.sec == 0 {
        return None;
    }
    let (sec, nsec) = xen::time::wallclock_at(base, system);
    Some(UnixTime {
        secs: sec as i64,
        nanos: nsec,
    })
}

/// Set the wall clock to `t` unless it is within [`SET_TOLERANCE_NS`];
/// true if it changed.
pub fn set_wall_time(t: UnixTime) -> bool {
    let Some(system) = system_ns() else {
        return false;
    };
    let want = i128::from(t.secs) * 1_000_000_000 + i128::from(t.nanos);
    if let Some(now) = wall_time() {
        let have = i128::from(now.secs) * 1_000_000_000 + i128::from(now.nanos);
        if (want - have).abs() <= SET_TOLERANCE_NS {
            return false;
        }
    }
    *WALL_OFFSET_NS.lock() = Some(want - i128::from(system));
    true
}

/// The kernel's wall clock as the qrexec agent's `Clock`.
#[derive(Clone, Copy, Debug, Default)]
pub struct WallClock;

impl Clock for WallClock {
    fn now(&self) -> Option<UnixTime> {
        wall_time()
    }
    fn set(&mut self, t: UnixTime) {
        if set_wall_time(t) {
            log::info!("wall clock set to {} s", t.secs);
        }
    }
}
