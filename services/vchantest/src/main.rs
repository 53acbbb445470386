//! vchantest: moat's vchan test image (issue 13). As a vchan server
//! (`vchantest.role=server`, the default) it publishes a vchan for
//! `vchantest.peer` (default dom0) under Qubes' path
//! `/local/domain/<self>/data/vchan/<peer>/<port>`; as a client
//! (`vchantest.role=client`) it waits for `vchantest.peer`'s server under
//! `/local/domain/<peer>/data/vchan/<self>/<port>` and connects. Either way
//! it echoes every byte it receives until `vchantest.mib` MiB went through,
//! waits until the peer has read the last of it, closes and powers off. The
//! rig (rig/test_vchan.py) runs dom0's `vchan-socket-proxy` (libxenvchan)
//! at the other end and compares checksums of what it sent and got back.
//!
//! Console lines the rig reads:
//!
//! ```text
//! vchantest: listening at <path> (rings <read>/<write> bytes)
//! vchantest: connected to <path> (rings <read>/<write> bytes)
//! vchantest: peer connected
//! vchantest: progress <bytes> bytes in <us> us (<waits> waits)   (every 8 MiB)
//! vchantest: echoed <bytes> bytes in <us> us (<waits> waits)
//! vchantest: closed (<n> pages still mapped by the peer)
//! vchantest: error: <what>
//! ```
#![cfg_attr(target_os = "none", no_std, no_main)]
#![forbid(unsafe_code)]

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(target_os = "none")]
mod image {
    use alloc::vec;

    use kernel::boot::{Env, Exit};
    use kernel::cmdline::{self, SettingError, Settings};
    use kernel::devices::XenEnv;
    use kernel::println;
    use kernel::vchan_env::KernelVchanEnv;
    use netfront::NetEnv;
    use qubes::vchan::wire::qubes_path;
    use qubes::vchan::{self, Vchan, VchanEnv, VchanError};
    use xen::abi::DomId;
    use xen::shared_page::PageMemory;

    kernel::service!(main);

    struct VchantestSettings {
        server: bool,
        peer: u64,
        port: u64,
        mib: u64,
        ring: u64,
        /// Ask `EVTCHNOP_status` whether the peer is gone (default on).
        status: bool,
        /// Give up a wait for the peer's event after this many ms and look
        /// at the rings anyway (0: wait as long as it takes): shows whether
        /// an event was lost (a wait that timed out, then found data or
        /// room, was rescued).
        poll_ms: u64,
    }

    impl Settings for VchantestSettings {
        fn set(&mut self, key: &str, value: Option<&str>) -> Result<(), SettingError> {
            match key {
                "vchantest.role" => {
                    self.server = cmdline::parse_enum(value, &["client", "server"])? == 1
                }
                "vchantest.peer" => self.peer = cmdline::parse_u64_in(value, 0..=0x7fef)?,
                "vchantest.port" => {
                    self.port = cmdline::parse_u64_in(value, 1..=u64::from(u32::MAX))?
                }
                "vchantest.mib" => self.mib = cmdline::parse_u64_in(value, 1..=4096)?,
                "vchantest.ring" => self.ring = cmdline::parse_u64_in(value, 0..=1 << 20)?,
                "vchantest.status" => self.status = cmdline::parse_bool(value)?,
                "vchantest.poll_ms" => self.poll_ms = cmdline::parse_u64_in(value, 0..=60_000)?,
                _ => return Err(SettingError::Unknown),
            }
            Ok(())
        }

        fn known_keys(&self) -> &'static [&'static str] {
            &[
                "vchantest.role",
                "vchantest.peer",
                "vchantest.port",
                "vchantest.mib",
                "vchantest.ring",
                "vchantest.status",
                "vchantest.poll_ms",
            ]
        }
    }

    /// The kernel's vchan environment over its own xenstore connection.
    type KernelEnv = KernelVchanEnv<<XenEnv as NetEnv>::Xs>;

    /// A progress line every this many bytes.
    const PROGRESS: u64 = 8 << 20;

    /// Echo `total` bytes: everything read is written back.
    async fn echo<M: PageMemory>(
        v: &mut Vchan<M>,
        env: &mut KernelEnv,
        total: u64,
        poll_ms: u64,
        h: &kernel::executor::Handle,
    ) -> Result<u64, VchanError> {
        let t0 = h.now_ns();
        let (mut timeouts, mut rescued, mut after_timeout) = (0u64, 0u64, false);
        let mut buf = vec![0u8; 1 << 16];
        let (mut have, mut at) = (0usize, 0usize);
        let (mut got, mut waits) = (0u64, 0u64);
        while got < total || at < have {
            let mut progressed = false;
            if at < have {
                let n = v.try_write(env, &buf[at..have])?;
                at += n;
                progressed |= n > 0;
            }
            if at == have {
                (have, at) = (0, 0);
                if got < total {
                    let want = (total - got).min(buf.len() as u64) as usize;
                    let n = v.try_read(env, &mut buf[..want])?;
                    have = n;
                    if got / PROGRESS != (got + n as u64) / PROGRESS {
                        println!(
                            "vchantest: progress {} bytes in {} us ({waits} waits)",
                            got + n as u64,
                            (h.now_ns() - t0) / 1000
                        );
                    }
                    got += n as u64;
                    progressed |= n > 0;
                }
            }
            if progressed && after_timeout {
                rescued += 1;
            }
            after_timeout = false;
            if !progressed {
                if v.peer_live()? == qubes::vchan::wire::Live::Closed {
                    return Err(VchanError::PeerClosed);
                }
                waits += 1;
                if poll_ms == 0 {
                    v.wait(env).await?;
                } else {
                    match h.timeout(poll_ms * 1_000_000, v.wait(env)).await {
                        Ok(r) => r?,
                        Err(_) => {
                            timeouts += 1;
                            after_timeout = true;
                            if timeouts <= 5 || timeouts.is_power_of_two() {
                                println!(
                                    "vchantest: wait timed out ({timeouts}): {}",
                                    ring_state(v)
                                );
                            }
                        }
                    }
                }
            }
        }
        v.flush(env).await?;
        if poll_ms > 0 {
            println!("vchantest: waits timed out {timeouts}, rescued {rescued}");
        }
        Ok(waits)
    }

    /// The rings and the port as seen after a wait that timed out: bytes
    /// readable, bytes of ours unread, both notify bytes, and whether Xen
    /// has the port pending (an event delivered to the shared info page
    /// that never woke us) or masked.
    fn ring_state<M: PageMemory>(v: &mut Vchan<M>) -> alloc::string::String {
        use qubes::vchan::wire::{CLI_NOTIFY, SRV_NOTIFY};
        let port = v.port();
        let (pending, masked) = kernel::boot::platform()
            .map(|p| (p.shared.is_pending(port), p.shared.is_masked(port)))
            .unwrap_or_default();
        let Some(st) = v.stream() else {
            return alloc::string::String::from("closed");
        };
        let (r, u) = (st.readable(), st.unread());
        let c = st.control();
        let (cn, sn) = (c.load_u8(CLI_NOTIFY), c.load_u8(SRV_NOTIFY));
        alloc::format!(
            "readable={r:?} unread={u:?} cli_notify={cn:?} srv_notify={sn:?} port={port} pending={pending} masked={masked}"
        )
    }

    async fn run<M: PageMemory>(
        mut v: Vchan<M>,
        env: &mut KernelEnv,
        s: &VchantestSettings,
        h: &kernel::executor::Handle,
    ) -> Exit {
        if s.server {
            if let Err(e) = v.accept(env).await {
                println!("vchantest: error: accept: {e:?}");
                return Exit::Crash;
            }
            println!("vchantest: peer connected");
        }
        let total = s.mib << 20;
        let t0 = h.now_ns();
        match echo(&mut v, env, total, s.poll_ms, h).await {
            Ok(waits) => println!(
                "vchantest: echoed {total} bytes in {} us ({waits} waits)",
                (h.now_ns() - t0) / 1000
            ),
            Err(e) => {
                println!("vchantest: error: echo: {e:?}");
                return Exit::Crash;
            }
        }
        match v.close(env).await {
            Ok(l) => println!(
                "vchantest: closed ({} pages still mapped by the peer)",
                l.len()
            ),
            Err(e) => println!("vchantest: error: close: {e:?}"),
        }
        Exit::Poweroff
    }

    async fn main(env: Env) -> Exit {
        let mut s = VchantestSettings {
            server: true,
            peer: 0,
            port: 5000,
            mib: 64,
            ring: 65536,
            status: true,
            poll_ms: 0,
        };
        if env.configure(&mut s).is_err() {
            println!("vchantest: bad command line");
            return Exit::Crash;
        }
        let Some(xs) = env.xenstore else {
            println!("vchantest: error: no xenstore");
            return Exit::Crash;
        };
        let h = env.executor.clone();
        let mut venv = KernelVchanEnv::new(XenEnv::new(env.platform, h.clone(), None), xs);
        venv.set_peer_status(s.status);
        let me = match VchanEnv::xenstore(&mut venv).domid().await {
            Ok(d) => d,
            Err(e) => {
                println!("vchantest: error: domid: {e:?}");
                return Exit::Crash;
            }
        };
        let peer = s.peer as DomId;
        let port = s.port as u32;
        if s.server {
            let path = qubes_path(me, peer, port);
            let ring = s.ring as usize;
            match vchan::listen(&mut venv, peer, &path, ring, ring).await {
                Ok(mut v) => {
                    let (r, w) = v
                        .stream()
                        .map_or((0, 0), |st| (st.read_capacity(), st.write_capacity()));
                    println!("vchantest: listening at {path} (rings {r}/{w} bytes)");
                    run(v, &mut venv, &s, &h).await
                }
                Err(e) => {
                    println!("vchantest: error: listen at {path}: {e:?}");
                    Exit::Crash
                }
            }
        } else {
            let path = qubes_path(peer, me, port);
            if let Err(e) = vchan::wait_for_server(VchanEnv::xenstore(&mut venv), &path).await {
                println!("vchantest: error: waiting for {path}: {e:?}");
                return Exit::Crash;
            }
            match vchan::connect(&mut venv, peer, &path).await {
                Ok(mut v) => {
                    let (r, w) = v
                        .stream()
                        .map_or((0, 0), |st| (st.read_capacity(), st.write_capacity()));
                    println!("vchantest: connected to {path} (rings {r}/{w} bytes)");
                    run(v, &mut venv, &s, &h).await
                }
                Err(e) => {
                    println!("vchantest: error: connect to {path}: {e:?}");
                    Exit::Crash
                }
            }
        }
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
