//! xenstored: moat's xenstore stub domain (issue 16). Debian's
//! `init-xenstore-domain` builds it with `XEN_DOMCTL_CDF_xs_domain`, lets
//! dom0's kernel grant it dom0's xenstore page (`GNTTAB_RESERVED_XENSTORE`)
//! and passes dom0's event channel as `--event <port>`; the image maps
//! that page, binds the port and serves xenstore to dom0, then to every
//! domain the toolstack introduces (`XS_INTRODUCE`: the domain's reserved
//! grant, its port). Everything but the platform and the event loop is
//! the `xenstored` crate (store, permissions, transactions, watches,
//! quotas, the rings), host-tested and fuzzed there.
//!
//! Console lines:
//!
//! ```text
//! xenstored: serving dom<master> on port <port>
//! xenstored: ignoring --<option>
//! xenstored: error: <what>
//! ```
//!
//! On `VIRQ_DOM_EXC` (which `init-xenstore-domain` routes to the xenstore
//! domain) every domain whose end of its event channel is closed is
//! handled as destroyed: its page unmapped, its port closed, its watches
//! and transactions dropped, `@releaseDomain` fired.
//!
//! Not yet: shutdown without destruction (`@releaseDomain` then needs the
//! domain's state from Xen), the kernel's own settings on the same
//! command line, the rig mode (docs/xenstored.md).
#![cfg_attr(target_os = "none", no_std, no_main)]
#![forbid(unsafe_code)]

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(target_os = "none")]
mod image {
    use alloc::vec::Vec;
    use core::future::poll_fn;
    use core::task::Poll;

    use kernel::boot::{Env, Exit};
    use kernel::devices::{ForeignMapping, XenEnv};
    use kernel::println;
    use netback::env::NetbackEnv;
    use xen::abi::event_channel::VIRQ_DOM_EXC;
    use xen::shared_page::SharedPage;
    use xenstored::daemon::{Daemon, Platform};
    use xenstored::Errno;

    kernel::service!(main);

    /// The grant a domain's builder reserves for its xenstore page
    /// (`GNTTAB_RESERVED_XENSTORE`, `grant_table.h`).
    const GNTTAB_RESERVED_XENSTORE: u32 = 1;

    /// The daemon's platform: foreign mappings and interdomain ports as
    /// netback uses them.
    struct KernelPlatform {
        env: XenEnv,
    }

    impl Platform for KernelPlatform {
        type Page = ForeignMapping;

        fn map_store_page(&mut self, domid: u16) -> Result<SharedPage<ForeignMapping>, Errno> {
            NetbackEnv::map_grant(&mut self.env, domid, GNTTAB_RESERVED_XENSTORE)
                .map_err(|_| Errno::Einval)
        }
        fn unmap_store_page(&mut self, _domid: u16, page: SharedPage<ForeignMapping>) {
            // Unmapped when dropped.
            drop(page);
        }
        fn bind(&mut self, domid: u16, remote_port: u32) -> Result<u32, Errno> {
            NetbackEnv::bind_interdomain(&mut self.env, domid, remote_port)
                .map_err(|_| Errno::Einval)
        }
        fn unbind(&mut self, port: u32) {
            NetbackEnv::close_port(&mut self.env, port)
        }
        fn notify(&mut self, port: u32) {
            NetbackEnv::notify(&mut self.env, port)
        }
        fn log(&mut self, line: &str) {
            println!("xenstored: {line}");
        }
        fn peer_gone(&mut self, port: u32) -> bool {
            use xen::evtchn_status::{evtchn_status, PortState};
            matches!(
                evtchn_status(port),
                Ok(PortState::Unbound { .. } | PortState::Closed)
            )
        }
    }

    async fn main(env: Env) -> Exit {
        let args = match xenstored::args::parse(env.platform.cmdline) {
            Ok(args) => args,
            Err(e) => {
                println!("xenstored: error: command line: {}: {}", e.word, e.reason);
                return Exit::Crash;
            }
        };
        for option in &args.ignored {
            println!("xenstored: ignoring --{option}");
        }
        let Some(event) = args.event else {
            println!("xenstored: error: no --event <port> for dom0");
            return Exit::Crash;
        };
        let platform = KernelPlatform {
            env: XenEnv::new(env.platform, env.executor.clone(), None),
        };
        let mut daemon = Daemon::new(args.config, platform);
        if let Err(e) = daemon.connect_privileged(args.master_domid, event) {
            println!(
                "xenstored: error: connecting dom{} on port {event}: {e}",
                args.master_domid
            );
            return Exit::Crash;
        }
        println!(
            "xenstored: serving dom{} on port {event}",
            args.master_domid
        );
        let dom_exc = match xen::event::EventChannel::bind_virq(VIRQ_DOM_EXC, 0) {
            Ok(channel) => Some(channel.port()),
            Err(e) => {
                println!("xenstored: error: VIRQ_DOM_EXC: {e:?} (dead domains stay connected)");
                None
            }
        };
        daemon.serve_all();
        loop {
            let fired: Vec<u32> = poll_fn(|cx| {
                let mut fired = Vec::new();
                if let Some(port) = dom_exc {
                    if NetbackEnv::poll_event(&mut daemon.platform().env, port, cx).is_ready() {
                        fired.push(port);
                    }
                }
                for (_, port) in daemon.ports() {
                    let env = &mut daemon.platform().env;
                    if NetbackEnv::poll_event(env, port, cx).is_ready() {
                        fired.push(port);
                    }
                }
                if fired.is_empty() {
                    Poll::Pending
                } else {
                    Poll::Ready(fired)
                }
            })
            .await;
            for port in fired {
                if Some(port) == dom_exc {
                    for domid in daemon.reap() {
                        println!("xenstored: dom{domid} gone");
                    }
                } else {
                    daemon.on_event(port);
                }
            }
        }
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("xenstored is a Xen guest image (the xenstore stub domain); docs/xenstored.md");
    std::process::exit(2);
}
