//! The xenstore wire protocol (`xen/include/public/io/xs_wire.h`): the
//! message header, the message types and the shared ring page.

/// Size in bytes of each of the two byte rings in the xenstore page
/// (`XENSTORE_RING_SIZE`).
pub const XENSTORE_RING_SIZE: usize = 1024;

/// The largest payload a xenstore message may carry (`XENSTORE_PAYLOAD_MAX`).
pub const XENSTORE_PAYLOAD_MAX: usize = 4096;

/// The longest absolute path xenstored accepts (`XENSTORE_ABS_PATH_MAX`).
pub const XENSTORE_ABS_PATH_MAX: usize = 3072;

/// The longest relative path xenstored accepts (`XENSTORE_REL_PATH_MAX`).
pub const XENSTORE_REL_PATH_MAX: usize = 2048;

/// Server feature bit: the ring can be reconnected
/// (`XENSTORE_SERVER_FEATURE_RECONNECTION`).
pub const XENSTORE_SERVER_FEATURE_RECONNECTION: u32 = 1;

/// Server feature bit: the `error` field of the page is meaningful
/// (`XENSTORE_SERVER_FEATURE_ERROR`).
pub const XENSTORE_SERVER_FEATURE_ERROR: u32 = 2;

/// `connection` value in the steady state (`XENSTORE_CONNECTED`).
pub const XENSTORE_CONNECTED: u32 = 0;

/// `connection` value while a reconnect is in progress (`XENSTORE_RECONNECT`).
pub const XENSTORE_RECONNECT: u32 = 1;

/// `error` value: no error (`XENSTORE_ERROR_NONE`).
pub const XENSTORE_ERROR_NONE: u32 = 0;
/// `error` value: communication problem (`XENSTORE_ERROR_COMM`).
pub const XENSTORE_ERROR_COMM: u32 = 1;
/// `error` value: invalid ring index (`XENSTORE_ERROR_RINGIDX`).
pub const XENSTORE_ERROR_RINGIDX: u32 = 2;
/// `error` value: protocol violation (`XENSTORE_ERROR_PROTO`).
pub const XENSTORE_ERROR_PROTO: u32 = 3;

/// Reduce a free-running ring index to an offset in a byte ring
/// (`MASK_XENSTORE_IDX`).
#[inline]
pub const fn mask_xenstore_idx(idx: u32) -> usize {
    (idx as usize) & (XENSTORE_RING_SIZE - 1)
}

/// Header of every xenstore message (`struct xsd_sockmsg`); `len` bytes of
/// payload follow it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XsdSockmsg {
    /// Message type, an `xsd_sockmsg_type` value.
    pub type_: u32,
    /// Request identifier, echoed in the daemon's response.
    pub req_id: u32,
    /// Transaction id, 0 outside a transaction.
    pub tx_id: u32,
    /// Length of the payload that follows.
    pub len: u32,
}

/// The xenstore page shared with xenstored
/// (`struct xenstore_domain_interface`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct XenstoreDomainInterface {
    /// Requests to the xenstore daemon.
    pub req: [u8; XENSTORE_RING_SIZE],
    /// Replies and asynchronous watch events.
    pub rsp: [u8; XENSTORE_RING_SIZE],
    /// Consumer index of `req` (written by xenstored).
    pub req_cons: u32,
    /// Producer index of `req` (written by the guest).
    pub req_prod: u32,
    /// Consumer index of `rsp` (written by the guest).
    pub rsp_cons: u32,
    /// Producer index of `rsp` (written by xenstored).
    pub rsp_prod: u32,
    /// Bitmap of features supported by the server.
    pub server_features: u32,
    /// Connection state, `XENSTORE_CONNECTED` or `XENSTORE_RECONNECT`.
    pub connection: u32,
    /// Error state, one of the `XENSTORE_ERROR_*` values.
    pub error: u32,
}

impl XenstoreDomainInterface {
    /// An all-zero page, as xenstored expects to find it before first use.
    pub const fn zeroed() -> Self {
        Self {
            req: [0; XENSTORE_RING_SIZE],
            rsp: [0; XENSTORE_RING_SIZE],
            req_cons: 0,
            req_prod: 0,
            rsp_cons: 0,
            rsp_prod: 0,
            server_features: 0,
            connection: 0,
            error: 0,
        }
    }
}

/// Index of the path in a watch event's payload strings
/// (`XS_WATCH_PATH` of `enum xs_watch_type`).
pub const XS_WATCH_PATH: usize = 0;
/// Index of the token in a watch event's payload strings (`XS_WATCH_TOKEN`).
pub const XS_WATCH_TOKEN: usize = 1;

/// Message types (`enum xsd_sockmsg_type`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum XsdSockmsgType {
    /// `XS_CONTROL` (alias `XS_DEBUG`).
    Control = 0,
    /// `XS_DIRECTORY`.
    Directory = 1,
    /// `XS_READ`.
    Read = 2,
    /// `XS_GET_PERMS`.
    GetPerms = 3,
    /// `XS_WATCH`.
    Watch = 4,
    /// `XS_UNWATCH`.
    Unwatch = 5,
    /// `XS_TRANSACTION_START`.
    TransactionStart = 6,
    /// `XS_TRANSACTION_END`.
    TransactionEnd = 7,
    /// `XS_INTRODUCE`.
    Introduce = 8,
    /// `XS_RELEASE`.
    Release = 9,
    /// `XS_GET_DOMAIN_PATH`.
    GetDomainPath = 10,
    /// `XS_WRITE`.
    Write = 11,
    /// `XS_MKDIR`.
    Mkdir = 12,
    /// `XS_RM`.
    Rm = 13,
    /// `XS_SET_PERMS`.
    SetPerms = 14,
    /// `XS_WATCH_EVENT`: an asynchronous watch notification.
    WatchEvent = 15,
    /// `XS_ERROR`: the reply carries an error string.
    Error = 16,
    /// `XS_IS_DOMAIN_INTRODUCED`.
    IsDomainIntroduced = 17,
    /// `XS_RESUME`.
    Resume = 18,
    /// `XS_SET_TARGET`.
    SetTarget = 19,
    /// `XS_RESET_WATCHES` (20, the old `XS_RESTRICT`, is retired).
    ResetWatches = 21,
    /// `XS_DIRECTORY_PART`.
    DirectoryPart = 22,
    /// `XS_INVALID`: guaranteed never to be a valid type.
    Invalid = 0xffff,
}

impl XsdSockmsgType {
    /// Every defined type, for tests and tables.
    pub const ALL: [XsdSockmsgType; 23] = [
        Self::Control,
        Self::Directory,
        Self::Read,
        Self::GetPerms,
        Self::Watch,
        Self::Unwatch,
        Self::TransactionStart,
        Self::TransactionEnd,
        Self::Introduce,
        Self::Release,
        Self::GetDomainPath,
        Self::Write,
        Self::Mkdir,
        Self::Rm,
        Self::SetPerms,
        Self::WatchEvent,
        Self::Error,
        Self::IsDomainIntroduced,
        Self::Resume,
        Self::SetTarget,
        Self::ResetWatches,
        Self::DirectoryPart,
        Self::Invalid,
    ];

    /// The type with wire value `raw`, if there is one.
    pub fn from_u32(raw: u32) -> Option<Self> {
        Self::ALL.iter().copied().find(|t| *t as u32 == raw)
    }
}
