//! vchan: the byte-stream channel between two domains that libxenvchan
//! implements and Qubes builds QubesDB and qrexec on (docs/qubes.md).
//!
//! - [`wire`]: the control page's layout and the ring-size rules;
//! - [`stream`]: reading and writing the rings, sans I/O;

pub mod stream;
pub mod wire;
