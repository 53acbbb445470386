//! The PV console page (`xen/include/public/io/console.h`).

/// Size of the input ring, backend to guest.
pub const XENCONS_IN_SIZE: usize = 1024;

/// Size of the output ring, guest to backend.
pub const XENCONS_OUT_SIZE: usize = 2048;

/// The console page shared with xenconsoled (`struct xencons_interface`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct XenconsInterface {
    /// Bytes typed at the console, written by the backend.
    pub in_: [u8; XENCONS_IN_SIZE],
    /// Bytes printed by the guest, read by the backend.
    pub out: [u8; XENCONS_OUT_SIZE],
    /// Consumer index of `in_` (written by the guest).
    pub in_cons: u32,
    /// Producer index of `in_` (written by the backend).
    pub in_prod: u32,
    /// Consumer index of `out` (written by the backend).
    pub out_cons: u32,
    /// Producer index of `out` (written by the guest).
    pub out_prod: u32,
}

impl XenconsInterface {
    /// An all-zero page.
    pub const fn zeroed() -> Self {
        Self {
            in_: [0; XENCONS_IN_SIZE],
            out: [0; XENCONS_OUT_SIZE],
            in_cons: 0,
            in_prod: 0,
            out_cons: 0,
            out_prod: 0,
        }
    }
}
