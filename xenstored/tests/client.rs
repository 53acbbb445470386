//! moat's own xenstore client (`xen::xenstore::XenStore`, what every moat
//! image uses) against this server: the same bytes a domain would put on
//! its ring, several domains at once, real conflicts retried.

use std::cell::RefCell;
use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use xen::xenstore::{XenStore, XsError, XsTransport};
use xenstored::conn::message;
use xenstored::{Config, NoHost, Server};

/// A domain's pipe to the shared server, in chunks of `chunk` bytes (as a
/// ring would split them).
struct Pipe {
    server: Rc<RefCell<Server>>,
    domid: u16,
    chunk: usize,
}

impl XsTransport for Pipe {
    fn send(&mut self, buf: &[u8]) -> Result<usize, XsError> {
        let n = buf.len().min(self.chunk);
        let used = self
            .server
            .borrow_mut()
            .receive(self.domid, &buf[..n], &mut NoHost)
            .map_err(|_| XsError::Closed)?;
        Ok(used)
    }
    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, XsError> {
        let n = buf.len().min(self.chunk);
        Ok(self.server.borrow_mut().transmit(self.domid, &mut buf[..n]))
    }
    fn notify(&mut self) {}
    fn poll_event(&mut self, _cx: &mut Context<'_>) -> Poll<()> {
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

fn setup() -> (Rc<RefCell<Server>>, XenStore<Pipe>) {
    // Domain 1 is a second privileged domain (a toolstack domain).
    let config = Config {
        priv_domid: Some(1),
        ..Config::default()
    };
    let server = Rc::new(RefCell::new(Server::new(config)));
    server.borrow_mut().connect(0);
    server.borrow_mut().connect(1);
    let xs = XenStore::new(Pipe {
        server: server.clone(),
        domid: 0,
        chunk: 7,
    });
    (server, xs)
}

fn client(server: &Rc<RefCell<Server>>, domid: u16) -> XenStore<Pipe> {
    XenStore::new(Pipe {
        server: server.clone(),
        domid,
        chunk: 1024,
    })
}

#[test]
fn the_client_reads_writes_and_lists() {
    let (_server, mut xs) = setup();
    block_on(async {
        xs.write("/a/b", b"hello").await.unwrap();
        assert_eq!(xs.read("/a/b").await.unwrap(), b"hello");
        assert_eq!(xs.directory("/a").await.unwrap(), ["b"]);
        xs.mkdir("/a/c").await.unwrap();
        xs.rm("/a/b").await.unwrap();
        assert_eq!(xs.directory("/a").await.unwrap(), ["c"]);
        assert_eq!(xs.read("/a/b").await, Err(XsError::Enoent));
        assert_eq!(xs.get_domain_path(9).await.unwrap(), "/local/domain/9");
    });
}

#[test]
fn a_domain_client_watches_its_home_relatively() {
    let (server, mut dom0) = setup();
    block_on(async {
        dom0.mkdir("/local/domain/5").await.unwrap();
    });
    // Given to the domain and introduced, as the toolstack does (no ring
    // here: the host is a no-op).
    let perms = message(
        xen::abi::xs_wire::XsdSockmsgType::SetPerms,
        1,
        0,
        &[b"/local/domain/5\x00n5\x00r0\x00"],
    );
    server.borrow_mut().receive(0, &perms, &mut NoHost).unwrap();
    let mut reply = [0u8; 64];
    assert_eq!(server.borrow_mut().transmit(0, &mut reply), 19);
    // Created after: inherits the domain's ownership.
    block_on(dom0.write("/local/domain/5/domid", b"5")).unwrap();
    let intro = message(
        xen::abi::xs_wire::XsdSockmsgType::Introduce,
        1,
        0,
        &[b"5\x00100\x003\x00"],
    );
    server.borrow_mut().receive(0, &intro, &mut NoHost).unwrap();
    assert_eq!(server.borrow_mut().transmit(0, &mut reply), 19);
    let mut domu = client(&server, 5);
    block_on(async {
        assert_eq!(domu.domid().await.unwrap(), 5);
        domu.watch("device", "tok").await.unwrap();
        let first = domu.next_watch_event().await.unwrap();
        assert_eq!(
            (first.path.as_str(), first.token.as_str()),
            ("device", "tok")
        );
        dom0.write("/local/domain/5/device/vif/0/state", b"1")
            .await
            .unwrap();
        let ev = domu.next_watch_event().await.unwrap();
        assert_eq!(ev.path, "device/vif/0/state");
        assert_eq!(
            domu.read("/local/domain/5/device/vif/0/state")
                .await
                .unwrap(),
            b"1"
        );
    });
}

#[test]
fn a_real_conflict_is_retried_by_the_client() {
    let (server, mut xs) = setup();
    block_on(xs.write("/counter", b"0")).unwrap();
    let mut runs = 0;
    let other = server.clone();
    block_on(xs.transaction(async |tx| {
        runs += 1;
        let n: u32 = tx.read_string("/counter").await?.parse().unwrap();
        if runs == 1 {
            // Another writer (the toolstack domain) changes it meanwhile.
            let w = message(
                xen::abi::xs_wire::XsdSockmsgType::Write,
                99,
                0,
                &[b"/counter\x0041"],
            );
            let mut s = other.borrow_mut();
            s.receive(1, &w, &mut NoHost).unwrap();
        }
        tx.write("/counter", (n + 1).to_string().as_bytes()).await
    }))
    .unwrap();
    assert_eq!(runs, 2);
    assert_eq!(block_on(xs.read("/counter")).unwrap(), b"42");
}
