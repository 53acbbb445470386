//! Test rig: one simulated machine with a moat driver domain running our
//! netback (domain 2) and frontend domains running our netfront, each with
//! its own xenstore connection to one simulated xenstored.
#![allow(dead_code)]

use std::cell::RefCell;
use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use netback::sim::SimNetbackEnv;
use netback::{BackendOptions, NetbackError, Packet, Vif};
use netfront::{ConnectOptions, EnvError, NetEnv, Netfront, NetfrontError};
use xen::abi::{DomId, GrantRef, Port};
use xen::grant::GrantError;
use xen::shared_page::SharedPage;
use xen::sim::{SimHypervisor, SimPage, SimTransport, Xenstored};
use xen::xenstore::XenStore;

/// The driver domain.
pub const BACK: DomId = 2;
/// Frontend domains.
pub const FRONT: DomId = 1;
pub const FRONT2: DomId = 3;

pub fn front_path(dom: DomId) -> String {
    format!("/local/domain/{dom}/device/vif/0")
}
pub fn back_path(dom: DomId) -> String {
    format!("/local/domain/{BACK}/backend/vif/{dom}/0")
}

/// A frontend domain's environment.
pub struct FrontEnv {
    pub hv: SimHypervisor,
    pub dom: DomId,
    pub xs: XenStore<SimTransport>,
}

impl NetEnv for FrontEnv {
    type Page = SimPage;
    type Xs = SimTransport;

    fn alloc_page(&mut self) -> Result<SharedPage<SimPage>, EnvError> {
        Ok(self.hv.alloc_page_of(self.dom))
    }
    fn grant_access(&mut self, domid: DomId, frame: u64, ro: bool) -> Result<GrantRef, GrantError> {
        self.hv.grant_access(self.dom, domid, frame, ro)
    }
    fn end_access(&mut self, gref: GrantRef) -> Result<(), GrantError> {
        self.hv.end_access(self.dom, gref)
    }
    fn alloc_unbound(&mut self, remote: DomId) -> Result<Port, EnvError> {
        self.hv
            .alloc_unbound(self.dom, remote)
            .map_err(|_| EnvError::Hypercall(-3))
    }
    fn notify(&mut self, port: Port) {
        let _ = self.hv.send(self.dom, port);
    }
    fn poll_event(&mut self, port: Port, cx: &mut Context<'_>) -> Poll<()> {
        self.hv.poll_event(self.dom, port, cx)
    }
    fn close_port(&mut self, port: Port) {
        self.hv.close(self.dom, port)
    }
    fn xenstore(&mut self) -> &mut XenStore<SimTransport> {
        &mut self.xs
    }
}

/// The machine: hypervisor and xenstored (the toolstack writes directly).
pub struct Machine {
    pub hv: SimHypervisor,
    pub xsd: Rc<RefCell<Xenstored>>,
}

impl Machine {
    pub fn new() -> Self {
        Self {
            hv: SimHypervisor::new(),
            xsd: Rc::new(RefCell::new(Xenstored::new(0))),
        }
    }

    /// `xl network-attach <dom> backend=<BACK>`: the toolstack's keys.
    pub fn add_vif(&self, dom: DomId) {
        let (f, b) = (front_path(dom), back_path(dom));
        let mut d = self.xsd.borrow_mut();
        d.set(&format!("{f}/backend"), b.as_bytes());
        d.set(&format!("{f}/backend-id"), BACK.to_string().as_bytes());
        d.set(
            &format!("{f}/mac"),
            format!("00:16:3e:00:00:{dom:02x}").as_bytes(),
        );
        d.set(&format!("{f}/handle"), b"0");
        d.set(&format!("{f}/state"), b"1");
        d.set(&format!("{b}/frontend"), f.as_bytes());
        d.set(&format!("{b}/frontend-id"), dom.to_string().as_bytes());
        d.set(&format!("{b}/online"), b"1");
        d.set(
            &format!("{b}/mac"),
            format!("00:16:3e:00:00:{dom:02x}").as_bytes(),
        );
        d.set(&format!("{b}/state"), b"1");
    }

    pub fn xs_for(&self, dom: DomId) -> XenStore<SimTransport> {
        let conn = self.xsd.borrow_mut().connect(dom);
        XenStore::new(SimTransport::connection(self.xsd.clone(), conn, 64))
    }

    pub fn front_env(&self, dom: DomId) -> FrontEnv {
        FrontEnv {
            hv: self.hv.clone(),
            dom,
            xs: self.xs_for(dom),
        }
    }

    pub fn back_env(&self) -> SimNetbackEnv {
        SimNetbackEnv {
            hv: self.hv.clone(),
            dom: BACK,
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
}

/// The driver domain: its environment and xenstore connection.
pub struct Backend {
    pub env: SimNetbackEnv,
    pub xs: XenStore<SimTransport>,
}

impl Backend {
    pub fn new(m: &Machine) -> Self {
        Self {
            env: m.back_env(),
            xs: m.xs_for(BACK),
        }
    }
}

const STEPS: usize = 200_000;

/// Poll `a` and `b` in turn until both are done.
pub fn join<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let mut a = pin!(a);
    let mut b = pin!(b);
    let mut cx = Context::from_waker(Waker::noop());
    let (mut ra, mut rb) = (None, None);
    for _ in 0..STEPS {
        if ra.is_none() {
            if let Poll::Ready(v) = a.as_mut().poll(&mut cx) {
                ra = Some(v);
            }
        }
        if rb.is_none() {
            if let Poll::Ready(v) = b.as_mut().poll(&mut cx) {
                rb = Some(v);
            }
        }
        if let (Some(_), Some(_)) = (&ra, &rb) {
            if let (Some(x), Some(y)) = (ra.take(), rb.take()) {
                return (x, y);
            }
        }
    }
    panic!("futures stalled: a {} b {}", ra.is_some(), rb.is_some());
}

/// Poll `f` to completion.
pub fn run<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..STEPS {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
    panic!("future stalled");
}

pub fn front_options() -> ConnectOptions {
    ConnectOptions {
        rx_csum_blank: true,
        rx_gso: true,
        ring_start: 0,
        max_queues: 1,
    }
}

/// Ready once the backend of `dom` has advertised (`InitWait`), as a real
/// backend has before the frontend's driver starts.
pub async fn backend_advertised(m: &Machine, dom: DomId) {
    let node = format!("{}/state", back_path(dom));
    std::future::poll_fn(|_| {
        if m.get(&node).as_deref() == Some("2") {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await
}

/// Connect our netfront in `dom` (with `env`) to our netback, both
/// handshakes running together.
pub fn connect_with(
    m: &Machine,
    env: FrontEnv,
    back: &mut Backend,
    dom: DomId,
    front: ConnectOptions,
    options: BackendOptions,
) -> (
    Result<Netfront<FrontEnv>, NetfrontError>,
    Result<Vif<SimNetbackEnv>, NetbackError>,
) {
    let path = back_path(dom);
    let (f, b) = join(
        async {
            backend_advertised(m, dom).await;
            Netfront::connect(env, "device/vif/0", front).await
        },
        netback::connect(&mut back.env, &mut back.xs, &path, &options),
    );
    (f.map_err(|(_, e)| e), b)
}

/// [`connect_with`] a new frontend environment.
pub fn connect_pair(
    m: &Machine,
    back: &mut Backend,
    dom: DomId,
    front: ConnectOptions,
    options: BackendOptions,
) -> (
    Result<Netfront<FrontEnv>, NetfrontError>,
    Result<Vif<SimNetbackEnv>, NetbackError>,
) {
    connect_with(m, m.front_env(dom), back, dom, front, options)
}

/// Deterministic packet bytes (an Ethernet-looking header of ethertype
/// 0x88b5, local experimental, so no checksum logic applies).
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(seed as u32) as u8)
        .collect();
    if len >= 14 {
        v[12] = 0x88;
        v[13] = 0xb5;
    }
    v
}

/// Move everything the frontend sent to the backend; return it.
pub fn backend_take(back: &mut Backend, vif: &mut Vif<SimNetbackEnv>) -> Vec<Packet> {
    let mut out = Vec::new();
    loop {
        let p = vif.receive(&mut back.env, 64, &mut out).expect("receive");
        if !p.more {
            return out;
        }
    }
}
