//! Simulated pages, grant tables and event channels of several domains.
//!
//! One [`SimHypervisor`] is shared (it is a cheap handle) by every party of
//! a test. Pages are heap allocations with a frame number; a domain grants
//! one of its frames to another, which may then map it (getting a
//! [`SimPage`] onto the same memory) or copy to or from it, as Xen's grant
//! map and grant copy do, with the same checks (grantee, read-only, in-use
//! flags). Event channels are port pairs with a pending bit and a waker.

extern crate std;

use crate::abi::grant_table::{GTF_PERMIT_ACCESS, GTF_READING, GTF_READONLY, GTF_WRITING};
use crate::abi::{DomId, GrantRef, Port};
use crate::grant::GrantError;
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
/// memory.
#[derive(Clone)]
pub struct SimPage(Rc<PageInner>);

// SAFETY: the boxed, 4096-aligned array lives as long as any clone; its
// address never changes; it is only accessed through raw pointers
// (`UnsafeCell::get`), never through Rust references.
unsafe impl PageMemory for SimPage {
    fn as_ptr(&self) -> *mut u8 {
        self.0.mem.0.get().cast()
    }
    fn frame(&self) -> u64 {
        self.0.frame
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

    /// A new zeroed page owned by `dom`.
    pub fn alloc_page(&self) -> SharedPage<SimPage> {
        let mut s = self.0.borrow_mut();
        let frame = s.next_frame;
        s.next_frame += 1;
        let inner = Rc::new(PageInner {
            mem: Box::new(AlignedPage(UnsafeCell::new([0; PAGE_SIZE]))),
            frame,
        });
        s.frames.insert(frame, Rc::downgrade(&inner));
        SharedPage::new(SimPage(inner))
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
        let gref = match s.free_grefs.entry(dom).or_default().pop() {
            Some(g) => g,
            None => {
                let next = s.next_gref.entry(dom).or_insert(FIRST_GREF);
                if *next >= GRANT_ENTRIES {
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
        Ok(gref)
    }

    /// `dom` revokes `gref`; refused while mapped.
    pub fn end_access(&self, dom: DomId, gref: GrantRef) -> Result<(), GrantError> {
        let mut s = self.0.borrow_mut();
        *s.grant_ops.entry(dom).or_default() += 1;
        match s.grants.get(&(dom, gref)) {
            None => Err(GrantError::NotGranted),
            Some(g) if g.maps > 0 => Err(GrantError::InUse),
            Some(_) => {
                s.grants.remove(&(dom, gref));
                s.free_grefs.entry(dom).or_default().push(gref);
                Ok(())
            }
        }
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
        Ok(SimPage(inner))
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
}
