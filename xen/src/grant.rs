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

use alloc::vec::Vec;
use core::ptr::{addr_of_mut, NonNull};
use core::sync::atomic::{fence, AtomicU16, Ordering};

use crate::abi::grant_table::*;
use crate::abi::{DomId, GrantRef};

/// Grant entries in one 4 KiB frame (v1 entries are 8 bytes).
pub const ENTRIES_PER_FRAME: u32 = 4096 / core::mem::size_of::<GrantEntryV1>() as u32;

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

/// This domain's grant table.
pub struct GrantTable {
    entries: NonNull<GrantEntryV1>,
    len: u32,
    free: Vec<GrantRef>,
    granted: Vec<bool>,
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
        Ok(gref)
    }

    /// Revokes `gref`. Fails with [`GrantError::InUse`] (and leaves the
    /// grant in place) while the grantee has it mapped or is copying.
    pub fn end_access(&mut self, gref: GrantRef) -> Result<(), GrantError> {
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
}
