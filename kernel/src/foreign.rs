//! Grants of other domains (or our own) mapped into our address space,
//! for backends: the same on every arch, given the arch's foreign window
//! (`crate::arch::foreign_window()`: an address range free in the guest's
//! physical or virtual space, as `GNTTABOP_map_grant_ref`'s `host_addr`
//! needs on that arch and guest type).

/// A grant of another domain (or our own) mapped into our address space,
/// for backends. The page stays mapped while this value lives; dropping it
/// unmaps.
pub struct ForeignPage {
    slot: usize,
    addr: u64,
    handle: u32,
    writable: bool,
}

/// Why mapping a grant failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// Every slot of the foreign window is in use.
    WindowFull,
    /// The hypercall failed.
    Xen(xen::hypercall::XenError),
    /// Xen refused the grant (bad reference, permission, ...).
    Grant(xen::hypercall::GrantStatus),
}

impl core::fmt::Display for MapError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MapError::WindowFull => f.write_str("foreign mapping window full"),
            MapError::Xen(e) => write!(f, "{e}"),
            MapError::Grant(s) => write!(f, "{s}"),
        }
    }
}

/// Bytes in a mapped grant.
const PAGE: usize = 4096;

/// An access that would leave the mapped page.
pub use xen::shared_page::OutOfPage;

/// Why [`ForeignPage::write`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForeignWriteError {
    /// The grant was mapped read-only.
    ReadOnly,
    /// The range leaves the page.
    OutOfPage(OutOfPage),
}

fn check(offset: usize, len: usize) -> Result<(), OutOfPage> {
    match offset.checked_add(len) {
        Some(end) if end <= PAGE => Ok(()),
        _ => Err(OutOfPage { offset, len }),
    }
}

static FOREIGN_SLOTS: spin::Mutex<[u64; 8]> = spin::Mutex::new([0; 8]);

/// Grants mapped now (slots of the foreign window in use), over every
/// backend of this domain: a leak check for long attach/detach runs.
pub fn mapped_count() -> usize {
    FOREIGN_SLOTS
        .lock()
        .iter()
        .map(|w| w.count_ones() as usize)
        .sum()
}

impl ForeignPage {
    /// Maps grant `gref` of domain `domid`.
    pub fn map(domid: u16, gref: u32, readonly: bool) -> Result<Self, MapError> {
        use xen::abi::grant_table::*;
        let (base, pages) = crate::arch::foreign_window();
        let slot = {
            let mut slots = FOREIGN_SLOTS.lock();
            let free = (0..pages.min(512))
                .find(|&i| slots[i / 64] & (1 << (i % 64)) == 0)
                .ok_or(MapError::WindowFull)?;
            slots[free / 64] |= 1 << (free % 64);
            free
        };
        let addr = base + slot as u64 * 4096;
        let mut op = GnttabMapGrantRef {
            host_addr: addr,
            flags: GNTMAP_HOST_MAP | if readonly { GNTMAP_READONLY } else { 0 },
            ref_: gref,
            dom: domid,
            ..Default::default()
        };
        // SAFETY: `addr` is a slot of the foreign window that we just
        // reserved: nothing else maps or references it.
        let r = unsafe { xen::hypercall::gnttab_map(&mut op) }
            .map_err(MapError::Xen)
            .and_then(|()| xen::hypercall::GrantStatus::check(op.status).map_err(MapError::Grant));
        match r {
            Ok(()) => Ok(ForeignPage {
                slot,
                addr,
                handle: op.handle,
                writable: !readonly,
            }),
            Err(e) => {
                FOREIGN_SLOTS.lock()[slot / 64] &= !(1 << (slot % 64));
                Err(e)
            }
        }
    }

    /// Where the page is mapped (for `PageMemory` wrappers that only
    /// access it volatile).
    pub fn as_ptr(&self) -> *mut u8 {
        self.addr as usize as *mut u8
    }

    /// Whether the mapping is writable.
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// Copies `dst.len()` bytes at `offset` out of the mapped page.
    ///
    /// The granting domain may write the page at any time, so no Rust
    /// reference to it is ever formed: the bytes are read with volatile
    /// accesses into `dst`, which the caller then parses (what it sees is
    /// a snapshot that may be torn, never undefined behaviour).
    pub fn read(&self, offset: usize, dst: &mut [u8]) -> Result<(), OutOfPage> {
        check(offset, dst.len())?;
        let base = self.as_ptr();
        for (i, b) in dst.iter_mut().enumerate() {
            // SAFETY: `offset + i < offset + dst.len() <= PAGE` (checked);
            // the grant is mapped at `base` for as long as `self` lives,
            // and a volatile read of a `u8` is sound whatever the peer
            // writes concurrently.
            *b = unsafe { base.add(offset + i).read_volatile() };
        }
        Ok(())
    }

    /// Copies `src` into the mapped page at `offset` with volatile writes
    /// (only for writable mappings).
    pub fn write(&mut self, offset: usize, src: &[u8]) -> Result<(), ForeignWriteError> {
        if !self.writable {
            return Err(ForeignWriteError::ReadOnly);
        }
        check(offset, src.len()).map_err(ForeignWriteError::OutOfPage)?;
        let base = self.as_ptr();
        for (i, b) in src.iter().enumerate() {
            // SAFETY: as in `read`, and the mapping is writable.
            unsafe { base.add(offset + i).write_volatile(*b) };
        }
        Ok(())
    }

    /// Unmaps, reporting failure (dropping unmaps too, ignoring errors).
    pub fn unmap(self) -> Result<(), MapError> {
        let r = self.do_unmap();
        core::mem::forget(self);
        r
    }

    fn do_unmap(&self) -> Result<(), MapError> {
        let mut op = xen::abi::grant_table::GnttabUnmapGrantRef {
            host_addr: self.addr,
            dev_bus_addr: 0,
            handle: self.handle,
            status: 0,
        };
        // SAFETY: no Rust reference into the page exists (`read`/`write`
        // copy with raw volatile accesses), and the `as_ptr` contract of
        // `PageMemory` wrappers ends with the value that owns `self`.
        let r = unsafe { xen::hypercall::gnttab_unmap(&mut op) }
            .map_err(MapError::Xen)
            .and_then(|()| xen::hypercall::GrantStatus::check(op.status).map_err(MapError::Grant));
        if r.is_ok() {
            FOREIGN_SLOTS.lock()[self.slot / 64] &= !(1 << (self.slot % 64));
        }
        r
    }
}

impl Drop for ForeignPage {
    fn drop(&mut self) {
        let _ = self.do_unmap();
    }
}
