//! Shared pieces of the driver demo images (`netdemo`, `blkdemo`): a
//! CRC-32 that dom0's tools also compute, and a deterministic byte stream.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod stream;
