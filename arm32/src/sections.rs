//! The arm32 1:1 map's section descriptors (short-descriptor format,
//! TEX remap off) and a decoder for them, so the boot can print what the
//! MMU walks and host tests can check the attribute bits.

/// Section attributes: Normal, Inner/Outer Write-Back Write-Allocate
/// (TEX=001 C=1 B=1), Inner-Shareable (S=1), full access (AP=11).
pub const SECT_NORMAL: u32 = 0b10 | (1 << 2) | (1 << 3) | (0b11 << 10) | (0b001 << 12) | (1 << 16);
/// Shareable Device (TEX=000 C=0 B=1), execute-never, full access.
pub const SECT_DEVICE: u32 = 0b10 | (1 << 2) | (1 << 4) | (0b11 << 10);
/// A section descriptor's execute-never bit.
pub const SECT_XN: u32 = 1 << 4;

/// A coarse page-table descriptor (L1 entry pointing at a 256-entry L2
/// table of 4 KiB pages), domain 0.
pub const fn coarse(l2_table: u32) -> u32 {
    (l2_table & !0x3ff) | 0b01
}

/// Small-page attributes matching [`SECT_NORMAL`]: Normal, Inner/Outer
/// Write-Back Write-Allocate (TEX=001 C=1 B=1), Inner-Shareable (S=1).
pub const PAGE_NORMAL: u32 = 0b10 | (1 << 2) | (1 << 3) | (0b001 << 6) | (1 << 10);
/// A small page's execute-never bit.
pub const PAGE_XN: u32 = 1;
/// Small-page access: read-write (AP[2] = 0, AP[1:0] = 11).
pub const PAGE_RW: u32 = 0b11 << 4;
/// Small-page access: read-only (AP[2] = 1, AP[1:0] = 11).
pub const PAGE_RO: u32 = (0b11 << 4) | (1 << 9);

/// A small-page descriptor's memory type and shareability in a section
/// descriptor's bit positions, for [`describe_section`].
pub fn page_as_section(desc: u32) -> u32 {
    if desc & 0b10 == 0 {
        return 0; // not a small page: "not a section"
    }
    0b10 | (desc & 0b1100) | (((desc >> 6) & 7) << 12) | (((desc >> 10) & 1) << 16)
}

/// What a page of the image may be used for (W^X, the stack guard pages).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageKind {
    /// Code: read-only, executable.
    Text,
    /// `.rodata`, `.ARM.exidx`, the build record: read-only, never executed.
    ReadOnly,
    /// `.data`, `.bss`, stacks, and all RAM outside the image.
    Data,
    /// An unmapped page below a stack, named by the stack it guards.
    Guard(&'static str),
}

/// The image's page-aligned layout (linker symbols and head.S's stacks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// `__image_start..__image_end`.
    pub image: core::ops::Range<u32>,
    /// `__text_start..__text_end`.
    pub text: core::ops::Range<u32>,
    /// `__data_start`: from here on the image is writable.
    pub data_start: u32,
    /// The guard pages and the stacks they guard.
    pub guards: [(core::ops::Range<u32>, &'static str); 2],
}

impl Layout {
    /// The kind of the page holding `addr` (RAM outside the image: Data).
    pub fn kind(&self, addr: u32) -> PageKind {
        if let Some((_, name)) = self.guards.iter().find(|(r, _)| r.contains(&addr)) {
            PageKind::Guard(name)
        } else if self.text.contains(&addr) {
            PageKind::Text
        } else if (self.image.start..self.data_start).contains(&addr) {
            PageKind::ReadOnly
        } else {
            PageKind::Data
        }
    }

    /// The small-page descriptor mapping the page at `addr` 1:1 (0, a
    /// translation fault, for a guard page).
    pub fn page_desc(&self, addr: u32) -> u32 {
        let base = (addr & !0xfff) | PAGE_NORMAL;
        match self.kind(addr) {
            PageKind::Text => base | PAGE_RO,
            PageKind::ReadOnly => base | PAGE_RO | PAGE_XN,
            PageKind::Data => base | PAGE_RW | PAGE_XN,
            PageKind::Guard(_) => 0,
        }
    }

    /// The W^X or guard-page property an abort violated, in the words
    /// of the amd64 report (`kernel::protection`), or `None` for any
    /// other abort. `prefetch`: a prefetch abort (IFSR/IFAR), else a data
    /// abort (DFSR/DFAR; WnR is DFSR bit 11).
    pub fn describe_abort(&self, prefetch: bool, fsr: u32, far: u32, out: &mut [u8]) -> usize {
        let status = ((fsr >> 6) & 0x10) | (fsr & 0xf);
        let translation = status == 0b00101 || status == 0b00111;
        let permission = status == 0b01101 || status == 0b01111;
        let write = !prefetch && fsr & (1 << 11) != 0;
        let mut w = Writer { out, n: 0 };
        match self.kind(far) {
            PageKind::Guard(stack) if translation => {
                w.put(b"stack overflow: the ");
                w.put(stack.as_bytes());
                w.put(b" stack ran into its guard page at ");
            }
            PageKind::Text if permission && write => w.put(b"W^X: write to read-only text at "),
            PageKind::ReadOnly if permission && write => {
                w.put(b"W^X: write to read-only rodata at ")
            }
            PageKind::ReadOnly if permission && prefetch => {
                w.put(b"W^X: execute from non-executable rodata at ")
            }
            PageKind::Data if permission && prefetch => {
                w.put(b"W^X: execute from non-executable data at ")
            }
            _ => return 0,
        }
        w.hex(far);
        w.n
    }
}

struct Writer<'a> {
    out: &'a mut [u8],
    n: usize,
}

impl Writer<'_> {
    fn put(&mut self, s: &[u8]) {
        for &b in s {
            if self.n < self.out.len() {
                self.out[self.n] = b;
                self.n += 1;
            }
        }
    }
    fn hex(&mut self, v: u32) {
        self.put(b"0x");
        let digits = (32 - v.leading_zeros()).div_ceil(4).max(1);
        for i in (0..digits).rev() {
            self.put(&[b"0123456789abcdef"[((v >> (4 * i)) & 0xf) as usize]]);
        }
    }
}

/// Decodes a short-descriptor section entry's memory type (TEX, C, B,
/// with TRE off) and shareability: "Normal inner WB-WA outer WB-WA
/// inner-shareable" and the like. Returns the length written to `out`.
pub fn describe_section(desc: u32, out: &mut [u8; 96]) -> usize {
    fn cache(v: u32) -> &'static [u8] {
        match v {
            0 => b"NC",
            1 => b"WB-WA",
            2 => b"WT",
            _ => b"WB",
        }
    }
    let mut n = 0;
    let mut put = |s: &[u8]| {
        for &b in s {
            if n < out.len() {
                out[n] = b;
                n += 1;
            }
        }
    };
    if desc & 0b11 != 0b10 || desc & (1 << 18) != 0 {
        put(b"not a section");
        return n;
    }
    let (tex, c, b) = ((desc >> 12) & 7, (desc >> 3) & 1, (desc >> 2) & 1);
    let normal = if tex & 0b100 != 0 {
        // TEX[2] = 1: cacheable memory, outer policy TEX[1:0], inner C:B.
        put(b"Normal inner ");
        put(cache((c << 1) | b));
        put(b" outer ");
        put(cache(tex & 3));
        true
    } else {
        match (tex, c, b) {
            (0, 0, 0) => put(b"Strongly-ordered"),
            (0, 0, 1) => put(b"Shareable Device"),
            (0, 1, 0) => put(b"Normal inner WT outer WT"),
            (0, 1, 1) => put(b"Normal inner WB outer WB"),
            (1, 0, 0) => put(b"Normal inner NC outer NC"),
            (1, 1, 1) => put(b"Normal inner WB-WA outer WB-WA"),
            (2, 0, 0) => put(b"Non-shareable Device"),
            _ => put(b"reserved"),
        }
        !(tex == 0 && c == 0) && tex != 2
    };
    if normal {
        put(if desc & (1 << 16) != 0 {
            b" inner-shareable"
        } else {
            b" non-shareable"
        });
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(desc: u32) -> String {
        let mut out = [0u8; 96];
        let n = describe_section(desc, &mut out);
        String::from_utf8(out[..n].to_vec()).unwrap()
    }

    #[test]
    fn shared_pages_are_normal_write_back_inner_shareable() {
        assert_eq!(
            text(SECT_NORMAL | 0x4000_0000),
            "Normal inner WB-WA outer WB-WA inner-shareable"
        );
        // Executable as defined: mmu_on adds SECT_XN to every section but
        // the image's, which are 4 KiB pages mapped by `Layout::page_desc`.
        assert_eq!(SECT_NORMAL & SECT_XN, 0);
        assert_eq!((SECT_NORMAL >> 10) & 3, 0b11, "full access");
    }

    #[test]
    fn device_space_is_shareable_device_and_execute_never() {
        assert_eq!(text(SECT_DEVICE), "Shareable Device");
        assert_ne!(SECT_DEVICE & (1 << 4), 0);
    }

    fn layout() -> Layout {
        Layout {
            image: 0x4000_8000..0x4005_0000,
            text: 0x4000_8000..0x4002_0000,
            data_start: 0x4003_0000,
            guards: [
                (0x4003_4000..0x4003_5000, "boot"),
                (0x4004_5000..0x4004_6000, "exception"),
            ],
        }
    }

    fn abort(prefetch: bool, fsr: u32, far: u32) -> String {
        let mut out = [0u8; 128];
        let n = layout().describe_abort(prefetch, fsr, far, &mut out);
        String::from_utf8(out[..n].to_vec()).unwrap()
    }

    #[test]
    fn image_pages_are_w_xor_x() {
        let l = layout();
        let text = l.page_desc(0x4000_9000);
        assert_eq!(text & PAGE_XN, 0);
        assert_eq!(text & (1 << 9), 1 << 9, "text read-only");
        let ro = l.page_desc(0x4002_1000);
        assert_eq!((ro & PAGE_XN, ro & (1 << 9)), (PAGE_XN, 1 << 9));
        let data = l.page_desc(0x4003_0000);
        assert_eq!((data & PAGE_XN, data & (1 << 9)), (PAGE_XN, 0));
        assert_eq!(data & !0xfff, 0x4003_0000);
        assert_eq!(l.page_desc(0x4003_4abc), 0, "guard page unmapped");
        assert_eq!(l.kind(0x4000_0000), PageKind::Data, "below the image");
        assert_eq!(l.kind(0x4800_0000), PageKind::Data, "heap");
        // Same memory type as the sections.
        let mut a = [0u8; 96];
        let mut b = [0u8; 96];
        let n = describe_section(page_as_section(data), &mut a);
        let m = describe_section(SECT_NORMAL, &mut b);
        assert_eq!(&a[..n], &b[..m]);
        assert_eq!(page_as_section(0), 0);
        assert_eq!(coarse(0x4001_2400) & 3, 1);
    }

    #[test]
    fn aborts_name_the_property() {
        // DFSR: permission fault (page) 0b01111, WnR bit 11.
        assert_eq!(
            abort(false, 0x80f, 0x4000_9010),
            "W^X: write to read-only text at 0x40009010"
        );
        assert_eq!(
            abort(false, 0x80f, 0x4002_2000),
            "W^X: write to read-only rodata at 0x40022000"
        );
        // IFSR: permission fault (page) on a fetch from .data.
        assert_eq!(
            abort(true, 0x00f, 0x4003_0100),
            "W^X: execute from non-executable data at 0x40030100"
        );
        // Translation fault (page) in a guard page, read or write.
        assert_eq!(
            abort(false, 0x807, 0x4003_4ff8),
            "stack overflow: the boot stack ran into its guard page at 0x40034ff8"
        );
        assert_eq!(
            abort(false, 0x007, 0x4004_5000),
            "stack overflow: the exception stack ran into its guard page at 0x40045000"
        );
        // Anything else is left to the raw report.
        assert_eq!(abort(false, 0x005, 0x1000), "");
        assert_eq!(
            abort(false, 0x00f, 0x4000_9010),
            "",
            "a read of text is no fault"
        );
    }

    #[test]
    fn other_encodings() {
        assert_eq!(text(0b10), "Strongly-ordered");
        assert_eq!(
            text(0b10 | (0b110 << 12) | (1 << 3) | (1 << 16)),
            "Normal inner WT outer WT inner-shareable"
        );
        assert_eq!(
            text(0b10 | (0b101 << 12) | (1 << 2)),
            "Normal inner WB-WA outer WB-WA non-shareable"
        );
        assert_eq!(text(0b01), "not a section");
        assert_eq!(text(0b10 | (1 << 18)), "not a section");
    }
}
