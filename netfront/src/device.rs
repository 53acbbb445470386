//! A `smoltcp::phy::Device` over the frontend. Call [`Netfront::poll`]
//! before polling the interface.
//!
//! Frames are sent up to the standard MTU with checksums computed by
//! smoltcp. What is received depends on the [`ConnectOptions`] the device
//! was connected with:
//! - by default (no blank checksums, no GSO) the backend fills every
//!   checksum and smoltcp verifies them all;
//! - with `rx_csum_blank` (and `rx_gso`), the backend passes on packets of
//!   the local host with a blank checksum and whole GSO super-packets (up
//!   to 64 KiB, one TCP segment to smoltcp): the device then tells smoltcp
//!   not to verify, and verifies itself every packet the backend did not
//!   mark `data_validated` or `csum_blank`, dropping (and counting) bad
//!   ones. This saves a pass over the data and most per-packet work.

use alloc::vec::Vec;
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::time::Instant;

use smoltcp::phy::{Checksum, ChecksumCapabilities};
use smoltcp::wire::{
    EthernetFrame, EthernetProtocol, IpAddress, IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket,
    UdpPacket,
};

use crate::env::NetEnv;
use crate::front::Netfront;
use crate::packet::TxOffload;

/// Whether the IPv4/IPv6 and TCP/UDP checksums of `frame` are right (other
/// protocols, and frames too short to parse, are left to smoltcp, which
/// rejects malformed ones).
pub fn checksums_ok(frame: &[u8]) -> bool {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return true;
    };
    let (src, dst, proto, payload) = match eth.ethertype() {
        EthernetProtocol::Ipv4 => {
            let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
                return true;
            };
            if !ip.verify_checksum() {
                return false;
            }
            if ip.more_frags() || ip.frag_offset() != 0 {
                return true;
            }
            (
                IpAddress::Ipv4(ip.src_addr()),
                IpAddress::Ipv4(ip.dst_addr()),
                ip.next_header(),
                ip.payload(),
            )
        }
        EthernetProtocol::Ipv6 => {
            let Ok(ip) = Ipv6Packet::new_checked(eth.payload()) else {
                return true;
            };
            (
                IpAddress::Ipv6(ip.src_addr()),
                IpAddress::Ipv6(ip.dst_addr()),
                ip.next_header(),
                ip.payload(),
            )
        }
        _ => return true,
    };
    match proto {
        IpProtocol::Tcp => {
            TcpPacket::new_checked(payload).is_ok_and(|t| t.verify_checksum(&src, &dst))
        }
        IpProtocol::Udp => {
            UdpPacket::new_checked(payload).is_ok_and(|u| u.verify_checksum(&src, &dst))
        }
        _ => true,
    }
}

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
        loop {
            let packet = Netfront::receive(self)?;
            let trusted = packet.csum_blank || packet.data_validated;
            if self.options().rx_csum_blank && !trusted && !checksums_ok(&packet.data) {
                self.count_bad_checksum();
                continue;
            }
            return Some((NetfrontRxToken(packet.data), NetfrontTxToken(self)));
        }
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
        if self.options().rx_csum_blank {
            // Verified (or known good) in `receive`; smoltcp still fills
            // every checksum it sends.
            let mut c = ChecksumCapabilities::default();
            c.ipv4 = Checksum::Tx;
            c.udp = Checksum::Tx;
            c.tcp = Checksum::Tx;
            c.icmpv4 = Checksum::Tx;
            c.icmpv6 = Checksum::Tx;
            caps.checksum = c;
        }
        caps
    }
}

#[cfg(test)]
mod tests {
    use super::checksums_ok;

    /// Ethernet + IPv4 + UDP "hi" from 10.0.0.1:1000 to 10.0.0.2:7, both
    /// checksums right (computed by hand, checked by smoltcp in the test).
    fn udp_frame() -> [u8; 44] {
        let mut f = [0u8; 44];
        f[12] = 0x08; // IPv4
        let ip = [
            0x45, 0, 0, 30, 0, 1, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        f[14..34].copy_from_slice(&ip);
        let udp = [0x03, 0xe8, 0, 7, 0, 10, 0, 0, b'h', b'i'];
        f[34..44].copy_from_slice(&udp);
        // IPv4 header checksum.
        let sum = |bytes: &[u8], init: u32| {
            let mut s = init;
            for c in bytes.chunks(2) {
                s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
            }
            while s > 0xffff {
                s = (s & 0xffff) + (s >> 16);
            }
            !(s as u16)
        };
        let c = sum(&f[14..34], 0);
        f[24..26].copy_from_slice(&c.to_be_bytes());
        // UDP: pseudo header (addresses, protocol, length) + segment.
        let pseudo: u32 = 0x0a00 + 0x0001 + 0x0a00 + 0x0002 + 17 + 10;
        let c = sum(&f[34..44], pseudo);
        f[40..42].copy_from_slice(&c.to_be_bytes());
        f
    }

    #[test]
    fn good_frames_pass_and_corruption_is_caught() {
        let f = udp_frame();
        assert!(checksums_ok(&f));
        for i in [22, 27, 42, 43] {
            let mut bad = f;
            bad[i] ^= 0x40;
            assert!(!checksums_ok(&bad), "byte {i} flipped");
        }
        // Not IP, or too short to parse: left to smoltcp.
        let mut arp = f;
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert!(checksums_ok(&arp));
        assert!(checksums_ok(&f[..20]));
    }
}
