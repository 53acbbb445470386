//! One transport keypair: send/receive keys, the send counter, the replay
//! window and the age that the timers compare against.

use core::time::Duration;

use crate::crypto::{AeadKey, TAG_LEN};
use crate::noise::SessionKeys;
use crate::replay::ReplayWindow;
use crate::timers::{
    KEEPALIVE_TIMEOUT, REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME, REKEY_AFTER_TIME, REKEY_TIMEOUT,
};
use crate::wire::{Transport, TRANSPORT_HEADER_LEN};

/// Why a transport message could not be sent or received with a keypair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionError {
    /// Older than REJECT_AFTER_TIME or out of counters.
    Expired,
    /// The output buffer is too small.
    BufferTooSmall,
    /// The counter was seen before or is too old.
    Replay,
    /// Authentication failed.
    Decrypt,
}

/// Transport keys of one completed handshake.
pub struct Keypair {
    send: AeadKey,
    recv: AeadKey,
    /// Next counter to send.
    pub send_counter: u64,
    /// Our index (receiver field of messages to us).
    pub local_index: u32,
    /// The peer's index (receiver field of messages we send).
    pub remote_index: u32,
    /// When the handshake completed.
    pub created: Duration,
    /// Whether we were the initiator.
    pub initiator: bool,
    replay: ReplayWindow,
    /// `created` + REJECT_AFTER_TIME: unusable from then on.
    expires: Duration,
    /// `created` + REKEY_AFTER_TIME: an initiator sending with these keys rekeys from then on.
    send_rekey_at: Duration,
    /// `created` + REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT: an
    /// initiator receiving with these keys rekeys from then on.
    recv_rekey_at: Duration,
}

fn deadline(created: Duration, after: Duration) -> Duration {
    created.checked_add(after).unwrap_or(Duration::MAX)
}

/// Bytes a payload of `len` takes once padded to 16 and sealed, plus the header.
pub fn sealed_len(len: usize) -> usize {
    TRANSPORT_HEADER_LEN + len.div_ceil(16) * 16 + TAG_LEN
}

impl Keypair {
    /// Installs freshly derived keys at time `now`.
    pub fn new(keys: SessionKeys, now: Duration) -> Self {
        Self {
            send: AeadKey::new(&keys.send.0),
            recv: AeadKey::new(&keys.recv.0),
            send_counter: 0,
            local_index: keys.local_index,
            remote_index: keys.remote_index,
            created: now,
            initiator: keys.initiator,
            replay: ReplayWindow::new(),
            expires: deadline(now, REJECT_AFTER_TIME),
            send_rekey_at: deadline(now, REKEY_AFTER_TIME),
            recv_rekey_at: deadline(now, REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT),
        }
    }

    /// Whether the keys are still usable at `now`.
    pub fn is_valid(&self, now: Duration) -> bool {
        now < self.expires
    }

    /// Whether an initiator that sent with these keys at `now` should start a
    /// new handshake (REKEY_AFTER_TIME or REKEY_AFTER_MESSAGES reached).
    pub fn wants_rekey_after_send(&self, now: Duration) -> bool {
        self.initiator
            && (now >= self.send_rekey_at
                || self.send_counter >= crate::timers::REKEY_AFTER_MESSAGES)
    }

    /// Whether an initiator that received with these keys at `now` should
    /// start a new handshake (REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT reached).
    pub fn wants_rekey_after_receive(&self, now: Duration) -> bool {
        self.initiator && now >= self.recv_rekey_at
    }

    /// Encrypts `payload` (padded to a multiple of 16) into `out`; returns the message length.
    pub fn seal(
        &mut self,
        now: Duration,
        payload: &[u8],
        out: &mut [u8],
    ) -> Result<usize, SessionError> {
        if !self.is_valid(now) || self.send_counter >= REJECT_AFTER_MESSAGES {
            return Err(SessionError::Expired);
        }
        let total = sealed_len(payload.len());
        let out = out.get_mut(..total).ok_or(SessionError::BufferTooSmall)?;
        let counter = self.send_counter;
        self.send_counter += 1;
        let mut msg = Transport::new_unchecked(&mut *out);
        msg.fill_header(self.remote_index, counter);
        let body = msg.payload_mut();
        let (data, padding) = body.split_at_mut(payload.len());
        data.copy_from_slice(payload);
        // At most 15 bytes, none for full-size packets: skip the memset call.
        if !padding.is_empty() {
            padding.fill(0);
        }
        self.send.seal(counter, &[], body);
        Ok(total)
    }

    /// Decrypts a transport message addressed to this keypair into `out`;
    /// returns the padded plaintext length.
    pub fn open<T: AsRef<[u8]>>(
        &mut self,
        now: Duration,
        msg: &Transport<T>,
        out: &mut [u8],
    ) -> Result<usize, SessionError> {
        if !self.is_valid(now) {
            return Err(SessionError::Expired);
        }
        let counter = msg.counter();
        // Checked before the costly authentication so replays are dropped early;
        // recorded only after it, so forged counters cannot move the window.
        if !self.replay.would_accept(counter) {
            return Err(SessionError::Replay);
        }
        let body = msg.payload();
        let buf = out
            .get_mut(..body.len())
            .ok_or(SessionError::BufferTooSmall)?;
        buf.copy_from_slice(body);
        self.recv
            .open(counter, &[], buf)
            .map_err(|_| SessionError::Decrypt)?;
        // `would_accept` held above and nothing touched the window since.
        self.replay.record(counter);
        Ok(body.len() - TAG_LEN)
    }
}
