//! blkdemo: moat's block driver test image. It connects a virtual disk
//! with blkfront and, as `blkdemo.mode=` asks:
//!
//! - `write` (default): writes `blkdemo.mib` MiB of the deterministic
//!   stream seeded by `blkdemo.seed` from sector 0, flushes, reads it all
//!   back and compares;
//! - `verify`: only reads back and compares (after a restart: the data
//!   must have survived);
//!
//! then, with `blkdemo.bench`, measures sequential read/write MB/s and
//! 4 KiB random-read IOPS with 32 requests in flight, and powers off.
//!
//! Every write and read runs under `BlkFront::guard`: when the backend
//! leaves `Connected` (`xl block-detach`), blkdemo reconnects (waiting at
//! most `blkdemo.reconnect-wait` seconds, default 120, for the device to
//! come back) and carries on. Reads are retried where they failed. Writes
//! start again from the last flush that succeeded: every 8 MiB and at the
//! end blkdemo flushes, and a write is taken as durable only once a flush
//! issued after it succeeded on the connection it completed on. With
//! `blkdemo.detach`, each pass (write, then read) is repeated until one
//! reconnection happened during it, so the rig can detach and attach the
//! disk in the middle of each.
//!
//! Console lines the rig reads:
//!
//! ```text
//! blkdemo: disk: <sectors> sectors of <size> bytes, <features>
//! blkdemo: writing: pass <n>                       (with blkdemo.detach)
//! blkdemo: reading: pass <n>                       (with blkdemo.detach)
//! blkdemo: backend gone (<why>, <n> requests in flight): reconnecting
//! blkdemo: closed in <ms> ms (<n> grants still mapped by the backend: leaked)
//! blkdemo: reconnected in <ms> ms: <sectors> sectors of <size> bytes
//! blkdemo: write: <bytes> bytes crc32 <hex> in <us> us
//! blkdemo: verify: <bytes> bytes crc32 <hex> in <us> us: ok|MISMATCH at <offset>
//! blkdemo: bench: <what> ...
//! ```
#![cfg_attr(target_os = "none", no_std, no_main)]
#![forbid(unsafe_code)]

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(target_os = "none")]
mod image {
    use alloc::boxed::Box;
    use alloc::format;
    use alloc::vec;
    use alloc::vec::Vec;
    use core::future::{poll_fn, Future};
    use core::pin::{pin, Pin};
    use core::task::Poll;

    use blkfront::{BlkConfig, BlkError, BlkFront};
    use kernel::boot::{Env, Exit, Platform};
    use kernel::cmdline::{self, SettingError, Settings};
    use kernel::devices::{KernelXenStore, XenEnv};
    use kernel::executor::Handle;
    use kernel::println;
    use netdemo::stream::{Crc32, Pattern};

    kernel::service!(main);

    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Mode {
        Write,
        Verify,
    }

    struct BlkdemoSettings {
        vbd: u64,
        mib: u64,
        seed: u64,
        mode: Mode,
        bench: bool,
        detach: bool,
        reconnect_wait: u64,
    }

    impl Settings for BlkdemoSettings {
        fn set(&mut self, key: &str, value: Option<&str>) -> Result<(), SettingError> {
            match key {
                "blkdemo.vbd" => self.vbd = cmdline::parse_u64_in(value, 0..=u64::from(u32::MAX))?,
                "blkdemo.mib" => self.mib = cmdline::parse_u64_in(value, 1..=65536)?,
                "blkdemo.seed" => self.seed = cmdline::parse_u64(value)?,
                "blkdemo.mode" => {
                    self.mode = [Mode::Write, Mode::Verify]
                        [cmdline::parse_enum(value, &["write", "verify"])?]
                }
                "blkdemo.bench" => self.bench = cmdline::parse_bool(value)?,
                "blkdemo.detach" => self.detach = cmdline::parse_bool(value)?,
                "blkdemo.reconnect-wait" => {
                    self.reconnect_wait = cmdline::parse_u64_in(value, 1..=3600)?
                }
                _ => return Err(SettingError::Unknown),
            }
            Ok(())
        }

        fn known_keys(&self) -> &'static [&'static str] {
            &[
                "blkdemo.vbd",
                "blkdemo.mib",
                "blkdemo.seed",
                "blkdemo.mode",
                "blkdemo.bench",
                "blkdemo.detach",
                "blkdemo.reconnect-wait",
            ]
        }
    }

    /// Bytes per read or write call in the pattern pass.
    const CHUNK: usize = 1 << 20;
    /// Chunks written between two flushes.
    const FLUSH_EVERY: u64 = 8;
    /// Passes at most while waiting for a detach (`blkdemo.detach`).
    const MAX_PASSES: u32 = 1000;
    const SECOND: u64 = 1_000_000_000;

    /// `f`, or `None` if it has not finished after `ns` nanoseconds.
    async fn timeout<F: Future>(h: &Handle, ns: u64, f: F) -> Option<F::Output> {
        let mut f = pin!(f);
        let mut sleep = pin!(h.sleep(ns));
        poll_fn(|cx| {
            if let Poll::Ready(v) = f.as_mut().poll(cx) {
                return Poll::Ready(Some(v));
            }
            sleep.as_mut().poll(cx).map(|_| None)
        })
        .await
    }

    /// The disk and what it takes to connect it again.
    struct Disk {
        front: Option<BlkFront<XenEnv>>,
        xs: KernelXenStore,
        platform: &'static Platform,
        h: Handle,
        path: alloc::string::String,
        sector_size: u32,
        sectors_512: u64,
        reconnect_wait: u64,
        reconnects: u32,
    }

    /// Why an operation could not be done.
    enum Failed {
        /// The backend went away and came back: do it again.
        Retry,
        /// Give up (printed already).
        Fatal,
    }

    impl Disk {
        /// What to do after `e`: reconnect if the backend went away.
        async fn recover(&mut self, what: &str, e: BlkError) -> Failed {
            if !matches!(e, BlkError::BackendGone(_)) {
                println!("blkdemo: {what} failed: {e:?}");
                return Failed::Fatal;
            }
            let in_flight = self.front.as_ref().map_or(0, BlkFront::in_flight);
            println!("blkdemo: backend gone ({e:?}, {in_flight} requests in flight): reconnecting");
            let t = self.h.now_ns();
            let Some(old) = self.front.take() else {
                return Failed::Fatal;
            };
            let limit = self.reconnect_wait * SECOND;
            // `BlkFront::reconnect` in its three steps, to time the first:
            // xl block-detach waits (10 s at most) for the backend to
            // close, which it does once we have closed.
            let Some(stats) = timeout(&self.h, limit, old.close(&mut self.xs)).await else {
                println!(
                    "blkdemo: the backend did not close within {} s",
                    self.reconnect_wait
                );
                return Failed::Fatal;
            };
            println!(
                "blkdemo: closed in {} ms ({} grants still mapped by the backend: leaked)",
                (self.h.now_ns() - t) / 1_000_000,
                stats.leaked_grants
            );
            let env = XenEnv::new(self.platform, self.h.clone(), None);
            let path = self.path.clone();
            let xs = &mut self.xs;
            let reconnect = async move {
                blkfront::front::wait_backend_ready(xs, &path).await?;
                BlkFront::connect(env, xs, &path, BlkConfig::default()).await
            };
            let left = (t + limit).saturating_sub(self.h.now_ns());
            match timeout(&self.h, left, reconnect).await {
                Some(Ok(front)) => {
                    let info = front.info();
                    println!(
                        "blkdemo: reconnected in {} ms: {} sectors of {} bytes",
                        (self.h.now_ns() - t) / 1_000_000,
                        info.sectors_512 * 512 / u64::from(info.sector_size),
                        info.sector_size
                    );
                    if info.sector_size != self.sector_size || info.sectors_512 < self.sectors_512 {
                        println!("blkdemo: the disk that came back is another one");
                        return Failed::Fatal;
                    }
                    self.front = Some(front);
                    self.reconnects += 1;
                    Failed::Retry
                }
                Some(Err(e)) => {
                    println!("blkdemo: reconnect failed: {e:?}");
                    Failed::Fatal
                }
                None => {
                    println!(
                        "blkdemo: the disk did not come back within {} s",
                        self.reconnect_wait
                    );
                    Failed::Fatal
                }
            }
        }

        async fn write(&mut self, off: u64, data: &[u8]) -> Result<(), Failed> {
            let sector = off / u64::from(self.sector_size);
            let result = match self.front.as_ref() {
                Some(f) => f.guard(&mut self.xs, f.write(sector, data)).await,
                None => Err(BlkError::Disconnected),
            };
            match result {
                Ok(()) => Ok(()),
                Err(e) => Err(self.recover("write", e).await),
            }
        }

        async fn read(&mut self, off: u64, buf: &mut [u8]) -> Result<(), Failed> {
            let sector = off / u64::from(self.sector_size);
            let result = match self.front.as_ref() {
                Some(f) => f.guard(&mut self.xs, f.read(sector, buf)).await,
                None => Err(BlkError::Disconnected),
            };
            match result {
                Ok(()) => Ok(()),
                Err(e) => Err(self.recover("read", e).await),
            }
        }

        async fn flush(&mut self) -> Result<(), Failed> {
            let result = match self.front.as_ref() {
                Some(f) => f.guard(&mut self.xs, f.flush()).await,
                None => Err(BlkError::Disconnected),
            };
            match result {
                Ok(()) => Ok(()),
                Err(e) => Err(self.recover("flush", e).await),
            }
        }
    }

    /// Where the write pass stands: bytes done, the stream and its CRC.
    #[derive(Clone)]
    struct Cursor {
        off: u64,
        pattern: Pattern,
        crc: Crc32,
    }

    impl Cursor {
        fn new(seed: u64) -> Self {
            Self {
                off: 0,
                pattern: Pattern::new(seed),
                crc: Crc32::new(),
            }
        }
    }

    /// One pass writing the stream over `bytes`, flushing every
    /// [`FLUSH_EVERY`] chunks and at the end. After a reconnection it goes
    /// back to the last flush that succeeded. The stream's CRC, or `None`
    /// on a fatal error.
    async fn write_pass(disk: &mut Disk, seed: u64, bytes: u64) -> Option<u32> {
        let mut buf = vec![0u8; CHUNK];
        let mut durable = Cursor::new(seed);
        let mut cur = durable.clone();
        loop {
            if cur.off >= bytes
                || (cur.off / CHUNK as u64).is_multiple_of(FLUSH_EVERY) && cur.off > durable.off
            {
                match disk.flush().await {
                    Ok(()) => durable = cur.clone(),
                    Err(Failed::Retry) => {
                        cur = durable.clone();
                        continue;
                    }
                    Err(Failed::Fatal) => return None,
                }
                if cur.off >= bytes {
                    return Some(cur.crc.value());
                }
            }
            let mut next = cur.clone();
            next.pattern.fill(&mut buf);
            next.crc.update(&buf);
            next.off += CHUNK as u64;
            match disk.write(cur.off, &buf).await {
                Ok(()) => cur = next,
                Err(Failed::Retry) => cur = durable.clone(),
                Err(Failed::Fatal) => return None,
            }
        }
    }

    /// One pass reading `bytes` back and comparing with the stream: its
    /// CRC and the first differing offset, or `None` on a fatal error.
    async fn read_pass(disk: &mut Disk, seed: u64, bytes: u64) -> Option<(u32, Option<u64>)> {
        let mut buf = vec![0u8; CHUNK];
        let mut want = vec![0u8; CHUNK];
        let mut pattern = Pattern::new(seed);
        let mut crc = Crc32::new();
        let mut mismatch = None;
        let mut off = 0u64;
        while off < bytes {
            match disk.read(off, &mut buf).await {
                Ok(()) => {}
                Err(Failed::Retry) => continue,
                Err(Failed::Fatal) => return None,
            }
            pattern.fill(&mut want);
            crc.update(&buf);
            if mismatch.is_none() {
                if let Some(i) = buf.iter().zip(&want).position(|(a, b)| a != b) {
                    mismatch = Some(off + i as u64);
                }
            }
            off += CHUNK as u64;
        }
        Some((crc.value(), mismatch))
    }

    /// Runs every future to completion, polling each when woken.
    async fn join_all<'a, T>(mut futs: Vec<Pin<Box<dyn Future<Output = T> + 'a>>>) -> Vec<T> {
        let mut out: Vec<Option<T>> = futs.iter().map(|_| None).collect();
        poll_fn(|cx| {
            let mut pending = false;
            for (f, slot) in futs.iter_mut().zip(out.iter_mut()) {
                if slot.is_none() {
                    match f.as_mut().poll(cx) {
                        Poll::Ready(v) => *slot = Some(v),
                        Poll::Pending => pending = true,
                    }
                }
            }
            if pending {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        out.into_iter().flatten().collect()
    }

    async fn main(mut env: Env) -> Exit {
        let mut s = BlkdemoSettings {
            vbd: 51712,
            mib: 64,
            seed: 1,
            mode: Mode::Write,
            bench: false,
            detach: false,
            reconnect_wait: 120,
        };
        if env.configure(&mut s).is_err() {
            println!("blkdemo: bad command line");
            return Exit::Crash;
        }
        let Some(mut xs) = env.xenstore.take() else {
            println!("blkdemo: no xenstore: no disks");
            return Exit::Crash;
        };
        let h = env.executor.clone();
        let path = format!("device/vbd/{}", s.vbd);
        let xenv = XenEnv::new(env.platform, h.clone(), None);
        let config = BlkConfig::default();
        let front = match BlkFront::connect(xenv, &mut xs, &path, config).await {
            Ok(d) => d,
            Err(e) => {
                println!("blkdemo: cannot connect {path}: {e:?}");
                return Exit::Crash;
            }
        };
        let info = front.info();
        println!(
            "blkdemo: disk: {} sectors of {} bytes, flush={} barrier={} discard={} indirect-segments={} ring={} segments/request={}",
            info.sectors_512 * 512 / info.sector_size as u64,
            info.sector_size,
            info.flush_cache,
            info.barrier,
            info.discard,
            info.max_indirect_segments,
            front.ring_size(),
            front.segments_per_request()
        );
        let bytes = s.mib << 20;
        if bytes > info.sectors_512 * 512 {
            println!("blkdemo: the disk is smaller than blkdemo.mib={}", s.mib);
            return Exit::Crash;
        }
        let mut disk = Disk {
            front: Some(front),
            xs,
            platform: env.platform,
            h: h.clone(),
            path,
            sector_size: info.sector_size,
            sectors_512: info.sectors_512,
            reconnect_wait: s.reconnect_wait,
            reconnects: 0,
        };
        if s.mode == Mode::Write {
            let mut pass = 0;
            let at_start = disk.reconnects;
            loop {
                pass += 1;
                if s.detach {
                    println!("blkdemo: writing: pass {pass}");
                }
                let t = h.now_ns();
                let Some(crc) = write_pass(&mut disk, s.seed, bytes).await else {
                    return Exit::Crash;
                };
                if !s.detach || disk.reconnects > at_start || pass >= MAX_PASSES {
                    println!(
                        "blkdemo: write: {bytes} bytes crc32 {crc:08x} in {} us",
                        (h.now_ns() - t) / 1000
                    );
                    break;
                }
            }
        }
        let mut pass = 0;
        let at_start = disk.reconnects;
        let mut first_mismatch = None;
        loop {
            pass += 1;
            if s.detach {
                println!("blkdemo: reading: pass {pass}");
            }
            let t = h.now_ns();
            let Some((crc, mismatch)) = read_pass(&mut disk, s.seed, bytes).await else {
                return Exit::Crash;
            };
            first_mismatch = first_mismatch.or(mismatch);
            if !s.detach || disk.reconnects > at_start || pass >= MAX_PASSES {
                println!(
                    "blkdemo: verify: {bytes} bytes crc32 {crc:08x} in {} us: {}",
                    (h.now_ns() - t) / 1000,
                    match first_mismatch {
                        None => alloc::string::String::from("ok"),
                        Some(at) => format!("MISMATCH at {at}"),
                    }
                );
                break;
            }
        }
        // `front` is always there after passes that did not fail fatally.
        if let Some(front) = disk.front.as_ref() {
            if s.bench {
                bench(&h, front, bytes, disk.sector_size as usize).await;
            }
            println!(
                "blkdemo: stats: {:?} reconnects={} ({})",
                front.stats(),
                disk.reconnects,
                disk.path
            );
        }
        if first_mismatch.is_some() {
            Exit::Crash
        } else {
            Exit::Poweroff
        }
    }

    async fn bench(h: &Handle, disk: &BlkFront<XenEnv>, bytes: u64, ss: usize) {
        // Sequential read of the region again, 1 MiB per call.
        let mut buf = vec![0u8; CHUNK];
        let t = h.now_ns();
        let mut off = 0;
        while off < bytes {
            let _ = disk.read(off / ss as u64, &mut buf).await;
            off += CHUNK as u64;
        }
        let ns = (h.now_ns() - t).max(1);
        println!(
            "blkdemo: bench: sequential-read {:.1} MB/s ({bytes} bytes in {} us)",
            bytes as f64 * 1e3 / ns as f64,
            ns / 1000
        );
        // 4 KiB random reads, 32 in flight, for about 3 s.
        let blocks = bytes / 4096;
        let deadline = h.now_ns() + 3_000_000_000;
        let t = h.now_ns();
        let mut futs: Vec<Pin<Box<dyn Future<Output = u64> + '_>>> = Vec::new();
        for w in 0..32u64 {
            let h = h.clone();
            futs.push(Box::pin(async move {
                let mut b = vec![0u8; 4096];
                let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ w;
                let mut n = 0;
                while h.now_ns() < deadline {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let block = x % blocks;
                    if disk.read(block * 4096 / ss as u64, &mut b).await.is_err() {
                        break;
                    }
                    n += 1;
                }
                n
            }));
        }
        let done: u64 = join_all(futs).await.into_iter().sum();
        let ns = (h.now_ns() - t).max(1);
        println!(
            "blkdemo: bench: random-4k-read {} IOPS ({done} reads in {} us, 32 in flight)",
            done * 1_000_000_000 / ns,
            ns / 1000
        );
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("blkdemo is a Xen guest image: build it with `make images`");
    std::process::exit(2);
}
