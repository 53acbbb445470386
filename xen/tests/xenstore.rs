//! The xenstore client against a simulated xenstored: directly, through a
//! real shared page, and against scripted or arbitrary daemon bytes.

mod common;

use common::xenstored::{PageEvents, SimTransport, XenstorePage as SharedPage, Xenstored};
use common::{block_on, try_block_on};
use proptest::prelude::*;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use xen::abi::xs_wire::XsdSockmsgType;
use xen::xenstore::client::TRANSACTION_ATTEMPTS;
use xen::xenstore::{ProtocolError, WatchEvent, XenStore, XsError, XsRing, XsTransport};

fn sim(chunk: usize) -> (Rc<RefCell<Xenstored>>, XenStore<SimTransport>) {
    let daemon = Rc::new(RefCell::new(Xenstored::new(7)));
    let xs = XenStore::new(SimTransport::new(daemon.clone(), chunk));
    (daemon, xs)
}

fn event(path: &str, token: &str) -> WatchEvent {
    WatchEvent {
        path: path.into(),
        token: token.into(),
    }
}

#[test]
fn read_write_directory_mkdir_rm() {
    for chunk in [1, 7, 4096] {
        let (daemon, mut xs) = sim(chunk);
        block_on(async {
            xs.write("/a/b/c", b"value").await.unwrap();
            assert_eq!(xs.read("/a/b/c").await.unwrap(), b"value");
            assert_eq!(xs.read_string("/a/b/c").await.unwrap(), "value");
            xs.write("/a/b/d", b"").await.unwrap();
            xs.mkdir("/a/e").await.unwrap();
            assert_eq!(xs.directory("/a").await.unwrap(), ["b", "e"]);
            assert_eq!(xs.directory("/a/b").await.unwrap(), ["c", "d"]);
            assert_eq!(xs.directory("/a/e").await.unwrap(), Vec::<String>::new());
            xs.rm("/a/b").await.unwrap();
            assert_eq!(xs.read("/a/b/c").await, Err(XsError::Enoent));
            assert_eq!(xs.directory("/a").await.unwrap(), ["e"]);
            // Relative paths are under our home.
            xs.write("device/vif/0/state", b"1").await.unwrap();
        });
        assert_eq!(
            daemon.borrow().get("/local/domain/7/device/vif/0/state"),
            Some(b"1".to_vec())
        );
        // Request ids are distinct and increasing.
        let ids: Vec<u32> = daemon.borrow().requests.iter().map(|r| r.1).collect();
        assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
    }
}

#[test]
fn daemon_errors_come_back_as_values() {
    let (_daemon, mut xs) = sim(16);
    block_on(async {
        assert_eq!(xs.read("/nope").await, Err(XsError::Enoent));
        assert_eq!(xs.rm("/nope").await, Err(XsError::Enoent));
        assert_eq!(xs.directory("/nope").await, Err(XsError::Enoent));
        assert_eq!(xs.unwatch("/x", "t").await, Err(XsError::Enoent));
        assert_eq!(
            xs.read("a\0b").await,
            Err(XsError::NulInArgument),
            "checked locally"
        );
        let big = vec![b'x'; 5000];
        assert_eq!(xs.write("/big", &big).await, Err(XsError::RequestTooLarge));
        // The connection is still fine after all that.
        xs.write("/ok", b"1").await.unwrap();
        assert_eq!(xs.read("/ok").await.unwrap(), b"1");
    });
}

#[test]
fn domain_path_and_domid() {
    let (_daemon, mut xs) = sim(5);
    block_on(async {
        assert_eq!(xs.get_domain_path(3).await.unwrap(), "/local/domain/3");
        assert_eq!(xs.domid().await.unwrap(), 7);
    });
}

#[test]
fn watches_fire_and_queue_while_a_request_is_pending() {
    let (daemon, mut xs) = sim(9);
    block_on(async {
        xs.watch("/backend/vif", "tok").await.unwrap();
        assert_eq!(
            xs.next_watch_event().await.unwrap(),
            event("/backend/vif", "tok"),
            "registration fires once"
        );
        // Another domain writes: the event is sent before the reply to our
        // next request, which must still get its reply.
        daemon.borrow_mut().set("/backend/vif/7/0/state", b"2");
        daemon.borrow_mut().set("/elsewhere", b"x");
        xs.write("/mine", b"1").await.unwrap();
        assert_eq!(
            xs.next_watch_event().await.unwrap(),
            event("/backend/vif/7/0/state", "tok")
        );
        // Our own write below the watch fires too.
        xs.write("/backend/vif/7/0/x", b"y").await.unwrap();
        assert_eq!(
            xs.next_watch_event().await.unwrap(),
            event("/backend/vif/7/0/x", "tok")
        );
        xs.unwatch("/backend/vif", "tok").await.unwrap();
        xs.write("/backend/vif/7/0/x", b"z").await.unwrap();
        assert_eq!(xs.dropped_watch_events(), 0);
    });
    assert_eq!(daemon.borrow().watch_count(), 0);
    assert_eq!(
        daemon.borrow().pending_output(),
        0,
        "no event after unwatch"
    );
}

#[test]
fn events_for_other_tokens_stay_queued() {
    let (daemon, mut xs) = sim(64);
    block_on(async {
        xs.watch("/a", "ta").await.unwrap();
        xs.watch("/b", "tb").await.unwrap();
        daemon.borrow_mut().set("/a/x", b"1");
        daemon.borrow_mut().set("/b/x", b"1");
        assert_eq!(
            xs.next_watch_event_for("tb").await.unwrap(),
            event("/b", "tb")
        );
        assert_eq!(
            xs.next_watch_event_for("tb").await.unwrap(),
            event("/b/x", "tb")
        );
        assert_eq!(xs.next_watch_event().await.unwrap(), event("/a", "ta"));
        assert_eq!(xs.next_watch_event().await.unwrap(), event("/a/x", "ta"));
    });
}

#[test]
fn relative_watches_report_relative_paths() {
    let (daemon, mut xs) = sim(64);
    block_on(async {
        xs.watch("device", "d").await.unwrap();
        assert_eq!(xs.next_watch_event().await.unwrap(), event("device", "d"));
        daemon.borrow_mut().set("/local/domain/7/device/vif/0", b"");
        assert_eq!(
            xs.next_watch_event().await.unwrap(),
            event("device/vif/0", "d")
        );
    });
}

#[test]
fn a_busy_watch_is_collapsed_to_a_resync_event() {
    let (daemon, mut xs) = sim(4096);
    block_on(async {
        xs.watch("/w", "t").await.unwrap();
        for i in 0..300 {
            daemon.borrow_mut().set(&format!("/w/{i}"), b"");
        }
        // The 301 events arrive while this request waits for its reply.
        xs.write("/other", b"").await.unwrap();
    });
    // Every 64 events of the token became one resync ("/w": its watched
    // path); nothing was dropped.
    assert_eq!(xs.dropped_watch_events(), 0);
    assert_eq!(xs.watch_resyncs(), 4);
    block_on(async {
        assert_eq!(xs.next_watch_event().await.unwrap(), event("/w", "t"));
        for i in 256..300 {
            assert_eq!(
                xs.next_watch_event().await.unwrap(),
                event(&format!("/w/{i}"), "t")
            );
        }
    });
    assert!(try_block_on(xs.next_watch_event(), 100).is_none());
}

#[test]
fn one_busy_watch_cannot_drop_another_watchs_events() {
    let (daemon, mut xs) = sim(4096);
    block_on(async {
        xs.watch("/quiet", "q").await.unwrap();
        xs.watch("/w", "t").await.unwrap();
        daemon.borrow_mut().set("/quiet/x", b"");
        for i in 0..1000 {
            daemon.borrow_mut().set(&format!("/w/{i}"), b"");
        }
        xs.write("/other", b"").await.unwrap();
    });
    assert_eq!(xs.dropped_watch_events(), 0);
    block_on(async {
        assert_eq!(
            xs.next_watch_event_for("q").await.unwrap(),
            event("/quiet", "q")
        );
        assert_eq!(
            xs.next_watch_event_for("q").await.unwrap(),
            event("/quiet/x", "q")
        );
    });
    // Five busy tokens together overflow the whole queue: the one holding
    // the most is collapsed each time, and every token's last change is
    // still represented (its own event, or a resync queued after it).
    let (daemon, mut xs) = sim(4096);
    let tokens = ["a", "b", "c", "d", "e"];
    block_on(async {
        for t in tokens {
            xs.watch(&format!("/{t}"), t).await.unwrap();
        }
        for i in 0..60 {
            for t in tokens {
                daemon.borrow_mut().set(&format!("/{t}/{i}"), b"");
            }
        }
        xs.write("/other", b"").await.unwrap();
    });
    assert_eq!(xs.dropped_watch_events(), 0);
    assert!(xs.watch_resyncs() >= 1);
    for t in tokens {
        let mut last = None;
        while let Some(ev) = try_block_on(xs.next_watch_event_for(t), 100) {
            last = Some(ev.unwrap());
        }
        let last = last.unwrap();
        assert!(
            last.path == format!("/{t}/59") || last.path == format!("/{t}"),
            "{t}: {last:?}"
        );
    }
}

#[test]
fn transactions_commit_and_abort() {
    let (daemon, mut xs) = sim(11);
    block_on(async {
        let tx = xs.transaction_start().await.unwrap();
        assert_ne!(tx.0, 0);
        xs.transaction_end(tx, false).await.unwrap();

        let value = xs
            .transaction(async |tx| {
                tx.write("/t/a", b"1").await?;
                tx.write("/t/b", b"2").await?;
                tx.read("/t/a").await
            })
            .await
            .unwrap();
        assert_eq!(value, b"1");
    });
    assert_eq!(daemon.borrow().get("/t/b"), Some(b"2".to_vec()));
    assert_eq!(daemon.borrow().commits, 1);
    // Every op of the transaction carried its id.
    let d = daemon.borrow();
    let writes: Vec<_> = d
        .requests
        .iter()
        .filter(|r| r.0 == XsdSockmsgType::Write as u32)
        .collect();
    assert_eq!(writes.len(), 2);
    assert!(writes.iter().all(|r| r.2 != 0));
}

#[test]
fn transaction_errors_abort_and_are_returned() {
    let (daemon, mut xs) = sim(11);
    let mut runs = 0;
    let r: Result<(), XsError> = block_on(xs.transaction(async |tx| {
        runs += 1;
        tx.write("/t/a", b"1").await?;
        tx.read("/t/missing").await?;
        Ok(())
    }));
    assert_eq!(r, Err(XsError::Enoent));
    assert_eq!(runs, 1);
    assert_eq!(daemon.borrow().get("/t/a"), None, "aborted");
    assert_eq!(daemon.borrow().commits, 0);
}

#[test]
fn conflicting_transactions_are_retried() {
    let (daemon, mut xs) = sim(32);
    daemon.borrow_mut().force_conflicts = 2;
    let mut runs = 0;
    block_on(xs.transaction(async |tx| {
        runs += 1;
        let n: u32 = tx
            .read_string("/counter")
            .await
            .unwrap_or_default()
            .parse()
            .unwrap_or(0);
        tx.write("/counter", (n + 1).to_string().as_bytes()).await
    }))
    .unwrap();
    assert_eq!(runs, 3);
    assert_eq!(daemon.borrow().get("/counter"), Some(b"1".to_vec()));

    // A real conflict: someone else writes while our transaction runs.
    let d2 = daemon.clone();
    let mut runs = 0;
    block_on(xs.transaction(async |tx| {
        runs += 1;
        let n: u32 = tx.read_string("/counter").await?.parse().unwrap();
        if runs == 1 {
            d2.borrow_mut().set("/counter", b"10");
        }
        tx.write("/counter", (n + 1).to_string().as_bytes()).await
    }))
    .unwrap();
    assert_eq!(runs, 2);
    assert_eq!(daemon.borrow().get("/counter"), Some(b"11".to_vec()));
}

#[test]
fn endless_conflicts_give_up() {
    let (daemon, mut xs) = sim(32);
    daemon.borrow_mut().force_conflicts = 1000;
    let mut runs = 0;
    let r = block_on(xs.transaction(async |tx| {
        runs += 1;
        tx.write("/x", b"1").await
    }));
    assert_eq!(r, Err(XsError::RetriesExhausted));
    assert_eq!(runs, TRANSACTION_ATTEMPTS);
    assert_eq!(daemon.borrow().get("/x"), None);
}

#[test]
fn mismatched_request_id_is_a_sticky_protocol_error() {
    let (daemon, mut xs) = sim(32);
    daemon.borrow_mut().reply_id_offset = 5;
    let r = block_on(xs.read("/x"));
    assert_eq!(
        r,
        Err(XsError::Protocol(ProtocolError::RequestIdMismatch {
            expected: 1,
            got: 6
        }))
    );
    daemon.borrow_mut().reply_id_offset = 0;
    assert!(matches!(block_on(xs.read("/x")), Err(XsError::Protocol(_))));
    assert_eq!(daemon.borrow().requests.len(), 1, "nothing more was sent");
}

#[test]
fn dropped_request_reply_is_discarded() {
    let (daemon, mut xs) = sim(3);
    daemon.borrow_mut().set("/a", b"first");
    daemon.borrow_mut().set("/b", b"second");
    for delivered in [0, 10, 20] {
        // Poll once: the request goes out, `delivered` bytes of the reply
        // come in, and the future is dropped.
        xs.transport().budget = Some(delivered);
        {
            let mut fut = pin!(xs.read("/a"));
            let mut cx = Context::from_waker(Waker::noop());
            assert!(fut.as_mut().poll(&mut cx).is_pending());
        }
        xs.transport().budget = None;
        assert_eq!(block_on(xs.read("/b")).unwrap(), b"second");
    }
    assert_eq!(block_on(xs.read("/a")).unwrap(), b"first");
}

#[test]
fn a_watch_wait_given_up_by_a_timeout_leaves_the_client_usable() {
    let (daemon, mut xs) = sim(4096);
    block_on(xs.watch("/w", "t")).unwrap();
    assert_eq!(block_on(xs.next_watch_event()).unwrap(), event("/w", "t"));
    // Nothing fires: the wait stays pending however often it is polled,
    // and is dropped (what a timeout does).
    assert!(try_block_on(xs.next_watch_event_for("t"), 50).is_none());
    // The client still answers requests, and an event that fires later
    // is still delivered, once.
    block_on(xs.write("/x", b"1")).unwrap();
    daemon.borrow_mut().set("/w/late", b"");
    assert_eq!(block_on(xs.read("/x")).unwrap(), b"1");
    assert_eq!(
        block_on(xs.next_watch_event_for("t")).unwrap(),
        event("/w/late", "t")
    );
    assert!(try_block_on(xs.next_watch_event(), 50).is_none());
}

/// Bytes from a script: the "daemon" says whatever the test wants.
struct Scripted {
    incoming: VecDeque<u8>,
    sent: Vec<u8>,
    chunk: usize,
}

impl Scripted {
    fn new(incoming: &[u8], chunk: usize) -> Self {
        Self {
            incoming: incoming.iter().copied().collect(),
            sent: Vec::new(),
            chunk: chunk.max(1),
        }
    }
}

impl XsTransport for Scripted {
    fn send(&mut self, buf: &[u8]) -> Result<usize, XsError> {
        self.sent.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, XsError> {
        let n = buf.len().min(self.chunk).min(self.incoming.len());
        for slot in &mut buf[..n] {
            *slot = self.incoming.pop_front().unwrap();
        }
        Ok(n)
    }
    fn notify(&mut self) {}
    fn poll_event(&mut self, _cx: &mut Context<'_>) -> Poll<()> {
        if self.incoming.is_empty() {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }
}

fn msg(kind: u32, req_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    for v in [kind, req_id, 0, payload.len() as u32] {
        m.extend_from_slice(&v.to_ne_bytes());
    }
    m.extend_from_slice(payload);
    m
}

#[test]
fn oversized_payload_is_rejected_without_reading_it() {
    let mut bytes = msg(XsdSockmsgType::Read as u32, 1, b"");
    bytes[12..16].copy_from_slice(&5000u32.to_ne_bytes());
    bytes.extend(vec![0u8; 5000]);
    let mut xs = XenStore::new(Scripted::new(&bytes, 64));
    assert_eq!(
        block_on(xs.read("/x")),
        Err(XsError::Protocol(ProtocolError::PayloadTooLarge(5000)))
    );
    assert_eq!(xs.transport().incoming.len(), 5000, "payload left unread");
    assert!(block_on(xs.read("/x")).is_err());
}

#[test]
fn exactly_payload_max_is_accepted() {
    let value = vec![b'v'; 4096];
    let mut xs = XenStore::new(Scripted::new(
        &msg(XsdSockmsgType::Read as u32, 1, &value),
        1000,
    ));
    assert_eq!(block_on(xs.read("/x")).unwrap(), value);
}

#[test]
fn wrong_reply_type_unknown_error_and_unsolicited_reply() {
    let mut xs = XenStore::new(Scripted::new(
        &msg(XsdSockmsgType::Write as u32, 1, b"OK\0"),
        64,
    ));
    assert_eq!(
        block_on(xs.read("/x")),
        Err(XsError::Protocol(ProtocolError::UnexpectedType {
            expected: XsdSockmsgType::Read as u32,
            got: XsdSockmsgType::Write as u32
        }))
    );

    let mut xs = XenStore::new(Scripted::new(
        &msg(XsdSockmsgType::Error as u32, 1, b"ESOMETHING\0"),
        64,
    ));
    match block_on(xs.read("/x")) {
        Err(XsError::Unknown(name)) => assert_eq!(name.as_bytes(), b"ESOMETHING"),
        other => panic!("{other:?}"),
    }

    let mut xs = XenStore::new(Scripted::new(
        &msg(XsdSockmsgType::Read as u32, 9, b"x"),
        64,
    ));
    assert_eq!(
        block_on(xs.next_watch_event()),
        Err(XsError::Protocol(ProtocolError::UnsolicitedReply(9)))
    );

    // A malformed watch event is dropped and counted, not fatal.
    let mut bytes = msg(XsdSockmsgType::WatchEvent as u32, 0, b"only-a-path");
    bytes.extend(msg(XsdSockmsgType::WatchEvent as u32, 0, b"/p\0t\0"));
    let mut xs = XenStore::new(Scripted::new(&bytes, 64));
    assert_eq!(block_on(xs.next_watch_event()).unwrap(), event("/p", "t"));
    assert_eq!(xs.dropped_watch_events(), 1);
}

#[test]
fn over_a_real_shared_page() {
    let page = SharedPage::new();
    let daemon = Rc::new(RefCell::new(Xenstored::new(3)));
    let events = PageEvents::new(daemon.clone(), &page);
    // SAFETY: `page` outlives `xs` (declared before it, dropped after).
    let mut xs = XenStore::new(unsafe { XsRing::new(page.0, events) });
    // Bigger than the 1024-byte rings in both directions.
    let big: Vec<u8> = (0..4000u32).map(|i| (i % 253) as u8).collect();
    block_on(async {
        xs.write("/big", &big).await.unwrap();
        assert_eq!(xs.read("/big").await.unwrap(), big);
        assert_eq!(xs.domid().await.unwrap(), 3);
        xs.watch("/w", "t").await.unwrap();
        assert_eq!(xs.next_watch_event().await.unwrap(), event("/w", "t"));
        for i in 0..50 {
            xs.write(&format!("/w/{i}"), &big[..1000]).await.unwrap();
        }
        for i in 0..50 {
            assert_eq!(
                xs.next_watch_event().await.unwrap(),
                event(&format!("/w/{i}"), "t")
            );
        }
        let n = xs
            .transaction(async |tx| {
                tx.write("/t", b"1").await?;
                tx.directory("/w").await
            })
            .await
            .unwrap();
        assert_eq!(n.len(), 50);
    });
    assert!(xs.transport().events().notifies > 0);
    assert_eq!(daemon.borrow().get("/t"), Some(b"1".to_vec()));
}

#[test]
fn impossible_ring_indices_from_the_daemon_are_a_protocol_error() {
    let page = SharedPage::new();
    let daemon = Rc::new(RefCell::new(Xenstored::new(3)));
    let events = PageEvents::new(daemon, &page);
    // SAFETY: `page` outlives `xs`.
    let mut xs = XenStore::new(unsafe { XsRing::new(page.0, events) });
    // SAFETY: plain write to the live page, no client call in progress.
    unsafe { (*page.0).rsp_prod = 5000 };
    assert_eq!(
        block_on(xs.read("/x")).err(),
        Some(XsError::Protocol(ProtocolError::BadRingIndex))
    );
    assert_eq!(xs.broken(), Some(ProtocolError::BadRingIndex));
}

#[test]
fn server_error_flag_is_reported() {
    use xen::abi::xs_wire::{XENSTORE_ERROR_RINGIDX, XENSTORE_SERVER_FEATURE_ERROR};
    let page = SharedPage::new();
    let daemon = Rc::new(RefCell::new(Xenstored::new(3)));
    let events = PageEvents::new(daemon, &page);
    // SAFETY: `page` outlives `xs`.
    let mut xs = XenStore::new(unsafe { XsRing::new(page.0, events) });
    // SAFETY: plain writes to the live page, no client call in progress.
    unsafe {
        (*page.0).server_features = XENSTORE_SERVER_FEATURE_ERROR;
        (*page.0).error = XENSTORE_ERROR_RINGIDX;
    }
    assert_eq!(
        block_on(xs.read("/x")).err(),
        Some(XsError::Protocol(ProtocolError::ServerError(
            XENSTORE_ERROR_RINGIDX
        )))
    );
}

/// Run a fixed series of client calls against `transport`, each allowed a
/// bounded number of polls; returns how many completed with `Ok`.
fn exercise(xs: &mut XenStore<Scripted>) -> usize {
    let mut ok = 0;
    let limit = 2_000;
    ok += usize::from(matches!(try_block_on(xs.read("/a"), limit), Some(Ok(_))));
    ok += usize::from(matches!(
        try_block_on(xs.directory("/a"), limit),
        Some(Ok(_))
    ));
    ok += usize::from(matches!(
        try_block_on(xs.next_watch_event(), limit),
        Some(Ok(_))
    ));
    ok += usize::from(matches!(
        try_block_on(xs.transaction_start(), limit),
        Some(Ok(_))
    ));
    ok += usize::from(matches!(
        try_block_on(xs.write("/a", b"v"), limit),
        Some(Ok(_))
    ));
    ok += usize::from(matches!(
        try_block_on(xs.get_domain_path(1), limit),
        Some(Ok(_))
    ));
    ok
}

fn any_message() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![0u32..24, Just(0xffff), any::<u32>()],
        prop_oneof![1u32..8, any::<u32>()],
        prop_oneof![0u32..64, 4090u32..4200, any::<u32>()],
        proptest::collection::vec(any::<u8>(), 0..80),
    )
        .prop_map(|(kind, id, len, payload)| {
            let mut m = Vec::new();
            for v in [kind, id, 0, len] {
                m.extend_from_slice(&v.to_ne_bytes());
            }
            m.extend(payload);
            m
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Arbitrary bytes from the daemon never panic the client.
    #[test]
    fn arbitrary_daemon_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        chunk in 1usize..64,
    ) {
        let mut xs = XenStore::new(Scripted::new(&bytes, chunk));
        exercise(&mut xs);
    }

    /// Nearly-well-formed messages (plausible types, ids and lengths) never
    /// panic the client either, and a broken connection stays broken.
    #[test]
    fn plausible_daemon_messages_never_panic(
        messages in proptest::collection::vec(any_message(), 0..12),
        chunk in 1usize..64,
    ) {
        let bytes: Vec<u8> = messages.concat();
        let mut xs = XenStore::new(Scripted::new(&bytes, chunk));
        exercise(&mut xs);
        if let Some(err) = xs.broken() {
            prop_assert_eq!(
                try_block_on(xs.read("/z"), 100),
                Some(Err(XsError::Protocol(err)))
            );
        }
    }
}
