//! The Qubes 4.x firewall rule language.
//!
//! dom0 describes the outbound policy of each client VM in QubesDB:
//!
//! ```text
//! /qubes-firewall/<client-ip>          (empty write: "rules updated")
//! /qubes-firewall/<client-ip>/policy   accept | drop
//! /qubes-firewall/<client-ip>/0000     action=accept dst4=8.8.8.8 proto=udp dstports=53-53
//! /qubes-firewall/<client-ip>/0002     action=drop proto=tcp specialtarget=dns
//! ```
//!
//! The semantics follow the Linux sys-firewall (`qubesagent/firewall.py` in
//! qubes-core-agent-linux), not qubes-mirage-firewall where the two differ:
//!
//! * every `NNNN` entry is read, in numeric order, even when the numbering
//!   has gaps (dom0 leaves gaps when it skips `dst6` rules for an IPv4
//!   client and the other way round);
//! * `specialtarget=dns` matches DNS traffic (port 53) to the configured DNS
//!   servers; with `proto=` it matches DNS over that protocol only, with
//!   `dstports=` other than 53 or `proto=icmp` it matches nothing;
//! * any parse error makes the whole rule set of that client drop-all, and
//!   the reason is reported (see [`LoadedRules`]).
//!
//! Where the format document is stricter than Linux's parser the stricter
//! reading is used, because a parse error fails closed: duplicated options
//! are rejected (Linux silently keeps the last), an empty option (two spaces)
//! is an error (Linux crashes), and values nftables would refuse are
//! rejected here already. Option order is free, as in Linux.

mod error;
mod matcher;
mod parse;
mod types;

pub use error::{RuleError, RuleSetError};
pub use matcher::{FlowQuery, MatchContext};
pub use parse::{parse_rule, MAX_ENTRY_LEN};
pub use types::{
    Action, Destination, Family, LoadedRules, PortRange, Proto, Rule, RuleSet, SpecialTarget,
};

#[cfg(test)]
mod tests;
