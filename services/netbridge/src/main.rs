//! netbridge: a moat network driver domain. It serves vifs to other
//! domains (`vif=['backend=<this domain>,...']` in their xl configs) with
//! netback, and bridges them, through a learning switch, to its own uplink
//! vif (netfront, e.g. on dom0's bridge). The role Qubes' sys-net and a
//! Linux driver domain play, in a few hundred KiB.
//!
//! Console lines:
//!
//! ```text
//! netbridge: uplink <mac> on <backend>
//! netbridge: vif <path> connected (frontend domain <id>)
//! netbridge: vif <path> closed (<why>)
//! netbridge: vif <path> offered (frontend domain <id>)
//! netbridge: vif <path>: <error>; retrying later
//! netbridge: vif <path> removed (the toolstack is done with it)
//! netbridge: stats: ...
//! ```
#![cfg_attr(target_os = "none", no_std, no_main)]
#![forbid(unsafe_code)]

extern crate alloc;

#[cfg_attr(not(any(target_os = "none", test)), allow(dead_code))]
mod switch;

#[cfg(target_os = "none")]
mod image {
    use alloc::collections::BTreeMap;
    use alloc::format;
    use alloc::string::String;
    use alloc::vec::Vec;
    use core::future::{poll_fn, Future};
    use core::pin::pin;
    use core::task::Poll;

    use kernel::boot::{Env, Exit};
    use kernel::devices::{KernelXenStore, XenEnv};
    use kernel::executor::Handle;
    use kernel::println;
    use netback::{BackendDevice, BackendOptions, Health, Offer, Offload, Packet, Vif};
    use netfront::{ConnectOptions, Netfront, TxOffload};
    use xen::xenstore::XsError;

    use crate::switch::{Forward, Switch};

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

    const SECOND: u64 = 1_000_000_000;
    /// Packets per vif per round: no vif can starve the others.
    const BUDGET: usize = 64;
    /// Wait after a failed connection before the next attempt.
    const RETRY_AFTER: u64 = 10 * SECOND;

    struct Client {
        path: String,
        vif: Vif<XenEnv>,
    }

    /// Every `backend/vif/<front>/<dev>` directory of ours.
    async fn backend_dirs(xs: &mut KernelXenStore) -> Result<Vec<String>, XsError> {
        let mut out = Vec::new();
        let fronts = match xs.directory("backend/vif").await {
            Ok(f) => f,
            Err(XsError::Enoent) => return Ok(out),
            Err(e) => return Err(e),
        };
        for front in fronts {
            let dir = format!("backend/vif/{front}");
            match xs.directory(&dir).await {
                Ok(devs) => out.extend(devs.into_iter().map(|d| format!("{dir}/{d}"))),
                Err(XsError::Enoent) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// A vif directory we serve nothing on: remove it if the toolstack is
    /// done with it (as `xl devd` does in a Linux driver domain; libxl
    /// waits for that), leave it while it is being detached, else offer
    /// it to its frontend.
    async fn offer_or_remove(
        xs: &mut KernelXenStore,
        path: &str,
        options: &BackendOptions,
        offers: &mut Vec<(String, Offer)>,
    ) -> Result<(), netback::NetbackError> {
        let device = BackendDevice::open(xs, path).await?;
        if device.finished(xs).await? {
            device.remove(xs).await?;
            println!("netbridge: vif {path} removed (the toolstack is done with it)");
            return Ok(());
        }
        if device.detached(xs).await? {
            return Ok(());
        }
        let offer = Offer::start(xs, path, options).await?;
        println!(
            "netbridge: vif {path} offered (frontend domain {})",
            offer.device().frontend_id
        );
        offers.push((String::from(path), offer));
        Ok(())
    }

    fn to_uplink(uplink: &mut Netfront<XenEnv>, p: &Packet) {
        let offload = TxOffload {
            csum_blank: p.offload.csum_blank,
            data_validated: p.offload.data_validated,
            gso: None,
        };
        let _ = uplink.send(&p.data, offload);
    }

    async fn main(mut env: Env) -> Exit {
        if env.configure(&mut NoKeys).is_err() {
            return Exit::Crash;
        }
        let Some(xs) = env.xenstore.take() else {
            println!("netbridge: no xenstore");
            return Exit::Crash;
        };
        let h: Handle = env.executor.clone();
        let mut uplink = match Netfront::connect(
            XenEnv::new(env.platform, h.clone(), Some(xs)),
            "device/vif/0",
            ConnectOptions::default(),
        )
        .await
        {
            Ok(u) => u,
            Err((_, e)) => {
                println!("netbridge: no uplink (device/vif/0): {e}");
                return Exit::Crash;
            }
        };
        println!(
            "netbridge: uplink {} on {}",
            uplink.mac(),
            uplink.device().backend
        );
        if let Some(xs) = uplink.env().xenstore_mut() {
            let _ = kernel::control::advertise(xs).await;
        }
        // Frontends may send checksum-blank packets (passed on to the
        // uplink's backend) but no GSO: we would have to segment them.
        let options = BackendOptions {
            gso_tcpv4: false,
            gso_tcpv6: false,
            ..BackendOptions::default()
        };
        let mut benv = XenEnv::new(env.platform, h.clone(), None);
        let mut clients: Vec<Client> = Vec::new();
        let mut retry_at: BTreeMap<String, u64> = BTreeMap::new();
        let mut offers: Vec<(String, Offer)> = Vec::new();
        let mut switch = Switch::new();
        let mut packets = Vec::new();
        let mut next_scan = 0;
        let mut forwarded: u64 = 0;
        let mut flooded: u64 = 0;
        loop {
            let now = h.now_ns();
            // Uplink -> clients.
            if let Err(e) = uplink.poll() {
                println!("netbridge: uplink lost ({e}): reconnecting");
                uplink = match uplink.reconnect(ConnectOptions::default()).await {
                    Ok(u) => u,
                    Err((_, e)) => {
                        println!("netbridge: uplink reconnect failed: {e}");
                        return Exit::Crash;
                    }
                };
                continue;
            }
            let mut more = false;
            for _ in 0..BUDGET {
                let Some(rx) = uplink.receive() else { break };
                let p = Packet {
                    data: rx.data,
                    offload: Offload::default(),
                };
                match switch.route(0, &p.data) {
                    Forward::One(i) => {
                        if let Some(c) = clients.get_mut(i - 1) {
                            c.vif.send(p);
                            forwarded += 1;
                        }
                    }
                    Forward::Flood => {
                        flooded += 1;
                        for c in clients.iter_mut() {
                            c.vif.send(p.clone());
                        }
                    }
                    Forward::Drop => {}
                }
                more = true;
            }
            // Clients -> wherever.
            let mut dead = Vec::new();
            for i in 0..clients.len() {
                packets.clear();
                let r = clients[i].vif.poll(&mut benv, BUDGET, &mut packets);
                match r {
                    Ok(progress) => more |= progress.more,
                    Err(f) => {
                        dead.push((i, format!("{f:?}")));
                        continue;
                    }
                }
                for p in packets.drain(..) {
                    match switch.route(i + 1, &p.data) {
                        Forward::One(0) => to_uplink(&mut uplink, &p),
                        Forward::One(j) => {
                            if let Some(c) = clients.get_mut(j - 1) {
                                c.vif.send(p);
                            }
                        }
                        Forward::Flood => {
                            to_uplink(&mut uplink, &p);
                            for (k, c) in clients.iter_mut().enumerate() {
                                if k != i {
                                    c.vif.send(p.clone());
                                }
                            }
                        }
                        Forward::Drop => {}
                    }
                }
            }
            for c in clients.iter_mut() {
                if let Ok(progress) = c.vif.deliver(&mut benv, BUDGET) {
                    more |= progress.more;
                }
            }
            // Once a second: health of every vif, new backend directories.
            if now >= next_scan {
                next_scan = now + SECOND;
                let Some(xs) = uplink.env().xenstore_mut() else {
                    return Exit::Crash;
                };
                if let Some(request) = kernel::control::requested(xs).await {
                    println!("netbridge: {request:?} requested by the toolstack");
                    for c in clients.drain(..) {
                        let _ = c.vif.close(&mut benv, xs).await;
                    }
                    for (_, offer) in offers.drain(..) {
                        offer.withdraw(xs).await;
                    }
                    let _ = uplink.disconnect().await;
                    return request.into();
                }
                for (i, c) in clients.iter().enumerate() {
                    match c.vif.device().health(xs).await {
                        Ok(Health::Connected) => {}
                        Ok(other) => dead.push((i, format!("{other:?}"))),
                        Err(e) => dead.push((i, format!("{e:?}"))),
                    }
                }
                dead.sort();
                dead.dedup_by_key(|d| d.0);
                for (i, why) in dead.drain(..).rev() {
                    let c = clients.remove(i);
                    let path = c.path.clone();
                    let _ = c.vif.close(&mut benv, xs).await;
                    switch.forget_port(i + 1);
                    for j in (i + 1)..=clients.len() {
                        switch.move_port(j + 1, j);
                    }
                    retry_at.insert(path.clone(), now + SECOND);
                    println!("netbridge: vif {path} closed ({why})");
                }
                // Frontends being waited for: one look each, never a wait,
                // so a slow or silent frontend holds nothing up.
                let mut k = 0;
                while k < offers.len() {
                    match offers[k].1.advance(&mut benv, xs).await {
                        Ok(None) => k += 1,
                        Ok(Some(vif)) => {
                            let (path, _) = offers.swap_remove(k);
                            println!(
                                "netbridge: vif {path} connected (frontend domain {})",
                                vif.device().frontend_id
                            );
                            retry_at.remove(&path);
                            clients.push(Client { path, vif });
                        }
                        Err(e) => {
                            let (path, _) = offers.swap_remove(k);
                            println!("netbridge: vif {path}: {e:?}; retrying later");
                            retry_at.insert(path, h.now_ns() + RETRY_AFTER);
                        }
                    }
                }
                match backend_dirs(xs).await {
                    Ok(dirs) => {
                        retry_at.retain(|p, _| dirs.contains(p));
                        for path in dirs {
                            if clients.iter().any(|c| c.path == path)
                                || offers.iter().any(|(p, _)| *p == path)
                                || retry_at.get(&path).is_some_and(|&t| now < t)
                            {
                                continue;
                            }
                            if let Err(e) = offer_or_remove(xs, &path, &options, &mut offers).await
                            {
                                println!("netbridge: vif {path}: {e:?}; retrying later");
                                retry_at.insert(path, h.now_ns() + RETRY_AFTER);
                            }
                        }
                    }
                    Err(e) => println!("netbridge: cannot list backend/vif: {e}"),
                }
                if forwarded + flooded > 0 && now % (10 * SECOND) < SECOND {
                    println!(
                        "netbridge: stats: vifs={} macs={} forwarded={forwarded} flooded={flooded}",
                        clients.len(),
                        switch.len()
                    );
                }
                continue;
            }
            if more || uplink.rx().ready() > 0 {
                kernel::executor::yield_now().await;
                continue;
            }
            // Sleep until any vif or the uplink has an event, or the scan.
            let sleep = h.sleep_until(next_scan);
            let mut sleep = pin!(sleep);
            poll_fn(|cx| {
                let mut ready = sleep.as_mut().poll(cx).is_ready();
                for c in clients.iter_mut() {
                    ready |= c.vif.poll_event(&mut benv, cx).is_ready();
                }
                let ports: Vec<_> = uplink.queues().iter().map(|q| q.port).collect();
                for port in ports {
                    ready |= netfront::NetEnv::poll_event(uplink.env(), port, cx).is_ready();
                }
                if ready {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
        }
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("netbridge is a Xen guest image: build it with `make images`");
    std::process::exit(2);
}
