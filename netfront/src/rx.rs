//! The RX ring and its buffer pool (copy mode, `request-rx-copy`).
//!
//! As in Linux's netfront, the request at ring index `i` always carries id
//! `i mod RING_SIZE` and that id's page, granted writable to the backend
//! once for the queue's life. The backend answers in order, so the response
//! at index `i` must carry the same id; the buffer of an extra info
//! response (which overlays the id) is recovered from the index. Each
//! consumed response is answered by re-posting the same buffer.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use xen::abi::netif::{
    NetifExtraInfo, NetifRxRequest, NetifRxResponse, NETRXF_CSUM_BLANK, NETRXF_DATA_VALIDATED,
    NETRXF_EXTRA_INFO, NETRXF_MORE_DATA, XEN_NETIF_EXTRA_FLAG_MORE, XEN_NETIF_EXTRA_TYPE_GSO,
};
use xen::abi::ring::RingIdx;
use xen::shared_page::{PageFrontRing, PageMemory, PAGE_SIZE};

use crate::error::NetfrontError;
use crate::packet::{Gso, GsoKind, RxPacket};
use crate::tx::Buffer;

/// Largest packet accepted (a GSO super-packet plus Ethernet header);
/// longer ones are dropped and counted.
pub const MAX_RX_PACKET: usize = 65536 + 14;

/// Most packets kept for the reader; more are dropped and counted.
pub const RX_QUEUE_MAX: usize = 1024;

/// Most bytes kept for the reader (64 super-packets of 64 KiB; 1024 of
/// them would be 64 MiB); more are dropped and counted, so a backend
/// faster than the reader cannot grow the heap by more than this.
pub const RX_QUEUE_BYTES_MAX: usize = 4 << 20;

/// RX counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxStats {
    /// Packets delivered.
    pub packets: u64,
    /// Bytes delivered.
    pub bytes: u64,
    /// Packets dropped: error status, oversized, bad extra info, or the
    /// reader too slow.
    pub dropped: u64,
}

/// A packet being assembled from several responses.
struct Partial {
    data: Vec<u8>,
    csum_blank: bool,
    data_validated: bool,
    gso: Option<Gso>,
    bad: bool,
}

/// The RX half of a queue.
pub struct RxQueue<P: PageMemory> {
    pub(crate) ring: PageFrontRing<P, NetifRxRequest, NetifRxResponse>,
    pub(crate) bufs: Vec<Buffer<P>>,
    /// Our mirror of the ring's producer and consumer indices.
    req_prod: RingIdx,
    rsp_cons: RingIdx,
    partial: Option<Partial>,
    /// Extra info slots still expected before data continues.
    expect_extra: bool,
    /// The packet continues in the next data response.
    more_data: bool,
    ready: VecDeque<RxPacket>,
    /// The bytes of the packets in `ready`.
    ready_bytes: usize,
    /// Counters.
    pub stats: RxStats,
}

impl<P: PageMemory> RxQueue<P> {
    /// A queue over `ring` (initialised at `start`) with one granted
    /// buffer per ring slot.
    pub(crate) fn new(
        ring: PageFrontRing<P, NetifRxRequest, NetifRxResponse>,
        bufs: Vec<Buffer<P>>,
        start: RingIdx,
    ) -> Self {
        Self {
            ring,
            bufs,
            req_prod: start,
            rsp_cons: start,
            partial: None,
            expect_extra: false,
            more_data: false,
            ready: VecDeque::new(),
            ready_bytes: 0,
            stats: RxStats::default(),
        }
    }

    fn mask(&self) -> u32 {
        self.ring.size() - 1
    }

    /// Post every free buffer; returns whether to notify.
    pub(crate) fn refill(&mut self) -> Result<bool, NetfrontError> {
        let mut queued = false;
        while self.ring.free_requests() > 0 {
            let id = (self.req_prod & self.mask()) as u16;
            let Some(buf) = self.bufs.get(usize::from(id)) else {
                break;
            };
            self.ring.queue_request(NetifRxRequest {
                id,
                pad: 0,
                gref: buf.gref,
            })?;
            self.req_prod = self.req_prod.wrapping_add(1);
            queued = true;
        }
        Ok(queued && self.ring.push_requests_and_check_notify())
    }

    /// Take every response into packets; then re-arm the response event.
    pub(crate) fn collect(&mut self) -> Result<(), NetfrontError> {
        loop {
            while let Some(rsp) = self.ring.take_response()? {
                let expected = (self.rsp_cons & self.mask()) as u16;
                self.rsp_cons = self.rsp_cons.wrapping_add(1);
                self.one_response(rsp, expected)?;
            }
            if !self.ring.final_check_for_responses()? {
                return Ok(());
            }
        }
    }

    fn one_response(&mut self, rsp: NetifRxResponse, expected: u16) -> Result<(), NetfrontError> {
        if self.expect_extra {
            let extra = NetifExtraInfo::from_rx_response(rsp);
            self.expect_extra = extra.flags & XEN_NETIF_EXTRA_FLAG_MORE != 0;
            if let Some(p) = &mut self.partial {
                if extra.type_ == XEN_NETIF_EXTRA_TYPE_GSO {
                    let gso = extra.as_gso();
                    match GsoKind::from_wire(gso.gso_type) {
                        Some(kind) if gso.size > 0 => {
                            p.gso = Some(Gso {
                                kind,
                                mss: gso.size,
                            })
                        }
                        _ => p.bad = true,
                    }
                }
            }
            if !self.expect_extra && !self.more_data {
                self.finish();
            }
            return Ok(());
        }
        if rsp.id != expected {
            return Err(NetfrontError::BadRxId {
                expected,
                got: rsp.id,
            });
        }
        let first = self.partial.is_none();
        let p = self.partial.get_or_insert_with(|| Partial {
            data: Vec::new(),
            csum_blank: rsp.flags & NETRXF_CSUM_BLANK != 0,
            data_validated: rsp.flags & NETRXF_DATA_VALIDATED != 0,
            gso: None,
            bad: false,
        });
        if rsp.status < 0 {
            p.bad = true;
        } else {
            let offset = usize::from(rsp.offset);
            let size = rsp.status as usize;
            if offset + size > PAGE_SIZE {
                return Err(NetfrontError::BadRxSize {
                    offset: rsp.offset,
                    size: rsp.status,
                });
            }
            if p.data.len() + size > MAX_RX_PACKET {
                p.bad = true;
            } else if let Some(buf) = self.bufs.get(usize::from(expected)) {
                let at = p.data.len();
                p.data.resize(at + size, 0);
                if let Some(dst) = p.data.get_mut(at..) {
                    buf.page
                        .read(offset, dst)
                        .map_err(|_| NetfrontError::BadRxSize {
                            offset: rsp.offset,
                            size: rsp.status,
                        })?;
                }
            }
        }
        self.more_data = rsp.flags & NETRXF_MORE_DATA != 0;
        // Extra info only ever follows a packet's first response.
        self.expect_extra = first && rsp.flags & NETRXF_EXTRA_INFO != 0;
        if !self.more_data && !self.expect_extra {
            self.finish();
        }
        Ok(())
    }

    fn finish(&mut self) {
        let Some(p) = self.partial.take() else {
            return;
        };
        if p.bad
            || p.data.is_empty()
            || self.ready.len() >= RX_QUEUE_MAX
            || self.ready_bytes.saturating_add(p.data.len()) > RX_QUEUE_BYTES_MAX
        {
            self.stats.dropped += 1;
            return;
        }
        self.ready_bytes += p.data.len();
        self.stats.packets += 1;
        self.stats.bytes += p.data.len() as u64;
        self.ready.push_back(RxPacket {
            data: p.data,
            csum_blank: p.csum_blank,
            data_validated: p.data_validated,
            gso: p.gso,
        });
    }

    /// The next whole packet received.
    pub fn pop(&mut self) -> Option<RxPacket> {
        let p = self.ready.pop_front()?;
        self.ready_bytes = self.ready_bytes.saturating_sub(p.data.len());
        Some(p)
    }

    /// Bytes waiting to be read (at most [`RX_QUEUE_BYTES_MAX`]).
    pub fn ready_bytes(&self) -> usize {
        self.ready_bytes
    }

    /// Packets waiting to be read.
    pub fn ready(&self) -> usize {
        self.ready.len()
    }
}
