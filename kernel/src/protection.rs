//! The image's memory protection (W^X and stack guard pages): the layout
//! the arch code maps, what each page of it may do, and the words a fault
//! report uses to say which property a fault violated.
//!
//! The arch code (amd64's PV and PVH paths; arm32 keeps its own decoder
//! of the Arm fault registers, since that crate cannot see this one) maps
//! the image by [`Layout::kind`] and, on a page fault, asks
//! [`Layout::describe`] what happened. Plain logic, tested on the host.
//! docs/kernel.md, "Memory map and protection", has the map.

use core::fmt;
use core::ops::Range;

/// What a page of the image may be used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageKind {
    /// Code: read-only, executable.
    Text,
    /// Xen notes, `.rodata`, the build record: read-only, never executed.
    ReadOnly,
    /// `.data`, `.bss`, stacks (and everything outside the image: heap,
    /// page tables, shared pages): read-write, never executed.
    Data,
    /// An unmapped page below a stack, named by the stack it guards.
    Guard(&'static str),
}

/// The image's layout as the linker placed it: page-aligned ranges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// `__image_start..__image_end`.
    pub image: Range<u64>,
    /// `__text_start..__text_end`: the only executable pages.
    pub text: Range<u64>,
    /// Start of `.data`: `image.start..data_start` outside `text` is
    /// read-only (notes, `.rodata`).
    pub data_start: u64,
    /// The guard pages and the stacks they guard.
    pub guards: [(Range<u64>, &'static str); 2],
}

impl Layout {
    /// The kind of the page holding `addr`. Addresses outside the image
    /// are [`PageKind::Data`].
    pub fn kind(&self, addr: u64) -> PageKind {
        if let Some((_, name)) = self.guards.iter().find(|(r, _)| r.contains(&addr)) {
            return PageKind::Guard(name);
        }
        if self.text.contains(&addr) {
            PageKind::Text
        } else if (self.image.start..self.data_start).contains(&addr) {
            PageKind::ReadOnly
        } else {
            PageKind::Data
        }
    }

    /// What a page fault at `addr` with `access` violated.
    pub fn describe(&self, addr: u64, access: Access) -> Violation {
        match (self.kind(addr), access) {
            (PageKind::Guard(stack), _) => Violation::StackOverflow { stack, addr },
            (_, Access::Execute) if !matches!(self.kind(addr), PageKind::Text) => {
                Violation::ExecuteNonExecutable {
                    kind: self.kind(addr),
                    addr,
                }
            }
            (PageKind::Text, Access::Write) => Violation::WriteReadOnly { what: "text", addr },
            (PageKind::ReadOnly, Access::Write) => Violation::WriteReadOnly {
                what: "rodata",
                addr,
            },
            (_, access) => Violation::Other { access, addr },
        }
    }
}

impl Layout {
    /// The address a page fault (`double: false`) or double fault
    /// (`double: true`) is about: CR2 when it is not 0. Without it (under
    /// the rig's nested SVM a PVH guest reads CR2 as 0): an instruction
    /// fetch faulted at `rip`; a double fault whose interrupted `rsp` lies
    /// in or at most 256 bytes above a guard page is that stack's overflow
    /// (the CPU could not push the page fault's frame below it). `None`:
    /// unknown.
    pub fn fault_address(
        &self,
        double: bool,
        access: Access,
        cr2: u64,
        rip: u64,
        rsp: u64,
    ) -> Option<u64> {
        if cr2 != 0 {
            Some(cr2)
        } else if !double && access == Access::Execute {
            Some(rip)
        } else if double {
            self.guards
                .iter()
                .find(|(g, _)| (g.start..g.end + 256).contains(&rsp))
                .map(|(g, _)| rsp.clamp(g.start, g.end - 8))
        } else {
            None
        }
    }
}

/// The access a fault reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// A data read.
    Read,
    /// A data write.
    Write,
    /// An instruction fetch.
    Execute,
}

/// Which property a fault violated, for the fatal report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Violation {
    /// An access to a stack's guard page: the stack overflowed.
    StackOverflow {
        /// The stack the guard page sits below.
        stack: &'static str,
        /// The faulting address.
        addr: u64,
    },
    /// A write to a read-only page of the image.
    WriteReadOnly {
        /// "text" or "rodata".
        what: &'static str,
        /// The faulting address.
        addr: u64,
    },
    /// An instruction fetch from a non-executable page.
    ExecuteNonExecutable {
        /// The kind of page.
        kind: PageKind,
        /// The faulting address.
        addr: u64,
    },
    /// Any other fault (an unmapped address, a null pointer).
    Other {
        /// The access.
        access: Access,
        /// The faulting address.
        addr: u64,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Violation::StackOverflow { stack, addr } => write!(
                f,
                "stack overflow: the {stack} stack ran into its guard page at {addr:#x}"
            ),
            Violation::WriteReadOnly { what, addr } => {
                write!(f, "W^X: write to read-only {what} at {addr:#x}")
            }
            Violation::ExecuteNonExecutable { kind, addr } => {
                let what = match kind {
                    PageKind::ReadOnly => "rodata",
                    _ => "data",
                };
                write!(f, "W^X: execute from non-executable {what} at {addr:#x}")
            }
            Violation::Other { access, addr } => {
                let what = match access {
                    Access::Read => "read",
                    Access::Write => "write",
                    Access::Execute => "execute",
                };
                write!(f, "{what} at {addr:#x}")
            }
        }
    }
}

/// What the page tables allow at an address, read back from them
/// (`kernel::arch::page_rights`): the selftest's evidence of the map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRights {
    /// Writable.
    pub write: bool,
    /// Executable.
    pub execute: bool,
}

impl PageRights {
    /// Read-only and executable: text.
    pub const TEXT: PageRights = PageRights {
        write: false,
        execute: true,
    };
    /// Read-only, never executed: rodata.
    pub const READ_ONLY: PageRights = PageRights {
        write: false,
        execute: false,
    };
    /// Read-write, never executed: data, bss, heap, stacks.
    pub const DATA: PageRights = PageRights {
        write: true,
        execute: false,
    };
}

impl fmt::Display for PageRights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("r")?;
        f.write_str(if self.write { "w" } else { "-" })?;
        f.write_str(if self.execute { "x" } else { "-" })
    }
}

/// The faults the selftest provokes on purpose (`selftest.fault=`), one
/// per run: each must end the domain with the matching report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// Write a byte of the kernel's own code.
    WriteText,
    /// Call a `ret` instruction that sits in `.data`.
    ExecData,
    /// Recurse until the boot stack runs into its guard page.
    StackOverflow,
}

impl Probe {
    /// Every probe, in the order of [`Probe::NAMES`].
    pub const ALL: [Probe; 3] = [Probe::WriteText, Probe::ExecData, Probe::StackOverflow];
    /// The command-line names: `write-text`, `exec-data`, `stack-overflow`.
    pub const NAMES: [&'static str; 3] = ["write-text", "exec-data", "stack-overflow"];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout {
            image: 0x10_0000..0x16_3000,
            text: 0x10_1000..0x12_0000,
            data_start: 0x13_0000,
            guards: [
                (0x14_0000..0x14_1000, "boot"),
                (0x16_1000..0x16_2000, "double-fault"),
            ],
        }
    }

    #[test]
    fn kinds() {
        let l = layout();
        assert_eq!(l.kind(0x10_0000), PageKind::ReadOnly); // notes
        assert_eq!(l.kind(0x10_1000), PageKind::Text);
        assert_eq!(l.kind(0x11_ffff), PageKind::Text);
        assert_eq!(l.kind(0x12_0000), PageKind::ReadOnly);
        assert_eq!(l.kind(0x13_0000), PageKind::Data);
        assert_eq!(l.kind(0x14_0fff), PageKind::Guard("boot"));
        assert_eq!(l.kind(0x14_1000), PageKind::Data);
        assert_eq!(l.kind(0x16_1800), PageKind::Guard("double-fault"));
        assert_eq!(l.kind(0x8000_0000), PageKind::Data); // heap
        assert_eq!(l.kind(0x1000), PageKind::Data);
    }

    #[test]
    fn reports_name_the_property() {
        let l = layout();
        let s = |a, acc| alloc::format!("{}", l.describe(a, acc));
        assert_eq!(
            s(0x10_2000, Access::Write),
            "W^X: write to read-only text at 0x102000"
        );
        assert_eq!(
            s(0x12_0008, Access::Write),
            "W^X: write to read-only rodata at 0x120008"
        );
        assert_eq!(
            s(0x13_0010, Access::Execute),
            "W^X: execute from non-executable data at 0x130010"
        );
        assert_eq!(
            s(0x12_0010, Access::Execute),
            "W^X: execute from non-executable rodata at 0x120010"
        );
        assert_eq!(
            s(0x14_0ff8, Access::Write),
            "stack overflow: the boot stack ran into its guard page at 0x140ff8"
        );
        // A guard page is a stack overflow whatever the access.
        assert!(matches!(
            l.describe(0x14_0000, Access::Read),
            Violation::StackOverflow { stack: "boot", .. }
        ));
        assert_eq!(s(0, Access::Read), "read at 0x0");
        // Reading text or executing text is no violation of W^X.
        assert!(matches!(
            l.describe(0x10_2000, Access::Execute),
            Violation::Other { .. }
        ));
    }

    #[test]
    fn fault_address_without_cr2() {
        let l = layout();
        // CR2 wins whenever it says something.
        assert_eq!(
            l.fault_address(false, Access::Write, 0x10_2000, 1, 2),
            Some(0x10_2000)
        );
        assert_eq!(
            l.fault_address(true, Access::Read, 0x14_0ff8, 1, 2),
            Some(0x14_0ff8)
        );
        // A fetch faulted at RIP.
        assert_eq!(
            l.fault_address(false, Access::Execute, 0, 0x13_0010, 2),
            Some(0x13_0010)
        );
        // A write: unknown.
        assert_eq!(
            l.fault_address(false, Access::Write, 0, 0x10_2000, 0x15_0000),
            None
        );
        // A double fault with RSP in the guard page or just above it.
        assert_eq!(
            l.fault_address(true, Access::Read, 0, 1, 0x14_0f10),
            Some(0x14_0f10)
        );
        assert_eq!(
            l.fault_address(true, Access::Read, 0, 1, 0x14_1010),
            Some(0x14_0ff8)
        );
        assert!(matches!(
            l.describe(0x14_0ff8, Access::Read),
            Violation::StackOverflow { stack: "boot", .. }
        ));
        // ...but not with RSP well inside the stack.
        assert_eq!(l.fault_address(true, Access::Read, 0, 1, 0x14_2000), None);
    }

    #[test]
    fn rights_print_like_ls() {
        assert_eq!(alloc::format!("{}", PageRights::TEXT), "r-x");
        assert_eq!(alloc::format!("{}", PageRights::READ_ONLY), "r--");
        assert_eq!(alloc::format!("{}", PageRights::DATA), "rw-");
    }

    #[test]
    fn probe_names() {
        for p in Probe::ALL {
            assert_eq!(Probe::NAMES[p as usize], p.name());
        }
    }
}
