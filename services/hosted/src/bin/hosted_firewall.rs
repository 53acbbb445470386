//! The moat firewall as a Linux process: one uplink and N client TAP
//! devices, configured by a file that mirrors QubesDB (see
//! `hosted::qubesdb_file`). The file is re-read every 100 ms; rule and
//! address changes apply to the next packet, as a QubesDB watch would make
//! them (the TAP devices and clients are those of the start).
//!
//! Usage: `hosted-firewall [--syslog=udp|tcp:ADDRESS[:PORT]]
//! [--syslog-level=LEVEL] [--syslog-queue=N] CONFIG [STATS]` — when STATS
//! is given, the packet counters are written there (one `name value` per
//! line) whenever they change; with `--syslog=` the messages also go to
//! that collector (`hosted::remote_log`), and STATS gains its counters.
//!
//! A changed file that does not parse puts the clients it may concern on
//! deny-all until a valid one arrives (see `hosted::reload`).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;
use std::time::Duration as StdDuration;

use firewall::{ClientConfig, ClientId, Firewall, Instant, Interface, RuleReport, Transmit};
use hosted::fair::{self, RecvTimeoutError};
use hosted::qubesdb_file::HostedConfig;
use hosted::random::OsRandom;
use hosted::reload::{apply_rules, reload, Reload};
use hosted::remote_log::{self, say, Level};
use tun_tap::{Iface, Mode};

/// How often the configuration file is re-read and timers run.
const TICK: StdDuration = StdDuration::from_millis(100);
/// Largest frame read from a TAP device.
const MAX_FRAME: usize = 65536;
/// Frames waiting from one TAP device (its reader waits beyond; the
/// links are taken in turn, so one link's flood cannot hold the others up).
const PER_LINK_QUEUE: usize = 256;

fn open_tap(name: &str) -> Result<Arc<Iface>, String> {
    Iface::without_packet_info(name, Mode::Tap)
        .map(Arc::new)
        .map_err(|e| format!("cannot open TAP device {name}: {e}"))
}

/// Log what became of rules that waited for their `dsthost=` names, as
/// the Linux sys-firewall reports a name that does not resolve.
fn report_rules(fw: &mut Firewall) {
    for report in fw.take_rule_reports() {
        match report {
            RuleReport::Installed { addr } => say(
                Level::Info,
                "rules",
                format_args!("rules for {addr}: dsthost= names resolved, rules in force"),
            ),
            RuleReport::ResolveFailed { addr, name } => say(
                Level::Error,
                "rules",
                format_args!(
                    "/qubes-iptables-error: Failed to parse rules for {addr} (Failed to resolve {name}), blocking traffic"
                ),
            ),
        }
    }
}

/// Put each frame on its link.
fn send_all(uplink: &Arc<Iface>, clients: &[Arc<Iface>], transmits: Vec<Transmit>) {
    for transmit in transmits {
        let tap = match transmit.interface {
            Interface::Uplink => Some(uplink),
            Interface::Client(ClientId(index)) => clients.get(index as usize),
        };
        if let Some(tap) = tap {
            if let Err(e) = tap.send(&transmit.frame) {
                eprintln!("{}: write failed: {e}", tap.name());
            }
        }
    }
}

fn write_stats(path: &str, fw: &Firewall) {
    let c = fw.counters();
    let mut text = format!(
        "{c:#?}\n{:#?}\nflows {}\n",
        fw.resolver_stats(),
        fw.conntrack().len()
    );
    if let Some(s) = remote_log::stats() {
        text += &format!(
            "syslog_queued {}\nsyslog_sent {}\nsyslog_dropped {}\nsyslog_resent {}\n",
            s.queued, s.sent, s.dropped, s.resent
        );
    }
    let _ = std::fs::write(path, text);
}

fn run(config_path: &str, stats_path: Option<&str>) -> Result<(), String> {
    let read = || std::fs::read_to_string(config_path).map_err(|e| format!("{config_path}: {e}"));
    let mut text = read()?;
    let mut config = HostedConfig::parse(&text).map_err(|e| format!("{config_path}: {e}"))?;

    let uplink = open_tap(&config.uplink_tap)?;
    let clients: Vec<Arc<Iface>> = config
        .clients
        .iter()
        .map(|c| open_tap(&c.tap))
        .collect::<Result<_, _>>()?;

    let mut fw = Firewall::with_random(config.firewall.clone(), Box::new(OsRandom));
    for (index, client) in config.clients.iter().enumerate() {
        fw.add_client(
            ClientId(index as u32),
            ClientConfig {
                ip4: client.ip4,
                ip6: client.ip6,
                mac: None,
            },
        );
    }
    apply_rules(&mut fw, &config, &BTreeMap::new());

    let mut links: Vec<(Interface, Arc<Iface>)> = vec![(Interface::Uplink, uplink.clone())];
    for (index, tap) in clients.iter().enumerate() {
        links.push((Interface::Client(ClientId(index as u32)), tap.clone()));
    }
    // One bounded queue per link, taken in turn (hosted::fair).
    let interfaces: Vec<Interface> = links.iter().map(|(i, _)| *i).collect();
    let (senders, frames_rx) = fair::channel::<Vec<u8>>(links.len(), PER_LINK_QUEUE);
    for ((_, tap), tx) in links.into_iter().zip(senders) {
        thread::spawn(move || {
            let mut buf = vec![0u8; MAX_FRAME];
            loop {
                match tap.recv(&mut buf) {
                    Ok(len) => {
                        let frame = buf.get(..len).unwrap_or_default().to_vec();
                        if tx.send(frame).is_err() {
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

    let start = std::time::Instant::now();
    let now = || Instant::from_millis(start.elapsed().as_millis() as i64);
    let mut last_tick = std::time::Instant::now();
    let mut last_counters = None;
    say(
        Level::Info,
        "hosted-firewall",
        format_args!(
            "hosted-firewall running: uplink {}, {} clients",
            config.uplink_tap,
            clients.len()
        ),
    );
    loop {
        match frames_rx.recv_timeout(TICK) {
            Ok((link, frame)) => {
                let Some(&interface) = interfaces.get(link) else {
                    continue;
                };
                let transmits = fw.handle(now(), interface, &frame);
                send_all(&uplink, &clients, transmits);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Err("all TAP readers stopped".into()),
        }
        if last_tick.elapsed() >= TICK {
            last_tick = std::time::Instant::now();
            let transmits = fw.poll(now());
            send_all(&uplink, &clients, transmits);
            report_rules(&mut fw);
            if let Ok(new_text) = read() {
                if new_text != text {
                    text = new_text;
                    match reload(&mut fw, &mut config, &text) {
                        Reload::Applied { flows_ended } => say(
                            Level::Info,
                            "config",
                            format_args!("configuration changed; {flows_ended} flows ended"),
                        ),
                        Reload::Rejected { error, denied } => say(
                            Level::Error,
                            "config",
                            format_args!(
                                "{config_path}: {error}; update rejected, deny-all for {denied:?} until a valid file"
                            ),
                        ),
                    }
                }
            }
            if let Some(path) = stats_path {
                let counters = fw.counters();
                if last_counters != Some(counters) {
                    last_counters = Some(counters);
                    write_stats(path, &fw);
                }
            }
        }
    }
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().collect();
    match remote_log::take_options(&mut args) {
        Ok(Some(options)) => remote_log::start(options, "hosted-firewall"),
        Ok(None) => {}
        Err(e) => {
            eprintln!("hosted-firewall: {e}");
            return ExitCode::from(2);
        }
    }
    let Some(config_path) = args.get(1) else {
        eprintln!("usage: hosted-firewall [--syslog=udp|tcp:ADDRESS[:PORT]] [--syslog-level=LEVEL] [--syslog-queue=N] CONFIG [STATS]");
        return ExitCode::from(2);
    };
    match run(config_path, args.get(2).map(String::as_str)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hosted-firewall: {e}");
            ExitCode::FAILURE
        }
    }
}
