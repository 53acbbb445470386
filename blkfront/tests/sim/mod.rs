//! A simulated hypervisor for blkfront's tests: a grant table and one
//! event channel pair (with the map/in-use behaviour blkfront relies on),
//! pages and xenstored from `xen::sim`, and a blkback that serves an
//! in-memory disk over the real ring code.
//!
//! Pages are `xen::sim` pages behind `xen::shared_page`, and a one-page
//! ring is a `PageFrontRing`/`PageBackRing`, all safe. Only the multi-page
//! ring (contiguous pages, which `xen::sim` does not hand out) is heap
//! memory reached through raw pointers here.
#![allow(dead_code)]

pub use xen::sim::xenstored;

use blkfront::env::{BlkFrontRing, PageFrontRing, SharedPage, PAGE_SIZE};
use blkfront::{BlkEnv, EnvError, RingPages};
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use xen::abi::blkif::*;
use xen::abi::{DomId, GrantRef, Port};
use xen::grant::GrantError;
use xen::ring::{BackRing, FrontRing};
use xen::shared_page::PageBackRing;
use xen::sim::{SimHypervisor, SimPage};
use xen::xenstore::{XenStore, XsError, XsTransport};
use xenstored::{SimTransport, Xenstored};

pub const FRONT_DOMID: DomId = 7;
pub const BACK_DOMID: DomId = 0;
pub const DEVICE: &str = "device/vbd/51712";
pub const BACKEND: &str = "/local/domain/0/backend/vbd/7/51712";
pub const PORT: Port = 17;

/// Ring memory: `2^order` zeroed pages, 4096-aligned, freed when both ends
/// have let go.
pub struct RingMem {
    ptr: *mut u8,
    layout: Layout,
}

impl RingMem {
    fn new(order: u32) -> Self {
        let layout = Layout::from_size_align(PAGE_SIZE << order, PAGE_SIZE).unwrap();
        // SAFETY: non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        Self { ptr, layout }
    }

    pub fn len(&self) -> usize {
        self.layout.size()
    }

    /// Overwrite a header index (a hostile backend's move).
    pub fn poke_u32(&self, offset: usize, value: u32) {
        assert!(offset + 4 <= 64);
        // SAFETY: inside the ring header, aligned u32.
        unsafe { self.ptr.add(offset).cast::<u32>().write_volatile(value) }
    }
}

impl Drop for RingMem {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

/// What a frame number names.
#[derive(Clone)]
enum Frame {
    Data(SimPage),
    RingPage(SimPage),
    Ring(Rc<RingMem>, usize),
}

#[derive(Clone, Copy, Debug)]
struct Grant {
    domid: DomId,
    frame: u64,
    readonly: bool,
}

/// The hypervisor's state.
#[derive(Default)]
pub struct Hv {
    /// Allocates the pages.
    pub pages: SimHypervisor,
    frames: HashMap<u64, Frame>,
    next_frame: u64,
    grants: HashMap<GrantRef, Grant>,
    next_gref: GrantRef,
    /// Grants the backend holds mapped: revoking them fails.
    pub mapped: HashSet<GrantRef>,
    pub grants_made: u64,
    pub front_pending: bool,
    pub back_pending: bool,
    pub port_allocated: bool,
    pub port_closed: bool,
    pub notifies_to_back: u64,
    /// Indices of new rings start here (wrap-around tests).
    pub ring_start: u32,
    /// Refuse pages after this many (resource exhaustion tests).
    pub page_limit: Option<usize>,
    pub pages_allocated: usize,
    /// The frontend's task waiting for an event.
    pub front_waker: Option<Waker>,
    /// Events sent to the frontend.
    pub notifies_to_front: u64,
}

impl Hv {
    pub fn live_grants(&self) -> usize {
        self.grants.len()
    }

    fn new_frame(&mut self, f: Frame) -> u64 {
        self.next_frame += 1;
        // Apart from the frames of `pages`.
        let n = 0x100_0000 + self.next_frame;
        self.frames.insert(n, f);
        n
    }

    /// The backend's view of a grant: the frame, if `gref` is granted to
    /// `BACK_DOMID` (and writable when `write`).
    fn lookup(&self, gref: GrantRef, write: bool) -> Option<Frame> {
        let g = self.grants.get(&gref)?;
        if g.domid != BACK_DOMID || (write && g.readonly) {
            return None;
        }
        self.frames.get(&g.frame).cloned()
    }
}

pub type SharedHv = Rc<RefCell<Hv>>;

/// The frontend's ring pages: one `xen::shared_page` page, or contiguous
/// pages of our own.
pub enum SimRing {
    One(PageFrontRing<SimPage, BlkifRequestSlot, BlkifResponse>),
    Many {
        mem: Rc<RingMem>,
        frames: Vec<u64>,
        ring: BlkFrontRing,
    },
}

impl RingPages for SimRing {
    fn page_count(&self) -> usize {
        match self {
            SimRing::One(_) => 1,
            SimRing::Many { frames, .. } => frames.len(),
        }
    }
    fn frame(&self, index: usize) -> u64 {
        match self {
            SimRing::One(r) => RingPages::frame(r, index),
            SimRing::Many { frames, .. } => frames[index],
        }
    }
    fn ring(&mut self) -> &mut BlkFrontRing {
        match self {
            SimRing::One(r) => r.ring(),
            SimRing::Many { ring, .. } => ring,
        }
    }
}

/// The frontend's environment over the simulated hypervisor.
pub struct SimEnv {
    pub hv: SharedHv,
}

impl BlkEnv for SimEnv {
    type Mem = SimPage;
    type Ring = SimRing;

    fn alloc_page(&mut self) -> Result<SharedPage<SimPage>, EnvError> {
        let mut hv = self.hv.borrow_mut();
        if hv.page_limit.is_some_and(|l| hv.pages_allocated >= l) {
            return Err(EnvError::OutOfMemory);
        }
        hv.pages_allocated += 1;
        let page = hv.pages.alloc_page();
        hv.frames
            .insert(page.frame(), Frame::Data(page.memory().clone()));
        Ok(page)
    }

    fn alloc_ring(&mut self, order: u32) -> Result<SimRing, EnvError> {
        let mut hv = self.hv.borrow_mut();
        if order == 0 {
            let page = hv.pages.alloc_page();
            hv.frames
                .insert(page.frame(), Frame::RingPage(page.memory().clone()));
            return Ok(SimRing::One(page.into_front_ring(hv.ring_start)));
        }
        let mem = Rc::new(RingMem::new(order));
        let frames = (0..1usize << order)
            .map(|i| hv.new_frame(Frame::Ring(mem.clone(), i)))
            .collect();
        // SAFETY: `mem` is zeroed, 4096-aligned, `len` bytes, kept alive by
        // the `Rc` in `SimRing` for the ring's lifetime, and accessed only
        // through the ring code (by both ends).
        let ring = unsafe { FrontRing::init_at(mem.ptr, mem.len(), hv.ring_start) };
        Ok(SimRing::Many { mem, frames, ring })
    }

    fn grant(&mut self, domid: DomId, frame: u64, readonly: bool) -> Result<GrantRef, GrantError> {
        let mut hv = self.hv.borrow_mut();
        hv.next_gref += 1;
        let gref = 8 + hv.next_gref;
        hv.grants.insert(
            gref,
            Grant {
                domid,
                frame,
                readonly,
            },
        );
        hv.grants_made += 1;
        Ok(gref)
    }

    fn revoke(&mut self, gref: GrantRef) -> Result<(), GrantError> {
        let mut hv = self.hv.borrow_mut();
        if hv.mapped.contains(&gref) {
            return Err(GrantError::InUse);
        }
        hv.grants
            .remove(&gref)
            .map(|_| ())
            .ok_or(GrantError::NotGranted)
    }

    fn alloc_unbound(&mut self, remote: DomId) -> Result<Port, EnvError> {
        assert_eq!(remote, BACK_DOMID);
        self.hv.borrow_mut().port_allocated = true;
        Ok(PORT)
    }

    fn close(&mut self, port: Port) {
        assert_eq!(port, PORT);
        self.hv.borrow_mut().port_closed = true;
    }

    fn notify(&mut self, port: Port) {
        assert_eq!(port, PORT);
        let mut hv = self.hv.borrow_mut();
        hv.back_pending = true;
        hv.notifies_to_back += 1;
    }

    fn poll_event(&mut self, port: Port, cx: &mut Context<'_>) -> Poll<()> {
        assert_eq!(port, PORT);
        let mut hv = self.hv.borrow_mut();
        if hv.front_pending {
            hv.front_pending = false;
            Poll::Ready(())
        } else {
            hv.front_waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}

/// How the simulated backend misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hostility {
    None,
    /// Answer with an id nobody asked for.
    UnknownId,
    /// Answer the first request twice.
    Duplicate,
    /// A status that is no `BLKIF_RSP_*`.
    BadStatus,
    /// Echo the wrong operation.
    WrongOperation,
    /// Publish a response producer index far past the requests.
    BadProducerIndex,
    /// Answer every request with `BLKIF_RSP_ERROR` (legal).
    IoError,
}

/// One scripted change to an outgoing response (property tests).
#[derive(Clone, Copy, Debug, Default)]
pub struct Garble {
    /// XOR into the id.
    pub id_xor: u64,
    /// Replace the operation.
    pub operation: Option<u8>,
    /// Replace the status.
    pub status: Option<i16>,
}

/// The disk and features the backend offers.
#[derive(Clone, Debug)]
pub struct BackendConfig {
    pub sector_size: u32,
    pub disk_bytes: usize,
    pub flush: bool,
    pub barrier: bool,
    pub discard: bool,
    pub max_indirect_segments: Option<u32>,
    pub max_ring_page_order: Option<u32>,
    pub read_only: bool,
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self {
            sector_size: 512,
            disk_bytes: 1 << 20,
            flush: true,
            barrier: false,
            discard: true,
            max_indirect_segments: None,
            max_ring_page_order: None,
            read_only: false,
        }
    }
}

/// Counters of the simulated backend.
#[derive(Clone, Debug, Default)]
pub struct BackendStats {
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub barriers: u64,
    pub discards: u64,
    pub indirect: u64,
    pub max_segments: usize,
    pub max_outstanding: u32,
    pub bad_requests: u64,
    pub distinct_grefs: HashSet<GrantRef>,
}

/// The backend's mapping of the ring.
enum BackSide {
    One(
        PageBackRing<SimPage, BlkifRequestSlot, BlkifResponse>,
        SimPage,
    ),
    Many(Rc<RingMem>, BackRing<BlkifRequestSlot, BlkifResponse>),
}

impl BackSide {
    fn ring(&mut self) -> &mut BackRing<BlkifRequestSlot, BlkifResponse> {
        match self {
            BackSide::One(r, _) => r,
            BackSide::Many(_, r) => r,
        }
    }
    fn ring_ref(&self) -> &BackRing<BlkifRequestSlot, BlkifResponse> {
        match self {
            BackSide::One(r, _) => r,
            BackSide::Many(_, r) => r,
        }
    }
    /// Overwrite a header index (a hostile backend's move).
    fn poke_u32(&self, offset: usize, value: u32) {
        match self {
            BackSide::One(_, page) => SharedPage::new(page.clone())
                .write(offset, &value.to_le_bytes())
                .unwrap(),
            BackSide::Many(mem, _) => mem.poke_u32(offset, value),
        }
    }
}

/// A blkback serving an in-memory disk.
pub struct Blkback {
    pub hv: SharedHv,
    pub xs: Rc<RefCell<Xenstored>>,
    pub config: BackendConfig,
    pub disk: Vec<u8>,
    pub state: u32,
    ring: Option<BackSide>,
    ring_grefs: Vec<GrantRef>,
    /// Requests taken but not answered yet (answered in reverse order when
    /// released).
    held: Vec<(BlkifRequestSlot, i16)>,
    /// Take requests but do not answer them.
    pub hold: bool,
    pub hostility: Hostility,
    /// Answer at most this many requests per run (the rest stay in the
    /// backend's queue for its next run), like a backend whose disk is
    /// slower than the ring.
    pub answer_limit: Option<usize>,
    /// Applied to the next responses, one each.
    pub script: std::collections::VecDeque<Garble>,
    /// Written over the response producer index after the next push.
    pub poke_rsp_prod: Option<u32>,
    pub stats: BackendStats,
    pub ring_page_order: u32,
    /// The backend's directory ([`BACKEND`] unless a re-attach moved it).
    pub path: String,
}

impl Blkback {
    pub fn new(hv: SharedHv, xs: Rc<RefCell<Xenstored>>, config: BackendConfig) -> Self {
        let disk = vec![0u8; config.disk_bytes];
        Self {
            hv,
            xs,
            config,
            disk,
            state: 1,
            ring: None,
            ring_grefs: Vec::new(),
            held: Vec::new(),
            hold: false,
            hostility: Hostility::None,
            answer_limit: None,
            script: Default::default(),
            poke_rsp_prod: None,
            stats: BackendStats::default(),
            ring_page_order: 0,
            path: BACKEND.to_string(),
        }
    }

    fn set(&mut self, key: &str, value: &str) {
        self.xs
            .borrow_mut()
            .set(&format!("{}/{key}", self.path), value.as_bytes());
    }

    fn online(&self) -> bool {
        self.xs
            .borrow()
            .get(&format!("{}/online", self.path))
            .as_deref()
            == Some(b"1")
    }

    fn front(&self, key: &str) -> Option<String> {
        let v = self.xs.borrow().get(&format!("{DEVICE}/{key}"))?;
        String::from_utf8(v).ok()
    }

    fn set_state(&mut self, state: u32) {
        self.state = state;
        self.set("state", &state.to_string());
    }

    /// Toolstack set-up: the device directories, backend at Initialising.
    pub fn install(&mut self) {
        let mut xs = self.xs.borrow_mut();
        xs.set(&format!("{}/online", self.path), b"1");
        xs.set(&format!("{}/state", self.path), b"1");
        xs.set(&format!("{DEVICE}/backend-id"), b"0");
        xs.set(&format!("{DEVICE}/state"), b"1");
        xs.set(&format!("{DEVICE}/backend"), self.path.as_bytes());
    }

    /// `xl block-detach`, first half: `online` 0 and the backend
    /// `Closing`, in one go (libxl does both in one transaction); the
    /// backend then follows the frontend to `Closed`.
    pub fn toolstack_detach(&mut self) {
        self.set("online", "0");
        self.set_state(5);
    }

    /// `xl block-detach`, second half (after the backend reached
    /// `Closed`): both directories removed.
    pub fn toolstack_remove(&mut self) {
        self.unmap();
        self.state = 0;
        let mut xs = self.xs.borrow_mut();
        xs.remove(DEVICE);
        xs.remove(&self.path);
    }

    /// `xl block-attach` of the same disk, the backend at `path`.
    pub fn toolstack_attach(&mut self, path: &str) {
        self.path = path.to_string();
        self.reinstall();
    }

    /// Let go of the ring and of the requests taken (their responses are
    /// never written), as blkback does when the frontend closes.
    fn unmap(&mut self) {
        self.ring = None;
        self.held.clear();
        let mut hv = self.hv.borrow_mut();
        for g in self.ring_grefs.drain(..) {
            hv.mapped.remove(&g);
        }
    }

    /// The toolstack after a guest restart: a fresh device pair on the
    /// same disk.
    pub fn reinstall(&mut self) {
        self.ring = None;
        self.ring_grefs.clear();
        self.held.clear();
        self.state = 1;
        self.install();
    }

    /// Follow the xenbus handshake one step.
    pub fn xenbus_step(&mut self) {
        let front_state: u32 = self
            .front("state")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        match (self.state, front_state) {
            (1, _) => {
                if let Some(order) = self.config.max_ring_page_order {
                    self.set("max-ring-page-order", &order.to_string());
                }
                self.set("feature-persistent", "1");
                self.set_state(2);
            }
            (2, 3) => {
                self.map_ring();
                let c = self.config.clone();
                self.set("sectors", &(c.disk_bytes / 512).to_string());
                self.set("info", if c.read_only { "4" } else { "0" });
                self.set("sector-size", &c.sector_size.to_string());
                self.set("physical-sector-size", &c.sector_size.to_string());
                self.set("feature-flush-cache", if c.flush { "1" } else { "0" });
                self.set("feature-barrier", if c.barrier { "1" } else { "0" });
                self.set("feature-discard", if c.discard { "1" } else { "0" });
                if let Some(n) = c.max_indirect_segments {
                    self.set("feature-max-indirect-segments", &n.to_string());
                }
                self.set_state(4);
            }
            (4, 5) | (4, 6) => {
                // The frontend is closing: unmap everything, then follow.
                self.unmap();
                self.set_state(5);
            }
            (5, 6) => {
                self.unmap();
                self.set_state(6);
            }
            // Linux blkback: "prepare for reconnect" (only while online;
            // an offline backend is being removed).
            (6, 1) if self.online() => self.set_state(2),
            _ => {}
        }
    }

    fn map_ring(&mut self) {
        let order: u32 = match self.front("ring-page-order") {
            Some(o) => o.parse().expect("ring-page-order"),
            None => 0,
        };
        let keys: Vec<String> = if order == 0 {
            vec!["ring-ref".into()]
        } else {
            (0..1u32 << order).map(|i| format!("ring-ref{i}")).collect()
        };
        let mut mem: Option<Rc<RingMem>> = None;
        let mut one: Option<SimPage> = None;
        let mut hv = self.hv.borrow_mut();
        for (i, key) in keys.iter().enumerate() {
            let gref: GrantRef = self
                .front(key)
                .unwrap_or_else(|| panic!("frontend wrote no {key}"))
                .parse()
                .expect("ring-ref");
            match hv.lookup(gref, true) {
                Some(Frame::Ring(m, page)) => {
                    assert_eq!(page, i, "ring pages in order");
                    mem = Some(m);
                }
                Some(Frame::RingPage(p)) if order == 0 => one = Some(p),
                _ => panic!("{key} is not a granted ring page"),
            }
            hv.mapped.insert(gref);
            self.ring_grefs.push(gref);
        }
        assert_eq!(self.front("event-channel"), Some(PORT.to_string()));
        assert_eq!(self.front("protocol").as_deref(), Some("x86_64-abi"));
        let side = if let Some(page) = one {
            BackSide::One(
                SharedPage::new(page.clone()).into_back_ring(hv.ring_start),
                page,
            )
        } else {
            let mem = mem.unwrap();
            assert_eq!(mem.len(), PAGE_SIZE << order);
            // SAFETY: the ring memory stays alive through our `Rc`; both
            // ends access it only through the ring code.
            let back = unsafe { BackRing::attach(mem.ptr, mem.len(), hv.ring_start) };
            BackSide::Many(mem, back)
        };
        self.ring = Some(side);
        self.ring_page_order = order;
    }

    pub fn connected(&self) -> bool {
        self.ring.is_some()
    }

    /// Requests published by the frontend and not yet taken.
    pub fn unconsumed(&self) -> u32 {
        self.ring
            .as_ref()
            .map_or(0, |r| r.ring_ref().unconsumed_requests().unwrap())
    }

    /// Serve the ring: take every request, answer (unless holding), and
    /// re-arm `req_event` before going idle, as blkback does.
    pub fn io_step(&mut self) {
        if self.ring.is_none() {
            return;
        }
        self.hv.borrow_mut().back_pending = false;
        if self.hold {
            return;
        }
        loop {
            loop {
                let outstanding = self.unconsumed() + self.held.len() as u32;
                self.stats.max_outstanding = self.stats.max_outstanding.max(outstanding);
                let ring = self.ring.as_mut().unwrap().ring();
                let Some(slot) = ring.take_request().expect("frontend ring indices") else {
                    break;
                };
                let status = self.execute(&slot);
                self.held.push((slot, status));
            }
            self.release();
            let Some(side) = self.ring.as_mut() else {
                return;
            };
            if !side
                .ring()
                .final_check_for_requests()
                .expect("frontend ring indices")
            {
                return;
            }
        }
    }

    /// Notified, or requests still queued.
    pub fn has_work(&self) -> bool {
        self.hv.borrow().back_pending || !self.held.is_empty()
    }

    /// Serve the ring only if the frontend sent an event (as a real backend
    /// runs only when notified).
    pub fn io_step_if_notified(&mut self) {
        if self.has_work() {
            self.io_step();
        }
    }

    /// Requests taken and not answered.
    pub fn held_len(&self) -> usize {
        self.held.len()
    }

    /// Take every published request without answering.
    pub fn take_all_held(&mut self) {
        loop {
            let ring = self.ring.as_mut().unwrap().ring();
            let Some(slot) = ring.take_request().unwrap() else {
                break;
            };
            let status = self.execute(&slot);
            self.held.push((slot, status));
        }
        let outstanding = self.held.len() as u32;
        self.stats.max_outstanding = self.stats.max_outstanding.max(outstanding);
    }

    /// Answer held requests (up to `answer_limit`), newest first.
    pub fn release(&mut self) {
        let keep = self
            .answer_limit
            .map_or(0, |n| self.held.len().saturating_sub(n));
        let mut answers = self.held.split_off(keep);
        answers.reverse();
        let Some(side) = self.ring.as_mut() else {
            return;
        };
        let mut first = true;
        for (slot, status) in answers {
            let op = slot.operation();
            let id = u64::from_le_bytes(slot.bytes[8..16].try_into().unwrap());
            let mut rsp = BlkifResponse {
                id,
                operation: op,
                status,
                ..Default::default()
            };
            match self.hostility {
                Hostility::None => {}
                Hostility::UnknownId => rsp.id ^= 0x5a5a_0000_0000_0013,
                Hostility::BadStatus => rsp.status = 7,
                Hostility::WrongOperation => rsp.operation = BLKIF_OP_DISCARD + 40,
                Hostility::IoError => rsp.status = BLKIF_RSP_ERROR,
                Hostility::Duplicate | Hostility::BadProducerIndex => {}
            }
            if let Some(g) = self.script.pop_front() {
                rsp.id ^= g.id_xor;
                rsp.operation = g.operation.unwrap_or(rsp.operation);
                rsp.status = g.status.unwrap_or(rsp.status);
            }
            let _ = side.ring().queue_response(rsp);
            if first && self.hostility == Hostility::Duplicate {
                // A second answer to the same request, in the slot of the
                // next one (the ring code lets a backend write it only if a
                // request was taken, so reuse the slot by publishing it).
                first = false;
                let _ = side.ring().queue_response(rsp);
            }
        }
        let notify = side.ring().push_responses_and_check_notify();
        if let Some(prod) = self.poke_rsp_prod.take() {
            side.poke_u32(8, prod);
            self.send_event();
        } else if self.hostility == Hostility::BadProducerIndex {
            side.poke_u32(8, 0x4000_0000);
            self.send_event();
        } else if notify {
            self.send_event();
        }
    }

    /// Raise the frontend's event channel and wake its waiting task.
    pub fn send_event(&mut self) {
        let waker = {
            let mut hv = self.hv.borrow_mut();
            hv.front_pending = true;
            hv.notifies_to_front += 1;
            hv.front_waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Check a segment, returning the byte range of the disk page it
    /// covers and the page.
    fn segment_frame(
        &mut self,
        seg: &BlkifRequestSegment,
        write_to_page: bool,
    ) -> Option<SharedPage<SimPage>> {
        if seg.first_sect > seg.last_sect || seg.last_sect > 7 {
            return None;
        }
        self.stats.distinct_grefs.insert(seg.gref);
        match self.hv.borrow().lookup(seg.gref, write_to_page)? {
            Frame::Data(page) => Some(SharedPage::new(page)),
            Frame::Ring(..) | Frame::RingPage(_) => None,
        }
    }

    /// Perform one request on the disk; the status to answer.
    fn execute(&mut self, slot: &BlkifRequestSlot) -> i16 {
        let op = slot.operation();
        let (op, sector, segs) = match op {
            BLKIF_OP_READ | BLKIF_OP_WRITE | BLKIF_OP_WRITE_BARRIER => {
                let r = BlkifRequest::from_slot(slot);
                if usize::from(r.nr_segments) > BLKIF_MAX_SEGMENTS_PER_REQUEST {
                    self.stats.bad_requests += 1;
                    return BLKIF_RSP_ERROR;
                }
                (
                    op,
                    r.sector_number,
                    r.seg[..usize::from(r.nr_segments)].to_vec(),
                )
            }
            BLKIF_OP_INDIRECT => {
                let r = BlkifRequestIndirect::from_slot(slot);
                let max = self.config.max_indirect_segments.unwrap_or(0) as usize;
                let n = usize::from(r.nr_segments);
                if max == 0 || n > max || !matches!(r.indirect_op, BLKIF_OP_READ | BLKIF_OP_WRITE) {
                    self.stats.bad_requests += 1;
                    return BLKIF_RSP_ERROR;
                }
                self.stats.indirect += 1;
                let mut segs = Vec::new();
                for k in 0..n.div_ceil(BLKIF_SEGMENTS_PER_INDIRECT_PAGE) {
                    let Some(Frame::Data(page)) =
                        self.hv.borrow().lookup(r.indirect_grefs[k], false)
                    else {
                        self.stats.bad_requests += 1;
                        return BLKIF_RSP_ERROR;
                    };
                    let page = SharedPage::new(page);
                    let here = (n - k * BLKIF_SEGMENTS_PER_INDIRECT_PAGE)
                        .min(BLKIF_SEGMENTS_PER_INDIRECT_PAGE);
                    for j in 0..here {
                        let mut b = [0u8; 8];
                        page.read(j * 8, &mut b).unwrap();
                        segs.push(BlkifRequestSegment::from_bytes(&b));
                    }
                }
                (r.indirect_op, r.sector_number, segs)
            }
            BLKIF_OP_FLUSH_DISKCACHE => {
                if !self.config.flush {
                    return BLKIF_RSP_EOPNOTSUPP;
                }
                self.stats.flushes += 1;
                return BLKIF_RSP_OKAY;
            }
            BLKIF_OP_DISCARD => {
                let d = BlkifRequestDiscard::from_slot(slot);
                let start = d.sector_number as usize * 512;
                let end = start + d.nr_sectors as usize * 512;
                if !self.config.discard {
                    return BLKIF_RSP_EOPNOTSUPP;
                }
                if end > self.disk.len() {
                    self.stats.bad_requests += 1;
                    return BLKIF_RSP_ERROR;
                }
                self.disk[start..end].fill(0);
                self.stats.discards += 1;
                return BLKIF_RSP_OKAY;
            }
            _ => {
                self.stats.bad_requests += 1;
                return BLKIF_RSP_ERROR;
            }
        };
        if op == BLKIF_OP_WRITE_BARRIER {
            self.stats.barriers += 1;
            if !self.config.barrier {
                return BLKIF_RSP_EOPNOTSUPP;
            }
        }
        self.stats.max_segments = self.stats.max_segments.max(segs.len());
        if self.config.read_only && op != BLKIF_OP_READ {
            return BLKIF_RSP_ERROR;
        }
        // Requests must be aligned to the logical sector size.
        let per = u64::from(self.config.sector_size / 512);
        if sector % per != 0 {
            self.stats.bad_requests += 1;
            return BLKIF_RSP_ERROR;
        }
        let mut pos = sector as usize * 512;
        for seg in &segs {
            let Some(page) = self.segment_frame(seg, op == BLKIF_OP_READ) else {
                self.stats.bad_requests += 1;
                return BLKIF_RSP_ERROR;
            };
            let from = usize::from(seg.first_sect) * 512;
            let len = (usize::from(seg.last_sect) - usize::from(seg.first_sect) + 1) * 512;
            if pos + len > self.disk.len() {
                self.stats.bad_requests += 1;
                return BLKIF_RSP_ERROR;
            }
            if op == BLKIF_OP_READ {
                page.write(from, &self.disk[pos..pos + len]).unwrap();
            } else {
                page.read(from, &mut self.disk[pos..pos + len]).unwrap();
            }
            pos += len;
        }
        if op == BLKIF_OP_READ {
            self.stats.reads += 1;
        } else {
            self.stats.writes += 1;
        }
        BLKIF_RSP_OKAY
    }
}

/// The xenstore transport of the test: the simulated daemon, and the
/// backend's xenbus half runs whenever the frontend waits for a watch (as
/// the real backend runs while we sleep).
pub struct XsWithBackend {
    pub inner: SimTransport,
    pub backend: Rc<RefCell<Blkback>>,
}

impl XsTransport for XsWithBackend {
    fn send(&mut self, buf: &[u8]) -> Result<usize, XsError> {
        self.inner.send(buf)
    }
    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, XsError> {
        self.inner.recv(buf)
    }
    fn notify(&mut self) {
        self.inner.notify()
    }
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.backend.borrow_mut().xenbus_step();
        self.inner.poll_event(cx)
    }
}

/// Everything a test needs.
pub struct World {
    pub hv: SharedHv,
    pub daemon: Rc<RefCell<Xenstored>>,
    pub backend: Rc<RefCell<Blkback>>,
    pub xs: XenStore<XsWithBackend>,
}

impl World {
    pub fn new(config: BackendConfig) -> Self {
        Self::with_hv(config, Hv::default())
    }

    pub fn with_hv(config: BackendConfig, hv: Hv) -> Self {
        let hv = Rc::new(RefCell::new(hv));
        let daemon = Rc::new(RefCell::new(Xenstored::new(FRONT_DOMID)));
        let backend = Rc::new(RefCell::new(Blkback::new(
            hv.clone(),
            daemon.clone(),
            config,
        )));
        backend.borrow_mut().install();
        let xs = XenStore::new(XsWithBackend {
            inner: SimTransport::new(daemon.clone(), 4096),
            backend: backend.clone(),
        });
        Self {
            hv,
            daemon,
            backend,
            xs,
        }
    }

    pub fn env(&self) -> SimEnv {
        SimEnv {
            hv: self.hv.clone(),
        }
    }
}

/// Run futures to completion together, serving the backend between
/// rounds; `None` if they stall.
pub fn run_all<'a, T>(
    backend: &Rc<RefCell<Blkback>>,
    futures: Vec<Pin<Box<dyn Future<Output = T> + 'a>>>,
) -> Option<Vec<T>> {
    run_all_with(futures, || {
        let mut b = backend.borrow_mut();
        b.xenbus_step();
        b.io_step();
    })
}

/// Run one future to completion.
pub fn run<'a, T>(backend: &Rc<RefCell<Blkback>>, future: impl Future<Output = T> + 'a) -> T {
    run_all(backend, vec![Box::pin(future)])
        .expect("future stalled")
        .pop()
        .unwrap()
}

/// Poll every future in turn, calling `between` after each round.
pub fn run_all_with<'a, T>(
    mut futures: Vec<Pin<Box<dyn Future<Output = T> + 'a>>>,
    mut between: impl FnMut(),
) -> Option<Vec<T>> {
    let mut out: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..2_000_000 {
        let mut all = true;
        for (f, o) in futures.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(&mut cx) {
                    Poll::Ready(v) => *o = Some(v),
                    Poll::Pending => all = false,
                }
            }
        }
        if all {
            return Some(out.into_iter().map(Option::unwrap).collect());
        }
        between();
    }
    None
}

/// A task's "woken" flag.
struct Flag(std::sync::atomic::AtomicBool);

impl std::task::Wake for Flag {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Like [`run_all`], but as a real executor: a future is polled only after
/// its waker fired, and the backend runs only when notified. `None` if
/// every future waits with nothing left to wake it (a lost wake-up).
pub fn run_woken<'a, T>(
    backend: &Rc<RefCell<Blkback>>,
    mut futures: Vec<Pin<Box<dyn Future<Output = T> + 'a>>>,
) -> Option<Vec<T>> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let flags: Vec<Arc<Flag>> = futures
        .iter()
        .map(|_| Arc::new(Flag(AtomicBool::new(true))))
        .collect();
    let wakers: Vec<Waker> = flags.iter().map(|f| Waker::from(f.clone())).collect();
    let mut out: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    for _ in 0..1_000_000 {
        let mut progressed = false;
        for i in 0..futures.len() {
            if out[i].is_none() && flags[i].0.swap(false, Ordering::SeqCst) {
                progressed = true;
                let mut cx = Context::from_waker(&wakers[i]);
                if let Poll::Ready(v) = futures[i].as_mut().poll(&mut cx) {
                    out[i] = Some(v);
                }
            }
        }
        if out.iter().all(Option::is_some) {
            return Some(out.into_iter().map(Option::unwrap).collect());
        }
        let notified = backend.borrow().has_work();
        {
            let mut b = backend.borrow_mut();
            b.xenbus_step();
            b.io_step_if_notified();
        }
        let woken = flags
            .iter()
            .zip(&out)
            .any(|(f, o)| o.is_none() && f.0.load(Ordering::SeqCst));
        if !progressed && !notified && !woken {
            return None;
        }
    }
    panic!("futures kept waking without finishing (livelock)");
}
