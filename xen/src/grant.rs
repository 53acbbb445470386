//! Grant tables, version 1: this domain's table of grants to others.
//!
//! The table is an array of [`GrantEntryV1`] in frames Xen shares with us
//! (mapped by the kernel: PV through `GNTTABOP_setup_table` and page-table
//! updates, PVH through `XENMEM_add_to_physmap`). Granting writes `domid`
//! and `frame` first and `flags` last, after a barrier, so the grantee never
//! sees a half-written entry. Revoking must not race with a grantee that
//! has the frame mapped or is copying: the flags word is swapped to zero
//! only if Xen's `GTF_reading`/`GTF_writing` bits are clear, with one
//! compare-and-swap on the 16-bit flags (exactly what Xen expects).
//!
//! References come from a free list, so steady-state users (netfront)
//! recycle them instead of growing the table.
//!
//! # Who owns a granted page
//!
//! A page granted to a peer belongs to its grant until ending the access
//! succeeded: [`GrantLedger`] (kept inside [`GrantTable`] on real Xen, and
//! inside `xen::sim` for host tests) records which frame each live grant
//! names. When the owner of a page lets go of it (the kernel's page type
//! does so when dropped), [`GrantTable::release_frame`] ends every grant
//! still naming the frame; only if all ended is the frame handed back to
//! the allocator. A frame the peer still maps goes to a deferred list,
//! retried by [`GrantTable::retry_deferred`] (the kernel retries at every
//! page allocation and grant), the way Linux's `gnttab_end_foreign_access`
//! defers pages it cannot free yet. So no path of a driver (an early
//! return, a cancelled future, a dropped device) can give a frame a peer
//! still maps back to the allocator, and no frame is leaked for good once
//! the peer unmaps it.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::ptr::{addr_of_mut, NonNull};
use core::sync::atomic::{fence, AtomicU16, Ordering};

use crate::abi::grant_table::*;
use crate::abi::{DomId, GrantRef};

/// Grant entries in one 4 KiB frame (v1 entries are 8 bytes).
pub const ENTRIES_PER_FRAME: u32 = 4096 / core::mem::size_of::<GrantEntryV1>() as u32;

/// Most grant-table frames a domain maps (32768 entries).
pub const MAX_TABLE_FRAMES: u32 = 64;
/// Grant-table frames mapped at least, if Xen allows them (2040 usable
/// entries).
pub const MIN_TABLE_FRAMES: u32 = 4;
/// Free frames per grant-table frame mapped beyond [`MIN_TABLE_FRAMES`]: a
/// table frame costs its page and about 2.5 KiB of heap (free list and
/// flags), so a small domain keeps a small table.
pub const FREE_FRAMES_PER_TABLE_FRAME: u64 = 256;

/// How many grant-table frames to map: the size Xen allows
/// (`GNTTABOP_query_size`'s `max_nr_frames`, the toolstack's
/// `max_grant_frames`), within [`MIN_TABLE_FRAMES`]..=[`MAX_TABLE_FRAMES`]
/// and one per [`FREE_FRAMES_PER_TABLE_FRAME`] free frames (a 32 MiB
/// domain maps about 30), and at least one.
pub fn frames_to_map(max_nr_frames: u32, free_frames: u64) -> u32 {
    let by_memory = u32::try_from(free_frames / FREE_FRAMES_PER_TABLE_FRAME).unwrap_or(u32::MAX);
    by_memory
        .clamp(MIN_TABLE_FRAMES, MAX_TABLE_FRAMES)
        .min(max_nr_frames)
        .max(1)
}

/// Why a grant operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantError {
    /// Every reference is in use.
    Exhausted,
    /// The grantee still has the frame mapped or is copying it.
    InUse,
    /// The reference is not one this table handed out.
    NotGranted,
    /// The frame number does not fit a v1 entry (32 bits).
    FrameTooLarge,
}

impl core::fmt::Display for GrantError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            GrantError::Exhausted => "no free grant reference",
            GrantError::InUse => "grant still in use by the grantee",
            GrantError::NotGranted => "grant reference not granted by this table",
            GrantError::FrameTooLarge => "frame number does not fit a v1 grant entry",
        })
    }
}

/// Which frame each live grant names, and the pages whose owner let go
/// of them while a grant could not be ended yet (the deferred list).
///
/// `T` is what stands for a page until it can be freed: the kernel keeps
/// its pseudo-physical frame number, the simulated hypervisor the page's
/// memory. The ledger never ends a grant itself: [`release`](Self::release)
/// and [`retry`](Self::retry) call the `end` function they are given (a
/// table's end of access), and treat [`GrantError::NotGranted`] as ended
/// (someone ended it already).
pub struct GrantLedger<T> {
    frame_of: BTreeMap<GrantRef, u64>,
    grants_of: BTreeMap<u64, Vec<GrantRef>>,
    deferred: Vec<(u64, T)>,
    deferred_total: u64,
    freed_late: u64,
}

impl<T> Default for GrantLedger<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> GrantLedger<T> {
    /// An empty ledger.
    pub const fn new() -> Self {
        Self {
            frame_of: BTreeMap::new(),
            grants_of: BTreeMap::new(),
            deferred: Vec::new(),
            deferred_total: 0,
            freed_late: 0,
        }
    }

    /// `gref` now grants access to `frame`.
    pub fn granted(&mut self, gref: GrantRef, frame: u64) {
        if let Some(old) = self.frame_of.insert(gref, frame) {
            self.forget_ref(old, gref);
        }
        self.grants_of.entry(frame).or_default().push(gref);
    }

    /// `gref`'s access was ended.
    pub fn ended(&mut self, gref: GrantRef) {
        if let Some(frame) = self.frame_of.remove(&gref) {
            self.forget_ref(frame, gref);
        }
    }

    fn forget_ref(&mut self, frame: u64, gref: GrantRef) {
        if let Some(list) = self.grants_of.get_mut(&frame) {
            list.retain(|g| *g != gref);
            if list.is_empty() {
                self.grants_of.remove(&frame);
            }
        }
    }

    /// Whether a live grant names `frame`.
    pub fn is_granted(&self, frame: u64) -> bool {
        self.grants_of.contains_key(&frame)
    }

    /// Live grants recorded.
    pub fn live_grants(&self) -> usize {
        self.frame_of.len()
    }

    /// Pages on the deferred list now.
    pub fn deferred(&self) -> usize {
        self.deferred.len()
    }

    /// Pages ever put on the deferred list.
    pub fn deferred_total(&self) -> u64 {
        self.deferred_total
    }

    /// Deferred pages freed later by [`retry`](Self::retry).
    pub fn freed_late(&self) -> u64 {
        self.freed_late
    }

    /// End every grant of `frame` with `end`. True if none is left.
    fn end_all(
        &mut self,
        frame: u64,
        end: &mut impl FnMut(GrantRef) -> Result<(), GrantError>,
    ) -> bool {
        let grefs = self.grants_of.get(&frame).cloned().unwrap_or_default();
        for gref in grefs {
            match end(gref) {
                Ok(()) | Err(GrantError::NotGranted) => self.ended(gref),
                Err(_) => {}
            }
        }
        !self.is_granted(frame)
    }

    /// The owner of `page` (frame `frame`) lets go of it: end every grant
    /// still naming the frame. `Some(page)` when none is left (free it
    /// now); `None` when the peer still maps it: the page is kept on the
    /// deferred list until [`retry`](Self::retry) ends its grants.
    pub fn release(
        &mut self,
        frame: u64,
        page: T,
        mut end: impl FnMut(GrantRef) -> Result<(), GrantError>,
    ) -> Option<T> {
        if self.end_all(frame, &mut end) {
            return Some(page);
        }
        self.deferred.push((frame, page));
        self.deferred_total += 1;
        None
    }

    /// Try to end the grants of every deferred page again; the pages whose
    /// grants all ended are returned, to be freed.
    pub fn retry(&mut self, mut end: impl FnMut(GrantRef) -> Result<(), GrantError>) -> Vec<T> {
        let mut freed = Vec::new();
        let mut i = 0;
        while i < self.deferred.len() {
            let frame = self.deferred[i].0;
            if self.end_all(frame, &mut end) {
                freed.push(self.deferred.swap_remove(i).1);
                self.freed_late += 1;
            } else {
                i += 1;
            }
        }
        freed
    }
}

/// This domain's grant table.
pub struct GrantTable {
    entries: NonNull<GrantEntryV1>,
    len: u32,
    free: Vec<GrantRef>,
    granted: Vec<bool>,
    ledger: GrantLedger<u64>,
}

// SAFETY: the entries are shared memory accessed only atomically/volatilely
// through `&mut self` methods; the table owns no thread-bound state.
unsafe impl Send for GrantTable {}

impl GrantTable {
    /// Takes over `len` entries at `entries` (the mapped table frames).
    /// References below `GNTTAB_NR_RESERVED_ENTRIES` belong to the
    /// toolstack (console, xenstore) and are never handed out.
    ///
    /// # Safety
    /// `entries` must point to `len` grant entries that stay mapped for the
    /// table's lifetime and are not accessed by anything else in this domain.
    pub unsafe fn new(entries: NonNull<GrantEntryV1>, len: u32) -> Self {
        let free = (GNTTAB_NR_RESERVED_ENTRIES..len).rev().collect();
        Self {
            entries,
            len,
            free,
            granted: alloc::vec![false; len as usize],
            ledger: GrantLedger::new(),
        }
    }

    /// Total entries, reserved ones included.
    pub fn capacity(&self) -> u32 {
        self.len
    }

    /// References available for new grants.
    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    fn entry(&self, gref: GrantRef) -> *mut GrantEntryV1 {
        debug_assert!(gref < self.len);
        // SAFETY: `gref < len` is checked by every caller.
        unsafe { self.entries.as_ptr().add(gref as usize) }
    }

    fn flags(&self, gref: GrantRef) -> &AtomicU16 {
        // SAFETY: `flags` is the first, 2-byte aligned field of a live entry.
        unsafe { AtomicU16::from_ptr(addr_of_mut!((*self.entry(gref)).flags)) }
    }

    /// Grants `domid` access to guest frame `frame`, read-only if asked.
    pub fn grant_access(
        &mut self,
        domid: DomId,
        frame: u64,
        readonly: bool,
    ) -> Result<GrantRef, GrantError> {
        let frame = u32::try_from(frame).map_err(|_| GrantError::FrameTooLarge)?;
        let gref = self.free.pop().ok_or(GrantError::Exhausted)?;
        let e = self.entry(gref);
        // SAFETY: `e` is a live entry that no grantee may use (flags are 0).
        unsafe {
            core::ptr::write_volatile(addr_of_mut!((*e).domid), domid);
            core::ptr::write_volatile(addr_of_mut!((*e).frame), frame);
        }
        // domid and frame must be visible before the grant becomes valid.
        fence(Ordering::Release);
        let flags = GTF_PERMIT_ACCESS | if readonly { GTF_READONLY } else { 0 };
        self.flags(gref).store(flags, Ordering::SeqCst);
        self.granted[gref as usize] = true;
        self.ledger.granted(gref, u64::from(frame));
        Ok(gref)
    }

    /// Revokes `gref`. Fails with [`GrantError::InUse`] (and leaves the
    /// grant in place) while the grantee has it mapped or is copying.
    pub fn end_access(&mut self, gref: GrantRef) -> Result<(), GrantError> {
        self.end_raw(gref)?;
        self.ledger.ended(gref);
        Ok(())
    }

    /// The owner of the page at `frame` (the number it was granted by)
    /// lets go of it; `token` names it for the allocator. Every grant
    /// still naming `frame` is ended: `Some(token)` if none is left (free
    /// the page now), `None` if the peer still maps it (the page is
    /// deferred: [`retry_deferred`](Self::retry_deferred) hands it back
    /// once the peer unmapped it). A frame never granted comes straight
    /// back.
    pub fn release_frame(&mut self, frame: u64, token: u64) -> Option<u64> {
        if !self.ledger.is_granted(frame) {
            return Some(token);
        }
        let mut ledger = core::mem::take(&mut self.ledger);
        let freed = ledger.release(frame, token, |g| self.end_raw(g));
        self.ledger = ledger;
        freed
    }

    /// Try the deferred pages again: the tokens of those whose grants
    /// all ended now, to be freed by the caller.
    pub fn retry_deferred(&mut self) -> Vec<u64> {
        if self.ledger.deferred() == 0 {
            return Vec::new();
        }
        let mut ledger = core::mem::take(&mut self.ledger);
        let freed = ledger.retry(|g| self.end_raw(g));
        self.ledger = ledger;
        freed
    }

    /// The ledger of live grants and deferred pages (counts for leak
    /// checks).
    pub fn ledger(&self) -> &GrantLedger<u64> {
        &self.ledger
    }

    fn end_raw(&mut self, gref: GrantRef) -> Result<(), GrantError> {
        if gref >= self.len || !self.granted[gref as usize] {
            return Err(GrantError::NotGranted);
        }
        let flags = self.flags(gref);
        let mut cur = flags.load(Ordering::SeqCst);
        loop {
            if cur & (GTF_READING | GTF_WRITING) != 0 {
                return Err(GrantError::InUse);
            }
            match flags.compare_exchange(cur, 0, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        self.granted[gref as usize] = false;
        self.free.push(gref);
        Ok(())
    }

    /// The current flags of `gref` (`GTF_*`), as Xen sees them.
    pub fn entry_flags(&self, gref: GrantRef) -> Option<u16> {
        (gref < self.len).then(|| self.flags(gref).load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    fn table(len: u32) -> (Vec<GrantEntryV1>, GrantTable) {
        let mut mem = alloc::vec![GrantEntryV1::default(); len as usize];
        // SAFETY: `mem` outlives the table in each test and nothing else touches it.
        let t = unsafe { GrantTable::new(NonNull::new(mem.as_mut_ptr()).unwrap(), len) };
        (mem, t)
    }

    #[test]
    fn grant_writes_entry_and_skips_reserved_refs() {
        let (mem, mut t) = table(16);
        let r = t.grant_access(3, 0x1234, true).unwrap();
        assert!(r >= GNTTAB_NR_RESERVED_ENTRIES);
        let e = mem[r as usize];
        assert_eq!(
            (e.domid, e.frame, e.flags),
            (3, 0x1234, GTF_PERMIT_ACCESS | GTF_READONLY)
        );
        assert_eq!(t.free_count(), 16 - 8 - 1);
    }

    #[test]
    fn end_access_refuses_while_in_use_and_recycles_after() {
        let (mut mem, mut t) = table(16);
        let r = t.grant_access(0, 1, false).unwrap();
        mem[r as usize].flags |= GTF_WRITING; // what Xen sets while mapped
        assert_eq!(t.end_access(r), Err(GrantError::InUse));
        assert_eq!(
            mem[r as usize].flags & GTF_PERMIT_ACCESS,
            GTF_PERMIT_ACCESS,
            "grant stays valid"
        );
        mem[r as usize].flags &= !GTF_WRITING;
        assert_eq!(t.end_access(r), Ok(()));
        assert_eq!(mem[r as usize].flags, 0);
        assert_eq!(t.end_access(r), Err(GrantError::NotGranted));
        assert_eq!(
            t.grant_access(0, 2, false),
            Ok(r),
            "freed reference is reused first"
        );
    }

    #[test]
    fn exhaustion_and_bad_refs_are_errors() {
        let (_mem, mut t) = table(10);
        assert!(t.grant_access(0, 1, false).is_ok());
        assert!(t.grant_access(0, 1, false).is_ok());
        assert_eq!(t.grant_access(0, 1, false), Err(GrantError::Exhausted));
        assert_eq!(
            t.grant_access(0, u64::MAX, false),
            Err(GrantError::FrameTooLarge)
        );
        assert_eq!(t.end_access(3), Err(GrantError::NotGranted));
        assert_eq!(t.end_access(99), Err(GrantError::NotGranted));
        assert_eq!(t.entry_flags(99), None);
    }

    #[test]
    fn released_frame_is_freed_only_after_its_grants_end() {
        let (mut mem, mut t) = table(16);
        let free0 = t.free_count();
        assert_eq!(t.release_frame(0x77, 7), Some(7), "never granted");
        let a = t.grant_access(0, 0x77, false).unwrap();
        let b = t.grant_access(0, 0x77, true).unwrap();
        let c = t.grant_access(0, 0x88, false).unwrap();
        assert_eq!(t.ledger().live_grants(), 3);
        // The grantee maps `a`: the frame cannot be freed, and is deferred.
        mem[a as usize].flags |= GTF_WRITING;
        assert_eq!(t.release_frame(0x77, 7), None);
        assert_eq!(t.ledger().deferred(), 1);
        assert_eq!(mem[b as usize].flags, 0, "the unmapped grant ended");
        assert_ne!(
            mem[a as usize].flags & GTF_PERMIT_ACCESS,
            0,
            "the mapped one stays"
        );
        assert!(t.retry_deferred().is_empty(), "still mapped");
        assert_eq!(t.ledger().deferred(), 1);
        // An explicit end of `c` keeps the ledger right; its frame is free.
        t.end_access(c).unwrap();
        assert_eq!(t.release_frame(0x88, 8), Some(8));
        // The grantee unmaps: the retry ends `a` and hands the frame back.
        mem[a as usize].flags &= !GTF_WRITING;
        assert_eq!(t.retry_deferred(), alloc::vec![7]);
        assert_eq!(t.ledger().deferred(), 0);
        assert_eq!(t.ledger().live_grants(), 0);
        assert_eq!(t.ledger().deferred_total(), 1);
        assert_eq!(t.ledger().freed_late(), 1);
        assert_eq!(t.free_count(), free0, "every reference back");
    }

    #[test]
    fn ledger_treats_already_ended_grants_as_ended() {
        let mut l: GrantLedger<&str> = GrantLedger::new();
        l.granted(9, 1);
        l.granted(10, 1);
        // 9 reports InUse once, 10 was ended behind the ledger's back.
        let mut busy = true;
        let r = l.release(1, "page", |g| match g {
            9 if busy => {
                busy = false;
                Err(GrantError::InUse)
            }
            9 => Ok(()),
            _ => Err(GrantError::NotGranted),
        });
        assert_eq!(r, None);
        assert_eq!(l.live_grants(), 1);
        assert_eq!(l.retry(|_| Ok(())), alloc::vec!["page"]);
        assert!(!l.is_granted(1));
        // A reference granted again for another frame moves with it.
        l.granted(9, 2);
        l.granted(9, 3);
        assert!(!l.is_granted(2));
        assert!(l.is_granted(3));
    }

    #[test]
    fn table_size_follows_xen_within_memory_bounds() {
        assert_eq!(frames_to_map(32, 1 << 20), 32, "Xen's maximum");
        assert_eq!(frames_to_map(64, 64 * 256), 64);
        assert_eq!(frames_to_map(128, 1 << 20), MAX_TABLE_FRAMES);
        assert_eq!(frames_to_map(64, 7800), 30, "a 32 MiB domain");
        assert_eq!(frames_to_map(64, 900), MIN_TABLE_FRAMES, "a small one");
        assert_eq!(frames_to_map(2, 1 << 20), 2, "Xen's smaller maximum wins");
        assert_eq!(frames_to_map(0, 1 << 20), 1);
    }
}
