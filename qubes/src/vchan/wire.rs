//! The vchan control page as `io/libxenvchan.h` lays it out, and the rules
//! for the two rings' sizes and places.
//!
//! ```text
//! offset  size  field
//!      0     8  left  (cons u32, prod u32): client writes, server reads
//!      8     8  right (cons u32, prod u32): server writes, client reads
//!     16     2  left_order   log2 of the left ring's size in bytes
//!     18     2  right_order
//!     20     1  cli_live     0 closed, 1 connected, 2 not yet connected
//!     21     1  srv_live
//!     22     1  cli_notify   bits the server asks the client to notify on
//!     23     1  srv_notify   bits the client asks the server to notify on
//!     24   4*n  grants[]     grant references of the rings' own pages,
//!                            left's first, then right's
//! ```
//!
//! A ring of order 10 lives in the control page at offset 1024, one of
//! order 11 at offset 2048 (at most one ring of each); a ring of order 12 to
//! 20 has 2^(order-12) pages of its own, granted separately. The page is
//! shared with the peer, so these are offsets for the accessors of
//! [`xen::shared_page::SharedPage`], never a Rust reference.

use core::mem::{offset_of, size_of};

/// One ring's indices (`struct ring_shared`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingShared {
    /// Bytes consumed so far (free-running).
    pub cons: u32,
    /// Bytes produced so far (free-running).
    pub prod: u32,
}

/// The fixed head of the control page (`struct vchan_interface` without its
/// flexible `grants` array). Only used for its layout: the page itself is
/// accessed field by field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VchanInterface {
    /// Client to server ring.
    pub left: RingShared,
    /// Server to client ring.
    pub right: RingShared,
    /// log2 of the left ring's size.
    pub left_order: u16,
    /// log2 of the right ring's size.
    pub right_order: u16,
    /// The client's [`Live`] state.
    pub cli_live: u8,
    /// The server's [`Live`] state.
    pub srv_live: u8,
    /// Notification requests addressed to the client.
    pub cli_notify: u8,
    /// Notification requests addressed to the server.
    pub srv_notify: u8,
}

/// Offset of `left.cons`.
pub const LEFT_CONS: usize = offset_of!(VchanInterface, left);
/// Offset of `left.prod`.
pub const LEFT_PROD: usize = LEFT_CONS + offset_of!(RingShared, prod);
/// Offset of `right.cons`.
pub const RIGHT_CONS: usize = offset_of!(VchanInterface, right);
/// Offset of `right.prod`.
pub const RIGHT_PROD: usize = RIGHT_CONS + offset_of!(RingShared, prod);
/// Offset of `left_order`.
pub const LEFT_ORDER: usize = offset_of!(VchanInterface, left_order);
/// Offset of `right_order`.
pub const RIGHT_ORDER: usize = offset_of!(VchanInterface, right_order);
/// Offset of `cli_live`.
pub const CLI_LIVE: usize = offset_of!(VchanInterface, cli_live);
/// Offset of `srv_live`.
pub const SRV_LIVE: usize = offset_of!(VchanInterface, srv_live);
/// Offset of `cli_notify`.
pub const CLI_NOTIFY: usize = offset_of!(VchanInterface, cli_notify);
/// Offset of `srv_notify`.
pub const SRV_NOTIFY: usize = offset_of!(VchanInterface, srv_notify);
/// Offset of `grants[0]`.
pub const GRANTS: usize = size_of::<VchanInterface>();

/// `VCHAN_NOTIFY_WRITE`: notify me when you have written (produced) data.
pub const NOTIFY_WRITE: u8 = 0x1;
/// `VCHAN_NOTIFY_READ`: notify me when you have read (consumed) data.
pub const NOTIFY_READ: u8 = 0x2;

/// Page size and the log2 of it.
pub const PAGE_SIZE: usize = 4096;
/// `PAGE_SHIFT`.
pub const PAGE_ORDER: u16 = 12;
/// The order of the small in-page ring (1024 bytes at offset 1024).
pub const SMALL_ORDER: u16 = 10;
/// The order of the large in-page ring (2048 bytes at offset 2048).
pub const LARGE_ORDER: u16 = 11;
/// The largest ring libxenvchan makes or accepts: 1 MiB (256 pages).
pub const MAX_ORDER: u16 = 20;

/// A side's `*_live` byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Live {
    /// 0: closed (exited, or unmapped: the kernel's unmap notification
    /// clears it).
    Closed,
    /// 1: connected.
    Connected,
    /// 2: the client has not connected yet (only `cli_live`).
    NotYet,
}

impl Live {
    /// The byte written into the page.
    pub fn byte(self) -> u8 {
        match self {
            Live::Closed => 0,
            Live::Connected => 1,
            Live::NotYet => 2,
        }
    }

    /// Parse a byte the peer controls.
    pub fn parse(b: u8) -> Result<Self, WireError> {
        match b {
            0 => Ok(Live::Closed),
            1 => Ok(Live::Connected),
            2 => Ok(Live::NotYet),
            other => Err(WireError::BadLive(other)),
        }
    }
}

/// Where a ring's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// Inside the control page.
    InPage {
        /// Offset of the first byte.
        offset: usize,
    },
    /// In pages of its own, named by `count` grant references.
    Pages {
        /// How many pages (and grant references).
        count: usize,
    },
}

/// A bad control page or a bad request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// A ring order outside 10..=20.
    BadOrder(u16),
    /// Both rings in the control page at the same place.
    SameInPageRing(u16),
    /// The grant list would run into an in-page ring or off the page.
    GrantsTooLong {
        /// Grant references needed.
        grants: usize,
    },
    /// A `*_live` byte that is none of 0, 1, 2.
    BadLive(u8),
    /// A requested minimum ring size above 1 MiB.
    TooLarge(usize),
}

/// The two rings' orders: `left` (client to server) and `right` (server to
/// client).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Orders {
    /// log2 of the left ring's size.
    pub left: u16,
    /// log2 of the right ring's size.
    pub right: u16,
}

/// The smallest order of at least a page whose ring holds `size` bytes.
fn min_order(size: usize) -> u16 {
    let mut order = PAGE_ORDER;
    while size > (1usize << order) {
        order += 1;
    }
    order
}

impl Orders {
    /// What a server chooses for rings of at least `left_min` bytes (the
    /// server reads) and `right_min` bytes (the server writes), by
    /// libxenvchan's rules: in-page rings whenever both fit (1024 + 2048
    /// bytes), else the one that fits in 2048 bytes in the page and the other
    /// in pages, else both in pages of the smallest power of two.
    pub fn negotiate(left_min: usize, right_min: usize) -> Result<Self, WireError> {
        let max = 1usize << MAX_ORDER;
        for size in [left_min, right_min] {
            if size > max {
                return Err(WireError::TooLarge(size));
            }
        }
        let small = 1 << SMALL_ORDER;
        let large = 1 << LARGE_ORDER;
        let (left, right) = if left_min <= small && right_min <= large {
            (SMALL_ORDER, LARGE_ORDER)
        } else if left_min <= large && right_min <= small {
            (LARGE_ORDER, SMALL_ORDER)
        } else if left_min <= large {
            (LARGE_ORDER, min_order(right_min))
        } else if right_min <= large {
            (min_order(left_min), LARGE_ORDER)
        } else {
            (min_order(left_min), min_order(right_min))
        };
        Self::check(left, right)
    }

    /// Check orders read from a control page (the client's side): each in
    /// 10..=20, the two not at the same in-page place, and the grant list
    /// inside the page and clear of an in-page ring.
    pub fn check(left: u16, right: u16) -> Result<Self, WireError> {
        for order in [left, right] {
            if !(SMALL_ORDER..=MAX_ORDER).contains(&order) {
                return Err(WireError::BadOrder(order));
            }
        }
        if left == right && left < PAGE_ORDER {
            return Err(WireError::SameInPageRing(left));
        }
        let orders = Self { left, right };
        let grants = orders.grant_count();
        let limit = [left, right]
            .into_iter()
            .filter_map(|o| match place(o) {
                Place::InPage { offset } => Some(offset),
                Place::Pages { .. } => None,
            })
            .min()
            .unwrap_or(PAGE_SIZE);
        if GRANTS + 4 * grants > limit {
            return Err(WireError::GrantsTooLong { grants });
        }
        Ok(orders)
    }

    /// Grant references listed in the control page (left's pages, then
    /// right's).
    pub fn grant_count(self) -> usize {
        [self.left, self.right]
            .into_iter()
            .map(|o| match place(o) {
                Place::Pages { count } => count,
                Place::InPage { .. } => 0,
            })
            .sum()
    }
}

/// Where a ring of `order` (10..=20) lives.
pub fn place(order: u16) -> Place {
    match order {
        SMALL_ORDER => Place::InPage { offset: 1024 },
        LARGE_ORDER => Place::InPage { offset: 2048 },
        o => Place::Pages {
            count: 1 << o.saturating_sub(PAGE_ORDER).min(MAX_ORDER - PAGE_ORDER),
        },
    }
}

/// Offset of `grants[i]`.
pub fn grant_offset(i: usize) -> usize {
    GRANTS + 4 * i
}

/// The xenstore directory libvchan (Qubes' wrapper of libxenvchan) uses for
/// `port` between `server` and `client`; the server writes `ring-ref` and
/// `event-channel` under it.
pub fn qubes_path(server: u16, client: u16, port: u32) -> alloc::string::String {
    alloc::format!("/local/domain/{server}/data/vchan/{client}/{port}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_libxenvchan_h() {
        assert_eq!(
            [LEFT_CONS, LEFT_PROD, RIGHT_CONS, RIGHT_PROD],
            [0, 4, 8, 12]
        );
        assert_eq!([LEFT_ORDER, RIGHT_ORDER], [16, 18]);
        assert_eq!(
            [CLI_LIVE, SRV_LIVE, CLI_NOTIFY, SRV_NOTIFY],
            [20, 21, 22, 23]
        );
        assert_eq!(GRANTS, 24);
        assert_eq!(grant_offset(3), 36);
        assert_eq!(size_of::<RingShared>(), 8);
    }

    #[test]
    fn negotiation_follows_libxenvchan() {
        let o = |l, r| Orders::negotiate(l, r).map(|o| (o.left, o.right));
        // vchan-socket-proxy's 0/0 and small requests: both in the page.
        assert_eq!(o(0, 0), Ok((10, 11)));
        assert_eq!(o(1024, 2048), Ok((10, 11)));
        assert_eq!(o(2048, 1024), Ok((11, 10)));
        // QubesDB and qrexec's control channel: 4096 each way.
        assert_eq!(o(4096, 4096), Ok((12, 12)));
        assert_eq!(o(2048, 4096), Ok((11, 12)));
        assert_eq!(o(4097, 100), Ok((13, 11)));
        // qrexec's data channels: 64 KiB.
        assert_eq!(o(65536, 65536), Ok((16, 16)));
        assert_eq!(o(1 << 20, 1 << 20), Ok((20, 20)));
        assert_eq!(o((1 << 20) + 1, 0), Err(WireError::TooLarge((1 << 20) + 1)));
        for (l, r) in [(0usize, 0usize), (3000, 3000), (1 << 20, 10), (70000, 5)] {
            let got = Orders::negotiate(l, r).unwrap();
            assert!(1usize << got.left >= l && 1usize << got.right >= r);
        }
    }

    #[test]
    fn checks_refuse_what_a_hostile_server_could_write() {
        assert_eq!(Orders::check(9, 12), Err(WireError::BadOrder(9)));
        assert_eq!(Orders::check(12, 21), Err(WireError::BadOrder(21)));
        assert_eq!(
            Orders::check(u16::MAX, 12),
            Err(WireError::BadOrder(u16::MAX))
        );
        assert_eq!(Orders::check(11, 11), Err(WireError::SameInPageRing(11)));
        assert_eq!(Orders::check(10, 10), Err(WireError::SameInPageRing(10)));
        // 256 grants (1 KiB) run into a ring at offset 1024.
        assert_eq!(
            Orders::check(20, 10),
            Err(WireError::GrantsTooLong { grants: 256 })
        );
        assert!(Orders::check(20, 11).is_ok());
        // 512 grants fit in the page when no ring is in it.
        assert_eq!(Orders::check(20, 20).unwrap().grant_count(), 512);
        assert_eq!(Orders::check(12, 16).unwrap().grant_count(), 17);
        assert_eq!(Live::parse(3), Err(WireError::BadLive(3)));
        for l in [Live::Closed, Live::Connected, Live::NotYet] {
            assert_eq!(Live::parse(l.byte()), Ok(l));
        }
    }

    #[test]
    fn qubes_paths() {
        assert_eq!(qubes_path(0, 5, 111), "/local/domain/0/data/vchan/5/111");
    }
}
