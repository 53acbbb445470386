//! Shared by the runtime's sim tests: a virtual clock, a domain's netfront
//! environment and the machine (the simulated hypervisor and xenstored with
//! the toolstack's vif keys).

#![allow(dead_code)]

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::task::{Context, Poll};

use kernel::executor::Idle;
use netfront::{EnvError, NetEnv};
use xen::abi::{DomId, GrantRef, Port};
use xen::grant::GrantError;
use xen::shared_page::SharedPage;
use xen::sim::{SimHypervisor, SimPage, SimTransport, Xenstored};
use xen::xenstore::XenStore;

/// A virtual clock: time moves 50 µs per read (the simulated xenstore's
/// transport wakes its waiter at once, so a task waiting on it spins) and jumps to the deadline
/// when everything sleeps.
pub struct Clock {
    pub now: Cell<u64>,
}

impl Idle for Clock {
    fn now_ns(&self) -> u64 {
        let t = self.now.get() + 50_000;
        self.now.set(t);
        t
    }
    fn take_pending(&mut self, _wake: &mut dyn FnMut(u32)) {}
    fn block(&mut self, deadline_ns: Option<u64>) {
        let d = deadline_ns.expect("everything waits and no timer is set: deadlock");
        if d > self.now.get() {
            self.now.set(d);
        }
    }
}

/// A domain's netfront environment.
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

#[derive(Clone)]
pub struct Machine {
    pub hv: SimHypervisor,
    pub xsd: Rc<RefCell<Xenstored>>,
}

pub fn mac_of(dom: DomId) -> String {
    format!("00:16:3e:00:00:{dom:02x}")
}

pub fn mac_bytes(dom: DomId) -> [u8; 6] {
    [0, 0x16, 0x3e, 0, 0, dom as u8]
}

impl Machine {
    pub fn new() -> Self {
        Self {
            hv: SimHypervisor::new(),
            xsd: Rc::new(RefCell::new(Xenstored::new(0))),
        }
    }
    pub fn front_path(dom: DomId) -> String {
        format!("/local/domain/{dom}/device/vif/0")
    }
    pub fn back_path(front: DomId, back: DomId) -> String {
        format!("/local/domain/{back}/backend/vif/{front}/0")
    }
    /// The toolstack's keys of a vif of `front` served by `back`.
    pub fn add_vif(&self, front: DomId, back: DomId, ip: Option<&str>) {
        let (f, b) = (Self::front_path(front), Self::back_path(front, back));
        let mut d = self.xsd.borrow_mut();
        d.set(&format!("{f}/backend"), b.as_bytes());
        d.set(&format!("{f}/backend-id"), back.to_string().as_bytes());
        d.set(&format!("{f}/mac"), mac_of(front).as_bytes());
        d.set(&format!("{f}/handle"), b"0");
        d.set(&format!("{f}/state"), b"1");
        d.set(&format!("{b}/frontend"), f.as_bytes());
        d.set(&format!("{b}/frontend-id"), front.to_string().as_bytes());
        d.set(&format!("{b}/online"), b"1");
        d.set(&format!("{b}/mac"), mac_of(front).as_bytes());
        if let Some(ip) = ip {
            d.set(&format!("{b}/ip"), ip.as_bytes());
        }
        d.set(&format!("{b}/state"), b"1");
    }
    /// `xl network-detach` as libxl does it: online 0 and the backend
    /// Closing; once the frontend closed, its directory goes.
    pub fn detach(&self, front: DomId, back: DomId) {
        let b = Self::back_path(front, back);
        self.set(&format!("{b}/online"), "0");
        self.set(&format!("{b}/state"), "5");
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
