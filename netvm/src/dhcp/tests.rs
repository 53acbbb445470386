//! The DHCP client against a scripted server: the wire format both ways,
//! the frame around it, and every transition of the state machine with
//! its timers, each malformed or foreign reply a counted drop.

use std::net::Ipv4Addr;

use super::client::{MAX_REQUESTS, MIN_LEASE_SECS};
use super::frame::{client_datagram, client_frame, client_payload, server_frame, FrameError};
use super::wire::{self, option, MessageType, Packet, Reply, Request};
use super::*;

const MAC: [u8; 6] = [0x00, 0x16, 0x3e, 0x01, 0x02, 0x03];
const OTHER_MAC: [u8; 6] = [0x00, 0x16, 0x3e, 0x0a, 0x0b, 0x0c];
const SERVER_MAC: [u8; 6] = [0x00, 0x16, 0x3e, 0x09, 0x09, 0x09];
const SERVER: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
const OTHER_SERVER: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
const OFFERED: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 50);
const S: u64 = 1_000_000_000;

/// A server's message of `message_type` for `mac` with `options` after
/// the message type.
fn reply_bytes(
    message_type: MessageType,
    xid: u32,
    mac: [u8; 6],
    yiaddr: Ipv4Addr,
    options: &[(u8, Vec<u8>)],
) -> Vec<u8> {
    let mut buf = vec![0u8; wire::MIN_LEN];
    {
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_op(wire::BOOTREPLY);
        p.set_htype(wire::HTYPE_ETHERNET);
        p.set_hlen(6);
        p.set_xid(xid);
        p.set_yiaddr(yiaddr);
        p.set_siaddr(SERVER);
        p.set_client_mac(mac);
        p.clear_names_and_set_cookie();
    }
    buf.extend_from_slice(&[option::MESSAGE_TYPE, 1, message_type.to_u8()]);
    for (code, data) in options {
        buf.push(*code);
        buf.push(data.len() as u8);
        buf.extend_from_slice(data);
    }
    buf.push(option::END);
    buf
}

/// Server id, mask, router, two resolvers and a lease of `lease` seconds.
fn lease_options(server: Ipv4Addr, lease: u32) -> Vec<(u8, Vec<u8>)> {
    let mut dns = SERVER.octets().to_vec();
    dns.extend_from_slice(&[9, 9, 9, 9]);
    vec![
        (option::SERVER_ID, server.octets().to_vec()),
        (option::SUBNET_MASK, vec![255, 255, 255, 0]),
        (option::ROUTER, SERVER.octets().to_vec()),
        (option::DNS, dns),
        (option::LEASE_TIME, lease.to_be_bytes().to_vec()),
    ]
}

fn to_client(payload: &[u8]) -> Vec<u8> {
    server_frame(
        SERVER_MAC,
        frame::BROADCAST_MAC,
        SERVER,
        Ipv4Addr::BROADCAST,
        payload,
    )
}

/// What the client sent: destination MAC, IP source and destination, and
/// the DHCP message.
struct Sent {
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    message: Vec<u8>,
}

impl Sent {
    fn of(frame: &[u8]) -> Sent {
        let (dst_mac, src, dst, payload) = client_payload(frame).expect("a DHCP datagram");
        Sent {
            dst_mac,
            src,
            dst,
            message: payload.to_vec(),
        }
    }

    fn packet(&self) -> Packet<&[u8]> {
        Packet::new_checked(&self.message[..]).unwrap()
    }

    fn option(&self, code: u8) -> Option<Vec<u8>> {
        self.packet()
            .all_options()
            .unwrap()
            .into_iter()
            .find(|o| o.code == code)
            .map(|o| o.data.to_vec())
    }

    fn message_type(&self) -> MessageType {
        MessageType::from_u8(self.option(option::MESSAGE_TYPE).unwrap()[0]).unwrap()
    }
}

/// One counter of [`Stats`].
type Counter = fn(&Stats) -> u64;

/// Counters a consumed frame moves: exactly one of them per frame.
fn outcomes(s: &Stats) -> u64 {
    s.offers + s.acks + s.naks + s.dropped()
}

/// A client taken through DISCOVER, OFFER, REQUEST and ACK at time 0 with
/// `options` in the ACK; returns it and the REQUEST it sent.
fn bound_client(options: &[(u8, Vec<u8>)]) -> (Client, Sent) {
    let mut client = Client::new(MAC, 42);
    let discover = Sent::of(&client.poll(0).unwrap());
    let xid = discover.packet().xid();
    let offer = reply_bytes(
        MessageType::Offer,
        xid,
        MAC,
        OFFERED,
        &lease_options(SERVER, 3600),
    );
    assert_eq!(
        client.handle_frame(0, &to_client(&offer)),
        Handled::Consumed
    );
    let request = Sent::of(&client.poll(0).unwrap());
    let ack = reply_bytes(MessageType::Ack, xid, MAC, OFFERED, options);
    assert_eq!(client.handle_frame(0, &to_client(&ack)), Handled::Consumed);
    assert_eq!(client.state(), State::Bound);
    (client, request)
}

#[test]
fn a_request_reads_back_through_the_view() {
    let request = Request {
        message_type: MessageType::Request,
        xid: 0xdead_beef,
        secs: 7,
        client_mac: MAC,
        client_addr: Ipv4Addr::UNSPECIFIED,
        requested_addr: Some(OFFERED),
        server_id: Some(SERVER),
    };
    let bytes = request.to_bytes();
    assert_eq!(bytes.len(), wire::BOOTP_MIN_LEN, "padded for relays");
    let p = Packet::new_checked(&bytes[..]).unwrap();
    assert_eq!(p.op(), wire::BOOTREQUEST);
    assert_eq!((p.htype(), p.hlen(), p.hops()), (1, 6, 0));
    assert_eq!(p.xid(), 0xdead_beef);
    assert_eq!(p.secs(), 7);
    assert_eq!(p.flags() & wire::FLAG_BROADCAST, 0);
    assert_eq!(p.ciaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(p.client_mac(), MAC);
    let options: Vec<(u8, Vec<u8>)> = p
        .options()
        .map(|o| o.unwrap())
        .map(|o| (o.code, o.data.to_vec()))
        .collect();
    assert_eq!(options[0], (option::MESSAGE_TYPE, vec![3]));
    assert!(options.contains(&(option::REQUESTED_IP, OFFERED.octets().to_vec())));
    assert!(options.contains(&(option::SERVER_ID, SERVER.octets().to_vec())));
    assert!(options.contains(&(option::CLIENT_ID, [&[1u8][..], &MAC[..]].concat())));
    let params = &options
        .iter()
        .find(|(c, _)| *c == option::PARAMETER_LIST)
        .unwrap()
        .1;
    for wanted in [
        option::SUBNET_MASK,
        option::ROUTER,
        option::DNS,
        option::LEASE_TIME,
    ] {
        assert!(params.contains(&wanted));
    }
}

#[test]
fn a_reply_is_read_with_every_option() {
    let mut options = lease_options(SERVER, 3600);
    options.push((option::RENEWAL_TIME, 1000u32.to_be_bytes().to_vec()));
    options.push((option::REBINDING_TIME, 3000u32.to_be_bytes().to_vec()));
    // Four resolvers: the first three are kept.
    options[3].1.extend_from_slice(&[1, 1, 1, 1, 8, 8, 8, 8]);
    let bytes = reply_bytes(MessageType::Ack, 5, MAC, OFFERED, &options);
    let reply = Reply::parse(&Packet::new_checked(&bytes[..]).unwrap()).unwrap();
    assert_eq!(reply.message_type, MessageType::Ack);
    assert_eq!(reply.xid, 5);
    assert_eq!(reply.client_mac, MAC);
    assert_eq!(reply.your_addr, OFFERED);
    assert_eq!(reply.server_id, Some(SERVER));
    assert_eq!(reply.subnet_mask, Some(Ipv4Addr::new(255, 255, 255, 0)));
    assert_eq!(reply.router, Some(SERVER));
    assert_eq!(
        reply.dns,
        [SERVER, Ipv4Addr::new(9, 9, 9, 9), Ipv4Addr::new(1, 1, 1, 1)]
    );
    assert_eq!(reply.lease_time, Some(3600));
    assert_eq!(reply.renewal_time, Some(1000));
    assert_eq!(reply.rebinding_time, Some(3000));
}

#[test]
fn overloaded_file_and_sname_fields_hold_options() {
    let mut bytes = reply_bytes(
        MessageType::Offer,
        5,
        MAC,
        OFFERED,
        &[(option::OVERLOAD, vec![3])],
    );
    // file (108..236) holds the server id, sname (44..108) the lease time.
    bytes[108..114].copy_from_slice(&[option::SERVER_ID, 4, 192, 168, 1, 1]);
    bytes[114] = option::END;
    bytes[44..50].copy_from_slice(&[option::LEASE_TIME, 4, 0, 0, 0x0e, 0x10]);
    bytes[50] = option::END;
    let reply = Reply::parse(&Packet::new_checked(&bytes[..]).unwrap()).unwrap();
    assert_eq!(reply.server_id, Some(SERVER));
    assert_eq!(reply.lease_time, Some(3600));
    // Without the overload option those fields are names, not options.
    let mut plain = bytes.clone();
    let at = wire::MIN_LEN + 3;
    plain[at] = option::PAD;
    plain[at + 1] = option::PAD;
    plain[at + 2] = option::PAD;
    let reply = Reply::parse(&Packet::new_checked(&plain[..]).unwrap()).unwrap();
    assert_eq!(reply.server_id, None);
}

#[test]
fn malformed_replies_are_refused_with_the_reason() {
    let good = reply_bytes(
        MessageType::Offer,
        5,
        MAC,
        OFFERED,
        &lease_options(SERVER, 60),
    );
    let parse = |bytes: &[u8]| Packet::new_checked(bytes).and_then(|p| Reply::parse(&p));
    assert!(parse(&good).is_ok());
    assert_eq!(parse(&good[..239]), Err(wire::Error::Truncated));
    let mut b = good.clone();
    b[236] = 0;
    assert_eq!(parse(&b), Err(wire::Error::BadCookie));
    let mut b = good.clone();
    b[0] = wire::BOOTREQUEST;
    assert_eq!(parse(&b), Err(wire::Error::NotReply));
    let mut b = good.clone();
    b[2] = 16;
    assert_eq!(parse(&b), Err(wire::Error::NotEthernet));
    // An option running past the end.
    let mut b = good[..good.len() - 1].to_vec();
    b.extend_from_slice(&[option::ROUTER, 8, 1, 2, 3, 4]);
    assert_eq!(parse(&b), Err(wire::Error::OptionOverrun));
    // A length byte missing.
    let mut b = good[..good.len() - 1].to_vec();
    b.push(option::ROUTER);
    assert_eq!(parse(&b), Err(wire::Error::OptionOverrun));
    // Known options with impossible lengths.
    for (code, data) in [
        (option::SERVER_ID, vec![1, 2, 3]),
        (option::ROUTER, vec![1, 2, 3, 4, 5]),
        (option::DNS, vec![]),
        (option::LEASE_TIME, vec![0, 0, 1]),
        (option::SUBNET_MASK, vec![255; 5]),
    ] {
        let b = reply_bytes(MessageType::Offer, 5, MAC, OFFERED, &[(code, data.clone())]);
        assert_eq!(
            parse(&b),
            Err(wire::Error::BadOptionLength {
                code,
                len: data.len()
            })
        );
    }
    let b = reply_bytes(
        MessageType::Offer,
        5,
        MAC,
        OFFERED,
        &[(option::OVERLOAD, vec![4])],
    );
    assert_eq!(parse(&b), Err(wire::Error::BadOverload(4)));
    // No message type, or an unknown one.
    let mut b = good.clone();
    b[wire::MIN_LEN] = option::PAD;
    b[wire::MIN_LEN + 1] = option::PAD;
    b[wire::MIN_LEN + 2] = option::PAD;
    assert_eq!(parse(&b), Err(wire::Error::NoMessageType));
    let mut b = good.clone();
    b[wire::MIN_LEN + 2] = 42;
    assert_eq!(parse(&b), Err(wire::Error::UnknownMessageType(42)));
}

#[test]
fn frames_are_built_and_read_with_their_checksums() {
    let payload = reply_bytes(MessageType::Offer, 5, MAC, OFFERED, &[]);
    let frame = to_client(&payload);
    let d = client_datagram(&frame).unwrap().unwrap();
    assert_eq!(d.src_mac, SERVER_MAC);
    assert_eq!((d.src_ip, d.dst_ip), (SERVER, Ipv4Addr::BROADCAST));
    assert_eq!(d.payload, &payload[..]);
    // Ethernet padding after the datagram is ignored.
    let mut padded = frame.clone();
    padded.extend_from_slice(&[0; 30]);
    assert_eq!(
        client_datagram(&padded).unwrap().unwrap().payload,
        &payload[..]
    );
    // A zero UDP checksum means none.
    let mut b = frame.clone();
    b[40..42].copy_from_slice(&[0, 0]);
    assert!(client_datagram(&b).unwrap().is_some());
    // Faults of a datagram to port 68.
    let mut b = frame.clone();
    b[14 + 8] ^= 1; // TTL: header checksum off
    assert_eq!(client_datagram(&b), Err(FrameError::IpChecksum));
    let mut b = frame.clone();
    *b.last_mut().unwrap() ^= 0x55;
    assert_eq!(client_datagram(&b), Err(FrameError::UdpChecksum));
    let mut b = frame.clone();
    b[34..36].copy_from_slice(&53u16.to_be_bytes());
    assert_eq!(client_datagram(&b), Err(FrameError::SourcePort(53)));
    let refix = |b: &mut Vec<u8>| {
        b[24..26].copy_from_slice(&[0, 0]);
        let mut sum = 0u32;
        for c in b[14..34].chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        b[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    };
    let mut b = frame.clone();
    b[20] = 0x20; // more fragments
    refix(&mut b);
    assert_eq!(client_datagram(&b), Err(FrameError::Fragmented));
    let mut b = frame.clone();
    let too_long = b.len() as u16; // longer than the frame's IP part
    b[16..18].copy_from_slice(&too_long.to_be_bytes());
    refix(&mut b);
    assert_eq!(client_datagram(&b), Err(FrameError::IpLength));
    let mut b = frame.clone();
    b[38..40].copy_from_slice(&4u16.to_be_bytes());
    assert_eq!(client_datagram(&b), Err(FrameError::UdpLength));
    // Not for the client port: someone else's.
    let mut b = frame.clone();
    b[36..38].copy_from_slice(&67u16.to_be_bytes());
    assert_eq!(client_datagram(&b), Ok(None));
    let mut arp = frame.clone();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    assert_eq!(client_datagram(&arp), Ok(None));
    let mut later_fragment = frame.clone();
    later_fragment[21] = 1;
    assert_eq!(client_datagram(&later_fragment), Ok(None));
    assert_eq!(client_datagram(&frame[..40]), Ok(None));
    // What the client builds reads back.
    let built = client_frame(MAC, SERVER_MAC, OFFERED, SERVER, b"hello");
    let (dst_mac, src, dst, data) = client_payload(&built).unwrap();
    assert_eq!(
        (dst_mac, src, dst, data),
        (SERVER_MAC, OFFERED, SERVER, &b"hello"[..])
    );
}

/// RFC 2131 3.1: DISCOVER broadcast from 0.0.0.0, OFFER, REQUEST with the
/// offer's xid, options 50 and 54, ACK: bound with the server's
/// parameters.
#[test]
fn discover_offer_request_ack_binds() {
    let mut client = Client::new(MAC, 1);
    assert_eq!(client.state(), State::Init);
    let discover = Sent::of(&client.poll(0).unwrap());
    assert_eq!(discover.message_type(), MessageType::Discover);
    assert_eq!(discover.dst_mac, frame::BROADCAST_MAC);
    assert_eq!(
        (discover.src, discover.dst),
        (Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST)
    );
    assert_eq!(discover.packet().client_mac(), MAC);
    assert_eq!(client.state(), State::Selecting);
    let xid = discover.packet().xid();
    assert_eq!(client.xid(), xid);
    assert!(
        client.poll(S).is_none(),
        "nothing before the retransmission"
    );

    let offer = reply_bytes(
        MessageType::Offer,
        xid,
        MAC,
        OFFERED,
        &lease_options(SERVER, 3600),
    );
    assert_eq!(
        client.handle_frame(2 * S, &to_client(&offer)),
        Handled::Consumed
    );
    assert_eq!(client.state(), State::Requesting);
    let request = Sent::of(&client.poll(2 * S).unwrap());
    assert_eq!(request.message_type(), MessageType::Request);
    assert_eq!(request.packet().xid(), xid);
    assert_eq!(request.packet().secs(), 2);
    assert_eq!(
        (request.src, request.dst),
        (Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST)
    );
    assert_eq!(
        request.option(option::REQUESTED_IP),
        Some(OFFERED.octets().to_vec())
    );
    assert_eq!(
        request.option(option::SERVER_ID),
        Some(SERVER.octets().to_vec())
    );
    assert_eq!(request.packet().ciaddr(), Ipv4Addr::UNSPECIFIED);

    let ack = reply_bytes(
        MessageType::Ack,
        xid,
        MAC,
        OFFERED,
        &lease_options(SERVER, 3600),
    );
    assert_eq!(
        client.handle_frame(3 * S, &to_client(&ack)),
        Handled::Consumed
    );
    assert_eq!(client.state(), State::Bound);
    let lease = client.lease().unwrap().clone();
    assert_eq!(lease.address, OFFERED);
    assert_eq!(lease.subnet_mask, Some(Ipv4Addr::new(255, 255, 255, 0)));
    assert_eq!(lease.router, Some(SERVER));
    assert_eq!(lease.dns, [SERVER, Ipv4Addr::new(9, 9, 9, 9)]);
    assert_eq!(lease.server, SERVER);
    // Counted from the REQUEST's send at 2 s (4.4.1): T1 half, T2 7/8.
    assert_eq!(lease.renew_at_ns, Some(2 * S + 1800 * S));
    assert_eq!(lease.rebind_at_ns, Some(2 * S + 3150 * S));
    assert_eq!(lease.expires_at_ns, Some(2 * S + 3600 * S));
    assert_eq!(client.take_event(), Some(Event::Bound(lease.clone())));
    assert_eq!(client.take_event(), None);
    assert_eq!(client.poll_at(), 2 * S + 1800 * S);
    assert!(client.poll(1000 * S).is_none());
    let s = client.stats();
    assert_eq!((s.discovers, s.offers, s.requests, s.acks), (1, 1, 1, 1));
    assert_eq!(s.dropped(), 0);
}

/// RFC 2131 4.1: retransmissions after 4, 8, 16, 32 and then 64 s, each
/// randomised by -1..+1 s, with the same xid.
#[test]
fn discover_is_retransmitted_with_exponential_backoff() {
    let mut client = Client::new(MAC, 7);
    let first = Sent::of(&client.poll(0).unwrap());
    let xid = first.packet().xid();
    let mut at = 0u64;
    for base in [4u64, 8, 16, 32, 64, 64, 64] {
        let due = client.poll_at();
        let delay = due - at;
        assert!(
            (base - 1) * S <= delay && delay <= (base + 1) * S,
            "delay {delay} for {base} s"
        );
        assert!(client.poll(due - 1).is_none());
        let again = Sent::of(&client.poll(due).unwrap());
        assert_eq!(again.message_type(), MessageType::Discover);
        assert_eq!(again.packet().xid(), xid);
        at = due;
    }
    assert_eq!(client.stats().discovers, 8);
}

/// RFC 2131 3.1 step 5 / 4.4.1: no ACK or NAK after the retransmissions:
/// back to INIT, a new DISCOVER with a new xid.
#[test]
fn an_unanswered_request_starts_over() {
    let mut client = Client::new(MAC, 3);
    let xid = Sent::of(&client.poll(0).unwrap()).packet().xid();
    let offer = reply_bytes(
        MessageType::Offer,
        xid,
        MAC,
        OFFERED,
        &lease_options(SERVER, 600),
    );
    client.handle_frame(0, &to_client(&offer));
    let mut requests = 0;
    let mut now = 0;
    let discover = loop {
        let frame = client.poll(now).unwrap();
        let sent = Sent::of(&frame);
        if sent.message_type() == MessageType::Discover {
            break sent;
        }
        requests += 1;
        now = client.poll_at();
    };
    assert_eq!(requests, MAX_REQUESTS);
    assert_ne!(discover.packet().xid(), xid);
    assert_eq!(client.state(), State::Selecting);
    assert_eq!(client.stats().request_timeouts, 1);
    assert!(now >= (4 + 8 + 16 + 32 - 4) * S);
}

/// RFC 2131 4.4.1: a NAK while requesting restarts the client (after a
/// second here, so a NAK loop cannot make it send without pause).
#[test]
fn a_nak_restarts() {
    let mut client = Client::new(MAC, 9);
    let xid = Sent::of(&client.poll(0).unwrap()).packet().xid();
    let offer = reply_bytes(
        MessageType::Offer,
        xid,
        MAC,
        OFFERED,
        &lease_options(SERVER, 600),
    );
    client.handle_frame(0, &to_client(&offer));
    client.poll(0).unwrap();
    let nak = reply_bytes(
        MessageType::Nak,
        xid,
        MAC,
        Ipv4Addr::UNSPECIFIED,
        &[(option::SERVER_ID, SERVER.octets().to_vec())],
    );
    client.handle_frame(S, &to_client(&nak));
    assert_eq!(client.state(), State::Init);
    assert_eq!(client.stats().naks, 1);
    assert_eq!(client.take_event(), None, "no lease was lost");
    assert!(client.poll(S + S / 2).is_none());
    let discover = Sent::of(&client.poll(2 * S).unwrap());
    assert_eq!(discover.message_type(), MessageType::Discover);
    assert_ne!(discover.packet().xid(), xid);
}

/// RFC 2131 4.4.5: at T1 the client unicasts a REQUEST (ciaddr set, no
/// options 50 and 54) to the server, retransmitted after half the time
/// left until T2 but at least 60 s; the ACK extends the lease.
#[test]
fn the_lease_is_renewed_at_t1() {
    let mut options = lease_options(SERVER, 4000);
    options.push((option::RENEWAL_TIME, 1000u32.to_be_bytes().to_vec()));
    options.push((option::REBINDING_TIME, 3000u32.to_be_bytes().to_vec()));
    let (mut client, _) = bound_client(&options);
    assert!(matches!(client.take_event(), Some(Event::Bound(_))));
    assert_eq!(client.poll_at(), 1000 * S);
    assert!(client.poll(999 * S).is_none());
    let renew = Sent::of(&client.poll(1000 * S).unwrap());
    assert_eq!(client.state(), State::Renewing);
    assert_eq!(renew.message_type(), MessageType::Request);
    assert_eq!(renew.dst_mac, SERVER_MAC, "to the MAC the ACK came from");
    assert_eq!((renew.src, renew.dst), (OFFERED, SERVER));
    assert_eq!(renew.packet().ciaddr(), OFFERED);
    assert_eq!(renew.option(option::REQUESTED_IP), None);
    assert_eq!(renew.option(option::SERVER_ID), None);
    // Half of the 2000 s left until T2.
    assert_eq!(client.poll_at(), 2000 * S);
    let again = Sent::of(&client.poll(2000 * S).unwrap());
    assert_eq!(again.packet().xid(), renew.packet().xid());
    assert_eq!(again.packet().secs(), 1000);
    assert_eq!(client.poll_at(), 2500 * S);
    client.poll(2500 * S).unwrap();
    client.poll(2750 * S).unwrap();
    // 125 s left: half (62.5 s); 62.5 s left: 60 s at least; 2.5 s left:
    // no later than T2.
    assert_eq!(client.poll_at(), 2875 * S);
    client.poll(2875 * S).unwrap();
    assert_eq!(client.poll_at(), 2937 * S + S / 2);
    client.poll(client.poll_at()).unwrap();
    assert_eq!(client.poll_at(), 2997 * S + S / 2);
    client.poll(client.poll_at()).unwrap();
    assert_eq!(client.poll_at(), 3000 * S);
    // The ACK, counted from the renewal's first REQUEST at 1000 s.
    let ack = reply_bytes(
        MessageType::Ack,
        renew.packet().xid(),
        MAC,
        OFFERED,
        &lease_options(SERVER, 4000),
    );
    client.handle_frame(2990 * S, &to_client(&ack));
    assert_eq!(client.state(), State::Bound);
    let lease = client.lease().unwrap();
    assert_eq!(lease.renew_at_ns, Some(3000 * S));
    assert_eq!(lease.expires_at_ns, Some(5000 * S));
    assert!(matches!(client.take_event(), Some(Event::Renewed(_))));
}

/// RFC 2131 4.4.5: at T2 the REQUEST is broadcast, retransmitted after
/// half the time left of the lease (at least 60 s); at the lease's end
/// the address is given up and the client starts over.
#[test]
fn rebinding_at_t2_then_the_lease_ends() {
    let (mut client, _) = bound_client(&lease_options(SERVER, 1000));
    client.take_event();
    let renew = Sent::of(&client.poll(500 * S).unwrap());
    assert_eq!(renew.dst, SERVER);
    // Half of the 375 s left until T2 = 875 s.
    assert_eq!(client.poll_at(), 687 * S + S / 2);
    let mut now = client.poll_at();
    while now < 875 * S {
        client.poll(now).unwrap();
        now = client.poll_at();
    }
    let rebind = Sent::of(&client.poll(875 * S).unwrap());
    assert_eq!(client.state(), State::Rebinding);
    assert_eq!(rebind.dst_mac, frame::BROADCAST_MAC);
    assert_eq!((rebind.src, rebind.dst), (OFFERED, Ipv4Addr::BROADCAST));
    assert_eq!(rebind.packet().ciaddr(), OFFERED);
    assert_ne!(rebind.packet().xid(), renew.packet().xid());
    // Half of the 125 s left, then 60 s at least, then the end.
    assert_eq!(client.poll_at(), 937 * S + S / 2);
    client.poll(client.poll_at()).unwrap();
    assert_eq!(client.poll_at(), 997 * S + S / 2);
    client.poll(client.poll_at()).unwrap();
    assert_eq!(client.poll_at(), 1000 * S);
    // The end: lost, and a DISCOVER at once.
    let discover = Sent::of(&client.poll(1000 * S).unwrap());
    assert_eq!(discover.message_type(), MessageType::Discover);
    assert_eq!(client.take_event(), Some(Event::Lost));
    assert!(client.lease().is_none());
    assert_eq!(client.stats().lost, 1);
    // An ACK from any server while rebinding would have been taken.
    let (mut client, _) = bound_client(&lease_options(SERVER, 1000));
    client.take_event();
    client.poll(500 * S);
    let mut now = client.poll_at();
    while client.state() != State::Rebinding {
        client.poll(now);
        now = client.poll_at();
    }
    let mut options = lease_options(OTHER_SERVER, 1000);
    options[2] = (option::ROUTER, OTHER_SERVER.octets().to_vec());
    let ack = reply_bytes(MessageType::Ack, client.xid(), MAC, OFFERED, &options);
    client.handle_frame(now, &to_client(&ack));
    assert_eq!(client.state(), State::Bound);
    assert_eq!(client.lease().unwrap().server, OTHER_SERVER);
    // The router changed: configure again.
    assert!(matches!(client.take_event(), Some(Event::Bound(l)) if l.router == Some(OTHER_SERVER)));
}

/// RFC 2131 4.4.5: a NAK while renewing ends the lease at once.
#[test]
fn a_nak_while_renewing_loses_the_lease() {
    let (mut client, _) = bound_client(&lease_options(SERVER, 1000));
    client.take_event();
    client.poll(500 * S).unwrap();
    let nak = reply_bytes(
        MessageType::Nak,
        client.xid(),
        MAC,
        Ipv4Addr::UNSPECIFIED,
        &[(option::SERVER_ID, SERVER.octets().to_vec())],
    );
    client.handle_frame(501 * S, &to_client(&nak));
    assert_eq!(client.take_event(), Some(Event::Lost));
    assert_eq!(client.state(), State::Init);
    assert!(client.lease().is_none());
}

/// Server T1/T2 are taken when T1 < T2 < lease, else the defaults.
#[test]
fn t1_and_t2_are_sanitised() {
    for (t1, t2, want) in [
        (Some(100), Some(200), (100, 200)),
        (Some(300), Some(200), (500, 875)),
        (Some(100), Some(1000), (500, 875)),
        (Some(100), None, (100, 875)),
        (None, Some(900), (500, 900)),
        (None, Some(400), (500, 875)),
        (Some(u32::MAX), Some(u32::MAX), (500, 875)),
    ] {
        let mut options = lease_options(SERVER, 1000);
        if let Some(t1) = t1 {
            options.push((option::RENEWAL_TIME, u32::to_be_bytes(t1).to_vec()));
        }
        if let Some(t2) = t2 {
            options.push((option::REBINDING_TIME, u32::to_be_bytes(t2).to_vec()));
        }
        let (client, _) = bound_client(&options);
        let lease = client.lease().unwrap();
        assert_eq!(
            (lease.renew_at_ns, lease.rebind_at_ns),
            (Some(want.0 * S), Some(want.1 * S)),
            "{t1:?} {t2:?}"
        );
    }
    // Infinite: nothing ever falls due.
    let (mut client, _) = bound_client(&lease_options(SERVER, u32::MAX));
    assert_eq!(client.lease().unwrap().expires_at_ns, None);
    assert!(client.poll(u64::MAX - 1).is_none());
    assert_eq!(client.state(), State::Bound);
}

/// Every reply the state does not wait for is a counted drop and changes
/// nothing: another client's, another transaction's, another server's, the
/// wrong type, malformed bytes, a bad frame, an unusable offer or ACK.
#[test]
fn foreign_and_malformed_replies_are_counted_drops() {
    let mut client = Client::new(MAC, 11);
    let xid = Sent::of(&client.poll(0).unwrap()).packet().xid();
    let good = lease_options(SERVER, 600);
    let cases: Vec<(Vec<u8>, Counter)> = vec![
        (
            to_client(&reply_bytes(
                MessageType::Offer,
                xid,
                OTHER_MAC,
                OFFERED,
                &good,
            )),
            |s| s.dropped_other_client,
        ),
        (
            to_client(&reply_bytes(
                MessageType::Offer,
                xid ^ 1,
                MAC,
                OFFERED,
                &good,
            )),
            |s| s.dropped_xid,
        ),
        (
            to_client(&reply_bytes(MessageType::Ack, xid, MAC, OFFERED, &good)),
            |s| s.dropped_unexpected,
        ),
        (
            to_client(&reply_bytes(
                MessageType::Offer,
                xid,
                MAC,
                Ipv4Addr::BROADCAST,
                &good,
            )),
            |s| s.dropped_unusable,
        ),
        (
            to_client(&reply_bytes(
                MessageType::Offer,
                xid,
                MAC,
                OFFERED,
                &good[1..],
            )),
            |s| s.dropped_unusable,
        ),
        (to_client(&[0u8; 100]), |s| s.dropped_malformed),
        (
            {
                let mut f = to_client(&reply_bytes(MessageType::Offer, xid, MAC, OFFERED, &good));
                f[14 + 8] ^= 1;
                f
            },
            |s| s.dropped_frame,
        ),
    ];
    for (frame, counter) in cases {
        let before = client.stats();
        assert_eq!(client.handle_frame(S, &frame), Handled::Consumed);
        assert_eq!(counter(&client.stats()), counter(&before) + 1);
        assert_eq!(outcomes(&client.stats()), outcomes(&before) + 1);
        assert_eq!(client.state(), State::Selecting);
    }
    // An ACK from another server than the one requested.
    let offer = reply_bytes(MessageType::Offer, xid, MAC, OFFERED, &good);
    client.handle_frame(S, &to_client(&offer));
    client.poll(S).unwrap();
    let other = reply_bytes(
        MessageType::Ack,
        xid,
        MAC,
        OFFERED,
        &lease_options(OTHER_SERVER, 600),
    );
    client.handle_frame(S, &to_client(&other));
    assert_eq!(client.stats().dropped_wrong_server, 1);
    assert_eq!(client.state(), State::Requesting);
    // An ACK whose lease is too short to use.
    let short = reply_bytes(
        MessageType::Ack,
        xid,
        MAC,
        OFFERED,
        &lease_options(SERVER, MIN_LEASE_SECS - 1),
    );
    client.handle_frame(S, &to_client(&short));
    assert_eq!(client.stats().dropped_unusable, 3);
    assert_eq!(client.state(), State::Requesting);
    // Frames for others pass untouched.
    let tcp = {
        let mut f = to_client(&offer);
        f[14 + 9] = 6;
        f
    };
    assert_eq!(client.handle_frame(S, &tcp), Handled::NotDhcp);
    assert_eq!(client.handle_frame(S, &[0u8; 10]), Handled::NotDhcp);
    // Bound: even a well-formed duplicate ACK is unexpected.
    let (mut bound, request) = bound_client(&good);
    let dup = reply_bytes(
        MessageType::Ack,
        request.packet().xid(),
        MAC,
        OFFERED,
        &good,
    );
    bound.handle_frame(S, &to_client(&dup));
    assert_eq!(bound.stats().dropped_unexpected, 1);
    assert_eq!(bound.stats().acks, 1);
}

/// Arbitrary and mutated frames in every state: never a panic, every
/// datagram to the client port moves exactly one counter, the lease's
/// times stay ordered.
#[test]
fn arbitrary_frames_never_panic_and_are_all_counted() {
    let mut rng = 0x1234_5678_9abc_def0u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for round in 0..400 {
        let mut client = Client::new(MAC, round);
        let mut now = 0u64;
        for _ in 0..40 {
            now += next() % (600 * S);
            let _ = client.poll(now);
            let xid = client.xid();
            let kind =
                [MessageType::Offer, MessageType::Ack, MessageType::Nak][(next() % 3) as usize];
            let lease = (next() % 5000) as u32;
            let mut payload = reply_bytes(kind, xid, MAC, OFFERED, &lease_options(SERVER, lease));
            let flips = next() % 4;
            for _ in 0..flips {
                let at = (next() as usize) % payload.len();
                payload[at] = next() as u8;
            }
            if next() % 5 == 0 {
                payload.truncate((next() as usize) % payload.len());
            }
            let frame = to_client(&payload);
            let before = outcomes(&client.stats());
            if client.handle_frame(now, &frame) == Handled::Consumed {
                assert_eq!(outcomes(&client.stats()), before + 1);
            }
            if let Some(l) = client.lease() {
                if let (Some(t1), Some(t2), Some(end)) =
                    (l.renew_at_ns, l.rebind_at_ns, l.expires_at_ns)
                {
                    assert!(t1 <= t2 && t2 <= end);
                }
            }
            while client.take_event().is_some() {}
        }
        // Raw noise.
        let len = (next() % 400) as usize;
        let noise: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let _ = client.handle_frame(now, &noise);
    }
}
