//! `EVTCHNOP_status`: what a port of ours is bound to now. A vchan (or any
//! split driver) uses it to tell that the other end of an interdomain
//! channel has gone: when the peer closes its port or its domain is
//! destroyed, Xen turns our end into `unbound` without an event.

use crate::abi::{DomId, Port, DOMID_SELF};
use crate::hypercall::XenError;

/// `EVTCHNOP_status`.
pub const EVTCHNOP_STATUS: u32 = 5;

/// `struct evtchn_status` (the union `u` as its raw words).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvtchnStatus {
    /// IN: the domain (`DOMID_SELF`).
    pub dom: DomId,
    /// IN: the port.
    pub port: Port,
    /// OUT: `EVTCHNSTAT_*`.
    pub status: u32,
    /// OUT: the vCPU it is bound to.
    pub vcpu: u32,
    /// OUT: `u.unbound.dom`, `u.interdomain.{dom, port}`, `u.pirq`, `u.virq`.
    pub u: [u32; 2],
}

/// `EVTCHNSTAT_closed`.
pub const EVTCHNSTAT_CLOSED: u32 = 0;
/// `EVTCHNSTAT_unbound`.
pub const EVTCHNSTAT_UNBOUND: u32 = 1;
/// `EVTCHNSTAT_interdomain`.
pub const EVTCHNSTAT_INTERDOMAIN: u32 = 2;

/// What a port is bound to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortState {
    /// Not in use.
    Closed,
    /// Waiting for `remote` to bind it.
    Unbound {
        /// Who may bind.
        remote: DomId,
    },
    /// Connected to `remote`'s `port`.
    Interdomain {
        /// The other domain.
        remote: DomId,
        /// Its port.
        port: Port,
    },
    /// A PIRQ, VIRQ or IPI (the raw `EVTCHNSTAT_*`).
    Other(u32),
}

impl PortState {
    /// Decode a filled-in [`EvtchnStatus`].
    pub fn from_status(s: &EvtchnStatus) -> Self {
        match s.status {
            EVTCHNSTAT_CLOSED => PortState::Closed,
            EVTCHNSTAT_UNBOUND => PortState::Unbound {
                remote: s.u[0] as u16,
            },
            EVTCHNSTAT_INTERDOMAIN => PortState::Interdomain {
                remote: s.u[0] as u16,
                port: s.u[1],
            },
            other => PortState::Other(other),
        }
    }
}

/// The state of our `port`.
pub fn evtchn_status(port: Port) -> Result<PortState, XenError> {
    let mut op = EvtchnStatus {
        dom: DOMID_SELF,
        port,
        ..Default::default()
    };
    let arg = &mut op as *mut EvtchnStatus as usize;
    // SAFETY: `EVTCHNOP_status` reads and writes exactly one
    // `struct evtchn_status`, which `arg` points to (a live, exclusive
    // borrow for the duration of the call); it touches no other memory.
    let r = unsafe {
        crate::hypercall::hypercall(
            crate::abi::xen::hypercall::EVENT_CHANNEL_OP,
            EVTCHNOP_STATUS as usize,
            arg,
            0,
            0,
            0,
        )
    };
    XenError::check(r)?;
    Ok(PortState::from_status(&op))
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn layout_and_decoding() {
        assert_eq!(size_of::<EvtchnStatus>(), 24);
        assert_eq!(offset_of!(EvtchnStatus, port), 4);
        assert_eq!(offset_of!(EvtchnStatus, status), 8);
        assert_eq!(offset_of!(EvtchnStatus, u), 16);
        let mut s = EvtchnStatus {
            status: EVTCHNSTAT_INTERDOMAIN,
            u: [7, 33],
            ..Default::default()
        };
        assert_eq!(
            PortState::from_status(&s),
            PortState::Interdomain {
                remote: 7,
                port: 33
            }
        );
        s.status = EVTCHNSTAT_UNBOUND;
        assert_eq!(PortState::from_status(&s), PortState::Unbound { remote: 7 });
        s.status = EVTCHNSTAT_CLOSED;
        assert_eq!(PortState::from_status(&s), PortState::Closed);
        s.status = 4;
        assert_eq!(PortState::from_status(&s), PortState::Other(4));
        // No hypervisor on the host: the call fails, it does not crash.
        assert_eq!(evtchn_status(1), Err(XenError::ENOSYS));
    }
}
