//! The stub domain's command line, in C xenstored's option syntax:
//! `init-xenstore-domain` starts the domain with `--event <port>` (dom0's
//! event channel) followed by whatever its `--param` adds, so the options
//! users give C xenstored work here too. Words that are not options
//! (`key=value` kernel settings) are handed back untouched.
//!
//! The command line comes from the toolstack: every word is checked, a bad
//! one is a typed error naming it, nothing panics.

use crate::config::Config;
use crate::path::parse_decimal;
use alloc::string::String;
use alloc::vec::Vec;

/// The parsed command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Args {
    /// dom0's event channel (`--event`, `-e`).
    pub event: Option<u32>,
    /// The domain whose page and port came with the boot (`--master-domid`,
    /// `-m`; default 0).
    pub master_domid: u16,
    /// Quotas and the privileged domain.
    pub config: Config,
    /// Options C xenstored knows that mean nothing here (`--no-fork`,
    /// `--verbose`, soft quotas, timeouts, ...), accepted and named so the
    /// log can say they were ignored.
    pub ignored: Vec<String>,
    /// Words that are not options, in order (kernel settings).
    pub rest: Vec<String>,
}

/// A word of the command line that could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArgError {
    /// The option (or word) concerned.
    pub word: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Options taking a value: (long name, short letter).
const WITH_VALUE: [(&str, char); 11] = [
    ("event", 'e'),
    ("master-domid", 'm'),
    ("priv-domid", 'p'),
    ("entry-nb", 'E'),
    ("entry-size", 'S'),
    ("watch-nb", 'W'),
    ("transaction", 't'),
    ("perm-nb", 'A'),
    ("path-max", 'M'),
    ("quota", 'Q'),
    ("quota-soft", 'q'),
];

/// Options of C xenstored accepted and ignored: (long, short, takes a
/// value).
const IGNORED: [(&str, char, bool); 10] = [
    ("no-domain-init", 'D', false),
    ("no-fork", 'N', false),
    ("output-pid", 'P', false),
    ("verbose", 'V', false),
    ("no-recovery", 'R', false),
    ("pid-file", 'F', true),
    ("trace-file", 'T', true),
    ("timeout", 'w', true),
    ("internal-db", 'I', false),
    ("keep-orphans", 'K', false),
];

fn err(word: &str, reason: &'static str) -> ArgError {
    ArgError {
        word: String::from(word),
        reason,
    }
}

fn number(word: &str, value: &str, max: u64) -> Result<u64, ArgError> {
    parse_decimal(value.as_bytes())
        .filter(|v| *v <= max)
        .ok_or_else(|| err(word, "not a number in range"))
}

/// Parse the whitespace-separated `cmdline`.
pub fn parse(cmdline: &str) -> Result<Args, ArgError> {
    let mut args = Args {
        event: None,
        master_domid: 0,
        config: Config::default(),
        ignored: Vec::new(),
        rest: Vec::new(),
    };
    let mut words = cmdline.split_ascii_whitespace();
    while let Some(word) = words.next() {
        // The option's name and any value attached (`--x=v`, `-xv`).
        let (name, attached): (&str, Option<&str>) = if let Some(long) = word.strip_prefix("--") {
            match long.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (long, None),
            }
        } else if let Some(short) = word.strip_prefix('-') {
            let mut chars = short.chars();
            let Some(letter) = chars.next() else {
                return Err(err(word, "empty option"));
            };
            let rest = chars.as_str();
            let long = WITH_VALUE
                .iter()
                .find(|(_, s)| *s == letter)
                .map(|(l, _)| *l)
                .or_else(|| {
                    IGNORED
                        .iter()
                        .find(|(_, s, _)| *s == letter)
                        .map(|(l, _, _)| *l)
                })
                .ok_or_else(|| err(word, "unknown option"))?;
            (long, (!rest.is_empty()).then_some(rest))
        } else {
            args.rest.push(String::from(word));
            continue;
        };
        if let Some((long, _, takes)) = IGNORED.iter().find(|(l, _, _)| *l == name) {
            if *takes && attached.is_none() {
                words.next().ok_or_else(|| err(word, "missing value"))?;
            }
            args.ignored.push(String::from(*long));
            continue;
        }
        if !WITH_VALUE.iter().any(|(l, _)| *l == name) {
            return Err(err(word, "unknown option"));
        }
        let value = match attached {
            Some(v) => v,
            None => words.next().ok_or_else(|| err(word, "missing value"))?,
        };
        let q = &mut args.config.quotas;
        let max32 = u64::from(u32::MAX);
        match name {
            "event" => args.event = Some(number(word, value, max32)? as u32),
            "master-domid" => args.master_domid = number(word, value, 0x7fef)? as u16,
            "priv-domid" => args.config.priv_domid = Some(number(word, value, 0x7fef)? as u16),
            "quota" => q
                .apply(value.as_bytes())
                .map_err(|_| err(word, "not <quota>=<number> with a known quota"))?,
            "quota-soft" => args.ignored.push(String::from("quota-soft")),
            _ => {
                let v = number(word, value, max32)? as u32;
                let key: &[u8] = match name {
                    "entry-nb" => b"nodes",
                    "entry-size" => b"node-size",
                    "watch-nb" => b"watches",
                    "transaction" => b"transactions",
                    "perm-nb" => b"node-permissions",
                    _ => b"path-max",
                };
                q.set(key, v)
                    .map_err(|_| err(word, "zero is not a quota"))?;
            }
        }
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_init_xenstore_domain_passes() {
        let a = parse("--event 5").unwrap();
        assert_eq!(a.event, Some(5));
        assert_eq!(a.config, Config::default());
        let a = parse("--event 7 --priv-domid 3 -E 500 -W64 --quota=memory=1000000 -Q outstanding=5 loglevel=debug --no-fork -T /x").unwrap();
        assert_eq!((a.event, a.config.priv_domid), (Some(7), Some(3)));
        let q = a.config.quotas;
        assert_eq!(
            (q.nodes, q.watches, q.memory, q.outstanding),
            (500, 64, 1_000_000, 5)
        );
        assert_eq!(a.rest, ["loglevel=debug"]);
        assert_eq!(a.ignored, ["no-fork", "trace-file"]);
        let a = parse("-S 4000 -t 3 -A 9 -M 99999 -m 2").unwrap();
        let q = a.config.quotas;
        assert_eq!(
            (q.node_size, q.transactions, q.perms, q.path_max),
            (4000, 3, 9, 2048)
        );
        assert_eq!(a.master_domid, 2);
    }

    #[test]
    fn bad_words_are_named() {
        for (line, word) in [
            ("--event", "--event"),
            ("--event x", "--event"),
            ("--event 4294967296", "--event"),
            ("--bogus 1", "--bogus"),
            ("-z", "-z"),
            ("-", "-"),
            ("-E 0", "-E"),
            ("--quota nodes", "--quota"),
            ("--quota what=1", "--quota"),
            ("--priv-domid 70000", "--priv-domid"),
            ("--pid-file", "--pid-file"),
        ] {
            assert_eq!(parse(line).unwrap_err().word, word, "{line}");
        }
    }
}
