//! qrexec, the VM side: the agent that answers dom0's service calls
//! (qubes-core-qrexec; docs/qubes.md, "qrexec").
//!
//! - [`wire`]: `qrexec.h`'s messages;
//! - [`control`]: the control vchan to dom0's qrexec-daemon, sans I/O;
//! - [`cmdline`]: the command lines dom0 sends;
//! - [`call`]: one call's data vchan and the built-in services, sans I/O;
//! - [`time`]: the [`time::Clock`] behind `qubes.SetDateTime` and
//!   `qubes.GetDate`;
//! - [`agent`]: running all of it over vchans.

pub mod agent;
pub mod call;
pub mod cmdline;
pub mod control;
pub mod time;
pub mod wire;

pub use agent::{AgentError, Handled};
pub use call::{Call, Service};
pub use control::{Control, ExecKind, Request};
pub use time::{Clock, UnixTime};
