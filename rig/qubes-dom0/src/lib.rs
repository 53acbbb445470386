//! The rig's Qubes-shaped dom0 (issue 13 item 6, docs/qubes.md): dom0's
//! QubesDB daemon and qrexec daemon/client for one VM, sans I/O, written
//! for the test from the upstream headers and docs (no Qubes code). The
//! binary `moat-qubes-dom0` runs them over Debian's `vchan-socket-proxy`
//! in the rig's dom0.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod qdb;
pub mod qrexec;
