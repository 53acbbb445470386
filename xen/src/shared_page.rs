//! One 4 KiB page shared with another domain, owned by this one, and the
//! rings that live in such a page.
//!
//! Drivers (netfront, blkfront) are `forbid(unsafe_code)`: they get pages
//! from the kernel (or the simulated hypervisor) as a [`PageMemory`], whose
//! implementor vouches for the memory once, and then use only the safe,
//! bounds-checked accessors of [`SharedPage`] and the owning ring wrappers
//! [`PageFrontRing`] / [`PageBackRing`], which keep the page alive as long
//! as the ring that points into it.

use crate::abi::ring::RingIdx;
use crate::ring::{BackRing, FrontRing, PlainData};
use core::ops::{Deref, DerefMut};

/// Bytes in a shared page.
pub const PAGE_SIZE: usize = 4096;

/// Copies move this many bytes per volatile access (packets are copied
/// through these pages, so byte-at-a-time would cost throughput).
const BLOCK: usize = 64;

/// Memory for one shared page.
///
/// # Safety
/// `as_ptr` must return the same non-null pointer for the whole life of the
/// value, to [`PAGE_SIZE`] bytes aligned to [`PAGE_SIZE`], valid for
/// volatile reads and writes until the value is dropped, with no Rust
/// reference to those bytes held anywhere (another domain writes them).
pub unsafe trait PageMemory {
    /// The start of the page.
    fn as_ptr(&self) -> *mut u8;
    /// The frame number Xen expects in a grant entry for this page.
    fn frame(&self) -> u64;
}

/// An access that would leave the page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutOfPage {
    /// Requested offset.
    pub offset: usize,
    /// Requested length.
    pub len: usize,
}

/// A shared page with bounds-checked volatile copies in and out.
pub struct SharedPage<M: PageMemory> {
    mem: M,
}

fn check(offset: usize, len: usize) -> Result<(), OutOfPage> {
    match offset.checked_add(len) {
        Some(end) if end <= PAGE_SIZE => Ok(()),
        _ => Err(OutOfPage { offset, len }),
    }
}

impl<M: PageMemory> SharedPage<M> {
    /// Wraps page memory.
    pub fn new(mem: M) -> Self {
        Self { mem }
    }

    /// The frame number to grant.
    pub fn frame(&self) -> u64 {
        self.mem.frame()
    }

    /// The underlying memory.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// Copy `dst.len()` bytes at `offset` out of the page.
    pub fn read(&self, offset: usize, dst: &mut [u8]) -> Result<(), OutOfPage> {
        check(offset, dst.len())?;
        let base = self.mem.as_ptr();
        let mut blocks = dst.chunks_exact_mut(BLOCK);
        let mut at = offset;
        for block in &mut blocks {
            // SAFETY: `at + BLOCK <= offset + dst.len() <= PAGE_SIZE`
            // (checked above); `[u8; BLOCK]` has alignment 1; the memory is
            // valid for volatile reads (`PageMemory` contract).
            let v = unsafe { base.add(at).cast::<[u8; BLOCK]>().read_volatile() };
            block.copy_from_slice(&v);
            at += BLOCK;
        }
        for b in blocks.into_remainder() {
            // SAFETY: `at < offset + dst.len() <= PAGE_SIZE`, as above.
            *b = unsafe { base.add(at).read_volatile() };
            at += 1;
        }
        Ok(())
    }

    /// Copy `src` into the page at `offset`.
    pub fn write(&self, offset: usize, src: &[u8]) -> Result<(), OutOfPage> {
        check(offset, src.len())?;
        let base = self.mem.as_ptr();
        let mut blocks = src.chunks_exact(BLOCK);
        let mut at = offset;
        for block in &mut blocks {
            let mut v = [0u8; BLOCK];
            v.copy_from_slice(block);
            // SAFETY: as in `read`, for writes.
            unsafe { base.add(at).cast::<[u8; BLOCK]>().write_volatile(v) };
            at += BLOCK;
        }
        for b in blocks.remainder() {
            // SAFETY: as in `read`, for writes.
            unsafe { base.add(at).write_volatile(*b) };
            at += 1;
        }
        Ok(())
    }

    /// Make this page a frontend ring with every index at `start`
    /// (`SHARED_RING_INIT` + `FRONT_RING_INIT`; `start` 0 normally).
    pub fn into_front_ring<Req: PlainData, Rsp: PlainData>(
        self,
        start: RingIdx,
    ) -> PageFrontRing<M, Req, Rsp> {
        // SAFETY: the page is valid, page-aligned (so 64-byte aligned) and
        // unreferenced (`PageMemory` contract), and the returned value owns
        // it for as long as the ring exists.
        let ring = unsafe { FrontRing::init_at(self.mem.as_ptr(), PAGE_SIZE, start) };
        PageFrontRing { ring, _page: self }
    }

    /// Attach to the frontend ring in this page as the backend, with our
    /// indices at `start` (`BACK_RING_ATTACH`).
    pub fn into_back_ring<Req: PlainData, Rsp: PlainData>(
        self,
        start: RingIdx,
    ) -> PageBackRing<M, Req, Rsp> {
        // SAFETY: as in `into_front_ring`.
        let ring = unsafe { BackRing::attach(self.mem.as_ptr(), PAGE_SIZE, start) };
        PageBackRing { ring, _page: self }
    }
}

/// A [`FrontRing`] together with the page it lives in.
pub struct PageFrontRing<M: PageMemory, Req, Rsp> {
    ring: FrontRing<Req, Rsp>,
    _page: SharedPage<M>,
}

impl<M: PageMemory, Req, Rsp> PageFrontRing<M, Req, Rsp> {
    /// The frame number of the ring page (to grant it).
    pub fn frame(&self) -> u64 {
        self._page.frame()
    }
}

impl<M: PageMemory, Req, Rsp> Deref for PageFrontRing<M, Req, Rsp> {
    type Target = FrontRing<Req, Rsp>;
    fn deref(&self) -> &Self::Target {
        &self.ring
    }
}

impl<M: PageMemory, Req, Rsp> DerefMut for PageFrontRing<M, Req, Rsp> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.ring
    }
}

/// A [`BackRing`] together with the (mapped) page it lives in.
pub struct PageBackRing<M: PageMemory, Req, Rsp> {
    ring: BackRing<Req, Rsp>,
    _page: SharedPage<M>,
}

impl<M: PageMemory, Req, Rsp> Deref for PageBackRing<M, Req, Rsp> {
    type Target = BackRing<Req, Rsp>;
    fn deref(&self) -> &Self::Target {
        &self.ring
    }
}

impl<M: PageMemory, Req, Rsp> DerefMut for PageBackRing<M, Req, Rsp> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.ring
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::SimHypervisor;

    #[test]
    fn copies_are_exact_at_every_alignment_and_bounded() {
        let page = SimHypervisor::new().alloc_page();
        let pattern: alloc::vec::Vec<u8> = (0..PAGE_SIZE).map(|i| (i * 7 + 3) as u8).collect();
        page.write(0, &pattern).unwrap();
        for (offset, len) in [
            (0, 1),
            (1, 63),
            (3, 64),
            (5, 200),
            (4000, 96),
            (0, 4096),
            (4095, 1),
        ] {
            let mut got = alloc::vec![0u8; len];
            page.read(offset, &mut got).unwrap();
            assert_eq!(got, pattern[offset..offset + len], "{offset}+{len}");
        }
        page.write(61, &[0xAA; 130]).unwrap();
        let mut all = alloc::vec![0u8; PAGE_SIZE];
        page.read(0, &mut all).unwrap();
        assert_eq!(all[..61], pattern[..61]);
        assert!(all[61..191].iter().all(|b| *b == 0xAA));
        assert_eq!(all[191..], pattern[191..]);
        let mut b = [0u8; 2];
        assert_eq!(
            page.read(4095, &mut b),
            Err(OutOfPage {
                offset: 4095,
                len: 2
            })
        );
        assert_eq!(
            page.write(usize::MAX, &b),
            Err(OutOfPage {
                offset: usize::MAX,
                len: 2
            })
        );
        assert_eq!(page.write(4096, &[]), Ok(()));
    }
}
