//! Host tests of the frame allocator, including a property test against a
//! `HashSet` model.

// Memory maps are lists of ranges, and a one-bank map is a real case.
#![allow(clippy::single_range_in_vec_init)]

use super::*;
use proptest::prelude::*;
use std::collections::HashSet;
use std::vec;
use std::vec::Vec;

/// Storage for `usable`, filled with garbage: `new` must not trust it.
fn storage_for(usable: &[Range<u64>]) -> Vec<u64> {
    vec![0xdead_beef_u64; FrameAllocator::storage_words(usable)]
}

#[test]
fn counts_usable_minus_reserved_with_overlaps_and_disorder() {
    let usable = [300..400, 100..200, 150..250, 1000..1001];
    let reserved = [120..130, 390..500, 0..101];
    let mut storage = storage_for(&usable);
    let fa = FrameAllocator::new(&mut storage, &usable, &reserved).unwrap();
    // 101..250 minus 120..130 = 149 - 10 = 139; 300..390 = 90; 1000 = 1.
    assert_eq!(fa.total(), 139 + 90 + 1);
    assert_eq!(fa.free_count(), fa.total());
    assert!(fa.is_managed(Pfn(101)));
    assert!(!fa.is_managed(Pfn(100)));
    assert!(!fa.is_managed(Pfn(125)));
    assert!(!fa.is_managed(Pfn(260)));
    assert!(fa.is_managed(Pfn(1000)));
    assert!(!fa.is_managed(Pfn(5000)));
    assert_eq!(fa.span(), 64..1024);
}

#[test]
fn alloc_hands_out_every_managed_frame_once_then_none() {
    let usable = [10..200];
    let reserved = [50..60];
    let mut storage = storage_for(&usable);
    let mut fa = FrameAllocator::new(&mut storage, &usable, &reserved).unwrap();
    let mut seen = HashSet::new();
    while let Some(pfn) = fa.alloc() {
        assert!((10..200).contains(&pfn.0) && !(50..60).contains(&pfn.0));
        assert!(seen.insert(pfn), "{pfn} handed out twice");
    }
    assert_eq!(seen.len(), 180);
    assert_eq!(fa.free_count(), 0);
    // Free all, allocate all again: same capacity.
    for pfn in &seen {
        fa.free(*pfn).unwrap();
    }
    assert_eq!(fa.free_count(), 180);
    let again = core::iter::from_fn(|| fa.alloc()).count();
    assert_eq!(again, 180);
}

#[test]
fn double_free_and_foreign_frees_are_errors_without_corruption() {
    let usable = [0..128];
    let reserved = [0..4];
    let mut storage = storage_for(&usable);
    let mut fa = FrameAllocator::new(&mut storage, &usable, &reserved).unwrap();
    let a = fa.alloc().unwrap();
    assert_eq!(a, Pfn(4));
    assert_eq!(fa.free(a), Ok(()));
    assert_eq!(fa.free(a), Err(FreeError::AlreadyFree(a)));
    assert_eq!(fa.free(Pfn(2)), Err(FreeError::NotManaged(Pfn(2))));
    assert_eq!(
        fa.free(Pfn(1 << 50)),
        Err(FreeError::NotManaged(Pfn(1 << 50)))
    );
    assert_eq!(
        fa.free(Pfn(u64::MAX)),
        Err(FreeError::NotManaged(Pfn(u64::MAX)))
    );
    assert_eq!(fa.free_count(), 124);
    // A range free with one bad frame changes nothing.
    let run = fa.alloc_contiguous(8, 8).unwrap();
    fa.free(Pfn(run.0 + 3)).unwrap();
    assert_eq!(
        fa.free_contiguous(run, 8),
        Err(FreeError::AlreadyFree(Pfn(run.0 + 3)))
    );
    assert_eq!(fa.free_count(), 124 - 7);
    assert!(!fa.is_free(run));
    assert_eq!(
        fa.free_contiguous(Pfn(u64::MAX - 1), 5),
        Err(FreeError::NotManaged(Pfn(u64::MAX - 1)))
    );
    assert!(format!("{}", FreeError::AlreadyFree(Pfn(0x10))).contains("double free of pfn 0x10"));
}

#[test]
fn contiguous_runs_respect_alignment_and_holes() {
    // Usable 0..64 with frame 9 reserved, then a hole, then 100..200.
    let usable = [0..64, 100..200];
    let reserved = [9..10];
    let mut storage = storage_for(&usable);
    let mut fa = FrameAllocator::new(&mut storage, &usable, &reserved).unwrap();
    assert_eq!(fa.alloc_contiguous(8, 1), Some(Pfn(0)));
    // 8..16 would include 9; 10..18 is free.
    assert_eq!(fa.alloc_contiguous(8, 1), Some(Pfn(10)));
    assert_eq!(fa.alloc_contiguous(16, 16), Some(Pfn(32)));
    // 40 frames cannot fit below 64 and must not span the hole 64..100.
    assert_eq!(fa.alloc_contiguous(40, 1), Some(Pfn(100)));
    assert_eq!(fa.alloc_contiguous(32, 32), Some(Pfn(160)));
    assert_eq!(fa.alloc_contiguous(64, 1), None);
    assert_eq!(fa.alloc_contiguous(0, 1), None);
    assert_eq!(
        fa.alloc_contiguous(1, 3),
        None,
        "align must be a power of two"
    );
    assert_eq!(fa.alloc_contiguous(1, 0), None);
    assert_eq!(fa.alloc_contiguous(1, 1 << 63), None);
    assert_eq!(fa.alloc_contiguous(u64::MAX, 1), None);
}

#[test]
fn init_errors() {
    let mut none: [u64; 0] = [];
    assert_eq!(
        FrameAllocator::new(&mut none, &[], &[]).err(),
        Some(InitError::NoUsableMemory)
    );
    let usable = [0..4096];
    assert_eq!(FrameAllocator::storage_words(&usable), 128);
    let mut small = [0u64; 127];
    assert_eq!(
        FrameAllocator::new(&mut small, &usable, &[]).err(),
        Some(InitError::StorageTooSmall {
            needed_words: 128,
            provided_words: 127
        })
    );
    let mut storage = [0u64; 128];
    assert_eq!(
        FrameAllocator::new(&mut storage, &usable, &[0..5000]).err(),
        Some(InitError::NoUsableMemory),
        "everything reserved"
    );
    // Empty and inverted ranges, and ranges above MAX_PFN, are ignored.
    #[allow(clippy::reversed_empty_ranges)]
    let odd = [5..5, 9..3, MAX_PFN..MAX_PFN + 10];
    assert_eq!(FrameAllocator::storage_words(&odd), 0);
    assert_eq!(
        FrameAllocator::new(&mut storage, &odd, &[]).err(),
        Some(InitError::NoUsableMemory)
    );
}

#[test]
fn four_gib_costs_256_kib_of_storage() {
    // 4 GiB of RAM = 2^20 frames.
    let usable = [0..(1 << 20)];
    assert_eq!(FrameAllocator::storage_words(&usable) * 8, 256 * 1024);
    assert_eq!(FrameAllocator::storage_frames(&usable), 64);
    // And the top of the physical address space works.
    let top = [MAX_PFN - 128..MAX_PFN + 5];
    let mut storage = vec![0; FrameAllocator::storage_words(&top)];
    let mut fa = FrameAllocator::new(&mut storage, &top, &[]).unwrap();
    assert_eq!(fa.total(), 128);
    assert_eq!(fa.alloc_contiguous(128, 128), Some(Pfn(MAX_PFN - 128)));
    assert_eq!(Pfn(MAX_PFN - 128).addr(), (MAX_PFN - 128) << 12);
}

#[test]
fn boot_flow_places_storage_in_usable_memory_and_reserves_it() {
    // A PV-like map: RAM 0..16384 (64 MiB); kernel image and boot tables
    // at 256..1024; start info page at 1024; plus a second bank.
    let usable = [0..16384, 1 << 20..(1 << 20) + 16384];
    let boot_reserved = [0..1, 256..1025];
    let storage_frames = FrameAllocator::storage_frames(&usable);
    // Span 0..2^20+16384 at 2 bits per frame: 266240 bytes.
    assert_eq!(storage_frames, 65);
    let placed = FrameAllocator::place_storage(&usable, &boot_reserved).unwrap();
    assert_eq!(placed, 1..66, "lowest run that is usable and not reserved");
    // The kernel would now map `placed`; the host test uses a Vec.
    let mut storage = vec![0; FrameAllocator::storage_words(&usable)];
    let reserved = [
        boot_reserved[0].clone(),
        boot_reserved[1].clone(),
        placed.clone(),
    ];
    let mut fa = FrameAllocator::new(&mut storage, &usable, &reserved).unwrap();
    assert_eq!(fa.total(), 2 * 16384 - 1 - 769 - 65);
    assert!(core::iter::from_fn(|| fa.alloc()).all(|pfn| !placed.contains(&pfn.0)));

    // Nowhere to put it.
    assert_eq!(FrameAllocator::place_storage(&[0..10], &[]), Some(0..1));
    assert_eq!(FrameAllocator::place_storage(&[0..1], &[0..1]), None);
    // Runs may straddle overlapping or adjacent usable ranges.
    let usable = [0..2000, 2000..4000, 3000..300_000];
    let frames = FrameAllocator::storage_frames(&usable);
    // 300032 frames at 2 bits: 75008 bytes.
    assert_eq!(frames, 19);
    assert_eq!(
        FrameAllocator::place_storage(&usable, &[0..1999]),
        Some(1999..2018)
    );
    assert_eq!(
        FrameAllocator::place_storage(&usable, &[0..1999, 2010..2011]),
        Some(2011..2030)
    );
}

/// A random memory layout and operation sequence for the model test.
#[derive(Debug, Clone)]
enum Op {
    Alloc,
    AllocContiguous {
        count: u64,
        align_log2: u32,
    },
    /// Free the n-th currently allocated frame (modulo their number).
    FreeAllocated(usize),
    /// Free an arbitrary frame number (usually an error).
    FreeArbitrary(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Alloc),
        2 => (1u64..24, 0u32..6).prop_map(|(count, align_log2)| Op::AllocContiguous { count, align_log2 }),
        4 => any::<usize>().prop_map(Op::FreeAllocated),
        1 => (0u64..1200).prop_map(Op::FreeArbitrary),
    ]
}

fn ranges() -> impl Strategy<Value = Vec<Range<u64>>> {
    prop::collection::vec(
        (0u64..1000, 0u64..200).prop_map(|(s, len)| s..s + len),
        0..6,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn matches_a_set_model(usable in ranges(), reserved in ranges(), ops in prop::collection::vec(op(), 0..300)) {
        let managed: HashSet<u64> = (0..1200)
            .filter(|p| usable.iter().any(|r| r.contains(p)) && !reserved.iter().any(|r| r.contains(p)))
            .collect();
        let mut storage = vec![u64::MAX; FrameAllocator::storage_words(&usable)];
        let fa = FrameAllocator::new(&mut storage, &usable, &reserved);
        let mut fa = match fa {
            Ok(fa) => fa,
            Err(e) => {
                prop_assert_eq!(e, InitError::NoUsableMemory);
                prop_assert!(managed.is_empty());
                return Ok(());
            }
        };
        prop_assert_eq!(fa.total(), managed.len() as u64);
        let mut allocated: Vec<u64> = Vec::new();
        let mut allocated_set: HashSet<u64> = HashSet::new();
        for op in ops {
            match op {
                Op::Alloc => match fa.alloc() {
                    Some(Pfn(p)) => {
                        prop_assert!(managed.contains(&p));
                        prop_assert!(allocated_set.insert(p));
                        allocated.push(p);
                    }
                    None => prop_assert_eq!(allocated_set.len(), managed.len()),
                },
                Op::AllocContiguous { count, align_log2 } => {
                    let align = 1u64 << align_log2;
                    let fits = |s: u64| (s..s + count).all(|p| managed.contains(&p) && !allocated_set.contains(&p));
                    match fa.alloc_contiguous(count, align) {
                        Some(Pfn(first)) => {
                            prop_assert_eq!(first % align, 0);
                            prop_assert!(fits(first));
                            // First fit: no lower aligned run was free.
                            prop_assert!(!(0..first).step_by(align as usize).any(fits));
                            for p in first..first + count {
                                allocated_set.insert(p);
                                allocated.push(p);
                            }
                        }
                        None => prop_assert!(!(0..1200).step_by(align as usize).any(fits)),
                    }
                }
                Op::FreeAllocated(n) => {
                    if !allocated.is_empty() {
                        let p = allocated.swap_remove(n % allocated.len());
                        allocated_set.remove(&p);
                        prop_assert_eq!(fa.free(Pfn(p)), Ok(()));
                    }
                }
                Op::FreeArbitrary(p) => {
                    let expected = if !managed.contains(&p) {
                        Err(FreeError::NotManaged(Pfn(p)))
                    } else if !allocated_set.contains(&p) {
                        Err(FreeError::AlreadyFree(Pfn(p)))
                    } else {
                        allocated_set.remove(&p);
                        allocated.retain(|&q| q != p);
                        Ok(())
                    };
                    prop_assert_eq!(fa.free(Pfn(p)), expected);
                }
            }
            prop_assert_eq!(fa.free_count(), (managed.len() - allocated_set.len()) as u64);
        }
        for p in 0..1200 {
            prop_assert_eq!(fa.is_free(Pfn(p)), managed.contains(&p) && !allocated_set.contains(&p));
        }
    }
}
