//! What became of a rule set that waited for its `dsthost=` names reaches
//! the console: with no resolver the firewall can ask (no random source,
//! so its resolver sends nothing), the name fails and the client is
//! blocked, and the VM says so as the Linux agent does ("Failed to
//! resolve ..., blocking traffic").

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;

use firewall_vm::{FirewallSettings, FirewallVm};
use netfront::MacAddress;
use netvm::config::{Changed, Snapshot};
use netvm::identity::Key;
use netvm::{Service, Transmit, UplinkInfo};

static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn print(line: &str) {
    println!("{line}");
    LINES.lock().unwrap().push(line.to_string());
}

#[test]
fn a_dsthost_that_does_not_resolve_is_reported_and_blocks() {
    let settings = FirewallSettings {
        gw: Some(Ipv4Addr::new(10, 99, 0, 1)),
        dns: vec![Ipv4Addr::new(10, 99, 0, 1)],
        client_gw: Some(Ipv4Addr::new(10, 137, 0, 1)),
        ..FirewallSettings::default()
    };
    let mut vm = FirewallVm::new(settings, print);
    vm.uplink_up(
        1,
        &UplinkInfo {
            mac: MacAddress([0, 0x16, 0x3e, 0x6d, 0x6f, 0x10]),
            backend: "/local/domain/0/backend/vif/7/0".into(),
            ip: Key::Valid(vec![IpAddr::from([10, 99, 0, 10])]),
            features: netfront::BackendFeatures::default(),
        },
    );
    let mut snapshot = Snapshot::default();
    for (k, v) in [
        ("qubes-firewall", ""),
        ("qubes-firewall/10-137-0-10", ""),
        ("qubes-firewall/10-137-0-10/policy", "drop"),
        (
            "qubes-firewall/10-137-0-10/0000",
            "action=accept proto=tcp dsthost=web.moat.test dstports=80-80",
        ),
    ] {
        snapshot.nodes.insert(k.to_string(), v.as_bytes().to_vec());
    }
    vm.configure(
        2,
        &snapshot,
        &Changed {
            paths: vec![],
            all: true,
        },
    );
    let mut out: Vec<Transmit> = Vec::new();
    let mut now = 3;
    let want = "firewall: rules of 10.137.0.10: Failed to resolve web.moat.test, blocking traffic";
    // The resolver gives up within its retries (seconds of virtual time).
    while now < 120_000_000_000 && !LINES.lock().unwrap().iter().any(|l| l == want) {
        vm.tick(now, &mut out);
        now += 100_000_000;
    }
    let lines = LINES.lock().unwrap();
    assert!(lines.iter().any(|l| l == want), "{lines:?}");
    // Reported once.
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("Failed to resolve"))
            .count(),
        1
    );
}
