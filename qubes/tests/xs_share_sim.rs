//! `qubes::xs_share` over the simulated xenstored: two clients on one
//! connection (moving 7 bytes per transport call, so requests and replies
//! cross many calls) issue requests at the same time, each with its own
//! request ids; every reply reaches the client that asked, watch events
//! only the client that registered the token, and a client waiting for an
//! event is woken even while the other one uses the transport.

mod common;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;
use std::task::Poll;

use common::run2;
use qubes::xs_share::{tokens, XsShare};
use xen::sim::{SimTransport, Xenstored};

/// Pending once (lets the other future run).
fn yield_once() -> impl Future<Output = ()> {
    let mut done = false;
    std::future::poll_fn(move |_| {
        if done {
            Poll::Ready(())
        } else {
            done = true;
            Poll::Pending
        }
    })
}

#[test]
fn two_clients_share_one_connection() {
    let xsd = Rc::new(RefCell::new(Xenstored::new(0)));
    let conn = xsd.borrow_mut().connect(7);
    let share = XsShare::new(SimTransport::connection(xsd.clone(), conn, 7));
    let mut a = share.client();
    let mut b = share.client();
    let b_ready = Cell::new(false);
    let (ra, rb) = run2(
        async {
            a.watch("/local/domain/7/data/a", "ta").await.unwrap();
            // The registration event.
            a.next_watch_event_for("ta").await.unwrap();
            for i in 0..40 {
                let path = format!("/local/domain/7/data/x/{i}");
                a.write(&path, format!("value {i}").as_bytes())
                    .await
                    .unwrap();
                assert_eq!(
                    a.read(&path).await.unwrap(),
                    format!("value {i}").as_bytes()
                );
            }
            while !b_ready.get() {
                yield_once().await;
            }
            // Wakes the other client's watch.
            a.write("/local/domain/7/data/b/k", b"1").await.unwrap();
            a.write("/local/domain/7/data/a/done", b"").await.unwrap();
            let ev = a.next_watch_event_for("ta").await.unwrap();
            assert_eq!(ev.path, "/local/domain/7/data/a/done");
            a.dropped_watch_events()
        },
        async {
            b.watch("/local/domain/7/data/b", "tb").await.unwrap();
            let first = b.next_watch_event().await.unwrap();
            b_ready.set(true);
            assert_eq!(first.token, "tb");
            // Only its own token's events reach it.
            let ev = b.next_watch_event().await.unwrap();
            assert_eq!(
                (ev.path.as_str(), ev.token.as_str()),
                ("/local/domain/7/data/b/k", "tb")
            );
            let names = b.directory("/local/domain/7/data/x").await.unwrap();
            b.unwatch("/local/domain/7/data/b", "tb").await.unwrap();
            names.len()
        },
    );
    assert_eq!(ra, 0);
    assert!(rb > 20, "{rb}");
    assert_eq!(tokens(b.transport()), Vec::<String>::new());
    assert_eq!(tokens(a.transport()), vec!["ta".to_string()]);
    let stats = share.stats();
    assert_eq!(stats.orphan_replies, 0);
    // 40 writes + 40 reads + 1 + 1 + watch, by a; watch, directory,
    // unwatch by b.
    assert_eq!(stats.requests, 86);
    assert_eq!(
        xsd.borrow().get("/local/domain/7/data/x/39").unwrap(),
        b"value 39"
    );
}

#[test]
fn one_client_reads_and_writes() {
    let xsd = Rc::new(RefCell::new(Xenstored::new(0)));
    let conn = xsd.borrow_mut().connect(7);
    let share = XsShare::new(SimTransport::connection(xsd.clone(), conn, 7));
    let mut a = share.client();
    common::run(async {
        a.write("/local/domain/7/data/q", b"v").await.unwrap();
        assert_eq!(a.read("/local/domain/7/data/q").await.unwrap(), b"v");
        a.watch("/local/domain/7/data/a", "ta").await.unwrap();
        a.next_watch_event_for("ta").await.unwrap();
    });
}
