//! The runtime's fast path over the simulated hypervisor: GSO super-packets
//! and blank checksums pass through a network VM in both directions with
//! their flags, the uplink's TX ring is counted in slots (a super-packet
//! takes up to 18), frames that do not fit wait in order instead of being
//! dropped, and the service hears what each peer offered.
//!
//! dom0 serves the VM's uplink with our netback (GSO offered, a slow
//! consumer: a few packets a millisecond); the VM (domain 2) runs
//! `netvm::run` with a pass-through service; the client (domain 3) runs
//! our netfront asking for GSO on receive.

mod common;
use common::*;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

use kernel::executor::{Executor, Handle};
use netback::sim::SimNetbackEnv;
use netback::{BackendOptions, Offload, Packet};
use netfront::{ConnectOptions, Gso, GsoKind, Netfront, TxOffload};
use netvm::{ClientInfo, Link, Options, Service, Stats, To, Transmit, UplinkInfo};
use xen::abi::DomId;
use xen::sim::SimTransport;
use xen::xenstore::XenStore;

const VM: DomId = 2;
const CLIENT: DomId = 3;
const MS: u64 = 1_000_000;
const SECOND: u64 = 1_000_000_000;
const MSS: u16 = 1448;

/// What the pass-through service saw.
#[derive(Default)]
struct Seen {
    uplink: Option<UplinkInfo>,
    client: Option<ClientInfo>,
    stats: Option<Stats>,
}

/// Client frames to the uplink, uplink frames to the client, flags and
/// all (what the firewall does with a forwarded flow, minus the NAT).
struct Pass(Rc<RefCell<Seen>>);

impl Service for Pass {
    fn client_up(&mut self, _now: u64, client: &ClientInfo) {
        self.0.borrow_mut().client = Some(client.clone());
    }
    fn uplink_up(&mut self, _now: u64, uplink: &UplinkInfo) {
        self.0.borrow_mut().uplink = Some(uplink.clone());
    }
    fn handle(&mut self, _now: u64, from: Link, packet: Packet, out: &mut Vec<Transmit>) {
        let to = match from {
            Link::Uplink => match self.0.borrow().client.as_ref() {
                Some(c) => To::Client(c.id),
                None => return,
            },
            Link::Client(_) => To::Uplink,
        };
        out.push(Transmit { to, packet });
    }
    fn report(&mut self, stats: &Stats) -> Option<String> {
        self.0.borrow_mut().stats = Some(stats.clone());
        None
    }
}

/// A frame from `src` carrying its sequence number, `len` bytes.
fn tagged(dst: [u8; 6], src: [u8; 6], seq: u32, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12] = 0x88;
    f[13] = 0xb5;
    f[14..18].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in f[18..].iter_mut().enumerate() {
        *b = (i as u32).wrapping_add(seq) as u8;
    }
    f
}

fn seq_of(f: &[u8]) -> u32 {
    u32::from_be_bytes([f[14], f[15], f[16], f[17]])
}

/// The k-th frame of a stream: mostly super-packets of 40-64 KB (10 to 17
/// data slots and the GSO extra), a full-sized plain frame every fifth.
fn stream_frame(src: [u8; 6], k: u32) -> (Vec<u8>, TxOffload) {
    if k % 5 == 4 {
        return (
            tagged([2, 0, 0, 0, 0, 1], src, k, 1514),
            TxOffload::default(),
        );
    }
    let len = 40_000 + (k as usize * 7919) % 25_000;
    let offload = TxOffload {
        csum_blank: true,
        data_validated: false,
        gso: Some(Gso {
            kind: GsoKind::TcpV4,
            mss: MSS,
        }),
    };
    (tagged([2, 0, 0, 0, 0, 1], src, k, len), offload)
}

/// dom0's side of the uplink: our netback (GSO offered), taking at most
/// `budget` packets a millisecond; records what came with its flags and
/// sends what is queued.
#[derive(Default)]
struct Dom0 {
    got: Vec<Packet>,
    to_send: VecDeque<Packet>,
    polls: u64,
}

async fn dom0(m: Machine, h: Handle, budget: usize, state: Rc<RefCell<Dom0>>) {
    let mut env = SimNetbackEnv {
        hv: m.hv.clone(),
        dom: 0,
    };
    let conn = m.xsd.borrow_mut().connect(0);
    let mut xs = XenStore::new(SimTransport::connection(m.xsd.clone(), conn, 64));
    let path = Machine::back_path(VM, 0);
    let mut vif = netback::connect(&mut env, &mut xs, &path, &BackendOptions::default())
        .await
        .expect("dom0 netback");
    loop {
        let mut got = Vec::new();
        vif.receive(&mut env, budget, &mut got)
            .expect("dom0 receive");
        {
            let mut s = state.borrow_mut();
            s.polls += 1;
            s.got.extend(got);
            // As its wire brings them: no more than its queue takes.
            while s
                .to_send
                .front()
                .is_some_and(|p| vif.would_accept(p.data.len()))
            {
                if let Some(p) = s.to_send.pop_front() {
                    vif.send(p);
                }
            }
        }
        vif.deliver(&mut env, 64).expect("dom0 deliver");
        h.sleep(MS).await;
    }
}

/// The client: our netfront asking for GSO and blank checksums on receive;
/// sends `count` frames of the stream as fast as its ring takes them and
/// records what it receives with its flags.
#[derive(Default)]
struct ClientSide {
    sent: u32,
    got: Vec<netfront::RxPacket>,
    connected: bool,
}

async fn client(m: Machine, h: Handle, count: u32, state: Rc<RefCell<ClientSide>>) {
    let bstate = format!("{}/state", Machine::back_path(CLIENT, VM));
    while m.get(&bstate).as_deref() != Some("2") {
        h.sleep(MS).await;
    }
    let options = ConnectOptions {
        rx_gso: true,
        rx_csum_blank: true,
        max_queues: 1,
        ..ConnectOptions::default()
    };
    let mut nf = match Netfront::connect(m.front_env(CLIENT), "device/vif/0", options).await {
        Ok(nf) => nf,
        Err((_, e)) => panic!("client: {e}"),
    };
    state.borrow_mut().connected = true;
    let mut k = 0;
    loop {
        nf.poll().expect("client poll");
        while let Some(p) = nf.receive() {
            state.borrow_mut().got.push(p);
        }
        while k < count {
            let (f, offload) = stream_frame(mac_bytes(CLIENT), k);
            match nf.send(&f, offload) {
                Ok(()) => k += 1,
                Err(netfront::error::TxError::Busy) => break,
                Err(e) => panic!("client send: {e:?}"),
            }
        }
        state.borrow_mut().sent = k;
        h.sleep(MS / 4).await;
    }
}

async fn until(h: &Handle, limit_ns: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let end = h.now_ns() + limit_ns;
    while !cond() {
        assert!(h.now_ns() < end, "timed out waiting for {what}");
        h.sleep(MS).await;
    }
}

fn print(line: &str) {
    println!("{line}");
}

/// GSO both ways through the VM, with a slow uplink backend: every
/// super-packet arrives once, in order, as a super-packet with its GSO
/// size and blank checksum; none is dropped for want of ring slots (before
/// the runtime counted slots, a super-packet that met a ring with fewer
/// than its 11-18 slots free was dropped); what did not fit waited.
#[test]
fn super_packets_pass_both_ways_and_wait_for_ring_room() {
    const FRAMES: u32 = 400;
    const DOWN: u32 = 200;
    let mut ex = Executor::new();
    let m = Machine::new();
    let h = ex.handle();
    m.add_vif(VM, 0, Some("10.0.0.2"));
    let d0 = Rc::new(RefCell::new(Dom0::default()));
    // Three packets a millisecond: far slower than the client sends.
    h.spawn(dom0(m.clone(), h.clone(), 3, d0.clone()));
    let seen = Rc::new(RefCell::new(Seen::default()));
    {
        let (m, h, seen) = (m.clone(), h.clone(), seen.clone());
        h.clone().spawn(async move {
            let mut options = Options::new("vm", print);
            options.uplink = ConnectOptions {
                rx_gso: true,
                rx_csum_blank: true,
                ..ConnectOptions::default()
            };
            options.report_ns = 50 * MS;
            let back = SimNetbackEnv {
                hv: m.hv.clone(),
                dom: VM,
            };
            let mut svc = Pass(seen);
            let _ = netvm::run(&h, m.front_env(VM), back, &mut svc, &options).await;
        });
    }
    m.add_vif(CLIENT, VM, Some("10.137.0.10"));
    let c = Rc::new(RefCell::new(ClientSide::default()));
    h.spawn(client(m.clone(), h.clone(), FRAMES, c.clone()));
    let mut clock = Clock { now: Cell::new(0) };
    ex.run_until(&mut clock, async {
        until(&h, 30 * SECOND, "the client", || {
            c.borrow().connected && seen.borrow().client.is_some()
        })
        .await;
        // The service heard what each peer offered.
        {
            let s = seen.borrow();
            let f = s.uplink.as_ref().expect("uplink up").features;
            assert!(f.sg && f.gso_tcpv4 && f.gso_tcpv6 && f.ipv4_csum_offload);
            let front = s.client.as_ref().unwrap().frontend.expect("frontend");
            assert!(front.sg && front.gso_tcpv4 && front.gso_tcpv6);
            assert!(front.csum_v4 && front.csum_v6);
        }
        until(&h, 60 * SECOND, "the stream at dom0", || {
            d0.borrow().got.len() as u32 >= FRAMES
        })
        .await;
        // The reverse path: super-packets from dom0 to the client.
        for k in 0..DOWN {
            let (data, _) = stream_frame([2, 0, 0, 0, 0, 1], k);
            let mut data = data;
            data[0..6].copy_from_slice(&mac_bytes(CLIENT));
            let gso = (k % 5 != 4).then_some(Gso {
                kind: GsoKind::TcpV6,
                mss: MSS,
            });
            d0.borrow_mut().to_send.push_back(Packet {
                data,
                offload: Offload {
                    csum_blank: gso.is_some(),
                    data_validated: gso.is_some(),
                    gso,
                },
            });
        }
        until(&h, 60 * SECOND, "the stream at the client", || {
            c.borrow().got.len() as u32 >= DOWN
        })
        .await;
        h.sleep(200 * MS).await;
    });
    let d = d0.borrow();
    assert_eq!(d.got.len() as u32, FRAMES, "each frame once");
    for (k, p) in d.got.iter().enumerate() {
        let (f, offload) = stream_frame(mac_bytes(CLIENT), k as u32);
        assert_eq!(seq_of(&p.data), k as u32, "in order");
        assert!(p.data == f, "frame {k} intact");
        assert_eq!(p.offload.gso, offload.gso, "frame {k} with its GSO");
        assert_eq!(p.offload.csum_blank, offload.csum_blank);
    }
    let cl = c.borrow();
    assert_eq!(cl.got.len() as u32, DOWN);
    for (k, p) in cl.got.iter().enumerate() {
        assert_eq!(seq_of(&p.data), k as u32, "in order");
        let gso = (k % 5 != 4).then_some(Gso {
            kind: GsoKind::TcpV6,
            mss: MSS,
        });
        assert_eq!(p.gso, gso, "frame {k} with its GSO");
        assert_eq!(p.csum_blank, gso.is_some());
    }
    let stats = seen.borrow().stats.clone().expect("a report");
    println!("stats {stats:?}; dom0 polls {}", d.polls);
    assert_eq!(stats.uplink_tx_dropped, 0, "{stats:?}");
    assert_eq!(stats.client_tx_dropped, 0, "{stats:?}");
    assert_eq!(stats.uplink_tx, u64::from(FRAMES));
    assert!(stats.uplink_queued > 0, "frames waited for ring room");
    assert!(stats.uplink_full > 0, "the client was left in its ring");
    // Events only when dom0 had gone to sleep asking for one: it re-arms
    // its TX and RX events at most once a poll each (a push per packet
    // would cost one per packet whenever it catches up in between).
    assert!(
        stats.uplink_notifies <= 2 * d.polls + 2,
        "{} events for {} dom0 polls",
        stats.uplink_notifies,
        d.polls
    );
}
