//! The device: xenbus handshake to `Connected`, then send and receive over
//! the two rings sharing one event channel, and an orderly disconnect that
//! gives back every grant the backend released.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::future::poll_fn;
use xen::abi::ring::RingIdx;
use xen::abi::{DomId, GrantRef, Port};
use xen::ring::ring_size;
use xen::shared_page::{PageMemory, PAGE_SIZE};
use xen::xenbus::{XenbusDevice, XenbusState};

use crate::config::{BackendFeatures, MacAddress};
use crate::env::NetEnv;
use crate::error::{NetfrontError, TxError};
use crate::packet::{GsoKind, RxPacket, TxOffload};
use crate::rx::RxQueue;
use crate::tx::{Buffer, TxQueue};
use xen::abi::netif::{NetifRxRequest, NetifRxResponse, NetifTxRequest, NetifTxResponse};

/// Choices made when connecting (the default suits smoltcp: no blank
/// checksums, no GSO on receive, rings from index 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectOptions {
    /// Accept packets with a blank checksum (else the backend fills it:
    /// `feature-no-csum-offload=1`).
    pub rx_csum_blank: bool,
    /// Accept GSO super-packets (`feature-gso-tcpv4`/`v6`).
    pub rx_gso: bool,
    /// Initial ring index (0 normally; tests start near `u32::MAX`).
    pub ring_start: RingIdx,
}

/// Grant-table work that could not be undone at disconnect (the backend
/// still maps the page): the reference is leaked rather than reused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DisconnectReport {
    /// Grants revoked.
    pub revoked: usize,
    /// Grants still in use by the backend, left in place.
    pub leaked: usize,
}

/// A connected network frontend.
pub struct Netfront<E: NetEnv> {
    env: E,
    device: XenbusDevice,
    mac: MacAddress,
    features: BackendFeatures,
    port: Port,
    tx_ring_ref: GrantRef,
    rx_ring_ref: GrantRef,
    tx: TxQueue<E::Page>,
    rx: RxQueue<E::Page>,
    broken: Option<NetfrontError>,
    released: bool,
    notifies: u64,
}

fn alloc_pool<E: NetEnv>(
    env: &mut E,
    backend: DomId,
    n: u32,
    readonly: bool,
    granted: &mut Vec<GrantRef>,
) -> Result<Vec<Buffer<E::Page>>, NetfrontError> {
    let mut bufs = Vec::new();
    for _ in 0..n {
        let page = env.alloc_page()?;
        let gref = env.grant_access(backend, page.frame(), readonly)?;
        granted.push(gref);
        bufs.push(Buffer { page, gref });
    }
    Ok(bufs)
}

impl<E: NetEnv> Netfront<E> {
    /// Connect the device at `path` (e.g. `device/vif/0`): read the MAC and
    /// the backend's features, share rings and buffers, publish our keys,
    /// and wait until the backend is `Connected`. On failure every grant
    /// made is revoked again.
    pub async fn connect(
        mut env: E,
        path: &str,
        options: ConnectOptions,
    ) -> Result<Self, (E, NetfrontError)> {
        let xs = env.xenstore();
        let device = match XenbusDevice::open(xs, path).await {
            Ok(d) => d,
            Err(e) => return Err((env, e.into())),
        };
        let setup = async {
            let xs = env.xenstore();
            let mac = MacAddress::parse(&xs.read(&format!("{path}/mac")).await?)?;
            let features = BackendFeatures::read(xs, &device.backend).await?;
            if !features.rx_copy {
                return Err(NetfrontError::NoRxCopy);
            }
            Ok((mac, features))
        };
        let (mac, features) = match setup.await {
            Ok(v) => v,
            Err(e) => return Err((env, e)),
        };
        let mut granted = Vec::new();
        let queues = Self::build_queues(&mut env, device.backend_id, options, &mut granted);
        let (tx, rx, tx_ring_ref, rx_ring_ref, port) = match queues {
            Ok(q) => q,
            Err(e) => {
                for gref in granted {
                    let _ = env.end_access(gref);
                }
                return Err((env, e));
            }
        };
        let mut front = Self {
            env,
            device,
            mac,
            features,
            port,
            tx_ring_ref,
            rx_ring_ref,
            tx,
            rx,
            broken: None,
            released: false,
            notifies: 0,
        };
        match front.handshake(options).await {
            Ok(()) => Ok(front),
            Err(e) => {
                front.release();
                Err((front.env, e))
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn build_queues(
        env: &mut E,
        backend: DomId,
        options: ConnectOptions,
        granted: &mut Vec<GrantRef>,
    ) -> Result<(TxQueue<E::Page>, RxQueue<E::Page>, GrantRef, GrantRef, Port), NetfrontError> {
        let tx_page = env.alloc_page()?;
        let tx_ring_ref = env.grant_access(backend, tx_page.frame(), false)?;
        granted.push(tx_ring_ref);
        let rx_page = env.alloc_page()?;
        let rx_ring_ref = env.grant_access(backend, rx_page.frame(), false)?;
        granted.push(rx_ring_ref);
        let tx_size = ring_size::<NetifTxRequest, NetifTxResponse>(PAGE_SIZE);
        let rx_size = ring_size::<NetifRxRequest, NetifRxResponse>(PAGE_SIZE);
        let tx_bufs = alloc_pool(env, backend, tx_size, true, granted)?;
        let rx_bufs = alloc_pool(env, backend, rx_size, false, granted)?;
        let port = env.alloc_unbound(backend)?;
        let tx = TxQueue::new(tx_page.into_front_ring(options.ring_start), tx_bufs);
        let rx = RxQueue::new(
            rx_page.into_front_ring(options.ring_start),
            rx_bufs,
            options.ring_start,
        );
        Ok((tx, rx, tx_ring_ref, rx_ring_ref, port))
    }

    async fn handshake(&mut self, options: ConnectOptions) -> Result<(), NetfrontError> {
        let xs = self.env.xenstore();
        self.device.set_state(xs, XenbusState::Initialising).await?;
        if self.device.backend_state(xs).await? != XenbusState::InitWait {
            self.device
                .wait_for_backend(xs, XenbusState::InitWait)
                .await?;
        }
        let flag = |b: bool| if b { "1" } else { "0" };
        let keys: [(&str, String); 10] = [
            ("tx-ring-ref", format!("{}", self.tx_ring_ref)),
            ("rx-ring-ref", format!("{}", self.rx_ring_ref)),
            ("event-channel", format!("{}", self.port)),
            ("request-rx-copy", String::from("1")),
            ("feature-rx-notify", String::from("1")),
            ("feature-sg", String::from("1")),
            ("feature-gso-tcpv4", String::from(flag(options.rx_gso))),
            ("feature-gso-tcpv6", String::from(flag(options.rx_gso))),
            (
                "feature-no-csum-offload",
                String::from(flag(!options.rx_csum_blank)),
            ),
            (
                "feature-ipv6-csum-offload",
                String::from(flag(options.rx_csum_blank)),
            ),
        ];
        for (key, value) in keys {
            xs.write(&format!("{}/{key}", self.device.path), value.as_bytes())
                .await?;
        }
        // Buffers are posted before we announce Connected, so the backend
        // has somewhere to put the first packet.
        self.rx.refill()?;
        self.device.set_state(xs, XenbusState::Connected).await?;
        self.device
            .wait_for_backend(xs, XenbusState::Connected)
            .await?;
        self.env.notify(self.port);
        self.notifies += 1;
        Ok(())
    }

    /// Our MAC address.
    pub fn mac(&self) -> MacAddress {
        self.mac
    }

    /// What the backend offers.
    pub fn features(&self) -> BackendFeatures {
        self.features
    }

    /// The device and backend paths.
    pub fn device(&self) -> &XenbusDevice {
        &self.device
    }

    /// The event channel port.
    pub fn port(&self) -> Port {
        self.port
    }

    /// The environment (for the kernel: its platform handle).
    pub fn env(&mut self) -> &mut E {
        &mut self.env
    }

    /// The error that stopped the device, if any.
    pub fn broken(&self) -> Option<NetfrontError> {
        self.broken
    }

    /// Events we sent to the backend.
    pub fn notifies(&self) -> u64 {
        self.notifies
    }

    /// TX counters and state.
    pub fn tx(&self) -> &TxQueue<E::Page> {
        &self.tx
    }

    /// RX counters and state.
    pub fn rx(&self) -> &RxQueue<E::Page> {
        &self.rx
    }

    fn check(&self) -> Result<(), NetfrontError> {
        match self.broken {
            Some(_) => Err(NetfrontError::Disconnected),
            None => Ok(()),
        }
    }

    fn fail(&mut self, e: NetfrontError) -> NetfrontError {
        self.broken.get_or_insert(e);
        e
    }

    /// Whether a packet of `len` bytes with `offload` could be queued now.
    pub fn can_send(&self, len: usize, offload: &TxOffload) -> bool {
        self.broken.is_none() && self.tx.can_send(len, offload)
    }

    /// Queue one packet (up to 64 KiB - 1 with backend scatter-gather).
    pub fn send(&mut self, packet: &[u8], offload: TxOffload) -> Result<(), TxError> {
        if self.broken.is_some() {
            return Err(TxError::Disconnected);
        }
        if let Some(gso) = offload.gso {
            let offered = match gso.kind {
                GsoKind::TcpV4 => self.features.gso_tcpv4,
                GsoKind::TcpV6 => self.features.gso_tcpv6,
            };
            if !offered || !self.features.sg || gso.mss == 0 {
                return Err(TxError::Unsupported);
            }
        }
        if self.tx.send(packet, &offload, self.features.sg)? {
            self.env.notify(self.port);
            self.notifies += 1;
        }
        Ok(())
    }

    /// Process every response on both rings and re-post RX buffers. An
    /// error is the backend's fault; the device is then stopped and should
    /// be [disconnected](Self::disconnect).
    pub fn poll(&mut self) -> Result<(), NetfrontError> {
        self.check()?;
        let result = self.poll_inner();
        result.map_err(|e| self.fail(e))
    }

    fn poll_inner(&mut self) -> Result<(), NetfrontError> {
        self.tx.collect()?;
        self.rx.collect()?;
        if self.rx.refill()? {
            self.env.notify(self.port);
            self.notifies += 1;
        }
        Ok(())
    }

    /// The next received packet.
    pub fn receive(&mut self) -> Option<RxPacket> {
        self.rx.pop()
    }

    /// Wait for the backend's next event.
    pub async fn wait(&mut self) {
        let port = self.port;
        poll_fn(|cx| self.env.poll_event(port, cx)).await
    }

    /// Check the backend is still there and `Connected`; if not, the device
    /// stops with [`NetfrontError::BackendGone`].
    pub async fn check_backend(&mut self) -> Result<(), NetfrontError> {
        self.check()?;
        let state = self.device.backend_state(self.env.xenstore()).await;
        match state {
            Ok(XenbusState::Connected) => Ok(()),
            Ok(s) => Err(self.fail(NetfrontError::BackendGone(s))),
            Err(e) => Err(self.fail(e.into())),
        }
    }

    fn release(&mut self) -> DisconnectReport {
        let mut report = DisconnectReport::default();
        if self.released {
            return report;
        }
        self.released = true;
        let grefs = [self.tx_ring_ref, self.rx_ring_ref]
            .into_iter()
            .chain(self.tx.bufs.iter().map(|b| b.gref))
            .chain(self.rx.bufs.iter().map(|b| b.gref));
        let grefs: Vec<GrantRef> = grefs.collect();
        for gref in grefs {
            match self.env.end_access(gref) {
                Ok(()) => report.revoked += 1,
                Err(_) => report.leaked += 1,
            }
        }
        self.env.close_port(self.port);
        report
    }

    /// Leave: publish `Closing` then `Closed` (best effort: the backend or
    /// xenstore may be gone), revoke every grant the backend no longer
    /// maps and close the event channel. The device is unusable afterwards.
    pub async fn disconnect(&mut self) -> DisconnectReport {
        self.broken.get_or_insert(NetfrontError::Disconnected);
        let xs = self.env.xenstore();
        let _ = self.device.set_state(xs, XenbusState::Closing).await;
        let _ = self.device.set_state(xs, XenbusState::Closed).await;
        self.release()
    }

    /// Give the environment back (after [`disconnect`](Self::disconnect),
    /// to reconnect).
    pub fn into_env(self) -> E {
        self.env
    }
}

impl<P: PageMemory> TxQueue<P> {
    /// Events-free free-slot count, for callers sizing bursts.
    pub fn free_slots(&self) -> u32 {
        self.ring.free_requests()
    }
}
