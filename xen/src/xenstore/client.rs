//! The async xenstore client: one request at a time over an
//! [`XsTransport`], with watch events that arrive meanwhile queued.
//!
//! Incoming bytes are reassembled in a buffer owned by the client, so a
//! future dropped mid-read loses nothing; a request whose future was dropped
//! after sending has its reply drained and discarded before the next one.
//! A protocol violation by the daemon is sticky: the connection is unusable
//! afterwards and every call returns that error.
//!
//! # Watches and cancellation
//!
//! A future that registered a watch and is then dropped (a timeout gave up
//! on it) cannot unwatch: a destructor cannot wait for the daemon. A watch
//! registered through a [`WatchGuard`] is removed anyway: when the guard is
//! dropped it queues an unwatch in the client, and the client sends the
//! queued unwatches before its next request or wait for a watch event (or
//! when asked, [`XenStore::flush_unwatches`]). Requests are answered in order, so the
//! watch is gone before anything that follows the drop reaches the daemon;
//! in particular the same watch can be registered again at once.
//!
//! # Watch queues and overflow
//!
//! Events that arrive while nobody waits for them are queued, in order,
//! at most [`WATCH_QUEUE_PER_TOKEN`] per token and [`WATCH_QUEUE_MAX`] in
//! all, so one busy watch cannot push out another's events. When a token
//! has more (or the queue is full and that token holds the most), its
//! queued events are replaced by one **resync** event: the watched path
//! (as registered with [`XenStore::watch`]) with that token, the same
//! event the daemon fires when a watch is registered. A waiter treats it
//! as "anything below may have changed": read again what you watch. No
//! waiter loses the fact that something changed; only the detail of which
//! node. Resyncs are counted ([`XenStore::watch_resyncs`]).
//!
//! # Timeouts
//!
//! Every future here may be dropped at any await (a timeout, e.g.
//! `kernel::executor::Handle::timeout`, gave up): bytes half received stay
//! in the client, a request half sent is finished and its reply discarded
//! before the next one, and a queued watch event stays queued. So a wait
//! on a daemon (or a peer's node) that never answers is bounded by the
//! caller, and the client stays usable afterwards.

use super::error::{ProtocolError, XsError};
use super::transport::XsTransport;
use super::wire::{build_request, payload_str, split_strings, Arg, Message, HEADER_LEN};
use crate::abi::xs_wire::{XsdSockmsgType, XENSTORE_PAYLOAD_MAX};
use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::future::poll_fn;
use core::ops::{Deref, DerefMut};

/// Most watch events kept while nobody asks for them, in all; beyond, the
/// token holding the most is collapsed to one resync event (see the
/// module's documentation); an event that still finds no room is dropped
/// and counted ([`XenStore::dropped_watch_events`]).
pub const WATCH_QUEUE_MAX: usize = 256;

/// Most watch events kept for one token; beyond, its events are collapsed
/// to one resync event.
pub const WATCH_QUEUE_PER_TOKEN: usize = 64;

/// Most watched paths remembered for resync events (one per token).
const WATCHED_PATHS_MAX: usize = 256;

/// How many times [`XenStore::transaction`] runs its closure before giving
/// up with [`XsError::RetriesExhausted`].
pub const TRANSACTION_ATTEMPTS: usize = 16;

/// A transaction id (`tx_id` of the header; 0 is "none").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxId(pub u32);

/// A fired watch: the path that changed and the token given to `watch`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    /// The node that changed (or the watched path, on registration).
    pub path: String,
    /// The token the watch was registered with.
    pub token: String,
}

impl WatchEvent {
    /// Parse an `XS_WATCH_EVENT` payload: `path\0token\0`.
    fn parse(payload: &[u8]) -> Option<Self> {
        let mut parts = split_strings(payload);
        let path = core::str::from_utf8(parts.next()?).ok()?;
        let token = core::str::from_utf8(parts.next()?).ok()?;
        Some(Self {
            path: String::from(path),
            token: String::from(token),
        })
    }
}

/// A whole message received from the daemon.
struct Reply {
    kind: u32,
    req_id: u32,
    payload: Vec<u8>,
}

/// A xenstore connection.
pub struct XenStore<T: XsTransport> {
    transport: T,
    next_req_id: u32,
    /// Bytes of the message being received; `rx_have` of them are filled.
    rx: Vec<u8>,
    rx_have: usize,
    /// A request sent (or being sent) whose reply nobody is waiting for yet.
    outstanding: Option<u32>,
    /// Bytes of the request being sent; `tx_sent` of them are gone.
    tx: Vec<u8>,
    tx_sent: usize,
    watch_events: VecDeque<WatchEvent>,
    dropped_watch_events: u64,
    /// Tokens whose queued events were collapsed to one resync event.
    watch_resyncs: u64,
    /// The path each token watches (for resync events).
    watched: BTreeMap<String, String>,
    /// Watches (path, token) whose [`WatchGuard`] was dropped: removed
    /// before the next request.
    unwatch_queue: VecDeque<(String, String)>,
    /// Queued unwatches the daemon refused.
    unwatch_errors: u64,
    broken: Option<ProtocolError>,
}

impl<T: XsTransport> XenStore<T> {
    /// A client over `transport`.
    pub fn new(transport: T) -> Self {
        Self {
            transport,
            next_req_id: 1,
            rx: Vec::new(),
            rx_have: 0,
            outstanding: None,
            tx: Vec::new(),
            tx_sent: 0,
            watch_events: VecDeque::new(),
            dropped_watch_events: 0,
            watch_resyncs: 0,
            watched: BTreeMap::new(),
            unwatch_queue: VecDeque::new(),
            unwatch_errors: 0,
            broken: None,
        }
    }

    /// The transport, e.g. for tests or the kernel.
    pub fn transport(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Watch events dropped: malformed, or no room even after a resync.
    pub fn dropped_watch_events(&self) -> u64 {
        self.dropped_watch_events
    }

    /// Times a token's queued events were collapsed to one resync event
    /// (see the module's documentation).
    pub fn watch_resyncs(&self) -> u64 {
        self.watch_resyncs
    }

    /// Unwatches queued by dropped [`WatchGuard`]s and not sent yet.
    pub fn queued_unwatches(&self) -> usize {
        self.unwatch_queue.len()
    }

    /// Queued unwatches the daemon answered with an error (normally
    /// `ENOENT`: the watch request itself was cancelled before it was
    /// sent, so there was nothing to remove).
    pub fn unwatch_errors(&self) -> u64 {
        self.unwatch_errors
    }

    /// The protocol error that broke the connection, if one did.
    pub fn broken(&self) -> Option<ProtocolError> {
        self.broken
    }

    /// Record a protocol error as sticky and return it.
    fn fail<R>(&mut self, err: ProtocolError) -> Result<R, XsError> {
        self.broken = Some(err);
        Err(XsError::Protocol(err))
    }

    /// Lift transport errors that mean a broken protocol into stickiness.
    fn transport_result<R>(&mut self, r: Result<R, XsError>) -> Result<R, XsError> {
        if let Err(XsError::Protocol(p)) = r {
            self.broken = Some(p);
        }
        r
    }

    async fn wait_event(&mut self) {
        poll_fn(|cx| self.transport.poll_event(cx)).await
    }

    /// Push out the pending request bytes.
    async fn flush(&mut self) -> Result<(), XsError> {
        while self.tx_sent < self.tx.len() {
            let r = self.transport.send(&self.tx[self.tx_sent..]);
            let n = self.transport_result(r)?;
            if n > 0 {
                self.tx_sent += n;
                self.transport.notify();
            } else {
                self.wait_event().await;
            }
        }
        Ok(())
    }

    /// Receive one whole message.
    async fn recv_message(&mut self) -> Result<Reply, XsError> {
        loop {
            let want = if self.rx_have < HEADER_LEN {
                HEADER_LEN
            } else {
                let header = Message::new_unchecked(&self.rx[..HEADER_LEN]);
                let len = header.payload_len();
                if len as usize > XENSTORE_PAYLOAD_MAX {
                    return self.fail(ProtocolError::PayloadTooLarge(len));
                }
                HEADER_LEN + len as usize
            };
            if self.rx_have == want {
                let message = Message::new_unchecked(&self.rx[..want]);
                let reply = Reply {
                    kind: message.raw_type(),
                    req_id: message.req_id(),
                    payload: Vec::from(message.payload()),
                };
                self.rx_have = 0;
                return Ok(reply);
            }
            if self.rx.len() < want {
                self.rx.resize(want, 0);
            }
            let r = self.transport.recv(&mut self.rx[self.rx_have..want]);
            let n = self.transport_result(r)?;
            if n > 0 {
                self.rx_have += n;
                // Space was freed in the response ring: the daemon may be
                // waiting for it.
                self.transport.notify();
            } else {
                self.wait_event().await;
            }
        }
    }

    fn queue_watch_event(&mut self, payload: &[u8]) {
        let Some(event) = WatchEvent::parse(payload) else {
            self.dropped_watch_events += 1;
            return;
        };
        if self.queued_for(&event.token) >= WATCH_QUEUE_PER_TOKEN {
            // Its own events make room: they become one resync, which
            // covers this one too.
            self.resync(&event.token, &event.path);
            return;
        }
        if self.watch_events.len() >= WATCH_QUEUE_MAX {
            // The token holding the most makes room.
            let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
            for e in &self.watch_events {
                *counts.entry(e.token.as_str()).or_insert(0) += 1;
            }
            let victim = counts
                .into_iter()
                .max_by_key(|(_, n)| *n)
                .filter(|(_, n)| *n > 1)
                .map(|(t, _)| String::from(t));
            match victim {
                Some(t) if t == event.token => {
                    self.resync(&event.token, &event.path);
                    return;
                }
                Some(t) => {
                    let path = self.watched.get(&t).cloned().unwrap_or_else(|| t.clone());
                    self.resync(&t, &path);
                }
                None => {}
            }
            if self.watch_events.len() >= WATCH_QUEUE_MAX {
                self.dropped_watch_events += 1;
                return;
            }
        }
        self.watch_events.push_back(event);
    }

    fn queued_for(&self, token: &str) -> usize {
        self.watch_events
            .iter()
            .filter(|e| e.token == token)
            .count()
    }

    /// Replace the queued events of `token` by one event for its watched
    /// path (`fallback` if it was not registered here), at the back.
    fn resync(&mut self, token: &str, fallback: &str) {
        self.watch_events.retain(|e| e.token != token);
        let path = self
            .watched
            .get(token)
            .cloned()
            .unwrap_or_else(|| String::from(fallback));
        self.watch_events.push_back(WatchEvent {
            path,
            token: String::from(token),
        });
        self.watch_resyncs += 1;
    }

    /// Receive one message that is not a watch event (those are queued).
    async fn recv_reply(&mut self) -> Result<Reply, XsError> {
        loop {
            let reply = self.recv_message().await?;
            if reply.kind == XsdSockmsgType::WatchEvent as u32 {
                self.queue_watch_event(&reply.payload);
            } else {
                return Ok(reply);
            }
        }
    }

    /// Finish the business of a request whose future was dropped: send the
    /// rest of it and discard its reply.
    async fn settle_abandoned(&mut self) -> Result<(), XsError> {
        if let Some(p) = self.broken {
            return Err(XsError::Protocol(p));
        }
        if let Some(id) = self.outstanding {
            self.flush().await?;
            let reply = self.recv_reply().await?;
            if reply.req_id != id {
                return self.fail(ProtocolError::RequestIdMismatch {
                    expected: id,
                    got: reply.req_id,
                });
            }
            self.outstanding = None;
        }
        Ok(())
    }

    /// Send the unwatches queued by dropped [`WatchGuard`]s, and forget the
    /// events their tokens had queued. Every queued unwatch is tried; the
    /// first error is returned (each is also counted in
    /// [`XenStore::unwatch_errors`]), except that a broken connection stops
    /// at once. The client does this by itself before every request, so
    /// calling it is only needed to remove the watches *now*.
    pub async fn flush_unwatches(&mut self) -> Result<(), XsError> {
        let mut first_error = None;
        while !self.unwatch_queue.is_empty() {
            self.settle_abandoned().await?;
            // From here to the request being built there is no await: once
            // taken off the queue, the unwatch is sent even if this future
            // is dropped (then as an abandoned request).
            let Some((path, token)) = self.unwatch_queue.pop_front() else {
                break;
            };
            let result = self
                .request_now(
                    XsdSockmsgType::Unwatch,
                    TxId(0),
                    &[Arg::Str(&path), Arg::Str(&token)],
                )
                .await;
            match result {
                Ok(_) => {}
                Err(e @ (XsError::Protocol(_) | XsError::Closed)) => return Err(e),
                Err(e) => {
                    self.unwatch_errors += 1;
                    first_error.get_or_insert(e);
                }
            }
            // The reply came after every event of that watch.
            self.discard_watch_events(&token);
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Send one request and return its reply payload; queued unwatches go
    /// first.
    async fn request(
        &mut self,
        kind: XsdSockmsgType,
        tx: TxId,
        args: &[Arg<'_>],
    ) -> Result<Vec<u8>, XsError> {
        if let Err(e @ (XsError::Protocol(_) | XsError::Closed)) = self.flush_unwatches().await {
            return Err(e);
        }
        self.request_now(kind, tx, args).await
    }

    /// Send one request now (nothing queued goes first) and return its
    /// reply payload.
    async fn request_now(
        &mut self,
        kind: XsdSockmsgType,
        tx: TxId,
        args: &[Arg<'_>],
    ) -> Result<Vec<u8>, XsError> {
        self.settle_abandoned().await?;
        let req_id = self.next_req_id;
        self.tx = build_request(kind, req_id, tx.0, args)?;
        self.tx_sent = 0;
        self.next_req_id = self.next_req_id.wrapping_add(1);
        self.outstanding = Some(req_id);
        self.flush().await?;
        let reply = self.recv_reply().await?;
        if reply.req_id != req_id {
            return self.fail(ProtocolError::RequestIdMismatch {
                expected: req_id,
                got: reply.req_id,
            });
        }
        self.outstanding = None;
        if reply.kind == XsdSockmsgType::Error as u32 {
            return Err(XsError::from_wire(&reply.payload));
        }
        if reply.kind != kind as u32 {
            return self.fail(ProtocolError::UnexpectedType {
                expected: kind as u32,
                got: reply.kind,
            });
        }
        Ok(reply.payload)
    }

    /// A request whose success reply carries nothing of interest ("OK").
    async fn request_ok(
        &mut self,
        kind: XsdSockmsgType,
        tx: TxId,
        args: &[Arg<'_>],
    ) -> Result<(), XsError> {
        self.request(kind, tx, args).await.map(drop)
    }

    /// Read `path` inside transaction `tx` (`TxId(0)`: none).
    pub async fn read_in(&mut self, tx: TxId, path: &str) -> Result<Vec<u8>, XsError> {
        self.request(XsdSockmsgType::Read, tx, &[Arg::Str(path)])
            .await
    }

    async fn read_string_in(&mut self, tx: TxId, path: &str) -> Result<String, XsError> {
        let value = self.read_in(tx, path).await?;
        String::from_utf8(value).map_err(|_| XsError::Protocol(ProtocolError::NotUtf8))
    }

    /// Write `path` inside transaction `tx` (`TxId(0)`: none).
    pub async fn write_in(&mut self, tx: TxId, path: &str, value: &[u8]) -> Result<(), XsError> {
        self.request_ok(
            XsdSockmsgType::Write,
            tx,
            &[Arg::Str(path), Arg::Raw(value)],
        )
        .await
    }

    async fn directory_in(&mut self, tx: TxId, path: &str) -> Result<Vec<String>, XsError> {
        let payload = self
            .request(XsdSockmsgType::Directory, tx, &[Arg::Str(path)])
            .await?;
        split_strings(&payload)
            .map(|name| {
                core::str::from_utf8(name)
                    .map(String::from)
                    .map_err(|_| XsError::Protocol(ProtocolError::NotUtf8))
            })
            .collect()
    }

    async fn rm_in(&mut self, tx: TxId, path: &str) -> Result<(), XsError> {
        self.request_ok(XsdSockmsgType::Rm, tx, &[Arg::Str(path)])
            .await
    }

    async fn mkdir_in(&mut self, tx: TxId, path: &str) -> Result<(), XsError> {
        self.request_ok(XsdSockmsgType::Mkdir, tx, &[Arg::Str(path)])
            .await
    }

    /// The value of `path` (absolute, or relative to our domain's home).
    pub async fn read(&mut self, path: &str) -> Result<Vec<u8>, XsError> {
        self.read_in(TxId(0), path).await
    }

    /// The value of `path` as UTF-8 text.
    pub async fn read_string(&mut self, path: &str) -> Result<String, XsError> {
        self.read_string_in(TxId(0), path).await
    }

    /// Set `path` to `value`, creating it (and missing parents).
    pub async fn write(&mut self, path: &str, value: &[u8]) -> Result<(), XsError> {
        self.write_in(TxId(0), path, value).await
    }

    /// The names of `path`'s children.
    pub async fn directory(&mut self, path: &str) -> Result<Vec<String>, XsError> {
        self.directory_in(TxId(0), path).await
    }

    /// Remove `path` and everything below it.
    pub async fn rm(&mut self, path: &str) -> Result<(), XsError> {
        self.rm_in(TxId(0), path).await
    }

    /// Create `path` with an empty value if it does not exist.
    pub async fn mkdir(&mut self, path: &str) -> Result<(), XsError> {
        self.mkdir_in(TxId(0), path).await
    }

    /// The home path of domain `domid` (`/local/domain/<domid>`).
    pub async fn get_domain_path(&mut self, domid: u16) -> Result<String, XsError> {
        let id = format!("{domid}");
        let payload = self
            .request(XsdSockmsgType::GetDomainPath, TxId(0), &[Arg::Str(&id)])
            .await?;
        payload_str(&payload)
    }

    /// Our own domain id, from the `domid` key of our home.
    pub async fn domid(&mut self) -> Result<u16, XsError> {
        let text = self.read_string("domid").await?;
        text.parse()
            .map_err(|_| XsError::Protocol(ProtocolError::MalformedReply))
    }

    /// Watch `path` and everything below it; events carry `token`. The
    /// daemon fires one event right away. The watch stays until
    /// [`XenStore::unwatch`]; for one that must go away with the code that
    /// waits on it, even when that code is cancelled, use a [`WatchGuard`].
    pub async fn watch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        if self.watched.len() < WATCHED_PATHS_MAX || self.watched.contains_key(token) {
            self.watched.insert(String::from(token), String::from(path));
        }
        self.request_ok(
            XsdSockmsgType::Watch,
            TxId(0),
            &[Arg::Str(path), Arg::Str(token)],
        )
        .await
    }

    /// Remove the watch registered with the same `path` and `token`.
    pub async fn unwatch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        self.request_ok(
            XsdSockmsgType::Unwatch,
            TxId(0),
            &[Arg::Str(path), Arg::Str(token)],
        )
        .await?;
        Ok(())
    }

    /// Forget queued events carrying `token` (e.g. after unwatching it).
    pub fn discard_watch_events(&mut self, token: &str) {
        self.watch_events.retain(|e| e.token != token);
    }

    /// The next watch event, queued or awaited.
    pub async fn next_watch_event(&mut self) -> Result<WatchEvent, XsError> {
        self.next_watch_event_matching(|_| true).await
    }

    /// The next watch event carrying `token`; other events stay queued.
    pub async fn next_watch_event_for(&mut self, token: &str) -> Result<WatchEvent, XsError> {
        self.next_watch_event_matching(|e| e.token == token).await
    }

    async fn next_watch_event_matching(
        &mut self,
        wanted: impl Fn(&WatchEvent) -> bool,
    ) -> Result<WatchEvent, XsError> {
        // Queued unwatches go first, so that an event of a removed watch is
        // never returned.
        if let Err(e @ (XsError::Protocol(_) | XsError::Closed)) = self.flush_unwatches().await {
            return Err(e);
        }
        loop {
            if let Some(at) = self.watch_events.iter().position(&wanted) {
                if let Some(event) = self.watch_events.remove(at) {
                    return Ok(event);
                }
            }
            self.settle_abandoned().await?;
            let reply = self.recv_message().await?;
            if reply.kind == XsdSockmsgType::WatchEvent as u32 {
                self.queue_watch_event(&reply.payload);
            } else {
                return self.fail(ProtocolError::UnsolicitedReply(reply.req_id));
            }
        }
    }

    /// Start a transaction.
    pub async fn transaction_start(&mut self) -> Result<TxId, XsError> {
        let payload = self
            .request(XsdSockmsgType::TransactionStart, TxId(0), &[Arg::Str("")])
            .await?;
        let text = payload_str(&payload)?;
        match text.parse::<u32>() {
            Ok(id) if id != 0 => Ok(TxId(id)),
            _ => self.fail(ProtocolError::MalformedReply),
        }
    }

    /// End transaction `tx`, committing it if `commit`. `Err(Eagain)` means
    /// it conflicted and nothing was applied.
    pub async fn transaction_end(&mut self, tx: TxId, commit: bool) -> Result<(), XsError> {
        let flag = if commit { "T" } else { "F" };
        self.request_ok(XsdSockmsgType::TransactionEnd, tx, &[Arg::Str(flag)])
            .await
    }

    /// Run `body` in a transaction and commit it; if the commit (or an
    /// operation inside) answers `EAGAIN`, run the whole body again, up to
    /// [`TRANSACTION_ATTEMPTS`] times. Any other error aborts the
    /// transaction and is returned.
    pub async fn transaction<R, F>(&mut self, mut body: F) -> Result<R, XsError>
    where
        F: AsyncFnMut(&mut Transaction<'_, T>) -> Result<R, XsError>,
    {
        for _ in 0..TRANSACTION_ATTEMPTS {
            let id = self.transaction_start().await?;
            let result = body(&mut Transaction { store: self, id }).await;
            match result {
                Ok(value) => match self.transaction_end(id, true).await {
                    Ok(()) => return Ok(value),
                    Err(XsError::Eagain) => continue,
                    Err(err) => return Err(err),
                },
                Err(err) => {
                    let aborted = self.transaction_end(id, false).await;
                    if let Err(XsError::Protocol(p)) = aborted {
                        return Err(XsError::Protocol(p));
                    }
                    if err != XsError::Eagain {
                        return Err(err);
                    }
                }
            }
        }
        Err(XsError::RetriesExhausted)
    }
}

/// Watches that belong to a scope: every watch added through the guard is
/// removed when the guard goes, whether by [`WatchGuard::close`] or by being
/// dropped (say, with the future of a connect that a timeout gave up on).
///
/// The guard borrows the client and gives it back through `Deref`, so the
/// code that waits for the watches' events uses the client through it. On
/// drop the watches are queued in the client and removed before its next
/// request (see the [module docs](self)); `close` removes them at once and
/// reports errors.
///
/// Queued events carrying a guard's tokens are discarded when its watches
/// are removed, so give each guard tokens no other watch uses.
pub struct WatchGuard<'a, T: XsTransport> {
    store: &'a mut XenStore<T>,
    /// The watches to remove, (path, token).
    watches: Vec<(String, String)>,
}

impl<'a, T: XsTransport> WatchGuard<'a, T> {
    /// A guard with no watches yet over `store`.
    pub fn new(store: &'a mut XenStore<T>) -> Self {
        Self {
            store,
            watches: Vec::new(),
        }
    }

    /// [`XenStore::watch`] `path` with `token`, owned by this guard. If the
    /// daemon refuses (`EEXIST`: that watch exists already, and is not
    /// ours), the guard does not take it. If this future is dropped while
    /// the request is under way, the guard still removes the watch.
    pub async fn add(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        // Recorded first: a cancelled request may still register it.
        self.watches.push((String::from(path), String::from(token)));
        let result = self.store.watch(path, token).await;
        if let Err(e) = result {
            if !matches!(e, XsError::Protocol(_) | XsError::Closed) {
                self.watches.pop();
            }
        }
        result
    }

    /// Remove one of the guard's watches now (e.g. a node that moved).
    /// A watch the guard does not own is left alone.
    pub async fn remove(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        let Some(i) = self
            .watches
            .iter()
            .position(|(p, t)| p == path && t == token)
        else {
            return Ok(());
        };
        self.watches.remove(i);
        self.store.unwatch(path, token).await
    }

    /// How many watches the guard owns.
    pub fn len(&self) -> usize {
        self.watches.len()
    }

    /// Whether the guard owns no watch.
    pub fn is_empty(&self) -> bool {
        self.watches.is_empty()
    }

    /// The client, for the calls `Deref` cannot infer.
    pub fn store(&mut self) -> &mut XenStore<T> {
        self.store
    }

    /// Remove the guard's watches now, and forget their queued events. Every
    /// watch is tried; the first error is returned.
    pub async fn close(mut self) -> Result<(), XsError> {
        let watches = core::mem::take(&mut self.watches);
        self.store.unwatch_queue.extend(watches);
        self.store.flush_unwatches().await
    }
}

impl<T: XsTransport> Deref for WatchGuard<'_, T> {
    type Target = XenStore<T>;

    fn deref(&self) -> &XenStore<T> {
        self.store
    }
}

impl<T: XsTransport> DerefMut for WatchGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut XenStore<T> {
        self.store
    }
}

impl<T: XsTransport> Drop for WatchGuard<'_, T> {
    fn drop(&mut self) {
        // Removed by the client before its next request.
        let watches = core::mem::take(&mut self.watches);
        self.store.unwatch_queue.extend(watches);
    }
}

/// Operations inside a transaction started by [`XenStore::transaction`].
pub struct Transaction<'a, T: XsTransport> {
    store: &'a mut XenStore<T>,
    id: TxId,
}

impl<T: XsTransport> Transaction<'_, T> {
    /// This transaction's id.
    pub fn id(&self) -> TxId {
        self.id
    }

    /// [`XenStore::read`] inside the transaction.
    pub async fn read(&mut self, path: &str) -> Result<Vec<u8>, XsError> {
        self.store.read_in(self.id, path).await
    }

    /// [`XenStore::read_string`] inside the transaction.
    pub async fn read_string(&mut self, path: &str) -> Result<String, XsError> {
        self.store.read_string_in(self.id, path).await
    }

    /// [`XenStore::write`] inside the transaction.
    pub async fn write(&mut self, path: &str, value: &[u8]) -> Result<(), XsError> {
        self.store.write_in(self.id, path, value).await
    }

    /// [`XenStore::directory`] inside the transaction.
    pub async fn directory(&mut self, path: &str) -> Result<Vec<String>, XsError> {
        self.store.directory_in(self.id, path).await
    }

    /// [`XenStore::rm`] inside the transaction.
    pub async fn rm(&mut self, path: &str) -> Result<(), XsError> {
        self.store.rm_in(self.id, path).await
    }

    /// [`XenStore::mkdir`] inside the transaction.
    pub async fn mkdir(&mut self, path: &str) -> Result<(), XsError> {
        self.store.mkdir_in(self.id, path).await
    }
}
