//! The arm32 device-tree parser on arbitrary blobs (the tree Xen hands a
//! guest at boot). Properties: a value or a typed `FdtError`, never a panic
//! or an endless walk; what `guest_info` returns is within its own bounds
//! (bank count, page ranges ordered and below the limit).
#![no_main]

use arm32::fdt::{total_size, Fdt};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(size) = total_size(data) {
        let _ = size;
    }
    let Ok(fdt) = Fdt::new(data) else {
        return;
    };
    let mut nodes = 0usize;
    let mut props = 0usize;
    let _ = fdt.walk(&mut |path, prop| {
        assert!(!path.is_empty());
        match prop {
            None => nodes += 1,
            Some(_) => props += 1,
        }
    });
    // Each node and property takes at least 4 bytes of the blob.
    assert!(nodes + props <= data.len() / 4);
    if let Ok(info) = fdt.guest_info() {
        assert!(info.nbanks <= info.banks.len());
        assert!(info.bootargs.len() <= data.len());
        for limit in [0, 1 << 20, 1 << 32, u64::MAX] {
            for r in info.ram_pfns_below(limit) {
                assert!(r.start <= r.end);
                assert!(r.end <= limit / 4096 + 1);
            }
        }
        let _ = info.hypervisor;
        let _ = info.gic;
    }
});
