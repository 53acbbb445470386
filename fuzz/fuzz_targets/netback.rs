//! netback's request handling with the fuzzer as a hostile frontend over
//! `xen::sim`: it pushes TX and RX requests with any grant (good, foreign,
//! bogus), offset, flags, id and size (so extra-info slots, chains and runts
//! too), scribbles its two ring pages anywhere (indices included), and
//! between its moves the backend receives, is handed packets and delivers.
//! Properties: no panic; every outcome is a packet, an error response with
//! a counted violation, or a sticky `Fatal`; packets handed out are 14 to
//! 65535 bytes; a round never does more than its budget; responses are
//! well-formed statuses; violations stay within the limit; releasing the
//! vif unmaps everything it mapped. Also the xenstore value parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netback::config::{parse_u32, EventChannels};
use netback::sim::SimNetbackEnv;
use netback::{BackendDevice, BackendOptions, FrontendConfig, Offload, Packet, Vif};
use xen::abi::netif::*;
use xen::abi::{DomId, GrantRef};
use xen::shared_page::SharedPage;
use xen::sim::SimHypervisor;

const FRONT: DomId = 1;
const BACK: DomId = 2;

fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_add(seed)).collect();
    if len >= 14 {
        v[12] = 0x88;
        v[13] = 0xb5;
    }
    v
}

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
    let _ = parse_u32(data);
    let mut input = Input(data);
    let hv = SimHypervisor::new();
    let tx_page = hv.alloc_page_of(FRONT);
    let rx_page = hv.alloc_page_of(FRONT);
    let tx_raw = SharedPage::new(tx_page.memory().clone());
    let rx_raw = SharedPage::new(rx_page.memory().clone());
    let tx_ref = hv
        .grant_access(FRONT, BACK, tx_page.frame(), false)
        .unwrap();
    let rx_ref = hv
        .grant_access(FRONT, BACK, rx_page.frame(), false)
        .unwrap();
    let port = hv.alloc_unbound(FRONT, BACK).unwrap();
    let data_page = hv.alloc_page_of(FRONT);
    data_page.write(0, &frame(4096, 3)).unwrap();
    let data_ref = hv
        .grant_access(FRONT, BACK, data_page.frame(), true)
        .unwrap();
    let elsewhere = hv.grant_access(FRONT, 7, data_page.frame(), true).unwrap();
    let rx_bufs: Vec<_> = (0..8)
        .map(|_| {
            let p = hv.alloc_page_of(FRONT);
            let g = hv.grant_access(FRONT, BACK, p.frame(), false).unwrap();
            (p, g)
        })
        .collect();
    let flags = input.u8();
    let start = if flags & 1 == 1 { u32::MAX - 5 } else { 0 };
    let mut tx = tx_page.into_front_ring::<NetifTxRequest, NetifTxResponse>(start);
    let mut rx = rx_page.into_front_ring::<NetifRxRequest, NetifRxResponse>(start);
    let limit = u32::from(input.u8() % 16) + 1;
    let options = BackendOptions {
        sg: flags & 2 == 0,
        violation_limit: limit,
        rx_queue_max: 8,
        rx_queue_bytes_max: 64 << 10,
        ..BackendOptions::default()
    };
    let mut env = SimNetbackEnv {
        hv: hv.clone(),
        dom: BACK,
    };
    let device = BackendDevice {
        path: format!("/local/domain/{BACK}/backend/vif/{FRONT}/0"),
        frontend: format!("/local/domain/{FRONT}/device/vif/0"),
        frontend_id: FRONT,
    };
    let front = FrontendConfig {
        tx_ring_ref: tx_ref,
        rx_ring_ref: rx_ref,
        events: EventChannels::Shared(port),
        sg: flags & 4 == 0,
        gso_tcpv4: flags & 8 == 0,
        gso_tcpv6: flags & 16 == 0,
        csum_v4: flags & 32 == 0,
        csum_v6: flags & 64 == 0,
    };
    let mut vif = Vif::new(&mut env, device, front, options).expect("a good set-up");
    let gref = |choice: u8, raw: u32| -> GrantRef {
        match choice % 4 {
            0 => data_ref,
            1 => elsewhere,
            2 => rx_bufs[usize::from(choice >> 2) % rx_bufs.len()].1,
            _ => raw,
        }
    };
    // A frontend may hand its own ring pages as buffers (netback then
    // copies packets over its rings, as Linux's would): that counts as
    // writing the pages itself.
    let own_ring = |g: GrantRef| g == tx_ref || g == rx_ref;
    let mut fatal = None;
    let mut out = Vec::new();
    // Response statuses are checked only while the fuzzer has not written
    // the ring pages itself.
    let mut scribbled = false;
    let mut rounds = 0;
    while !input.0.is_empty() && rounds < 512 {
        rounds += 1;
        match input.u8() % 8 {
            // TX requests, as many as the fuzzer lists (pushed at once).
            0 | 1 => {
                let n = usize::from(input.u8() % 8) + 1;
                for _ in 0..n {
                    let (c, raw) = (input.u8(), input.u32());
                    scribbled |= own_ring(gref(c, raw));
                    let req = NetifTxRequest {
                        gref: gref(c, raw),
                        offset: input.u16(),
                        flags: input.u16(),
                        id: input.u16(),
                        size: input.u16(),
                    };
                    if tx.queue_request(req).is_err() {
                        break;
                    }
                }
                tx.push_requests_and_check_notify();
            }
            // RX buffers.
            2 => {
                let n = usize::from(input.u8() % 8) + 1;
                for k in 0..n {
                    let (c, raw) = (input.u8(), input.u32());
                    scribbled |= own_ring(gref(c, raw));
                    let req = NetifRxRequest {
                        id: k as u16 ^ u16::from(c),
                        pad: 0,
                        gref: gref(c, raw),
                    };
                    if rx.queue_request(req).is_err() {
                        break;
                    }
                }
                rx.push_requests_and_check_notify();
            }
            // Scribble a ring page.
            3 => {
                let which = input.u8();
                let offset = usize::from(input.u16() % 4096);
                let len = usize::from(input.u8() % 16) + 1;
                let bytes: Vec<u8> = (0..len).map(|_| input.u8()).collect();
                let page = if which & 1 == 0 { &tx_raw } else { &rx_raw };
                let _ = page.write(offset, &bytes);
                scribbled = true;
            }
            // The backend takes TX.
            4 | 5 => {
                let budget = usize::from(input.u8() % 32) + 1;
                out.clear();
                match vif.receive(&mut env, budget, &mut out) {
                    Ok(p) => {
                        assert!(fatal.is_none(), "work after a fatal error");
                        assert!(p.packets <= budget);
                        assert!(out.len() <= budget);
                        for pk in &out {
                            assert!(pk.data.len() >= 14 && pk.data.len() <= 65535);
                        }
                    }
                    Err(f) => {
                        if let Some(old) = fatal {
                            assert_eq!(old, f, "a fatal error changed");
                        }
                        fatal = Some(f);
                        assert_eq!(vif.fatal(), Some(f));
                    }
                }
            }
            // The backend is handed a packet and delivers.
            6 => {
                let len = usize::from(input.u16() % 20000);
                vif.send(Packet {
                    data: frame(len, 1),
                    offload: Offload::default(),
                });
                assert!(vif.queued() <= 8);
                let budget = usize::from(input.u8() % 32) + 1;
                match vif.deliver(&mut env, budget) {
                    Ok(p) => {
                        assert!(fatal.is_none(), "work after a fatal error");
                        assert!(p.packets <= budget);
                    }
                    Err(f) => {
                        if let Some(old) = fatal {
                            assert_eq!(old, f, "a fatal error changed");
                        }
                        fatal = Some(f);
                    }
                }
            }
            // The frontend reads its responses.
            _ => {
                while let Ok(Some(r)) = tx.take_response() {
                    assert!(
                        scribbled || [0, -1, 1].contains(&r.status),
                        "TX status {}",
                        r.status
                    );
                }
                while let Ok(Some(r)) = rx.take_response() {
                    assert!(
                        scribbled || (-1..=4096).contains(&r.status),
                        "RX status {}",
                        r.status
                    );
                }
            }
        }
        assert!(vif.stats().violations <= limit);
    }
    vif.release(&mut env);
    assert_eq!(hv.maps_of(BACK, FRONT), 0, "mappings left after release");
});
