//! A shared ring driven byte by byte, as a hostile frontend drives it: the
//! layout of Xen's `io/ring.h` (a 64-byte header of `req_prod`,
//! `req_event`, `rsp_prod`, `rsp_event`, then entries the size of the
//! larger of a request and a response, a power of two of them), with no
//! rule enforced on what is written. The well-behaved ring of the drivers
//! is `xen::ring`; this one lets a test publish any producer index and any
//! request bytes.

use xen::shared_page::{PageMemory, SharedPage, PAGE_SIZE};

/// The ring header's size (`struct <name>_sring` up to `ring[]`).
pub const HEADER: usize = 64;

const REQ_PROD: usize = 0;
const REQ_EVENT: usize = 4;
const RSP_PROD: usize = 8;
const RSP_EVENT: usize = 12;

/// Entries of `entry` bytes that fit a page with the header, rounded down
/// to a power of two (`__RING_SIZE`).
pub fn ring_size(entry: usize) -> u32 {
    let n = (PAGE_SIZE - HEADER) / entry.max(1);
    if n == 0 {
        0
    } else {
        1u32 << (usize::BITS - 1 - n.leading_zeros())
    }
}

/// The frontend's side of one ring page.
pub struct RawRing<P: PageMemory> {
    page: SharedPage<P>,
    entry: usize,
    size: u32,
    /// Requests written (published or not).
    req_prod: u32,
    /// Responses taken.
    rsp_cons: u32,
}

impl<P: PageMemory> RawRing<P> {
    /// Initialise `page` as an empty ring of `entry`-byte entries
    /// (`SHARED_RING_INIT` + `FRONT_RING_INIT`).
    pub fn new(page: SharedPage<P>, entry: usize) -> Self {
        let ring = Self {
            page,
            entry,
            size: ring_size(entry),
            req_prod: 0,
            rsp_cons: 0,
        };
        ring.put_u32(REQ_PROD, 0);
        ring.put_u32(REQ_EVENT, 1);
        ring.put_u32(RSP_PROD, 0);
        ring.put_u32(RSP_EVENT, 1);
        ring
    }

    /// The page (for its frame).
    pub fn page(&self) -> &SharedPage<P> {
        &self.page
    }

    /// The page back, the ring given up.
    pub fn into_page(self) -> SharedPage<P> {
        self.page
    }

    /// Entries in the ring.
    pub fn size(&self) -> u32 {
        self.size
    }

    fn put_u32(&self, at: usize, v: u32) {
        // Cannot fail: the header lies inside the page.
        let _ = self.page.write(at, &v.to_le_bytes());
    }

    fn get_u32(&self, at: usize) -> u32 {
        let mut b = [0u8; 4];
        let _ = self.page.read(at, &mut b);
        u32::from_le_bytes(b)
    }

    /// Requests that may be written before the ring is full, going by the
    /// responses taken.
    pub fn free(&self) -> u32 {
        self.size
            .saturating_sub(self.req_prod.wrapping_sub(self.rsp_cons))
    }

    /// Write `bytes` (at most one entry) into the next request slot,
    /// unpublished.
    pub fn put(&mut self, bytes: &[u8]) {
        let slot = (self.req_prod & self.size.wrapping_sub(1)) as usize;
        let n = bytes.len().min(self.entry);
        let _ = self.page.write(HEADER + slot * self.entry, &bytes[..n]);
        self.req_prod = self.req_prod.wrapping_add(1);
    }

    /// Publish every request written. No barrier: x86 keeps stores in
    /// order, so there the entries are visible before the index; on arm32
    /// they may not be, which a backend must survive anyway.
    pub fn publish(&mut self) {
        self.put_u32(REQ_PROD, self.req_prod);
    }

    /// Publish `req_prod` as given, whatever was written: the producer
    /// index attack.
    pub fn publish_raw(&mut self, req_prod: u32) {
        self.put_u32(REQ_PROD, req_prod);
    }

    /// The backend's response producer index.
    pub fn rsp_prod(&self) -> u32 {
        self.get_u32(RSP_PROD)
    }

    /// Take every response published (at most a ring's worth past what we
    /// took: a backend claiming more is ignored), re-arm `rsp_event`, and
    /// return how many were taken. `each` sees every response's bytes.
    pub fn take_responses(&mut self, mut each: impl FnMut(&[u8])) -> u32 {
        let prod = self.rsp_prod();
        let mut n = prod.wrapping_sub(self.rsp_cons);
        let outstanding = self.req_prod.wrapping_sub(self.rsp_cons);
        if n > outstanding {
            n = outstanding;
        }
        let mut buf = [0u8; 16];
        let len = self.entry.min(buf.len());
        for _ in 0..n {
            let slot = (self.rsp_cons & self.size.wrapping_sub(1)) as usize;
            let _ = self.page.read(HEADER + slot * self.entry, &mut buf[..len]);
            each(&buf[..len]);
            self.rsp_cons = self.rsp_cons.wrapping_add(1);
        }
        self.put_u32(RSP_EVENT, self.rsp_cons.wrapping_add(1));
        n
    }

    /// Requests written (the local producer index).
    pub fn req_prod(&self) -> u32 {
        self.req_prod
    }

    /// Forget what was written but not answered (after a producer index
    /// attack the ring is never parsed again).
    pub fn reset_to_responses(&mut self) {
        self.req_prod = self.rsp_cons;
    }
}

/// `netif_tx_request` bytes: gref, offset, flags, id, size.
pub fn tx_request(gref: u32, offset: u16, flags: u16, id: u16, size: u16) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0..4].copy_from_slice(&gref.to_le_bytes());
    b[4..6].copy_from_slice(&offset.to_le_bytes());
    b[6..8].copy_from_slice(&flags.to_le_bytes());
    b[8..10].copy_from_slice(&id.to_le_bytes());
    b[10..12].copy_from_slice(&size.to_le_bytes());
    b
}

/// `netif_extra_info` bytes in a TX slot: type, flags, then the GSO
/// member (size, type, pad, features).
pub fn tx_extra(kind: u8, flags: u8, gso_size: u16, gso_type: u8) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0] = kind;
    b[1] = flags;
    b[2..4].copy_from_slice(&gso_size.to_le_bytes());
    b[4] = gso_type;
    b
}

/// `netif_rx_request` bytes: id, pad, gref.
pub fn rx_request(id: u16, gref: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[0..2].copy_from_slice(&id.to_le_bytes());
    b[4..8].copy_from_slice(&gref.to_le_bytes());
    b
}

/// A TX response's status (`netif_tx_response`: id, status).
pub fn tx_status(rsp: &[u8]) -> i16 {
    match rsp.get(2..4) {
        Some(s) => i16::from_le_bytes([s[0], s[1]]),
        None => 0,
    }
}

/// An RX response's status (`netif_rx_response`: id, offset, flags,
/// status: bytes received or a negative `NETIF_RSP_*`).
pub fn rx_status(rsp: &[u8]) -> i16 {
    match rsp.get(6..8) {
        Some(s) => i16::from_le_bytes([s[0], s[1]]),
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xen::abi::netif::{NetifRxRequest, NetifTxRequest, NetifTxResponse};
    use xen::sim::SimHypervisor;

    #[test]
    fn sizes_match_xen() {
        // netif's TX entry is 12 bytes, RX 8: both rings hold 256.
        assert_eq!(ring_size(12), 256);
        assert_eq!(ring_size(8), 256);
        assert_eq!(ring_size(64), 32);
        assert_eq!(
            core::mem::size_of::<NetifTxRequest>(),
            12,
            "tx_request's layout"
        );
        assert_eq!(core::mem::size_of::<NetifRxRequest>(), 8);
    }

    #[test]
    fn encodings_match_the_typed_ring() {
        // What RawRing writes, the well-behaved backend ring reads back
        // as the same typed request.
        let hv = SimHypervisor::new();
        let page = hv.alloc_page_of(1);
        let view = SharedPage::new(page.memory().clone());
        let mut raw = RawRing::new(SharedPage::new(page.memory().clone()), 12);
        raw.put(&tx_request(7, 100, 0x4, 3, 1514));
        raw.publish();
        let mut back = view.into_back_ring::<NetifTxRequest, NetifTxResponse>(0);
        let r = back.take_request().unwrap().unwrap();
        assert_eq!(
            (r.gref, r.offset, r.flags, r.id, r.size),
            (7, 100, 4, 3, 1514)
        );
        back.queue_response(NetifTxResponse { id: 3, status: -1 })
            .unwrap();
        back.push_responses_and_check_notify();
        let mut got = alloc::vec::Vec::new();
        assert_eq!(raw.take_responses(|b| got.push(tx_status(b))), 1);
        assert_eq!(got, [-1]);
        assert_eq!(raw.free(), 256);
    }

    #[test]
    fn a_lying_backend_cannot_make_us_read_past_our_requests() {
        let hv = SimHypervisor::new();
        let page = hv.alloc_page_of(1);
        let view = SharedPage::new(page.memory().clone());
        let mut raw = RawRing::new(SharedPage::new(page.memory().clone()), 12);
        raw.put(&tx_request(1, 0, 0, 0, 60));
        raw.publish();
        // rsp_prod far ahead
        view.write(RSP_PROD, &5000u32.to_le_bytes()).unwrap();
        assert_eq!(raw.take_responses(|_| {}), 1);
        assert_eq!(raw.free(), 256);
    }
}
