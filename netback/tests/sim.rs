//! Our netfront against our netback in one process, over simulated
//! grants, event channels and xenstore.

mod common;

use common::*;
use netback::{BackendOptions, Fatal, GsoKind, Health, Offload, Packet, Violation};
use netfront::{Gso, TxOffload};
use xen::xenbus::XenbusState;

#[test]
fn handshake_publishes_features_and_connects_both_ends() {
    let m = Machine::new();
    m.add_vif(FRONT);
    let mut back = Backend::new(&m);
    let (front, vif) = connect_pair(
        &m,
        &mut back,
        FRONT,
        front_options(),
        BackendOptions::default(),
    );
    let front = front.expect("netfront connects");
    let vif = vif.expect("netback connects");
    let b = back_path(FRONT);
    assert_eq!(m.get(&format!("{b}/state")).as_deref(), Some("4"));
    assert_eq!(
        m.get(&format!("{b}/hotplug-status")).as_deref(),
        Some("connected")
    );
    assert_eq!(m.get(&format!("{b}/feature-rx-copy")).as_deref(), Some("1"));
    assert_eq!(
        m.get(&format!("{}/state", front_path(FRONT))).as_deref(),
        Some("4")
    );
    let f = front.features();
    assert!(f.rx_copy && f.sg && f.gso_tcpv4 && f.gso_tcpv6 && f.ipv6_csum_offload);
    let fc = vif.frontend();
    assert!(fc.sg && fc.gso_tcpv4 && fc.gso_tcpv6 && fc.csum_v4);
    assert_eq!(vif.device().frontend_id, FRONT);
    // Only the two ring pages are mapped (copy mode).
    assert_eq!(m.hv.maps_of(BACK, FRONT), 2);
    assert_eq!(
        run(vif.device().health(&mut back.xs)),
        Ok(Health::Connected)
    );
}

#[test]
fn traffic_both_ways_multi_slot_up_to_64k_with_offload_flags() {
    let m = Machine::new();
    m.add_vif(FRONT);
    let mut back = Backend::new(&m);
    let (front, vif) = connect_pair(
        &m,
        &mut back,
        FRONT,
        front_options(),
        BackendOptions::default(),
    );
    let (mut front, mut vif) = (front.unwrap(), vif.unwrap());
    let sizes = [14usize, 60, 1514, 4096, 4097, 9000, 32768, 65535];
    for (i, &len) in sizes.iter().enumerate() {
        let seed = i as u8;
        let gso = (len > 1514).then_some(Gso {
            kind: if i % 2 == 0 {
                netfront::GsoKind::TcpV4
            } else {
                netfront::GsoKind::TcpV6
            },
            mss: 1448,
        });
        let offload = TxOffload {
            csum_blank: i % 2 == 1,
            data_validated: i % 3 == 0,
            gso,
        };
        front.send(&pattern(len, seed), offload).unwrap();
        let got = backend_take(&mut back, &mut vif);
        assert_eq!(got.len(), 1, "len {len}");
        assert!(got[0].data == pattern(len, seed), "TX bytes at len {len}");
        assert_eq!(got[0].offload.csum_blank, offload.csum_blank);
        assert_eq!(got[0].offload.data_validated, offload.data_validated);
        assert_eq!(
            got[0].offload.gso.map(|g| (g.kind as u8, g.mss)),
            gso.map(|g| (g.kind as u8, g.mss))
        );
        front.poll().unwrap();
        assert_eq!(front.tx().in_flight(), 0, "TX slots answered");

        let out = Packet {
            data: pattern(len, !seed),
            offload: Offload {
                csum_blank: i % 2 == 1,
                data_validated: true,
                gso: (len > 1514).then_some(netback::Gso {
                    kind: GsoKind::TcpV6,
                    mss: 1400,
                }),
            },
        };
        assert!(vif.send(out.clone()));
        let p = vif.deliver(&mut back.env, 64).unwrap();
        assert_eq!(p.packets, 1);
        front.poll().unwrap();
        let r = front.receive().expect("RX packet");
        assert!(r.data == out.data, "RX bytes at len {len}");
        assert_eq!(r.csum_blank, out.offload.csum_blank);
        assert!(r.data_validated);
        assert_eq!(r.gso.map(|g| g.mss), out.offload.gso.map(|g| g.mss));
    }
    let s = vif.stats();
    assert_eq!(s.tx_packets, sizes.len() as u64);
    assert_eq!(s.rx_packets, sizes.len() as u64);
    assert_eq!(s.tx_bytes, sizes.iter().sum::<usize>() as u64);
    assert_eq!(
        (s.violations, s.tx_errors, s.rx_errors, s.rx_dropped),
        (0, 0, 0, 0)
    );
}

#[test]
fn many_packets_batch_and_suppress_notifications() {
    let m = Machine::new();
    m.add_vif(FRONT);
    let mut back = Backend::new(&m);
    let (front, vif) = connect_pair(
        &m,
        &mut back,
        FRONT,
        front_options(),
        BackendOptions::default(),
    );
    let (mut front, mut vif) = (front.unwrap(), vif.unwrap());
    let mut sent = 0usize;
    let mut received = Vec::new();
    for round in 0..40u32 {
        // A burst of 50 from the frontend without the backend running.
        for k in 0..50u32 {
            let len = 60 + ((round * 50 + k) as usize * 37) % 3000;
            front
                .send(&pattern(len, k as u8), TxOffload::default())
                .unwrap();
            sent += 1;
        }
        let before = vif.stats().notifies;
        received.extend(backend_take(&mut back, &mut vif));
        // One push per poll: at most one event for 50 packets.
        assert!(vif.stats().notifies - before <= 1);
        front.poll().unwrap();
        for k in 0..50u32 {
            assert!(vif.send(Packet {
                data: pattern(100 + k as usize, k as u8),
                offload: Offload::default()
            }));
        }
        while vif.deliver(&mut back.env, 16).unwrap().more {}
        front.poll().unwrap();
        let mut n = 0;
        while let Some(p) = front.receive() {
            assert_eq!(p.data, pattern(100 + n, n as u8));
            n += 1;
        }
        assert_eq!(n, 50, "round {round}");
    }
    assert_eq!(received.len(), sent);
    assert_eq!(vif.stats().rx_packets, 2000);
    // Event-index suppression: far fewer events than packets either way.
    assert!(
        vif.stats().notifies < 200,
        "{} events",
        vif.stats().notifies
    );
    assert!(front.notifies() < 200, "{} events", front.notifies());
}

#[test]
fn blank_checksums_are_filled_for_a_frontend_that_refuses_them() {
    let m = Machine::new();
    m.add_vif(FRONT);
    let mut back = Backend::new(&m);
    let mut opts = front_options();
    opts.rx_csum_blank = false;
    let (front, vif) = connect_pair(&m, &mut back, FRONT, opts, BackendOptions::default());
    let (mut front, mut vif) = (front.unwrap(), vif.unwrap());
    assert!(!vif.frontend().csum_v4);
    // Ethernet + IPv4 + UDP + payload, checksum left blank.
    let mut f = vec![0u8; 14 + 20 + 8 + 6];
    f[12] = 0x08;
    f[14] = 0x45;
    f[16..18].copy_from_slice(&34u16.to_be_bytes());
    f[23] = 17;
    f[26..30].copy_from_slice(&[10, 0, 0, 1]);
    f[30..34].copy_from_slice(&[10, 0, 0, 2]);
    f[38..40].copy_from_slice(&14u16.to_be_bytes());
    f[42..48].copy_from_slice(b"moat!!");
    vif.send(Packet {
        data: f.clone(),
        offload: Offload {
            csum_blank: true,
            ..Offload::default()
        },
    });
    vif.deliver(&mut back.env, 8).unwrap();
    front.poll().unwrap();
    let p = front.receive().unwrap();
    assert!(!p.csum_blank && p.data_validated);
    assert_eq!(vif.stats().rx_csum_filled, 1);
    assert_eq!(p.data[..40], f[..40]);
    assert_ne!(p.data[40..42], [0, 0], "checksum filled");
    // A non-IP blank-checksum packet cannot be filled: dropped, counted.
    vif.send(Packet {
        data: pattern(60, 1),
        offload: Offload {
            csum_blank: true,
            ..Offload::default()
        },
    });
    vif.deliver(&mut back.env, 8).unwrap();
    assert_eq!(vif.stats().rx_dropped, 1);
}

#[test]
fn frontend_vanishing_mid_transfer_is_cleaned_up_and_others_keep_service() {
    let m = Machine::new();
    m.add_vif(FRONT);
    m.add_vif(FRONT2);
    let mut back = Backend::new(&m);
    let (f1, v1) = connect_pair(
        &m,
        &mut back,
        FRONT,
        front_options(),
        BackendOptions::default(),
    );
    let (f2, v2) = connect_pair(
        &m,
        &mut back,
        FRONT2,
        front_options(),
        BackendOptions::default(),
    );
    let (mut f1, mut v1, mut f2, mut v2) = (f1.unwrap(), v1.unwrap(), f2.unwrap(), v2.unwrap());
    // Mid-transfer: requests published, RX packets queued for it.
    for k in 0..20 {
        f1.send(&pattern(3000 + k, k as u8), TxOffload::default())
            .unwrap();
        v1.send(Packet {
            data: pattern(2000, k as u8),
            offload: Offload::default(),
        });
    }
    // Domain 1 is destroyed; the toolstack removes its xenstore home.
    m.hv.destroy_domain(FRONT);
    m.xsd.borrow_mut().remove(&format!("/local/domain/{FRONT}"));
    let mut out = Vec::new();
    // Whatever the backend does now fails softly (copies fail per op).
    let r = v1.poll(&mut back.env, 64, &mut out);
    assert!(out.is_empty());
    assert!(r.is_ok() || r == Err(Fatal::TooManyViolations), "{r:?}");
    let health = run(v1.device().health(&mut back.xs)).unwrap();
    assert_eq!(health, Health::FrontendLeft(XenbusState::Unknown));
    let ports = v1.ports();
    let dev = run(v1.close(&mut back.env, &mut back.xs));
    assert_eq!(m.hv.maps_of(BACK, FRONT), 0, "rings unmapped");
    assert!(!m.hv.port_open(BACK, ports.0));
    assert_eq!(m.get(&format!("{}/state", dev.path)).as_deref(), Some("6"));
    // The other frontend is unaffected.
    f2.send(&pattern(1514, 9), TxOffload::default()).unwrap();
    let got = backend_take(&mut back, &mut v2);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data, pattern(1514, 9));
    v2.send(Packet {
        data: pattern(999, 3),
        offload: Offload::default(),
    });
    v2.deliver(&mut back.env, 8).unwrap();
    f2.poll().unwrap();
    assert_eq!(f2.receive().unwrap().data, pattern(999, 3));
    drop(f1);
}

#[test]
fn frontend_detach_and_reattach_reconnects() {
    let m = Machine::new();
    m.add_vif(FRONT);
    let mut back = Backend::new(&m);
    let (f, v) = connect_pair(
        &m,
        &mut back,
        FRONT,
        front_options(),
        BackendOptions::default(),
    );
    let (mut f, v) = (f.unwrap(), v.unwrap());
    f.send(&pattern(500, 1), TxOffload::default()).unwrap();
    // The frontend leaves in an orderly way with a request in flight.
    let report = run(f.disconnect());
    assert!(matches!(
        run(v.device().health(&mut back.xs)).unwrap(),
        Health::FrontendLeft(XenbusState::Closed)
    ));
    // Until the backend unmaps, the ring grants stay in use.
    assert!(report.leaked >= 2, "{report:?}");
    run(v.close(&mut back.env, &mut back.xs));
    assert_eq!(m.hv.maps_of(BACK, FRONT), 0);
    // The frontend comes back (as after a guest driver reload).
    let env = f.into_env();
    let (f, v) = connect_with(
        &m,
        env,
        &mut back,
        FRONT,
        front_options(),
        BackendOptions::default(),
    );
    let (mut f, mut v) = (f.expect("reconnect"), v.expect("backend serves again"));
    f.send(&pattern(700, 2), TxOffload::default()).unwrap();
    assert_eq!(backend_take(&mut back, &mut v)[0].data, pattern(700, 2));
}

#[test]
fn backend_restart_mid_transfer_then_netfront_reconnects() {
    let m = Machine::new();
    m.add_vif(FRONT);
    let mut back = Backend::new(&m);
    let (f, v) = connect_pair(
        &m,
        &mut back,
        FRONT,
        front_options(),
        BackendOptions::default(),
    );
    let (mut f, mut v) = (f.unwrap(), v.unwrap());
    for k in 0..10 {
        f.send(&pattern(1000 + k, k as u8), TxOffload::default())
            .unwrap();
    }
    let mut out = Vec::new();
    v.receive(&mut back.env, 3, &mut out).unwrap();
    assert_eq!(out.len(), 3);
    // The backend service dies mid-transfer (its state goes Closed).
    run(v.close(&mut back.env, &mut back.xs));
    assert!(f.poll().is_ok(), "answered slots are fine");
    let e = run(f.check_backend());
    assert!(e.is_err(), "netfront notices: {e:?}");
    assert!(f.send(&pattern(60, 0), TxOffload::default()).is_err());
    // A new backend instance: netfront reconnects through it.
    let path = back_path(FRONT);
    let mut back2 = Backend::new(&m);
    let (f, v) = join(
        f.reconnect(front_options()),
        netback::connect(
            &mut back2.env,
            &mut back2.xs,
            &path,
            &BackendOptions::default(),
        ),
    );
    let (mut f, mut v) = (f.map_err(|(_, e)| e).expect("reconnect"), v.expect("serve"));
    f.send(&pattern(1234, 5), TxOffload::default()).unwrap();
    assert_eq!(backend_take(&mut back2, &mut v)[0].data, pattern(1234, 5));
    v.send(Packet {
        data: pattern(4321, 6),
        offload: Offload::default(),
    });
    v.deliver(&mut back2.env, 4).unwrap();
    f.poll().unwrap();
    assert_eq!(f.receive().unwrap().data, pattern(4321, 6));
}

#[test]
fn backend_domain_destroyed_mid_transfer_leaves_netfront_safe() {
    let m = Machine::new();
    m.add_vif(FRONT);
    let mut back = Backend::new(&m);
    let (f, v) = connect_pair(
        &m,
        &mut back,
        FRONT,
        front_options(),
        BackendOptions::default(),
    );
    let (mut f, v) = (f.unwrap(), v.unwrap());
    for k in 0..10 {
        f.send(&pattern(5000, k), TxOffload::default()).unwrap();
    }
    m.hv.destroy_domain(BACK);
    m.set(&format!("{}/state", back_path(FRONT)), "6");
    drop(v);
    assert!(f.poll().is_ok());
    assert!(run(f.check_backend()).is_err());
    let report = run(f.disconnect());
    // Every grant came back: the dead backend maps nothing.
    assert_eq!(report.leaked, 0, "{report:?}");
    assert_eq!(m.hv.grants_of(FRONT), 0);
}

#[test]
fn frontends_that_do_not_offer_rx_copy_are_refused() {
    let m = Machine::new();
    m.add_vif(FRONT);
    let mut back = Backend::new(&m);
    let f = front_path(FRONT);
    for (k, v) in [
        ("tx-ring-ref", "8"),
        ("rx-ring-ref", "9"),
        ("event-channel", "1"),
        ("request-rx-copy", "0"),
        ("feature-rx-notify", "1"),
        ("state", "4"),
    ] {
        m.set(&format!("{f}/{k}"), v);
    }
    let r = run(netback::connect(
        &mut back.env,
        &mut back.xs,
        &back_path(FRONT),
        &BackendOptions::default(),
    ));
    assert_eq!(r.err(), Some(netback::NetbackError::NoRxCopy));
    assert_eq!(
        m.get(&format!("{}/state", back_path(FRONT))).as_deref(),
        Some("6")
    );
    m.set(&format!("{f}/request-rx-copy"), "1");
    m.set(&format!("{f}/tx-ring-ref"), "12x");
    let r = run(netback::connect(
        &mut back.env,
        &mut back.xs,
        &back_path(FRONT),
        &BackendOptions::default(),
    ));
    assert!(matches!(
        r.err(),
        Some(netback::NetbackError::BadValue { .. })
    ));
    m.set(&format!("{f}/tx-ring-ref"), "12");
    m.set(&format!("{f}/multi-queue-num-queues"), "4");
    let r = run(netback::connect(
        &mut back.env,
        &mut back.xs,
        &back_path(FRONT),
        &BackendOptions::default(),
    ));
    assert_eq!(r.err(), Some(netback::NetbackError::Queues(4)));
    let _ = Violation::ALL;
}

#[test]
fn toolstack_detach_closes_the_vif_and_idle_frontends_cost_bounded_memory() {
    let m = Machine::new();
    m.add_vif(FRONT);
    let mut back = Backend::new(&m);
    let (f, v) = connect_pair(
        &m,
        &mut back,
        FRONT,
        front_options(),
        BackendOptions::default(),
    );
    let (mut f, mut v) = (f.unwrap(), v.unwrap());
    // The frontend stops reading: queued packets are bounded in bytes.
    let mut queued = 0;
    for k in 0..100 {
        if v.send(Packet {
            data: pattern(60_000, k),
            offload: Offload::default(),
        }) {
            queued += 1;
        }
    }
    assert_eq!(queued, (1 << 20) / 60_000);
    assert_eq!(v.stats().rx_dropped, 100 - queued as u64);
    // `xl network-detach`: online 0, state Closing.
    let b = back_path(FRONT);
    m.set(&format!("{b}/online"), "0");
    m.set(&format!("{b}/state"), "5");
    assert_eq!(run(v.device().health(&mut back.xs)), Ok(Health::Detached));
    let ports = v.ports();
    run(v.close(&mut back.env, &mut back.xs));
    assert_eq!(m.get(&format!("{b}/state")).as_deref(), Some("6"));
    assert_eq!(m.hv.maps_of(BACK, FRONT), 0);
    assert!(!m.hv.port_open(BACK, ports.0));
    assert!(run(f.check_backend()).is_err());
    let report = run(f.disconnect());
    assert_eq!(report.leaked, 0);
    assert_eq!(m.hv.grants_of(FRONT), 0);
}
