//! Ring indices are free-running u32s: starting them just below 2^32 must
//! change nothing (property test over start index and packet sizes).

mod common;

use common::*;
use netfront::{ConnectOptions, Gso, GsoKind, TxOffload};
use proptest::prelude::*;
use xen::abi::netif::*;

fn read_u32(page: &xen::shared_page::SharedPage<xen::sim::SimPage>, offset: usize) -> u32 {
    let mut b = [0; 4];
    page.read(offset, &mut b).unwrap();
    u32::from_ne_bytes(b)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn traffic_is_intact_across_index_wrap(
        back_off in 0u32..400,
        sizes in prop::collection::vec(prop_oneof![1usize..=1514, 1usize..=XEN_NETIF_MAX_TX_SIZE], 1..12),
        gso in any::<bool>(),
    ) {
        let start = u32::MAX - back_off;
        let m = Machine::new();
        let mut back = m.backend();
        let options = ConnectOptions { rx_csum_blank: true, rx_gso: true, ring_start: start, max_queues: 1 };
        let mut front = connect(&m, &mut back, options).unwrap();
        // Enough traffic that both rings pass 2^32 by at least a ring's worth.
        let needed = u64::from(back_off) + 300;
        let (mut tx_slots, mut rx_slots, mut round) = (0u64, 0u64, 0usize);
        while tx_slots < needed || rx_slots < needed {
            let len = sizes[round % sizes.len()];
            let seed = round as u8;
            let offload = TxOffload {
                csum_blank: gso,
                data_validated: false,
                gso: (gso && len > 1514).then_some(Gso { kind: GsoKind::TcpV4, mss: 1448 }),
            };
            front.send(&pattern(len, seed), offload).unwrap();
            prop_assert_eq!(back.process_tx(), 1);
            let got = back.received.pop().unwrap();
            prop_assert!(got.data == pattern(len, seed), "TX bytes differ at len {}", len);
            prop_assert_eq!(got.extra.is_some(), offload.gso.is_some());
            tx_slots += got.slots as u64;
            front.poll().unwrap();
            prop_assert_eq!(front.tx().in_flight(), 0);

            let rx_gso = (gso && len > 1514).then_some(NetifExtraInfoGso {
                type_: XEN_NETIF_EXTRA_TYPE_GSO, flags: 0, size: 1400,
                gso_type: XEN_NETIF_GSO_TYPE_TCPV6, pad: 0, features: 0,
            });
            prop_assert!(back.send_rx(&pattern(len, !seed), NETRXF_DATA_VALIDATED, rx_gso));
            rx_slots += (len.div_ceil(4096) + usize::from(rx_gso.is_some())) as u64;
            front.poll().unwrap();
            let p = front.receive().unwrap();
            prop_assert!(p.data == pattern(len, !seed), "RX bytes differ at len {}", len);
            prop_assert_eq!(p.gso.is_some(), rx_gso.is_some());
            round += 1;
        }
        // Both producer indices really wrapped.
        let c = back.conn();
        prop_assert!(read_u32(&c.tx_page, 0) < start);
        prop_assert!(read_u32(&c.rx_page, 0) < start);
        prop_assert!(read_u32(&c.rx_page, 8) < start);
        prop_assert_eq!(front.rx().stats.dropped, 0);
    }
}
