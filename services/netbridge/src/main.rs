//! netbridge: a moat network driver domain. It serves vifs to other
//! domains (`vif=['backend=<this domain>,...']` in their xl configs) with
//! netback, and bridges them, through a learning switch, to its own uplink
//! vif (netfront, e.g. on dom0's bridge). The role Qubes' sys-net and a
//! Linux driver domain play, in a few hundred KiB.
//!
//! It is the first user of the network-VM runtime (`netvm`): the runtime
//! finds, offers, connects, polls and closes the vifs and the uplink, and
//! binds each vif to its `mac` and `ip` (`netvm::binding`); netbridge is
//! only its frame handler ([`bridge::Bridge`]), whose switch pins each
//! bound MAC to its vif, ages what it learns and bounds it per port.
//!
//! Console lines:
//!
//! ```text
//! netbridge: uplink <mac> on <backend>
//! netbridge: vif <path> offered (frontend domain <id>)
//! netbridge: vif <path> connected (frontend domain <id>, client <n>)
//! netbridge: vif <path>: frame from <mac> dropped: <why> (these are counted, not printed again)
//! netbridge: vif <path> closed (<why>)
//! netbridge: vif <path>: <error>; retrying later
//! netbridge: vif <path> removed (the toolstack is done with it)
//! netbridge: stats: ...
//! ```
#![cfg_attr(target_os = "none", no_std, no_main)]
#![forbid(unsafe_code)]

extern crate alloc;

#[cfg_attr(not(any(target_os = "none", test)), allow(dead_code))]
mod bridge;
#[cfg_attr(not(any(target_os = "none", test)), allow(dead_code))]
mod switch;

#[cfg(target_os = "none")]
mod image {
    use kernel::boot::{Env, Exit};
    use kernel::devices::XenEnv;
    use kernel::println;
    use netback::BackendOptions;
    use netvm::{Options, Stop};

    use crate::bridge::Bridge;

    kernel::service!(main);

    /// netbridge has no command-line keys of its own (only the kernel's).
    struct NoKeys;

    impl kernel::cmdline::Settings for NoKeys {
        fn set(
            &mut self,
            _key: &str,
            _value: Option<&str>,
        ) -> Result<(), kernel::cmdline::SettingError> {
            Err(kernel::cmdline::SettingError::Unknown)
        }

        fn known_keys(&self) -> &'static [&'static str] {
            &[]
        }
    }

    fn print(line: &str) {
        println!("{line}");
    }

    /// Free frames and heap in use, for the runtime's `resources:` lines.
    fn resources() -> alloc::string::String {
        let frames = kernel::boot::platform()
            .map(|p| p.frames.lock().free_count())
            .unwrap_or(0);
        let heap = kernel::HEAP.stats();
        alloc::format!("frames-free={frames} heap-in-use={}", heap.bytes_in_use)
    }

    async fn main(mut env: Env) -> Exit {
        if env.configure(&mut NoKeys).is_err() {
            return Exit::Crash;
        }
        let Some(xs) = env.xenstore.take() else {
            println!("netbridge: no xenstore");
            return Exit::Crash;
        };
        let h = env.executor.clone();
        let mut options = Options::new("netbridge", print);
        // Frontends may send checksum-blank packets (passed on to the
        // uplink's backend) but no GSO: we would have to segment them.
        options.backend = BackendOptions {
            gso_tcpv4: false,
            gso_tcpv6: false,
            ..BackendOptions::default()
        };
        options.resources = Some(resources);
        let uplink = XenEnv::new(env.platform, h.clone(), Some(xs));
        let backend = XenEnv::new(env.platform, h.clone(), None);
        let mut bridge = Bridge::default();
        // The runtime advertises and acts on `xl shutdown`/`xl reboot`.
        let (stop, _) = netvm::run(&h, uplink, backend, &mut bridge, &options).await;
        match stop {
            Stop::Requested(r) => r.into(),
            Stop::NoUplink(_) | Stop::UplinkLost(_) => Exit::Crash,
        }
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("netbridge is a Xen guest image: build it with `make images`");
    std::process::exit(2);
}
