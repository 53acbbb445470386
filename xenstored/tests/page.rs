//! The server over a real xenstore page layout (the simulated
//! hypervisor's page, mapped as the stub domain will map each domain's):
//! moat's client on the other side through its real ring transport
//! (`XsRing`), and a raw client that floods and breaks the rings.

use std::cell::RefCell;
use std::future::Future;
use std::mem::offset_of;
use std::pin::pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use xen::abi::xs_wire::{
    XenstoreDomainInterface as P, XsdSockmsgType as T, XENSTORE_ERROR_PROTO,
    XENSTORE_ERROR_RINGIDX, XENSTORE_RING_SIZE,
};
use xen::ring::bytes::{ByteRingReader, ByteRingWriter};
use xen::shared_page::{PageMemory, SharedPage};
use xen::sim::hypervisor::{SimHypervisor, SimPage};
use xen::xenstore::{XenStore, XsEvents, XsRing, XsServerPage};
use xenstored::conn::message;
use xenstored::ring::pump;
use xenstored::{Config, ConnError, NoHost, Quotas, Server};

struct Stub {
    server: Server,
    page: XsServerPage<SimPage>,
    domid: u16,
}

/// The client's doorbell: ringing it runs the stub's pump, as the event
/// channel would.
struct Bell(Rc<RefCell<Stub>>);

impl XsEvents for Bell {
    fn notify(&mut self) {}
    fn poll_event(&mut self, _cx: &mut Context<'_>) -> Poll<()> {
        let mut stub = self.0.borrow_mut();
        let Stub {
            server,
            page,
            domid,
        } = &mut *stub;
        let _ = pump(server, *domid, page, &mut NoHost);
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

/// dom0 gives domain 5 a home, then the stub serves 5 over `page`.
fn stub(config: Config) -> (SimHypervisor, Rc<RefCell<Stub>>, *mut u8) {
    let hv = SimHypervisor::new();
    let page: SharedPage<SimPage> = hv.alloc_page();
    let base = page.memory().as_ptr();
    let mut server = Server::new(config);
    server.connect(0);
    for m in [
        message(T::Mkdir, 1, 0, &[b"/local/domain/5\0"]),
        message(T::SetPerms, 2, 0, &[b"/local/domain/5\0n5\0"]),
        message(T::Introduce, 3, 0, &[b"5\x001\x001\0"]),
    ] {
        server.receive(0, &m, &mut NoHost).unwrap();
    }
    let mut sink = [0u8; 256];
    while server.transmit(0, &mut sink) > 0 {}
    let stub = Stub {
        server,
        page: XsServerPage::new(page),
        domid: 5,
    };
    (hv, Rc::new(RefCell::new(stub)), base)
}

fn raw_rings(base: *mut u8) -> (ByteRingWriter, ByteRingReader) {
    let at = |o: usize| base.wrapping_add(o);
    // SAFETY: the page lives in the stub (and the hypervisor) for the whole
    // test; it is reached through raw pointers only.
    unsafe {
        (
            ByteRingWriter::new(
                at(offset_of!(P, req)),
                XENSTORE_RING_SIZE,
                at(offset_of!(P, req_cons)).cast(),
                at(offset_of!(P, req_prod)).cast(),
            ),
            ByteRingReader::new(
                at(offset_of!(P, rsp)),
                XENSTORE_RING_SIZE,
                at(offset_of!(P, rsp_cons)).cast(),
                at(offset_of!(P, rsp_prod)).cast(),
            ),
        )
    }
}

fn read_u32(base: *mut u8, offset: usize) -> u32 {
    // SAFETY: an aligned u32 field of the live page, read volatile.
    unsafe { base.wrapping_add(offset).cast::<u32>().read_volatile() }
}

#[test]
fn moats_client_over_the_page() {
    let (_hv, stub, base) = stub(Config::default());
    // SAFETY: the page outlives the client (both dropped at the end, the
    // client first); only raw pointers reach it.
    let ring = unsafe { XsRing::new(base.cast(), Bell(stub.clone())) };
    let mut xs = XenStore::new(ring);
    block_on(async {
        xs.write("data/a", b"1").await.unwrap();
        assert_eq!(xs.read("data/a").await.unwrap(), b"1");
        xs.watch("data", "t").await.unwrap();
        assert_eq!(xs.next_watch_event().await.unwrap().path, "data");
        // Values and listings bigger than the ring cross it in pieces.
        let big = vec![b'x'; 2100];
        xs.write("big", &big).await.unwrap_err(); // node-size quota
        let mid = vec![b'y'; 1900];
        xs.write("mid", &mid).await.unwrap();
        assert_eq!(xs.read("mid").await.unwrap(), mid);
        let v = xs
            .transaction(async |tx| {
                tx.write("data/b", b"2").await?;
                tx.read("data/a").await
            })
            .await
            .unwrap();
        assert_eq!(v, b"1");
        assert_eq!(xs.next_watch_event().await.unwrap().path, "data/b");
    });
    drop(xs);
    stub.borrow().server.check().unwrap();
}

#[test]
fn a_flood_waits_in_the_ring_and_a_bad_index_cuts_the_domain() {
    let quotas = Quotas {
        outstanding: 2,
        ..Quotas::default()
    };
    let (_hv, stub, base) = stub(Config {
        quotas,
        ..Config::default()
    });
    let (mut tx, mut rx) = raw_rings(base);
    let read = message(T::Read, 7, 0, &[b"/local/domain/5\0"]);
    let mut s = stub.borrow_mut();
    let Stub {
        server,
        page,
        domid,
    } = &mut *s;
    // The client sends without ever reading: replies fill the response
    // ring (a reply leaves the quota once it is in the ring, as in C),
    // then two more wait in the server, then requests stay in the ring.
    let mut rounds = 0;
    loop {
        while tx.write(&read).unwrap() == read.len() {}
        let p = pump(server, *domid, page, &mut NoHost).unwrap();
        rounds += 1;
        if p.requests == 0 {
            break;
        }
        assert!(rounds < 100);
    }
    assert_eq!(server.connection(5).unwrap().outstanding(), 2);
    assert!(page.free().unwrap() < 17);
    assert!(page.available().unwrap() >= read.len());
    let mut got = vec![0u8; 4096];
    let n = rx.read(&mut got).unwrap();
    // The ring is a byte stream: 60 whole replies (empty values) and the
    // first bytes of the next.
    assert_eq!(n, XENSTORE_RING_SIZE);
    // Replies taken: the requests waiting in the ring are served.
    let waiting = page.available().unwrap();
    let p = pump(server, *domid, page, &mut NoHost).unwrap();
    assert_eq!(p.requests, waiting);
    assert_eq!(page.available().unwrap(), 0);
    // dom0 unaffected.
    server
        .receive(0, &message(T::Write, 1, 0, &[b"/x\0v"]), &mut NoHost)
        .unwrap();
    // An impossible producer index: cut, the page says why.
    let req_prod = offset_of!(P, req_prod);
    // SAFETY: as in `read_u32`, written.
    unsafe {
        base.wrapping_add(req_prod)
            .cast::<u32>()
            .write_volatile(0x8000_0000)
    };
    rx.read(&mut got).unwrap();
    assert_eq!(
        pump(server, *domid, page, &mut NoHost),
        Err(ConnError::BadRingIndex)
    );
    assert_eq!(read_u32(base, offset_of!(P, error)), XENSTORE_ERROR_RINGIDX);
    assert_eq!(server.wants(5), 0);
    assert_eq!(
        pump(server, *domid, page, &mut NoHost),
        Err(ConnError::BadRingIndex)
    );
}

#[test]
fn an_oversized_header_sets_the_protocol_error() {
    let (_hv, stub, base) = stub(Config::default());
    let (mut tx, _rx) = raw_rings(base);
    let mut bad = message(T::Read, 1, 0, &[]);
    bad[12..16].copy_from_slice(&4097u32.to_ne_bytes());
    tx.write(&bad).unwrap();
    let mut s = stub.borrow_mut();
    let Stub {
        server,
        page,
        domid,
    } = &mut *s;
    assert_eq!(
        pump(server, *domid, page, &mut NoHost),
        Err(ConnError::PayloadTooLarge(4097))
    );
    assert_eq!(read_u32(base, offset_of!(P, error)), XENSTORE_ERROR_PROTO);
}
