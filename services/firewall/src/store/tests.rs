use super::*;
use alloc::vec;
use qubes::firewall_rules::{Action, RuleSetError};

const CLIENT: &str = "10.138.0.10";

fn macs() -> Macs {
    Macs {
        uplink: EthernetAddress([2, 0, 0, 0, 0, 1]),
        client_side: QUBES_CLIENT_SIDE_MAC,
    }
}

/// The keys dom0 writes for a sys-firewall with one upstream resolver.
fn base() -> MemoryStore {
    let mut store = MemoryStore::new();
    store.insert(keys::IP, "10.137.0.6");
    store.insert(keys::GATEWAY, "10.137.0.1");
    store.insert(keys::NETVM_GATEWAY, "10.138.0.1");
    store.insert(keys::PRIMARY_DNS, "192.0.2.53");
    store
}

fn config(store: &mut MemoryStore) -> Result<Config, ConfigError> {
    now_or_never(load_config(store, macs())).expect("a memory store answers at once")
}

fn rules(store: &mut MemoryStore, addr: &str) -> Option<LoadedRules> {
    now_or_never(load_rules(store, addr.parse().unwrap()))
        .unwrap()
        .unwrap()
}

fn v4(text: &str) -> IpAddr {
    IpAddr::V4(text.parse().unwrap())
}

#[test]
fn config_from_the_usual_keys() {
    let mut store = base();
    store.insert(keys::SECONDARY_DNS, "192.0.2.54\n");
    let config = config(&mut store).unwrap();
    assert_eq!(config.uplink.ip4, Ipv4Addr::new(10, 137, 0, 6));
    assert_eq!(config.uplink.gateway4, Ipv4Addr::new(10, 137, 0, 1));
    assert_eq!(config.uplink.mac, macs().uplink);
    assert_eq!(config.client_side.gateway4, Ipv4Addr::new(10, 138, 0, 1));
    assert_eq!(config.client_side.mac, QUBES_CLIENT_SIDE_MAC);
    assert_eq!(config.uplink.ip6, None);
    // Primary to primary, secondary to secondary; no IPv6 redirections
    // without an IPv6 upstream.
    let pairs: Vec<_> = config
        .dns
        .iter()
        .map(|d| (d.virtual_server, d.upstream))
        .collect();
    assert_eq!(
        pairs,
        [
            (IpAddr::V4(QUBES_DNS4[0]), Some(v4("192.0.2.53"))),
            (IpAddr::V4(QUBES_DNS4[1]), Some(v4("192.0.2.54"))),
        ]
    );
}

#[test]
fn dns_pairs_cycle_the_upstreams_as_qubes_setup_dnat_to_ns() {
    // qubes-setup-dnat-to-ns: zip(qubesdb_dns, cycle(dns_resolved)).
    let mut store = base();
    let one = config(&mut store).unwrap();
    assert!(one.dns.iter().all(|d| d.upstream == Some(v4("192.0.2.53"))));
    // No upstream: the virtual servers stay, with no upstream (their
    // queries are dropped: "Drop IPv4 DNS requests to qubesdb_dns").
    store.remove(keys::PRIMARY_DNS);
    let none = config(&mut store).unwrap();
    assert_eq!(none.dns.len(), 2);
    assert!(none.dns.iter().all(|d| d.upstream.is_none()));
    // Virtual servers named by QubesDB replace the defaults.
    store.insert(keys::NETVM_PRIMARY_DNS, "10.139.9.1");
    let named = config(&mut store).unwrap();
    assert_eq!(named.dns[0].virtual_server, v4("10.139.9.1"));
    assert_eq!(named.dns[1].virtual_server, IpAddr::V4(QUBES_DNS4[1]));
}

#[test]
fn ipv6_keys() {
    let mut store = base();
    store.insert(keys::IP6, "2001:db8::6");
    assert_eq!(config(&mut store), Err(ConfigError::Ipv6Incomplete));
    store.insert(keys::GATEWAY6, "2001:db8::1");
    store.insert(keys::NETVM_GATEWAY6, "fd09:24ef:4179::a89:1");
    store.insert(keys::PRIMARY_DNS6, "2001:db8::53");
    let config = config(&mut store).unwrap();
    assert_eq!(config.uplink.ip6, Some("2001:db8::6".parse().unwrap()));
    assert_eq!(config.uplink.gateway6, Some("2001:db8::1".parse().unwrap()));
    assert_eq!(
        config.client_side.gateway6,
        Some("fd09:24ef:4179::a89:1".parse().unwrap())
    );
    let v6: Vec<_> = config
        .dns
        .iter()
        .filter(|d| d.virtual_server.is_ipv6())
        .collect();
    assert_eq!(v6.len(), 2);
    assert_eq!(v6[0].virtual_server, IpAddr::V6(QUBES_DNS6[0]));
    assert!(v6
        .iter()
        .all(|d| d.upstream == Some("2001:db8::53".parse().unwrap())));
}

#[test]
fn config_errors_name_the_key() {
    let mut store = base();
    store.remove(keys::GATEWAY);
    assert_eq!(
        config(&mut store),
        Err(ConfigError::Missing { key: keys::GATEWAY })
    );
    let mut store = base();
    store.insert(keys::NETVM_GATEWAY, "10.138.0");
    assert!(matches!(
        config(&mut store),
        Err(ConfigError::Invalid { key, .. }) if key == keys::NETVM_GATEWAY
    ));
    // The wrong family is invalid too.
    let mut store = base();
    store.insert(keys::PRIMARY_DNS, "2001:db8::53");
    assert!(matches!(
        config(&mut store),
        Err(ConfigError::Invalid { key, .. }) if key == keys::PRIMARY_DNS
    ));
    let mut store = base();
    store.insert(keys::IP, vec![b'1'; MAX_VALUE_LEN + 1]);
    assert!(matches!(
        config(&mut store),
        Err(ConfigError::TooLong { len, .. }) if len == MAX_VALUE_LEN + 1
    ));
    let mut store = base();
    store.insert(keys::IP, [0xff, 0xfe]);
    let error = config(&mut store).unwrap_err();
    assert!(matches!(error, ConfigError::Invalid { .. }));
    // Errors print without panicking on what they quote.
    assert!(!alloc::format!("{error}").is_empty());
}

#[test]
fn rules_of_a_client() {
    let mut store = base();
    assert_eq!(rules(&mut store, CLIENT), None, "no directory: no rules");
    store.insert("/qubes-firewall/10.138.0.10/policy", "drop");
    store.insert(
        "/qubes-firewall/10.138.0.10/0002",
        "action=accept proto=tcp dstports=443",
    );
    store.insert(
        "/qubes-firewall/10.138.0.10/0000",
        "action=drop dst4=192.0.2.1",
    );
    store.insert("/qubes-firewall/10.138.0.10", "");
    let loaded = rules(&mut store, CLIENT).unwrap();
    assert_eq!(loaded.error, None);
    assert_eq!(loaded.rules.policy, Action::Drop);
    assert_eq!(loaded.rules.rules.len(), 2);
    assert_eq!(loaded.rules.rules[0].action, Action::Drop, "0000 first");
}

#[test]
fn an_empty_rule_directory_is_drop_all_as_in_linux() {
    // read_rules in qubesagent/firewall.py: "No 'policy' defined" is a
    // parse error, and handle_addr then applies [{'action': 'drop'}].
    let mut store = base();
    store.insert("/qubes-firewall/10.138.0.10", "");
    let loaded = rules(&mut store, CLIENT).unwrap();
    assert_eq!(loaded.error, Some(RuleSetError::MissingPolicy));
    assert_eq!(loaded.rules.policy, Action::Drop);
    assert!(loaded.rules.rules.is_empty());
}

#[test]
fn an_ipv6_client_gets_ipv6_rules() {
    let mut store = base();
    let addr = "fd09:24ef:4179::a8a:a";
    store.insert(&alloc::format!("/qubes-firewall/{addr}/policy"), "drop");
    store.insert(
        &alloc::format!("/qubes-firewall/{addr}/0000"),
        "action=accept dst6=2001:db8::/32",
    );
    let loaded = rules(&mut store, addr).unwrap();
    assert_eq!(loaded.error, None);
    store.insert(
        &alloc::format!("/qubes-firewall/{addr}/0001"),
        "action=accept dst4=192.0.2.1",
    );
    assert!(rules(&mut store, addr).unwrap().error.is_some());
}

#[test]
fn rule_targets_are_the_address_directories() {
    let mut store = base();
    store.insert("/qubes-firewall/10.138.0.11/policy", "accept");
    store.insert("/qubes-firewall/10.138.0.10/policy", "drop");
    store.insert("/qubes-firewall/10.138.0.10", "");
    store.insert("/qubes-firewall/not-an-address/policy", "drop");
    store.insert("/qubes-firewall/FD09::1/policy", "drop");
    store.insert("/qubes-firewall-handled/10.138.0.10", "1");
    let targets = now_or_never(rule_targets(&mut store)).unwrap().unwrap();
    assert_eq!(targets.addrs, [v4("10.138.0.10"), v4("10.138.0.11")]);
    assert_eq!(targets.ignored, 2);
    assert_eq!(targets.truncated, 0);
}

#[test]
fn memory_store_lists_and_removes_like_xenstore() {
    let mut store = MemoryStore::new();
    store.insert("/a/b", "");
    store.insert("/a/b-c", "");
    store.insert("/a/b/d", "");
    store.insert("/ab", "");
    let children = now_or_never(store.list("/a")).unwrap().unwrap();
    assert_eq!(children, ["b", "b-c"]);
    assert_eq!(now_or_never(store.list("/a/")).unwrap().unwrap(), children);
    assert_eq!(store.remove("/a/b"), 2);
    assert_eq!(store.keys().collect::<Vec<_>>(), ["/a/b-c", "/ab"]);
    let mut other = store.clone();
    other.insert("/ab", "x");
    other.insert("/new", "");
    other.remove("/a/b-c");
    assert_eq!(store.changed_keys(&other), ["/a/b-c", "/ab", "/new"]);
}

#[test]
fn reload_acts_on_the_directory_write_only() {
    let reload = Reload::from_keys([
        "/qubes-firewall/10.138.0.10/0000",
        "/qubes-firewall/10.138.0.10/policy",
    ]);
    assert!(reload.is_empty(), "rule entries wait for the final write");
    assert_eq!(reload.ignored, 2);
    let reload = Reload::from_keys([
        "/qubes-firewall/10.138.0.10",
        "/qubes-firewall/x",
        "/qubes-firewall/FD09::1",
    ]);
    assert_eq!(
        reload.clients.iter().copied().collect::<Vec<_>>(),
        [v4("10.138.0.10")]
    );
    assert_eq!(reload.ignored, 2);
    let reload = Reload::from_keys(["/qubes-firewall/"]);
    assert!(reload.all_clients);
    let reload = Reload::from_keys([keys::PRIMARY_DNS, "/unrelated"]);
    assert!(reload.config && reload.clients.is_empty() && reload.ignored == 1);
}

#[test]
fn xenstore_names() {
    let addr6: IpAddr = "fd09:24ef:4179::a89:a".parse().unwrap();
    assert_eq!(encode_addr_component(v4("10.137.0.10")), "10-137-0-10");
    assert_eq!(encode_addr_component(addr6), "fd09_24ef_4179__a89_a");
    assert_eq!(decode_addr_component("10-137-0-10"), Ok(v4("10.137.0.10")));
    assert_eq!(decode_addr_component("fd09_24ef_4179__a89_a"), Ok(addr6));
    // Another spelling would name a directory read back under the usual
    // one: refused.
    assert!(decode_addr_component("fd09_24ef_4179_0_0_0_a89_a").is_err());
    assert!(decode_addr_component("FD09_24ef_4179__a89_a").is_err());
    assert!(decode_addr_component("policy").is_err());
    assert_eq!(key_to_xenstore("/qubes-ip").unwrap(), "qubes-ip");
    assert_eq!(
        key_to_xenstore("/qubes-firewall/10.137.0.10/0001").unwrap(),
        "qubes-firewall/10-137-0-10/0001"
    );
    assert!(matches!(
        key_to_xenstore("/qubes-firewall/host.example/policy"),
        Err(EncodingError::NotAnAddress { .. })
    ));
    assert!(matches!(
        key_to_xenstore("/qubes.ip"),
        Err(EncodingError::BadCharacter { .. })
    ));
    assert!(matches!(
        key_to_xenstore("qubes-ip"),
        Err(EncodingError::Malformed { .. })
    ));
    assert!(matches!(
        key_to_xenstore("/qubes-firewall//policy"),
        Err(EncodingError::Malformed { .. })
    ));
    assert_eq!(
        xenstore_to_key("qubes-firewall/10-137-0-10").unwrap(),
        "/qubes-firewall/10.137.0.10"
    );
    assert_eq!(
        xenstore_to_key("/qubes-firewall/fd09_24ef_4179__a89_a/policy").unwrap(),
        "/qubes-firewall/fd09:24ef:4179::a89:a/policy"
    );
    assert_eq!(
        child_from_xenstore("/qubes-firewall", "10-137-0-10").unwrap(),
        "10.137.0.10"
    );
    assert_eq!(
        child_from_xenstore("/qubes-firewall/10.137.0.10", "0001").unwrap(),
        "0001"
    );
}

/// A store that is never ready, as xenstore is until its answer arrives.
struct Waiting;

impl ConfigStore for Waiting {
    async fn read(&mut self, _key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        core::future::pending().await
    }

    async fn list(&mut self, _dir: &str) -> Result<Vec<String>, StoreError> {
        core::future::pending().await
    }
}

/// A store that has gone away.
struct Broken;

impl ConfigStore for Broken {
    async fn read(&mut self, _key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Err(StoreError::Unavailable {
            reason: String::from("ring closed"),
        })
    }

    async fn list(&mut self, _dir: &str) -> Result<Vec<String>, StoreError> {
        Err(StoreError::Unavailable {
            reason: String::from("ring closed"),
        })
    }
}

#[test]
fn store_failures_propagate() {
    assert!(now_or_never(load_config(&mut Waiting, macs())).is_none());
    assert!(matches!(
        now_or_never(load_config(&mut Broken, macs())).unwrap(),
        Err(ConfigError::Store(StoreError::Unavailable { .. }))
    ));
    assert!(now_or_never(load_rules(&mut Broken, v4(CLIENT)))
        .unwrap()
        .is_err());
    assert!(now_or_never(rule_targets(&mut Broken)).unwrap().is_err());
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn address_components_round_trip(bits in any::<u128>(), v6 in any::<bool>()) {
            let addr = if v6 {
                IpAddr::V6(Ipv6Addr::from(bits))
            } else {
                IpAddr::V4(Ipv4Addr::from(bits as u32))
            };
            let component = encode_addr_component(addr);
            prop_assert!(component.chars().all(xenstore_char));
            prop_assert_eq!(decode_addr_component(&component), Ok(addr));
            let key = alloc::format!("/qubes-firewall/{addr}/policy");
            let path = key_to_xenstore(&key).unwrap();
            prop_assert_eq!(xenstore_to_key(&path).unwrap(), key);
        }

        #[test]
        fn untrusted_names_never_panic(text in ".{0,80}") {
            let _ = decode_addr_component(&text);
            let _ = key_to_xenstore(&text);
            let _ = xenstore_to_key(&text);
            let _ = child_from_xenstore("/qubes-firewall", &text);
            let mut reload = Reload::default();
            reload.add(&text);
        }

        #[test]
        fn untrusted_values_never_panic(value in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut store = base();
            store.insert(keys::NETVM_GATEWAY, &value);
            let _ = config(&mut store);
            store.insert("/qubes-firewall/10.138.0.10/policy", &value);
            store.insert("/qubes-firewall/10.138.0.10/0000", &value);
            let loaded = rules(&mut store, CLIENT).unwrap();
            if loaded.error.is_some() {
                prop_assert_eq!(loaded.rules.rules.len(), 0);
            }
        }
    }
}
