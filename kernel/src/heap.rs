//! The kernel heap: the `#[global_allocator]` of every image.
//!
//! It is a list of regions, each managed by a `linked_list_allocator::Heap`.
//! The kernel seeds it with an initial region (or none) and a [`GrowHeap`]
//! source of fresh memory, normally [`FramesGrower`] on top of the frame
//! allocator. When no region can satisfy an allocation the heap asks the
//! source for more — a contiguous run of frames — and retries; when the
//! source is exhausted `alloc` returns null, so fallible APIs such as
//! `Vec::try_reserve` report an error instead of the image aborting.
//!
//! Memory handed to the heap is never given back: a unikernel's heap only
//! grows towards its peak, and returning frames would fragment the frame
//! allocator for the rare driver that needs contiguous runs.
//!
//! # Declaring the global allocator
//!
//! ```
//! use core::alloc::{GlobalAlloc, Layout};
//! use core::sync::atomic::{AtomicUsize, Ordering};
//! use kernel::heap::{GrowHeap, Heap, HeapRegion};
//!
//! /// Hands out at most 16 MiB from the host's allocator.
//! struct Budget(AtomicUsize);
//!
//! impl GrowHeap for Budget {
//!     fn grow(&self, min_bytes: usize, preferred_bytes: usize) -> Option<HeapRegion> {
//!         for len in [preferred_bytes, min_bytes] {
//!             let left = self.0.load(Ordering::Relaxed);
//!             if len <= left {
//!                 self.0.store(left - len, Ordering::Relaxed);
//!                 let layout = Layout::from_size_align(len, 4096).ok()?;
//!                 // SAFETY: the layout has a non-zero size.
//!                 let start = unsafe { std::alloc::System.alloc(layout) };
//!                 return (!start.is_null()).then_some(HeapRegion { start: start as usize, len });
//!             }
//!         }
//!         None
//!     }
//! }
//!
//! static SOURCE: Budget = Budget(AtomicUsize::new(16 << 20));
//! #[global_allocator]
//! static HEAP: Heap = Heap::with_grower(&SOURCE);
//!
//! // Everything this program allocates comes from `HEAP`, which starts empty
//! // and grows on demand; beyond the budget, allocation fails cleanly.
//! let mut v: Vec<u8> = Vec::new();
//! assert!(v.try_reserve(64 << 20).is_err());
//! v.try_reserve(1 << 20).unwrap();
//! let stats = HEAP.stats();
//! assert!(stats.growths >= 1 && stats.failed_growths >= 1);
//! assert!(stats.bytes_managed <= 16 << 20);
//! ```

use crate::frames::{FrameAllocator, Pfn, FRAME_SIZE};
use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{self, NonNull};

/// Most regions the heap keeps track of. Growth that lands right after an
/// existing region extends it instead of using a new slot, and growth sizes
/// are geometric, so a few dozen slots cover any RAM size.
pub const MAX_REGIONS: usize = 64;
/// Smallest amount the heap asks its source for, so that small allocations
/// do not grow the heap a page at a time.
pub const MIN_GROWTH: usize = 64 * 1024;
/// Largest amount the heap asks for beyond what an allocation needs, so that
/// growth does not grab memory that drivers will want as frames.
pub const MAX_GROWTH: usize = 16 << 20;

/// Smallest region worth keeping: `linked_list_allocator` needs room for its
/// hole header, and anything below a cache line is noise.
const MIN_REGION: usize = 64;

/// A block of memory given to the heap, by address and length in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeapRegion {
    /// Address of the first byte.
    pub start: usize,
    /// Length in bytes.
    pub len: usize,
}

/// A source of fresh memory for the heap.
///
/// It is called with the heap's lock held, so it must not allocate on the
/// heap (the frame allocator does not).
pub trait GrowHeap: Sync {
    /// Returns a new block of at least `min_bytes` bytes (ideally
    /// `preferred_bytes`, which is never smaller) that the heap may use for
    /// the rest of the program's life, or `None` when memory is exhausted.
    fn grow(&self, min_bytes: usize, preferred_bytes: usize) -> Option<HeapRegion>;
}

/// What the heap holds and has done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeapStats {
    /// Bytes currently allocated (including the allocator's rounding).
    pub bytes_in_use: usize,
    /// Bytes of memory the heap manages (all regions, in use or not).
    pub bytes_managed: usize,
    /// Times the heap obtained memory from its [`GrowHeap`] source.
    pub growths: u64,
    /// Times it asked for memory and got none (or could not track it).
    pub failed_growths: u64,
    /// Regions in use.
    pub regions: usize,
    /// Deallocations of pointers the heap does not own (caller bugs); the
    /// memory is left alone rather than corrupting a region.
    pub foreign_frees: u64,
}

/// One contiguous block of memory and its allocator.
struct Region {
    allocator: linked_list_allocator::Heap,
    start: usize,
    end: usize,
}

impl Region {
    const EMPTY: Region = Region {
        allocator: linked_list_allocator::Heap::empty(),
        start: 0,
        end: 0,
    };

    fn contains(&self, addr: usize) -> bool {
        self.start <= addr && addr < self.end
    }
}

struct HeapState {
    regions: [Region; MAX_REGIONS],
    count: usize,
    grower: Option<&'static dyn GrowHeap>,
    growths: u64,
    failed_growths: u64,
    foreign_frees: u64,
}

impl HeapState {
    const fn empty(grower: Option<&'static dyn GrowHeap>) -> HeapState {
        HeapState {
            regions: [Region::EMPTY; MAX_REGIONS],
            count: 0,
            grower,
            growths: 0,
            failed_growths: 0,
            foreign_frees: 0,
        }
    }

    fn regions(&self) -> &[Region] {
        self.regions.get(..self.count).unwrap_or(&[])
    }

    fn regions_mut(&mut self) -> &mut [Region] {
        self.regions.get_mut(..self.count).unwrap_or(&mut [])
    }

    fn bytes_managed(&self) -> usize {
        self.regions().iter().map(|r| r.end - r.start).sum()
    }

    /// Adds memory: extends the region that ends where it starts, or takes a
    /// new slot. Returns the index of the region now holding it.
    ///
    /// # Safety
    ///
    /// `[region.start, region.start + region.len)` must be valid, writable,
    /// unused by anything else, for the rest of the program.
    unsafe fn add(&mut self, region: HeapRegion) -> Option<usize> {
        let end = region.start.checked_add(region.len)?;
        if region.len < MIN_REGION || region.start == 0 {
            return None;
        }
        if let Some(index) = self.regions().iter().position(|r| r.end == region.start) {
            let existing = self.regions.get_mut(index)?;
            // SAFETY: the new memory starts exactly at the region's end and is
            // ours for the program's life (caller's contract), which is what
            // `extend` requires.
            unsafe { existing.allocator.extend(region.len) };
            existing.end = end;
            return Some(index);
        }
        let index = self.count;
        let slot = self.regions.get_mut(index)?;
        // SAFETY: the memory is valid and unused for the program's life
        // (caller's contract), and the slot's allocator is empty (slots at
        // or beyond `count` are never initialised). The length is at least
        // MIN_REGION, above the allocator's minimum of 3 words.
        unsafe { slot.allocator.init(region.start as *mut u8, region.len) };
        slot.start = region.start;
        slot.end = end;
        self.count += 1;
        Some(index)
    }

    /// Asks the source for enough memory for `layout` and adds it.
    fn grow_for(&mut self, layout: Layout) -> Option<usize> {
        let grower = self.grower?;
        // Room for the allocation at its alignment plus the allocator's hole
        // headers at both ends, in whole frames.
        let frame = FRAME_SIZE as usize;
        let needed = layout
            .size()
            .checked_add(layout.align())?
            .checked_add(4 * core::mem::size_of::<usize>())?
            .checked_next_multiple_of(frame)?;
        let preferred = (self.bytes_managed() / 2)
            .clamp(MIN_GROWTH, MAX_GROWTH)
            .max(needed);
        let Some(region) = grower.grow(needed, preferred).filter(|r| r.len >= needed) else {
            self.failed_growths += 1;
            return None;
        };
        // SAFETY: the GrowHeap contract: the block is ours for good.
        match unsafe { self.add(region) } {
            Some(index) => {
                self.growths += 1;
                Some(index)
            }
            None => {
                // No slot left: the memory is lost to the heap, but counted.
                self.failed_growths += 1;
                None
            }
        }
    }
}

/// The kernel heap; see the [module docs](self). Use it as the
/// `#[global_allocator]` static.
pub struct Heap {
    state: spin::Mutex<HeapState>,
}

impl Default for Heap {
    fn default() -> Self {
        Self::new()
    }
}

impl Heap {
    /// An empty heap without a source of memory: every allocation fails
    /// until [`Heap::add_region`] or [`Heap::set_grower`] is called.
    pub const fn new() -> Heap {
        Heap {
            state: spin::Mutex::new(HeapState::empty(None)),
        }
    }

    /// An empty heap that grows from `grower` on first use. Being `const`, it
    /// can initialise the `#[global_allocator]` static itself, so even
    /// allocations made before the kernel's main code runs succeed.
    pub const fn with_grower(grower: &'static dyn GrowHeap) -> Heap {
        Heap {
            state: spin::Mutex::new(HeapState::empty(Some(grower))),
        }
    }

    /// Gives the heap a block of memory, typically the initial region
    /// reserved at boot. Returns false (and ignores the block) if it is too
    /// small, wraps around, or no region slot is left.
    ///
    /// # Safety
    ///
    /// `[start, start + len)` must be valid, writable memory that nothing
    /// else uses, for the rest of the program.
    pub unsafe fn add_region(&self, start: *mut u8, len: usize) -> bool {
        let region = HeapRegion {
            start: start as usize,
            len,
        };
        // SAFETY: forwarded caller's contract.
        unsafe { self.state.lock().add(region) }.is_some()
    }

    /// Sets (or replaces) the source the heap grows from.
    pub fn set_grower(&self, grower: &'static dyn GrowHeap) {
        self.state.lock().grower = Some(grower);
    }

    /// What the heap holds and has done.
    pub fn stats(&self) -> HeapStats {
        let state = self.state.lock();
        HeapStats {
            bytes_in_use: state.regions().iter().map(|r| r.allocator.used()).sum(),
            bytes_managed: state.bytes_managed(),
            growths: state.growths,
            failed_growths: state.failed_growths,
            regions: state.count,
            foreign_frees: state.foreign_frees,
        }
    }
}

// SAFETY: allocation and deallocation go through `linked_list_allocator`,
// which returns blocks that fit the layout and never hands out a block twice;
// the spin lock serialises all access to the region list.
unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let mut state = self.state.lock();
        for region in state.regions_mut() {
            if let Ok(block) = region.allocator.allocate_first_fit(layout) {
                return block.as_ptr();
            }
        }
        let Some(index) = state.grow_for(layout) else {
            return ptr::null_mut();
        };
        state
            .regions
            .get_mut(index)
            .and_then(|r| r.allocator.allocate_first_fit(layout).ok())
            .map_or(ptr::null_mut(), NonNull::as_ptr)
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        let Some(block) = NonNull::new(block) else {
            return;
        };
        let mut state = self.state.lock();
        let addr = block.as_ptr() as usize;
        match state.regions_mut().iter_mut().find(|r| r.contains(addr)) {
            // SAFETY: `GlobalAlloc::dealloc`'s contract: the block came from
            // `alloc` with this layout, and it lies in this region, so it came
            // from this region's allocator.
            Some(region) => unsafe { region.allocator.deallocate(block, layout) },
            None => state.foreign_frees += 1,
        }
    }
}

/// A [`GrowHeap`] source taking contiguous runs of frames from the frame
/// allocator.
///
/// `map` turns a run of frames (first frame, count) into the virtual address
/// where the heap may use it — an identity computation under PVH, a mapping
/// step under PV — or `None`, in which case the frames go back to the
/// allocator. Lock order: heap, then frames. An allocation made while the
/// frame allocator's lock is held cannot grow the heap (it fails rather than
/// deadlocks), so do not hold that lock across code that allocates.
pub struct FramesGrower<M> {
    frames: &'static spin::Mutex<FrameAllocator<'static>>,
    map: M,
}

impl<M: Fn(Pfn, u64) -> Option<usize> + Sync> FramesGrower<M> {
    /// A source over `frames`, mapping runs with `map`.
    pub const fn new(frames: &'static spin::Mutex<FrameAllocator<'static>>, map: M) -> Self {
        FramesGrower { frames, map }
    }
}

impl<M: Fn(Pfn, u64) -> Option<usize> + Sync> GrowHeap for FramesGrower<M> {
    fn grow(&self, min_bytes: usize, preferred_bytes: usize) -> Option<HeapRegion> {
        // On one core a held lock here can only be our own caller holding it
        // across an allocation (say, `frames.lock()` inside a `log!` argument
        // list): waiting would spin forever, so the growth fails instead.
        let mut frames = self.frames.try_lock()?;
        // Try the preferred size, then settle for the minimum: near the end
        // of RAM a large run may not exist when a small one does.
        for bytes in [preferred_bytes, min_bytes] {
            let count = (bytes as u64).div_ceil(FRAME_SIZE);
            let Some(first) = frames.alloc_contiguous(count, 1) else {
                continue;
            };
            if let Some(start) = (self.map)(first, count) {
                let len = usize::try_from(count * FRAME_SIZE).ok()?;
                return Some(HeapRegion { start, len });
            }
            // Unmappable: give the frames back. They were just allocated, so
            // freeing them cannot fail.
            let _ = frames.free_contiguous(first, count);
            return None;
        }
        None
    }
}

#[cfg(test)]
mod tests;
