//! The backend side of the xenbus handshake for one vif
//! (`backend/vif/<frontid>/<devid>` in our domain's xenstore area).
//!
//! The toolstack creates the directory (`frontend`, `frontend-id`,
//! `online`, `state`); we publish our features and `hotplug-status`
//! (no hotplug scripts run in a moat domain) and go `InitWait`; the
//! frontend publishes its rings and event channel and goes `Connected`;
//! we map, bind and go `Connected`. [`connect`] waits for all that;
//! [`Offer`] does it a step at a time, for a driver domain that serves
//! many vifs from one loop. Teardown is [`Vif::close`]; once the
//! toolstack is done with the vif, [`BackendDevice::remove`].

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

    /// Whether the toolstack is taking the vif away (`online` 0, or our
    /// state `Closing` or gone): do not offer it again.
    pub async fn detached<T: XsTransport>(
        &self,
        xs: &mut XenStore<T>,
    ) -> Result<bool, NetbackError> {
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

    /// Whether the toolstack is done with the vif and waits for us to
    /// remove our directory ([`BackendDevice::remove`]): `online` is 0 and
    /// either our state is `Closed` (we let go of the vif) or the
    /// frontend's directory is gone.
    ///
    /// This is the order libxl keeps for a driver-domain backend (4.17's
    /// `libxl_device.c`): on a remove it writes `online` 0 and `Closing`,
    /// waits for our `Closed`, then waits up to 10 s for our directory to
    /// go, and only then removes the frontend's; `xl devd` in a Linux
    /// driver domain removes the backend directory at `Closed` with
    /// `online` 0. Waiting for the frontend's directory instead made each
    /// side wait for the other (`xl network-detach` timed out). `xl
    /// destroy` removes the frontend's directory first; that counts too.
    /// A vif whose frontend merely left (`online` still 1) is not finished:
    /// the frontend may come back.
    pub async fn finished<T: XsTransport>(
        &self,
        xs: &mut XenStore<T>,
    ) -> Result<bool, NetbackError> {
        let online = match xs.read(&format!("{}/online", self.path)).await {
            Ok(v) => parse_u32(&v) != Some(0),
            Err(XsError::Enoent) => false,
            Err(e) => return Err(e.into()),
        };
        if online {
            return Ok(false);
        }
        if read_state(xs, &self.path).await? == XenbusState::Closed {
            return Ok(true);
        }
        // Once the frontend's domain is gone its directory's nearest
        // ancestor is one we may not read: xenstored answers EACCES, not
        // ENOENT (the frontend's directory itself was readable to us).
        match xs.directory(&self.frontend).await {
            Ok(_) => Ok(false),
            Err(XsError::Enoent | XsError::Eacces) => Ok(true),
            Err(e) => Err(e.into()),
        }
    }

    /// Remove our directory (once [`finished`](Self::finished)). Not in
    /// the same breath as publishing `Closed`: libxl reads that state when
    /// its watch fires, and fails the removal if the node is already gone;
    /// it then gives us 10 s (netvm waits a second).
    pub async fn remove<T: XsTransport>(&self, xs: &mut XenStore<T>) -> Result<(), NetbackError> {
        match xs.rm(&self.path).await {
            Ok(()) | Err(XsError::Enoent) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// A vif offered to its frontend: our features are published and we are
/// `InitWait`. [`Offer::advance`] looks at the frontend once and never
/// waits, so a driver domain serving many vifs is not held up by a
/// frontend that is slow (a Linux guest still booting) or that never
/// connects (a hostile one).
#[derive(Debug)]
pub struct Offer {
    device: BackendDevice,
    options: BackendOptions,
}

impl Offer {
    /// Read the toolstack's keys in `path`, publish our features and go
    /// `InitWait`. On failure we publish `Closed` (best effort).
    pub async fn start<T: XsTransport>(
        xs: &mut XenStore<T>,
        path: &str,
        options: &BackendOptions,
    ) -> Result<Self, NetbackError> {
        let device = BackendDevice::open(xs, path).await?;
        if let Err(e) = device.advertise(xs, options).await {
            let _ = write_state(xs, &device.path, XenbusState::Closed).await;
            return Err(e);
        }
        Ok(Self {
            device,
            options: *options,
        })
    }

    /// The vif's directories.
    pub fn device(&self) -> &BackendDevice {
        &self.device
    }

    /// Look at the frontend once. `Ok(Some(vif))`: it was `Connected`,
    /// its keys were valid, its rings are mapped, its event channel(s)
    /// bound and we are `Connected`. `Ok(None)`: not yet (a frontend still
    /// `Closed` from an earlier connection may come back). An error: the
    /// frontend is `Closing`, the toolstack is detaching the vif, or a key
    /// or grant was bad; we published `Closed` and the offer is spent.
    pub async fn advance<E: NetbackEnv, T: XsTransport>(
        &self,
        env: &mut E,
        xs: &mut XenStore<T>,
    ) -> Result<Option<Vif<E>>, NetbackError> {
        let device = &self.device;
        let result = async {
            if device.detached(xs).await? {
                return Err(NetbackError::FrontendClosed(XenbusState::Closed));
            }
            match device.frontend_state(xs).await? {
                XenbusState::Connected => {}
                XenbusState::Closing => {
                    return Err(NetbackError::FrontendClosed(XenbusState::Closing))
                }
                _ => return Ok(None),
            }
            let front = FrontendConfig::read(xs, &device.frontend, &self.options).await?;
            let vif = Vif::new(env, device.clone(), front, self.options)?;
            match write_state(xs, &device.path, XenbusState::Connected).await {
                Ok(()) => Ok(Some(vif)),
                Err(e) => {
                    vif.release(env);
                    Err(e.into())
                }
            }
        }
        .await;
        if result.is_err() {
            self.withdraw(xs).await;
        }
        result
    }

    /// Publish `Closed` (best effort), unless our directory is gone: a
    /// write would create it again, owned by us, for nobody.
    pub async fn withdraw<T: XsTransport>(&self, xs: &mut XenStore<T>) {
        if xs.directory(&self.device.path).await.is_ok() {
            let _ = write_state(xs, &self.device.path, XenbusState::Closed).await;
        }
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
    let offer = Offer::start(xs, path, options).await?;
    // The watches are owned by a guard: removed on every exit, including
    // this future being dropped mid-wait (a caller's timeout), so a later
    // attempt can watch the same nodes again.
    let token = format!("netback:{path}");
    let mut watches = WatchGuard::new(xs);
    let result = async {
        watches
            .add(&format!("{}/state", offer.device.frontend), &token)
            .await?;
        watches
            .add(&format!("{}/state", offer.device.path), &token)
            .await?;
        let xs = watches.store();
        loop {
            if let Some(vif) = offer.advance(env, xs).await? {
                return Ok(vif);
            }
            xs.next_watch_event_for(&token).await?;
        }
    }
    .await;
    let _ = watches.close().await;
    if result.is_err() {
        // (`advance` already did on its own errors; a watch error lands here)
        offer.withdraw(xs).await;
    }
    result
}
