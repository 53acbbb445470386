//! Byte-stream rings: one byte array plus a free-running producer and
//! consumer index, as used by the xenstore page (`xs_wire.h`) and the PV
//! console page (`console.h`).
//!
//! Each side owns one index and only reads the other. The indices are
//! free-running 32-bit counters reduced modulo the (power-of-two) ring size
//! on access, so `prod - cons` (wrapping) is the number of bytes in flight.
//! A peer that publishes an index making that number larger than the ring is
//! misbehaving: we report [`RingIndexError`] and touch nothing, so a hostile
//! peer can never steer an access outside the array.
//!
//! Barriers follow `docs/misc/xenstore-ring.txt` (the console uses the same
//! discipline): a producer reads the consumer index, issues a full barrier
//! before writing data, then a write barrier before publishing its index; a
//! consumer reads the producer index, issues a read barrier before reading
//! data, then a full barrier before publishing its index (so the peer cannot
//! overwrite bytes we are still reading).

use core::sync::atomic::{fence, AtomicU32, Ordering};

/// The peer published an index pair with more bytes in flight than the ring
/// holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingIndexError {
    /// The consumer index seen.
    pub cons: u32,
    /// The producer index seen.
    pub prod: u32,
}

/// Pointers to one byte ring in shared memory.
#[derive(Clone, Copy, Debug)]
struct RawByteRing {
    data: *mut u8,
    size: u32,
    cons: *mut u32,
    prod: *mut u32,
}

impl RawByteRing {
    /// # Safety
    /// See [`ByteRingWriter::new`].
    unsafe fn new(data: *mut u8, size: usize, cons: *mut u32, prod: *mut u32) -> Self {
        assert!(
            size.is_power_of_two() && size <= (1 << 31),
            "byte ring size must be a power of two"
        );
        assert!(cons.is_aligned() && prod.is_aligned());
        Self {
            data,
            size: size as u32,
            cons,
            prod,
        }
    }

    fn load(index: *mut u32) -> u32 {
        // SAFETY: `new`'s contract makes `index` valid, aligned and live for
        // the ring's lifetime; `AtomicU32` has the layout of `u32`, and every
        // access to the shared index goes through atomics.
        unsafe { AtomicU32::from_ptr(index) }.load(Ordering::Relaxed)
    }

    fn store(index: *mut u32, value: u32) {
        // SAFETY: as in `load`.
        unsafe { AtomicU32::from_ptr(index) }.store(value, Ordering::Relaxed)
    }

    /// Bytes in flight for the pair, or an error if the pair is impossible.
    fn in_flight(&self, cons: u32, prod: u32) -> Result<u32, RingIndexError> {
        let used = prod.wrapping_sub(cons);
        if used > self.size {
            Err(RingIndexError { cons, prod })
        } else {
            Ok(used)
        }
    }

    fn write_byte(&self, index: u32, byte: u8) {
        let offset = (index & (self.size - 1)) as usize;
        // SAFETY: `offset < size` by the mask, and `data` is valid for `size`
        // bytes (contract of `new`). Volatile because the peer reads it
        // concurrently; no Rust reference to shared memory is formed.
        unsafe { self.data.add(offset).write_volatile(byte) }
    }

    fn read_byte(&self, index: u32) -> u8 {
        let offset = (index & (self.size - 1)) as usize;
        // SAFETY: as in `write_byte`.
        unsafe { self.data.add(offset).read_volatile() }
    }
}

/// The producer side of a byte ring: we own the producer index.
#[derive(Debug)]
pub struct ByteRingWriter {
    ring: RawByteRing,
}

impl ByteRingWriter {
    /// A writer over `size` bytes at `data` with indices at `cons`/`prod`.
    ///
    /// # Safety
    /// `data` must be valid for reads and writes of `size` bytes, and `cons`
    /// and `prod` valid, aligned `u32`s, for as long as the writer lives. No
    /// Rust reference to that memory may be held meanwhile; the peer may
    /// change it at any time. `size` must be a power of two (checked).
    pub unsafe fn new(data: *mut u8, size: usize, cons: *mut u32, prod: *mut u32) -> Self {
        Self {
            // SAFETY: forwarded contract.
            ring: unsafe { RawByteRing::new(data, size, cons, prod) },
        }
    }

    /// Copy as much of `src` as fits, publish it, and return how many bytes
    /// were taken (0 when the ring is full).
    pub fn write(&mut self, src: &[u8]) -> Result<usize, RingIndexError> {
        let cons = RawByteRing::load(self.ring.cons);
        let prod = RawByteRing::load(self.ring.prod);
        let used = self.ring.in_flight(cons, prod)?;
        let free = (self.ring.size - used) as usize;
        let n = free.min(src.len());
        if n == 0 {
            return Ok(0);
        }
        // Data must be written after the consumer index was read, or we could
        // overwrite bytes the peer has not consumed yet.
        fence(Ordering::SeqCst);
        for (i, byte) in src.iter().take(n).enumerate() {
            self.ring.write_byte(prod.wrapping_add(i as u32), *byte);
        }
        // The peer must see the data before it sees the new producer index.
        fence(Ordering::Release);
        RawByteRing::store(self.ring.prod, prod.wrapping_add(n as u32));
        Ok(n)
    }

    /// Free space in bytes.
    pub fn free(&self) -> Result<usize, RingIndexError> {
        let cons = RawByteRing::load(self.ring.cons);
        let prod = RawByteRing::load(self.ring.prod);
        Ok((self.ring.size - self.ring.in_flight(cons, prod)?) as usize)
    }
}

/// The consumer side of a byte ring: we own the consumer index.
#[derive(Debug)]
pub struct ByteRingReader {
    ring: RawByteRing,
}

impl ByteRingReader {
    /// A reader over `size` bytes at `data` with indices at `cons`/`prod`.
    ///
    /// # Safety
    /// Same contract as [`ByteRingWriter::new`].
    pub unsafe fn new(data: *mut u8, size: usize, cons: *mut u32, prod: *mut u32) -> Self {
        Self {
            // SAFETY: forwarded contract.
            ring: unsafe { RawByteRing::new(data, size, cons, prod) },
        }
    }

    /// Copy up to `dst.len()` available bytes out, release them to the
    /// producer, and return how many were copied (0 when empty).
    pub fn read(&mut self, dst: &mut [u8]) -> Result<usize, RingIndexError> {
        let prod = RawByteRing::load(self.ring.prod);
        let cons = RawByteRing::load(self.ring.cons);
        let used = self.ring.in_flight(cons, prod)? as usize;
        let n = used.min(dst.len());
        if n == 0 {
            return Ok(0);
        }
        // Data must be read after the producer index that covers it.
        fence(Ordering::Acquire);
        for (i, slot) in dst.iter_mut().take(n).enumerate() {
            *slot = self.ring.read_byte(cons.wrapping_add(i as u32));
        }
        // Finish reading before handing the space back to the producer.
        fence(Ordering::SeqCst);
        RawByteRing::store(self.ring.cons, cons.wrapping_add(n as u32));
        Ok(n)
    }

    /// Bytes waiting to be read.
    pub fn available(&self) -> Result<usize, RingIndexError> {
        let prod = RawByteRing::load(self.ring.prod);
        let cons = RawByteRing::load(self.ring.cons);
        Ok(self.ring.in_flight(cons, prod)? as usize)
    }
}
