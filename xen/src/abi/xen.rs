//! `xen/xen.h` and `arch-x86/xen-x86_64.h`: hypercall numbers, the PV start
//! of day (`start_info`), `shared_info` and `vcpu_info`.

/// Hypercall numbers (`__HYPERVISOR_*`).
pub mod hypercall {
    /// `__HYPERVISOR_mmu_update`
    pub const MMU_UPDATE: usize = 1;
    /// `__HYPERVISOR_set_callbacks`
    pub const SET_CALLBACKS: usize = 4;
    /// `__HYPERVISOR_memory_op`
    pub const MEMORY_OP: usize = 12;
    /// `__HYPERVISOR_update_va_mapping`
    pub const UPDATE_VA_MAPPING: usize = 14;
    /// `__HYPERVISOR_xen_version`
    pub const XEN_VERSION: usize = 17;
    /// `__HYPERVISOR_console_io`
    pub const CONSOLE_IO: usize = 18;
    /// `__HYPERVISOR_grant_table_op`
    pub const GRANT_TABLE_OP: usize = 20;
    /// `__HYPERVISOR_iret`
    pub const IRET: usize = 23;
    /// `__HYPERVISOR_vcpu_op`
    pub const VCPU_OP: usize = 24;
    /// `__HYPERVISOR_mmuext_op`
    pub const MMUEXT_OP: usize = 26;
    /// `__HYPERVISOR_sched_op`
    pub const SCHED_OP: usize = 29;
    /// `__HYPERVISOR_event_channel_op`
    pub const EVENT_CHANNEL_OP: usize = 32;
    /// `__HYPERVISOR_hvm_op`
    pub const HVM_OP: usize = 34;
}

/// `CONSOLEIO_write`: write to Xen's own console (dom0 or debug builds only).
pub const CONSOLEIO_WRITE: u32 = 0;
/// `XENVER_version`: returns `major << 16 | minor`.
pub const XENVER_VERSION: u32 = 0;
/// `XENVER_extraversion`: a 16-byte string such as ".7".
pub const XENVER_EXTRAVERSION: u32 = 1;

/// `SIF_INITDOMAIN`: this is the hardware domain.
pub const SIF_INITDOMAIN: u32 = 1 << 1;
/// `MAX_GUEST_CMDLINE`
pub const MAX_GUEST_CMDLINE: usize = 1024;
/// `XEN_LEGACY_MAX_VCPUS` on x86.
#[cfg(not(target_arch = "arm"))]
pub const XEN_LEGACY_MAX_VCPUS: usize = 32;
/// `XEN_LEGACY_MAX_VCPUS` on Arm: the shared info page holds one
/// `vcpu_info`; other vCPUs must use `VCPUOP_register_vcpu_info`.
#[cfg(target_arch = "arm")]
pub const XEN_LEGACY_MAX_VCPUS: usize = 1;
/// Bits in a `xen_ulong_t` (the 2-level event channel word).
pub const XEN_ULONG_BITS: usize = 64;

/// `MMU_NORMAL_PT_UPDATE`: `ptr` is the machine address of a PTE to write.
pub const MMU_NORMAL_PT_UPDATE: u64 = 0;
/// `UVMF_INVLPG`: flush the TLB entry of the updated address.
pub const UVMF_INVLPG: u64 = 2;
/// Start of the read-only machine-to-physical table in a 64-bit PV guest
/// (`MACH2PHYS_VIRT_START`).
pub const MACH2PHYS_VIRT_START: u64 = 0xFFFF_8000_0000_0000;

/// `__HYPERVISOR_set_trap_table` number.
pub const SET_TRAP_TABLE: usize = 0;
/// `FLAT_KERNEL_CS64`: the PV kernel's code selector.
pub const FLAT_KERNEL_CS64: u16 = 0xe033;

/// `struct trap_info`: one entry of `HYPERVISOR_set_trap_table`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TrapInfo {
    /// Exception vector.
    pub vector: u8,
    /// Bits 0-1: privilege level; bit 2: mask events on entry.
    pub flags: u8,
    /// Code selector.
    pub cs: u16,
    /// Handler address (0 ends the table).
    pub address: u64,
}

/// `struct mmu_update`: one request of `HYPERVISOR_mmu_update`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MmuUpdate {
    /// Machine address of the entry, low bits carry the command.
    pub ptr: u64,
    /// The new entry.
    pub val: u64,
}

/// The `domU` arm of `start_info.console`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StartInfoConsole {
    /// Machine frame of the console ring page.
    pub mfn: u64,
    /// Event channel of the console ring.
    pub evtchn: u32,
}

/// `struct start_info`: what Xen hands a PV guest in `%rsi` at entry.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct StartInfo {
    /// `xen-<version>-<platform>`.
    pub magic: [u8; 32],
    /// Pages allocated to this domain.
    pub nr_pages: u64,
    /// Machine address of the shared info page.
    pub shared_info: u64,
    /// `SIF_*` flags.
    pub flags: u32,
    /// Machine frame of the xenstore ring page.
    pub store_mfn: u64,
    /// Event channel of the xenstore ring.
    pub store_evtchn: u32,
    /// Console ring (the `domU` arm of the union; dom0 has no ring).
    pub console: StartInfoConsole,
    /// Virtual address of the top-level page table.
    pub pt_base: u64,
    /// Number of bootstrap page-table frames.
    pub nr_pt_frames: u64,
    /// Virtual address of the pfn-to-mfn list.
    pub mfn_list: u64,
    /// Virtual address of the pre-loaded module (ramdisk).
    pub mod_start: u64,
    /// Size of the pre-loaded module in bytes.
    pub mod_len: u64,
    /// The command line (`extra=`), NUL terminated.
    pub cmd_line: [u8; MAX_GUEST_CMDLINE],
    /// First pfn of the initial p2m table (if not mapped).
    pub first_p2m_pfn: u64,
    /// Number of pfns of the initial p2m table.
    pub nr_p2m_frames: u64,
}

/// `struct vcpu_time_info`: the PV clock of one vCPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VcpuTimeInfo {
    /// Odd while Xen updates the record.
    pub version: u32,
    /// Padding.
    pub pad0: u32,
    /// TSC at the last update.
    pub tsc_timestamp: u64,
    /// System time (ns since boot) at the last update.
    pub system_time: u64,
    /// TSC to ns multiplier (32.32 fixed point after the shift).
    pub tsc_to_system_mul: u32,
    /// TSC shift (left if positive).
    pub tsc_shift: i8,
    /// `XEN_PVCLOCK_*` flags.
    pub flags: u8,
    /// Padding.
    pub pad1: [u8; 2],
}

/// `struct arch_vcpu_info` on Arm: empty (C gives it size 0), so
/// `vcpu_info` is 48 bytes there.
#[cfg(target_arch = "arm")]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ArchVcpuInfo {}

/// `struct arch_vcpu_info` on x86_64.
#[cfg(not(target_arch = "arm"))]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ArchVcpuInfo {
    /// Faulting address of the last page fault (PV).
    pub cr2: u64,
    /// Padding.
    pub pad: u64,
}

/// `struct vcpu_info`: per-vCPU event and time state.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VcpuInfo {
    /// Set by Xen when an event is pending for this vCPU.
    pub evtchn_upcall_pending: u8,
    /// Masks the upcall (PV; on HVM/PVH the guest's IF is the mask).
    pub evtchn_upcall_mask: u8,
    /// Which words of `evtchn_pending` have bits set.
    pub evtchn_pending_sel: u64,
    /// Architecture part.
    pub arch: ArchVcpuInfo,
    /// The PV clock.
    pub time: VcpuTimeInfo,
}

/// `struct arch_shared_info` on x86_64. (Arm's is empty; it is the last
/// field of the page, so keeping these words there moves nothing.)
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ArchSharedInfo {
    /// Highest pfn + 1 (PV).
    pub max_pfn: u64,
    /// Frame list list of the p2m (PV, for save/restore).
    pub pfn_to_mfn_frame_list_list: u64,
    /// NMI reason bits.
    pub nmi_reason: u64,
    /// cr3 of the p2m address space.
    pub p2m_cr3: u64,
    /// Virtual address of the p2m list.
    pub p2m_vaddr: u64,
    /// Generation count of the p2m mapping.
    pub p2m_generation: u64,
}

/// `struct shared_info`: the page Xen shares with every guest.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SharedInfo {
    /// vCPU state of the first vCPUs (32 on x86, 1 on Arm).
    pub vcpu_info: [VcpuInfo; XEN_LEGACY_MAX_VCPUS],
    /// 2-level event channel pending bits.
    pub evtchn_pending: [u64; XEN_ULONG_BITS],
    /// 2-level event channel mask bits.
    pub evtchn_mask: [u64; XEN_ULONG_BITS],
    /// Odd while Xen updates the wallclock.
    pub wc_version: u32,
    /// Wallclock seconds at system time 0 (low 32 bits).
    pub wc_sec: u32,
    /// Wallclock nanoseconds at system time 0.
    pub wc_nsec: u32,
    /// Wallclock seconds, high 32 bits.
    pub wc_sec_hi: u32,
    /// Architecture part.
    pub arch: ArchSharedInfo,
}
