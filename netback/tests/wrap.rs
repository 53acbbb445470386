//! Ring indices are free-running u32s: our netfront and netback started
//! just below 2^32 must carry traffic across the wrap unchanged
//! (property test over the start index, packet sizes and offloads).

mod common;

use common::*;
use netback::{BackendOptions, Offload, Packet};
use netfront::{ConnectOptions, Gso, GsoKind, TxOffload};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn traffic_is_intact_across_index_wrap(
        back_off in 0u32..300,
        sizes in prop::collection::vec(prop_oneof![14usize..=1514, 14usize..=65535], 1..10),
        gso in any::<bool>(),
        burst in 1usize..6,
    ) {
        let start = u32::MAX - back_off;
        let m = Machine::new();
        m.add_vif(FRONT);
        let mut back = Backend::new(&m);
        let options = ConnectOptions { rx_csum_blank: true, rx_gso: true, ring_start: start, max_queues: 1 };
        let (front, vif) = connect_pair(&m, &mut back, FRONT, options, BackendOptions::default());
        let (mut front, mut vif) = (front.unwrap(), vif.unwrap());
        // Slots moved each way; the wrap is crossed once these pass
        // `back_off + 1`, and we go a ring's worth beyond.
        let needed = u64::from(back_off) + 300;
        let (mut tx_slots, mut rx_slots, mut round) = (0u64, 0u64, 0usize);
        while tx_slots < needed || rx_slots < needed {
            let mut expect = Vec::new();
            for b in 0..burst {
                let len = sizes[(round + b) % sizes.len()];
                let seed = (round + b) as u8;
                let big = gso && len > 1514;
                let offload = TxOffload {
                    csum_blank: gso,
                    data_validated: false,
                    gso: big.then_some(Gso { kind: GsoKind::TcpV4, mss: 1448 }),
                };
                if !front.can_send(len, &offload) {
                    break;
                }
                front.send(&pattern(len, seed), offload).unwrap();
                tx_slots += (len.div_ceil(4096) + usize::from(big)) as u64;
                expect.push((len, seed, big));
            }
            let got = backend_take(&mut back, &mut vif);
            prop_assert_eq!(got.len(), expect.len());
            for (p, (len, seed, big)) in got.iter().zip(&expect) {
                prop_assert!(p.data == pattern(*len, *seed), "TX bytes differ at len {}", len);
                prop_assert_eq!(p.offload.gso.is_some(), *big);
                prop_assert_eq!(p.offload.csum_blank, gso);
            }
            front.poll().unwrap();
            prop_assert_eq!(front.tx().in_flight(), 0);

            for (len, seed, big) in &expect {
                let out = Packet {
                    data: pattern(*len, !*seed),
                    offload: Offload {
                        csum_blank: false,
                        data_validated: true,
                        gso: big.then_some(netback::Gso { kind: netback::GsoKind::TcpV6, mss: 1400 }),
                    },
                };
                prop_assert!(vif.send(out));
                rx_slots += (len.div_ceil(4096) + usize::from(*big)) as u64;
            }
            while vif.deliver(&mut back.env, 4).unwrap().more {}
            prop_assert_eq!(vif.queued(), 0, "frontend had buffers for all");
            front.poll().unwrap();
            for (len, seed, big) in &expect {
                let p = front.receive().unwrap();
                prop_assert!(p.data == pattern(*len, !*seed), "RX bytes differ at len {}", len);
                prop_assert_eq!(p.gso.is_some(), *big);
            }
            round += burst;
        }
        let s = vif.stats();
        prop_assert_eq!((s.violations, s.tx_errors, s.rx_errors, s.rx_dropped), (0, 0, 0, 0));
        prop_assert_eq!(front.rx().stats.dropped, 0);
        // Both rings' indices went past 2^32.
        prop_assert!(tx_slots > u64::from(back_off) + 1 && rx_slots > u64::from(back_off) + 1);
    }
}
