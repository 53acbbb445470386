//! Setting a vchan up and using it: the server grants the pages, allocates
//! the event channel and publishes both in xenstore; the client reads them,
//! binds and maps; both then stream through [`Vchan`] and close.
//!
//! Set-up, as libxenvchan does it:
//! - server: an unbound port for the client; the rings' own pages (orders
//!   12 to 20) granted read-write to the client; the control page formatted
//!   ([`stream::format_control`]) with their references and granted; then,
//!   in one transaction, `<path>/ring-ref` and `<path>/event-channel`
//!   (decimal). The client is `NotYet` until it sets `cli_live` to 1.
//! - client: reads both keys (or waits for them: [`wait_for_server`]),
//!   binds the port, maps the control page, checks the orders and grant
//!   list ([`stream::read_layout`]), maps the rings (the one it writes
//!   read-write, the one it reads read-only), sets `cli_live`, asks the
//!   server to notify on writes and notifies it.
//!
//! Closing: set our live byte to 0 and notify (what Linux's grant
//! unmap-notification does for a libxenvchan process that exits), close the
//! port; the server also removes its xenstore directory and revokes its
//! grants. A grant the client still maps is not revoked: its page stays
//! with it in [`Lingering`] until [`Lingering::retry`] succeeds. Dropping a
//! [`Lingering`] (or a [`Vchan`] without closing it) is safe too: the
//! environment's page type ends the grants of a dropped page or, while the
//! peer still maps it, defers it (the project's owner model for granted
//! memory, docs/drivers.md "Grant ownership": never back to the allocator
//! while mapped, never leaked for good).
//!
//! A peer that vanishes (its domain destroyed) clears no live byte: every
//! wait also watches `@releaseDomain` (if xenstored lets us), and after each
//! wake-up asks the environment whether the other end of the port has gone
//! ([`VchanEnv::peer_closed`]).

use super::stream::{self, Progress, Role, Stream, StreamError};
use super::wire::{Live, Orders, Place, NOTIFY_READ, NOTIFY_WRITE};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::future::{poll_fn, Future};
use core::pin::pin;
use core::task::{Context, Poll};
use xen::abi::{DomId, GrantRef, Port};
use xen::grant::GrantError;
use xen::shared_page::{PageMemory, SharedPage};
use xen::xenstore::{XenStore, XsError, XsTransport};

/// The platform could not provide a resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvError {
    /// No memory for another page, or no room left to map one.
    OutOfMemory,
    /// Xen refused a grant mapping (`GNTST_*`).
    Grant(i16),
    /// A hypercall failed (Xen's negative errno).
    Hypercall(i32),
}

/// What a vchan end needs from the kernel: pages to share and this domain's
/// grant table (server), foreign grant mapping (client), event channels
/// wired to the executor and the xenstore connection. Tests implement it
/// over `xen::sim`.
pub trait VchanEnv {
    /// A page of ours that may be granted.
    type Page: PageMemory;
    /// A mapped page of another domain; dropping it unmaps it.
    type Mapping: PageMemory;
    /// The xenstore connection's transport.
    type Xs: XsTransport;

    /// A zeroed page of ours.
    fn alloc_page(&mut self) -> Result<SharedPage<Self::Page>, EnvError>;
    /// Grant `domid` access to `frame`.
    fn grant_access(
        &mut self,
        domid: DomId,
        frame: u64,
        readonly: bool,
    ) -> Result<GrantRef, GrantError>;
    /// Revoke a grant; fails with [`GrantError::InUse`] while it is mapped.
    fn end_access(&mut self, gref: GrantRef) -> Result<(), GrantError>;
    /// Map `domid`'s grant `gref` (`GNTTABOP_map_grant_ref`).
    fn map_grant(
        &mut self,
        domid: DomId,
        gref: GrantRef,
        readonly: bool,
    ) -> Result<SharedPage<Self::Mapping>, EnvError>;
    /// An unbound port `remote` may bind.
    fn alloc_unbound(&mut self, remote: DomId) -> Result<Port, EnvError>;
    /// Bind to `remote`'s unbound port; our new local port.
    fn bind_interdomain(&mut self, remote: DomId, remote_port: Port) -> Result<Port, EnvError>;
    /// Notify the other end of `port`.
    fn notify(&mut self, port: Port);
    /// Ready once an event arrived on `port` since the last `Ready`;
    /// registers `cx`'s waker otherwise.
    fn poll_event(&mut self, port: Port, cx: &mut Context<'_>) -> Poll<()>;
    /// Whether the other end of our interdomain `port` is gone (closed, or
    /// its domain destroyed): `EVTCHNOP_status` no longer says
    /// interdomain. `false` when unknown.
    fn peer_closed(&mut self, port: Port) -> bool;
    /// Close `port`.
    fn close_port(&mut self, port: Port);
    /// The xenstore client.
    fn xenstore(&mut self) -> &mut XenStore<Self::Xs>;
}

/// Why a vchan operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VchanError {
    /// The shared pages broke the protocol (see [`StreamError`]).
    Stream(StreamError),
    /// The platform refused a page, mapping or port.
    Env(EnvError),
    /// The grant table refused.
    Grant(GrantError),
    /// Xenstore failed.
    Xenstore(XsError),
    /// The server's `ring-ref` or `event-channel` is not a non-zero decimal
    /// number.
    BadKey(&'static str),
    /// The peer closed the vchan (its live byte is 0).
    PeerClosed,
    /// The peer's end of the event channel is gone (its domain died).
    PeerGone,
    /// Already closed.
    Closed,
}

impl From<StreamError> for VchanError {
    fn from(e: StreamError) -> Self {
        VchanError::Stream(e)
    }
}
impl From<EnvError> for VchanError {
    fn from(e: EnvError) -> Self {
        VchanError::Env(e)
    }
}
impl From<GrantError> for VchanError {
    fn from(e: GrantError) -> Self {
        VchanError::Grant(e)
    }
}
impl From<XsError> for VchanError {
    fn from(e: XsError) -> Self {
        VchanError::Xenstore(e)
    }
}

/// One end of a connected (or, for a server, listening) vchan. `M` is the
/// page memory: the environment's `Page` for a server, `Mapping` for a
/// client. Operations take the environment, so one environment serves
/// several vchans.
pub struct Vchan<M: PageMemory> {
    /// `None` only once `close` took it.
    stream: Option<Stream<M>>,
    /// The peer bound the port (client: from the start; server: once it
    /// saw the client's live byte set), so an unbound port means it left.
    connected: bool,
    port: Port,
    peer: DomId,
    /// Server: grant references (control page first).
    grants: Vec<GrantRef>,
    /// Server: the xenstore directory to remove on close.
    path: Option<String>,
    token: String,
    /// Whether the `@releaseDomain` watch under `token` is registered.
    watching: bool,
    peer_gone: bool,
}

/// Pages whose grant the peer still maps after a server closed, with their
/// references. [`retry`](Self::retry) revokes what it can; dropping it
/// hands the rest to the environment's page type, which defers them until
/// the peer unmaps.
pub struct Lingering<M: PageMemory> {
    pages: Vec<(GrantRef, SharedPage<M>)>,
}

impl<M: PageMemory> Lingering<M> {
    /// Pages still granted.
    pub fn len(&self) -> usize {
        self.pages.len()
    }

    /// Whether every grant was revoked.
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }

    /// Try to revoke the remaining grants; pages whose grant was revoked
    /// are freed. True when none is left.
    pub fn retry<E: VchanEnv>(&mut self, env: &mut E) -> bool {
        self.pages
            .retain(|(gref, _)| env.end_access(*gref) == Err(GrantError::InUse));
        self.pages.is_empty()
    }
}

fn watch_token(port: Port) -> String {
    format!("moat-vchan-{port}")
}

/// Become the server of a vchan for `client` under xenstore directory
/// `path`, with rings of at least `read_min` bytes (client to server) and
/// `write_min` bytes (server to client). Returns once the keys are
/// published; [`Vchan::accept`] waits for the client.
pub async fn listen<E: VchanEnv>(
    env: &mut E,
    client: DomId,
    path: &str,
    read_min: usize,
    write_min: usize,
) -> Result<Vchan<E::Page>, VchanError> {
    let orders = Orders::negotiate(read_min, write_min).map_err(StreamError::Wire)?;
    let port = env.alloc_unbound(client)?;
    let mut held = Vec::new();
    let (stream, grants) = match publish(env, client, path, orders, port, &mut held).await {
        Ok(done) => done,
        Err(e) => {
            // Revoke before the pages go; a page whose grant cannot be
            // revoked (a client guessed the reference and mapped it) is
            // deferred by the page type when dropped, never reused.
            let mut lingering = Lingering { pages: held };
            lingering.retry(env);
            drop(lingering);
            env.close_port(port);
            return Err(e);
        }
    };
    let v = Vchan {
        stream: Some(stream),
        connected: false,
        port,
        peer: client,
        grants,
        path: Some(path.into()),
        token: watch_token(port),
        watching: false,
        peer_gone: false,
    };
    let mut v = v;
    match watch_release(env, &v.token).await {
        Ok(watching) => v.watching = watching,
        Err(e) => {
            let _ = v.close(env).await;
            return Err(e);
        }
    }
    Ok(v)
}

/// Watch `@releaseDomain` under `token`. Refused (xenstored may keep
/// special watches to privileged domains) is not an error: the vchan then
/// notices a vanished peer only through its port. Only a broken xenstore
/// connection is.
async fn watch_release<E: VchanEnv>(env: &mut E, token: &str) -> Result<bool, VchanError> {
    match env.xenstore().watch("@releaseDomain", token).await {
        Ok(()) => Ok(true),
        Err(e @ (XsError::Protocol(_) | XsError::Closed)) => Err(e.into()),
        Err(_) => Ok(false),
    }
}

/// The server's pages, grants and keys. Every granted page is in `held`
/// (control page first) until the stream owns them all, so that a failure
/// revokes the grants before the pages are freed.
async fn publish<E: VchanEnv>(
    env: &mut E,
    client: DomId,
    path: &str,
    orders: Orders,
    port: Port,
    held: &mut Vec<(GrantRef, SharedPage<E::Page>)>,
) -> Result<(Stream<E::Page>, Vec<GrantRef>), VchanError> {
    let control = env.alloc_page()?;
    let ring_ref = env.grant_access(client, control.frame(), false)?;
    held.push((ring_ref, control));
    let mut counts = [0usize; 2];
    for (i, order) in [orders.left, orders.right].into_iter().enumerate() {
        if let Place::Pages { count } = super::wire::place(order) {
            for _ in 0..count {
                let page = env.alloc_page()?;
                let gref = env.grant_access(client, page.frame(), false)?;
                held.push((gref, page));
                counts[i] += 1;
            }
        }
    }
    let grants: Vec<GrantRef> = held.iter().map(|(g, _)| *g).collect();
    stream::format_control(&held[0].1, orders, &grants[1..])?;
    // The stream takes the pages; it cannot refuse them (the counts follow
    // the orders and the page is freshly formatted), and if it did they
    // would be freed still granted, so check first.
    let mut pages = core::mem::take(held).into_iter().map(|(_, p)| p);
    let control = pages
        .next()
        .ok_or(VchanError::Grant(GrantError::NotGranted))?;
    let left: Vec<_> = pages.by_ref().take(counts[0]).collect();
    let right: Vec<_> = pages.collect();
    let stream = Stream::new(Role::Server, control, orders, left, right)?;
    let (ring_key, port_key) = (format!("{path}/ring-ref"), format!("{path}/event-channel"));
    let (ring_val, port_val) = (format!("{ring_ref}"), format!("{port}"));
    let written = env
        .xenstore()
        .transaction(async |tx| {
            tx.write(&ring_key, ring_val.as_bytes()).await?;
            tx.write(&port_key, port_val.as_bytes()).await
        })
        .await;
    if let Err(e) = written {
        let (control, pages) = stream.into_pages();
        held.extend(
            grants
                .into_iter()
                .zip(core::iter::once(control).chain(pages)),
        );
        return Err(e.into());
    }
    Ok((stream, grants))
}

fn parse_key(value: &[u8], key: &'static str) -> Result<u32, VchanError> {
    core::str::from_utf8(value)
        .ok()
        .and_then(|s| s.trim_end_matches('\0').parse::<u32>().ok())
        .filter(|v| *v != 0)
        .ok_or(VchanError::BadKey(key))
}

/// Read the server's keys under `path`: `None` while it has not published.
async fn read_keys<T: XsTransport>(
    xs: &mut XenStore<T>,
    path: &str,
) -> Result<Option<(u32, u32)>, VchanError> {
    // Not there yet may also read as EACCES: xenstored answers so for a
    // missing node under a parent we may not read (dom0's home).
    let ring = match xs.read(&format!("{path}/ring-ref")).await {
        Ok(v) => v,
        Err(XsError::Enoent | XsError::Eacces) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let port = match xs.read(&format!("{path}/event-channel")).await {
        Ok(v) => v,
        Err(XsError::Enoent | XsError::Eacces) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok(Some((
        parse_key(&ring, "ring-ref")?,
        parse_key(&port, "event-channel")?,
    )))
}

/// Wait (with a watch) until a server has published its keys under `path`.
pub async fn wait_for_server<T: XsTransport>(
    xs: &mut XenStore<T>,
    path: &str,
) -> Result<(), VchanError> {
    let token = format!("moat-vchan-wait:{path}");
    let mut guard = xen::xenstore::WatchGuard::new(xs);
    guard.add(path, &token).await?;
    loop {
        if read_keys(guard.store(), path).await?.is_some() {
            break;
        }
        guard.store().next_watch_event_for(&token).await?;
    }
    guard.close().await?;
    Ok(())
}

/// Connect as the client to `server`'s vchan published under `path` (the
/// keys must be there: see [`wait_for_server`]).
pub async fn connect<E: VchanEnv>(
    env: &mut E,
    server: DomId,
    path: &str,
) -> Result<Vchan<E::Mapping>, VchanError> {
    let (ring_ref, remote_port) = read_keys(env.xenstore(), path)
        .await?
        .ok_or(VchanError::Xenstore(XsError::Enoent))?;
    let port = env.bind_interdomain(server, remote_port)?;
    match attach(env, server, ring_ref) {
        Ok(mut stream) => {
            let r = stream
                .set_live(Live::Connected)
                .and_then(|()| stream.request(NOTIFY_WRITE));
            let v = Vchan {
                stream: Some(stream),
                connected: true,
                port,
                peer: server,
                grants: Vec::new(),
                path: None,
                token: watch_token(port),
                watching: false,
                peer_gone: false,
            };
            if let Err(e) = r {
                let _ = v.close(env).await;
                return Err(e.into());
            }
            env.notify(port);
            let mut v = v;
            match watch_release(env, &v.token).await {
                Ok(watching) => v.watching = watching,
                Err(e) => {
                    let _ = v.close(env).await;
                    return Err(e);
                }
            }
            Ok(v)
        }
        Err(e) => {
            env.close_port(port);
            Err(e)
        }
    }
}

/// Map the server's pages (unmapped again if anything fails: the mappings
/// are dropped).
fn attach<E: VchanEnv>(
    env: &mut E,
    server: DomId,
    ring_ref: u32,
) -> Result<Stream<E::Mapping>, VchanError> {
    let control = env.map_grant(server, ring_ref, false)?;
    let (orders, grants) = stream::read_layout(&control)?;
    let mut grants = grants.into_iter();
    let mut rings: [Vec<SharedPage<E::Mapping>>; 2] = [Vec::new(), Vec::new()];
    // Left: we write it; right: we only read it.
    for (i, (order, readonly)) in [(orders.left, false), (orders.right, true)]
        .into_iter()
        .enumerate()
    {
        if let Place::Pages { count } = super::wire::place(order) {
            for gref in grants.by_ref().take(count) {
                rings[i].push(env.map_grant(server, gref, readonly)?);
            }
        }
    }
    let [left, right] = rings;
    Ok(Stream::new(Role::Client, control, orders, left, right)?)
}

impl<M: PageMemory> Vchan<M> {
    /// Our event channel port.
    pub fn port(&self) -> Port {
        self.port
    }

    /// The peer domain.
    pub fn peer(&self) -> DomId {
        self.peer
    }

    /// The shared rings (sizes, indices, live bytes).
    pub fn stream(&mut self) -> Option<&mut Stream<M>> {
        self.stream.as_mut()
    }

    fn s(&mut self) -> Result<&mut Stream<M>, VchanError> {
        self.stream.as_mut().ok_or(VchanError::Closed)
    }

    /// The peer's live byte.
    pub fn peer_live(&mut self) -> Result<Live, VchanError> {
        Ok(self.s()?.peer_live()?)
    }

    /// Wait for an event on the port (or a domain's death). Once a wake-up
    /// found the peer's end of the port gone, the next call fails with
    /// [`VchanError::PeerGone`] at once (no event would ever come).
    pub async fn wait<E: VchanEnv>(&mut self, env: &mut E) -> Result<(), VchanError> {
        if self.peer_gone {
            return Err(VchanError::PeerGone);
        }
        let (port, token, watching) = (self.port, self.token.as_str(), self.watching);
        poll_fn(|cx| {
            if env.poll_event(port, cx).is_ready() {
                return Poll::Ready(Ok(()));
            }
            if !watching {
                return Poll::Pending;
            }
            let mut event = pin!(env.xenstore().next_watch_event_for(token));
            match event.as_mut().poll(cx) {
                Poll::Ready(Ok(_)) => Poll::Ready(Ok(())),
                Poll::Ready(Err(e)) => Poll::Ready(Err(VchanError::Xenstore(e))),
                Poll::Pending => Poll::Pending,
            }
        })
        .await?;
        let live = self.s()?.peer_live()?;
        self.connected |= live == Live::Connected;
        // A peer that closed cleanly also unbinds: that is `PeerClosed`,
        // which the caller sees in the live byte.
        if self.connected && live != Live::Closed && env.peer_closed(port) {
            // Reported once what it left in the rings was taken (the
            // callers check `peer_gone` before waiting again).
            self.peer_gone = true;
        }
        Ok(())
    }

    /// Server: wait until the client has connected.
    pub async fn accept<E: VchanEnv>(&mut self, env: &mut E) -> Result<(), VchanError> {
        loop {
            match self.s()?.peer_live()? {
                Live::Connected => return Ok(()),
                Live::Closed => return Err(VchanError::PeerClosed),
                Live::NotYet => self.wait(env).await?,
            }
        }
    }

    /// Read what is waiting (up to `buf.len()`) without waiting; notifies
    /// the peer if it asked.
    pub fn try_read<E: VchanEnv>(
        &mut self,
        env: &mut E,
        buf: &mut [u8],
    ) -> Result<usize, VchanError> {
        let p = self.s()?.read(buf)?;
        self.kick(env, p);
        Ok(p.bytes)
    }

    /// Write what fits of `buf` without waiting; notifies the peer if it
    /// asked.
    pub fn try_write<E: VchanEnv>(&mut self, env: &mut E, buf: &[u8]) -> Result<usize, VchanError> {
        let p = self.s()?.write(buf)?;
        self.kick(env, p);
        Ok(p.bytes)
    }

    fn kick<E: VchanEnv>(&self, env: &mut E, p: Progress) {
        if p.notify {
            env.notify(self.port);
        }
    }

    /// Read at least one byte (waiting for it); `Ok(0)` once the peer has
    /// closed and everything it wrote was read.
    pub async fn read<E: VchanEnv>(
        &mut self,
        env: &mut E,
        buf: &mut [u8],
    ) -> Result<usize, VchanError> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let n = self.try_read(env, buf)?;
            if n > 0 {
                return Ok(n);
            }
            if self.s()?.peer_live()? == Live::Closed {
                // The peer published its data before its live byte.
                return self.try_read(env, buf);
            }
            if self.peer_gone {
                return Err(VchanError::PeerGone);
            }
            self.wait(env).await?;
        }
    }

    /// Write all of `buf`, waiting for room (back-pressure).
    pub async fn write_all<E: VchanEnv>(
        &mut self,
        env: &mut E,
        mut buf: &[u8],
    ) -> Result<(), VchanError> {
        while !buf.is_empty() {
            if self.s()?.peer_live()? == Live::Closed {
                return Err(VchanError::PeerClosed);
            }
            let n = self.try_write(env, buf)?;
            buf = &buf[n..];
            if n == 0 {
                self.wait(env).await?;
            }
        }
        Ok(())
    }

    /// Wait until the peer has consumed everything we wrote.
    pub async fn flush<E: VchanEnv>(&mut self, env: &mut E) -> Result<(), VchanError> {
        loop {
            if self.s()?.unread()? == 0 {
                return Ok(());
            }
            self.s()?.request(NOTIFY_READ)?;
            if self.s()?.unread()? == 0 {
                return Ok(());
            }
            if self.s()?.peer_live()? == Live::Closed {
                return Err(VchanError::PeerClosed);
            }
            self.wait(env).await?;
        }
    }

    /// Close our end: live byte to 0, notify, close the port, remove the
    /// watch; a server also removes its keys and revokes its grants. What
    /// the peer still maps is returned, to be retried.
    pub async fn close<E: VchanEnv>(mut self, env: &mut E) -> Result<Lingering<M>, VchanError> {
        let mut stream = self.stream.take().ok_or(VchanError::Closed)?;
        let live = stream.set_live(Live::Closed);
        env.notify(self.port);
        env.close_port(self.port);
        let mut unwatch = Ok(());
        if self.watching {
            unwatch = env.xenstore().unwatch("@releaseDomain", &self.token).await;
            env.xenstore().discard_watch_events(&self.token);
        }
        let mut rm = Ok(());
        if let Some(path) = self.path.take() {
            rm = env.xenstore().rm(&path).await;
        }
        let (control, pages) = stream.into_pages();
        let mut lingering = Lingering { pages: Vec::new() };
        if !self.grants.is_empty() {
            // Grants are control first, then the rings in page order.
            let all = core::iter::once(control).chain(pages);
            lingering.pages = self.grants.iter().copied().zip(all).collect();
            lingering.retry(env);
        }
        live?;
        match unwatch {
            Ok(()) | Err(XsError::Enoent) => {}
            Err(e) => return Err(e.into()),
        }
        rm.or_else(|e| if e == XsError::Enoent { Ok(()) } else { Err(e) })?;
        Ok(lingering)
    }
}
