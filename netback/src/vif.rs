//! The data path of one connected vif: TX requests from the frontend become
//! owned packets, packets for the frontend fill its posted RX buffers; every
//! byte moves by batched grant copy through a few pages of our own.

use crate::config::{BackendOptions, EventChannels, FrontendConfig};
use crate::env::NetbackEnv;
use crate::error::{Fatal, NetbackError, Violation};
use crate::packet::{fill_checksum, Gso, GsoKind, Offload, Packet};
use crate::xenbus::BackendDevice;
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::task::{Context, Poll};
use xen::abi::grant_table::{GnttabCopy, GnttabCopyPtr, GNTCOPY_DEST_GREF, GNTCOPY_SOURCE_GREF};
use xen::abi::netif::*;
use xen::abi::{Port, DOMID_SELF};
use xen::ring::RingError;
use xen::shared_page::{PageBackRing, SharedPage, PAGE_SIZE};
use xen::xenstore::{XenStore, XsTransport};

/// Most data slots one packet may use (`XEN_NETIF_NR_SLOTS_MIN`).
pub const MAX_SLOTS: usize = XEN_NETIF_NR_SLOTS_MIN;
/// Most extra info slots chained to one packet (one per known type).
pub const MAX_EXTRAS: usize = (XEN_NETIF_EXTRA_TYPE_MAX - 1) as usize;
/// Shortest TX packet accepted: an Ethernet header.
pub const MIN_PACKET: usize = 14;

/// Counters of one vif.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VifStats {
    /// Packets taken from the frontend's TX ring and handed out.
    pub tx_packets: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// TX packets answered with an error (violations and copy failures).
    pub tx_errors: u64,
    /// Packets delivered into the frontend's RX buffers.
    pub rx_packets: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Packets for the frontend dropped: queue full, or an offload it does
    /// not accept (GSO kind, multi-slot without `feature-sg`, a blank
    /// checksum we could not fill), or an invalid size.
    pub rx_dropped: u64,
    /// Blank checksums filled in software for the frontend.
    pub rx_csum_filled: u64,
    /// RX packets answered with an error (failed copies).
    pub rx_errors: u64,
    /// Violations in all.
    pub violations: u32,
    /// Violations by kind, indexed by [`Violation::index`].
    pub by_kind: [u32; Violation::ALL.len()],
    /// Events we sent.
    pub notifies: u64,
    /// Grant copy segments issued.
    pub copy_ops: u64,
    /// Grant copy hypercalls that failed as a whole (our side's fault).
    pub env_errors: u64,
}

impl VifStats {
    /// Violations of `kind` so far.
    pub fn violations_of(&self, kind: Violation) -> u32 {
        self.by_kind.get(kind.index()).copied().unwrap_or(0)
    }
}

/// What one poll did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Packets (or rejected requests) processed.
    pub packets: usize,
    /// Work is left (the budget ran out): poll again soon, after other vifs.
    pub more: bool,
}

type TxRing<M> = PageBackRing<M, NetifTxRequest, NetifTxResponse>;
type RxRing<M> = PageBackRing<M, NetifRxRequest, NetifRxResponse>;

/// A connected vif.
pub struct Vif<E: NetbackEnv> {
    device: BackendDevice,
    front: FrontendConfig,
    options: BackendOptions,
    tx: TxRing<E::Mapping>,
    rx: RxRing<E::Mapping>,
    tx_port: Port,
    rx_port: Port,
    bounce: Vec<SharedPage<E::Page>>,
    rx_queue: VecDeque<Packet>,
    rx_queue_bytes: usize,
    stats: VifStats,
    fatal: Option<Fatal>,
}

fn ring_start<M: xen::shared_page::PageMemory>(page: &SharedPage<M>) -> u32 {
    // Attach where the frontend initialised the ring: its `rsp_prod`
    // (offset 8 of `struct netif_*_sring`), as Linux's BACK_RING_ATTACH.
    let mut b = [0u8; 4];
    match page.read(8, &mut b) {
        Ok(()) => u32::from_ne_bytes(b),
        Err(_) => 0,
    }
}

fn ring_fatal(e: RingError) -> Fatal {
    Fatal::BadRingIndex(e)
}

impl<E: NetbackEnv> Vif<E> {
    /// Map the frontend's rings, bind its event channel(s) and allocate
    /// the bounce pages. On failure everything done is undone.
    pub fn new(
        env: &mut E,
        device: BackendDevice,
        front: FrontendConfig,
        options: BackendOptions,
    ) -> Result<Self, NetbackError> {
        let dom = device.frontend_id;
        let map = |env: &mut E, gref| {
            env.map_grant(dom, gref)
                .map_err(|error| NetbackError::Map { gref, error })
        };
        let tx_page = map(env, front.tx_ring_ref)?;
        let rx_page = map(env, front.rx_ring_ref)?;
        let mut bounce = Vec::with_capacity(MAX_SLOTS);
        for _ in 0..MAX_SLOTS {
            bounce.push(env.alloc_page()?);
        }
        let (tx_port, rx_port) = match front.events {
            EventChannels::Shared(p) => {
                let port = env.bind_interdomain(dom, p)?;
                (port, port)
            }
            EventChannels::Split { tx, rx } => {
                let t = env.bind_interdomain(dom, tx)?;
                match env.bind_interdomain(dom, rx) {
                    Ok(r) => (t, r),
                    Err(e) => {
                        env.close_port(t);
                        return Err(e.into());
                    }
                }
            }
        };
        let tx_start = ring_start(&tx_page);
        let rx_start = ring_start(&rx_page);
        Ok(Self {
            device,
            front,
            options,
            tx: tx_page.into_back_ring(tx_start),
            rx: rx_page.into_back_ring(rx_start),
            tx_port,
            rx_port,
            bounce,
            rx_queue: VecDeque::new(),
            rx_queue_bytes: 0,
            stats: VifStats::default(),
            fatal: None,
        })
    }

    /// The xenstore directories and frontend domain.
    pub fn device(&self) -> &BackendDevice {
        &self.device
    }

    /// What the frontend published.
    pub fn frontend(&self) -> &FrontendConfig {
        &self.front
    }

    /// Counters.
    pub fn stats(&self) -> &VifStats {
        &self.stats
    }

    /// Why the vif stopped, if it did.
    pub fn fatal(&self) -> Option<Fatal> {
        self.fatal
    }

    /// Our event channel ports (TX, RX; equal unless split).
    pub fn ports(&self) -> (Port, Port) {
        (self.tx_port, self.rx_port)
    }

    /// Packets waiting for RX buffers.
    pub fn queued(&self) -> usize {
        self.rx_queue.len()
    }

    fn stop(&mut self, f: Fatal) -> Fatal {
        *self.fatal.get_or_insert(f)
    }

    fn violation(&mut self, v: Violation) -> Result<(), Fatal> {
        self.stats.violations = self.stats.violations.saturating_add(1);
        if let Some(n) = self.stats.by_kind.get_mut(v.index()) {
            *n = n.saturating_add(1);
        }
        if self.stats.violations >= self.options.violation_limit {
            return Err(Fatal::TooManyViolations);
        }
        Ok(())
    }

    fn notify(&mut self, env: &mut E, port: Port) {
        env.notify(port);
        self.stats.notifies += 1;
    }

    /// Ready when an event arrived on either port.
    pub fn poll_event(&mut self, env: &mut E, cx: &mut Context<'_>) -> Poll<()> {
        let tx = env.poll_event(self.tx_port, cx).is_ready();
        let rx = self.rx_port != self.tx_port && env.poll_event(self.rx_port, cx).is_ready();
        if tx || rx {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Wait for the frontend's next event on either port.
    pub async fn wait(&mut self, env: &mut E) {
        core::future::poll_fn(|cx| self.poll_event(env, cx)).await
    }

    /// Take up to `budget` TX packets from the frontend into `out`,
    /// answering every request. Stops the vif on a fatal fault.
    pub fn receive(
        &mut self,
        env: &mut E,
        budget: usize,
        out: &mut Vec<Packet>,
    ) -> Result<Progress, Fatal> {
        if let Some(f) = self.fatal {
            return Err(f);
        }
        let mut done = 0;
        let result = loop {
            if done >= budget {
                break Ok(true);
            }
            match self.tx.unconsumed_requests() {
                Err(e) => break Err(ring_fatal(e)),
                Ok(0) => match self.tx.final_check_for_requests() {
                    Err(e) => break Err(ring_fatal(e)),
                    Ok(true) => continue,
                    Ok(false) => break Ok(false),
                },
                Ok(_) => {}
            }
            match self.tx_packet(env) {
                Ok(Some(p)) => out.push(p),
                Ok(None) => {}
                Err(f) => break Err(f),
            }
            done += 1;
        };
        if self.tx.push_responses_and_check_notify() {
            self.notify(env, self.tx_port);
        }
        match result {
            Ok(more) => Ok(Progress {
                packets: done,
                more,
            }),
            Err(f) => Err(self.stop(f)),
        }
    }

    fn take_tx(&mut self) -> Result<NetifTxRequest, Fatal> {
        match self.tx.take_request() {
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err(Fatal::IncompletePacket),
            Err(e) => Err(ring_fatal(e)),
        }
    }

    fn respond_tx(&mut self, slots: &[NetifTxRequest], extras: usize, status: i16) {
        for (i, r) in slots.iter().enumerate() {
            // Cannot fail: each answers a request taken above.
            let _ = self.tx.queue_response(NetifTxResponse { id: r.id, status });
            if i == 0 {
                for _ in 0..extras {
                    let _ = self.tx.queue_response(NetifTxResponse {
                        id: 0,
                        status: NETIF_RSP_NULL,
                    });
                }
            }
        }
    }

    fn gso_offered(&self, kind: GsoKind) -> bool {
        match kind {
            GsoKind::TcpV4 => self.options.gso_tcpv4,
            GsoKind::TcpV6 => self.options.gso_tcpv6,
        }
    }

    /// One packet's requests: parse, check, copy, answer.
    fn tx_packet(&mut self, env: &mut E) -> Result<Option<Packet>, Fatal> {
        let first = self.take_tx()?;
        let mut bad: Option<Violation> = None;
        let mut extras = 0;
        let mut gso = None;
        if first.flags & NETTXF_EXTRA_INFO != 0 {
            loop {
                let e = NetifExtraInfo::from_tx_request(self.take_tx()?);
                extras += 1;
                if extras > MAX_EXTRAS {
                    return Err(Fatal::ExtraChain);
                }
                match e.type_ {
                    XEN_NETIF_EXTRA_TYPE_GSO => {
                        let g = e.as_gso();
                        match GsoKind::from_wire(g.gso_type) {
                            Some(kind) if g.size > 0 && self.gso_offered(kind) => {
                                gso = Some(Gso { kind, mss: g.size })
                            }
                            Some(_) if g.size > 0 => {
                                bad.get_or_insert(Violation::GsoNotOffered);
                            }
                            _ => {
                                bad.get_or_insert(Violation::BadExtra);
                            }
                        }
                    }
                    // Multicast filtering is not offered; hashes are hints.
                    XEN_NETIF_EXTRA_TYPE_MCAST_ADD
                    | XEN_NETIF_EXTRA_TYPE_MCAST_DEL
                    | XEN_NETIF_EXTRA_TYPE_HASH => {}
                    _ => {
                        bad.get_or_insert(Violation::BadExtra);
                    }
                }
                if e.flags & XEN_NETIF_EXTRA_FLAG_MORE == 0 {
                    break;
                }
            }
        }
        let mut slots = Vec::with_capacity(2);
        slots.push(first);
        let mut flags = first.flags;
        // Bounded: `take_tx` fails once a ring's worth is taken unanswered.
        while flags & NETTXF_MORE_DATA != 0 {
            let r = self.take_tx()?;
            flags = r.flags;
            slots.push(r);
        }
        let total = usize::from(first.size);
        let rest: usize = slots.iter().skip(1).map(|r| usize::from(r.size)).sum();
        let len_of = |i: usize, r: &NetifTxRequest| {
            if i == 0 {
                total.saturating_sub(rest)
            } else {
                usize::from(r.size)
            }
        };
        let check = if slots.len() > MAX_SLOTS || (slots.len() > 1 && !self.options.sg) {
            Some(Violation::TooManySlots)
        } else if total == 0 {
            Some(Violation::EmptyPacket)
        } else if total < MIN_PACKET {
            Some(Violation::Runt)
        } else if rest > total {
            Some(Violation::SizeMismatch)
        } else if slots
            .iter()
            .enumerate()
            .any(|(i, r)| usize::from(r.offset) + len_of(i, r) > PAGE_SIZE)
        {
            Some(Violation::SlotOutOfPage)
        } else {
            None
        };
        if let Some(v) = bad.or(check) {
            self.respond_tx(&slots, extras, NETIF_RSP_ERROR);
            self.stats.tx_errors += 1;
            self.violation(v)?;
            return Ok(None);
        }
        let dom = self.device.frontend_id;
        let mut ops = Vec::with_capacity(slots.len());
        for (i, (r, page)) in slots.iter().zip(&self.bounce).enumerate() {
            let len = len_of(i, r);
            if len == 0 {
                continue;
            }
            ops.push(GnttabCopy {
                source: GnttabCopyPtr::gref(r.gref, dom, r.offset),
                dest: GnttabCopyPtr::frame(page.frame(), DOMID_SELF, 0),
                len: len as u16,
                flags: GNTCOPY_SOURCE_GREF,
                status: 0,
            });
        }
        self.stats.copy_ops += ops.len() as u64;
        if env.grant_copy(&mut ops).is_err() {
            self.stats.env_errors += 1;
            self.stats.tx_errors += 1;
            self.respond_tx(&slots, extras, NETIF_RSP_ERROR);
            return Ok(None);
        }
        if ops.iter().any(|op| op.status != 0) {
            self.respond_tx(&slots, extras, NETIF_RSP_ERROR);
            self.stats.tx_errors += 1;
            self.violation(Violation::BadTxGrant)?;
            return Ok(None);
        }
        let mut data = alloc::vec![0u8; total];
        let mut at = 0;
        for (i, (r, page)) in slots.iter().zip(&self.bounce).enumerate() {
            let len = len_of(i, r);
            if let Some(dst) = data.get_mut(at..at + len) {
                // In bounds: `len <= PAGE_SIZE` was checked above.
                let _ = page.read(0, dst);
            }
            at += len;
        }
        self.respond_tx(&slots, extras, NETIF_RSP_OKAY);
        self.stats.tx_packets += 1;
        self.stats.tx_bytes += total as u64;
        Ok(Some(Packet {
            data,
            offload: Offload {
                csum_blank: first.flags & NETTXF_CSUM_BLANK != 0,
                data_validated: first.flags & NETTXF_DATA_VALIDATED != 0,
                gso,
            },
        }))
    }

    /// Whether [`send`](Self::send) would queue a packet of `len` bytes now
    /// (the vif runs and its queue has room).
    pub fn would_accept(&self, len: usize) -> bool {
        self.would_accept_leaving(len, 0, 0)
    }

    /// Whether [`send`](Self::send) would queue a packet of `len` bytes and
    /// still leave room for `frames` more frames and `bytes` more bytes: a
    /// caller that can wait (another vif's frames) keeps that much for the
    /// ones that cannot (the uplink's).
    pub fn would_accept_leaving(&self, len: usize, frames: usize, bytes: usize) -> bool {
        self.fatal.is_none()
            && self.rx_queue.len().saturating_add(frames) < self.options.rx_queue_max
            && self
                .rx_queue_bytes
                .saturating_add(len)
                .saturating_add(bytes)
                <= self.options.rx_queue_bytes_max
    }

    /// Queue `packet` for the frontend (delivered by [`deliver`](Self::deliver));
    /// false if it was dropped (queue full, or the vif stopped).
    pub fn send(&mut self, packet: Packet) -> bool {
        let bytes = self.rx_queue_bytes.saturating_add(packet.data.len());
        if !self.would_accept(packet.data.len()) {
            self.stats.rx_dropped += 1;
            return false;
        }
        self.rx_queue_bytes = bytes;
        self.rx_queue.push_back(packet);
        true
    }

    fn pop_rx(&mut self) -> Option<Packet> {
        let p = self.rx_queue.pop_front()?;
        self.rx_queue_bytes = self.rx_queue_bytes.saturating_sub(p.data.len());
        Some(p)
    }

    fn unpop_rx(&mut self, p: Packet) {
        self.rx_queue_bytes = self.rx_queue_bytes.saturating_add(p.data.len());
        self.rx_queue.push_front(p);
    }

    /// Make `p` acceptable to the frontend, or say it cannot be.
    fn adapt(&mut self, p: &mut Packet) -> bool {
        let len = p.data.len();
        if len == 0 || len > XEN_NETIF_MAX_TX_SIZE {
            return false;
        }
        if len > PAGE_SIZE && !self.front.sg {
            return false;
        }
        if let Some(g) = p.offload.gso {
            let ok = match g.kind {
                GsoKind::TcpV4 => self.front.gso_tcpv4,
                GsoKind::TcpV6 => self.front.gso_tcpv6,
            };
            if !ok || g.mss == 0 {
                return false;
            }
        }
        if p.offload.csum_blank {
            let accepts = match p.data.get(12..14) {
                Some([0x08, 0x00]) => self.front.csum_v4,
                Some([0x86, 0xdd]) => self.front.csum_v6,
                // Not IP: the flag is only passed on.
                _ => self.front.csum_v4,
            };
            if !accepts {
                if !fill_checksum(&mut p.data) {
                    return false;
                }
                self.stats.rx_csum_filled += 1;
                p.offload.csum_blank = false;
                p.offload.data_validated = true;
            }
        }
        true
    }

    /// Deliver up to `budget` queued packets into the frontend's posted RX
    /// buffers; stops early (without error) when it has posted too few.
    pub fn deliver(&mut self, env: &mut E, budget: usize) -> Result<Progress, Fatal> {
        if let Some(f) = self.fatal {
            return Err(f);
        }
        let mut done = 0;
        let result = loop {
            if self.rx_queue.is_empty() {
                break Ok(false);
            }
            if done >= budget {
                break Ok(true);
            }
            let Some(mut p) = self.pop_rx() else {
                break Ok(false);
            };
            if !self.adapt(&mut p) {
                self.stats.rx_dropped += 1;
                continue;
            }
            let chunks = p.data.len().div_ceil(PAGE_SIZE);
            let need = chunks + usize::from(p.offload.gso.is_some());
            if need > self.rx.size() as usize {
                // Can never fit (not with a ring of at least 32 slots).
                self.stats.rx_dropped += 1;
                continue;
            }
            // Enough buffers posted? If not, ask for an event when the
            // frontend's producer index reaches the `need`-th one and look
            // again. (Asking for "the next request" would ask for nothing
            // while some, too few, are posted: a frontend that notifies
            // only on crossing `req_event`, as Linux's does, would then
            // never wake us.)
            match self.rx.final_check_for_requests_n(need as u32) {
                Err(e) => break Err(ring_fatal(e)),
                Ok(true) => {}
                Ok(false) => {
                    self.unpop_rx(p);
                    break Ok(false);
                }
            }
            if let Err(f) = self.rx_packet(env, &p, chunks, need) {
                break Err(f);
            }
            done += 1;
        };
        if self.rx.push_responses_and_check_notify() {
            self.notify(env, self.rx_port);
        }
        match result {
            Ok(more) => Ok(Progress {
                packets: done,
                more,
            }),
            Err(f) => Err(self.stop(f)),
        }
    }

    fn rx_packet(
        &mut self,
        env: &mut E,
        p: &Packet,
        chunks: usize,
        need: usize,
    ) -> Result<(), Fatal> {
        let mut reqs = Vec::with_capacity(need);
        for _ in 0..need {
            match self.rx.take_request() {
                Ok(Some(r)) => reqs.push(r),
                Ok(None) => return Err(Fatal::IncompletePacket),
                Err(e) => return Err(ring_fatal(e)),
            }
        }
        let gso = p.offload.gso;
        // Request index of data chunk `k` (the GSO extra takes the second).
        let slot_of = |k: usize| if k == 0 || gso.is_none() { k } else { k + 1 };
        let dom = self.device.frontend_id;
        let mut ops = Vec::with_capacity(chunks);
        for (k, (chunk, page)) in p.data.chunks(PAGE_SIZE).zip(&self.bounce).enumerate() {
            let _ = page.write(0, chunk);
            let Some(req) = reqs.get(slot_of(k)) else {
                return Err(Fatal::IncompletePacket);
            };
            ops.push(GnttabCopy {
                source: GnttabCopyPtr::frame(page.frame(), DOMID_SELF, 0),
                dest: GnttabCopyPtr::gref(req.gref, dom, 0),
                len: chunk.len() as u16,
                flags: GNTCOPY_DEST_GREF,
                status: 0,
            });
        }
        self.stats.copy_ops += ops.len() as u64;
        let failed = match env.grant_copy(&mut ops) {
            Err(_) => {
                self.stats.env_errors += 1;
                Some(None)
            }
            Ok(()) if ops.iter().any(|op| op.status != 0) => Some(Some(Violation::BadRxGrant)),
            Ok(()) => None,
        };
        if let Some(v) = failed {
            for r in &reqs {
                let _ = self.rx.queue_response(NetifRxResponse {
                    id: r.id,
                    offset: 0,
                    flags: 0,
                    status: NETIF_RSP_ERROR,
                });
            }
            self.stats.rx_errors += 1;
            if let Some(v) = v {
                self.violation(v)?;
            }
            return Ok(());
        }
        let mut first_flags = 0;
        if p.offload.csum_blank {
            first_flags |= NETRXF_CSUM_BLANK | NETRXF_DATA_VALIDATED;
        } else if p.offload.data_validated {
            first_flags |= NETRXF_DATA_VALIDATED;
        }
        if gso.is_some() {
            first_flags |= NETRXF_EXTRA_INFO;
        }
        for (k, chunk) in p.data.chunks(PAGE_SIZE).enumerate() {
            let Some(req) = reqs.get(slot_of(k)) else {
                break;
            };
            let mut flags = if k == 0 { first_flags } else { 0 };
            if k + 1 < chunks {
                flags |= NETRXF_MORE_DATA;
            }
            let _ = self.rx.queue_response(NetifRxResponse {
                id: req.id,
                offset: 0,
                flags,
                status: chunk.len() as i16,
            });
            if k == 0 {
                if let Some(g) = gso {
                    let extra = NetifExtraInfo::gso(NetifExtraInfoGso {
                        type_: XEN_NETIF_EXTRA_TYPE_GSO,
                        flags: 0,
                        size: g.mss,
                        gso_type: g.kind.to_wire(),
                        pad: 0,
                        features: 0,
                    });
                    let _ = self.rx.queue_response(extra.to_rx_response());
                }
            }
        }
        self.stats.rx_packets += 1;
        self.stats.rx_bytes += p.data.len() as u64;
        Ok(())
    }

    /// [`receive`](Self::receive) then [`deliver`](Self::deliver), each
    /// with `budget`.
    pub fn poll(
        &mut self,
        env: &mut E,
        budget: usize,
        out: &mut Vec<Packet>,
    ) -> Result<Progress, Fatal> {
        let a = self.receive(env, budget, out)?;
        let b = self.deliver(env, budget)?;
        Ok(Progress {
            packets: a.packets + b.packets,
            more: a.more || b.more,
        })
    }

    /// Unmap the rings and close the ports (no xenstore needed: for a
    /// frontend or xenstore that is gone). Returns the device.
    pub fn release(self, env: &mut E) -> BackendDevice {
        env.close_port(self.tx_port);
        if self.rx_port != self.tx_port {
            env.close_port(self.rx_port);
        }
        // Dropping the rings unmaps their pages; the bounce pages are freed.
        self.device
    }

    /// Disconnect: [`release`](Self::release), then publish `Closed`
    /// (best effort). The service may later [`connect`](crate::connect)
    /// again when the frontend re-initialises.
    pub async fn close<T: XsTransport>(self, env: &mut E, xs: &mut XenStore<T>) -> BackendDevice {
        let device = self.release(env);
        let _ = xen::xenbus::write_state(xs, &device.path, xen::xenbus::XenbusState::Closed).await;
        device
    }
}
