//! A `smoltcp::phy::Device` over the frontend: Ethernet frames up to the
//! standard MTU, checksums computed by smoltcp (connect with the default
//! [`ConnectOptions`](crate::ConnectOptions): no blank checksums, no GSO on
//! receive). Call [`Netfront::poll`] before polling the interface.

use alloc::vec::Vec;
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::time::Instant;

use crate::env::NetEnv;
use crate::front::Netfront;
use crate::packet::TxOffload;

/// Ethernet MTU including the 14-byte header.
pub const ETHERNET_MTU: usize = 1514;

/// A received frame handed to smoltcp.
pub struct NetfrontRxToken(Vec<u8>);

impl RxToken for NetfrontRxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

/// Room to send one frame.
pub struct NetfrontTxToken<'a, E: NetEnv>(&'a mut Netfront<E>);

impl<E: NetEnv> TxToken for NetfrontTxToken<'_, E> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = alloc::vec![0u8; len];
        let r = f(&mut buf);
        // `transmit` checked there was room; a failure here (the device
        // broke meanwhile) loses the frame, as a NIC would.
        let _ = self.0.send(&buf, TxOffload::default());
        r
    }
}

impl<E: NetEnv> Device for Netfront<E> {
    type RxToken<'a>
        = NetfrontRxToken
    where
        Self: 'a;
    type TxToken<'a>
        = NetfrontTxToken<'a, E>
    where
        Self: 'a;

    fn receive(&mut self, _: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let packet = Netfront::receive(self)?;
        Some((NetfrontRxToken(packet.data), NetfrontTxToken(self)))
    }

    fn transmit(&mut self, _: Instant) -> Option<Self::TxToken<'_>> {
        self.can_send(ETHERNET_MTU, &TxOffload::default())
            .then_some(NetfrontTxToken(self))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = ETHERNET_MTU;
        caps.max_burst_size = Some(16);
        caps
    }
}
