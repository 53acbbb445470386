//! The backend side of the xenbus handshake for one vif
//! (`backend/vif/<frontid>/<devid>` in our domain's xenstore area).
//!
//! The toolstack creates the directory (`frontend`, `frontend-id`,
//! `online`, `state`); we publish our features and `hotplug-status`
//! (no hotplug scripts run in a moat domain) and go `InitWait`; the
//! frontend publishes its rings and event channel and goes `Connected`;
//! we map, bind and go `Connected`. Teardown is [`Vif::close`].

use crate::config::{parse_u32, BackendOptions, FrontendConfig, ValuePrefix};
use crate::env::NetbackEnv;
use crate::error::NetbackError;
use crate::vif::Vif;
use alloc::format;
use alloc::string::String;
use xen::abi::DomId;
use xen::xenbus::{read_state, write_state, XenbusState};
use xen::xenstore::{WatchGuard, XenStore, XsError, XsTransport};

/// One vif's backend directory and its frontend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendDevice {
    /// Our directory, e.g. `/local/domain/5/backend/vif/7/0`.
    pub path: String,
    /// The frontend's directory (`frontend`).
    pub frontend: String,
    /// The frontend's domain (`frontend-id`).
    pub frontend_id: DomId,
}

/// Whether a connected vif should stay up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Both ends are `Connected`.
    Connected,
    /// The frontend left `Connected` (closing, closed, or its directory
    /// is gone: `Unknown`).
    FrontendLeft(XenbusState),
    /// The toolstack is detaching the vif (`online` 0 or our state
    /// `Closing`), or our directory is gone.
    Detached,
}

impl BackendDevice {
    /// Read the toolstack's keys in `path`.
    pub async fn open<T: XsTransport>(
        xs: &mut XenStore<T>,
        path: &str,
    ) -> Result<Self, NetbackError> {
        let frontend = xs.read(&format!("{path}/frontend")).await?;
        let frontend = match core::str::from_utf8(&frontend) {
            Ok(p) if p.starts_with('/') && p.len() > 1 && !p.ends_with('/') => String::from(p),
            _ => {
                return Err(NetbackError::BadValue {
                    key: String::from("frontend"),
                    value: ValuePrefix::new(&frontend),
                })
            }
        };
        let id = xs.read(&format!("{path}/frontend-id")).await?;
        let frontend_id =
            parse_u32(&id)
                .and_then(|n| DomId::try_from(n).ok())
                .ok_or(NetbackError::BadValue {
                    key: String::from("frontend-id"),
                    value: ValuePrefix::new(&id),
                })?;
        Ok(Self {
            path: String::from(path),
            frontend,
            frontend_id,
        })
    }

    /// The frontend's state (`Unknown` if its directory is gone).
    pub async fn frontend_state<T: XsTransport>(
        &self,
        xs: &mut XenStore<T>,
    ) -> Result<XenbusState, NetbackError> {
        Ok(read_state(xs, &self.frontend).await?)
    }

    /// Publish our features and `hotplug-status`, then go `InitWait`.
    pub async fn advertise<T: XsTransport>(
        &self,
        xs: &mut XenStore<T>,
        options: &BackendOptions,
    ) -> Result<(), NetbackError> {
        for (key, value) in options.feature_keys() {
            xs.write(&format!("{}/{key}", self.path), value.as_bytes())
                .await?;
        }
        xs.write(&format!("{}/hotplug-status", self.path), b"connected")
            .await?;
        Ok(write_state(xs, &self.path, XenbusState::InitWait).await?)
    }

    /// Whether the toolstack is taking the vif away.
    async fn detached<T: XsTransport>(&self, xs: &mut XenStore<T>) -> Result<bool, NetbackError> {
        match xs.read(&format!("{}/online", self.path)).await {
            Ok(v) if parse_u32(&v) == Some(0) => return Ok(true),
            Ok(_) => {}
            Err(XsError::Enoent) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(matches!(
            read_state(xs, &self.path).await?,
            XenbusState::Closing | XenbusState::Unknown
        ))
    }

    /// Whether a connected vif should stay up (call on watch events for
    /// the frontend's and our directory, or periodically).
    pub async fn health<T: XsTransport>(
        &self,
        xs: &mut XenStore<T>,
    ) -> Result<Health, NetbackError> {
        if self.detached(xs).await? {
            return Ok(Health::Detached);
        }
        match self.frontend_state(xs).await? {
            XenbusState::Connected => Ok(Health::Connected),
            s => Ok(Health::FrontendLeft(s)),
        }
    }

    /// Wait until the frontend is `Connected`. A frontend still `Closed`
    /// from an earlier connection may come back, so only its `Closing`
    /// (it is leaving) or the toolstack detaching us ends the wait early.
    ///
    /// The two watches are owned by a [`WatchGuard`]: they are removed on
    /// every exit, including this future being dropped mid-wait (a connect
    /// timeout), so a later attempt can watch the same nodes again.
    async fn wait_frontend<T: XsTransport>(
        &self,
        xs: &mut XenStore<T>,
    ) -> Result<(), NetbackError> {
        let token = format!("netback:{}", self.path);
        let mut watches = WatchGuard::new(xs);
        watches
            .add(&format!("{}/state", self.frontend), &token)
            .await?;
        watches.add(&format!("{}/state", self.path), &token).await?;
        let xs = watches.store();
        let result = async {
            loop {
                match self.frontend_state(xs).await? {
                    XenbusState::Connected => return Ok(()),
                    XenbusState::Closing => {
                        return Err(NetbackError::FrontendClosed(XenbusState::Closing))
                    }
                    _ => {}
                }
                if self.detached(xs).await? {
                    return Err(NetbackError::FrontendClosed(XenbusState::Closed));
                }
                xs.next_watch_event_for(&token).await?;
            }
        }
        .await;
        let _ = watches.close().await;
        result
    }
}

/// Serve the vif whose backend directory is `path`: advertise, wait for
/// the frontend, read and check its keys, map its rings, bind its event
/// channel(s) and go `Connected`. On failure, whatever was set up is
/// undone and we publish `Closed` (best effort).
pub async fn connect<E: NetbackEnv, T: XsTransport>(
    env: &mut E,
    xs: &mut XenStore<T>,
    path: &str,
    options: &BackendOptions,
) -> Result<Vif<E>, NetbackError> {
    let device = BackendDevice::open(xs, path).await?;
    let result = async {
        device.advertise(xs, options).await?;
        device.wait_frontend(xs).await?;
        let front = FrontendConfig::read(xs, &device.frontend, options).await?;
        let vif = Vif::new(env, device.clone(), front, *options)?;
        match write_state(xs, &device.path, XenbusState::Connected).await {
            Ok(()) => Ok(vif),
            Err(e) => {
                vif.release(env);
                Err(e.into())
            }
        }
    }
    .await;
    if result.is_err() {
        let _ = write_state(xs, &device.path, XenbusState::Closed).await;
    }
    result
}
