//! moat's xenstored (the server core) fed raw bytes as a domain would put
//! them on its ring: any header (type, ids, length), any payload, split
//! into chunks of any size, from an unprivileged and a privileged domain;
//! every request type's payload decoder also gets the bytes directly.
//! Properties: nothing panics; a header over XENSTORE_PAYLOAD_MAX cuts the
//! connection and nothing else does; everything sent back is a whole
//! message within the payload limit, replies carry a request id that was
//! sent, at most one reply per request; the store's and the quotas'
//! invariants hold after every chunk.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xen::abi::xs_wire::{XsdSockmsgType, XENSTORE_PAYLOAD_MAX};
use xenstored::decode::{Header, Request};
use xenstored::{Config, ConnError, NoHost, Quotas, Server};

fn check_output(server: &mut Server, domid: u16, sent_ids: &[u32], replies: &mut usize) {
    let mut out = Vec::new();
    let mut buf = [0u8; 97];
    loop {
        let n = server.transmit(domid, &mut buf);
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    let mut rest = &out[..];
    while !rest.is_empty() {
        let header = Header::parse(rest).expect("server sent a bad header");
        let len = header.len as usize;
        assert!(len <= XENSTORE_PAYLOAD_MAX);
        assert!(rest.len() >= 16 + len, "server sent a partial message");
        if header.kind == XsdSockmsgType::WatchEvent as u32 {
            assert_eq!((header.req_id, header.tx_id), (0, 0));
        } else {
            assert!(
                sent_ids.contains(&header.req_id),
                "reply to a request never sent"
            );
            *replies += 1;
        }
        rest = &rest[16 + len..];
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    // Every decoder on the raw bytes.
    for kind in XsdSockmsgType::ALL {
        let _ = Request::parse(kind, &data[2..]);
    }
    let quotas = Quotas {
        outstanding: 3,
        output_bytes: 4096,
        ..Quotas::default()
    };
    let mut server = Server::new(Config {
        quotas,
        ..Config::default()
    });
    server.connect(0);
    server.connect(5);
    let domid = if data[0] & 1 == 0 { 5 } else { 0 };
    let chunk = usize::from(data[1] % 64) + 1;
    let stream = &data[2..];
    // The request ids the stream carries, at every 16+len boundary.
    let mut sent_ids = Vec::new();
    let mut at = 0;
    while let Ok(h) = Header::parse(&stream[at.min(stream.len())..]) {
        sent_ids.push(h.req_id);
        at += 16 + h.len as usize;
    }
    let mut fed = 0;
    let mut replies = 0;
    let mut stalls = 0;
    while fed < stream.len() && stalls < 2 {
        let end = (fed + chunk).min(stream.len());
        match server.receive(domid, &stream[fed..end], &mut NoHost) {
            Ok(used) => {
                stalls = if used == 0 { stalls + 1 } else { 0 };
                fed += used;
            }
            Err(ConnError::PayloadTooLarge(len)) => {
                assert!(len as usize > XENSTORE_PAYLOAD_MAX);
                assert!(server.receive(domid, b"x", &mut NoHost).is_err());
                break;
            }
            Err(err) => panic!("unexpected {err:?}"),
        }
        check_output(&mut server, domid, &sent_ids, &mut replies);
        server.check().expect("invariants");
    }
    assert!(replies <= sent_ids.len());
});
