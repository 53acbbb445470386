//! The kernel command line parser (Xen start info / PVH command line, and
//! the device tree's bootargs on arm32) on arbitrary bytes, with consumers
//! using every typed value helper. Properties: a result or a list of typed
//! errors, never a panic; error and token offsets lie inside the line; a
//! line over `MAX_CMDLINE_LEN` is refused whole.
#![no_main]

use kernel::cmdline::{
    parse_bool, parse_bytes, parse_enum, parse_ipv4, parse_ipv4_cidr, parse_u64, parse_u64_in,
    require, tokens, ErrorKind, KernelSettings, SettingError, Settings, MAX_CMDLINE_LEN,
};
use libfuzzer_sys::fuzz_target;

/// A consumer with a key per value helper.
#[derive(Default)]
struct Every {
    applied: usize,
}

impl Settings for Every {
    fn set(&mut self, key: &str, value: Option<&str>) -> Result<(), SettingError> {
        match key {
            "flag" => parse_bool(value).map(drop),
            "n" => parse_u64(value).map(drop),
            "mtu" => parse_u64_in(value, 68..=65535).map(drop),
            "mode" => parse_enum(value, &["a", "bb", "ccc"]).map(drop),
            "ip" => parse_ipv4(value).map(drop),
            "net" => parse_ipv4_cidr(value).map(|c| {
                assert!(c.contains(c.network()));
            }),
            "name" => require(value).map(drop),
            _ => Err(SettingError::Unknown),
        }?;
        self.applied += 1;
        Ok(())
    }

    fn known_keys(&self) -> &'static [&'static str] {
        &["flag", "n", "mtu", "mode", "ip", "net", "name"]
    }
}

fuzz_target!(|data: &[u8]| {
    let mut kernel = KernelSettings::default();
    let mut every = Every::default();
    let len = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let result = parse_bytes(data, &mut [&mut kernel, &mut every]);
    if len > MAX_CMDLINE_LEN {
        let errors = result.expect_err("an over-long line is refused");
        assert!(matches!(errors.0[..], [ref e] if matches!(e.kind, ErrorKind::TooLong { .. })));
        assert_eq!(every.applied, 0);
    } else if let Err(errors) = &result {
        assert!(!errors.0.is_empty());
        for e in &errors.0 {
            assert!(e.offset <= len, "error offset {} beyond {len}", e.offset);
            let _ = e.to_string();
        }
    }
    if let Ok(line) = core::str::from_utf8(&data[..len.min(MAX_CMDLINE_LEN)]) {
        for token in tokens(line).flatten() {
            assert!(token.offset <= line.len() && token.value_offset <= line.len());
            assert!(line[token.offset..].starts_with(token.key));
        }
    }
});
