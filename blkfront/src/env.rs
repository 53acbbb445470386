//! What the frontend needs from the kernel.
//!
//! The kernel implements [`BlkEnv`] over its frame allocator, grant table
//! and executor. Memory shared with the backend is reached only through
//! [`SharedPage`] and [`RingPages`], whose implementations (in the kernel,
//! or in a simulated hypervisor for tests) hold the `unsafe` accessors;
//! this crate has none.

use core::task::{Context, Poll};
use xen::abi::blkif::{BlkifRequestSlot, BlkifResponse};
use xen::abi::{DomId, GrantRef, Port};
use xen::grant::GrantError;
use xen::ring::FrontRing;

/// Bytes in a page shared with the backend.
pub const PAGE_SIZE: usize = 4096;

/// The blkif front ring.
pub type BlkFrontRing = FrontRing<BlkifRequestSlot, BlkifResponse>;

/// One 4 KiB page of this domain that may be granted to another.
pub trait SharedPage {
    /// The frame number to put in a grant (a GFN on PVH, an MFN on PV).
    fn frame(&self) -> u64;
    /// Copy `buf.len()` bytes out of the page from `offset`. The caller
    /// keeps `offset + buf.len() <= PAGE_SIZE`.
    fn read(&self, offset: usize, buf: &mut [u8]);
    /// Copy `data` into the page at `offset`. The caller keeps
    /// `offset + data.len() <= PAGE_SIZE`.
    fn write(&mut self, offset: usize, data: &[u8]);
}

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
    /// A page for data or indirect segment lists.
    type Page: SharedPage;
    /// The ring's pages.
    type Ring: RingPages;

    /// A zeroed page that can be granted.
    fn alloc_page(&mut self) -> Result<Self::Page, EnvError>;
    /// `2^order` contiguous zeroed pages with a front ring initialised in
    /// them (`FrontRing::init` over `PAGE_SIZE << order` bytes).
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
