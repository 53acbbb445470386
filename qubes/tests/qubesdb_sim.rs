//! The VM side of QubesDB against a fake dom0 daemon over `xen::sim`: the
//! daemon is the vchan server on port 111 (as qubes-core-qubesdb's
//! `db-daemon.c`), encodes its messages by hand from `qubesdb.h`'s layout
//! (not with `qubes::qubesdb::wire`), answers the full sync, pushes writes
//! and removals, takes the VM's writes, restarts (reconnection), and
//! finally sends garbage.

mod common;

use common::{run2, Env, Machine};
use qubes::qubesdb::link::{self, LinkError};
use qubes::qubesdb::{Client, Event, QdbError};
use qubes::vchan::{self, Vchan, VchanError};
use xen::shared_page::PageMemory;

const VM: u16 = 7;

// qubesdb.h: enum qdb_msg.
const CMD_WRITE: u8 = 1;
const CMD_MULTIREAD: u8 = 2;
const CMD_RM: u8 = 4;
const RESP_OK: u8 = 7;
const RESP_MULTIREAD: u8 = 11;

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

async fn read_exact<M: PageMemory>(
    v: &mut Vchan<M>,
    env: &mut Env,
    n: usize,
) -> Result<Vec<u8>, VchanError> {
    let mut out = vec![0u8; n];
    let mut at = 0;
    while at < n {
        let got = v.read(env, &mut out[at..]).await?;
        if got == 0 {
            return Err(VchanError::PeerClosed);
        }
        at += got;
    }
    Ok(out)
}

/// A received message: type, path, data.
async fn recv<M: PageMemory>(v: &mut Vchan<M>, env: &mut Env) -> (u8, String, Vec<u8>) {
    let h = read_exact(v, env, 72).await.unwrap();
    let end = h[1..65].iter().position(|&c| c == 0).unwrap();
    let path = String::from_utf8(h[1..1 + end].to_vec()).unwrap();
    let len = u32::from_le_bytes(h[68..72].try_into().unwrap()) as usize;
    let data = read_exact(v, env, len).await.unwrap();
    (h[0], path, data)
}

/// The daemon's side of a full sync: every entry, then the empty path.
async fn serve_sync<M: PageMemory>(v: &mut Vchan<M>, env: &mut Env, db: &[(String, Vec<u8>)]) {
    assert_eq!(recv(v, env).await, (CMD_MULTIREAD, String::new(), vec![]));
    for (p, d) in db.iter().rev() {
        v.write_all(env, &hdr(RESP_MULTIREAD, p, d)).await.unwrap();
    }
    v.write_all(env, &hdr(RESP_MULTIREAD, "", b""))
        .await
        .unwrap();
}

fn initial_db() -> Vec<(String, Vec<u8>)> {
    let mut db = vec![
        ("/qubes-ip".to_string(), b"10.137.0.7".to_vec()),
        ("/qubes-gateway".into(), b"10.138.0.1".to_vec()),
        ("/qubes-primary-dns".into(), b"10.139.1.1".to_vec()),
        // The largest value the daemon takes.
        ("/big".into(), vec![b'x'; 3071]),
    ];
    for i in 0..60 {
        db.push((
            format!("/qubes-firewall/10.137.0.{i}/0000"),
            b"action=accept".to_vec(),
        ));
    }
    db
}

#[test]
fn sync_watch_write_back_reconnect_and_garbage() {
    let m = Machine::new();
    let (mut dom0, mut vm) = (m.env(0), m.env(VM));
    let path = link::vchan_path(VM);
    assert_eq!(path, "/local/domain/0/data/vchan/7/111");
    let db = initial_db();
    let (d, c) = run2(
        async {
            // Session 1.
            let mut v = vchan::listen(&mut dom0, VM, &path, 4096, 4096)
                .await
                .unwrap();
            v.accept(&mut dom0).await.unwrap();
            serve_sync(&mut v, &mut dom0, &db).await;
            // The reload trigger dom0 writes after a rule change.
            v.write_all(
                &mut dom0,
                &hdr(CMD_WRITE, "/qubes-firewall/10.137.0.5", b""),
            )
            .await
            .unwrap();
            assert_eq!(
                recv(&mut v, &mut dom0).await,
                (RESP_OK, "/qubes-firewall/10.137.0.5".into(), vec![])
            );
            // The VM's write-back.
            let w = recv(&mut v, &mut dom0).await;
            assert_eq!(
                w,
                (
                    CMD_WRITE,
                    "/qubes-firewall-handled/10.137.0.5".into(),
                    b"1".to_vec()
                )
            );
            v.write_all(&mut dom0, &hdr(RESP_OK, &w.1, b""))
                .await
                .unwrap();
            v.write_all(&mut dom0, &hdr(CMD_RM, "/qubes-firewall/10.137.0.1/", b""))
                .await
                .unwrap();
            assert_eq!(
                recv(&mut v, &mut dom0).await,
                (RESP_OK, "/qubes-firewall/10.137.0.1/".into(), vec![])
            );
            // The daemon restarts: the vchan goes, a new one comes with a
            // changed database.
            v.close(&mut dom0).await.unwrap();
            let mut db2 = db.clone();
            db2.retain(|(p, _)| !p.starts_with("/qubes-firewall/10.137.0.1/"));
            db2[0].1 = b"10.137.0.77".to_vec();
            db2.push(("/qubes-firewall/10.137.0.5".into(), vec![]));
            db2.push(("/qubes-firewall-handled/10.137.0.5".into(), b"1".to_vec()));
            db2.push(("/new".into(), b"yes".to_vec()));
            let mut v = vchan::listen(&mut dom0, VM, &path, 4096, 4096)
                .await
                .unwrap();
            v.accept(&mut dom0).await.unwrap();
            serve_sync(&mut v, &mut dom0, &db2).await;
            assert_eq!(
                recv(&mut v, &mut dom0).await,
                (CMD_WRITE, "/resynced".into(), b"1".to_vec())
            );
            // Garbage: an unknown message type.
            let mut bad = hdr(RESP_OK, "/x", b"");
            bad[0] = 200;
            v.write_all(&mut dom0, &bad).await.unwrap();
            v.flush(&mut dom0).await.unwrap();
            v
        },
        async {
            let mut client = Client::new();
            // Watches are set before the sync: the sync fires them for
            // every entry it brings.
            let fw = client.watch("/qubes-firewall/").unwrap();
            let ip = client.watch("/qubes-ip").unwrap();
            let mut v = link::connect(&mut vm, VM).await.unwrap();
            link::sync(&mut client, &mut v, &mut vm).await.unwrap();
            assert_eq!(client.read("/qubes-ip"), Some(&b"10.137.0.7"[..]));
            assert_eq!(client.read("/big").map(|b| b.len()), Some(3071));
            let mut fired = (0, 0);
            loop {
                match client.next_event() {
                    Some(Event::Synced) => break,
                    Some(Event::Watch { id, .. }) if id == fw => fired.0 += 1,
                    Some(Event::Watch { id, .. }) if id == ip => fired.1 += 1,
                    e => panic!("{e:?}"),
                }
            }
            assert_eq!(fired, (60, 1));
            // The trigger.
            let ev = loop {
                if let Some(e) = client.next_event() {
                    break e;
                }
                link::pump(&mut client, &mut v, &mut vm).await.unwrap();
            };
            assert_eq!(
                ev,
                Event::Watch {
                    id: fw,
                    path: "/qubes-firewall/10.137.0.5".into()
                }
            );
            client
                .write("/qubes-firewall-handled/10.137.0.5", b"1")
                .unwrap();
            while client.list("/qubes-firewall/10.137.0.1/").count() > 0 {
                link::pump(&mut client, &mut v, &mut vm).await.unwrap();
            }
            assert_eq!(
                client.next_event(),
                Some(Event::Watch {
                    id: fw,
                    path: "/qubes-firewall/10.137.0.1/".into()
                })
            );
            // The daemon went away: the link says so, then reconnects.
            let err = loop {
                if let Err(e) = link::pump(&mut client, &mut v, &mut vm).await {
                    break e;
                }
            };
            assert!(
                matches!(
                    err,
                    LinkError::Closed | LinkError::Vchan(VchanError::PeerClosed)
                ),
                "{err:?}"
            );
            let mut v = link::reconnect(&mut client, v, &mut vm, VM).await.unwrap();
            let events: Vec<Event> = std::iter::from_fn(|| client.next_event()).collect();
            assert_eq!(client.read("/qubes-ip"), Some(&b"10.137.0.77"[..]));
            assert_eq!(client.read("/new"), Some(&b"yes"[..]));
            assert_eq!(client.stats().acks, 1);
            // What changed while we were away fired; nothing else did.
            assert!(events.contains(&Event::Watch {
                id: ip,
                path: "/qubes-ip".into()
            }));
            assert_eq!(events.last(), Some(&Event::Synced));
            assert_eq!(events.len(), 2, "{events:?}");
            client.write("/resynced", b"1").unwrap();
            let err = loop {
                if let Err(e) = link::pump(&mut client, &mut v, &mut vm).await {
                    break e;
                }
            };
            assert_eq!(
                err,
                LinkError::Protocol(QdbError::Wire(qubes::qubesdb::wire::WireError::BadType(
                    200
                )))
            );
            (client, v)
        },
    );
    let (client, cv) = c;
    assert_eq!(
        client.broken(),
        Some(QdbError::Wire(qubes::qubesdb::wire::WireError::BadType(
            200
        )))
    );
    common::run(cv.close(&mut vm)).unwrap();
    assert!(common::run(d.close(&mut dom0)).unwrap().is_empty());
}

#[test]
fn a_server_that_already_closed_is_skipped() {
    let m = Machine::new();
    let (mut dom0, mut vm) = (m.env(0), m.env(VM));
    let path = link::vchan_path(VM);
    let (_, c) = run2(
        async {
            // A daemon that exited without its keys removed yet.
            let mut old = vchan::listen(&mut dom0, VM, &path, 4096, 4096)
                .await
                .unwrap();
            old.stream()
                .unwrap()
                .control()
                .store_u8(qubes::vchan::wire::SRV_LIVE, 0)
                .unwrap();
            // The VM connects to it, sees it closed and leaves.
            let _ = old.accept(&mut dom0).await;
            let mut lingering = old.close(&mut dom0).await.unwrap();
            // The new daemon.
            let mut v = vchan::listen(&mut dom0, VM, &path, 4096, 4096)
                .await
                .unwrap();
            v.accept(&mut dom0).await.unwrap();
            assert!(lingering.retry(&mut dom0), "the VM unmapped the old pages");
            serve_sync(
                &mut v,
                &mut dom0,
                &[("/qubes-ip".into(), b"10.137.0.9".to_vec())],
            )
            .await;
            v
        },
        async {
            let mut client = Client::new();
            let mut v = link::connect(&mut vm, VM).await.unwrap();
            link::sync(&mut client, &mut v, &mut vm).await.unwrap();
            (client, v)
        },
    );
    assert_eq!(c.0.read("/qubes-ip"), Some(&b"10.137.0.9"[..]));
}
