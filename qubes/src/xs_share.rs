//! One xenstore connection shared by several clients of one domain.
//!
//! A domU has one xenstore ring. A Qubes service VM needs it in several
//! tasks at once: the network runtime (its vifs, its uplink, `xl
//! shutdown`), the QubesDB link (vchan set-up, `@releaseDomain`) and the
//! qrexec agent (its control vchan's keys, each call's data vchan). The
//! `xen::xenstore::XenStore` client takes one request at a time and is
//! held across awaits, so the tasks cannot share one client; instead each
//! gets its own client over a [`Portal`], and the portals share the
//! transport through [`XsShare`], as xenstored's connections would be
//! shared by processes through a kernel driver:
//!
//! - requests: each portal gathers its client's bytes until a whole
//!   message (header and payload) is there, gives it a request id unique
//!   on the connection (the client's own id is put back into the reply),
//!   and queues it whole, so messages of two clients never interleave in
//!   the ring;
//! - replies go to the portal whose request they answer; watch events go
//!   to every portal that registered a watch with that token (`XS_WATCH`
//!   requests are looked at on the way out; `XS_UNWATCH` forgets the
//!   token), others are dropped and counted;
//! - events: a portal whose client waits registers its task with the
//!   shared transport's event; whenever a wait ends, every other waiting
//!   task is woken to register itself again, so the transport's single
//!   waiter slot always belongs to a task that still waits.
//!
//! xenstored answers in order, so a portal's replies stay in order. The
//! shared transport must be idle when it is handed over (no request
//! outstanding): [`XsShare::from_client`] takes a client that finished its
//! requests (at boot, the kernel's).

use alloc::collections::{BTreeMap, VecDeque};
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::task::{Context, Poll, Waker};

use xen::xenstore::{ProtocolError, XenStore, XsError, XsTransport};

/// `struct xsd_sockmsg`: type, req_id, tx_id, len (u32 each).
const HEADER: usize = 16;
/// `XS_WATCH`, `XS_UNWATCH`, `XS_WATCH_EVENT` (`xs_wire.h`).
const XS_WATCH: u32 = 4;
const XS_UNWATCH: u32 = 5;
const XS_WATCH_EVENT: u32 = 15;
/// `XENSTORE_PAYLOAD_MAX`.
const PAYLOAD_MAX: usize = 4096;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The token of a `path\0token\0` payload.
fn token_of(payload: &[u8]) -> Option<&[u8]> {
    let mut parts = payload.split(|&b| b == 0);
    parts.next()?;
    parts.next()
}

#[derive(Default)]
struct Slot {
    /// The client's bytes of a request not complete yet.
    tx: Vec<u8>,
    /// Bytes for the client (whole messages).
    rx: VecDeque<u8>,
    /// Its task, while it waits for the daemon.
    waker: Option<Waker>,
    /// Watch tokens it registered.
    tokens: Vec<Vec<u8>>,
}

/// Counters of the shared connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShareStats {
    /// Requests passed on.
    pub requests: u64,
    /// Replies and watch events delivered.
    pub delivered: u64,
    /// Watch events nobody watches (dropped).
    pub orphan_events: u64,
    /// Replies to no request of ours (dropped).
    pub orphan_replies: u64,
}

struct Mux<T: XsTransport> {
    transport: T,
    slots: Vec<Slot>,
    /// Whole requests to send, in order; `sent` bytes of the first are gone.
    out: VecDeque<Vec<u8>>,
    sent: usize,
    /// Reply being received.
    rx: Vec<u8>,
    /// Our request id → (portal, its client's request id).
    pending: BTreeMap<u32, (usize, u32)>,
    next_id: u32,
    broken: Option<XsError>,
    stats: ShareStats,
}

impl<T: XsTransport> Mux<T> {
    fn fail(&mut self, e: XsError) -> XsError {
        self.broken = Some(e);
        e
    }

    /// Take whole requests out of `slot`'s buffer.
    fn gather(&mut self, slot: usize) -> Result<(), XsError> {
        loop {
            let tx = &self.slots[slot].tx;
            if tx.len() < HEADER {
                return Ok(());
            }
            let len = u32_at(tx, 12) as usize;
            if len > PAYLOAD_MAX {
                // Our own client never builds one; refuse rather than
                // desynchronise the ring.
                return Err(XsError::RequestTooLarge);
            }
            if tx.len() < HEADER + len {
                return Ok(());
            }
            let mut msg: Vec<u8> = self.slots[slot].tx.drain(..HEADER + len).collect();
            let kind = u32_at(&msg, 0);
            let theirs = u32_at(&msg, 4);
            let ours = self.next_id;
            self.next_id = self.next_id.wrapping_add(1).max(1);
            msg[4..8].copy_from_slice(&ours.to_le_bytes());
            self.pending.insert(ours, (slot, theirs));
            if let Some(token) = token_of(&msg[HEADER..]) {
                let tokens = &mut self.slots[slot].tokens;
                match kind {
                    XS_WATCH => tokens.push(token.to_vec()),
                    XS_UNWATCH => {
                        if let Some(at) = tokens.iter().position(|t| t == token) {
                            tokens.remove(at);
                        }
                    }
                    _ => {}
                }
            }
            self.stats.requests += 1;
            self.out.push_back(msg);
        }
    }

    /// Push queued requests into the ring.
    fn send_out(&mut self) -> Result<(), XsError> {
        let mut any = false;
        while let Some(msg) = self.out.front() {
            let n = self.transport.send(&msg[self.sent..])?;
            if n == 0 {
                break;
            }
            any = true;
            self.sent += n;
            if self.sent == msg.len() {
                self.out.pop_front();
                self.sent = 0;
            }
        }
        if any {
            self.transport.notify();
        }
        Ok(())
    }

    /// Read and route whole messages from the ring.
    fn receive(&mut self) -> Result<(), XsError> {
        let mut any = false;
        loop {
            let want = if self.rx.len() < HEADER {
                HEADER
            } else {
                let len = u32_at(&self.rx, 12) as usize;
                if len > PAYLOAD_MAX {
                    return Err(XsError::Protocol(ProtocolError::PayloadTooLarge(
                        len as u32,
                    )));
                }
                HEADER + len
            };
            if self.rx.len() == want {
                let msg = core::mem::take(&mut self.rx);
                self.route(msg);
                continue;
            }
            let have = self.rx.len();
            self.rx.resize(want, 0);
            let n = self.transport.recv(&mut self.rx[have..])?;
            self.rx.truncate(have + n);
            if n == 0 {
                break;
            }
            any = true;
        }
        if any {
            // Room in the response ring: the daemon may wait for it.
            self.transport.notify();
        }
        Ok(())
    }

    fn deliver(&mut self, slot: usize, msg: &[u8]) {
        let s = &mut self.slots[slot];
        s.rx.extend(msg.iter().copied());
        if let Some(w) = s.waker.take() {
            w.wake();
        }
        self.stats.delivered += 1;
    }

    fn route(&mut self, mut msg: Vec<u8>) {
        let kind = u32_at(&msg, 0);
        if kind == XS_WATCH_EVENT {
            let token = token_of(&msg[HEADER..]).map(<[u8]>::to_vec);
            let owners: Vec<usize> = (0..self.slots.len())
                .filter(|&i| {
                    token
                        .as_ref()
                        .is_some_and(|t| self.slots[i].tokens.contains(t))
                })
                .collect();
            if owners.is_empty() {
                self.stats.orphan_events += 1;
            }
            for i in owners {
                self.deliver(i, &msg);
            }
            return;
        }
        match self.pending.remove(&u32_at(&msg, 4)) {
            Some((slot, theirs)) => {
                msg[4..8].copy_from_slice(&theirs.to_le_bytes());
                self.deliver(slot, &msg);
            }
            None => self.stats.orphan_replies += 1,
        }
    }

    fn pump(&mut self) -> Result<(), XsError> {
        if let Some(e) = self.broken {
            return Err(e);
        }
        let r = self.send_out().and_then(|()| self.receive());
        r.map_err(|e| self.fail(e))
    }

    /// Wake every waiting portal but `except`.
    fn wake_others(&mut self, except: usize) {
        for (i, s) in self.slots.iter_mut().enumerate() {
            if i != except {
                if let Some(w) = s.waker.take() {
                    w.wake();
                }
            }
        }
    }
}

/// The shared connection; make a [`Portal`] for each client.
pub struct XsShare<T: XsTransport> {
    mux: Rc<RefCell<Mux<T>>>,
}

impl<T: XsTransport> Clone for XsShare<T> {
    fn clone(&self) -> Self {
        Self {
            mux: self.mux.clone(),
        }
    }
}

/// A transport over the transport a client owns: the client is kept
/// whole (it has no way to give its transport back) and only its
/// transport is used.
pub struct Owned<T: XsTransport>(XenStore<T>);

impl<T: XsTransport> XsTransport for Owned<T> {
    fn send(&mut self, buf: &[u8]) -> Result<usize, XsError> {
        self.0.transport().send(buf)
    }
    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, XsError> {
        self.0.transport().recv(buf)
    }
    fn notify(&mut self) {
        self.0.transport().notify()
    }
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.0.transport().poll_event(cx)
    }
}

impl<T: XsTransport> XsShare<T> {
    /// Share `transport` (idle: no request outstanding).
    pub fn new(transport: T) -> Self {
        Self {
            mux: Rc::new(RefCell::new(Mux {
                transport,
                slots: Vec::new(),
                out: VecDeque::new(),
                sent: 0,
                rx: Vec::new(),
                pending: BTreeMap::new(),
                next_id: 1,
                broken: None,
                stats: ShareStats::default(),
            })),
        }
    }

    /// A new client of the connection.
    pub fn portal(&self) -> Portal<T> {
        let mut m = self.mux.borrow_mut();
        m.slots.push(Slot::default());
        Portal {
            mux: self.mux.clone(),
            slot: m.slots.len() - 1,
        }
    }

    /// A new client of the connection, as a `XenStore`.
    pub fn client(&self) -> XenStore<Portal<T>> {
        XenStore::new(self.portal())
    }

    /// Counters.
    pub fn stats(&self) -> ShareStats {
        self.mux.borrow().stats
    }
}

impl<T: XsTransport> XsShare<Owned<T>> {
    /// Share the transport of `client`, which must have finished its
    /// requests.
    pub fn from_client(client: XenStore<T>) -> Self {
        Self::new(Owned(client))
    }
}

/// One client's view of the shared connection (its `XsTransport`).
pub struct Portal<T: XsTransport> {
    mux: Rc<RefCell<Mux<T>>>,
    slot: usize,
}

impl<T: XsTransport> XsTransport for Portal<T> {
    fn send(&mut self, buf: &[u8]) -> Result<usize, XsError> {
        let mut m = self.mux.borrow_mut();
        if let Some(e) = m.broken {
            return Err(e);
        }
        m.slots[self.slot].tx.extend_from_slice(buf);
        if let Err(e) = m.gather(self.slot) {
            return Err(m.fail(e));
        }
        m.pump()?;
        Ok(buf.len())
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, XsError> {
        let mut m = self.mux.borrow_mut();
        m.pump()?;
        let rx = &mut m.slots[self.slot].rx;
        let n = buf.len().min(rx.len());
        for (d, s) in buf.iter_mut().zip(rx.drain(..n)) {
            *d = s;
        }
        Ok(n)
    }

    fn notify(&mut self) {
        // Requests are pushed as they complete (`send`); a client's
        // doorbell after reading has nothing to add.
        let _ = self.mux.borrow_mut().pump();
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut m = self.mux.borrow_mut();
        let ready = m.transport.poll_event(cx).is_ready();
        if m.pump().is_err() || ready || !m.slots[self.slot].rx.is_empty() {
            m.slots[self.slot].waker = None;
            // The transport's waiter slot held us (or may): the others
            // register themselves again.
            m.wake_others(self.slot);
            return Poll::Ready(());
        }
        m.slots[self.slot].waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// A token registered by a portal (for tests and diagnostics).
pub fn tokens<T: XsTransport>(portal: &Portal<T>) -> Vec<String> {
    portal.mux.borrow().slots[portal.slot]
        .tokens
        .iter()
        .map(|t| String::from_utf8_lossy(t).into_owned())
        .collect()
}
