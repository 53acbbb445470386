//! Bounce pages granted to the backend once and reused.
//!
//! I/O data is copied through these pages, so the caller's buffers are
//! never shared and no grant is made or ended per request in steady state.
//! The pool grows on demand up to a cap and hands pages out by index.

use crate::env::{BlkEnv, PageMemory, SharedPage};
use crate::error::BlkError;
use alloc::vec::Vec;
use xen::abi::{DomId, GrantRef};

/// A granted page.
struct PoolPage<M: PageMemory> {
    page: SharedPage<M>,
    gref: GrantRef,
}

/// Pages granted (writable) to one backend domain.
pub struct GrantPool<M: PageMemory> {
    domid: DomId,
    pages: Vec<PoolPage<M>>,
    free: Vec<usize>,
    cap: usize,
}

/// Index of a page handed out by the pool.
pub type PageIndex = usize;

impl<M: PageMemory> GrantPool<M> {
    /// An empty pool for `domid` that will hold at most `cap` pages.
    pub fn new(domid: DomId, cap: usize) -> Self {
        Self {
            domid,
            pages: Vec::new(),
            free: Vec::new(),
            cap,
        }
    }

    /// Pages granted so far.
    pub fn granted(&self) -> usize {
        self.pages.len()
    }

    /// Pages not handed out.
    pub fn available(&self) -> usize {
        self.free.len()
    }

    /// Hand out `n` pages, allocating and granting new ones while under
    /// the cap. `Ok(None)` if not enough can be had now (wait for pages to
    /// come back); an error if the kernel refused a page or a grant.
    pub fn take<E: BlkEnv<Mem = M>>(
        &mut self,
        env: &mut E,
        n: usize,
    ) -> Result<Option<Vec<PageIndex>>, BlkError> {
        while self.free.len() < n && self.pages.len() < self.cap {
            let page = env.alloc_page()?;
            let gref = env.grant(self.domid, page.frame(), false)?;
            self.free.push(self.pages.len());
            self.pages.push(PoolPage { page, gref });
        }
        if self.free.len() < n {
            return Ok(None);
        }
        let at = self.free.len() - n;
        Ok(Some(self.free.split_off(at)))
    }

    /// Return pages handed out by [`take`](Self::take).
    pub fn give_back(&mut self, pages: &[PageIndex]) {
        self.free.extend_from_slice(pages);
    }

    /// The grant of page `index`.
    pub fn gref(&self, index: PageIndex) -> GrantRef {
        self.pages.get(index).map_or(0, |p| p.gref)
    }

    /// Page `index`, to copy data in and out.
    pub fn page(&self, index: PageIndex) -> Option<&SharedPage<M>> {
        self.pages.get(index).map(|p| &p.page)
    }

    /// End every grant; returns how many the backend still held (those
    /// pages are deferred by the page type, never reused while another
    /// domain maps them).
    pub fn revoke_all<E: BlkEnv<Mem = M>>(&mut self, env: &mut E) -> usize {
        let mut still_mapped = 0;
        for p in self.pages.drain(..) {
            // A page the backend still maps is deferred by the page type
            // when dropped (`docs/drivers.md`, "Grant ownership").
            if env.revoke(p.gref).is_err() {
                still_mapped += 1;
            }
        }
        self.free.clear();
        still_mapped
    }
}
