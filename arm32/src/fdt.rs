//! A small flattened-device-tree (DTB) reader for what a Xen guest needs:
//! RAM banks, the `hypervisor` node (grant-table region, event-channel
//! PPI), `/chosen/bootargs` and `/chosen/rng-seed`.
//!
//! The blob comes from the toolstack, so it is parsed as untrusted input:
//! every offset and length is checked against the blob, nesting is
//! bounded, and any inconsistency is an [`FdtError`], never a panic.

use core::fmt;

const MAGIC: u32 = 0xd00d_feed;
const TOKEN_BEGIN_NODE: u32 = 1;
const TOKEN_END_NODE: u32 = 2;
const TOKEN_PROP: u32 = 3;
const TOKEN_NOP: u32 = 4;
const TOKEN_END: u32 = 9;
/// Deepest node nesting accepted.
const MAX_DEPTH: usize = 16;
/// Most RAM banks reported.
pub const MAX_BANKS: usize = 4;

/// Why a device tree was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdtError {
    /// The blob is shorter than its header or its `totalsize`.
    Truncated,
    /// The magic number is wrong.
    BadMagic,
    /// An offset or size in the header points outside the blob.
    BadHeader,
    /// The structure block holds an unknown token or overruns.
    BadStructure,
    /// A node or property name is not NUL-terminated inside its block.
    BadString,
    /// Nodes nest deeper than this reader allows.
    TooDeep,
    /// A property has a length its meaning does not allow.
    BadProperty,
}

impl fmt::Display for FdtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FdtError::Truncated => "device tree truncated",
            FdtError::BadMagic => "not a device tree (bad magic)",
            FdtError::BadHeader => "device tree header out of bounds",
            FdtError::BadStructure => "device tree structure block malformed",
            FdtError::BadString => "device tree name not terminated",
            FdtError::TooDeep => "device tree nested too deeply",
            FdtError::BadProperty => "device tree property of unexpected size",
        })
    }
}

fn be32(b: &[u8], off: usize) -> Result<u32, FdtError> {
    let s = b
        .get(off..off.checked_add(4).ok_or(FdtError::Truncated)?)
        .ok_or(FdtError::Truncated)?;
    Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// A parsed header over a checked blob.
#[derive(Clone, Copy)]
pub struct Fdt<'a> {
    structs: &'a [u8],
    strings: &'a [u8],
}

/// The size of the blob at `blob` as its header states, for callers that
/// only have a pointer: read the 8-byte prefix first.
pub fn total_size(header: &[u8]) -> Result<usize, FdtError> {
    if be32(header, 0)? != MAGIC {
        return Err(FdtError::BadMagic);
    }
    Ok(be32(header, 4)? as usize)
}

/// What [`Fdt::walk`] calls: the node's path (ancestors and itself), and
/// a property of it or `None` when the node begins.
pub type Visitor<'f, 'a> = dyn FnMut(&[&'a [u8]], Option<Prop<'a>>) + 'f;

/// One property met during a walk.
#[derive(Clone, Copy, Debug)]
pub struct Prop<'a> {
    /// The property's name.
    pub name: &'a [u8],
    /// Its raw value.
    pub value: &'a [u8],
}

/// A RAM bank: base address and size in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bank {
    /// First byte.
    pub base: u64,
    /// Length in bytes.
    pub size: u64,
}

/// What the `hypervisor` node (compatible `xen,xen`) says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hypervisor {
    /// Guest-physical region reserved for the grant table (first `reg`).
    pub grant_region: Bank,
    /// The event-channel upcall interrupt as a GIC interrupt ID (a PPI:
    /// 16 + the number in the `interrupts` property).
    pub event_irq: u32,
}

/// What a Xen guest reads from its device tree.
#[derive(Clone, Copy, Debug, Default)]
pub struct GuestInfo<'a> {
    /// RAM banks from the `memory` nodes, in tree order.
    pub banks: [Bank; MAX_BANKS],
    /// How many of `banks` are filled.
    pub nbanks: usize,
    /// The `hypervisor` node, if present.
    pub hypervisor: Option<Hypervisor>,
    /// `/chosen/bootargs` without its NUL (empty if absent).
    pub bootargs: &'a [u8],
    /// `/chosen/rng-seed`: random bytes from the toolstack (libxl writes
    /// 128 since Xen 4.16); empty if absent (dom0less domains).
    pub rng_seed: &'a [u8],
    /// The generic timer's PPIs from the `timer` node (secure, non-secure,
    /// virtual, hypervisor), as GIC interrupt IDs; 0 where absent.
    pub timer_irqs: [u32; 4],
    /// The GIC distributor and CPU interface bases from the
    /// `interrupt-controller` node (`reg` entries 0 and 1).
    pub gic: Option<(u64, u64)>,
}

impl GuestInfo<'_> {
    /// The RAM banks as whole-page pfn ranges, cut at address `limit`
    /// (partial pages at either end are left out; empty ranges dropped).
    pub fn ram_pfns_below(&self, limit: u64) -> impl Iterator<Item = core::ops::Range<u64>> + '_ {
        self.banks[..self.nbanks.min(MAX_BANKS)]
            .iter()
            .filter_map(move |b| {
                let end = b.base.saturating_add(b.size).min(limit);
                let (first, last) = (b.base.div_ceil(4096), end / 4096);
                (first < last).then_some(first..last)
            })
    }
}

impl<'a> Fdt<'a> {
    /// Checks the header of `blob` and the bounds of its blocks.
    pub fn new(blob: &'a [u8]) -> Result<Self, FdtError> {
        if blob.len() < 40 {
            return Err(FdtError::Truncated);
        }
        let total = total_size(blob)?;
        if total > blob.len() || total < 40 {
            return Err(FdtError::Truncated);
        }
        let blob = &blob[..total];
        let off_struct = be32(blob, 8)? as usize;
        let off_strings = be32(blob, 12)? as usize;
        let version = be32(blob, 20)?;
        let size_strings = be32(blob, 32)? as usize;
        let size_struct = be32(blob, 36)? as usize;
        if version < 17 {
            return Err(FdtError::BadHeader);
        }
        let structs = off_struct
            .checked_add(size_struct)
            .and_then(|end| blob.get(off_struct..end))
            .ok_or(FdtError::BadHeader)?;
        let strings = off_strings
            .checked_add(size_strings)
            .and_then(|end| blob.get(off_strings..end))
            .ok_or(FdtError::BadHeader)?;
        Ok(Fdt { structs, strings })
    }

    fn cstr(block: &'a [u8], off: usize) -> Result<&'a [u8], FdtError> {
        let rest = block.get(off..).ok_or(FdtError::BadString)?;
        let n = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(FdtError::BadString)?;
        Ok(&rest[..n])
    }

    /// Walks every node: `f(depth, path components, node name, props of
    /// that node)` is called once per property, and once per node with
    /// `None` when the node begins. `path` holds the names of the
    /// ancestors and the node itself (the root's name is empty).
    pub fn walk(&self, f: &mut Visitor<'_, 'a>) -> Result<(), FdtError> {
        let mut path: [&[u8]; MAX_DEPTH] = [&[]; MAX_DEPTH];
        let mut depth = 0usize;
        let mut off = 0usize;
        loop {
            let token = be32(self.structs, off).map_err(|_| FdtError::BadStructure)?;
            off += 4;
            match token {
                TOKEN_BEGIN_NODE => {
                    let name = Self::cstr(self.structs, off)?;
                    off = (off + name.len() + 1 + 3) & !3;
                    if depth >= MAX_DEPTH {
                        return Err(FdtError::TooDeep);
                    }
                    path[depth] = name;
                    depth += 1;
                    f(&path[..depth], None);
                }
                TOKEN_END_NODE => {
                    depth = depth.checked_sub(1).ok_or(FdtError::BadStructure)?;
                }
                TOKEN_PROP => {
                    let len = be32(self.structs, off).map_err(|_| FdtError::BadStructure)? as usize;
                    let nameoff =
                        be32(self.structs, off + 4).map_err(|_| FdtError::BadStructure)? as usize;
                    off += 8;
                    let value = off
                        .checked_add(len)
                        .and_then(|end| self.structs.get(off..end))
                        .ok_or(FdtError::BadStructure)?;
                    off = (off + len + 3) & !3;
                    if depth == 0 {
                        return Err(FdtError::BadStructure);
                    }
                    let name = Self::cstr(self.strings, nameoff)?;
                    f(&path[..depth], Some(Prop { name, value }));
                }
                TOKEN_NOP => {}
                TOKEN_END => {
                    return if depth == 0 {
                        Ok(())
                    } else {
                        Err(FdtError::BadStructure)
                    };
                }
                _ => return Err(FdtError::BadStructure),
            }
        }
    }

    /// Collects what a Xen guest needs (see [`GuestInfo`]).
    pub fn guest_info(&self) -> Result<GuestInfo<'a>, FdtError> {
        let mut info = GuestInfo::default();
        // Root #address-cells / #size-cells (defaults per the spec).
        let (mut ac, mut sc) = (2u32, 1u32);
        let mut err = None;
        // Per-node state of the node being walked (properties follow their
        // node's BEGIN_NODE and precede its children).
        let mut is_xen = false;
        let mut xen_reg: Option<&[u8]> = None;
        let mut xen_irq: Option<&[u8]> = None;
        let mut is_gic = false;
        let mut gic_reg: Option<&[u8]> = None;
        let mut is_timer = false;
        let mut timer_irq: Option<&[u8]> = None;
        let mut memory_regs: [Option<&[u8]>; MAX_BANKS] = [None; MAX_BANKS];
        let mut nmem = 0;
        self.walk(&mut |path, prop| {
            let depth = path.len();
            let name = path[depth - 1];
            let base = name.split(|&b| b == b'@').next().unwrap_or(name);
            let Some(p) = prop else { return };
            match (depth, p.name) {
                (1, b"#address-cells") => match cell(p.value) {
                    Some(v) => ac = v,
                    None => err = Some(FdtError::BadProperty),
                },
                (1, b"#size-cells") => match cell(p.value) {
                    Some(v) => sc = v,
                    None => err = Some(FdtError::BadProperty),
                },
                (2, b"compatible") => {
                    let has = |want: &[u8]| p.value.split(|&b| b == 0).any(|c| c == want);
                    if base == b"hypervisor" && has(b"xen,xen") {
                        is_xen = true;
                    }
                    if has(b"arm,cortex-a15-gic") || has(b"arm,gic-400") {
                        is_gic = true;
                    }
                    if has(b"arm,armv7-timer") || has(b"arm,armv8-timer") {
                        is_timer = true;
                    }
                }
                (2, b"reg") if base == b"memory" => {
                    if nmem < MAX_BANKS {
                        memory_regs[nmem] = Some(p.value);
                        nmem += 1;
                    }
                }
                (2, b"reg") if base == b"hypervisor" => xen_reg = Some(p.value),
                (2, b"interrupts") if base == b"hypervisor" => xen_irq = Some(p.value),
                (2, b"reg") if base == b"interrupt-controller" => gic_reg = Some(p.value),
                (2, b"interrupts") if base == b"timer" => timer_irq = Some(p.value),
                (2, b"bootargs") if base == b"chosen" => {
                    info.bootargs = p.value.split(|&b| b == 0).next().unwrap_or(&[]);
                }
                (2, b"rng-seed") if base == b"chosen" => info.rng_seed = p.value,
                _ => {}
            }
        })?;
        if let Some(e) = err {
            return Err(e);
        }
        if ac == 0 || ac > 2 || sc > 2 {
            return Err(FdtError::BadProperty);
        }
        for reg in memory_regs.iter().take(nmem).flatten() {
            for bank in regs(reg, ac, sc)? {
                if info.nbanks < MAX_BANKS && bank.size > 0 {
                    info.banks[info.nbanks] = bank;
                    info.nbanks += 1;
                }
            }
        }
        if is_xen {
            let grant_region = match xen_reg {
                Some(r) => regs(r, ac, sc)?.next().ok_or(FdtError::BadProperty)?,
                None => Bank::default(),
            };
            let irq = xen_irq.ok_or(FdtError::BadProperty)?;
            info.hypervisor = Some(Hypervisor {
                grant_region,
                event_irq: gic_irq(irq, 0)?,
            });
        }
        if let Some(t) = timer_irq.filter(|_| is_timer) {
            for (i, slot) in info.timer_irqs.iter_mut().enumerate() {
                *slot = gic_irq(t, i).unwrap_or(0);
            }
        }
        if let Some(r) = gic_reg.filter(|_| is_gic) {
            let mut it = regs(r, ac, sc)?;
            if let (Some(d), Some(c)) = (it.next(), it.next()) {
                info.gic = Some((d.base, c.base));
            }
        }
        Ok(info)
    }
}

fn cell(v: &[u8]) -> Option<u32> {
    (v.len() == 4).then(|| u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
}

/// Interrupt `i` of a GIC `interrupts` property (3 cells each: type,
/// number, flags) as a GIC interrupt ID: SPIs (type 0) start at 32, PPIs
/// (type 1) at 16.
fn gic_irq(v: &[u8], i: usize) -> Result<u32, FdtError> {
    let off = i.checked_mul(12).ok_or(FdtError::BadProperty)?;
    let kind = be32(v, off).map_err(|_| FdtError::BadProperty)?;
    let num = be32(v, off + 4).map_err(|_| FdtError::BadProperty)?;
    let base = match kind {
        0 => 32,
        1 => 16,
        _ => return Err(FdtError::BadProperty),
    };
    if num > 1019 - base {
        return Err(FdtError::BadProperty);
    }
    Ok(base + num)
}

/// The (address, size) pairs of a `reg` property.
fn regs(v: &[u8], ac: u32, sc: u32) -> Result<impl Iterator<Item = Bank> + '_, FdtError> {
    let entry = ((ac + sc) * 4) as usize;
    if entry == 0 || !v.len().is_multiple_of(entry) {
        return Err(FdtError::BadProperty);
    }
    let read = |c: &[u8], n: u32| -> u64 {
        c.chunks_exact(4).take(n as usize).fold(0u64, |acc, w| {
            (acc << 32) | u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]))
        })
    };
    Ok(v.chunks_exact(entry).map(move |c| Bank {
        base: read(c, ac),
        size: read(&c[(ac * 4) as usize..], sc),
    }))
}

#[cfg(test)]
mod tests;
