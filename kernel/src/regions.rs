//! A fixed-capacity list of frame ranges, for the memory map at boot (no
//! heap exists yet when it is built).

use core::ops::Range;

/// Most ranges a memory map may contribute; more are dropped and counted.
pub const MAX_REGIONS: usize = 64;

/// Up to [`MAX_REGIONS`] disjoint, non-empty pfn ranges.
#[derive(Clone, Debug)]
pub struct RegionList {
    ranges: [Range<u64>; MAX_REGIONS],
    len: usize,
    dropped: usize,
}

impl Default for RegionList {
    fn default() -> Self {
        Self::new()
    }
}

impl RegionList {
    /// An empty list.
    pub const fn new() -> Self {
        const EMPTY: Range<u64> = 0..0;
        Self {
            ranges: [EMPTY; MAX_REGIONS],
            len: 0,
            dropped: 0,
        }
    }

    /// Adds `r` (ignored if empty; counted in [`Self::dropped`] if full).
    /// Overlap with ranges already present is removed first, so the list
    /// stays disjoint whatever order a memory map uses.
    pub fn push(&mut self, r: Range<u64>) {
        if r.is_empty() {
            return;
        }
        self.remove(r.clone());
        if self.len == MAX_REGIONS {
            self.dropped += 1;
            return;
        }
        self.ranges[self.len] = r;
        self.len += 1;
    }

    /// Removes `hole` from every range, splitting where needed.
    pub fn remove(&mut self, hole: Range<u64>) {
        let mut i = 0;
        while i < self.len {
            let r = self.ranges[i].clone();
            if hole.end <= r.start || r.end <= hole.start || hole.is_empty() {
                i += 1;
                continue;
            }
            let left = r.start..hole.start.max(r.start);
            let right = hole.end.min(r.end)..r.end;
            // Replace this range by its remaining parts.
            self.ranges[i] = self.ranges[self.len - 1].clone();
            self.len -= 1;
            for part in [left, right] {
                if !part.is_empty() {
                    if self.len == MAX_REGIONS {
                        self.dropped += 1;
                    } else {
                        self.ranges[self.len] = part;
                        self.len += 1;
                    }
                }
            }
            // Parts appended at the end are already outside the hole.
        }
    }

    /// The ranges, in no particular order.
    pub fn as_slice(&self) -> &[Range<u64>] {
        &self.ranges[..self.len]
    }

    /// Total frames.
    pub fn total(&self) -> u64 {
        self.as_slice().iter().map(|r| r.end - r.start).sum()
    }

    /// Ranges that did not fit.
    pub fn dropped(&self) -> usize {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_splits_and_push_dedups() {
        let mut l = RegionList::new();
        l.push(0..100);
        l.push(50..150);
        assert_eq!(l.total(), 150);
        l.remove(10..20);
        assert_eq!(l.total(), 140);
        l.remove(0..1000);
        assert_eq!(l.total(), 0);
        assert!(l.as_slice().is_empty());
    }

    #[test]
    fn capacity_overflow_is_counted() {
        let mut l = RegionList::new();
        for i in 0..(MAX_REGIONS as u64 + 3) {
            l.push(i * 10..i * 10 + 5);
        }
        assert_eq!(l.as_slice().len(), MAX_REGIONS);
        assert_eq!(l.dropped(), 3);
    }
}
