//! The selftest image: boots on Xen (PV or PVH) and checks the kernel and
//! the `xen` crate against the real hypervisor, one console line per check:
//!
//! ```text
//! selftest: <check>: ok (<detail>)
//! selftest: <check>: FAIL (<reason>)
//! selftest: summary: <N> passed, <M> failed
//! ```
//!
//! Then it idles (so the rig can measure an idle guest's CPU use), prints
//! `selftest: bench:` figures and ends as `selftest.end=` asks: poweroff
//! (default), reboot, or panic (to prove a panic crashes the domain with
//! its message on the console). With `selftest.fault=write-text`,
//! `exec-data` or `stack-overflow` it instead provokes that fault right
//! after the command-line check, to prove the image's W^X mapping and
//! stack guard page (the domain must crash with the matching report;
//! `selftest: fault: FAIL` if the fault did not happen).
#![cfg_attr(target_os = "none", no_std, no_main)]
#![forbid(unsafe_code)]

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(target_os = "none")]
mod checks;
#[cfg(any(target_os = "none", test))]
mod settings;

#[cfg(target_os = "none")]
mod image {
    use alloc::format;
    use alloc::string::String;
    use kernel::boot::{Env, Exit};
    use kernel::println;

    use crate::checks::{self, clock, Outcome};
    use crate::settings::{End, SelftestSettings};

    kernel::service!(main);

    struct Tally {
        passed: u32,
        failed: u32,
    }

    impl Tally {
        fn report(&mut self, name: &str, outcome: Outcome) {
            match outcome {
                Ok(detail) => {
                    self.passed += 1;
                    println!("selftest: {name}: ok ({detail})");
                }
                Err(reason) => {
                    self.failed += 1;
                    println!("selftest: {name}: FAIL ({reason})");
                }
            }
        }
    }

    async fn main(mut env: Env) -> Exit {
        let p = env.platform;
        let ready_tsc = p.ready_tsc.load(core::sync::atomic::Ordering::Relaxed);
        let mut t = Tally {
            passed: 0,
            failed: 0,
        };
        t.report("console-ring", checks::console_ring());

        let mut settings = SelftestSettings::default();
        let cmdline = env.configure(&mut settings);
        t.report(
            "cmdline",
            crate::settings::check(p.cmdline, cmdline, &settings),
        );
        if let Some(probe) = settings.fault {
            println!("selftest: fault: {}: provoking", probe.name());
            kernel::console::flush();
            kernel::arch::provoke(probe);
            println!(
                "selftest: fault: FAIL ({} did not fault: the protection is missing)",
                probe.name()
            );
            return Exit::Poweroff;
        }

        let Some(mut xs) = env.xenstore.take() else {
            println!("selftest: no xenstore: cannot run the xenstore checks");
            return Exit::Crash;
        };
        let domid = xs.domid().await.ok();
        let target = match xs.read_string("memory/target").await {
            Ok(v) => v.trim().parse().ok(),
            Err(_) => None,
        };
        t.report("memory-map", checks::memory_map(p, target));
        t.report("frames", checks::frames(p));
        t.report("heap-pressure", checks::heap_pressure(p));
        t.report("shared-info", checks::shared_info(p));
        t.report("pv-clock", checks::pv_clock(p));
        t.report("wallclock", checks::wallclock(p));
        t.report("timer", checks::timer(&env).await);
        t.report("event-self", checks::event_self(&env).await);
        t.report("event-mask", checks::event_mask(&env).await);
        let Some(domid) = domid else {
            t.report("xenstore-read", Err(String::from("cannot read our domid")));
            return Exit::Crash;
        };
        t.report("xenstore-read", checks::xenstore_read(&mut xs, domid).await);
        t.report("xenstore-write", checks::xenstore_write(&mut xs).await);
        t.report(
            "xenstore-directory",
            checks::xenstore_directory(&mut xs).await,
        );
        t.report("xenstore-rm", checks::xenstore_rm(&mut xs).await);
        t.report("xenstore-error", checks::xenstore_error(&mut xs).await);
        t.report(
            "xenstore-transaction",
            checks::xenstore_transaction(&mut xs).await,
        );
        t.report(
            "xenstore-watch",
            checks::xenstore_watch(&env, &mut xs, settings.watch_timeout_s).await,
        );
        t.report("grant-access", checks::grant_access(p, domid));
        t.report("grant-copy", checks::grant_copy(p, domid));
        t.report("executor", checks::executor(&env).await);
        t.report("simd", checks::simd());
        t.report("memory-protection", checks::memory_protection());
        println!(
            "selftest: summary: {} passed, {} failed",
            t.passed, t.failed
        );

        println!("selftest: idle: begin {}", settings.idle_s);
        env.executor
            .sleep_until(clock(p) + settings.idle_s * 1_000_000_000)
            .await;
        println!("selftest: idle: end");

        let hz = xen::time::tsc_hz(&p.shared.vcpu_time(0)).max(1);
        let image = kernel::arch::image_frames();
        let (stack_used, stack_size) = kernel::arch::stack_usage();
        println!("selftest: bench: stack-used-bytes={stack_used} of {stack_size}");
        println!("selftest: bench: {}", checks::simd_bench(p));
        println!(
            "selftest: bench: entry-to-ready-us={} image-memory-bytes={} guest={}",
            (ready_tsc.saturating_sub(p.entry_tsc) as u128 * 1_000_000 / hz as u128),
            (image.end - image.start) * 4096,
            p.guest.name()
        );
        let _ = xs
            .write(
                "data/selftest/result",
                format!("{} passed, {} failed", t.passed, t.failed).as_bytes(),
            )
            .await;
        match settings.end {
            End::Poweroff => Exit::Poweroff,
            End::Reboot => Exit::Reboot,
            End::Panic => panic!(
                "selftest.end=panic: deliberate panic after {} checks",
                t.passed + t.failed
            ),
        }
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("selftest is a Xen guest image: build it with `make images`");
    std::process::exit(2);
}
