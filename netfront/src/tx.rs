//! The TX ring and its buffer pool.
//!
//! Every request id owns one page, granted read-only to the backend once
//! when the queue is built and kept for the queue's life: sending copies
//! the packet into the pages of free ids, so steady state does no grant
//! table work. Ids come from a free list; a response returns its id, and a
//! response naming an id that is not in flight is the backend's error.

use alloc::vec::Vec;
use xen::abi::netif::{
    NetifExtraInfo, NetifExtraInfoGso, NetifTxRequest, NetifTxResponse, NETIF_RSP_NULL,
    NETIF_RSP_OKAY, NETTXF_CSUM_BLANK, NETTXF_DATA_VALIDATED, NETTXF_EXTRA_INFO, NETTXF_MORE_DATA,
    XEN_NETIF_EXTRA_TYPE_GSO, XEN_NETIF_MAX_TX_SIZE,
};
use xen::abi::GrantRef;
use xen::shared_page::{PageFrontRing, PageMemory, SharedPage, PAGE_SIZE};

use crate::error::{NetfrontError, TxError};
use crate::packet::TxOffload;

/// One pool buffer: a page and its standing grant.
pub(crate) struct Buffer<P: PageMemory> {
    pub(crate) page: SharedPage<P>,
    pub(crate) gref: GrantRef,
}

/// TX counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxStats {
    /// Packets queued.
    pub packets: u64,
    /// Bytes queued.
    pub bytes: u64,
    /// Ring slots used (data + extra).
    pub slots: u64,
    /// Responses with an error or dropped status.
    pub errors: u64,
}

/// The TX half of a queue.
pub struct TxQueue<P: PageMemory> {
    pub(crate) ring: PageFrontRing<P, NetifTxRequest, NetifTxResponse>,
    pub(crate) bufs: Vec<Buffer<P>>,
    free_ids: Vec<u16>,
    in_flight: Vec<bool>,
    /// Requests queued since the last push.
    unpushed: u32,
    /// Counters.
    pub stats: TxStats,
}

impl<P: PageMemory> TxQueue<P> {
    /// A queue over `ring` with one granted buffer per ring slot.
    pub(crate) fn new(
        ring: PageFrontRing<P, NetifTxRequest, NetifTxResponse>,
        bufs: Vec<Buffer<P>>,
    ) -> Self {
        let n = bufs.len().min(usize::from(u16::MAX));
        Self {
            ring,
            free_ids: (0..n as u16).rev().collect(),
            in_flight: alloc::vec![false; n],
            unpushed: 0,
            bufs,
            stats: TxStats::default(),
        }
    }

    /// Ring slots free for requests.
    pub fn free_slots(&self) -> u32 {
        self.ring.free_requests()
    }

    /// Requests the backend has not answered yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.iter().filter(|b| **b).count()
    }

    /// Ring slots `len` bytes with `offload` take.
    pub fn slots_for(len: usize, offload: &TxOffload) -> usize {
        len.div_ceil(PAGE_SIZE).max(1) + usize::from(offload.gso.is_some())
    }

    /// Whether a packet of `len` bytes fits now.
    pub fn can_send(&self, len: usize, offload: &TxOffload) -> bool {
        let slots = Self::slots_for(len, offload);
        slots <= self.ring.free_requests() as usize
            && len.div_ceil(PAGE_SIZE) <= self.free_ids.len()
    }

    /// Requests queued but not pushed yet (invisible to the backend until
    /// [`flush`](Self::flush)).
    pub fn unpushed(&self) -> u32 {
        self.unpushed
    }

    /// Publish every queued request; returns whether the backend must be
    /// notified: only when its `req_event` lies among the requests just
    /// published (`RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`), i.e. it went to
    /// sleep asking for one of them. A backend that is still working
    /// through the ring (it re-arms `req_event` only when it runs dry) is
    /// not notified, and a batch pushed at once costs at most one event.
    pub(crate) fn flush(&mut self) -> bool {
        if self.unpushed == 0 {
            return false;
        }
        self.unpushed = 0;
        self.ring.push_requests_and_check_notify()
    }

    /// Copy `packet` into free buffers and queue its requests without
    /// publishing them (see [`flush`](Self::flush)). `sg` says whether
    /// several slots per packet are allowed.
    pub(crate) fn queue(
        &mut self,
        packet: &[u8],
        offload: &TxOffload,
        sg: bool,
    ) -> Result<(), TxError> {
        let len = packet.len();
        if len == 0 || len > XEN_NETIF_MAX_TX_SIZE || (!sg && len > PAGE_SIZE) {
            return Err(TxError::BadSize(len));
        }
        if !self.can_send(len, offload) {
            return Err(TxError::Busy);
        }
        let chunks = len.div_ceil(PAGE_SIZE);
        for (i, chunk) in packet.chunks(PAGE_SIZE).enumerate() {
            let id = self.free_ids.pop().ok_or(TxError::Busy)?;
            let buf = self.bufs.get(usize::from(id)).ok_or(TxError::Busy)?;
            buf.page
                .write(0, chunk)
                .map_err(|_| TxError::BadSize(len))?;
            let mut flags = 0;
            if i + 1 < chunks {
                flags |= NETTXF_MORE_DATA;
            }
            if i == 0 {
                if offload.csum_blank {
                    flags |= NETTXF_CSUM_BLANK;
                }
                if offload.data_validated {
                    flags |= NETTXF_DATA_VALIDATED;
                }
                if offload.gso.is_some() {
                    flags |= NETTXF_EXTRA_INFO;
                }
            }
            // The first request carries the whole packet's size.
            let size = if i == 0 { len } else { chunk.len() };
            let req = NetifTxRequest {
                gref: buf.gref,
                offset: 0,
                flags,
                id,
                size: size as u16,
            };
            if let Some(f) = self.in_flight.get_mut(usize::from(id)) {
                *f = true;
            }
            self.ring.queue_request(req).map_err(|_| TxError::Busy)?;
            self.unpushed += 1;
            self.stats.slots += 1;
            if i == 0 {
                if let Some(gso) = offload.gso {
                    let extra = NetifExtraInfo::gso(NetifExtraInfoGso {
                        type_: XEN_NETIF_EXTRA_TYPE_GSO,
                        flags: 0,
                        size: gso.mss,
                        gso_type: gso.kind.to_wire(),
                        pad: 0,
                        features: 0,
                    });
                    self.ring
                        .queue_request(extra.to_tx_request())
                        .map_err(|_| TxError::Busy)?;
                    self.unpushed += 1;
                    self.stats.slots += 1;
                }
            }
        }
        self.stats.packets += 1;
        self.stats.bytes += len as u64;
        Ok(())
    }

    /// Take every response, freeing ids; then re-arm the response event.
    pub(crate) fn collect(&mut self) -> Result<(), NetfrontError> {
        loop {
            while let Some(rsp) = self.ring.take_response()? {
                if rsp.status == NETIF_RSP_NULL {
                    // The answer to an extra info slot: no id.
                    continue;
                }
                let Some(flag) = self.in_flight.get_mut(usize::from(rsp.id)) else {
                    return Err(NetfrontError::BadTxId(rsp.id));
                };
                if !*flag {
                    return Err(NetfrontError::BadTxId(rsp.id));
                }
                *flag = false;
                self.free_ids.push(rsp.id);
                if rsp.status != NETIF_RSP_OKAY {
                    self.stats.errors += 1;
                }
            }
            if !self.ring.final_check_for_responses()? {
                return Ok(());
            }
        }
    }
}
