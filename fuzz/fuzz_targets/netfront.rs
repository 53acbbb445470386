//! netfront's response handling with the fuzzer as a hostile backend over
//! `xen::sim` (the simulated netback of netfront's own tests, included by
//! path): responses to RX buffers and TX requests with any id, offset,
//! flags and status, well-formed packets, producer indices set to anything
//! and raw writes anywhere in both ring pages. Properties: no panic; each
//! response is accepted, counted, or stops the device with an error that
//! stays (and then all work is refused); received packets are non-empty and
//! at most `MAX_RX_PACKET`; disconnecting accounts for every grant.
#![no_main]

#[allow(dead_code, unused_imports, clippy::all)]
#[path = "../../netfront/tests/common/mod.rs"]
mod common;

use common::*;
use libfuzzer_sys::fuzz_target;
use netfront::error::TxError;
use netfront::rx::MAX_RX_PACKET;
use netfront::{ConnectOptions, NetfrontError, TxOffload};
use xen::abi::netif::*;

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let m = Machine::new();
    let mut back = m.backend();
    let options = ConnectOptions {
        rx_csum_blank: true,
        rx_gso: true,
        ring_start: 0,
        max_queues: 1,
    };
    let mut front = connect(&m, &mut back, options).expect("a good backend connects");
    let mut stopped = None;
    let mut rounds = 0;
    // Once the fuzzer wrote the pages itself, the simulated backend (which
    // trusts its own ring) sits out: only pokes and the frontend run on.
    let mut poked = false;
    while !input.0.is_empty() && rounds < 256 {
        rounds += 1;
        let op = input.u8() % 6;
        if poked && op < 3 {
            continue;
        }
        match op {
            0 => {
                let (keep_id, id) = (input.u8() & 1 == 0, input.u16());
                let (offset, flags, status) = (input.u16(), input.u16(), input.u16() as i16);
                back.inject_rx(|r| NetifRxResponse {
                    id: if keep_id { r.id } else { id },
                    offset,
                    flags,
                    status,
                });
            }
            1 => {
                let (keep_id, id, status) = (input.u8() & 1 == 0, input.u16(), input.u16() as i16);
                if back.conn().tx.unconsumed_requests().unwrap_or(0) == 0 {
                    match front.send(&pattern(100, 1), TxOffload::default()) {
                        Ok(()) => {}
                        Err(TxError::Busy) | Err(TxError::Disconnected) => continue,
                        Err(e) => panic!("{e:?}"),
                    }
                }
                if back.conn().tx.unconsumed_requests().unwrap_or(0) > 0 {
                    back.inject_tx(|r| NetifTxResponse {
                        id: if keep_id { r.id } else { id },
                        status,
                    });
                }
            }
            2 => {
                let len = usize::from(input.u16() % 20000) + 1;
                let flags = input.u16() & (NETRXF_DATA_VALIDATED | NETRXF_CSUM_BLANK);
                if back.conn().rx.unconsumed_requests().unwrap_or(0) > 8 {
                    back.send_rx(&pattern(len, 2), flags, None);
                }
            }
            3 => {
                let (tx, value) = (input.u8() & 1 == 0, input.u32());
                let c = back.conn();
                let page = if tx { &c.tx_page } else { &c.rx_page };
                page.write(8, &value.to_ne_bytes()).unwrap();
                poked = true;
            }
            4 => {
                let tx = input.u8() & 1 == 0;
                let offset = usize::from(input.u16() % 4096);
                let len = usize::from(input.u8() % 16) + 1;
                let bytes: Vec<u8> = (0..len).map(|_| input.u8()).collect();
                let c = back.conn();
                let page = if tx { &c.tx_page } else { &c.rx_page };
                let _ = page.write(offset, &bytes);
                poked = true;
            }
            _ => {
                let len = usize::from(input.u16()) + usize::from(input.u8() & 7) * 1000;
                let _ = front.send(&pattern(len, 3), TxOffload::default());
            }
        }
        match front.poll() {
            Ok(()) => assert!(stopped.is_none(), "work after a stop"),
            Err(NetfrontError::Disconnected) => assert!(stopped.is_some()),
            Err(e) => {
                assert!(stopped.is_none(), "a second error {e:?} after {stopped:?}");
                assert_eq!(front.broken(), Some(e));
                stopped = Some(e);
            }
        }
        while let Some(p) = front.receive() {
            assert!(!p.data.is_empty() && p.data.len() <= MAX_RX_PACKET);
        }
        if stopped.is_some() {
            assert_eq!(
                front.send(&pattern(10, 0), TxOffload::default()),
                Err(TxError::Disconnected)
            );
            break;
        }
    }
    let report = run(front.disconnect(), || {});
    assert_eq!(report.revoked + report.leaked, 514);
});
