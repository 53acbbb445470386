//! The loop of a network VM: [`run`].
//!
//! One future, no spawned tasks: it owns the uplink (a [`Netfront`]), the
//! client vifs (netback [`Vif`]s), the offers still waiting for their
//! frontends and the [`Service`]. Each round it
//!
//! 1. takes at most [`Options::budget`] frames from the uplink and from
//!    each client (clients taken in a rotating order), hands each to
//!    [`Service::handle`] and sends what it returns, with its offload
//!    flags (GSO, blank checksum) as the service left them. Frames for the
//!    uplink are queued on its TX ring and published once a round (one
//!    event at most, none while its backend is still busy). A client is
//!    read only while no frame waits for room on that ring, and for no
//!    more frames than the ring has free slots; a frame that does not fit
//!    when it comes (a GSO super-packet takes up to 18 slots) waits, in
//!    order, in the runtime's uplink queue until completions make room;
//!    a client's frame for another client whose queue is half full waits
//!    (it is not dropped; the other half is kept for the uplink's frames,
//!    which cannot wait) and that client is not read again until it went:
//!    backpressure, as towards a full uplink, so a slow receiver slows
//!    its sender down instead of costing it a burst of losses (which a
//!    TCP without congestion control or SACK, smoltcp's, takes minutes
//!    to recover from). A receiver that delivers nothing for
//!    [`Options::hold_ns`] counts as stalled: its frames are dropped again,
//!    so it cannot hold its senders up;
//! 2. fills the clients' RX rings (again at most a budget each), after
//!    [`Service::tick`] when due (so what it sends goes out this round);
//! 3. reports when due;
//! 4. does its xenstore work when a watch fired or once a second: the
//!    toolstack's shutdown request, the health of every client and of the
//!    uplink, one look at each offer, new and finished `backend/vif`
//!    directories, the configuration directory;
//! 5. yields if a budget ran out, else sleeps until an event channel, a
//!    watch or a timer wakes it.
//!
//! The uplink's backend going away (dom0's netback restarted, `xl
//! network-detach` + `network-attach` of the uplink) is noticed by a ring
//! error or by the once-a-second state check; the runtime then drives the
//! reconnection as a boxed future beside the clients, which are still
//! served (frames to the uplink are dropped and counted). The xenstore
//! connection lives in the uplink's environment, so the reconnection runs
//! in bounded attempts (`Netfront::leave_bounded`,
//! `Netfront::connect_again_bounded`: each gives up after 10 s without
//! progress and hands the environment back); between two attempts
//! (`Uplink::Idle`, `UPLINK_RETRY_NS`) the xenstore work goes on:
//! shutdown requests, new and failed vifs, configuration. A backend that
//! never comes back delays that work by at most one attempt.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::future::{poll_fn, Future};
use core::pin::{pin, Pin};
use core::task::Poll;

use kernel::control::ShutdownRequest;
use kernel::executor::Handle;
use netback::{
    BackendDevice, BackendOptions, Fatal, Health, NetbackEnv, Offer, Offload, Packet, Vif,
};
use netfront::error::TxError;
use netfront::{
    BackendFeatures, ConnectOptions, MacAddress, NetEnv, Netfront, NetfrontError, TxOffload,
};
use xen::abi::Port as EvtchnPort;
use xen::xenbus::{write_state, XenbusError, XenbusState};
use xen::xenstore::{XenStore, XsError, XsTransport};

use crate::binding::Binding;
use crate::identity::{self, ClientInfo, Key};
use crate::{config, ClientId, Link, Service, To, Transmit};

const SECOND: u64 = 1_000_000_000;
const WATCH_VIFS: &str = "netvm:vifs";
const WATCH_CONFIG: &str = "netvm:config";
/// How long a finished vif's directory stays before we remove it. libxl
/// (4.17) waits for our `Closed` by reading the state node when its watch
/// fires, and a node already removed then fails the whole removal
/// (`wanted state 6 but it was removed`); it waits 10 s for the directory
/// to go once it has seen `Closed`. (`xl devd` in a Linux driver domain
/// gets the same slack from running the hotplug script first.)
const REMOVE_GRACE_NS: u64 = SECOND;

/// How a network VM runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Printed before every console line (`netbridge`, `firewall`).
    pub name: &'static str,
    /// Where console lines go (`kernel::println!` in an image).
    pub print: fn(&str),
    /// The uplink device, `device/vif/0` normally.
    pub uplink_path: String,
    /// How the uplink connects.
    pub uplink: ConnectOptions,
    /// What the clients are offered (e.g. no GSO for a service that would
    /// have to segment).
    pub backend: BackendOptions,
    /// Frames taken from one vif (or the uplink) per round, and delivered
    /// to one vif per round: no vif can starve another.
    pub budget: usize,
    /// How long a client's frames may wait for room in another client's
    /// queue while that client delivers nothing (no RX buffers posted);
    /// then it counts as stalled and frames for it are dropped.
    pub hold_ns: u64,
    /// The periodic xenstore scan (backstop of the `backend/vif` watch,
    /// health of clients and uplink, shutdown requests).
    pub scan_ns: u64,
    /// Wait before a vif whose offer failed is offered again.
    pub retry_ns: u64,
    /// [`Service::tick`] period.
    pub tick_ns: u64,
    /// [`Service::report`] period (0: never).
    pub report_ns: u64,
    /// The configuration directory to watch and hand to
    /// [`Service::configure`] (relative to our home or absolute).
    pub config: Option<String>,
    /// Drop (and count in [`Stats::spoofed`]) a client's frames whose
    /// Ethernet source is not the `mac` of its vif
    /// ([`binding`](crate::binding)).
    pub enforce_mac: bool,
    /// Drop (and count in [`Stats::spoofed`]) a client's IPv4, IPv6 and
    /// ARP frames whose sender is not one of the addresses of its vif's
    /// `ip` (when it has one; [`binding`](crate::binding)).
    pub enforce_ip: bool,
    /// Most clients connected or offered at once; more vifs wait.
    pub max_clients: usize,
    /// What the platform can say about its resources (free frames, heap in
    /// use), printed when the uplink comes up and after each client closed,
    /// so a run of attach/detach cycles shows whether anything leaks.
    pub resources: Option<fn() -> String>,
    /// Most frames waiting for room on the uplink's TX ring (beyond, a
    /// frame for the uplink is dropped and counted in
    /// [`Stats::uplink_tx_dropped`]). Clients are not read while any wait,
    /// so this holds at most what one client's TX ring held (256 slots:
    /// 1 MiB) and what the service made of it.
    pub uplink_queue_max: usize,
    /// Most bytes in that queue.
    pub uplink_queue_bytes_max: usize,
}

impl Options {
    /// The defaults: `device/vif/0`, budget 64, frames held for a stalled
    /// client 1 s, a scan every second, offers retried after 10 s, ticks
    /// every 100 ms, a report every 10 s, MACs enforced, 64 clients, at
    /// most 2048 frames and 2 MiB waiting for the uplink's ring.
    pub fn new(name: &'static str, print: fn(&str)) -> Self {
        Self {
            name,
            print,
            uplink_path: String::from("device/vif/0"),
            uplink: ConnectOptions::default(),
            backend: BackendOptions::default(),
            budget: 64,
            hold_ns: SECOND,
            scan_ns: SECOND,
            retry_ns: 10 * SECOND,
            tick_ns: SECOND / 10,
            report_ns: 10 * SECOND,
            config: None,
            enforce_mac: true,
            enforce_ip: true,
            max_clients: 64,
            resources: None,
            uplink_queue_max: 2048,
            uplink_queue_bytes_max: 2 << 20,
        }
    }
}

/// The uplink as the service sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UplinkInfo {
    /// Our MAC on it.
    pub mac: MacAddress,
    /// Its backend directory.
    pub backend: String,
    /// The `ip` key of its backend directory (`vif=['ip=...']` in our own
    /// xl config).
    pub ip: Key<Vec<core::net::IpAddr>>,
    /// What its backend offered: GSO per type (with scatter-gather) and
    /// blank checksums per family are what may be sent to it as is.
    pub features: BackendFeatures,
}

/// Whether an uplink attempt failed because our own xenstore connection
/// broke (the protocol on our ring, an I/O error): no attempt can cure
/// that. Everything else the backend or the toolstack did may be undone by
/// a new backend, so the uplink is tried again.
fn xenstore_broken(e: &NetfrontError) -> bool {
    matches!(
        e,
        NetfrontError::Xenbus(XenbusError::Xs(
            XsError::Protocol(_) | XsError::Eio | XsError::RequestTooLarge
        ))
    )
}

/// Why [`run`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The toolstack asked (`xl shutdown`, `xl reboot`); everything was
    /// closed in order.
    Requested(ShutdownRequest),
    /// The uplink could not be connected at start because our xenstore
    /// connection broke; any other failure (a backend late, missing,
    /// misbehaving, dead) is retried every 2 s, the clients served
    /// meanwhile.
    NoUplink(NetfrontError),
    /// The uplink could not be reconnected after its backend went away,
    /// because our xenstore connection broke.
    UplinkLost(NetfrontError),
}

/// Counters of the runtime (the service keeps its own).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Clients connected now.
    pub clients: usize,
    /// Vifs offered now, waiting for their frontend.
    pub offered: usize,
    /// Connections made in all.
    pub connected: u64,
    /// Connections closed in all.
    pub closed: u64,
    /// Vifs refused by [`Service::admit`].
    pub refused: u64,
    /// Backend directories removed once the toolstack was done.
    pub removed: u64,
    /// Offers that failed (bad keys, frontend closed before connecting).
    pub offer_errors: u64,
    /// Frames taken from the uplink.
    pub uplink_rx: u64,
    /// Frames the uplink's netfront dropped on receive (error status,
    /// oversized, its queue full) on its current connection; updated
    /// before each report.
    pub uplink_rx_dropped: u64,
    /// Frames sent on the uplink.
    pub uplink_tx: u64,
    /// Frames for the uplink dropped (offload refused or bad size, its
    /// queue full, uplink down).
    pub uplink_tx_dropped: u64,
    /// Frames for the uplink that waited in the runtime's queue for room on
    /// its TX ring (sent since, or still waiting).
    pub uplink_queued: u64,
    /// Events sent to the uplink's backend on its current connection (TX
    /// pushes and RX refills that found it waiting); updated before each
    /// report.
    pub uplink_notifies: u64,
    /// Frames taken from clients.
    pub client_rx: u64,
    /// Frames queued for clients.
    pub client_tx: u64,
    /// Frames for clients dropped (queue full, client gone or stalled).
    pub client_tx_dropped: u64,
    /// A client's frames for another client that waited for room in its
    /// queue instead of being dropped.
    pub client_held: u64,
    /// Times a client was not read because its frames for another client
    /// still waited (backpressure between clients).
    pub client_full: u64,
    /// Over the clients connected now, updated before each report: frames
    /// their vifs dropped at delivery (an offload or size the frontend
    /// does not take; not counted in `client_tx_dropped`).
    pub vif_rx_dropped: u64,
    /// Over the clients connected now, updated before each report: RX and
    /// TX requests their vifs answered with an error (failed copies,
    /// violations).
    pub vif_errors: u64,
    /// Client frames dropped by their vif's binding (a source MAC, IP
    /// address or ARP sender not their vif's: [`binding`](crate::binding)).
    pub spoofed: u64,
    /// Times a client was not read because the uplink's TX ring was full or
    /// frames still waited for it (backpressure: the client's frames wait
    /// in its ring).
    pub uplink_full: u64,
    /// Times the uplink's backend went away.
    pub uplink_lost: u64,
    /// Configuration snapshots read.
    pub config_reads: u64,
    /// Configuration reads that failed (the previous one stays).
    pub config_errors: u64,
    /// Rounds of the loop.
    pub rounds: u64,
    /// Times the loop slept (nothing to do until an event or a timer).
    pub sleeps: u64,
    /// Nanoseconds the loop slept in all, by the executor's clock (read
    /// when a task is polled: the rest of the time it worked or waited
    /// for a vCPU).
    pub slept_ns: u64,
}

struct Client<B: NetbackEnv> {
    info: ClientInfo,
    /// What it may send, checked before the service sees a frame.
    binding: Binding,
    vif: Vif<B>,
    /// When its queue last moved into its RX ring, or was empty.
    progress_at: u64,
}

impl<B: NetbackEnv> Client<B> {
    /// Frames wait for it, and none went for `hold_ns`.
    fn stalled(&self, now: u64, hold_ns: u64) -> bool {
        self.vif.queued() > 0 && now.saturating_sub(self.progress_at) > hold_ns
    }
}

/// A client's frame for another client, waiting for room in its queue.
struct Held {
    from: ClientId,
    to: ClientId,
    packet: Packet,
}

type Reconnect<U> = Pin<Box<dyn Future<Output = Result<Netfront<U>, (U, NetfrontError)>>>>;

enum Uplink<U: NetEnv + 'static> {
    Up(Netfront<U>),
    /// A (re)connection attempt, bounded: it holds the environment (and so
    /// the xenstore connection) until it succeeds or gives it back.
    Down(Reconnect<U>),
    /// Between two attempts: the environment is ours, so the xenstore work
    /// (shutdown requests, vifs, configuration) goes on; the next attempt
    /// starts at the time given.
    Idle(U, u64),
}

impl<U: NetEnv + 'static> Uplink<U> {
    /// The xenstore connection, unless an attempt holds it.
    fn xenstore(&mut self) -> Option<&mut XenStore<U::Xs>> {
        match self {
            Uplink::Up(nf) => Some(nf.env().xenstore()),
            Uplink::Idle(env, _) => Some(env.xenstore()),
            Uplink::Down(_) => None,
        }
    }
}

/// The pause between two attempts to reconnect the uplink, in which the
/// xenstore work is done (an attempt gives up after
/// `netfront::front::RECONNECT_STALL_NS` without progress).
const UPLINK_RETRY_NS: u64 = 2 * SECOND;

/// A clock for netfront's bounded waits.
fn nf_clock(clock: &Handle) -> impl netfront::front::Clock {
    let (a, b) = (clock.clone(), clock.clone());
    netfront::front::FnClock {
        now: move || a.now_ns(),
        sleep: move |deadline| b.sleep_until(deadline),
    }
}

/// One bounded attempt to connect the uplink again with `env`.
fn uplink_attempt<U: NetEnv + 'static>(env: U, options: &Options, clock: &Handle) -> Reconnect<U> {
    let path = options.uplink_path.clone();
    let connect = options.uplink;
    let clock = nf_clock(clock);
    Box::pin(async move {
        Netfront::connect_again_bounded(
            env,
            &path,
            connect,
            clock,
            netfront::front::RECONNECT_STALL_NS,
        )
        .await
    })
}

/// Every `backend/vif/<front>/<dev>` directory of ours.
async fn backend_dirs<T: XsTransport>(xs: &mut XenStore<T>) -> Result<Vec<String>, XsError> {
    let mut out = Vec::new();
    let fronts = match xs.directory("backend/vif").await {
        Ok(f) => f,
        Err(XsError::Enoent) => return Ok(out),
        Err(e) => return Err(e),
    };
    for front in fronts {
        let dir = format!("backend/vif/{front}");
        match xs.directory(&dir).await {
            Ok(devs) => out.extend(devs.into_iter().map(|d| format!("{dir}/{d}"))),
            Err(XsError::Enoent) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

async fn uplink_info<U: NetEnv>(nf: &mut Netfront<U>) -> UplinkInfo {
    let backend = nf.device().backend.clone();
    let mac = nf.mac();
    let ip = match nf.env().xenstore().read(&format!("{backend}/ip")).await {
        Ok(v) => identity::parse_ip(&v),
        Err(_) => Key::Absent,
    };
    UplinkInfo {
        mac,
        backend,
        ip,
        features: nf.features(),
    }
}

/// The loop's state, apart from the uplink (which owns the xenstore
/// connection and so is borrowed separately).
struct State<'a, B: NetbackEnv, S: Service + ?Sized> {
    options: &'a Options,
    benv: B,
    service: &'a mut S,
    clients: Vec<Client<B>>,
    /// Clients gone while the uplink (and so xenstore) was down: closed
    /// once it is back.
    dying: Vec<Client<B>>,
    offers: Vec<(String, Offer)>,
    /// Vifs not to look at again before a time (failed offers).
    retry_at: Vec<(String, u64)>,
    /// Vifs refused by the service, while their directory lives.
    refused: BTreeSet<String>,
    /// Vifs closed for a fault of their frontend (a broken ring, too many
    /// bad requests): offered again only once the frontend has left
    /// `Connected` (as Linux's netback waits for the frontend to change
    /// state), so a frontend that keeps its broken ring is not mapped,
    /// found broken and closed again every second.
    faulted: BTreeSet<String>,
    /// Finished vifs (the toolstack is done with them), with when their
    /// directory is to be removed ([`REMOVE_GRACE_NS`]).
    finishing: BTreeMap<String, u64>,
    next_id: u32,
    rotate: usize,
    stats: Stats,
    out: Vec<Transmit>,
    packets: Vec<Packet>,
    /// Frames of clients for other clients whose queues were full, in
    /// order; a client with frames here is not read.
    held: Vec<Held>,
    /// Frames for the uplink that did not fit on its TX ring, in order;
    /// no client is read while one waits.
    backlog: VecDeque<Packet>,
    /// Their bytes.
    backlog_bytes: usize,
}

impl<B: NetbackEnv, S: Service + ?Sized> State<'_, B, S> {
    fn print(&self, line: &str) {
        (self.options.print)(&format!("{}: {line}", self.options.name));
    }

    fn print_resources(&self) {
        if let Some(f) = self.options.resources {
            self.print(&format!(
                "resources: {} clients={} connected={} closed={}",
                f(),
                self.clients.len(),
                self.stats.connected,
                self.stats.closed
            ));
        }
    }

    /// Send everything in `self.out`, which came from `from` (a client:
    /// its frames for a full client are held, not dropped).
    fn dispatch<U: NetEnv + 'static>(
        &mut self,
        uplink: &mut Uplink<U>,
        now: u64,
        from: Option<ClientId>,
    ) {
        let hold_ns = self.options.hold_ns;
        let reserve = self.reserve();
        for t in core::mem::take(&mut self.out) {
            match t.to {
                To::Uplink => self.send_uplink(uplink, t.packet),
                To::Client(id) => match self.clients.iter_mut().find(|c| c.info.id == id) {
                    Some(c) => {
                        // Behind frames already waiting for it (order), or
                        // its queue half full: wait, unless it stalled.
                        let wait = from.filter(|f| {
                            *f != id
                                && !c.stalled(now, hold_ns)
                                && (self.held.iter().any(|h| h.from == *f && h.to == id)
                                    || !c.vif.would_accept_leaving(
                                        t.packet.data.len(),
                                        reserve.0,
                                        reserve.1,
                                    ))
                        });
                        if let Some(f) = wait {
                            self.stats.client_held += 1;
                            self.held.push(Held {
                                from: f,
                                to: id,
                                packet: t.packet,
                            });
                        } else if c.vif.send(t.packet) {
                            self.stats.client_tx += 1;
                        } else {
                            self.stats.client_tx_dropped += 1;
                        }
                    }
                    None => self.stats.client_tx_dropped += 1,
                },
                To::Clients { except } => {
                    for c in self.clients.iter_mut() {
                        if Some(c.info.id) == except {
                            continue;
                        }
                        if c.vif.send(t.packet.clone()) {
                            self.stats.client_tx += 1;
                        } else {
                            self.stats.client_tx_dropped += 1;
                        }
                    }
                }
            }
        }
    }

    /// Queue `packet` on the uplink's TX ring (published at the round's
    /// flush), or in the backlog behind frames already waiting or when the
    /// ring has no room for it now.
    fn send_uplink<U: NetEnv + 'static>(&mut self, uplink: &mut Uplink<U>, packet: Packet) {
        let Uplink::Up(nf) = uplink else {
            self.stats.uplink_tx_dropped += 1;
            return;
        };
        if self.backlog.is_empty() {
            match nf.queue(&packet.data, tx_offload(&packet)) {
                Ok(()) => {
                    self.stats.uplink_tx += 1;
                    return;
                }
                Err(TxError::Busy) => {}
                Err(_) => {
                    self.stats.uplink_tx_dropped += 1;
                    return;
                }
            }
        }
        let bytes = self.backlog_bytes.saturating_add(packet.data.len());
        if self.backlog.len() >= self.options.uplink_queue_max
            || bytes > self.options.uplink_queue_bytes_max
        {
            self.stats.uplink_tx_dropped += 1;
            return;
        }
        self.stats.uplink_queued += 1;
        self.backlog_bytes = bytes;
        self.backlog.push_back(packet);
    }

    /// Move waiting frames onto the uplink's TX ring while they fit.
    fn drain_backlog<U: NetEnv + 'static>(&mut self, uplink: &mut Uplink<U>) {
        let Uplink::Up(nf) = uplink else {
            return;
        };
        while let Some(p) = self.backlog.front() {
            match nf.queue(&p.data, tx_offload(p)) {
                Ok(()) => self.stats.uplink_tx += 1,
                Err(TxError::Busy) => break,
                Err(_) => self.stats.uplink_tx_dropped += 1,
            }
            if let Some(p) = self.backlog.pop_front() {
                self.backlog_bytes = self.backlog_bytes.saturating_sub(p.data.len());
            }
        }
    }

    /// The uplink went away: what waited for it is dropped.
    fn drop_backlog(&mut self) {
        self.stats.uplink_tx_dropped += self.backlog.len() as u64;
        self.backlog.clear();
        self.backlog_bytes = 0;
    }

    /// What a client's frames for another client leave free in its queue
    /// (frames, bytes): half of it, for the uplink's frames and floods,
    /// which are never held (the uplink serves every client).
    fn reserve(&self) -> (usize, usize) {
        (
            self.options.backend.rx_queue_max / 2,
            self.options.backend.rx_queue_bytes_max / 2,
        )
    }

    /// Queue what client `from` has waiting for other clients, in order,
    /// where there is room now (dropped for a client gone or stalled).
    /// Returns whether some still waits.
    fn release_held(&mut self, now: u64, from: ClientId) -> bool {
        let hold_ns = self.options.hold_ns;
        let reserve = self.reserve();
        let mut blocked: Vec<ClientId> = Vec::new();
        let mut left = false;
        let mut i = 0;
        while i < self.held.len() {
            let (f, to, len) = match self.held.get(i) {
                Some(h) => (h.from, h.to, h.packet.data.len()),
                None => break,
            };
            if f != from || blocked.contains(&to) {
                i += 1;
                continue;
            }
            match self.clients.iter_mut().find(|c| c.info.id == to) {
                Some(c) if c.vif.would_accept_leaving(len, reserve.0, reserve.1) => {
                    let h = self.held.remove(i);
                    if c.vif.send(h.packet) {
                        self.stats.client_tx += 1;
                    } else {
                        self.stats.client_tx_dropped += 1;
                    }
                }
                Some(c) if !c.stalled(now, hold_ns) => {
                    blocked.push(to);
                    left = true;
                    i += 1;
                }
                _ => {
                    self.held.remove(i);
                    self.stats.client_tx_dropped += 1;
                }
            }
        }
        left
    }

    /// Frames from the clients (and their RX rings filled). Returns whether
    /// a budget ran out; clients that failed are moved to `dead`.
    fn serve_clients<U: NetEnv + 'static>(
        &mut self,
        now: u64,
        uplink: &mut Uplink<U>,
        dead: &mut Vec<(ClientId, String)>,
    ) -> bool {
        let mut more = false;
        let n = self.clients.len();
        if n > 0 {
            self.rotate = (self.rotate + 1) % n;
        }
        for k in 0..n {
            let i = (self.rotate + k) % n;
            let Some(c) = self.clients.get_mut(i) else {
                continue;
            };
            let id = c.info.id;
            if dead.iter().any(|d| d.0 == id) {
                continue;
            }
            // Backpressure between clients: frames it sent earlier still
            // wait for another client's queue.
            if self.release_held(now, id) {
                self.stats.client_full += 1;
                continue;
            }
            let Some(c) = self.clients.get_mut(i) else {
                continue;
            };
            // Backpressure: read a client only while nothing waits for the
            // uplink, and for no more frames than its TX ring has free
            // slots (a frame takes at least one), so a busy uplink leaves
            // frames in the clients' rings, where their TCP waits, instead
            // of dropping them here. What does not fit after all (a GSO
            // super-packet takes up to 18 slots, a segmented one more)
            // waits in the backlog, bounded by what one client's ring
            // held. The uplink's TX completions wake us.
            let room = match uplink {
                Uplink::Up(_) if !self.backlog.is_empty() => 0,
                Uplink::Up(nf) => nf
                    .queues()
                    .iter()
                    .map(|q| q.tx.free_slots() as usize)
                    .min()
                    .unwrap_or(0),
                Uplink::Down(_) | Uplink::Idle(..) => usize::MAX,
            };
            let budget = self.options.budget.min(room);
            if budget == 0 {
                self.stats.uplink_full += 1;
                continue;
            }
            self.packets.clear();
            match c.vif.receive(&mut self.benv, budget, &mut self.packets) {
                Ok(p) => more |= p.more,
                Err(f) => {
                    if frontend_fault(f) {
                        self.faulted.insert(c.info.path.clone());
                    }
                    dead.push((id, format!("{f:?}")));
                    continue;
                }
            }
            // The binding, before the service sees a frame.
            let received = self.packets.len();
            let binding = &mut c.binding;
            self.packets.retain(|p| binding.admit(&p.data));
            self.stats.client_rx += received as u64;
            self.stats.spoofed += (received - self.packets.len()) as u64;
            while let Some(news) = c.binding.take_news() {
                let line = format!("vif {}: {news}", c.info.path);
                (self.options.print)(&format!("{}: {line}", self.options.name));
            }
            for p in core::mem::take(&mut self.packets) {
                self.service.handle(now, Link::Client(id), p, &mut self.out);
                self.dispatch(uplink, now, Some(id));
            }
        }
        let mut delivered = false;
        for c in self.clients.iter_mut() {
            if dead.iter().any(|d| d.0 == c.info.id) {
                continue;
            }
            match c.vif.deliver(&mut self.benv, self.options.budget) {
                Ok(p) => {
                    more |= p.more;
                    delivered |= p.packets > 0;
                    if p.packets > 0 || c.vif.queued() == 0 {
                        c.progress_at = now;
                    }
                }
                Err(f) => {
                    if frontend_fault(f) {
                        self.faulted.insert(c.info.path.clone());
                    }
                    dead.push((c.info.id, format!("{f:?}")))
                }
            }
        }
        // Room made for held frames: release them next round (a client
        // that delivered nothing wakes us with its RX event, a stalled
        // one is seen by the tick).
        more |= delivered && !self.held.is_empty();
        more
    }

    /// Take the clients in `dead` out of service (closed now if `xs` is
    /// given, else once it is).
    async fn bury<T: XsTransport>(
        &mut self,
        now: u64,
        dead: &mut Vec<(ClientId, String)>,
        mut xs: Option<&mut XenStore<T>>,
    ) {
        dead.sort();
        dead.dedup_by_key(|d| d.0);
        for (id, why) in dead.drain(..) {
            let Some(at) = self.clients.iter().position(|c| c.info.id == id) else {
                continue;
            };
            let c = self.clients.remove(at);
            let before = self.held.len();
            self.held.retain(|h| h.from != id && h.to != id);
            self.stats.client_tx_dropped += (before - self.held.len()) as u64;
            self.service.client_down(now, id);
            self.stats.closed += 1;
            self.print(&format!("vif {} closed ({why})", c.info.path));
            match xs.as_deref_mut() {
                Some(xs) => self.close(now, xs, c).await,
                None => self.dying.push(c),
            }
        }
    }

    /// Release a client's vif and publish `Closed`; if the toolstack is
    /// detaching it, its directory goes [`REMOVE_GRACE_NS`] later (libxl
    /// waits for that), else it is looked at again in a second (its
    /// frontend may come back). The resources are printed once the vif is
    /// released.
    async fn close<T: XsTransport>(&mut self, now: u64, xs: &mut XenStore<T>, c: Client<B>) {
        let device = c.vif.close(&mut self.benv, xs).await;
        self.print_resources();
        let again = if self.finish(now, xs, &device).await {
            now + REMOVE_GRACE_NS
        } else {
            now + SECOND
        };
        self.retry_at.push((device.path, again));
    }

    /// If the toolstack is done with a vif we serve nothing on
    /// ([`BackendDevice::finished`]), note when its directory is to go
    /// (the next look at it after that removes it). Returns whether it is.
    async fn finish<T: XsTransport>(
        &mut self,
        now: u64,
        xs: &mut XenStore<T>,
        device: &BackendDevice,
    ) -> bool {
        if !matches!(device.finished(xs).await, Ok(true)) {
            return false;
        }
        self.finishing
            .entry(device.path.clone())
            .or_insert(now + REMOVE_GRACE_NS);
        true
    }

    /// The xenstore part of a round.
    async fn scan<T: XsTransport>(
        &mut self,
        now: u64,
        xs: &mut XenStore<T>,
        config_changed: bool,
        changed: &mut config::Changed,
    ) -> Option<ShutdownRequest> {
        if let Some(request) = kernel::control::requested(xs).await {
            return Some(request);
        }
        for c in core::mem::take(&mut self.dying) {
            self.close(now, xs, c).await;
        }
        // Health of every client.
        let mut dead = Vec::new();
        for c in &self.clients {
            match c.vif.device().health(xs).await {
                Ok(Health::Connected) => {}
                Ok(other) => dead.push((c.info.id, format!("{other:?}"))),
                Err(e) => dead.push((c.info.id, format!("{e:?}"))),
            }
        }
        self.bury(now, &mut dead, Some(&mut *xs)).await;
        // One look at each frontend being waited for.
        let mut k = 0;
        while k < self.offers.len() {
            match self.offers[k].1.advance(&mut self.benv, xs).await {
                Ok(None) => k += 1,
                Ok(Some(vif)) => {
                    let (path, _) = self.offers.swap_remove(k);
                    let mut info = match identity::read(xs, &path, vif.device().frontend_id).await {
                        Ok(i) => i,
                        Err(_) => ClientInfo {
                            id: ClientId(0),
                            path: path.clone(),
                            frontend_id: vif.device().frontend_id,
                            mac: Key::Absent,
                            ip: Key::Absent,
                            frontend: None,
                        },
                    };
                    self.next_id += 1;
                    info.id = ClientId(self.next_id);
                    info.frontend = Some(*vif.frontend());
                    self.print(&format!(
                        "vif {path} connected (frontend domain {}, client {})",
                        info.frontend_id, info.id.0
                    ));
                    self.service.client_up(now, &info);
                    self.stats.connected += 1;
                    let binding =
                        Binding::new(&info, self.options.enforce_mac, self.options.enforce_ip);
                    self.clients.push(Client {
                        info,
                        binding,
                        vif,
                        progress_at: now,
                    });
                }
                Err(e) => {
                    let (path, offer) = self.offers.swap_remove(k);
                    self.stats.offer_errors += 1;
                    // Detached before it connected: its directory goes
                    // soon, not after `retry_ns` (libxl waits 10 s).
                    if self.finish(now, xs, offer.device()).await {
                        self.print(&format!("vif {path}: {e:?}; detached"));
                        self.retry_at.push((path, now + REMOVE_GRACE_NS));
                        continue;
                    }
                    self.print(&format!("vif {path}: {e:?}; retrying later"));
                    self.retry_at.push((path, now + self.options.retry_ns));
                }
            }
        }
        // New and finished vifs.
        match backend_dirs(xs).await {
            Ok(dirs) => {
                self.retry_at.retain(|(p, t)| dirs.contains(p) && now < *t);
                self.refused.retain(|p| dirs.contains(p));
                self.finishing.retain(|p, _| dirs.contains(p));
                for path in dirs {
                    if self.clients.iter().any(|c| c.info.path == path)
                        || self.offers.iter().any(|(p, _)| *p == path)
                        || self.retry_at.iter().any(|(p, _)| *p == path)
                    {
                        continue;
                    }
                    if let Err(e) = self.look_at(now, xs, &path).await {
                        self.stats.offer_errors += 1;
                        self.print(&format!("vif {path}: {e:?}; retrying later"));
                        self.retry_at.push((path, now + self.options.retry_ns));
                    }
                }
            }
            Err(e) => self.print(&format!("cannot list backend/vif: {e}")),
        }
        if config_changed {
            if let Some(dir) = self.options.config.as_deref() {
                match config::read(xs, dir).await {
                    Ok(snapshot) => {
                        self.stats.config_reads += 1;
                        let changed = core::mem::take(changed);
                        for line in self.service.configure(now, &snapshot, &changed) {
                            self.print(&line);
                        }
                    }
                    Err(e) => {
                        self.stats.config_errors += 1;
                        self.print(&format!(
                            "configuration {dir}: {e}; keeping the previous one"
                        ));
                    }
                }
            }
        }
        self.stats.clients = self.clients.len();
        self.stats.offered = self.offers.len();
        None
    }

    /// A vif directory we serve nothing on: remove it if the toolstack is
    /// done with it (once [`REMOVE_GRACE_NS`] passed since we saw that),
    /// leave it while it is being detached (or refused), else ask the
    /// service and offer it to its frontend.
    async fn look_at<T: XsTransport>(
        &mut self,
        now: u64,
        xs: &mut XenStore<T>,
        path: &str,
    ) -> Result<(), netback::NetbackError> {
        let device = BackendDevice::open(xs, path).await?;
        if device.finished(xs).await? {
            let due = *self
                .finishing
                .entry(String::from(path))
                .or_insert(now + REMOVE_GRACE_NS);
            if now < due {
                self.retry_at.push((String::from(path), due));
                return Ok(());
            }
            device.remove(xs).await?;
            self.finishing.remove(path);
            self.refused.remove(path);
            self.faulted.remove(path);
            self.stats.removed += 1;
            self.print(&format!(
                "vif {path} removed (the toolstack is done with it)"
            ));
            return Ok(());
        }
        if self.refused.contains(path) || device.detached(xs).await? {
            return Ok(());
        }
        if self.faulted.contains(path) {
            if device.frontend_state(xs).await? == XenbusState::Connected {
                self.retry_at.push((String::from(path), now + SECOND));
                return Ok(());
            }
            self.faulted.remove(path);
        }
        if self.clients.len() + self.offers.len() >= self.options.max_clients {
            self.retry_at.push((String::from(path), now + SECOND));
            return Ok(());
        }
        let info = identity::read(xs, path, device.frontend_id).await?;
        if let Err(why) = self.service.admit(&info) {
            self.stats.refused += 1;
            self.refused.insert(String::from(path));
            self.print(&format!(
                "vif {path} refused (frontend domain {}): {why}",
                device.frontend_id
            ));
            // Tell the frontend (and the toolstack, which waits for
            // InitWait) that nothing will be served here.
            write_state(xs, path, XenbusState::Closed).await?;
            return Ok(());
        }
        let offer = Offer::start(xs, path, &self.options.backend).await?;
        self.print(&format!(
            "vif {path} offered (frontend domain {})",
            offer.device().frontend_id
        ));
        self.offers.push((String::from(path), offer));
        Ok(())
    }
}

/// Whether a vif closed for `f` was closed for its frontend's fault (a
/// ring it broke or requests it kept getting wrong), rather than because
/// it or the toolstack left.
fn frontend_fault(f: Fatal) -> bool {
    match f {
        Fatal::BadRingIndex(_)
        | Fatal::IncompletePacket
        | Fatal::ExtraChain
        | Fatal::TooManyViolations => true,
        Fatal::Closed => false,
    }
}

/// Poll `f` once with the caller's context.
async fn poll_once<F: Future + ?Sized>(f: Pin<&mut F>) -> Poll<F::Output> {
    let mut f = f;
    poll_fn(|cx| Poll::Ready(f.as_mut().poll(cx))).await
}

/// Run a network VM: connect the uplink at `options.uplink_path` with
/// `uplink_env` (which holds the xenstore connection), serve client vifs
/// with `backend_env`, hand every frame to `service`, until the toolstack
/// asks us to stop or the uplink is lost for good. Returns why, with the
/// final counters.
pub async fn run<U, B, S>(
    clock: &Handle,
    uplink_env: U,
    backend_env: B,
    service: &mut S,
    options: &Options,
) -> (Stop, Stats)
where
    U: NetEnv + 'static,
    B: NetbackEnv,
    S: Service + ?Sized,
{
    let mut state = State {
        options,
        benv: backend_env,
        service,
        clients: Vec::new(),
        dying: Vec::new(),
        offers: Vec::new(),
        retry_at: Vec::new(),
        refused: BTreeSet::new(),
        faulted: BTreeSet::new(),
        finishing: BTreeMap::new(),
        next_id: 0,
        rotate: 0,
        stats: Stats::default(),
        out: Vec::new(),
        packets: Vec::new(),
        held: Vec::new(),
        backlog: VecDeque::new(),
        backlog_bytes: 0,
    };
    let mut uplink_env = uplink_env;
    // We act on `xl shutdown` and `xl reboot` (see the scan), also while
    // the uplink is not up yet.
    if let Err(e) = kernel::control::advertise(uplink_env.xenstore()).await {
        state.print(&format!("cannot advertise control/feature-*: {e}"));
    }
    // The uplink connects in bounded attempts like a reconnection (see
    // Uplink::Idle): a backend that is never ready holds no one up.
    let mut uplink: Uplink<U> = Uplink::Down(uplink_attempt(uplink_env, options, clock));
    let mut ever_up = false;
    let mut watching = false;
    let mut vifs_changed = true;
    let mut config_changed = options.config.is_some();
    let mut uplink_announced = false;
    let start = clock.now_ns();
    let mut next_scan = start;
    let mut next_tick = start;
    let mut next_report = start + options.report_ns;
    let mut dead: Vec<(ClientId, String)> = Vec::new();
    let mut reconnected = None;
    // Attempts of the current (re)connection of the uplink.
    let mut attempts = 1u32;
    let mut changed = config::Changed {
        paths: Vec::new(),
        all: true,
    };
    loop {
        let now = clock.now_ns();
        state.stats.rounds += 1;
        let mut more = false;
        // The uplink: back yet? then its frames.
        if let Uplink::Down(fut) = &mut uplink {
            if reconnected.is_none() {
                if let Poll::Ready(r) = poll_once(fut.as_mut()).await {
                    reconnected = Some(r);
                }
            }
        }
        if let Some(r) = reconnected.take() {
            match r {
                Ok(nf) => {
                    if attempts > 1 {
                        state.print(&format!("uplink up at attempt {attempts}"));
                    }
                    attempts = 0;
                    ever_up = true;
                    uplink = Uplink::Up(nf);
                    uplink_announced = false;
                    watching = false;
                    vifs_changed = true;
                    config_changed = options.config.is_some();
                    changed.all = true;
                    next_scan = now;
                }
                Err((_, e)) if xenstore_broken(&e) => {
                    if ever_up {
                        state.print(&format!("uplink reconnect failed: {e}"));
                        return (Stop::UplinkLost(e), state.stats);
                    }
                    state.print(&format!("no uplink ({}): {e}", options.uplink_path));
                    return (Stop::NoUplink(e), state.stats);
                }
                Err((env, e)) => {
                    // Whatever the backend did (closed, went quiet, died
                    // with its directory now unreadable, published a bad
                    // key), another backend may take its place: a
                    // replaced or restarted sys-net. The xenstore work
                    // goes on until the next attempt, the clients served.
                    if attempts == 1 || attempts.is_multiple_of(10) {
                        state.print(&format!(
                            "uplink: attempt {attempts} ended ({e}); trying again every {} s",
                            UPLINK_RETRY_NS / SECOND
                        ));
                    }
                    uplink = Uplink::Idle(env, now + UPLINK_RETRY_NS);
                    next_scan = now;
                }
            }
        }
        uplink = match uplink {
            Uplink::Idle(env, at) if now >= at => {
                attempts += 1;
                Uplink::Down(uplink_attempt(env, options, clock))
            }
            other => other,
        };
        if let Uplink::Up(nf) = &mut uplink {
            if !uplink_announced {
                uplink_announced = true;
                let info = uplink_info(nf).await;
                state.print(&format!("uplink {} on {}", info.mac, info.backend));
                state.print_resources();
                state.service.uplink_up(now, &info);
            }
        }
        let mut lost = None;
        if let Uplink::Up(nf) = &mut uplink {
            match nf.poll() {
                Err(e) => lost = Some(e),
                Ok(()) => {
                    // TX completions made room: what waited goes first.
                    state.drain_backlog(&mut uplink);
                    for _ in 0..options.budget {
                        let Uplink::Up(nf) = &mut uplink else { break };
                        let Some(rx) = nf.receive() else { break };
                        state.stats.uplink_rx += 1;
                        let p = Packet {
                            data: rx.data,
                            offload: Offload {
                                csum_blank: rx.csum_blank,
                                data_validated: rx.data_validated,
                                gso: rx.gso,
                            },
                        };
                        state.service.handle(now, Link::Uplink, p, &mut state.out);
                        state.dispatch(&mut uplink, now, None);
                        more = true;
                    }
                }
            }
        }
        if let Some(e) = lost {
            uplink = lose_uplink(
                &mut state,
                uplink,
                now,
                &format!("{e}"),
                clock,
                &mut attempts,
            );
        }
        // The tick, before the clients: what it sends them goes into
        // their rings this round (after them, it waited for the next
        // wake-up, up to a tick period).
        if now >= next_tick {
            next_tick = now + options.tick_ns;
            state.service.tick(now, &mut state.out);
            state.dispatch(&mut uplink, now, None);
        }
        // The clients.
        more |= state.serve_clients(now, &mut uplink, &mut dead);
        // Everything queued for the uplink this round, published at once.
        if let Uplink::Up(nf) = &mut uplink {
            nf.flush();
        }
        if !dead.is_empty() {
            match uplink.xenstore() {
                Some(xs) => state.bury(now, &mut dead, Some(xs)).await,
                None => state.bury::<U::Xs>(now, &mut dead, None).await,
            }
        }
        // Timers.
        if options.report_ns > 0 && now >= next_report {
            next_report = now + options.report_ns;
            if let Uplink::Up(nf) = &uplink {
                state.stats.uplink_rx_dropped =
                    nf.queues().iter().map(|q| q.rx.stats.dropped).sum();
                state.stats.uplink_notifies = nf.notifies();
            }
            state.stats.clients = state.clients.len();
            state.stats.offered = state.offers.len();
            state.stats.vif_rx_dropped =
                state.clients.iter().map(|c| c.vif.stats().rx_dropped).sum();
            state.stats.vif_errors = state
                .clients
                .iter()
                .map(|c| c.vif.stats().rx_errors + c.vif.stats().tx_errors)
                .sum();
            if let Some(line) = state.service.report(&state.stats) {
                state.print(&line);
            }
        }
        // xenstore: watches first, then the scan when something changed
        // or once a `scan_ns`.
        let mut lost_why = None;
        let mut scanned = false;
        let mut check_uplink = false;
        if let Some(xs) = uplink.xenstore() {
            if !watching {
                watching = true;
                // EEXIST: still there from before the uplink went (the
                // xenstore connection outlives it).
                match xs.watch("backend/vif", WATCH_VIFS).await {
                    Ok(()) | Err(XsError::Eexist) => {}
                    Err(e) => state.print(&format!("cannot watch backend/vif: {e}")),
                }
                if let Some(dir) = options.config.as_deref() {
                    match xs.watch(dir, WATCH_CONFIG).await {
                        Ok(()) | Err(XsError::Eexist) => {}
                        Err(e) => state.print(&format!("cannot watch {dir}: {e}")),
                    }
                }
            }
            // Every queued event, without waiting.
            loop {
                let ev = {
                    let f = pin!(xs.next_watch_event());
                    poll_once(f).await
                };
                match ev {
                    Poll::Ready(Ok(ev)) if ev.token == WATCH_VIFS => vifs_changed = true,
                    Poll::Ready(Ok(ev)) if ev.token == WATCH_CONFIG => {
                        note_config(&mut changed, options, &ev.path);
                        config_changed = true
                    }
                    Poll::Ready(Ok(_)) => {}
                    Poll::Ready(Err(_)) | Poll::Pending => break,
                }
            }
            if vifs_changed || config_changed || now >= next_scan {
                let periodic = now >= next_scan;
                if periodic {
                    next_scan = now + options.scan_ns;
                }
                let reread = core::mem::take(&mut config_changed);
                vifs_changed = false;
                scanned = true;
                let request = state.scan(now, xs, reread, &mut changed).await;
                if let Some(request) = request {
                    state.print(&format!("{request:?} requested by the toolstack"));
                    for c in core::mem::take(&mut state.clients) {
                        state.service.client_down(now, c.info.id);
                        let _ = c.vif.close(&mut state.benv, xs).await;
                    }
                    for (_, offer) in core::mem::take(&mut state.offers) {
                        offer.withdraw(xs).await;
                    }
                    if let Uplink::Up(nf) = &mut uplink {
                        let _ = nf.disconnect().await;
                    }
                    state.stats.clients = 0;
                    state.stats.offered = 0;
                    return (Stop::Requested(request), state.stats);
                }
                check_uplink = periodic;
            }
        }
        if check_uplink {
            if let Uplink::Up(nf) = &mut uplink {
                if let Err(e) = nf.check_backend().await {
                    lost_why = Some(format!("{e}"));
                }
            }
        }
        if let Some(why) = lost_why {
            uplink = lose_uplink(&mut state, uplink, now, &why, clock, &mut attempts);
        }
        if scanned {
            continue;
        }
        if more {
            kernel::executor::yield_now().await;
            continue;
        }
        if let Uplink::Up(nf) = &mut uplink {
            if nf.rx().ready() > 0 {
                kernel::executor::yield_now().await;
                continue;
            }
        }
        // Sleep until a vif, the uplink, a watch or a timer wakes us. Every
        // deadline must lie ahead: a sleep already due is ready at once, the
        // loop would go round without ever returning to the executor, which
        // then never delivers an event nor moves its clock (on Xen, the
        // uplink's reconnection waiting for xenstore hung so, spinning).
        // The scan is not due while an attempt to reconnect the uplink
        // holds xenstore; between attempts, the next one is.
        let mut deadline = next_tick;
        match uplink {
            Uplink::Up(_) => deadline = deadline.min(next_scan),
            Uplink::Idle(_, at) => deadline = deadline.min(next_scan).min(at),
            Uplink::Down(_) => {}
        }
        if options.report_ns > 0 {
            deadline = deadline.min(next_report);
        }
        let deadline = deadline.max(now + 1);
        let slept_from = clock.now_ns();
        state.stats.sleeps += 1;
        let sleep = clock.sleep_until(deadline);
        let mut sleep = pin!(sleep);
        let benv = &mut state.benv;
        let clients = &mut state.clients;
        poll_fn(|cx| {
            let mut ready = sleep.as_mut().poll(cx).is_ready();
            for c in clients.iter_mut() {
                ready |= c.vif.poll_event(benv, cx).is_ready();
            }
            match &mut uplink {
                Uplink::Up(nf) => {
                    let ports: Vec<EvtchnPort> = nf.queues().iter().map(|q| q.port).collect();
                    for port in ports {
                        ready |= NetEnv::poll_event(nf.env(), port, cx).is_ready();
                    }
                }
                Uplink::Down(fut) => {
                    // Its result is taken at the top of the loop.
                    if let Poll::Ready(r) = fut.as_mut().poll(cx) {
                        reconnected = Some(r);
                        ready = true;
                    }
                }
                Uplink::Idle(..) => {}
            }
            if let Some(xs) = uplink.xenstore() {
                // A watch event (the future is cancel-safe: a partly
                // received message stays in the client).
                let mut ev = pin!(xs.next_watch_event());
                if let Poll::Ready(r) = ev.as_mut().poll(cx) {
                    match r {
                        Ok(ev) if ev.token == WATCH_VIFS => vifs_changed = true,
                        Ok(ev) if ev.token == WATCH_CONFIG => {
                            note_config(&mut changed, options, &ev.path);
                            config_changed = true
                        }
                        _ => {}
                    }
                    ready = true;
                }
            }
            if ready {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        state.stats.slept_ns += clock.now_ns().saturating_sub(slept_from);
    }
}

/// A packet's flags as netfront takes them.
fn tx_offload(p: &Packet) -> TxOffload {
    TxOffload {
        csum_blank: p.offload.csum_blank,
        data_validated: p.offload.data_validated,
        gso: p.offload.gso,
    }
}

/// A watch event of the configuration directory.
fn note_config(changed: &mut config::Changed, options: &Options, path: &str) {
    if let Some(dir) = options.config.as_deref() {
        changed.add(dir, path);
    }
}

/// The uplink's backend went away: tell the service and start
/// reconnecting.
fn lose_uplink<U: NetEnv + 'static, B: NetbackEnv, S: Service + ?Sized>(
    state: &mut State<'_, B, S>,
    uplink: Uplink<U>,
    now: u64,
    why: &str,
    clock: &Handle,
    attempts: &mut u32,
) -> Uplink<U> {
    match uplink {
        Uplink::Up(nf) => {
            state.stats.uplink_lost += 1;
            state.drop_backlog();
            state.print(&format!("uplink lost ({why}): reconnecting"));
            state.service.uplink_down(now);
            // The first attempt: leave (wait until the backend let go of
            // our rings) and connect again. Each half gives up after
            // RECONNECT_STALL_NS without progress and hands the
            // environment back, so xenstore is never held longer (see
            // Uplink::Idle).
            *attempts = 1;
            let path = state.options.uplink_path.clone();
            let connect = state.options.uplink;
            let (leave, again) = (nf_clock(clock), nf_clock(clock));
            let stall = netfront::front::RECONNECT_STALL_NS;
            Uplink::Down(Box::pin(async move {
                let env = nf.leave_bounded(leave, stall).await;
                Netfront::connect_again_bounded(env, &path, connect, again, stall).await
            }))
        }
        down => down,
    }
}
