//! The server over a domain's shared xenstore page: requests from the
//! request ring into [`Server::receive`], queued replies and events into
//! the response ring. A domain over its outstanding quota has its requests
//! left in its ring; a domain whose indices are impossible or whose header
//! is oversized is cut off, with the page's `error` field saying why.

use crate::conn::ConnError;
use crate::server::{Host, Server};
use xen::abi::xs_wire::{XENSTORE_ERROR_PROTO, XENSTORE_ERROR_RINGIDX};
use xen::shared_page::PageMemory;
use xen::xenstore::XsServerPage;

/// What one [`pump`] moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Request bytes taken from the ring.
    pub requests: usize,
    /// Reply and event bytes put into the ring.
    pub responses: usize,
}

impl Progress {
    /// Whether the domain should be notified (something moved).
    pub fn any(&self) -> bool {
        self.requests + self.responses > 0
    }
}

/// Serve `domid` over `page` until neither ring moves: take every request
/// the connection wants, put every queued byte that fits. `Err` when the
/// connection was cut (now or before).
pub fn pump<M: PageMemory>(
    server: &mut Server,
    domid: u16,
    page: &mut XsServerPage<M>,
    host: &mut dyn Host,
) -> Result<Progress, ConnError> {
    let mut progress = Progress::default();
    let mut buf = [0u8; 512];
    loop {
        let mut moved = false;
        loop {
            let want = server.wants(domid).min(buf.len());
            if want == 0 {
                break;
            }
            let n = match page.read(&mut buf[..want]) {
                Ok(n) => n,
                Err(_) => return Err(cut(server, domid, page, ConnError::BadRingIndex)),
            };
            if n == 0 {
                break;
            }
            progress.requests += n;
            moved = true;
            if let Err(err) = server.receive(domid, &buf[..n], host) {
                return Err(cut(server, domid, page, err));
            }
        }
        loop {
            let n = server.peek_output(domid, &mut buf);
            if n == 0 {
                break;
            }
            let written = match page.write(&buf[..n]) {
                Ok(w) => w,
                Err(_) => return Err(cut(server, domid, page, ConnError::BadRingIndex)),
            };
            if written == 0 {
                break;
            }
            server.advance_output(domid, written);
            progress.responses += written;
            moved = true;
        }
        if let Some(err) = server.connection(domid).and_then(|c| c.broken()) {
            return Err(cut(server, domid, page, err));
        }
        if !moved {
            return Ok(progress);
        }
    }
}

fn cut<M: PageMemory>(
    server: &mut Server,
    domid: u16,
    page: &XsServerPage<M>,
    err: ConnError,
) -> ConnError {
    page.set_error(match err {
        ConnError::BadRingIndex => XENSTORE_ERROR_RINGIDX,
        _ => XENSTORE_ERROR_PROTO,
    });
    server.cut(domid, err);
    err
}
