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
//! Console lines the rig reads:
//!
//! ```text
//! blkdemo: disk: <sectors> sectors of <size> bytes, <features>
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
    use alloc::rc::Rc;
    use alloc::vec;
    use alloc::vec::Vec;
    use core::future::{poll_fn, Future};
    use core::pin::Pin;
    use core::task::Poll;

    use blkfront::{BlkConfig, BlkFront};
    use kernel::boot::{Env, Exit};
    use kernel::cmdline::{self, SettingError, Settings};
    use kernel::devices::XenEnv;
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
            ]
        }
    }

    /// Bytes per read or write call in the pattern pass.
    const CHUNK: usize = 1 << 20;

    /// Runs every future to completion, polling each when woken.
    async fn join_all<T>(mut futs: Vec<Pin<Box<dyn Future<Output = T>>>>) -> Vec<T> {
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
        let disk = match BlkFront::connect(xenv, &mut xs, &path, config).await {
            Ok(d) => Rc::new(d),
            Err(e) => {
                println!("blkdemo: cannot connect {path}: {e:?}");
                return Exit::Crash;
            }
        };
        let info = disk.info();
        let ss = info.sector_size as usize;
        println!(
            "blkdemo: disk: {} sectors of {} bytes, flush={} barrier={} discard={} indirect-segments={} ring={} segments/request={}",
            info.sectors_512 * 512 / info.sector_size as u64,
            info.sector_size,
            info.flush_cache,
            info.barrier,
            info.discard,
            info.max_indirect_segments,
            disk.ring_size(),
            disk.segments_per_request()
        );
        let bytes = s.mib << 20;
        if bytes > info.sectors_512 * 512 {
            println!("blkdemo: the disk is smaller than blkdemo.mib={}", s.mib);
            return Exit::Crash;
        }
        let mut buf = vec![0u8; CHUNK];
        if s.mode == Mode::Write {
            let mut pattern = Pattern::new(s.seed);
            let mut crc = Crc32::new();
            let t = h.now_ns();
            let mut off = 0u64;
            while off < bytes {
                pattern.fill(&mut buf);
                crc.update(&buf);
                if let Err(e) = disk.write(off / ss as u64, &buf).await {
                    println!("blkdemo: write at byte {off} failed: {e:?}");
                    return Exit::Crash;
                }
                off += CHUNK as u64;
            }
            if info.flush_cache {
                if let Err(e) = disk.flush().await {
                    println!("blkdemo: flush failed: {e:?}");
                    return Exit::Crash;
                }
            }
            println!(
                "blkdemo: write: {bytes} bytes crc32 {:08x} in {} us",
                crc.value(),
                (h.now_ns() - t) / 1000
            );
        }
        // Read back and compare with the stream.
        let mut pattern = Pattern::new(s.seed);
        let mut want = vec![0u8; CHUNK];
        let mut crc = Crc32::new();
        let mut mismatch = None;
        let t = h.now_ns();
        let mut off = 0u64;
        while off < bytes {
            if let Err(e) = disk.read(off / ss as u64, &mut buf).await {
                println!("blkdemo: read at byte {off} failed: {e:?}");
                return Exit::Crash;
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
        println!(
            "blkdemo: verify: {bytes} bytes crc32 {:08x} in {} us: {}",
            crc.value(),
            (h.now_ns() - t) / 1000,
            match mismatch {
                None => alloc::string::String::from("ok"),
                Some(at) => format!("MISMATCH at {at}"),
            }
        );
        if s.bench {
            bench(&h, &disk, bytes, ss).await;
        }
        let st = disk.stats();
        println!("blkdemo: stats: {st:?}");
        if mismatch.is_some() {
            Exit::Crash
        } else {
            Exit::Poweroff
        }
    }

    async fn bench(
        h: &kernel::executor::Handle,
        disk: &Rc<BlkFront<XenEnv>>,
        bytes: u64,
        ss: usize,
    ) {
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
        let mut futs: Vec<Pin<Box<dyn Future<Output = u64>>>> = Vec::new();
        for w in 0..32u64 {
            let disk = disk.clone();
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
