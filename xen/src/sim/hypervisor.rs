//! Simulated pages, grant tables and event channels of several domains.
//!
//! One [`SimHypervisor`] is shared (it is a cheap handle) by every party of
//! a test. Pages are heap allocations with a frame number; a domain grants
//! one of its frames to another, which may then map it (getting a
//! [`SimPage`] onto the same memory) or copy to or from it, as Xen's grant
//! map and grant copy do, with the same checks (grantee, read-only, in-use
//! flags). Event channels are port pairs with a pending bit and a waker.
//!
//! Pages follow the kernel's ownership model for granted memory
//! (`xen::grant`, "Who owns a granted page"): the handle
//! [`alloc_page`](SimHypervisor::alloc_page) returns is the owner's; when
//! its last clone is dropped, every grant still naming the frame is ended,
//! and a frame some domain still maps goes to its granter's deferred list
//! (a [`GrantLedger`]) instead of being freed, retried at every later page
//! allocation and grant, or by [`retry_deferred`](SimHypervisor::retry_deferred).
//! [`frames_in_use`](SimHypervisor::frames_in_use),
//! [`deferred_frames`](SimHypervisor::deferred_frames) and
//! [`grants_of`](SimHypervisor::grants_of) let tests assert flat counts; a
//! backend that keeps its mappings forever is one that never calls
//! [`unmap_grant`](SimHypervisor::unmap_grant) (or holds its
//! [`SimMapping`]).

extern crate std;

use crate::abi::grant_table::{
    GnttabCopy, GnttabCopyPtr, GNTCOPY_DEST_GREF, GNTCOPY_SOURCE_GREF, GTF_PERMIT_ACCESS,
    GTF_READING, GTF_READONLY, GTF_WRITING,
};
use crate::abi::{DomId, GrantRef, Port, DOMID_SELF};
use crate::grant::{GrantError, GrantLedger};
use crate::shared_page::{PageMemory, SharedPage, PAGE_SIZE};
use core::cell::{RefCell, UnsafeCell};
use std::boxed::Box;
use std::collections::BTreeMap;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};
use std::vec::Vec;

#[repr(C, align(4096))]
struct AlignedPage(UnsafeCell<[u8; PAGE_SIZE]>);

struct PageInner {
    mem: Box<AlignedPage>,
    frame: u64,
}

/// A simulated page: every clone (the owner's, each mapping's) is the same
/// memory. The owner's handle (from [`SimHypervisor::alloc_page`]) also
/// carries the page's ownership: dropping its last clone gives the page
/// back, or defers it while a grant of it cannot be ended.
#[derive(Clone)]
pub struct SimPage {
    inner: Rc<PageInner>,
    /// Held for its `Drop` only.
    _owner: Option<Rc<Owner>>,
}

/// The owner's stake in a page: given back when dropped.
struct Owner {
    hv: Weak<RefCell<State>>,
    inner: Rc<PageInner>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        if let Some(state) = self.hv.upgrade() {
            if let Ok(mut s) = state.try_borrow_mut() {
                s.release(self.inner.clone());
            }
        }
    }
}

// SAFETY: the boxed, 4096-aligned array lives as long as any clone; its
// address never changes; it is only accessed through raw pointers
// (`UnsafeCell::get`), never through Rust references.
unsafe impl PageMemory for SimPage {
    fn as_ptr(&self) -> *mut u8 {
        self.inner.mem.0.get().cast()
    }
    fn frame(&self) -> u64 {
        self.inner.frame
    }
}

/// Why a simulated hypercall failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimError {
    /// Bad grant reference, wrong grantee or revoked grant.
    BadGrant,
    /// Write access to a read-only grant.
    ReadOnly,
    /// Offset or length beyond the page.
    OutOfPage,
    /// No such port, or not bound.
    BadPort,
    /// The domain no longer exists.
    NoDomain,
}

struct Grant {
    grantee: DomId,
    frame: u64,
    readonly: bool,
    maps: u32,
}

struct PortState {
    remote: Option<(DomId, Port)>,
    /// For an unbound port: who may bind.
    allowed: DomId,
    pending: bool,
    waker: Option<Waker>,
    sent: u64,
}

#[derive(Default)]
struct State {
    next_frame: u64,
    frames: BTreeMap<u64, Weak<PageInner>>,
    grants: BTreeMap<(DomId, GrantRef), Grant>,
    next_gref: BTreeMap<DomId, GrantRef>,
    free_grefs: BTreeMap<DomId, Vec<GrantRef>>,
    ports: BTreeMap<(DomId, Port), PortState>,
    next_port: BTreeMap<DomId, Port>,
    dead: Vec<DomId>,
    /// Grant-table operations (grant + revoke) per domain.
    grant_ops: BTreeMap<DomId, u64>,
    /// Owners of frames allocated with [`SimHypervisor::alloc_page_of`].
    owners: BTreeMap<u64, DomId>,
    /// `GNTTABOP_copy` segments attempted per domain.
    copy_ops: BTreeMap<DomId, u64>,
    /// Each granter's ledger: frames of live grants, deferred pages.
    ledgers: BTreeMap<DomId, GrantLedger<Rc<PageInner>>>,
    /// Pages allocated and not given back (deferred ones included).
    frames_in_use: usize,
    /// Grant table sizes other than [`GRANT_ENTRIES`].
    table_sizes: BTreeMap<DomId, GrantRef>,
}

impl State {
    /// End `dom`'s grant `gref` (the table only, not the ledger).
    fn end_raw(&mut self, dom: DomId, gref: GrantRef) -> Result<(), GrantError> {
        match self.grants.get(&(dom, gref)) {
            None => Err(GrantError::NotGranted),
            Some(g) if g.maps > 0 => Err(GrantError::InUse),
            Some(_) => {
                self.grants.remove(&(dom, gref));
                self.free_grefs.entry(dom).or_default().push(gref);
                Ok(())
            }
        }
    }

    /// The owner let go of `page`: free it, or defer it in its granter's
    /// ledger while a grant of it cannot be ended.
    fn release(&mut self, page: Rc<PageInner>) {
        let frame = page.frame;
        let granter = self
            .ledgers
            .iter()
            .find(|(_, l)| l.is_granted(frame))
            .map(|(d, _)| *d);
        let Some(dom) = granter else {
            self.frames_in_use -= 1;
            return;
        };
        let mut ledger = self.ledgers.remove(&dom).unwrap_or_default();
        if ledger
            .release(frame, page, |g| self.end_raw(dom, g))
            .is_some()
        {
            self.frames_in_use -= 1;
        }
        self.ledgers.insert(dom, ledger);
    }

    fn retry_deferred(&mut self) {
        let doms: Vec<DomId> = self.ledgers.keys().copied().collect();
        for dom in doms {
            let mut ledger = self.ledgers.remove(&dom).unwrap_or_default();
            if ledger.deferred() > 0 {
                let freed = ledger.retry(|g| self.end_raw(dom, g));
                self.frames_in_use -= freed.len();
            }
            self.ledgers.insert(dom, ledger);
        }
    }
}

/// `GNTST_*` statuses the simulated grant copy reports.
pub mod gntst {
    /// `GNTST_bad_domain`.
    pub const BAD_DOMAIN: i16 = -2;
    /// `GNTST_bad_gntref`.
    pub const BAD_GNTREF: i16 = -3;
    /// `GNTST_permission_denied`.
    pub const PERMISSION_DENIED: i16 = -8;
    /// `GNTST_bad_page`.
    pub const BAD_PAGE: i16 = -9;
    /// `GNTST_bad_copy_arg`.
    pub const BAD_COPY_ARG: i16 = -10;
}

/// A foreign grant mapped by [`SimHypervisor::map_grant_owned`]: the same
/// memory as the granter's page, unmapped when dropped (as a kernel's
/// mapping of a foreign page is).
pub struct SimMapping {
    page: SimPage,
    hv: SimHypervisor,
    granter: DomId,
    gref: GrantRef,
}

// SAFETY: delegates to the `SimPage` it holds, which stays alive (and so
// valid) as long as this value.
unsafe impl PageMemory for SimMapping {
    fn as_ptr(&self) -> *mut u8 {
        self.page.as_ptr()
    }
    fn frame(&self) -> u64 {
        self.page.frame()
    }
}

impl Drop for SimMapping {
    fn drop(&mut self) {
        self.hv.unmap_grant(self.granter, self.gref);
    }
}

/// Handle to the simulated hypervisor.
#[derive(Clone, Default)]
pub struct SimHypervisor(Rc<RefCell<State>>);

/// First grant reference handed out (below are the toolstack's).
const FIRST_GREF: GrantRef = 8;
/// Grant entries per domain.
pub const GRANT_ENTRIES: GrantRef = 4096;

impl SimHypervisor {
    /// An empty machine.
    pub fn new() -> Self {
        let h = Self::default();
        h.0.borrow_mut().next_frame = 0x1000;
        h
    }

    /// A new zeroed page; the handle is its owner's (see the module's
    /// ownership model). Deferred pages are retried first.
    pub fn alloc_page(&self) -> SharedPage<SimPage> {
        let mut s = self.0.borrow_mut();
        s.retry_deferred();
        let frame = s.next_frame;
        s.next_frame += 1;
        let inner = Rc::new(PageInner {
            mem: Box::new(AlignedPage(UnsafeCell::new([0; PAGE_SIZE]))),
            frame,
        });
        s.frames.insert(frame, Rc::downgrade(&inner));
        s.frames_in_use += 1;
        let owner = Rc::new(Owner {
            hv: Rc::downgrade(&self.0),
            inner: inner.clone(),
        });
        SharedPage::new(SimPage {
            inner,
            _owner: Some(owner),
        })
    }

    /// Pages allocated with [`alloc_page`](Self::alloc_page) and not given
    /// back yet: owned ones and deferred ones (a leak check).
    pub fn frames_in_use(&self) -> usize {
        self.0.borrow().frames_in_use
    }

    /// Pages whose owner let go of them while a grant of theirs was still
    /// mapped: kept, not freed, until a retry can end the grant.
    pub fn deferred_frames(&self) -> usize {
        self.0.borrow().ledgers.values().map(|l| l.deferred()).sum()
    }

    /// Pages ever deferred, and deferred pages freed later, over every
    /// domain.
    pub fn deferred_stats(&self) -> (u64, u64) {
        let s = self.0.borrow();
        s.ledgers.values().fold((0, 0), |(d, f), l| {
            (d + l.deferred_total(), f + l.freed_late())
        })
    }

    /// Try to end the grants of the deferred pages again (as the kernel
    /// does at every allocation and grant); frees those that ended.
    pub fn retry_deferred(&self) {
        self.0.borrow_mut().retry_deferred();
    }

    /// A new zeroed page owned by `dom`: [`grant_copy`](Self::grant_copy)
    /// lets only `dom` name it as a local frame.
    pub fn alloc_page_of(&self, dom: DomId) -> SharedPage<SimPage> {
        let page = self.alloc_page();
        self.0.borrow_mut().owners.insert(page.frame(), dom);
        page
    }

    /// `dom` grants `grantee` access to its frame `frame`.
    pub fn grant_access(
        &self,
        dom: DomId,
        grantee: DomId,
        frame: u64,
        readonly: bool,
    ) -> Result<GrantRef, GrantError> {
        let mut s = self.0.borrow_mut();
        *s.grant_ops.entry(dom).or_default() += 1;
        s.retry_deferred();
        let gref = match s.free_grefs.entry(dom).or_default().pop() {
            Some(g) => g,
            None => {
                let size = s.table_sizes.get(&dom).copied().unwrap_or(GRANT_ENTRIES);
                let next = s.next_gref.entry(dom).or_insert(FIRST_GREF);
                if *next >= size {
                    return Err(GrantError::Exhausted);
                }
                *next += 1;
                *next - 1
            }
        };
        s.grants.insert(
            (dom, gref),
            Grant {
                grantee,
                frame,
                readonly,
                maps: 0,
            },
        );
        s.ledgers.entry(dom).or_default().granted(gref, frame);
        Ok(gref)
    }

    /// Give `dom`'s grant table `entries` entries (reserved ones included;
    /// [`GRANT_ENTRIES`] otherwise), as a smaller `max_grant_frames` would
    /// (512 entries a frame). References above it already handed out stay.
    pub fn set_grant_entries(&self, dom: DomId, entries: GrantRef) {
        self.0.borrow_mut().table_sizes.insert(dom, entries);
    }

    /// `dom` revokes `gref`; refused while mapped.
    pub fn end_access(&self, dom: DomId, gref: GrantRef) -> Result<(), GrantError> {
        let mut s = self.0.borrow_mut();
        *s.grant_ops.entry(dom).or_default() += 1;
        s.end_raw(dom, gref)?;
        if let Some(l) = s.ledgers.get_mut(&dom) {
            l.ended(gref);
        }
        Ok(())
    }

    /// The grant entry's flags as Xen would show them (`GTF_*`), if granted.
    pub fn grant_flags(&self, dom: DomId, gref: GrantRef) -> Option<u16> {
        let s = self.0.borrow();
        let g = s.grants.get(&(dom, gref))?;
        let mut f = GTF_PERMIT_ACCESS;
        if g.readonly {
            f |= GTF_READONLY;
        }
        if g.maps > 0 {
            f |= GTF_READING | if g.readonly { 0 } else { GTF_WRITING };
        }
        Some(f)
    }

    /// Grants `dom` currently has outstanding.
    pub fn grants_of(&self, dom: DomId) -> usize {
        self.0
            .borrow()
            .grants
            .keys()
            .filter(|(d, _)| *d == dom)
            .count()
    }

    /// Grant and revoke operations `dom` has made so far.
    pub fn grant_ops(&self, dom: DomId) -> u64 {
        self.0.borrow().grant_ops.get(&dom).copied().unwrap_or(0)
    }

    fn check_grant(
        s: &State,
        mapper: DomId,
        granter: DomId,
        gref: GrantRef,
        write: bool,
    ) -> Result<SimPage, SimError> {
        if s.dead.contains(&mapper) || s.dead.contains(&granter) {
            return Err(SimError::NoDomain);
        }
        let g = s.grants.get(&(granter, gref)).ok_or(SimError::BadGrant)?;
        if g.grantee != mapper {
            return Err(SimError::BadGrant);
        }
        if write && g.readonly {
            return Err(SimError::ReadOnly);
        }
        let inner = s
            .frames
            .get(&g.frame)
            .and_then(Weak::upgrade)
            .ok_or(SimError::BadGrant)?;
        Ok(SimPage {
            inner,
            _owner: None,
        })
    }

    /// `mapper` maps `granter`'s grant `gref` (`GNTTABOP_map_grant_ref`).
    pub fn map_grant(
        &self,
        mapper: DomId,
        granter: DomId,
        gref: GrantRef,
        readonly: bool,
    ) -> Result<SharedPage<SimPage>, SimError> {
        let mut s = self.0.borrow_mut();
        let page = Self::check_grant(&s, mapper, granter, gref, !readonly)?;
        if let Some(g) = s.grants.get_mut(&(granter, gref)) {
            g.maps += 1;
        }
        Ok(SharedPage::new(page))
    }

    /// Undo one [`map_grant`](Self::map_grant).
    pub fn unmap_grant(&self, granter: DomId, gref: GrantRef) {
        if let Some(g) = self.0.borrow_mut().grants.get_mut(&(granter, gref)) {
            g.maps = g.maps.saturating_sub(1);
        }
    }

    /// Like [`map_grant`](Self::map_grant), but the mapping unmaps itself
    /// when dropped.
    pub fn map_grant_owned(
        &self,
        mapper: DomId,
        granter: DomId,
        gref: GrantRef,
        readonly: bool,
    ) -> Result<SharedPage<SimMapping>, SimError> {
        let page = self.map_grant(mapper, granter, gref, readonly)?;
        Ok(SharedPage::new(SimMapping {
            page: page.memory().clone(),
            hv: self.clone(),
            granter,
            gref,
        }))
    }

    /// Maps `granter`'s grants `mapper` holds (as [`grant_flags`](Self::grant_flags)
    /// counts them).
    pub fn maps_of(&self, mapper: DomId, granter: DomId) -> u32 {
        self.0
            .borrow()
            .grants
            .iter()
            .filter(|((d, _), g)| *d == granter && g.grantee == mapper)
            .map(|(_, g)| g.maps)
            .sum()
    }

    /// `GNTTABOP_copy` segments `dom` has asked for so far.
    pub fn copy_ops(&self, dom: DomId) -> u64 {
        self.0.borrow().copy_ops.get(&dom).copied().unwrap_or(0)
    }

    fn copy_end(
        s: &State,
        dom: DomId,
        end: &GnttabCopyPtr,
        is_gref: bool,
        write: bool,
    ) -> Result<SimPage, i16> {
        if is_gref {
            let gref = GrantRef::try_from(end.u).map_err(|_| gntst::BAD_GNTREF)?;
            return Self::check_grant(s, dom, end.domid, gref, write).map_err(|e| match e {
                SimError::NoDomain => gntst::BAD_DOMAIN,
                SimError::ReadOnly => gntst::PERMISSION_DENIED,
                _ => gntst::BAD_GNTREF,
            });
        }
        if end.domid != DOMID_SELF && end.domid != dom {
            return Err(gntst::BAD_DOMAIN);
        }
        if s.owners.get(&end.u).is_some_and(|owner| *owner != dom) {
            return Err(gntst::BAD_PAGE);
        }
        s.frames
            .get(&end.u)
            .and_then(Weak::upgrade)
            .map(|inner| SimPage {
                inner,
                _owner: None,
            })
            .ok_or(gntst::BAD_PAGE)
    }

    fn copy_one(&self, dom: DomId, op: &GnttabCopy) -> Result<(), i16> {
        let s = self.0.borrow();
        if s.dead.contains(&dom) {
            return Err(gntst::BAD_DOMAIN);
        }
        let src = Self::copy_end(
            &s,
            dom,
            &op.source,
            op.flags & GNTCOPY_SOURCE_GREF != 0,
            false,
        )?;
        let dst = Self::copy_end(&s, dom, &op.dest, op.flags & GNTCOPY_DEST_GREF != 0, true)?;
        drop(s);
        let len = usize::from(op.len);
        let mut buf = std::vec![0u8; len];
        SharedPage::new(src)
            .read(usize::from(op.source.offset), &mut buf)
            .map_err(|_| gntst::BAD_COPY_ARG)?;
        SharedPage::new(dst)
            .write(usize::from(op.dest.offset), &buf)
            .map_err(|_| gntst::BAD_COPY_ARG)
    }

    /// `GNTTABOP_copy` by `dom`: each segment copies between a grant
    /// (`GNTCOPY_*_gref`) and a local frame (or two of either), with Xen's
    /// checks; its `status` is set to `GNTST_okay` or the failure, the
    /// other segments going ahead regardless.
    pub fn grant_copy(&self, dom: DomId, ops: &mut [GnttabCopy]) {
        *self.0.borrow_mut().copy_ops.entry(dom).or_default() += ops.len() as u64;
        for op in ops {
            op.status = match self.copy_one(dom, op) {
                Ok(()) => 0,
                Err(status) => status,
            };
        }
    }

    /// Grant copy out of `granter`'s page into `dst` (`GNTTABOP_copy`).
    pub fn copy_from_grant(
        &self,
        mapper: DomId,
        granter: DomId,
        gref: GrantRef,
        offset: usize,
        dst: &mut [u8],
    ) -> Result<(), SimError> {
        let page = Self::check_grant(&self.0.borrow(), mapper, granter, gref, false)?;
        SharedPage::new(page)
            .read(offset, dst)
            .map_err(|_| SimError::OutOfPage)
    }

    /// Grant copy from `src` into `granter`'s page.
    pub fn copy_to_grant(
        &self,
        mapper: DomId,
        granter: DomId,
        gref: GrantRef,
        offset: usize,
        src: &[u8],
    ) -> Result<(), SimError> {
        let page = Self::check_grant(&self.0.borrow(), mapper, granter, gref, true)?;
        SharedPage::new(page)
            .write(offset, src)
            .map_err(|_| SimError::OutOfPage)
    }

    fn new_port(s: &mut State, dom: DomId) -> Port {
        let next = s.next_port.entry(dom).or_insert(1);
        *next += 1;
        *next - 1
    }

    /// `dom` allocates a port `remote` may bind (`EVTCHNOP_alloc_unbound`).
    pub fn alloc_unbound(&self, dom: DomId, remote: DomId) -> Result<Port, SimError> {
        let mut s = self.0.borrow_mut();
        if s.dead.contains(&dom) {
            return Err(SimError::NoDomain);
        }
        let port = Self::new_port(&mut s, dom);
        s.ports.insert(
            (dom, port),
            PortState {
                remote: None,
                allowed: remote,
                pending: false,
                waker: None,
                sent: 0,
            },
        );
        Ok(port)
    }

    /// `dom` binds to `remote`'s unbound `remote_port`.
    pub fn bind_interdomain(
        &self,
        dom: DomId,
        remote: DomId,
        remote_port: Port,
    ) -> Result<Port, SimError> {
        let mut s = self.0.borrow_mut();
        if s.dead.contains(&dom) || s.dead.contains(&remote) {
            return Err(SimError::NoDomain);
        }
        match s.ports.get(&(remote, remote_port)) {
            Some(p) if p.remote.is_none() && p.allowed == dom => {}
            _ => return Err(SimError::BadPort),
        }
        let port = Self::new_port(&mut s, dom);
        s.ports.insert(
            (dom, port),
            PortState {
                remote: Some((remote, remote_port)),
                allowed: remote,
                pending: false,
                waker: None,
                sent: 0,
            },
        );
        if let Some(p) = s.ports.get_mut(&(remote, remote_port)) {
            p.remote = Some((dom, port));
        }
        Ok(port)
    }

    /// `dom` notifies the other end of `port` (`EVTCHNOP_send`).
    pub fn send(&self, dom: DomId, port: Port) -> Result<(), SimError> {
        let mut s = self.0.borrow_mut();
        let me = s.ports.get_mut(&(dom, port)).ok_or(SimError::BadPort)?;
        me.sent += 1;
        let remote = me.remote;
        let (rd, rp) = remote.ok_or(SimError::BadPort)?;
        let peer = s.ports.get_mut(&(rd, rp)).ok_or(SimError::BadPort)?;
        peer.pending = true;
        if let Some(w) = peer.waker.take() {
            w.wake();
        }
        Ok(())
    }

    /// Events sent from `dom`'s `port` so far.
    pub fn sent(&self, dom: DomId, port: Port) -> u64 {
        self.0
            .borrow()
            .ports
            .get(&(dom, port))
            .map_or(0, |p| p.sent)
    }

    /// Whether an event is pending on `dom`'s `port` (without clearing it).
    pub fn is_pending(&self, dom: DomId, port: Port) -> bool {
        self.0
            .borrow()
            .ports
            .get(&(dom, port))
            .is_some_and(|p| p.pending)
    }

    /// Ready (and the pending bit cleared) once an event arrived on `dom`'s
    /// `port`; a closed port is always ready, so waiters notice.
    pub fn poll_event(&self, dom: DomId, port: Port, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = self.0.borrow_mut();
        match s.ports.get_mut(&(dom, port)) {
            None => Poll::Ready(()),
            Some(p) if p.pending => {
                p.pending = false;
                Poll::Ready(())
            }
            Some(p) => {
                p.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// `dom` closes `port`; the peer's end becomes unbound.
    pub fn close(&self, dom: DomId, port: Port) {
        let mut s = self.0.borrow_mut();
        if let Some(p) = s.ports.remove(&(dom, port)) {
            if let Some(peer) = p.remote.and_then(|r| s.ports.get_mut(&r)) {
                peer.remote = None;
                peer.pending = true;
                if let Some(w) = peer.waker.take() {
                    w.wake();
                }
            }
        }
    }

    /// Whether `dom`'s `port` is bound to another domain's port (false once
    /// the peer closed its end or died).
    pub fn is_connected(&self, dom: DomId, port: Port) -> bool {
        self.0
            .borrow()
            .ports
            .get(&(dom, port))
            .is_some_and(|p| p.remote.is_some())
    }

    /// Whether `dom`'s `port` is open.
    pub fn port_open(&self, dom: DomId, port: Port) -> bool {
        self.0.borrow().ports.contains_key(&(dom, port))
    }

    /// The domain is destroyed: its ports close, its mappings of others'
    /// grants go away, its grants are dropped, and further operations by or
    /// on it fail with [`SimError::NoDomain`].
    pub fn destroy_domain(&self, dom: DomId) {
        let ports: Vec<Port> = self
            .0
            .borrow()
            .ports
            .keys()
            .filter(|(d, _)| *d == dom)
            .map(|(_, p)| *p)
            .collect();
        for p in ports {
            self.close(dom, p);
        }
        let mut s = self.0.borrow_mut();
        s.grants.retain(|(d, _), _| *d != dom);
        for g in s.grants.values_mut() {
            if g.grantee == dom {
                g.maps = 0;
            }
        }
        s.dead.push(dom);
        // Its grants are gone with it: its deferred pages are free, and
        // the pages others deferred because it mapped them can go now.
        if let Some(l) = s.ledgers.remove(&dom) {
            s.frames_in_use -= l.deferred();
        }
        s.retry_deferred();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_map_copy_and_revoke_follow_xen_rules() {
        let h = SimHypervisor::new();
        let page = h.alloc_page();
        page.write(10, b"hello").unwrap();
        let gref = h.grant_access(1, 0, page.frame(), true).unwrap();
        let mut buf = [0; 5];
        h.copy_from_grant(0, 1, gref, 10, &mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        assert_eq!(
            h.copy_to_grant(0, 1, gref, 0, b"x"),
            Err(SimError::ReadOnly)
        );
        assert_eq!(
            h.copy_from_grant(2, 1, gref, 0, &mut buf),
            Err(SimError::BadGrant),
            "not the grantee"
        );
        assert_eq!(
            h.copy_from_grant(0, 1, gref, 4093, &mut buf),
            Err(SimError::OutOfPage)
        );
        let mapped = h.map_grant(0, 1, gref, true).unwrap();
        let mut b2 = [0; 5];
        mapped.read(10, &mut b2).unwrap();
        assert_eq!(&b2, b"hello");
        assert_ne!(h.grant_flags(1, gref).unwrap() & GTF_READING, 0);
        assert_eq!(h.end_access(1, gref), Err(GrantError::InUse));
        h.unmap_grant(1, gref);
        assert_eq!(h.end_access(1, gref), Ok(()));
        assert_eq!(h.grant_flags(1, gref), None);
        assert_eq!(
            h.copy_from_grant(0, 1, gref, 0, &mut buf),
            Err(SimError::BadGrant)
        );
    }

    #[test]
    fn batched_grant_copy_reports_each_segment() {
        use crate::abi::grant_table::GnttabCopyPtr as P;
        let h = SimHypervisor::new();
        let front = h.alloc_page_of(1);
        front.write(0, b"frontend").unwrap();
        let ro = h.grant_access(1, 0, front.frame(), true).unwrap();
        let local = h.alloc_page_of(0);
        let other = h.alloc_page_of(2);
        let copy = |source: P, dest: P, len: u16, flags: u16| GnttabCopy {
            source,
            dest,
            len,
            flags,
            status: 99,
        };
        let mut ops = [
            copy(
                P::gref(ro, 1, 0),
                P::frame(local.frame(), DOMID_SELF, 8),
                8,
                GNTCOPY_SOURCE_GREF,
            ),
            copy(
                P::frame(local.frame(), DOMID_SELF, 0),
                P::gref(ro, 1, 0),
                4,
                GNTCOPY_DEST_GREF,
            ),
            copy(
                P::gref(ro + 1, 1, 0),
                P::frame(local.frame(), 0, 0),
                4,
                GNTCOPY_SOURCE_GREF,
            ),
            copy(
                P::gref(ro, 1, 4090),
                P::frame(local.frame(), 0, 0),
                8,
                GNTCOPY_SOURCE_GREF,
            ),
            copy(
                P::gref(ro, 1, 0),
                P::frame(other.frame(), 0, 0),
                4,
                GNTCOPY_SOURCE_GREF,
            ),
        ];
        h.grant_copy(0, &mut ops);
        let status: Vec<i16> = ops.iter().map(|o| o.status).collect();
        assert_eq!(
            status,
            [
                0,
                gntst::PERMISSION_DENIED,
                gntst::BAD_GNTREF,
                gntst::BAD_COPY_ARG,
                gntst::BAD_PAGE
            ]
        );
        let mut got = [0u8; 8];
        local.read(8, &mut got).unwrap();
        assert_eq!(&got, b"frontend");
        assert_eq!(h.copy_ops(0), 5);
        let m = h.map_grant_owned(0, 1, ro, true).unwrap();
        assert_eq!(h.maps_of(0, 1), 1);
        drop(m);
        assert_eq!(h.maps_of(0, 1), 0);
        h.destroy_domain(1);
        let mut again = [ops[0]];
        h.grant_copy(0, &mut again);
        assert_eq!(again[0].status, gntst::BAD_DOMAIN);
    }

    #[test]
    fn event_channels_pair_pend_and_close() {
        let h = SimHypervisor::new();
        let a = h.alloc_unbound(1, 0).unwrap();
        assert_eq!(h.bind_interdomain(2, 1, a), Err(SimError::BadPort));
        let b = h.bind_interdomain(0, 1, a).unwrap();
        let mut cx = Context::from_waker(Waker::noop());
        assert!(h.poll_event(1, a, &mut cx).is_pending());
        h.send(0, b).unwrap();
        assert!(h.poll_event(1, a, &mut cx).is_ready());
        assert!(h.poll_event(1, a, &mut cx).is_pending());
        h.destroy_domain(0);
        assert!(h.poll_event(1, a, &mut cx).is_ready());
        assert_eq!(h.send(1, a), Err(SimError::BadPort));
    }

    #[test]
    fn a_page_dropped_while_mapped_is_deferred_not_freed() {
        let h = SimHypervisor::new();
        let page = h.alloc_page();
        page.write(0, b"secret").unwrap();
        let gref = h.grant_access(1, 0, page.frame(), false).unwrap();
        let other = h.grant_access(1, 0, page.frame(), true).unwrap();
        // The backend maps one grant and keeps the mapping.
        let mapping = h.map_grant(0, 1, gref, false).unwrap();
        assert_eq!((h.frames_in_use(), h.grants_of(1)), (1, 2));
        drop(page);
        assert_eq!(h.frames_in_use(), 1, "not given back");
        assert_eq!(h.deferred_frames(), 1);
        assert_eq!(h.grants_of(1), 1, "the unmapped grant ended at once");
        assert_eq!(h.grant_flags(1, other), None);
        // The mapping still reads the page's own bytes, and a new page is
        // another frame.
        let mut b = [0; 6];
        mapping.read(0, &mut b).unwrap();
        assert_eq!(&b, b"secret");
        let fresh = h.alloc_page();
        assert_ne!(fresh.frame(), mapping.frame());
        h.retry_deferred();
        assert_eq!(h.deferred_frames(), 1, "still mapped");
        h.unmap_grant(1, gref);
        drop(mapping);
        h.retry_deferred();
        assert_eq!((h.deferred_frames(), h.grants_of(1)), (0, 0));
        assert_eq!(h.frames_in_use(), 1, "only the fresh page");
        assert_eq!(h.deferred_stats(), (1, 1));
        drop(fresh);
        assert_eq!(h.frames_in_use(), 0);
    }

    #[test]
    fn a_mapper_that_dies_lets_deferred_pages_go() {
        let h = SimHypervisor::new();
        let page = h.alloc_page();
        let gref = h.grant_access(1, 2, page.frame(), false).unwrap();
        let _kept = h.map_grant(2, 1, gref, false).unwrap();
        drop(page);
        assert_eq!(h.deferred_frames(), 1);
        h.destroy_domain(2);
        assert_eq!(
            (h.deferred_frames(), h.frames_in_use(), h.grants_of(1)),
            (0, 0, 0)
        );
    }
}
