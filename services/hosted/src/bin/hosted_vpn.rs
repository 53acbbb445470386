//! The moat WireGuard VPN gateway as a Linux process over two TAP devices:
//! the clients' network and the uplink. It does its own Ethernet, ARP, IPv4
//! and UDP on both (see `hosted::link`), as the VM will over its virtual
//! NICs: the uplink is only an L2 link to it, and the only frames it ever
//! puts there are ARP and WireGuard datagrams built by `vpn::Gateway`.
//!
//! ```text
//! hosted-vpn --config wg0.conf --uplink TAP --uplink-ip 192.0.2.2/24
//!            --uplink-gateway 192.0.2.1 --clients TAP --client-gateway 10.138.0.1
//!            [--uplink-mac MAC] [--client-mac MAC] [--stats FILE] [--masquerade yes|no]
//! ```
//!
//! Clients are masqueraded as the tunnel's `Address` unless `--masquerade no`.
//!
//! The counters (gateway drops, link drops, tunnel statistics) are written
//! to FILE (one `name value` per line) whenever they change, and logged on
//! standard error every 10 s when they changed, and on every new handshake.
//! `ListenPort` in the configuration is the UDP port used on the uplink
//! (51820 when absent).
#![forbid(unsafe_code)]

use std::io::Read;
use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hosted::fair::{self, RecvTimeoutError};
use hosted::link::{parse_mac, ClientLink, Mac, Uplink};
use tun_tap::{Iface, Mode};
use vpn::{Gateway, GatewaySettings, Output};
use wireguard::config::Config;
use wireguard::{PeerId, Random};

/// How often the timers run.
const TICK: Duration = Duration::from_millis(100);
/// How often changed counters are logged.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// Largest frame read from a TAP device.
const MAX_FRAME: usize = 65536;
/// Frames waiting from one TAP device (its reader waits beyond; the
/// links are taken in turn, so one link's flood cannot hold the others up).
const PER_LINK_QUEUE: usize = 256;
/// Handshakes per second before cookies are demanded.
const HANDSHAKE_LOAD_LIMIT: u32 = 50;
/// The default port on the uplink.
const DEFAULT_PORT: u16 = 51820;

struct Args {
    config: String,
    uplink: String,
    uplink_ip: Ipv4Addr,
    uplink_prefix: u8,
    uplink_gateway: Ipv4Addr,
    uplink_mac: Mac,
    clients: String,
    client_gateway: Ipv4Addr,
    client_mac: Mac,
    stats: Option<String>,
    masquerade: bool,
}

const USAGE: &str = "usage: hosted-vpn --config WG.CONF --uplink TAP --uplink-ip ADDR/LEN \
--uplink-gateway ADDR --clients TAP --client-gateway ADDR [--uplink-mac MAC] \
[--client-mac MAC] [--stats FILE] [--masquerade yes|no]";

fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut get = std::collections::BTreeMap::new();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let known = [
            "--config",
            "--uplink",
            "--uplink-ip",
            "--uplink-gateway",
            "--uplink-mac",
            "--clients",
            "--client-gateway",
            "--client-mac",
            "--stats",
            "--masquerade",
        ];
        if !known.contains(&flag.as_str()) {
            return Err(format!("unknown option {flag}"));
        }
        get.insert(flag.as_str(), value.clone());
    }
    let need = |k: &str| get.get(k).cloned().ok_or(format!("missing {k}"));
    let addr = |k: &str| -> Result<Ipv4Addr, String> {
        need(k)?
            .parse()
            .map_err(|_| format!("{k}: not an IPv4 address"))
    };
    let mac = |k: &str, default: Mac| -> Result<Mac, String> {
        match get.get(k) {
            Some(s) => parse_mac(s).ok_or(format!("{k}: not a MAC address")),
            None => Ok(default),
        }
    };
    let ip_len = need("--uplink-ip")?;
    let (ip, len) = ip_len
        .split_once('/')
        .ok_or("--uplink-ip: expected ADDR/LEN")?;
    let uplink_prefix: u8 = len
        .parse()
        .ok()
        .filter(|l| *l <= 32)
        .ok_or("--uplink-ip: bad prefix length")?;
    Ok(Args {
        config: need("--config")?,
        uplink: need("--uplink")?,
        uplink_ip: ip.parse().map_err(|_| "--uplink-ip: bad address")?,
        uplink_prefix,
        uplink_gateway: addr("--uplink-gateway")?,
        uplink_mac: mac("--uplink-mac", [0x02, 0x6d, 0x6f, 0x61, 0x74, 0x76])?,
        clients: need("--clients")?,
        client_gateway: addr("--client-gateway")?,
        client_mac: mac("--client-mac", [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff])?,
        stats: get.get("--stats").cloned(),
        masquerade: match get.get("--masquerade").map(String::as_str) {
            None | Some("yes") => true,
            Some("no") => false,
            Some(_) => return Err("--masquerade: yes or no".into()),
        },
    })
}

/// The operating system's random numbers. A failed read ends the process:
/// continuing with bad randomness is not an option.
struct Urandom(std::fs::File);

impl Random for Urandom {
    fn fill(&mut self, buf: &mut [u8]) {
        if let Err(e) = self.0.read_exact(buf) {
            eprintln!("hosted-vpn: /dev/urandom: {e}");
            std::process::exit(1);
        }
    }
}

fn open_tap(name: &str) -> Result<Arc<Iface>, String> {
    Iface::without_packet_info(name, Mode::Tap)
        .map(Arc::new)
        .map_err(|e| format!("cannot open TAP device {name}: {e}"))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Link {
    Uplink,
    Clients,
}

/// Everything the process counts, as `name value` lines.
fn stats_text(gw: &Gateway, up: &Uplink, clients: &ClientLink) -> String {
    let mut s = String::new();
    let mut line = |name: &str, value: u64| s.push_str(&format!("{name} {value}\n"));
    let c = gw.counters();
    line("gw_client_malformed", c.client_malformed);
    line("gw_no_route_v4", c.no_route_v4);
    line("gw_no_route_v6", c.no_route_v6);
    line("gw_dns_no_server", c.dns_no_server);
    line("gw_tunnel_dropped", c.tunnel_dropped);
    line("gw_uplink_rejected", c.uplink_rejected);
    line("gw_no_endpoint", c.no_endpoint);
    line("gw_dns_redirected", c.dns_redirected);
    line("gw_mss_clamped", c.mss_clamped);
    line("gw_nat_unsupported", c.nat_unsupported);
    line("gw_nat_no_mapping", c.nat_no_mapping);
    line("gw_no_tunnel_address", c.no_tunnel_address);
    line("gw_cookie_replies", c.cookie_replies);
    if let Some(nat) = gw.nat() {
        line("gw_nat_mappings", nat.len() as u64);
        line("gw_nat_evicted", nat.evicted());
    }
    for i in 0..gw.device().peer_count() {
        if let Some(t) = gw.device().peer(PeerId(i)) {
            let st = t.stats();
            line(&format!("peer{i}_handshakes"), st.handshakes);
            line(&format!("peer{i}_tx_bytes"), st.tx_bytes);
            line(&format!("peer{i}_rx_bytes"), st.rx_bytes);
            line(&format!("peer{i}_dropped_packets"), st.dropped_packets);
            line(
                &format!("peer{i}_queued_packets"),
                t.queued_packets() as u64,
            );
        }
    }
    let u = up.counters();
    line("uplink_rx_datagrams", u.rx_datagrams);
    line("uplink_tx_datagrams", u.tx_datagrams);
    line("uplink_arp_replies", u.arp_replies);
    line("uplink_arp_requests", u.arp_requests);
    line("uplink_rx_not_ours", u.rx_not_ours);
    line("uplink_rx_not_wireguard", u.rx_not_wireguard);
    line("uplink_rx_malformed", u.rx_malformed);
    line("uplink_tx_no_ipv6", u.tx_no_ipv6);
    line("uplink_tx_unresolved", u.tx_unresolved);
    line("uplink_tx_too_big", u.tx_too_big);
    let k = clients.counters();
    line("clients_rx_packets", k.rx_packets);
    line("clients_tx_packets", k.tx_packets);
    line("clients_arp_replies", k.arp_replies);
    line("clients_rx_not_ours", k.rx_not_ours);
    line("clients_rx_malformed", k.rx_malformed);
    line("clients_tx_no_neighbour", k.tx_no_neighbour);
    s
}

fn handshakes(gw: &Gateway) -> u64 {
    (0..gw.device().peer_count())
        .filter_map(|i| gw.device().peer(PeerId(i)))
        .map(|t| t.stats().handshakes)
        .sum()
}

fn run(args: Args) -> Result<(), String> {
    let text =
        std::fs::read_to_string(&args.config).map_err(|e| format!("{}: {e}", args.config))?;
    let config = Config::parse(&text).map_err(|e| format!("{}: {e:?}", args.config))?;
    for (line, key) in &config.ignored {
        eprintln!("{}:{line}: {key} ignored", args.config);
    }
    let port = config.interface.listen_port.unwrap_or(DEFAULT_PORT);
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| format!("clock: {e}"))?;
    let mut gw = Gateway::new(
        &config,
        &GatewaySettings {
            wall_clock_at_zero: wall,
            handshake_load_limit: HANDSHAKE_LOAD_LIMIT,
            masquerade: args.masquerade,
        },
    )
    .map_err(|e| format!("{}: {e:?}", args.config))?;
    let mut rng =
        Urandom(std::fs::File::open("/dev/urandom").map_err(|e| format!("/dev/urandom: {e}"))?);
    let mut up = Uplink::new(
        args.uplink_mac,
        args.uplink_ip,
        args.uplink_prefix,
        args.uplink_gateway,
        port,
    );
    let mut clients = ClientLink::new(args.client_mac, args.client_gateway);

    let uplink_tap = open_tap(&args.uplink)?;
    let client_tap = open_tap(&args.clients)?;
    // One bounded queue per link, taken in turn (hosted::fair).
    let (senders, frames_rx) = fair::channel::<(Link, Vec<u8>)>(2, PER_LINK_QUEUE);
    for ((link, tap), tx) in [
        (Link::Uplink, uplink_tap.clone()),
        (Link::Clients, client_tap.clone()),
    ]
    .into_iter()
    .zip(senders)
    {
        thread::spawn(move || {
            let mut buf = vec![0u8; MAX_FRAME];
            loop {
                match tap.recv(&mut buf) {
                    Ok(len) => {
                        let frame = buf.get(..len).unwrap_or_default().to_vec();
                        if tx.send((link, frame)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        eprintln!("{}: read failed: {e}", tap.name());
                        return;
                    }
                }
            }
        });
    }

    let start = Instant::now();
    eprintln!(
        "hosted-vpn running: uplink {} ({}/{} port {port}, gateway {}), clients {} ({}), {} peers",
        args.uplink,
        args.uplink_ip,
        args.uplink_prefix,
        args.uplink_gateway,
        args.clients,
        args.client_gateway,
        gw.device().peer_count()
    );
    let mut outputs = Vec::new();
    let mut up_frames = Vec::new();
    let mut client_frames = Vec::new();
    let mut last_tick = Instant::now();
    let mut last_log = Instant::now();
    let mut logged = String::new();
    let mut written = String::new();
    let mut seen_handshakes = 0;
    let mut seen_rejected = 0;
    loop {
        let now = start.elapsed();
        match frames_rx.recv_timeout(TICK) {
            Ok((_, (Link::Uplink, frame))) => {
                if let Some(d) = up.receive(&frame, &mut up_frames) {
                    gw.from_uplink(now, &mut rng, d.src, &d.payload, &mut outputs);
                }
            }
            Ok((_, (Link::Clients, frame))) => {
                if let Some(packet) = clients.receive(&frame, &mut client_frames) {
                    gw.from_client(now, &mut rng, &packet, &mut outputs);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Err("all TAP readers stopped".into()),
        }
        let now = start.elapsed();
        if last_tick.elapsed() >= TICK {
            last_tick = Instant::now();
            gw.tick(now, &mut rng, &mut outputs);
            up.poll(now, &mut up_frames);
            let stats = stats_text(&gw, &up, &clients);
            if let Some(path) = &args.stats {
                if stats != written {
                    if let Err(e) = std::fs::write(path, &stats) {
                        eprintln!("{path}: {e}");
                    }
                    written.clone_from(&stats);
                }
            }
            if stats != logged && last_log.elapsed() >= LOG_EVERY {
                last_log = Instant::now();
                eprintln!("[{:.3}] counters:\n{stats}", start.elapsed().as_secs_f64());
                logged = stats;
            }
        }
        for output in outputs.drain(..) {
            match output {
                Output::Uplink(d) => up.send(now, d.dst(), d.payload(), &mut up_frames),
                Output::Client(p) => clients.send(&p, &mut client_frames),
            }
        }
        for (tap, frames) in [
            (&uplink_tap, &mut up_frames),
            (&client_tap, &mut client_frames),
        ] {
            for frame in frames.drain(..) {
                if let Err(e) = tap.send(&frame) {
                    eprintln!("{}: write failed: {e}", tap.name());
                }
            }
        }
        let rejected = gw.counters().uplink_rejected;
        if rejected != seen_rejected {
            seen_rejected = rejected;
            eprintln!(
                "[{:.3}] datagram from the uplink refused: {:?} ({rejected} so far)",
                start.elapsed().as_secs_f64(),
                gw.last_uplink_error()
            );
        }
        let hs = handshakes(&gw);
        if hs != seen_handshakes {
            seen_handshakes = hs;
            eprintln!(
                "[{:.3}] handshake completed ({hs} so far)",
                start.elapsed().as_secs_f64()
            );
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("hosted-vpn: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hosted-vpn: {e}");
            ExitCode::FAILURE
        }
    }
}
