//! The backend's description of the disk (its xenstore keys), parsed
//! strictly: every value is untrusted.

use crate::error::BlkError;
use xen::abi::blkif::{BLKIF_SECTOR_SIZE, VDISK_READONLY};

/// What the backend says about the disk and the features it offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskInfo {
    /// Logical sector size in bytes (`sector-size`): 512 or up to 4096, a
    /// power of two. I/O is in whole logical sectors.
    pub sector_size: u32,
    /// Physical sector size (`physical-sector-size`, default
    /// `sector-size`), a multiple of `sector_size`.
    pub physical_sector_size: u32,
    /// Size of the disk in 512-byte units (`sectors`, as Linux blkback
    /// writes it).
    pub sectors_512: u64,
    /// `VDISK_*` bits (`info`).
    pub info: u32,
    /// `feature-flush-cache`.
    pub flush_cache: bool,
    /// `feature-barrier`.
    pub barrier: bool,
    /// `feature-discard`.
    pub discard: bool,
    /// `feature-max-indirect-segments` (0: no indirect requests).
    pub max_indirect_segments: u32,
    /// `feature-persistent` (informational: our bounce pages are granted
    /// once and reused whether or not the backend keeps them mapped).
    pub persistent: bool,
}

impl DiskInfo {
    /// Capacity in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.sectors_512.saturating_mul(BLKIF_SECTOR_SIZE as u64)
    }

    /// Capacity in logical sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity_bytes() / u64::from(self.sector_size)
    }

    /// The backend refuses writes (`VDISK_READONLY`).
    pub fn read_only(&self) -> bool {
        self.info & VDISK_READONLY != 0
    }
}

/// The raw values of the backend keys; `None` for an absent key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawDiskKeys<'a> {
    /// `sectors`
    pub sectors: Option<&'a [u8]>,
    /// `info`
    pub info: Option<&'a [u8]>,
    /// `sector-size`
    pub sector_size: Option<&'a [u8]>,
    /// `physical-sector-size`
    pub physical_sector_size: Option<&'a [u8]>,
    /// `feature-flush-cache`
    pub flush_cache: Option<&'a [u8]>,
    /// `feature-barrier`
    pub barrier: Option<&'a [u8]>,
    /// `feature-discard`
    pub discard: Option<&'a [u8]>,
    /// `feature-max-indirect-segments`
    pub max_indirect_segments: Option<&'a [u8]>,
    /// `feature-persistent`
    pub persistent: Option<&'a [u8]>,
}

/// A decimal number with nothing around it (no sign, no spaces, no NUL),
/// of at most 20 digits, that fits `u64`.
pub fn parse_u64(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 20 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0u64, |acc, d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

fn parse_u32(value: &[u8]) -> Option<u32> {
    parse_u64(value).and_then(|n| u32::try_from(n).ok())
}

/// A feature flag: absent means off; present must be a number, non-zero
/// meaning on (Linux writes `0`/`1`).
fn parse_flag(key: &'static str, value: Option<&[u8]>) -> Result<bool, BlkError> {
    match value {
        None => Ok(false),
        Some(v) => parse_u64(v).map(|n| n != 0).ok_or(BlkError::BadKey(key)),
    }
}

fn required_u64(key: &'static str, value: Option<&[u8]>) -> Result<u64, BlkError> {
    value.and_then(parse_u64).ok_or(BlkError::BadKey(key))
}

/// Largest logical sector size we accept: one page, so a sector never
/// spans two segments.
pub const MAX_SECTOR_SIZE: u32 = 4096;

impl DiskInfo {
    /// Parse and check the backend's keys.
    pub fn parse(raw: &RawDiskKeys<'_>) -> Result<Self, BlkError> {
        let sectors_512 = required_u64("sectors", raw.sectors)?;
        let info = raw
            .info
            .map_or(Some(0), parse_u32)
            .ok_or(BlkError::BadKey("info"))?;
        let sector_size = match raw.sector_size {
            None => BLKIF_SECTOR_SIZE as u32,
            Some(v) => parse_u32(v)
                .filter(|&n| n.is_power_of_two() && (512..=MAX_SECTOR_SIZE).contains(&n))
                .ok_or(BlkError::BadKey("sector-size"))?,
        };
        let physical_sector_size = match raw.physical_sector_size {
            None => sector_size,
            Some(v) => parse_u32(v)
                .filter(|&n| n != 0 && n.is_multiple_of(sector_size))
                .ok_or(BlkError::BadKey("physical-sector-size"))?,
        };
        // The disk must be whole logical sectors.
        if sectors_512.checked_mul(BLKIF_SECTOR_SIZE as u64).is_none()
            || !(sectors_512 * BLKIF_SECTOR_SIZE as u64).is_multiple_of(u64::from(sector_size))
        {
            return Err(BlkError::BadKey("sectors"));
        }
        let max_indirect_segments = match raw.max_indirect_segments {
            None => 0,
            Some(v) => parse_u32(v).ok_or(BlkError::BadKey("feature-max-indirect-segments"))?,
        };
        Ok(Self {
            sector_size,
            physical_sector_size,
            sectors_512,
            info,
            flush_cache: parse_flag("feature-flush-cache", raw.flush_cache)?,
            barrier: parse_flag("feature-barrier", raw.barrier)?,
            discard: parse_flag("feature-discard", raw.discard)?,
            max_indirect_segments,
            persistent: parse_flag("feature-persistent", raw.persistent)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linux_like() -> RawDiskKeys<'static> {
        RawDiskKeys {
            sectors: Some(b"131072"),
            info: Some(b"0"),
            sector_size: Some(b"512"),
            physical_sector_size: Some(b"4096"),
            flush_cache: Some(b"1"),
            barrier: None,
            discard: Some(b"1"),
            max_indirect_segments: Some(b"256"),
            persistent: Some(b"1"),
        }
    }

    #[test]
    fn parses_what_linux_blkback_writes() {
        let info = DiskInfo::parse(&linux_like()).unwrap();
        assert_eq!(info.capacity_bytes(), 64 << 20);
        assert_eq!(info.capacity_sectors(), 131072);
        assert_eq!(info.physical_sector_size, 4096);
        assert!(info.flush_cache && info.discard && !info.barrier);
        assert_eq!(info.max_indirect_segments, 256);
        assert!(!info.read_only());

        let mut raw = linux_like();
        raw.sector_size = Some(b"4096");
        raw.info = Some(b"4");
        let info = DiskInfo::parse(&raw).unwrap();
        assert_eq!(info.capacity_sectors(), 16384);
        assert!(info.read_only());
    }

    #[test]
    fn rejects_bad_values() {
        type Mutate = fn(&mut RawDiskKeys<'static>);
        let cases: [(Mutate, &str); 10] = [
            (|r| r.sectors = None, "sectors"),
            (|r| r.sectors = Some(b"-1"), "sectors"),
            (|r| r.sectors = Some(b"99999999999999999999"), "sectors"),
            (|r| r.sectors = Some(b"36028797018963968"), "sectors"),
            (|r| r.sector_size = Some(b"1000"), "sector-size"),
            (|r| r.sector_size = Some(b"8192"), "sector-size"),
            (
                |r| r.physical_sector_size = Some(b"768"),
                "physical-sector-size",
            ),
            (|r| r.flush_cache = Some(b"yes"), "feature-flush-cache"),
            (|r| r.info = Some(b"4294967296"), "info"),
            (
                |r| r.max_indirect_segments = Some(b" 32"),
                "feature-max-indirect-segments",
            ),
        ];
        for (mutate, key) in cases {
            let mut raw = linux_like();
            mutate(&mut raw);
            assert_eq!(DiskInfo::parse(&raw), Err(BlkError::BadKey(key)), "{key}");
        }
        // 4096-byte sectors need a whole number of them.
        let mut raw = linux_like();
        raw.sector_size = Some(b"4096");
        raw.sectors = Some(b"9");
        assert_eq!(DiskInfo::parse(&raw), Err(BlkError::BadKey("sectors")));
    }

    #[test]
    fn numbers_are_strict() {
        assert_eq!(parse_u64(b"0"), Some(0));
        assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64(b"18446744073709551616"), None);
        for bad in [&b""[..], b"+1", b"1 ", b"1\0", b"0x10"] {
            assert_eq!(parse_u64(bad), None);
        }
    }
}
