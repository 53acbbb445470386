//! The errors a request can get: the names of `xsd_errors` in
//! `io/xs_wire.h`, sent as a NUL-terminated string in an `XS_ERROR` reply.

use core::fmt;

/// An error answered to a request (`XS_ERROR` with the name as payload).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Errno {
    /// `EINVAL`: malformed request or argument.
    Einval,
    /// `EACCES`: permission denied.
    Eacces,
    /// `EEXIST`: the watch already exists.
    Eexist,
    /// `EISDIR`: is a directory (not used by this server).
    Eisdir,
    /// `ENOENT`: no such node, transaction, watch or domain.
    Enoent,
    /// `ENOMEM`: out of memory.
    Enomem,
    /// `ENOSPC`: a quota was hit.
    Enospc,
    /// `EIO`: internal inconsistency.
    Eio,
    /// `ENOTEMPTY`: not empty (not used by this server).
    Enotempty,
    /// `ENOSYS`: unknown or unsupported request type.
    Enosys,
    /// `EROFS`: read-only (not used by this server).
    Erofs,
    /// `EBUSY`: a transaction start inside a transaction.
    Ebusy,
    /// `EAGAIN`: a transaction conflicted; the client retries it.
    Eagain,
    /// `EISCONN`: already connected (not used by this server).
    Eisconn,
    /// `E2BIG`: the reply would exceed `XENSTORE_PAYLOAD_MAX`.
    E2big,
    /// `EPERM`: an unprivileged domain tried to change a node's owner.
    Eperm,
}

impl Errno {
    /// Every error, in the order of `xsd_errors`.
    pub const ALL: [Errno; 16] = [
        Errno::Einval,
        Errno::Eacces,
        Errno::Eexist,
        Errno::Eisdir,
        Errno::Enoent,
        Errno::Enomem,
        Errno::Enospc,
        Errno::Eio,
        Errno::Enotempty,
        Errno::Enosys,
        Errno::Erofs,
        Errno::Ebusy,
        Errno::Eagain,
        Errno::Eisconn,
        Errno::E2big,
        Errno::Eperm,
    ];

    /// The wire name (`"ENOENT"`), without its NUL.
    pub const fn name(self) -> &'static str {
        match self {
            Errno::Einval => "EINVAL",
            Errno::Eacces => "EACCES",
            Errno::Eexist => "EEXIST",
            Errno::Eisdir => "EISDIR",
            Errno::Enoent => "ENOENT",
            Errno::Enomem => "ENOMEM",
            Errno::Enospc => "ENOSPC",
            Errno::Eio => "EIO",
            Errno::Enotempty => "ENOTEMPTY",
            Errno::Enosys => "ENOSYS",
            Errno::Erofs => "EROFS",
            Errno::Ebusy => "EBUSY",
            Errno::Eagain => "EAGAIN",
            Errno::Eisconn => "EISCONN",
            Errno::E2big => "E2BIG",
            Errno::Eperm => "EPERM",
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xen::xenstore::XsError;

    #[test]
    fn every_name_is_the_one_the_client_parses() {
        for e in Errno::ALL {
            let mut wire = alloc::vec::Vec::from(e.name().as_bytes());
            wire.push(0);
            assert_eq!(XsError::from_wire(&wire).wire_name(), Some(e.name()));
        }
    }
}
