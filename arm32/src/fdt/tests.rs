use super::*;
use proptest::prelude::*;

/// Builds a DTB from a list of nodes: (depth, name, props).
struct Builder {
    structs: Vec<u8>,
    strings: Vec<u8>,
}

impl Builder {
    fn new() -> Self {
        Builder {
            structs: Vec::new(),
            strings: Vec::new(),
        }
    }
    fn word(&mut self, w: u32) {
        self.structs.extend_from_slice(&w.to_be_bytes());
    }
    fn pad(&mut self) {
        while !self.structs.len().is_multiple_of(4) {
            self.structs.push(0);
        }
    }
    fn begin(&mut self, name: &str) -> &mut Self {
        self.word(TOKEN_BEGIN_NODE);
        self.structs.extend_from_slice(name.as_bytes());
        self.structs.push(0);
        self.pad();
        self
    }
    fn end(&mut self) -> &mut Self {
        self.word(TOKEN_END_NODE);
        self
    }
    fn prop(&mut self, name: &str, value: &[u8]) -> &mut Self {
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(name.as_bytes());
        self.strings.push(0);
        self.word(TOKEN_PROP);
        self.word(value.len() as u32);
        self.word(off);
        self.structs.extend_from_slice(value);
        self.pad();
        self
    }
    fn cells(&mut self, name: &str, cells: &[u32]) -> &mut Self {
        let v: Vec<u8> = cells.iter().flat_map(|c| c.to_be_bytes()).collect();
        self.prop(name, &v)
    }
    fn finish(&mut self) -> Vec<u8> {
        self.word(TOKEN_END);
        let off_rsv = 40u32;
        let off_struct = off_rsv + 16;
        let off_strings = off_struct + self.structs.len() as u32;
        let total = off_strings + self.strings.len() as u32;
        let mut out = Vec::new();
        for w in [
            MAGIC,
            total,
            off_struct,
            off_strings,
            off_rsv,
            17,
            16,
            0,
            self.strings.len() as u32,
            self.structs.len() as u32,
        ] {
            out.extend_from_slice(&w.to_be_bytes());
        }
        out.extend_from_slice(&[0; 16]);
        out.extend_from_slice(&self.structs);
        out.extend_from_slice(&self.strings);
        out
    }
}

/// The 128 random bytes libxl puts in `/chosen/rng-seed` (here a pattern).
const SEED: [u8; 128] = {
    let mut seed = [0u8; 128];
    let mut i = 0;
    while i < 128 {
        seed[i] = (i as u8).wrapping_mul(37).wrapping_add(11);
        i += 1;
    }
    seed
};

/// A tree shaped like the one libxl gives an arm32 guest.
fn xen_guest_tree() -> Vec<u8> {
    let mut b = Builder::new();
    b.begin("")
        .cells("#address-cells", &[2])
        .cells("#size-cells", &[2])
        .begin("chosen")
        .prop("bootargs", b"loglevel=debug\0")
        .prop("rng-seed", &SEED)
        .end()
        .begin("memory@40000000")
        .prop("device_type", b"memory\0")
        .cells("reg", &[0, 0x4000_0000, 0, 0x0400_0000])
        .end()
        .begin("interrupt-controller@3001000")
        .prop("compatible", b"arm,cortex-a15-gic\0arm,cortex-a9-gic\0")
        .cells(
            "reg",
            &[0, 0x0300_1000, 0, 0x1000, 0, 0x0300_2000, 0, 0x2000],
        )
        .end()
        .begin("timer")
        .prop("compatible", b"arm,armv7-timer\0")
        .cells(
            "interrupts",
            &[1, 13, 0xf08, 1, 14, 0xf08, 1, 11, 0xf08, 1, 10, 0xf08],
        )
        .end()
        .begin("hypervisor")
        .prop("compatible", b"xen,xen-4.17\0xen,xen\0")
        .cells("reg", &[0, 0x3800_0000, 0, 0x0100_0000])
        .cells("interrupts", &[1, 15, 0xf08])
        .end()
        .end();
    b.finish()
}

#[test]
fn reads_what_a_xen_guest_needs() {
    let blob = xen_guest_tree();
    let info = Fdt::new(&blob).unwrap().guest_info().unwrap();
    assert_eq!(info.nbanks, 1);
    assert_eq!(
        info.banks[0],
        Bank {
            base: 0x4000_0000,
            size: 0x0400_0000
        }
    );
    assert_eq!(info.bootargs, b"loglevel=debug");
    assert_eq!(info.rng_seed, &SEED[..]);
    let h = info.hypervisor.unwrap();
    assert_eq!(
        h.grant_region,
        Bank {
            base: 0x3800_0000,
            size: 0x0100_0000
        }
    );
    assert_eq!(h.event_irq, 31);
    assert_eq!(info.timer_irqs, [29, 30, 27, 26]);
    assert_eq!(info.gic, Some((0x0300_1000, 0x0300_2000)));
}

#[test]
fn one_cell_addresses_and_several_banks() {
    let mut b = Builder::new();
    b.begin("")
        .cells("#address-cells", &[1])
        .cells("#size-cells", &[1])
        .begin("memory@40000000")
        .cells("reg", &[0x4000_0000, 0x100_0000, 0x8000_0000, 0x200_0000])
        .end()
        .end();
    let blob = b.finish();
    let info = Fdt::new(&blob).unwrap().guest_info().unwrap();
    assert_eq!(info.nbanks, 2);
    assert_eq!(
        info.banks[1],
        Bank {
            base: 0x8000_0000,
            size: 0x200_0000
        }
    );
    assert!(info.hypervisor.is_none());
    assert_eq!(info.bootargs, b"");
    assert!(info.rng_seed.is_empty(), "no seed: a dom0less domain");
}

#[test]
fn ram_is_cut_at_the_limit_and_to_whole_pages() {
    let mut info = GuestInfo::default();
    info.banks[0] = Bank {
        base: 0x4000_0000,
        size: 0xc000_0000,
    };
    info.banks[1] = Bank {
        base: 0x2_0000_0000,
        size: 0x1000_0000,
    };
    info.banks[2] = Bank {
        base: 0x1800,
        size: 0x2000,
    };
    info.banks[3] = Bank {
        base: u64::MAX - 10,
        size: 100,
    };
    info.nbanks = 4;
    let r: Vec<_> = info.ram_pfns_below(1 << 32).collect();
    assert_eq!(r, [0x40000..0x100000, 2..3]);
}

#[test]
fn a_reg_of_the_wrong_length_is_an_error() {
    let mut b = Builder::new();
    b.begin("")
        .cells("#address-cells", &[2])
        .cells("#size-cells", &[2])
        .begin("memory@0")
        .cells("reg", &[0, 0x4000_0000, 0])
        .end()
        .end();
    let blob = b.finish();
    assert_eq!(
        Fdt::new(&blob).unwrap().guest_info().unwrap_err(),
        FdtError::BadProperty
    );
}

#[test]
fn a_hypervisor_node_without_interrupts_is_an_error() {
    let mut b = Builder::new();
    b.begin("")
        .begin("hypervisor")
        .prop("compatible", b"xen,xen\0")
        .end()
        .end();
    let blob = b.finish();
    assert_eq!(
        Fdt::new(&blob).unwrap().guest_info().unwrap_err(),
        FdtError::BadProperty
    );
}

#[test]
fn header_errors() {
    let blob = xen_guest_tree();
    assert_eq!(Fdt::new(&blob[..30]).err(), Some(FdtError::Truncated));
    assert_eq!(
        Fdt::new(&blob[..blob.len() - 1]).err(),
        Some(FdtError::Truncated)
    );
    let mut bad = blob.clone();
    bad[0] = 0;
    assert_eq!(Fdt::new(&bad).err(), Some(FdtError::BadMagic));
    let mut bad = blob.clone();
    bad[36..40].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
    assert_eq!(Fdt::new(&bad).err(), Some(FdtError::BadHeader));
}

#[test]
fn unbalanced_and_deep_trees_are_errors() {
    let mut b = Builder::new();
    b.begin("").begin("a");
    let blob = b.finish();
    assert_eq!(
        Fdt::new(&blob).unwrap().guest_info().unwrap_err(),
        FdtError::BadStructure
    );
    let mut b = Builder::new();
    for _ in 0..=MAX_DEPTH {
        b.begin("n");
    }
    for _ in 0..=MAX_DEPTH {
        b.end();
    }
    let blob = b.finish();
    assert_eq!(
        Fdt::new(&blob).unwrap().guest_info().unwrap_err(),
        FdtError::TooDeep
    );
}

proptest! {
    #[test]
    fn corrupted_trees_give_errors_not_panics(
        flips in proptest::collection::vec((0usize..2000, any::<u8>()), 1..8),
        cut in 0usize..2000,
    ) {
        let mut blob = xen_guest_tree();
        for (at, v) in flips {
            let n = blob.len();
            blob[at % n] = v;
        }
        let n = blob.len();
        blob.truncate(n - cut % n);
        if let Ok(fdt) = Fdt::new(&blob) {
            let _ = fdt.guest_info();
        }
    }
}
