//! The firewall VM as a Qubes qube, on the host over `xen::sim`: a fake
//! dom0 QubesDB daemon (the vchan server on port 111, messages encoded by
//! hand from `qubesdb.h`'s layout, as in qubes/tests/qubesdb_sim.rs) feeds
//! the firewall's configuration; the QubesDB link task (`qubes_mode::pump`)
//! and the service (`QubesFirewall`) run as they do in the image. Checked:
//! the configuration and rules come from the sync; the write-backs
//! (`/qubes-firewall-handled/<ip>`, `/qubes-iptables-error`) reach dom0;
//! a rule change is applied only on the reload trigger; a refused rule
//! set is reported; `/connected-ips` drops a spoofed frame from the
//! uplink; dom0's daemon restarting is followed by a reconnection and a
//! resync.

#[path = "../../../qubes/tests/common/mod.rs"]
mod common;

use std::cell::RefCell;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use common::{Env, Machine};
use firewall_vm::qubes_mode::{self, QubesFirewall, Shared};
use firewall_vm::{FirewallSettings, FirewallVm};
use netfront::MacAddress;
use netvm::identity::Key;
use netvm::{ClientId, ClientInfo, Link, Offload, Packet, Service, To, Transmit, UplinkInfo};
use qubes::qubesdb::link;
use qubes::vchan::{self, Vchan};
use xen::shared_page::PageMemory;

const VM: u16 = 7;
const FW_MAC: [u8; 6] = [0, 0x16, 0x3e, 0x6d, 0x6f, 0x10];
const CLIENT_MAC: [u8; 6] = [0, 0x16, 0x3e, 0x6d, 0x6f, 0x20];
const CLIENT_IP: [u8; 4] = [10, 137, 0, 10];
const GW_IP: [u8; 4] = [10, 99, 0, 1];

// qubesdb.h: enum qdb_msg.
const CMD_WRITE: u8 = 1;
const CMD_MULTIREAD: u8 = 2;
const RESP_OK: u8 = 7;
const RESP_MULTIREAD: u8 = 11;

fn print(line: &str) {
    println!("{line}");
}

/// struct qdb_hdr: u8 type, char path[64], 3 bytes of padding, u32
/// data_len (little endian), data.
fn hdr(t: u8, path: &str, data: &[u8]) -> Vec<u8> {
    let mut m = vec![0u8; 72];
    m[0] = t;
    m[1..1 + path.len()].copy_from_slice(path.as_bytes());
    m[68..72].copy_from_slice(&(data.len() as u32).to_le_bytes());
    m.extend_from_slice(data);
    m
}

async fn read_exact<M: PageMemory>(v: &mut Vchan<M>, env: &mut Env, n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    let mut at = 0;
    while at < n {
        let got = v.read(env, &mut out[at..]).await.unwrap();
        assert!(got > 0, "the VM closed");
        at += got;
    }
    out
}

async fn recv<M: PageMemory>(v: &mut Vchan<M>, env: &mut Env) -> (u8, String, String) {
    let h = read_exact(v, env, 72).await;
    let end = h[1..65].iter().position(|&c| c == 0).unwrap();
    let path = String::from_utf8(h[1..1 + end].to_vec()).unwrap();
    let len = u32::from_le_bytes(h[68..72].try_into().unwrap()) as usize;
    let data = read_exact(v, env, len).await;
    (h[0], path, String::from_utf8(data).unwrap())
}

/// A VM write, acknowledged as dom0's daemon does.
async fn expect_write<M: PageMemory>(v: &mut Vchan<M>, env: &mut Env, path: &str) -> String {
    let (t, p, d) = recv(v, env).await;
    assert_eq!((t, p.as_str()), (CMD_WRITE, path), "value {d:?}");
    v.write_all(env, &hdr(RESP_OK, &p, b"")).await.unwrap();
    d
}

/// dom0 writes; the VM answers OK.
async fn write<M: PageMemory>(v: &mut Vchan<M>, env: &mut Env, path: &str, value: &str) {
    v.write_all(env, &hdr(CMD_WRITE, path, value.as_bytes()))
        .await
        .unwrap();
    assert_eq!(
        recv(v, env).await,
        (RESP_OK, path.to_string(), String::new())
    );
}

async fn serve_sync<M: PageMemory>(v: &mut Vchan<M>, env: &mut Env, db: &[(&str, &str)]) {
    assert_eq!(
        recv(v, env).await,
        (CMD_MULTIREAD, String::new(), String::new())
    );
    for (p, d) in db.iter().rev() {
        v.write_all(env, &hdr(RESP_MULTIREAD, p, d.as_bytes()))
            .await
            .unwrap();
    }
    v.write_all(env, &hdr(RESP_MULTIREAD, "", b""))
        .await
        .unwrap();
}

/// What qubes-core-admin puts into a sys-firewall's QubesDB (the network
/// part) for one client 10.137.0.10 with an accept rule for port 8080.
fn db() -> Vec<(&'static str, &'static str)> {
    vec![
        ("/name", "sys-firewall"),
        ("/qubes-ip", "10.99.0.10"),
        ("/qubes-gateway", "10.99.0.1"),
        ("/qubes-primary-dns", "10.99.0.1"),
        ("/qubes-secondary-dns", "10.99.0.2"),
        ("/qubes-netvm-gateway", "10.137.0.1"),
        ("/qubes-netvm-primary-dns", "10.139.1.1"),
        ("/qubes-netvm-secondary-dns", "10.139.1.2"),
        ("/connected-ips", "10.137.0.10"),
        ("/connected-ips6", ""),
        ("/qubes-firewall/10.137.0.10/policy", "drop"),
        (
            "/qubes-firewall/10.137.0.10/0000",
            "action=accept proto=tcp dstports=8080-8080",
        ),
        ("/qubes-firewall/10.137.0.10", ""),
    ]
}

fn ip_checksum(header: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in header.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A TCP SYN from `src` to the uplink's gateway, port `dport`.
fn syn(src: [u8; 4], dport: u16) -> Packet {
    let mut f = vec![0u8; 54];
    f[0..6].copy_from_slice(&[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff]);
    f[6..12].copy_from_slice(&CLIENT_MAC);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&GW_IP);
    let c = ip_checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let tcp = &mut f[34..54];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[12] = 0x50;
    tcp[13] = 0x02;
    assert!(netback::packet::fill_checksum(&mut f));
    Packet {
        data: f,
        offload: Offload::default(),
    }
}

/// Whether `out` holds an ICMP admin-prohibited (3/13) for the client.
fn prohibited(out: &[Transmit]) -> bool {
    out.iter().any(|t| {
        let f = &t.packet.data;
        t.to == To::Client(ClientId(1)) && f.len() > 35 && f[23] == 1 && f[34] == 3 && f[35] == 13
    })
}

/// A future that is pending once (lets the other side run).
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

/// Poll `script` to completion, `background` beside it (never finishes).
fn run_with<A: Future, B: Future>(script: A, background: B) -> A::Output {
    let (mut a, mut b) = (pin!(script), pin!(background));
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..20_000_000u64 {
        if let Poll::Ready(v) = a.as_mut().poll(&mut cx) {
            return v;
        }
        let _ = b.as_mut().poll(&mut cx);
    }
    panic!("stalled")
}

#[test]
fn configured_from_qubesdb_with_write_backs_and_reconnection() {
    let m = Machine::new();
    let (mut dom0, mut vm_env) = (m.env(0), m.env(VM));
    let shared = Shared::new();
    let fw = RefCell::new(QubesFirewall::new(
        FirewallVm::new(FirewallSettings::default(), print),
        shared.clone(),
        print,
    ));
    let path = link::vchan_path(VM);
    let background = qubes_mode::pump(&mut vm_env, VM, shared.clone(), print, yield_once);
    let script = async {
        // The uplink comes up (no `ip` in its vif: QubesDB says) before
        // QubesDB is synced: nothing is built from the defaults alone.
        fw.borrow_mut().uplink_up(
            1,
            &UplinkInfo {
                mac: MacAddress(FW_MAC),
                backend: "/local/domain/1/backend/vif/7/0".into(),
                ip: Key::Absent,
                features: netfront::BackendFeatures::default(),
            },
        );
        assert!(fw.borrow().vm.firewall().is_none());
        let mut v = vchan::listen(&mut dom0, VM, &path, 4096, 4096)
            .await
            .unwrap();
        v.accept(&mut dom0).await.unwrap();
        serve_sync(&mut v, &mut dom0, &db()).await;
        while !qubes_mode::synced(&shared) {
            yield_once().await;
        }
        // The first tick after the sync configures it, once.
        fw.borrow_mut().tick(1, &mut Vec::new());
        {
            let f = fw.borrow();
            assert_eq!(f.vm.stats.builds, 1);
            let core = f.vm.firewall().expect("configured from QubesDB");
            assert_eq!(core.config().uplink.ip4, Ipv4Addr::new(10, 99, 0, 10));
            assert_eq!(
                core.config().client_side.gateway4,
                Ipv4Addr::new(10, 137, 0, 1)
            );
            assert!(core.has_rules(&IpAddr::V4(Ipv4Addr::from(CLIENT_IP))));
            assert_eq!(
                f.connected_ips().iter().copied().collect::<Vec<_>>(),
                [IpAddr::V4(Ipv4Addr::from(CLIENT_IP))]
            );
        }
        // The write-backs: handled once, no error.
        assert_eq!(
            expect_write(&mut v, &mut dom0, "/qubes-firewall-handled/10.137.0.10").await,
            "1"
        );
        assert_eq!(
            expect_write(&mut v, &mut dom0, "/qubes-iptables-error").await,
            ""
        );

        // A client: 8081 refused with admin-prohibited, as the rules say.
        {
            let mut f = fw.borrow_mut();
            let client = ClientInfo {
                id: ClientId(1),
                path: "backend/vif/9/0".into(),
                frontend_id: 9,
                mac: Key::Valid(MacAddress(CLIENT_MAC)),
                ip: Key::Valid(vec![IpAddr::V4(Ipv4Addr::from(CLIENT_IP))]),
                frontend: None,
            };
            assert!(f.admit(&client).is_ok());
            f.client_up(2, &client);
            let mut out = Vec::new();
            f.handle(3, Link::Client(ClientId(1)), syn(CLIENT_IP, 8081), &mut out);
            assert!(prohibited(&out), "{out:?}");
            // A frame from the uplink claiming a client's address: dropped.
            out.clear();
            f.handle(4, Link::Uplink, syn(CLIENT_IP, 22), &mut out);
            assert!(out.is_empty());
            assert_eq!(f.stats.connected_spoofed, 1);
        }

        // dom0 changes the rule; nothing happens before the trigger.
        write(
            &mut v,
            &mut dom0,
            "/qubes-firewall/10.137.0.10/0000",
            "action=accept proto=tcp dstports=8081-8081",
        )
        .await;
        fw.borrow_mut().tick(5, &mut Vec::new());
        let mut out = Vec::new();
        fw.borrow_mut()
            .handle(6, Link::Client(ClientId(1)), syn(CLIENT_IP, 8081), &mut out);
        assert!(prohibited(&out), "applied before the trigger: {out:?}");
        write(&mut v, &mut dom0, "/qubes-firewall/10.137.0.10", "").await;
        fw.borrow_mut().tick(7, &mut Vec::new());
        assert_eq!(
            expect_write(&mut v, &mut dom0, "/qubes-firewall-handled/10.137.0.10").await,
            "2"
        );
        let mut out = Vec::new();
        let mut second = syn(CLIENT_IP, 8081);
        second.data[34..36].copy_from_slice(&40001u16.to_be_bytes());
        assert!(netback::packet::fill_checksum(&mut second.data));
        fw.borrow_mut()
            .handle(8, Link::Client(ClientId(1)), second, &mut out);
        assert!(!prohibited(&out), "8081 allowed after the reload: {out:?}");

        // A rule the agent refuses: drop-all, and the error reported.
        write(
            &mut v,
            &mut dom0,
            "/qubes-firewall/10.137.0.10/0001",
            "action=bogus",
        )
        .await;
        write(&mut v, &mut dom0, "/qubes-firewall/10.137.0.10", "").await;
        fw.borrow_mut().tick(9, &mut Vec::new());
        assert_eq!(
            expect_write(&mut v, &mut dom0, "/qubes-firewall-handled/10.137.0.10").await,
            "3"
        );
        let error = expect_write(&mut v, &mut dom0, "/qubes-iptables-error").await;
        assert!(
            error.starts_with("Failed to parse rules for 10.137.0.10"),
            "{error}"
        );
        assert_eq!(fw.borrow().vm.stats.rule_errors, 1);

        // dom0's daemon restarts with the bad rule gone: the VM reconnects
        // and resyncs.
        v.close(&mut dom0).await.unwrap();
        let mut v = vchan::listen(&mut dom0, VM, &path, 4096, 4096)
            .await
            .unwrap();
        v.accept(&mut dom0).await.unwrap();
        serve_sync(&mut v, &mut dom0, &db()).await;
        while !(qubes_mode::synced(&shared) && shared.borrow().connected) {
            yield_once().await;
        }
        assert_eq!(shared.borrow().connects, 2);
        let lost = shared.borrow().last_error.clone().unwrap();
        assert!(lost.contains("Closed"), "{lost}");
        // The resync changed the rules' entries but wrote no trigger: as
        // the Linux agent, the firewall does not reload on entries alone.
        fw.borrow_mut().tick(10, &mut Vec::new());
        assert_eq!(fw.borrow().vm.stats.rule_errors, 1);
        v.peer_live().unwrap()
    };
    let live = run_with(script, background);
    assert_eq!(live, qubes::vchan::wire::Live::Connected);
}

/// Keys left by a daemon that died (its port closed, its grant gone): the
/// link's connection fails, it waits for the next daemon's keys instead
/// of giving up, and syncs with it.
#[test]
fn keys_of_a_dead_daemon_are_waited_out() {
    let m = Machine::new();
    let (mut dom0, mut vm_env) = (m.env(0), m.env(VM));
    let path = link::vchan_path(VM);
    m.xsd.borrow_mut().set(&format!("{path}/ring-ref"), b"4000");
    m.xsd
        .borrow_mut()
        .set(&format!("{path}/event-channel"), b"999");
    let shared = Shared::new();
    let background = qubes_mode::pump(&mut vm_env, VM, shared.clone(), print, yield_once);
    let script = async {
        while shared.borrow().last_error.is_none() {
            yield_once().await;
        }
        let mut v = vchan::listen(&mut dom0, VM, &path, 4096, 4096)
            .await
            .unwrap();
        v.accept(&mut dom0).await.unwrap();
        serve_sync(&mut v, &mut dom0, &db()).await;
        while !shared.borrow().connected {
            yield_once().await;
        }
        shared.borrow().connects
    };
    assert_eq!(run_with(script, background), 1);
    assert_eq!(
        shared.borrow().client.read("/qubes-ip"),
        Some(&b"10.99.0.10"[..])
    );
}
