//! x87/SSE/AVX state: turned on once at boot, before any service code runs,
//! so that the crypto code may take SIMD routes chosen by CPUID.
//!
//! - PVH (ring 0 in an HVM container, CR0 = PE|ET at entry): CR0.EM and
//!   CR0.TS cleared, CR0.MP and CR0.NE set; CR4.OSFXSR and CR4.OSXMMEXCPT
//!   set; CR4.OSXSAVE set when CPUID has XSAVE; XCR0 written with XSETBV.
//! - PV (ring 3 under Xen): Xen owns CR0 and CR4. The virtual CR0.TS is
//!   cleared with `HYPERVISOR_fpu_taskswitch(0)`; CR4.OSFXSR/OSXMMEXCPT are
//!   always on (Xen shows them read-only); CR4.OSXSAVE is one of the bits a
//!   PV guest controls: the `mov %cr4` write traps and Xen's emulator
//!   (xen/arch/x86/pv/emul-priv-op.c, `pv_fixup_guest_cr4`) keeps it when
//!   the domain's CPUID policy has XSAVE. XSETBV traps too and Xen's
//!   emulator checks the value against the policy and loads it.
//!
//! XCR0 gets x87, SSE and AVX (YMM) state, each only when the CPUID leaf
//! 0xD reports it: those are the registers the crypto routes use; AVX-512
//! and other state would only make every save larger.
//!
//! Nothing saves vector registers on event upcalls or exceptions, and
//! nothing needs to (docs/kernel.md, "Vector state"): the kernel and the
//! services are compiled for the soft-float target, the upcall stubs in
//! boot.S touch general registers only, exceptions are fatal, and the
//! executor is cooperative, so vector registers are live only inside a
//! crypto function that runs to completion in task context.

use core::sync::atomic::{AtomicU64, Ordering};

/// XCR0 bits.
const XCR0_X87: u64 = 1 << 0;
const XCR0_SSE: u64 = 1 << 1;
const XCR0_YMM: u64 = 1 << 2;

const CR0_MP: u64 = 1 << 1;
const CR0_EM: u64 = 1 << 2;
const CR0_TS: u64 = 1 << 3;
const CR0_NE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const CR4_OSXSAVE: u64 = 1 << 18;

/// CPUID.1:ECX bits.
const CPUID1_XSAVE: u32 = 1 << 26;
const CPUID1_OSXSAVE: u32 = 1 << 27;
const CPUID1_AVX: u32 = 1 << 28;

/// `HYPERVISOR_fpu_taskswitch` (xen/include/public/xen.h).
const HYPERVISOR_FPU_TASKSWITCH: usize = 5;

/// What [`init`] turned on: bit 63 = SSE usable, low bits = XCR0 (0 when
/// XSAVE is not on).
static STATE: AtomicU64 = AtomicU64::new(0);
const SSE_ON: u64 = 1 << 63;

/// The vector state the kernel enabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimdState {
    /// SSE (and x87) state is enabled: CR4.OSFXSR on, CR0.TS/EM clear.
    pub sse: bool,
    /// XCR0 as written (0 when the CPU or Xen offers no XSAVE).
    pub xcr0: u64,
}

impl SimdState {
    /// AVX (YMM) state is enabled in XCR0.
    pub fn avx(&self) -> bool {
        self.xcr0 & (XCR0_SSE | XCR0_YMM) == XCR0_SSE | XCR0_YMM
    }
}

/// The vector state [`init`] enabled.
pub fn simd_state() -> SimdState {
    let s = STATE.load(Ordering::Relaxed);
    SimdState {
        sse: s & SSE_ON != 0,
        xcr0: s & !SSE_ON,
    }
}

fn read_cr0() -> u64 {
    let v: u64;
    // SAFETY: reading CR0 has no side effects (PVH: ring 0).
    unsafe { core::arch::asm!("mov %cr0, {}", out(reg) v, options(att_syntax, nomem, nostack)) };
    v
}

fn read_cr4() -> u64 {
    let v: u64;
    // SAFETY: reading CR4 has no side effects (PVH: ring 0; PV: Xen
    // emulates the read and returns the guest's view).
    unsafe { core::arch::asm!("mov %cr4, {}", out(reg) v, options(att_syntax, nomem, nostack)) };
    v
}

/// # Safety
/// Only the FPU-control and XSAVE bits may change, at boot.
unsafe fn write_cr4(v: u64) {
    // SAFETY: the caller changes only bits that enable FPU state.
    unsafe { core::arch::asm!("mov {}, %cr4", in(reg) v, options(att_syntax, nostack)) };
}

fn xgetbv0() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: only called with CR4.OSXSAVE on (checked through CPUID.1
    // OSXSAVE), where XGETBV(0) is defined at every privilege level.
    unsafe {
        core::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi,
            options(nomem, nostack))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Picks XCR0 from what CPUID offers and writes it; returns the value now
/// in XCR0 (0 when OSXSAVE did not come on).
fn setup_xcr0() -> u64 {
    if core::arch::x86_64::__cpuid(1).ecx & CPUID1_OSXSAVE == 0 {
        return 0;
    }
    let cpuid1 = core::arch::x86_64::__cpuid(1).ecx;
    let d = core::arch::x86_64::__cpuid_count(0xd, 0);
    let supported = (u64::from(d.edx) << 32) | u64::from(d.eax);
    let mut want = XCR0_X87 | XCR0_SSE;
    if cpuid1 & CPUID1_AVX != 0 {
        want |= XCR0_YMM;
    }
    want &= supported;
    // x87 state is architecturally required in XCR0; YMM needs SSE.
    if want & XCR0_X87 == 0 || (want & XCR0_YMM != 0 && want & XCR0_SSE == 0) {
        return xgetbv0();
    }
    if xgetbv0() != want {
        // SAFETY: `want` holds only components CPUID leaf 0xD reports, with
        // x87 set and YMM only together with SSE, so XSETBV accepts it
        // (natively, and in Xen's PV emulation which checks the same).
        unsafe {
            core::arch::asm!("xsetbv", in("ecx") 0u32, in("eax") want as u32,
                in("edx") (want >> 32) as u32, options(nomem, nostack))
        };
    }
    xgetbv0()
}

/// Resets the x87 and SSE control state to the power-on defaults (all
/// exceptions masked, round to nearest).
fn reset_fpu() {
    let mxcsr: u32 = 0x1f80;
    // SAFETY: FNINIT and LDMXCSR only load control state; CR0/CR4 were
    // set up so that neither faults.
    unsafe {
        core::arch::asm!("fninit", "ldmxcsr ({})", in(reg) &mxcsr,
            options(att_syntax, readonly, nostack))
    };
}

/// PVH: enables the state through CR0, CR4 and XCR0.
pub(super) fn init_pvh() {
    let cr0 = (read_cr0() & !(CR0_EM | CR0_TS)) | CR0_MP | CR0_NE;
    // SAFETY: ring 0 at boot; only the FPU control bits change.
    unsafe { core::arch::asm!("mov {}, %cr0", in(reg) cr0, options(att_syntax, nostack)) };
    let mut cr4 = read_cr4() | CR4_OSFXSR | CR4_OSXMMEXCPT;
    if core::arch::x86_64::__cpuid(1).ecx & CPUID1_XSAVE != 0 {
        cr4 |= CR4_OSXSAVE;
    }
    // SAFETY: the bits set enable FXSAVE/SSE and XSAVE, which CPUID offers.
    unsafe { write_cr4(cr4) };
    let xcr0 = setup_xcr0();
    reset_fpu();
    STATE.store(SSE_ON | xcr0, Ordering::Relaxed);
}

/// PV: clears the virtual CR0.TS, asks for CR4.OSXSAVE and sets XCR0.
pub(super) fn init_pv() {
    // SAFETY: fpu_taskswitch takes a plain integer (0 = clear TS).
    let ts = unsafe { xen::hypercall::hypercall(HYPERVISOR_FPU_TASKSWITCH, 0, 0, 0, 0, 0) };
    if ts != 0 {
        // The crypto code takes SSE routes on every amd64 CPU: with CR0.TS
        // left set they would fault, so stop here with a clear message.
        crate::boot::early_fatal(format_args!("cannot clear CR0.TS (fpu_taskswitch: {ts})"));
    }
    if core::arch::x86_64::__cpuid(1).ecx & CPUID1_XSAVE != 0 {
        let cr4 = read_cr4();
        if cr4 & CR4_OSXSAVE == 0 {
            // SAFETY: Xen emulates the write and keeps only the bits a PV
            // guest controls (OSXSAVE among them when its policy has XSAVE).
            unsafe { write_cr4(cr4 | CR4_OSXSAVE) };
        }
    }
    // Xen's real CR4 always has OSFXSR and OSXMMEXCPT for PV guests.
    let sse = read_cr4() & CR4_OSFXSR != 0;
    let xcr0 = setup_xcr0();
    if sse {
        reset_fpu();
    }
    STATE.store(if sse { SSE_ON } else { 0 } | xcr0, Ordering::Relaxed);
}
