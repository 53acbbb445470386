//! moat's arm32 arch layer: the kernel boots as a Xen arm32 guest.
//!
//! The image is a zImage (the header Xen's and xl's loaders probe, see
//! Xen's `docs/misc/arm/booting.txt`) linked at 0x40008000, where xl's
//! zImage loader places it. The entry (head.S) enables the FPU, sets up a
//! stack and clears .bss; `start` then turns the MMU and caches on (1:1
//! map, RAM and Xen's shared regions Normal Inner/Outer Write-Back
//! Inner-Shareable), reads the device tree, and hands the kernel's boot
//! flow what it found.
//!
//! The device tree reader ([`fdt`]) is portable and tested on the host;
//! everything else only exists on the bare-metal target.
#![cfg_attr(not(test), no_std)]
#![deny(missing_docs)]

pub mod fdt;
pub mod sections;

#[cfg(all(target_arch = "arm", target_os = "none"))]
mod machine;
#[cfg(all(target_arch = "arm", target_os = "none"))]
pub use machine::*;
