//! The one place that traps into Xen.
//!
//! On amd64, PV and PVH guests alike call into the hypercall page (Xen fills
//! it: for PV through the `XEN_ELFNOTE_HYPERCALL_PAGE` note, for PVH when the
//! kernel writes the page's address to the MSR named by the Xen CPUID leaf).
//! Entry `nr` lives at `hypercall_page + 32 * nr`; arguments go in rdi, rsi,
//! rdx, r10, r8 and the result comes back in rax. The PV path is a
//! `syscall`, which clobbers rcx and r11; a debug Xen also scribbles over
//! the argument registers, so all of them are declared clobbered.
//!
//! Above the raw traps sit typed wrappers, one per operation the kernel
//! uses, each returning a [`XenError`] on a negative result. They take
//! references to the argument structures of [`crate::abi`], so the only
//! unsafety left to callers is the meaning of addresses handed to Xen
//! (page-table updates, physmap changes), which those wrappers mark
//! `unsafe` themselves.

use core::fmt;

use crate::abi::event_channel::*;
use crate::abi::grant_table::*;
use crate::abi::hvm::*;
use crate::abi::memory::*;
use crate::abi::sched::*;
use crate::abi::vcpu::*;
use crate::abi::xen::{
    hypercall as nr, MmuUpdate, CONSOLEIO_WRITE, XENVER_EXTRAVERSION, XENVER_VERSION,
};
use crate::abi::{DomId, Port, XenPfn, DOMID_SELF};

/// A hypercall failed with a (negated) Xen errno value.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct XenError(pub i32);

impl XenError {
    /// `EPERM`
    pub const EPERM: XenError = XenError(1);
    /// `ENOENT`
    pub const ENOENT: XenError = XenError(2);
    /// `ENOMEM`
    pub const ENOMEM: XenError = XenError(12);
    /// `EINVAL`
    pub const EINVAL: XenError = XenError(22);
    /// `ENOSYS`
    pub const ENOSYS: XenError = XenError(38);

    /// The errno's symbolic name, where known.
    pub fn name(self) -> &'static str {
        match self.0 {
            1 => "EPERM",
            2 => "ENOENT",
            3 => "ESRCH",
            5 => "EIO",
            7 => "E2BIG",
            11 => "EAGAIN",
            12 => "ENOMEM",
            13 => "EACCES",
            14 => "EFAULT",
            16 => "EBUSY",
            17 => "EEXIST",
            22 => "EINVAL",
            28 => "ENOSPC",
            38 => "ENOSYS",
            95 => "EOPNOTSUPP",
            _ => "E?",
        }
    }

    /// Turns a raw hypercall return value into a result.
    pub fn check(ret: isize) -> Result<usize, XenError> {
        if ret < 0 {
            Err(XenError(ret.unsigned_abs().min(i32::MAX as usize) as i32))
        } else {
            Ok(ret as usize)
        }
    }
}

impl fmt::Debug for XenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name(), self.0)
    }
}

impl fmt::Display for XenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Xen error {} ({})", self.name(), self.0)
    }
}

/// A grant-table operation completed but reported a `GNTST_*` status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrantStatus(pub i16);

impl GrantStatus {
    /// Turns a status field into a result.
    pub fn check(status: i16) -> Result<(), GrantStatus> {
        if status == GNTST_OKAY {
            Ok(())
        } else {
            Err(GrantStatus(status))
        }
    }
    /// The status' symbolic name.
    pub fn name(self) -> &'static str {
        match self.0 {
            -1 => "GNTST_general_error",
            -2 => "GNTST_bad_domain",
            -3 => "GNTST_bad_gntref",
            -4 => "GNTST_bad_handle",
            -5 => "GNTST_bad_virt_addr",
            -6 => "GNTST_bad_dev_addr",
            -7 => "GNTST_no_device_space",
            -8 => "GNTST_permission_denied",
            -9 => "GNTST_bad_page",
            -10 => "GNTST_bad_copy_arg",
            -11 => "GNTST_address_too_big",
            -12 => "GNTST_eagain",
            -13 => "GNTST_no_space",
            _ => "GNTST_?",
        }
    }
}

impl fmt::Display for GrantStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "none"))]
mod raw {
    extern "C" {
        /// The page Xen fills with hypercall stubs; defined by the kernel's
        /// boot assembly, page aligned, inside the image.
        static hypercall_page: [u8; 4096];
    }

    /// Traps into Xen with up to five arguments.
    ///
    /// # Safety
    /// The arguments must be valid for hypercall `nr`: any pointer among
    /// them must point to memory of the type and size the operation reads
    /// or writes, live for the call.
    #[inline]
    pub unsafe fn hypercall(
        nr: usize,
        a1: usize,
        a2: usize,
        a3: usize,
        a4: usize,
        a5: usize,
    ) -> isize {
        let ret: isize;
        // SAFETY: the hypercall page was installed before the first call
        // (PV: by Xen at load time; PVH: by the boot code before any other
        // hypercall). Entry `nr` is a 32-byte stub that follows the C
        // calling convention for the registers declared here; the caller
        // vouches for the arguments.
        unsafe {
            let entry = core::ptr::addr_of!(hypercall_page) as usize + nr * 32;
            core::arch::asm!(
                "call {entry}",
                entry = in(reg) entry,
                inlateout("rax") nr => ret,
                inlateout("rdi") a1 => _,
                inlateout("rsi") a2 => _,
                inlateout("rdx") a3 => _,
                inlateout("r10") a4 => _,
                inlateout("r8") a5 => _,
                out("rcx") _,
                out("r11") _,
                options(nostack)
            );
        }
        ret
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "none"))]
pub use raw::hypercall;

/// Arm (arm32 here): `hvc #0xEA1` with the hypercall number in r12,
/// arguments in r0-r4 and the result in r0 (xen/include/public/arch-arm.h).
/// Xen may clobber r12 and the argument registers; all are declared so.
/// Pointers are guest-physical on Arm; with the kernel's 1:1 map they equal
/// the virtual addresses the wrappers pass.
#[cfg(all(target_arch = "arm", target_os = "none"))]
mod raw_arm {
    /// Traps into Xen with up to five arguments.
    ///
    /// # Safety
    /// The arguments must be valid for hypercall `nr`: any pointer among
    /// them must point to memory of the type and size the operation reads
    /// or writes, live for the call.
    #[inline]
    pub unsafe fn hypercall(
        nr: usize,
        a1: usize,
        a2: usize,
        a3: usize,
        a4: usize,
        a5: usize,
    ) -> isize {
        let ret: isize;
        // SAFETY: `hvc #0xEA1` is Xen's hypercall trap on Arm; it touches
        // only the registers declared here and the memory the caller
        // vouches for.
        unsafe {
            core::arch::asm!(
                // `hvc #0xEA1`, encoded by hand (A32): the target's
                // baseline lacks the virtualization extension's mnemonic.
                ".inst 0xe140ea71",
                in("r12") nr,
                inlateout("r0") a1 => ret,
                inlateout("r1") a2 => _,
                inlateout("r2") a3 => _,
                inlateout("r3") a4 => _,
                inlateout("r4") a5 => _,
                options(nostack)
            );
        }
        ret
    }
}

#[cfg(all(target_arch = "arm", target_os = "none"))]
pub use raw_arm::hypercall;

/// Host builds (unit tests) have no hypervisor: every hypercall fails with
/// `ENOSYS`, so code that reaches one by mistake gets an error, not UB.
///
/// # Safety
/// Always safe on the host; `unsafe` to match the real signature.
#[cfg(not(all(any(target_arch = "x86_64", target_arch = "arm"), target_os = "none")))]
pub unsafe fn hypercall(
    _nr: usize,
    _a1: usize,
    _a2: usize,
    _a3: usize,
    _a4: usize,
    _a5: usize,
) -> isize {
    -38
}

fn ptr<T>(arg: &mut T) -> usize {
    arg as *mut T as usize
}

/// `HYPERVISOR_event_channel_op(cmd, arg)`.
fn evtchn_op<T>(cmd: u32, arg: &mut T) -> Result<(), XenError> {
    // SAFETY: every caller passes the structure that `cmd` expects.
    XenError::check(unsafe { hypercall(nr::EVENT_CHANNEL_OP, cmd as usize, ptr(arg), 0, 0, 0) })
        .map(|_| ())
}

/// Allocates a port that `remote` may bind to.
pub fn evtchn_alloc_unbound(remote: DomId) -> Result<Port, XenError> {
    let mut op = EvtchnAllocUnbound {
        dom: DOMID_SELF,
        remote_dom: remote,
        port: 0,
    };
    evtchn_op(EVTCHNOP_ALLOC_UNBOUND, &mut op)?;
    Ok(op.port)
}

/// Binds a local port to `remote`'s unbound port `remote_port`.
pub fn evtchn_bind_interdomain(remote: DomId, remote_port: Port) -> Result<Port, XenError> {
    let mut op = EvtchnBindInterdomain {
        remote_dom: remote,
        remote_port,
        local_port: 0,
    };
    evtchn_op(EVTCHNOP_BIND_INTERDOMAIN, &mut op)?;
    Ok(op.local_port)
}

/// Binds a virtual IRQ (`VIRQ_*`) of vCPU `vcpu` to a new port.
pub fn evtchn_bind_virq(virq: u32, vcpu: u32) -> Result<Port, XenError> {
    let mut op = EvtchnBindVirq {
        virq,
        vcpu,
        port: 0,
    };
    evtchn_op(EVTCHNOP_BIND_VIRQ, &mut op)?;
    Ok(op.port)
}

/// Notifies the other end of `port`.
pub fn evtchn_send(port: Port) -> Result<(), XenError> {
    evtchn_op(EVTCHNOP_SEND, &mut EvtchnPort { port })
}

/// Closes `port`.
pub fn evtchn_close(port: Port) -> Result<(), XenError> {
    evtchn_op(EVTCHNOP_CLOSE, &mut EvtchnPort { port })
}

/// Asks Xen to unmask `port` (and re-raise it if pending).
pub fn evtchn_unmask(port: Port) -> Result<(), XenError> {
    evtchn_op(EVTCHNOP_UNMASK, &mut EvtchnPort { port })
}

/// `SCHEDOP_shutdown` with a `SHUTDOWN_*` reason. Returns only if Xen refused.
pub fn sched_shutdown(reason: u32) -> XenError {
    let mut op = SchedShutdown { reason };
    // SAFETY: `op` is the `sched_shutdown` argument.
    let r = unsafe {
        hypercall(
            nr::SCHED_OP,
            SCHEDOP_SHUTDOWN as usize,
            ptr(&mut op),
            0,
            0,
            0,
        )
    };
    XenError(r.unsigned_abs() as i32)
}

/// `SCHEDOP_block`: sleeps until an event is pending. On PV this also
/// clears the vCPU's upcall mask (the kernel's upcall handler sets it again).
pub fn sched_block() -> Result<(), XenError> {
    // SAFETY: `SCHEDOP_block` takes no argument.
    XenError::check(unsafe { hypercall(nr::SCHED_OP, SCHEDOP_BLOCK as usize, 0, 0, 0, 0) })
        .map(|_| ())
}

/// `SCHEDOP_yield`.
pub fn sched_yield() -> Result<(), XenError> {
    // SAFETY: `SCHEDOP_yield` takes no argument.
    XenError::check(unsafe { hypercall(nr::SCHED_OP, SCHEDOP_YIELD as usize, 0, 0, 0, 0) })
        .map(|_| ())
}

/// `HYPERVISOR_console_io(CONSOLEIO_write)`: Xen's own console. A release
/// Xen drops this for unprivileged domains; it is the early/emergency path.
pub fn console_io_write(bytes: &[u8]) -> Result<(), XenError> {
    // SAFETY: Xen reads `len` bytes from `ptr`, which `bytes` covers.
    XenError::check(unsafe {
        hypercall(
            nr::CONSOLE_IO,
            CONSOLEIO_WRITE as usize,
            bytes.len(),
            bytes.as_ptr() as usize,
            0,
            0,
        )
    })
    .map(|_| ())
}

/// The running Xen's version as `(major, minor, extraversion)`.
pub fn xen_version() -> Result<(u32, u32, [u8; 16]), XenError> {
    // SAFETY: XENVER_version takes no argument.
    let v = XenError::check(unsafe {
        hypercall(nr::XEN_VERSION, XENVER_VERSION as usize, 0, 0, 0, 0)
    })?;
    let mut extra = [0u8; 16];
    // SAFETY: XENVER_extraversion writes a 16-byte string to its argument.
    XenError::check(unsafe {
        hypercall(
            nr::XEN_VERSION,
            XENVER_EXTRAVERSION as usize,
            extra.as_mut_ptr() as usize,
            0,
            0,
            0,
        )
    })?;
    Ok(((v >> 16) as u32, (v & 0xffff) as u32, extra))
}

/// `VCPUOP_set_singleshot_timer`: raise `VIRQ_TIMER` on `vcpu` at system
/// time `deadline_ns` (at once if that is in the past).
pub fn set_singleshot_timer(vcpu: u32, deadline_ns: u64) -> Result<(), XenError> {
    let mut op = VcpuSetSingleshotTimer {
        timeout_abs_ns: deadline_ns,
        flags: 0,
    };
    // SAFETY: `op` is the `vcpu_set_singleshot_timer` argument.
    XenError::check(unsafe {
        hypercall(
            nr::VCPU_OP,
            VCPUOP_SET_SINGLESHOT_TIMER as usize,
            vcpu as usize,
            ptr(&mut op),
            0,
            0,
        )
    })
    .map(|_| ())
}

/// `VCPUOP_register_vcpu_info`: Xen keeps `vcpu`'s event and time state
/// at `offset` in guest frame `gfn` from now on (it copies the current
/// state there first).
///
/// # Safety
/// The `vcpu_info`-sized range at `gfn`/`offset` must be memory the
/// kernel dedicates to this for the domain's lifetime.
pub unsafe fn register_vcpu_info(vcpu: u32, gfn: u64, offset: u32) -> Result<(), XenError> {
    let mut op = VcpuRegisterVcpuInfo {
        mfn: gfn,
        offset,
        rsvd: 0,
    };
    // SAFETY: `op` is the `vcpu_register_vcpu_info` argument; the caller
    // vouches for the frame.
    XenError::check(unsafe {
        hypercall(
            nr::VCPU_OP,
            VCPUOP_REGISTER_VCPU_INFO as usize,
            vcpu as usize,
            ptr(&mut op),
            0,
            0,
        )
    })
    .map(|_| ())
}

/// `VCPUOP_stop_singleshot_timer`.
pub fn stop_singleshot_timer(vcpu: u32) -> Result<(), XenError> {
    // SAFETY: no argument structure.
    XenError::check(unsafe {
        hypercall(
            nr::VCPU_OP,
            VCPUOP_STOP_SINGLESHOT_TIMER as usize,
            vcpu as usize,
            0,
            0,
            0,
        )
    })
    .map(|_| ())
}

/// `VCPUOP_stop_periodic_timer`: PV vCPUs start with a 10 ms tick; an idle
/// moat guest must not wake for it.
pub fn stop_periodic_timer(vcpu: u32) -> Result<(), XenError> {
    // SAFETY: no argument structure.
    XenError::check(unsafe {
        hypercall(
            nr::VCPU_OP,
            VCPUOP_STOP_PERIODIC_TIMER as usize,
            vcpu as usize,
            0,
            0,
            0,
        )
    })
    .map(|_| ())
}

/// `HVMOP_get_param` for this domain.
pub fn hvm_get_param(index: u32) -> Result<u64, XenError> {
    let mut op = XenHvmParam {
        domid: DOMID_SELF,
        pad: 0,
        index,
        value: 0,
    };
    // SAFETY: `op` is the `xen_hvm_param` argument.
    XenError::check(unsafe {
        hypercall(nr::HVM_OP, HVMOP_GET_PARAM as usize, ptr(&mut op), 0, 0, 0)
    })?;
    Ok(op.value)
}

/// `HVMOP_set_param` for this domain.
///
/// # Safety
/// Some parameters change how Xen delivers events (`HVM_PARAM_CALLBACK_IRQ`):
/// the caller must have the matching handler installed.
pub unsafe fn hvm_set_param(index: u32, value: u64) -> Result<(), XenError> {
    let mut op = XenHvmParam {
        domid: DOMID_SELF,
        pad: 0,
        index,
        value,
    };
    // SAFETY: `op` is the `xen_hvm_param` argument.
    XenError::check(unsafe {
        hypercall(nr::HVM_OP, HVMOP_SET_PARAM as usize, ptr(&mut op), 0, 0, 0)
    })
    .map(|_| ())
}

/// `XENMEM_memory_map`: fills `buf` with this domain's E820 map and returns
/// the number of entries written.
pub fn memory_map(buf: &mut [E820Entry]) -> Result<usize, XenError> {
    let mut op = XenMemoryMap {
        nr_entries: buf.len().min(u32::MAX as usize) as u32,
        buffer: buf.as_mut_ptr(),
    };
    // SAFETY: Xen writes at most `nr_entries` entries to `buffer`.
    XenError::check(unsafe {
        hypercall(
            nr::MEMORY_OP,
            XENMEM_MEMORY_MAP as usize,
            ptr(&mut op),
            0,
            0,
            0,
        )
    })?;
    Ok((op.nr_entries as usize).min(buf.len()))
}

/// `XENMEM_add_to_physmap`: map Xen's page `idx` of `space` at guest frame `gpfn`.
///
/// # Safety
/// Whatever was at `gpfn` is replaced: no live Rust object may use it.
pub unsafe fn add_to_physmap(space: u32, idx: u64, gpfn: XenPfn) -> Result<(), XenError> {
    let mut op = XenAddToPhysmap {
        domid: DOMID_SELF,
        size: 0,
        space,
        idx,
        gpfn,
    };
    // SAFETY: `op` is the `xen_add_to_physmap` argument; the caller vouches for `gpfn`.
    XenError::check(unsafe {
        hypercall(
            nr::MEMORY_OP,
            XENMEM_ADD_TO_PHYSMAP as usize,
            ptr(&mut op),
            0,
            0,
            0,
        )
    })
    .map(|_| ())
}

/// `HYPERVISOR_update_va_mapping` (PV): set the PTE that maps `va`.
///
/// # Safety
/// Changes the address space: nothing may hold references into the old
/// mapping of `va`.
pub unsafe fn update_va_mapping(va: u64, pte: u64, flags: u64) -> Result<(), XenError> {
    // SAFETY: plain values; the caller vouches for the mapping change.
    XenError::check(unsafe {
        hypercall(
            nr::UPDATE_VA_MAPPING,
            va as usize,
            pte as usize,
            flags as usize,
            0,
            0,
        )
    })
    .map(|_| ())
}

/// `HYPERVISOR_mmu_update` (PV): apply page-table writes for this domain.
///
/// # Safety
/// Changes the address space, as [`update_va_mapping`].
pub unsafe fn mmu_update(reqs: &[MmuUpdate]) -> Result<(), XenError> {
    let mut done: u32 = 0;
    // SAFETY: Xen reads `len` requests and writes the success count.
    XenError::check(unsafe {
        hypercall(
            nr::MMU_UPDATE,
            reqs.as_ptr() as usize,
            reqs.len(),
            ptr(&mut done),
            DOMID_SELF as usize,
            0,
        )
    })
    .map(|_| ())
}

/// `GNTTABOP_query_size`: `(current, maximum)` grant table frames.
pub fn gnttab_query_size() -> Result<(u32, u32), XenError> {
    let mut op = GnttabQuerySize {
        dom: DOMID_SELF,
        ..Default::default()
    };
    // SAFETY: one `gnttab_query_size`.
    XenError::check(unsafe {
        hypercall(
            nr::GRANT_TABLE_OP,
            GNTTABOP_QUERY_SIZE as usize,
            ptr(&mut op),
            1,
            0,
            0,
        )
    })?;
    GrantStatus::check(op.status).map_err(|_| XenError::EINVAL)?;
    Ok((op.nr_frames, op.max_nr_frames))
}

/// `GNTTABOP_setup_table`: grow the table to `frames.len()` frames and
/// return their machine frame numbers in `frames` (PV).
pub fn gnttab_setup_table(frames: &mut [XenPfn]) -> Result<(), XenError> {
    let mut op = GnttabSetupTable {
        dom: DOMID_SELF,
        nr_frames: frames.len() as u32,
        status: 0,
        frame_list: frames.as_mut_ptr(),
    };
    // SAFETY: Xen writes `nr_frames` entries to `frame_list`.
    XenError::check(unsafe {
        hypercall(
            nr::GRANT_TABLE_OP,
            GNTTABOP_SETUP_TABLE as usize,
            ptr(&mut op),
            1,
            0,
            0,
        )
    })?;
    GrantStatus::check(op.status).map_err(|_| XenError::EINVAL)
}

/// `GNTTABOP_copy` for a batch; per-entry results are in each `status`.
pub fn gnttab_copy(ops: &mut [GnttabCopy]) -> Result<(), XenError> {
    // SAFETY: Xen reads and updates `len` copy descriptors; the frames they
    // name are checked by Xen against grants and ownership.
    XenError::check(unsafe {
        hypercall(
            nr::GRANT_TABLE_OP,
            GNTTABOP_COPY as usize,
            ops.as_mut_ptr() as usize,
            ops.len(),
            0,
            0,
        )
    })
    .map(|_| ())
}

/// `GNTTABOP_map_grant_ref` for one grant.
///
/// # Safety
/// `op.host_addr` is replaced by the foreign frame: it must be a mapping
/// (PV: virtual address with a page table; PVH: an unpopulated guest frame)
/// that nothing else uses.
pub unsafe fn gnttab_map(op: &mut GnttabMapGrantRef) -> Result<(), XenError> {
    // SAFETY: one map descriptor; the caller vouches for `host_addr`.
    XenError::check(unsafe {
        hypercall(
            nr::GRANT_TABLE_OP,
            GNTTABOP_MAP_GRANT_REF as usize,
            ptr(op),
            1,
            0,
            0,
        )
    })
    .map(|_| ())
}

/// `GNTTABOP_unmap_grant_ref` for one mapping.
///
/// # Safety
/// No reference into the mapping may outlive this call.
pub unsafe fn gnttab_unmap(op: &mut GnttabUnmapGrantRef) -> Result<(), XenError> {
    // SAFETY: one unmap descriptor; the caller vouches for the mapping.
    XenError::check(unsafe {
        hypercall(
            nr::GRANT_TABLE_OP,
            GNTTABOP_UNMAP_GRANT_REF as usize,
            ptr(op),
            1,
            0,
            0,
        )
    })
    .map(|_| ())
}
