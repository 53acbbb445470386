//! The byte streams of a vchan, sans I/O: reading and writing the two rings
//! in shared memory, the notify bits and the live bytes. It sends no event
//! and waits for none; each operation says whether the peer must be
//! notified, and the caller ([`super::Vchan`], or a test) does it.
//!
//! Everything in the shared pages is written by an untrusted peer at any
//! time, so:
//! - our own index of each ring (the read ring's `cons`, the write ring's
//!   `prod`) is kept here and only ever *written* to the page; the peer
//!   overwriting it changes nothing for us;
//! - the peer's index is read once per operation and must leave at most the
//!   ring's size in flight, or the stream is broken ([`StreamError`], and
//!   every later call returns the same error);
//! - every access goes through the bounds-checked accessors of
//!   [`SharedPage`] at an offset masked into the ring, so nothing the peer
//!   writes can steer an access elsewhere.
//!
//! Barriers follow libxenvchan: a writer reads the consumer index, fences,
//! copies, fences, publishes its producer index, then tests and clears the
//! peer's `NOTIFY_WRITE` request; a reader reads the producer index, fences,
//! copies, fences, publishes its consumer index, then tests and clears
//! `NOTIFY_READ`. Before giving up for lack of data (or space), a side sets
//! its request bit in the peer's notify byte and looks again, so a peer
//! that moved in between is never missed.

use super::wire::{
    self, Live, Orders, Place, WireError, CLI_LIVE, CLI_NOTIFY, LEFT_CONS, LEFT_PROD, NOTIFY_READ,
    NOTIFY_WRITE, PAGE_SIZE, RIGHT_CONS, RIGHT_PROD, SRV_LIVE, SRV_NOTIFY,
};
use alloc::vec::Vec;
use core::sync::atomic::{fence, Ordering};
use xen::shared_page::{OutOfPage, PageMemory, SharedPage};

/// Which end of the vchan this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Offers the pages; reads the left ring, writes the right one.
    Server,
    /// Maps the pages; writes the left ring, reads the right one.
    Client,
}

/// Which of our two rings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The ring we read.
    Read,
    /// The ring we write.
    Write,
}

/// The peer broke the protocol (or the set-up was inconsistent); the stream
/// is unusable from then on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamError {
    /// The peer's index claims more bytes in flight than the ring holds.
    BadIndex {
        /// The ring.
        ring: Direction,
        /// Consumer index (ours or the peer's).
        cons: u32,
        /// Producer index (ours or the peer's).
        prod: u32,
    },
    /// A malformed control page.
    Wire(WireError),
    /// The pages handed in do not match the orders.
    PageCount {
        /// The ring.
        ring: Direction,
        /// Pages needed.
        want: usize,
        /// Pages given.
        got: usize,
    },
    /// An access outside a page (a bug: offsets are masked).
    Page(OutOfPage),
}

impl From<OutOfPage> for StreamError {
    fn from(e: OutOfPage) -> Self {
        StreamError::Page(e)
    }
}

impl From<WireError> for StreamError {
    fn from(e: WireError) -> Self {
        StreamError::Wire(e)
    }
}

/// What a read or write did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Bytes copied (0: nothing available, or no room).
    pub bytes: usize,
    /// The peer asked to be told: send an event.
    pub notify: bool,
}

enum Buffer<M: PageMemory> {
    InPage(usize),
    Pages(Vec<SharedPage<M>>),
}

struct Ring<M: PageMemory> {
    cons_at: usize,
    prod_at: usize,
    size: u32,
    buffer: Buffer<M>,
}

impl<M: PageMemory> Ring<M> {
    fn new(
        ring: Direction,
        order: u16,
        (cons_at, prod_at): (usize, usize),
        pages: Vec<SharedPage<M>>,
    ) -> Result<Self, StreamError> {
        let buffer = match wire::place(order) {
            Place::InPage { offset } => {
                if !pages.is_empty() {
                    return Err(StreamError::PageCount {
                        ring,
                        want: 0,
                        got: pages.len(),
                    });
                }
                Buffer::InPage(offset)
            }
            Place::Pages { count } => {
                if pages.len() != count {
                    return Err(StreamError::PageCount {
                        ring,
                        want: count,
                        got: pages.len(),
                    });
                }
                Buffer::Pages(pages)
            }
        };
        Ok(Self {
            cons_at,
            prod_at,
            size: 1 << order,
            buffer,
        })
    }

    /// Visit the ring's bytes from free-running index `at` for `len`
    /// (`len <= size`) as (page, offset, start in the caller's buffer,
    /// length) pieces, in order, wrapping at the end of the ring.
    fn pieces(
        &self,
        control: &SharedPage<M>,
        at: u32,
        len: usize,
        mut f: impl FnMut(&SharedPage<M>, usize, usize, usize) -> Result<(), OutOfPage>,
    ) -> Result<(), OutOfPage> {
        let size = self.size as usize;
        let mut pos = (at & (self.size - 1)) as usize;
        let mut done = 0;
        while done < len {
            let contiguous = (len - done).min(size - pos);
            let (page, offset, n) = match &self.buffer {
                Buffer::InPage(base) => (control, base + pos, contiguous),
                Buffer::Pages(pages) => {
                    let page = pages.get(pos / PAGE_SIZE).ok_or(OutOfPage {
                        offset: pos,
                        len: contiguous,
                    })?;
                    let offset = pos % PAGE_SIZE;
                    (page, offset, contiguous.min(PAGE_SIZE - offset))
                }
            };
            f(page, offset, done, n)?;
            done += n;
            pos = (pos + n) % size;
        }
        Ok(())
    }
}

/// Both rings of one vchan end, over its control page and ring pages.
pub struct Stream<M: PageMemory> {
    control: SharedPage<M>,
    role: Role,
    read: Ring<M>,
    write: Ring<M>,
    /// Our consumer index of the read ring.
    read_cons: u32,
    /// Our producer index of the write ring.
    write_prod: u32,
    broken: Option<StreamError>,
}

/// Write a fresh control page as a server does: indices zero, the orders,
/// the client not yet connected, the server live, the client asked to
/// notify on writes, and the grant references of the rings' pages.
pub fn format_control<M: PageMemory>(
    control: &SharedPage<M>,
    orders: Orders,
    grants: &[u32],
) -> Result<(), StreamError> {
    if grants.len() != orders.grant_count() {
        return Err(StreamError::PageCount {
            ring: Direction::Read,
            want: orders.grant_count(),
            got: grants.len(),
        });
    }
    control.write(0, &[0; PAGE_SIZE])?;
    control.store_u16(wire::LEFT_ORDER, orders.left)?;
    control.store_u16(wire::RIGHT_ORDER, orders.right)?;
    control.store_u8(CLI_LIVE, Live::NotYet.byte())?;
    control.store_u8(SRV_LIVE, Live::Connected.byte())?;
    control.store_u8(CLI_NOTIFY, NOTIFY_WRITE)?;
    for (i, g) in grants.iter().enumerate() {
        control.store_u32(wire::grant_offset(i), *g)?;
    }
    Ok(())
}

/// Read and check the orders and grant references a server published in
/// `control` (the client's first look at the page).
pub fn read_layout<M: PageMemory>(
    control: &SharedPage<M>,
) -> Result<(Orders, Vec<u32>), StreamError> {
    let orders = Orders::check(
        control.load_u16(wire::LEFT_ORDER)?,
        control.load_u16(wire::RIGHT_ORDER)?,
    )?;
    let grants = (0..orders.grant_count())
        .map(|i| control.load_u32(wire::grant_offset(i)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((orders, grants))
}

impl<M: PageMemory> Stream<M> {
    /// One end over `control` with rings of `orders`: `left` and `right`
    /// are the rings' own pages (empty for an in-page ring). Our indices
    /// start where the page has them (a server may have written before the
    /// client connected), and must be consistent.
    pub fn new(
        role: Role,
        control: SharedPage<M>,
        orders: Orders,
        left: Vec<SharedPage<M>>,
        right: Vec<SharedPage<M>>,
    ) -> Result<Self, StreamError> {
        let (read_side, write_side) = match role {
            Role::Server => (Direction::Read, Direction::Write),
            Role::Client => (Direction::Write, Direction::Read),
        };
        let left = Ring::new(read_side, orders.left, (LEFT_CONS, LEFT_PROD), left)?;
        let right = Ring::new(write_side, orders.right, (RIGHT_CONS, RIGHT_PROD), right)?;
        let (read, write) = match role {
            Role::Server => (left, right),
            Role::Client => (right, left),
        };
        let read_cons = control.load_u32(read.cons_at)?;
        let write_prod = control.load_u32(write.prod_at)?;
        let mut s = Self {
            control,
            role,
            read,
            write,
            read_cons,
            write_prod,
            broken: None,
        };
        s.readable()?;
        s.writable()?;
        Ok(s)
    }

    /// This end's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The control page.
    pub fn control(&self) -> &SharedPage<M> {
        &self.control
    }

    /// Size of the ring we read, in bytes.
    pub fn read_capacity(&self) -> usize {
        self.read.size as usize
    }

    /// Size of the ring we write, in bytes.
    pub fn write_capacity(&self) -> usize {
        self.write.size as usize
    }

    /// The error that broke the stream, if any.
    pub fn broken(&self) -> Option<StreamError> {
        self.broken
    }

    fn check(&self) -> Result<(), StreamError> {
        match self.broken {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn fail<T>(&mut self, e: StreamError) -> Result<T, StreamError> {
        self.broken = Some(e);
        Err(e)
    }

    /// Offsets of the notify byte the peer reads our requests from, and of
    /// the one we read the peer's requests from.
    fn notify_bytes(&self) -> (usize, usize) {
        match self.role {
            Role::Server => (CLI_NOTIFY, SRV_NOTIFY),
            Role::Client => (SRV_NOTIFY, CLI_NOTIFY),
        }
    }

    /// Offsets of our live byte and the peer's.
    fn live_bytes(&self) -> (usize, usize) {
        match self.role {
            Role::Server => (SRV_LIVE, CLI_LIVE),
            Role::Client => (CLI_LIVE, SRV_LIVE),
        }
    }

    /// Bytes waiting in the ring we read.
    pub fn readable(&mut self) -> Result<usize, StreamError> {
        self.check()?;
        let prod = self.control.load_u32(self.read.prod_at)?;
        let used = prod.wrapping_sub(self.read_cons);
        if used > self.read.size {
            return self.fail(StreamError::BadIndex {
                ring: Direction::Read,
                cons: self.read_cons,
                prod,
            });
        }
        Ok(used as usize)
    }

    /// Free bytes in the ring we write.
    pub fn writable(&mut self) -> Result<usize, StreamError> {
        Ok(self.write_capacity() - self.unread()?)
    }

    /// Bytes we wrote that the peer has not consumed yet.
    pub fn unread(&mut self) -> Result<usize, StreamError> {
        self.check()?;
        let cons = self.control.load_u32(self.write.cons_at)?;
        let used = self.write_prod.wrapping_sub(cons);
        if used > self.write.size {
            return self.fail(StreamError::BadIndex {
                ring: Direction::Write,
                cons,
                prod: self.write_prod,
            });
        }
        Ok(used as usize)
    }

    /// Ask the peer to notify us when it does `bit` (`NOTIFY_WRITE`: writes
    /// data, `NOTIFY_READ`: consumes data). Full barrier after, so indices
    /// read next are read after the request is visible.
    pub fn request(&mut self, bit: u8) -> Result<(), StreamError> {
        self.check()?;
        let (theirs, _) = self.notify_bytes();
        self.control.fetch_or_u8(theirs, bit)?;
        fence(Ordering::SeqCst);
        Ok(())
    }

    /// After we did `bit`: whether the peer asked to hear of it (clearing
    /// its request).
    fn take_request(&mut self, bit: u8) -> Result<bool, StreamError> {
        fence(Ordering::SeqCst);
        let (_, ours) = self.notify_bytes();
        Ok(self.control.fetch_and_u8(ours, !bit)? & bit != 0)
    }

    /// Copy up to `dst.len()` waiting bytes out and release them to the
    /// peer. When fewer than asked are waiting, asks the peer to notify us
    /// of its next write. `bytes == 0`: nothing was waiting.
    pub fn read(&mut self, dst: &mut [u8]) -> Result<Progress, StreamError> {
        let mut avail = self.readable()?;
        if dst.is_empty() {
            return Ok(Progress::default());
        }
        if avail < dst.len() {
            self.request(NOTIFY_WRITE)?;
            avail = self.readable()?;
        }
        let n = avail.min(dst.len());
        if n == 0 {
            return Ok(Progress::default());
        }
        // Data must be read after the producer index that covers it.
        fence(Ordering::Acquire);
        let r = self
            .read
            .pieces(&self.control, self.read_cons, n, |page, offset, at, len| {
                page.read(offset, &mut dst[at..at + len])
            });
        if let Err(e) = r {
            return self.fail(e.into());
        }
        // Finish reading before handing the space back.
        fence(Ordering::SeqCst);
        self.read_cons = self.read_cons.wrapping_add(n as u32);
        self.control.store_u32(self.read.cons_at, self.read_cons)?;
        let notify = self.take_request(NOTIFY_READ)?;
        Ok(Progress { bytes: n, notify })
    }

    /// Copy as much of `src` as fits into the ring and publish it. When it
    /// does not all fit, asks the peer to notify us when it consumes.
    /// `bytes == 0`: the ring was full.
    pub fn write(&mut self, src: &[u8]) -> Result<Progress, StreamError> {
        let mut free = self.writable()?;
        if src.is_empty() {
            return Ok(Progress::default());
        }
        if free < src.len() {
            self.request(NOTIFY_READ)?;
            free = self.writable()?;
        }
        let n = free.min(src.len());
        if n == 0 {
            return Ok(Progress::default());
        }
        // Write data only after reading the consumer index that freed it.
        fence(Ordering::SeqCst);
        let r = self.write.pieces(
            &self.control,
            self.write_prod,
            n,
            |page, offset, at, len| page.write(offset, &src[at..at + len]),
        );
        if let Err(e) = r {
            return self.fail(e.into());
        }
        // The peer must see the data before the index that covers it.
        fence(Ordering::Release);
        self.write_prod = self.write_prod.wrapping_add(n as u32);
        self.control
            .store_u32(self.write.prod_at, self.write_prod)?;
        let notify = self.take_request(NOTIFY_WRITE)?;
        Ok(Progress { bytes: n, notify })
    }

    /// The peer's live byte.
    pub fn peer_live(&mut self) -> Result<Live, StreamError> {
        self.check()?;
        let (_, theirs) = self.live_bytes();
        match Live::parse(self.control.load_u8(theirs)?) {
            Ok(l) => Ok(l),
            Err(e) => self.fail(e.into()),
        }
    }

    /// Set our live byte (the caller notifies the peer).
    pub fn set_live(&mut self, live: Live) -> Result<(), StreamError> {
        let (ours, _) = self.live_bytes();
        // Everything we wrote is published before the peer sees the change.
        fence(Ordering::SeqCst);
        self.control.store_u8(ours, live.byte())?;
        fence(Ordering::SeqCst);
        Ok(())
    }

    /// Take the pages back (for the set-up code to revoke or unmap them):
    /// the control page, then the rings' own pages.
    pub fn into_pages(self) -> (SharedPage<M>, Vec<SharedPage<M>>) {
        let mut pages = Vec::new();
        for ring in [self.read, self.write] {
            if let Buffer::Pages(p) = ring.buffer {
                pages.extend(p);
            }
        }
        (self.control, pages)
    }
}

#[cfg(test)]
mod tests;
