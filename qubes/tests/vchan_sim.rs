//! vchan server and client in one process over `xen::sim`: set-up through
//! the simulated xenstored, streaming several MiB both ways at once with a
//! checksum, back-pressure, a clean close from either side, and a peer
//! whose domain is destroyed.

mod common;

use common::{run, run2, Env, Machine};
use qubes::vchan::wire::qubes_path;
use qubes::vchan::{self, EnvError, Vchan, VchanEnv, VchanError};

/// A deterministic stream and a checksum (FNV-1a 64) of it.
struct Pattern(u64);
impl Pattern {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *b = (self.0 >> 56) as u8;
        }
    }
}
fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h = (h ^ *b as u64).wrapping_mul(0x100000001b3);
    }
    h
}
const FNV0: u64 = 0xcbf29ce484222325;

fn expected(seed: u64, total: usize) -> u64 {
    let mut p = Pattern(seed);
    let mut buf = vec![0u8; total];
    p.fill(&mut buf);
    fnv(FNV0, &buf)
}

/// Full duplex: send `total` bytes of pattern `seed` while receiving
/// `total` bytes; return the checksum of what was received and how many
/// times this side had to wait.
async fn duplex<M: xen::shared_page::PageMemory>(
    v: &mut Vchan<M>,
    env: &mut Env,
    seed: u64,
    total: usize,
    chunk: usize,
) -> Result<(u64, u64), VchanError> {
    let mut src = Pattern(seed);
    let mut out = vec![0u8; chunk];
    let (mut out_at, mut out_len) = (0, 0);
    let (mut sent, mut got) = (0usize, 0usize);
    let mut sum = FNV0;
    let mut inbuf = vec![0u8; chunk];
    let mut waits = 0;
    while sent < total || got < total {
        let mut progressed = false;
        if out_at == out_len && sent < total {
            out_len = chunk.min(total - sent);
            out_at = 0;
            src.fill(&mut out[..out_len]);
        }
        if out_at < out_len {
            let n = v.try_write(env, &out[out_at..out_len])?;
            out_at += n;
            sent += n;
            progressed |= n > 0;
        }
        if got < total {
            let n = v.try_read(env, &mut inbuf)?;
            sum = fnv(sum, &inbuf[..n]);
            got += n;
            progressed |= n > 0;
        }
        if !progressed {
            waits += 1;
            v.wait(env).await?;
        }
    }
    v.flush(env).await?;
    Ok((sum, waits))
}

const MIB: usize = 1 << 20;

#[test]
fn streams_mibs_both_ways_in_qubes_ring_sizes() {
    // 0/0: vchan-socket-proxy's (in-page rings); 4096: QubesDB and qrexec
    // control; 65536: qrexec data.
    for (read_min, write_min, total) in
        [(0, 0, MIB), (4096, 4096, 4 * MIB), (65536, 65536, 8 * MIB)]
    {
        let m = Machine::new();
        let (mut senv, mut cenv) = (m.env(5), m.env(0));
        let path = qubes_path(5, 0, 512);
        let (sr, cr) = run2(
            async {
                let mut v = vchan::listen(&mut senv, 0, &path, read_min, write_min).await?;
                v.accept(&mut senv).await?;
                let r = duplex(&mut v, &mut senv, 1, total, 3000).await?;
                Ok::<_, VchanError>((r, v))
            },
            async {
                vchan::wait_for_server(cenv.xenstore(), &path).await?;
                let mut v = vchan::connect(&mut cenv, 5, &path).await?;
                let r = duplex(&mut v, &mut cenv, 2, total, 5000).await?;
                Ok::<_, VchanError>((r, v))
            },
        );
        let ((s_sum, s_waits), sv) = sr.unwrap();
        let ((c_sum, c_waits), cv) = cr.unwrap();
        assert_eq!(
            s_sum,
            expected(2, total),
            "server received the client's stream"
        );
        assert_eq!(
            c_sum,
            expected(1, total),
            "client received the server's stream"
        );
        eprintln!(
            "{read_min}/{write_min}: {} MiB each way, waits server {s_waits} client {c_waits}",
            total / MIB
        );
        // Keys as libvchan's: decimal ring-ref and event-channel.
        let ring_ref: u32 = m.get(&format!("{path}/ring-ref")).unwrap().parse().unwrap();
        let port: u32 = m
            .get(&format!("{path}/event-channel"))
            .unwrap()
            .parse()
            .unwrap();
        assert!(ring_ref > 0 && port > 0);
        // Close: client first, then the server has nothing lingering.
        assert!(m.hv.maps_of(0, 5) > 0);
        run(cv.close(&mut cenv)).unwrap();
        assert_eq!(m.hv.maps_of(0, 5), 0);
        let lingering = run(sv.close(&mut senv)).unwrap();
        assert!(lingering.is_empty());
        assert_eq!(m.hv.grants_of(5), 0);
        assert_eq!(m.get(&format!("{path}/ring-ref")), None, "keys removed");
        assert_eq!(senv.xs.dropped_watch_events(), 0);
    }
}

#[test]
fn client_close_is_eof_for_the_server_after_the_data() {
    let m = Machine::new();
    let (mut senv, mut cenv) = (m.env(0), m.env(7));
    let path = qubes_path(0, 7, 111);
    let (sr, cr) = run2(
        async {
            let mut v = vchan::listen(&mut senv, 7, &path, 4096, 4096).await?;
            v.accept(&mut senv).await?;
            let mut all = Vec::new();
            let mut buf = [0u8; 1000];
            loop {
                let n = v.read(&mut senv, &mut buf).await?;
                if n == 0 {
                    break;
                }
                all.extend_from_slice(&buf[..n]);
            }
            let w = v.write_all(&mut senv, b"too late").await;
            Ok::<_, VchanError>((all, w, v))
        },
        async {
            vchan::wait_for_server(cenv.xenstore(), &path).await?;
            let mut v = vchan::connect(&mut cenv, 0, &path).await?;
            // More than the ring: back-pressure makes the writer wait.
            let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
            v.write_all(&mut cenv, &data).await?;
            v.flush(&mut cenv).await?;
            v.close(&mut cenv).await?;
            Ok::<_, VchanError>(data)
        },
    );
    let data = cr.unwrap();
    let (all, w, sv) = sr.unwrap();
    assert_eq!(all, data);
    assert_eq!(w, Err(VchanError::PeerClosed));
    assert!(run(sv.close(&mut senv)).unwrap().is_empty());
}

#[test]
fn server_close_while_client_maps_lingers_until_unmapped() {
    let m = Machine::new();
    let (mut senv, mut cenv) = (m.env(3), m.env(0));
    let path = qubes_path(3, 0, 600);
    let (sv, cv) = run2(
        async {
            let mut v = vchan::listen(&mut senv, 0, &path, 65536, 4096)
                .await
                .unwrap();
            v.accept(&mut senv).await.unwrap();
            v.write_all(&mut senv, b"bye").await.unwrap();
            v
        },
        async {
            vchan::wait_for_server(cenv.xenstore(), &path)
                .await
                .unwrap();
            vchan::connect(&mut cenv, 3, &path).await.unwrap()
        },
    );
    let mut lingering = run(sv.close(&mut senv)).unwrap();
    // Control page + 16 pages of the left ring + 1 of the right, all mapped.
    assert_eq!(lingering.len(), 18);
    assert_eq!(m.hv.grants_of(3), 18);
    assert!(!lingering.retry(&mut senv));
    // The client still reads what was written, then sees the close.
    let mut cv = cv;
    let mut buf = [0u8; 8];
    assert_eq!(run(cv.read(&mut cenv, &mut buf)).unwrap(), 3);
    assert_eq!(&buf[..3], b"bye");
    assert_eq!(run(cv.read(&mut cenv, &mut buf)).unwrap(), 0);
    assert_eq!(
        run(cv.write_all(&mut cenv, b"x")),
        Err(VchanError::PeerClosed)
    );
    run(cv.close(&mut cenv)).unwrap();
    assert!(lingering.retry(&mut senv));
    assert_eq!(m.hv.grants_of(3), 0);
}

#[test]
fn a_vanished_client_wakes_the_server_with_peer_gone() {
    let m = Machine::new();
    let (mut senv, mut cenv) = (m.env(0), m.env(9));
    let path = qubes_path(0, 9, 111);
    let mut sv = None;
    let (sr, _) = run2(
        async {
            let mut v = vchan::listen(&mut senv, 9, &path, 4096, 4096).await?;
            v.accept(&mut senv).await?;
            let mut buf = [0u8; 64];
            let n = v.read(&mut senv, &mut buf).await?;
            assert_eq!(&buf[..n], b"hi");
            // Blocks until the client's domain dies.
            let r = v.read(&mut senv, &mut buf).await;
            sv = Some(v);
            r
        },
        async {
            vchan::wait_for_server(cenv.xenstore(), &path)
                .await
                .unwrap();
            let mut v = vchan::connect(&mut cenv, 0, &path).await.unwrap();
            v.write_all(&mut cenv, b"hi").await.unwrap();
            // The domain is destroyed without closing anything.
            std::mem::forget(v);
            m.hv.destroy_domain(9);
            m.xsd.borrow_mut().remove("/local/domain/9");
        },
    );
    assert_eq!(sr, Err(VchanError::PeerGone));
    let sv = sv.unwrap();
    // Its mappings went with it: nothing lingers.
    assert!(run(sv.close(&mut senv)).unwrap().is_empty());
    assert_eq!(m.hv.grants_of(0), 0);
}

#[test]
fn a_vanished_server_is_peer_gone_for_a_waiting_client() {
    let m = Machine::new();
    let (mut senv, mut cenv) = (m.env(4), m.env(0));
    let path = qubes_path(4, 0, 700);
    let (_, cr) = run2(
        async {
            let mut v = vchan::listen(&mut senv, 0, &path, 0, 0).await.unwrap();
            v.accept(&mut senv).await.unwrap();
            // Fill the client's read ring, then die.
            v.write_all(&mut senv, &[1u8; 2048]).await.unwrap();
            std::mem::forget(v);
            m.hv.destroy_domain(4);
        },
        async {
            vchan::wait_for_server(cenv.xenstore(), &path)
                .await
                .unwrap();
            let mut v = vchan::connect(&mut cenv, 4, &path).await.unwrap();
            // Write more than fits in the 1 KiB left ring: waits, then the
            // server is gone.
            let r = v.write_all(&mut cenv, &[2u8; 5000]).await;
            (r, v)
        },
    );
    let (r, cv) = cr;
    assert_eq!(r, Err(VchanError::PeerGone));
    run(cv.close(&mut cenv)).unwrap();
}

#[test]
fn bad_keys_and_missing_server_are_errors() {
    let m = Machine::new();
    let mut cenv = m.env(0);
    let path = qubes_path(6, 0, 1);
    assert!(matches!(
        run(vchan::connect(&mut cenv, 6, &path)),
        Err(VchanError::Xenstore(xen::xenstore::XsError::Enoent))
    ));
    m.xsd.borrow_mut().set(&format!("{path}/ring-ref"), b"12x");
    m.xsd
        .borrow_mut()
        .set(&format!("{path}/event-channel"), b"3");
    assert!(matches!(
        run(vchan::connect(&mut cenv, 6, &path)),
        Err(VchanError::BadKey("ring-ref"))
    ));
    m.xsd.borrow_mut().set(&format!("{path}/ring-ref"), b"0");
    assert!(matches!(
        run(vchan::connect(&mut cenv, 6, &path)),
        Err(VchanError::BadKey("ring-ref"))
    ));
    // A grant that does not exist: the port bound for it is closed again.
    m.xsd.borrow_mut().set(&format!("{path}/ring-ref"), b"77");
    let port = m.hv.alloc_unbound(6, 0).unwrap();
    m.xsd.borrow_mut().set(
        &format!("{path}/event-channel"),
        port.to_string().as_bytes(),
    );
    assert!(matches!(
        run(vchan::connect(&mut cenv, 6, &path)),
        Err(VchanError::Env(EnvError::Grant(_)))
    ));
    assert!(
        m.hv.bind_interdomain(0, 6, port).is_ok(),
        "the server's port is free again"
    );
}

#[test]
fn a_hostile_server_layout_is_refused_and_unmapped() {
    let m = Machine::new();
    let (mut senv, mut cenv) = (m.env(2), m.env(0));
    let path = qubes_path(2, 0, 5);
    let sv = run(vchan::listen(&mut senv, 0, &path, 4096, 4096)).unwrap();
    // The server rewrites its orders to claim a 1 MiB ring it never granted.
    let mut sv = sv;
    sv.stream()
        .unwrap()
        .control()
        .store_u16(qubes::vchan::wire::LEFT_ORDER, 20)
        .unwrap();
    let r = run(vchan::connect(&mut cenv, 2, &path));
    assert!(
        matches!(r, Err(VchanError::Env(EnvError::Grant(_)))),
        "{:?}",
        r.err()
    );
    assert_eq!(m.hv.maps_of(0, 2), 0, "every mapping made was undone");
    sv.stream()
        .unwrap()
        .control()
        .store_u16(qubes::vchan::wire::LEFT_ORDER, 21)
        .unwrap();
    let r = run(vchan::connect(&mut cenv, 2, &path));
    assert!(matches!(
        r,
        Err(VchanError::Stream(qubes::vchan::stream::StreamError::Wire(
            qubes::vchan::wire::WireError::BadOrder(21)
        )))
    ));
    assert_eq!(m.hv.maps_of(0, 2), 0);
}

#[test]
fn a_server_dropped_while_the_client_maps_defers_its_pages() {
    // The server's side is dropped without closing (a cancelled task),
    // the client keeps its mappings: no page it maps is given back; once
    // it unmaps, every page and grant goes.
    let m = Machine::new();
    let (mut senv, mut cenv) = (m.env(3), m.env(0));
    let path = qubes_path(3, 0, 601);
    let frames_before = m.hv.frames_in_use();
    let (sv, cv) = run2(
        async {
            let mut v = vchan::listen(&mut senv, 0, &path, 65536, 4096)
                .await
                .unwrap();
            v.accept(&mut senv).await.unwrap();
            v.write_all(&mut senv, b"bye").await.unwrap();
            v
        },
        async {
            vchan::wait_for_server(cenv.xenstore(), &path)
                .await
                .unwrap();
            vchan::connect(&mut cenv, 3, &path).await.unwrap()
        },
    );
    assert_eq!(m.hv.grants_of(3), 18);
    drop(sv);
    // Control page + 17 ring pages, all mapped by the client: deferred.
    assert_eq!(m.hv.deferred_frames(), 18);
    assert_eq!(m.hv.grants_of(3), 18);
    let mut cv = cv;
    let mut buf = [0u8; 8];
    assert_eq!(run(cv.read(&mut cenv, &mut buf)).unwrap(), 3);
    assert_eq!(&buf[..3], b"bye");
    run(cv.close(&mut cenv)).unwrap();
    m.hv.retry_deferred();
    assert_eq!(m.hv.deferred_frames(), 0);
    assert_eq!(m.hv.grants_of(3), 0);
    assert_eq!(m.hv.frames_in_use(), frames_before);
}
