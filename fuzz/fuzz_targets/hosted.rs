//! The hosted services' untrusted inputs: the link layer (Ethernet, ARP,
//! IPv4/UDP on the uplink; Ethernet, ARP, IP from clients) on arbitrary
//! frames, and the QubesDB-file reader on arbitrary text. The first byte
//! picks which. Properties: no panic; a frame yields a datagram, a packet,
//! answers or a counted drop; tables and queues stay bounded; frames we
//! send are at least an Ethernet header; a file parses or gives a typed
//! error with a line number inside the file.
#![no_main]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use hosted::link::{parse_mac, ClientLink, Uplink, MAX_UDP_PAYLOAD};
use hosted::qubesdb_file::HostedConfig;
use libfuzzer_sys::fuzz_target;

const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

fn link(data: &[u8]) {
    let mut uplink = Uplink::new(
        MAC,
        Ipv4Addr::new(192, 0, 2, 10),
        24,
        Ipv4Addr::new(192, 0, 2, 1),
        51820,
    );
    let mut clients = ClientLink::new(
        [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff],
        Ipv4Addr::new(10, 138, 0, 1),
    );
    let mut tx = Vec::new();
    let mut now = Duration::ZERO;
    // Records: [selector][len: 2][frame].
    let mut rest = data;
    while let [sel, hi, lo, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let (frame, next) = tail.split_at(len);
        rest = next;
        now += Duration::from_millis(u64::from(sel >> 3) * 100);
        match sel % 4 {
            0 => {
                if let Some(r) = uplink.receive(frame, &mut tx) {
                    assert!(r.payload.len() <= frame.len());
                }
            }
            1 => {
                if let Some(p) = clients.receive(frame, &mut tx) {
                    assert!(p.len() <= frame.len());
                    clients.send(&p, &mut tx);
                }
            }
            2 => {
                let dst = SocketAddr::from(([192, 0, 2, sel >> 2], 51820));
                let payload = &frame[..frame.len().min(MAX_UDP_PAYLOAD)];
                uplink.send(now, dst, payload, &mut tx);
                uplink.poll(now, &mut tx);
            }
            _ => clients.send(frame, &mut tx),
        }
        for f in tx.drain(..) {
            assert!(f.len() >= 14, "a runt frame sent");
        }
    }
    let _ = (uplink.counters(), clients.counters());
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    if which & 1 == 0 {
        link(rest);
        return;
    }
    let text = String::from_utf8_lossy(rest);
    let _ = parse_mac(&text);
    match HostedConfig::parse(&text) {
        Ok(config) => {
            let _ = (config.clients.len(), config.rules.len());
        }
        Err(e) => {
            assert!(
                e.line <= text.lines().count(),
                "error line {} beyond the file",
                e.line
            );
            assert!(!e.message.is_empty());
        }
    }
});
