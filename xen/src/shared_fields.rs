//! Atomic access to single integer fields of a [`SharedPage`]: indices,
//! flags and bit masks that both domains read and write in place, as the
//! vchan control page (`io/libxenvchan.h`) has them.
//!
//! [`SharedPage::read`]/[`SharedPage::write`] copy bytes and may split a
//! field into several accesses, so a peer's concurrent update could be seen
//! half old, half new. These accessors read or write a naturally aligned
//! `u8`/`u16`/`u32` in one atomic access (what the C side's plain aligned
//! loads and stores and `__sync_*` builtins are on every Xen architecture),
//! after checking that the field lies inside the page and is aligned; a
//! field that does not is refused with [`OutOfPage`]. Ordering against the
//! data copies is the caller's business (`core::sync::atomic::fence`), as in
//! [`crate::ring::bytes`].

use crate::shared_page::{OutOfPage, PageMemory, SharedPage, PAGE_SIZE};
use core::sync::atomic::{AtomicU16, AtomicU32, AtomicU8, Ordering};

/// The address of an aligned `len`-byte field at `offset`, if it is one.
fn field<M: PageMemory>(
    page: &SharedPage<M>,
    offset: usize,
    len: usize,
) -> Result<*mut u8, OutOfPage> {
    match offset.checked_add(len) {
        Some(end) if end <= PAGE_SIZE && offset.is_multiple_of(len) => {
            // `offset < PAGE_SIZE`, so this stays inside the page
            // (`wrapping_add` needs no unsafe; it cannot wrap here).
            Ok(page.memory().as_ptr().wrapping_add(offset))
        }
        _ => Err(OutOfPage { offset, len }),
    }
}

impl<M: PageMemory> SharedPage<M> {
    /// Atomically load the `u32` at `offset` (a multiple of 4).
    pub fn load_u32(&self, offset: usize) -> Result<u32, OutOfPage> {
        let p = field(self, offset, 4)?;
        // SAFETY: `p` is inside the page and 4-aligned (checked by `field`;
        // the page is page-aligned); the memory is valid for reads and
        // writes while `self` lives (`PageMemory` contract) and no Rust
        // reference to it exists; `AtomicU32` has `u32`'s layout, and all
        // our accesses to shared fields are atomic.
        Ok(unsafe { AtomicU32::from_ptr(p.cast()) }.load(Ordering::Relaxed))
    }

    /// Atomically store `value` as the `u32` at `offset` (a multiple of 4).
    pub fn store_u32(&self, offset: usize, value: u32) -> Result<(), OutOfPage> {
        let p = field(self, offset, 4)?;
        // SAFETY: as in `load_u32`.
        unsafe { AtomicU32::from_ptr(p.cast()) }.store(value, Ordering::Relaxed);
        Ok(())
    }

    /// Atomically load the `u16` at `offset` (a multiple of 2).
    pub fn load_u16(&self, offset: usize) -> Result<u16, OutOfPage> {
        let p = field(self, offset, 2)?;
        // SAFETY: as in `load_u32`, for a 2-aligned `u16`.
        Ok(unsafe { AtomicU16::from_ptr(p.cast()) }.load(Ordering::Relaxed))
    }

    /// Atomically store `value` as the `u16` at `offset` (a multiple of 2).
    pub fn store_u16(&self, offset: usize, value: u16) -> Result<(), OutOfPage> {
        let p = field(self, offset, 2)?;
        // SAFETY: as in `load_u16`.
        unsafe { AtomicU16::from_ptr(p.cast()) }.store(value, Ordering::Relaxed);
        Ok(())
    }

    /// Atomically load the byte at `offset`.
    pub fn load_u8(&self, offset: usize) -> Result<u8, OutOfPage> {
        let p = field(self, offset, 1)?;
        // SAFETY: as in `load_u32`, for a byte (alignment 1).
        Ok(unsafe { AtomicU8::from_ptr(p) }.load(Ordering::Relaxed))
    }

    /// Atomically store `value` as the byte at `offset`.
    pub fn store_u8(&self, offset: usize, value: u8) -> Result<(), OutOfPage> {
        let p = field(self, offset, 1)?;
        // SAFETY: as in `load_u8`.
        unsafe { AtomicU8::from_ptr(p) }.store(value, Ordering::Relaxed);
        Ok(())
    }

    /// Atomically OR `bits` into the byte at `offset` (`__sync_or_and_fetch`
    /// is a full barrier, and so is this); returns the previous value.
    pub fn fetch_or_u8(&self, offset: usize, bits: u8) -> Result<u8, OutOfPage> {
        let p = field(self, offset, 1)?;
        // SAFETY: as in `load_u8`.
        Ok(unsafe { AtomicU8::from_ptr(p) }.fetch_or(bits, Ordering::SeqCst))
    }

    /// Atomically AND `mask` into the byte at `offset` (a full barrier, as
    /// `__sync_fetch_and_and`); returns the previous value.
    pub fn fetch_and_u8(&self, offset: usize, mask: u8) -> Result<u8, OutOfPage> {
        let p = field(self, offset, 1)?;
        // SAFETY: as in `load_u8`.
        Ok(unsafe { AtomicU8::from_ptr(p) }.fetch_and(mask, Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use crate::shared_page::OutOfPage;
    use crate::sim::SimHypervisor;

    #[test]
    fn fields_are_little_endian_views_of_the_bytes_and_bounded() {
        let page = SimHypervisor::new().alloc_page();
        page.store_u32(16, 0x0403_0201).unwrap();
        page.store_u16(4094, 0xBEEF).unwrap();
        page.store_u8(21, 0x80).unwrap();
        let mut b = [0u8; 4];
        page.read(16, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4]);
        assert_eq!(page.load_u16(16).unwrap(), 0x0201);
        assert_eq!(page.load_u16(18).unwrap(), 0x0403);
        assert_eq!(page.load_u8(19).unwrap(), 4);
        assert_eq!(page.load_u16(4094).unwrap(), 0xBEEF);
        page.write(8, &[9, 0, 0, 0]).unwrap();
        assert_eq!(page.load_u32(8).unwrap(), 9);

        assert_eq!(page.fetch_or_u8(21, 0x03).unwrap(), 0x80);
        assert_eq!(page.fetch_and_u8(21, !0x01).unwrap(), 0x83);
        assert_eq!(page.load_u8(21).unwrap(), 0x82);

        // Misaligned or outside the page: refused, nothing touched.
        for (offset, len) in [(2, 4), (4096, 4), (4093, 4), (usize::MAX - 1, 4)] {
            assert_eq!(page.load_u32(offset), Err(OutOfPage { offset, len }));
            assert_eq!(page.store_u32(offset, 1), Err(OutOfPage { offset, len }));
        }
        assert_eq!(page.load_u16(1), Err(OutOfPage { offset: 1, len: 2 }));
        assert_eq!(
            page.store_u16(4096, 1),
            Err(OutOfPage {
                offset: 4096,
                len: 2
            })
        );
        assert_eq!(
            page.load_u8(4096),
            Err(OutOfPage {
                offset: 4096,
                len: 1
            })
        );
        assert_eq!(
            page.fetch_or_u8(4096, 1),
            Err(OutOfPage {
                offset: 4096,
                len: 1
            })
        );
        assert_eq!(
            page.fetch_and_u8(usize::MAX, 1),
            Err(OutOfPage {
                offset: usize::MAX,
                len: 1
            })
        );
        let mut all = [0u8; 4096];
        page.read(0, &mut all).unwrap();
        assert_eq!(
            all.iter().map(|b| *b as u32).sum::<u32>(),
            9 + 1 + 2 + 3 + 4 + 0x82 + 0xBE + 0xEF
        );
    }
}
