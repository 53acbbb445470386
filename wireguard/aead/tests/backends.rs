//! Every backend this CPU runs against RFC 8439's vector and against
//! RustCrypto's ChaCha20-Poly1305, at every length around the block, SIMD
//! batch and short-message boundaries.

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::KeyInit;
use wg_aead::{AuthFailed, Backend, ChaCha20Poly1305};

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn backends() -> Vec<Backend> {
    let all = [Backend::Avx2, Backend::Ssse3, Backend::Portable];
    let v: Vec<Backend> = all.into_iter().filter(|b| b.available()).collect();
    // The host running the tests is amd64 with at least SSSE3 in CI; say
    // which routes were exercised.
    eprintln!("backends under test: {v:?}");
    v
}

#[test]
fn rfc8439_vector_every_backend() {
    let key: [u8; 32] = hex("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f")
        .try_into()
        .unwrap();
    let nonce: [u8; 12] = hex("070000004041424344454647").try_into().unwrap();
    let aad = hex("50515253c0c1c2c3c4c5c6c7");
    let plain = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
    let expect_ct = hex("d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc3ff4def08e4b7a9de576d26586cec64b6116");
    for b in backends() {
        let k = ChaCha20Poly1305::with_backend(&key, b);
        assert_eq!(k.backend(), b);
        let mut msg = plain.to_vec();
        let tag = k.seal(&nonce, &aad, &mut msg);
        assert_eq!(msg, expect_ct, "{b:?}");
        assert_eq!(
            tag.to_vec(),
            hex("1ae10b594f09e26a7e902ecbd0600691"),
            "{b:?}"
        );
        k.open(&nonce, &aad, &mut msg, &tag).unwrap();
        assert_eq!(&msg[..], &plain[..]);
    }
}

#[test]
fn matches_rustcrypto_at_every_length() {
    let key = [0x5au8; 32];
    let theirs = chacha20poly1305::ChaCha20Poly1305::new((&key).into());
    for b in backends() {
        let ours = ChaCha20Poly1305::with_backend(&key, b);
        for len in (0..1100).chain([1471, 1472, 1473, 1419, 1420, 1421, 4096, 65535]) {
            for aad in [&b""[..], &b"associated data, 33 bytes long..."[..]] {
                let plain: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
                let mut nonce = [0u8; 12];
                nonce[4..].copy_from_slice(&(len as u64 * 1_000_003).to_le_bytes());
                let mut a = plain.clone();
                let tag = ours.seal(&nonce, aad, &mut a);
                let mut t = plain.clone();
                let their_tag = theirs
                    .encrypt_in_place_detached(&nonce.into(), aad, &mut t)
                    .unwrap();
                assert_eq!(a, t, "{b:?} len {len}");
                assert_eq!(&tag[..], &their_tag[..], "{b:?} len {len}");
                ours.open(&nonce, aad, &mut a, &tag).unwrap();
                assert_eq!(a, plain, "{b:?} len {len}");
            }
        }
    }
}

#[test]
fn tampering_is_refused_and_leaves_data() {
    let key = [9u8; 32];
    let nonce = [1u8; 12];
    for b in backends() {
        let k = ChaCha20Poly1305::with_backend(&key, b);
        for len in [0usize, 1, 64, 191, 192, 193, 1420] {
            let mut m = vec![0x42u8; len];
            let tag = k.seal(&nonce, b"ad", &mut m);
            let sealed = m.clone();
            let mut bad_tag = tag;
            bad_tag[15] ^= 0x80;
            assert_eq!(k.open(&nonce, b"ad", &mut m, &bad_tag), Err(AuthFailed));
            assert_eq!(m, sealed, "data changed on a refused open");
            assert_eq!(k.open(&nonce, b"ae", &mut m, &tag), Err(AuthFailed));
            let mut other = [1u8; 12];
            other[0] = 2;
            assert_eq!(k.open(&other, b"ad", &mut m, &tag), Err(AuthFailed));
            if len > 0 {
                m[len - 1] ^= 1;
                assert_eq!(k.open(&nonce, b"ad", &mut m, &tag), Err(AuthFailed));
                m[len - 1] ^= 1;
            }
            k.open(&nonce, b"ad", &mut m, &tag).unwrap();
            assert!(m.iter().all(|&x| x == 0x42));
        }
    }
}

#[test]
fn poly1305_edge_values() {
    // Tags with all-ones data and keys exercise the carries and the final
    // reduction; RustCrypto is the reference.
    for key in [[0xffu8; 32], [0u8; 32], {
        let mut k = [0xffu8; 32];
        k[16..].fill(0);
        k
    }] {
        let theirs = chacha20poly1305::ChaCha20Poly1305::new((&key).into());
        let ours = ChaCha20Poly1305::new(&key);
        for len in [16usize, 32, 256, 1024, 2048] {
            for fill in [0xffu8, 0x00, 0xfe] {
                let mut a = vec![fill; len];
                let mut t = a.clone();
                let tag = ours.seal(&[0xff; 12], &[0xff; 16], &mut a);
                let their = theirs
                    .encrypt_in_place_detached(&[0xff; 12].into(), &[0xff; 16], &mut t)
                    .unwrap();
                assert_eq!(&tag[..], &their[..]);
            }
        }
    }
}
