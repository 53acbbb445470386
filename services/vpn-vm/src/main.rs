//! The VPN gateway VM image: `xl create configs/vpn-pvh.cfg` (or `-pv`,
//! `-arm32`) sends the traffic of client domains (whose vifs say
//! `backend=vpn`) through WireGuard, out of the uplink vif of this domain.
//! See `vpn_vm` for the service and `docs/vpn.md` for deployment.
//!
//! Boot: the command line (`vpn.*` keys), then the first disk if the VM has
//! one (the wg-quick file; read once, the disk closed again), then the
//! netvm runtime with the configuration directory `vpn/` watched.
//!
//! Console lines: those of the runtime (`vpn: uplink ...`, `vpn: vif ...`),
//! then the service's (`vpn: tunnel from ...`, `vpn: not forwarding: ...`,
//! `vpn: client N is A`, `vpn: stats: ...`). No line holds a key.
#![cfg_attr(target_os = "none", no_std, no_main)]
#![forbid(unsafe_code)]

extern crate alloc;

#[cfg(target_os = "none")]
mod image {
    use alloc::boxed::Box;
    use alloc::format;
    use alloc::string::String;
    use alloc::vec;
    use core::time::Duration;

    use blkfront::{BlkConfig, BlkFront};
    use kernel::boot::{Env, Exit, Platform};
    use kernel::devices::{KernelXenStore, XenEnv};
    use kernel::executor::Handle;
    use kernel::println;
    use netback::BackendOptions;
    use netfront::ConnectOptions;
    use netvm::{Options, Stop};
    use vpn_vm::{disk_text, Secret, VpnSettings, VpnVm, CONFIG_DIR, MAX_CONFIG_BYTES};
    use zeroize::Zeroize;

    kernel::service!(main);

    const SECOND: u64 = 1_000_000_000;

    fn print(line: &str) {
        println!("{line}");
    }

    /// The kernel's entropy generator as WireGuard's random source. Without
    /// one the VM cannot make keys or cookies: it stops (main checks first).
    struct KernelRandom;

    impl wireguard::Random for KernelRandom {
        fn fill(&mut self, buf: &mut [u8]) {
            if kernel::entropy::fill(buf).is_err() {
                panic!("vpn: the kernel's random source failed");
            }
        }
    }

    fn resources() -> String {
        let (frames, grants) = kernel::boot::platform()
            .map(|p| (p.frames.lock().free_count(), p.grants.lock().free_count()))
            .unwrap_or((0, 0));
        let heap = kernel::HEAP.stats();
        format!(
            "frames-free={frames} heap-in-use={} grants-free={grants} maps={} evtchns={}",
            heap.bytes_in_use,
            kernel::foreign::mapped_count(),
            kernel::devices::open_ports()
        )
    }

    /// The wg-quick file of the first disk (`device/vbd/*`), if the VM has
    /// one: its first [`MAX_CONFIG_BYTES`] read, the disk closed again.
    async fn read_disk(
        platform: &'static Platform,
        h: &Handle,
        xs: &mut KernelXenStore,
    ) -> Option<Secret> {
        let mut vbds = xs.directory("device/vbd").await.ok()?;
        vbds.sort();
        let path = format!("device/vbd/{}", vbds.first()?);
        let env = XenEnv::new(platform, h.clone(), None);
        let connect = async {
            blkfront::front::wait_backend_ready(xs, &path).await?;
            BlkFront::connect(env, xs, &path, BlkConfig::default()).await
        };
        let front = match h.timeout(10 * SECOND, connect).await {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                println!("vpn: disk {path}: cannot connect: {e:?}");
                return None;
            }
            Err(_) => {
                println!("vpn: disk {path}: no backend within 10 s");
                return None;
            }
        };
        let info = front.info();
        let ss = u64::from(info.sector_size.max(512));
        let bytes = (info.sectors_512 * 512).min(MAX_CONFIG_BYTES as u64);
        let sectors = bytes / ss;
        let mut buf = vec![0u8; (sectors * ss) as usize];
        let read = front.read(0, &mut buf).await;
        let _ = h.timeout(5 * SECOND, front.close(xs)).await;
        let text = match read {
            Ok(()) => match disk_text(&buf) {
                Ok(t) => Some(t),
                Err(why) => {
                    println!("vpn: disk {path}: {why}");
                    None
                }
            },
            Err(e) => {
                println!("vpn: disk {path}: read failed: {e:?}");
                None
            }
        };
        buf.zeroize();
        if text.is_some() {
            println!("vpn: disk {path}: configuration read ({bytes} bytes looked at)");
        }
        text
    }

    async fn main(mut env: Env) -> Exit {
        let mut settings = VpnSettings::default();
        if env.configure(&mut settings).is_err() {
            return Exit::Crash;
        }
        let Some(mut xs) = env.xenstore.take() else {
            println!("vpn: no xenstore");
            return Exit::Crash;
        };
        if kernel::entropy::fill(&mut [0u8; 1]).is_err() {
            println!("vpn: no random source: cannot make WireGuard keys or cookies");
            return Exit::Crash;
        }
        if let Some(source) = kernel::entropy::source().filter(|s| s.is_weak()) {
            println!(
                "vpn: WireGuard's ephemeral keys come from {}: guessable by anyone who can time this boot",
                source.name()
            );
        }
        let h = env.executor.clone();
        let disk = if settings.disk == Some(false) {
            None
        } else {
            read_disk(env.platform, &h, &mut xs).await
        };
        // Handshake timestamps need the wall clock (a peer refuses an
        // initiation older than the last it saw: after a restart with no
        // wall clock, until the old timestamp is passed).
        let now = h.now_ns();
        let base = env.platform.shared.wallclock_base();
        let wall = if base.sec == 0 {
            println!("vpn: Xen has no wall clock: after a restart, peers refuse our handshakes until they forget us");
            Duration::ZERO
        } else {
            let (sec, nsec) = xen::time::wallclock_at(base, now);
            Duration::new(sec, nsec).saturating_sub(Duration::from_nanos(now))
        };
        let mut options = Options::new("vpn", print);
        // Clients are offered no GSO (a super-packet would have to be cut
        // before it enters the tunnel) and no blank IPv6 checksums; blank
        // IPv4 ones (which netif lets a frontend send) are completed here.
        options.backend = BackendOptions {
            gso_tcpv4: false,
            gso_tcpv6: false,
            ipv6_csum_offload: false,
            ..BackendOptions::default()
        };
        options.uplink = ConnectOptions::default();
        options.config = Some(String::from(CONFIG_DIR));
        options.resources = Some(resources);
        let uplink = XenEnv::new(env.platform, h.clone(), Some(xs));
        let backend = XenEnv::new(env.platform, h.clone(), None);
        let mut service = VpnVm::new(settings, print, Box::new(KernelRandom), wall, disk);
        let (stop, _) = netvm::run(&h, uplink, backend, &mut service, &options).await;
        match stop {
            Stop::Requested(r) => r.into(),
            Stop::NoUplink(_) | Stop::UplinkLost(_) => Exit::Crash,
        }
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("the VPN gateway is a Xen guest image: build it with `make images`");
    std::process::exit(2);
}
