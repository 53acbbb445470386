//! The uplink DHCP client (`netvm::dhcp`) on arbitrary bytes: the message
//! view, its options and the reply parser on raw input, the frame reader
//! on raw frames, and a client driven through its states by a script the
//! input chooses (time passing, a server's OFFER, ACK or NAK for the
//! transaction in flight with bytes of it overwritten, raw payloads in a
//! valid frame, raw frames). Properties: never a panic; a frame the client
//! takes moves exactly one of its counters (taken or dropped, by reason);
//! a lease's T1 <= T2 <= end, all after the time it was requested; the
//! client's next deadline never lies in the past after a poll.
#![no_main]

use core::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use netvm::dhcp::frame::{client_datagram, server_frame, BROADCAST_MAC};
use netvm::dhcp::wire::{option, MessageType, Packet, Reply, BOOTREPLY, HTYPE_ETHERNET, MIN_LEN};
use netvm::dhcp::{Client, Handled, Stats};

const MAC: [u8; 6] = [0x00, 0x16, 0x3e, 0x01, 0x02, 0x03];
const SERVER_MAC: [u8; 6] = [0x00, 0x16, 0x3e, 0x09, 0x09, 0x09];
const SERVER: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
const S: u64 = 1_000_000_000;

fn outcomes(s: &Stats) -> u64 {
    s.offers + s.acks + s.naks + s.dropped()
}

/// A server's reply of `kind` for transaction `xid`, lease `lease` s.
fn reply(kind: MessageType, xid: u32, lease: u32) -> Vec<u8> {
    let mut buf = vec![0u8; MIN_LEN];
    {
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_op(BOOTREPLY);
        p.set_htype(HTYPE_ETHERNET);
        p.set_hlen(6);
        p.set_xid(xid);
        p.set_yiaddr(Ipv4Addr::new(192, 168, 1, 50));
        p.set_client_mac(MAC);
        p.clear_names_and_set_cookie();
    }
    buf.extend_from_slice(&[option::MESSAGE_TYPE, 1, kind.to_u8()]);
    buf.extend_from_slice(&[option::SERVER_ID, 4, 192, 168, 1, 1]);
    buf.extend_from_slice(&[option::ROUTER, 4, 192, 168, 1, 1]);
    buf.extend_from_slice(&[option::DNS, 8, 192, 168, 1, 1, 9, 9, 9, 9]);
    buf.extend_from_slice(&[option::SUBNET_MASK, 4, 255, 255, 255, 0]);
    buf.extend_from_slice(&[option::LEASE_TIME, 4]);
    buf.extend_from_slice(&lease.to_be_bytes());
    buf.push(option::END);
    buf
}

fn to_client(payload: &[u8]) -> Vec<u8> {
    server_frame(
        SERVER_MAC,
        BROADCAST_MAC,
        SERVER,
        Ipv4Addr::BROADCAST,
        payload,
    )
}

fn check(client: &Client, now: u64) {
    if let Some(l) = client.lease() {
        if let (Some(t1), Some(t2), Some(end)) = (l.renew_at_ns, l.rebind_at_ns, l.expires_at_ns) {
            assert!(t1 <= t2 && t2 <= end, "{l:?}");
        }
    }
    let _ = now;
}

fuzz_target!(|data: &[u8]| {
    // Raw bytes as a message and as a frame.
    if let Ok(p) = Packet::new_checked(data) {
        for o in p.options() {
            if let Ok(o) = o {
                assert!(o.data.len() <= 255);
            }
        }
        let _ = p.all_options();
        if let Ok(r) = Reply::parse(&p) {
            assert!(r.dns.len() <= netvm::dhcp::wire::MAX_DNS_SERVERS);
        }
    }
    if let Ok(Some(d)) = client_datagram(data) {
        assert!(d.payload.len() <= data.len());
    }

    // A client driven by the input.
    let mut seed = [0u8; 8];
    for (i, b) in data.iter().take(8).enumerate() {
        seed[i] = *b;
    }
    let mut client = Client::new(MAC, u64::from_le_bytes(seed));
    let mut now = 0u64;
    let mut rest = data.get(8..).unwrap_or(&[]);
    let mut steps = 0;
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        steps += 1;
        if steps > 200 {
            break;
        }
        let frame = match op % 4 {
            0 => {
                // Time passes: up to 255 * 16 s.
                let (&n, tail) = rest.split_first().unwrap_or((&0, &[]));
                rest = tail;
                now = now.saturating_add(u64::from(n) * 16 * S + u64::from(op));
                None
            }
            1 => {
                // The script's reply for the transaction in flight, with
                // bytes overwritten.
                let kind = [MessageType::Offer, MessageType::Ack, MessageType::Nak]
                    [usize::from(op / 4 % 3)];
                let (&n, tail) = rest.split_first().unwrap_or((&0, &[]));
                rest = tail;
                let mut payload = reply(kind, client.xid(), u32::from(n) * 7);
                let edits = usize::from(op / 16);
                for _ in 0..edits {
                    let Some((pair, tail)) = rest.split_first_chunk::<2>() else {
                        break;
                    };
                    rest = tail;
                    let at = usize::from(pair[0]) * payload.len() / 256;
                    payload[at] = pair[1];
                }
                Some(to_client(&payload))
            }
            2 | 3 => {
                // Raw bytes: a payload in a valid frame, or a whole frame.
                let (&n, tail) = rest.split_first().unwrap_or((&0, &[]));
                let len = usize::from(n).min(tail.len());
                let (bytes, tail) = tail.split_at(len);
                rest = tail;
                Some(if op % 4 == 2 {
                    to_client(bytes)
                } else {
                    bytes.to_vec()
                })
            }
            _ => unreachable!(),
        };
        if let Some(frame) = frame {
            let before = outcomes(&client.stats());
            match client.handle_frame(now, &frame) {
                Handled::Consumed => assert_eq!(outcomes(&client.stats()), before + 1),
                Handled::NotDhcp => assert_eq!(outcomes(&client.stats()), before),
            }
        }
        for _ in 0..4 {
            if client.poll(now).is_none() {
                break;
            }
        }
        assert!(client.poll_at() > now || client.poll(now).is_none());
        check(&client, now);
        while client.take_event().is_some() {}
    }
});
