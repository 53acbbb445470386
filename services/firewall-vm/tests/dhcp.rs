//! The firewall VM without any configured uplink address: it asks DHCP,
//! forwards once the lease configures it, keeps DHCP's datagrams from the
//! core, and stops using the address when the lease is lost.

use std::net::{IpAddr, Ipv4Addr};

use firewall_vm::{FirewallSettings, FirewallVm};
use netfront::MacAddress;
use netvm::config::{Changed, Snapshot};
use netvm::dhcp::frame::{client_payload, server_frame};
use netvm::dhcp::wire::{option, MessageType, Packet as Dhcp, BOOTREPLY, HTYPE_ETHERNET, MIN_LEN};
use netvm::identity::Key;
use netvm::{Link, Offload, Packet, Service, To, Transmit, UplinkInfo};

const FW_MAC: [u8; 6] = [0, 0x16, 0x3e, 0x6d, 0x6f, 0x10];
const SERVER_MAC: [u8; 6] = [0, 0x16, 0x3e, 0, 0, 0x01];
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const LEASED: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 50);
const S: u64 = 1_000_000_000;

fn print(line: &str) {
    println!("{line}");
}

/// The server's reply of `kind` to the client's frame `request`.
fn answer(request: &[u8], kind: MessageType) -> Packet {
    let (_, _, _, payload) = client_payload(request).expect("a DHCP datagram");
    let asked = Dhcp::new_checked(payload).unwrap();
    let mut buf = vec![0u8; MIN_LEN];
    {
        let mut p = Dhcp::new_unchecked(&mut buf[..]);
        p.set_op(BOOTREPLY);
        p.set_htype(HTYPE_ETHERNET);
        p.set_hlen(6);
        p.set_xid(asked.xid());
        p.set_yiaddr(LEASED);
        p.set_client_mac(asked.client_mac());
        p.clear_names_and_set_cookie();
    }
    buf.extend_from_slice(&[option::MESSAGE_TYPE, 1, kind.to_u8()]);
    for (code, addr) in [
        (option::SERVER_ID, SERVER),
        (option::ROUTER, SERVER),
        (option::DNS, SERVER),
    ] {
        buf.extend_from_slice(&[code, 4]);
        buf.extend_from_slice(&addr.octets());
    }
    buf.extend_from_slice(&[option::LEASE_TIME, 4, 0, 0, 0, 100]);
    buf.push(option::END);
    Packet {
        data: server_frame(SERVER_MAC, FW_MAC, SERVER, LEASED, &buf),
        offload: Offload::default(),
    }
}

fn uplink_frames(out: &mut Vec<Transmit>) -> Vec<Vec<u8>> {
    out.drain(..)
        .filter(|t| t.to == To::Uplink)
        .map(|t| t.packet.data)
        .collect()
}

#[test]
fn without_an_address_the_uplink_asks_dhcp() {
    let mut vm = FirewallVm::new(FirewallSettings::default(), print);
    vm.uplink_up(
        0,
        &UplinkInfo {
            mac: MacAddress(FW_MAC),
            backend: "/local/domain/0/backend/vif/7/0".into(),
            // No IPv4 address in the vif's ip: DHCP.
            ip: Key::Valid(vec![IpAddr::V6("2001:db8::10".parse().unwrap())]),
            features: netfront::BackendFeatures::default(),
        },
    );
    vm.configure(
        0,
        &Snapshot::default(),
        &Changed {
            all: true,
            ..Changed::default()
        },
    );
    assert!(vm.firewall().is_none(), "no address yet");
    let mut out = Vec::new();
    vm.tick(0, &mut out);
    let discover = uplink_frames(&mut out).pop().expect("a DISCOVER");
    vm.handle(
        S,
        Link::Uplink,
        answer(&discover, MessageType::Offer),
        &mut out,
    );
    let request = uplink_frames(&mut out).pop().expect("a REQUEST");
    vm.handle(
        S,
        Link::Uplink,
        answer(&request, MessageType::Ack),
        &mut out,
    );
    let fw = vm.firewall().expect("configured by the lease");
    assert_eq!(fw.config().uplink.ip4, LEASED);
    assert_eq!(fw.config().uplink.gateway4, SERVER);
    assert_eq!(
        fw.counters().frames_in,
        0,
        "DHCP's datagrams never reach the core"
    );
    assert_eq!(vm.stats.unconfigured, 0);
    // T1 at 51 s: a unicast renewal; nobody answers; at the lease's end
    // the firewall stops using the address.
    vm.tick(51 * S, &mut out);
    let renew = uplink_frames(&mut out).pop().expect("a renewal");
    assert_eq!(client_payload(&renew).unwrap().2, SERVER);
    vm.tick(101 * S, &mut out);
    assert!(vm.firewall().is_none(), "lease lost");
    assert_eq!(uplink_frames(&mut out).len(), 1, "discovering again");
    // dom0 writes an address: DHCP stops, the firewall uses it.
    let mut s = Snapshot::default();
    s.nodes.insert("qubes-ip".into(), b"10.99.0.7".to_vec());
    s.nodes
        .insert("qubes-gateway".into(), b"10.99.0.1".to_vec());
    vm.configure(
        102 * S,
        &s,
        &Changed {
            all: true,
            ..Changed::default()
        },
    );
    assert_eq!(
        vm.firewall().unwrap().config().uplink.ip4,
        Ipv4Addr::new(10, 99, 0, 7)
    );
    vm.tick(1000 * S, &mut out);
    assert!(uplink_frames(&mut out).is_empty(), "no DHCP any more");
}

/// `packet` as Linux's netback hands a datagram whose checksum a local
/// sender left to offload (CHECKSUM_PARTIAL): the UDP checksum field holds
/// only a partial sum, and the frame is flagged `csum_blank`.
fn blank_checksum(mut packet: Packet) -> Packet {
    let at = 14 + 20 + 6;
    packet.data[at..at + 2].copy_from_slice(&0x1234u16.to_be_bytes());
    packet.offload.csum_blank = true;
    packet
}

#[test]
fn replies_with_blank_checksums_are_taken() {
    // dnsmasq in dom0 answers over the bridge; our netfront takes blank
    // checksums, so the OFFER and ACK come with the checksum not filled
    // in. The rig's first DHCP run: dnsmasq offered every 64 s and the
    // firewall dropped each offer as corrupt.
    let mut vm = FirewallVm::new(FirewallSettings::default(), print);
    vm.uplink_up(
        0,
        &UplinkInfo {
            mac: MacAddress(FW_MAC),
            backend: "/local/domain/0/backend/vif/7/0".into(),
            ip: Key::Valid(vec![]),
            features: netfront::BackendFeatures::default(),
        },
    );
    vm.configure(
        0,
        &Snapshot::default(),
        &Changed {
            all: true,
            ..Changed::default()
        },
    );
    let mut out = Vec::new();
    vm.tick(0, &mut out);
    let discover = uplink_frames(&mut out).pop().expect("a DISCOVER");
    // The same junk without the flag is a corrupt datagram: dropped.
    let mut corrupt = blank_checksum(answer(&discover, MessageType::Offer));
    corrupt.offload.csum_blank = false;
    vm.handle(S, Link::Uplink, corrupt, &mut out);
    assert!(uplink_frames(&mut out).is_empty(), "a corrupt offer taken");
    vm.handle(
        S,
        Link::Uplink,
        blank_checksum(answer(&discover, MessageType::Offer)),
        &mut out,
    );
    let request = uplink_frames(&mut out).pop().expect("a REQUEST");
    vm.handle(
        S,
        Link::Uplink,
        blank_checksum(answer(&request, MessageType::Ack)),
        &mut out,
    );
    assert_eq!(
        vm.firewall().expect("configured").config().uplink.ip4,
        LEASED
    );
}
