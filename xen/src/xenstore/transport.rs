//! How the client reaches xenstored: the [`XsTransport`] seam (so the client
//! runs against a simulated daemon in tests) and [`XsRing`], the real
//! transport over the shared `xenstore_domain_interface` page.

use super::error::{ProtocolError, XsError};
use crate::abi::xs_wire::{
    XenstoreDomainInterface, XENSTORE_ERROR_NONE, XENSTORE_RING_SIZE, XENSTORE_SERVER_FEATURE_ERROR,
};
use crate::ring::bytes::{ByteRingReader, ByteRingWriter};
use core::ptr::addr_of_mut;
use core::sync::atomic::{AtomicU32, Ordering};
use core::task::{Context, Poll};

/// A byte pipe to xenstored plus its doorbell.
pub trait XsTransport {
    /// Copy a prefix of `buf` towards the daemon; return how many bytes were
    /// taken (0 when there is no room now).
    fn send(&mut self, buf: &[u8]) -> Result<usize, XsError>;
    /// Copy available bytes from the daemon into `buf`; return how many
    /// (0 when none are available now).
    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, XsError>;
    /// Tell the daemon there is something to look at.
    fn notify(&mut self);
    /// Ready when the daemon may have done something since the last call
    /// (its event channel fired); registers `cx`'s waker otherwise.
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<()>;
}

/// The event channel of the xenstore page, supplied by the kernel.
pub trait XsEvents {
    /// Send an event to xenstored.
    fn notify(&mut self);
    /// Ready once an event from xenstored arrived since the last `Ready`;
    /// registers `cx`'s waker otherwise.
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<()>;
}

/// The transport over the shared xenstore page.
pub struct XsRing<E: XsEvents> {
    server_features: *mut u32,
    error: *mut u32,
    requests: ByteRingWriter,
    responses: ByteRingReader,
    events: E,
}

impl<E: XsEvents> XsRing<E> {
    /// The guest's side of the xenstore page at `page`, kicking and waiting
    /// through `events`.
    ///
    /// # Safety
    /// `page` must point to the mapped, aligned xenstore page and stay
    /// mapped for the ring's lifetime; no Rust reference to it may be held
    /// meanwhile (xenstored writes it).
    pub unsafe fn new(page: *mut XenstoreDomainInterface, events: E) -> Self {
        // SAFETY: caller's contract; `addr_of_mut!` forms no references, and
        // the fields are the 1024-byte rings and their aligned u32 indices.
        unsafe {
            Self {
                server_features: addr_of_mut!((*page).server_features),
                error: addr_of_mut!((*page).error),
                requests: ByteRingWriter::new(
                    addr_of_mut!((*page).req).cast(),
                    XENSTORE_RING_SIZE,
                    addr_of_mut!((*page).req_cons),
                    addr_of_mut!((*page).req_prod),
                ),
                responses: ByteRingReader::new(
                    addr_of_mut!((*page).rsp).cast(),
                    XENSTORE_RING_SIZE,
                    addr_of_mut!((*page).rsp_cons),
                    addr_of_mut!((*page).rsp_prod),
                ),
                events,
            }
        }
    }

    /// The event source, e.g. for the kernel to inspect.
    pub fn events(&mut self) -> &mut E {
        &mut self.events
    }

    fn shared_u32(field: *mut u32) -> u32 {
        // SAFETY: `field` is one of the page's aligned u32 fields, mapped
        // for our lifetime (contract of `new`); the daemon writes it
        // concurrently, so read it atomically.
        unsafe { AtomicU32::from_ptr(field) }.load(Ordering::Acquire)
    }

    /// The daemon's error flag, when it advertises one.
    fn check_server_error(&self) -> Result<(), XsError> {
        let features = Self::shared_u32(self.server_features);
        if features & XENSTORE_SERVER_FEATURE_ERROR == 0 {
            return Ok(());
        }
        let error = Self::shared_u32(self.error);
        if error == XENSTORE_ERROR_NONE {
            Ok(())
        } else {
            Err(ProtocolError::ServerError(error).into())
        }
    }
}

impl<E: XsEvents> XsTransport for XsRing<E> {
    fn send(&mut self, buf: &[u8]) -> Result<usize, XsError> {
        self.check_server_error()?;
        self.requests
            .write(buf)
            .map_err(|_| ProtocolError::BadRingIndex.into())
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, XsError> {
        self.check_server_error()?;
        self.responses
            .read(buf)
            .map_err(|_| ProtocolError::BadRingIndex.into())
    }

    fn notify(&mut self) {
        self.events.notify()
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.events.poll_event(cx)
    }
}
