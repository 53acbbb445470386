//! The sliding replay window for transport counters (RFC 6479's bitmap scheme).
//!
//! The window accepts a counter if it is newer than anything seen, or at most
//! [`WINDOW`] - 1 behind the newest and not seen before. The bitmap is a ring of
//! 128 64-bit blocks, one of them spare so that advancing never aliases a live
//! bit; a power-of-two ring makes the block index a mask. This is the window
//! of wireguard-go and Linux (8192 - 64 counters).

use crate::timers::REJECT_AFTER_MESSAGES;

/// How far behind the newest counter a packet may arrive and still be accepted.
pub const WINDOW: u64 = (BLOCKS as u64 - 1) * BITS;
const BITS: u64 = 64;
const BLOCKS: usize = 128;
const _: () = assert!(BLOCKS.is_power_of_two());

/// Replay protection state of one receiving key.
#[derive(Clone)]
pub struct ReplayWindow {
    newest: u64,
    bitmap: [u64; BLOCKS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayWindow {
    /// An empty window.
    pub const fn new() -> Self {
        Self {
            newest: 0,
            bitmap: [0; BLOCKS],
        }
    }

    /// Whether `counter` would be accepted, without recording it. Used before
    /// the (costly) authentication so obvious replays are dropped early.
    pub fn would_accept(&self, counter: u64) -> bool {
        if counter >= REJECT_AFTER_MESSAGES {
            return false;
        }
        if counter > self.newest {
            return true;
        }
        if self.newest - counter >= WINDOW {
            return false;
        }
        let (block, bit) = Self::position(counter);
        self.bitmap[block] & bit == 0
    }

    /// Records `counter` if acceptable; returns whether it was. Call only after
    /// the packet authenticated, so forged counters cannot move the window.
    pub fn accept(&mut self, counter: u64) -> bool {
        if !self.would_accept(counter) {
            return false;
        }
        self.record(counter);
        true
    }

    /// Records `counter`, which [`ReplayWindow::would_accept`] must have
    /// approved with no change to the window since.
    pub fn record(&mut self, counter: u64) {
        debug_assert!(self.would_accept(counter));
        if counter > self.newest {
            let current = self.newest / BITS;
            let target = counter / BITS;
            let steps = (target - current).min(BLOCKS as u64);
            for i in 1..=steps {
                let idx = ((current + i) % BLOCKS as u64) as usize;
                self.bitmap[idx] = 0;
            }
            self.newest = counter;
        }
        let (block, bit) = Self::position(counter);
        self.bitmap[block] |= bit;
    }

    fn position(counter: u64) -> (usize, u64) {
        (
            ((counter / BITS) % BLOCKS as u64) as usize,
            1u64 << (counter % BITS),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_and_duplicates() {
        let mut w = ReplayWindow::new();
        for c in 0..10_000u64 {
            assert!(w.accept(c), "{c}");
            assert!(!w.accept(c), "dup {c}");
        }
    }

    #[test]
    fn out_of_order_within_window_accepted_once() {
        let mut w = ReplayWindow::new();
        assert!(w.accept(WINDOW + 100));
        // Just inside the window.
        assert!(w.accept(101));
        assert!(!w.accept(101));
        // Just outside.
        assert!(!w.accept(100));
        assert!(!w.accept(0));
        for c in (102..WINDOW + 100).rev() {
            assert!(w.accept(c), "{c}");
        }
        for c in 101..=WINDOW + 100 {
            assert!(!w.accept(c), "replayed {c}");
        }
    }

    #[test]
    fn big_jump_clears_old_bits() {
        let mut w = ReplayWindow::new();
        assert!(w.accept(5));
        assert!(w.accept(5 + 100 * WINDOW));
        // 5 + BLOCKS*64*k may share a bitmap slot with 5; it must not be seen as a replay.
        let alias = 5 + 100 * WINDOW - (BLOCKS as u64 - 1) * BITS;
        assert!(w.accept(alias) || 5 + 100 * WINDOW - alias >= WINDOW);
        assert!(!w.accept(5));
    }

    #[test]
    fn at_least_2048_reordering_tolerated() {
        let mut w = ReplayWindow::new();
        assert!(w.accept(3000));
        assert!(w.accept(3000 - 2047));
    }

    #[test]
    fn reject_after_messages_limit() {
        let mut w = ReplayWindow::new();
        assert!(!w.accept(REJECT_AFTER_MESSAGES));
        assert!(!w.accept(u64::MAX));
        assert!(w.accept(REJECT_AFTER_MESSAGES - 1));
    }
}
