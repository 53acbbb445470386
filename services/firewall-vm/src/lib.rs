//! The firewall VM: the firewall core (`services/firewall`) as a
//! [`netvm::Service`], between the client vifs our netback serves (the
//! driver-domain role: clients say `vif=['backend=firewall,ip=...']`) and
//! the uplink our netfront connects (usually on dom0's bridge).
//!
//! - [`settings`]: the `firewall.*` keys of the command line (`extra=`).
//! - [`store`]: the configuration directory (`<home>/qubesdb/`, keys named
//!   and valued as QubesDB's) as a `firewall::store::ConfigStore`, with the
//!   command line and the uplink vif's `ip` key as defaults.
//! - [`qubes_mode`]: the same configuration from QubesDB (a Qubes qube),
//!   with the Linux agent's write-backs.
//! - [`FirewallVm`]: the service: clients admitted only with an IPv4 `ip`
//!   key, rules (re)loaded as the Linux agent does when dom0 writes
//!   `/qubes-firewall/<ip>`, frames through `Firewall::handle_offloaded`
//!   with their offload flags (GSO super-packets and blank checksums pass
//!   with only their headers rewritten, segmented or completed for a link
//!   that does not take them). What each link takes comes from the
//!   runtime: the uplink's backend features ([`UplinkInfo::features`]) and
//!   each client's frontend configuration ([`ClientInfo::frontend`]),
//!   through [`uplink_capabilities`] and [`client_capabilities`].
//!
//! Deployment and configuration: `docs/firewall.md`.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

extern crate alloc;

pub mod qubes_mode;
pub mod settings;
pub mod store;

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::net::IpAddr;

use firewall::store::{
    load_config, load_rules, now_or_never, rule_targets, xenstore_to_key, Macs, Reload,
    QUBES_CLIENT_SIDE_MAC,
};
use firewall::{
    Capabilities, ClientConfig, Config, EthernetAddress, Firewall, Gso, GsoKind, Instant,
    Interface, Offload, RandomSource, RuleReport,
};
use netvm::config::{Changed, Snapshot};
use netvm::identity::Key;
use netvm::{ClientId, ClientInfo, Link, Packet, Service, Stats, To, Transmit, UplinkInfo};

pub use settings::FirewallSettings;
pub use store::{Defaults, EffectiveStore, UplinkDhcp};

/// The directory (relative to the firewall domain's home) that dom0 fills
/// with QubesDB-named keys: `/local/domain/<firewall>/qubesdb/`.
pub const CONFIG_DIR: &str = "qubesdb";

/// Counters of the VM's own decisions (the core counts the packets).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmStats {
    /// Vifs refused: no valid IPv4 address in their `ip` key.
    pub refused: u64,
    /// Frames dropped because the firewall is not configured yet (no
    /// uplink address or gateway).
    pub unconfigured: u64,
    /// Times the firewall was (re)built from a new configuration.
    pub builds: u64,
    /// Client rule sets (re)loaded.
    pub rule_loads: u64,
    /// Rule sets that were refused (the client is drop-all).
    pub rule_errors: u64,
}

/// What the uplink is assumed to take before it is up (then its backend's
/// features say: [`uplink_capabilities`]): blank IPv4 checksums, which
/// netif.h has a backend take unless it writes `feature-no-csum-offload`,
/// and nothing else.
pub const ASSUMED_UPLINK: Capabilities = Capabilities {
    gso_tcpv4: false,
    gso_tcpv6: false,
    csum_blank_v4: true,
    csum_blank_v6: false,
};

/// What a client's link is assumed to take when nothing says otherwise (a
/// [`ClientInfo`] without its frontend's configuration; the runtime always
/// gives it): blank checksums (our netback completes them for a frontend
/// that does not take them) but no GSO (netback drops a super-packet its
/// frontend did not ask for).
pub const ASSUMED_CLIENT: Capabilities = Capabilities {
    gso_tcpv4: false,
    gso_tcpv6: false,
    csum_blank_v4: true,
    csum_blank_v6: true,
};

/// The service.
pub struct FirewallVm {
    settings: FirewallSettings,
    print: fn(&str),
    /// Makes the random source of each firewall core built.
    random: fn() -> Box<dyn RandomSource>,
    uplink: Option<UplinkInfo>,
    snapshot: Snapshot,
    config: Option<Config>,
    fw: Option<Firewall>,
    clients: BTreeMap<u32, ClientConfig>,
    /// Addresses rules were installed for (a removed directory makes them
    /// drop-all, as in Linux).
    installed: BTreeSet<IpAddr>,
    problem: Option<String>,
    /// Frames in and out at the last report (unchanged: no report).
    reported: (u64, u64),
    /// What the uplink takes on the way out.
    uplink_capabilities: Capabilities,
    /// What each client's link takes, when told.
    client_capabilities: BTreeMap<u32, Capabilities>,
    /// The uplink's DHCP client, while nothing else gives it an address.
    dhcp: UplinkDhcp,
    /// Counters.
    pub stats: VmStats,
}

fn instant(now_ns: u64) -> Instant {
    Instant::from_micros((now_ns / 1000) as i64)
}

impl FirewallVm {
    /// A firewall VM with the command line's `settings`, printing with
    /// `print`, and no random source: `dsthost=` names are never looked
    /// up (see [`FirewallVm::with_random`]).
    pub fn new(settings: FirewallSettings, print: fn(&str)) -> Self {
        Self::with_random(settings, print, || Box::new(firewall::random::Unavailable))
    }

    /// A firewall VM whose `dsthost=` resolver takes its source ports and
    /// transaction ids from the sources `random` makes (one per core
    /// built).
    pub fn with_random(
        settings: FirewallSettings,
        print: fn(&str),
        random: fn() -> Box<dyn RandomSource>,
    ) -> Self {
        Self {
            settings,
            print,
            random,
            uplink: None,
            snapshot: Snapshot::default(),
            config: None,
            fw: None,
            clients: BTreeMap::new(),
            installed: BTreeSet::new(),
            problem: None,
            reported: (0, 0),
            uplink_capabilities: ASSUMED_UPLINK,
            client_capabilities: BTreeMap::new(),
            dhcp: UplinkDhcp::new(),
            stats: VmStats::default(),
        }
    }

    /// What the uplink takes on the way out (from its backend's
    /// `feature-gso-tcpv4`/`v6`, `feature-no-csum-offload` and
    /// `feature-ipv6-csum-offload`); set from [`UplinkInfo::features`] at
    /// each [`Service::uplink_up`], [`ASSUMED_UPLINK`] before.
    pub fn set_uplink_capabilities(&mut self, capabilities: Capabilities) {
        self.uplink_capabilities = capabilities;
        if let Some(fw) = self.fw.as_mut() {
            fw.set_capabilities(Interface::Uplink, capabilities);
        }
    }

    /// What client `id`'s link takes on the way out (from its frontend's
    /// `feature-gso-tcpv4`/`v6` and checksum features); set from
    /// [`ClientInfo::frontend`] at [`Service::client_up`] ([`ASSUMED_CLIENT`]
    /// without it). Forgotten when the client goes down.
    pub fn set_client_capabilities(&mut self, id: ClientId, capabilities: Capabilities) {
        self.client_capabilities.insert(id.0, capabilities);
        if let Some(fw) = self.fw.as_mut() {
            fw.set_capabilities(Interface::Client(firewall::ClientId(id.0)), capabilities);
        }
    }

    fn client_capabilities(&self, id: u32) -> Capabilities {
        self.client_capabilities
            .get(&id)
            .copied()
            .unwrap_or(ASSUMED_CLIENT)
    }

    /// The core, once configured.
    pub fn firewall(&self) -> Option<&Firewall> {
        self.fw.as_ref()
    }

    fn say(&self, line: &str) {
        (self.print)(&format!("firewall: {line}"));
        kernel::logger::remote_only(
            log::Level::Info,
            "firewall",
            format_args!("firewall: {line}"),
        );
    }

    /// The addresses of the uplink vif's `ip` key.
    fn vif_addrs(&self) -> Vec<IpAddr> {
        self.uplink
            .as_ref()
            .and_then(|u| u.ip.valid().cloned())
            .unwrap_or_default()
    }

    fn defaults(&self) -> Defaults {
        Defaults::with_uplink(&self.settings, &self.vif_addrs(), self.dhcp.lease())
    }

    /// The uplink, if it is up, needs DHCP when no other source gives it
    /// an address: start or stop the client; rebuild if a lease in use
    /// went away.
    fn update_dhcp(&mut self, now_ns: u64, out: &mut Vec<String>) {
        let Some(mac) = self.uplink.as_ref().map(|u| u.mac.0) else {
            return;
        };
        let needed = store::needs_dhcp(&self.settings, &self.snapshot, &self.vif_addrs());
        let mut seed = [0u8; 8];
        if needed && !self.dhcp.running() {
            // Without random bytes the ids still differ by MAC and time.
            let _ = (self.random)().fill(&mut seed);
        }
        let seed = u64::from_le_bytes(seed) ^ now_ns;
        if self.dhcp.set_needed(needed, mac, seed) {
            self.build(out);
        }
    }

    /// The DHCP client's timers and events: its frames to the uplink, a
    /// rebuild when its lease changed what it configures.
    fn poll_dhcp(&mut self, now_ns: u64, out: &mut Vec<Transmit>) {
        let (mut frames, mut lines) = (Vec::new(), Vec::new());
        if self.dhcp.poll(now_ns, &mut frames, &mut lines) {
            self.build(&mut lines);
        }
        self.flush(lines);
        out.extend(frames.into_iter().map(|f| Transmit::frame(To::Uplink, f)));
    }

    /// Build (or rebuild) the core from the configuration, keeping it if
    /// nothing it depends on changed; then load every client's rules.
    fn build(&mut self, out: &mut Vec<String>) {
        let Some(uplink) = &self.uplink else {
            return;
        };
        let macs = Macs {
            uplink: EthernetAddress(uplink.mac.0),
            client_side: QUBES_CLIENT_SIDE_MAC,
        };
        let defaults = self.defaults();
        let mut store = EffectiveStore::new(&self.snapshot, &defaults);
        let loaded = now_or_never(load_config(&mut store, macs));
        match loaded {
            Some(Ok(config)) => {
                self.problem = None;
                if self.fw.is_none() || self.config.as_ref() != Some(&config) {
                    let mut fw = Firewall::with_random(config.clone(), (self.random)());
                    fw.set_capabilities(Interface::Uplink, self.uplink_capabilities);
                    for (id, c) in &self.clients {
                        fw.add_client(firewall::ClientId(*id), *c);
                        fw.set_capabilities(
                            Interface::Client(firewall::ClientId(*id)),
                            self.client_capabilities(*id),
                        );
                    }
                    let dns: Vec<String> = config
                        .dns
                        .iter()
                        .map(|d| match d.upstream {
                            Some(u) => format!("{}->{u}", d.virtual_server),
                            None => format!("{}->(none: dropped)", d.virtual_server),
                        })
                        .collect();
                    out.push(format!(
                        "forwarding: uplink {} gateway {} (mac {}), clients' gateway {}, dns {}",
                        config.uplink.ip4,
                        config.uplink.gateway4,
                        config.uplink.mac,
                        config.client_side.gateway4,
                        dns.join(" ")
                    ));
                    self.fw = Some(fw);
                    self.config = Some(config);
                    self.installed.clear();
                    self.stats.builds += 1;
                }
                self.reload_all(out);
            }
            Some(Err(e)) => {
                let why = format!(
                    "not forwarding: {e} (firewall.ip=/firewall.gw= in extra=, ip= in the \
                     firewall's vif, or {CONFIG_DIR}/qubes-ip, qubes-gateway in xenstore)"
                );
                if self.problem.as_deref() != Some(why.as_str()) {
                    out.push(why.clone());
                    self.problem = Some(why);
                }
                self.fw = None;
                self.config = None;
            }
            None => out.push(String::from("configuration store would block")),
        }
    }

    fn reload_all(&mut self, out: &mut Vec<String>) {
        let defaults = self.defaults();
        let store = &mut EffectiveStore::new(&self.snapshot, &defaults);
        let mut addrs: BTreeSet<IpAddr> = self.installed.clone();
        match now_or_never(rule_targets(store)) {
            Some(Ok(t)) => addrs.extend(t.addrs),
            Some(Err(e)) => out.push(format!("cannot list the rules: {e}")),
            None => {}
        }
        for addr in addrs {
            self.reload(addr, out);
        }
    }

    fn reload(&mut self, addr: IpAddr, out: &mut Vec<String>) {
        let defaults = self.defaults();
        let store = &mut EffectiveStore::new(&self.snapshot, &defaults);
        let Some(fw) = self.fw.as_mut() else {
            return;
        };
        let loaded = match now_or_never(load_rules(store, addr)) {
            Some(Ok(l)) => l,
            Some(Err(e)) => {
                out.push(format!("rules of {addr}: {e}"));
                return;
            }
            None => return,
        };
        let killed = fw.apply_loaded_rules(addr, loaded.as_ref());
        self.stats.rule_loads += 1;
        let what = match &loaded {
            None => String::from("no rules (new flows dropped)"),
            Some(l) => match &l.error {
                Some(e) => {
                    self.stats.rule_errors += 1;
                    format!("refused, drop-all: {e}")
                }
                None => format!("{} rules, policy {:?}", l.rules.rules.len(), l.rules.policy),
            },
        };
        if loaded.is_some() {
            self.installed.insert(addr);
        }
        out.push(format!("rules of {addr}: {what}; {killed} flows killed"));
    }

    fn flush(&self, lines: Vec<String>) {
        for l in lines {
            self.say(&l);
        }
    }
}

impl Service for FirewallVm {
    fn admit(&mut self, client: &ClientInfo) -> Result<(), String> {
        let why = match (&client.ip, client.ip4()) {
            (_, Some(_)) => return Ok(()),
            (Key::Invalid(why), _) => why.clone(),
            (Key::Absent, _) => String::from("no ip key in its vif"),
            (Key::Valid(_), None) => String::from("no IPv4 address in its vif's ip key"),
        };
        self.stats.refused += 1;
        Err(format!(
            "{why} (the firewall serves only clients whose config says vif=['backend=...,ip=A.B.C.D'])"
        ))
    }

    fn client_up(&mut self, _now_ns: u64, client: &ClientInfo) {
        let Some(ip4) = client.ip4() else {
            return;
        };
        let config = ClientConfig {
            ip4,
            ip6: client.ip6(),
            mac: client.mac.valid().map(|m| EthernetAddress(m.0)),
        };
        self.clients.insert(client.id.0, config);
        if let Some(front) = &client.frontend {
            self.client_capabilities
                .insert(client.id.0, client_capabilities(front));
        }
        let capabilities = self.client_capabilities(client.id.0);
        if let Some(fw) = self.fw.as_mut() {
            fw.add_client(firewall::ClientId(client.id.0), config);
            fw.set_capabilities(
                Interface::Client(firewall::ClientId(client.id.0)),
                capabilities,
            );
        }
        let rules = self
            .fw
            .as_ref()
            .map(|fw| fw.has_rules(&IpAddr::V4(ip4)))
            .unwrap_or(false);
        self.say(&format!(
            "client {} is {ip4}{} ({})",
            client.id.0,
            client.ip6().map(|a| format!(" {a}")).unwrap_or_default(),
            if rules {
                "has rules"
            } else {
                "no rules yet: its new flows are dropped"
            }
        ));
    }

    fn client_down(&mut self, _now_ns: u64, id: ClientId) {
        self.clients.remove(&id.0);
        self.client_capabilities.remove(&id.0);
        if let Some(fw) = self.fw.as_mut() {
            fw.remove_client(firewall::ClientId(id.0));
        }
    }

    fn uplink_up(&mut self, now_ns: u64, uplink: &UplinkInfo) {
        // (A backend restarted may offer other features: before the core
        // is rebuilt or kept.)
        self.set_uplink_capabilities(uplink_capabilities(&uplink.features));
        let changed = self.uplink.as_ref() != Some(uplink);
        self.uplink = Some(uplink.clone());
        let mut out = Vec::new();
        self.update_dhcp(now_ns, &mut out);
        if changed || self.fw.is_none() {
            self.build(&mut out);
        }
        self.flush(out);
    }

    fn handle(&mut self, now_ns: u64, from: Link, mut packet: Packet, out: &mut Vec<Transmit>) {
        // DHCP's datagrams (UDP to port 68) are the client's, not the
        // core's, while it runs. Our netfront takes blank checksums, so
        // dom0's netback hands a datagram from a server in dom0 (dnsmasq
        // on the bridge) with its UDP checksum not filled in: fill it,
        // or the client drops every offer as corrupt (seen on the rig).
        if from == Link::Uplink
            && packet.offload.csum_blank
            && netvm::dhcp::frame::to_client_port(&packet.data)
        {
            netback::packet::fill_checksum(&mut packet.data);
            packet.offload.csum_blank = false;
        }
        if from == Link::Uplink && self.dhcp.handle(now_ns, &packet.data) {
            self.poll_dhcp(now_ns, out);
            return;
        }
        let Some(fw) = self.fw.as_mut() else {
            self.stats.unconfigured += 1;
            return;
        };
        let interface = match from {
            Link::Uplink => Interface::Uplink,
            Link::Client(id) => Interface::Client(firewall::ClientId(id.0)),
        };
        // The flags go through with the frame: a blank checksum stays
        // blank (NAT updates its pseudo-header sum), a super-packet stays
        // one, unless the link it leaves on does not take them.
        let offload = offload_in(&packet.offload);
        for t in fw.handle_offloaded(instant(now_ns), interface, &packet.data, offload) {
            out.push(convert(t));
        }
    }

    fn tick(&mut self, now_ns: u64, out: &mut Vec<Transmit>) {
        self.poll_dhcp(now_ns, out);
        let mut reports = Vec::new();
        if let Some(fw) = self.fw.as_mut() {
            for t in fw.poll(instant(now_ns)) {
                out.push(convert(t));
            }
            reports = fw.take_rule_reports();
            send_remote_log(fw, now_ns, out);
        }
        // Rule sets that waited for their dsthost= names: in force, or the
        // client blocked, as the Linux agent reports a name that does not
        // resolve ("Failed to resolve ...", its /qubes-iptables-error).
        for r in reports {
            match r {
                RuleReport::Installed { addr } => self.say(&format!(
                    "rules of {addr}: dsthost= names resolved, in force"
                )),
                RuleReport::ResolveFailed { addr, name } => self.say(&format!(
                    "rules of {addr}: Failed to resolve {name}, blocking traffic"
                )),
            }
        }
    }

    fn configure(&mut self, now_ns: u64, snapshot: &Snapshot, changed: &Changed) -> Vec<String> {
        self.snapshot = snapshot.clone();
        let mut out = Vec::new();
        // A qubes-ip written by dom0 stops DHCP (and one removed starts it).
        self.update_dhcp(now_ns, &mut out);
        let reload = if changed.all {
            Reload {
                all_clients: true,
                config: true,
                ..Reload::default()
            }
        } else {
            let keys: Vec<String> = changed
                .paths
                .iter()
                .filter_map(|p| xenstore_to_key(p).ok())
                .collect();
            Reload::from_keys(keys.iter().map(String::as_str))
        };
        if reload.config || self.fw.is_none() {
            self.build(&mut out);
        } else if reload.all_clients {
            self.reload_all(&mut out);
        } else {
            for addr in reload.clients.iter().copied() {
                self.reload(addr, &mut out);
            }
        }
        out
    }

    fn report(&mut self, stats: &Stats) -> Option<String> {
        let c = self.fw.as_ref()?.counters();
        if (c.frames_in, c.frames_out) == self.reported {
            return None;
        }
        self.reported = (c.frames_in, c.frames_out);
        // While DHCP runs: offers/acks/naks/leases lost, and its drops.
        let dhcp = self
            .dhcp
            .stats()
            .map(|d| {
                format!(
                    " dhcp={}/{}/{}/{} dhcp-dropped={}",
                    d.offers,
                    d.acks,
                    d.naks,
                    d.lost,
                    d.dropped()
                )
            })
            .unwrap_or_default();
        Some(format!(
            "stats: clients={} out={} in={} refused-by-rule={} admin-prohibited={} \
             no-rules={} spoofed={} inter-client={} refused-vifs={} \
             uplink-tx-dropped={} uplink-queued={} uplink-full={} uplink-notifies={} \
             client-tx-dropped={} gso={}/{}B plain={}/{}B segmented={} csum-completed={} \
             gso-dropped={} bad-offload={} rounds={} sleeps={} slept-ms={}{dhcp}",
            stats.clients,
            c.forwarded_out,
            c.forwarded_in,
            c.dropped_by_rule,
            c.admin_prohibited_sent,
            c.dropped_no_rules,
            c.dropped_spoofed + stats.spoofed,
            c.dropped_inter_client,
            self.stats.refused,
            stats.uplink_tx_dropped,
            stats.uplink_queued,
            stats.uplink_full,
            stats.uplink_notifies,
            stats.client_tx_dropped,
            c.forwarded_gso,
            c.forwarded_gso_bytes,
            c.forwarded_plain,
            c.forwarded_plain_bytes,
            c.gso_segmented,
            c.csum_completed,
            c.dropped_gso,
            c.dropped_bad_offload,
            stats.rounds,
            stats.sleeps,
            stats.slept_ns / 1_000_000,
        ))
    }
}

/// What the uplink takes, from what its backend offered: GSO of a type
/// only with scatter-gather (netfront refuses a super-packet without
/// both), blank IPv4 checksums unless `feature-no-csum-offload`, blank
/// IPv6 ones with `feature-ipv6-csum-offload`. Applied at each
/// [`Service::uplink_up`].
pub fn uplink_capabilities(features: &netfront::BackendFeatures) -> Capabilities {
    Capabilities {
        gso_tcpv4: features.sg && features.gso_tcpv4,
        gso_tcpv6: features.sg && features.gso_tcpv6,
        csum_blank_v4: features.ipv4_csum_offload,
        csum_blank_v6: features.ipv6_csum_offload,
    }
}

/// What a client's link takes, from what its frontend asked for: GSO of a
/// type only with scatter-gather (netback drops a super-packet its
/// frontend cannot take), blank checksums always (netback completes them
/// for a frontend that does not take them). Applied at
/// [`Service::client_up`].
pub fn client_capabilities(front: &netback::FrontendConfig) -> Capabilities {
    Capabilities {
        gso_tcpv4: front.sg && front.gso_tcpv4,
        gso_tcpv6: front.sg && front.gso_tcpv6,
        csum_blank_v4: true,
        csum_blank_v6: true,
    }
}

/// The core's view of a link's offload flags.
pub fn offload_in(o: &netvm::Offload) -> Offload {
    Offload {
        csum_blank: o.csum_blank,
        data_validated: o.data_validated,
        gso: o.gso.map(|g| Gso {
            kind: match g.kind {
                xen::netif::GsoKind::TcpV4 => GsoKind::TcpV4,
                xen::netif::GsoKind::TcpV6 => GsoKind::TcpV6,
            },
            mss: g.mss,
        }),
    }
}

/// A link's view of the core's offload flags.
pub fn offload_out(o: &Offload) -> netvm::Offload {
    netvm::Offload {
        csum_blank: o.csum_blank,
        data_validated: o.data_validated,
        gso: o.gso.map(|g| xen::netif::Gso {
            kind: match g.kind {
                GsoKind::TcpV4 => xen::netif::GsoKind::TcpV4,
                GsoKind::TcpV6 => xen::netif::GsoKind::TcpV6,
            },
            mss: g.mss,
        }),
    }
}

/// The local port of the remote syslog's datagrams.
const SYSLOG_PORT: u16 = 50_514;

/// Sends what the kernel's logger queued for a UDP collector
/// (`syslog=udp:ADDRESS[:PORT]`, docs/syslog.md) as datagrams from the
/// uplink address. A TCP or IPv6 collector is not served yet: its
/// messages stay queued, and the full queue drops and counts.
fn send_remote_log(fw: &mut Firewall, now_ns: u64, out: &mut Vec<Transmit>) {
    let _ = kernel::logger::with_remote(|log| {
        let c = log.collector();
        let (moat_syslog::Transport::Udp, core::net::SocketAddr::V4(to)) = (c.transport, c.addr)
        else {
            return;
        };
        while let Some(m) = log.next_datagram(kernel::logger::wallclock()) {
            for t in fw.send_udp_from_uplink(instant(now_ns), SYSLOG_PORT, *to.ip(), to.port(), &m)
            {
                out.push(convert(t));
            }
        }
    });
}

fn convert(t: firewall::Transmit) -> Transmit {
    let to = match t.interface {
        Interface::Uplink => To::Uplink,
        Interface::Client(id) => To::Client(ClientId(id.0)),
    };
    Transmit {
        to,
        packet: Packet {
            data: t.frame,
            offload: offload_out(&t.offload),
        },
    }
}
