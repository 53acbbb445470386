//! The xenbus device handshake (`io/xenbus.h`): each end of a split device
//! publishes its [`XenbusState`] in xenstore, and the frontend moves on
//! when the backend reaches the state it waits for.
//!
//! [`read_state`] and [`write_state`] read and publish one end's state (both
//! ends of every driver use them). [`XenbusDevice`] is the frontend's
//! helper: it finds the backend from the device directory (`backend`,
//! `backend-id`), writes our `state`, and waits for the backend's `state`
//! through a watch. Every value read is untrusted and parsed strictly.

use crate::xenstore::{WatchGuard, XenStore, XsError, XsTransport};
use alloc::format;
use alloc::string::String;
use core::future::{poll_fn, Future};
use core::pin::pin;
use core::task::{Context, Poll};

/// The state of one end of a split device (`enum xenbus_state`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum XenbusState {
    /// `XenbusStateUnknown`: no state published (yet).
    Unknown = 0,
    /// `XenbusStateInitialising`: starting up.
    Initialising = 1,
    /// `XenbusStateInitWait`: early init done, waiting for the peer or
    /// hotplug scripts.
    InitWait = 2,
    /// `XenbusStateInitialised`: waiting for the peer to connect.
    Initialised = 3,
    /// `XenbusStateConnected`: running.
    Connected = 4,
    /// `XenbusStateClosing`: shutting down (error or unplug).
    Closing = 5,
    /// `XenbusStateClosed`: shut down.
    Closed = 6,
    /// `XenbusStateReconfiguring`: being reconfigured.
    Reconfiguring = 7,
    /// `XenbusStateReconfigured`: reconfiguration done.
    Reconfigured = 8,
}

impl XenbusState {
    /// Every state, in numeric order.
    pub const ALL: [XenbusState; 9] = [
        Self::Unknown,
        Self::Initialising,
        Self::InitWait,
        Self::Initialised,
        Self::Connected,
        Self::Closing,
        Self::Closed,
        Self::Reconfiguring,
        Self::Reconfigured,
    ];

    /// The state numbered `n`, if there is one.
    pub fn from_u32(n: u32) -> Option<Self> {
        Self::ALL.get(usize::try_from(n).ok()?).copied()
    }

    /// Parse a xenstore `state` value: a decimal number, nothing else.
    pub fn parse(value: &[u8]) -> Result<Self, XenbusError> {
        let bad = || XenbusError::BadState(BadValue::new(value));
        if value.is_empty() || value.len() > 10 || !value.iter().all(u8::is_ascii_digit) {
            return Err(bad());
        }
        let n = core::str::from_utf8(value)
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
            .ok_or_else(bad)?;
        Self::from_u32(n).ok_or_else(bad)
    }

    /// The value written to xenstore for this state.
    pub fn to_value(self) -> String {
        format!("{}", self as u32)
    }
}

/// Longest prefix of a bad value kept in an error.
pub const BAD_VALUE_MAX: usize = 16;

/// The start of a malformed xenstore value, for the error message.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct BadValue {
    bytes: [u8; BAD_VALUE_MAX],
    len: u8,
}

impl BadValue {
    fn new(value: &[u8]) -> Self {
        let len = value.len().min(BAD_VALUE_MAX);
        let mut bytes = [0; BAD_VALUE_MAX];
        bytes[..len].copy_from_slice(&value[..len]);
        Self {
            bytes,
            len: len as u8,
        }
    }

    /// The kept bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl core::fmt::Debug for BadValue {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "\"{}\"", self.as_bytes().escape_ascii())
    }
}

/// Why a xenbus step failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XenbusError {
    /// The xenstore operation failed.
    Xs(XsError),
    /// A `state` node held something that is not a state.
    BadState(BadValue),
    /// `backend-id` is not a domain id.
    BadBackendId(BadValue),
    /// `backend` is not an absolute UTF-8 path.
    BadBackendPath(BadValue),
    /// While waiting, the backend went to `Closing`/`Closed` instead.
    BackendClosed(XenbusState),
    /// A bounded wait ([`WaitBound`]) saw no progress for too long.
    Stalled,
}

impl From<XsError> for XenbusError {
    fn from(err: XsError) -> Self {
        XenbusError::Xs(err)
    }
}

/// Read `<node>/state`; a missing node reads as `Unknown` (not created yet).
pub async fn read_state<T: XsTransport>(
    xs: &mut XenStore<T>,
    node: &str,
) -> Result<XenbusState, XenbusError> {
    match xs.read(&format!("{node}/state")).await {
        Ok(value) => XenbusState::parse(&value),
        Err(XsError::Enoent) => Ok(XenbusState::Unknown),
        Err(err) => Err(err.into()),
    }
}

/// Publish `state` as `<node>/state` (`node`: the device directory of
/// either end).
pub async fn write_state<T: XsTransport>(
    xs: &mut XenStore<T>,
    node: &str,
    state: XenbusState,
) -> Result<(), XsError> {
    xs.write(&format!("{node}/state"), state.to_value().as_bytes())
        .await
}

/// Publish `state` as `<node>/state` only if that node exists: the check
/// and the write are one transaction (retried on a conflict), so a
/// directory the toolstack removed is never created again. `Ok(false)`:
/// the node is gone, nothing was written.
pub async fn write_state_if_present<T: XsTransport>(
    xs: &mut XenStore<T>,
    node: &str,
    state: XenbusState,
) -> Result<bool, XsError> {
    let key = format!("{node}/state");
    let value = state.to_value();
    xs.transaction(async |tx| match tx.read(&key).await {
        Ok(_) => tx.write(&key, value.as_bytes()).await.map(|()| true),
        Err(XsError::Enoent) => Ok(false),
        Err(e) => Err(e),
    })
    .await
}

/// A frontend device and its backend, as found in xenstore.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XenbusDevice {
    /// Our device directory, e.g. `device/vif/0`.
    pub path: String,
    /// The backend's directory, e.g. `/local/domain/0/backend/vif/7/0`.
    pub backend: String,
    /// The backend's domain.
    pub backend_id: u16,
}

impl XenbusDevice {
    /// Find the backend of the device at `path` (its `backend` and
    /// `backend-id` keys).
    pub async fn open<T: XsTransport>(
        xs: &mut XenStore<T>,
        path: &str,
    ) -> Result<Self, XenbusError> {
        let backend = xs.read(&format!("{path}/backend")).await?;
        let backend = match core::str::from_utf8(&backend) {
            Ok(p) if p.starts_with('/') && !p.ends_with('/') => String::from(p),
            _ => return Err(XenbusError::BadBackendPath(BadValue::new(&backend))),
        };
        let id = xs.read(&format!("{path}/backend-id")).await?;
        let bad_id = || XenbusError::BadBackendId(BadValue::new(&id));
        if id.is_empty() || !id.iter().all(u8::is_ascii_digit) {
            return Err(bad_id());
        }
        let backend_id = core::str::from_utf8(&id)
            .ok()
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(bad_id)?;
        Ok(Self {
            path: String::from(path),
            backend,
            backend_id,
        })
    }

    /// Publish our state.
    pub async fn set_state<T: XsTransport>(
        &self,
        xs: &mut XenStore<T>,
        state: XenbusState,
    ) -> Result<(), XenbusError> {
        Ok(write_state(xs, &self.path, state).await?)
    }

    /// Publish our state only if our `state` node still exists (as Linux's
    /// `xenbus_switch_state` does): the check and the write are one
    /// transaction, so a toolstack that removed our directory (at the end
    /// of `xl network-detach`) never sees it created again. `Ok(false)`: the node is gone, nothing was written.
    pub async fn set_state_if_present<T: XsTransport>(
        &self,
        xs: &mut XenStore<T>,
        state: XenbusState,
    ) -> Result<bool, XenbusError> {
        Ok(write_state_if_present(xs, &self.path, state).await?)
    }

    /// Our published state.
    pub async fn state<T: XsTransport>(
        &self,
        xs: &mut XenStore<T>,
    ) -> Result<XenbusState, XenbusError> {
        read_state(xs, &self.path).await
    }

    /// The backend's published state.
    pub async fn backend_state<T: XsTransport>(
        &self,
        xs: &mut XenStore<T>,
    ) -> Result<XenbusState, XenbusError> {
        read_state(xs, &self.backend).await
    }

    /// Wait until the backend's state is `target`. Fails if the backend
    /// goes to `Closing` or `Closed` when that is not the target. The watch
    /// used for waiting is removed before returning, or, if this future is
    /// dropped unfinished, before the client's next request (a
    /// [`WatchGuard`]).
    pub async fn wait_for_backend<T: XsTransport>(
        &self,
        xs: &mut XenStore<T>,
        target: XenbusState,
    ) -> Result<XenbusState, XenbusError> {
        let node = format!("{}/state", self.backend);
        let token = format!("xenbus:{}", self.path);
        let mut watches = WatchGuard::new(xs);
        watches.add(&node, &token).await?;
        let result = self.wait_watched(watches.store(), target, &token).await;
        let unwatched = watches.close().await;
        let state = result?;
        unwatched?;
        Ok(state)
    }

    async fn wait_watched<T: XsTransport>(
        &self,
        xs: &mut XenStore<T>,
        target: XenbusState,
        token: &str,
    ) -> Result<XenbusState, XenbusError> {
        loop {
            let state = self.backend_state(xs).await?;
            if state == target {
                return Ok(state);
            }
            if matches!(state, XenbusState::Closing | XenbusState::Closed) {
                return Err(XenbusError::BackendClosed(state));
            }
            xs.next_watch_event_for(token).await?;
        }
    }

    /// Wait until the backend's state is `target`, passing through
    /// `Closing` and `Closed` while the backend stays `online` (a
    /// reconnection: Linux's netback walks through them toward the state
    /// our latest state asks for, e.g. `Closing`, `Closed`, `InitWait` after
    /// our `Closed` then `Initialising`; the toolstack sets `online` to 0
    /// before it really closes a device). Fails with
    /// [`XenbusError::BackendClosed`] when the backend is `Closing` or
    /// `Closed` (or gone: `Unknown`) and not online, and with [`XenbusError::Stalled`] when
    /// `bound` expires (told of each state change as progress). The watch
    /// is removed on every exit, as in
    /// [`wait_for_backend`](Self::wait_for_backend).
    pub async fn wait_for_backend_online<T: XsTransport, B: WaitBound>(
        &self,
        xs: &mut XenStore<T>,
        target: XenbusState,
        bound: &mut B,
    ) -> Result<XenbusState, XenbusError> {
        let node = format!("{}/state", self.backend);
        let token = format!("xenbus-online:{}", self.path);
        let mut watches = WatchGuard::new(xs);
        let result = async {
            watches.add(&node, &token).await?;
            let mut last = None;
            loop {
                let state = self.backend_state(&mut watches).await?;
                if last != Some(state) {
                    last = Some(state);
                    bound.progress();
                }
                if state == target {
                    return Ok(state);
                }
                let closed = matches!(
                    state,
                    XenbusState::Closing | XenbusState::Closed | XenbusState::Unknown
                );
                if closed && !backend_online(&mut watches, &self.backend).await? {
                    return Err(XenbusError::BackendClosed(state));
                }
                next_event_or(&mut watches, &token, bound).await?;
            }
        }
        .await;
        let unwatched = watches.close().await;
        let state = result?;
        unwatched?;
        Ok(state)
    }
}

/// Wait until the state of the backend at `backend` (its directory) is no
/// longer `last`, and return it (a missing node reads as `Unknown`); ends
/// with [`XenbusError::Stalled`] when `bound` expires. A change between
/// the caller's read of `last` and this call is seen at once.
pub async fn wait_backend_state_change<T: XsTransport, B: WaitBound>(
    xs: &mut XenStore<T>,
    backend: &str,
    last: XenbusState,
    bound: &mut B,
) -> Result<XenbusState, XenbusError> {
    let token = format!("xenbus-change:{backend}");
    let mut watches = WatchGuard::new(xs);
    let result: Result<XenbusState, XenbusError> = async {
        watches.add(&format!("{backend}/state"), &token).await?;
        loop {
            let state = read_state(&mut watches, backend).await?;
            if state != last {
                bound.progress();
                return Ok(state);
            }
            next_event_or(&mut watches, &token, bound).await?;
        }
    }
    .await;
    let unwatched = watches.close().await;
    let state = result?;
    unwatched?;
    Ok(state)
}

/// A bound on a xenbus wait: polled beside every wait for a watch event,
/// it ends the wait with [`XenbusError::Stalled`] once ready; told of
/// progress (a state that changed) so it can start counting again.
pub trait WaitBound {
    /// Ready when the wait has gone on too long (registers `cx`'s waker
    /// otherwise).
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()>;
    /// Something changed: the wait is making progress.
    fn progress(&mut self);
}

/// No bound: waits as long as it takes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Unbounded;

impl WaitBound for Unbounded {
    fn poll_expired(&mut self, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
    }
    fn progress(&mut self) {}
}

/// The next watch event carrying `token`, or [`XenbusError::Stalled`] if
/// `bound` expires first. (Dropping a pending event wait loses nothing:
/// the client queues events.)
async fn next_event_or<T: XsTransport, B: WaitBound>(
    xs: &mut XenStore<T>,
    token: &str,
    bound: &mut B,
) -> Result<(), XenbusError> {
    let mut event = pin!(xs.next_watch_event_for(token));
    poll_fn(|cx| {
        if let Poll::Ready(r) = event.as_mut().poll(cx) {
            return Poll::Ready(r.map(drop).map_err(XenbusError::from));
        }
        if bound.poll_expired(cx).is_ready() {
            return Poll::Ready(Err(XenbusError::Stalled));
        }
        Poll::Pending
    })
    .await
}

/// Whether the backend at `backend` is `online` (`1`; missing reads as
/// not online).
async fn backend_online<T: XsTransport>(
    xs: &mut XenStore<T>,
    backend: &str,
) -> Result<bool, XenbusError> {
    match xs.read(&format!("{backend}/online")).await {
        Ok(v) => Ok(v == b"1"),
        Err(XsError::Enoent) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Wait until the device at `path` is offered (again): its backend in
/// `InitWait`, ready for a frontend's connect, whatever happens meanwhile
/// (our directory removed and created again by the toolstack on re-attach,
/// `backend` rewritten to a new path). Both frontends (netfront, blkfront)
/// call it after losing their backend.
///
/// A backend that is `Closed` but still `online` (the toolstack sets
/// `online` to 0 before it removes a device) waits for a new frontend: as
/// Linux's netback and blkback expect, we publish `Initialising` (when our
/// own state is `Closed`) and it goes back to `InitWait`. This is what a
/// backend restarted in its domain needs: dom0's xen-netback, rebound
/// through sysfs, may publish `Closed` after our disconnect (its state
/// change is deferred until the hotplug script reports), and without the
/// nudge both ends would wait for each other forever.
///
/// The watches are held by a [`WatchGuard`]: removed on every exit,
/// including the caller dropping this future. Unbounded if the device never
/// comes back: the caller bounds it with a timeout, or uses
/// [`wait_backend_ready_bounded`].
pub async fn wait_backend_ready<T: XsTransport>(
    xs: &mut XenStore<T>,
    path: &str,
) -> Result<(), XenbusError> {
    wait_backend_ready_bounded(xs, path, &mut Unbounded).await
}

/// [`wait_backend_ready`] that gives up with [`XenbusError::Stalled`] when
/// `bound` expires while the device exists and its backend is not ready
/// (each change of the backend's state counts as progress). While our
/// device directory is missing there is nothing to start over: that wait
/// is not bounded (and counts as progress).
pub async fn wait_backend_ready_bounded<T: XsTransport, B: WaitBound>(
    xs: &mut XenStore<T>,
    path: &str,
    bound: &mut B,
) -> Result<(), XenbusError> {
    let token = format!("xenbus-ready:{path}");
    let mut watches = WatchGuard::new(xs);
    let result = async {
        watches.add(path, &token).await?;
        let mut watched: Option<String> = None;
        let mut last = None;
        loop {
            match XenbusDevice::open(&mut watches, path).await {
                Ok(dev) => {
                    if watched.as_deref() != Some(dev.backend.as_str()) {
                        if let Some(old) = watched.take() {
                            let _ = watches.remove(&format!("{old}/state"), &token).await;
                        }
                        watches
                            .add(&format!("{}/state", dev.backend), &token)
                            .await?;
                        watched = Some(dev.backend.clone());
                    }
                    let state = dev.backend_state(&mut watches).await?;
                    if last != Some(state) {
                        last = Some(state);
                        bound.progress();
                    }
                    match state {
                        XenbusState::InitWait => return Ok(()),
                        XenbusState::Closed => ask_for_reconnect(&mut watches, &dev).await?,
                        _ => {}
                    }
                    next_event_or(&mut watches, &token, bound).await?;
                }
                // Not there (yet): wait for the toolstack.
                Err(XenbusError::Xs(XsError::Enoent)) => {
                    last = None;
                    bound.progress();
                    watches.next_watch_event_for(&token).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }
    .await;
    let _ = watches.close().await;
    result
}

/// The backend of `dev` is `Closed`: if it stays `online` and we are
/// `Closed` too, publish `Initialising` so that it goes back to `InitWait`
/// (only while our directory exists: never created again here).
async fn ask_for_reconnect<T: XsTransport>(
    xs: &mut XenStore<T>,
    dev: &XenbusDevice,
) -> Result<(), XenbusError> {
    if !backend_online(xs, &dev.backend).await? {
        return Ok(());
    }
    if dev.state(xs).await? == XenbusState::Closed {
        dev.set_state_if_present(xs, XenbusState::Initialising)
            .await?;
    }
    Ok(())
}

/// Longest prefix of a malformed xenstore value kept in an error.
pub const VALUE_PREFIX_MAX: usize = 16;

/// The start of a malformed xenstore value, for error messages (never the
/// whole value: another domain chooses its length).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ValuePrefix {
    bytes: [u8; VALUE_PREFIX_MAX],
    len: u8,
}

impl ValuePrefix {
    /// Keep the first [`VALUE_PREFIX_MAX`] bytes of `value`.
    pub fn new(value: &[u8]) -> Self {
        let len = value.len().min(VALUE_PREFIX_MAX);
        let mut bytes = [0; VALUE_PREFIX_MAX];
        if let (Some(dst), Some(src)) = (bytes.get_mut(..len), value.get(..len)) {
            dst.copy_from_slice(src);
        }
        Self {
            bytes,
            len: len as u8,
        }
    }

    /// The kept bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..usize::from(self.len)).unwrap_or(&[])
    }
}

impl core::fmt::Debug for ValuePrefix {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "\"{}\"", self.as_bytes().escape_ascii())
    }
}

/// A decimal `u32` as xenstore values hold them: digits only, no sign, no
/// spaces, no overflow.
pub fn parse_decimal_u32(value: &[u8]) -> Option<u32> {
    if value.is_empty() || value.len() > 10 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    core::str::from_utf8(value).ok()?.parse().ok()
}

#[cfg(test)]
mod value_tests {
    use super::*;

    #[test]
    fn decimal_values_are_strict() {
        assert_eq!(parse_decimal_u32(b"0"), Some(0));
        assert_eq!(parse_decimal_u32(b"4294967295"), Some(u32::MAX));
        for bad in [
            &b""[..],
            b"4294967296",
            b"-1",
            b" 1",
            b"1 ",
            b"0x10",
            b"12345678901",
        ] {
            assert_eq!(parse_decimal_u32(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn prefixes_are_bounded() {
        let p = ValuePrefix::new(&[b'a'; 100]);
        assert_eq!(p.as_bytes().len(), VALUE_PREFIX_MAX);
        assert_eq!(format!("{:?}", ValuePrefix::new(b"x\n")), "\"x\\n\"");
    }
}
