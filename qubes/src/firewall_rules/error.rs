//! Precise reasons why a rule or a rule set was refused.

use alloc::string::String;
use core::fmt;

/// Why one rule entry (`NNNN`) could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleError {
    /// The entry is longer than QubesDB allows ([`super::MAX_ENTRY_LEN`]).
    TooLong {
        /// Length of the entry in bytes.
        len: usize,
    },
    /// The entry is not UTF-8 text.
    NotUtf8,
    /// An empty option: leading, trailing or doubled space, or an empty entry.
    EmptyOption,
    /// An option without `=`.
    MissingEquals {
        /// The offending option (truncated).
        option: String,
    },
    /// An option name that is not part of the format.
    UnknownOption {
        /// The option name (truncated).
        key: String,
    },
    /// The rule has no `action=`.
    MissingAction,
    /// A known option with a value it cannot take.
    InvalidValue {
        /// The option name.
        key: &'static str,
        /// The refused value (truncated).
        value: String,
    },
    /// `dstports=` or `specialtarget=dns` with `proto=icmp` (nft has no
    /// ICMP port, and the Linux agent blocks the client).
    PortsNeedTcpOrUdp,
    /// `icmptype=` with `proto=tcp` or `proto=udp` (conflicting protocols
    /// for nft).
    IcmpTypeNeedsIcmp,
    /// `dst4=` in an IPv6 client's rules, or `dst6=` in an IPv4 client's.
    WrongFamily {
        /// The option name.
        key: &'static str,
    },
}

/// Why a client's rule set was replaced by drop-all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleSetError {
    /// No `policy` entry.
    MissingPolicy,
    /// A `policy` other than `accept` or `drop`.
    InvalidPolicy {
        /// The refused value (truncated).
        value: String,
    },
    /// An entry that is neither `policy` nor a four-digit rule number.
    UnexpectedEntry {
        /// The entry name (truncated).
        name: String,
    },
    /// The same entry name appears twice in the directory listing.
    DuplicateEntry {
        /// The entry name (truncated).
        name: String,
    },
    /// A rule entry failed to parse.
    Rule {
        /// Its number (`NNNN`).
        number: u16,
        /// What was wrong with it.
        error: RuleError,
    },
}

/// Longest piece of untrusted text copied into an error message.
const MAX_QUOTED: usize = 64;

/// A bounded, owned copy of untrusted text for an error message.
pub(crate) fn quote(text: &str) -> String {
    let mut end = text.len().min(MAX_QUOTED);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    String::from(text.get(..end).unwrap_or(""))
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleError::TooLong { len } => {
                write!(
                    f,
                    "rule is {len} bytes, more than the {} QubesDB allows",
                    super::MAX_ENTRY_LEN
                )
            }
            RuleError::NotUtf8 => write!(f, "rule is not UTF-8 text"),
            RuleError::EmptyOption => write!(f, "empty option (stray space)"),
            RuleError::MissingEquals { option } => {
                write!(f, "option '{option}' is not key=value")
            }
            RuleError::UnknownOption { key } => write!(f, "unsupported rule option '{key}'"),
            RuleError::MissingAction => write!(f, "rule lacks action"),
            RuleError::InvalidValue { key, value } => {
                write!(f, "invalid value '{value}' for '{key}'")
            }
            RuleError::PortsNeedTcpOrUdp => {
                write!(
                    f,
                    "dstports and specialtarget=dns need TCP or UDP, not proto=icmp"
                )
            }
            RuleError::IcmpTypeNeedsIcmp => write!(f, "icmptype with proto=tcp or proto=udp"),
            RuleError::WrongFamily { key } => {
                write!(f, "'{key}' does not match the client's address family")
            }
        }
    }
}

impl fmt::Display for RuleSetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleSetError::MissingPolicy => write!(f, "no 'policy' defined"),
            RuleSetError::InvalidPolicy { value } => write!(f, "invalid policy '{value}'"),
            RuleSetError::UnexpectedEntry { name } => write!(f, "unexpected non-rule '{name}'"),
            RuleSetError::DuplicateEntry { name } => write!(f, "entry '{name}' given twice"),
            RuleSetError::Rule { number, error } => write!(f, "rule {number:04}: {error}"),
        }
    }
}
