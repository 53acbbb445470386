//! The daemon around the [`Server`]: every connected domain's xenstore
//! page and event channel, over a [`Platform`] that maps pages and binds
//! ports (the kernel in the image, the simulated hypervisor in tests).
//! What the image adds is only the platform and the loop that waits for
//! events.

use crate::conn::ConnError;
use crate::errno::Errno;
use crate::ring::pump;
use crate::server::{Host, Server};
use crate::Config;
use alloc::collections::btree_map::Entry;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use xen::abi::xs_wire::{XENSTORE_ERROR_NONE, XENSTORE_SERVER_FEATURE_ERROR};
use xen::shared_page::{PageMemory, SharedPage};
use xen::xenstore::XsServerPage;

/// What the daemon needs from the hypervisor.
pub trait Platform {
    /// A mapped foreign page.
    type Page: PageMemory;
    /// Map `domid`'s xenstore page (the grant its builder reserved for the
    /// xenstore domain, `GNTTAB_RESERVED_XENSTORE`).
    fn map_store_page(&mut self, domid: u16) -> Result<SharedPage<Self::Page>, Errno>;
    /// Undo [`map_store_page`](Self::map_store_page).
    fn unmap_store_page(&mut self, domid: u16, page: SharedPage<Self::Page>);
    /// Bind to `domid`'s unbound `remote_port`; returns our port.
    fn bind(&mut self, domid: u16, remote_port: u32) -> Result<u32, Errno>;
    /// Close our `port`.
    fn unbind(&mut self, port: u32);
    /// Kick the other end of our `port`.
    fn notify(&mut self, port: u32);
    /// A line for the console (`XS_CONTROL print`, cut connections).
    fn log(&mut self, _line: &str) {}
    /// Whether the domain at the other end of our `port` is gone (its end
    /// closed: `EVTCHNOP_status` no longer says interdomain).
    fn peer_gone(&mut self, _port: u32) -> bool {
        false
    }
}

struct Link<M: PageMemory> {
    page: XsServerPage<M>,
    port: u32,
}

/// The pages and ports of connected domains, with the platform: the
/// server's [`Host`].
struct Glue<'a, P: Platform> {
    platform: &'a mut P,
    links: &'a mut BTreeMap<u16, Link<P::Page>>,
}

fn drop_link<P: Platform>(platform: &mut P, domid: u16, link: Link<P::Page>) {
    platform.unbind(link.port);
    platform.unmap_store_page(domid, link.page.into_page());
}

impl<P: Platform> Host for Glue<'_, P> {
    fn introduce(&mut self, domid: u16, _gfn: u64, port: u32) -> Result<(), Errno> {
        if let Some(old) = self.links.remove(&domid) {
            drop_link(self.platform, domid, old);
        }
        let page = self.platform.map_store_page(domid)?;
        let local = match self.platform.bind(domid, port) {
            Ok(local) => local,
            Err(e) => {
                self.platform.unmap_store_page(domid, page);
                return Err(e);
            }
        };
        let page = XsServerPage::new(page);
        page.set_server_features(XENSTORE_SERVER_FEATURE_ERROR);
        page.set_error(XENSTORE_ERROR_NONE);
        self.links.insert(domid, Link { page, port: local });
        Ok(())
    }

    fn release(&mut self, domid: u16) {
        if let Some(link) = self.links.remove(&domid) {
            drop_link(self.platform, domid, link);
        }
    }

    fn log(&mut self, line: &str) {
        self.platform.log(line);
    }
}

/// The xenstore daemon.
pub struct Daemon<P: Platform> {
    server: Server,
    platform: P,
    links: BTreeMap<u16, Link<P::Page>>,
}

impl<P: Platform> Daemon<P> {
    /// A daemon with no domain connected.
    pub fn new(config: Config, platform: P) -> Self {
        Self {
            server: Server::new(config),
            platform,
            links: BTreeMap::new(),
        }
    }

    /// The server.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// The server, to drive it directly (tests, a local console).
    pub fn server_mut(&mut self) -> &mut Server {
        &mut self.server
    }

    /// The platform.
    pub fn platform(&mut self) -> &mut P {
        &mut self.platform
    }

    /// Connect a privileged domain whose page and port came with the boot
    /// (dom0: its kernel granted its page, `init-xenstore-domain` passed
    /// its port as `--event`): no `@introduceDomain`.
    pub fn connect_privileged(&mut self, domid: u16, remote_port: u32) -> Result<(), Errno> {
        let mut glue = Glue {
            platform: &mut self.platform,
            links: &mut self.links,
        };
        glue.introduce(domid, 0, remote_port)?;
        self.server.connect(domid);
        Ok(())
    }

    /// Feed requests from `domid` that arrive other than through a page
    /// (a connection of the platform's own, tests); its replies come out
    /// of [`Server::transmit`]. Other domains are served after.
    pub fn receive_direct(&mut self, domid: u16, bytes: &[u8]) -> Result<usize, ConnError> {
        let mut glue = Glue {
            platform: &mut self.platform,
            links: &mut self.links,
        };
        let result = self.server.receive(domid, bytes, &mut glue);
        self.serve([]);
        result
    }

    /// Our event channel ports, with their domains (to wait on).
    pub fn ports(&self) -> Vec<(u16, u32)> {
        self.links.iter().map(|(d, l)| (*d, l.port)).collect()
    }

    /// The domain behind our `port`.
    pub fn domain_of_port(&self, port: u32) -> Option<u16> {
        self.links
            .iter()
            .find(|(_, l)| l.port == port)
            .map(|(d, _)| *d)
    }

    /// An event arrived on our `port`: serve that domain (and move the
    /// output its requests made for others).
    pub fn on_event(&mut self, port: u32) {
        if let Some(domid) = self.domain_of_port(port) {
            self.serve([domid]);
        }
    }

    /// Serve every connected domain once (a poll, or after a lost event).
    pub fn serve_all(&mut self) {
        let all: Vec<u16> = self.links.keys().copied().collect();
        self.serve(all);
    }

    /// Serve `domains`, then every domain whose output grew meanwhile,
    /// notifying each that moved.
    pub fn serve(&mut self, domains: impl IntoIterator<Item = u16>) {
        let mut todo: BTreeSet<u16> = domains.into_iter().collect();
        todo.extend(self.server.take_notify());
        while let Some(domid) = todo.pop_first() {
            // Out of the map while it is served: its requests may
            // introduce or release other domains (the links map).
            let Some(mut link) = self.links.remove(&domid) else {
                continue;
            };
            let mut glue = Glue {
                platform: &mut self.platform,
                links: &mut self.links,
            };
            let result = pump(&mut self.server, domid, &mut link.page, &mut glue);
            match result {
                Ok(progress) if progress.any() => self.platform.notify(link.port),
                Ok(_) => {}
                Err(ConnError::PayloadTooLarge(_) | ConnError::BadRingIndex) => {
                    // Cut (the page says why); its rings are not read again.
                }
                Err(ConnError::NotConnected) => {}
            }
            match self.links.entry(domid) {
                // Introduced again while served: the new link stays.
                Entry::Occupied(_) => drop_link(&mut self.platform, domid, link),
                Entry::Vacant(slot) => {
                    slot.insert(link);
                }
            }
            todo.extend(
                self.server
                    .take_notify()
                    .into_iter()
                    .filter(|d| *d != domid),
            );
        }
    }

    /// Find the domains that are gone (after `VIRQ_DOM_EXC`): every
    /// unprivileged domain whose end of its event channel closed is
    /// handled as [`domain_destroyed`](Self::domain_destroyed). Returns
    /// them.
    pub fn reap(&mut self) -> Vec<u16> {
        let candidates: Vec<(u16, u32)> = self
            .links
            .iter()
            .filter(|(d, _)| !self.server.config().is_privileged(**d))
            .map(|(d, l)| (*d, l.port))
            .collect();
        let mut gone = Vec::new();
        for (domid, port) in candidates {
            if self.platform.peer_gone(port) {
                gone.push(domid);
                self.domain_destroyed(domid);
            }
        }
        gone
    }

    /// The platform saw `domid` shut down: `@releaseDomain` (once).
    pub fn domain_shutdown(&mut self, domid: u16) {
        self.server.domain_shutdown(domid);
        self.serve([]);
    }

    /// The platform saw `domid` destroyed: its page unmapped, its port
    /// closed, its watches and transactions gone, `@releaseDomain`.
    pub fn domain_destroyed(&mut self, domid: u16) {
        let mut glue = Glue {
            platform: &mut self.platform,
            links: &mut self.links,
        };
        self.server.domain_destroyed(domid, &mut glue);
        // A privileged domain stays connected in the server; drop its page
        // all the same (it is gone).
        glue.release(domid);
        self.serve([]);
    }
}
