//! Arbitrary and mutated frames from any interface never panic the
//! firewall, and its tables stay within their bounds.

mod common;

use common::*;
use firewall::offload::{self, Fitted};
use firewall::{Capabilities, Firewall, Gso, GsoKind, Interface, Offload};
use proptest::prelude::*;
use std::net::IpAddr;

fn interface() -> impl Strategy<Value = Interface> {
    prop_oneof![
        Just(Interface::Uplink),
        Just(Interface::Client(A)),
        Just(Interface::Client(B)),
        Just(Interface::Client(firewall::ClientId(7))),
    ]
}

/// Valid frames of every kind the tests know, to be mutated.
fn seeds() -> Vec<Vec<u8>> {
    let a4 = IpAddr::V4(A_IP);
    let sent = {
        let mut fw = firewall(true);
        let out = fw.handle(
            t(0),
            Interface::Client(A),
            &from_a(&udp(a4, 1, IpAddr::V4(WEB), 2, b"x")),
        );
        out[0].frame[14..].to_vec()
    };
    vec![
        from_a(&tcp(A_IP, 40000, WEB, 80, SYN)),
        from_a(&udp(A_IP, 4000, VIRTUAL_DNS, 53, b"q")),
        from_a(&icmp4_echo(A_IP, WEB, 1, true)),
        from_a(&tcp(A_IP6, 40000, WEB6, 80, SYN)),
        from_a(&icmp6_echo(A_IP6, CLIENT_GW6, 1, true)),
        from_uplink(&tcp(WEB, 80, UPLINK_IP, 40000, SYN_ACK)),
        from_uplink(&udp(UPSTREAM_DNS, 53, UPLINK_IP, 4000, b"a")),
        from_uplink(&icmp4_error(WEB, UPLINK_IP, 3, 3, &sent)),
        from_uplink(&icmp4_echo(WEB, UPLINK_IP, 1, false)),
        from_a(&icmp4(A_IP, WEB, 13, 2)),
        from_a(&tcp(A_IP, 40001, CLIENT_GW, 22, SYN)),
        from_a(&udp(A_IP, 67, CLIENT_GW, 68, b"d")),
        from_a(&tcp(A_IP6, 40002, UPLINK_IP6, 22, SYN)),
        ns(A_IP6, CLIENT_GW6, 255),
        from_uplink(&icmp4(WEB, UPLINK_IP, 14, 2)),
    ]
}

fn check_bounds(fw: &Firewall) {
    assert!(fw.conntrack().len() <= fw.conntrack().capacity());
    assert!(fw.tracked_fragmented_datagrams() <= fw.config().max_fragmented_datagrams);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_frames_never_panic(
        frames in prop::collection::vec((interface(), prop::collection::vec(any::<u8>(), 0..200)), 1..20)
    ) {
        let mut fw = firewall(true);
        for (i, (iface, frame)) in frames.iter().enumerate() {
            let out = fw.handle(t(i as i64), *iface, frame);
            prop_assert!(out.len() <= 2);
            check_bounds(&fw);
        }
    }

    #[test]
    fn mutated_valid_frames_never_panic(
        seed in 0usize..15,
        mutations in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        truncate in any::<prop::sample::Index>(),
        cut in any::<bool>(),
    ) {
        let mut fw = firewall(true);
        // Open a few flows first so that replies and errors find state.
        for frame in seeds() {
            let iface = if frame[0..6] == FW_CLIENT_MAC.0 { Interface::Client(A) } else { Interface::Uplink };
            fw.handle(t(0), iface, &frame);
        }
        let mut frame = seeds()[seed].clone();
        for (index, value) in &mutations {
            let at = index.index(frame.len());
            frame[at] = *value;
        }
        if cut {
            frame.truncate(truncate.index(frame.len() + 1));
        }
        for iface in [Interface::Uplink, Interface::Client(A), Interface::Client(B)] {
            fw.handle(t(1), iface, &frame);
            check_bounds(&fw);
        }
    }

    #[test]
    fn mutated_frames_with_any_offload_never_panic(
        seed in 0usize..15,
        mutations in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        csum_blank in any::<bool>(),
        data_validated in any::<bool>(),
        gso in prop::option::of((any::<bool>(), any::<u16>())),
        caps in any::<[bool; 4]>(),
    ) {
        let mut fw = firewall(true);
        let caps = Capabilities {
            gso_tcpv4: caps[0],
            gso_tcpv6: caps[1],
            csum_blank_v4: caps[2],
            csum_blank_v6: caps[3],
        };
        fw.set_capabilities(Interface::Uplink, caps);
        fw.set_capabilities(Interface::Client(A), caps);
        for frame in seeds() {
            let iface = if frame[0..6] == FW_CLIENT_MAC.0 { Interface::Client(A) } else { Interface::Uplink };
            fw.handle(t(0), iface, &frame);
        }
        let mut frame = seeds()[seed].clone();
        for (index, value) in &mutations {
            let at = index.index(frame.len());
            frame[at] = *value;
        }
        let offload = Offload {
            csum_blank,
            data_validated,
            gso: gso.map(|(v6, mss)| Gso {
                kind: if v6 { GsoKind::TcpV6 } else { GsoKind::TcpV4 },
                mss,
            }),
        };
        for iface in [Interface::Uplink, Interface::Client(A)] {
            let out = fw.handle_offloaded(t(1), iface, &frame, offload);
            // A frame of under 200 bytes is at most a few segments.
            prop_assert!(out.len() <= 8);
            check_bounds(&fw);
        }
        // The fallbacks alone, on whatever bytes.
        let _ = offload::segment(&frame, 1);
        let mut copy = frame.clone();
        let _ = offload::complete_checksum(&mut copy);
        if let Fitted::Segmented(segments) = offload::fit(frame.clone(), offload, &Capabilities::NONE) {
            prop_assert!(!segments.is_empty());
        }
    }
}
