//! The environment a backend needs from the kernel.

use core::task::{Context, Poll};
use xen::abi::grant_table::GnttabCopy;
use xen::abi::{DomId, GrantRef, Port};
use xen::shared_page::{PageMemory, SharedPage};

/// The platform could not provide a resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvError {
    /// No memory for another page, or no room left to map one.
    OutOfMemory,
    /// Xen refused a grant operation (`GNTST_*`).
    Grant(i16),
    /// A hypercall failed (Xen's negative errno).
    Hypercall(i32),
}

/// What the kernel provides to a netback. The kernel implements it over
/// `ForeignPage::map` (ring pages), its frame allocator (local bounce
/// pages), `gnttab_copy`, `evtchn_bind_interdomain`, `evtchn_send` and its
/// event-channel waker table; tests over `xen::sim` (feature `sim`).
///
/// Methods take `&mut self` but no vif state: one environment serves every
/// vif of a driver domain.
pub trait NetbackEnv {
    /// A mapped page of another domain. Dropping it unmaps it (the ring
    /// owning it is dropped when the vif closes).
    type Mapping: PageMemory;
    /// A page of our own, named by its frame in grant copies.
    type Page: PageMemory;

    /// Map `domid`'s grant `gref` read-write (`GNTTABOP_map_grant_ref`).
    fn map_grant(
        &mut self,
        domid: DomId,
        gref: GrantRef,
    ) -> Result<SharedPage<Self::Mapping>, EnvError>;
    /// A zeroed page of ours (freed when dropped).
    fn alloc_page(&mut self) -> Result<SharedPage<Self::Page>, EnvError>;
    /// `GNTTABOP_copy` over `ops`: every op's `status` is set; `Err` only
    /// when the hypercall as a whole failed (then no status is meaningful).
    fn grant_copy(&mut self, ops: &mut [GnttabCopy]) -> Result<(), EnvError>;
    /// Bind to `remote`'s unbound port `remote_port`; our new local port.
    fn bind_interdomain(&mut self, remote: DomId, remote_port: Port) -> Result<Port, EnvError>;
    /// Notify the other end of `port`.
    fn notify(&mut self, port: Port);
    /// Ready once an event arrived on `port` since the last `Ready`;
    /// registers `cx`'s waker otherwise.
    fn poll_event(&mut self, port: Port, cx: &mut Context<'_>) -> Poll<()>;
    /// Close `port`.
    fn close_port(&mut self, port: Port);
}
