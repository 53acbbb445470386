//! The device: xenbus handshake to `Connected`, then send and receive over
//! the two rings sharing one event channel, and an orderly disconnect that
//! gives back every grant the backend released.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::future::{poll_fn, Future};
use core::pin::Pin;
use core::task::{Context, Poll};
use xen::abi::ring::RingIdx;
use xen::abi::{DomId, GrantRef, Port};
use xen::ring::ring_size;
use xen::shared_page::{PageMemory, PAGE_SIZE};
use xen::xenbus::{Unbounded, WaitBound, XenbusDevice, XenbusError, XenbusState};
use xen::xenstore::XsError;

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
/// still maps the page). Such a grant stays; when the device is dropped
/// (or [`Netfront::into_env`] gives the environment back) its page goes to
/// the environment's deferred list and is freed once the backend unmapped
/// it (docs/drivers.md, "Grant ownership"): never reused while mapped,
/// never leaked for good.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DisconnectReport {
    /// Grants revoked.
    pub revoked: usize,
    /// Grants still in use by the backend, left in place (their pages are
    /// deferred, not freed, when the device goes).
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

impl<P: PageMemory> Queue<P> {
    /// Every grant of this queue: its two rings and its buffers.
    fn grants(&self) -> impl Iterator<Item = GrantRef> + '_ {
        [self.tx_ring_ref, self.rx_ring_ref]
            .into_iter()
            .chain(self.tx.bufs.iter().map(|b| b.gref))
            .chain(self.rx.bufs.iter().map(|b| b.gref))
    }
}

/// How long a [bounded reconnection](Netfront::reconnect_bounded) may go
/// without progress (a change of the backend's state, a step of ours)
/// before it starts over: 10 s.
pub const RECONNECT_STALL_NS: u64 = 10_000_000_000;

/// A clock and timer, to bound a reconnection (the kernel's executor
/// handle, through [`FnClock`]).
pub trait Clock {
    /// The timer's future.
    type Sleep: Future<Output = ()>;
    /// Nanoseconds since a fixed start.
    fn now_ns(&self) -> u64;
    /// A future ready once [`now_ns`](Self::now_ns) reached `deadline_ns`.
    fn sleep_until(&self, deadline_ns: u64) -> Self::Sleep;
}

/// A [`Clock`] made of two closures: `now` and `sleep` (for instance over
/// clones of the kernel's executor handle).
pub struct FnClock<N, S> {
    /// The time now, in nanoseconds.
    pub now: N,
    /// A future ready at the given time.
    pub sleep: S,
}

impl<N, S, F> Clock for FnClock<N, S>
where
    N: Fn() -> u64,
    S: Fn(u64) -> F,
    F: Future<Output = ()>,
{
    type Sleep = F;
    fn now_ns(&self) -> u64 {
        (self.now)()
    }
    fn sleep_until(&self, deadline_ns: u64) -> F {
        (self.sleep)(deadline_ns)
    }
}

/// What the last reconnection took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReconnectStats {
    /// Attempts, the successful one included (0: never reconnected).
    pub attempts: u32,
    /// Attempts given up for lack of progress.
    pub stalled: u32,
    /// Why the last failed attempt ended.
    pub last_error: Option<NetfrontError>,
}

/// A [`WaitBound`] over a [`Clock`]: expires `stall_ns` after the last
/// progress (armed at the first poll after it).
struct StallBound<C: Clock> {
    clock: C,
    stall_ns: u64,
    sleep: Option<Pin<Box<C::Sleep>>>,
}

impl<C: Clock> WaitBound for StallBound<C> {
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let clock = &self.clock;
        let stall = self.stall_ns;
        let sleep = self.sleep.get_or_insert_with(|| {
            Box::pin(clock.sleep_until(clock.now_ns().saturating_add(stall)))
        });
        let expired = sleep.as_mut().poll(cx);
        if expired.is_ready() {
            self.sleep = None;
        }
        expired
    }

    fn progress(&mut self) {
        self.sleep = None;
    }
}

/// Whether a failed reconnection attempt may be started over: the backend
/// closed or went quiet, our directory or a key vanished meanwhile, a
/// transaction kept conflicting. Anything else (the xenstore connection
/// broken, no memory, a malformed value) ends the reconnection.
pub fn worth_retrying(e: &NetfrontError) -> bool {
    matches!(
        e,
        NetfrontError::Xenbus(
            XenbusError::BackendClosed(_)
                | XenbusError::Stalled
                | XenbusError::Xs(XsError::Enoent | XsError::Eagain | XsError::RetriesExhausted)
        )
    )
}

/// The device's environment, until [`Netfront::into_env`] or an error
/// return hands it back (only then is it empty, and the device is gone
/// with it: nothing reaches an empty slot).
struct EnvSlot<E>(Option<E>);

impl<E> EnvSlot<E> {
    fn take(&mut self) -> E {
        match self.0.take() {
            Some(env) => env,
            None => unreachable!("netfront: environment taken twice"),
        }
    }
}

impl<E> core::ops::Deref for EnvSlot<E> {
    type Target = E;
    fn deref(&self) -> &E {
        match &self.0 {
            Some(env) => env,
            None => unreachable!("netfront: environment used after it was handed back"),
        }
    }
}

impl<E> core::ops::DerefMut for EnvSlot<E> {
    fn deref_mut(&mut self) -> &mut E {
        match &mut self.0 {
            Some(env) => env,
            None => unreachable!("netfront: environment used after it was handed back"),
        }
    }
}

/// A connected network frontend.
///
/// Dropping it (a cancelled `connect` or task, a device never
/// disconnected) ends every grant the backend does not map and closes the
/// event channels, as [`disconnect`](Self::disconnect) does without
/// telling the backend; the pages of grants it still maps are deferred by
/// the environment's page type (docs/drivers.md, "Grant ownership").
pub struct Netfront<E: NetEnv> {
    env: EnvSlot<E>,
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
    reconnect_stats: ReconnectStats,
    /// Grants the backend still mapped when we released them.
    still_mapped: Vec<GrantRef>,
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
        env: E,
        path: &str,
        options: ConnectOptions,
    ) -> Result<Self, (E, NetfrontError)> {
        Self::connect_inner(env, path, options, &mut Unbounded, false).await
    }

    /// [`connect`](Self::connect); with `again` (a reconnection) the
    /// backend may pass through `Closing`/`Closed` while it stays online
    /// (it is catching up with our earlier `Closed`), and `bound` ends a
    /// wait that makes no progress.
    async fn connect_inner<B: WaitBound>(
        mut env: E,
        path: &str,
        options: ConnectOptions,
        bound: &mut B,
        again: bool,
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
        let mut queues = Vec::new();
        for i in 0..n {
            let mut granted = Vec::new();
            let mut ports = Vec::new();
            match Self::build_queue(
                &mut env,
                device.backend_id,
                options,
                &mut granted,
                &mut ports,
            ) {
                Ok(q) => queues.push(q),
                Err(e) => {
                    // The queue's pages are dropped already (the page type
                    // ends their grants, or defers a page the backend
                    // maps): this only ends what is left.
                    for gref in granted {
                        let _ = env.end_access(gref);
                    }
                    for port in ports {
                        env.close_port(port);
                    }
                    // Fewer queues than asked for when the grant table or
                    // memory runs out (each queue takes 514 grants).
                    if i > 0 && matches!(e, NetfrontError::Grant(_) | NetfrontError::Env(_)) {
                        log::info!(
                            "netfront: {path}: {i} of {n} queues ({e}): connecting with {i}"
                        );
                        break;
                    }
                    for q in queues.drain(..) {
                        Self::end_queue(&mut env, q);
                    }
                    return Err((env, e));
                }
            }
        }
        let mut front = Self {
            env: EnvSlot(Some(env)),
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
            reconnect_stats: ReconnectStats::default(),
            still_mapped: Vec::new(),
        };
        match front.handshake(options, bound, again).await {
            Ok(()) => Ok(front),
            Err(e) => {
                if again {
                    // Closed before the grants go: a backend must not
                    // read our Connected and map rings being revoked.
                    let path = front.device.path.clone();
                    let _ = xen::xenbus::write_state_if_present(
                        front.env.xenstore(),
                        &path,
                        XenbusState::Closed,
                    )
                    .await;
                }
                front.release();
                Err((front.env.take(), e))
            }
        }
    }

    /// End a queue's grants and close its port (the pages go with `q`;
    /// one the backend still maps is deferred by the page type).
    fn end_queue(env: &mut E, q: Queue<E::Page>) {
        for gref in q.grants() {
            let _ = env.end_access(gref);
        }
        env.close_port(q.port);
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

    async fn handshake<B: WaitBound>(
        &mut self,
        options: ConnectOptions,
        bound: &mut B,
        again: bool,
    ) -> Result<(), NetfrontError> {
        self.publish(XenbusState::Initialising).await?;
        let xs = self.env.xenstore();
        if again {
            self.device
                .wait_for_backend_online(xs, XenbusState::InitWait, bound)
                .await?;
        } else if self.device.backend_state(xs).await? != XenbusState::InitWait {
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
        // All keys in one transaction, and only into our directory as it
        // still is (`ENOENT` if the toolstack removed it meanwhile).
        let path = self.device.path.clone();
        let xs = self.env.xenstore();
        xs.transaction(async |tx| {
            tx.read(&format!("{path}/state")).await?;
            for (key, value) in &keys {
                tx.write(&format!("{path}/{key}"), value.as_bytes()).await?;
            }
            Ok(())
        })
        .await?;
        // Buffers are posted before we announce Connected, so the backend
        // has somewhere to put the first packet.
        for q in &mut self.queues {
            q.rx.refill()?;
        }
        self.publish(XenbusState::Connected).await?;
        let xs = self.env.xenstore();
        if again {
            self.device
                .wait_for_backend_online(xs, XenbusState::Connected, bound)
                .await?;
        } else {
            self.device
                .wait_for_backend(xs, XenbusState::Connected)
                .await?;
        }
        for q in &self.queues {
            self.env.notify(q.port);
            self.notifies += 1;
        }
        Ok(())
    }

    /// Publish our state during the handshake: only into our directory
    /// (`ENOENT` if the toolstack removed it).
    async fn publish(&mut self, state: XenbusState) -> Result<(), NetfrontError> {
        let xs = self.env.xenstore();
        if self.device.set_state_if_present(xs, state).await? {
            Ok(())
        } else {
            Err(XsError::Enoent.into())
        }
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
    /// the queue of its flow, and publish it at once (notifying the
    /// backend if it waits for one). To send several, [`queue`](Self::queue)
    /// them and [`flush`](Self::flush) once.
    pub fn send(&mut self, packet: &[u8], offload: TxOffload) -> Result<(), TxError> {
        let q = flow_queue(packet, self.queues.len());
        self.send_on(q, packet, offload)
    }

    /// Queue one packet on queue `queue` and publish that queue's requests.
    pub fn send_on(
        &mut self,
        queue: usize,
        packet: &[u8],
        offload: TxOffload,
    ) -> Result<(), TxError> {
        self.queue_on(queue, packet, offload)?;
        self.flush_queue(queue);
        Ok(())
    }

    /// Queue one packet on the queue of its flow without publishing it:
    /// the backend sees it at the next [`flush`](Self::flush). A round of
    /// packets queued then flushed once costs at most one event per queue
    /// (none if the backend is still busy with earlier ones), where a
    /// [`send`](Self::send) each may cost one per packet when the backend
    /// keeps catching up between them.
    pub fn queue(&mut self, packet: &[u8], offload: TxOffload) -> Result<(), TxError> {
        let q = flow_queue(packet, self.queues.len());
        self.queue_on(q, packet, offload)
    }

    /// Queue one packet on queue `queue` without publishing it.
    pub fn queue_on(
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
        q.tx.queue(packet, &offload, sg)
    }

    /// Publish what was [queued](Self::queue) on every queue, notifying
    /// the backend of a queue only where netif.h's
    /// `RING_PUSH_REQUESTS_AND_CHECK_NOTIFY` says so (it asked for an event
    /// at one of the requests just published).
    pub fn flush(&mut self) {
        for i in 0..self.queues.len() {
            self.flush_queue(i);
        }
    }

    fn flush_queue(&mut self, queue: usize) {
        let Some(q) = self.queues.get_mut(queue) else {
            return;
        };
        if q.tx.flush() {
            let port = q.port;
            self.env.notify(port);
            self.notifies += 1;
        }
    }

    /// Requests queued on every queue but not published yet.
    pub fn unpushed(&self) -> u32 {
        self.queues.iter().map(|q| q.tx.unpushed()).sum()
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
            grefs.extend(q.grants());
            ports.push(q.port);
        }
        for gref in grefs {
            match self.env.end_access(gref) {
                Ok(()) => report.revoked += 1,
                Err(_) => {
                    report.leaked += 1;
                    self.still_mapped.push(gref);
                }
            }
        }
        for port in ports {
            self.env.close_port(port);
        }
        report
    }

    /// Leave: publish `Closing` then `Closed` (best effort: the backend or
    /// xenstore may be gone; and only while our directory exists: once the
    /// toolstack removed it, at the end of `xl network-detach`, a write
    /// would create it again, owned by us, for nobody), revoke every grant
    /// the backend no longer maps and close the event channels. The device
    /// is unusable afterwards.
    pub async fn disconnect(&mut self) -> DisconnectReport {
        self.broken.get_or_insert(NetfrontError::Disconnected);
        let xs = self.env.xenstore();
        let closing = self
            .device
            .set_state_if_present(xs, XenbusState::Closing)
            .await;
        if closing != Ok(false) {
            let _ = self
                .device
                .set_state_if_present(xs, XenbusState::Closed)
                .await;
        }
        self.release()
    }

    /// After the backend went away (`xl network-detach`/`attach`, a
    /// netback restart): disconnect, wait until the backend is back in
    /// `InitWait` (through `Closed`, `Unknown` or a missing directory), and
    /// connect again with `options`.
    ///
    /// A backend that is still catching up with our `Closed` (Linux's
    /// netback passes through `Closing` and `Closed` before it answers our
    /// `Initialising` with `InitWait`) is waited for while it stays
    /// `online`, and an attempt that ends because the backend closed or our
    /// directory vanished starts over (`Closed`, then `Initialising` again);
    /// each restart is logged and counted ([`reconnect_stats`](Self::reconnect_stats)).
    /// Not bounded in time: use [`reconnect_bounded`](Self::reconnect_bounded)
    /// to start over after a stall. Errors that a retry cannot cure (the
    /// xenstore connection broken, no memory, malformed values) end it.
    pub async fn reconnect(self, options: ConnectOptions) -> Result<Self, (E, NetfrontError)> {
        self.reconnect_with(options, &mut Unbounded).await
    }

    /// [`reconnect`](Self::reconnect) that never waits forever: an attempt
    /// that makes no progress (no change of the backend's state, no step of
    /// ours) for `stall_ns` ([`RECONNECT_STALL_NS`] is a good value) starts
    /// over from `Closed`. Waiting for our device directory to come back
    /// (detached, not attached again yet) is not a stall.
    pub async fn reconnect_bounded<C: Clock>(
        self,
        options: ConnectOptions,
        clock: C,
        stall_ns: u64,
    ) -> Result<Self, (E, NetfrontError)> {
        let mut bound = StallBound {
            clock,
            stall_ns,
            sleep: None,
        };
        self.reconnect_with(options, &mut bound).await
    }

    async fn reconnect_with<B: WaitBound>(
        mut self,
        options: ConnectOptions,
        bound: &mut B,
    ) -> Result<Self, (E, NetfrontError)> {
        self.disconnect().await;
        let path = self.device.path.clone();
        let mut stats = ReconnectStats::default();
        if let Err(e) = self.wait_let_go(bound).await {
            if !worth_retrying(&e) {
                return Err((self.env.take(), e));
            }
            // Stalled: the old rings' pages are deferred when the old
            // queues drop below, and freed once the backend unmaps them.
            stats.stalled = stats.stalled.saturating_add(1);
            stats.last_error = Some(e);
            log::info!("netfront: {path}: the backend kept our old rings mapped ({e})");
        }
        let mut env = self.env.take();
        // The old queues' pages go now (deferred if the backend still maps
        // them), before the new connection allocates its own.
        drop(self);
        loop {
            stats.attempts = stats.attempts.saturating_add(1);
            bound.progress();
            let ready = xen::xenbus::wait_backend_ready_bounded(env.xenstore(), &path, bound).await;
            let result = match ready {
                Ok(()) => Self::connect_inner(env, &path, options, bound, true).await,
                Err(e) => Err((env, e.into())),
            };
            let e = match result {
                Ok(mut front) => {
                    front.reconnect_stats = stats;
                    if stats.attempts > 1 {
                        log::info!(
                            "netfront: {path}: reconnected at attempt {} ({} stalled)",
                            stats.attempts,
                            stats.stalled
                        );
                    }
                    return Ok(front);
                }
                Err((back, e)) => {
                    env = back;
                    e
                }
            };
            if !worth_retrying(&e) {
                return Err((env, e));
            }
            // ENOENT is worth a new attempt only if it was our directory
            // that went (the next attempt waits for it to come back): a
            // key missing from a directory that stays would fail again at
            // once, round and round.
            if e == NetfrontError::Xenbus(XenbusError::Xs(XsError::Enoent)) {
                let state = format!("{path}/state");
                match env.xenstore().read(&state).await {
                    Err(XsError::Enoent) => {}
                    _ => return Err((env, e)),
                }
            }
            if e == NetfrontError::Xenbus(XenbusError::Stalled) {
                stats.stalled = stats.stalled.saturating_add(1);
            }
            stats.last_error = Some(e);
            log::info!(
                "netfront: {path}: reconnection attempt {} ended ({e}): starting over",
                stats.attempts
            );
            // Start over from Closed (only into our directory as it is).
            let _ = xen::xenbus::write_state_if_present(env.xenstore(), &path, XenbusState::Closed)
                .await;
        }
    }

    /// The backend still mapped our rings when we left: it has not acted on
    /// our `Closed` yet. Wait until it lets go of them (each change of its
    /// state, try to revoke them again), or closes or goes away, or `bound`
    /// expires (then their pages are deferred, as after any disconnect). Otherwise
    /// a backend that is slow to read our states (Linux reads the state
    /// current when its watch fires, so quick changes are seen as the last
    /// one) may take our next `Connected` for the one it already acted on
    /// and stay on the old rings, both ends `Connected` and nothing moving.
    async fn wait_let_go<B: WaitBound>(&mut self, bound: &mut B) -> Result<(), NetfrontError> {
        let backend = self.device.backend.clone();
        let mut state = None;
        loop {
            // Read first: a backend unmaps before it publishes Closing.
            let now = match state {
                Some(s) => s,
                None => xen::xenbus::read_state(self.env.xenstore(), &backend).await?,
            };
            let env = &mut self.env;
            self.still_mapped
                .retain(|gref| env.end_access(*gref).is_err());
            if self.still_mapped.is_empty()
                || matches!(now, XenbusState::Closed | XenbusState::Unknown)
            {
                return Ok(());
            }
            let xs = self.env.xenstore();
            state = Some(xen::xenbus::wait_backend_state_change(xs, &backend, now, bound).await?);
        }
    }

    /// The first half of [`reconnect_bounded`](Self::reconnect_bounded), for
    /// a caller that must have its xenstore connection between attempts (a
    /// network VM acts on shutdown requests and serves new vifs meanwhile):
    /// disconnect, wait until the backend let go of our rings (at most
    /// until `stall_ns` pass without progress), and hand the environment
    /// back. Then [`connect_again_bounded`](Self::connect_again_bounded),
    /// as often as needed.
    pub async fn leave_bounded<C: Clock>(mut self, clock: C, stall_ns: u64) -> E {
        let mut bound = StallBound {
            clock,
            stall_ns,
            sleep: None,
        };
        self.disconnect().await;
        if let Err(e) = self.wait_let_go(&mut bound).await {
            let path = &self.device.path;
            log::info!("netfront: {path}: the backend kept our old rings mapped ({e})");
        }
        // The old queues' pages go with `self` (deferred if the backend
        // still maps them).
        self.env.take()
    }

    /// One attempt of the second half of
    /// [`reconnect_bounded`](Self::reconnect_bounded): wait until the
    /// backend of the device at `path` is ready again and connect, giving
    /// up after `stall_ns` without progress. On any failure our state is
    /// set back to `Closed` (so the next attempt starts over) and the
    /// environment handed back; [`worth_retrying`] says whether another
    /// attempt may succeed.
    pub async fn connect_again_bounded<C: Clock>(
        mut env: E,
        path: &str,
        options: ConnectOptions,
        clock: C,
        stall_ns: u64,
    ) -> Result<Self, (E, NetfrontError)> {
        let mut bound = StallBound {
            clock,
            stall_ns,
            sleep: None,
        };
        bound.progress();
        let ready = xen::xenbus::wait_backend_ready_bounded(env.xenstore(), path, &mut bound).await;
        let result = match ready {
            Ok(()) => Self::connect_inner(env, path, options, &mut bound, true).await,
            Err(e) => Err((env, e.into())),
        };
        match result {
            Ok(front) => Ok(front),
            Err((mut env, e)) => {
                let _ =
                    xen::xenbus::write_state_if_present(env.xenstore(), path, XenbusState::Closed)
                        .await;
                Err((env, e))
            }
        }
    }

    /// What the reconnection that made this device took (all zero for a
    /// device from [`connect`](Self::connect)).
    pub fn reconnect_stats(&self) -> ReconnectStats {
        self.reconnect_stats
    }

    /// Give the environment back (after [`disconnect`](Self::disconnect),
    /// to reconnect). Without a disconnect, the grants are ended and the
    /// event channels closed here (the backend is told nothing). The
    /// queues' pages are dropped: a page the backend still maps is deferred
    /// by the environment's page type, never freed while mapped.
    pub fn into_env(mut self) -> E {
        self.release();
        self.env.take()
    }
}

impl<E: NetEnv> Drop for Netfront<E> {
    fn drop(&mut self) {
        if self.env.0.is_some() {
            self.release();
        }
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
