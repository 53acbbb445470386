//! The xenstore client over the real shared-page transport (`XsRing`, so
//! the byte rings too) with the fuzzer as a hostile xenstored: it answers
//! requests with replies of any type, request id and payload, scribbles
//! the response ring and both indices it owns, and raises the error flag.
//! Properties: every operation ends in a value or a typed error, never a
//! panic or an endless loop; a broken connection stays broken; values and
//! listings stay within the protocol's payload limit. The wire decoder
//! and encoder are also fuzzed directly (header round-trip).
#![no_main]

use std::collections::VecDeque;
use std::future::Future;
use std::pin::pin;
use std::ptr::addr_of_mut;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use xen::abi::xs_wire::{
    XsdSockmsgType, XENSTORE_PAYLOAD_MAX, XENSTORE_RING_SIZE, XENSTORE_SERVER_FEATURE_ERROR,
};
use xen::ring::bytes::{ByteRingReader, ByteRingWriter};
use xen::sim::xenstored::XenstorePage;
use xen::xenstore::wire::{build_request, split_strings, Arg, Message};
use xen::xenstore::{XenStore, XsError, XsEvents, XsRing};

/// The hostile daemon: plays `script` one action per event the client
/// waits for; out of actions, it never signals again.
struct Daemon {
    page: *mut xen::abi::xs_wire::XenstoreDomainInterface,
    requests: ByteRingReader,
    responses: ByteRingWriter,
    /// Request ids (and types) read from the client, not yet answered.
    pending: VecDeque<(u32, u32)>,
    rx: Vec<u8>,
    script: Vec<u8>,
    at: usize,
}

impl Daemon {
    fn byte(&mut self) -> Option<u8> {
        let b = self.script.get(self.at).copied();
        self.at += 1;
        b
    }

    fn u32(&mut self) -> u32 {
        let mut w = [0u8; 4];
        for b in &mut w {
            *b = self.byte().unwrap_or(0);
        }
        u32::from_le_bytes(w)
    }

    fn set(&mut self, field: *mut u32, value: u32) {
        // SAFETY: `field` is an aligned u32 of the heap page, which outlives
        // the daemon; no reference to the page exists (the client also
        // reaches it through raw pointers only).
        unsafe { field.write_volatile(value) }
    }

    /// Read whatever requests the client wrote, as a daemon does (until
    /// the script moved `req_cons` somewhere impossible).
    fn read_requests(&mut self) {
        let mut buf = [0u8; 256];
        loop {
            let n = self.requests.read(&mut buf).unwrap_or(0);
            if n == 0 {
                break;
            }
            self.rx.extend_from_slice(&buf[..n]);
        }
        while let Ok(m) = Message::new_checked(&self.rx[..]) {
            let len = m.total_len();
            self.pending.push_back((m.req_id(), m.raw_type()));
            self.rx.drain(..len);
        }
    }

    /// One action of the script; false when the script is over.
    fn act(&mut self) -> bool {
        self.read_requests();
        let Some(op) = self.byte() else {
            return false;
        };
        match op % 8 {
            // A reply to the oldest request: its type or another, its id
            // or a wrong one, and a payload from the script.
            0..=2 => {
                let (id, kind) = self.pending.pop_front().unwrap_or((0, 0));
                let k = self.byte().unwrap_or(0);
                let kind = if k < 200 { kind } else { u32::from(k - 200) };
                let id = if op % 8 == 2 { self.u32() } else { id };
                let len = usize::from(self.byte().unwrap_or(0));
                let start = self.at.min(self.script.len());
                let end = (start + len).min(self.script.len());
                let payload = self.script[start..end].to_vec();
                self.at = end;
                let mut msg = vec![0u8; 16];
                msg[0..4].copy_from_slice(&kind.to_ne_bytes());
                msg[4..8].copy_from_slice(&id.to_ne_bytes());
                msg[12..16].copy_from_slice(&(payload.len() as u32).to_ne_bytes());
                msg.extend_from_slice(&payload);
                let _ = self.responses.write(&msg);
            }
            // A watch event (type 15) with "path\0token\0".
            3 => {
                let n = usize::from(self.byte().unwrap_or(0) % 32);
                let start = self.at.min(self.script.len());
                let end = (start + n).min(self.script.len());
                let mut payload = self.script[start..end].to_vec();
                self.at = end;
                payload.extend_from_slice(b"\0tok\0");
                let mut msg = vec![0u8; 16];
                msg[0..4].copy_from_slice(&15u32.to_ne_bytes());
                msg[12..16].copy_from_slice(&(payload.len() as u32).to_ne_bytes());
                msg.extend_from_slice(&payload);
                let _ = self.responses.write(&msg);
            }
            // Raw bytes into the response ring.
            4 => {
                let n = usize::from(self.byte().unwrap_or(0));
                let start = self.at.min(self.script.len());
                let end = (start + n).min(self.script.len());
                let bytes = self.script[start..end].to_vec();
                self.at = end;
                let _ = self.responses.write(&bytes);
            }
            // The daemon's indices, anything.
            5 => {
                let v = self.u32();
                // SAFETY: see `set`: a field address, no reference made.
                let f = unsafe { addr_of_mut!((*self.page).rsp_prod) };
                self.set(f, v);
            }
            6 => {
                let v = self.u32();
                // SAFETY: as above.
                let f = unsafe { addr_of_mut!((*self.page).req_cons) };
                self.set(f, v);
            }
            // The error flag.
            _ => {
                let v = u32::from(self.byte().unwrap_or(0) % 3);
                // SAFETY: as above.
                let (feat, err) = unsafe {
                    (
                        addr_of_mut!((*self.page).server_features),
                        addr_of_mut!((*self.page).error),
                    )
                };
                self.set(feat, XENSTORE_SERVER_FEATURE_ERROR);
                self.set(err, v);
            }
        }
        true
    }
}

impl XsEvents for Daemon {
    fn notify(&mut self) {}
    fn poll_event(&mut self, _cx: &mut Context<'_>) -> Poll<()> {
        if self.act() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// Poll `f` once: the daemon answers every wait at once while its script
/// lasts, so `Pending` (`None`) means the script is over.
fn drive<F: Future>(f: F) -> Option<F::Output> {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

fn check<T>(xs: &XenStore<XsRing<Daemon>>, was_broken: bool, r: &Option<Result<T, XsError>>) {
    if was_broken {
        assert!(
            !matches!(r, Some(Ok(_))),
            "a broken connection answered: {:?}",
            r.as_ref().map(|r| r.as_ref().map(drop))
        );
    }
    let _ = xs;
}

fn wire(data: &[u8]) {
    if let Ok(m) = Message::new_checked(data) {
        assert!(m.payload().len() <= XENSTORE_PAYLOAD_MAX);
        assert_eq!(m.total_len(), 16 + m.payload().len());
        let _ = split_strings(m.payload()).count();
        // Round trip: a request rebuilt from the parsed header and payload.
        if let Some(kind) = m.kind() {
            let built = build_request(kind, m.req_id(), m.tx_id(), &[Arg::Raw(m.payload())])
                .expect("a payload within the limit");
            assert_eq!(&built[..], &data[..m.total_len()]);
        }
    }
    let text = String::from_utf8_lossy(data);
    if let Ok(built) = build_request(XsdSockmsgType::Read, 7, 0, &[Arg::Str(&text)]) {
        let m = Message::new_checked(&built[..]).expect("what we build parses");
        assert_eq!(m.payload().strip_suffix(&[0]), Some(text.as_bytes()));
    }
}

fuzz_target!(|data: &[u8]| {
    wire(data);
    let page = XenstorePage::new();
    let p = page.0;
    // SAFETY: the heap page outlives the client and the daemon (both are
    // dropped at the end of this closure, before `page`); everyone reaches
    // it through raw pointers only.
    let (requests, responses) = unsafe {
        (
            ByteRingReader::new(
                addr_of_mut!((*p).req).cast(),
                XENSTORE_RING_SIZE,
                addr_of_mut!((*p).req_cons),
                addr_of_mut!((*p).req_prod),
            ),
            ByteRingWriter::new(
                addr_of_mut!((*p).rsp).cast(),
                XENSTORE_RING_SIZE,
                addr_of_mut!((*p).rsp_cons),
                addr_of_mut!((*p).rsp_prod),
            ),
        )
    };
    let daemon = Daemon {
        page: p,
        requests,
        responses,
        pending: VecDeque::new(),
        rx: Vec::new(),
        script: data.to_vec(),
        at: 0,
    };
    // SAFETY: as above.
    let ring = unsafe { XsRing::new(p, daemon) };
    let mut xs = XenStore::new(ring);
    for step in 0..64u32 {
        let broken = xs.broken().is_some();
        let done = match step % 8 {
            0 => {
                let r = drive(xs.read("device/vif/0/state"));
                if let Some(Ok(v)) = &r {
                    assert!(v.len() <= XENSTORE_PAYLOAD_MAX);
                }
                check(&xs, broken, &r);
                r.is_none()
            }
            1 => {
                let r = drive(xs.directory("device"));
                if let Some(Ok(v)) = &r {
                    assert!(
                        v.iter().map(|s| s.len() + 1).sum::<usize>() <= XENSTORE_PAYLOAD_MAX + 1
                    );
                }
                check(&xs, broken, &r);
                r.is_none()
            }
            2 => {
                let r = drive(xs.watch("backend", "tok"));
                check(&xs, broken, &r);
                r.is_none()
            }
            3 => {
                // Events queued before the connection broke are still
                // handed out, by design: no check here.
                let r = drive(xs.next_watch_event());
                if let Some(Ok(e)) = &r {
                    assert!(e.path.len() + e.token.len() <= XENSTORE_PAYLOAD_MAX);
                }
                r.is_none()
            }
            4 => {
                let r = drive(xs.transaction_start());
                let end = match r {
                    Some(Ok(tx)) => drive(xs.transaction_end(tx, step % 16 == 4)),
                    Some(Err(e)) => Some(Err(e)),
                    None => None,
                };
                check(&xs, broken, &end);
                end.is_none()
            }
            5 => {
                let r = drive(xs.write("data/x", b"value"));
                check(&xs, broken, &r);
                r.is_none()
            }
            6 => {
                let r = drive(xs.get_domain_path(3));
                check(&xs, broken, &r);
                r.is_none()
            }
            _ => {
                let r = drive(xs.domid());
                check(&xs, broken, &r);
                r.is_none()
            }
        };
        if done {
            break;
        }
    }
    drop(xs);
    drop(page);
});
