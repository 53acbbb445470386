//! The boot command line: the `extra=` string of an xl config, parsed into
//! typed settings.
//!
//! # Format
//!
//! Whitespace-separated tokens, each `key=value` or a bare `key` (a flag:
//! the setting receives no value, which [`parse_bool`] reads as true).
//! A value may be double-quoted to hold spaces: `name="my vpn"`. There are
//! no escapes; a quoted value ends at the next `"`, which must end the token.
//! Keys are ASCII letters, digits, `_`, `-` and `.`.
//!
//! The kernel owns the keys of [`KernelSettings`] (`loglevel`); each service
//! declares its own by implementing [`Settings`]. [`parse`] routes every key
//! to the settings that know it, applies all valid tokens, and returns every
//! error found, each with its byte offset, so one boot shows all mistakes.
//!
//! The command line comes from the toolstack, i.e. from outside the image: it
//! is untrusted, bounded to [`MAX_CMDLINE_LEN`] bytes, and no input makes the
//! parser panic.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::net::Ipv4Addr;
use core::ops::RangeInclusive;

/// Longest command line accepted, in bytes: Xen's `MAX_GUEST_CMDLINE`.
pub const MAX_CMDLINE_LEN: usize = 1024;

/// A consumer of command-line keys: the kernel, or a service.
pub trait Settings {
    /// Applies `key` (one of [`Settings::known_keys`]) with its value (`None`
    /// for a bare `key`). Typed helpers such as [`parse_bool`] and
    /// [`parse_enum`] produce the errors.
    fn set(&mut self, key: &str, value: Option<&str>) -> Result<(), SettingError>;
    /// The keys this consumer accepts.
    fn known_keys(&self) -> &'static [&'static str];
}

/// Why a [`Settings`] rejected a value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SettingError {
    /// The key is not one of [`Settings::known_keys`].
    Unknown,
    /// The key needs a value and was given as a bare flag.
    MissingValue,
    /// The value does not parse; `expected` describes what would.
    Malformed {
        /// What a valid value looks like, e.g. `one of error|warn|info`.
        expected: String,
    },
}

impl SettingError {
    /// A [`SettingError::Malformed`] with the given description.
    pub fn malformed(expected: impl Into<String>) -> Self {
        SettingError::Malformed {
            expected: expected.into(),
        }
    }
}

/// One problem in a command line, at a byte offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CmdlineError {
    /// Byte offset in the command line where the problem starts.
    pub offset: usize,
    /// What is wrong.
    pub kind: ErrorKind,
}

/// What is wrong with a command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The command line is longer than [`MAX_CMDLINE_LEN`]; nothing was parsed.
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The bytes at the offset are not UTF-8; nothing was parsed.
    NotUtf8,
    /// A token starts with `=`.
    EmptyKey,
    /// The key has a character outside `[A-Za-z0-9_.-]`.
    InvalidKey {
        /// The token's key part.
        key: String,
    },
    /// A quoted value has no closing quote.
    UnterminatedQuote {
        /// The key the value belongs to.
        key: String,
    },
    /// A `"` inside an unquoted value, or text right after a closing quote.
    StrayQuote {
        /// The key the value belongs to.
        key: String,
    },
    /// `key=` with nothing after `=`, or a key that needs a value given bare.
    MissingValue {
        /// The key.
        key: String,
    },
    /// The key was already given; the later one is ignored.
    DuplicateKey {
        /// The key.
        key: String,
        /// Offset of the first occurrence, which was applied.
        first_offset: usize,
    },
    /// No settings know the key.
    UnknownKey {
        /// The key.
        key: String,
        /// Every key that is known.
        known: Vec<&'static str>,
    },
    /// The value does not parse.
    Malformed {
        /// The key.
        key: String,
        /// The value given.
        value: String,
        /// What a valid value looks like.
        expected: String,
    },
}

impl fmt::Display for CmdlineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "command line byte {}: ", self.offset)?;
        match &self.kind {
            ErrorKind::TooLong { len } => {
                write!(f, "too long: {len} bytes, at most {MAX_CMDLINE_LEN}")
            }
            ErrorKind::NotUtf8 => write!(f, "not valid UTF-8"),
            ErrorKind::EmptyKey => write!(f, "empty key before `=`"),
            ErrorKind::InvalidKey { key } => write!(
                f,
                "invalid key `{key}`: keys are ASCII letters, digits, `_`, `-` and `.`"
            ),
            ErrorKind::UnterminatedQuote { key } => {
                write!(f, "unterminated quote in the value of `{key}`")
            }
            ErrorKind::StrayQuote { key } => write!(
                f,
                "stray `\"` in the value of `{key}`: quote the whole value, as {key}=\"a b\""
            ),
            ErrorKind::MissingValue { key } => write!(f, "missing value for `{key}`"),
            ErrorKind::DuplicateKey { key, first_offset } => write!(
                f,
                "duplicate key `{key}` (first given at byte {first_offset}; this one is ignored)"
            ),
            ErrorKind::UnknownKey { key, known } => {
                write!(f, "unknown key `{key}` (known keys: ")?;
                for (i, k) in known.iter().enumerate() {
                    let sep = if i == 0 { "" } else { ", " };
                    write!(f, "{sep}{k}")?;
                }
                write!(f, ")")
            }
            ErrorKind::Malformed {
                key,
                value,
                expected,
            } => write!(
                f,
                "malformed value for `{key}`: expected {expected}, got `{value}`"
            ),
        }
    }
}

/// Every error of one command line, in order of their offsets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CmdlineErrors(pub Vec<CmdlineError>);

impl fmt::Display for CmdlineErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

/// One `key[=value]` token of a command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token<'a> {
    /// The key.
    pub key: &'a str,
    /// The value, without quotes; `None` for a bare key.
    pub value: Option<&'a str>,
    /// Byte offset of the key.
    pub offset: usize,
    /// Byte offset of the value (of its opening quote if quoted); equals
    /// `offset` for a bare key.
    pub value_offset: usize,
}

/// Splits a command line into tokens; a malformed token yields an error and
/// the split resumes at the next token.
pub struct Tokens<'a> {
    line: &'a str,
    pos: usize,
}

/// Iterates over the tokens of `line` (which should already be bounded to
/// [`MAX_CMDLINE_LEN`]; [`parse`] does that).
pub fn tokens(line: &str) -> Tokens<'_> {
    Tokens { line, pos: 0 }
}

fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')
}

impl<'a> Tokens<'a> {
    /// The offset of the next whitespace at or after `from`, or the end.
    fn token_end(&self, from: usize) -> usize {
        self.line
            .as_bytes()
            .iter()
            .skip(from)
            .position(u8::is_ascii_whitespace)
            .map_or(self.line.len(), |n| from + n)
    }

    /// `line[range]`, or "" if the range is not on char boundaries (it
    /// always is: every split point is next to an ASCII byte).
    fn slice(&self, start: usize, end: usize) -> &'a str {
        self.line.get(start..end).unwrap_or("")
    }

    fn error(&mut self, offset: usize, kind: ErrorKind) -> Option<Result<Token<'a>, CmdlineError>> {
        // Resume after the offending token.
        self.pos = self.token_end(self.pos);
        Some(Err(CmdlineError { offset, kind }))
    }
}

impl<'a> Iterator for Tokens<'a> {
    type Item = Result<Token<'a>, CmdlineError>;

    fn next(&mut self) -> Option<Self::Item> {
        let bytes = self.line.as_bytes();
        while bytes.get(self.pos).is_some_and(u8::is_ascii_whitespace) {
            self.pos += 1;
        }
        let start = self.pos;
        if start >= bytes.len() {
            return None;
        }
        let end = self.token_end(start);
        let key_end = bytes
            .get(start..end)
            .and_then(|token| token.iter().position(|&b| b == b'='))
            .map_or(end, |n| start + n);
        let key = self.slice(start, key_end);
        if key.is_empty() {
            return self.error(start, ErrorKind::EmptyKey);
        }
        if !key.bytes().all(is_key_byte) {
            let key = key.to_string();
            return self.error(start, ErrorKind::InvalidKey { key });
        }
        if key_end == end {
            self.pos = end;
            return Some(Ok(Token {
                key,
                value: None,
                offset: start,
                value_offset: start,
            }));
        }
        let value_start = key_end + 1;
        if bytes.get(value_start) != Some(&b'"') {
            let value = self.slice(value_start, end);
            let kind = if value.is_empty() {
                Some(ErrorKind::MissingValue {
                    key: key.to_string(),
                })
            } else if value.contains('"') {
                Some(ErrorKind::StrayQuote {
                    key: key.to_string(),
                })
            } else {
                None
            };
            if let Some(kind) = kind {
                return self.error(value_start, kind);
            }
            self.pos = end;
            return Some(Ok(Token {
                key,
                value: Some(value),
                offset: start,
                value_offset: value_start,
            }));
        }
        // Quoted: runs to the next quote, across whitespace.
        let inner_start = value_start + 1;
        let Some(close) = bytes
            .get(inner_start..)
            .and_then(|rest| rest.iter().position(|&b| b == b'"'))
            .map(|n| inner_start + n)
        else {
            self.pos = bytes.len();
            let key = key.to_string();
            return Some(Err(CmdlineError {
                offset: value_start,
                kind: ErrorKind::UnterminatedQuote { key },
            }));
        };
        let after = close + 1;
        if bytes.get(after).is_some_and(|b| !b.is_ascii_whitespace()) {
            self.pos = after;
            let key = key.to_string();
            return self.error(after, ErrorKind::StrayQuote { key });
        }
        self.pos = after;
        Some(Ok(Token {
            key,
            value: Some(self.slice(inner_start, close)),
            offset: start,
            value_offset: value_start,
        }))
    }
}

/// Parses a command line given as the bytes of Xen's start info or PVH
/// command line: it ends at the first NUL (or the slice's end), must be
/// UTF-8 and at most [`MAX_CMDLINE_LEN`] bytes. See [`parse`].
pub fn parse_bytes(line: &[u8], targets: &mut [&mut dyn Settings]) -> Result<(), CmdlineErrors> {
    let len = line.iter().position(|&b| b == 0).unwrap_or(line.len());
    let line = line.get(..len).unwrap_or(line);
    if len > MAX_CMDLINE_LEN {
        return Err(too_long(len));
    }
    match core::str::from_utf8(line) {
        Ok(line) => parse(line, targets),
        Err(e) => Err(CmdlineErrors(alloc::vec![CmdlineError {
            offset: e.valid_up_to(),
            kind: ErrorKind::NotUtf8,
        }])),
    }
}

fn too_long(len: usize) -> CmdlineErrors {
    CmdlineErrors(alloc::vec![CmdlineError {
        offset: MAX_CMDLINE_LEN,
        kind: ErrorKind::TooLong { len },
    }])
}

/// Parses `line`, giving each key to the first of `targets` that knows it.
///
/// Valid tokens are applied even when others are wrong; the result lists
/// every error. A repeated key is applied once (the first) and reported. A
/// line longer than [`MAX_CMDLINE_LEN`] is rejected whole.
pub fn parse(line: &str, targets: &mut [&mut dyn Settings]) -> Result<(), CmdlineErrors> {
    if line.len() > MAX_CMDLINE_LEN {
        return Err(too_long(line.len()));
    }
    let mut errors = Vec::new();
    let mut seen: Vec<(&str, usize)> = Vec::new();
    for token in tokens(line) {
        let token = match token {
            Ok(token) => token,
            Err(error) => {
                errors.push(error);
                continue;
            }
        };
        let key = token.key;
        let Some(target) = targets.iter_mut().find(|t| t.known_keys().contains(&key)) else {
            let known = targets
                .iter()
                .flat_map(|t| t.known_keys())
                .copied()
                .collect();
            errors.push(CmdlineError {
                offset: token.offset,
                kind: ErrorKind::UnknownKey {
                    key: key.to_string(),
                    known,
                },
            });
            continue;
        };
        if let Some(&(_, first_offset)) = seen.iter().find(|(k, _)| *k == key) {
            errors.push(CmdlineError {
                offset: token.offset,
                kind: ErrorKind::DuplicateKey {
                    key: key.to_string(),
                    first_offset,
                },
            });
            continue;
        }
        seen.push((key, token.offset));
        let known = target.known_keys();
        let kind = match target.set(key, token.value) {
            Ok(()) => continue,
            Err(SettingError::Unknown) => ErrorKind::UnknownKey {
                key: key.to_string(),
                known: known.to_vec(),
            },
            Err(SettingError::MissingValue) => ErrorKind::MissingValue {
                key: key.to_string(),
            },
            Err(SettingError::Malformed { expected }) => ErrorKind::Malformed {
                key: key.to_string(),
                value: token.value.unwrap_or("").to_string(),
                expected,
            },
        };
        errors.push(CmdlineError {
            offset: token.value_offset,
            kind,
        });
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(CmdlineErrors(errors))
    }
}

/// The kernel's log verbosity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Errors and warnings.
    Warn,
    /// The default: what an operator wants to see.
    #[default]
    Info,
    /// Developer detail.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// The names accepted on the command line, in the order of the variants.
    pub const NAMES: &'static [&'static str] = &["error", "warn", "info", "debug", "trace"];
    const ALL: [LogLevel; 5] = [
        LogLevel::Error,
        LogLevel::Warn,
        LogLevel::Info,
        LogLevel::Debug,
        LogLevel::Trace,
    ];

    /// The `log` crate filter for this level.
    pub fn to_level_filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

/// The settings the kernel itself reads from the command line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelSettings {
    /// `loglevel=error|warn|info|debug|trace` (default `info`).
    pub loglevel: LogLevel,
    /// `syslog=udp:ADDRESS[:PORT]` or `syslog=tcp:ADDRESS[:PORT]`: a remote
    /// syslog collector (images built with the `syslog` feature).
    #[cfg(feature = "syslog")]
    pub syslog: Option<moat_syslog::Collector>,
    /// `syslog.level=error|warn|info|debug|trace`: what goes to the
    /// collector (default: `loglevel`'s value).
    #[cfg(feature = "syslog")]
    pub syslog_level: Option<LogLevel>,
}

impl Settings for KernelSettings {
    fn set(&mut self, key: &str, value: Option<&str>) -> Result<(), SettingError> {
        match key {
            "loglevel" => {
                let index = parse_enum(value, LogLevel::NAMES)?;
                self.loglevel = LogLevel::ALL
                    .get(index)
                    .copied()
                    .ok_or(SettingError::Unknown)?;
                Ok(())
            }
            #[cfg(feature = "syslog")]
            "syslog" => {
                let collector = moat_syslog::Collector::parse(require(value)?).map_err(|_| {
                    SettingError::malformed("udp:ADDRESS[:PORT] or tcp:ADDRESS[:PORT]")
                })?;
                self.syslog = Some(collector);
                Ok(())
            }
            #[cfg(feature = "syslog")]
            "syslog.level" => {
                let index = parse_enum(value, LogLevel::NAMES)?;
                self.syslog_level = Some(
                    LogLevel::ALL
                        .get(index)
                        .copied()
                        .ok_or(SettingError::Unknown)?,
                );
                Ok(())
            }
            _ => Err(SettingError::Unknown),
        }
    }

    fn known_keys(&self) -> &'static [&'static str] {
        #[cfg(feature = "syslog")]
        return &["loglevel", "syslog", "syslog.level"];
        #[cfg(not(feature = "syslog"))]
        &["loglevel"]
    }
}

/// The value of a key that needs one.
pub fn require(value: Option<&str>) -> Result<&str, SettingError> {
    value.ok_or(SettingError::MissingValue)
}

/// A boolean: a bare key, `true|yes|on|1` are true, `false|no|off|0` false.
pub fn parse_bool(value: Option<&str>) -> Result<bool, SettingError> {
    match value {
        None | Some("true" | "yes" | "on" | "1") => Ok(true),
        Some("false" | "no" | "off" | "0") => Ok(false),
        Some(_) => Err(SettingError::malformed(
            "a boolean (true|false|yes|no|on|off|1|0)",
        )),
    }
}

/// An unsigned integer, decimal or `0x` hexadecimal; no sign, no separators.
pub fn parse_u64(value: Option<&str>) -> Result<u64, SettingError> {
    let value = require(value)?;
    let expected = || SettingError::malformed("an unsigned integer (decimal or 0x hex)");
    let (digits, radix) = match value.strip_prefix("0x") {
        Some(hex) => (hex, 16),
        None => (value, 10),
    };
    // `from_str_radix` accepts a leading `+`; a command line should not.
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(expected());
    }
    u64::from_str_radix(digits, radix).map_err(|_| expected())
}

/// An unsigned integer (see [`parse_u64`]) within `range`.
pub fn parse_u64_in(value: Option<&str>, range: RangeInclusive<u64>) -> Result<u64, SettingError> {
    let n = parse_u64(value)?;
    if range.contains(&n) {
        Ok(n)
    } else {
        Err(SettingError::malformed(format!(
            "an integer in {}..={}",
            range.start(),
            range.end()
        )))
    }
}

/// One of `choices`, returned as its index.
pub fn parse_enum(value: Option<&str>, choices: &[&str]) -> Result<usize, SettingError> {
    let value = require(value)?;
    choices
        .iter()
        .position(|&c| c == value)
        .ok_or_else(|| SettingError::malformed(format!("one of {}", choices.join("|"))))
}

/// A dotted-quad IPv4 address (no leading zeros, no shorthand).
pub fn parse_ipv4(value: Option<&str>) -> Result<Ipv4Addr, SettingError> {
    require(value)?
        .parse()
        .map_err(|_| SettingError::malformed("an IPv4 address such as 10.0.0.2"))
}

/// An IPv4 address with a prefix length, as an interface address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    /// The address (host bits are kept: `10.0.0.2/24` is an interface).
    pub addr: Ipv4Addr,
    /// Prefix length, 0..=32.
    pub prefix_len: u8,
}

impl Ipv4Cidr {
    /// The netmask of the prefix (`255.255.255.0` for /24).
    pub fn netmask(&self) -> Ipv4Addr {
        let bits = u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0);
        Ipv4Addr::from(bits)
    }

    /// The network address (host bits cleared).
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & u32::from(self.netmask()))
    }

    /// Whether `addr` is in this prefix.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & u32::from(self.netmask()) == u32::from(self.network())
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// An IPv4 address with prefix length, such as `10.0.0.2/24`.
pub fn parse_ipv4_cidr(value: Option<&str>) -> Result<Ipv4Cidr, SettingError> {
    let expected =
        || SettingError::malformed("an IPv4 address with prefix length such as 10.0.0.2/24");
    let (addr, prefix) = require(value)?.split_once('/').ok_or_else(expected)?;
    let addr = addr.parse().map_err(|_| expected())?;
    // Digits only, no leading zero, at most 32.
    let canonical = prefix.len() <= 2
        && prefix.bytes().all(|b| b.is_ascii_digit())
        && !(prefix.len() == 2 && prefix.starts_with('0'));
    let prefix_len: u8 = prefix
        .parse()
        .ok()
        .filter(|&p| canonical && p <= 32)
        .ok_or_else(expected)?;
    Ok(Ipv4Cidr { addr, prefix_len })
}

#[cfg(test)]
mod tests;
