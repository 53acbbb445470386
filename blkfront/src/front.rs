//! The frontend: xenbus handshake with the backend, then an async block
//! API over the shared ring.
//!
//! [`BlkFront`] methods take `&self`, so many operations (from one task
//! joining futures, or from several tasks) are in flight at once, bounded by
//! the ring: each request occupies a ring slot and a table entry until its
//! response is taken. Whichever future runs drains the response ring and
//! wakes the owners of the answered requests. A response that names no
//! request in flight, reports the wrong operation or an impossible status,
//! or a producer index that claims more responses than requests, marks the
//! device broken: every operation fails from then on and the owner calls
//! [`BlkFront::disconnect`].

use crate::env::{BlkEnv, RingPages, PAGE_SIZE};
use crate::error::{BlkError, ProtocolViolation};
use crate::info::{parse_u64, DiskInfo, RawDiskKeys};
use crate::pool::{GrantPool, PageIndex};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use core::future::{poll_fn, Future};
use core::pin::pin;
use core::task::{Context, Poll, Waker};
use xen::abi::blkif::*;
use xen::abi::{GrantRef, Port};
use xen::xenbus::{read_state, XenbusDevice, XenbusError, XenbusState};
use xen::xenstore::{WatchGuard, XenStore, XsError, XsTransport};

/// Largest ring the frontend asks for: 2^4 pages (Linux's
/// `XENBUS_MAX_RING_GRANT_ORDER`).
pub const MAX_RING_PAGE_ORDER: u32 = 4;
/// 512-byte sectors per page.
const SECTORS_PER_PAGE: usize = PAGE_SIZE / BLKIF_SECTOR_SIZE;
/// How many times one poll re-checks the ring before yielding.
const SPIN_LIMIT: usize = 64;

/// Choices of the frontend (what it asks for; the backend may offer less).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlkConfig {
    /// Ring size asked for, as log2 of pages (capped at
    /// [`MAX_RING_PAGE_ORDER`] and the backend's `max-ring-page-order`).
    pub max_ring_page_order: u32,
    /// Segments per indirect request (capped by the backend's
    /// `feature-max-indirect-segments` and by
    /// `BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST` pages of segments).
    pub max_indirect_segments: u32,
    /// The device handle put in requests (Linux blkback ignores it).
    pub handle: u16,
}

impl Default for BlkConfig {
    fn default() -> Self {
        Self {
            max_ring_page_order: 0,
            max_indirect_segments: 32,
            handle: 0,
        }
    }
}

/// Counters of the frontend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkStats {
    /// Requests put on the ring.
    pub requests: u64,
    /// Of which indirect.
    pub indirect_requests: u64,
    /// Responses taken from the ring.
    pub responses: u64,
    /// Events sent to the backend.
    pub notifications: u64,
    /// Responses whose status was not OKAY.
    pub failed: u64,
    /// Most requests in flight at once.
    pub max_in_flight: u32,
    /// Bounce pages granted (never more than once each).
    pub pool_pages: u32,
    /// Grants the backend still held at disconnect (their pages are
    /// deferred by the page type: freed once it unmaps them, never reused
    /// before).
    pub leaked_grants: u32,
}

/// What a ring request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Read,
    Write,
    Flush,
    Barrier,
    Discard { sectors_512: u64 },
}

/// A request on the ring, until its owner takes the response.
struct InFlight {
    generation: u32,
    /// The operation byte of the ring request.
    operation: u8,
    /// For indirect requests, the inner read/write operation.
    inner_operation: u8,
    /// Data pages first, then indirect segment pages.
    pages: Vec<PageIndex>,
    status: Option<i16>,
    waker: Option<Waker>,
    /// The owner went away: release as soon as answered.
    abandoned: bool,
}

struct Inner<E: BlkEnv> {
    env: E,
    /// `None` once released at disconnect.
    ring: Option<E::Ring>,
    ring_grefs: Vec<GrantRef>,
    port: Port,
    pool: GrantPool<E::Mem>,
    slots: Vec<Option<InFlight>>,
    generations: Vec<u32>,
    free_slots: Vec<usize>,
    space_waiters: Vec<Waker>,
    broken: Option<ProtocolViolation>,
    disconnected: bool,
    /// The backend left `Connected` (seen by `watch_backend`).
    gone: Option<XenbusState>,
    /// Grants ended and the port closed (by a disconnect, or on drop).
    released: bool,
    /// Data segments one request carries (11, or the indirect count).
    segments_per_request: usize,
    indirect: bool,
    handle: u16,
    info: DiskInfo,
    stats: BlkStats,
}

/// A connected PV disk.
///
/// Dropping it without [`disconnect`](Self::disconnect) or
/// [`close`](Self::close) still ends every grant the backend does not map
/// (the page type defers those it maps: never reused while mapped) and
/// closes the event channel,
/// but tells the backend nothing.
pub struct BlkFront<E: BlkEnv> {
    dev: XenbusDevice,
    ring_page_order: u32,
    inner: RefCell<Inner<E>>,
    /// The watch on the backend's state is registered.
    watching: Cell<bool>,
}

/// Read an optional key of the backend: absent is `None`.
async fn read_optional<T: XsTransport>(
    xs: &mut XenStore<T>,
    dir: &str,
    key: &str,
) -> Result<Option<Vec<u8>>, BlkError> {
    match xs.read(&format!("{dir}/{key}")).await {
        Ok(v) => Ok(Some(v)),
        Err(XsError::Enoent) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

impl<E: BlkEnv> BlkFront<E> {
    /// Connect to the backend of the device at `path` (e.g.
    /// `device/vbd/51712`): wait for it to reach `InitWait`, share a ring
    /// and an event channel, wait for `Connected`, read the disk's
    /// description, and publish `Connected`.
    pub async fn connect<T: XsTransport>(
        mut env: E,
        xs: &mut XenStore<T>,
        path: &str,
        config: BlkConfig,
    ) -> Result<Self, BlkError> {
        let dev = XenbusDevice::open(xs, path).await?;
        dev.wait_for_backend(xs, XenbusState::InitWait).await?;
        let backend_max_order = match read_optional(xs, &dev.backend, "max-ring-page-order").await?
        {
            None => 0,
            Some(v) => parse_u64(&v)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or(BlkError::BadKey("max-ring-page-order"))?,
        };
        let order = backend_max_order
            .min(config.max_ring_page_order)
            .min(MAX_RING_PAGE_ORDER);

        // The ring, its grants and the port belong to `setup` until the
        // device owns them: if this future is dropped (the caller's timeout,
        // a backend that maps the ring and never connects) or fails,
        // `setup`'s drop ends the grants and closes the port; a ring the
        // backend still maps is then deferred by the page type, never freed
        // (docs/drivers.md, "Grant ownership").
        let ring = env.alloc_ring(order)?;
        let mut setup = Setup {
            env: Some(env),
            ring: Some(ring),
            grefs: Vec::new(),
            port: None,
        };
        let result = Self::publish_and_wait(&mut setup, xs, &dev, order).await;
        let info = match result {
            Ok(info) => info,
            Err(e) => {
                drop(setup);
                let _ = dev.set_state(xs, XenbusState::Closed).await;
                return Err(e);
            }
        };
        let (Some(env), Some(mut ring), Some(port)) =
            (setup.env.take(), setup.ring.take(), setup.port.take())
        else {
            return Err(BlkError::Disconnected);
        };
        let ring_grefs = core::mem::take(&mut setup.grefs);
        let ring_size = ring.ring().size() as usize;
        let indirect_segments = (info.max_indirect_segments.min(config.max_indirect_segments)
            as usize)
            .min(BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST * BLKIF_SEGMENTS_PER_INDIRECT_PAGE);
        let indirect = indirect_segments > BLKIF_MAX_SEGMENTS_PER_REQUEST;
        let segments_per_request = if indirect {
            indirect_segments
        } else {
            BLKIF_MAX_SEGMENTS_PER_REQUEST
        };
        let pages_per_request =
            segments_per_request + segments_per_request.div_ceil(BLKIF_SEGMENTS_PER_INDIRECT_PAGE);
        let pool = GrantPool::new(dev.backend_id, ring_size * pages_per_request);
        log::info!(
            "blkfront: {} connected: {} bytes, {}-byte sectors, ring of {} slots, {} segments per request{}{}{}",
            dev.path,
            info.capacity_bytes(),
            info.sector_size,
            ring_size,
            segments_per_request,
            if indirect { " (indirect)" } else { "" },
            if info.flush_cache { ", flush" } else { "" },
            if info.read_only() { ", read-only" } else { "" },
        );
        let inner = Inner {
            env,
            ring: Some(ring),
            ring_grefs,
            port,
            pool,
            slots: (0..ring_size).map(|_| None).collect(),
            generations: alloc::vec![0; ring_size],
            free_slots: (0..ring_size).rev().collect(),
            space_waiters: Vec::new(),
            broken: None,
            disconnected: false,
            gone: None,
            released: false,
            segments_per_request,
            indirect,
            handle: config.handle,
            info,
            stats: BlkStats::default(),
        };
        Ok(Self {
            dev,
            ring_page_order: order,
            inner: RefCell::new(inner),
            watching: Cell::new(false),
        })
    }

    async fn publish_and_wait<T: XsTransport>(
        setup: &mut Setup<E>,
        xs: &mut XenStore<T>,
        dev: &XenbusDevice,
        order: u32,
    ) -> Result<DiskInfo, BlkError> {
        let (Some(env), Some(ring)) = (setup.env.as_mut(), setup.ring.as_mut()) else {
            return Err(BlkError::Disconnected);
        };
        for i in 0..ring.page_count() {
            setup
                .grefs
                .push(env.grant(dev.backend_id, ring.frame(i), false)?);
        }
        let port = env.alloc_unbound(dev.backend_id)?;
        setup.port = Some(port);
        let ring_grefs = &setup.grefs;
        let path = &dev.path;
        if order == 0 {
            let gref = ring_grefs.first().copied().unwrap_or_default();
            xs.write(&format!("{path}/ring-ref"), format!("{gref}").as_bytes())
                .await?;
        } else {
            xs.write(
                &format!("{path}/ring-page-order"),
                format!("{order}").as_bytes(),
            )
            .await?;
            for (i, gref) in ring_grefs.iter().enumerate() {
                xs.write(&format!("{path}/ring-ref{i}"), format!("{gref}").as_bytes())
                    .await?;
            }
        }
        xs.write(
            &format!("{path}/event-channel"),
            format!("{port}").as_bytes(),
        )
        .await?;
        xs.write(&format!("{path}/protocol"), b"x86_64-abi").await?;
        dev.set_state(xs, XenbusState::Initialised).await?;
        dev.wait_for_backend(xs, XenbusState::Connected).await?;

        let b = &dev.backend;
        let sectors = read_optional(xs, b, "sectors").await?;
        let info = read_optional(xs, b, "info").await?;
        let sector_size = read_optional(xs, b, "sector-size").await?;
        let physical = read_optional(xs, b, "physical-sector-size").await?;
        let flush = read_optional(xs, b, "feature-flush-cache").await?;
        let barrier = read_optional(xs, b, "feature-barrier").await?;
        let discard = read_optional(xs, b, "feature-discard").await?;
        let indirect = read_optional(xs, b, "feature-max-indirect-segments").await?;
        let persistent = read_optional(xs, b, "feature-persistent").await?;
        let info = DiskInfo::parse(&RawDiskKeys {
            sectors: sectors.as_deref(),
            info: info.as_deref(),
            sector_size: sector_size.as_deref(),
            physical_sector_size: physical.as_deref(),
            flush_cache: flush.as_deref(),
            barrier: barrier.as_deref(),
            discard: discard.as_deref(),
            max_indirect_segments: indirect.as_deref(),
            persistent: persistent.as_deref(),
        })?;
        dev.set_state(xs, XenbusState::Connected).await?;
        Ok(info)
    }

    /// The disk as the backend described it.
    pub fn info(&self) -> DiskInfo {
        self.inner.borrow().info
    }

    /// Our xenbus device.
    pub fn device(&self) -> &XenbusDevice {
        &self.dev
    }

    /// Ring pages in use, as log2.
    pub fn ring_page_order(&self) -> u32 {
        self.ring_page_order
    }

    /// Ring slots (requests that can be in flight at once).
    pub fn ring_size(&self) -> usize {
        self.inner.borrow().slots.len()
    }

    /// Data segments per request: 11, or the indirect count in use.
    pub fn segments_per_request(&self) -> usize {
        self.inner.borrow().segments_per_request
    }

    /// Requests on the ring not yet released: unanswered, or answered and
    /// not yet taken by their owner, or abandoned by a cancelled operation.
    pub fn in_flight(&self) -> usize {
        let inner = self.inner.borrow();
        inner.slots.len() - inner.free_slots.len()
    }

    /// Counters.
    pub fn stats(&self) -> BlkStats {
        let inner = self.inner.borrow();
        let mut stats = inner.stats;
        stats.pool_pages = u32::try_from(inner.pool.granted()).unwrap_or(u32::MAX);
        stats
    }

    /// The violation that broke the connection, if one did.
    pub fn broken(&self) -> Option<ProtocolViolation> {
        self.inner.borrow().broken
    }

    /// Read whole logical sectors starting at `sector` into `buf`.
    pub async fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), BlkError> {
        self.transfer(sector, Data::Read(buf)).await
    }

    /// Write whole logical sectors starting at `sector` from `data`.
    pub async fn write(&self, sector: u64, data: &[u8]) -> Result<(), BlkError> {
        if self.info().read_only() {
            return Err(BlkError::ReadOnly);
        }
        self.transfer(sector, Data::Write(data)).await
    }

    /// Make completed writes durable: `BLKIF_OP_FLUSH_DISKCACHE` when the
    /// backend offers it, else an empty `BLKIF_OP_WRITE_BARRIER`. With
    /// neither offered the backend has no volatile cache to flush (Linux
    /// treats such a disk as write-through), so this returns at once.
    pub async fn flush(&self) -> Result<(), BlkError> {
        let info = self.info();
        let op = if info.flush_cache {
            Op::Flush
        } else if info.barrier {
            Op::Barrier
        } else {
            return self.inner.borrow().check_usable();
        };
        self.single(op, 0).await
    }

    /// Discard `count` logical sectors from `sector` (`feature-discard`).
    pub async fn discard(&self, sector: u64, count: u64) -> Result<(), BlkError> {
        let info = self.info();
        if !info.discard {
            return Err(BlkError::NotSupported);
        }
        if info.read_only() {
            return Err(BlkError::ReadOnly);
        }
        let (start, sectors_512) = self.range_512(sector, count)?;
        if sectors_512 == 0 {
            return Ok(());
        }
        self.single(Op::Discard { sectors_512 }, start).await
    }

    /// Convert a range of logical sectors into 512-byte units, checking it
    /// lies on the disk.
    fn range_512(&self, sector: u64, count: u64) -> Result<(u64, u64), BlkError> {
        let info = self.info();
        let per = u64::from(info.sector_size) / BLKIF_SECTOR_SIZE as u64;
        let start = sector.checked_mul(per).ok_or(BlkError::OutOfRange)?;
        let len = count.checked_mul(per).ok_or(BlkError::OutOfRange)?;
        let end = start.checked_add(len).ok_or(BlkError::OutOfRange)?;
        if end > info.sectors_512 {
            return Err(BlkError::OutOfRange);
        }
        Ok((start, len))
    }

    /// One request without data pages.
    async fn single(&self, op: Op, sector_512: u64) -> Result<(), BlkError> {
        let mut pending = Pending::new(self);
        let mut submitted = false;
        poll_fn(|cx| {
            for _ in 0..SPIN_LIMIT {
                let mut inner = self.inner.borrow_mut();
                inner.drain()?;
                if !submitted {
                    if let Some(id) = inner.try_submit(op, sector_512, 0, None)? {
                        pending.items.push((id, 0, 0));
                        submitted = true;
                    }
                }
                if let Some(&(id, _, _)) = pending.items.first() {
                    if let Some(result) = inner.take_completion(id, None) {
                        pending.items.clear();
                        if result == Err(BlkError::NotSupported) {
                            inner.forget_feature(op);
                        }
                        return Poll::Ready(result);
                    }
                }
                if inner.wait(cx, &pending.items)?.is_pending() {
                    return Poll::Pending;
                }
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        })
        .await
    }

    /// Read or write, split into requests of at most
    /// `segments_per_request` pages, as many in flight as the ring allows.
    async fn transfer(&self, sector: u64, mut data: Data<'_>) -> Result<(), BlkError> {
        let len = data.len();
        let sector_size = self.info().sector_size as usize;
        if !len.is_multiple_of(sector_size) {
            return Err(BlkError::OutOfRange);
        }
        let (start, _) = self.range_512(sector, (len / sector_size) as u64)?;
        self.inner.borrow().check_usable()?;
        if len == 0 {
            return Ok(());
        }
        let op = match data {
            Data::Read(_) => Op::Read,
            Data::Write(_) => Op::Write,
        };
        let chunk = self.segments_per_request() * PAGE_SIZE;
        let mut next = 0usize;
        let mut pending = Pending::new(self);
        poll_fn(|cx| {
            for _ in 0..SPIN_LIMIT {
                let mut inner = self.inner.borrow_mut();
                inner.drain()?;
                // Take what is answered, in any order.
                let mut i = 0;
                while let Some(&(id, off, n)) = pending.items.get(i) {
                    let buf = match &mut data {
                        Data::Read(buf) => buf.get_mut(off..off + n),
                        Data::Write(_) => None,
                    };
                    match inner.take_completion(id, buf) {
                        None => i += 1,
                        Some(result) => {
                            pending.items.swap_remove(i);
                            result?;
                        }
                    }
                }
                while next < len {
                    let n = chunk.min(len - next);
                    let payload = match &data {
                        Data::Write(d) => d.get(next..next + n),
                        Data::Read(_) => None,
                    };
                    let sector_512 = start + (next / BLKIF_SECTOR_SIZE) as u64;
                    match inner.try_submit(op, sector_512, n, payload)? {
                        Some(id) => {
                            pending.items.push((id, next, n));
                            next += n;
                        }
                        None => break,
                    }
                }
                if next == len && pending.items.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                if inner.wait(cx, &pending.items)?.is_pending() {
                    return Poll::Pending;
                }
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        })
        .await
    }

    /// Stop using the ring and tell the backend: publish `Closing`, wait
    /// for the backend to follow, publish `Closed`, wait for the backend to
    /// close (Linux blkback unmaps the ring only then), end every grant
    /// (pages the backend still holds are deferred by the page type, never
    /// reused while mapped) and close the event channel. Operations fail with [`BlkError::Disconnected`]
    /// from the start of this call.
    ///
    /// A backend that never leaves `Connected` keeps this waiting: the
    /// caller bounds it with a timeout if it must (dropping the device
    /// then still ends the grants nobody maps).
    pub async fn disconnect<T: XsTransport>(&self, xs: &mut XenStore<T>) -> Result<(), BlkError> {
        self.inner.borrow_mut().mark_disconnected();
        self.unwatch_backend(xs).await;
        self.dev.set_state(xs, XenbusState::Closing).await?;
        match self.dev.wait_for_backend(xs, XenbusState::Closing).await {
            Ok(_) | Err(XenbusError::BackendClosed(XenbusState::Closed)) => {}
            Err(e) => return Err(e.into()),
        }
        self.dev.set_state(xs, XenbusState::Closed).await?;
        wait_backend_closed(xs, &self.dev).await?;
        self.inner.borrow_mut().release_everything();
        Ok(())
    }

    /// Wait until the backend leaves `Connected` (or its directory goes
    /// away), then mark the device gone: every operation in flight or
    /// started later fails with [`BlkError::BackendGone`], which this
    /// returns too. Run it beside the I/O (see [`guard`](Self::guard)); a
    /// xenstore failure is returned as such, without marking the device.
    ///
    /// Cancel-safe: the watch it registers on the backend's `state` stays
    /// until [`close`](Self::close), [`reconnect`](Self::reconnect) or
    /// [`disconnect`](Self::disconnect), and events are queued meanwhile.
    pub async fn watch_backend<T: XsTransport>(&self, xs: &mut XenStore<T>) -> BlkError {
        let token = self.watch_token();
        if !self.watching.get() {
            match xs
                .watch(&format!("{}/state", self.dev.backend), &token)
                .await
            {
                // Registered by an earlier call dropped mid-request.
                Ok(()) | Err(XsError::Eexist) => self.watching.set(true),
                Err(e) => return e.into(),
            }
        }
        loop {
            match read_state(xs, &self.dev.backend).await {
                Ok(XenbusState::Connected) => {}
                Ok(state) => return self.backend_gone(state),
                Err(e) => return e.into(),
            }
            if let Err(e) = xs.next_watch_event_for(&token).await {
                return e.into();
            }
        }
    }

    /// Run `op` (an operation on this device) while watching the backend:
    /// if the backend leaves `Connected` first, `op` is dropped (its
    /// requests abandoned: their slots and pages are never reused on this
    /// connection) and the result is [`BlkError::BackendGone`].
    pub async fn guard<T: XsTransport, R>(
        &self,
        xs: &mut XenStore<T>,
        op: impl Future<Output = Result<R, BlkError>>,
    ) -> Result<R, BlkError> {
        let mut op = pin!(op);
        let mut watch = pin!(self.watch_backend(xs));
        poll_fn(|cx| {
            if let Poll::Ready(result) = op.as_mut().poll(cx) {
                return Poll::Ready(result);
            }
            watch.as_mut().poll(cx).map(Err)
        })
        .await
    }

    /// Record that the backend left `Connected` and wake every operation
    /// so it fails.
    fn backend_gone(&self, state: XenbusState) -> BlkError {
        let mut inner = self.inner.borrow_mut();
        if inner.gone.is_none() {
            inner.gone = Some(state);
            log::warn!(
                "blkfront: {}: backend went to {state:?}; stopping I/O",
                self.dev.path
            );
        }
        inner.wake_all();
        BlkError::BackendGone(state)
    }

    fn watch_token(&self) -> String {
        format!("blkfront-backend:{}", self.dev.path)
    }

    async fn unwatch_backend<T: XsTransport>(&self, xs: &mut XenStore<T>) {
        let token = self.watch_token();
        if self.watching.replace(false) {
            let _ = xs
                .unwatch(&format!("{}/state", self.dev.backend), &token)
                .await;
        }
        xs.discard_watch_events(&token);
    }

    /// Close after the backend went away (or to give the device up without
    /// a handshake), the way Linux blkfront answers a backend `Closing`:
    /// stop I/O, publish `Closed` at once (unless the toolstack already
    /// removed our directory) so `xl block-detach` is not kept waiting,
    /// wait for the backend to close or vanish (Linux blkback unmaps the
    /// ring then), end every grant it no longer maps (the rest stay; their
    /// pages are deferred, never reused while mapped) and close the event
    /// channel. Returns the final
    /// counters (`leaked_grants`).
    ///
    /// Requests in flight are not answered any more; their owners got
    /// [`BlkError::BackendGone`] or get [`BlkError::Disconnected`].
    /// A backend that stays `Connected`/`Closing` keeps this waiting: bound
    /// it with a timeout (dropping the future drops the device, which ends
    /// the grants nobody maps).
    pub async fn close<T: XsTransport>(self, xs: &mut XenStore<T>) -> BlkStats {
        self.inner.borrow_mut().mark_disconnected();
        self.unwatch_backend(xs).await;
        // Only while our directory exists: after `xl block-detach` removed
        // it, a write would fail (or create a stray node).
        if xs.read(&format!("{}/state", self.dev.path)).await.is_ok() {
            let _ = self.dev.set_state(xs, XenbusState::Closed).await;
        }
        if let Err(e) = wait_backend_closed(xs, &self.dev).await {
            log::warn!(
                "blkfront: {}: waiting for the backend to close: {e:?}",
                self.dev.path
            );
        }
        let abandoned = self.in_flight();
        let leaked_before = self.inner.borrow().stats.leaked_grants;
        self.inner.borrow_mut().release_everything();
        let stats = self.stats();
        log::info!(
            "blkfront: {}: closed: {abandoned} requests in flight dropped, {} grants still mapped by the backend (leaked)",
            self.dev.path,
            stats.leaked_grants - leaked_before
        );
        stats
    }

    /// After the backend went away (`xl block-detach` then `block-attach`,
    /// a backend restart): [`close`](Self::close), wait for the device to
    /// be offered again ([`wait_backend_ready`]: the backend path is read
    /// anew) and [`connect`](Self::connect) with `env` and `config`.
    ///
    /// Unbounded if the device never comes back: the caller bounds it with
    /// a timeout; dropping the future leaves no grant reusable.
    pub async fn reconnect<T: XsTransport>(
        self,
        env: E,
        xs: &mut XenStore<T>,
        config: BlkConfig,
    ) -> Result<Self, BlkError> {
        let path = self.dev.path.clone();
        let stats = self.close(xs).await;
        if stats.leaked_grants > 0 {
            log::warn!(
                "blkfront: {path}: {} grants still mapped by the old backend: leaked",
                stats.leaked_grants
            );
        }
        wait_backend_ready(xs, &path).await?;
        Self::connect(env, xs, &path, config).await
    }
}

/// What [`BlkFront::connect`] has set up before the device owns it.
struct Setup<E: BlkEnv> {
    env: Option<E>,
    ring: Option<E::Ring>,
    grefs: Vec<GrantRef>,
    port: Option<Port>,
}

impl<E: BlkEnv> Drop for Setup<E> {
    fn drop(&mut self) {
        if let Some(env) = self.env.as_mut() {
            for gref in self.grefs.drain(..) {
                // A grant the backend maps stays; its page is deferred
                // when the ring drops below.
                let _ = env.revoke(gref);
            }
            if let Some(port) = self.port.take() {
                env.close(port);
            }
        }
        self.ring = None;
    }
}

impl<E: BlkEnv> Drop for BlkFront<E> {
    fn drop(&mut self) {
        let inner = self.inner.get_mut();
        if !inner.released {
            inner.release_everything();
        }
    }
}

/// Whether a backend in `state` has let go of the ring (or is gone).
fn backend_closed(state: XenbusState) -> bool {
    matches!(
        state,
        XenbusState::Closed
            | XenbusState::Unknown
            | XenbusState::Initialising
            | XenbusState::InitWait
    )
}

/// Wait until the backend of `dev` is `Closed`, gone, or starting again.
async fn wait_backend_closed<T: XsTransport>(
    xs: &mut XenStore<T>,
    dev: &XenbusDevice,
) -> Result<(), BlkError> {
    let node = format!("{}/state", dev.backend);
    let token = format!("blkfront-closed:{}", dev.path);
    let mut watches = WatchGuard::new(xs);
    let result = async {
        watches.add(&node, &token).await?;
        loop {
            if backend_closed(read_state(&mut watches, &dev.backend).await?) {
                return Ok(());
            }
            watches.next_watch_event_for(&token).await?;
        }
    }
    .await;
    let _ = watches.close().await;
    result
}

/// Wait until the device at `path` is offered again (see
/// [`xen::xenbus::wait_backend_ready`], which also asks a `Closed` but
/// still online backend to prepare for a reconnection, as Linux blkback
/// expects). Unbounded: the caller bounds it with a timeout.
pub async fn wait_backend_ready<T: XsTransport>(
    xs: &mut XenStore<T>,
    path: &str,
) -> Result<(), BlkError> {
    Ok(xen::xenbus::wait_backend_ready(xs, path).await?)
}

/// The caller's buffer of a transfer.
enum Data<'a> {
    Read(&'a mut [u8]),
    Write(&'a [u8]),
}

impl Data<'_> {
    fn len(&self) -> usize {
        match self {
            Data::Read(b) => b.len(),
            Data::Write(d) => d.len(),
        }
    }
}

/// The requests one operation has in flight: `(id, offset, length)`.
/// Dropping it (the operation finished, failed or was cancelled) abandons
/// those still unanswered, so their slots and pages come back when the
/// responses arrive, and wakes the other waiters so one of them takes over
/// waiting for events.
struct Pending<'a, E: BlkEnv> {
    front: &'a BlkFront<E>,
    items: Vec<(u64, usize, usize)>,
}

impl<'a, E: BlkEnv> Pending<'a, E> {
    fn new(front: &'a BlkFront<E>) -> Self {
        Self {
            front,
            items: Vec::new(),
        }
    }
}

impl<E: BlkEnv> Drop for Pending<'_, E> {
    fn drop(&mut self) {
        if let Ok(mut inner) = self.front.inner.try_borrow_mut() {
            for &(id, _, _) in &self.items {
                inner.abandon(id);
            }
            inner.wake_all();
        }
    }
}

fn split_id(id: u64) -> (usize, u32) {
    ((id & 0xffff_ffff) as usize, (id >> 32) as u32)
}

impl<E: BlkEnv> Inner<E> {
    fn check_usable(&self) -> Result<(), BlkError> {
        if let Some(v) = self.broken {
            return Err(BlkError::Protocol(v));
        }
        if let Some(state) = self.gone {
            return Err(BlkError::BackendGone(state));
        }
        if self.disconnected {
            return Err(BlkError::Disconnected);
        }
        Ok(())
    }

    fn break_with(&mut self, violation: ProtocolViolation) -> BlkError {
        if self.broken.is_none() {
            self.broken = Some(violation);
            log::warn!("blkfront: backend broke the protocol: {violation:?}; disconnecting");
        }
        self.wake_all();
        BlkError::Protocol(violation)
    }

    fn wake_all(&mut self) {
        for w in self.space_waiters.drain(..) {
            w.wake();
        }
        for r in self.slots.iter_mut().flatten() {
            if let Some(w) = r.waker.take() {
                w.wake();
            }
        }
    }

    fn mark_disconnected(&mut self) {
        self.disconnected = true;
        self.wake_all();
    }

    fn forget_feature(&mut self, op: Op) {
        match op {
            Op::Flush => self.info.flush_cache = false,
            Op::Barrier => self.info.barrier = false,
            Op::Discard { .. } => self.info.discard = false,
            Op::Read | Op::Write => {}
        }
    }

    /// Put one request on the ring. `Ok(None)`: no slot or pages free now.
    fn try_submit(
        &mut self,
        op: Op,
        sector_512: u64,
        len: usize,
        payload: Option<&[u8]>,
    ) -> Result<Option<u64>, BlkError> {
        self.check_usable()?;
        let Some(&index) = self.free_slots.last() else {
            return Ok(None);
        };
        let data_pages = len.div_ceil(PAGE_SIZE);
        let indirect = data_pages > BLKIF_MAX_SEGMENTS_PER_REQUEST;
        if data_pages > self.segments_per_request || (indirect && !self.indirect) {
            return Err(BlkError::OutOfRange);
        }
        let indirect_pages = if indirect {
            data_pages.div_ceil(BLKIF_SEGMENTS_PER_INDIRECT_PAGE)
        } else {
            0
        };
        let in_flight = self.slots.len() - self.free_slots.len();
        let pages = match self.pool.take(&mut self.env, data_pages + indirect_pages) {
            Ok(Some(pages)) => pages,
            Ok(None) => return Ok(None),
            // Out of pages or grants with others in flight: wait for them.
            Err(_) if in_flight > 0 => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut copied = true;
        if let Some(payload) = payload {
            for (i, &p) in pages.iter().take(data_pages).enumerate() {
                let from = i * PAGE_SIZE;
                let to = (from + PAGE_SIZE).min(payload.len());
                copied &= match (self.pool.page(p), payload.get(from..to)) {
                    (Some(page), Some(bytes)) => page.write(0, bytes).is_ok(),
                    _ => false,
                };
            }
        }
        let segments: Vec<BlkifRequestSegment> = (0..data_pages)
            .map(|i| {
                let sectors = (len - i * PAGE_SIZE).min(PAGE_SIZE) / BLKIF_SECTOR_SIZE;
                BlkifRequestSegment {
                    gref: pages.get(i).map_or(0, |&p| self.pool.gref(p)),
                    first_sect: 0,
                    last_sect: (sectors.clamp(1, SECTORS_PER_PAGE) - 1) as u8,
                    pad: 0,
                }
            })
            .collect();

        let generation = self.generations.get(index).copied().unwrap_or(0);
        let id = (u64::from(generation) << 32) | index as u64;
        let (operation, inner_operation) = match op {
            Op::Read => (BLKIF_OP_READ, BLKIF_OP_READ),
            Op::Write => (BLKIF_OP_WRITE, BLKIF_OP_WRITE),
            Op::Flush => (BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_FLUSH_DISKCACHE),
            Op::Barrier => (BLKIF_OP_WRITE_BARRIER, BLKIF_OP_WRITE_BARRIER),
            Op::Discard { .. } => (BLKIF_OP_DISCARD, BLKIF_OP_DISCARD),
        };
        let slot = if let Op::Discard { sectors_512 } = op {
            BlkifRequestDiscard {
                operation,
                handle: self.handle,
                id,
                sector_number: sector_512,
                nr_sectors: sectors_512,
                ..Default::default()
            }
            .to_slot()
        } else if indirect {
            let mut indirect_grefs = [0; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST];
            for (k, &p) in pages.iter().skip(data_pages).enumerate() {
                if let Some(g) = indirect_grefs.get_mut(k) {
                    *g = self.pool.gref(p);
                }
                let list = segments
                    .iter()
                    .skip(k * BLKIF_SEGMENTS_PER_INDIRECT_PAGE)
                    .take(BLKIF_SEGMENTS_PER_INDIRECT_PAGE);
                for (j, seg) in list.enumerate() {
                    copied &= self.pool.page(p).is_some_and(|page| {
                        page.write(j * BLKIF_SEGMENT_SIZE, &seg.to_bytes()).is_ok()
                    });
                }
            }
            BlkifRequestIndirect {
                operation: BLKIF_OP_INDIRECT,
                indirect_op: operation,
                nr_segments: data_pages as u16,
                id,
                sector_number: sector_512,
                handle: self.handle,
                indirect_grefs,
                ..Default::default()
            }
            .to_slot()
        } else {
            let mut seg = [BlkifRequestSegment::default(); BLKIF_MAX_SEGMENTS_PER_REQUEST];
            for (out, s) in seg.iter_mut().zip(&segments) {
                *out = *s;
            }
            BlkifRequest {
                operation,
                nr_segments: data_pages as u8,
                handle: self.handle,
                id,
                sector_number: sector_512,
                seg,
                ..Default::default()
            }
            .to_slot()
        };

        if !copied {
            // Cannot happen: every copy above stays inside its page.
            self.pool.give_back(&pages);
            return Err(BlkError::OutOfRange);
        }
        let Some(ring) = self.ring.as_mut() else {
            self.pool.give_back(&pages);
            return Err(BlkError::Disconnected);
        };
        if ring.ring().queue_request(slot).is_err() {
            // More requests on the ring than table slots taken: cannot
            // happen while responses are only consumed by `drain`; wait.
            self.pool.give_back(&pages);
            return Ok(None);
        }
        let notify = ring.ring().push_requests_and_check_notify();
        self.free_slots.pop();
        if let Some(s) = self.slots.get_mut(index) {
            *s = Some(InFlight {
                generation,
                operation: if indirect {
                    BLKIF_OP_INDIRECT
                } else {
                    operation
                },
                inner_operation,
                pages,
                status: None,
                waker: None,
                abandoned: false,
            });
        }
        if notify {
            self.env.notify(self.port);
            self.stats.notifications += 1;
        }
        self.stats.requests += 1;
        self.stats.indirect_requests += u64::from(indirect);
        let in_flight = (self.slots.len() - self.free_slots.len()) as u32;
        self.stats.max_in_flight = self.stats.max_in_flight.max(in_flight);
        Ok(Some(id))
    }

    /// Take every published response and record it against its request.
    fn drain(&mut self) -> Result<(), BlkError> {
        self.check_usable()?;
        loop {
            let Some(ring) = self.ring.as_mut() else {
                return Err(BlkError::Disconnected);
            };
            let rsp = match ring.ring().take_response() {
                Ok(Some(rsp)) => rsp,
                Ok(None) => return Ok(()),
                Err(e) => return Err(self.break_with(ProtocolViolation::Ring(e))),
            };
            self.stats.responses += 1;
            if let Err(v) = self.record(rsp) {
                return Err(self.break_with(v));
            }
        }
    }

    fn record(&mut self, rsp: BlkifResponse) -> Result<(), ProtocolViolation> {
        let (index, generation) = split_id(rsp.id);
        let unknown = ProtocolViolation::UnknownId(rsp.id);
        let req = match self.slots.get_mut(index) {
            Some(Some(r)) if r.generation == generation && r.status.is_none() => r,
            _ => return Err(unknown),
        };
        if rsp.operation != req.operation && rsp.operation != req.inner_operation {
            return Err(ProtocolViolation::WrongOperation {
                id: rsp.id,
                operation: rsp.operation,
            });
        }
        if !matches!(
            rsp.status,
            BLKIF_RSP_OKAY | BLKIF_RSP_ERROR | BLKIF_RSP_EOPNOTSUPP
        ) {
            return Err(ProtocolViolation::BadStatus {
                id: rsp.id,
                status: rsp.status,
            });
        }
        req.status = Some(rsp.status);
        if rsp.status != BLKIF_RSP_OKAY {
            self.stats.failed += 1;
        }
        if req.abandoned {
            self.release(index);
        } else if let Some(w) = req.waker.take() {
            w.wake();
        }
        Ok(())
    }

    /// Free table entry `index` and its pages.
    fn release(&mut self, index: usize) {
        if let Some(req) = self.slots.get_mut(index).and_then(Option::take) {
            self.pool.give_back(&req.pages);
            if let Some(g) = self.generations.get_mut(index) {
                *g = g.wrapping_add(1);
            }
            self.free_slots.push(index);
            for w in self.space_waiters.drain(..) {
                w.wake();
            }
        }
    }

    /// If request `id` is answered: copy a read's data into `buf`, free it,
    /// and return its result.
    fn take_completion(&mut self, id: u64, buf: Option<&mut [u8]>) -> Option<Result<(), BlkError>> {
        let (index, generation) = split_id(id);
        let req = self.slots.get(index)?.as_ref()?;
        if req.generation != generation {
            return None;
        }
        let status = req.status?;
        let mut result = match status {
            BLKIF_RSP_OKAY => Ok(()),
            BLKIF_RSP_EOPNOTSUPP => Err(BlkError::NotSupported),
            _ => Err(BlkError::Io),
        };
        if let (Ok(()), Some(buf)) = (result, buf) {
            for (chunk, &p) in buf.chunks_mut(PAGE_SIZE).zip(&req.pages) {
                let read = self.pool.page(p).map(|page| page.read(0, chunk));
                if !matches!(read, Some(Ok(()))) {
                    // Cannot happen: chunks are at most a page.
                    result = Err(BlkError::OutOfRange);
                }
            }
        }
        self.release(index);
        Some(result)
    }

    fn abandon(&mut self, id: u64) {
        let (index, generation) = split_id(id);
        let answered = match self.slots.get_mut(index) {
            Some(Some(r)) if r.generation == generation => {
                r.abandoned = true;
                r.waker = None;
                r.status.is_some()
            }
            _ => return,
        };
        if answered {
            self.release(index);
        }
    }

    /// Nothing to do now: register for a wake-up (on our requests, for
    /// ring space, and on the event channel). `Ready` if there may be new
    /// responses already.
    fn wait(
        &mut self,
        cx: &mut Context<'_>,
        items: &[(u64, usize, usize)],
    ) -> Result<Poll<()>, BlkError> {
        for &(id, _, _) in items {
            let (index, _) = split_id(id);
            if let Some(Some(r)) = self.slots.get_mut(index) {
                r.waker = Some(cx.waker().clone());
            }
        }
        let registered = self.space_waiters.iter().any(|w| w.will_wake(cx.waker()));
        if (self.free_slots.is_empty() || items.is_empty()) && !registered {
            self.space_waiters.push(cx.waker().clone());
        }
        let Some(ring) = self.ring.as_mut() else {
            return Err(BlkError::Disconnected);
        };
        match ring.ring().final_check_for_responses() {
            Ok(true) => return Ok(Poll::Ready(())),
            Ok(false) => {}
            Err(e) => return Err(self.break_with(ProtocolViolation::Ring(e))),
        }
        Ok(self.env.poll_event(self.port, cx))
    }

    /// At disconnect: end every grant, close the port, free the ring
    /// unless the backend still holds it.
    fn release_everything(&mut self) {
        if self.released {
            return;
        }
        self.released = true;
        self.disconnected = true;
        let leaked = self.pool.revoke_all(&mut self.env);
        let mut ring_leaked = 0;
        for gref in self.ring_grefs.drain(..) {
            if self.env.revoke(gref).is_err() {
                ring_leaked += 1;
            }
        }
        // A ring the backend still maps is deferred by the page type when
        // dropped here, never freed while mapped.
        self.ring = None;
        self.env.close(self.port);
        self.stats.leaked_grants += (leaked + ring_leaked) as u32;
        for s in self.slots.iter_mut() {
            *s = None;
        }
        self.free_slots.clear();
        self.wake_all();
    }
}
