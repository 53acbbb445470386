//! Applying the hosted firewall's configuration file, at start and each
//! time it changes.
//!
//! A changed file that parses replaces the rules of every client whose
//! rules changed, as a QubesDB watch would. A changed file that does not
//! parse is a rejected update: the rules the file held before are not
//! trusted to still be what the user wants (the update may have been meant
//! to tighten them), so every client the broken update may concern drops
//! to deny-all until a file that parses arrives — the same fail-closed
//! answer the Linux sys-firewall gives a client whose rules do not parse
//! ("Failed to parse rules ..., blocking traffic").

use std::collections::BTreeMap;
use std::net::IpAddr;

use firewall::Firewall;
use qubes::firewall_rules::{LoadedRules, RuleSet};

use crate::qubesdb_file::{FileError, HostedConfig};
use crate::remote_log::{say, Level};

/// Install the rules of `config` for every client address that has a rule
/// directory, or had one in `previous`, as the Linux agent's `handle_addr`
/// does: an address that never had rules is dropped silently; one whose
/// directory went away is refused (`Firewall::apply_loaded_rules`). Parse
/// errors are reported like the Linux sys-firewall reports them.
pub fn apply_rules(
    fw: &mut Firewall,
    config: &HostedConfig,
    previous: &BTreeMap<IpAddr, LoadedRules>,
) {
    let mut addresses: Vec<IpAddr> = config.rules.keys().copied().collect();
    addresses.extend(previous.keys().copied());
    addresses.sort();
    addresses.dedup();
    for addr in addresses {
        let loaded = config.rules.get(&addr);
        if previous.get(&addr) == loaded {
            continue;
        }
        if let Some(error) = loaded.and_then(|l| l.error.as_ref()) {
            say(
                Level::Error,
                "rules",
                format_args!(
                    "/qubes-iptables-error: Failed to parse rules for {addr} ({error}), blocking traffic"
                ),
            );
        }
        let killed = fw.apply_loaded_rules(addr, loaded);
        match loaded {
            Some(loaded) => say(
                Level::Info,
                "rules",
                format_args!(
                    "rules for {addr}: {} rules, policy {:?}; {killed} flows killed",
                    loaded.rules.rules.len(),
                    loaded.rules.policy
                ),
            ),
            None => say(
                Level::Info,
                "rules",
                format_args!("rules for {addr} removed: drop-all; {killed} flows killed"),
            ),
        }
    }
}

/// The client addresses a rejected file may concern: the one whose rule
/// directory holds the offending line, when the error names such a line
/// and that client has rules; otherwise every client with rules.
pub fn affected_by_rejection(
    text: &str,
    error: &FileError,
    current: &BTreeMap<IpAddr, LoadedRules>,
) -> Vec<IpAddr> {
    let named = error
        .line
        .checked_sub(1)
        .and_then(|index| text.lines().nth(index))
        .and_then(|line| line.trim_start().strip_prefix("/qubes-firewall/"))
        .and_then(|rest| rest.split(['/', ' ']).next())
        .and_then(|addr| addr.parse::<IpAddr>().ok())
        .filter(|addr| current.contains_key(addr));
    match named {
        Some(addr) => vec![addr],
        None => current.keys().copied().collect(),
    }
}

/// What became of a changed configuration file.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    /// It parsed and is in force; this many flows ended with the change
    /// of the firewall's own configuration (rules report their own).
    Applied {
        /// Flows ended by [`Firewall::set_config`].
        flows_ended: usize,
    },
    /// It did not parse: the listed clients now drop everything.
    Rejected {
        /// Why.
        error: FileError,
        /// The clients put on deny-all.
        denied: Vec<IpAddr>,
    },
}

/// Apply the changed file `text` over `config` (the file in force).
///
/// On a rejected update, `config` keeps its addresses and TAP devices,
/// and its rules record deny-all for the clients put on it, so that the
/// next file that parses installs their rules again.
pub fn reload(fw: &mut Firewall, config: &mut HostedConfig, text: &str) -> Reload {
    match HostedConfig::parse(text) {
        Ok(new_config) => {
            let mut flows_ended = 0;
            if new_config.firewall != config.firewall {
                flows_ended = fw.set_config(new_config.firewall.clone());
            }
            apply_rules(fw, &new_config, &config.rules);
            *config = new_config;
            Reload::Applied { flows_ended }
        }
        Err(error) => {
            let denied = affected_by_rejection(text, &error, &config.rules);
            let deny = LoadedRules {
                rules: RuleSet::drop_all(),
                error: None,
            };
            for addr in &denied {
                if config.rules.get(addr) != Some(&deny) {
                    fw.apply_loaded_rules(*addr, Some(&deny));
                    config.rules.insert(*addr, deny.clone());
                }
            }
            Reload::Rejected { error, denied }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use firewall::link::{ethernet_frame, udp_packet_v4};
    use firewall::{ClientConfig, ClientId, EthernetAddress, Instant, Interface};

    /// The IPv4 ethertype.
    const IPV4: u16 = 0x0800;

    const FILE: &str = "\
/qubes-ip 10.137.0.6
/qubes-gateway 10.137.0.1
/qubes-netvm-gateway 10.138.0.1
/hosted/uplink fwup
/hosted/client/fwa 10.138.0.10
/hosted/client/fwb 10.138.0.11
/qubes-firewall/10.138.0.10/policy accept
/qubes-firewall/10.138.0.11/policy accept
";

    fn firewall(text: &str) -> (Firewall, HostedConfig) {
        let config = HostedConfig::parse(text).unwrap();
        let mut fw = Firewall::new(config.firewall.clone());
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
        (fw, config)
    }

    /// Sends one UDP datagram from client `index` to the Internet; returns
    /// whether the rules dropped it.
    fn dropped_by_rule(fw: &mut Firewall, index: u32, port: u16) -> bool {
        let src = [10, 138, 0, 10 + index as u8].into();
        let packet = udp_packet_v4(src, port, [192, 0, 2, 7].into(), 5000, b"hello");
        let frame = ethernet_frame(
            EthernetAddress([0x00, 0x16, 0x3e, 0, 0, index as u8 + 1]),
            crate::qubesdb_file::CLIENT_SIDE_MAC,
            IPV4.into(),
            &packet,
        );
        let before = fw.counters().dropped_by_rule;
        fw.handle(
            Instant::from_secs(1),
            Interface::Client(ClientId(index)),
            &frame,
        );
        fw.counters().dropped_by_rule == before + 1
    }

    #[test]
    fn a_rejected_update_denies_every_client_it_may_concern() {
        let (mut fw, mut config) = firewall(FILE);
        assert!(!dropped_by_rule(&mut fw, 0, 4000));
        assert!(!dropped_by_rule(&mut fw, 1, 4000));
        // A line the parser refuses, outside any client's rules: nobody
        // can tell what the update meant, so both clients drop.
        let broken = format!("{FILE}qubes-ip oops\n");
        let outcome = reload(&mut fw, &mut config, &broken);
        let Reload::Rejected { error, denied } = outcome else {
            panic!("accepted: {outcome:?}");
        };
        assert_eq!(error.line, 9);
        assert_eq!(denied.len(), 2);
        assert!(dropped_by_rule(&mut fw, 0, 4001));
        assert!(dropped_by_rule(&mut fw, 1, 4001));
        // The next file that parses restores the rules.
        assert_eq!(
            reload(&mut fw, &mut config, FILE),
            Reload::Applied { flows_ended: 0 }
        );
        assert!(!dropped_by_rule(&mut fw, 0, 4002));
        assert!(!dropped_by_rule(&mut fw, 1, 4002));
    }

    #[test]
    fn a_rejected_line_of_one_client_denies_that_client() {
        let (mut fw, mut config) = firewall(FILE);
        let broken = format!("{FILE}/qubes-firewall/10.138.0.11/policy drop\n");
        let Reload::Rejected { error, denied } = reload(&mut fw, &mut config, &broken) else {
            panic!("a key given twice was accepted");
        };
        assert_eq!(error.line, 9);
        assert_eq!(denied, vec!["10.138.0.11".parse::<IpAddr>().unwrap()]);
        assert!(!dropped_by_rule(&mut fw, 0, 4000));
        assert!(dropped_by_rule(&mut fw, 1, 4000));
    }
}
