//! Shared by the `xen::sim` tests: one domain's [`VchanEnv`] over the
//! simulated hypervisor and xenstored, and a two-future runner.
#![allow(dead_code)]

use std::cell::RefCell;
use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use qubes::vchan::{EnvError, VchanEnv};
use xen::abi::{DomId, GrantRef, Port};
use xen::grant::GrantError;
use xen::shared_page::SharedPage;
use xen::sim::{SimHypervisor, SimMapping, SimPage, SimTransport, Xenstored};
use xen::xenstore::XenStore;

/// One domain's view of the simulated machine.
pub struct Env {
    pub dom: DomId,
    pub hv: SimHypervisor,
    pub xs: XenStore<SimTransport>,
}

impl VchanEnv for Env {
    type Page = SimPage;
    type Mapping = SimMapping;
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
    fn map_grant(
        &mut self,
        domid: DomId,
        gref: GrantRef,
        ro: bool,
    ) -> Result<SharedPage<SimMapping>, EnvError> {
        self.hv
            .map_grant_owned(self.dom, domid, gref, ro)
            .map_err(|_| EnvError::Grant(-3))
    }
    fn alloc_unbound(&mut self, remote: DomId) -> Result<Port, EnvError> {
        self.hv
            .alloc_unbound(self.dom, remote)
            .map_err(|_| EnvError::Hypercall(-22))
    }
    fn bind_interdomain(&mut self, remote: DomId, port: Port) -> Result<Port, EnvError> {
        self.hv
            .bind_interdomain(self.dom, remote, port)
            .map_err(|_| EnvError::Hypercall(-22))
    }
    fn notify(&mut self, port: Port) {
        let _ = self.hv.send(self.dom, port);
    }
    fn poll_event(&mut self, port: Port, cx: &mut Context<'_>) -> Poll<()> {
        self.hv.poll_event(self.dom, port, cx)
    }
    fn peer_closed(&mut self, port: Port) -> bool {
        // The simulator has no EVTCHNOP_status; a send fails exactly when
        // the other end is unbound (and a spurious event is harmless).
        self.hv.send(self.dom, port).is_err()
    }
    fn close_port(&mut self, port: Port) {
        self.hv.close(self.dom, port)
    }
    fn xenstore(&mut self) -> &mut XenStore<SimTransport> {
        &mut self.xs
    }
}

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
    pub fn env(&self, dom: DomId) -> Env {
        let conn = self.xsd.borrow_mut().connect(dom);
        Env {
            dom,
            hv: self.hv.clone(),
            xs: XenStore::new(SimTransport::connection(self.xsd.clone(), conn, 256)),
        }
    }
    pub fn get(&self, path: &str) -> Option<String> {
        self.xsd
            .borrow()
            .get(path)
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    }
}

/// Poll both futures to completion (the two domains run "at once").
pub fn run2<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let (mut a, mut b) = (pin!(a), pin!(b));
    let (mut ra, mut rb) = (None, None);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..50_000_000u64 {
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
            return (ra.unwrap(), rb.unwrap());
        }
    }
    panic!("stalled")
}

pub fn run<F: Future>(f: F) -> F::Output {
    run2(f, async {}).0
}
