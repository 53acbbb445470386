//! The console ring against a simulated backend working the other ends of
//! the same (heap-allocated) page.

use core::ptr::addr_of_mut;
use xen::abi::console::{XenconsInterface, XENCONS_IN_SIZE, XENCONS_OUT_SIZE};
use xen::console::ConsoleRing;
use xen::ring::bytes::{ByteRingReader, ByteRingWriter};

/// A page plus the backend's view of it (it reads `out`, writes `in`).
struct Page {
    page: *mut XenconsInterface,
    backend_out: ByteRingReader,
    backend_in: ByteRingWriter,
}

impl Page {
    fn new(out_start: u32, in_start: u32) -> (Self, ConsoleRing) {
        let mut boxed = Box::new(XenconsInterface::zeroed());
        boxed.out_cons = out_start;
        boxed.out_prod = out_start;
        boxed.in_cons = in_start;
        boxed.in_prod = in_start;
        let page = Box::into_raw(boxed);
        // SAFETY: `page` is a live heap allocation freed only in `Drop`, after
        // the rings (which the tests drop first or together) stop using it.
        let (backend_out, backend_in, ring) = unsafe {
            (
                ByteRingReader::new(
                    addr_of_mut!((*page).out).cast(),
                    XENCONS_OUT_SIZE,
                    addr_of_mut!((*page).out_cons),
                    addr_of_mut!((*page).out_prod),
                ),
                ByteRingWriter::new(
                    addr_of_mut!((*page).in_).cast(),
                    XENCONS_IN_SIZE,
                    addr_of_mut!((*page).in_cons),
                    addr_of_mut!((*page).in_prod),
                ),
                ConsoleRing::new(page),
            )
        };
        (
            Self {
                page,
                backend_out,
                backend_in,
            },
            ring,
        )
    }

    fn set_out_indices(&mut self, cons: u32, prod: u32) {
        // SAFETY: `page` is live; plain writes, nothing else runs meanwhile.
        unsafe {
            (*self.page).out_cons = cons;
            (*self.page).out_prod = prod;
        }
    }

    fn set_in_indices(&mut self, cons: u32, prod: u32) {
        // SAFETY: as above.
        unsafe {
            (*self.page).in_cons = cons;
            (*self.page).in_prod = prod;
        }
    }

    fn drain_out(&mut self) -> Vec<u8> {
        let mut all = Vec::new();
        let mut buf = [0u8; 700];
        loop {
            let n = self.backend_out.read(&mut buf).unwrap();
            if n == 0 {
                return all;
            }
            all.extend_from_slice(&buf[..n]);
        }
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        // SAFETY: allocated by `Box::into_raw` in `new`, freed once.
        drop(unsafe { Box::from_raw(self.page) });
    }
}

#[test]
fn written_bytes_reach_the_backend_unchanged() {
    let (mut page, mut console) = Page::new(0, 0);
    let msg = b"hello\nworld\r\n\x00\xff";
    assert_eq!(console.write(msg), msg.len());
    assert_eq!(page.drain_out(), msg.to_vec());
}

#[test]
fn write_takes_only_what_fits() {
    let (mut page, mut console) = Page::new(0, 0);
    let big: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(console.write(&big), XENCONS_OUT_SIZE);
    assert_eq!(console.write(&big), 0, "ring is full");
    let out = page.drain_out();
    assert_eq!(out, big[..XENCONS_OUT_SIZE].to_vec());
    assert_eq!(
        console.write(&big[XENCONS_OUT_SIZE..]),
        3000 - XENCONS_OUT_SIZE
    );
    assert_eq!(page.drain_out(), big[XENCONS_OUT_SIZE..].to_vec());
}

#[test]
fn indices_wrap_at_u32_max() {
    let (mut page, mut console) = Page::new(u32::MAX - 10, u32::MAX - 3);
    let msg: Vec<u8> = (0..100u8).collect();
    assert_eq!(console.write(&msg), 100);
    assert_eq!(page.drain_out(), msg);
    // SAFETY: page is live, plain read.
    assert_eq!(unsafe { (*page.page).out_prod }, 89);

    assert_eq!(page.backend_in.write(b"typed keys").unwrap(), 10);
    let mut buf = [0u8; 64];
    assert_eq!(console.read(&mut buf), 10);
    assert_eq!(&buf[..10], b"typed keys");
    assert_eq!(console.read(&mut buf), 0);
    assert_eq!(console.bad_index_count(), 0);
}

#[test]
fn impossible_backend_indices_move_nothing_and_are_counted() {
    let (mut page, mut console) = Page::new(0, 0);
    // Backend claims to have consumed bytes we never wrote.
    page.set_out_indices(5000, 0);
    assert_eq!(console.write(b"x"), 0);
    assert_eq!(console.bad_index_count(), 1);
    // Backend claims more input than the ring holds.
    page.set_in_indices(0, XENCONS_IN_SIZE as u32 + 1);
    let mut buf = [0u8; 4096];
    assert_eq!(console.read(&mut buf), 0);
    assert_eq!(console.bad_index_count(), 2);
    // A full-but-valid input ring is fine.
    page.set_in_indices(7, 7 + XENCONS_IN_SIZE as u32);
    assert_eq!(console.read(&mut buf), XENCONS_IN_SIZE);
    assert_eq!(console.bad_index_count(), 2);
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever index pair the backend leaves, the ring never panics or
        /// moves more than fits; a legal pair moves exactly what fits.
        #[test]
        fn any_indices_are_safe(
            out_cons in any::<u32>(),
            out_prod in any::<u32>(),
            in_cons in any::<u32>(),
            in_prod in any::<u32>(),
            len in 0usize..5000,
        ) {
            let (mut page, mut console) = Page::new(0, 0);
            page.set_out_indices(out_cons, out_prod);
            page.set_in_indices(in_cons, in_prod);
            let data = vec![0x42u8; len];
            let written = console.write(&data);
            let used = out_prod.wrapping_sub(out_cons) as usize;
            if used <= XENCONS_OUT_SIZE {
                prop_assert_eq!(written, len.min(XENCONS_OUT_SIZE - used));
            } else {
                prop_assert_eq!(written, 0);
            }
            let mut buf = vec![0u8; len];
            let read = console.read(&mut buf);
            let avail = in_prod.wrapping_sub(in_cons) as usize;
            if avail <= XENCONS_IN_SIZE {
                prop_assert_eq!(read, len.min(avail));
            } else {
                prop_assert_eq!(read, 0);
            }
            let bad = u64::from(used > XENCONS_OUT_SIZE) + u64::from(avail > XENCONS_IN_SIZE);
            prop_assert_eq!(console.bad_index_count(), bad);
        }
    }
}
