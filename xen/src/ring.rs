//! Shared-memory rings.
//!
//! `bytes` holds the byte-stream rings of the xenstore and console pages.
pub mod bytes;
