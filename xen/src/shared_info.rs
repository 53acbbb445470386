//! The shared info page: event channel bitmaps, per-vCPU upcall state, the
//! PV clock records and the wallclock.
//!
//! Xen writes this page concurrently with the guest, so every access here
//! is an atomic or volatile access through a raw pointer, never a Rust
//! reference to the whole structure. This module is one of the few places
//! with `unsafe`; the rest of the crate sees safe methods.

// On Arm the page holds one vcpu_info, so the clamps below are constant.
#![cfg_attr(target_arch = "arm", allow(clippy::unnecessary_min_or_max))]

use core::ptr::{addr_of, addr_of_mut, NonNull};
use core::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicU8, Ordering};

use crate::abi::xen::{SharedInfo, VcpuInfo, VcpuTimeInfo, XEN_LEGACY_MAX_VCPUS, XEN_ULONG_BITS};
use crate::abi::Port;

/// Number of ports the 2-level ABI addresses on amd64 (64 * 64).
pub const NR_EVENT_CHANNELS: u32 = (XEN_ULONG_BITS * XEN_ULONG_BITS) as u32;

/// A handle on the mapped shared info page.
#[derive(Clone, Copy, Debug)]
pub struct SharedInfoPage {
    ptr: NonNull<SharedInfo>,
    /// vCPU 0's `vcpu_info` when the kernel moved it out of the page with
    /// `VCPUOP_register_vcpu_info` (Arm); `None`: the page's own slot.
    vcpu0: Option<NonNull<VcpuInfo>>,
}

// SAFETY: the page is plain memory shared with Xen; all accesses are atomic
// or volatile, so moving the handle between contexts is sound.
unsafe impl Send for SharedInfoPage {}
// SAFETY: as above: no access goes through a `&SharedInfo`.
unsafe impl Sync for SharedInfoPage {}

/// The wallclock at system time zero, as Xen publishes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WallClockBase {
    /// Seconds since the Unix epoch.
    pub sec: u64,
    /// Nanoseconds.
    pub nsec: u32,
}

impl SharedInfoPage {
    /// Wraps a mapped shared info page.
    ///
    /// # Safety
    /// `ptr` must point to a mapped, 4 KiB shared info page (or memory laid
    /// out like one, in tests) that stays mapped for the handle's lifetime
    /// and that no Rust reference aliases.
    pub unsafe fn new(ptr: NonNull<SharedInfo>) -> Self {
        Self { ptr, vcpu0: None }
    }

    /// The same page, with vCPU 0's event and time state read from `info`,
    /// where `VCPUOP_register_vcpu_info` placed it.
    ///
    /// # Safety
    /// `info` must be the `vcpu_info` Xen now updates for vCPU 0, mapped
    /// for the handle's lifetime and aliased by no Rust reference.
    pub unsafe fn with_vcpu0_info(self, info: NonNull<VcpuInfo>) -> Self {
        Self {
            vcpu0: Some(info),
            ..self
        }
    }

    /// Where `vcpu`'s `vcpu_info` is (clamped to the page's slots).
    fn vcpu_info_ptr(&self, vcpu: usize) -> *mut VcpuInfo {
        match self.vcpu0 {
            Some(p) if vcpu == 0 => p.as_ptr(),
            _ => {
                let vcpu = vcpu.min(XEN_LEGACY_MAX_VCPUS - 1);
                // SAFETY: projection to a field of the page, no reference created.
                unsafe { addr_of_mut!((*self.ptr.as_ptr()).vcpu_info[vcpu]) }
            }
        }
    }

    fn word(&self, array: *mut u64, index: usize) -> &AtomicU64 {
        debug_assert!(index < XEN_ULONG_BITS);
        // SAFETY: `array` points into the page (one of its two bitmaps),
        // `index` < 64 is checked by every caller through `split`, the
        // words are 8-byte aligned, and all accesses to them are atomic.
        unsafe { AtomicU64::from_ptr(array.add(index)) }
    }

    fn pending_word(&self, index: usize) -> &AtomicU64 {
        // SAFETY: projection to a field of the page, no reference created.
        let base = unsafe { addr_of_mut!((*self.ptr.as_ptr()).evtchn_pending) } as *mut u64;
        self.word(base, index)
    }

    fn mask_word(&self, index: usize) -> &AtomicU64 {
        // SAFETY: projection to a field of the page, no reference created.
        let base = unsafe { addr_of_mut!((*self.ptr.as_ptr()).evtchn_mask) } as *mut u64;
        self.word(base, index)
    }

    fn vcpu_field_u8(&self, vcpu: usize, upcall_mask: bool) -> &AtomicU8 {
        // SAFETY: projection to a byte field of vcpu's `vcpu_info`,
        // accessed atomically only.
        unsafe {
            let info = self.vcpu_info_ptr(vcpu);
            let p = if upcall_mask {
                addr_of_mut!((*info).evtchn_upcall_mask)
            } else {
                addr_of_mut!((*info).evtchn_upcall_pending)
            };
            AtomicU8::from_ptr(p)
        }
    }

    fn pending_sel(&self, vcpu: usize) -> &AtomicU64 {
        // SAFETY: projection to vcpu's `evtchn_pending_sel`, 8-byte
        // aligned, accessed atomically only.
        unsafe { AtomicU64::from_ptr(addr_of_mut!((*self.vcpu_info_ptr(vcpu)).evtchn_pending_sel)) }
    }

    fn split(port: Port) -> Option<(usize, u64)> {
        if port >= NR_EVENT_CHANNELS {
            return None;
        }
        Some((
            (port as usize) / XEN_ULONG_BITS,
            1u64 << (port as usize % XEN_ULONG_BITS),
        ))
    }

    /// Collects and clears every pending, unmasked port of `vcpu`, calling
    /// `f` for each. Masked ports stay pending for [`Self::unmask`].
    ///
    /// This is the 2-level scan: clear the upcall flag first (so an event
    /// arriving during the scan raises it again), then take the selector,
    /// then each selected word.
    pub fn take_pending(&self, vcpu: usize, mut f: impl FnMut(Port)) {
        self.vcpu_field_u8(vcpu, false).store(0, Ordering::SeqCst);
        let mut sel = self.pending_sel(vcpu).swap(0, Ordering::SeqCst);
        while sel != 0 {
            let i = sel.trailing_zeros() as usize;
            sel &= sel - 1;
            let ready = self.pending_word(i).load(Ordering::SeqCst)
                & !self.mask_word(i).load(Ordering::SeqCst);
            // Clear exactly the bits we report; others may have arrived.
            self.pending_word(i).fetch_and(!ready, Ordering::SeqCst);
            let mut bits = ready;
            while bits != 0 {
                let j = bits.trailing_zeros();
                bits &= bits - 1;
                f((i * XEN_ULONG_BITS) as u32 + j);
            }
        }
    }

    /// Whether `port` is pending (masked or not).
    pub fn is_pending(&self, port: Port) -> bool {
        Self::split(port)
            .is_some_and(|(i, bit)| self.pending_word(i).load(Ordering::SeqCst) & bit != 0)
    }

    /// Whether `port` is masked.
    pub fn is_masked(&self, port: Port) -> bool {
        Self::split(port)
            .is_some_and(|(i, bit)| self.mask_word(i).load(Ordering::SeqCst) & bit != 0)
    }

    /// Clears `port`'s pending bit without reporting it.
    pub fn clear_pending(&self, port: Port) {
        if let Some((i, bit)) = Self::split(port) {
            self.pending_word(i).fetch_and(!bit, Ordering::SeqCst);
        }
    }

    /// Masks `port`: Xen still marks it pending but raises no upcall.
    pub fn mask(&self, port: Port) {
        if let Some((i, bit)) = Self::split(port) {
            self.mask_word(i).fetch_or(bit, Ordering::SeqCst);
        }
    }

    /// Unmasks `port`, then re-checks its pending bit: an event that arrived
    /// while masked set the bit but no selector, so it is re-raised here
    /// (selector and upcall flag of `vcpu`) for the next scan to see.
    /// Returns whether it was pending.
    pub fn unmask(&self, vcpu: usize, port: Port) -> bool {
        let Some((i, bit)) = Self::split(port) else {
            return false;
        };
        self.mask_word(i).fetch_and(!bit, Ordering::SeqCst);
        if self.pending_word(i).load(Ordering::SeqCst) & bit != 0 {
            self.pending_sel(vcpu).fetch_or(1 << i, Ordering::SeqCst);
            self.vcpu_field_u8(vcpu, false).store(1, Ordering::SeqCst);
            true
        } else {
            false
        }
    }

    /// Sets `vcpu`'s upcall mask (PV: no event callback while set).
    pub fn set_upcall_mask(&self, vcpu: usize, masked: bool) {
        self.vcpu_field_u8(vcpu, true)
            .store(masked as u8, Ordering::SeqCst);
    }

    /// Whether `vcpu` has its upcall flag raised.
    pub fn upcall_pending(&self, vcpu: usize) -> bool {
        self.vcpu_field_u8(vcpu, false).load(Ordering::SeqCst) != 0
    }

    /// Arm: Xen keeps no PV clock record there (guests read the generic
    /// timer), so this is the equivalent record for the counter
    /// [`crate::time::rdtsc`] reads: system time = count scaled by CNTFRQ.
    #[cfg(all(target_arch = "arm", target_os = "none"))]
    pub fn vcpu_time(&self, _vcpu: usize) -> VcpuTimeInfo {
        crate::time::record_for_hz(crate::time::counter_hz())
    }

    /// A consistent snapshot of `vcpu`'s PV clock record (the version
    /// protocol: retry while odd or changed across the read).
    #[cfg(not(all(target_arch = "arm", target_os = "none")))]
    pub fn vcpu_time(&self, vcpu: usize) -> VcpuTimeInfo {
        // SAFETY: projection to vcpu's `time` record, read volatile.
        let rec = unsafe { addr_of!((*self.vcpu_info_ptr(vcpu)).time) };
        // SAFETY: `version` is the first, 4-byte aligned field of `rec`.
        let version = unsafe { AtomicU32::from_ptr(rec as *mut u32) };
        loop {
            let v1 = version.load(Ordering::Acquire);
            if v1 & 1 == 1 {
                core::hint::spin_loop();
                continue;
            }
            // SAFETY: `rec` is valid for reads; the copy may be torn, which
            // the version re-check below detects.
            let snap = unsafe { core::ptr::read_volatile(rec) };
            fence(Ordering::Acquire);
            if version.load(Ordering::Acquire) == v1 {
                return snap;
            }
        }
    }

    /// A consistent snapshot of the wallclock base (`wc_version` protocol).
    pub fn wallclock_base(&self) -> WallClockBase {
        let p = self.ptr.as_ptr();
        // SAFETY: projections to 4-byte aligned u32 fields of the page, read atomically.
        let (ver, sec, nsec, hi) = unsafe {
            (
                AtomicU32::from_ptr(addr_of_mut!((*p).wc_version)),
                AtomicU32::from_ptr(addr_of_mut!((*p).wc_sec)),
                AtomicU32::from_ptr(addr_of_mut!((*p).wc_nsec)),
                AtomicU32::from_ptr(addr_of_mut!((*p).wc_sec_hi)),
            )
        };
        loop {
            let v1 = ver.load(Ordering::Acquire);
            if v1 & 1 == 1 {
                core::hint::spin_loop();
                continue;
            }
            let base = WallClockBase {
                sec: (u64::from(hi.load(Ordering::Relaxed)) << 32)
                    | u64::from(sec.load(Ordering::Relaxed)),
                nsec: nsec.load(Ordering::Relaxed),
            };
            fence(Ordering::Acquire);
            if ver.load(Ordering::Acquire) == v1 {
                return base;
            }
        }
    }

    /// `arch.max_pfn` (PV: the toolstack's p2m size).
    pub fn max_pfn(&self) -> u64 {
        // SAFETY: projection to an 8-byte field, read volatile.
        unsafe { core::ptr::read_volatile(addr_of!((*self.ptr.as_ptr()).arch.max_pfn)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::boxed::Box;
    use alloc::vec::Vec;

    fn page() -> (Box<core::mem::MaybeUninit<SharedInfo>>, SharedInfoPage) {
        let mut b = Box::new(core::mem::MaybeUninit::<SharedInfo>::zeroed());
        // SAFETY: zeroed memory is a valid SharedInfo; the box outlives the handle in each test.
        let h = unsafe { SharedInfoPage::new(NonNull::new(b.as_mut_ptr()).unwrap()) };
        (b, h)
    }

    /// What Xen does when it raises `port` for vCPU 0 (2-level ABI).
    fn xen_raise(h: &SharedInfoPage, port: Port) {
        let (i, bit) = SharedInfoPage::split(port).unwrap();
        let was = h.pending_word(i).fetch_or(bit, Ordering::SeqCst) & bit != 0;
        if !was && !h.is_masked(port) {
            h.pending_sel(0).fetch_or(1 << i, Ordering::SeqCst);
            h.vcpu_field_u8(0, false).store(1, Ordering::SeqCst);
        }
    }

    fn scan(h: &SharedInfoPage) -> Vec<Port> {
        let mut v = Vec::new();
        h.take_pending(0, |p| v.push(p));
        v
    }

    #[test]
    fn a_registered_vcpu_info_replaces_the_page_slot_for_vcpu0() {
        let (b, h) = page();
        let mut info = Box::new(VcpuInfo::default());
        // SAFETY: the box outlives the handle; only the handle touches it.
        let h = unsafe { h.with_vcpu0_info(NonNull::new(&mut *info as *mut VcpuInfo).unwrap()) };
        xen_raise(&h, 70);
        // The upcall flag and the selector went to the registered copy,
        // not to the page's own slot.
        assert!(h.upcall_pending(0));
        // SAFETY: reading the zeroed page's slot, which nothing else uses now.
        let slot = unsafe { &(*b.as_ptr()).vcpu_info[0] };
        assert_eq!(
            (slot.evtchn_upcall_pending, slot.evtchn_pending_sel),
            (0, 0)
        );
        assert_eq!(info_pending(&h), (1, 1 << 1));
        assert_eq!(scan(&h), [70]);
        assert!(!h.upcall_pending(0));
        drop(b);
    }

    fn info_pending(h: &SharedInfoPage) -> (u8, u64) {
        (
            h.vcpu_field_u8(0, false).load(Ordering::SeqCst),
            h.pending_sel(0).load(Ordering::SeqCst),
        )
    }

    #[test]
    fn scan_reports_each_pending_port_once_in_order() {
        let (_b, h) = page();
        for p in [4095, 0, 63, 64, 1000] {
            xen_raise(&h, p);
        }
        assert!(h.upcall_pending(0));
        assert_eq!(scan(&h), [0, 63, 64, 1000, 4095]);
        assert!(!h.upcall_pending(0));
        assert!(scan(&h).is_empty());
        assert!(!h.is_pending(1000));
    }

    #[test]
    fn masked_port_stays_pending_until_unmask_recheck() {
        let (_b, h) = page();
        h.mask(7);
        xen_raise(&h, 7);
        assert!(h.is_pending(7));
        assert!(scan(&h).is_empty(), "masked port must not be reported");
        assert!(h.unmask(0, 7), "unmask must see the pending bit");
        assert!(h.upcall_pending(0));
        assert_eq!(scan(&h), [7]);
        assert!(!h.unmask(0, 7));
    }

    #[test]
    fn out_of_range_ports_are_ignored() {
        let (_b, h) = page();
        h.mask(NR_EVENT_CHANNELS);
        assert!(!h.is_pending(u32::MAX));
        assert!(!h.unmask(0, NR_EVENT_CHANNELS + 5));
        h.clear_pending(u32::MAX);
    }

    #[test]
    fn wallclock_combines_high_and_low_seconds() {
        let (mut b, h) = page();
        // SAFETY: the box holds a zero-initialised SharedInfo.
        let si = unsafe { b.assume_init_mut() };
        si.wc_sec = 5;
        si.wc_sec_hi = 1;
        si.wc_nsec = 7;
        si.wc_version = 2;
        assert_eq!(
            h.wallclock_base(),
            WallClockBase {
                sec: (1 << 32) | 5,
                nsec: 7
            }
        );
    }
}
