//! How long the core takes to forward 64 KB of one TCP flow from a client
//! to the uplink: as one GSO super-packet the uplink takes, as one it does
//! not take (segmented in software), and as 44 plain segments.
//!
//! `cargo run --release -p firewall --example offload_bench`

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant as Clock;

use firewall::{
    Capabilities, ClientConfig, ClientId, ClientSideConfig, Config, EthernetAddress, Firewall, Gso,
    GsoKind, Interface, Offload, UplinkConfig,
};
use smoltcp::wire::{
    EthernetFrame, EthernetProtocol, IpAddress, IpProtocol, Ipv4Packet, TcpPacket,
};

const FW_CLIENT_MAC: EthernetAddress = EthernetAddress([0xfe, 0xff, 0xff, 0xff, 0xff, 0xff]);
const A_MAC: EthernetAddress = EthernetAddress([0, 0x16, 0x3e, 0, 0, 0x0a]);
const A_IP: Ipv4Addr = Ipv4Addr::new(10, 138, 0, 10);
const WEB: Ipv4Addr = Ipv4Addr::new(93, 184, 216, 34);
const A: ClientId = ClientId(1);
const MSS: usize = 1448;
const SEGMENTS: usize = 44;
const ROUNDS: usize = 3000;

fn firewall(capabilities: Capabilities) -> Firewall {
    let config = Config::new(
        UplinkConfig {
            mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
            ip4: Ipv4Addr::new(10, 137, 0, 6),
            gateway4: Ipv4Addr::new(10, 137, 0, 1),
            ip6: None,
            gateway6: None,
            gateway_mac: Some(EthernetAddress([2, 0, 0, 0, 0, 9])),
        },
        ClientSideConfig {
            mac: FW_CLIENT_MAC,
            gateway4: Ipv4Addr::new(10, 138, 0, 1),
            gateway6: None,
        },
        &[Ipv4Addr::new(192, 0, 2, 53)],
    );
    let mut fw = Firewall::new(config);
    fw.add_client(
        A,
        ClientConfig {
            ip4: A_IP,
            ip6: None,
            mac: Some(A_MAC),
        },
    );
    fw.set_rules(
        IpAddr::V4(A_IP),
        qubes::firewall_rules::RuleSet::accept_all(),
    );
    fw.set_capabilities(Interface::Uplink, capabilities);
    fw
}

/// A frame from A to the web server with `len` bytes of TCP data; with
/// `blank` its checksum field is left unfilled (its value does not change
/// the work the core does).
fn frame(len: usize, syn: bool, blank: bool) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 40 + len];
    let mut eth = EthernetFrame::new_unchecked(&mut f[..]);
    eth.set_src_addr(A_MAC);
    eth.set_dst_addr(FW_CLIENT_MAC);
    eth.set_ethertype(EthernetProtocol::Ipv4);
    let mut ip = Ipv4Packet::new_unchecked(&mut f[14..]);
    ip.set_version(4);
    ip.set_header_len(20);
    ip.set_total_len((40 + len) as u16);
    ip.set_hop_limit(64);
    ip.set_next_header(IpProtocol::Tcp);
    ip.set_src_addr(A_IP);
    ip.set_dst_addr(WEB);
    ip.fill_checksum();
    let mut tcp = TcpPacket::new_unchecked(&mut f[34..]);
    tcp.set_src_port(40000);
    tcp.set_dst_port(80);
    tcp.set_header_len(20);
    tcp.set_syn(syn);
    tcp.set_ack(!syn);
    tcp.set_window_len(1000);
    for (i, b) in tcp.payload_mut().iter_mut().enumerate() {
        *b = i as u8;
    }
    if !blank {
        tcp.fill_checksum(&IpAddress::Ipv4(A_IP), &IpAddress::Ipv4(WEB));
    }
    f
}

fn main() {
    let now = firewall::Instant::from_secs(1);
    let big = frame(MSS * SEGMENTS, false, true);
    let small = frame(MSS, false, false);
    let gso = Offload {
        csum_blank: true,
        data_validated: true,
        gso: Some(Gso {
            kind: GsoKind::TcpV4,
            mss: MSS as u16,
        }),
    };
    for (name, capabilities, plain) in [
        ("GSO, passed", Capabilities::ALL, false),
        ("GSO, segmented here", Capabilities::NONE, false),
        ("44 plain segments", Capabilities::ALL, true),
    ] {
        let mut fw = firewall(capabilities);
        fw.handle(now, Interface::Client(A), &frame(0, true, false));
        let start = Clock::now();
        let mut frames = 0;
        for _ in 0..ROUNDS {
            if plain {
                for _ in 0..SEGMENTS {
                    frames += fw.handle(now, Interface::Client(A), &small).len();
                }
            } else {
                frames += fw
                    .handle_offloaded(now, Interface::Client(A), &big, gso)
                    .len();
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        let c = fw.counters();
        println!(
            "{name}: {:.1} us per {} data bytes ({frames} frames out; gso={} plain={} segmented={})",
            seconds / ROUNDS as f64 * 1e6,
            MSS * SEGMENTS,
            c.forwarded_gso,
            c.forwarded_plain,
            c.gso_segmented
        );
    }
}
