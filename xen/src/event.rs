//! Event channels: typed handles over the `EVTCHNOP_*` operations.
//!
//! Delivery state (pending and mask bits) lives in the shared info page and
//! is handled by [`crate::shared_info::SharedInfoPage`]; waiting for a port
//! is the kernel executor's job.

use crate::abi::{DomId, Port};
use crate::hypercall::{self, XenError};

/// A bound event channel port of this domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventChannel {
    port: Port,
}

impl EventChannel {
    /// Wraps a port this domain was handed (start info, HVM params, xenstore).
    pub const fn from_port(port: Port) -> Self {
        Self { port }
    }

    /// The port number.
    pub const fn port(self) -> Port {
        self.port
    }

    /// Allocates an unbound port that `remote` may bind to (the usual
    /// frontend side of a split driver).
    pub fn alloc_unbound(remote: DomId) -> Result<Self, XenError> {
        hypercall::evtchn_alloc_unbound(remote).map(Self::from_port)
    }

    /// Binds to `remote`'s unbound port (the usual backend side).
    pub fn bind_interdomain(remote: DomId, remote_port: Port) -> Result<Self, XenError> {
        hypercall::evtchn_bind_interdomain(remote, remote_port).map(Self::from_port)
    }

    /// Binds virtual IRQ `virq` (`VIRQ_*`) of vCPU `vcpu`.
    pub fn bind_virq(virq: u32, vcpu: u32) -> Result<Self, XenError> {
        hypercall::evtchn_bind_virq(virq, vcpu).map(Self::from_port)
    }

    /// Notifies the other end.
    pub fn notify(self) -> Result<(), XenError> {
        hypercall::evtchn_send(self.port)
    }

    /// Closes the port; Xen may hand the number out again afterwards.
    pub fn close(self) -> Result<(), XenError> {
        hypercall::evtchn_close(self.port)
    }
}
