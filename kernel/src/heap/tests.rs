//! Host tests of the heap: regions are leaked, page-aligned host allocations,
//! and the heap is driven through its `GlobalAlloc` methods directly.

use super::*;
use crate::frames::FrameAllocator;
use std::boxed::Box;
use std::vec;
use std::vec::Vec;

/// A leaked, page-aligned block of host memory.
fn arena(len: usize) -> usize {
    let layout = Layout::from_size_align(len, FRAME_SIZE as usize).unwrap();
    // SAFETY: non-zero size; the block is intentionally leaked so that the
    // heap may use it for the rest of the test process.
    let start = unsafe { std::alloc::alloc_zeroed(layout) };
    assert!(!start.is_null());
    start as usize
}

/// A frame allocator over an arena: pfn `base_pfn + i` is the arena's i-th page.
fn frames_over(
    arena_start: usize,
    pages: u64,
) -> FramesGrower<impl Fn(Pfn, u64) -> Option<usize> + Sync> {
    frames_and_grower(arena_start, pages).1
}

/// The frame allocator as the kernel keeps it.
type SharedFrames = &'static spin::Mutex<FrameAllocator<'static>>;

/// Like [`frames_over`], also returning the frame allocator's lock.
fn frames_and_grower(
    arena_start: usize,
    pages: u64,
) -> (
    SharedFrames,
    FramesGrower<impl Fn(Pfn, u64) -> Option<usize> + Sync>,
) {
    let base_pfn = 0x1000;
    let bank = base_pfn..base_pfn + pages;
    let usable = core::slice::from_ref(&bank);
    let storage: &'static mut [u64] = vec![0; FrameAllocator::storage_words(usable)].leak();
    let fa = FrameAllocator::new(storage, usable, &[]).unwrap();
    let frames: SharedFrames = Box::leak(Box::new(spin::Mutex::new(fa)));
    let grower = FramesGrower::new(frames, move |first: Pfn, _count| {
        Some(arena_start + ((first.0 - base_pfn) * FRAME_SIZE) as usize)
    });
    (frames, grower)
}

fn leak<T>(value: T) -> &'static T {
    Box::leak(Box::new(value))
}

/// Allocates `layout` blocks until the heap says no; returns them.
fn fill(heap: &Heap, layout: Layout) -> Vec<*mut u8> {
    let mut blocks = Vec::new();
    loop {
        // SAFETY: non-zero-size layout.
        let block = unsafe { heap.alloc(layout) };
        if block.is_null() {
            return blocks;
        }
        assert_eq!(block as usize % layout.align(), 0);
        // The block must be writable memory of the right size.
        // SAFETY: `alloc` returned a block of `layout.size()` bytes.
        unsafe { block.write_bytes(0xa5, layout.size()) };
        blocks.push(block);
    }
}

fn free_all(heap: &Heap, blocks: Vec<*mut u8>, layout: Layout) {
    for block in blocks {
        // SAFETY: each block came from `heap.alloc(layout)`.
        unsafe { heap.dealloc(block, layout) };
    }
}

#[test]
fn empty_heap_without_source_returns_null() {
    let heap = Heap::new();
    // SAFETY: non-zero-size layout.
    let block = unsafe { heap.alloc(Layout::new::<u64>()) };
    assert!(block.is_null());
    assert_eq!(heap.stats(), HeapStats::default());
}

#[test]
fn fill_free_refill_gives_the_same_capacity() {
    let heap = Heap::new();
    let len = 256 * 1024;
    // SAFETY: a leaked arena, ours for good.
    assert!(unsafe { heap.add_region(arena(len) as *mut u8, len) });
    let layout = Layout::from_size_align(48, 16).unwrap();
    let first = fill(&heap, layout);
    let count = first.len();
    // 48-byte blocks in 256 KiB: most of the region is usable.
    assert!(count > len / 64, "only {count} blocks");
    let stats = heap.stats();
    assert_eq!(stats.bytes_managed, len);
    assert!(stats.bytes_in_use >= count * 48);
    free_all(&heap, first, layout);
    assert_eq!(heap.stats().bytes_in_use, 0);
    let second = fill(&heap, layout);
    assert_eq!(second.len(), count, "fragmentation after a full free");
    free_all(&heap, second, layout);
    assert_eq!(heap.stats().growths, 0);
}

#[test]
fn grows_from_frames_when_full() {
    let heap = Heap::new();
    let initial = 16 * 1024;
    // SAFETY: a leaked arena, ours for good.
    assert!(unsafe { heap.add_region(arena(initial) as *mut u8, initial) });
    let pages = 1024; // 4 MiB
    heap.set_grower(leak(frames_over(arena(pages * 4096), pages as u64)));
    let big = Layout::from_size_align(300 * 1024, 8).unwrap();
    // SAFETY: non-zero-size layout.
    let block = unsafe { heap.alloc(big) };
    assert!(!block.is_null());
    // SAFETY: the block has `big.size()` bytes.
    unsafe { block.write_bytes(1, big.size()) };
    let stats = heap.stats();
    assert_eq!(stats.growths, 1);
    assert_eq!(stats.regions, 2);
    assert!(stats.bytes_managed >= initial + big.size());
    // SAFETY: allocated above with `big`.
    unsafe { heap.dealloc(block, big) };
    assert_eq!(heap.stats().bytes_in_use, 0);
    // The grown memory is reused, not grown again.
    // SAFETY: non-zero-size layout.
    let again = unsafe { heap.alloc(big) };
    assert!(!again.is_null());
    assert_eq!(heap.stats().growths, 1);
}

#[test]
fn exhaustion_returns_null_and_everything_is_reusable() {
    let pages = 512u64; // 2 MiB of frames
    let heap = Heap::with_grower(leak(frames_over(arena(pages as usize * 4096), pages)));
    let layout = Layout::from_size_align(4000, 64).unwrap();
    let blocks = fill(&heap, layout);
    let stats = heap.stats();
    assert!(stats.growths >= 2, "{stats:?}");
    assert!(stats.failed_growths >= 1);
    assert!(stats.bytes_managed <= pages as usize * 4096);
    // Nearly all RAM ends up in the heap: the fallback to the minimum size
    // lets it take the last small runs.
    assert!(
        stats.bytes_managed >= (pages as usize - 16) * 4096,
        "{stats:?}"
    );
    let count = blocks.len();
    assert!(count >= 400, "{count} blocks of ~4 KiB in 2 MiB");
    free_all(&heap, blocks, layout);
    let growths = heap.stats().growths;
    let again = fill(&heap, layout);
    assert_eq!(again.len(), count);
    assert_eq!(heap.stats().growths, growths, "refill needed no new memory");
    free_all(&heap, again, layout);
}

#[test]
fn adjacent_growth_extends_the_region() {
    // The frames sit right after the initial region, as at boot when the
    // heap's first region is the start of free RAM.
    let initial = 64 * 1024;
    let pages = 256u64;
    let base = arena(initial + pages as usize * 4096);
    let heap = Heap::new();
    // SAFETY: the first part of a leaked arena, ours for good.
    assert!(unsafe { heap.add_region(base as *mut u8, initial) });
    heap.set_grower(leak(frames_over(base + initial, pages)));
    let layout = Layout::from_size_align(100 * 1024, 8).unwrap();
    // SAFETY: non-zero-size layout.
    let block = unsafe { heap.alloc(layout) };
    assert!(!block.is_null());
    let stats = heap.stats();
    assert_eq!((stats.regions, stats.growths), (1, 1));
    // After freeing, the whole span is one hole: a block larger than either
    // part alone fits.
    // SAFETY: allocated above with `layout`.
    unsafe { heap.dealloc(block, layout) };
    let whole = Layout::from_size_align(stats.bytes_managed - 256, 8).unwrap();
    // SAFETY: non-zero-size layout.
    assert!(!unsafe { heap.alloc(whole) }.is_null());
}

/// A source handing out fixed-size blocks with gaps, so no growth is adjacent.
struct Scattered {
    next: spin::Mutex<usize>,
    end: usize,
    block: usize,
}

impl GrowHeap for Scattered {
    fn grow(&self, min_bytes: usize, _preferred: usize) -> Option<HeapRegion> {
        let mut next = self.next.lock();
        let len = self.block.max(min_bytes);
        let start = *next;
        if start + len > self.end {
            return None;
        }
        *next = start + len + 4096; // leave a gap
        Some(HeapRegion { start, len })
    }
}

#[test]
fn region_table_full_fails_cleanly() {
    let block = 16 * 1024;
    let total = (MAX_REGIONS + 8) * (block + 4096);
    let start = arena(total);
    let heap = Heap::with_grower(leak(Scattered {
        next: spin::Mutex::new(start),
        end: start + total,
        block,
    }));
    let layout = Layout::from_size_align(block * 3 / 5, 8).unwrap();
    let blocks = fill(&heap, layout);
    let stats = heap.stats();
    assert_eq!(stats.regions, MAX_REGIONS);
    assert_eq!(blocks.len(), MAX_REGIONS, "one block per region");
    assert!(stats.failed_growths >= 1);
    free_all(&heap, blocks, layout);
}

#[test]
fn foreign_and_null_frees_are_counted_not_applied() {
    let heap = Heap::new();
    let len = 8192;
    // SAFETY: a leaked arena, ours for good.
    assert!(unsafe { heap.add_region(arena(len) as *mut u8, len) });
    let mut outside = 0u64;
    let layout = Layout::new::<u64>();
    // SAFETY: deliberately wrong pointer; the heap must ignore it.
    unsafe { heap.dealloc(&mut outside as *mut u64 as *mut u8, layout) };
    // SAFETY: null is ignored.
    unsafe { heap.dealloc(ptr::null_mut(), layout) };
    assert_eq!(heap.stats().foreign_frees, 1);
    assert_eq!(heap.stats().bytes_in_use, 0);
}

#[test]
fn tiny_or_wrapping_regions_are_refused() {
    let heap = Heap::new();
    // SAFETY: refused before any access.
    assert!(!unsafe { heap.add_region(arena(4096) as *mut u8, 16) });
    // SAFETY: refused before any access.
    assert!(!unsafe { heap.add_region(usize::MAX as *mut u8, 4096) });
    assert_eq!(heap.stats().regions, 0);
}

#[test]
fn large_alignment_is_honoured() {
    let heap = Heap::with_grower(leak(frames_over(arena(1 << 20), 256)));
    for align in [8usize, 64, 4096, 65536] {
        let layout = Layout::from_size_align(100, align).unwrap();
        // SAFETY: non-zero-size layout.
        let block = unsafe { heap.alloc(layout) };
        assert!(!block.is_null(), "align {align}");
        assert_eq!(block as usize % align, 0);
    }
}

#[test]
fn allocating_while_holding_the_frame_lock_fails_instead_of_deadlocking() {
    let pages = 64;
    let (frames, grower) = frames_and_grower(arena(pages * 4096), pages as u64);
    let heap = Heap::with_grower(leak(grower));
    let layout = Layout::from_size_align(1000, 8).unwrap();
    {
        let held = frames.lock();
        // SAFETY: non-zero-size layout.
        let block = unsafe { heap.alloc(layout) };
        assert!(block.is_null());
        assert_eq!(held.free_count(), 64, "no frame taken");
    }
    assert_eq!(heap.stats().failed_growths, 1);
    // Once the lock is released, growth works.
    // SAFETY: non-zero-size layout.
    assert!(!unsafe { heap.alloc(layout) }.is_null());
    assert_eq!(frames.lock().free_count(), 64 - (MIN_GROWTH / 4096) as u64);
}
