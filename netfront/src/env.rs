//! The environment the frontend needs from the kernel.

use core::task::{Context, Poll};
use xen::abi::{DomId, GrantRef, Port};
use xen::grant::GrantError;
use xen::shared_page::{PageMemory, SharedPage};
use xen::xenstore::{XenStore, XsTransport};

/// The platform could not provide a resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvError {
    /// No memory for another page.
    OutOfMemory,
    /// A hypercall failed (Xen's negative errno).
    Hypercall(i32),
}

/// What the kernel provides to a netfront: shareable pages, this domain's
/// grant table, event channels and the xenstore connection. The kernel
/// implements it over its `Platform` (frame allocator, grant table,
/// executor); tests over `xen::sim`.
pub trait NetEnv {
    /// Memory of one shareable page.
    type Page: PageMemory;
    /// The xenstore connection's transport.
    type Xs: XsTransport;

    /// A zeroed, page-aligned page that may be granted.
    fn alloc_page(&mut self) -> Result<SharedPage<Self::Page>, EnvError>;
    /// Grant `domid` access to `frame` (read-only if asked).
    fn grant_access(
        &mut self,
        domid: DomId,
        frame: u64,
        readonly: bool,
    ) -> Result<GrantRef, GrantError>;
    /// Revoke a grant; fails while the grantee still maps it.
    fn end_access(&mut self, gref: GrantRef) -> Result<(), GrantError>;
    /// An unbound event channel port `remote` may bind.
    fn alloc_unbound(&mut self, remote: DomId) -> Result<Port, EnvError>;
    /// Notify the other end of `port`.
    fn notify(&mut self, port: Port);
    /// Ready once an event arrived on `port` since the last `Ready`;
    /// registers `cx`'s waker otherwise.
    fn poll_event(&mut self, port: Port, cx: &mut Context<'_>) -> Poll<()>;
    /// Close `port`.
    fn close_port(&mut self, port: Port);
    /// The xenstore client.
    fn xenstore(&mut self) -> &mut XenStore<Self::Xs>;
}
