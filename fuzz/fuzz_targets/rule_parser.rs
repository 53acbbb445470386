//! The QubesDB firewall rule parser on arbitrary bytes: single rules of
//! both families, and whole directories (one `NAME VALUE` per line).
#![no_main]

use libfuzzer_sys::fuzz_target;
use qubes::firewall_rules::{parse_rule, Family, LoadedRules, Proto, RuleSet};

fuzz_target!(|data: &[u8]| {
    for family in [Family::V4, Family::V6] {
        if let Ok(rule) = parse_rule(family, data) {
            // Invariants of a rule that parsed: ports go with TCP or UDP
            // (given, or both when `proto=` is absent), never with ICMP.
            if rule.dst_ports.is_some() {
                assert_ne!(rule.proto, Some(Proto::Icmp), "ports with ICMP");
            }
        }
    }
    let text = String::from_utf8_lossy(data);
    let entries: Vec<(&str, &[u8])> = text
        .lines()
        .map(|line| {
            let (name, value) = line.split_once(' ').unwrap_or((line, ""));
            (name, value.as_bytes())
        })
        .collect();
    let loaded = LoadedRules::load(Family::V4, entries);
    if loaded.error.is_some() {
        assert_eq!(loaded.rules, RuleSet::drop_all());
    }
});
