//! What the PV drivers get from the kernel: pages they may share with
//! another domain, this domain's grant table, and event channels wired to
//! the executor.
//!
//! [`XenEnv`] is the one implementation of the drivers' environment traits
//! on real Xen (`netfront::NetEnv`, `blkfront::BlkEnv`, each behind the
//! cargo feature of the same name); host tests implement the same traits
//! over `xen::sim`. The only `unsafe` here is [`SharedFrame`]'s promise
//! that a frame from the allocator is a page nobody else references.
//!
//! Granted memory follows one ownership model (`xen::grant`, "Who owns a
//! granted page"; docs/drivers.md, "Grant ownership"): a [`SharedFrame`]
//! that is dropped while a grant still names it first ends those grants
//! (through the grant table's ledger, [`GrantTable::release_frame`]); a
//! frame the peer still maps goes to the table's deferred list instead of
//! the allocator, and is freed by a later retry ([`retry_deferred`], run at
//! every frame allocation and when the table is full) once the peer
//! unmapped it. Whatever
//! path a driver takes (an error return after granting, a cancelled
//! connect, a device dropped without disconnecting), a frame another
//! domain can still map is never reused, and never leaked for good.

use alloc::collections::BTreeMap;
use core::sync::atomic::{AtomicUsize, Ordering};
use core::task::{Context, Poll};

use spin::Mutex;
use xen::abi::{DomId, GrantRef, Port};
use xen::grant::{GrantError, GrantTable};
use xen::shared_page::{PageMemory, SharedPage, PAGE_SIZE};
use xen::xenstore::{XenStore, XsRing};

use crate::boot::{Platform, XsPort};
use crate::executor::{EventListener, Handle};
use crate::frames::Pfn;

/// Event channels the drivers' environments opened and have not closed.
static OPEN_PORTS: AtomicUsize = AtomicUsize::new(0);

/// Event channels opened through a [`XenEnv`] (allocated unbound or bound
/// interdomain) and not yet closed, over every driver of this domain: a
/// leak check for long attach/detach runs. (The kernel's own ports, timer
/// and console and xenstore, are not counted.)
pub fn open_ports() -> usize {
    OPEN_PORTS.load(Ordering::Relaxed)
}

/// Give back the deferred frames whose grants can be ended now (the peer
/// unmapped them); how many were freed. Run at every [`SharedFrame`]
/// allocation and when a grant through a [`XenEnv`] finds the table full;
/// services may also call it (e.g. with their `resources:` line).
pub fn retry_deferred(platform: &Platform) -> usize {
    let freed = platform.grants.lock().retry_deferred();
    let mut frames = platform.frames.lock();
    for pfn in &freed {
        let _ = frames.free(Pfn(*pfn));
    }
    freed.len()
}

/// Counts of the grant ledger, for leak checks (`resources:` lines).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GrantCounts {
    /// Grants live now (every driver of this domain).
    pub live: usize,
    /// Frames on the deferred list now (their peer still maps them).
    pub deferred: usize,
    /// Frames ever deferred.
    pub deferred_total: u64,
    /// Deferred frames freed later.
    pub freed_late: u64,
}

/// The grant ledger's counts.
pub fn grant_counts(platform: &Platform) -> GrantCounts {
    let grants = platform.grants.lock();
    let l = grants.ledger();
    GrantCounts {
        live: l.live_grants(),
        deferred: l.deferred(),
        deferred_total: l.deferred_total(),
        freed_late: l.freed_late(),
    }
}

/// One frame from the kernel's allocator, zeroed, owned until dropped.
pub struct SharedFrame {
    pfn: u64,
    gfn: u64,
    frames: &'static spin::Mutex<crate::frames::FrameAllocator<'static>>,
    grants: &'static Mutex<GrantTable>,
}

impl SharedFrame {
    /// A zeroed frame, or `None` when memory is exhausted. Deferred frames
    /// that can be freed now are freed first.
    pub fn alloc(platform: &'static Platform) -> Option<Self> {
        retry_deferred(platform);
        // The lock is released before anything below could allocate.
        let pfn = platform.frames.lock().alloc()?.0;
        let ptr = crate::arch::pfn_to_ptr(pfn);
        // SAFETY: the allocator handed out this frame, which every guest
        // type maps read-write at `pfn_to_ptr`; nothing else refers to it.
        unsafe { core::ptr::write_bytes(ptr, 0, PAGE_SIZE) };
        Some(Self {
            pfn,
            gfn: crate::arch::pfn_to_gfn(pfn),
            frames: platform.frames,
            grants: &platform.grants,
        })
    }

    /// The pseudo-physical frame number.
    pub fn pfn(&self) -> u64 {
        self.pfn
    }
}

// SAFETY: the frame is mapped at a fixed address for the kernel's life,
// page-aligned, read-write, owned by this value alone (no Rust reference to
// it exists: it is only reached through `SharedPage`'s volatile accessors),
// and given back only on drop, once no grant names it any more (else the
// grant table's deferred list keeps it until a retry can end the grant).
unsafe impl PageMemory for SharedFrame {
    fn as_ptr(&self) -> *mut u8 {
        crate::arch::pfn_to_ptr(self.pfn)
    }

    fn frame(&self) -> u64 {
        self.gfn
    }
}

impl Drop for SharedFrame {
    fn drop(&mut self) {
        // The grant table's lock is released before the allocator's.
        let released = self.grants.lock().release_frame(self.gfn, self.pfn);
        match released {
            Some(pfn) => {
                let _ = self.frames.lock().free(Pfn(pfn));
            }
            None => log::debug!(
                "frame {:#x} still mapped by a peer: deferred, not reused",
                self.pfn
            ),
        }
    }
}

/// The xenstore client every driver of a service shares.
pub type KernelXenStore = XenStore<XsRing<XsPort>>;

/// The drivers' environment on real Xen.
pub struct XenEnv {
    platform: &'static Platform,
    executor: Handle,
    /// Ports we allocated, each with its listener (created with the port,
    /// so no notification is missed before the first poll).
    ports: BTreeMap<Port, EventListener>,
    /// Grants handed out through this env and not ended through it.
    granted: usize,
    /// The xenstore connection, if this env owns it (netfront's needs it).
    xenstore: Option<KernelXenStore>,
}

/// The platform could not provide what a driver asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceEnvError {
    /// No free frame.
    OutOfMemory,
    /// A hypercall failed with this (negative) errno.
    Xen(i32),
}

impl XenEnv {
    /// An environment over `platform`, with events delivered by `executor`
    /// and (for drivers that need it) the xenstore connection.
    pub fn new(
        platform: &'static Platform,
        executor: Handle,
        xenstore: Option<KernelXenStore>,
    ) -> Self {
        Self {
            platform,
            executor,
            ports: BTreeMap::new(),
            granted: 0,
            xenstore,
        }
    }

    /// The xenstore connection, if this env holds it.
    pub fn xenstore_mut(&mut self) -> Option<&mut KernelXenStore> {
        self.xenstore.as_mut()
    }

    /// Take the xenstore connection back.
    pub fn take_xenstore(&mut self) -> Option<KernelXenStore> {
        self.xenstore.take()
    }

    /// Grants handed out through this env and not ended through it (a
    /// grant ended when its frame was dropped is still counted here; see
    /// [`grant_counts`] for the table's own count).
    pub fn grants_outstanding(&self) -> usize {
        self.granted
    }

    fn alloc_shared(&mut self) -> Result<SharedPage<SharedFrame>, DeviceEnvError> {
        SharedFrame::alloc(self.platform)
            .map(SharedPage::new)
            .ok_or(DeviceEnvError::OutOfMemory)
    }

    fn grant(&mut self, domid: DomId, frame: u64, readonly: bool) -> Result<GrantRef, GrantError> {
        let mut result = self
            .platform
            .grants
            .lock()
            .grant_access(domid, frame, readonly);
        if result == Err(GrantError::Exhausted) && retry_deferred(self.platform) > 0 {
            result = self
                .platform
                .grants
                .lock()
                .grant_access(domid, frame, readonly);
        }
        let gref = result?;
        self.granted += 1;
        Ok(gref)
    }

    /// End a grant. On [`GrantError::InUse`] the grant stays, recorded in
    /// the table's ledger: dropping the frame defers it.
    fn revoke(&mut self, gref: GrantRef) -> Result<(), GrantError> {
        let result = self.platform.grants.lock().end_access(gref);
        if result.is_ok() {
            self.granted = self.granted.saturating_sub(1);
        }
        result
    }

    fn alloc_port(&mut self, remote: DomId) -> Result<Port, DeviceEnvError> {
        let port =
            xen::hypercall::evtchn_alloc_unbound(remote).map_err(|e| DeviceEnvError::Xen(-e.0))?;
        OPEN_PORTS.fetch_add(1, Ordering::Relaxed);
        self.ports.insert(port, self.executor.event_listener(port));
        Ok(port)
    }

    fn poll_port(&mut self, port: Port, cx: &mut Context<'_>) -> Poll<()> {
        let executor = &self.executor;
        self.ports
            .entry(port)
            .or_insert_with(|| executor.event_listener(port))
            .poll_wait(cx)
    }

    fn close_port(&mut self, port: Port) {
        self.ports.remove(&port);
        if xen::hypercall::evtchn_close(port).is_ok() {
            let _ =
                OPEN_PORTS.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
    }
}

#[cfg(feature = "netfront")]
mod net {
    use super::*;
    use netfront::{EnvError, NetEnv};

    impl From<DeviceEnvError> for EnvError {
        fn from(e: DeviceEnvError) -> Self {
            match e {
                DeviceEnvError::OutOfMemory => EnvError::OutOfMemory,
                DeviceEnvError::Xen(errno) => EnvError::Hypercall(errno),
            }
        }
    }

    impl NetEnv for XenEnv {
        type Page = SharedFrame;
        type Xs = XsRing<XsPort>;

        fn alloc_page(&mut self) -> Result<SharedPage<SharedFrame>, EnvError> {
            Ok(self.alloc_shared()?)
        }
        fn grant_access(
            &mut self,
            domid: DomId,
            frame: u64,
            readonly: bool,
        ) -> Result<GrantRef, GrantError> {
            self.grant(domid, frame, readonly)
        }
        fn end_access(&mut self, gref: GrantRef) -> Result<(), GrantError> {
            self.revoke(gref)
        }
        fn alloc_unbound(&mut self, remote: DomId) -> Result<Port, EnvError> {
            Ok(self.alloc_port(remote)?)
        }
        fn notify(&mut self, port: Port) {
            let _ = xen::hypercall::evtchn_send(port);
        }
        fn poll_event(&mut self, port: Port, cx: &mut Context<'_>) -> Poll<()> {
            self.poll_port(port, cx)
        }
        fn close_port(&mut self, port: Port) {
            XenEnv::close_port(self, port)
        }
        fn xenstore(&mut self) -> &mut XenStore<Self::Xs> {
            // A netfront env is always built with the connection
            // (`XenEnv::new(.., Some(xs))`); see `Netdev` in services.
            match self.xenstore.as_mut() {
                Some(xs) => xs,
                None => crate::boot::fatal(format_args!(
                    "netfront environment built without the xenstore connection"
                )),
            }
        }
    }
}

#[cfg(feature = "blkfront")]
mod blk {
    use super::*;
    use blkfront::env::{BlkEnv, EnvError};
    use xen::abi::blkif::{BlkifRequestSlot, BlkifResponse};
    use xen::shared_page::PageFrontRing;

    impl From<DeviceEnvError> for EnvError {
        fn from(e: DeviceEnvError) -> Self {
            match e {
                DeviceEnvError::OutOfMemory => EnvError::OutOfMemory,
                DeviceEnvError::Xen(errno) => EnvError::Xen(errno),
            }
        }
    }

    impl BlkEnv for XenEnv {
        type Mem = SharedFrame;
        type Ring = PageFrontRing<SharedFrame, BlkifRequestSlot, BlkifResponse>;

        fn alloc_page(&mut self) -> Result<SharedPage<SharedFrame>, EnvError> {
            Ok(self.alloc_shared()?)
        }
        fn alloc_ring(&mut self, order: u32) -> Result<Self::Ring, EnvError> {
            // Single-page rings only (`BlkConfig::max_ring_page_order` 0,
            // the default): 32 requests of up to 32 indirect segments each
            // already keep Linux blkback busy.
            if order != 0 {
                return Err(EnvError::Xen(-xen::hypercall::XenError::EINVAL.0));
            }
            Ok(self.alloc_shared()?.into_front_ring(0))
        }
        fn grant(
            &mut self,
            domid: DomId,
            frame: u64,
            readonly: bool,
        ) -> Result<GrantRef, GrantError> {
            XenEnv::grant(self, domid, frame, readonly)
        }
        fn revoke(&mut self, gref: GrantRef) -> Result<(), GrantError> {
            XenEnv::revoke(self, gref)
        }
        fn alloc_unbound(&mut self, remote: DomId) -> Result<Port, EnvError> {
            Ok(self.alloc_port(remote)?)
        }
        fn close(&mut self, port: Port) {
            self.close_port(port)
        }
        fn notify(&mut self, port: Port) {
            let _ = xen::hypercall::evtchn_send(port);
        }
        fn poll_event(&mut self, port: Port, cx: &mut Context<'_>) -> Poll<()> {
            self.poll_port(port, cx)
        }
    }
}

#[cfg(feature = "netback")]
mod back {
    use super::*;
    use netback::env::{EnvError, NetbackEnv};
    use xen::abi::grant_table::GnttabCopy;

    use crate::arch::{ForeignPage, MapError};

    /// Another domain's page mapped for a backend (its ring), unmapped
    /// when dropped.
    pub struct ForeignMapping(ForeignPage);

    // SAFETY: the grant stays mapped read-write at `as_ptr` until the
    // `ForeignPage` inside is dropped with this value; the wrapper never
    // hands out a Rust reference to the bytes, so they are only reached
    // through `SharedPage`'s volatile accessors.
    unsafe impl PageMemory for ForeignMapping {
        fn as_ptr(&self) -> *mut u8 {
            self.0.as_ptr()
        }

        /// Not ours to grant: backends never name a mapped page by frame.
        fn frame(&self) -> u64 {
            0
        }
    }

    fn map_error(e: MapError) -> EnvError {
        match e {
            MapError::WindowFull => EnvError::OutOfMemory,
            MapError::Xen(x) => EnvError::Hypercall(-x.0),
            MapError::Grant(s) => EnvError::Grant(s.0),
        }
    }

    impl NetbackEnv for XenEnv {
        type Mapping = ForeignMapping;
        type Page = SharedFrame;

        fn map_grant(
            &mut self,
            domid: DomId,
            gref: GrantRef,
        ) -> Result<SharedPage<ForeignMapping>, EnvError> {
            ForeignPage::map(domid, gref, false)
                .map(|p| SharedPage::new(ForeignMapping(p)))
                .map_err(map_error)
        }
        fn alloc_page(&mut self) -> Result<SharedPage<SharedFrame>, EnvError> {
            self.alloc_shared().map_err(|_| EnvError::OutOfMemory)
        }
        fn grant_copy(&mut self, ops: &mut [GnttabCopy]) -> Result<(), EnvError> {
            xen::hypercall::gnttab_copy(ops).map_err(|e| EnvError::Hypercall(-e.0))
        }
        fn bind_interdomain(&mut self, remote: DomId, remote_port: Port) -> Result<Port, EnvError> {
            let port = xen::hypercall::evtchn_bind_interdomain(remote, remote_port)
                .map_err(|e| EnvError::Hypercall(-e.0))?;
            OPEN_PORTS.fetch_add(1, Ordering::Relaxed);
            self.ports.insert(port, self.executor.event_listener(port));
            Ok(port)
        }
        fn notify(&mut self, port: Port) {
            let _ = xen::hypercall::evtchn_send(port);
        }
        fn poll_event(&mut self, port: Port, cx: &mut Context<'_>) -> Poll<()> {
            self.poll_port(port, cx)
        }
        fn close_port(&mut self, port: Port) {
            XenEnv::close_port(self, port)
        }
    }
}
#[cfg(feature = "netback")]
pub use back::ForeignMapping;
