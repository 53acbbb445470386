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
    use core::task::{Context, Poll};

    use kernel::boot::{Env, Exit};
    use kernel::cmdline::{self, SettingError, Settings};
    use kernel::devices::{ForeignMapping, SharedFrame, XenEnv};
    use kernel::println;
    use netback::env::NetbackEnv;
    use netfront::NetEnv;
    use qubes::vchan::wire::qubes_path;
    use qubes::vchan::{self, EnvError, Vchan, VchanEnv, VchanError};
    use xen::abi::{DomId, GrantRef, Port};
    use xen::grant::GrantError;
    use xen::shared_page::{PageMemory, SharedPage};
    use xen::xenstore::XenStore;

    kernel::service!(main);

    struct VchantestSettings {
        server: bool,
        peer: u64,
        port: u64,
        mib: u64,
        ring: u64,
        /// Ask `EVTCHNOP_status` whether the peer is gone (default on).
        status: bool,
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
            ]
        }
    }

    /// The vchan environment over the kernel's driver environment: pages,
    /// grants, unbound ports and xenstore as netfront gets them, mappings
    /// and interdomain binding as netback does.
    struct KernelVchanEnv(XenEnv, bool);

    fn net(e: netfront::EnvError) -> EnvError {
        match e {
            netfront::EnvError::OutOfMemory => EnvError::OutOfMemory,
            netfront::EnvError::Hypercall(x) => EnvError::Hypercall(x),
        }
    }

    fn back(e: netback::env::EnvError) -> EnvError {
        match e {
            netback::env::EnvError::OutOfMemory => EnvError::OutOfMemory,
            netback::env::EnvError::Grant(s) => EnvError::Grant(s),
            netback::env::EnvError::Hypercall(x) => EnvError::Hypercall(x),
        }
    }

    impl VchanEnv for KernelVchanEnv {
        type Page = SharedFrame;
        type Mapping = ForeignMapping;
        type Xs = <XenEnv as NetEnv>::Xs;

        fn alloc_page(&mut self) -> Result<SharedPage<SharedFrame>, EnvError> {
            NetEnv::alloc_page(&mut self.0).map_err(net)
        }
        fn grant_access(&mut self, d: DomId, frame: u64, ro: bool) -> Result<GrantRef, GrantError> {
            NetEnv::grant_access(&mut self.0, d, frame, ro)
        }
        fn end_access(&mut self, gref: GrantRef) -> Result<(), GrantError> {
            NetEnv::end_access(&mut self.0, gref)
        }
        /// Always read-write: the kernel maps foreign grants only so
        /// (libxenvchan servers grant every page writable).
        fn map_grant(
            &mut self,
            d: DomId,
            gref: GrantRef,
            _ro: bool,
        ) -> Result<SharedPage<ForeignMapping>, EnvError> {
            NetbackEnv::map_grant(&mut self.0, d, gref).map_err(back)
        }
        fn alloc_unbound(&mut self, remote: DomId) -> Result<Port, EnvError> {
            NetEnv::alloc_unbound(&mut self.0, remote).map_err(net)
        }
        fn bind_interdomain(&mut self, remote: DomId, port: Port) -> Result<Port, EnvError> {
            NetbackEnv::bind_interdomain(&mut self.0, remote, port).map_err(back)
        }
        fn notify(&mut self, port: Port) {
            NetEnv::notify(&mut self.0, port)
        }
        fn poll_event(&mut self, port: Port, cx: &mut Context<'_>) -> Poll<()> {
            NetEnv::poll_event(&mut self.0, port, cx)
        }
        /// `EVTCHNOP_status` says our end is no longer interdomain.
        fn peer_closed(&mut self, port: Port) -> bool {
            use xen::evtchn_status::{evtchn_status, PortState};
            if !self.1 {
                return false;
            }
            matches!(
                evtchn_status(port),
                Ok(PortState::Unbound { .. } | PortState::Closed)
            )
        }
        fn close_port(&mut self, port: Port) {
            NetEnv::close_port(&mut self.0, port)
        }
        fn xenstore(&mut self) -> &mut XenStore<Self::Xs> {
            NetEnv::xenstore(&mut self.0)
        }
    }

    /// A progress line every this many bytes.
    const PROGRESS: u64 = 8 << 20;

    /// Echo `total` bytes: everything read is written back.
    async fn echo<M: PageMemory>(
        v: &mut Vchan<M>,
        env: &mut KernelVchanEnv,
        total: u64,
        h: &kernel::executor::Handle,
    ) -> Result<u64, VchanError> {
        let t0 = h.now_ns();
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
            if !progressed {
                if v.peer_live()? == qubes::vchan::wire::Live::Closed {
                    return Err(VchanError::PeerClosed);
                }
                waits += 1;
                v.wait(env).await?;
            }
        }
        v.flush(env).await?;
        Ok(waits)
    }

    async fn run<M: PageMemory>(
        mut v: Vchan<M>,
        env: &mut KernelVchanEnv,
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
        match echo(&mut v, env, total, h).await {
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
        let mut venv = KernelVchanEnv(XenEnv::new(env.platform, h.clone(), Some(xs)), s.status);
        let me = match venv.xenstore().domid().await {
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
            if let Err(e) = vchan::wait_for_server(venv.xenstore(), &path).await {
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
