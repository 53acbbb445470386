//! `xen/vcpu.h`: per-vCPU operations.

/// `VCPUOP_stop_periodic_timer`
pub const VCPUOP_STOP_PERIODIC_TIMER: u32 = 7;
/// `VCPUOP_set_singleshot_timer`
pub const VCPUOP_SET_SINGLESHOT_TIMER: u32 = 8;
/// `VCPUOP_stop_singleshot_timer`
pub const VCPUOP_STOP_SINGLESHOT_TIMER: u32 = 9;
/// `VCPUOP_register_vcpu_info`
pub const VCPUOP_REGISTER_VCPU_INFO: u32 = 10;

/// `struct vcpu_set_singleshot_timer`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VcpuSetSingleshotTimer {
    /// Absolute system time of expiry in ns.
    pub timeout_abs_ns: u64,
    /// `VCPU_SSHOTTMR_*`.
    pub flags: u32,
}

/// `struct vcpu_register_vcpu_info`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VcpuRegisterVcpuInfo {
    /// Frame of the new vcpu_info.
    pub mfn: u64,
    /// Offset in that frame.
    pub offset: u32,
    /// Reserved.
    pub rsvd: u32,
}
