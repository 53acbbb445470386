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

#[cfg(test)]
mod tests {
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
    fn wallclock_carries_nanoseconds() {
        let base = WallClockBase {
            sec: 100,
            nsec: 900_000_000,
        };
        assert_eq!(wallclock_at(base, 200_000_000), (101, 100_000_000));
        assert_eq!(wallclock_at(base, 0), (100, 900_000_000));
    }
}
