//! The sender of the remote syslog (`syslog=` on the command line): takes
//! the messages the kernel's logger queued (`moat_syslog::RemoteLog`) and
//! sends them with smoltcp, one UDP datagram each or as octet-counted
//! frames on a TCP connection that it reopens, a second apart, whenever it
//! breaks. It never waits: what the sockets cannot take now stays queued
//! (and the queue drops and counts when it is full).

use alloc::vec;
use kernel::logger::RemoteLog;
use moat_syslog::{Timestamp, Transport};
use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::socket::{tcp, udp};
use smoltcp::wire::{IpAddress, IpEndpoint};

/// The first local port of the TCP connections (the next one each time, so
/// that a new connection is never taken for the old one).
const FIRST_PORT: u16 = 50_514;
/// The local UDP port.
const UDP_PORT: u16 = 49_514;
/// Nanoseconds between two connection attempts.
const RETRY_NS: u64 = 1_000_000_000;

/// The remote log's sockets and connection state.
pub struct Sender {
    udp: SocketHandle,
    tcp: SocketHandle,
    /// The next local port for a TCP connection.
    port: u16,
    /// When the next connection attempt may start.
    retry_at: u64,
    /// Whether a connection was started (and not yet found broken).
    connecting: bool,
    /// Datagrams the UDP socket refused (too big or no buffer).
    pub lost: u64,
    /// TCP connections opened.
    pub connects: u64,
}

/// The smoltcp endpoint of a collector; None for IPv6, which netdemo's
/// stack does not speak (its messages then stay queued and are dropped
/// and counted as for an unreachable collector).
fn endpoint(addr: core::net::SocketAddr) -> Option<IpEndpoint> {
    match addr {
        core::net::SocketAddr::V4(v4) => {
            Some(IpEndpoint::new(IpAddress::Ipv4(*v4.ip()), v4.port()))
        }
        core::net::SocketAddr::V6(_) => None,
    }
}

impl Sender {
    /// Adds the sender's sockets to `sockets`.
    pub fn new(sockets: &mut SocketSet<'static>) -> Self {
        let mut u = udp::Socket::new(
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 2], vec![0; 1600]),
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 16 * 1024]),
        );
        // Only fails for port 0 or a bound socket, neither possible here.
        let _ = u.bind(UDP_PORT);
        let udp = sockets.add(u);
        let tcp = sockets.add(tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 1024]),
            tcp::SocketBuffer::new(vec![0; 16 * 1024]),
        ));
        Sender {
            udp,
            tcp,
            port: FIRST_PORT,
            retry_at: 0,
            connecting: false,
            lost: 0,
            connects: 0,
        }
    }

    /// Moves what is queued in `log` into the sockets (call after every
    /// interface poll). `time` stamps a drop notice.
    pub fn run(
        &mut self,
        iface: &mut Interface,
        sockets: &mut SocketSet<'static>,
        log: &mut RemoteLog,
        now_ns: u64,
        time: Option<Timestamp>,
    ) {
        let collector = log.collector();
        let Some(to) = endpoint(collector.addr) else {
            return;
        };
        match collector.transport {
            Transport::Udp => {
                let s = sockets.get_mut::<udp::Socket>(self.udp);
                while s.can_send() {
                    let Some(m) = log.next_datagram(time) else {
                        break;
                    };
                    if s.send_slice(&m, to).is_err() {
                        self.lost += 1;
                    }
                }
            }
            Transport::Tcp => {
                let s = sockets.get_mut::<tcp::Socket>(self.tcp);
                // A connection that closed, was refused, reset or closed by
                // the collector: the frame in flight restarts on the next.
                if self.connecting && (!s.is_open() || s.state() == tcp::State::CloseWait) {
                    s.abort();
                    log.stream_reset();
                    self.connecting = false;
                    self.retry_at = now_ns + RETRY_NS;
                }
                if !self.connecting && !s.is_open() && now_ns >= self.retry_at {
                    self.port = if self.port == u16::MAX {
                        FIRST_PORT
                    } else {
                        self.port + 1
                    };
                    if s.connect(iface.context(), to, self.port).is_ok() {
                        self.connecting = true;
                        self.connects += 1;
                    } else {
                        self.retry_at = now_ns + RETRY_NS;
                    }
                }
                while s.may_send() && s.can_send() {
                    let pending = log.stream_pending(time);
                    if pending.is_empty() {
                        break;
                    }
                    match s.send_slice(pending) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => log.stream_sent(n),
                    }
                }
            }
        }
    }
}
