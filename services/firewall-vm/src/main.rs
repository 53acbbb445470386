//! The firewall VM image: `xl create configs/firewall-pvh.cfg` (or
//! `-pv`, `-arm32`) puts the firewall between client domains (whose vifs
//! say `backend=firewall`) and the uplink vif of this domain. See
//! `firewall_vm` for the service and `docs/firewall.md` for deployment.
//!
//! Console lines: those of the runtime (`firewall: uplink ...`, `firewall:
//! vif ... offered/connected/closed/refused/removed`), then the service's
//! (`firewall: forwarding: ...`, `firewall: rules of A: ...`, `firewall:
//! client N is A`, `firewall: stats: ...`).
#![cfg_attr(target_os = "none", no_std, no_main)]
#![forbid(unsafe_code)]

extern crate alloc;

#[cfg(target_os = "none")]
mod image {
    use firewall_vm::{FirewallSettings, FirewallVm, CONFIG_DIR};
    use kernel::boot::{Env, Exit};
    use kernel::devices::XenEnv;
    use kernel::println;
    use kernel::vchan_env::KernelVchanEnv;
    use netback::BackendOptions;
    use netfront::ConnectOptions;
    use netvm::{Options, Service, Stop};
    use qubes::xs_share::XsShare;

    kernel::service!(main);

    fn print(line: &str) {
        println!("{line}");
    }

    /// The kernel's entropy generator (`kernel::entropy`) as the
    /// firewall's random source; it fails (and the resolver sends
    /// nothing) when the kernel has none.
    struct KernelRandom;

    impl firewall::RandomSource for KernelRandom {
        fn fill(&mut self, buf: &mut [u8]) -> Result<(), firewall::NoRandomness> {
            kernel::entropy::fill(buf)
                .map(|_| ())
                .map_err(|_| firewall::NoRandomness)
        }
    }

    fn kernel_random() -> alloc::boxed::Box<dyn firewall::RandomSource> {
        alloc::boxed::Box::new(KernelRandom)
    }

    /// Free frames, heap in use and managed (the heap grows by taking free
    /// frames and keeps them: its high-water mark), free grant references (ours, to the
    /// uplink's backend), grants of other domains mapped (the clients'
    /// rings) and the drivers' open event channels, for the runtime's
    /// `resources:` lines.
    fn resources() -> alloc::string::String {
        let (frames, grants) = kernel::boot::platform()
            .map(|p| (p.frames.lock().free_count(), p.grants.lock().free_count()))
            .unwrap_or((0, 0));
        let heap = kernel::HEAP.stats();
        alloc::format!(
            "frames-free={frames} heap-in-use={} heap-managed={} grants-free={grants} maps={} evtchns={}",
            heap.bytes_in_use,
            heap.bytes_managed,
            kernel::foreign::mapped_count(),
            kernel::devices::open_ports()
        )
    }

    async fn main(mut env: Env) -> Exit {
        let mut settings = FirewallSettings::default();
        if env.configure(&mut settings).is_err() {
            return Exit::Crash;
        }
        let Some(xs) = env.xenstore.take() else {
            println!("firewall: no xenstore");
            return Exit::Crash;
        };
        let h = env.executor.clone();
        let mut options = Options::new("firewall", print);
        // The fast path (docs/firewall.md, "Fast path"): clients are
        // offered GSO and blank checksums of both families (netback's
        // defaults), and the uplink asks its backend for GSO super-packets
        // and blank checksums on receive. What each peer takes in turn
        // reaches the service with the uplink (its backend's features) and
        // each client (its frontend's keys), so a super-packet passes as
        // one, NATed in its headers only, where the next link takes it,
        // and is segmented here only where it does not.
        options.backend = BackendOptions::default();
        options.uplink = ConnectOptions {
            rx_gso: true,
            rx_csum_blank: true,
            ..ConnectOptions::default()
        };
        options.config = Some(alloc::string::String::from(CONFIG_DIR));
        options.resources = Some(resources);
        let backend = XenEnv::new(env.platform, h.clone(), None);
        if let Some(source) = kernel::entropy::source().filter(|s| s.is_weak()) {
            println!(
                "firewall: dsthost= queries use ports and ids from {}: guessable by anyone who can time this boot",
                source.name()
            );
        }
        if settings.qubes {
            return qube::run(env.platform, &h, xs, backend, settings, options).await;
        }
        // The same environment and service types as the Qubes mode (a
        // shared xenstore client of one, the service behind `dyn`), so
        // the runtime, netfront and netback are built into the image once,
        // not once per mode (the image was 1.12 MB with two copies).
        let share = XsShare::from_client(xs);
        let uplink =
            KernelVchanEnv::new(XenEnv::new(env.platform, h.clone(), None), share.client());
        let mut service = FirewallVm::with_random(settings, print, kernel_random);
        let (stop, _) = netvm::run(
            &h,
            uplink,
            backend,
            &mut service as &mut dyn Service,
            &options,
        )
        .await;
        exit(stop)
    }

    fn exit(stop: Stop) -> Exit {
        match stop {
            Stop::Requested(r) => r.into(),
            Stop::NoUplink(_) | Stop::UplinkLost(_) => Exit::Crash,
        }
    }

    /// The firewall as a Qubes qube (`firewall.qubes=on`,
    /// docs/qubes.md): one xenstore connection shared by the runtime, the
    /// QubesDB link and the qrexec agent (`qubes::xs_share`); the
    /// configuration from QubesDB (`firewall_vm::qubes_mode`), the agent
    /// answering dom0's calls with the kernel's wall clock.
    mod qube {
        use super::*;
        use firewall_vm::qubes_mode::{self, QubesFirewall, Shared};
        use firewall_vm::FirewallSettings;
        use kernel::boot::Platform;
        use kernel::devices::KernelXenStore;
        use kernel::executor::Handle;
        use kernel::vchan_env::WallClock;
        use qubes::qrexec::{agent, Handled};
        use qubes::vchan::VchanEnv;

        fn handled(h: &Handled) {
            match h {
                Handled::Call { service, result } => {
                    println!("firewall: qrexec: {service:?}: {result:?}")
                }
                other => println!("firewall: qrexec: {other:?}"),
            }
        }

        pub(super) async fn run(
            platform: &'static Platform,
            h: &Handle,
            xs: KernelXenStore,
            backend: XenEnv,
            settings: FirewallSettings,
            mut options: Options,
        ) -> Exit {
            let share = XsShare::from_client(xs);
            let env = || XenEnv::new(platform, h.clone(), None);
            let uplink = KernelVchanEnv::new(env(), share.client());
            let mut qdb = KernelVchanEnv::new(env(), share.client());
            let mut qrexec = KernelVchanEnv::new(env(), share.client());
            let me = match VchanEnv::xenstore(&mut qdb).domid().await {
                Ok(d) => d,
                Err(e) => {
                    println!("firewall: no domain id: {e}");
                    return Exit::Crash;
                }
            };
            let db = Shared::new();
            let link = db.clone();
            let backoff = h.clone();
            h.spawn(async move {
                let second = || backoff.sleep(1_000_000_000);
                qubes_mode::pump(&mut qdb, me, link, print, second).await
            });
            let sleeper = h.clone();
            h.spawn(async move {
                let mut clock = WallClock;
                loop {
                    let why = agent::session(&mut qrexec, me, &mut clock, handled).await;
                    println!("firewall: qrexec: control vchan ended ({why:?}); listening again");
                    sleeper.sleep(1_000_000_000).await;
                }
            });
            // QubesDB, not the xenstore directory.
            options.config = None;
            let vm = FirewallVm::with_random(settings, print, kernel_random);
            let mut service = QubesFirewall::new(vm, db, print);
            let (stop, _) = netvm::run(
                h,
                uplink,
                backend,
                &mut service as &mut dyn Service,
                &options,
            )
            .await;
            exit(stop)
        }
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("the firewall is a Xen guest image: build it with `make images`");
    std::process::exit(2);
}
