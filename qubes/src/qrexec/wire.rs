//! qrexec's messages (qubes-core-qrexec `libqrexec/qrexec.h`), as typed
//! views over received bytes and encoders for what we send.
//!
//! Every message is a `struct msg_header` then `len` bytes of body:
//!
//! ```text
//! msg_header      0  u32 type    4  u32 len            (8 bytes)
//! peer_info       0  u32 version                        (4 bytes)
//! exec_params     0  u32 connect_domain  4  u32 connect_port
//!                 8  char cmdline[]   NUL-terminated, len - 8 bytes
//! service_params  0  char ident[32]                     (32 bytes)
//! ```
//!
//! All integers little endian (the host order of x86 and arm dom0s; the C
//! code sends its structs as they are in memory). Sizes are checked against
//! the header's text in `qubes/tests/qubes_abi.rs`.

use alloc::vec::Vec;
use core::fmt;

/// `sizeof(struct msg_header)`.
pub const HEADER_LEN: usize = 8;
/// `sizeof(struct peer_info)`.
pub const PEER_INFO_LEN: usize = 4;
/// `sizeof(struct exec_params)` without the command line.
pub const EXEC_PARAMS_LEN: usize = 8;
/// `sizeof(struct service_params)`.
pub const SERVICE_PARAMS_LEN: usize = 32;
/// `QREXEC_PROTOCOL_VERSION` of current qubes-core-qrexec (Qubes 4.3; 4.2
/// speaks 3). We offer it and use the smaller of both offers.
pub const PROTOCOL_VERSION: u32 = 4;
/// `QREXEC_DATA_MIN_VERSION` (and the daemon's `QREXEC_AGENT_MIN_VERSION`):
/// version 2.
pub const MIN_VERSION: u32 = 2;
/// `MAX_DATA_CHUNK_V2`: the largest data message below version 3.
pub const MAX_DATA_CHUNK_V2: usize = 4096;
/// `MAX_DATA_CHUNK_V3`: the largest data message from version 3.
pub const MAX_DATA_CHUNK_V3: usize = 65536;
/// `MAX_QREXEC_CMD_LEN`: the daemon refuses longer command lines from its
/// clients; it may grow a little when it replaces `DEFAULT:` by the user
/// name, so we allow one extra KiB before calling a body too long.
pub const MAX_CMDLINE: usize = 65535 + 1024;
/// `VCHAN_BASE_PORT`: the control vchan's port (the agent is its server).
pub const CONTROL_PORT: u32 = 512;
/// `QREXEC_EXIT_SERVICE_NOT_FOUND`: the service does not exist here.
pub const EXIT_SERVICE_NOT_FOUND: u32 = 127;
/// `QREXEC_EXIT_REQUEST_REFUSED`.
pub const EXIT_REQUEST_REFUSED: u32 = 126;
/// `QREXEC_EXIT_PROBLEM`: qrexec itself failed (e.g. an unparsable
/// command line).
pub const EXIT_PROBLEM: u32 = 125;

/// Message types (`enum` in `qrexec.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsgType {
    /// `MSG_EXEC_CMDLINE` (daemon to agent): run, pass stdio.
    ExecCmdline,
    /// `MSG_JUST_EXEC`: run, discard stdio, report 0 at once.
    JustExec,
    /// `MSG_SERVICE_CONNECT`: connect a call this VM triggered.
    ServiceConnect,
    /// `MSG_SERVICE_REFUSED`: a call this VM triggered was refused.
    ServiceRefused,
    /// `MSG_TRIGGER_SERVICE` (agent to daemon, version 2).
    TriggerService,
    /// `MSG_CONNECTION_TERMINATED` (agent to daemon): a data port is free.
    ConnectionTerminated,
    /// `MSG_TRIGGER_SERVICE3`.
    TriggerService3,
    /// `MSG_TRIGGER_SERVICE4`.
    TriggerService4,
    /// `MSG_HELLO`: the first message each way, `peer_info`.
    Hello,
    /// `MSG_DATA_STDIN` (caller to service; length 0 is end of file).
    DataStdin,
    /// `MSG_DATA_STDOUT` (service to caller; length 0 is end of file).
    DataStdout,
    /// `MSG_DATA_STDERR`.
    DataStderr,
    /// `MSG_DATA_EXIT_CODE`: the service's exit status, an `int`.
    DataExitCode,
}

impl MsgType {
    /// The value on the wire.
    pub fn code(self) -> u32 {
        use MsgType::*;
        match self {
            ExecCmdline => 0x200,
            JustExec => 0x201,
            ServiceConnect => 0x202,
            ServiceRefused => 0x203,
            TriggerService => 0x210,
            ConnectionTerminated => 0x211,
            TriggerService3 => 0x212,
            TriggerService4 => 0x213,
            Hello => 0x300,
            DataStdin => 0x190,
            DataStdout => 0x191,
            DataStderr => 0x192,
            DataExitCode => 0x193,
        }
    }

    /// The type of a received value.
    pub fn parse(v: u32) -> Result<Self, WireError> {
        use MsgType::*;
        Ok(match v {
            0x200 => ExecCmdline,
            0x201 => JustExec,
            0x202 => ServiceConnect,
            0x203 => ServiceRefused,
            0x210 => TriggerService,
            0x211 => ConnectionTerminated,
            0x212 => TriggerService3,
            0x213 => TriggerService4,
            0x300 => Hello,
            0x190 => DataStdin,
            0x191 => DataStdout,
            0x192 => DataStderr,
            0x193 => DataExitCode,
            _ => return Err(WireError::BadType(v)),
        })
    }
}

/// A malformed message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// Not a message type of `qrexec.h`.
    BadType(u32),
    /// A known type the receiving side does not take here.
    Unexpected(MsgType),
    /// A body length wrong for the type (or beyond our bound).
    BadLength {
        /// The message type.
        msg_type: MsgType,
        /// Its `len`.
        len: u32,
    },
    /// The first message was not a `MSG_HELLO` of 4 bytes.
    BadHello,
    /// The peer's version is below [`MIN_VERSION`].
    Incompatible(u32),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::BadType(t) => write!(f, "unknown message type {t:#x}"),
            WireError::Unexpected(t) => write!(f, "unexpected {t:?}"),
            WireError::BadLength { msg_type, len } => {
                write!(f, "{msg_type:?} with a body of {len} bytes")
            }
            WireError::BadHello => write!(f, "handshake without a valid MSG_HELLO"),
            WireError::Incompatible(v) => write!(f, "peer's protocol version {v} < {MIN_VERSION}"),
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

/// A received `msg_header`: the type is known, the length is as sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The message type.
    pub msg_type: MsgType,
    /// Bytes of body that follow.
    pub len: u32,
}

impl Header {
    /// Parse the first [`HEADER_LEN`] bytes; `Ok(None)` if fewer.
    pub fn parse(buf: &[u8]) -> Result<Option<Self>, WireError> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        Ok(Some(Header {
            msg_type: MsgType::parse(u32_at(buf, 0))?,
            len: u32_at(buf, 4),
        }))
    }

    /// Encode a header.
    pub fn encode(msg_type: MsgType, len: u32) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..4].copy_from_slice(&msg_type.code().to_le_bytes());
        b[4..].copy_from_slice(&len.to_le_bytes());
        b
    }
}

/// A `MSG_HELLO` with our version.
pub fn hello() -> [u8; HEADER_LEN + PEER_INFO_LEN] {
    let mut b = [0u8; HEADER_LEN + PEER_INFO_LEN];
    b[..HEADER_LEN].copy_from_slice(&Header::encode(MsgType::Hello, PEER_INFO_LEN as u32));
    b[HEADER_LEN..].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    b
}

/// Check a received `MSG_HELLO` (header and body) and return the version
/// both sides use: the smaller offer, at least [`MIN_VERSION`].
pub fn negotiate(h: Header, body: &[u8]) -> Result<u32, WireError> {
    if h.msg_type != MsgType::Hello
        || h.len as usize != PEER_INFO_LEN
        || body.len() != PEER_INFO_LEN
    {
        return Err(WireError::BadHello);
    }
    let theirs = u32_at(body, 0);
    let v = theirs.min(PROTOCOL_VERSION);
    if v < MIN_VERSION {
        return Err(WireError::Incompatible(theirs));
    }
    Ok(v)
}

/// The largest data message at `version` (`max_data_chunk_size`).
pub fn max_chunk(version: u32) -> usize {
    if version < 3 {
        MAX_DATA_CHUNK_V2
    } else {
        MAX_DATA_CHUNK_V3
    }
}

/// A received `exec_params`: where the call's data vchan is, and the
/// command line up to its first NUL (the agent terminates it at the
/// body's last byte whatever was sent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecParams<'a> {
    /// The domain serving the data vchan (dom0 for calls from dom0).
    pub connect_domain: u32,
    /// Its vchan port (the daemon allocates from 513).
    pub connect_port: u32,
    /// The command line, without the NUL.
    pub cmdline: &'a [u8],
}

impl<'a> ExecParams<'a> {
    /// Parse a body of more than 8 bytes.
    pub fn parse(msg_type: MsgType, body: &'a [u8]) -> Result<Self, WireError> {
        if body.len() <= EXEC_PARAMS_LEN || body.len() > EXEC_PARAMS_LEN + MAX_CMDLINE {
            return Err(WireError::BadLength {
                msg_type,
                len: body.len() as u32,
            });
        }
        let rest = &body[EXEC_PARAMS_LEN..body.len() - 1];
        let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
        Ok(ExecParams {
            connect_domain: u32_at(body, 0),
            connect_port: u32_at(body, 4),
            cmdline: &rest[..end],
        })
    }
}

/// A `service_params` ident, up to its NUL.
pub fn ident(body: &[u8]) -> &[u8] {
    let end = body.iter().position(|&c| c == 0).unwrap_or(body.len());
    &body[..end]
}

/// `MSG_CONNECTION_TERMINATED` for a call's data vchan (`exec_params`
/// with an empty command line: 8 bytes).
pub fn connection_terminated(domain: u32, port: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(HEADER_LEN + EXEC_PARAMS_LEN);
    b.extend_from_slice(&Header::encode(
        MsgType::ConnectionTerminated,
        EXEC_PARAMS_LEN as u32,
    ));
    b.extend_from_slice(&domain.to_le_bytes());
    b.extend_from_slice(&port.to_le_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_hello() {
        let h = hello();
        assert_eq!(h, [0, 3, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0]);
        let hdr = Header::parse(&h).unwrap().unwrap();
        assert_eq!(negotiate(hdr, &h[8..]), Ok(4));
        let mut old = h;
        old[8] = 3;
        assert_eq!(negotiate(hdr, &old[8..]), Ok(3));
        old[8] = 1;
        assert_eq!(negotiate(hdr, &old[8..]), Err(WireError::Incompatible(1)));
        old[8] = 9;
        assert_eq!(negotiate(hdr, &old[8..]), Ok(4));
        let bad = Header {
            msg_type: MsgType::Hello,
            len: 5,
        };
        assert_eq!(negotiate(bad, &[0; 5]), Err(WireError::BadHello));
        assert_eq!(Header::parse(&h[..7]), Ok(None));
        assert_eq!(
            Header::parse(&[5, 5, 0, 0, 0, 0, 0, 0]),
            Err(WireError::BadType(0x505))
        );
        assert_eq!(max_chunk(2), 4096);
        assert_eq!(max_chunk(3), 65536);
    }

    #[test]
    fn exec_params() {
        let mut b = vec![0u8, 0, 0, 0, 1, 2, 0, 0];
        b.extend_from_slice(b"user:QUBESRPC qubes.GetDate dom0\0");
        let p = ExecParams::parse(MsgType::ExecCmdline, &b).unwrap();
        assert_eq!((p.connect_domain, p.connect_port), (0, 0x201));
        assert_eq!(p.cmdline, b"user:QUBESRPC qubes.GetDate dom0");
        // No NUL: the last byte is cut as the agent does.
        let mut b = vec![0u8; 8];
        b.extend_from_slice(b"abc");
        assert_eq!(
            ExecParams::parse(MsgType::JustExec, &b).unwrap().cmdline,
            b"ab"
        );
        assert!(ExecParams::parse(MsgType::JustExec, &[0; 8]).is_err());
        assert_eq!(ident(b"SOCKET5\0\0\0"), b"SOCKET5");
        let t = connection_terminated(0, 513);
        assert_eq!(t, [0x11, 2, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0]);
    }
}
