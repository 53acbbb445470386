//! The xenstore server's side of a domain's xenstore page
//! (`struct xenstore_domain_interface`): it consumes the request ring and
//! produces into the response ring, the mirror of [`XsRing`](super::XsRing).
//! Used by moat's xenstored (the xenstore stub domain) over a foreign
//! mapping of each domain's page, and by tests over a simulated one.
//!
//! Everything in the page is written by the client too: its indices are
//! checked on every access ([`RingIndexError`]: more in flight than the
//! ring holds), so a hostile client can never steer an access outside the
//! page.

use crate::abi::xs_wire::{XenstoreDomainInterface, XENSTORE_RING_SIZE};
use crate::ring::bytes::{ByteRingReader, ByteRingWriter, RingIndexError};
use crate::shared_page::{PageMemory, SharedPage};
use core::mem::{offset_of, size_of};

/// The server's ends of the two byte rings in a xenstore page it owns.
pub struct XsServerPage<M: PageMemory> {
    requests: ByteRingReader,
    responses: ByteRingWriter,
    page: SharedPage<M>,
}

const _: () = assert!(size_of::<XenstoreDomainInterface>() <= crate::shared_page::PAGE_SIZE);

impl<M: PageMemory> XsServerPage<M> {
    /// The server's view of the xenstore page in `page`.
    pub fn new(page: SharedPage<M>) -> Self {
        let base = page.memory().as_ptr();
        let at = |offset: usize| base.wrapping_add(offset);
        type P = XenstoreDomainInterface;
        // SAFETY: the page is valid for volatile access, page-aligned (so
        // every u32 field is aligned) and unreferenced for as long as the
        // `SharedPage` lives (`PageMemory` contract); `Self` owns it and
        // outlives both rings; the offsets are those of the C struct
        // (checked against xs_wire.h in tests/abi.rs) and lie within the
        // page (asserted above).
        unsafe {
            Self {
                requests: ByteRingReader::new(
                    at(offset_of!(P, req)),
                    XENSTORE_RING_SIZE,
                    at(offset_of!(P, req_cons)).cast(),
                    at(offset_of!(P, req_prod)).cast(),
                ),
                responses: ByteRingWriter::new(
                    at(offset_of!(P, rsp)),
                    XENSTORE_RING_SIZE,
                    at(offset_of!(P, rsp_cons)).cast(),
                    at(offset_of!(P, rsp_prod)).cast(),
                ),
                page,
            }
        }
    }

    /// Copy up to `dst.len()` request bytes out and release them to the
    /// client; returns how many (0 when none).
    pub fn read(&mut self, dst: &mut [u8]) -> Result<usize, RingIndexError> {
        self.requests.read(dst)
    }

    /// Request bytes waiting.
    pub fn available(&self) -> Result<usize, RingIndexError> {
        self.requests.available()
    }

    /// Copy as much of `src` into the response ring as fits; returns how
    /// many bytes (0 when full).
    pub fn write(&mut self, src: &[u8]) -> Result<usize, RingIndexError> {
        self.responses.write(src)
    }

    /// Room in the response ring.
    pub fn free(&self) -> Result<usize, RingIndexError> {
        self.responses.free()
    }

    fn set_u32(&self, offset: usize, value: u32) {
        // In the page by construction: a struct field's offset.
        let _ = self.page.write(offset, &value.to_ne_bytes());
    }

    fn get_u32(&self, offset: usize) -> u32 {
        let mut word = [0u8; 4];
        let _ = self.page.read(offset, &mut word);
        u32::from_ne_bytes(word)
    }

    /// Advertise `XENSTORE_SERVER_FEATURE_*` bits (`server_features`).
    pub fn set_server_features(&self, bits: u32) {
        self.set_u32(offset_of!(XenstoreDomainInterface, server_features), bits)
    }

    /// Flag a broken connection to the client (`error`, one of
    /// `XENSTORE_ERROR_*`).
    pub fn set_error(&self, code: u32) {
        self.set_u32(offset_of!(XenstoreDomainInterface, error), code)
    }

    /// The `connection` field (the client sets `XENSTORE_RECONNECT`).
    pub fn connection(&self) -> u32 {
        self.get_u32(offset_of!(XenstoreDomainInterface, connection))
    }

    /// Set the `connection` field (`XENSTORE_CONNECTED` after a reset).
    pub fn set_connection(&self, value: u32) {
        self.set_u32(offset_of!(XenstoreDomainInterface, connection), value)
    }

    /// The page, to unmap it.
    pub fn into_page(self) -> SharedPage<M> {
        self.page
    }
}

#[cfg(all(test, feature = "sim"))]
mod tests {
    use super::*;
    use crate::abi::xs_wire::{XENSTORE_ERROR_PROTO, XENSTORE_SERVER_FEATURE_ERROR};
    use crate::sim::hypervisor::SimHypervisor;

    #[test]
    fn requests_in_responses_out_indices_checked() {
        let hv = SimHypervisor::new();
        let page = hv.alloc_page();
        let base = page.memory().as_ptr();
        let mut server = XsServerPage::new(page);
        // SAFETY: the page stays alive in `server` for the whole test and
        // is reached through raw pointers only.
        let (mut client_tx, mut client_rx) = unsafe {
            type P = XenstoreDomainInterface;
            let at = |o: usize| base.wrapping_add(o);
            (
                ByteRingWriter::new(
                    at(offset_of!(P, req)),
                    XENSTORE_RING_SIZE,
                    at(offset_of!(P, req_cons)).cast(),
                    at(offset_of!(P, req_prod)).cast(),
                ),
                ByteRingReader::new(
                    at(offset_of!(P, rsp)),
                    XENSTORE_RING_SIZE,
                    at(offset_of!(P, rsp_cons)).cast(),
                    at(offset_of!(P, rsp_prod)).cast(),
                ),
            )
        };
        assert_eq!(client_tx.write(b"hello"), Ok(5));
        assert_eq!(server.available(), Ok(5));
        let mut buf = [0u8; 8];
        assert_eq!(server.read(&mut buf), Ok(5));
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(server.free(), Ok(XENSTORE_RING_SIZE));
        assert_eq!(server.write(&[7u8; 2000]), Ok(XENSTORE_RING_SIZE));
        assert_eq!(server.write(b"x"), Ok(0));
        let mut out = [0u8; 2000];
        assert_eq!(client_rx.read(&mut out), Ok(XENSTORE_RING_SIZE));
        server.set_server_features(XENSTORE_SERVER_FEATURE_ERROR);
        server.set_error(XENSTORE_ERROR_PROTO);
        server.set_connection(1);
        assert_eq!(server.connection(), 1);
        // A client publishing an impossible producer index is refused.
        let page = server.into_page();
        let req_prod = offset_of!(XenstoreDomainInterface, req_prod);
        page.write(req_prod, &5000u32.to_ne_bytes()).unwrap();
        let server = XsServerPage::new(page);
        assert!(server.available().is_err());
        let mut w = [0u8; 4];
        let page = server.into_page();
        page.read(offset_of!(XenstoreDomainInterface, error), &mut w)
            .unwrap();
        assert_eq!(u32::from_ne_bytes(w), XENSTORE_ERROR_PROTO);
    }
}
