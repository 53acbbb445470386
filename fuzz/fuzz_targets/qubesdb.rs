//! QubesDB's VM side (`qubes::qubesdb`) fed anything dom0 could send: the
//! header view on raw bytes, and a client that syncs, watches and writes
//! while a hostile dom0's bytes arrive in pieces of any size. Properties:
//! values or typed errors, never a panic; a broken client stays broken
//! until it starts again; everything it sends is a header the daemon
//! accepts (with a valid value); the mirror holds only entry paths and
//! values the daemon would store.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qubes::qubesdb::wire::{self, Header, HEADER_LEN};
use qubes::qubesdb::Client;

/// What the client sends must parse as the daemon's `verify_hdr` wants.
fn check_output(out: &[u8]) {
    let mut at = 0;
    while at < out.len() {
        let h = Header::parse_vchan(&out[at..]).expect("our header is valid");
        let end = at + HEADER_LEN + h.data_len();
        let data = &out[at + HEADER_LEN..end];
        wire::check_data(data).expect("our value is valid");
        at = end;
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = Header::parse(data) {
        assert!(h.data_len() < wire::MAX_DATA);
        assert!(h.path().len() < wire::MAX_PATH);
    }
    let [step, ops, rest @ ..] = data else {
        return;
    };
    let step = usize::from(*step % 97) + 1;
    let mut c = Client::new();
    let _ = c.watch("/qubes-firewall/");
    let _ = c.watch("/qubes-ip");
    c.start();
    for (i, chunk) in rest.chunks(step).enumerate() {
        let before = c.broken();
        let r = c.feed(chunk);
        if let Some(e) = before {
            assert_eq!(r, Err(e), "broken stays broken");
        }
        // Our own traffic in between, chosen by the input.
        match (ops >> (i % 8)) & 1 {
            1 if i % 3 == 0 => {
                let _ = c.write("/qubes-firewall-handled/10.137.0.5", chunk);
            }
            1 => {
                let _ = c.rm("/qubes-firewall/");
            }
            _ => {}
        }
        while c.next_event().is_some() {}
    }
    check_output(c.output());
    for (p, v) in c.entries("") {
        assert!(p.starts_with('/') && !p.ends_with('/'));
        assert!(wire::check_path(p.as_bytes()).is_ok());
        assert!(wire::check_data(v).is_ok());
    }
    c.start();
    assert_eq!(c.broken(), None);
});
