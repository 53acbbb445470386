//! moat's kernel: the boot flow, memory, time, the cooperative executor and
//! the `Platform` seam that services use, plus the amd64 arch code.
//!
//! The portable modules (`executor`, `frames`, `heap`, `cmdline`,
//! `regions`) hold no hardware access and are tested on the host; `arch`
//! and `boot` are only built for the bare-metal target.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

#[doc(hidden)]
pub extern crate alloc as alloc_reexport;

#[cfg(all(target_arch = "x86_64", target_os = "none"))]
pub mod arch {
    //! The amd64 arch layer.
    mod x86_64;
    pub use crate::foreign::{ForeignPage, ForeignWriteError, MapError};
    pub use x86_64::*;
}
#[cfg(all(target_arch = "arm", target_os = "none"))]
#[path = "arch/arm.rs"]
pub mod arch;
#[cfg(target_os = "none")]
pub mod boot;
pub mod buildinfo;
pub mod cmdline;
pub mod console;
pub mod control;
#[cfg(target_os = "none")]
pub mod devices;
pub mod entropy;
pub mod executor;
#[cfg(target_os = "none")]
pub mod foreign;
pub mod frames;
pub mod heap;
pub mod logger;
pub mod protection;
pub mod regions;
#[cfg(all(target_os = "none", feature = "qubes"))]
pub mod vchan_env;

/// The kernel heap: grows on demand from the frame allocator.
#[cfg(target_os = "none")]
#[global_allocator]
pub static HEAP: heap::Heap = heap::Heap::new();

#[cfg(target_os = "none")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    boot::fatal(format_args!("{info}"))
}
