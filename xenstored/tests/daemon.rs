//! The whole daemon on the simulated hypervisor, as the stub domain will
//! run: dom0 connected at boot through the page its kernel granted and the
//! port given on the command line, a domU introduced by the toolstack
//! (its page mapped from its grant, its port bound), moat's client on both
//! sides over their real pages and event channels, and the domU destroyed.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use xen::abi::xs_wire::XsdSockmsgType as T;
use xen::abi::{DomId, GrantRef, Port};
use xen::shared_page::{PageMemory, SharedPage};
use xen::sim::hypervisor::{SimHypervisor, SimMapping, SimPage};
use xen::xenstore::{XenStore, XsEvents, XsRing};
use xenstored::conn::message;
use xenstored::daemon::{Daemon, Platform};
use xenstored::{Config, Errno};

/// The stub domain's id in these tests.
const STORE: DomId = 1;
/// A toolstack domain, privileged, talking to the server directly.
const TOOL: DomId = 2;

struct SimPlatform {
    hv: SimHypervisor,
    /// The grant each domain gave the store domain for its page.
    grefs: BTreeMap<u16, GrantRef>,
    log: Vec<String>,
}

impl Platform for SimPlatform {
    type Page = SimMapping;
    fn map_store_page(&mut self, domid: u16) -> Result<SharedPage<SimMapping>, Errno> {
        let gref = *self.grefs.get(&domid).ok_or(Errno::Enoent)?;
        self.hv
            .map_grant_owned(STORE, domid, gref, false)
            .map_err(|_| Errno::Einval)
    }
    fn unmap_store_page(&mut self, _domid: u16, page: SharedPage<SimMapping>) {
        drop(page);
    }
    fn bind(&mut self, domid: u16, remote_port: u32) -> Result<u32, Errno> {
        self.hv
            .bind_interdomain(STORE, domid, remote_port)
            .map_err(|_| Errno::Einval)
    }
    fn unbind(&mut self, port: u32) {
        self.hv.close(STORE, port);
    }
    fn notify(&mut self, port: u32) {
        let _ = self.hv.send(STORE, port);
    }
    fn log(&mut self, line: &str) {
        self.log.push(line.into());
    }
    fn peer_gone(&mut self, port: u32) -> bool {
        !self.hv.is_connected(STORE, port)
    }
}

type Shared = Rc<RefCell<Daemon<SimPlatform>>>;

/// A domain's event channel to the stub; waiting on it runs the stub for
/// every event pending on its side, as its event loop would.
struct Events {
    hv: SimHypervisor,
    dom: DomId,
    port: Port,
    daemon: Shared,
}

impl XsEvents for Events {
    fn notify(&mut self) {
        let _ = self.hv.send(self.dom, self.port);
    }
    fn poll_event(&mut self, _cx: &mut Context<'_>) -> Poll<()> {
        let mut d = self.daemon.borrow_mut();
        for (_, port) in d.ports() {
            let mut cx = Context::from_waker(Waker::noop());
            if self.hv.poll_event(STORE, port, &mut cx).is_ready() {
                d.on_event(port);
            }
        }
        Poll::Ready(())
    }
}

fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..100_000 {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
    panic!("stalled");
}

/// A domain's xenstore page, granted to the store domain, and an unbound
/// port for it.
fn domain(hv: &SimHypervisor, dom: DomId) -> (SharedPage<SimPage>, GrantRef, Port) {
    let page = hv.alloc_page_of(dom);
    let gref = hv.grant_access(dom, STORE, page.frame(), false).unwrap();
    let port = hv.alloc_unbound(dom, STORE).unwrap();
    (page, gref, port)
}

fn client(
    hv: &SimHypervisor,
    daemon: &Shared,
    dom: DomId,
    page: &SharedPage<SimPage>,
    port: Port,
) -> XenStore<XsRing<Events>> {
    let events = Events {
        hv: hv.clone(),
        dom,
        port,
        daemon: daemon.clone(),
    };
    // SAFETY: the page is kept alive by the test (and the hypervisor) for
    // longer than the client, and reached through raw pointers only.
    XenStore::new(unsafe { XsRing::new(page.memory().as_ptr().cast(), events) })
}

/// The toolstack domain's request (through the daemon, so an introduce
/// maps and binds), answered.
fn tool(daemon: &Shared, kind: T, payload: &[u8]) -> Vec<u8> {
    let mut d = daemon.borrow_mut();
    let msg = message(kind, 1, 0, &[payload]);
    assert_eq!(d.receive_direct(TOOL, &msg), Ok(msg.len()));
    let mut out = vec![0u8; 4200];
    let n = d.server_mut().transmit(TOOL, &mut out);
    out.truncate(n);
    out[16..].to_vec()
}

#[test]
fn dom0_and_a_domu_through_the_stub() {
    let hv = SimHypervisor::new();
    let config = Config {
        store_domid: STORE,
        priv_domid: Some(TOOL),
        ..Config::default()
    };
    let (page0, gref0, port0) = domain(&hv, 0);
    let platform = SimPlatform {
        hv: hv.clone(),
        grefs: BTreeMap::from([(0, gref0)]),
        log: Vec::new(),
    };
    let daemon: Shared = Rc::new(RefCell::new(Daemon::new(config, platform)));
    daemon.borrow_mut().connect_privileged(0, port0).unwrap();
    daemon.borrow_mut().server_mut().connect(TOOL);
    assert_eq!(hv.maps_of(STORE, 0), 1);
    let mut dom0 = client(&hv, &daemon, 0, &page0, port0);
    block_on(async {
        dom0.write("/tool/xenstored/domid", b"1").await.unwrap();
        dom0.mkdir("/local/domain/5").await.unwrap();
        dom0.watch("@introduceDomain", "i").await.unwrap();
        dom0.watch("@releaseDomain", "r").await.unwrap();
        assert_eq!(dom0.next_watch_event().await.unwrap().token, "i");
        assert_eq!(dom0.next_watch_event().await.unwrap().token, "r");
    });
    // The toolstack gives domain 5 its home and introduces it: the stub
    // maps its page and binds its port.
    let (page5, gref5, port5) = domain(&hv, 5);
    daemon.borrow_mut().platform().grefs.insert(5, gref5);
    assert_eq!(
        tool(&daemon, T::SetPerms, b"/local/domain/5\0n5\0r0\0"),
        b"OK\0"
    );
    let intro = format!("5\x000\x00{port5}\x00");
    assert_eq!(tool(&daemon, T::Introduce, intro.as_bytes()), b"OK\0");
    assert_eq!(hv.maps_of(STORE, 5), 1);
    assert!(daemon.borrow().server().is_connected(5));
    let mut domu = client(&hv, &daemon, 5, &page5, port5);
    block_on(async {
        assert_eq!(
            dom0.next_watch_event().await.unwrap().path,
            "@introduceDomain"
        );
        domu.write("device/vif/0/state", b"1").await.unwrap();
        domu.watch("device", "d").await.unwrap();
        assert_eq!(domu.next_watch_event().await.unwrap().path, "device");
        dom0.write("/local/domain/5/device/vif/0/state", b"4")
            .await
            .unwrap();
        assert_eq!(
            domu.next_watch_event().await.unwrap().path,
            "device/vif/0/state"
        );
        assert_eq!(domu.read("device/vif/0/state").await.unwrap(), b"4");
        assert_eq!(
            domu.read("/tool/xenstored/domid").await,
            Err(xen::xenstore::XsError::Eacces)
        );
    });
    // The domain dies: on VIRQ_DOM_EXC the stub finds its event channel
    // closed, lets go of its page and port, dom0 hears.
    assert_eq!(daemon.borrow_mut().reap(), Vec::<u16>::new());
    hv.destroy_domain(5);
    assert_eq!(daemon.borrow_mut().reap(), [5]);
    assert_eq!(hv.maps_of(STORE, 5), 0);
    assert!(!daemon.borrow().server().is_connected(5));
    assert_eq!(daemon.borrow().ports().len(), 1);
    block_on(async {
        assert_eq!(
            dom0.next_watch_event().await.unwrap().path,
            "@releaseDomain"
        );
        dom0.rm("/local/domain/5").await.unwrap();
    });
    daemon.borrow().server().check().unwrap();
    drop(domu);
    drop(dom0);
}

#[test]
fn a_hostile_domu_is_cut_and_dom0_keeps_working() {
    let hv = SimHypervisor::new();
    let config = Config {
        store_domid: STORE,
        priv_domid: Some(TOOL),
        ..Config::default()
    };
    let (page0, gref0, port0) = domain(&hv, 0);
    let (page6, gref6, port6) = domain(&hv, 6);
    let platform = SimPlatform {
        hv: hv.clone(),
        grefs: BTreeMap::from([(0, gref0), (6, gref6)]),
        log: Vec::new(),
    };
    let daemon: Shared = Rc::new(RefCell::new(Daemon::new(config, platform)));
    daemon.borrow_mut().connect_privileged(0, port0).unwrap();
    daemon.borrow_mut().server_mut().connect(TOOL);
    tool(&daemon, T::Mkdir, b"/local/domain/6\0");
    tool(&daemon, T::SetPerms, b"/local/domain/6\0n6\0");
    let intro = format!("6\x000\x00{port6}\x00");
    assert_eq!(tool(&daemon, T::Introduce, intro.as_bytes()), b"OK\0");
    // Domain 6 writes a header announcing 64 KiB into its ring and kicks.
    let mut bad = message(T::Write, 1, 0, &[]);
    bad[12..16].copy_from_slice(&65536u32.to_ne_bytes());
    let req = std::mem::offset_of!(xen::abi::xs_wire::XenstoreDomainInterface, req);
    page6.write(req, &bad).unwrap();
    let prod = std::mem::offset_of!(xen::abi::xs_wire::XenstoreDomainInterface, req_prod);
    page6
        .write(prod, &(bad.len() as u32).to_ne_bytes())
        .unwrap();
    hv.send(6, port6).unwrap();
    let mut dom0 = client(&hv, &daemon, 0, &page0, port0);
    block_on(async {
        dom0.write("/still", b"works").await.unwrap();
        assert_eq!(dom0.read("/still").await.unwrap(), b"works");
    });
    let error = std::mem::offset_of!(xen::abi::xs_wire::XenstoreDomainInterface, error);
    let mut word = [0u8; 4];
    page6.read(error, &mut word).unwrap();
    assert_eq!(
        u32::from_ne_bytes(word),
        xen::abi::xs_wire::XENSTORE_ERROR_PROTO
    );
    assert_eq!(daemon.borrow().server().stats().broken, 1);
    assert_eq!(daemon.borrow().server().wants(6), 0);
    // Its destruction still frees everything.
    hv.destroy_domain(6);
    daemon.borrow_mut().domain_destroyed(6);
    assert_eq!(hv.maps_of(STORE, 6), 0);
    drop(dom0);
}
