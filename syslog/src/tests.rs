use super::*;
use core::net::Ipv4Addr;
use log::Level;
use proptest::prelude::*;

fn collector() -> Collector {
    Collector::parse("udp:192.0.2.1").unwrap()
}

fn origin() -> Origin {
    Origin::new("fw-1", "firewall", "7")
}

#[test]
fn collectors_parse() {
    assert_eq!(
        Collector::parse("udp:10.137.0.1").unwrap(),
        Collector {
            transport: Transport::Udp,
            addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 137, 0, 1)), 514),
        }
    );
    let c = Collector::parse("tcp:192.0.2.7:601").unwrap();
    assert_eq!(c.transport, Transport::Tcp);
    assert_eq!(c.addr.port(), 601);
    let c = Collector::parse("tcp:[2001:db8::1]:6514").unwrap();
    assert_eq!(c.addr, "[2001:db8::1]:6514".parse().unwrap());
    let c = Collector::parse("udp:[fd00::2]").unwrap();
    assert_eq!(c.addr, "[fd00::2]:514".parse().unwrap());
}

#[test]
fn bad_collectors_are_typed_errors() {
    use CollectorError::*;
    for (s, e) in [
        ("", Transport),
        ("10.0.0.1", Transport),
        ("tls:10.0.0.1", Transport),
        ("udp:", Address),
        ("udp:10.0.0", Address),
        ("udp:host.example", Address),
        ("udp:2001:db8::1", Address),
        ("tcp:[2001:db8::1", Address),
        ("tcp:[nonsense]:514", Address),
        ("udp:10.0.0.1:", Port),
        ("udp:10.0.0.1:0", Port),
        ("udp:10.0.0.1:65536", Port),
        ("udp:10.0.0.1:51x", Port),
        ("tcp:[::1]514", Port),
    ] {
        assert_eq!(Collector::parse(s), Err(e), "{s:?}");
    }
}

#[test]
fn timestamps_are_rfc3339_utc() {
    for (secs, micros, want) in [
        (0, 0, "1970-01-01T00:00:00.000000Z"),
        (951_782_400, 5, "2000-02-29T00:00:00.000005Z"),
        (1_796_687_101, 123_456, "2026-12-07T23:45:01.123456Z"),
        (4_102_444_799, 999_999, "2099-12-31T23:59:59.999999Z"),
        (253_402_300_799, 2_000_000, "9999-12-31T23:59:59.999999Z"),
    ] {
        let t = Timestamp {
            unix_secs: secs,
            micros,
        };
        assert_eq!(format!("{t}"), want);
    }
}

#[test]
fn a_message_has_every_rfc5424_field() {
    let t = Timestamp {
        unix_secs: 1_796_687_101,
        micros: 42,
    };
    let (m, cut) = format_message(
        &origin(),
        Severity::Warning,
        Some(t),
        "netvm::runtime",
        "uplink down\n",
        1024,
    );
    assert!(!cut);
    // daemon (3) * 8 + warning (4) = 28.
    assert_eq!(
        core::str::from_utf8(&m).unwrap(),
        "<28>1 2026-12-07T23:45:01.000042Z fw-1 firewall 7 netvm::runtime - uplink down"
    );
    let (m, _) = format_message(&origin(), Severity::Error, None, "", "x", 1024);
    assert_eq!(
        core::str::from_utf8(&m).unwrap(),
        "<27>1 - fw-1 firewall 7 - - x"
    );
}

#[test]
fn header_fields_are_printable_ascii_and_bounded() {
    assert_eq!(header_field("", 10), "-");
    assert_eq!(header_field("a b\u{e9}c", 10), "a_b_c");
    assert_eq!(header_field("abcdef", 3), "abc");
    let o = Origin::new("my host", "", "\u{1}");
    let (m, _) = format_message(&o, Severity::Debug, None, "t", "x", 1024);
    assert_eq!(
        core::str::from_utf8(&m).unwrap(),
        "<31>1 - my_host - _ t - x"
    );
}

#[test]
fn long_texts_are_cut_at_a_character_boundary() {
    let text = "\u{e9}".repeat(600); // 1200 bytes
    let (m, cut) = format_message(&origin(), Severity::Informational, None, "t", &text, 100);
    assert!(cut);
    assert!(m.len() <= 100 && m.len() >= 99, "{}", m.len());
    assert!(core::str::from_utf8(&m).is_ok());
}

#[test]
fn the_queue_is_bounded_by_count_and_bytes() {
    let mut q = Queue::new(3, 10);
    assert!(q.push(vec![1; 4]).is_ok());
    assert!(q.push(vec![2; 4]).is_ok());
    assert_eq!(q.push(vec![3; 4]), Err(vec![3; 4])); // 12 bytes > 10
    assert!(q.push(vec![4; 2]).is_ok());
    assert_eq!(q.push(vec![5]), Err(vec![5])); // 4 messages > 3
    assert_eq!((q.len(), q.bytes()), (3, 10));
    assert_eq!(q.pop(), Some(vec![1; 4]));
    assert_eq!(q.bytes(), 6);
    assert!(q.push(vec![6]).is_ok());
    assert_eq!(q.pop(), Some(vec![2; 4]));
    assert_eq!(q.pop(), Some(vec![4; 2]));
    assert_eq!(q.pop(), Some(vec![6]));
    assert_eq!(q.pop(), None);
    assert!(q.is_empty());
}

#[test]
fn records_below_the_level_are_not_queued() {
    let mut r = RemoteLog::new(collector(), LevelFilter::Warn, origin(), 8, 4096);
    assert!(!r.log(Level::Info, None, "t", "info"));
    assert!(!r.log(Level::Debug, None, "t", "debug"));
    assert!(r.log(Level::Warn, None, "t", "warn"));
    assert!(r.log(Level::Error, None, "t", "error"));
    let s = r.stats();
    assert_eq!((s.queued, s.filtered, s.dropped), (2, 2, 0));
    let first = r.next_datagram(None).unwrap();
    assert!(first.ends_with(b" warn"));
    assert!(first.starts_with(b"<28>1 "));
    assert!(r.next_datagram(None).unwrap().ends_with(b" error"));
    assert_eq!(r.next_datagram(None), None);
    assert_eq!(r.stats().sent, 2);
}

#[test]
fn a_full_queue_drops_counts_and_reports_once() {
    let mut r = RemoteLog::new(collector(), LevelFilter::Info, origin(), 2, 4096);
    for i in 0..5 {
        r.log(Level::Info, None, "t", &format!("m{i}"));
    }
    let s = r.stats();
    assert_eq!((s.queued, s.dropped, s.dropped_reported), (2, 3, 0));
    assert!(r.next_datagram(None).unwrap().ends_with(b" m0"));
    assert!(r.next_datagram(None).unwrap().ends_with(b" m1"));
    let notice = r.next_datagram(None).unwrap();
    let notice = core::str::from_utf8(&notice).unwrap();
    assert!(
        notice.starts_with("<28>1 - fw-1 firewall 7 syslog - 3 log messages dropped"),
        "{notice}"
    );
    assert_eq!(r.next_datagram(None), None);
    assert_eq!(r.stats().dropped_reported, 3);
    // Later drops are reported again, and only those.
    for i in 0..3 {
        r.log(Level::Info, None, "t", &format!("n{i}"));
    }
    assert!(r.next_datagram(None).unwrap().ends_with(b" n0"));
    assert!(r.next_datagram(None).unwrap().ends_with(b" n1"));
    let notice = r.next_datagram(None).unwrap();
    assert!(core::str::from_utf8(&notice)
        .unwrap()
        .contains(" 1 log messages dropped"));
    assert_eq!(r.stats().sent, 6);
}

#[test]
fn tcp_frames_are_octet_counted_and_survive_partial_writes() {
    let c = Collector::parse("tcp:192.0.2.1:601").unwrap();
    let mut r = RemoteLog::new(c, LevelFilter::Info, origin(), 8, 4096);
    assert!(r.stream_pending(None).is_empty());
    r.log(Level::Info, None, "t", "hello");
    r.log(Level::Info, None, "t", "world");
    let first = r.stream_pending(None).to_vec();
    let msg = b"<30>1 - fw-1 firewall 7 t - hello";
    let mut want = format!("{} ", msg.len()).into_bytes();
    want.extend_from_slice(msg);
    assert_eq!(first, want);
    // A partial write, then the connection breaks: the frame restarts.
    r.stream_sent(5);
    assert_eq!(r.stream_pending(None), &want[5..]);
    r.stream_reset();
    assert_eq!(r.stream_pending(None), &want[..]);
    assert_eq!(r.stats().resent, 1);
    // Written in two pieces on the new connection.
    r.stream_sent(10);
    r.stream_sent(want.len() - 10);
    assert_eq!(r.stats().sent, 1);
    let second = r.stream_pending(None).to_vec();
    assert!(second.ends_with(b" world"));
    assert!(second.starts_with(b"33 "));
    r.stream_sent(second.len());
    assert!(r.stream_pending(None).is_empty());
    assert_eq!(r.stats().sent, 2);
    // A reset with nothing in flight resends nothing.
    r.stream_reset();
    assert_eq!(r.stats().resent, 1);
}

/// Splits an octet-counted stream back into its messages.
fn deframe(mut stream: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !stream.is_empty() {
        let sp = stream.iter().position(|&b| b == b' ').unwrap();
        let len: usize = core::str::from_utf8(&stream[..sp])
            .unwrap()
            .parse()
            .unwrap();
        out.push(stream[sp + 1..sp + 1 + len].to_vec());
        stream = &stream[sp + 1 + len..];
    }
    out
}

proptest! {
    #[test]
    fn messages_stay_bounded_utf8(text in ".{0,600}", max in 40usize..700) {
        let (m, cut) = format_message(&origin(), Severity::Notice, None, "target", &text, max);
        let s = core::str::from_utf8(&m).unwrap();
        prop_assert!(m.len() <= max.max(s.find(" - ").unwrap() + 3));
        prop_assert_eq!(cut, !s.ends_with(text.trim_end_matches(['\n', '\r'])));
    }

    #[test]
    fn the_stream_carries_every_queued_message_in_order(
        texts in proptest::collection::vec("[a-z \u{e9}]{0,40}", 0..20),
        chunk in 1usize..50,
    ) {
        let c = Collector::parse("tcp:192.0.2.1").unwrap();
        let mut r = RemoteLog::new(c, LevelFilter::Trace, origin(), 64, 1 << 20);
        let mut want = Vec::new();
        for t in &texts {
            r.log(Level::Info, None, "t", t);
            want.push(format_message(&origin(), Severity::Informational, None, "t", t, 1024).0);
        }
        let mut stream = Vec::new();
        loop {
            let p = r.stream_pending(None);
            if p.is_empty() { break; }
            let n = p.len().min(chunk);
            stream.extend_from_slice(&p[..n]);
            r.stream_sent(n);
        }
        prop_assert_eq!(deframe(&stream), want);
        prop_assert_eq!(r.stats().sent, texts.len() as u64);
    }
}
