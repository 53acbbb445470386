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
//! * `specialtarget=dns` matches DNS traffic (TCP or UDP port 53) to the
//!   firewall's upstream resolvers, the addresses queries to the virtual
//!   DNS servers are translated to (Linux's `dns-addr` set, which the
//!   forward chain tests after the DNAT); with `proto=` it matches DNS over
//!   that protocol only, with `dstports=` other than 53 it matches nothing;
//! * any parse error makes the whole rule set of that client drop-all, and
//!   the reason is reported (see [`LoadedRules`]);
//! * on lines dom0 never writes, the Linux agent's reading is followed: an
//!   option given twice keeps its last value; `dstports=` without `proto=`
//!   is TCP or UDP; of several destinations the first of `dst4`, `dst6`,
//!   `dsthost` is used (after the family check, so an IPv4 client's `dst6=`
//!   is still an error); `icmptype=` without `proto=` means ICMP; an option
//!   the agent does not apply (`dpi=`, `expire=`, ...) blocks the client.
//!
//! Where Linux fails in a way that leaves the client's old rules in force
//! (an option without `=` or an empty one crashes the agent's parser), or
//! where nftables would refuse a value (`proto=sctp` is refused here,
//! though nft knows it), the client is blocked instead: a parse error
//! fails closed. Option order is free, as in Linux. `docs/firewall.md`
//! lists every difference.

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
