//! Requests as they arrive: the `xsd_sockmsg` header (checked against
//! `XENSTORE_PAYLOAD_MAX`) and the payload of each request type parsed
//! into typed, bounded arguments. Anything malformed is `EINVAL`; nothing
//! here panics or reads out of bounds, whatever the bytes.

use crate::errno::Errno;
use crate::path::{parse_decimal, parse_domid};
use crate::perms::Perms;
use alloc::vec::Vec;
use xen::abi::xs_wire::{XsdSockmsgType, XENSTORE_PAYLOAD_MAX};
use xen::xenstore::wire::{Message, WireError, HEADER_LEN};

/// A request header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The raw type (`XS_*`).
    pub kind: u32,
    /// Echoed in the reply.
    pub req_id: u32,
    /// The transaction, 0 for none.
    pub tx_id: u32,
    /// Payload length (at most `XENSTORE_PAYLOAD_MAX`).
    pub len: u32,
}

impl Header {
    /// Parse the first `HEADER_LEN` bytes of `bytes`. A length above
    /// `XENSTORE_PAYLOAD_MAX` is a protocol violation that ends the
    /// connection (`docs/misc/xenstore.txt`).
    pub fn parse(bytes: &[u8]) -> Result<Header, WireError> {
        let head = bytes.get(..HEADER_LEN).ok_or(WireError::Truncated)?;
        let message = Message::new_unchecked(head);
        let len = message.payload_len();
        if len as usize > XENSTORE_PAYLOAD_MAX {
            return Err(WireError::PayloadTooLarge(len));
        }
        Ok(Header {
            kind: message.raw_type(),
            req_id: message.req_id(),
            tx_id: message.tx_id(),
            len,
        })
    }
}

/// A decoded request. Paths are still raw bytes: they are checked and made
/// absolute against the caller's home by [`crate::path::canonicalize`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// `XS_READ <path>`.
    Read(&'a [u8]),
    /// `XS_WRITE <path>|<value>`.
    Write {
        /// The node.
        path: &'a [u8],
        /// The new value (any bytes).
        value: &'a [u8],
    },
    /// `XS_MKDIR <path>`.
    Mkdir(&'a [u8]),
    /// `XS_RM <path>`.
    Rm(&'a [u8]),
    /// `XS_DIRECTORY <path>`.
    Directory(&'a [u8]),
    /// `XS_DIRECTORY_PART <path>|<offset>`.
    DirectoryPart {
        /// The node.
        path: &'a [u8],
        /// Byte offset into the children list.
        offset: u32,
    },
    /// `XS_GET_PERMS <path>`.
    GetPerms(&'a [u8]),
    /// `XS_SET_PERMS <path>|<perm>|+`.
    SetPerms {
        /// The node.
        path: &'a [u8],
        /// The new list.
        perms: Perms,
    },
    /// `XS_WATCH <path>|<token>`.
    Watch {
        /// The path or special name watched.
        path: &'a [u8],
        /// Echoed in events.
        token: &'a [u8],
    },
    /// `XS_UNWATCH <path>|<token>`.
    Unwatch {
        /// As given to `XS_WATCH`.
        path: &'a [u8],
        /// As given to `XS_WATCH`.
        token: &'a [u8],
    },
    /// `XS_TRANSACTION_START`.
    TransactionStart,
    /// `XS_TRANSACTION_END T|F`.
    TransactionEnd {
        /// `T`: commit; `F`: abort.
        commit: bool,
    },
    /// `XS_INTRODUCE <domid>|<gfn>|<evtchn>`.
    Introduce {
        /// The domain.
        domid: u16,
        /// Its xenstore page.
        gfn: u64,
        /// Its unbound event channel.
        port: u32,
    },
    /// `XS_RELEASE <domid>`.
    Release(u16),
    /// `XS_RESUME <domid>`.
    Resume(u16),
    /// `XS_GET_DOMAIN_PATH <domid>`.
    GetDomainPath(u16),
    /// `XS_IS_DOMAIN_INTRODUCED <domid>`.
    IsDomainIntroduced(u16),
    /// `XS_SET_TARGET <domid>|<target>`.
    SetTarget {
        /// The domain given rights.
        domid: u16,
        /// The domain it acts for.
        target: u16,
    },
    /// `XS_RESET_WATCHES`.
    ResetWatches,
    /// `XS_CONTROL <command>|<arg>|*`.
    Control {
        /// The command.
        command: &'a [u8],
        /// Its arguments.
        args: Vec<&'a [u8]>,
    },
}

/// The NUL-terminated strings of `payload`, and whatever follows the last
/// NUL (empty if the payload ends with one).
fn strings(payload: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let mut out = Vec::new();
    let mut rest = payload;
    while let Some(end) = rest.iter().position(|b| *b == 0) {
        out.push(&rest[..end]);
        rest = &rest[end + 1..];
    }
    (out, rest)
}

/// Exactly `n` NUL-terminated strings and nothing else.
fn exactly(payload: &[u8], n: usize) -> Result<Vec<&[u8]>, Errno> {
    let (list, rest) = strings(payload);
    if list.len() != n || !rest.is_empty() {
        return Err(Errno::Einval);
    }
    Ok(list)
}

/// One argument: a payload with exactly one NUL, at its end.
fn onearg(payload: &[u8]) -> Result<&[u8], Errno> {
    exactly(payload, 1).map(|l| l[0])
}

/// At least `n` NUL-terminated strings (the first `n` returned).
fn at_least(payload: &[u8], n: usize) -> Result<Vec<&[u8]>, Errno> {
    let (mut list, _) = strings(payload);
    if list.len() < n {
        return Err(Errno::Einval);
    }
    list.truncate(n);
    Ok(list)
}

impl<'a> Request<'a> {
    /// Decode the payload of a request of type `kind`. Types that are not
    /// requests (`XS_WATCH_EVENT`, `XS_ERROR`, `XS_INVALID`) are `ENOSYS`.
    pub fn parse(kind: XsdSockmsgType, payload: &'a [u8]) -> Result<Self, Errno> {
        use XsdSockmsgType as T;
        Ok(match kind {
            T::Read => Request::Read(onearg(payload)?),
            T::Mkdir => Request::Mkdir(onearg(payload)?),
            T::Rm => Request::Rm(onearg(payload)?),
            T::Directory => Request::Directory(onearg(payload)?),
            T::GetPerms => Request::GetPerms(onearg(payload)?),
            T::Write => {
                let end = payload.iter().position(|b| *b == 0).ok_or(Errno::Einval)?;
                Request::Write {
                    path: &payload[..end],
                    value: &payload[end + 1..],
                }
            }
            T::DirectoryPart => {
                let l = exactly(payload, 2)?;
                let offset = parse_decimal(l[1])
                    .and_then(|v| u32::try_from(v).ok())
                    .ok_or(Errno::Einval)?;
                Request::DirectoryPart { path: l[0], offset }
            }
            T::SetPerms => {
                let (list, rest) = strings(payload);
                if list.len() < 2 || !rest.is_empty() {
                    return Err(Errno::Einval);
                }
                Request::SetPerms {
                    path: list[0],
                    perms: Perms::parse(list[1..].iter().copied())?,
                }
            }
            T::Watch | T::Unwatch => {
                let l = exactly(payload, 2)?;
                if kind == T::Watch {
                    Request::Watch {
                        path: l[0],
                        token: l[1],
                    }
                } else {
                    Request::Unwatch {
                        path: l[0],
                        token: l[1],
                    }
                }
            }
            T::TransactionStart => Request::TransactionStart,
            T::TransactionEnd => match onearg(payload)? {
                b"T" => Request::TransactionEnd { commit: true },
                b"F" => Request::TransactionEnd { commit: false },
                _ => return Err(Errno::Einval),
            },
            T::Introduce => {
                let l = at_least(payload, 3)?;
                let gfn = parse_decimal(l[1]).ok_or(Errno::Einval)?;
                let port = parse_decimal(l[2])
                    .and_then(|v| u32::try_from(v).ok())
                    .filter(|p| *p > 0)
                    .ok_or(Errno::Einval)?;
                Request::Introduce {
                    domid: parse_domid(l[0])?,
                    gfn,
                    port,
                }
            }
            T::Release => Request::Release(parse_domid(onearg(payload)?)?),
            T::Resume => Request::Resume(parse_domid(onearg(payload)?)?),
            T::GetDomainPath => Request::GetDomainPath(parse_domid(onearg(payload)?)?),
            T::IsDomainIntroduced => Request::IsDomainIntroduced(parse_domid(onearg(payload)?)?),
            T::SetTarget => {
                let l = at_least(payload, 2)?;
                Request::SetTarget {
                    domid: parse_domid(l[0])?,
                    target: parse_domid(l[1])?,
                }
            }
            T::ResetWatches => Request::ResetWatches,
            T::Control => {
                let (list, _) = strings(payload);
                let (command, args) = list.split_first().ok_or(Errno::Einval)?;
                Request::Control {
                    command,
                    args: args.to_vec(),
                }
            }
            T::WatchEvent | T::Error | T::Invalid => return Err(Errno::Enosys),
        })
    }
}

/// Whether requests of this type are for privileged domains only (as C
/// xenstored's `XS_FLAG_PRIV`).
pub fn privileged_only(kind: XsdSockmsgType) -> bool {
    use XsdSockmsgType as T;
    matches!(
        kind,
        T::Control | T::Introduce | T::Release | T::IsDomainIntroduced | T::Resume | T::SetTarget
    )
}

/// Whether the header's transaction id is ignored (`XS_FLAG_NOTID`).
pub fn ignores_tx(kind: XsdSockmsgType) -> bool {
    matches!(kind, XsdSockmsgType::Watch | XsdSockmsgType::Unwatch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use XsdSockmsgType as T;

    #[test]
    fn headers_bound_the_payload() {
        let mut h = [0u8; 16];
        h[12..16].copy_from_slice(&4096u32.to_ne_bytes());
        assert_eq!(Header::parse(&h).unwrap().len, 4096);
        h[12..16].copy_from_slice(&4097u32.to_ne_bytes());
        assert_eq!(Header::parse(&h), Err(WireError::PayloadTooLarge(4097)));
        assert_eq!(Header::parse(&h[..15]), Err(WireError::Truncated));
    }

    #[test]
    fn one_argument_means_exactly_one_nul_at_the_end() {
        assert_eq!(Request::parse(T::Read, b"/a\0"), Ok(Request::Read(b"/a")));
        for bad in [&b""[..], b"/a", b"/a\0\0", b"/a\0b", b"\0x"] {
            assert_eq!(Request::parse(T::Read, bad), Err(Errno::Einval), "{bad:?}");
        }
    }

    #[test]
    fn each_request_shape() {
        assert_eq!(
            Request::parse(T::Write, b"/a\0v\0al"),
            Ok(Request::Write {
                path: b"/a",
                value: b"v\0al"
            })
        );
        assert_eq!(Request::parse(T::Write, b"/a"), Err(Errno::Einval));
        assert_eq!(
            Request::parse(T::DirectoryPart, b"/a\x0012\0"),
            Ok(Request::DirectoryPart {
                path: b"/a",
                offset: 12
            })
        );
        assert_eq!(
            Request::parse(T::DirectoryPart, b"/a\0x\0"),
            Err(Errno::Einval)
        );
        assert!(matches!(
            Request::parse(T::SetPerms, b"/a\0n1\0r2\0"),
            Ok(Request::SetPerms { path: b"/a", .. })
        ));
        assert_eq!(Request::parse(T::SetPerms, b"/a\0"), Err(Errno::Einval));
        assert_eq!(
            Request::parse(T::SetPerms, b"/a\0n1\0r2"),
            Err(Errno::Einval)
        );
        assert_eq!(Request::parse(T::SetPerms, b"/a\0q1\0"), Err(Errno::Einval));
        assert_eq!(
            Request::parse(T::Watch, b"a\0tok\0"),
            Ok(Request::Watch {
                path: b"a",
                token: b"tok"
            })
        );
        assert_eq!(Request::parse(T::Watch, b"a\0tok\0x\0"), Err(Errno::Einval));
        assert_eq!(
            Request::parse(T::TransactionEnd, b"T\0"),
            Ok(Request::TransactionEnd { commit: true })
        );
        assert_eq!(
            Request::parse(T::TransactionEnd, b"X\0"),
            Err(Errno::Einval)
        );
        assert_eq!(
            Request::parse(T::Introduce, b"5\x00123\0" as &[u8]),
            Err(Errno::Einval)
        );
        assert_eq!(
            Request::parse(T::Introduce, b"5\x00123\x007\0"),
            Ok(Request::Introduce {
                domid: 5,
                gfn: 123,
                port: 7
            })
        );
        assert_eq!(
            Request::parse(T::Introduce, b"5\x00123\x000\0"),
            Err(Errno::Einval)
        );
        assert_eq!(Request::parse(T::Release, b"70000\0"), Err(Errno::Einval));
        assert_eq!(
            Request::parse(T::SetTarget, b"3\x004\0"),
            Ok(Request::SetTarget {
                domid: 3,
                target: 4
            })
        );
        assert_eq!(Request::parse(T::Control, b""), Err(Errno::Einval));
        assert_eq!(Request::parse(T::Error, b"EINVAL\0"), Err(Errno::Enosys));
    }
}
