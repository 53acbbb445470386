//! Test rig: the frontend's environment over `xen::sim`, a simulated
//! netback speaking the ring protocol (copy-mode RX, scatter-gather TX),
//! and a tiny executor that runs the backend between polls.
#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use netfront::{ConnectOptions, EnvError, NetEnv, Netfront, NetfrontError};
use xen::abi::netif::*;
use xen::abi::{DomId, GrantRef, Port};
use xen::grant::GrantError;
use xen::shared_page::{PageBackRing, SharedPage, PAGE_SIZE};
use xen::sim::{SimHypervisor, SimPage, SimTransport, Xenstored};
use xen::xenstore::XenStore;

pub const FRONT: DomId = 1;
pub const BACK: DomId = 0;
pub const FRONT_PATH: &str = "device/vif/0";
pub const FRONT_ABS: &str = "/local/domain/1/device/vif/0";
pub const BACK_PATH: &str = "/local/domain/0/backend/vif/1/0";
pub const MAC: &str = "00:16:3e:5e:6c:01";

/// The frontend domain's view of the simulated machine.
pub struct SimEnv {
    pub hv: SimHypervisor,
    pub xs: XenStore<SimTransport>,
}

impl NetEnv for SimEnv {
    type Page = SimPage;
    type Xs = SimTransport;

    fn alloc_page(&mut self) -> Result<SharedPage<SimPage>, EnvError> {
        Ok(self.hv.alloc_page())
    }
    fn grant_access(&mut self, domid: DomId, frame: u64, ro: bool) -> Result<GrantRef, GrantError> {
        self.hv.grant_access(FRONT, domid, frame, ro)
    }
    fn end_access(&mut self, gref: GrantRef) -> Result<(), GrantError> {
        self.hv.end_access(FRONT, gref)
    }
    fn alloc_unbound(&mut self, remote: DomId) -> Result<Port, EnvError> {
        self.hv
            .alloc_unbound(FRONT, remote)
            .map_err(|_| EnvError::Hypercall(-3))
    }
    fn notify(&mut self, port: Port) {
        let _ = self.hv.send(FRONT, port);
    }
    fn poll_event(&mut self, port: Port, cx: &mut Context<'_>) -> Poll<()> {
        self.hv.poll_event(FRONT, port, cx)
    }
    fn close_port(&mut self, port: Port) {
        self.hv.close(FRONT, port)
    }
    fn xenstore(&mut self) -> &mut XenStore<SimTransport> {
        &mut self.xs
    }
}

/// A machine: hypervisor, xenstored with the toolstack's entries for one
/// vif, and the frontend's environment.
pub struct Machine {
    pub hv: SimHypervisor,
    pub xsd: Rc<RefCell<Xenstored>>,
}

impl Machine {
    pub fn new() -> Self {
        let xsd = Rc::new(RefCell::new(Xenstored::new(FRONT)));
        {
            let mut d = xsd.borrow_mut();
            d.set(&format!("{FRONT_ABS}/backend"), BACK_PATH.as_bytes());
            d.set(&format!("{FRONT_ABS}/backend-id"), b"0");
            d.set(&format!("{FRONT_ABS}/mac"), MAC.as_bytes());
            d.set(&format!("{FRONT_ABS}/state"), b"1");
            for key in [
                "feature-rx-copy",
                "feature-sg",
                "feature-gso-tcpv4",
                "feature-gso-tcpv6",
                "feature-rx-notify",
                "feature-ipv6-csum-offload",
            ] {
                d.set(&format!("{BACK_PATH}/{key}"), b"1");
            }
            d.set(&format!("{BACK_PATH}/state"), b"2");
        }
        Self {
            hv: SimHypervisor::new(),
            xsd,
        }
    }

    pub fn env(&self) -> SimEnv {
        SimEnv {
            hv: self.hv.clone(),
            xs: XenStore::new(SimTransport::new(self.xsd.clone(), 64)),
        }
    }

    pub fn get(&self, path: &str) -> Option<String> {
        self.xsd
            .borrow()
            .get(path)
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    pub fn set(&self, path: &str, value: &str) {
        self.xsd.borrow_mut().set(path, value.as_bytes())
    }

    pub fn backend(&self) -> SimNetback {
        SimNetback {
            hv: self.hv.clone(),
            xsd: self.xsd.clone(),
            conns: Vec::new(),
            active: 0,
            received: Vec::new(),
            events_seen: 0,
        }
    }
}

/// Poll `fut`, running `side` (the other domains) between polls.
pub fn run<F: Future>(fut: F, mut side: impl FnMut()) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..200_000 {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        side();
    }
    panic!("future stalled")
}

/// Connect a frontend with `options`, the backend answering meanwhile.
pub fn connect(
    m: &Machine,
    back: &mut SimNetback,
    options: ConnectOptions,
) -> Result<Netfront<SimEnv>, NetfrontError> {
    run(Netfront::connect(m.env(), FRONT_PATH, options), || {
        back.step()
    })
    .map_err(|(_, e)| e)
}

/// Connect again with an environment handed back by a disconnect.
pub fn reconnect(
    env: SimEnv,
    back: &mut SimNetback,
    options: ConnectOptions,
) -> Result<Netfront<SimEnv>, NetfrontError> {
    run(Netfront::connect(env, FRONT_PATH, options), || back.step()).map_err(|(_, e)| e)
}

/// A packet as the backend saw it.
#[derive(Debug, Clone)]
pub struct BackPacket {
    pub data: Vec<u8>,
    pub flags: u16,
    pub extra: Option<NetifExtraInfo>,
    pub slots: usize,
}

pub struct Conn {
    pub tx: PageBackRing<SimPage, NetifTxRequest, NetifTxResponse>,
    pub rx: PageBackRing<SimPage, NetifRxRequest, NetifRxResponse>,
    pub tx_page: SharedPage<SimPage>,
    pub rx_page: SharedPage<SimPage>,
    pub port: Port,
    pub tx_ref: GrantRef,
    pub rx_ref: GrantRef,
    pub rx_reqs: VecDeque<NetifRxRequest>,
}

/// A netback in domain 0.
pub struct SimNetback {
    pub hv: SimHypervisor,
    pub xsd: Rc<RefCell<Xenstored>>,
    /// One connection per queue; `active` is the one the methods use.
    pub conns: Vec<Conn>,
    pub active: usize,
    pub received: Vec<BackPacket>,
    pub events_seen: u64,
}

fn read_u32(page: &SharedPage<SimPage>, offset: usize) -> u32 {
    let mut b = [0; 4];
    page.read(offset, &mut b).unwrap();
    u32::from_ne_bytes(b)
}

impl SimNetback {
    fn front_key(&self, key: &str) -> Option<String> {
        self.xsd
            .borrow()
            .get(&format!("{FRONT_ABS}/{key}"))
            .map(|v| String::from_utf8(v).unwrap())
    }

    /// React to the frontend's xenstore state, as netback's xenbus watch.
    pub fn step(&mut self) {
        if !self.conns.is_empty() || self.front_key("state").as_deref() != Some("4") {
            return;
        }
        self.attach_rings();
        self.xsd
            .borrow_mut()
            .set(&format!("{BACK_PATH}/state"), b"4");
    }

    /// Map the rings and bind the event channels the frontend published
    /// (netback's `connect`), without publishing a state.
    pub fn attach_rings(&mut self) {
        assert_eq!(self.front_key("request-rx-copy").as_deref(), Some("1"));
        let dirs: Vec<String> = match self.front_key("multi-queue-num-queues") {
            None => vec![String::new()],
            Some(n) => (0..n.parse::<usize>().unwrap())
                .map(|i| format!("queue-{i}/"))
                .collect(),
        };
        for dir in dirs {
            let num = |k: &str| {
                self.front_key(&format!("{dir}{k}"))
                    .unwrap()
                    .parse::<u32>()
                    .unwrap()
            };
            let (tx_ref, rx_ref, evtchn) =
                (num("tx-ring-ref"), num("rx-ring-ref"), num("event-channel"));
            let tx_page = self.hv.map_grant(BACK, FRONT, tx_ref, false).unwrap();
            let rx_page = self.hv.map_grant(BACK, FRONT, rx_ref, false).unwrap();
            let tx_view = SharedPage::new(tx_page.memory().clone());
            let rx_view = SharedPage::new(rx_page.memory().clone());
            // Attach where the frontend initialised the rings (rsp_prod).
            let tx_start = read_u32(&tx_view, 8);
            let rx_start = read_u32(&rx_view, 8);
            let port = self.hv.bind_interdomain(BACK, FRONT, evtchn).unwrap();
            self.conns.push(Conn {
                tx: tx_page.into_back_ring(tx_start),
                rx: rx_page.into_back_ring(rx_start),
                tx_page: tx_view,
                rx_page: rx_view,
                port,
                tx_ref,
                rx_ref,
                rx_reqs: VecDeque::new(),
            });
        }
    }

    /// Unmap the rings and close the ports (netback's `disconnect`),
    /// without publishing a state.
    pub fn detach_rings(&mut self) {
        for c in self.conns.drain(..) {
            self.hv.unmap_grant(FRONT, c.tx_ref);
            self.hv.unmap_grant(FRONT, c.rx_ref);
            self.hv.close(BACK, c.port);
        }
    }

    /// netback restarts (dom0 service restart): it unmaps the rings,
    /// closes its port and publishes `Closed`; later `InitWait` again.
    pub fn restart(&mut self) {
        self.detach_rings();
        self.xsd
            .borrow_mut()
            .set(&format!("{BACK_PATH}/state"), b"6");
    }

    pub fn conn(&mut self) -> &mut Conn {
        self.conns.get_mut(self.active).expect("backend connected")
    }

    fn notify_if(&mut self, needed: bool) {
        if needed {
            let port = self.conn().port;
            self.hv.send(BACK, port).unwrap();
        }
    }

    /// Take every TX request: assemble packets, copy them out through grant
    /// copy, answer each slot. Returns packets seen.
    pub fn process_tx(&mut self) -> usize {
        let hv = self.hv.clone();
        let mut n = 0;
        loop {
            let c = self.conn();
            let mut reqs = Vec::new();
            let mut extra = None;
            let Some(first) = c.tx.take_request().unwrap() else {
                let again = c.tx.final_check_for_requests().unwrap();
                if again {
                    continue;
                }
                break;
            };
            reqs.push(first);
            let mut flags = first.flags;
            if first.flags & NETTXF_EXTRA_INFO != 0 {
                let e =
                    c.tx.take_request()
                        .unwrap()
                        .expect("extra slot pushed with packet");
                extra = Some(NetifExtraInfo::from_tx_request(e));
            }
            while flags & NETTXF_MORE_DATA != 0 {
                let r = c.tx.take_request().unwrap().expect("whole packet pushed");
                flags = r.flags;
                reqs.push(r);
            }
            let rest: usize = reqs[1..].iter().map(|r| r.size as usize).sum();
            let total = first.size as usize;
            let mut data = vec![0u8; total];
            let mut at = 0;
            for (i, r) in reqs.iter().enumerate() {
                let len = if i == 0 {
                    total - rest
                } else {
                    r.size as usize
                };
                hv.copy_from_grant(
                    BACK,
                    FRONT,
                    r.gref,
                    r.offset as usize,
                    &mut data[at..at + len],
                )
                .unwrap();
                at += len;
            }
            for (i, r) in reqs.iter().enumerate() {
                c.tx.queue_response(NetifTxResponse {
                    id: r.id,
                    status: NETIF_RSP_OKAY,
                })
                .unwrap();
                if i == 0 && extra.is_some() {
                    c.tx.queue_response(NetifTxResponse {
                        id: 0xdead,
                        status: NETIF_RSP_NULL,
                    })
                    .unwrap();
                }
            }
            let notify = c.tx.push_responses_and_check_notify();
            self.received.push(BackPacket {
                data,
                flags: first.flags,
                extra,
                slots: reqs.len() + usize::from(extra.is_some()),
            });
            self.notify_if(notify);
            n += 1;
        }
        n
    }

    fn gather_rx(&mut self, need: usize) -> bool {
        let c = self.conn();
        while c.rx_reqs.len() < need {
            match c.rx.take_request().unwrap() {
                Some(r) => c.rx_reqs.push_back(r),
                None => return false,
            }
        }
        true
    }

    /// Copy `packet` into posted buffers (as netback's copy mode does);
    /// false if the frontend posted too few.
    pub fn send_rx(&mut self, packet: &[u8], flags: u16, gso: Option<NetifExtraInfoGso>) -> bool {
        let chunks = packet.len().div_ceil(PAGE_SIZE).max(1);
        if !self.gather_rx(chunks + usize::from(gso.is_some())) {
            return false;
        }
        let hv = self.hv.clone();
        let c = self.conn();
        for (i, chunk) in packet.chunks(PAGE_SIZE).enumerate() {
            let req = c.rx_reqs.pop_front().unwrap();
            hv.copy_to_grant(BACK, FRONT, req.gref, 0, chunk).unwrap();
            let mut f = if i == 0 { flags } else { 0 };
            if i + 1 < chunks {
                f |= NETRXF_MORE_DATA;
            }
            if i == 0 && gso.is_some() {
                f |= NETRXF_EXTRA_INFO;
            }
            c.rx.queue_response(NetifRxResponse {
                id: req.id,
                offset: 0,
                flags: f,
                status: chunk.len() as i16,
            })
            .unwrap();
            if i == 0 {
                if let Some(g) = gso {
                    c.rx_reqs.pop_front().unwrap();
                    c.rx.queue_response(NetifExtraInfo::gso(g).to_rx_response())
                        .unwrap();
                }
            }
        }
        let notify = c.rx.push_responses_and_check_notify();
        self.notify_if(notify);
        true
    }

    /// Answer one posted RX request with `rsp` built from it (garbage).
    pub fn inject_rx(&mut self, make: impl FnOnce(NetifRxRequest) -> NetifRxResponse) {
        assert!(self.gather_rx(1));
        let c = self.conn();
        let req = c.rx_reqs.pop_front().unwrap();
        c.rx.queue_response(make(req)).unwrap();
        let notify = c.rx.push_responses_and_check_notify();
        self.notify_if(notify);
    }

    /// Answer the next TX request with `rsp` built from it (garbage).
    pub fn inject_tx(&mut self, make: impl FnOnce(NetifTxRequest) -> NetifTxResponse) {
        let c = self.conn();
        let req = c.tx.take_request().unwrap().expect("a request to answer");
        c.tx.queue_response(make(req)).unwrap();
        let notify = c.tx.push_responses_and_check_notify();
        self.notify_if(notify);
    }

    /// The backend domain dies: its ports close, its mappings vanish, and
    /// the toolstack marks the backend closed.
    pub fn vanish(&mut self) {
        self.conns.clear();
        self.hv.destroy_domain(BACK);
        self.xsd
            .borrow_mut()
            .set(&format!("{BACK_PATH}/state"), b"6");
    }
}

/// Deterministic packet bytes.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(seed as u32) as u8)
        .collect()
}
