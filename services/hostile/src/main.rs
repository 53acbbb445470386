//! The `hostile` image: a guest whose vifs attack the backend serving them
//! (see the `hostile` library). For tests only: `rig/test_firewall.py`
//! starts it behind the firewall VM with one vif per attack.
//!
//! Console lines:
//!
//! ```text
//! hostile: device/vif/N (ATTACK): connected
//! hostile: device/vif/N (ATTACK): closed by the backend after MS ms (...)
//! hostile: device/vif/N (ATTACK): not offered again (backend state S)
//! hostile: attacking for S s with N vifs
//! hostile: report device/vif/N ATTACK connects=C closed=K stuck=S requests=R ok=O errors=E rx=X stale-grants=G
//! hostile: done
//! ```
//!
//! With `hostile.back=ATTACKS` (`all`, or names of `hostile::back`'s
//! attacks) the image is instead the driver domain of other domains' vifs
//! (`vif=['backend=hostile,...']`) and attacks their netfronts, one
//! attack per connection in turn:
//!
//! ```text
//! hostile: back backend/vif/F/N (ATTACK): connected
//! hostile: back backend/vif/F/N (ATTACK): the frontend left after MS ms (state S, noticed); requests=R responses=P kept-maps=K
//! hostile: back backend/vif/F/N (ATTACK): closed by us after MS ms (endured); ...
//! hostile: back backend/vif/F/N (ATTACK): the frontend kept the connection for MS ms (missed); ...
//! hostile: back backend/vif/F/N: pass P done (connects=C noticed=N missed=M endured=E)
//! ```
#![cfg_attr(target_os = "none", no_std, no_main)]
#![forbid(unsafe_code)]

extern crate alloc;

#[cfg(target_os = "none")]
mod image {
    use alloc::format;
    use alloc::vec::Vec;

    use hostile::back::{backend_vifs, parse_back_attacks, BackAttack, HostileBack};
    use hostile::vif::HostileVif;
    use hostile::{parse_attacks, Plan};
    use kernel::boot::{Env, Exit};
    use kernel::cmdline::{self, SettingError, Settings};
    use kernel::devices::XenEnv;
    use kernel::println;
    use netfront::NetEnv;

    kernel::service!(main);

    const MS: u64 = 1_000_000;

    fn print(line: &str) {
        println!("{line}");
    }

    struct PlanSettings(Plan, Vec<BackAttack>);

    impl Settings for PlanSettings {
        fn set(&mut self, key: &str, value: Option<&str>) -> Result<(), SettingError> {
            match key {
                "hostile.attacks" => {
                    self.0.attacks = parse_attacks(cmdline::require(value)?).map_err(|_| {
                        SettingError::malformed(
                            "attacks among bad-grant,malformed,index,flood,flows,frags,rx-stall",
                        )
                    })?
                }
                "hostile.seconds" => {
                    self.0.seconds = cmdline::parse_u64_in(value, 1..=3600)? as u32
                }
                "hostile.target" => self.0.target = cmdline::parse_ipv4(value)?,
                "hostile.back" => {
                    self.1 = parse_back_attacks(cmdline::require(value)?).map_err(|_| {
                        SettingError::malformed(
                            "all, or attacks among tx-bad-id,rx-bad-id,rx-bad-size,index,flood,keep-maps,stall",
                        )
                    })?
                }
                _ => return Err(SettingError::Unknown),
            }
            Ok(())
        }

        fn known_keys(&self) -> &'static [&'static str] {
            &[
                "hostile.attacks",
                "hostile.seconds",
                "hostile.target",
                "hostile.back",
            ]
        }
    }

    async fn main(mut env: Env) -> Exit {
        let mut settings = PlanSettings(Plan::default(), Vec::new());
        if env.configure(&mut settings).is_err() {
            return Exit::Crash;
        }
        let plan = settings.0;
        let Some(xs) = env.xenstore.take() else {
            println!("hostile: no xenstore");
            return Exit::Crash;
        };
        let h = env.executor.clone();
        if !settings.1.is_empty() {
            return serve_badly(env, xs, settings.1).await;
        }
        let mut xen = XenEnv::new(env.platform, h.clone(), Some(xs));
        let mut names = match xen.xenstore().directory("device/vif").await {
            Ok(v) => v,
            Err(e) => {
                println!("hostile: no vifs: {e:?}");
                return Exit::Crash;
            }
        };
        names.sort_by_key(|n| n.parse::<u32>().unwrap_or(u32::MAX));
        let mut vifs = Vec::new();
        for (k, name) in names.iter().enumerate() {
            let Some(&attack) = plan.attacks.get(k) else {
                break;
            };
            let path = format!("device/vif/{name}");
            match HostileVif::open(
                &mut xen,
                &path,
                attack,
                plan.target,
                k as u64 + 1,
                h.now_ns(),
            )
            .await
            {
                Ok(v) => {
                    println!(
                        "hostile: {path} ({}): {:?}",
                        attack.name(),
                        v.endpoints().map(|e| e.ip)
                    );
                    vifs.push(v)
                }
                Err(e) => println!("hostile: {path}: {e}"),
            }
        }
        println!(
            "hostile: attacking for {} s with {} vifs",
            plan.seconds,
            vifs.len()
        );
        // Each vif attacks for the time asked from its first connection
        // (a loaded backend may take long to offer it); one never offered
        // is given up a minute after the start.
        let start = h.now_ns();
        let attack_ns = u64::from(plan.seconds) * 1000 * MS;
        let mut next_check = 0;
        while !vifs
            .iter()
            .all(|v| v.done(h.now_ns(), start, attack_ns, 60_000 * MS))
        {
            let now = h.now_ns();
            for v in vifs.iter_mut() {
                v.step(&mut xen, now);
            }
            if now >= next_check {
                next_check = now + 200 * MS;
                for v in vifs.iter_mut() {
                    v.check(&mut xen, now, print).await;
                }
            }
            h.sleep(MS).await;
        }
        for v in &vifs {
            let r = &v.report;
            println!(
                "hostile: report {} {} connects={} closed={} stuck={} requests={} ok={} errors={} rx={} stale-grants={}{}",
                v.path,
                v.attack.name(),
                r.connects,
                r.closed,
                r.stuck,
                r.requests,
                r.ok,
                r.errors,
                r.rx,
                r.stale_grants,
                r.last_error
                    .as_ref()
                    .map(|e| format!(" last-error={e}"))
                    .unwrap_or_default()
            );
        }
        println!("hostile: done");
        // Stay up: the test destroys us (a backend must cope with that too).
        loop {
            h.sleep(1000 * MS).await;
        }
    }

    /// The driver domain of every vif the toolstack gives us, attacking
    /// each frontend (`hostile.back=`); runs until destroyed.
    async fn serve_badly(
        env: Env,
        mut xs: kernel::devices::KernelXenStore,
        attacks: Vec<BackAttack>,
    ) -> Exit {
        let h = env.executor.clone();
        let mut benv = XenEnv::new(env.platform, h.clone(), None);
        let names: Vec<&str> = attacks.iter().map(|a| a.name()).collect();
        println!(
            "hostile: serving vifs as their backend, attacks {}",
            names.join(",")
        );
        let mut vifs: Vec<HostileBack<XenEnv>> = Vec::new();
        let mut next_poll = 0;
        loop {
            let now = h.now_ns();
            if now >= next_poll {
                next_poll = now + 100 * MS;
                for path in backend_vifs(&mut xs).await {
                    if !vifs.iter().any(|v| v.path == path) {
                        println!("hostile: back {path}: offered");
                        vifs.push(HostileBack::new(&path, attacks.clone()));
                    }
                }
                for v in vifs.iter_mut() {
                    v.poll(&mut benv, &mut xs, now, &mut |l: &str| println!("{l}"))
                        .await;
                }
                vifs.retain(|v| {
                    if v.is_gone() {
                        println!("hostile: back {}: gone (kept-maps={})", v.path, v.kept());
                    }
                    !v.is_gone()
                });
            }
            for v in vifs.iter_mut() {
                v.step(&mut benv);
            }
            h.sleep(MS).await;
        }
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("hostile is a Xen guest image: build it with `make images`");
    std::process::exit(2);
}
