//! The PV clock: Xen's system time (ns since the domain's host booted) from
//! the TSC and the per-vCPU `vcpu_time_info` record, and the wallclock.

use crate::abi::xen::VcpuTimeInfo;
use crate::shared_info::WallClockBase;

/// Scales a TSC delta to nanoseconds as the PV clock specifies: shift
/// first (left for a positive shift), then multiply by a 32.32 fraction.
pub fn scale_delta(delta: u64, mul: u32, shift: i8) -> u64 {
    let d = if shift >= 0 {
        delta.checked_shl(shift as u32).unwrap_or(0)
    } else {
        delta >> (-(shift as i32)).min(63)
    };
    ((u128::from(d) * u128::from(mul)) >> 32) as u64
}

/// System time in ns at TSC value `tsc` for the record `info`.
pub fn system_time_ns(info: &VcpuTimeInfo, tsc: u64) -> u64 {
    let delta = tsc.wrapping_sub(info.tsc_timestamp);
    // A TSC read before the record's timestamp (it was updated in between)
    // counts as zero elapsed time rather than wrapping to the far future.
    let delta = if (delta as i64) < 0 { 0 } else { delta };
    info.system_time
        .wrapping_add(scale_delta(delta, info.tsc_to_system_mul, info.tsc_shift))
}

/// A clock that never goes backwards, over readings of the raw PV clock.
///
/// Xen updates the `vcpu_time_info` record per physical CPU; when the vCPU
/// moves between physical CPUs whose TSCs are not synchronised (Xen then
/// leaves `XEN_PVCLOCK_TSC_STABLE_BIT` clear, and QEMU's emulated CPUs are
/// such a case) a reading can fall a little behind an earlier one: seen on
/// the rig, 4 ms once in a PVH run. Like Linux's pvclock, the kernel
/// returns the latest value handed out instead, and counts the steps.
pub struct Monotonic {
    last: core::sync::atomic::AtomicU64,
    corrected: core::sync::atomic::AtomicU64,
    largest: core::sync::atomic::AtomicU64,
}

impl Monotonic {
    /// A clock that has handed out nothing yet.
    pub const fn new() -> Self {
        use core::sync::atomic::AtomicU64;
        Self {
            last: AtomicU64::new(0),
            corrected: AtomicU64::new(0),
            largest: AtomicU64::new(0),
        }
    }

    /// `raw`, or the latest value handed out if `raw` is behind it.
    pub fn read(&self, raw: u64) -> u64 {
        use core::sync::atomic::Ordering::Relaxed;
        let prev = self.last.fetch_max(raw, Relaxed);
        if raw < prev {
            self.corrected.fetch_add(1, Relaxed);
            self.largest.fetch_max(prev - raw, Relaxed);
            prev
        } else {
            raw
        }
    }

    /// How many readings were behind, and by how much at most (ns).
    pub fn corrections(&self) -> (u64, u64) {
        use core::sync::atomic::Ordering::Relaxed;
        (self.corrected.load(Relaxed), self.largest.load(Relaxed))
    }
}

impl Default for Monotonic {
    fn default() -> Self {
        Self::new()
    }
}

/// TSC ticks per second implied by a PV clock record.
pub fn tsc_hz(info: &VcpuTimeInfo) -> u64 {
    // ns = (tsc << shift) * mul / 2^32  =>  tsc/s = 1e9 * 2^32 / mul >> shift
    if info.tsc_to_system_mul == 0 {
        return 0;
    }
    let hz = (1_000_000_000u128 << 32) / u128::from(info.tsc_to_system_mul);
    let hz = if info.tsc_shift >= 0 {
        hz >> info.tsc_shift
    } else {
        hz << (-(info.tsc_shift as i32))
    };
    hz as u64
}

/// Wallclock (seconds, nanoseconds since the Unix epoch) at system time `system_ns`.
pub fn wallclock_at(base: WallClockBase, system_ns: u64) -> (u64, u32) {
    let total = u128::from(base.nsec) + u128::from(system_ns);
    let sec = base.sec + (total / 1_000_000_000) as u64;
    (sec, (total % 1_000_000_000) as u32)
}

/// Reads the time-stamp counter.
#[cfg(target_arch = "x86_64")]
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no memory effects; Xen lets PV and PVH guests run it.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Arm has no TSC: this reads the generic timer's virtual count
/// (CNTVCT), the counter Xen's Arm guests keep time with (see
/// [`counter_hz`]). The name matches amd64 so the portable code reads
/// "the counter" the same way on both.
#[cfg(all(target_arch = "arm", target_os = "none"))]
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: reading CNTVCT (mrrc p15, 1, c14) has no side effects; PL1
    // may always read it. The isb orders it after earlier instructions.
    unsafe {
        core::arch::asm!("isb", "mrrc p15, 1, {}, {}, c14", out(reg) lo, out(reg) hi,
                         options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Arm: the generic timer's frequency (CNTFRQ) in Hz.
#[cfg(all(target_arch = "arm", target_os = "none"))]
pub fn counter_hz() -> u64 {
    let f: u32;
    // SAFETY: reading CNTFRQ has no side effects.
    unsafe {
        core::arch::asm!("mrc p15, 0, {}, c14, c0, 0", out(reg) f,
                         options(nomem, nostack, preserves_flags))
    };
    u64::from(f)
}

/// A PV clock record (timestamp 0, system time 0) that scales a counter
/// running at `hz` to nanoseconds, as Xen would publish for a TSC of that
/// rate: the smallest shift that keeps the multiplier in 32 bits. 0 Hz
/// gives a record with multiplier 0.
pub fn record_for_hz(hz: u64) -> VcpuTimeInfo {
    let mut rec = VcpuTimeInfo::default();
    if hz == 0 {
        return rec;
    }
    // ns = (delta << shift) * mul / 2^32, so mul = 1e9 * 2^32 / (hz << shift).
    let mut shift: i8 = 0;
    let mut mul = (1_000_000_000u128 << 32) / u128::from(hz);
    while mul > u128::from(u32::MAX) && shift < 31 {
        shift += 1;
        mul >>= 1;
    }
    while mul < (1 << 31) && shift > -31 {
        shift -= 1;
        mul <<= 1;
    }
    rec.tsc_to_system_mul = mul.min(u128::from(u32::MAX)) as u32;
    rec.tsc_shift = shift;
    rec
}

/// Nanoseconds for `ticks` of a counter running at `hz` (0 Hz gives 0),
/// without overflow for any 64-bit tick count.
pub fn ticks_to_ns(ticks: u64, hz: u64) -> u64 {
    if hz == 0 {
        return 0;
    }
    (u128::from(ticks) * 1_000_000_000 / u128::from(hz)).min(u128::from(u64::MAX)) as u64
}

/// Counter ticks for `ns` nanoseconds at `hz`, rounded up (a deadline
/// never fires early).
pub fn ns_to_ticks(ns: u64, hz: u64) -> u64 {
    (u128::from(ns) * u128::from(hz))
        .div_ceil(1_000_000_000)
        .min(u128::from(u64::MAX)) as u64
}

#[cfg(test)]
mod tests {

    #[test]
    fn monotonic_never_goes_back_and_counts_corrections() {
        let c = Monotonic::new();
        assert_eq!(c.read(100), 100);
        assert_eq!(c.read(250), 250);
        assert_eq!(c.read(240), 250);
        assert_eq!(c.read(200), 250);
        assert_eq!(c.read(300), 300);
        assert_eq!(c.corrections(), (2, 50));
    }

    use super::*;

    fn rec(mul: u32, shift: i8) -> VcpuTimeInfo {
        VcpuTimeInfo {
            tsc_timestamp: 1000,
            system_time: 5_000,
            tsc_to_system_mul: mul,
            tsc_shift: shift,
            ..Default::default()
        }
    }

    #[test]
    fn a_2ghz_tsc_counts_half_a_ns_per_tick() {
        // 2 GHz: 0.5 ns per tick = 0x8000_0000 / 2^32 with shift 0.
        let r = rec(0x8000_0000, 0);
        assert_eq!(
            system_time_ns(&r, 1000 + 2_000_000_000),
            5_000 + 1_000_000_000
        );
        assert_eq!(tsc_hz(&r), 2_000_000_000);
    }

    #[test]
    fn negative_and_positive_shifts() {
        // 4 GHz: ns = (delta >> 1) * 0.5 -> mul 0x8000_0000, shift -1.
        let r = rec(0x8000_0000, -1);
        assert_eq!(
            system_time_ns(&r, 1000 + 4_000_000_000),
            5_000 + 1_000_000_000
        );
        assert_eq!(tsc_hz(&r), 4_000_000_000);
        // 500 MHz: 2 ns per tick = (delta << 1) * 1.0 -> mul 2^32 is out of
        // range, so Xen uses shift 2 with mul 0x8000_0000.
        let r = rec(0x8000_0000, 2);
        assert_eq!(
            system_time_ns(&r, 1000 + 500_000_000),
            5_000 + 1_000_000_000
        );
    }

    #[test]
    fn tsc_before_record_counts_as_zero() {
        let r = rec(0x8000_0000, 0);
        assert_eq!(system_time_ns(&r, 10), 5_000);
    }

    #[test]
    fn records_for_counter_rates() {
        for hz in [
            62_500_000u64,
            24_000_000,
            1_000_000_000,
            3_000_000_000,
            19_200_000,
        ] {
            let r = record_for_hz(hz);
            let got = system_time_ns(&r, hz); // one second of ticks
            assert!(got.abs_diff(1_000_000_000) <= 1, "{hz} Hz: {got} ns");
            assert!(
                tsc_hz(&r).abs_diff(hz) <= hz / 1_000_000,
                "{hz} Hz: {}",
                tsc_hz(&r)
            );
        }
        assert_eq!(record_for_hz(0).tsc_to_system_mul, 0);
    }

    #[test]
    fn counter_conversions_round_trip_and_round_up() {
        // 62.5 MHz, the generic timer of QEMU's virt machine.
        assert_eq!(ticks_to_ns(62_500_000, 62_500_000), 1_000_000_000);
        assert_eq!(ns_to_ticks(1_000_000_000, 62_500_000), 62_500_000);
        assert_eq!(ns_to_ticks(1, 62_500_000), 1);
        assert_eq!(ticks_to_ns(1, 62_500_000), 16);
        assert_eq!(ticks_to_ns(5, 0), 0);
        assert_eq!(ticks_to_ns(u64::MAX, 1), u64::MAX);
    }

    #[test]
    fn wallclock_carries_nanoseconds() {
        let base = WallClockBase {
            sec: 100,
            nsec: 900_000_000,
        };
        assert_eq!(wallclock_at(base, 200_000_000), (101, 100_000_000));
        assert_eq!(wallclock_at(base, 0), (100, 900_000_000));
    }
}
