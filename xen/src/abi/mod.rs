//! Structures shared with Xen, one definition each.
//!
//! Every `#[repr(C)]` type here mirrors a structure of Xen's public headers
//! (named in its doc comment) for the amd64 ABI; `tests/abi.rs` compiles C
//! against Debian's `libxen-dev` headers and compares sizes and field
//! offsets. Constants carry the header's values.

pub mod event_channel;
pub mod grant_table;
pub mod hvm;
pub mod memory;
pub mod netif;
pub mod sched;
pub mod vcpu;
pub mod xen;

/// A domain id (`domid_t`).
pub type DomId = u16;
/// "This domain" in hypercalls that take a domain id (`DOMID_SELF`).
pub const DOMID_SELF: DomId = 0x7FF0;
/// An event channel port number (`evtchn_port_t`).
pub type Port = u32;
/// A grant reference (`grant_ref_t`).
pub type GrantRef = u32;
/// A machine or guest frame number (`xen_pfn_t`, 64-bit on amd64).
pub type XenPfn = u64;
pub mod blkif;
pub mod console;
pub mod ring;
pub mod xs_wire;
