//! The protocol constants of the WireGuard paper, section 6.

use core::time::Duration;

/// After this many messages with one key the initiator starts a new handshake.
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
/// No key is used for more than this many messages.
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);
/// After this age the initiator of a session starts a new handshake when sending.
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// No key older than this is used to send or receive.
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
/// A handshake is retried for this long before queued packets are dropped.
pub const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);
/// A handshake initiation is retransmitted after this (plus jitter) without a response.
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest random jitter added to [`REKEY_TIMEOUT`], in milliseconds.
pub const REKEY_TIMEOUT_JITTER_MS: u64 = 333;
/// A keepalive is sent this long after receiving data when nothing was sent back.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// A received cookie is used for mac2 for this long; the responder's cookie secret rotates as often.
pub const COOKIE_REFRESH_TIME: Duration = Duration::from_secs(120);
/// The responder accepts at most one initiation per peer per this interval.
pub const MIN_INITIATION_INTERVAL: Duration = Duration::from_millis(20);
/// Without a new handshake, all keys are erased after this.
pub const KEY_ERASE_TIME: Duration = Duration::from_secs(540);
