//! A hostile netback: the `hostile` image as the driver domain of another
//! domain's vif (`vif=['backend=hostile,...']`), answering its netfront
//! with what no backend should (issue 14 item 7). Each connection of the
//! frontend gets the next [`BackAttack`] of the list, so one vif meets
//! every attack in turn: the frontend must notice each violation, close
//! and connect again, and meanwhile go on serving its other peers (the
//! firewall VM its clients when its uplink's backend is this one).
//!
//! The handshake is netback's ([`BackendDevice`], [`FrontendConfig`]);
//! the rings are driven byte by byte ([`RawBackRing`]). Everything runs
//! from [`HostileBack::poll`] (xenstore, a few times a second) and
//! [`HostileBack::step`] (the rings, every millisecond).

use crate::back_ring::{parse_rx_request, parse_tx_request, rx_response, tx_response, RawBackRing};
use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use netback::config::{BackendOptions, EventChannels, FrontendConfig};
use netback::xenbus::{BackendDevice, Health};
use netback::NetbackEnv;
use xen::abi::grant_table::{GnttabCopy, GnttabCopyPtr, GNTCOPY_DEST_GREF};
use xen::abi::{Port, DOMID_SELF};
use xen::shared_page::SharedPage;
use xen::xenbus::{write_state, XenbusState};
use xen::xenstore::{XenStore, XsTransport};

const MS: u64 = 1_000_000;

/// How long a connection under an attack the frontend should survive
/// (a flood, mappings kept, a stall) lasts before we close it.
pub const ENDURE_NS: u64 = 6_000 * MS;

/// How long a frontend gets to notice a violation and leave.
pub const NOTICE_NS: u64 = 10_000 * MS;

/// Grants of one connection we map and keep at most (`keep-maps`).
const KEEP_MAX: usize = 64;

/// A frame for the flood: broadcast, an ethertype nobody speaks (IEEE's
/// local experimental 0x88b5), 60 bytes.
fn flood_frame(n: u64) -> [u8; 60] {
    let mut f = [0u8; 60];
    f[..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&[0x02, 0x68, 0x6f, 0x73, 0x74, 0x01]);
    f[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    f[14..22].copy_from_slice(&n.to_be_bytes());
    f
}

/// What a connection does to the frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackAttack {
    /// TX responses with an id the frontend never used.
    TxBadId,
    /// An RX response whose id is not the one posted in its slot.
    RxBadId,
    /// An RX response claiming data past the end of the buffer's page
    /// (offset 4000, 1000 bytes).
    RxBadSize,
    /// A TX response producer index 10,000 past anything requested.
    Index,
    /// Every RX buffer filled at once with a frame, as fast as the
    /// frontend posts them; TX answered correctly.
    Flood,
    /// Every grant the frontend names mapped and never unmapped, its
    /// rings' pages included, even after the connection is closed.
    KeepMaps,
    /// Nothing answered at all.
    Stall,
}

impl BackAttack {
    /// Every attack, in the order a vif meets them.
    pub const ALL: [BackAttack; 7] = [
        BackAttack::TxBadId,
        BackAttack::RxBadId,
        BackAttack::RxBadSize,
        BackAttack::Index,
        BackAttack::Flood,
        BackAttack::KeepMaps,
        BackAttack::Stall,
    ];

    /// The attack's name on the command line (`hostile.back=`).
    pub fn name(self) -> &'static str {
        match self {
            BackAttack::TxBadId => "tx-bad-id",
            BackAttack::RxBadId => "rx-bad-id",
            BackAttack::RxBadSize => "rx-bad-size",
            BackAttack::Index => "index",
            BackAttack::Flood => "flood",
            BackAttack::KeepMaps => "keep-maps",
            BackAttack::Stall => "stall",
        }
    }

    /// The attack named `name`.
    pub fn parse(name: &str) -> Option<BackAttack> {
        BackAttack::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Whether a frontend must close the connection over it (a protocol
    /// violation), rather than live with it until we close.
    pub fn is_violation(self) -> bool {
        matches!(
            self,
            BackAttack::TxBadId | BackAttack::RxBadId | BackAttack::RxBadSize | BackAttack::Index
        )
    }
}

/// The attacks of a comma-separated list (`all`: every one), in order.
pub fn parse_back_attacks(list: &str) -> Result<Vec<BackAttack>, &str> {
    if list == "all" {
        return Ok(BackAttack::ALL.to_vec());
    }
    list.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| BackAttack::parse(s).ok_or(s))
        .collect()
}

/// What we offer: one event channel, single-slot packets, no offloads (the
/// attacks need nothing more).
fn options() -> BackendOptions {
    BackendOptions {
        sg: false,
        gso_tcpv4: false,
        gso_tcpv6: false,
        ipv6_csum_offload: false,
        split_event_channels: false,
        ..BackendOptions::default()
    }
}

struct Conn<E: NetbackEnv> {
    attack: BackAttack,
    since: u64,
    front_id: u16,
    tx: RawBackRing<E::Mapping>,
    rx: RawBackRing<E::Mapping>,
    port: Port,
    /// RX buffers posted and not answered: (id, gref).
    rx_posted: VecDeque<(u16, u32)>,
    /// A page of ours holding the flood's frame.
    frame: Option<SharedPage<E::Page>>,
    /// The one-shot attacks have struck.
    struck: bool,
    requests: u64,
    responses: u64,
}

enum Phase<E: NetbackEnv> {
    /// Our directory to be read and the vif offered.
    Start,
    /// Offered (`InitWait`).
    Offered(BackendDevice),
    /// Connected, under attack.
    Up(BackendDevice, Conn<E>),
    /// We closed (at that time); offered again when the frontend starts
    /// over.
    Closed(BackendDevice, u64),
    /// The toolstack took the vif away.
    Gone,
}

/// One vif we serve, badly.
pub struct HostileBack<E: NetbackEnv> {
    /// Our directory, `backend/vif/<frontid>/<devid>`.
    pub path: String,
    attacks: Vec<BackAttack>,
    next: usize,
    phase: Phase<E>,
    /// Mappings kept for ever (`keep-maps`).
    kept: Vec<SharedPage<E::Mapping>>,
    /// Connections made.
    pub connects: u32,
    /// Connections the frontend closed under a violation in time.
    pub noticed: u32,
    /// Connections under a violation the frontend did not close in time.
    pub missed: u32,
    /// Connections under an endurable attack that we closed.
    pub endured: u32,
    /// Full passes over the attack list.
    pub passes: u32,
}

impl<E: NetbackEnv> HostileBack<E> {
    /// Serve the vif whose backend directory is `path` with `attacks`.
    pub fn new(path: &str, attacks: Vec<BackAttack>) -> Self {
        Self {
            path: path.to_string(),
            attacks,
            next: 0,
            phase: Phase::Start,
            kept: Vec::new(),
            connects: 0,
            noticed: 0,
            missed: 0,
            endured: 0,
            passes: 0,
        }
    }

    /// Whether the toolstack took the vif away.
    pub fn is_gone(&self) -> bool {
        matches!(self.phase, Phase::Gone)
    }

    /// Grant mappings kept for ever so far.
    pub fn kept(&self) -> usize {
        self.kept.len()
    }

    /// Follow xenstore once: offer, connect, notice the frontend leaving,
    /// end an endured attack, offer again. `print` gets the console lines.
    pub async fn poll<T: XsTransport>(
        &mut self,
        env: &mut E,
        xs: &mut XenStore<T>,
        now: u64,
        print: &mut dyn FnMut(&str),
    ) {
        let phase = core::mem::replace(&mut self.phase, Phase::Gone);
        self.phase = match phase {
            Phase::Start => match BackendDevice::open(xs, &self.path).await {
                Ok(device) => match device.advertise(xs, &options()).await {
                    Ok(()) => Phase::Offered(device),
                    Err(e) => {
                        print(&format!("hostile: back {}: offer: {e:?}", self.path));
                        Phase::Gone
                    }
                },
                Err(e) => {
                    print(&format!("hostile: back {}: {e:?}", self.path));
                    Phase::Gone
                }
            },
            Phase::Offered(device) => self.offered(env, xs, device, now, print).await,
            Phase::Up(device, conn) => self.up(env, xs, device, conn, now, print).await,
            Phase::Closed(device, at) => {
                if device.detached(xs).await.unwrap_or(true) {
                    self.gone(xs, &device).await
                } else {
                    match device.frontend_state(xs).await {
                        Ok(XenbusState::Initialising | XenbusState::InitWait)
                            if now.saturating_sub(at) > 500 * MS =>
                        {
                            match device.advertise(xs, &options()).await {
                                Ok(()) => Phase::Offered(device),
                                Err(_) => Phase::Closed(device, at),
                            }
                        }
                        Ok(XenbusState::Unknown) => self.gone(xs, &device).await,
                        _ => Phase::Closed(device, at),
                    }
                }
            }
            Phase::Gone => Phase::Gone,
        };
    }

    async fn gone<T: XsTransport>(
        &mut self,
        xs: &mut XenStore<T>,
        device: &BackendDevice,
    ) -> Phase<E> {
        let _ = write_state(xs, &device.path, XenbusState::Closed).await;
        if device.finished(xs).await.unwrap_or(true) {
            let _ = device.remove(xs).await;
        }
        Phase::Gone
    }

    async fn offered<T: XsTransport>(
        &mut self,
        env: &mut E,
        xs: &mut XenStore<T>,
        device: BackendDevice,
        now: u64,
        print: &mut dyn FnMut(&str),
    ) -> Phase<E> {
        if device.detached(xs).await.unwrap_or(true) {
            return self.gone(xs, &device).await;
        }
        if device.frontend_state(xs).await.ok() != Some(XenbusState::Connected) {
            return Phase::Offered(device);
        }
        let front = match FrontendConfig::read(xs, &device.frontend, &options()).await {
            Ok(f) => f,
            Err(e) => {
                print(&format!(
                    "hostile: back {}: frontend keys: {e:?}",
                    self.path
                ));
                let _ = write_state(xs, &device.path, XenbusState::Closed).await;
                return Phase::Closed(device, now);
            }
        };
        let dom = device.frontend_id;
        let remote = match front.events {
            EventChannels::Shared(p) => p,
            EventChannels::Split { tx, .. } => tx,
        };
        let tx = env.map_grant(dom, front.tx_ring_ref);
        let rx = env.map_grant(dom, front.rx_ring_ref);
        let port = env.bind_interdomain(dom, remote);
        let (tx, rx, port) = match (tx, rx, port) {
            (Ok(tx), Ok(rx), Ok(port)) => (tx, rx, port),
            (tx, rx, port) => {
                print(&format!(
                    "hostile: back {}: map/bind failed: {:?} {:?} {:?}",
                    self.path,
                    tx.as_ref().err(),
                    rx.as_ref().err(),
                    port.as_ref().err()
                ));
                if let Ok(p) = port {
                    env.close_port(p);
                }
                let _ = write_state(xs, &device.path, XenbusState::Closed).await;
                return Phase::Closed(device, now);
            }
        };
        let attack = self.attacks[self.next % self.attacks.len().max(1)];
        self.next += 1;
        let frame = if attack == BackAttack::Flood {
            env.alloc_page().ok()
        } else {
            None
        };
        if write_state(xs, &device.path, XenbusState::Connected)
            .await
            .is_err()
        {
            env.close_port(port);
            return Phase::Closed(device, now);
        }
        self.connects += 1;
        print(&format!(
            "hostile: back {} ({}): connected",
            self.path,
            attack.name()
        ));
        Phase::Up(
            device,
            Conn {
                attack,
                since: now,
                front_id: dom,
                tx: RawBackRing::attach(tx, 12),
                rx: RawBackRing::attach(rx, 8),
                port,
                rx_posted: VecDeque::new(),
                frame,
                struck: false,
                requests: 0,
                responses: 0,
            },
        )
    }

    async fn up<T: XsTransport>(
        &mut self,
        env: &mut E,
        xs: &mut XenStore<T>,
        device: BackendDevice,
        conn: Conn<E>,
        now: u64,
        print: &mut dyn FnMut(&str),
    ) -> Phase<E> {
        let ms = now.saturating_sub(conn.since) / MS;
        let health = device.health(xs).await.unwrap_or(Health::Detached);
        let how = match health {
            Health::Connected => {
                if conn.attack.is_violation() && now.saturating_sub(conn.since) > NOTICE_NS {
                    self.missed += 1;
                    format!("the frontend kept the connection for {ms} ms (missed)")
                } else if !conn.attack.is_violation() && now.saturating_sub(conn.since) > ENDURE_NS
                {
                    self.endured += 1;
                    format!("closed by us after {ms} ms (endured)")
                } else {
                    return Phase::Up(device, conn);
                }
            }
            Health::FrontendLeft(s) => {
                if conn.attack.is_violation() {
                    self.noticed += 1;
                    format!("the frontend left after {ms} ms (state {s:?}, noticed)")
                } else {
                    format!("the frontend left after {ms} ms (state {s:?})")
                }
            }
            Health::Detached => String::from("detached by the toolstack"),
        };
        print(&format!(
            "hostile: back {} ({}): {how}; requests={} responses={} kept-maps={}",
            self.path,
            conn.attack.name(),
            conn.requests,
            conn.responses,
            self.kept.len()
        ));
        self.teardown(env, conn);
        if self.next > 0 && self.next.is_multiple_of(self.attacks.len().max(1)) {
            self.passes += 1;
            print(&format!(
                "hostile: back {}: pass {} done (connects={} noticed={} missed={} endured={})",
                self.path, self.passes, self.connects, self.noticed, self.missed, self.endured
            ));
        }
        if health == Health::Detached {
            return self.gone(xs, &device).await;
        }
        // Closing first, as a backend giving up does, then Closed.
        let _ = write_state(xs, &device.path, XenbusState::Closing).await;
        let _ = write_state(xs, &device.path, XenbusState::Closed).await;
        Phase::Closed(device, now)
    }

    fn teardown(&mut self, env: &mut E, conn: Conn<E>) {
        env.close_port(conn.port);
        if conn.attack == BackAttack::KeepMaps {
            self.kept.push(conn.tx.into_page());
            self.kept.push(conn.rx.into_page());
        }
    }

    /// Work the rings once (every millisecond while connected).
    pub fn step(&mut self, env: &mut E) {
        let Phase::Up(_, conn) = &mut self.phase else {
            return;
        };
        let mut notify = false;
        match conn.attack {
            BackAttack::Stall => {}
            BackAttack::TxBadId => {
                let mut ids = Vec::new();
                conn.requests +=
                    u64::from(conn.tx.take_requests(|r| ids.push(parse_tx_request(r).3)));
                for id in ids {
                    conn.tx.put(&tx_response(id ^ 0x4000, 0));
                    conn.responses += 1;
                    notify = true;
                }
                conn.tx.publish();
            }
            BackAttack::Index => {
                if !conn.struck {
                    let prod = conn.tx.rsp_prod();
                    conn.tx.publish_raw(prod.wrapping_add(10_000));
                    conn.struck = true;
                    notify = true;
                }
            }
            BackAttack::RxBadId | BackAttack::RxBadSize => {
                let posted = &mut conn.rx_posted;
                conn.requests += u64::from(
                    conn.rx
                        .take_requests(|r| posted.push_back(parse_rx_request(r))),
                );
                if !conn.struck {
                    if let Some((id, _)) = conn.rx_posted.pop_front() {
                        let rsp = if conn.attack == BackAttack::RxBadId {
                            rx_response(id.wrapping_add(1), 0, 0, 60)
                        } else {
                            rx_response(id, 4000, 0, 1000)
                        };
                        conn.rx.put(&rsp);
                        conn.rx.publish();
                        conn.responses += 1;
                        conn.struck = true;
                        notify = true;
                    }
                }
                // TX answered correctly, so only the RX lie is wrong.
                notify |= answer_tx(conn);
            }
            BackAttack::Flood => {
                notify |= answer_tx(conn);
                let posted = &mut conn.rx_posted;
                conn.requests += u64::from(
                    conn.rx
                        .take_requests(|r| posted.push_back(parse_rx_request(r))),
                );
                if let Some(page) = &conn.frame {
                    let mut ops = Vec::new();
                    let mut ids = Vec::new();
                    while let Some((id, gref)) = conn.rx_posted.pop_front() {
                        let _ = page.write(0, &flood_frame(conn.responses + ids.len() as u64));
                        ops.push(GnttabCopy {
                            source: GnttabCopyPtr::frame(page.frame(), DOMID_SELF, 0),
                            dest: GnttabCopyPtr::gref(gref, conn.front_id, 0),
                            len: 60,
                            flags: GNTCOPY_DEST_GREF,
                            status: 0,
                        });
                        ids.push(id);
                        if ops.len() == 64 {
                            break;
                        }
                    }
                    if !ops.is_empty() {
                        let ok = env.grant_copy(&mut ops).is_ok();
                        for (op, id) in ops.iter().zip(ids) {
                            let status = if ok && op.status == 0 { 60 } else { -1 };
                            conn.rx.put(&rx_response(id, 0, 0, status));
                            conn.responses += 1;
                        }
                        conn.rx.publish();
                        notify = true;
                    }
                }
            }
            BackAttack::KeepMaps => {
                let mut reqs = Vec::new();
                conn.requests +=
                    u64::from(conn.tx.take_requests(|r| reqs.push(parse_tx_request(r))));
                for (gref, _, _, id, _) in reqs {
                    if self.kept.len() < KEEP_MAX * 4 {
                        if let Ok(m) = env.map_grant(conn.front_id, gref) {
                            self.kept.push(m);
                        }
                    }
                    conn.tx.put(&tx_response(id, 0));
                    conn.responses += 1;
                    notify = true;
                }
                conn.tx.publish();
                let mut posted = Vec::new();
                conn.requests +=
                    u64::from(conn.rx.take_requests(|r| posted.push(parse_rx_request(r))));
                for (_, gref) in posted.into_iter().take(KEEP_MAX) {
                    if self.kept.len() < KEEP_MAX * 4 {
                        if let Ok(m) = env.map_grant(conn.front_id, gref) {
                            self.kept.push(m);
                        }
                    }
                }
            }
        }
        if notify {
            env.notify(conn.port);
        }
    }
}

/// Answer every TX request correctly; whether any was answered.
fn answer_tx<E: NetbackEnv>(conn: &mut Conn<E>) -> bool {
    let mut ids = Vec::new();
    conn.requests += u64::from(conn.tx.take_requests(|r| ids.push(parse_tx_request(r).3)));
    let any = !ids.is_empty();
    for id in ids {
        conn.tx.put(&tx_response(id, 0));
        conn.responses += 1;
    }
    if any {
        conn.tx.publish();
    }
    any
}

/// The backend directories of vifs we are asked to serve
/// (`backend/vif/<frontid>/<devid>`), from our xenstore area.
pub async fn backend_vifs<T: XsTransport>(xs: &mut XenStore<T>) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(fronts) = xs.directory("backend/vif").await else {
        return out;
    };
    for f in fronts {
        if let Ok(devs) = xs.directory(&format!("backend/vif/{f}")).await {
            for d in devs {
                let path = format!("backend/vif/{f}/{d}");
                // Only directories the toolstack finished writing.
                if xs.read(&format!("{path}/frontend-id")).await.is_ok() {
                    out.push(path);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for a in BackAttack::ALL {
            assert_eq!(BackAttack::parse(a.name()), Some(a));
        }
        assert_eq!(parse_back_attacks("all").unwrap().len(), 7);
        assert_eq!(
            parse_back_attacks("index,stall"),
            Ok(alloc::vec![BackAttack::Index, BackAttack::Stall])
        );
        assert_eq!(parse_back_attacks("index,nope"), Err("nope"));
    }

    #[test]
    fn the_flood_frame_is_broadcast_of_an_unspoken_type() {
        let f = flood_frame(3);
        assert_eq!(&f[..6], &[0xff; 6]);
        assert_eq!(&f[12..14], &[0x88, 0xb5]);
    }
}
