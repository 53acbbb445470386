//! The physical frame allocator: which 4 KiB page frames are free.
//!
//! It is built at boot, before the heap exists, from the memory map (Xen's
//! start info, the e820 map or the PVH `hvm_start_info` memmap) as a list of
//! usable pseudo-physical frame ranges, minus reserved ranges (kernel image,
//! boot page tables, start info, console and xenstore pages, ...). The ranges
//! may be unsorted and may overlap; reserved wins over usable.
//!
//! # Storage
//!
//! The allocator must not allocate, so its bookkeeping lives in a `u64` slice
//! the caller hands in: two bitmaps of one bit per frame over the span
//! `[lowest usable pfn, highest usable pfn)` (rounded to 64 frames). One bitmap
//! says which frames are free, the other which frames the allocator manages at
//! all; the second is what lets [`FrameAllocator::free`] reject a double free
//! or the free of a reserved frame instead of corrupting the map.
//!
//! That costs 2 bits per 4 KiB frame, i.e. 64 KiB of storage per GiB of
//! span: 256 KiB (64 frames) for 4 GiB, 2 KiB for a 32 MiB service VM. The
//! span is bounded only by [`MAX_PFN`] (2^40 frames, the 52-bit physical
//! address limit of amd64), so any RAM size is supported given the storage.
//! At boot the kernel asks [`FrameAllocator::storage_words`] how much it
//! needs, [`FrameAllocator::place_storage`] where to put it (frames taken from
//! the usable ranges themselves), maps those frames, and passes them in
//! `reserved` so that the allocator never hands them out.

use core::fmt;
use core::ops::Range;

/// Size of a page frame in bytes.
pub const FRAME_SIZE: u64 = 1 << FRAME_SHIFT;
/// log2 of [`FRAME_SIZE`].
pub const FRAME_SHIFT: u32 = 12;
/// One past the highest frame number the allocator accepts (52-bit physical
/// addresses); usable ranges beyond it are clipped.
pub const MAX_PFN: u64 = 1 << 40;

/// Frames per bitmap word.
const BITS: u64 = u64::BITS as u64;

/// A (pseudo-)physical page frame number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pfn(pub u64);

impl Pfn {
    /// The byte address of the first byte of the frame.
    pub const fn addr(self) -> u64 {
        self.0 << FRAME_SHIFT
    }

    /// The frame containing byte address `addr`.
    pub const fn containing(addr: u64) -> Pfn {
        Pfn(addr >> FRAME_SHIFT)
    }
}

impl fmt::Display for Pfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pfn {:#x}", self.0)
    }
}

/// Why a frame allocator could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitError {
    /// No usable range holds a frame below [`MAX_PFN`].
    NoUsableMemory,
    /// The storage slice is shorter than [`FrameAllocator::storage_words`].
    StorageTooSmall {
        /// Words the usable ranges need.
        needed_words: usize,
        /// Words the caller provided.
        provided_words: usize,
    },
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InitError::NoUsableMemory => write!(f, "the memory map has no usable frame"),
            InitError::StorageTooSmall {
                needed_words,
                provided_words,
            } => write!(
                f,
                "frame allocator storage too small: need {needed_words} words, got {provided_words}"
            ),
        }
    }
}

/// Why a frame could not be freed. Nothing is changed when this is returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreeError {
    /// The frame is not usable RAM owned by the allocator (a hole, a reserved
    /// frame, or out of range): freeing it would hand out memory we do not own.
    NotManaged(Pfn),
    /// The frame is already free: a double free.
    AlreadyFree(Pfn),
}

impl fmt::Display for FreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FreeError::NotManaged(pfn) => write!(f, "{pfn} is not managed by the frame allocator"),
            FreeError::AlreadyFree(pfn) => write!(f, "double free of {pfn}"),
        }
    }
}

/// A bitmap frame allocator over caller-provided storage. See the
/// [module docs](self).
pub struct FrameAllocator<'s> {
    /// Bit set: the frame is free.
    free_bits: &'s mut [u64],
    /// Bit set: the frame is usable RAM and not reserved.
    managed_bits: &'s mut [u64],
    /// The frame of bit 0 of word 0; a multiple of 64.
    base: u64,
    free: u64,
    total: u64,
    /// Word where the next single-frame search starts (next fit), so that
    /// repeated `alloc` calls do not rescan the allocated prefix.
    hint: usize,
}

/// Clips a range to `[0, MAX_PFN)`, or `None` if nothing is left.
fn clip(range: &Range<u64>) -> Option<Range<u64>> {
    let end = range.end.min(MAX_PFN);
    (range.start < end).then_some(range.start..end)
}

/// The bitmap span covering all usable ranges, rounded out to whole words.
fn span_of(usable: &[Range<u64>]) -> Option<Range<u64>> {
    let mut span: Option<Range<u64>> = None;
    for range in usable.iter().filter_map(clip) {
        span = Some(match span {
            None => range,
            Some(s) => s.start.min(range.start)..s.end.max(range.end),
        });
    }
    // `end <= MAX_PFN`, a multiple of 64, so rounding up cannot overflow.
    span.map(|s| (s.start / BITS * BITS)..s.end.div_ceil(BITS) * BITS)
}

/// Rounds `value` up to a multiple of `align` (a power of two), if it fits.
fn align_up(value: u64, align: u64) -> Option<u64> {
    Some(value.checked_add(align - 1)? & !(align - 1))
}

impl<'s> FrameAllocator<'s> {
    /// How many `u64` words of storage [`FrameAllocator::new`] needs for these
    /// usable ranges (0 if none is usable).
    pub fn storage_words(usable: &[Range<u64>]) -> usize {
        span_of(usable).map_or(0, |s| {
            // At most 2^40 / 64 * 2 words: fits in usize on 64-bit targets;
            // on 32-bit targets a span that large could not be mapped anyway.
            usize::try_from((s.end - s.start) / BITS * 2).unwrap_or(usize::MAX)
        })
    }

    /// How many frames the storage occupies.
    pub fn storage_frames(usable: &[Range<u64>]) -> u64 {
        let bytes = Self::storage_words(usable) as u64 * 8;
        bytes.div_ceil(FRAME_SIZE)
    }

    /// Chooses where to keep the storage: the lowest run of
    /// [`FrameAllocator::storage_frames`] frames that is usable and not
    /// reserved. The caller maps it, builds the slice over it and adds the
    /// returned range to `reserved` when calling [`FrameAllocator::new`].
    ///
    /// Runs in O(n³) in the number of ranges, without allocating; memory maps
    /// have at most a few hundred entries.
    pub fn place_storage(usable: &[Range<u64>], reserved: &[Range<u64>]) -> Option<Range<u64>> {
        let frames = Self::storage_frames(usable);
        if frames == 0 {
            return None;
        }
        // The lowest fitting run starts at a usable start or a reserved end.
        let candidates = usable
            .iter()
            .map(|r| r.start)
            .chain(reserved.iter().map(|r| r.end));
        candidates
            .filter_map(|start| {
                let end = start.checked_add(frames)?;
                let run = start..end;
                let fits = covered(usable, &run)
                    && !reserved
                        .iter()
                        .any(|r| r.start < run.end && run.start < r.end);
                fits.then_some(run)
            })
            .min_by_key(|run| run.start)
    }

    /// Builds the allocator. `storage` must hold at least
    /// [`FrameAllocator::storage_words`] words (its previous content is
    /// ignored); it is borrowed for the allocator's lifetime. Every frame in
    /// a `usable` range and in no `reserved` range starts free.
    pub fn new(
        storage: &'s mut [u64],
        usable: &[Range<u64>],
        reserved: &[Range<u64>],
    ) -> Result<Self, InitError> {
        let span = span_of(usable).ok_or(InitError::NoUsableMemory)?;
        let needed_words = Self::storage_words(usable);
        let provided_words = storage.len();
        let storage = storage
            .get_mut(..needed_words)
            .ok_or(InitError::StorageTooSmall {
                needed_words,
                provided_words,
            })?;
        let (free_bits, managed_bits) = storage.split_at_mut(needed_words / 2);
        free_bits.fill(0);
        managed_bits.fill(0);
        let mut this = FrameAllocator {
            free_bits,
            managed_bits,
            base: span.start,
            free: 0,
            total: 0,
            hint: 0,
        };
        for range in usable.iter().filter_map(clip) {
            this.update_range(range.start, range.end, |free, managed, mask| {
                *free |= mask;
                *managed |= mask;
            });
        }
        for range in reserved {
            this.update_range(range.start, range.end, |free, managed, mask| {
                *free &= !mask;
                *managed &= !mask;
            });
        }
        this.total = this
            .managed_bits
            .iter()
            .map(|w| u64::from(w.count_ones()))
            .sum();
        this.free = this.total;
        if this.total == 0 {
            return Err(InitError::NoUsableMemory);
        }
        Ok(this)
    }

    /// Number of frames currently free.
    pub fn free_count(&self) -> u64 {
        self.free
    }

    /// Number of frames managed (usable and not reserved), free or not.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The range of frame numbers the bitmaps cover.
    pub fn span(&self) -> Range<u64> {
        self.base..self.end()
    }

    /// Whether `pfn` is managed and currently free.
    pub fn is_free(&self, pfn: Pfn) -> bool {
        self.bit(pfn.0)
            .is_some_and(|(w, mask)| self.free_bits.get(w).is_some_and(|word| word & mask != 0))
    }

    /// Whether `pfn` is managed (usable RAM, not reserved).
    pub fn is_managed(&self, pfn: Pfn) -> bool {
        self.bit(pfn.0).is_some_and(|(w, mask)| {
            self.managed_bits
                .get(w)
                .is_some_and(|word| word & mask != 0)
        })
    }

    /// Allocates one frame, or `None` if none is free.
    pub fn alloc(&mut self) -> Option<Pfn> {
        if self.free == 0 {
            return None;
        }
        let words = self.free_bits.len();
        let start = self.hint.min(words);
        // Next fit: from the hint to the end, then wrap around.
        let found = (start..words)
            .chain(0..start)
            .find(|&w| self.free_bits.get(w).is_some_and(|&word| word != 0))?;
        let word = self.free_bits.get_mut(found)?;
        let bit = word.trailing_zeros();
        *word &= !(1u64 << bit);
        self.free -= 1;
        self.hint = found;
        Some(Pfn(self.base + found as u64 * BITS + u64::from(bit)))
    }

    /// Allocates `count` physically contiguous frames whose first frame
    /// number is a multiple of `align` (a power of two, in frames). Returns
    /// the first frame, or `None` if `count` is 0, `align` is not a power of
    /// two, or no such run is free.
    pub fn alloc_contiguous(&mut self, count: u64, align: u64) -> Option<Pfn> {
        if count == 0 || !align.is_power_of_two() || count > self.free {
            return None;
        }
        let end = self.end();
        let mut candidate = align_up(self.first_free_from(self.base)?, align)?;
        loop {
            let run_end = candidate.checked_add(count)?;
            if run_end > end {
                return None;
            }
            match self.first_not_free_in(candidate, run_end) {
                None => break,
                // Restart after the obstacle, at the next free frame.
                Some(used) => {
                    let next_free = self.first_free_from(used + 1)?;
                    candidate = align_up(next_free, align)?;
                }
            }
        }
        self.update_range(candidate, candidate + count, |free, _, mask| {
            *free &= !mask;
        });
        self.free -= count;
        Some(Pfn(candidate))
    }

    /// Returns one frame to the allocator.
    pub fn free(&mut self, pfn: Pfn) -> Result<(), FreeError> {
        self.free_contiguous(pfn, 1)
    }

    /// Returns `count` contiguous frames starting at `first`. Either all are
    /// freed or, on error, none is.
    pub fn free_contiguous(&mut self, first: Pfn, count: u64) -> Result<(), FreeError> {
        let end = first
            .0
            .checked_add(count)
            .ok_or(FreeError::NotManaged(first))?;
        // Check everything before changing anything.
        for pfn in first.0..end {
            let pfn = Pfn(pfn);
            if !self.is_managed(pfn) {
                return Err(FreeError::NotManaged(pfn));
            }
            if self.is_free(pfn) {
                return Err(FreeError::AlreadyFree(pfn));
            }
        }
        self.update_range(first.0, end, |free, _, mask| *free |= mask);
        self.free += count;
        Ok(())
    }

    fn end(&self) -> u64 {
        self.base + self.free_bits.len() as u64 * BITS
    }

    /// Word index and bit mask of `pfn`, if inside the span.
    fn bit(&self, pfn: u64) -> Option<(usize, u64)> {
        let offset = pfn.checked_sub(self.base)?;
        let word = usize::try_from(offset / BITS).ok()?;
        (word < self.free_bits.len()).then_some((word, 1u64 << (offset % BITS)))
    }

    /// Applies `f(free_word, managed_word, mask)` to the bits of `[start, end)`
    /// clipped to the span, a word at a time.
    fn update_range(&mut self, start: u64, end: u64, mut f: impl FnMut(&mut u64, &mut u64, u64)) {
        let start = start.max(self.base);
        let end = end.min(self.end());
        let mut pfn = start;
        while pfn < end {
            let offset = pfn - self.base;
            let word = (offset / BITS) as usize;
            let first_bit = offset % BITS;
            let bits = (BITS - first_bit).min(end - pfn);
            let mask = if bits == BITS {
                u64::MAX
            } else {
                ((1u64 << bits) - 1) << first_bit
            };
            if let (Some(free), Some(managed)) = (
                self.free_bits.get_mut(word),
                self.managed_bits.get_mut(word),
            ) {
                f(free, managed, mask);
            }
            pfn += bits;
        }
    }

    /// The first free frame at or after `from`.
    fn first_free_from(&self, from: u64) -> Option<u64> {
        let (mut w, mask) = self.bit(from.max(self.base))?;
        // Mask off the bits below `from` in its word.
        let mut word = self.free_bits.get(w)? & !(mask - 1);
        loop {
            if word != 0 {
                return Some(self.base + w as u64 * BITS + u64::from(word.trailing_zeros()));
            }
            w += 1;
            word = *self.free_bits.get(w)?;
        }
    }

    /// The first frame in `[start, end)` that is not free, if any.
    fn first_not_free_in(&self, start: u64, end: u64) -> Option<u64> {
        let mut pfn = start;
        while pfn < end {
            let (w, mask) = self.bit(pfn)?;
            let word = self.free_bits.get(w)?;
            // Bits of this word from `pfn` on that are not free.
            let used = !word & !(mask - 1);
            if used != 0 {
                let hit = self.base + w as u64 * BITS + u64::from(used.trailing_zeros());
                return (hit < end).then_some(hit);
            }
            pfn = self.base + (w as u64 + 1) * BITS;
        }
        None
    }
}

/// Whether `run` lies entirely within the union of `ranges`.
fn covered(ranges: &[Range<u64>], run: &Range<u64>) -> bool {
    let mut pos = run.start;
    while pos < run.end {
        // Advance through the furthest-reaching range containing `pos`.
        let reach = ranges
            .iter()
            .filter(|r| r.start <= pos && pos < r.end)
            .map(|r| r.end)
            .max();
        match reach {
            Some(end) => pos = end,
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests;
