//! blkfront's response handling with the fuzzer as a hostile backend over
//! the simulated blkback of blkfront's own tests (included by path): each
//! response's id, operation and status garbled as the fuzzer says, the
//! producer index poked, indirect descriptors or not, reads and writes of
//! any size at any sector. Properties: every request ends in data, a typed
//! error, or a sticky protocol violation, never a panic or a hang; a read
//! that succeeds returns what was written; disconnecting revokes every
//! grant and closes the port.
#![no_main]

#[allow(dead_code, unused_imports, clippy::all)]
#[path = "../../blkfront/tests/sim/mod.rs"]
mod sim;

use blkfront::{BlkConfig, BlkError, BlkFront};
use libfuzzer_sys::fuzz_target;
use sim::*;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut world = World::new(BackendConfig {
        max_indirect_segments: (mode & 1 == 1).then_some(32),
        ..Default::default()
    });
    let env = world.env();
    let backend = world.backend.clone();
    let front = run(
        &backend,
        BlkFront::connect(env, &mut world.xs, DEVICE, BlkConfig::default()),
    )
    .expect("connect");
    let len = (usize::from(mode >> 1) + 1) * 4096;
    let pattern: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    run(&backend, front.write(0, &pattern)).expect("clean write");
    // The script: [id_xor: 1][operation: 1][status: 2] per response, and a
    // final 5 bytes for the producer-index poke.
    let mut script = Vec::new();
    let mut chunks = rest.chunks_exact(4);
    for c in &mut chunks {
        script.push(Garble {
            id_xor: match c[0] % 4 {
                0 => 0,
                1 => 1,
                2 => 1 << 32,
                _ => u64::from(c[0]) << (c[0] % 56),
            },
            operation: (c[1] & 0x80 != 0).then_some(c[1] & 0x7f),
            status: (c[2] & 1 == 1).then_some(i16::from_le_bytes([c[2], c[3]]) >> 1),
        });
        if script.len() >= 16 {
            break;
        }
    }
    let tail = chunks.remainder();
    let poke = (tail.len() == 3).then(|| u32::from_le_bytes([tail[0], tail[1], tail[2], 0]));
    {
        let mut b = backend.borrow_mut();
        b.script = script.iter().copied().collect();
        b.poke_rsp_prod = poke;
    }
    let mut buf = vec![0; len];
    let result = run_all(&backend, vec![Box::pin(front.read(0, &mut buf))])
        .expect("the frontend hung on garbage")
        .pop()
        .unwrap();
    match result {
        Ok(()) => assert_eq!(buf, pattern),
        Err(BlkError::Protocol(v)) => assert_eq!(front.broken(), Some(v)),
        Err(BlkError::Io) | Err(BlkError::NotSupported) => {}
        Err(other) => panic!("unexpected error {other:?}"),
    }
    run(&backend, front.disconnect(&mut world.xs)).expect("disconnect");
    assert_eq!(world.hv.borrow().live_grants(), 0);
    assert!(world.hv.borrow().port_closed);
});
