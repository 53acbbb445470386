//! Property test: whatever a backend puts in its responses (ids,
//! operations, statuses, producer index), the frontend returns a result or
//! an error, never panics or hangs, and disconnects cleanly afterwards.

mod sim;

use blkfront::{BlkConfig, BlkError, BlkFront};
use proptest::prelude::*;
use sim::*;

fn garble() -> impl Strategy<Value = Garble> {
    (
        prop_oneof![
            Just(0u64),
            Just(1u64),
            Just(1u64 << 32),
            any::<u64>(),
            0u64..64
        ],
        prop_oneof![
            Just(None),
            any::<u8>().prop_map(Some),
            (0u8..8).prop_map(Some)
        ],
        prop_oneof![
            Just(None),
            any::<i16>().prop_map(Some),
            (-3i16..2).prop_map(Some)
        ],
    )
        .prop_map(|(id_xor, operation, status)| Garble {
            id_xor,
            operation,
            status,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn garbage_responses_give_errors_not_panics(
        script in proptest::collection::vec(garble(), 0..12),
        poke in prop_oneof![Just(None), any::<u32>().prop_map(Some)],
        indirect in any::<bool>(),
    ) {
        let mut world = World::new(BackendConfig {
            max_indirect_segments: indirect.then_some(32),
            ..Default::default()
        });
        let env = world.env();
        let backend = world.backend.clone();
        let front = run(&backend, BlkFront::connect(env, &mut world.xs, DEVICE, BlkConfig::default()))
            .expect("connect");
        let data: Vec<u8> = (0..(600 << 10)).map(|i| (i % 251) as u8).collect();
        run(&backend, front.write(0, &data)).expect("clean write");
        {
            let mut b = backend.borrow_mut();
            b.script = script.iter().copied().collect();
            b.poke_rsp_prod = poke;
        }
        let mut buf = vec![0; data.len()];
        let result = run_all(&backend, vec![Box::pin(front.read(0, &mut buf))])
            .expect("the frontend hung on garbage")
            .pop()
            .unwrap();
        match result {
            Ok(()) => prop_assert_eq!(&buf, &data),
            Err(BlkError::Protocol(v)) => prop_assert_eq!(front.broken(), Some(v)),
            Err(BlkError::Io) | Err(BlkError::NotSupported) => {}
            Err(other) => prop_assert!(false, "unexpected error {:?}", other),
        }
        // Whatever happened, the device disconnects cleanly.
        run(&backend, front.disconnect(&mut world.xs)).expect("disconnect");
        prop_assert_eq!(world.hv.borrow().live_grants(), 0);
        prop_assert!(world.hv.borrow().port_closed);
    }
}
