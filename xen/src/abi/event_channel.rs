//! `xen/event_channel.h`: event channel operations.

use super::{DomId, Port};

/// `EVTCHNOP_bind_interdomain`
pub const EVTCHNOP_BIND_INTERDOMAIN: u32 = 0;
/// `EVTCHNOP_bind_virq`
pub const EVTCHNOP_BIND_VIRQ: u32 = 1;
/// `EVTCHNOP_close`
pub const EVTCHNOP_CLOSE: u32 = 3;
/// `EVTCHNOP_send`
pub const EVTCHNOP_SEND: u32 = 4;
/// `EVTCHNOP_alloc_unbound`
pub const EVTCHNOP_ALLOC_UNBOUND: u32 = 6;
/// `EVTCHNOP_unmask`
pub const EVTCHNOP_UNMASK: u32 = 9;

/// `VIRQ_TIMER`: the per-vCPU timer.
pub const VIRQ_TIMER: u32 = 0;
/// `VIRQ_DEBUG`
pub const VIRQ_DEBUG: u32 = 1;
/// `VIRQ_CONSOLE`
pub const VIRQ_CONSOLE: u32 = 2;
/// `VIRQ_DOM_EXC`: some domain shut down, crashed or died (a global VIRQ,
/// for dom0 or the domain Xen was told handles it, e.g. the xenstore
/// domain).
pub const VIRQ_DOM_EXC: u32 = 3;

/// `struct evtchn_alloc_unbound`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EvtchnAllocUnbound {
    /// Domain that owns the new port (`DOMID_SELF`).
    pub dom: DomId,
    /// Domain allowed to bind to it.
    pub remote_dom: DomId,
    /// Out: the new port.
    pub port: Port,
}

/// `struct evtchn_bind_interdomain`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EvtchnBindInterdomain {
    /// The remote domain.
    pub remote_dom: DomId,
    /// The remote domain's unbound port.
    pub remote_port: Port,
    /// Out: our new port.
    pub local_port: Port,
}

/// `struct evtchn_bind_virq`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EvtchnBindVirq {
    /// `VIRQ_*`.
    pub virq: u32,
    /// vCPU to deliver to.
    pub vcpu: u32,
    /// Out: the new port.
    pub port: Port,
}

/// `struct evtchn_close`, `struct evtchn_send`, `struct evtchn_unmask`:
/// operations that take one port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EvtchnPort {
    /// The port.
    pub port: Port,
}
