//! DHCP's carriage: Ethernet, IPv4 (no options sent, any accepted) and
//! UDP, read in place and written whole. Only what a DHCP client needs:
//! telling whether a frame is a datagram to the client port, and building
//! its own datagrams.

use alloc::vec::Vec;
use core::net::Ipv4Addr;

use super::wire::{CLIENT_PORT, SERVER_PORT};

/// Ethernet header length (no VLAN tag).
pub const ETHERNET_HEADER_LEN: usize = 14;
/// IPv4 header length without options.
pub const IPV4_HEADER_LEN: usize = 20;
/// UDP header length.
pub const UDP_HEADER_LEN: usize = 8;
/// The broadcast MAC.
pub const BROADCAST_MAC: [u8; 6] = [0xff; 6];
/// The IPv4 ethertype.
const ETHERTYPE_IPV4: u16 = 0x0800;
/// The UDP protocol number.
const PROTOCOL_UDP: u8 = 17;
/// The TTL of the client's datagrams.
const TTL: u8 = 64;

/// Why a datagram to the client port was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The IPv4 header checksum is wrong.
    IpChecksum,
    /// The IPv4 total length is shorter than its header or longer than the
    /// frame.
    IpLength,
    /// The first fragment of a datagram (DHCP messages are not
    /// reassembled).
    Fragmented,
    /// The UDP length does not fit the IP payload.
    UdpLength,
    /// The UDP checksum is wrong.
    UdpChecksum,
    /// Not from the server port 67.
    SourcePort(u16),
}

impl core::fmt::Display for FrameError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::IpChecksum => write!(f, "bad IPv4 header checksum"),
            Self::IpLength => write!(f, "bad IPv4 total length"),
            Self::Fragmented => write!(f, "fragmented"),
            Self::UdpLength => write!(f, "bad UDP length"),
            Self::UdpChecksum => write!(f, "bad UDP checksum"),
            Self::SourcePort(p) => write!(f, "from UDP port {p}, not {SERVER_PORT}"),
        }
    }
}

/// A UDP datagram to the client port, as it lies in its frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Datagram<'a> {
    /// The Ethernet source (the server, or its relay or router).
    pub src_mac: [u8; 6],
    /// The IPv4 source.
    pub src_ip: Ipv4Addr,
    /// The IPv4 destination (ours, or a broadcast).
    pub dst_ip: Ipv4Addr,
    /// The UDP payload: the DHCP message.
    pub payload: &'a [u8],
}

/// The one's-complement sum of `data` (RFC 1071), not folded.
fn sum(data: &[u8]) -> u32 {
    let mut total = 0u32;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        total = total.wrapping_add(u32::from(u16::from_be_bytes([c[0], c[1]])));
    }
    if let [last] = chunks.remainder() {
        total = total.wrapping_add(u32::from(*last) << 8);
    }
    total
}

fn fold(mut total: u32) -> u16 {
    while total > 0xffff {
        total = (total & 0xffff) + (total >> 16);
    }
    total as u16
}

/// The UDP checksum field value of `udp` (header and payload, its
/// checksum field zero) between `src` and `dst`: 0 is sent as 0xffff.
fn udp_checksum(src: Ipv4Addr, dst: Ipv4Addr, udp: &[u8]) -> u16 {
    let pseudo = sum(&src.octets())
        .wrapping_add(sum(&dst.octets()))
        .wrapping_add(u32::from(PROTOCOL_UDP))
        .wrapping_add(udp.len() as u32);
    match !fold(pseudo.wrapping_add(sum(udp))) {
        0 => 0xffff,
        c => c,
    }
}

fn be16(data: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([data[at], data[at + 1]])
}

/// The IPv4 header length of `frame` if it carries (the first fragment
/// of) a UDP datagram to port 68; None for anything else (not IPv4, not
/// UDP, another port, a later fragment, or too short to tell).
fn client_port_header_len(frame: &[u8]) -> Option<usize> {
    if frame.len() < ETHERNET_HEADER_LEN + IPV4_HEADER_LEN + UDP_HEADER_LEN
        || be16(frame, 12) != ETHERTYPE_IPV4
    {
        return None;
    }
    let ip = &frame[ETHERNET_HEADER_LEN..];
    let header_len = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || header_len < IPV4_HEADER_LEN || ip[9] != PROTOCOL_UDP {
        return None;
    }
    if be16(ip, 6) & 0x1fff != 0 {
        // A later fragment: no UDP header to tell.
        return None;
    }
    let udp_header = ip.get(header_len..header_len + UDP_HEADER_LEN)?;
    (be16(udp_header, 2) == CLIENT_PORT).then_some(header_len)
}

/// Whether `frame` is addressed to the DHCP client's port (UDP 68): a
/// caller holding a frame whose UDP checksum was left blank (a backend's
/// checksum offload) fills it before [`client_datagram`] checks it.
pub fn to_client_port(frame: &[u8]) -> bool {
    client_port_header_len(frame).is_some()
}

/// The datagram `frame` carries to UDP port 68: `Ok(None)` when it is
/// something else (not IPv4, not UDP, another port, a later fragment, or
/// too short to tell), `Err` when it is for the client port but unusable.
pub fn client_datagram(frame: &[u8]) -> Result<Option<Datagram<'_>>, FrameError> {
    let Some(header_len) = client_port_header_len(frame) else {
        return Ok(None);
    };
    let ip = &frame[ETHERNET_HEADER_LEN..];
    let fragment = be16(ip, 6);
    let udp_header = &ip[header_len..header_len + UDP_HEADER_LEN];
    // Ours from here on: every fault is an error.
    if fold(sum(&ip[..header_len])) != 0xffff {
        return Err(FrameError::IpChecksum);
    }
    let total = usize::from(be16(ip, 2));
    if total < header_len + UDP_HEADER_LEN || total > ip.len() {
        return Err(FrameError::IpLength);
    }
    if fragment & 0x2000 != 0 {
        return Err(FrameError::Fragmented);
    }
    let src_port = be16(udp_header, 0);
    if src_port != SERVER_PORT {
        return Err(FrameError::SourcePort(src_port));
    }
    let udp = &ip[header_len..total];
    let udp_len = usize::from(be16(udp, 4));
    if udp_len < UDP_HEADER_LEN || udp_len > udp.len() {
        return Err(FrameError::UdpLength);
    }
    let udp = &udp[..udp_len];
    let src_ip = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst_ip = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    if be16(udp, 6) != 0 {
        let pseudo = sum(&src_ip.octets())
            .wrapping_add(sum(&dst_ip.octets()))
            .wrapping_add(u32::from(PROTOCOL_UDP))
            .wrapping_add(udp.len() as u32);
        if fold(pseudo.wrapping_add(sum(udp))) != 0xffff {
            return Err(FrameError::UdpChecksum);
        }
    }
    let mut src_mac = [0; 6];
    src_mac.copy_from_slice(&frame[6..12]);
    Ok(Some(Datagram {
        src_mac,
        src_ip,
        dst_ip,
        payload: &udp[UDP_HEADER_LEN..],
    }))
}

/// A frame carrying `payload` from the client port of `src_ip` to the
/// server port of `dst_ip`, Ethernet `src_mac` to `dst_mac`, both
/// checksums computed.
pub fn client_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src_ip: Ipv4Addr,
    dst_ip: Ipv4Addr,
    payload: &[u8],
) -> Vec<u8> {
    let udp_len = UDP_HEADER_LEN + payload.len();
    let ip_len = IPV4_HEADER_LEN + udp_len;
    let mut frame = Vec::with_capacity(ETHERNET_HEADER_LEN + ip_len);
    frame.extend_from_slice(&dst_mac);
    frame.extend_from_slice(&src_mac);
    frame.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    let ip_start = frame.len();
    frame.extend_from_slice(&[0x45, 0]);
    frame.extend_from_slice(&(ip_len as u16).to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 0, TTL, PROTOCOL_UDP, 0, 0]);
    frame.extend_from_slice(&src_ip.octets());
    frame.extend_from_slice(&dst_ip.octets());
    let checksum = !fold(sum(&frame[ip_start..]));
    frame[ip_start + 10..ip_start + 12].copy_from_slice(&checksum.to_be_bytes());
    let udp_start = frame.len();
    frame.extend_from_slice(&CLIENT_PORT.to_be_bytes());
    frame.extend_from_slice(&SERVER_PORT.to_be_bytes());
    frame.extend_from_slice(&(udp_len as u16).to_be_bytes());
    frame.extend_from_slice(&[0, 0]);
    frame.extend_from_slice(payload);
    let checksum = udp_checksum(src_ip, dst_ip, &frame[udp_start..]);
    frame[udp_start + 6..udp_start + 8].copy_from_slice(&checksum.to_be_bytes());
    frame
}

/// A frame from the server port of `src_ip` to the client port of
/// `dst_ip` (what a server sends; for tests and simulations).
pub fn server_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src_ip: Ipv4Addr,
    dst_ip: Ipv4Addr,
    payload: &[u8],
) -> Vec<u8> {
    let mut frame = client_frame(src_mac, dst_mac, src_ip, dst_ip, payload);
    let udp_start = ETHERNET_HEADER_LEN + IPV4_HEADER_LEN;
    frame[udp_start..udp_start + 2].copy_from_slice(&SERVER_PORT.to_be_bytes());
    frame[udp_start + 2..udp_start + 4].copy_from_slice(&CLIENT_PORT.to_be_bytes());
    // Ports swapped: the sum is unchanged.
    frame
}

/// The UDP payload of a frame the client built (for tests and
/// simulations): `(dst_mac, src_ip, dst_ip, payload)` if it is a datagram
/// from port 68 to port 67.
pub fn client_payload(frame: &[u8]) -> Option<([u8; 6], Ipv4Addr, Ipv4Addr, &[u8])> {
    let ip = frame.get(ETHERNET_HEADER_LEN..)?;
    if frame.len() < ETHERNET_HEADER_LEN + IPV4_HEADER_LEN + UDP_HEADER_LEN
        || be16(frame, 12) != ETHERTYPE_IPV4
        || ip[0] != 0x45
        || ip[9] != PROTOCOL_UDP
    {
        return None;
    }
    let udp = &ip[IPV4_HEADER_LEN..];
    if be16(udp, 0) != CLIENT_PORT || be16(udp, 2) != SERVER_PORT {
        return None;
    }
    let len = usize::from(be16(udp, 4));
    let payload = udp.get(UDP_HEADER_LEN..len)?;
    let mut dst_mac = [0; 6];
    dst_mac.copy_from_slice(&frame[..6]);
    Some((
        dst_mac,
        Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        payload,
    ))
}
