//! Host tests of the command-line parser.

use super::*;
use proptest::prelude::*;
use std::string::String;
use std::vec;
use std::vec::Vec;

/// A service's settings, as a service would declare them.
#[derive(Debug, Default, PartialEq)]
struct VpnSettings {
    ip: Option<Ipv4Cidr>,
    mtu: u64,
    verbose: bool,
    name: String,
}

impl Settings for VpnSettings {
    fn set(&mut self, key: &str, value: Option<&str>) -> Result<(), SettingError> {
        match key {
            "ip" => self.ip = Some(parse_ipv4_cidr(value)?),
            "mtu" => self.mtu = parse_u64_in(value, 576..=9000)?,
            "verbose" => self.verbose = parse_bool(value)?,
            "name" => self.name = require(value)?.into(),
            _ => return Err(SettingError::Unknown),
        }
        Ok(())
    }
    fn known_keys(&self) -> &'static [&'static str] {
        &["ip", "mtu", "verbose", "name"]
    }
}

fn parse_both(line: &str) -> (KernelSettings, VpnSettings, Result<(), CmdlineErrors>) {
    let mut kernel = KernelSettings::default();
    let mut vpn = VpnSettings::default();
    let result = parse(line, &mut [&mut kernel, &mut vpn]);
    (kernel, vpn, result)
}

fn messages(result: Result<(), CmdlineErrors>) -> Vec<String> {
    result
        .unwrap_err()
        .0
        .iter()
        .map(|e| e.to_string())
        .collect()
}

#[test]
fn valid_line_sets_every_typed_field() {
    let (kernel, vpn, result) =
        parse_both("  loglevel=debug ip=10.0.0.2/24\tverbose name=\"my vpn gw\" mtu=0x578 ");
    assert_eq!(result, Ok(()));
    assert_eq!(kernel.loglevel, LogLevel::Debug);
    assert_eq!(kernel.loglevel.to_level_filter(), log::LevelFilter::Debug);
    let ip = vpn.ip.unwrap();
    assert_eq!(ip.to_string(), "10.0.0.2/24");
    assert_eq!(ip.netmask(), Ipv4Addr::new(255, 255, 255, 0));
    assert_eq!(ip.network(), Ipv4Addr::new(10, 0, 0, 0));
    assert!(ip.contains(Ipv4Addr::new(10, 0, 0, 200)));
    assert!(!ip.contains(Ipv4Addr::new(10, 0, 1, 1)));
    assert_eq!(vpn.mtu, 1400);
    assert!(vpn.verbose);
    assert_eq!(vpn.name, "my vpn gw");
}

#[test]
fn defaults_when_empty() {
    let (kernel, vpn, result) = parse_both("");
    assert_eq!(result, Ok(()));
    assert_eq!(kernel.loglevel, LogLevel::Info);
    assert_eq!(vpn, VpnSettings::default());
    assert_eq!(parse_both(" \t\n ").2, Ok(()));
}

#[test]
fn malformed_loglevel_message() {
    let (kernel, _, result) = parse_both("loglevel=loud");
    assert_eq!(
        messages(result),
        ["command line byte 9: malformed value for `loglevel`: expected one of error|warn|info|debug|trace, got `loud`"]
    );
    assert_eq!(kernel.loglevel, LogLevel::Info, "default kept");
}

#[test]
fn unknown_key_lists_known_keys() {
    let (_, _, result) = parse_both("loglevel=warn foo=1");
    let errors = result.unwrap_err();
    assert_eq!(errors.0.len(), 1);
    assert_eq!(errors.0[0].offset, 14);
    #[cfg(not(feature = "syslog"))]
    let known = "loglevel, ip, mtu, verbose, name";
    #[cfg(feature = "syslog")]
    let known = "loglevel, syslog, syslog.level, ip, mtu, verbose, name";
    assert_eq!(
        errors.to_string(),
        format!("command line byte 14: unknown key `foo` (known keys: {known})")
    );
}

#[test]
fn every_error_is_reported_and_valid_tokens_still_apply() {
    let line = "foo loglevel=trace mtu= ip=10.0.0.1 ip=10.0.0.2/8 name verbose=maybe =x b@d mtu=100 loglevel=error";
    let (kernel, vpn, result) = parse_both(line);
    let errors = result.unwrap_err().0;
    let kinds: Vec<_> = errors.iter().map(|e| (e.offset, &e.kind)).collect();
    assert_eq!(kernel.loglevel, LogLevel::Trace, "first loglevel applied");
    assert_eq!(vpn.ip, None);
    assert_eq!(vpn.mtu, 0);
    let at = |s: &str| line.find(s).unwrap();
    let ip_value = at("ip=10.0.0.1") + 3;
    let dup_ip = at("ip=10.0.0.2/8");
    assert!(matches!(kinds[0], (0, ErrorKind::UnknownKey { key, .. }) if key == "foo"));
    assert!(
        matches!(kinds[1], (o, ErrorKind::MissingValue { key }) if o == at("mtu= ") + 4 && key == "mtu")
    );
    assert!(
        matches!(kinds[2], (o, ErrorKind::Malformed { key, value, .. }) if o == ip_value && key == "ip" && value == "10.0.0.1")
    );
    assert!(
        matches!(kinds[3], (o, ErrorKind::DuplicateKey { key, first_offset }) if o == dup_ip && key == "ip" && *first_offset == ip_value - 3)
    );
    assert!(matches!(kinds[4], (_, ErrorKind::MissingValue { key }) if key == "name"));
    assert!(matches!(kinds[5], (_, ErrorKind::Malformed { key, .. }) if key == "verbose"));
    assert!(matches!(kinds[6], (o, ErrorKind::EmptyKey) if o == at("=x")));
    assert!(matches!(kinds[7], (_, ErrorKind::InvalidKey { key }) if key == "b@d"));
    assert!(
        matches!(kinds[8], (_, ErrorKind::Malformed { key, expected, .. }) if key == "mtu" && expected == "an integer in 576..=9000")
    );
    assert!(matches!(kinds[9], (_, ErrorKind::DuplicateKey { key, .. }) if key == "loglevel"));
    assert_eq!(errors.len(), 10);
}

#[test]
fn quoting_rules() {
    let (_, vpn, result) = parse_both("name=\"\"");
    assert_eq!(result, Ok(()));
    assert_eq!(vpn.name, "", "explicitly empty");
    let (_, vpn, result) = parse_both("name=\"a=b \t c\" verbose=no");
    assert_eq!(result, Ok(()));
    assert_eq!((vpn.name.as_str(), vpn.verbose), ("a=b \t c", false));

    let (_, vpn, result) = parse_both("verbose name=\"never closed loglevel=debug");
    assert!(vpn.verbose);
    assert_eq!(
        messages(result),
        ["command line byte 13: unterminated quote in the value of `name`"]
    );
    let (_, _, result) = parse_both("name=ab\"c\" verbose");
    assert!(matches!(
        &result.unwrap_err().0[..],
        [CmdlineError {
            offset: 5,
            kind: ErrorKind::StrayQuote { .. }
        }]
    ));
    let (_, vpn, result) = parse_both("name=\"abc\"def verbose");
    assert!(vpn.verbose, "parsing resumes after the bad token");
    assert!(matches!(
        &result.unwrap_err().0[..],
        [CmdlineError {
            offset: 10,
            kind: ErrorKind::StrayQuote { .. }
        }]
    ));
}

#[test]
fn too_long_is_rejected_whole() {
    let line = "verbose ".repeat(200);
    let (_, vpn, result) = parse_both(&line);
    assert!(!vpn.verbose);
    assert_eq!(
        messages(result),
        ["command line byte 1024: too long: 1600 bytes, at most 1024"]
    );
    let exact = "x".repeat(MAX_CMDLINE_LEN);
    assert!(matches!(
        &parse_both(&exact).2.unwrap_err().0[0].kind,
        ErrorKind::UnknownKey { .. }
    ));
}

#[test]
fn bytes_stop_at_nul_and_must_be_utf8() {
    let mut raw = [0u8; 1024];
    raw[..23].copy_from_slice(b"loglevel=error verbose\0");
    raw[30] = b'x'; // after the NUL: ignored
    let mut kernel = KernelSettings::default();
    let mut vpn = VpnSettings::default();
    assert_eq!(parse_bytes(&raw, &mut [&mut kernel, &mut vpn]), Ok(()));
    assert_eq!(kernel.loglevel, LogLevel::Error);
    assert!(vpn.verbose);
    let bad = b"verbose name=\xff\xfe";
    let errors = parse_bytes(bad, &mut [&mut kernel]).unwrap_err();
    assert_eq!(
        errors.0[0],
        CmdlineError {
            offset: 13,
            kind: ErrorKind::NotUtf8
        }
    );
    let long = [b'a'; 2000];
    let errors = parse_bytes(&long, &mut [&mut kernel]).unwrap_err();
    assert_eq!(errors.0[0].kind, ErrorKind::TooLong { len: 2000 });
}

#[test]
fn typed_helpers() {
    assert_eq!(parse_bool(None), Ok(true));
    for t in ["true", "yes", "on", "1"] {
        assert_eq!(parse_bool(Some(t)), Ok(true));
    }
    for f in ["false", "no", "off", "0"] {
        assert_eq!(parse_bool(Some(f)), Ok(false));
    }
    assert!(parse_bool(Some("TRUE")).is_err());

    assert_eq!(parse_u64(Some("0")), Ok(0));
    assert_eq!(parse_u64(Some("18446744073709551615")), Ok(u64::MAX));
    assert!(parse_u64(Some("18446744073709551616")).is_err());
    assert_eq!(parse_u64(Some("0xfF")), Ok(255));
    for bad in ["", "+1", "-1", "1_000", "0x", "0x+1", "1.0", "12a", "0xg"] {
        assert!(parse_u64(Some(bad)).is_err(), "{bad}");
    }
    assert_eq!(parse_u64(None), Err(SettingError::MissingValue));
    assert_eq!(parse_u64_in(Some("10"), 1..=10), Ok(10));
    assert!(parse_u64_in(Some("11"), 1..=10).is_err());

    assert_eq!(parse_enum(Some("b"), &["a", "b"]), Ok(1));
    assert_eq!(
        parse_enum(Some("c"), &["a", "b"]),
        Err(SettingError::malformed("one of a|b"))
    );

    assert_eq!(
        parse_ipv4(Some("192.168.1.254")),
        Ok(Ipv4Addr::new(192, 168, 1, 254))
    );
    for bad in ["010.0.0.1", "1.2.3", "256.1.1.1", "1.2.3.4/8", " 1.2.3.4"] {
        assert!(parse_ipv4(Some(bad)).is_err(), "{bad}");
    }
    let cidr = parse_ipv4_cidr(Some("0.0.0.0/0")).unwrap();
    assert_eq!(cidr.netmask(), Ipv4Addr::new(0, 0, 0, 0));
    assert!(cidr.contains(Ipv4Addr::new(8, 8, 8, 8)));
    let host = parse_ipv4_cidr(Some("10.1.2.3/32")).unwrap();
    assert_eq!(host.netmask(), Ipv4Addr::new(255, 255, 255, 255));
    assert!(!host.contains(Ipv4Addr::new(10, 1, 2, 4)));
    for bad in [
        "10.0.0.2",
        "10.0.0.2/",
        "10.0.0.2/33",
        "10.0.0.2/08",
        "10.0.0.2/+8",
        "10.0.0.2/024",
        "/24",
        "10.0.0.2/2/4",
    ] {
        assert!(parse_ipv4_cidr(Some(bad)).is_err(), "{bad}");
    }
}

#[test]
fn tokens_are_zero_copy_with_offsets() {
    let line = "a=1  b \"c\"=x d=\"q q\"";
    let toks: Vec<_> = tokens(line).collect();
    assert_eq!(toks.len(), 4);
    assert_eq!(
        toks[0],
        Ok(Token {
            key: "a",
            value: Some("1"),
            offset: 0,
            value_offset: 2
        })
    );
    assert_eq!(
        toks[1],
        Ok(Token {
            key: "b",
            value: None,
            offset: 5,
            value_offset: 5
        })
    );
    assert!(matches!(
        &toks[2],
        Err(CmdlineError {
            offset: 7,
            kind: ErrorKind::InvalidKey { .. }
        })
    ));
    assert_eq!(
        toks[3],
        Ok(Token {
            key: "d",
            value: Some("q q"),
            offset: 13,
            value_offset: 15
        })
    );
}

/// Records everything it is given, accepting a fixed set of keys.
#[derive(Default)]
struct Recorder(Vec<(String, Option<String>)>);

impl Settings for Recorder {
    fn set(&mut self, key: &str, value: Option<&str>) -> Result<(), SettingError> {
        self.0.push((key.into(), value.map(Into::into)));
        Ok(())
    }
    fn known_keys(&self) -> &'static [&'static str] {
        &["k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7"]
    }
}

proptest! {
    #[test]
    fn arbitrary_strings_never_panic(line in any::<String>()) {
        let _ = parse_both(&line);
        let _ = parse_bytes(line.as_bytes(), &mut [&mut Recorder::default()]);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..1100)) {
        let _ = parse_bytes(&bytes, &mut [&mut KernelSettings::default(), &mut VpnSettings::default()]);
    }

    #[test]
    fn quote_heavy_strings_never_panic_and_offsets_are_in_bounds(
        chars in prop::collection::vec(prop::sample::select(vec!['a', '=', '"', ' ', '\t', 'é', '.', '1']), 0..80)
    ) {
        let line: String = chars.into_iter().collect();
        if let Err(errors) = parse(&line, &mut [&mut Recorder::default()]) {
            for e in errors.0 {
                prop_assert!(e.offset <= line.len());
                prop_assert!(!e.to_string().is_empty());
            }
        }
    }

    #[test]
    fn rendered_assignments_parse_back(
        entries in prop::collection::btree_map(0usize..8, prop::option::of("[a-z0-9 =./]{0,12}"), 0..8)
    ) {
        let mut line = String::new();
        let mut expected = Vec::new();
        for (k, v) in &entries {
            let key = std::format!("k{k}");
            match v {
                None => line.push_str(&key),
                Some(v) => line.push_str(&std::format!("{key}=\"{v}\"")),
            }
            line.push(' ');
            expected.push((key, v.clone()));
        }
        let mut rec = Recorder::default();
        prop_assert_eq!(parse(&line, &mut [&mut rec]), Ok(()));
        prop_assert_eq!(rec.0, expected);
    }
}

#[cfg(feature = "syslog")]
#[test]
fn syslog_collector_and_level() {
    let (kernel, _, result) =
        parse_both("loglevel=warn syslog=tcp:192.0.2.7:601 syslog.level=debug");
    assert!(result.is_ok());
    let c = kernel.syslog.unwrap();
    assert_eq!(c.transport, moat_syslog::Transport::Tcp);
    assert_eq!(c.addr, "192.0.2.7:601".parse().unwrap());
    assert_eq!(kernel.syslog_level, Some(LogLevel::Debug));
    assert_eq!(kernel.loglevel, LogLevel::Warn);
    let (kernel, _, result) = parse_both("syslog=udp:[fd00::1]");
    assert!(result.is_ok());
    assert_eq!(kernel.syslog.unwrap().addr.port(), 514);
    assert_eq!(kernel.syslog_level, None);
    // A bad collector is a typed error naming the key, never a panic.
    let (kernel, _, result) = parse_both("syslog=udp:collector.example");
    assert_eq!(kernel.syslog, None);
    let m = messages(result);
    assert!(
        m.iter()
            .any(|e| e.contains("syslog") && e.contains("udp:ADDRESS")),
        "{m:?}"
    );
}
