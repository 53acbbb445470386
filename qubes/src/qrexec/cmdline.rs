//! The command line dom0 sends with `MSG_EXEC_CMDLINE`/`MSG_JUST_EXEC`,
//! parsed as `libqrexec/exec.c`'s `parse_qubes_rpc_command` does:
//!
//! ```text
//! user:[nogui:]QUBESRPC service[+argument] source-domain[ ...]
//! user:[nogui:]shell command
//! ```
//!
//! qubesd's `run_service` sends `"{user}:QUBESRPC {service} {source}"`
//! (`qubes/vm/qubesvm.py`), e.g. `root:QUBESRPC qubes.SetDateTime dom0`.

use alloc::string::{String, ToString};

/// `MAX_SERVICE_NAME_LEN`: the longest `service+argument`.
pub const MAX_DESCRIPTOR: usize = 65000;
/// `NAME_MAX`: the longest service name (it is a file name upstream).
pub const MAX_NAME: usize = 255;

/// Why a command line was refused (the agent then answers
/// `QREXEC_EXIT_PROBLEM`, 125).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmdlineError {
    /// Not UTF-8.
    NotUtf8,
    /// No `user:` prefix.
    NoUser,
    /// `QUBESRPC` not followed by a space.
    NoSpaceAfterRpc,
    /// No space after the service descriptor, or an empty descriptor.
    BadDescriptor,
    /// An empty or too long service name, or a too long descriptor.
    BadName,
    /// No source domain.
    NoSource,
}

/// What to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A Qubes RPC service.
    Rpc {
        /// `qubes.GetDate`.
        service: String,
        /// What followed `+`, if there was a `+`.
        arg: Option<String>,
        /// The calling domain's name as dom0 presents it.
        source: String,
    },
    /// A shell command (`qvm-run`); moat has no shell.
    Shell(String),
}

/// A parsed command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// The user to run as (before the first `:`).
    pub user: String,
    /// `nogui:` was given (do not wait for a GUI session).
    pub nogui: bool,
    /// The service or command.
    pub kind: Kind,
}

/// Parse a command line (without its NUL).
pub fn parse(cmdline: &[u8]) -> Result<Command, CmdlineError> {
    let s = core::str::from_utf8(cmdline).map_err(|_| CmdlineError::NotUtf8)?;
    let (user, rest) = s.split_once(':').ok_or(CmdlineError::NoUser)?;
    let (nogui, rest) = match rest.strip_prefix("nogui:") {
        Some(r) => (true, r),
        None => (false, rest),
    };
    let kind = match rest.strip_prefix("QUBESRPC") {
        None => Kind::Shell(rest.to_string()),
        Some(r) => {
            let r = r.strip_prefix(' ').ok_or(CmdlineError::NoSpaceAfterRpc)?;
            let (descriptor, after) = r.split_once(' ').ok_or(CmdlineError::BadDescriptor)?;
            if descriptor.is_empty() {
                return Err(CmdlineError::BadDescriptor);
            }
            if descriptor.len() > MAX_DESCRIPTOR {
                return Err(CmdlineError::BadName);
            }
            let (service, arg) = match descriptor.split_once('+') {
                Some((n, a)) => (n, Some(a.to_string())),
                None => (descriptor, None),
            };
            if service.is_empty() || service.len() > MAX_NAME {
                return Err(CmdlineError::BadName);
            }
            let source = after.split(' ').next().unwrap_or("");
            if source.is_empty() {
                return Err(CmdlineError::NoSource);
            }
            Kind::Rpc {
                service: service.to_string(),
                arg,
                source: source.to_string(),
            }
        }
    };
    Ok(Command {
        user: user.to_string(),
        nogui,
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rpc(service: &str, arg: Option<&str>, source: &str) -> Kind {
        Kind::Rpc {
            service: service.into(),
            arg: arg.map(Into::into),
            source: source.into(),
        }
    }

    #[test]
    fn command_lines_as_dom0_sends_them() {
        let c = parse(b"root:QUBESRPC qubes.SetDateTime dom0").unwrap();
        assert_eq!(c.user, "root");
        assert!(!c.nogui);
        assert_eq!(c.kind, rpc("qubes.SetDateTime", None, "dom0"));
        let c = parse(b"user:nogui:QUBESRPC qubes.GetDate+ns dom0 extra").unwrap();
        assert!(c.nogui);
        assert_eq!(c.kind, rpc("qubes.GetDate", Some("ns"), "dom0"));
        let c = parse(b"user:QUBESRPC qubes.WaitForSession+ dom0").unwrap();
        assert_eq!(c.kind, rpc("qubes.WaitForSession", Some(""), "dom0"));
        assert_eq!(
            parse(b"user:ls -l").unwrap().kind,
            Kind::Shell("ls -l".into())
        );
    }

    #[test]
    fn bad_command_lines() {
        assert_eq!(parse(b"QUBESRPC x dom0"), Err(CmdlineError::NoUser));
        assert_eq!(parse(b"u:QUBESRPCx y"), Err(CmdlineError::NoSpaceAfterRpc));
        assert_eq!(parse(b"u:QUBESRPC x"), Err(CmdlineError::BadDescriptor));
        assert_eq!(
            parse(b"u:QUBESRPC  x dom0"),
            Err(CmdlineError::BadDescriptor)
        );
        assert_eq!(parse(b"u:QUBESRPC +a dom0"), Err(CmdlineError::BadName));
        assert_eq!(parse(b"u:QUBESRPC x "), Err(CmdlineError::NoSource));
        assert_eq!(parse(b"u:\xff"), Err(CmdlineError::NotUtf8));
        let long = alloc::format!("u:QUBESRPC {} dom0", "a".repeat(256));
        assert_eq!(parse(long.as_bytes()), Err(CmdlineError::BadName));
    }
}
