//! Shared-memory rings.
//!
//! This module is the generic request/response ring of `io/ring.h`
//! ([`FrontRing`], [`BackRing`]), on which netif and blkif are built; the
//! `bytes` submodule holds the byte-stream rings of the xenstore and console
//! pages.
//!
//! The page is shared with another, untrusted domain. So: slots are only
//! ever copied in and out with volatile accesses (no Rust reference into
//! shared memory is formed), slot types must be [`PlainData`] (every bit
//! pattern valid), indices are masked, and an index the peer publishes that
//! claims more entries than can exist is reported as [`RingError`] instead
//! of being followed.
//!
//! Indices are free-running 32-bit counters; all arithmetic on them wraps,
//! exactly as the C macros rely on unsigned overflow.

pub mod bytes;

use crate::abi::ring::{RingIdx, SringHeader, SRING_SLOTS_OFFSET};
use core::marker::PhantomData;
use core::mem::{align_of, offset_of, size_of};
use core::sync::atomic::{fence, AtomicU32, Ordering};

/// Types that may be copied out of memory another domain controls: every bit
/// pattern is a valid value (integers, arrays of them, structs of them).
///
/// # Safety
/// Implement only for types with no invalid bit patterns: no `bool`, `char`,
/// enums, references or pointers with validity requirements. Prefer
/// [`impl_plain_data!`](crate::impl_plain_data), which checks the fields.
/// Padding bytes are copied too, so give shared structs explicit padding
/// fields to avoid leaking stack bytes to the peer.
pub unsafe trait PlainData: Copy + 'static {}

macro_rules! plain_data_primitives {
    ($($t:ty),*) => { $(
        // SAFETY: every bit pattern is a valid integer.
        unsafe impl PlainData for $t {}
    )* };
}
plain_data_primitives!(u8, u16, u32, u64, i8, i16, i32, i64);

// SAFETY: an array of plain data is plain data.
unsafe impl<T: PlainData, const N: usize> PlainData for [T; N] {}

/// Compile-time helper of [`impl_plain_data!`]: accepts only plain data.
#[doc(hidden)]
pub fn assert_plain_data<T: PlainData>(_: &T) {}

/// Implement [`PlainData`] for a struct after checking, at compile time, that
/// the listed fields are all of its fields and each is itself plain data.
/// Usable from `#![forbid(unsafe_code)]` crates.
///
/// ```
/// #[derive(Clone, Copy)]
/// struct Request { id: u16, gref: u32 }
/// xen::impl_plain_data!(Request { id, gref });
/// // 8-byte slots: (4096 - 64) / 8 = 504 fit, rounded down to 256.
/// assert_eq!(xen::ring::ring_size::<Request, Request>(4096), 256);
/// ```
///
/// A field with invalid bit patterns is refused:
/// ```compile_fail
/// #[derive(Clone, Copy)]
/// struct Request { id: u16, more: bool }
/// xen::impl_plain_data!(Request { id, more });
/// ```
///
/// So is a field list that misses a field:
/// ```compile_fail
/// #[derive(Clone, Copy)]
/// struct Request { id: u16, more: u8 }
/// xen::impl_plain_data!(Request { id });
/// ```
#[macro_export]
macro_rules! impl_plain_data {
    ($t:ident { $($field:ident),* $(,)? }) => {
        const _: () = {
            // An exhaustive pattern: fails to compile if a field is missing.
            #[allow(dead_code)]
            fn check(value: $t) {
                let $t { $($field),* } = value;
                $( $crate::ring::assert_plain_data(&$field); )*
            }
        };
        // SAFETY: `check` above proves every field is plain data.
        unsafe impl $crate::ring::PlainData for $t {}
    };
}

/// A slot of the ring: `union NAME_sring_entry { req; rsp; }`.
#[repr(C)]
union Slot<Req: Copy, Rsp: Copy> {
    _req: Req,
    _rsp: Rsp,
}

/// What went wrong on a shared ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingError {
    /// The peer published a producer index claiming more entries than can be
    /// outstanding (`RING_REQUEST_PROD_OVERFLOW` /
    /// `RING_RESPONSE_PROD_OVERFLOW`).
    BadProducerIndex {
        /// The index the peer published.
        prod: RingIdx,
        /// Our own index it was checked against.
        ours: RingIdx,
    },
    /// No free slot for another request.
    Full,
    /// A response was pushed with no consumed request left to answer.
    NoRequestToAnswer,
}

/// Number of slots of `Slot<Req, Rsp>` in a ring of `page_size` bytes: as
/// many as fit after the header, rounded down to a power of two
/// (`__RING_SIZE`). Zero if not even one fits.
pub const fn ring_size<Req: Copy, Rsp: Copy>(page_size: usize) -> u32 {
    if page_size <= SRING_SLOTS_OFFSET {
        return 0;
    }
    let fit = (page_size - SRING_SLOTS_OFFSET) / size_of::<Slot<Req, Rsp>>();
    if fit == 0 {
        return 0;
    }
    let fit = if fit > u32::MAX as usize {
        u32::MAX
    } else {
        fit as u32
    };
    1 << (31 - fit.leading_zeros())
}

/// Pointers into one shared ring page; the common part of both ends.
struct SharedRing<Req, Rsp> {
    page: *mut u8,
    size: u32,
    _slots: PhantomData<(Req, Rsp)>,
}

impl<Req: PlainData, Rsp: PlainData> SharedRing<Req, Rsp> {
    /// # Safety
    /// `page` must be valid for reads and writes of `page_size` bytes,
    /// aligned to 64 bytes, for the ring's lifetime, with no Rust reference
    /// to it held meanwhile.
    unsafe fn new(page: *mut u8, page_size: usize) -> Self {
        assert!(align_of::<Slot<Req, Rsp>>() <= 64, "slot alignment over 64");
        assert!(
            page.align_offset(64) == 0,
            "ring page must be 64-byte aligned"
        );
        let size = ring_size::<Req, Rsp>(page_size);
        assert!(size > 0, "ring page too small for one slot");
        Self {
            page,
            size,
            _slots: PhantomData,
        }
    }

    fn index(&self, field_offset: usize) -> &AtomicU32 {
        // SAFETY: the header fields are aligned `u32`s inside the page
        // (contract of `new`); `AtomicU32` has `u32`'s layout, and both ends
        // access the indices only atomically.
        unsafe { AtomicU32::from_ptr(self.page.add(field_offset).cast()) }
    }

    fn load(&self, field_offset: usize) -> RingIdx {
        self.index(field_offset).load(Ordering::Relaxed)
    }

    fn store(&self, field_offset: usize, value: RingIdx) {
        self.index(field_offset).store(value, Ordering::Relaxed)
    }

    fn slot(&self, idx: RingIdx) -> *mut u8 {
        let n = (idx & (self.size - 1)) as usize;
        // SAFETY: `n < size` and `size` slots fit after the header in the
        // page (computed by `ring_size`), so the result stays inside it.
        unsafe {
            self.page
                .add(SRING_SLOTS_OFFSET + n * size_of::<Slot<Req, Rsp>>())
        }
    }

    fn write_slot<T: PlainData>(&self, idx: RingIdx, value: T) {
        // SAFETY: `slot` is in bounds and aligned for `Slot` (the page is
        // 64-byte aligned, the header is 64 bytes, slots are at most
        // 64-aligned and `T` is one of the union's fields). Volatile: the
        // peer may read concurrently.
        unsafe { self.slot(idx).cast::<T>().write_volatile(value) }
    }

    fn read_slot<T: PlainData>(&self, idx: RingIdx) -> T {
        // SAFETY: as in `write_slot`; `T: PlainData` makes whatever bytes the
        // peer left there a valid value, and we return a copy.
        unsafe { self.slot(idx).cast::<T>().read_volatile() }
    }
}

const REQ_PROD: usize = offset_of!(SringHeader, req_prod);
const REQ_EVENT: usize = offset_of!(SringHeader, req_event);
const RSP_PROD: usize = offset_of!(SringHeader, rsp_prod);
const RSP_EVENT: usize = offset_of!(SringHeader, rsp_event);

/// Whether moving a producer index from `old` to `new` crosses the peer's
/// event index, i.e. the peer asked to be notified (the `_CHECK_NOTIFY`
/// macros).
fn crosses_event(old: RingIdx, new: RingIdx, event: RingIdx) -> bool {
    new.wrapping_sub(event) < new.wrapping_sub(old)
}

/// The frontend's end: pushes requests, takes responses.
pub struct FrontRing<Req, Rsp> {
    shared: SharedRing<Req, Rsp>,
    req_prod_pvt: RingIdx,
    req_prod_pushed: RingIdx,
    rsp_cons: RingIdx,
}

impl<Req: PlainData, Rsp: PlainData> FrontRing<Req, Rsp> {
    /// Initialise the shared ring in `page` and attach as the frontend
    /// (`XEN_FRONT_RING_INIT`).
    ///
    /// # Safety
    /// `page` must be valid for reads and writes of `page_size` bytes and
    /// 64-byte aligned for as long as the ring is used, and no Rust
    /// reference to it may be held meanwhile (the backend writes it).
    pub unsafe fn init(page: *mut u8, page_size: usize) -> Self {
        // SAFETY: forwarded contract.
        unsafe { Self::init_at(page, page_size, 0) }
    }

    /// Like [`init`](Self::init) but with all indices starting at `start`
    /// (what `SHARED_RING_INIT` + `FRONT_RING_ATTACH` do after a resume;
    /// also how tests exercise wrap-around).
    ///
    /// # Safety
    /// As for [`init`](Self::init).
    pub unsafe fn init_at(page: *mut u8, page_size: usize, start: RingIdx) -> Self {
        // SAFETY: forwarded contract.
        let shared = unsafe { SharedRing::new(page, page_size) };
        shared.store(REQ_PROD, start);
        shared.store(RSP_PROD, start);
        shared.store(REQ_EVENT, start.wrapping_add(1));
        shared.store(RSP_EVENT, start.wrapping_add(1));
        for offset in offset_of!(SringHeader, pvt)..SRING_SLOTS_OFFSET {
            // SAFETY: inside the header, which is inside the page.
            unsafe { page.add(offset).write_volatile(0) }
        }
        fence(Ordering::Release);
        Self {
            shared,
            req_prod_pvt: start,
            req_prod_pushed: start,
            rsp_cons: start,
        }
    }

    /// Number of slots (`RING_SIZE`).
    pub fn size(&self) -> u32 {
        self.shared.size
    }

    /// Slots free for new requests (`RING_FREE_REQUESTS`).
    pub fn free_requests(&self) -> u32 {
        self.shared.size - self.req_prod_pvt.wrapping_sub(self.rsp_cons)
    }

    /// No slot is free (`RING_FULL`).
    pub fn is_full(&self) -> bool {
        self.free_requests() == 0
    }

    /// Copy `req` into the next slot; it becomes visible to the backend on
    /// the next [`push_requests_and_check_notify`](Self::push_requests_and_check_notify).
    pub fn queue_request(&mut self, req: Req) -> Result<(), RingError> {
        if self.is_full() {
            return Err(RingError::Full);
        }
        self.shared.write_slot(self.req_prod_pvt, req);
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Publish queued requests; true if the backend must be notified
    /// (`RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`).
    pub fn push_requests_and_check_notify(&mut self) -> bool {
        let old = self.req_prod_pushed;
        let new = self.req_prod_pvt;
        // The backend must see the requests before the new producer index.
        fence(Ordering::Release);
        self.shared.store(REQ_PROD, new);
        self.req_prod_pushed = new;
        // ... and we must read req_event only after publishing.
        fence(Ordering::SeqCst);
        crosses_event(old, new, self.shared.load(REQ_EVENT))
    }

    /// Responses published but not yet taken, after checking the backend's
    /// index is possible (no more responses than requests outstanding).
    pub fn unconsumed_responses(&self) -> Result<u32, RingError> {
        let prod = self.shared.load(RSP_PROD);
        let pending = prod.wrapping_sub(self.rsp_cons);
        let outstanding = self.req_prod_pushed.wrapping_sub(self.rsp_cons);
        if pending > outstanding {
            return Err(RingError::BadProducerIndex {
                prod,
                ours: self.rsp_cons,
            });
        }
        Ok(pending)
    }

    /// Take the next response, if any; its slot becomes free.
    pub fn take_response(&mut self) -> Result<Option<Rsp>, RingError> {
        if self.unconsumed_responses()? == 0 {
            return Ok(None);
        }
        // Read the slot only after the producer index that covers it.
        fence(Ordering::Acquire);
        let rsp = self.shared.read_slot(self.rsp_cons);
        self.rsp_cons = self.rsp_cons.wrapping_add(1);
        Ok(Some(rsp))
    }

    /// Before sleeping: ask for an event on the next response and re-check,
    /// closing the race with a response published meanwhile; true if there
    /// is work (`RING_FINAL_CHECK_FOR_RESPONSES`).
    pub fn final_check_for_responses(&mut self) -> Result<bool, RingError> {
        if self.unconsumed_responses()? > 0 {
            return Ok(true);
        }
        self.shared.store(RSP_EVENT, self.rsp_cons.wrapping_add(1));
        fence(Ordering::SeqCst);
        Ok(self.unconsumed_responses()? > 0)
    }
}

/// The backend's end: takes requests, pushes responses. Everything the
/// frontend publishes is checked before use.
pub struct BackRing<Req, Rsp> {
    shared: SharedRing<Req, Rsp>,
    rsp_prod_pvt: RingIdx,
    rsp_prod_pushed: RingIdx,
    req_cons: RingIdx,
}

impl<Req: PlainData, Rsp: PlainData> BackRing<Req, Rsp> {
    /// Attach as the backend to a ring the frontend initialised, with our
    /// indices at `start` (`BACK_RING_ATTACH`; `BACK_RING_INIT` is
    /// `start == 0`).
    ///
    /// # Safety
    /// As for [`FrontRing::init`].
    pub unsafe fn attach(page: *mut u8, page_size: usize, start: RingIdx) -> Self {
        Self {
            // SAFETY: forwarded contract.
            shared: unsafe { SharedRing::new(page, page_size) },
            rsp_prod_pvt: start,
            rsp_prod_pushed: start,
            req_cons: start,
        }
    }

    /// Number of slots (`RING_SIZE`).
    pub fn size(&self) -> u32 {
        self.shared.size
    }

    /// Requests published but not yet taken, bounded by the free response
    /// space (`RING_HAS_UNCONSUMED_REQUESTS`), after rejecting a producer
    /// index that claims more than a ring of requests
    /// (`RING_REQUEST_PROD_OVERFLOW`).
    pub fn unconsumed_requests(&self) -> Result<u32, RingError> {
        let prod = self.shared.load(REQ_PROD);
        if prod.wrapping_sub(self.rsp_prod_pvt) > self.shared.size {
            return Err(RingError::BadProducerIndex {
                prod,
                ours: self.rsp_prod_pvt,
            });
        }
        let published = prod.wrapping_sub(self.req_cons);
        let room = self.shared.size - self.req_cons.wrapping_sub(self.rsp_prod_pvt);
        Ok(published.min(room))
    }

    /// Take (a private copy of) the next request, if any.
    pub fn take_request(&mut self) -> Result<Option<Req>, RingError> {
        if self.unconsumed_requests()? == 0 {
            return Ok(None);
        }
        fence(Ordering::Acquire);
        let req = self.shared.read_slot(self.req_cons);
        self.req_cons = self.req_cons.wrapping_add(1);
        Ok(Some(req))
    }

    /// Copy `rsp` into the next response slot; it must answer a request
    /// already taken.
    pub fn queue_response(&mut self, rsp: Rsp) -> Result<(), RingError> {
        if self.rsp_prod_pvt == self.req_cons {
            return Err(RingError::NoRequestToAnswer);
        }
        self.shared.write_slot(self.rsp_prod_pvt, rsp);
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Publish queued responses; true if the frontend must be notified
    /// (`RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`).
    pub fn push_responses_and_check_notify(&mut self) -> bool {
        let old = self.rsp_prod_pushed;
        let new = self.rsp_prod_pvt;
        fence(Ordering::Release);
        self.shared.store(RSP_PROD, new);
        self.rsp_prod_pushed = new;
        fence(Ordering::SeqCst);
        crosses_event(old, new, self.shared.load(RSP_EVENT))
    }

    /// Before sleeping: ask for an event on the next request and re-check;
    /// true if there is work (`RING_FINAL_CHECK_FOR_REQUESTS`).
    pub fn final_check_for_requests(&mut self) -> Result<bool, RingError> {
        if self.unconsumed_requests()? > 0 {
            return Ok(true);
        }
        self.shared.store(REQ_EVENT, self.req_cons.wrapping_add(1));
        fence(Ordering::SeqCst);
        Ok(self.unconsumed_requests()? > 0)
    }

    /// Before sleeping until `n` requests are published (one packet needs
    /// that many slots): ask for an event when the frontend's producer
    /// index reaches `req_cons + n`, then re-check; true if `n` are there.
    /// [`final_check_for_requests`](Self::final_check_for_requests) asks
    /// for nothing while some (too few) requests are unconsumed, so a
    /// frontend that notifies only when crossing `req_event` would never
    /// wake us. `n` is taken between 1 and the ring's size.
    pub fn final_check_for_requests_n(&mut self, n: u32) -> Result<bool, RingError> {
        let n = n.clamp(1, self.shared.size);
        if self.unconsumed_requests()? >= n {
            return Ok(true);
        }
        self.shared.store(REQ_EVENT, self.req_cons.wrapping_add(n));
        fence(Ordering::SeqCst);
        Ok(self.unconsumed_requests()? >= n)
    }
}
