//! The VPN gateway VM: the WireGuard gateway (`services/vpn`) as a
//! [`netvm::Service`], between the client vifs our netback serves (clients
//! say `vif=['backend=vpn,ip=...']`) and the uplink our netfront connects
//! (usually on dom0's bridge). The runtime (`netvm::run`) attaches and
//! detaches clients, binds each vif to its `mac` and `ip` keys and moves the
//! frames; this crate only decides what a frame becomes.
//!
//! - Uplink: [`vpn::link::Uplink`] (ARP for our address and next hop, UDP to
//!   and from our WireGuard port). The only frames ever put on the uplink are
//!   ARP and WireGuard datagrams built by [`vpn::Gateway`]: fail-closed by
//!   construction.
//! - Clients: ARP answered as their gateway (every address but their own is
//!   behind us, as in Qubes), IP packets from their own address (else
//!   dropped and counted) into the gateway, packets out of the tunnel to the
//!   client whose address they are for.
//! - Configuration ([`WgSource`]): a wg-quick file, from the `wg-quick` key
//!   of the configuration directory ([`CONFIG_DIR`], written by dom0 with
//!   `xenstore-write`) or else from the VM's disk; the uplink's address from
//!   `ip`/`gateway` keys, `vpn.ip=`/`vpn.gw=` on the command line or the
//!   uplink vif's `ip`. While there is no valid configuration the VM sends
//!   nothing at all and says why on the console.
//!
//! The text of the file and everything parsed from it that is secret is
//! zeroed when dropped ([`Secret`], `wireguard::config::SecretKey`); no line
//! printed contains a key.
//!
//! Deployment: `docs/vpn.md`.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

extern crate alloc;

pub mod settings;

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::net::{IpAddr, Ipv4Addr};
use core::time::Duration;

use netvm::config::{Changed, Snapshot};
use netvm::identity::Key;
use netvm::{ClientId, ClientInfo, Link, Packet, Service, Stats, To, Transmit, UplinkInfo};
use vpn::link::{self, Mac, BROADCAST, ETH_ARP, ETH_HEADER, ETH_IPV4, ETH_IPV6};
use vpn::{Gateway, GatewaySettings, Output};
use wireguard::config::Config;
use wireguard::Random;
use zeroize::Zeroizing;

pub use settings::{Ipv4Cidr, VpnSettings};

/// The directory (relative to the VM's home) dom0 writes the configuration
/// into: `/local/domain/<vpn>/vpn/`.
pub const CONFIG_DIR: &str = "vpn";
/// The key (in [`CONFIG_DIR`]) holding the whole wg-quick file.
pub const WG_QUICK_KEY: &str = "wg-quick";
/// The key holding our uplink address (`A.B.C.D/N`).
pub const IP_KEY: &str = "ip";
/// The key holding the uplink's gateway.
pub const GATEWAY_KEY: &str = "gateway";
/// Our MAC towards the clients (Qubes' client-side gateway MAC).
pub const CLIENT_SIDE_MAC: Mac = [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff];
/// WireGuard's port when the file has no `ListenPort`.
pub const DEFAULT_PORT: u16 = 51820;
/// Handshakes per second on the interface before cookies are demanded.
pub const HANDSHAKE_LOAD_LIMIT: u32 = 50;
/// Largest wg-quick file taken (from xenstore or the disk).
pub const MAX_CONFIG_BYTES: usize = 64 * 1024;

/// Text that may hold a private key: zeroed when dropped, never printed.
pub type Secret = Zeroizing<String>;

/// Where the wg-quick file came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WgSource {
    /// The `wg-quick` key of [`CONFIG_DIR`].
    Xenstore,
    /// The VM's first disk.
    Disk,
}

impl WgSource {
    fn describe(self) -> &'static str {
        match self {
            WgSource::Xenstore => "xenstore vpn/wg-quick",
            WgSource::Disk => "the disk",
        }
    }
}

/// The wg-quick text of a disk's first bytes: up to the first NUL (a file
/// copied onto a zeroed disk image) or the end, which must be UTF-8.
pub fn disk_text(bytes: &[u8]) -> Result<Secret, &'static str> {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    let text = bytes.get(..end).unwrap_or_default();
    if text.iter().all(u8::is_ascii_whitespace) {
        return Err("the disk holds no configuration (empty or zeros)");
    }
    match core::str::from_utf8(text) {
        Ok(s) => Ok(Zeroizing::new(String::from(s))),
        Err(_) => Err("the disk's text is not UTF-8"),
    }
}

/// Counters of the VM's own decisions (the gateway counts its drops).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmStats {
    /// Vifs refused: no valid `ip` key.
    pub refused: u64,
    /// Frames dropped while there is no valid configuration.
    pub unconfigured: u64,
    /// Client IP packets whose source is not the client's own address.
    pub spoofed: u64,
    /// Client IPv6 packets from a link-local or unspecified source (router
    /// and neighbour solicitations; not tunnelled).
    pub link_local: u64,
    /// Client frames neither ARP nor IP, or not to us.
    pub not_ours: u64,
    /// Malformed client frames.
    pub malformed: u64,
    /// Client frames whose blank checksum could not be completed.
    pub bad_offload: u64,
    /// Packets out of the tunnel for an address no client has.
    pub no_client: u64,
    /// ARP requests of clients answered.
    pub arp_replies: u64,
    /// Times the gateway was (re)built from a configuration.
    pub builds: u64,
}

struct ClientEntry {
    mac: Option<Mac>,
    addrs: Vec<IpAddr>,
}

/// The running gateway and its uplink, built from one configuration.
struct Active {
    gateway: Gateway,
    uplink: link::Uplink,
}

/// What a configuration was built from: rebuilt only when it changes.
#[derive(PartialEq, Eq)]
struct Inputs {
    text: Secret,
    source: WgSource,
    uplink_mac: Mac,
    ip: Ipv4Cidr,
    gw: Ipv4Addr,
}

/// The service.
pub struct VpnVm {
    settings: VpnSettings,
    print: fn(&str),
    rng: Box<dyn Random>,
    wall_clock_at_zero: Duration,
    disk: Option<Secret>,
    /// The configuration directory's wg-quick text, ip and gateway keys.
    store_text: Option<Secret>,
    store_ip: Option<String>,
    store_gw: Option<String>,
    uplink_info: Option<UplinkInfo>,
    /// The configuration directory was read at least once (before, a
    /// missing file is not worth a line: it may be on its way).
    store_read: bool,
    inputs: Option<Inputs>,
    active: Option<Active>,
    clients: BTreeMap<u32, ClientEntry>,
    by_addr: BTreeMap<IpAddr, u32>,
    problem: Option<String>,
    outputs: Vec<Output>,
    frames: Vec<Vec<u8>>,
    reported: Option<String>,
    /// Counters.
    pub stats: VmStats,
}

fn duration(now_ns: u64) -> Duration {
    Duration::from_nanos(now_ns)
}

fn utf8(v: &[u8]) -> Option<String> {
    core::str::from_utf8(v).ok().map(String::from)
}

impl VpnVm {
    /// A VPN VM with the command line's `settings`, printing with `print`,
    /// taking random bytes from `rng`, with the wall clock at system time
    /// zero (for handshake timestamps) and the text of its disk, if it has
    /// one.
    pub fn new(
        settings: VpnSettings,
        print: fn(&str),
        rng: Box<dyn Random>,
        wall_clock_at_zero: Duration,
        disk: Option<Secret>,
    ) -> Self {
        Self {
            settings,
            print,
            rng,
            wall_clock_at_zero,
            disk,
            store_text: None,
            store_ip: None,
            store_gw: None,
            uplink_info: None,
            store_read: false,
            inputs: None,
            active: None,
            clients: BTreeMap::new(),
            by_addr: BTreeMap::new(),
            problem: None,
            outputs: Vec::new(),
            frames: Vec::new(),
            reported: None,
            stats: VmStats::default(),
        }
    }

    /// The gateway, once configured.
    pub fn gateway(&self) -> Option<&Gateway> {
        self.active.as_ref().map(|a| &a.gateway)
    }

    /// Why the VM is not forwarding, if it is not.
    pub fn problem(&self) -> Option<&str> {
        self.problem.as_deref()
    }

    /// The uplink link's counters, once configured.
    pub fn uplink_counters(&self) -> Option<link::UplinkCounters> {
        self.active.as_ref().map(|a| a.uplink.counters())
    }

    fn say(&self, line: &str) {
        (self.print)(&format!("vpn: {line}"));
    }

    /// The inputs of a configuration, or why there is none.
    fn inputs(&self) -> Result<Inputs, String> {
        let uplink = self
            .uplink_info
            .as_ref()
            .ok_or_else(|| String::from("waiting for the uplink"))?;
        let (text, source) = match (&self.store_text, &self.disk) {
            (Some(t), _) => (t.clone(), WgSource::Xenstore),
            (None, Some(t)) => (t.clone(), WgSource::Disk),
            (None, None) => {
                return Err(format!(
                    "no WireGuard configuration: write the wg-quick file to {CONFIG_DIR}/{WG_QUICK_KEY} \
                     in this domain's xenstore directory, or give the VM a disk holding it (docs/vpn.md)"
                ))
            }
        };
        let ip = match &self.store_ip {
            Some(v) => settings::parse_cidr(v)
                .ok_or_else(|| format!("{CONFIG_DIR}/{IP_KEY}: not A.B.C.D/N"))?,
            None => match self.settings.ip {
                Some(ip) => ip,
                None => uplink
                    .ip
                    .valid()
                    .and_then(|a| {
                        a.iter().find_map(|a| match a {
                            IpAddr::V4(v4) => Some(*v4),
                            IpAddr::V6(_) => None,
                        })
                    })
                    .map(|addr| Ipv4Cidr {
                        addr,
                        prefix: settings::DEFAULT_PREFIX,
                    })
                    .ok_or_else(|| {
                        String::from(
                            "no uplink address: vpn.ip= in extra=, ip= in the VM's vif, \
                             or vpn/ip in xenstore",
                        )
                    })?,
            },
        };
        let gw = match &self.store_gw {
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| format!("{CONFIG_DIR}/{GATEWAY_KEY}: not an IPv4 address"))?,
            None => self.settings.gw.ok_or_else(|| {
                String::from("no uplink gateway: vpn.gw= in extra= or vpn/gateway in xenstore")
            })?,
        };
        Ok(Inputs {
            text,
            source,
            uplink_mac: uplink.mac.0,
            ip,
            gw,
        })
    }

    /// (Re)build the gateway when its inputs changed; on any error, stop
    /// forwarding (and sending) altogether.
    fn rebuild(&mut self) {
        let inputs = match self.inputs() {
            Ok(i) => i,
            // The runtime brings the uplink up before it reads the
            // configuration directory: wait for that read.
            Err(_) if !self.store_read && self.disk.is_none() => return,
            Err(why) => return self.fail(why),
        };
        if self.active.is_some() && self.inputs.as_ref() == Some(&inputs) {
            return;
        }
        let where_ = inputs.source.describe();
        let config = match Config::parse(&inputs.text) {
            Ok(c) => c,
            Err(e) => {
                return self.fail(format!("bad wg-quick configuration in {where_}: {e}"));
            }
        };
        for (line, key) in &config.ignored {
            self.say(&format!("{where_}: line {line}: {key} ignored"));
        }
        let settings = GatewaySettings {
            wall_clock_at_zero: self.wall_clock_at_zero,
            handshake_load_limit: HANDSHAKE_LOAD_LIMIT,
            masquerade: true,
        };
        let gateway = match Gateway::new(&config, &settings) {
            Ok(g) => g,
            Err(e) => {
                return self.fail(format!(
                    "bad wg-quick configuration in {where_}: {}",
                    setup_error(&e)
                ))
            }
        };
        let port = config.interface.listen_port.unwrap_or(DEFAULT_PORT);
        let uplink = link::Uplink::new(
            inputs.uplink_mac,
            inputs.ip.addr,
            inputs.ip.prefix,
            inputs.gw,
            port,
        );
        let addrs: Vec<String> = config
            .interface
            .addresses
            .iter()
            .map(|a| format!("{}/{}", a.addr, a.len))
            .collect();
        let dns: Vec<String> = config
            .interface
            .dns
            .iter()
            .map(|a| format!("{a}"))
            .collect();
        self.say(&format!(
            "tunnel from {where_}: {} peer(s), address {}, dns {}, uplink {}/{} gateway {} port {port}",
            gateway.device().peer_count(),
            if addrs.is_empty() { String::from("(none)") } else { addrs.join(",") },
            if dns.is_empty() { String::from("(none)") } else { dns.join(",") },
            inputs.ip.addr,
            inputs.ip.prefix,
            inputs.gw,
        ));
        self.stats.builds += 1;
        self.problem = None;
        self.inputs = Some(inputs);
        self.active = Some(Active { gateway, uplink });
    }

    fn fail(&mut self, why: String) {
        if self.active.take().is_some() {
            self.say("stopped forwarding: nothing is sent until the configuration is fixed");
        }
        self.inputs = None;
        if self.problem.as_deref() != Some(why.as_str()) {
            self.say(&format!("not forwarding: {why}"));
            self.problem = Some(why);
        }
    }

    /// Turn the gateway's outputs into frames.
    fn flush(&mut self, now_ns: u64, out: &mut Vec<Transmit>) {
        let Some(active) = self.active.as_mut() else {
            self.outputs.clear();
            return;
        };
        for o in self.outputs.drain(..) {
            match o {
                Output::Uplink(d) => {
                    active
                        .uplink
                        .send(duration(now_ns), d.dst(), d.payload(), &mut self.frames)
                }
                Output::Client(p) => {
                    let dst = match p.first().map(|b| b >> 4) {
                        Some(4) => p
                            .get(16..20)
                            .and_then(|s| <[u8; 4]>::try_from(s).ok())
                            .map(IpAddr::from),
                        Some(6) => p
                            .get(24..40)
                            .and_then(|s| <[u8; 16]>::try_from(s).ok())
                            .map(IpAddr::from),
                        _ => None,
                    };
                    let target = dst
                        .and_then(|d| self.by_addr.get(&d).copied())
                        .and_then(|id| Some((id, self.clients.get(&id)?)));
                    match target {
                        Some((id, c)) => {
                            let ethertype = if dst.is_some_and(|d| d.is_ipv4()) {
                                ETH_IPV4
                            } else {
                                ETH_IPV6
                            };
                            let mac = c.mac.unwrap_or(BROADCAST);
                            out.push(Transmit::frame(
                                To::Client(ClientId(id)),
                                link::ethernet(mac, CLIENT_SIDE_MAC, ethertype, &p),
                            ));
                        }
                        None => self.stats.no_client += 1,
                    }
                }
            }
        }
        out.extend(
            self.frames
                .drain(..)
                .map(|f| Transmit::frame(To::Uplink, f)),
        );
    }

    fn client_frame(
        &mut self,
        now_ns: u64,
        id: ClientId,
        mut packet: Packet,
        out: &mut Vec<Transmit>,
    ) {
        let frame = &mut packet.data;
        let (Some(dst), Some(ethertype)) = (link::mac_at(frame, 0), link::be16(frame, 12)) else {
            self.stats.malformed += 1;
            return;
        };
        if !self.clients.contains_key(&id.0) {
            self.stats.not_ours += 1;
            return;
        }
        match ethertype {
            ETH_ARP if dst == CLIENT_SIDE_MAC || dst == BROADCAST => {
                let Some(arp) = frame.get(ETH_HEADER..).and_then(link::parse_arp) else {
                    self.stats.malformed += 1;
                    return;
                };
                // Every address but the asker's own is behind us.
                if arp.op == 1 && arp.tpa != arp.spa && arp.spa != Ipv4Addr::UNSPECIFIED {
                    self.stats.arp_replies += 1;
                    out.push(Transmit::frame(
                        To::Client(id),
                        link::arp_frame(arp.sha, 2, CLIENT_SIDE_MAC, arp.tpa, arp.sha, arp.spa),
                    ));
                }
            }
            ETH_IPV4 | ETH_IPV6 if dst == CLIENT_SIDE_MAC => {
                if packet.offload.csum_blank && !netback::packet::fill_checksum(frame) {
                    self.stats.bad_offload += 1;
                    return;
                }
                let body = frame.get(ETH_HEADER..).unwrap_or_default();
                let src = if ethertype == ETH_IPV4 {
                    body.get(12..16)
                        .and_then(|s| <[u8; 4]>::try_from(s).ok())
                        .map(IpAddr::from)
                } else {
                    body.get(8..24)
                        .and_then(|s| <[u8; 16]>::try_from(s).ok())
                        .map(IpAddr::from)
                };
                let Some(src) = src else {
                    self.stats.malformed += 1;
                    return;
                };
                let own = self
                    .clients
                    .get(&id.0)
                    .is_some_and(|c| c.addrs.contains(&src));
                if !own {
                    match src {
                        IpAddr::V6(v6) if v6.is_unspecified() || v6.is_unicast_link_local() => {
                            self.stats.link_local += 1
                        }
                        _ => self.stats.spoofed += 1,
                    }
                    return;
                }
                let Some(active) = self.active.as_mut() else {
                    return;
                };
                active.gateway.from_client(
                    duration(now_ns),
                    &mut *self.rng,
                    body,
                    &mut self.outputs,
                );
                self.flush(now_ns, out);
            }
            _ => self.stats.not_ours += 1,
        }
    }
}

fn setup_error(e: &vpn::SetupError) -> String {
    match e {
        vpn::SetupError::HostEndpoint(i) => format!(
            "peer {} has a host name as Endpoint (the VM sends no DNS of its own: give an address)",
            i + 1
        ),
        vpn::SetupError::MissingEndpoint(i) => format!("peer {} has no Endpoint", i + 1),
        vpn::SetupError::Device(d) => format!("a peer was refused: {d:?}"),
        vpn::SetupError::NoAddressToMasquerade => {
            String::from("no Address in [Interface] (the provider's address for this tunnel)")
        }
    }
}

impl Service for VpnVm {
    fn admit(&mut self, client: &ClientInfo) -> Result<(), String> {
        match (&client.ip, client.ip.valid().is_some_and(|a| !a.is_empty())) {
            (_, true) => Ok(()),
            (Key::Invalid(why), _) => {
                self.stats.refused += 1;
                Err(format!(
                    "{why} (the VPN serves only clients whose vif has ip=)"
                ))
            }
            _ => {
                self.stats.refused += 1;
                Err(String::from(
                    "no ip key in its vif (the VPN serves only clients whose config says vif=['backend=...,ip=A.B.C.D'])",
                ))
            }
        }
    }

    fn client_up(&mut self, _now_ns: u64, client: &ClientInfo) {
        let addrs: Vec<IpAddr> = client.ip.valid().cloned().unwrap_or_default();
        let mac = client.mac.valid().map(|m| m.0);
        for a in &addrs {
            self.by_addr.insert(*a, client.id.0);
        }
        let list: Vec<String> = addrs.iter().map(|a| format!("{a}")).collect();
        self.say(&format!("client {} is {}", client.id.0, list.join(" ")));
        self.clients.insert(client.id.0, ClientEntry { mac, addrs });
    }

    fn client_down(&mut self, _now_ns: u64, id: ClientId) {
        if let Some(c) = self.clients.remove(&id.0) {
            for a in c.addrs {
                if self.by_addr.get(&a) == Some(&id.0) {
                    self.by_addr.remove(&a);
                }
            }
        }
    }

    fn uplink_up(&mut self, _now_ns: u64, uplink: &UplinkInfo) {
        self.uplink_info = Some(uplink.clone());
        self.rebuild();
    }

    fn handle(&mut self, now_ns: u64, from: Link, packet: Packet, out: &mut Vec<Transmit>) {
        if self.active.is_none() {
            self.stats.unconfigured += 1;
            return;
        }
        match from {
            Link::Client(id) => self.client_frame(now_ns, id, packet, out),
            Link::Uplink => {
                let Some(active) = self.active.as_mut() else {
                    return;
                };
                if let Some(d) = active.uplink.receive(&packet.data, &mut self.frames) {
                    active.gateway.from_uplink(
                        duration(now_ns),
                        &mut *self.rng,
                        d.src,
                        &d.payload,
                        &mut self.outputs,
                    );
                }
                self.flush(now_ns, out);
            }
        }
    }

    fn tick(&mut self, now_ns: u64, out: &mut Vec<Transmit>) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        active
            .gateway
            .tick(duration(now_ns), &mut *self.rng, &mut self.outputs);
        active.uplink.poll(duration(now_ns), &mut self.frames);
        self.flush(now_ns, out);
    }

    fn configure(&mut self, _now_ns: u64, snapshot: &Snapshot, _changed: &Changed) -> Vec<String> {
        self.store_read = true;
        let text = snapshot.get(WG_QUICK_KEY);
        self.store_text = match text {
            Some(v) if v.len() > MAX_CONFIG_BYTES => {
                self.fail(format!(
                    "{CONFIG_DIR}/{WG_QUICK_KEY} is larger than {MAX_CONFIG_BYTES} bytes"
                ));
                return Vec::new();
            }
            Some(v) => match core::str::from_utf8(v) {
                Ok(s) => Some(Zeroizing::new(String::from(s))),
                Err(_) => {
                    self.fail(format!("{CONFIG_DIR}/{WG_QUICK_KEY} is not UTF-8"));
                    return Vec::new();
                }
            },
            None => None,
        };
        self.store_ip = snapshot.get(IP_KEY).and_then(utf8);
        self.store_gw = snapshot.get(GATEWAY_KEY).and_then(utf8);
        self.rebuild();
        Vec::new()
    }

    fn report(&mut self, stats: &Stats) -> Option<String> {
        let active = self.active.as_ref()?;
        let c = active.gateway.counters();
        let u = active.uplink.counters();
        let d = active.gateway.device();
        let (mut handshakes, mut tx, mut rx) = (0, 0, 0);
        for i in 0..d.peer_count() {
            if let Some(t) = d.peer(wireguard::PeerId(i)) {
                let s = t.stats();
                handshakes += s.handshakes;
                tx += s.tx_bytes;
                rx += s.rx_bytes;
            }
        }
        let line = format!(
            "stats: clients={} handshakes={handshakes} tx-bytes={tx} rx-bytes={rx} \
             uplink-rx={} uplink-tx={} cookie-replies={} uplink-rejected={} tunnel-dropped={} \
             no-route-v4={} no-route-v6={} no-tunnel-address={} dns-redirected={} dns-no-server={} \
             mss-clamped={} nat-unsupported={} nat-no-mapping={} spoofed={} link-local={} \
             not-ours={} malformed={} no-client={} arp-unresolved={} uplink-not-wireguard={} \
             uplink-tx-dropped={} client-tx-dropped={}",
            stats.clients,
            u.rx_datagrams,
            u.tx_datagrams,
            c.cookie_replies,
            c.uplink_rejected,
            c.tunnel_dropped,
            c.no_route_v4,
            c.no_route_v6,
            c.no_tunnel_address,
            c.dns_redirected,
            c.dns_no_server,
            c.mss_clamped,
            c.nat_unsupported,
            c.nat_no_mapping,
            self.stats.spoofed + stats.spoofed,
            self.stats.link_local,
            self.stats.not_ours,
            self.stats.malformed + c.client_malformed,
            self.stats.no_client,
            u.tx_unresolved,
            u.rx_not_wireguard,
            stats.uplink_tx_dropped,
            stats.client_tx_dropped,
        );
        if self.reported.as_deref() == Some(line.as_str()) {
            return None;
        }
        self.reported = Some(line.clone());
        Some(line)
    }
}
