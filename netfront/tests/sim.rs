//! netfront against a simulated netback over simulated grants, event
//! channels and xenstore.

mod common;

use common::*;
use netfront::{ConnectOptions, Gso, GsoKind, NetfrontError, TxOffload};
use xen::abi::netif::*;

fn options() -> ConnectOptions {
    ConnectOptions {
        rx_csum_blank: true,
        rx_gso: true,
        ring_start: 0,
        max_queues: 1,
    }
}

#[test]
fn handshake_reaches_connected_and_publishes_keys() {
    let m = Machine::new();
    let mut back = m.backend();
    let front = connect(&m, &mut back, options()).expect("connect");
    assert_eq!(m.get(&format!("{FRONT_ABS}/state")).as_deref(), Some("4"));
    assert_eq!(m.get(&format!("{BACK_PATH}/state")).as_deref(), Some("4"));
    for (k, v) in [
        ("request-rx-copy", "1"),
        ("feature-sg", "1"),
        ("feature-rx-notify", "1"),
        ("feature-gso-tcpv4", "1"),
        ("feature-gso-tcpv6", "1"),
        ("feature-no-csum-offload", "0"),
    ] {
        assert_eq!(
            m.get(&format!("{FRONT_ABS}/{k}")).as_deref(),
            Some(v),
            "{k}"
        );
    }
    assert_eq!(front.mac().0, [0x00, 0x16, 0x3e, 0x5e, 0x6c, 0x01]);
    let f = front.features();
    assert!(f.rx_copy && f.sg && f.gso_tcpv4 && f.gso_tcpv6 && f.ipv4_csum_offload);
    assert_eq!(f.max_queues, 1);
    // Two ring pages plus one buffer per slot of each ring (256 + 256).
    assert_eq!(m.hv.grants_of(FRONT), 2 + 256 + 256);
    // The backend sees every RX buffer posted.
    back.conn();
    assert_eq!(
        back.conn().rx.unconsumed_requests().unwrap(),
        256,
        "all RX buffers posted"
    );
}

fn pump_rx(front: &mut netfront::Netfront<SimEnv>) -> netfront::RxPacket {
    front.poll().expect("poll");
    front.receive().expect("a packet")
}

#[test]
fn ping_sized_packets_both_ways_with_flags() {
    let m = Machine::new();
    let mut back = m.backend();
    let mut front = connect(&m, &mut back, options()).unwrap();
    let ping = pattern(98, 7);
    let offload = TxOffload {
        csum_blank: true,
        data_validated: true,
        gso: None,
    };
    front.send(&ping, offload).unwrap();
    assert_eq!(back.process_tx(), 1);
    let got = &back.received[0];
    assert_eq!(got.data, ping);
    assert_eq!(got.flags, NETTXF_CSUM_BLANK | NETTXF_DATA_VALIDATED);
    assert_eq!(got.slots, 1);
    front.poll().unwrap();
    assert_eq!(front.tx().in_flight(), 0, "TX slot reclaimed");

    let reply = pattern(98, 9);
    // Consume the event of the TX response, then sleep on the event
    // channel until the backend delivers.
    if m.hv.is_pending(FRONT, front.port()) {
        run(front.wait(), || {});
    }
    assert!(!m.hv.is_pending(FRONT, front.port()));
    let mut delivered = false;
    run(front.wait(), || {
        if !delivered {
            delivered = back.send_rx(&reply, NETRXF_DATA_VALIDATED, None);
        }
    });
    assert!(delivered);
    let p = pump_rx(&mut front);
    assert_eq!(p.data, reply);
    assert!(p.data_validated && !p.csum_blank && p.gso.is_none());
    assert_eq!(front.rx().stats.packets, 1);
    // The consumed buffer was re-posted.
    assert_eq!(back.conn().rx.unconsumed_requests().unwrap(), 256);
}

#[test]
fn packets_of_64k_both_ways_with_gso() {
    let m = Machine::new();
    let mut back = m.backend();
    let mut front = connect(&m, &mut back, options()).unwrap();
    let big = pattern(XEN_NETIF_MAX_TX_SIZE, 3);
    let gso = Gso {
        kind: GsoKind::TcpV4,
        mss: 1448,
    };
    front
        .send(
            &big,
            TxOffload {
                csum_blank: true,
                data_validated: false,
                gso: Some(gso),
            },
        )
        .unwrap();
    assert_eq!(back.process_tx(), 1);
    let got = back.received[0].clone();
    assert_eq!(got.data.len(), big.len());
    assert!(got.data == big, "64 KiB payload intact");
    assert_eq!(got.slots, 16 + 1, "16 data slots and one extra");
    assert!(got.slots <= XEN_NETIF_NR_SLOTS_MIN);
    let e = got.extra.expect("gso extra").as_gso();
    assert_eq!(
        (e.type_, e.size, e.gso_type),
        (XEN_NETIF_EXTRA_TYPE_GSO, 1448, XEN_NETIF_GSO_TYPE_TCPV4)
    );
    front.poll().unwrap();
    assert_eq!(front.tx().in_flight(), 0);

    let down = pattern(65536, 5);
    let g = NetifExtraInfoGso {
        type_: XEN_NETIF_EXTRA_TYPE_GSO,
        flags: 0,
        size: 1440,
        gso_type: XEN_NETIF_GSO_TYPE_TCPV6,
        pad: 0,
        features: 0,
    };
    assert!(back.send_rx(&down, NETRXF_CSUM_BLANK | NETRXF_DATA_VALIDATED, Some(g)));
    let p = pump_rx(&mut front);
    assert!(p.data == down, "64 KiB received intact");
    assert!(p.csum_blank && p.data_validated);
    assert_eq!(
        p.gso,
        Some(Gso {
            kind: GsoKind::TcpV6,
            mss: 1440
        })
    );
}

#[test]
fn a_reader_that_does_not_keep_up_holds_at_most_rx_queue_bytes_max() {
    let m = Machine::new();
    let mut back = m.backend();
    let mut front = connect(&m, &mut back, options()).unwrap();
    let big = pattern(65536, 7);
    let g = NetifExtraInfoGso {
        type_: XEN_NETIF_EXTRA_TYPE_GSO,
        flags: 0,
        size: 1440,
        gso_type: XEN_NETIF_GSO_TYPE_TCPV4,
        pad: 0,
        features: 0,
    };
    // The backend delivers 100 super-packets; the reader takes none.
    for _ in 0..100 {
        assert!(back.send_rx(&big, NETRXF_CSUM_BLANK, Some(g)));
        front.poll().unwrap();
    }
    let fit = netfront::rx::RX_QUEUE_BYTES_MAX / big.len();
    assert_eq!(fit, 64);
    assert_eq!(front.rx().ready(), fit);
    assert_eq!(front.rx().ready_bytes(), fit * big.len());
    assert_eq!(front.rx().stats.dropped, 100 - fit as u64);
    for _ in 0..fit {
        assert!(front.receive().unwrap().data == big);
    }
    assert_eq!(front.rx().ready_bytes(), 0);
    // Room again: the next one is kept.
    assert!(back.send_rx(&pattern(1000, 8), 0, None));
    assert_eq!(pump_rx(&mut front).data, pattern(1000, 8));
}

#[test]
fn steady_state_does_no_grant_work_and_suppresses_events() {
    let m = Machine::new();
    let mut back = m.backend();
    let mut front = connect(&m, &mut back, options()).unwrap();
    let grant_ops = m.hv.grant_ops(FRONT);
    let port = back.conn().port;
    let sent_before = front.notifies();
    // The backend is busy (not re-arming its event): ten packets, one event.
    for i in 0..10u8 {
        front
            .send(&pattern(60 + usize::from(i), i), TxOffload::default())
            .unwrap();
    }
    assert_eq!(front.notifies() - sent_before, 1, "events suppressed");
    assert_eq!(back.process_tx(), 10);
    // process_tx re-armed req_event: the next packet notifies again.
    front.send(&pattern(60, 1), TxOffload::default()).unwrap();
    assert_eq!(front.notifies() - sent_before, 2);
    assert!(m.hv.is_pending(BACK, port));
    assert_eq!(m.hv.sent(FRONT, front.port()), front.notifies());
    for round in 0..1000u32 {
        let len = 60 + (round as usize * 37) % 3000;
        front
            .send(&pattern(len, round as u8), TxOffload::default())
            .unwrap();
        back.process_tx();
        assert!(back.send_rx(&pattern(len, !(round as u8)), 0, None));
        let p = pump_rx(&mut front);
        assert_eq!(p.data, pattern(len, !(round as u8)));
    }
    assert_eq!(back.received.len(), 1011);
    assert_eq!(
        m.hv.grant_ops(FRONT),
        grant_ops,
        "no grant or revoke per packet"
    );
}

/// `queue` + one `flush` a round: the backend sees nothing before the
/// flush, and a round costs at most one event however quickly the backend
/// catches up (dom0's netback on another CPU re-arms its event each time
/// it runs dry; with a `send` each, every packet may then cost one).
#[test]
fn a_round_queued_then_flushed_costs_at_most_one_event() {
    let m = Machine::new();
    let mut back = m.backend();
    let mut front = connect(&m, &mut back, options()).unwrap();
    let port = front.port();
    // A backend that keeps up: one event per packet sent one by one.
    let before = front.notifies();
    for i in 0..10u8 {
        front.send(&pattern(60, i), TxOffload::default()).unwrap();
        assert_eq!(back.process_tx(), 1);
    }
    assert_eq!(front.notifies() - before, 10);
    // Queued: invisible until the flush, then one event for the round.
    let before = front.notifies();
    let gso = TxOffload {
        csum_blank: true,
        data_validated: false,
        gso: Some(Gso {
            kind: GsoKind::TcpV4,
            mss: 1448,
        }),
    };
    for i in 0..10u8 {
        front.queue(&pattern(60, i), TxOffload::default()).unwrap();
        front.queue(&pattern(20_000, i), gso).unwrap();
        assert_eq!(back.process_tx(), 0, "nothing published before the flush");
    }
    assert_eq!(front.unpushed(), 10 * (1 + 5 + 1));
    assert_eq!(front.notifies(), before);
    front.flush();
    assert_eq!(front.unpushed(), 0);
    assert_eq!(front.notifies() - before, 1);
    assert_eq!(back.process_tx(), 20);
    for (i, p) in back.received[10..].chunks(2).enumerate() {
        assert_eq!(p[0].data, pattern(60, i as u8));
        assert_eq!(p[1].data, pattern(20_000, i as u8));
        assert_eq!(p[1].slots, 5 + 1, "five data slots and the GSO extra");
    }
    // A backend still busy with the last round (it has not re-armed its
    // event): the next round costs no event; a flush of nothing neither.
    front.poll().unwrap();
    let before = front.notifies();
    front.queue(&pattern(60, 1), TxOffload::default()).unwrap();
    front.flush();
    assert_eq!(front.notifies() - before, 1);
    front.queue(&pattern(60, 2), TxOffload::default()).unwrap();
    front.flush();
    front.flush();
    assert_eq!(
        front.notifies() - before,
        1,
        "the backend did not ask again"
    );
    assert_eq!(back.process_tx(), 2);
    assert_eq!(m.hv.sent(FRONT, port), front.notifies());
}

#[test]
fn backend_garbage_tx_id_is_an_error_then_disconnect() {
    let m = Machine::new();
    let mut back = m.backend();
    let mut front = connect(&m, &mut back, options()).unwrap();
    front.send(&pattern(100, 1), TxOffload::default()).unwrap();
    back.inject_tx(|_| NetifTxResponse {
        id: 999,
        status: NETIF_RSP_OKAY,
    });
    assert_eq!(front.poll(), Err(NetfrontError::BadTxId(999)));
    assert_eq!(front.broken(), Some(NetfrontError::BadTxId(999)));
    assert_eq!(front.poll(), Err(NetfrontError::Disconnected));
    assert_eq!(
        front.send(&pattern(10, 1), TxOffload::default()),
        Err(netfront::error::TxError::Disconnected)
    );
    let report = run(front.disconnect(), || {});
    assert_eq!(m.get(&format!("{FRONT_ABS}/state")).as_deref(), Some("6"));
    // The backend still maps the two ring pages: those stay granted.
    assert_eq!(report.leaked, 2);
    assert_eq!(report.revoked, 512);
}

#[test]
fn tx_response_for_an_id_not_in_flight_is_an_error() {
    let m = Machine::new();
    let mut back = m.backend();
    let mut front = connect(&m, &mut back, options()).unwrap();
    front.send(&pattern(100, 1), TxOffload::default()).unwrap();
    // An id in range that was never sent.
    back.inject_tx(|r| NetifTxResponse {
        id: r.id.wrapping_add(1),
        status: NETIF_RSP_OKAY,
    });
    assert!(matches!(front.poll(), Err(NetfrontError::BadTxId(_))));
}

#[test]
fn backend_garbage_rx_is_an_error() {
    type Make = fn(NetifRxRequest) -> NetifRxResponse;
    type Check = fn(NetfrontError) -> bool;
    let cases: [(Make, Check); 4] = [
        (
            |r| NetifRxResponse {
                id: r.id,
                offset: 4000,
                flags: 0,
                status: 200,
            },
            |e| {
                matches!(
                    e,
                    NetfrontError::BadRxSize {
                        offset: 4000,
                        size: 200
                    }
                )
            },
        ),
        (
            |r| NetifRxResponse {
                id: r.id,
                offset: 0xffff,
                flags: 0,
                status: i16::MAX,
            },
            |e| matches!(e, NetfrontError::BadRxSize { .. }),
        ),
        (
            |r| NetifRxResponse {
                id: r.id ^ 5,
                offset: 0,
                flags: 0,
                status: 10,
            },
            |e| matches!(e, NetfrontError::BadRxId { .. }),
        ),
        (
            |_| NetifRxResponse {
                id: 60000,
                offset: 0,
                flags: 0,
                status: 10,
            },
            |e| matches!(e, NetfrontError::BadRxId { got: 60000, .. }),
        ),
    ];
    for (make, expect) in cases {
        let m = Machine::new();
        let mut back = m.backend();
        let mut front = connect(&m, &mut back, options()).unwrap();
        back.inject_rx(make);
        let err = front.poll().unwrap_err();
        assert!(expect(err), "{err:?}");
        assert!(front.receive().is_none());
        assert_eq!(front.poll(), Err(NetfrontError::Disconnected));
    }
}

#[test]
fn rx_error_status_drops_the_packet_but_keeps_going() {
    let m = Machine::new();
    let mut back = m.backend();
    let mut front = connect(&m, &mut back, options()).unwrap();
    back.inject_rx(|r| NetifRxResponse {
        id: r.id,
        offset: 0,
        flags: 0,
        status: NETIF_RSP_ERROR,
    });
    front.poll().unwrap();
    assert!(front.receive().is_none());
    assert_eq!(front.rx().stats.dropped, 1);
    assert!(back.send_rx(&pattern(64, 1), 0, None));
    assert_eq!(pump_rx(&mut front).data, pattern(64, 1));
}

#[test]
fn impossible_response_index_is_an_error() {
    let m = Machine::new();
    let mut back = m.backend();
    let mut front = connect(&m, &mut back, options()).unwrap();
    // rsp_prod far beyond any request made.
    back.conn()
        .tx_page
        .write(8, &5000u32.to_ne_bytes())
        .unwrap();
    assert!(matches!(front.poll(), Err(NetfrontError::Ring(_))));
}

#[test]
fn backend_vanishing_mid_transfer_leaves_frontend_safe() {
    let m = Machine::new();
    let mut back = m.backend();
    let mut front = connect(&m, &mut back, options()).unwrap();
    for i in 0..5u8 {
        front
            .send(&pattern(20000, i), TxOffload::default())
            .unwrap();
    }
    back.vanish();
    // Nothing answers: the ring fills up, sending reports Busy, no panic.
    front.poll().unwrap();
    let mut sent = 5;
    while front.send(&pattern(1500, 0), TxOffload::default()).is_ok() {
        sent += 1;
        assert!(sent < 1000);
    }
    assert_eq!(
        front.send(&pattern(1500, 0), TxOffload::default()),
        Err(netfront::error::TxError::Busy)
    );
    assert_eq!(
        run(front.check_backend(), || {}),
        Err(NetfrontError::BackendGone(xen::xenbus::XenbusState::Closed))
    );
    let report = run(front.disconnect(), || {});
    assert_eq!((report.revoked, report.leaked), (514, 0));
    assert_eq!(m.hv.grants_of(FRONT), 0, "every grant revoked");
    assert!(!m.hv.port_open(FRONT, front.port()));
}

#[test]
fn bad_xenstore_values_fail_connect_and_revoke_everything() {
    for (key, value, expect) in [
        (format!("{FRONT_ABS}/mac"), "00:16:3e:zz:00:01", "BadMac"),
        (format!("{BACK_PATH}/feature-sg"), "yes", "BadFeature"),
        (format!("{BACK_PATH}/feature-rx-copy"), "0", "NoRxCopy"),
        (
            format!("{BACK_PATH}/multi-queue-max-queues"),
            "-1",
            "BadFeature",
        ),
        (format!("{FRONT_ABS}/backend-id"), "70000", "BadBackendId"),
    ] {
        let m = Machine::new();
        m.set(&key, value);
        let mut back = m.backend();
        let err = connect(&m, &mut back, options()).err().expect("must fail");
        assert!(format!("{err:?}").contains(expect), "{key}: {err:?}");
        assert_eq!(m.hv.grants_of(FRONT), 0);
    }
}

#[test]
fn backend_closing_during_handshake_fails_and_revokes() {
    let m = Machine::new();
    m.set(&format!("{BACK_PATH}/state"), "1");
    m.xsd
        .borrow_mut()
        .scheduled
        .push_back((format!("{BACK_PATH}/state"), b"5".to_vec()));
    let mut back = m.backend();
    let err = connect(&m, &mut back, options()).err().unwrap();
    assert!(matches!(
        err,
        NetfrontError::Xenbus(xen::xenbus::XenbusError::BackendClosed(_))
    ));
    assert_eq!(m.hv.grants_of(FRONT), 0);
}

#[test]
fn backend_restart_then_reconnect_carries_traffic_again() {
    let m = Machine::new();
    let mut back = m.backend();
    let mut front = connect(&m, &mut back, options()).unwrap();
    front.send(&pattern(3000, 1), TxOffload::default()).unwrap();
    back.restart();
    assert_eq!(
        run(front.check_backend(), || {}),
        Err(NetfrontError::BackendGone(xen::xenbus::XenbusState::Closed))
    );
    let report = run(front.disconnect(), || {});
    assert_eq!((report.revoked, report.leaked), (514, 0));
    assert_eq!(m.hv.grants_of(FRONT), 0);
    m.set(&format!("{BACK_PATH}/state"), "2");
    let mut front = reconnect(front.into_env(), &mut back, options()).unwrap();
    assert_eq!(m.get(&format!("{BACK_PATH}/state")).as_deref(), Some("4"));
    front.send(&pattern(5000, 2), TxOffload::default()).unwrap();
    assert_eq!(back.process_tx(), 1);
    assert_eq!(back.received.last().unwrap().data, pattern(5000, 2));
    assert!(back.send_rx(&pattern(5000, 3), 0, None));
    assert_eq!(pump_rx(&mut front).data, pattern(5000, 3));
}

#[test]
fn several_queues_when_the_backend_offers_them() {
    let m = Machine::new();
    m.set(&format!("{BACK_PATH}/multi-queue-max-queues"), "4");
    let mut back = m.backend();
    let mut opts = options();
    opts.max_queues = 2;
    let mut front = connect(&m, &mut back, opts).unwrap();
    assert_eq!(front.queues().len(), 2, "min(ours, backend's)");
    assert_eq!(
        m.get(&format!("{FRONT_ABS}/multi-queue-num-queues"))
            .as_deref(),
        Some("2")
    );
    assert!(m.get(&format!("{FRONT_ABS}/queue-1/tx-ring-ref")).is_some());
    assert!(m.get(&format!("{FRONT_ABS}/tx-ring-ref")).is_none());
    assert_eq!(back.conns.len(), 2);
    assert_eq!(m.hv.grants_of(FRONT), 2 * 514);
    for q in 0..2 {
        back.active = q;
        front
            .send_on(q, &pattern(3000 + q, q as u8), TxOffload::default())
            .unwrap();
        assert_eq!(back.process_tx(), 1);
        assert_eq!(
            back.received.last().unwrap().data,
            pattern(3000 + q, q as u8)
        );
        assert!(back.send_rx(&pattern(100 + q, 9), 0, None));
    }
    front.poll().unwrap();
    let mut got: Vec<usize> = std::iter::from_fn(|| front.receive())
        .map(|p| p.data.len())
        .collect();
    got.sort();
    assert_eq!(got, vec![100, 101]);
    // One flow always maps to the same queue.
    let frame = {
        let mut f = pattern(80, 1);
        f[12] = 0x08;
        f[13] = 0x00;
        f[14] = 0x45;
        f[23] = 6;
        f
    };
    let q = netfront::front::flow_queue(&frame, 2);
    assert_eq!(netfront::front::flow_queue(&frame, 2), q);
    assert_eq!(netfront::front::flow_queue(&frame, 1), 0);
    let report = run(front.disconnect(), || {});
    assert_eq!(report.revoked + report.leaked, 2 * 514);
}

#[test]
fn one_queue_when_the_backend_offers_none() {
    let m = Machine::new();
    let mut back = m.backend();
    let mut opts = options();
    opts.max_queues = 4;
    let front = connect(&m, &mut back, opts).unwrap();
    assert_eq!(front.queues().len(), 1);
    assert!(m
        .get(&format!("{FRONT_ABS}/multi-queue-num-queues"))
        .is_none());
    assert!(m.get(&format!("{FRONT_ABS}/tx-ring-ref")).is_some());
}

#[test]
fn reconnect_waits_through_a_backend_restart() {
    let m = Machine::new();
    let mut back = m.backend();
    let mut front = connect(&m, &mut back, options()).unwrap();
    front.send(&pattern(3000, 1), TxOffload::default()).unwrap();
    back.restart();
    assert!(run(front.check_backend(), || {}).is_err());
    // The backend comes back (Unknown, Initialising, InitWait) only well
    // after the frontend has closed and started waiting: connecting
    // without waiting would fail on the backend's `Closed`.
    let mut steps_after_close = 0;
    let mut front = run(front.reconnect(options()), || {
        if m.get(&format!("{FRONT_ABS}/state")).as_deref() == Some("6") || steps_after_close > 0 {
            steps_after_close += 1;
            let state = match steps_after_close {
                50 => Some("0"),
                100 => Some("1"),
                150 => Some("2"),
                _ => None,
            };
            if let Some(state) = state {
                m.set(&format!("{BACK_PATH}/state"), state);
            }
        }
        back.step()
    })
    .map_err(|(_, e)| e)
    .expect("reconnected");
    assert!(steps_after_close >= 150, "waited for the backend");
    assert_eq!(m.get(&format!("{BACK_PATH}/state")).as_deref(), Some("4"));
    assert_eq!(
        m.hv.grants_of(FRONT),
        514,
        "old grants revoked, new ones made"
    );
    front.send(&pattern(4000, 2), TxOffload::default()).unwrap();
    assert_eq!(back.process_tx(), 1);
    assert_eq!(back.received.last().unwrap().data, pattern(4000, 2));
    assert!(back.send_rx(&pattern(700, 3), 0, None));
    assert_eq!(pump_rx(&mut front).data, pattern(700, 3));
}

#[test]
fn an_online_backend_left_closed_is_asked_to_reconnect() {
    // dom0's netback rebound through sysfs: it publishes `Closed` after our
    // disconnect (its state change waits for the hotplug script) and then
    // waits, as Linux's netback does while `online` is 1, for the frontend
    // to say `Initialising` before it goes back to `InitWait`.
    let m = Machine::new();
    let mut back = m.backend();
    let front = connect(&m, &mut back, options()).unwrap();
    m.set(&format!("{BACK_PATH}/online"), "1");
    back.restart();
    let mut front_states = Vec::new();
    let mut front = run(front.reconnect(options()), || {
        let state = m.get(&format!("{FRONT_ABS}/state"));
        if front_states.last() != Some(&state) {
            front_states.push(state.clone());
        }
        // The backend answers only a frontend that starts again.
        if state.as_deref() == Some("1")
            && m.get(&format!("{BACK_PATH}/state")).as_deref() == Some("6")
        {
            m.set(&format!("{BACK_PATH}/state"), "2");
        }
        back.step()
    })
    .map_err(|(_, e)| e)
    .expect("reconnected");
    // Closed, then Initialising (the nudge), then the handshake.
    assert_eq!(front_states.last(), Some(&Some(String::from("4"))));
    assert_eq!(m.get(&format!("{BACK_PATH}/state")).as_deref(), Some("4"));
    front.send(&pattern(1500, 5), TxOffload::default()).unwrap();
    assert_eq!(back.process_tx(), 1);
}
