//! What the frontend needs from the kernel.
//!
//! The kernel implements [`BlkEnv`] over its frame allocator, grant table
//! and executor. Memory shared with the backend is reached only through
//! `xen::shared_page` ([`SharedPage`] over the kernel's [`PageMemory`], whose
//! one `unsafe impl` vouches for the page) and [`RingPages`]; this crate has
//! no `unsafe`. A single-page ring is simply a [`PageFrontRing`].

use core::task::{Context, Poll};
use xen::abi::blkif::{BlkifRequestSlot, BlkifResponse};
use xen::abi::{DomId, GrantRef, Port};
use xen::grant::GrantError;
use xen::ring::FrontRing;

pub use xen::shared_page::{PageFrontRing, PageMemory, SharedPage, PAGE_SIZE};

/// The blkif front ring.
pub type BlkFrontRing = FrontRing<BlkifRequestSlot, BlkifResponse>;

/// `2^order` contiguous pages holding an initialised front ring, owned
/// together so the ring can never outlive its memory.
pub trait RingPages {
    /// Number of pages (`2^order`).
    fn page_count(&self) -> usize;
    /// Frame number of page `index` (`< page_count()`), for its grant.
    fn frame(&self, index: usize) -> u64;
    /// The ring in these pages.
    fn ring(&mut self) -> &mut BlkFrontRing;
}

/// Why the kernel could not provide something.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvError {
    /// No memory for another page.
    OutOfMemory,
    /// Xen refused an operation (its negative errno).
    Xen(i32),
}

/// The kernel services the frontend uses.
pub trait BlkEnv {
    /// Memory of a page for data or indirect segment lists.
    type Mem: PageMemory;
    /// The ring's pages.
    type Ring: RingPages;

    /// A zeroed page that can be granted.
    fn alloc_page(&mut self) -> Result<SharedPage<Self::Mem>, EnvError>;
    /// `2^order` contiguous zeroed pages with a front ring initialised in
    /// them (`FrontRing::init` over `PAGE_SIZE << order` bytes). Order 0
    /// is all an environment must support (`SharedPage::into_front_ring`);
    /// larger orders are asked for only if [`crate::BlkConfig`] allows them.
    fn alloc_ring(&mut self, order: u32) -> Result<Self::Ring, EnvError>;
    /// Grant `domid` access to `frame`.
    fn grant(&mut self, domid: DomId, frame: u64, readonly: bool) -> Result<GrantRef, GrantError>;
    /// End a grant; fails while the grantee still maps the frame.
    fn revoke(&mut self, gref: GrantRef) -> Result<(), GrantError>;
    /// An unbound event channel port that `remote` may bind.
    fn alloc_unbound(&mut self, remote: DomId) -> Result<Port, EnvError>;
    /// Close a port we allocated.
    fn close(&mut self, port: Port);
    /// Send an event on `port`.
    fn notify(&mut self, port: Port);
    /// Ready once an event arrived on `port` since the last `Ready`;
    /// registers `cx`'s waker otherwise.
    fn poll_event(&mut self, port: Port, cx: &mut Context<'_>) -> Poll<()>;
}

impl<M: PageMemory> RingPages for PageFrontRing<M, BlkifRequestSlot, BlkifResponse> {
    fn page_count(&self) -> usize {
        1
    }
    fn frame(&self, _index: usize) -> u64 {
        PageFrontRing::frame(self)
    }
    fn ring(&mut self) -> &mut BlkFrontRing {
        self
    }
}
