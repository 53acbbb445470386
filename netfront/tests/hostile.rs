//! A hostile backend: arbitrary responses and ring indices never make the
//! frontend panic or read out of bounds; each is either accepted (valid),
//! counted (error status), or stops the device with an error after which
//! it refuses all work.

mod common;

use common::*;
use netfront::error::TxError;
use netfront::rx::MAX_RX_PACKET;
use netfront::{ConnectOptions, NetfrontError, TxOffload};
use proptest::prelude::*;
use xen::abi::netif::*;

#[derive(Clone, Debug)]
enum Action {
    /// A response to a posted RX buffer; `keep_id` answers with the right
    /// id so the other fields get exercised.
    Rx {
        keep_id: bool,
        id: u16,
        offset: u16,
        flags: u16,
        status: i16,
    },
    /// A response to an outstanding TX request.
    Tx { keep_id: bool, id: u16, status: i16 },
    /// A well-formed packet.
    Valid(usize),
    /// Overwrite a response producer index.
    RspProd { tx: bool, value: u32 },
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        (
            any::<bool>(),
            any::<u16>(),
            prop_oneof![Just(0u16), any::<u16>()],
            0u16..32,
            any::<i16>()
        )
            .prop_map(|(keep_id, id, offset, flags, status)| Action::Rx {
                keep_id,
                id,
                offset,
                flags,
                status
            }),
        (any::<bool>(), any::<u16>(), -3i16..3).prop_map(|(keep_id, id, status)| Action::Tx {
            keep_id,
            id,
            status
        }),
        (1usize..20000).prop_map(Action::Valid),
        (any::<bool>(), any::<u32>()).prop_map(|(tx, value)| Action::RspProd { tx, value }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn hostile_responses_never_panic(actions in prop::collection::vec(action(), 1..40)) {
        let m = Machine::new();
        let mut back = m.backend();
        let options = ConnectOptions { rx_csum_blank: true, rx_gso: true, ring_start: 0, max_queues: 1 };
        let mut front = connect(&m, &mut back, options).unwrap();
        let mut stopped = None;
        for a in actions {
            match a {
                Action::Rx { keep_id, id, offset, flags, status } => {
                    back.inject_rx(|r| NetifRxResponse {
                        id: if keep_id { r.id } else { id }, offset, flags, status,
                    });
                }
                Action::Tx { keep_id, id, status } => {
                    if back.conn().tx.unconsumed_requests().unwrap() == 0 {
                        match front.send(&pattern(100, 1), TxOffload::default()) {
                            Ok(()) => {}
                            Err(TxError::Busy) | Err(TxError::Disconnected) => continue,
                            Err(e) => prop_assert!(false, "{e:?}"),
                        }
                    }
                    back.inject_tx(|r| NetifTxResponse { id: if keep_id { r.id } else { id }, status });
                }
                Action::Valid(len) => {
                    if back.conn().rx.unconsumed_requests().unwrap_or(0) > 8 {
                        back.send_rx(&pattern(len, 2), 0, None);
                    }
                }
                Action::RspProd { tx, value } => {
                    let c = back.conn();
                    let page = if tx { &c.tx_page } else { &c.rx_page };
                    page.write(8, &value.to_ne_bytes()).unwrap();
                }
            }
            match front.poll() {
                Ok(()) => prop_assert!(stopped.is_none()),
                Err(NetfrontError::Disconnected) => prop_assert!(stopped.is_some()),
                Err(e) => {
                    prop_assert!(stopped.is_none());
                    prop_assert_eq!(front.broken(), Some(e));
                    stopped = Some(e);
                }
            }
            while let Some(p) = front.receive() {
                prop_assert!(!p.data.is_empty() && p.data.len() <= MAX_RX_PACKET);
            }
            if stopped.is_some() {
                prop_assert_eq!(
                    front.send(&pattern(10, 0), TxOffload::default()),
                    Err(TxError::Disconnected)
                );
                // A hostile backend may also have moved the ring indices so
                // far that it cannot be answered any more: stop here.
                break;
            }
        }
        let report = run(front.disconnect(), || {});
        prop_assert_eq!(report.revoked + report.leaked, 514);
    }
}
