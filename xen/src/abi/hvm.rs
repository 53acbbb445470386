//! `arch-x86/hvm/start_info.h`, `hvm/params.h`, `hvm/hvm_op.h`: the PVH
//! start of day and HVM parameters.

/// `XEN_HVM_START_MAGIC_VALUE`
pub const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
/// `XEN_HVM_MEMMAP_TYPE_RAM`
pub const XEN_HVM_MEMMAP_TYPE_RAM: u32 = 1;

/// `struct hvm_start_info`: what Xen hands a PVH guest in `%ebx`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct HvmStartInfo {
    /// `XEN_HVM_START_MAGIC_VALUE`.
    pub magic: u32,
    /// Structure version (memmap fields from version 1).
    pub version: u32,
    /// `SIF_*` flags.
    pub flags: u32,
    /// Number of modules.
    pub nr_modules: u32,
    /// Physical address of the module list.
    pub modlist_paddr: u64,
    /// Physical address of the NUL-terminated command line.
    pub cmdline_paddr: u64,
    /// Physical address of the ACPI RSDP.
    pub rsdp_paddr: u64,
    /// Physical address of the memory map (version >= 1).
    pub memmap_paddr: u64,
    /// Entries in the memory map (version >= 1).
    pub memmap_entries: u32,
    /// Must be zero.
    pub reserved: u32,
}

/// `struct hvm_memmap_table_entry`: one memory map entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct HvmMemmapTableEntry {
    /// Base address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// `XEN_HVM_MEMMAP_TYPE_*`.
    pub type_: u32,
    /// Must be zero.
    pub reserved: u32,
}

/// `HVMOP_set_param`
pub const HVMOP_SET_PARAM: u32 = 0;
/// `HVMOP_get_param`
pub const HVMOP_GET_PARAM: u32 = 1;
/// `HVM_PARAM_CALLBACK_IRQ`: how events are delivered.
pub const HVM_PARAM_CALLBACK_IRQ: u32 = 0;
/// `HVM_PARAM_STORE_PFN`
pub const HVM_PARAM_STORE_PFN: u32 = 1;
/// `HVM_PARAM_STORE_EVTCHN`
pub const HVM_PARAM_STORE_EVTCHN: u32 = 2;
/// `HVM_PARAM_CONSOLE_PFN`
pub const HVM_PARAM_CONSOLE_PFN: u32 = 17;
/// `HVM_PARAM_CONSOLE_EVTCHN`
pub const HVM_PARAM_CONSOLE_EVTCHN: u32 = 18;
/// `HVM_PARAM_CALLBACK_TYPE_VECTOR`, in bits 63:56 of the callback param.
pub const HVM_PARAM_CALLBACK_TYPE_VECTOR: u64 = 2;

/// `struct xen_hvm_param`: argument of `HVMOP_{get,set}_param`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct XenHvmParam {
    /// Domain (`DOMID_SELF`).
    pub domid: u16,
    /// Padding.
    pub pad: u16,
    /// `HVM_PARAM_*`.
    pub index: u32,
    /// The value.
    pub value: u64,
}
