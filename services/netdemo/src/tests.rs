//! The services over smoltcp's loopback device: real TCP and UDP, no Xen.

use alloc::vec;
use alloc::vec::Vec;
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Loopback, Medium, TxToken};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::Instant;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpEndpoint};

use crate::apps::{self, Apps, Report};
use netdemo::stream::{Crc32, Pattern};

/// Loopback that can lose every frame sent while `drop` is set.
struct Lossy {
    inner: Loopback,
    drop: bool,
}

struct LossyTx<'a> {
    inner: <Loopback as Device>::TxToken<'a>,
    drop: bool,
}

impl TxToken for LossyTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        if self.drop {
            f(&mut vec![0; len])
        } else {
            self.inner.consume(len, f)
        }
    }
}

impl Device for Lossy {
    type RxToken<'a> = <Loopback as Device>::RxToken<'a>;
    type TxToken<'a> = LossyTx<'a>;

    fn receive(&mut self, t: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let drop = self.drop;
        self.inner
            .receive(t)
            .map(|(rx, inner)| (rx, LossyTx { inner, drop }))
    }

    fn transmit(&mut self, t: Instant) -> Option<Self::TxToken<'_>> {
        let drop = self.drop;
        self.inner.transmit(t).map(|inner| LossyTx { inner, drop })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.inner.capabilities()
    }
}

struct Net {
    dev: Lossy,
    iface: Interface,
    sockets: SocketSet<'static>,
    apps: Apps,
    now_ms: i64,
    reports: Vec<Report>,
}

impl Net {
    fn new() -> Self {
        let mut dev = Lossy {
            inner: Loopback::new(Medium::Ip),
            drop: false,
        };
        let mut iface = Interface::new(Config::new(HardwareAddress::Ip), &mut dev, Instant::ZERO);
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::v4(127, 0, 0, 1), 8)).unwrap();
        });
        let mut sockets = SocketSet::new(Vec::new());
        let apps = Apps::new(&mut sockets, 64 * 1024);
        Self {
            dev,
            iface,
            sockets,
            apps,
            now_ms: 0,
            reports: Vec::new(),
        }
    }

    fn step(&mut self) {
        self.now_ms += 1;
        let now = Instant::from_millis(self.now_ms);
        self.iface.poll(now, &mut self.dev, &mut self.sockets);
        let reports = &mut self.reports;
        self.apps.run(
            &mut self.sockets,
            self.now_ms as u64 * 1_000_000,
            &mut |r| reports.push(r),
        );
    }

    fn client(&mut self, port: u16, local: u16) -> smoltcp::iface::SocketHandle {
        let s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 64 * 1024]),
            tcp::SocketBuffer::new(vec![0; 64 * 1024]),
        );
        let h = self.sockets.add(s);
        let cx = self.iface.context();
        self.sockets
            .get_mut::<tcp::Socket>(h)
            .connect(cx, (IpAddress::v4(127, 0, 0, 1), port), local)
            .unwrap();
        h
    }
}

#[test]
fn sink_reports_the_crc_of_what_was_sent() {
    let mut net = Net::new();
    let h = net.client(apps::SINK_PORT, 40000);
    let mut data = vec![0u8; 300_000];
    Pattern::new(5).fill(&mut data);
    let mut sent = 0;
    for _ in 0..20_000 {
        net.step();
        let s = net.sockets.get_mut::<tcp::Socket>(h);
        if s.can_send() && sent < data.len() {
            sent += s.send_slice(&data[sent..]).unwrap();
            if sent == data.len() {
                s.close();
            }
        }
        if !net.reports.is_empty() {
            break;
        }
    }
    let mut expect = Crc32::new();
    expect.update(&data);
    match net.reports.as_slice() {
        [Report::Sink { bytes, crc32, .. }] => {
            assert_eq!(*bytes, data.len() as u64);
            assert_eq!(*crc32, expect.value());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn source_sends_the_pattern_it_reports() {
    let mut net = Net::new();
    fetch_from_source(&mut net, 40001, 200_001);
    // Right away again: the first socket lingers in TimeWait.
    fetch_from_source(&mut net, 40011, 5_000);
}

fn fetch_from_source(net: &mut Net, local_port: u16, want: u64) {
    net.reports.clear();
    let h = net.client(apps::SOURCE_PORT, local_port);
    let mut asked = false;
    let mut got = Vec::new();
    for _ in 0..20_000 {
        net.step();
        let s = net.sockets.get_mut::<tcp::Socket>(h);
        if !asked && s.can_send() {
            s.send_slice(format!("{want}\n").as_bytes()).unwrap();
            asked = true;
        }
        while s.can_recv() {
            s.recv(|b| {
                got.extend_from_slice(b);
                (b.len(), ())
            })
            .unwrap();
        }
        if !s.may_recv() && asked && got.len() as u64 == want {
            break;
        }
    }
    // Close our side, as a real client does after EOF.
    net.sockets.get_mut::<tcp::Socket>(h).close();
    for _ in 0..50 {
        net.step();
    }
    let mut expect = vec![0u8; want as usize];
    Pattern::new(apps::SOURCE_SEED).fill(&mut expect);
    assert_eq!(got.len(), expect.len());
    assert!(got == expect, "source bytes differ from the pattern");
    let mut sum = Crc32::new();
    sum.update(&expect);
    assert!(net.reports.iter().any(|r| matches!(r,
        Report::Source { bytes, crc32, .. } if *bytes == want && *crc32 == sum.value())));
}

/// The reader's window closes, the ACK that reopens it is lost, and the
/// source must still finish: smoltcp 0.12 has no zero-window probe, so
/// without netdemo's keep-alive this transfer stalls for good.
#[test]
fn source_recovers_from_a_lost_window_update() {
    let mut net = Net::new();
    let want: u64 = 1_000_000;
    let h = net.client(apps::SOURCE_PORT, 40021);
    let mut asked = false;
    // Ask, then do not read until our 64 KiB window is full.
    for _ in 0..20_000 {
        net.step();
        let s = net.sockets.get_mut::<tcp::Socket>(h);
        if !asked && s.can_send() {
            s.send_slice(format!("{want}\n").as_bytes()).unwrap();
            asked = true;
        }
        if s.recv_queue() == s.recv_capacity() {
            break;
        }
    }
    for _ in 0..50 {
        net.step();
    }
    // Read it all while every frame is lost: the window update too.
    let mut got = 0u64;
    net.dev.drop = true;
    let s = net.sockets.get_mut::<tcp::Socket>(h);
    while s.can_recv() {
        got += s.recv(|b| (b.len(), b.len())).unwrap() as u64;
    }
    assert!(got >= 64 * 1024 - 1, "the window was full: {got}");
    for _ in 0..100 {
        net.step();
    }
    net.dev.drop = false;
    // The link is back; the rest must come within a few seconds.
    let mut ms = 0;
    while ms < 5_000 && got < want {
        net.step();
        ms += 1;
        let s = net.sockets.get_mut::<tcp::Socket>(h);
        while s.can_recv() {
            got += s.recv(|b| (b.len(), b.len())).unwrap() as u64;
        }
    }
    assert_eq!(got, want, "the source stalled after the lost window update");
}

#[test]
fn source_rejects_a_request_that_is_not_a_count() {
    let mut net = Net::new();
    let h = net.client(apps::SOURCE_PORT, 40002);
    let mut asked = false;
    for _ in 0..2000 {
        net.step();
        let s = net.sockets.get_mut::<tcp::Socket>(h);
        if !asked && s.can_send() {
            s.send_slice(b"lots please\n").unwrap();
            asked = true;
        }
        if net.reports.contains(&Report::BadSourceRequest) {
            return;
        }
    }
    panic!("no BadSourceRequest: {:?}", net.reports);
}

#[test]
fn tcp_and_udp_echo() {
    let mut net = Net::new();
    let h = net.client(apps::ECHO_PORT, 40003);
    let mut u = udp::Socket::new(
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 4096]),
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 4096]),
    );
    u.bind(41000).unwrap();
    let uh = net.sockets.add(u);
    let server = IpEndpoint::new(IpAddress::v4(127, 0, 0, 1), apps::ECHO_PORT);
    net.sockets
        .get_mut::<udp::Socket>(uh)
        .send_slice(b"ping over udp", server)
        .unwrap();
    let msg: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let mut sent = false;
    let mut back = Vec::new();
    let mut udp_back = None;
    for _ in 0..5000 {
        net.step();
        let s = net.sockets.get_mut::<tcp::Socket>(h);
        if !sent && s.can_send() {
            assert_eq!(s.send_slice(&msg).unwrap(), msg.len());
            sent = true;
        }
        while s.can_recv() {
            s.recv(|b| {
                back.extend_from_slice(b);
                (b.len(), ())
            })
            .unwrap();
        }
        if let Ok((d, _)) = net.sockets.get_mut::<udp::Socket>(uh).recv() {
            udp_back = Some(d.to_vec());
        }
        if back.len() == msg.len() && udp_back.is_some() {
            break;
        }
    }
    assert_eq!(back, msg);
    assert_eq!(udp_back.as_deref(), Some(&b"ping over udp"[..]));
    assert_eq!(net.apps.counters().udp_echoed, 1);
    assert_eq!(net.apps.counters().tcp_echoed, msg.len() as u64);
}

/// A minimal iperf3 client over the loopback, speaking the protocol of
/// `netdemo::iperf3` (whose own tests and a test against the real iperf3
/// cover the protocol): moves `bytes` to netdemo, or from it with
/// `reverse`, and returns what the client received and netdemo's reports.
fn iperf3_client(net: &mut Net, local: u16, reverse: bool, bytes: usize) -> (usize, Vec<u8>) {
    use netdemo::iperf3::state;
    const COOKIE: &[u8; 37] = b"0123456789abcdefghijklmnopqrstuvwxyz\0";
    net.reports.clear();
    let ctl = net.client(apps::IPERF_PORT, local);
    let mut data_h = None;
    let mut got: Vec<u8> = Vec::new();
    let mut phase = 0;
    let mut moved = 0usize;
    let params = format!("{{\"tcp\":true,\"time\":1,\"parallel\":1,\"reverse\":{reverse}}}");
    let mut message = (params.len() as u32).to_be_bytes().to_vec();
    message.extend_from_slice(params.as_bytes());
    let block = vec![0x5au8; 8192];
    for _ in 0..200_000 {
        net.step();
        let s = net.sockets.get_mut::<tcp::Socket>(ctl);
        while s.can_recv() {
            let _ = s.recv(|b| {
                got.extend_from_slice(b);
                (b.len(), ())
            });
        }
        match phase {
            0 if s.can_send() => {
                s.send_slice(COOKIE).unwrap();
                phase = 1;
            }
            1 if got == [state::PARAM_EXCHANGE] => {
                s.send_slice(&message).unwrap();
                got.clear();
                phase = 2;
            }
            2 if got == [state::CREATE_STREAMS] => {
                got.clear();
                let h = net.client(apps::IPERF_PORT, local + 1);
                data_h = Some(h);
                phase = 3;
            }
            3 => {
                let d = net.sockets.get_mut::<tcp::Socket>(data_h.unwrap());
                if d.can_send() && d.send_queue() == 0 && got.is_empty() {
                    d.send_slice(COOKIE).unwrap();
                    phase = 4;
                }
            }
            4 if got == [state::TEST_START, state::TEST_RUNNING] => {
                got.clear();
                phase = 5;
            }
            5 => {
                let d = net.sockets.get_mut::<tcp::Socket>(data_h.unwrap());
                if reverse {
                    while d.can_recv() {
                        moved += d.recv(|b| (b.len(), b.len())).unwrap();
                    }
                } else if d.can_send() && moved < bytes {
                    let n = (bytes - moved).min(block.len());
                    moved += d.send_slice(&block[..n]).unwrap();
                }
                // All sent and acknowledged, or enough received.
                let done = if reverse {
                    moved >= bytes
                } else {
                    moved == bytes && d.send_queue() == 0
                };
                if done {
                    let s = net.sockets.get_mut::<tcp::Socket>(ctl);
                    s.send_slice(&[state::TEST_END]).unwrap();
                    phase = 6;
                }
            }
            6 if got == [state::EXCHANGE_RESULTS] => {
                got.clear();
                let r = b"{\"cpu_util_total\":0,\"streams\":[]}";
                s.send_slice(&(r.len() as u32).to_be_bytes()).unwrap();
                s.send_slice(r).unwrap();
                phase = 7;
            }
            7 if got.last() == Some(&state::DISPLAY_RESULTS) && got.len() > 4 => {
                let len = u32::from_be_bytes([got[0], got[1], got[2], got[3]]) as usize;
                if got.len() == 4 + len + 1 {
                    s.send_slice(&[state::IPERF_DONE]).unwrap();
                    phase = 8;
                }
            }
            8 if !net.reports.is_empty() => return (moved, got[4..got.len() - 1].to_vec()),
            _ => {}
        }
    }
    panic!(
        "iperf3 test stalled in phase {phase}; reports {:?}",
        net.reports
    );
}

#[test]
fn iperf3_server_both_ways_and_again() {
    let mut net = Net::new();
    let (sent, results) = iperf3_client(&mut net, 41000, false, 300_000);
    assert_eq!(sent, 300_000);
    match net.reports.as_slice() {
        [Report::Iperf3 {
            bytes,
            reverse: false,
            completed: true,
            ..
        }] => assert_eq!(*bytes, 300_000),
        other => panic!("{other:?}"),
    }
    let json = netdemo::json::parse(&results).unwrap();
    let Some(netdemo::json::Value::Array(streams)) = json.get("streams") else {
        panic!("{json:?}")
    };
    assert_eq!(
        streams[0].get("bytes").and_then(|b| b.as_u64()),
        Some(300_000)
    );

    // Reverse, right after: the control socket listens again.
    for _ in 0..100 {
        net.step();
    }
    let (received, results) = iperf3_client(&mut net, 41010, true, 200_000);
    assert!(received >= 200_000);
    match net.reports.as_slice() {
        [Report::Iperf3 {
            bytes,
            reverse: true,
            completed: true,
            ..
        }] => {
            // We report what we queued; the client read at least that
            // much by TEST_END minus what was still in flight.
            assert!(*bytes >= received as u64, "{bytes} < {received}");
            let json = netdemo::json::parse(&results).unwrap();
            let Some(netdemo::json::Value::Array(streams)) = json.get("streams") else {
                panic!("{json:?}")
            };
            assert_eq!(
                streams[0].get("bytes").and_then(|b| b.as_u64()),
                Some(*bytes)
            );
        }
        other => panic!("{other:?}"),
    }
}

mod remote_log {
    use super::*;
    use crate::remote_log::Sender;
    use moat_syslog::{Collector, LevelFilter, Origin, RemoteLog};

    fn remote(collector: &str) -> RemoteLog {
        RemoteLog::new(
            Collector::parse(collector).unwrap(),
            LevelFilter::Info,
            Origin::new("-", "netdemo", "-"),
            16,
            16 * 1024,
        )
    }

    /// Splits an octet-counted stream into its messages.
    fn deframe(mut stream: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(sp) = stream.iter().position(|&b| b == b' ') {
            let len: usize = core::str::from_utf8(&stream[..sp])
                .unwrap()
                .parse()
                .unwrap();
            out.push(stream[sp + 1..sp + 1 + len].to_vec());
            stream = &stream[sp + 1 + len..];
        }
        out
    }

    fn listener(net: &mut Net, port: u16) -> smoltcp::iface::SocketHandle {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 16 * 1024]),
            tcp::SocketBuffer::new(vec![0; 1024]),
        );
        s.listen(port).unwrap();
        net.sockets.add(s)
    }

    fn step(net: &mut Net, sender: &mut Sender, log: &mut RemoteLog) {
        net.step();
        let now = net.now_ms as u64 * 1_000_000;
        sender.run(&mut net.iface, &mut net.sockets, log, now, None);
    }

    #[test]
    fn tcp_frames_reach_the_collector_and_survive_its_restart() {
        let mut net = Net::new();
        let mut sender = Sender::new(&mut net.sockets);
        let mut log = remote("tcp:127.0.0.1:6514");
        let l = listener(&mut net, 6514);
        for i in 0..3 {
            log.log(log::Level::Warn, None, "t", &alloc::format!("first {i}"));
        }
        let mut got = Vec::new();
        for _ in 0..2000 {
            step(&mut net, &mut sender, &mut log);
            let s = net.sockets.get_mut::<tcp::Socket>(l);
            while s.can_recv() {
                s.recv(|b| {
                    got.extend_from_slice(b);
                    (b.len(), ())
                })
                .unwrap();
            }
            if deframe(&got).len() == 3 {
                break;
            }
        }
        let msgs = deframe(&got);
        assert_eq!(msgs.len(), 3);
        assert_eq!(msgs[2], b"<28>1 - - netdemo - t - first 2".to_vec());
        assert_eq!(sender.connects, 1);
        // The collector goes away (its connection reset); messages logged
        // meanwhile arrive on the next connection, to a new listener.
        net.sockets.get_mut::<tcp::Socket>(l).abort();
        for _ in 0..50 {
            step(&mut net, &mut sender, &mut log);
        }
        for i in 0..2 {
            log.log(log::Level::Error, None, "t", &alloc::format!("second {i}"));
        }
        let l2 = listener(&mut net, 6514);
        let mut got = Vec::new();
        for _ in 0..5000 {
            step(&mut net, &mut sender, &mut log);
            let s = net.sockets.get_mut::<tcp::Socket>(l2);
            while s.can_recv() {
                s.recv(|b| {
                    got.extend_from_slice(b);
                    (b.len(), ())
                })
                .unwrap();
            }
            if deframe(&got).len() == 2 {
                break;
            }
        }
        let msgs = deframe(&got);
        assert_eq!(msgs.len(), 2, "{:?}", core::str::from_utf8(&got));
        assert!(msgs[1].ends_with(b"second 1"));
        assert!(sender.connects >= 2);
        assert_eq!(log.stats().dropped, 0);
    }

    #[test]
    fn udp_datagrams_reach_the_collector() {
        let mut net = Net::new();
        let mut sender = Sender::new(&mut net.sockets);
        let mut log = remote("udp:127.0.0.1:5514");
        let mut c = udp::Socket::new(
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 8192]),
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 1], vec![0; 16]),
        );
        c.bind(5514).unwrap();
        let c = net.sockets.add(c);
        log.log(log::Level::Info, None, "netdemo", "netdemo: ready");
        log.log(log::Level::Debug, None, "netdemo", "below the level");
        let mut got = Vec::new();
        for _ in 0..100 {
            step(&mut net, &mut sender, &mut log);
            let s = net.sockets.get_mut::<udp::Socket>(c);
            while let Ok((m, _)) = s.recv() {
                got.push(m.to_vec());
            }
        }
        assert_eq!(
            got,
            vec![b"<30>1 - - netdemo - netdemo - netdemo: ready".to_vec()]
        );
        assert_eq!(log.stats().filtered, 1);
    }
}
