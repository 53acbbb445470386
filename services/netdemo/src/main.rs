//! netdemo: moat's network demo and driver test image. It connects the
//! first vif with netfront, runs smoltcp over it and serves ping, TCP and
//! UDP echo, UDP discard, and a TCP sink and source for throughput tests
//! (see [`apps`]). Its address comes from the command line, xenstore or
//! DHCP (see [`settings::address_source`]).
//!
//! Console lines the rig reads:
//!
//! ```text
//! netdemo: ready: <ip>/<len> mac <mac> queues <n> (<source>)
//! netdemo: sink: <bytes> bytes crc32 <hex> in <us> us
//! netdemo: source: <bytes> bytes crc32 <hex> in <us> us
//! netdemo: backend gone (<why>): reconnecting
//! netdemo: reconnected
//! netdemo: resources: frames-free=<n> grants-free=<n> grants-live=<n> deferred=<n> deferred-total=<n> freed-late=<n> evtchns=<n>
//! netdemo: iperf3: received|sent <bytes> bytes in <us> us
//! ```
//!
//! With `syslog=udp:ADDRESS[:PORT]` or `syslog=tcp:ADDRESS[:PORT]` on the
//! command line (`syslog.level=` for its level), the ready, stats and
//! backend lines and the kernel's log records also go to that collector
//! as RFC 5424 messages ([`remote_log`]).
#![cfg_attr(target_os = "none", no_std, no_main)]
#![forbid(unsafe_code)]

extern crate alloc;

#[cfg(any(target_os = "none", test))]
mod apps;
#[cfg(any(target_os = "none", test))]
mod remote_log;
#[cfg(any(target_os = "none", test))]
mod settings;

#[cfg(test)]
mod tests;

#[cfg(target_os = "none")]
mod image {
    use alloc::format;
    use alloc::vec::Vec;

    use kernel::boot::{Env, Exit};
    use kernel::devices::XenEnv;
    use kernel::executor::{select, Handle};
    use kernel::println;
    use netfront::{ConnectOptions, Netfront};
    use smoltcp::iface::{Config, Interface, SocketSet};
    use smoltcp::socket::dhcpv4;
    use smoltcp::time::Instant;
    use smoltcp::wire::{EthernetAddress, IpCidr, Ipv4Cidr};

    use crate::apps::{Apps, Report};
    use crate::settings::{address_source, AddressSource, NetdemoSettings};

    kernel::service!(main);

    /// Prints a console line and queues it for the remote collector.
    macro_rules! say {
        ($($arg:tt)*) => {{
            println!($($arg)*);
            kernel::logger::remote_only(log::Level::Info, "netdemo", format_args!($($arg)*));
        }};
    }

    const SECOND: u64 = 1_000_000_000;

    fn instant(ns: u64) -> Instant {
        Instant::from_micros((ns / 1000) as i64)
    }

    fn print_report(r: Report) {
        match r {
            Report::Sink {
                bytes,
                crc32,
                elapsed_ns,
            } => println!(
                "netdemo: sink: {bytes} bytes crc32 {crc32:08x} in {} us",
                elapsed_ns / 1000
            ),
            Report::Source {
                bytes,
                crc32,
                elapsed_ns,
            } => println!(
                "netdemo: source: {bytes} bytes crc32 {crc32:08x} in {} us",
                elapsed_ns / 1000
            ),
            Report::BadSourceRequest => {
                println!("netdemo: source: request was not a byte count")
            }
            Report::Iperf3 {
                bytes,
                reverse,
                completed,
                elapsed_ns,
            } => println!(
                "netdemo: iperf3: {} {bytes} bytes in {} us{}",
                if reverse { "sent" } else { "received" },
                elapsed_ns / 1000,
                if completed { "" } else { " (client went away)" }
            ),
            Report::Iperf3Refused(why) => println!("netdemo: iperf3: test refused: {why}"),
            Report::Iperf3Error(e) => println!("netdemo: iperf3: client broke the protocol: {e:?}"),
        }
    }

    /// Connect `path`, retrying every second while the backend is not
    /// there yet.
    async fn connect(
        h: &Handle,
        mut env: XenEnv,
        path: &str,
        options: ConnectOptions,
    ) -> Netfront<XenEnv> {
        let mut complained = false;
        loop {
            match Netfront::connect(env, path, options).await {
                Ok(dev) => return dev,
                Err((back, e)) => {
                    if !complained {
                        println!("netdemo: cannot connect {path}: {e}; retrying");
                        complained = true;
                    }
                    env = back;
                    h.sleep(SECOND).await;
                }
            }
        }
    }

    async fn main(mut env: Env) -> Exit {
        let mut settings = NetdemoSettings::default();
        if env.configure(&mut settings).is_err() {
            println!("netdemo: bad command line");
            return Exit::Crash;
        }
        let Some(xs) = env.xenstore.take() else {
            println!("netdemo: no xenstore: no network devices");
            return Exit::Crash;
        };
        let h = env.executor.clone();
        let path = format!("device/vif/{}", settings.vif);
        let xenv = XenEnv::new(env.platform, h.clone(), Some(xs));
        let options = ConnectOptions {
            rx_csum_blank: settings.rx_offload,
            rx_gso: settings.rx_offload,
            max_queues: settings.queues,
            ..ConnectOptions::default()
        };
        let mut dev = connect(&h, xenv, &path, options).await;
        print_resources();

        let backend_ip = {
            let backend = dev.device().backend.clone();
            let xs = dev.env().xenstore_mut();
            match xs {
                Some(xs) => xs.read(&format!("{backend}/ip")).await.ok(),
                None => None,
            }
        };
        let source = match address_source(&settings, backend_ip.as_deref()) {
            Ok(s) => s,
            Err(e) => {
                println!("netdemo: {e}");
                return Exit::Crash;
            }
        };

        if let Some(xs) = dev.env().xenstore_mut() {
            let _ = kernel::control::advertise(xs).await;
        }
        let mac = dev.mac().0;
        let mut config = Config::new(EthernetAddress(mac).into());
        config.random_seed =
            h.now_ns() ^ u64::from_le_bytes([mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], 0, 0]);
        let mut iface = Interface::new(config, &mut dev, instant(h.now_ns()));
        let mut sockets = SocketSet::new(Vec::new());
        let apps_buffer = (settings.tcp_buffer_kib * 1024) as usize;
        let mut apps = Apps::new(&mut sockets, apps_buffer);
        let mut remote = crate::remote_log::Sender::new(&mut sockets);
        let mut dhcp = None;
        match source {
            AddressSource::Static { ip, gw, from } => {
                iface.update_ip_addrs(|addrs| {
                    let _ = addrs.push(IpCidr::Ipv4(Ipv4Cidr::new(ip.addr, ip.prefix_len)));
                });
                if let Some(gw) = gw {
                    let _ = iface.routes_mut().add_default_ipv4_route(gw);
                }
                say!(
                    "netdemo: ready: {ip} mac {} queues {} ({from}{})",
                    dev.mac(),
                    dev.queues().len(),
                    gw.map(|g| format!(", gateway {g}")).unwrap_or_default()
                );
            }
            AddressSource::Dhcp => {
                println!("netdemo: asking DHCP (mac {})", dev.mac());
                dhcp = Some(sockets.add(dhcpv4::Socket::new()));
            }
        }

        let mut have_lease = false;
        let mut next_check = h.now_ns() + SECOND;
        let mut next_stats = 0;
        let mut last_counters = apps.counters();
        loop {
            let now = h.now_ns();
            if let Err(e) = dev.poll() {
                say!("netdemo: backend gone ({e}): reconnecting");
                dev = reconnect(&h, dev, &path, options).await;
                continue;
            }
            iface.poll(instant(now), &mut dev, &mut sockets);
            apps.run(&mut sockets, now, &mut print_report);
            let _ = kernel::logger::with_remote(|log| {
                remote.run(
                    &mut iface,
                    &mut sockets,
                    log,
                    now,
                    kernel::logger::wallclock(),
                )
            });
            if let Some(handle) = dhcp {
                match sockets.get_mut::<dhcpv4::Socket>(handle).poll() {
                    Some(dhcpv4::Event::Configured(c)) => {
                        have_lease = true;
                        iface.update_ip_addrs(|addrs| {
                            addrs.clear();
                            let _ = addrs.push(IpCidr::Ipv4(c.address));
                        });
                        if let Some(router) = c.router {
                            let _ = iface.routes_mut().add_default_ipv4_route(router);
                        } else {
                            iface.routes_mut().remove_default_ipv4_route();
                        }
                        say!(
                            "netdemo: ready: {} mac {} (dhcp{})",
                            c.address,
                            dev.mac(),
                            c.router
                                .map(|g| format!(", gateway {g}"))
                                .unwrap_or_default()
                        );
                    }
                    // smoltcp reports `Deconfigured` once at the start too.
                    Some(dhcpv4::Event::Deconfigured) if have_lease => {
                        have_lease = false;
                        println!("netdemo: DHCP lease lost");
                        iface.update_ip_addrs(|addrs| addrs.clear());
                        iface.routes_mut().remove_default_ipv4_route();
                    }
                    Some(dhcpv4::Event::Deconfigured) | None => {}
                }
            }
            if dev.rx().ready() > 0 {
                // More frames than one poll took: go round again, after
                // letting other tasks run.
                kernel::executor::yield_now().await;
                continue;
            }
            if now >= next_check {
                next_check = now + SECOND;
                if let Some(xs) = dev.env().xenstore_mut() {
                    if let Some(request) = kernel::control::requested(xs).await {
                        println!("netdemo: {request:?} requested by the toolstack");
                        let report = dev.disconnect().await;
                        log::debug!("netfront released: {report:?}");
                        return request.into();
                    }
                }
                let counters = apps.counters();
                if counters != last_counters && now >= next_stats {
                    say!(
                        "netdemo: stats: udp-echoed={} udp-discarded={} tcp-echoed={}",
                        counters.udp_echoed,
                        counters.udp_discarded,
                        counters.tcp_echoed
                    );
                    last_counters = counters;
                    next_stats = now + 10 * SECOND;
                }
                if let Err(e) = dev.check_backend().await {
                    println!("netdemo: backend gone ({e}): reconnecting");
                    dev = reconnect(&h, dev, &path, options).await;
                    continue;
                }
            }
            let deadline = match iface.poll_delay(instant(now), &sockets) {
                Some(d) => (now + d.total_micros() * 1000).min(next_check),
                None => next_check,
            };
            select(dev.wait(), h.sleep_until(deadline)).await;
        }
    }

    async fn reconnect(
        h: &Handle,
        dev: Netfront<XenEnv>,
        path: &str,
        options: ConnectOptions,
    ) -> Netfront<XenEnv> {
        let dev = match dev.reconnect(options).await {
            Ok(dev) => dev,
            Err((env, e)) => {
                println!("netdemo: reconnect failed ({e}); retrying");
                connect(h, env, path, options).await
            }
        };
        println!("netdemo: reconnected");
        print_resources();
        dev
    }

    /// Free frames, the grant table's free and live references and
    /// deferred frames (docs/drivers.md, "Grant ownership") and the
    /// drivers' open event channels: flat over reconnections
    /// (rig/test_netdemo_reconnects.py).
    fn print_resources() {
        let Some(p) = kernel::boot::platform() else {
            return;
        };
        let frames = p.frames.lock().free_count();
        let grants_free = p.grants.lock().free_count();
        let g = kernel::devices::grant_counts(p);
        println!(
            "netdemo: resources: frames-free={frames} grants-free={grants_free} grants-live={} deferred={} deferred-total={} freed-late={} evtchns={}",
            g.live,
            g.deferred,
            g.deferred_total,
            g.freed_late,
            kernel::devices::open_ports()
        );
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("netdemo is a Xen guest image: build it with `make images`");
    std::process::exit(2);
}
