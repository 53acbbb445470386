//! vchan: the byte-stream channel between two domains that libxenvchan
//! implements and Qubes builds QubesDB and qrexec on (docs/qubes.md).
//!
//! - [`wire`]: the control page's layout and the ring-size rules;
//! - [`stream`]: reading and writing the rings, sans I/O;
//! - [`conn`]: server and client set-up over a [`VchanEnv`] (grants,
//!   event channel, xenstore), the async [`Vchan`] and closing.

pub mod conn;
pub mod stream;
pub mod wire;

pub use conn::{
    connect, listen, wait_for_server, EnvError, Lingering, Vchan, VchanEnv, VchanError,
};
