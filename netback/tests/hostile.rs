//! A deliberately hostile frontend, written for the test, against our
//! netback: bad grant references, out-of-page offsets, oversized,
//! zero-length and runt packets, too many slots, malformed extra info,
//! garbage ring indices, unterminated chains and floods. Each bad request
//! gets an error response and a counted violation; persistent or
//! unparseable abuse disconnects the vif; a well-behaved netfront on the
//! same backend keeps getting service throughout.

mod common;

use common::*;
use netback::sim::SimNetbackEnv;
use netback::{BackendOptions, Fatal, Offload, Packet, Vif, Violation};
use netfront::TxOffload;
use xen::abi::netif::*;
use xen::abi::{DomId, GrantRef, Port};
use xen::shared_page::{PageFrontRing, SharedPage};
use xen::sim::SimPage;

/// The hostile frontend: raw rings and a few granted pages.
struct Hostile {
    dom: DomId,
    hv: xen::sim::SimHypervisor,
    tx: PageFrontRing<SimPage, NetifTxRequest, NetifTxResponse>,
    rx: PageFrontRing<SimPage, NetifRxRequest, NetifRxResponse>,
    tx_raw: SharedPage<SimPage>,
    rx_raw: SharedPage<SimPage>,
    port: Port,
    start: u32,
    /// A page of packet bytes granted read-only to the backend.
    data: GrantRef,
    /// The same page granted to another domain instead.
    data_elsewhere: GrantRef,
    /// Pages granted writable for RX.
    rx_bufs: Vec<(SharedPage<SimPage>, GrantRef)>,
}

const FRAME: [u8; 60] = {
    let mut f = [0x5a; 60];
    f[12] = 0x88;
    f[13] = 0xb5;
    f
};

impl Hostile {
    /// Share rings, publish keys and go `Connected` without any handshake
    /// manners, then let the backend connect.
    fn attach(
        m: &Machine,
        back: &mut Backend,
        dom: DomId,
        start: u32,
        options: BackendOptions,
    ) -> (Self, Vif<SimNetbackEnv>) {
        Self::attach_with(m, back, dom, start, options, None)
    }

    /// With `split`, the rings get separate event channels (TX, RX), as
    /// Linux's netfront sets up when the backend offers them.
    fn attach_with(
        m: &Machine,
        back: &mut Backend,
        dom: DomId,
        start: u32,
        options: BackendOptions,
        split: Option<(Port, Port)>,
    ) -> (Self, Vif<SimNetbackEnv>) {
        m.add_vif(dom);
        let hv = m.hv.clone();
        let tx_page = hv.alloc_page_of(dom);
        let rx_page = hv.alloc_page_of(dom);
        let tx_raw = SharedPage::new(tx_page.memory().clone());
        let rx_raw = SharedPage::new(rx_page.memory().clone());
        let tx_ref = hv.grant_access(dom, BACK, tx_page.frame(), false).unwrap();
        let rx_ref = hv.grant_access(dom, BACK, rx_page.frame(), false).unwrap();
        let port = hv.alloc_unbound(dom, BACK).unwrap();
        let page = hv.alloc_page_of(dom);
        page.write(0, &FRAME).unwrap();
        let data = hv.grant_access(dom, BACK, page.frame(), true).unwrap();
        let data_elsewhere = hv.grant_access(dom, 7, page.frame(), true).unwrap();
        std::mem::forget(page);
        let rx_bufs = (0..32)
            .map(|_| {
                let p = hv.alloc_page_of(dom);
                let g = hv.grant_access(dom, BACK, p.frame(), false).unwrap();
                (p, g)
            })
            .collect();
        let f = front_path(dom);
        let events = match split {
            None => vec![("event-channel", port.to_string())],
            Some((tx, rx)) => vec![
                ("event-channel-tx", tx.to_string()),
                ("event-channel-rx", rx.to_string()),
            ],
        };
        for (k, v) in events {
            m.set(&format!("{f}/{k}"), &v);
        }
        for (k, v) in [
            ("tx-ring-ref", tx_ref.to_string()),
            ("rx-ring-ref", rx_ref.to_string()),
            ("request-rx-copy", "1".into()),
            ("feature-rx-notify", "1".into()),
            ("feature-sg", "1".into()),
            ("feature-gso-tcpv4", "1".into()),
            ("state", "4".into()),
        ] {
            m.set(&format!("{f}/{k}"), &v);
        }
        let h = Self {
            dom,
            hv,
            tx: tx_page.into_front_ring(start),
            rx: rx_page.into_front_ring(start),
            tx_raw,
            rx_raw,
            port,
            start,
            data,
            data_elsewhere,
            rx_bufs,
        };
        let vif = run(netback::connect(
            &mut back.env,
            &mut back.xs,
            &back_path(dom),
            &options,
        ))
        .expect("backend serves the hostile frontend too");
        (h, vif)
    }

    fn push(&mut self, reqs: &[NetifTxRequest]) {
        for r in reqs {
            self.tx.queue_request(*r).unwrap();
        }
        self.tx.push_requests_and_check_notify();
        let _ = self.hv.send(self.dom, self.port);
    }

    fn responses(&mut self) -> Vec<NetifTxResponse> {
        let mut out = Vec::new();
        while let Some(r) = self.tx.take_response().unwrap() {
            out.push(r);
        }
        out
    }

    fn good(&self, id: u16) -> NetifTxRequest {
        NetifTxRequest {
            gref: self.data,
            offset: 0,
            flags: 0,
            id,
            size: 60,
        }
    }
}

fn req(gref: GrantRef, offset: u16, flags: u16, id: u16, size: u16) -> NetifTxRequest {
    NetifTxRequest {
        gref,
        offset,
        flags,
        id,
        size,
    }
}

fn extra(type_: u8, flags: u8, gso_size: u16, gso_type: u8) -> NetifTxRequest {
    NetifExtraInfo::gso(NetifExtraInfoGso {
        type_,
        flags,
        size: gso_size,
        gso_type,
        pad: 0,
        features: 0,
    })
    .to_tx_request()
}

/// A well-behaved netfront on the same backend.
struct Good {
    front: netfront::Netfront<FrontEnv>,
    vif: Vif<SimNetbackEnv>,
    n: u8,
}

impl Good {
    fn new(m: &Machine, back: &mut Backend) -> Self {
        m.add_vif(FRONT2);
        let (f, v) = connect_pair(m, back, FRONT2, front_options(), BackendOptions::default());
        Self {
            front: f.unwrap(),
            vif: v.unwrap(),
            n: 0,
        }
    }

    /// One packet each way; asserts both arrive intact.
    fn exchange(&mut self, back: &mut Backend) {
        self.n = self.n.wrapping_add(1);
        let p = pattern(1500 + usize::from(self.n), self.n);
        self.front.send(&p, TxOffload::default()).unwrap();
        let got = backend_take(back, &mut self.vif);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].data, p);
        self.front.poll().unwrap();
        self.vif.send(Packet {
            data: p.clone(),
            offload: Offload::default(),
        });
        self.vif.deliver(&mut back.env, 8).unwrap();
        self.front.poll().unwrap();
        assert_eq!(self.front.receive().expect("RX").data, p);
    }
}

#[test]
fn bad_requests_are_rejected_one_by_one_and_counted() {
    let m = Machine::new();
    let mut back = Backend::new(&m);
    let mut good = Good::new(&m, &mut back);
    let options = BackendOptions {
        gso_tcpv6: false,
        violation_limit: 1000,
        ..BackendOptions::default()
    };
    let (mut h, mut vif) = Hostile::attach(&m, &mut back, FRONT, 0, options);
    let d = h.data;
    let more = NETTXF_MORE_DATA;
    let ext = NETTXF_EXTRA_INFO;
    let mut too_many = vec![req(d, 0, more, 0, 19 * 60)];
    too_many.extend((1..19).map(|i| req(d, 0, if i < 18 { more } else { 0 }, i, 60)));
    let cases: Vec<(&str, Vec<NetifTxRequest>, Violation, Vec<i16>)> = vec![
        (
            "never-granted gref",
            vec![req(4000, 0, 0, 1, 60)],
            Violation::BadTxGrant,
            vec![-1],
        ),
        (
            "gref granted to another domain",
            vec![req(h.data_elsewhere, 0, 0, 1, 60)],
            Violation::BadTxGrant,
            vec![-1],
        ),
        (
            "offset beyond the page",
            vec![req(d, 4090, 0, 1, 60)],
            Violation::SlotOutOfPage,
            vec![-1],
        ),
        (
            "one slot of 9000 bytes",
            vec![req(d, 0, 0, 1, 9000)],
            Violation::SlotOutOfPage,
            vec![-1],
        ),
        (
            "zero-length packet",
            vec![req(d, 0, 0, 1, 0)],
            Violation::EmptyPacket,
            vec![-1],
        ),
        (
            "10-byte runt",
            vec![req(d, 0, 0, 1, 10)],
            Violation::Runt,
            vec![-1],
        ),
        ("19 slots", too_many, Violation::TooManySlots, vec![-1; 19]),
        (
            "follow-on slots larger than the total",
            vec![req(d, 0, more, 1, 100), req(d, 0, 0, 2, 200)],
            Violation::SizeMismatch,
            vec![-1, -1],
        ),
        (
            "extra info of unknown type",
            vec![req(d, 0, ext, 1, 60), extra(9, 0, 0, 0)],
            Violation::BadExtra,
            vec![-1, 1],
        ),
        (
            "extra info of type none",
            vec![req(d, 0, ext, 1, 60), extra(0, 0, 0, 0)],
            Violation::BadExtra,
            vec![-1, 1],
        ),
        (
            "GSO with mss 0",
            vec![
                req(d, 0, ext, 1, 60),
                extra(XEN_NETIF_EXTRA_TYPE_GSO, 0, 0, XEN_NETIF_GSO_TYPE_TCPV4),
            ],
            Violation::BadExtra,
            vec![-1, 1],
        ),
        (
            "GSO of unknown type",
            vec![
                req(d, 0, ext, 1, 60),
                extra(XEN_NETIF_EXTRA_TYPE_GSO, 0, 1448, 7),
            ],
            Violation::BadExtra,
            vec![-1, 1],
        ),
        (
            "GSO TCPv6 not offered",
            vec![
                req(d, 0, ext, 1, 60),
                extra(XEN_NETIF_EXTRA_TYPE_GSO, 0, 1448, XEN_NETIF_GSO_TYPE_TCPV6),
            ],
            Violation::GsoNotOffered,
            vec![-1, 1],
        ),
    ];
    let mut total = 0;
    for (name, reqs, kind, statuses) in cases {
        let before = vif.stats().violations_of(kind);
        h.push(&reqs);
        let mut out = Vec::new();
        let p = vif.receive(&mut back.env, 64, &mut out).expect(name);
        assert_eq!((p.packets, out.len()), (1, 0), "{name}");
        let rsp = h.responses();
        let got: Vec<i16> = rsp.iter().map(|r| r.status).collect();
        assert_eq!(got, statuses, "{name}: responses");
        assert_eq!(
            vif.stats().violations_of(kind),
            before + 1,
            "{name}: counter"
        );
        total += 1;
        println!("hostile case {name:?}: {kind:?}, responses {got:?}");
        // The next well-formed request is served normally.
        h.push(&[h.good(77)]);
        vif.receive(&mut back.env, 64, &mut out).unwrap();
        assert_eq!(out.len(), 1, "{name}: service continues");
        assert_eq!(out[0].data, FRAME);
        assert_eq!(h.responses(), [NetifTxResponse { id: 77, status: 0 }]);
        good.exchange(&mut back);
    }
    assert_eq!(vif.stats().violations, total);
    assert_eq!(vif.stats().tx_errors, u64::from(total));
    assert_eq!(vif.fatal(), None);

    // RX: buffers posted with a bad grant (and a read-only one).
    for (id, gref) in [(0u16, 4000), (1, h.data)] {
        h.rx.queue_request(NetifRxRequest { id, pad: 0, gref })
            .unwrap();
    }
    h.rx.push_requests_and_check_notify();
    for _ in 0..2 {
        assert!(vif.send(Packet {
            data: pattern(200, 1),
            offload: Offload::default()
        }));
    }
    let p = vif.deliver(&mut back.env, 8).unwrap();
    assert_eq!(p.packets, 2);
    let mut statuses = Vec::new();
    while let Some(r) = h.rx.take_response().unwrap() {
        statuses.push((r.id, r.status));
    }
    assert_eq!(statuses, [(0, -1), (1, -1)]);
    assert_eq!(vif.stats().violations_of(Violation::BadRxGrant), 2);
    println!("hostile case \"bad RX grants\": BadRxGrant, responses [-1, -1]");
    // Good RX buffers work.
    let (ref page, gref) = h.rx_bufs[0];
    h.rx.queue_request(NetifRxRequest {
        id: 2,
        pad: 0,
        gref,
    })
    .unwrap();
    h.rx.push_requests_and_check_notify();
    vif.send(Packet {
        data: pattern(300, 2),
        offload: Offload::default(),
    });
    vif.deliver(&mut back.env, 8).unwrap();
    let r = h.rx.take_response().unwrap().unwrap();
    assert_eq!((r.id, r.status), (2, 300));
    let mut got = vec![0u8; 300];
    page.read(0, &mut got).unwrap();
    assert_eq!(got, pattern(300, 2));
    good.exchange(&mut back);
}

/// Each of these stops the vif at once; it is closed cleanly and the good
/// frontend is unaffected.
#[test]
fn unparseable_rings_disconnect_at_once_and_others_keep_service() {
    let m = Machine::new();
    let mut back = Backend::new(&m);
    let mut good = Good::new(&m, &mut back);
    type Abuse = fn(&mut Hostile);
    let cases: Vec<(&str, Abuse, Fatal)> = vec![
        (
            "TX req_prod 1000 ahead",
            |h| {
                h.tx_raw
                    .write(0, &h.start.wrapping_add(1000).to_ne_bytes())
                    .unwrap();
            },
            Fatal::BadRingIndex(xen::ring::RingError::BadProducerIndex { prod: 0, ours: 0 }),
        ),
        (
            "TX req_prod behind rsp_prod",
            |h| {
                h.tx_raw
                    .write(0, &h.start.wrapping_sub(5).to_ne_bytes())
                    .unwrap();
            },
            Fatal::BadRingIndex(xen::ring::RingError::BadProducerIndex { prod: 0, ours: 0 }),
        ),
        (
            "more_data on the last published slot",
            |h| {
                let r = req(h.data, 0, NETTXF_MORE_DATA, 1, 120);
                h.push(&[r]);
            },
            Fatal::IncompletePacket,
        ),
        (
            "a ring full of more_data",
            |h| {
                let reqs: Vec<_> = (0..256)
                    .map(|i| req(h.data, 0, NETTXF_MORE_DATA, i, 60))
                    .collect();
                h.push(&reqs);
            },
            Fatal::IncompletePacket,
        ),
        (
            "five chained extra infos",
            |h| {
                let mut reqs = vec![req(h.data, 0, NETTXF_EXTRA_INFO, 1, 60)];
                reqs.extend((0..5).map(|_| {
                    extra(
                        XEN_NETIF_EXTRA_TYPE_MCAST_ADD,
                        XEN_NETIF_EXTRA_FLAG_MORE,
                        0,
                        0,
                    )
                }));
                h.push(&reqs);
            },
            Fatal::ExtraChain,
        ),
        (
            "RX req_prod 5000 ahead",
            |h| {
                h.rx_raw
                    .write(0, &h.start.wrapping_add(5000).to_ne_bytes())
                    .unwrap();
            },
            Fatal::BadRingIndex(xen::ring::RingError::BadProducerIndex { prod: 0, ours: 0 }),
        ),
    ];
    for (i, (name, abuse, expected)) in cases.into_iter().enumerate() {
        let dom = 10 + i as DomId;
        let start = if i % 2 == 0 { 0 } else { u32::MAX - 3 };
        let (mut h, mut vif) =
            Hostile::attach(&m, &mut back, dom, start, BackendOptions::default());
        abuse(&mut h);
        vif.send(Packet {
            data: pattern(100, 0),
            offload: Offload::default(),
        });
        let mut out = Vec::new();
        let r = vif.poll(&mut back.env, 64, &mut out);
        let got = r.expect_err(name);
        let same_kind = std::mem::discriminant(&got) == std::mem::discriminant(&expected);
        assert!(same_kind, "{name}: {got:?}");
        assert_eq!(vif.fatal(), Some(got));
        assert!(out.is_empty());
        println!("hostile case {name:?}: disconnect, {got:?}");
        // Stopped: further polls refuse, nothing is touched.
        assert_eq!(vif.poll(&mut back.env, 64, &mut out), Err(got));
        let (port, _) = vif.ports();
        run(vif.close(&mut back.env, &mut back.xs));
        assert_eq!(m.hv.maps_of(BACK, dom), 0, "{name}: rings unmapped");
        assert!(!m.hv.port_open(BACK, port));
        assert_eq!(
            m.get(&format!("{}/state", back_path(dom))).as_deref(),
            Some("6")
        );
        good.exchange(&mut back);
        let _ = h.rx_raw.frame();
    }
}

#[test]
fn split_event_channels_notify_each_ring_on_its_own_port() {
    let m = Machine::new();
    let mut back = Backend::new(&m);
    let tx_port = m.hv.alloc_unbound(FRONT, BACK).unwrap();
    let rx_port = m.hv.alloc_unbound(FRONT, BACK).unwrap();
    let (mut h, mut vif) = Hostile::attach_with(
        &m,
        &mut back,
        FRONT,
        0,
        BackendOptions::default(),
        Some((tx_port, rx_port)),
    );
    assert_eq!(
        m.get(&format!(
            "{}/feature-split-event-channels",
            back_path(FRONT)
        ))
        .as_deref(),
        Some("1")
    );
    let (btx, brx) = vif.ports();
    assert_ne!(btx, brx);
    // TX: the frontend kicks its TX channel; the answer comes back on it.
    let r = h.good(5);
    h.tx.queue_request(r).unwrap();
    h.tx.push_requests_and_check_notify();
    m.hv.send(FRONT, tx_port).unwrap();
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(vif.poll_event(&mut back.env, &mut cx).is_ready());
    let mut out = Vec::new();
    vif.receive(&mut back.env, 8, &mut out).unwrap();
    assert_eq!(out.len(), 1);
    assert!(m.hv.is_pending(FRONT, tx_port));
    assert!(!m.hv.is_pending(FRONT, rx_port));
    assert_eq!(h.responses(), [NetifTxResponse { id: 5, status: 0 }]);
    // RX: buffers posted on the RX channel, the packet signalled on it.
    let gref = h.rx_bufs[0].1;
    h.rx.queue_request(NetifRxRequest {
        id: 0,
        pad: 0,
        gref,
    })
    .unwrap();
    h.rx.push_requests_and_check_notify();
    m.hv.send(FRONT, rx_port).unwrap();
    assert!(vif.poll_event(&mut back.env, &mut cx).is_ready());
    assert!(vif.poll_event(&mut back.env, &mut cx).is_pending());
    vif.send(Packet {
        data: pattern(64, 1),
        offload: Offload::default(),
    });
    vif.deliver(&mut back.env, 8).unwrap();
    assert!(m.hv.is_pending(FRONT, rx_port));
    let r = h.rx.take_response().unwrap().unwrap();
    assert_eq!((r.id, r.status), (0, 64));
    run(vif.close(&mut back.env, &mut back.xs));
    assert!(!m.hv.port_open(BACK, btx) && !m.hv.port_open(BACK, brx));
}

/// Linux's netfront posts RX buffers in batches and notifies only when its
/// push crosses `req_event`. A packet waiting for more slots than are
/// posted (here 3 of 2) must leave `req_event` where the next batch crosses
/// it, else the packet, and every one queued behind it, waits for some
/// unrelated wake-up.
#[test]
fn a_packet_waiting_for_more_rx_slots_than_posted_is_woken_by_the_next_batch() {
    let m = Machine::new();
    let mut back = Backend::new(&m);
    let tx_port = m.hv.alloc_unbound(FRONT, BACK).unwrap();
    let rx_port = m.hv.alloc_unbound(FRONT, BACK).unwrap();
    let (mut h, mut vif) = Hostile::attach_with(
        &m,
        &mut back,
        FRONT,
        u32::MAX - 1,
        BackendOptions::default(),
        Some((tx_port, rx_port)),
    );
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let post = |h: &mut Hostile, ids: std::ops::Range<u16>| -> bool {
        for id in ids {
            let gref = h.rx_bufs[usize::from(id)].1;
            h.rx.queue_request(NetifRxRequest { id, pad: 0, gref })
                .unwrap();
        }
        // As Linux: kick only when the push crosses req_event.
        let kick = h.rx.push_requests_and_check_notify();
        if kick {
            m.hv.send(FRONT, rx_port).unwrap();
        }
        kick
    };
    assert!(post(&mut h, 0..2));
    assert!(vif.poll_event(&mut back.env, &mut cx).is_ready());
    // 9000 bytes: three slots; a 60-byte frame queued behind it.
    let big = pattern(9000, 3);
    vif.send(Packet {
        data: big.clone(),
        offload: Offload::default(),
    });
    vif.send(Packet {
        data: pattern(60, 4),
        offload: Offload::default(),
    });
    let p = vif.deliver(&mut back.env, 8).unwrap();
    assert_eq!((p.packets, p.more), (0, false), "waits for buffers");
    assert_eq!(vif.queued(), 2);
    // The next batch: the frontend must see that we asked for it.
    assert!(post(&mut h, 2..10), "the batch crosses req_event: a kick");
    assert!(vif.poll_event(&mut back.env, &mut cx).is_ready());
    let p = vif.deliver(&mut back.env, 8).unwrap();
    assert_eq!(p.packets, 2);
    assert_eq!(vif.queued(), 0);
    let mut got = Vec::new();
    while let Some(r) = h.rx.take_response().unwrap() {
        got.push((r.id, r.status, r.flags & NETRXF_MORE_DATA != 0));
    }
    assert_eq!(
        got,
        [
            (0, 4096, true),
            (1, 4096, true),
            (2, 808, false),
            (3, 60, false)
        ]
    );
    let mut first = vec![0u8; 4096];
    h.rx_bufs[0].0.read(0, &mut first).unwrap();
    assert_eq!(&first[..], &big[..4096]);
}

#[test]
fn persistent_violations_disconnect_after_the_limit() {
    let m = Machine::new();
    let mut back = Backend::new(&m);
    let mut good = Good::new(&m, &mut back);
    let options = BackendOptions {
        violation_limit: 8,
        ..BackendOptions::default()
    };
    let (mut h, mut vif) = Hostile::attach(&m, &mut back, FRONT, 0, options);
    let mut out = Vec::new();
    for i in 0..7u16 {
        h.push(&[req(4000 + u32::from(i), 0, 0, i, 60)]);
        vif.receive(&mut back.env, 64, &mut out).unwrap();
        good.exchange(&mut back);
    }
    assert_eq!(vif.stats().violations, 7);
    h.push(&[req(h.data, 0, 0, 8, 5)]);
    assert_eq!(
        vif.receive(&mut back.env, 64, &mut out),
        Err(Fatal::TooManyViolations)
    );
    // Every bad request was still answered.
    assert_eq!(
        h.responses()
            .iter()
            .filter(|r| r.status == NETIF_RSP_ERROR)
            .count(),
        8
    );
    println!("hostile case \"8 violations\": disconnect, TooManyViolations");
    run(vif.close(&mut back.env, &mut back.xs));
    assert_eq!(m.hv.maps_of(BACK, FRONT), 0);
    good.exchange(&mut back);
}

#[test]
fn a_flood_cannot_starve_another_frontend() {
    let m = Machine::new();
    let mut back = Backend::new(&m);
    let mut good = Good::new(&m, &mut back);
    let (mut h, mut hv) = Hostile::attach(&m, &mut back, FRONT, 0, BackendOptions::default());
    const BUDGET: usize = 16;
    let mut flood_served = 0;
    let mut flood_pushed = 0;
    for round in 0..200u32 {
        // The hostile frontend refills its whole ring and kicks every round.
        h.responses();
        let free = h.tx.free_requests();
        let reqs: Vec<_> = (0..free)
            .map(|i| h.good((round * 256 + i) as u16))
            .collect();
        flood_pushed += reqs.len();
        h.push(&reqs);
        for _ in 0..10 {
            let _ = h.hv.send(h.dom, h.port);
        }
        // The good one sends one packet.
        let p = pattern(800, round as u8);
        good.front.send(&p, TxOffload::default()).unwrap();
        // One service round: each vif gets the same budget.
        let mut out = Vec::new();
        let pr = hv.poll(&mut back.env, BUDGET, &mut out).unwrap();
        assert!(pr.packets <= BUDGET && out.len() <= BUDGET);
        assert!(pr.more, "the flood always has more");
        flood_served += out.len();
        let mut mine = Vec::new();
        good.vif.poll(&mut back.env, BUDGET, &mut mine).unwrap();
        assert_eq!(mine.len(), 1, "round {round}: good frontend served");
        assert_eq!(mine[0].data, p);
        good.front.poll().unwrap();
    }
    assert_eq!(flood_served, 200 * BUDGET);
    assert_eq!(hv.stats().violations, 0);
    println!(
        "flood: {flood_pushed} requests pushed, {flood_served} served at {BUDGET}/round; good frontend 200/200 rounds served"
    );
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn gref_of(h: &Hostile, choice: u8, raw: u32) -> GrantRef {
        match choice % 4 {
            0 => h.data,
            1 => 4000,
            2 => h.data_elsewhere,
            _ => raw,
        }
    }

    fn tx_req() -> impl Strategy<Value = (u8, u32, u16, u16, u16, u16)> {
        prop_oneof![
            (
                Just(0u8),
                Just(0u32),
                0u16..64,
                Just(0u16),
                any::<u16>(),
                14u16..=1500
            ),
            (
                Just(0u8),
                Just(0u32),
                0u16..64,
                prop_oneof![Just(NETTXF_MORE_DATA), Just(0u16)],
                any::<u16>(),
                14u16..=2000
            ),
            raw_req(),
        ]
    }

    fn raw_req() -> impl Strategy<Value = (u8, u32, u16, u16, u16, u16)> {
        (
            any::<u8>(),
            any::<u32>(),
            prop_oneof![0u16..64, any::<u16>()],
            prop_oneof![Just(0u16), 0u16..16, any::<u16>()],
            any::<u16>(),
            prop_oneof![0u16..100, 14u16..=4096, any::<u16>()],
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        /// Whatever a frontend puts in its rings, the backend answers or
        /// disconnects; it never panics, never answers more than it took,
        /// and closes cleanly; a good frontend keeps service.
        #[test]
        fn random_rings_never_break_the_backend(
            reqs in prop::collection::vec(tx_req(), 1..300),
            rx in prop::collection::vec((any::<u8>(), any::<u32>(), 1usize..9000), 0..40),
            wrap in any::<bool>(),
            budget in 1usize..40,
            limit in 1u32..64,
        ) {
            let m = Machine::new();
            let mut back = Backend::new(&m);
            let mut good = Good::new(&m, &mut back);
            let start = if wrap { u32::MAX - 100 } else { 0 };
            let options = BackendOptions { violation_limit: limit, ..BackendOptions::default() };
            let (mut h, mut vif) = Hostile::attach(&m, &mut back, FRONT, start, options);
            let mut pushed = 0usize;
            let mut answered = 0usize;
            let mut ok_rsp = 0usize;
            let mut received = 0usize;
            let mut fatal = None;
            let mut i = 0;
            while i < reqs.len() && fatal.is_none() {
                let free = h.tx.free_requests() as usize;
                let n = free.min(reqs.len() - i);
                let batch: Vec<NetifTxRequest> = reqs[i..i + n]
                    .iter()
                    .map(|&(c, raw, offset, flags, id, size)| req(gref_of(&h, c, raw), offset, flags, id, size))
                    .collect();
                h.push(&batch);
                pushed += n;
                i += n;
                loop {
                    let mut out = Vec::new();
                    match vif.receive(&mut back.env, budget, &mut out) {
                        Ok(p) => {
                            prop_assert!(p.packets <= budget);
                            received += out.len();
                            for pk in &out {
                                prop_assert!(pk.data.len() >= 14 && pk.data.len() <= 65535);
                            }
                            if !p.more { break; }
                        }
                        Err(f) => { fatal = Some(f); break; }
                    }
                }
                for r in h.responses() {
                    answered += 1;
                    prop_assert!([0, -1, 1].contains(&r.status), "status {}", r.status);
                    if r.status == 0 { ok_rsp += 1; }
                }
            }
            prop_assert!(answered <= pushed);
            if fatal.is_none() {
                // Everything taken was answered, and only whole packets were taken.
                prop_assert_eq!(answered, pushed);
                // RX: random buffers, random packets.
                for (k, &(c, raw, _)) in rx.iter().enumerate() {
                    let gref = match c % 3 {
                        0 => h.rx_bufs[k % h.rx_bufs.len()].1,
                        1 => gref_of(&h, c, raw),
                        _ => raw,
                    };
                    h.rx.queue_request(NetifRxRequest { id: k as u16, pad: 0, gref }).unwrap();
                }
                h.rx.push_requests_and_check_notify();
                for (k, &(_, _, len)) in rx.iter().enumerate() {
                    vif.send(Packet { data: pattern(len, k as u8), offload: Offload::default() });
                }
                match vif.deliver(&mut back.env, 64) {
                    Ok(_) => {
                        let mut n = 0;
                        while let Some(r) = h.rx.take_response().unwrap() {
                            prop_assert!(r.status == -1 || (r.status > 0 && r.status <= 4096));
                            n += 1;
                        }
                        prop_assert!(n <= rx.len());
                    }
                    Err(f) => fatal = Some(f),
                }
            }
            // Packets handed out match the OK answers to their first slots.
            prop_assert!(received <= ok_rsp);
            prop_assert!(vif.stats().violations <= limit);
            if let Some(f) = fatal {
                prop_assert_eq!(vif.fatal(), Some(f));
                let mut out = Vec::new();
                prop_assert_eq!(vif.poll(&mut back.env, 8, &mut out), Err(f));
            }
            run(vif.close(&mut back.env, &mut back.xs));
            prop_assert_eq!(m.hv.maps_of(BACK, FRONT), 0);
            good.exchange(&mut back);
        }
    }
}
