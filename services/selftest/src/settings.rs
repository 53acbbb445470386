//! The selftest's command-line settings (`extra=` in the xl config).

extern crate alloc;
use alloc::format;
use alloc::string::String;

use kernel::cmdline::{self, CmdlineErrors, SettingError, Settings};
use kernel::protection::Probe;

/// How the selftest ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum End {
    /// Power the domain off.
    #[default]
    Poweroff,
    /// Ask for a reboot.
    Reboot,
    /// Panic: the domain must crash with the message on the console.
    Panic,
}

/// `selftest.*` keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SelftestSettings {
    /// `selftest.end=poweroff|reboot|panic`.
    pub end: End,
    /// `selftest.idle=<seconds>`: idle phase length (0..=600, default 5).
    pub idle_s: u64,
    /// `selftest.watch-timeout=<seconds>`: how long to wait for dom0's write.
    pub watch_timeout_s: u64,
    /// `selftest.fault=write-text|exec-data|stack-overflow`: provoke that
    /// fault after the command-line check instead of running the checks
    /// (the domain must crash with the matching report).
    pub fault: Option<Probe>,
}

impl Default for SelftestSettings {
    fn default() -> Self {
        Self {
            end: End::Poweroff,
            idle_s: 5,
            watch_timeout_s: 60,
            fault: None,
        }
    }
}

impl Settings for SelftestSettings {
    fn set(&mut self, key: &str, value: Option<&str>) -> Result<(), SettingError> {
        match key {
            "selftest.end" => {
                self.end = [End::Poweroff, End::Reboot, End::Panic]
                    [cmdline::parse_enum(value, &["poweroff", "reboot", "panic"])?];
            }
            "selftest.idle" => self.idle_s = cmdline::parse_u64_in(value, 0..=600)?,
            "selftest.watch-timeout" => {
                self.watch_timeout_s = cmdline::parse_u64_in(value, 1..=3600)?
            }
            "selftest.fault" => {
                self.fault = Some(Probe::ALL[cmdline::parse_enum(value, &Probe::NAMES)?])
            }
            _ => return Err(SettingError::Unknown),
        }
        Ok(())
    }

    fn known_keys(&self) -> &'static [&'static str] {
        &[
            "selftest.end",
            "selftest.idle",
            "selftest.watch-timeout",
            "selftest.fault",
        ]
    }
}

/// The `cmdline` check: the real command line parsed, and a known-bad one
/// rejected with one error per mistake.
pub fn check(
    line: &str,
    parsed: Result<(), CmdlineErrors>,
    s: &SelftestSettings,
) -> Result<String, String> {
    parsed.map_err(|e| format!("`{line}`: {e}"))?;
    let mut probe = SelftestSettings::default();
    let mut kernel = cmdline::KernelSettings::default();
    let bad = cmdline::parse(
        "bogus=1 loglevel=loud selftest.idle=-3",
        &mut [&mut kernel, &mut probe],
    );
    let n = bad.as_ref().err().map_or(0, |e| e.0.len());
    if n != 3 {
        return Err(format!(
            "bad command line gave {n} errors instead of 3: {bad:?}"
        ));
    }
    Ok(format!(
        "`{line}` -> end={:?} idle={}s; a bad line gave 3 precise errors",
        s.end, s.idle_s
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let mut s = SelftestSettings::default();
        let mut k = cmdline::KernelSettings::default();
        cmdline::parse(
            "selftest.end=reboot selftest.idle=0 loglevel=debug",
            &mut [&mut k, &mut s],
        )
        .unwrap();
        assert_eq!((s.end, s.idle_s), (End::Reboot, 0));
        assert!(cmdline::parse("selftest.end=later", &mut [&mut k, &mut s]).is_err());
        assert_eq!(s.fault, None);
        cmdline::parse("selftest.fault=exec-data", &mut [&mut k, &mut s]).unwrap();
        assert_eq!(s.fault, Some(Probe::ExecData));
        cmdline::parse("selftest.fault=stack-overflow", &mut [&mut k, &mut s]).unwrap();
        assert_eq!(s.fault, Some(Probe::StackOverflow));
        assert!(cmdline::parse("selftest.fault=write-data", &mut [&mut k, &mut s]).is_err());
        assert!(check("", Ok(()), &s).is_ok());
    }
}
