//! moat's kernel: the boot flow, memory, time, the cooperative executor and
//! the `Platform` seam that services use, plus the amd64 arch code.
//!
//! The portable modules (`executor`, `frames`, `heap`, `cmdline`) hold no
//! hardware access and are tested on the host; `arch` is only built for the
//! bare-metal target.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod cmdline;
pub mod executor;
pub mod frames;
pub mod heap;
