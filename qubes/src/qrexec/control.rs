//! The agent's end of the control vchan, sans I/O.
//!
//! The agent is the vchan server on port 512 for dom0
//! (`agent/qrexec-agent.c`: `libvchan_server_init(0, VCHAN_BASE_PORT,
//! 4096, 4096)`); dom0's qrexec-daemon connects
//! (`daemon/qrexec-daemon.c`: `libvchan_client_init(xid,
//! VCHAN_BASE_PORT)`). The agent sends its `MSG_HELLO` first; the daemon
//! reads it, refuses a version below 2, and answers with a `MSG_HELLO`
//! (current daemons echo the agent's `peer_info`). Then the daemon sends:
//! - `MSG_EXEC_CMDLINE`, `MSG_JUST_EXEC` (`exec_params`: the data vchan's
//!   domain and port, and the command line);
//! - `MSG_SERVICE_CONNECT` (`exec_params` whose command line is the ident
//!   of a call this VM triggered) and `MSG_SERVICE_REFUSED`
//!   (`service_params`): answers to calls this VM makes (we make none);
//!
//! and the agent sends `MSG_CONNECTION_TERMINATED` once a call's data
//! vchan is done, so the daemon frees the port. Anything else from the
//! daemon makes the upstream agent exit; here it breaks the channel with a
//! [`WireError`].

use super::wire::{self, ExecParams, Header, MsgType, WireError, HEADER_LEN, SERVICE_PARAMS_LEN};
use alloc::collections::VecDeque;
use alloc::vec::Vec;

/// Which exec message a request came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecKind {
    /// `MSG_EXEC_CMDLINE`: stdio goes over the data vchan, then the exit
    /// status.
    Cmdline,
    /// `MSG_JUST_EXEC`: only an exit status (0 once started).
    JustExec,
    /// `MSG_SERVICE_CONNECT`: a call this VM triggered was accepted.
    ServiceConnect,
}

/// A request from dom0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Run something; its data vchan is served by `domain` on `port`.
    Exec {
        /// Which message.
        kind: ExecKind,
        /// The data vchan's server domain.
        domain: u32,
        /// The data vchan's port.
        port: u32,
        /// The command line (for `ServiceConnect`, the call's ident).
        cmdline: Vec<u8>,
    },
    /// `MSG_SERVICE_REFUSED` for the call `ident`.
    Refused {
        /// The ident.
        ident: Vec<u8>,
    },
}

/// The control channel's state: handshake, parser, output.
#[derive(Default)]
pub struct Control {
    version: Option<u32>,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    requests: VecDeque<Request>,
    broken: Option<WireError>,
}

impl Control {
    /// A fresh channel with our `MSG_HELLO` queued.
    pub fn new() -> Self {
        let mut c = Self::default();
        c.out.extend_from_slice(&wire::hello());
        c
    }

    /// The negotiated version, once dom0's `MSG_HELLO` came.
    pub fn version(&self) -> Option<u32> {
        self.version
    }

    /// The error that broke the channel.
    pub fn broken(&self) -> Option<WireError> {
        self.broken
    }

    /// Bytes to send.
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    /// `n` bytes of output were sent.
    pub fn consume_output(&mut self, n: usize) {
        self.out.drain(..n.min(self.out.len()));
    }

    /// The next request, oldest first.
    pub fn next_request(&mut self) -> Option<Request> {
        self.requests.pop_front()
    }

    /// Tell dom0 a call's data vchan (`domain`, `port`) is finished.
    pub fn terminated(&mut self, domain: u32, port: u32) {
        self.out
            .extend_from_slice(&wire::connection_terminated(domain, port));
    }

    /// Take bytes from dom0. An error is sticky.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        if let Some(e) = self.broken {
            return Err(e);
        }
        let mut buf = core::mem::take(&mut self.inbuf);
        let r = crate::framing::take_messages(&mut buf, bytes, |b| self.one(b));
        self.inbuf = buf;
        if let Err(e) = r {
            self.broken = Some(e);
        }
        r
    }

    fn one(&mut self, buf: &[u8]) -> Result<Option<usize>, WireError> {
        let Some(h) = Header::parse(buf)? else {
            return Ok(None);
        };
        // Bound the body before waiting for it.
        let max = match (self.version, h.msg_type) {
            (None, _) => wire::PEER_INFO_LEN,
            (Some(_), MsgType::ExecCmdline | MsgType::JustExec | MsgType::ServiceConnect) => {
                wire::EXEC_PARAMS_LEN + wire::MAX_CMDLINE
            }
            (Some(_), MsgType::ServiceRefused) => SERVICE_PARAMS_LEN,
            (Some(_), t) => return Err(WireError::Unexpected(t)),
        };
        if h.len as usize > max {
            if self.version.is_none() {
                return Err(WireError::BadHello);
            }
            return Err(WireError::BadLength {
                msg_type: h.msg_type,
                len: h.len,
            });
        }
        let total = HEADER_LEN + h.len as usize;
        let Some(body) = buf.get(HEADER_LEN..total) else {
            return Ok(None);
        };
        let Some(_) = self.version else {
            self.version = Some(wire::negotiate(h, body)?);
            return Ok(Some(total));
        };
        let req = match h.msg_type {
            MsgType::ServiceRefused => {
                if body.len() != SERVICE_PARAMS_LEN {
                    return Err(WireError::BadLength {
                        msg_type: h.msg_type,
                        len: h.len,
                    });
                }
                Request::Refused {
                    ident: wire::ident(body).to_vec(),
                }
            }
            t => {
                let p = ExecParams::parse(t, body)?;
                let kind = match t {
                    MsgType::ExecCmdline => ExecKind::Cmdline,
                    MsgType::JustExec => ExecKind::JustExec,
                    _ => ExecKind::ServiceConnect,
                };
                Request::Exec {
                    kind,
                    domain: p.connect_domain,
                    port: p.connect_port,
                    cmdline: p.cmdline.to_vec(),
                }
            }
        };
        self.requests.push_back(req);
        Ok(Some(total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(t: u32, body: &[u8]) -> Vec<u8> {
        let mut v = t.to_le_bytes().to_vec();
        v.extend_from_slice(&(body.len() as u32).to_le_bytes());
        v.extend_from_slice(body);
        v
    }

    fn exec(t: u32, port: u32, cmd: &[u8]) -> Vec<u8> {
        let mut b = 0u32.to_le_bytes().to_vec();
        b.extend_from_slice(&port.to_le_bytes());
        b.extend_from_slice(cmd);
        b.push(0);
        msg(t, &b)
    }

    fn ready(version: u32) -> Control {
        let mut c = Control::new();
        assert_eq!(c.output(), &msg(0x300, &4u32.to_le_bytes())[..]);
        c.consume_output(usize::MAX);
        c.feed(&msg(0x300, &version.to_le_bytes())).unwrap();
        c
    }

    #[test]
    fn handshake_then_requests() {
        let mut c = ready(3);
        assert_eq!(c.version(), Some(3));
        let mut all = exec(0x200, 513, b"user:QUBESRPC qubes.WaitForSession dom0");
        all.extend(exec(0x201, 514, b"root:QUBESRPC qubes.SetDateTime dom0"));
        all.extend(msg(
            0x203,
            b"SOCKET7\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
        ));
        for b in all.chunks(5) {
            c.feed(b).unwrap();
        }
        assert_eq!(
            c.next_request(),
            Some(Request::Exec {
                kind: ExecKind::Cmdline,
                domain: 0,
                port: 513,
                cmdline: b"user:QUBESRPC qubes.WaitForSession dom0".to_vec()
            })
        );
        assert!(matches!(
            c.next_request(),
            Some(Request::Exec {
                kind: ExecKind::JustExec,
                port: 514,
                ..
            })
        ));
        assert_eq!(
            c.next_request(),
            Some(Request::Refused {
                ident: b"SOCKET7".to_vec()
            })
        );
        c.terminated(0, 513);
        assert_eq!(c.output(), &msg(0x211, &[0, 0, 0, 0, 1, 2, 0, 0])[..]);
    }

    #[test]
    fn protocol_errors_are_sticky_and_typed() {
        let mut c = Control::new();
        assert_eq!(c.feed(&msg(0x200, &[0; 4])), Err(WireError::BadHello));
        assert_eq!(c.feed(&msg(0x300, &[4, 0, 0, 0])), Err(WireError::BadHello));
        let mut c = Control::new();
        assert_eq!(
            c.feed(&msg(0x300, &[4, 0, 0, 0, 0])),
            Err(WireError::BadHello)
        );
        let mut c = Control::new();
        assert_eq!(
            c.feed(&msg(0x300, &1u32.to_le_bytes())),
            Err(WireError::Incompatible(1))
        );
        let mut c = ready(4);
        assert_eq!(
            c.feed(&msg(0x211, &[0; 8])),
            Err(WireError::Unexpected(MsgType::ConnectionTerminated))
        );
        let mut c = ready(4);
        assert_eq!(c.feed(&msg(0x999, &[])), Err(WireError::BadType(0x999)));
        let mut c = ready(4);
        assert!(matches!(
            c.feed(&msg(0x203, &[0; 31])),
            Err(WireError::BadLength { .. })
        ));
        let mut c = ready(4);
        // A huge length is refused before any body arrives.
        let mut h = 0x200u32.to_le_bytes().to_vec();
        h.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(c.feed(&h), Err(WireError::BadLength { .. })));
        let mut c = ready(4);
        assert!(matches!(
            c.feed(&msg(0x200, &[0; 8])),
            Err(WireError::BadLength { .. })
        ));
    }
}
