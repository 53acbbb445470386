//! A shared ring seen from the backend's side and driven byte by byte, as
//! a hostile backend drives it: requests are read as the frontend
//! published them, responses are written and published with no rule
//! enforced, so an attack can answer an id never asked for or publish a
//! response producer index far past anything requested. The layout is
//! [`crate::ring`]'s (Xen's `io/ring.h`).

use crate::ring::{ring_size, HEADER};
use xen::shared_page::{PageMemory, SharedPage};

const REQ_PROD: usize = 0;
const RSP_PROD: usize = 8;
const RSP_EVENT: usize = 12;

/// The backend's side of one ring page the frontend initialised.
pub struct RawBackRing<P: PageMemory> {
    page: SharedPage<P>,
    entry: usize,
    size: u32,
    /// Requests taken.
    req_cons: u32,
    /// Responses written (published or not).
    rsp_prod: u32,
}

impl<P: PageMemory> RawBackRing<P> {
    /// Attach to `page`, a ring of `entry`-byte entries, where the
    /// frontend initialised it (its `rsp_prod`, as `BACK_RING_ATTACH`).
    pub fn attach(page: SharedPage<P>, entry: usize) -> Self {
        let mut ring = Self {
            page,
            entry,
            size: ring_size(entry),
            req_cons: 0,
            rsp_prod: 0,
        };
        let start = ring.get_u32(RSP_PROD);
        ring.req_cons = start;
        ring.rsp_prod = start;
        ring
    }

    /// The page back, the ring given up.
    pub fn into_page(self) -> SharedPage<P> {
        self.page
    }

    fn get_u32(&self, at: usize) -> u32 {
        let mut b = [0u8; 4];
        let _ = self.page.read(at, &mut b);
        u32::from_le_bytes(b)
    }

    fn put_u32(&self, at: usize, v: u32) {
        // Cannot fail: the header lies inside the page.
        let _ = self.page.write(at, &v.to_le_bytes());
    }

    /// Take the requests published since the last call (at most a ring's
    /// worth: a frontend claiming more is read modulo the ring). `each`
    /// sees every request's bytes.
    pub fn take_requests(&mut self, mut each: impl FnMut(&[u8])) -> u32 {
        let prod = self.get_u32(REQ_PROD);
        let n = prod.wrapping_sub(self.req_cons).min(self.size);
        let mut buf = [0u8; 16];
        let len = self.entry.min(buf.len());
        for _ in 0..n {
            let slot = (self.req_cons & self.size.wrapping_sub(1)) as usize;
            let _ = self.page.read(HEADER + slot * self.entry, &mut buf[..len]);
            each(&buf[..len]);
            self.req_cons = self.req_cons.wrapping_add(1);
        }
        n
    }

    /// Write `bytes` (at most one entry) into the next response slot,
    /// unpublished.
    pub fn put(&mut self, bytes: &[u8]) {
        let slot = (self.rsp_prod & self.size.wrapping_sub(1)) as usize;
        let n = bytes.len().min(self.entry);
        let _ = self.page.write(HEADER + slot * self.entry, &bytes[..n]);
        self.rsp_prod = self.rsp_prod.wrapping_add(1);
    }

    /// Publish every response written.
    pub fn publish(&mut self) {
        self.put_u32(RSP_PROD, self.rsp_prod);
    }

    /// Publish `rsp_prod` as given: the producer index attack.
    pub fn publish_raw(&mut self, rsp_prod: u32) {
        self.put_u32(RSP_PROD, rsp_prod);
    }

    /// The local response producer index.
    pub fn rsp_prod(&self) -> u32 {
        self.rsp_prod
    }

    /// The frontend's `rsp_event` (whether it wants a notification).
    pub fn rsp_event(&self) -> u32 {
        self.get_u32(RSP_EVENT)
    }
}

/// `netif_tx_request` fields: gref, offset, flags, id, size.
pub fn parse_tx_request(b: &[u8]) -> (u32, u16, u16, u16, u16) {
    let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    (
        u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        u16_at(4),
        u16_at(6),
        u16_at(8),
        u16_at(10),
    )
}

/// `netif_rx_request` fields: id, gref.
pub fn parse_rx_request(b: &[u8]) -> (u16, u32) {
    (
        u16::from_le_bytes([b[0], b[1]]),
        u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
    )
}

/// `netif_tx_response` bytes: id, status.
pub fn tx_response(id: u16, status: i16) -> [u8; 4] {
    let mut b = [0u8; 4];
    b[0..2].copy_from_slice(&id.to_le_bytes());
    b[2..4].copy_from_slice(&status.to_le_bytes());
    b
}

/// `netif_rx_response` bytes: id, offset, flags, status (the size when
/// positive).
pub fn rx_response(id: u16, offset: u16, flags: u16, status: i16) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[0..2].copy_from_slice(&id.to_le_bytes());
    b[2..4].copy_from_slice(&offset.to_le_bytes());
    b[4..6].copy_from_slice(&flags.to_le_bytes());
    b[6..8].copy_from_slice(&status.to_le_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::{rx_request, tx_request, RawRing};
    use xen::sim::{SimHypervisor, SimPage};

    /// The page (kept alive by the caller) and two views of it.
    fn shared_pair(
        hv: &SimHypervisor,
    ) -> (
        SharedPage<SimPage>,
        SharedPage<SimPage>,
        SharedPage<SimPage>,
    ) {
        let page = hv.alloc_page_of(1);
        (
            SharedPage::new(page.memory().clone()),
            SharedPage::new(page.memory().clone()),
            page,
        )
    }

    #[test]
    fn requests_in_responses_out() {
        let hv = SimHypervisor::new();
        let (f, b, _page) = shared_pair(&hv);
        let mut front = RawRing::new(f, 12);
        let mut back = RawBackRing::attach(b, 12);
        front.put(&tx_request(7, 10, 0, 3, 60));
        front.put(&tx_request(8, 0, 0, 4, 1500));
        front.publish();
        let mut seen = alloc::vec::Vec::new();
        assert_eq!(back.take_requests(|r| seen.push(parse_tx_request(r))), 2);
        assert_eq!(seen, [(7, 10, 0, 3, 60), (8, 0, 0, 4, 1500)]);
        assert_eq!(back.take_requests(|_| {}), 0);
        back.put(&tx_response(4, 0));
        back.put(&tx_response(3, -1));
        back.publish();
        let mut got = alloc::vec::Vec::new();
        front.take_responses(|r| got.push(crate::ring::tx_status(r)));
        assert_eq!(got, [0, -1]);
    }

    #[test]
    fn a_producer_index_past_the_ring() {
        let hv = SimHypervisor::new();
        let (f, b, _page) = shared_pair(&hv);
        let mut front = RawRing::new(f, 8);
        let mut back = RawBackRing::attach(b, 8);
        front.put(&rx_request(1, 99));
        front.publish();
        let mut seen = alloc::vec::Vec::new();
        back.take_requests(|r| seen.push(parse_rx_request(r)));
        assert_eq!(seen, [(1, 99)]);
        back.publish_raw(back.rsp_prod().wrapping_add(10_000));
        // The frontend's ring takes no more than it asked for.
        assert_eq!(front.take_responses(|_| {}), 1);
        // A frontend claiming a huge producer index is read modulo the ring.
        front.publish_raw(1_000_000);
        assert!(back.take_requests(|_| {}) <= 256);
    }
}
