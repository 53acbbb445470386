//! One hostile vif: the frontend half of the netif handshake, done by hand
//! (keys and states written as a netfront would, so a backend serves it),
//! then one [`Attack`] on its rings for as long as the backend keeps the
//! vif, and again each time the backend offers it anew after closing it.
//!
//! Every step is non-blocking: [`HostileVif::step`] writes requests and
//! takes responses, [`HostileVif::check`] reads the backend's state and
//! moves the handshake on, so one task drives every vif of the domain.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::net::Ipv4Addr;

use netfront::NetEnv;
use xen::abi::netif::*;
use xen::abi::{DomId, GrantRef, Port};
use xen::shared_page::SharedPage;
use xen::xenbus::{read_state, write_state, XenbusState};

use crate::frames::{self, Endpoints};
use crate::ring::{rx_request, rx_status, tx_extra, tx_request, tx_status, RawRing};
use crate::{Attack, Rng};

/// Data pages per vif: requests in flight at most (one page each).
const DATA_PAGES: usize = 64;
/// RX buffers posted by an attack that takes its answers.
const RX_BUFFERS: usize = 64;
/// How long the backend may take to offer a vif again (InitWait) or to
/// connect it, before the vif counts it and waits on.
const PATIENCE_NS: u64 = 20_000_000_000;
/// A closed vif asks to be served again this long after it closed.
const REOPEN_NS: u64 = 1_000_000_000;
/// `rx-stall` posts no RX buffer for this long, then bad ones.
const STALL_NS: u64 = 5_000_000_000;
/// Qubes' gateway MAC, where a client's frames go.
const GW_MAC: [u8; 6] = [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff];

/// What one vif did and what the backend did to it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Times the backend connected the vif.
    pub connects: u32,
    /// Times the backend closed it (a fault it judged fatal, or it left).
    pub closed: u32,
    /// Times the backend did not offer or connect it within 20 s.
    pub stuck: u32,
    /// TX requests published (slots).
    pub requests: u64,
    /// TX responses with `NETIF_RSP_OKAY`.
    pub ok: u64,
    /// TX responses with an error status (`ERROR`, `DROPPED`).
    pub errors: u64,
    /// RX responses taken (frames the backend delivered to us, or RX
    /// errors).
    pub rx: u64,
    /// Grants the backend still mapped when we tore a connection down (their
    /// pages are kept, retried later).
    pub stale_grants: u32,
    /// The last failure of our own (a grant, page or xenstore error).
    pub last_error: Option<String>,
}

struct Conn<P: xen::shared_page::PageMemory> {
    tx: RawRing<P>,
    rx: RawRing<P>,
    port: Port,
    /// Every grant of this connection (rings, data, RX buffers).
    grants: Vec<GrantRef>,
    data: Vec<(SharedPage<P>, GrantRef)>,
    rx_bufs: Vec<(SharedPage<P>, GrantRef)>,
    /// A data page granted to dom0 instead of the backend.
    elsewhere: GrantRef,
    since: u64,
    /// Packets sent this connection (drives the attack's cycle).
    n: u64,
    /// The producer index attack was made (the ring is dead to us).
    poisoned: bool,
}

enum Phase<P: xen::shared_page::PageMemory> {
    /// Waiting for the backend's InitWait (since then).
    WaitOffer(u64),
    /// Keys written, waiting for Connected.
    Connecting(Conn<P>),
    /// Connected: attacking.
    Up(Conn<P>),
    /// Closed by the backend at that time; asks again later.
    Down(u64),
}

/// One vif of ours under attack by us.
pub struct HostileVif<P: xen::shared_page::PageMemory> {
    /// `device/vif/N`.
    pub path: String,
    /// The attack.
    pub attack: Attack,
    backend: String,
    backend_id: DomId,
    target: Ipv4Addr,
    ep: Option<Endpoints>,
    phase: Phase<P>,
    stale: Vec<(GrantRef, SharedPage<P>)>,
    rng: Rng,
    /// When the backend first connected the vif.
    first_up: Option<u64>,
    /// The counters.
    pub report: Report,
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.trim().split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

async fn read<E: NetEnv>(env: &mut E, path: &str) -> Option<String> {
    env.xenstore()
        .read_string(path)
        .await
        .ok()
        .map(|s| s.trim_end_matches('\0').trim().to_string())
}

impl<P: xen::shared_page::PageMemory> HostileVif<P> {
    /// The vif at `path` (`device/vif/N`), its backend read from xenstore;
    /// frames go to `target`; `seed` varies its random choices.
    pub async fn open<E: NetEnv<Page = P>>(
        env: &mut E,
        path: &str,
        attack: Attack,
        target: Ipv4Addr,
        seed: u64,
        now: u64,
    ) -> Result<Self, String> {
        let backend = read(env, &format!("{path}/backend"))
            .await
            .ok_or_else(|| format!("{path}: no backend"))?;
        let backend_id: DomId = read(env, &format!("{path}/backend-id"))
            .await
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("{path}: no backend-id"))?;
        let mac = read(env, &format!("{path}/mac"))
            .await
            .and_then(|m| parse_mac(&m));
        let ip = read(env, &format!("{backend}/ip")).await.and_then(|s| {
            s.split_whitespace()
                .find_map(|a| a.parse::<Ipv4Addr>().ok())
        });
        let ep = match (mac, ip) {
            (Some(mac), Some(ip)) => Some(Endpoints {
                mac,
                gw_mac: GW_MAC,
                ip,
            }),
            _ => None,
        };
        Ok(Self {
            path: path.to_string(),
            attack,
            backend,
            backend_id,
            target,
            ep,
            phase: Phase::WaitOffer(now),
            stale: Vec::new(),
            rng: Rng::new(seed),
            first_up: None,
            report: Report::default(),
        })
    }

    /// Our MAC and address, if the toolstack gave both.
    pub fn endpoints(&self) -> Option<Endpoints> {
        self.ep
    }

    /// Whether this vif is done at `now`: attacked for `attack_ns` since
    /// the backend first connected it, or never connected `patience_ns`
    /// after `start`.
    pub fn done(&self, now: u64, start: u64, attack_ns: u64, patience_ns: u64) -> bool {
        match self.first_up {
            Some(t) => now.saturating_sub(t) >= attack_ns,
            None => now.saturating_sub(start) >= patience_ns,
        }
    }

    /// Whether the backend has the vif connected now.
    pub fn is_up(&self) -> bool {
        matches!(self.phase, Phase::Up(_))
    }

    fn grant_page<E: NetEnv<Page = P>>(
        &mut self,
        env: &mut E,
        to: DomId,
        readonly: bool,
        grants: &mut Vec<GrantRef>,
    ) -> Result<(SharedPage<P>, GrantRef), String> {
        let page = env.alloc_page().map_err(|e| format!("page: {e:?}"))?;
        let gref = env
            .grant_access(to, page.frame(), readonly)
            .map_err(|e| format!("grant: {e:?}"))?;
        grants.push(gref);
        Ok((page, gref))
    }

    /// Rings, pages, grants and a port for a new connection.
    fn build<E: NetEnv<Page = P>>(&mut self, env: &mut E, now: u64) -> Result<Conn<P>, String> {
        let b = self.backend_id;
        let mut grants = Vec::new();
        let built = (|| {
            let (tx_page, _) = self.grant_page(env, b, false, &mut grants)?;
            let (rx_page, _) = self.grant_page(env, b, false, &mut grants)?;
            let mut data = Vec::new();
            for _ in 0..DATA_PAGES {
                data.push(self.grant_page(env, b, true, &mut grants)?);
            }
            let mut rx_bufs = Vec::new();
            if self.attack != Attack::RxStall {
                for _ in 0..RX_BUFFERS {
                    rx_bufs.push(self.grant_page(env, b, false, &mut grants)?);
                }
            }
            let (spare, elsewhere) = self.grant_page(env, 0, true, &mut grants)?;
            data.push((spare, elsewhere));
            Ok::<_, String>((tx_page, rx_page, data, rx_bufs, elsewhere))
        })();
        let (tx_page, rx_page, data, rx_bufs, elsewhere) = match built {
            Ok(b) => b,
            Err(e) => {
                for g in grants {
                    let _ = env.end_access(g);
                }
                return Err(e);
            }
        };
        let port = match env.alloc_unbound(b) {
            Ok(p) => p,
            Err(e) => {
                for g in grants {
                    let _ = env.end_access(g);
                }
                return Err(format!("event channel: {e:?}"));
            }
        };
        let mut rx = RawRing::new(rx_page, 8);
        for (i, (_, gref)) in rx_bufs.iter().enumerate() {
            rx.put(&rx_request(i as u16, *gref));
        }
        rx.publish();
        Ok(Conn {
            tx: RawRing::new(tx_page, 12),
            rx,
            port,
            grants,
            data,
            rx_bufs,
            elsewhere,
            since: now,
            n: 0,
            poisoned: false,
        })
    }

    /// End a connection's grants (those the backend still maps are kept
    /// with their pages and retried at each check) and close its port.
    fn tear_down<E: NetEnv<Page = P>>(&mut self, env: &mut E, conn: Conn<P>) {
        env.close_port(conn.port);
        let Conn {
            tx,
            rx,
            grants,
            data,
            rx_bufs,
            ..
        } = conn;
        let mut pages: Vec<(GrantRef, SharedPage<P>)> = Vec::new();
        let mut it = grants.iter();
        // Grants were made in this order: tx, rx, data..., rx_bufs...,
        // elsewhere (the last data page).
        let ring_pages = [tx.into_page(), rx.into_page()];
        for page in ring_pages {
            if let Some(g) = it.next() {
                pages.push((*g, page));
            }
        }
        for (page, g) in data.into_iter().chain(rx_bufs) {
            pages.push((g, page));
        }
        for (g, page) in pages {
            if env.end_access(g).is_err() {
                self.report.stale_grants += 1;
                self.stale.push((g, page));
            }
        }
    }

    async fn publish_keys<E: NetEnv<Page = P>>(
        &mut self,
        env: &mut E,
        conn: &Conn<P>,
    ) -> Result<(), String> {
        let (tx_ref, rx_ref) = match conn.grants.as_slice() {
            [t, r, ..] => (*t, *r),
            _ => return Err("no ring grants".into()),
        };
        let keys = [
            ("tx-ring-ref", tx_ref.to_string()),
            ("rx-ring-ref", rx_ref.to_string()),
            ("event-channel", conn.port.to_string()),
            ("request-rx-copy", "1".into()),
            ("feature-rx-notify", "1".into()),
            ("feature-sg", "1".into()),
            ("feature-gso-tcpv4", "1".into()),
            ("state", "4".into()),
        ];
        for (k, v) in keys {
            env.xenstore()
                .write(&format!("{}/{k}", self.path), v.as_bytes())
                .await
                .map_err(|e| format!("write {k}: {e:?}"))?;
        }
        Ok(())
    }

    async fn set_state<E: NetEnv<Page = P>>(&mut self, env: &mut E, s: XenbusState) {
        let _ = write_state(env.xenstore(), &self.path, s).await;
    }

    /// Look at the backend and move the handshake on; prints what changed.
    pub async fn check<E: NetEnv<Page = P>>(&mut self, env: &mut E, now: u64, print: fn(&str)) {
        // Grants the backend held on to: try again.
        let mut kept = Vec::new();
        for (g, page) in core::mem::take(&mut self.stale) {
            if env.end_access(g).is_err() {
                kept.push((g, page));
            }
        }
        self.stale = kept;
        let back = read_state(env.xenstore(), &self.backend).await.ok();
        let phase = core::mem::replace(&mut self.phase, Phase::Down(now));
        self.phase = match phase {
            Phase::WaitOffer(since) if back == Some(XenbusState::InitWait) => {
                match self.build(env, now) {
                    Ok(conn) => match self.publish_keys(env, &conn).await {
                        Ok(()) => Phase::Connecting(conn),
                        Err(e) => {
                            self.report.last_error = Some(e);
                            self.tear_down(env, conn);
                            Phase::WaitOffer(since)
                        }
                    },
                    Err(e) => {
                        self.report.last_error = Some(e);
                        Phase::WaitOffer(since)
                    }
                }
            }
            Phase::WaitOffer(since) => {
                if now.saturating_sub(since) > PATIENCE_NS {
                    self.report.stuck += 1;
                    print(&format!(
                        "hostile: {} ({}): not offered again (backend state {back:?})",
                        self.path,
                        self.attack.name()
                    ));
                    Phase::WaitOffer(now)
                } else {
                    Phase::WaitOffer(since)
                }
            }
            Phase::Connecting(mut conn) if back == Some(XenbusState::Connected) => {
                self.report.connects += 1;
                self.first_up.get_or_insert(now);
                print(&format!(
                    "hostile: {} ({}): connected",
                    self.path,
                    self.attack.name()
                ));
                conn.since = now;
                Phase::Up(conn)
            }
            Phase::Connecting(conn) | Phase::Up(conn)
                if !matches!(back, Some(XenbusState::Connected | XenbusState::InitWait)) =>
            {
                // Closing, Closed, or the directory gone (Unknown).
                if matches!(
                    back,
                    Some(XenbusState::Closing | XenbusState::Closed | XenbusState::Unknown) | None
                ) {
                    self.report.closed += 1;
                    print(&format!(
                        "hostile: {} ({}): closed by the backend after {} ms ({} requests, {} errors)",
                        self.path,
                        self.attack.name(),
                        now.saturating_sub(conn.since) / 1_000_000,
                        self.report.requests,
                        self.report.errors
                    ));
                    self.tear_down(env, conn);
                    self.set_state(env, XenbusState::Closing).await;
                    self.set_state(env, XenbusState::Closed).await;
                    Phase::Down(now)
                } else {
                    Phase::Connecting(conn)
                }
            }
            Phase::Connecting(conn) => {
                if now.saturating_sub(conn.since) > PATIENCE_NS {
                    self.report.stuck += 1;
                    print(&format!(
                        "hostile: {} ({}): not connected within 20 s (backend state {back:?})",
                        self.path,
                        self.attack.name()
                    ));
                    self.tear_down(env, conn);
                    self.set_state(env, XenbusState::Closed).await;
                    Phase::Down(now)
                } else {
                    Phase::Connecting(conn)
                }
            }
            Phase::Up(conn) => Phase::Up(conn),
            Phase::Down(at) if now.saturating_sub(at) >= REOPEN_NS => {
                self.set_state(env, XenbusState::Initialising).await;
                Phase::WaitOffer(now)
            }
            Phase::Down(at) => Phase::Down(at),
        };
    }

    /// One round of the attack: requests written and published (the
    /// backend notified), responses taken.
    pub fn step<E: NetEnv<Page = P>>(&mut self, env: &mut E, now: u64) {
        let Phase::Up(conn) = &mut self.phase else {
            return;
        };
        let attack = self.attack;
        let rep = &mut self.report;
        conn.tx.take_responses(|r| match tx_status(r) {
            NETIF_RSP_OKAY => rep.ok += 1,
            NETIF_RSP_NULL => {}
            _ => rep.errors += 1,
        });
        // RX: take what came; give the buffers back (an attack that takes
        // its answers), or post bad buffers (rx-stall, after the stall).
        let mut got = 0u32;
        conn.rx.take_responses(|r| {
            let _ = rx_status(r);
            got += 1;
        });
        rep.rx += u64::from(got);
        if attack == Attack::RxStall {
            if now.saturating_sub(conn.since) > STALL_NS && !conn.poisoned {
                // Buffers whose grants are not ours to give.
                while conn.rx.free() > 0 {
                    let id = (conn.rx.req_prod() & 0xffff) as u16;
                    conn.rx.put(&rx_request(id, 0xfff0_0000 | u32::from(id)));
                }
                conn.rx.publish();
                env.notify(conn.port);
            }
        } else if got > 0 {
            for _ in 0..got {
                let k = (conn.rx.req_prod() as usize) % conn.rx_bufs.len().max(1);
                if let Some((_, g)) = conn.rx_bufs.get(k) {
                    conn.rx.put(&rx_request(k as u16, *g));
                }
            }
            conn.rx.publish();
        }
        if conn.poisoned {
            return;
        }
        let outstanding = conn.tx.size() - conn.tx.free();
        let room = (DATA_PAGES as u32)
            .saturating_sub(outstanding)
            .min(conn.tx.free());
        let mut sent = 0;
        // Leave room for the longest chain an attack writes (21 slots).
        while sent + 21 < room {
            let n = match attack {
                Attack::BadGrant => bad_grant(conn, &mut self.rng),
                Attack::Malformed => malformed(conn, self.ep.as_ref(), self.target),
                Attack::Index => {
                    index(conn, self.ep.as_ref(), self.target);
                    sent += 1;
                    break;
                }
                Attack::Flood | Attack::Flows | Attack::Frags | Attack::RxStall => {
                    let Some(ep) = self.ep else { break };
                    let frame = match attack {
                        Attack::Flood => frames::udp(&ep, self.target, 4000, 9, 18),
                        Attack::Flows => {
                            let r = self.rng.next_u64();
                            frames::tcp_syn(
                                &ep,
                                self.target,
                                1024 + (r as u16 % 60000),
                                1 + ((r >> 16) as u16 % 1000),
                                (r >> 32) as u32,
                            )
                        }
                        Attack::Frags => frames::udp_first_fragment(
                            &ep,
                            self.target,
                            self.rng.next_u64() as u16,
                            1000,
                        ),
                        _ => frames::ping(&ep, self.target, conn.n as u16),
                    };
                    one_frame(conn, &frame)
                }
            };
            conn.n += 1;
            sent += n;
        }
        if sent > 0 {
            rep.requests += u64::from(sent);
            if !conn.poisoned {
                conn.tx.publish();
            }
            env.notify(conn.port);
        }
    }
}

/// The data page and id of the next request (pages are reused as requests
/// complete: at most [`DATA_PAGES`] in flight).
fn slot<P: xen::shared_page::PageMemory>(conn: &Conn<P>) -> (usize, u16) {
    let k = (conn.tx.req_prod() as usize) % DATA_PAGES;
    (k, k as u16)
}

/// A well-formed frame in one slot; returns the slots used.
fn one_frame<P: xen::shared_page::PageMemory>(conn: &mut Conn<P>, frame: &[u8]) -> u32 {
    let (k, id) = slot(conn);
    let Some((page, gref)) = conn.data.get(k) else {
        return 0;
    };
    let _ = page.write(0, frame);
    conn.tx
        .put(&tx_request(*gref, 0, 0, id, frame.len() as u16));
    1
}

/// A frame-sized request whose grant is not one the backend may use:
/// random references, or a page granted to dom0.
fn bad_grant<P: xen::shared_page::PageMemory>(conn: &mut Conn<P>, rng: &mut Rng) -> u32 {
    let (_, id) = slot(conn);
    let r = rng.next_u64();
    let gref = if r & 1 == 0 {
        conn.elsewhere
    } else {
        (r >> 8) as u32 | 0x8000
    };
    conn.tx
        .put(&tx_request(gref, 0, 0, id, 60 + (r >> 40) as u16 % 1400));
    1
}

/// Malformed requests in turn (each a netback violation), with a good
/// frame between them.
fn malformed<P: xen::shared_page::PageMemory>(
    conn: &mut Conn<P>,
    ep: Option<&Endpoints>,
    target: Ipv4Addr,
) -> u32 {
    let (k, id) = slot(conn);
    let gref = conn.data.get(k).map(|d| d.1).unwrap_or(0);
    match conn.n % 8 {
        // empty
        0 => conn.tx.put(&tx_request(gref, 0, 0, id, 0)),
        // runt
        1 => conn.tx.put(&tx_request(gref, 0, 0, id, 10)),
        // out of the page
        2 => conn.tx.put(&tx_request(gref, 4000, 0, id, 200)),
        // the follow-on slot holds more than the total
        3 => {
            conn.tx.put(&tx_request(gref, 0, NETTXF_MORE_DATA, id, 100));
            let (_, id2) = slot(conn);
            conn.tx.put(&tx_request(gref, 0, 0, id2, 500));
            return 2;
        }
        // 20 data slots
        4 => {
            for i in 0..20u16 {
                let (_, idn) = slot(conn);
                let flags = if i < 19 { NETTXF_MORE_DATA } else { 0 };
                let size = if i == 0 { 20 * 64 } else { 64 };
                conn.tx.put(&tx_request(gref, 0, flags, idn, size));
            }
            return 20;
        }
        // an extra info slot of an unknown type
        5 => {
            conn.tx
                .put(&tx_request(gref, 0, NETTXF_EXTRA_INFO, id, 1000));
            conn.tx.put(&tx_extra(99, 0, 0, 0));
            return 2;
        }
        // GSO with size 0
        6 => {
            conn.tx
                .put(&tx_request(gref, 0, NETTXF_EXTRA_INFO, id, 1000));
            conn.tx.put(&tx_extra(
                XEN_NETIF_EXTRA_TYPE_GSO,
                0,
                0,
                XEN_NETIF_GSO_TYPE_TCPV4,
            ));
            return 2;
        }
        // a good frame
        _ => match ep {
            Some(ep) => return one_frame(conn, &frames::udp(ep, target, 4001, 9, 100)),
            None => conn.tx.put(&tx_request(gref, 0, 0, id, 60)),
        },
    }
    1
}

/// The ring's indices attacked: every other connection, a producer index
/// far past the ring; else a packet whose `more_data` chain runs past the
/// requests published. Either is fatal to the vif.
fn index<P: xen::shared_page::PageMemory>(
    conn: &mut Conn<P>,
    ep: Option<&Endpoints>,
    target: Ipv4Addr,
) {
    if let Some(ep) = ep {
        one_frame(conn, &frames::udp(ep, target, 4002, 9, 100));
    }
    let (k, id) = slot(conn);
    let gref = conn.data.get(k).map(|d| d.1).unwrap_or(0);
    if (conn.since / 1_000_000_000).is_multiple_of(2) {
        conn.tx.publish();
        let far = conn.tx.req_prod().wrapping_add(10_000);
        conn.tx.publish_raw(far);
    } else {
        conn.tx
            .put(&tx_request(gref, 0, NETTXF_MORE_DATA, id, 1000));
        conn.tx.publish();
    }
    conn.poisoned = true;
}
