//! [`NetbackEnv`] over the simulated hypervisor `xen::sim`, for host tests
//! (feature `sim`).

extern crate std;

use crate::env::{EnvError, NetbackEnv};
use core::task::{Context, Poll};
use xen::abi::grant_table::GnttabCopy;
use xen::abi::{DomId, GrantRef, Port};
use xen::shared_page::SharedPage;
use xen::sim::{SimError, SimHypervisor, SimMapping, SimPage};

/// The backend domain `dom`'s view of a simulated machine.
#[derive(Clone)]
pub struct SimNetbackEnv {
    /// The machine.
    pub hv: SimHypervisor,
    /// Our domain.
    pub dom: DomId,
}

fn sim_error(e: SimError) -> EnvError {
    match e {
        SimError::BadGrant => EnvError::Grant(-3),
        SimError::ReadOnly => EnvError::Grant(-8),
        SimError::OutOfPage => EnvError::Grant(-10),
        SimError::BadPort => EnvError::Hypercall(-22),
        SimError::NoDomain => EnvError::Hypercall(-3),
    }
}

impl NetbackEnv for SimNetbackEnv {
    type Mapping = SimMapping;
    type Page = SimPage;

    fn map_grant(
        &mut self,
        domid: DomId,
        gref: GrantRef,
    ) -> Result<SharedPage<SimMapping>, EnvError> {
        self.hv
            .map_grant_owned(self.dom, domid, gref, false)
            .map_err(sim_error)
    }
    fn alloc_page(&mut self) -> Result<SharedPage<SimPage>, EnvError> {
        Ok(self.hv.alloc_page_of(self.dom))
    }
    fn grant_copy(&mut self, ops: &mut [GnttabCopy]) -> Result<(), EnvError> {
        self.hv.grant_copy(self.dom, ops);
        Ok(())
    }
    fn bind_interdomain(&mut self, remote: DomId, remote_port: Port) -> Result<Port, EnvError> {
        self.hv
            .bind_interdomain(self.dom, remote, remote_port)
            .map_err(sim_error)
    }
    fn notify(&mut self, port: Port) {
        let _ = self.hv.send(self.dom, port);
    }
    fn poll_event(&mut self, port: Port, cx: &mut Context<'_>) -> Poll<()> {
        self.hv.poll_event(self.dom, port, cx)
    }
    fn close_port(&mut self, port: Port) {
        self.hv.close(self.dom, port)
    }
}
