//! The receive side shared by the Qubes protocols' sans-I/O state
//! machines: bytes arrive in arbitrary pieces, complete messages are taken
//! from the front of a buffer one at a time, and the rest waits for more.

use alloc::vec::Vec;

/// Append `bytes` to `buf` and hand `one` the unconsumed bytes until it
/// says the next message is not all there (`Ok(None)`) or fails; `one`
/// returns the length of the message it took. The consumed bytes are
/// removed from `buf`; on an error `buf` is cleared (the stream is broken
/// and nothing after the bad message can be framed).
pub(crate) fn take_messages<E>(
    buf: &mut Vec<u8>,
    bytes: &[u8],
    mut one: impl FnMut(&[u8]) -> Result<Option<usize>, E>,
) -> Result<(), E> {
    buf.extend_from_slice(bytes);
    let mut at = 0;
    let r = loop {
        match one(&buf[at..]) {
            Ok(Some(n)) => at += n,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    match r {
        Ok(()) => {
            buf.drain(..at);
        }
        Err(_) => buf.clear(),
    }
    r
}
