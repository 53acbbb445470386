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
/// checksums, no GSO on receive, one queue, rings from index 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectOptions {
    /// Accept packets with a blank checksum (else the backend fills it:
    /// `feature-no-csum-offload=1`).
    pub rx_csum_blank: bool,
    /// Accept GSO super-packets (`feature-gso-tcpv4`/`v6`).
    pub rx_gso: bool,
    /// Initial ring index (0 normally; tests start near `u32::MAX`).
    pub ring_start: RingIdx,
    /// Most queues wanted (0 and 1 mean one); the backend's
    /// `multi-queue-max-queues` caps it.
    pub max_queues: u32,
}

/// Most queues we ever set up (each costs two rings and 512 pages).
pub const MAX_QUEUES: u32 = 8;

/// Grant-table work that could not be undone at disconnect (the backend
/// still maps the page): the reference is leaked rather than reused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DisconnectReport {
    /// Grants revoked.
    pub revoked: usize,
    /// Grants still in use by the backend, left in place.
    pub leaked: usize,
}

/// One queue: a TX and an RX ring with their pools and event channel.
pub struct Queue<P: PageMemory> {
    /// The TX ring.
    pub tx: TxQueue<P>,
    /// The RX ring.
    pub rx: RxQueue<P>,
    /// Its event channel.
    pub port: Port,
    tx_ring_ref: GrantRef,
    rx_ring_ref: GrantRef,
}

/// A connected network frontend.
pub struct Netfront<E: NetEnv> {
    env: E,
    device: XenbusDevice,
    mac: MacAddress,
    features: BackendFeatures,
    queues: Vec<Queue<E::Page>>,
    next_rx_queue: usize,
    broken: Option<NetfrontError>,
    released: bool,
    notifies: u64,
    options: ConnectOptions,
    bad_checksums: u64,
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

/// A queue for `packet`: a hash of its IPv4/IPv6 addresses and TCP/UDP
/// ports, so one flow stays on one queue (and in order); queue 0 for
/// anything else.
pub fn flow_queue(packet: &[u8], queues: usize) -> usize {
    if queues <= 1 {
        return 0;
    }
    let ethertype = packet.get(12..14);
    let key = match ethertype {
        Some([0x08, 0x00]) => {
            let ihl = packet.get(14).map_or(0, |b| usize::from(b & 0x0f) * 4);
            let proto = packet.get(23).copied();
            let ports = match proto {
                Some(6) | Some(17) => packet.get(14 + ihl..14 + ihl + 4),
                _ => None,
            };
            (packet.get(26..34), ports)
        }
        Some([0x86, 0xdd]) => {
            let ports = match packet.get(20).copied() {
                Some(6) | Some(17) => packet.get(54..58),
                _ => None,
            };
            (packet.get(22..54), ports)
        }
        _ => (None, None),
    };
    let (Some(addrs), ports) = key else {
        return 0;
    };
    // FNV-1a over the flow key; symmetric order does not matter for TX.
    let mut h: u32 = 0x811c_9dc5;
    for b in addrs.iter().chain(ports.unwrap_or(&[])) {
        h = (h ^ u32::from(*b)).wrapping_mul(0x0100_0193);
    }
    h as usize % queues
}

impl<E: NetEnv> Netfront<E> {
    /// Connect the device at `path` (e.g. `device/vif/0`): read the MAC and
    /// the backend's features, share rings and buffers, publish our keys,
    /// and wait until the backend is `Connected`. On failure every grant
    /// made is revoked again and the environment handed back.
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
        let n = options
            .max_queues
            .min(features.max_queues)
            .clamp(1, MAX_QUEUES);
        let mut granted = Vec::new();
        let mut ports = Vec::new();
        let mut queues = Vec::new();
        for _ in 0..n {
            match Self::build_queue(
                &mut env,
                device.backend_id,
                options,
                &mut granted,
                &mut ports,
            ) {
                Ok(q) => queues.push(q),
                Err(e) => {
                    for gref in granted {
                        let _ = env.end_access(gref);
                    }
                    for port in ports {
                        env.close_port(port);
                    }
                    return Err((env, e));
                }
            }
        }
        let mut front = Self {
            env,
            device,
            mac,
            features,
            queues,
            next_rx_queue: 0,
            broken: None,
            released: false,
            notifies: 0,
            options,
            bad_checksums: 0,
        };
        match front.handshake(options).await {
            Ok(()) => Ok(front),
            Err(e) => {
                front.release();
                Err((front.env, e))
            }
        }
    }

    fn build_queue(
        env: &mut E,
        backend: DomId,
        options: ConnectOptions,
        granted: &mut Vec<GrantRef>,
        ports: &mut Vec<Port>,
    ) -> Result<Queue<E::Page>, NetfrontError> {
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
        ports.push(port);
        Ok(Queue {
            tx: TxQueue::new(tx_page.into_front_ring(options.ring_start), tx_bufs),
            rx: RxQueue::new(
                rx_page.into_front_ring(options.ring_start),
                rx_bufs,
                options.ring_start,
            ),
            port,
            tx_ring_ref,
            rx_ring_ref,
        })
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
        let mut keys: Vec<(String, String)> = Vec::new();
        let multi = self.queues.len() > 1;
        if multi {
            keys.push((
                String::from("multi-queue-num-queues"),
                format!("{}", self.queues.len()),
            ));
        }
        for (i, q) in self.queues.iter().enumerate() {
            // One queue: keys at the top (what every backend understands);
            // several: under `queue-N/`.
            let dir = if multi {
                format!("queue-{i}/")
            } else {
                String::new()
            };
            keys.push((format!("{dir}tx-ring-ref"), format!("{}", q.tx_ring_ref)));
            keys.push((format!("{dir}rx-ring-ref"), format!("{}", q.rx_ring_ref)));
            keys.push((format!("{dir}event-channel"), format!("{}", q.port)));
        }
        for (key, value) in [
            ("request-rx-copy", "1"),
            ("feature-rx-notify", "1"),
            ("feature-sg", "1"),
            ("feature-gso-tcpv4", flag(options.rx_gso)),
            ("feature-gso-tcpv6", flag(options.rx_gso)),
            ("feature-no-csum-offload", flag(!options.rx_csum_blank)),
            ("feature-ipv6-csum-offload", flag(options.rx_csum_blank)),
        ] {
            keys.push((String::from(key), String::from(value)));
        }
        for (key, value) in keys {
            xs.write(&format!("{}/{key}", self.device.path), value.as_bytes())
                .await?;
        }
        // Buffers are posted before we announce Connected, so the backend
        // has somewhere to put the first packet.
        for q in &mut self.queues {
            q.rx.refill()?;
        }
        self.device.set_state(xs, XenbusState::Connected).await?;
        self.device
            .wait_for_backend(xs, XenbusState::Connected)
            .await?;
        for q in &self.queues {
            self.env.notify(q.port);
            self.notifies += 1;
        }
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

    /// The queues (at least one).
    pub fn queues(&self) -> &[Queue<E::Page>] {
        &self.queues
    }

    fn first(&self) -> &Queue<E::Page> {
        // `connect` builds at least one queue (`clamp(1, ..)`), and the
        // list never shrinks.
        &self.queues[0]
    }

    /// The event channel port of queue 0.
    pub fn port(&self) -> Port {
        self.first().port
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

    /// Queue 0's TX counters and state.
    pub fn tx(&self) -> &TxQueue<E::Page> {
        &self.first().tx
    }

    /// Queue 0's RX counters and state.
    pub fn rx(&self) -> &RxQueue<E::Page> {
        &self.first().rx
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

    /// Whether a packet of `len` bytes with `offload` could be queued now
    /// on every queue (so whichever its flow picks).
    pub fn can_send(&self, len: usize, offload: &TxOffload) -> bool {
        self.broken.is_none() && self.queues.iter().all(|q| q.tx.can_send(len, offload))
    }

    /// Queue one packet (up to 64 KiB - 1 with backend scatter-gather) on
    /// the queue of its flow.
    pub fn send(&mut self, packet: &[u8], offload: TxOffload) -> Result<(), TxError> {
        let q = flow_queue(packet, self.queues.len());
        self.send_on(q, packet, offload)
    }

    /// Queue one packet on queue `queue`.
    pub fn send_on(
        &mut self,
        queue: usize,
        packet: &[u8],
        offload: TxOffload,
    ) -> Result<(), TxError> {
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
        let sg = self.features.sg;
        let q = self.queues.get_mut(queue).ok_or(TxError::Unsupported)?;
        if q.tx.send(packet, &offload, sg)? {
            let port = q.port;
            self.env.notify(port);
            self.notifies += 1;
        }
        Ok(())
    }

    /// Process every response on every ring and re-post RX buffers. An
    /// error is the backend's fault; the device is then stopped and should
    /// be [disconnected](Self::disconnect).
    pub fn poll(&mut self) -> Result<(), NetfrontError> {
        self.check()?;
        let result = self.poll_inner();
        result.map_err(|e| self.fail(e))
    }

    fn poll_inner(&mut self) -> Result<(), NetfrontError> {
        for q in &mut self.queues {
            q.tx.collect()?;
            q.rx.collect()?;
            if q.rx.refill()? {
                self.env.notify(q.port);
                self.notifies += 1;
            }
        }
        Ok(())
    }

    /// The options this device was connected with.
    pub fn options(&self) -> ConnectOptions {
        self.options
    }

    /// Packets the smoltcp device dropped for a bad checksum (only counted
    /// when connected with `rx_csum_blank`: then the device, not smoltcp,
    /// verifies what the backend did not).
    pub fn bad_checksums(&self) -> u64 {
        self.bad_checksums
    }

    pub(crate) fn count_bad_checksum(&mut self) {
        self.bad_checksums += 1;
    }

    /// The next received packet (queues taken in turn).
    pub fn receive(&mut self) -> Option<RxPacket> {
        let n = self.queues.len();
        for _ in 0..n {
            let i = self.next_rx_queue % n;
            self.next_rx_queue = (i + 1) % n;
            if let Some(p) = self.queues.get_mut(i).and_then(|q| q.rx.pop()) {
                return Some(p);
            }
        }
        None
    }

    /// Wait for the backend's next event on any queue.
    pub async fn wait(&mut self) {
        let ports: Vec<Port> = self.queues.iter().map(|q| q.port).collect();
        poll_fn(|cx| {
            let mut ready = false;
            for port in &ports {
                // Poll every port (not just up to the first ready one) so
                // each pending bit is consumed or a waker registered.
                ready |= self.env.poll_event(*port, cx).is_ready();
            }
            if ready {
                core::task::Poll::Ready(())
            } else {
                core::task::Poll::Pending
            }
        })
        .await
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
        let mut grefs = Vec::new();
        let mut ports = Vec::new();
        for q in &self.queues {
            grefs.push(q.tx_ring_ref);
            grefs.push(q.rx_ring_ref);
            grefs.extend(q.tx.bufs.iter().map(|b| b.gref));
            grefs.extend(q.rx.bufs.iter().map(|b| b.gref));
            ports.push(q.port);
        }
        for gref in grefs {
            match self.env.end_access(gref) {
                Ok(()) => report.revoked += 1,
                Err(_) => report.leaked += 1,
            }
        }
        for port in ports {
            self.env.close_port(port);
        }
        report
    }

    /// Leave: publish `Closing` then `Closed` (best effort: the backend or
    /// xenstore may be gone), revoke every grant the backend no longer
    /// maps and close the event channels. The device is unusable afterwards.
    pub async fn disconnect(&mut self) -> DisconnectReport {
        self.broken.get_or_insert(NetfrontError::Disconnected);
        let xs = self.env.xenstore();
        let _ = self.device.set_state(xs, XenbusState::Closing).await;
        let _ = self.device.set_state(xs, XenbusState::Closed).await;
        self.release()
    }

    /// After the backend went away (`xl network-detach`/`attach`, a
    /// netback restart): disconnect, wait until the backend is back in
    /// `InitWait` (through `Closed`, `Unknown` or a missing directory), and
    /// connect again with `options`.
    pub async fn reconnect(mut self, options: ConnectOptions) -> Result<Self, (E, NetfrontError)> {
        self.disconnect().await;
        let path = self.device.path.clone();
        let mut env = self.env;
        if let Err(e) = wait_backend_ready(&mut env, &path).await {
            return Err((env, e));
        }
        Self::connect(env, &path, options).await
    }

    /// Give the environment back (after [`disconnect`](Self::disconnect),
    /// to reconnect).
    pub fn into_env(self) -> E {
        self.env
    }
}

/// Wait until the backend of the device at `path` is in `InitWait`, ready
/// for a (re)connection, whatever it goes through meanwhile (see
/// [`xen::xenbus::wait_backend_ready`]: a re-attached vif's new backend
/// path is followed, and a `Closed` but still online backend, e.g. dom0's
/// netback rebound, is asked to prepare for a reconnection).
pub async fn wait_backend_ready<E: NetEnv>(env: &mut E, path: &str) -> Result<(), NetfrontError> {
    Ok(xen::xenbus::wait_backend_ready(env.xenstore(), path).await?)
}
