//! The PV console ring (`io/console.h`): the guest writes to `out` and reads
//! keyboard input from `in`. Bytes go through unchanged (xenconsoled deals
//! with line endings).
//!
//! The backend is untrusted: an impossible index pair makes `write`/`read`
//! move nothing and bumps [`ConsoleRing::bad_index_count`].

use crate::abi::console::{XenconsInterface, XENCONS_IN_SIZE, XENCONS_OUT_SIZE};
use crate::ring::bytes::{ByteRingReader, ByteRingWriter};
use core::ptr::addr_of_mut;

/// The guest's side of a console page.
#[derive(Debug)]
pub struct ConsoleRing {
    output: ByteRingWriter,
    input: ByteRingReader,
    bad_index_count: u64,
}

impl ConsoleRing {
    /// The guest side of the console page at `page`.
    ///
    /// # Safety
    /// `page` must point to a valid, aligned `XenconsInterface` (the console
    /// page mapped by the kernel) that stays mapped for the ring's lifetime,
    /// and no Rust reference to it may be held meanwhile.
    pub unsafe fn new(page: *mut XenconsInterface) -> Self {
        // SAFETY: the caller guarantees `page` is valid; `addr_of_mut!`
        // takes field addresses without forming references, and the fields
        // are `out`/`in_` arrays of the stated sizes and aligned `u32`s.
        unsafe {
            Self {
                output: ByteRingWriter::new(
                    addr_of_mut!((*page).out).cast(),
                    XENCONS_OUT_SIZE,
                    addr_of_mut!((*page).out_cons),
                    addr_of_mut!((*page).out_prod),
                ),
                input: ByteRingReader::new(
                    addr_of_mut!((*page).in_).cast(),
                    XENCONS_IN_SIZE,
                    addr_of_mut!((*page).in_cons),
                    addr_of_mut!((*page).in_prod),
                ),
                bad_index_count: 0,
            }
        }
    }

    /// Queue as much of `bytes` as fits for the backend; returns the count
    /// taken. Never blocks. The caller notifies the console event channel.
    pub fn write(&mut self, bytes: &[u8]) -> usize {
        match self.output.write(bytes) {
            Ok(n) => n,
            Err(_) => {
                self.bad_index_count += 1;
                0
            }
        }
    }

    /// Copy pending input into `buf`; returns the count copied.
    pub fn read(&mut self, buf: &mut [u8]) -> usize {
        match self.input.read(buf) {
            Ok(n) => n,
            Err(_) => {
                self.bad_index_count += 1;
                0
            }
        }
    }

    /// How many times the backend published an impossible index pair.
    pub fn bad_index_count(&self) -> u64 {
        self.bad_index_count
    }
}
