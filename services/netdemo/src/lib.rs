//! Shared pieces of the driver demo images (`netdemo`, `blkdemo`): a
//! CRC-32 that dom0's tools also compute, a deterministic byte stream, and
//! the sans-I/O core of netdemo's iperf3-compatible server (with the small
//! JSON reader it needs).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod iperf3;
pub mod json;
pub mod stream;
