//! The core of moat's xenstored, the xenstore server of the xenstore stub
//! domain (issue 16): everything but hypercalls. Connections are byte
//! streams, so the same code serves domains over their shared xenstore
//! pages ([`ring`], through `xen`'s safe page accessors) in the image and
//! over a mock in host tests and fuzzing.
//!
//! - [`path`]: path syntax, relative paths, length limits;
//! - [`perms`]: the permission model of `docs/misc/xenstore.txt`;
//! - [`store`]: the node tree, transactions with conflict detection;
//! - [`decode`]: request headers and payloads into typed requests;
//! - [`conn`]: a domain's byte stream, its bounded output queue;
//! - [`ring`]: a domain's connection over its shared xenstore page;
//! - [`daemon`]: every domain's page and event channel over a platform;
//! - [`server`]: the handlers of every request type, watches, the special
//!   `@introduceDomain` / `@releaseDomain` events, quotas ([`config`]);
//! - [`errno`]: the error names of `io/xs_wire.h`;
//! - [`args`]: the stub domain's command line, C xenstored's options.
//!
//! Facts come from Xen's `docs/misc/xenstore.txt`, `io/xs_wire.h` and the
//! behaviour of C xenstored (`tools/xenstored`, 4.17's `tools/xenstore`);
//! docs/xenstored.md says where this server differs and why.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod args;
pub mod config;
pub mod conn;
pub mod daemon;
pub mod decode;
pub mod errno;
pub mod path;
pub mod perms;
pub mod ring;
pub mod server;
pub mod store;

pub use config::{Config, Quotas};
pub use conn::ConnError;
pub use errno::Errno;
pub use server::{Host, NoHost, Server, Stats};
