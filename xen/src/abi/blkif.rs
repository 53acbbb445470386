//! `io/blkif.h`: the PV block device protocol's ring slots.
//!
//! On amd64 the C structs have natural alignment (the i386 packing quirks
//! do not apply), so the `#[repr(C)]` types below carry their padding as
//! explicit fields. A ring slot is a union of every request kind; since the
//! request kinds overlap differently (`blkif_request_indirect` puts
//! `nr_segments` where `blkif_request` has `handle`), the ring carries
//! [`BlkifRequestSlot`], the slot's raw bytes, and each request kind
//! encodes itself into and decodes itself from those bytes at its C field
//! offsets. Every sector number in these structs is in 512-byte units:
//! that is what Linux blkback uses whatever the device's `sector-size`
//! (we never advertise `feature-large-sector-size`).

use super::GrantRef;
use core::mem::offset_of;

/// `BLKIF_OP_READ`: read sectors into the granted frames.
pub const BLKIF_OP_READ: u8 = 0;
/// `BLKIF_OP_WRITE`: write the granted frames to sectors.
pub const BLKIF_OP_WRITE: u8 = 1;
/// `BLKIF_OP_WRITE_BARRIER`: a write ordered after every earlier one
/// (`feature-barrier`).
pub const BLKIF_OP_WRITE_BARRIER: u8 = 2;
/// `BLKIF_OP_FLUSH_DISKCACHE`: commit the backend's write cache
/// (`feature-flush-cache`).
pub const BLKIF_OP_FLUSH_DISKCACHE: u8 = 3;
/// `BLKIF_OP_RESERVED_1`: not used on the ring.
pub const BLKIF_OP_RESERVED_1: u8 = 4;
/// `BLKIF_OP_DISCARD`: a [`BlkifRequestDiscard`] (`feature-discard`).
pub const BLKIF_OP_DISCARD: u8 = 5;
/// `BLKIF_OP_INDIRECT`: a [`BlkifRequestIndirect`]
/// (`feature-max-indirect-segments`).
pub const BLKIF_OP_INDIRECT: u8 = 6;

/// `BLKIF_MAX_SEGMENTS_PER_REQUEST`: segments carried in the slot itself.
pub const BLKIF_MAX_SEGMENTS_PER_REQUEST: usize = 11;
/// `BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST`: indirect segment pages one
/// indirect request may reference.
pub const BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST: usize = 8;
/// Segments per 4 KiB indirect page
/// (`PAGE_SIZE / sizeof(struct blkif_request_segment)`).
pub const BLKIF_SEGMENTS_PER_INDIRECT_PAGE: usize = 4096 / BLKIF_SEGMENT_SIZE;
/// `BLKIF_DISCARD_SECURE`: the discard must make the data unrecoverable.
pub const BLKIF_DISCARD_SECURE: u8 = 1;

/// `BLKIF_RSP_EOPNOTSUPP`: operation not supported.
pub const BLKIF_RSP_EOPNOTSUPP: i16 = -2;
/// `BLKIF_RSP_ERROR`: the operation failed.
pub const BLKIF_RSP_ERROR: i16 = -1;
/// `BLKIF_RSP_OKAY`: the operation succeeded.
pub const BLKIF_RSP_OKAY: i16 = 0;

/// `VDISK_CDROM` bit of the backend's `info`.
pub const VDISK_CDROM: u32 = 0x1;
/// `VDISK_REMOVABLE` bit of the backend's `info`.
pub const VDISK_REMOVABLE: u32 = 0x2;
/// `VDISK_READONLY` bit of the backend's `info`.
pub const VDISK_READONLY: u32 = 0x4;

/// Bytes in one sector of the protocol's addressing.
pub const BLKIF_SECTOR_SIZE: usize = 512;
/// `sizeof(struct blkif_request_segment)`.
pub const BLKIF_SEGMENT_SIZE: usize = core::mem::size_of::<BlkifRequestSegment>();
/// `sizeof(union blkif_sring_entry)`: the largest request kind.
pub const BLKIF_REQUEST_SIZE: usize = core::mem::size_of::<BlkifRequest>();

/// `struct blkif_request_segment`: one granted frame and the 512-byte
/// sectors of it to transfer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkifRequestSegment {
    /// Grant of the I/O frame.
    pub gref: GrantRef,
    /// First sector in the frame to transfer (inclusive), 0..=7.
    pub first_sect: u8,
    /// Last sector in the frame to transfer (inclusive), 0..=7.
    pub last_sect: u8,
    /// Padding to the struct's 4-byte alignment.
    pub pad: u16,
}
crate::impl_plain_data!(BlkifRequestSegment {
    gref,
    first_sect,
    last_sect,
    pad
});

impl BlkifRequestSegment {
    /// The segment as the 8 bytes of an indirect page entry.
    pub fn to_bytes(&self) -> [u8; BLKIF_SEGMENT_SIZE] {
        let mut b = [0; BLKIF_SEGMENT_SIZE];
        b[0..4].copy_from_slice(&self.gref.to_le_bytes());
        b[4] = self.first_sect;
        b[5] = self.last_sect;
        b[6..8].copy_from_slice(&self.pad.to_le_bytes());
        b
    }

    /// The segment stored in 8 bytes of an indirect page.
    pub fn from_bytes(b: &[u8; BLKIF_SEGMENT_SIZE]) -> Self {
        Self {
            gref: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            first_sect: b[4],
            last_sect: b[5],
            pad: u16::from_le_bytes([b[6], b[7]]),
        }
    }
}

/// `struct blkif_request`: read, write, barrier or flush.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkifRequest {
    /// `BLKIF_OP_*`.
    pub operation: u8,
    /// Used entries of `seg`.
    pub nr_segments: u8,
    /// The device handle (`blkif_vdev_t`).
    pub handle: u16,
    /// Padding before `id`.
    pub pad: u32,
    /// The frontend's tag, echoed in the response.
    pub id: u64,
    /// First 512-byte sector on the disk.
    pub sector_number: u64,
    /// The frames to transfer, in disk order.
    pub seg: [BlkifRequestSegment; BLKIF_MAX_SEGMENTS_PER_REQUEST],
}

/// `struct blkif_request_discard`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkifRequestDiscard {
    /// [`BLKIF_OP_DISCARD`].
    pub operation: u8,
    /// [`BLKIF_DISCARD_SECURE`] or zero.
    pub flag: u8,
    /// The device handle.
    pub handle: u16,
    /// Padding before `id`.
    pub pad: u32,
    /// The frontend's tag, echoed in the response.
    pub id: u64,
    /// First 512-byte sector to discard.
    pub sector_number: u64,
    /// Number of 512-byte sectors to discard.
    pub nr_sectors: u64,
}

/// `struct blkif_request_indirect` (amd64 layout: no trailing `pad`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkifRequestIndirect {
    /// [`BLKIF_OP_INDIRECT`].
    pub operation: u8,
    /// [`BLKIF_OP_READ`] or [`BLKIF_OP_WRITE`].
    pub indirect_op: u8,
    /// Segments listed in the indirect pages.
    pub nr_segments: u16,
    /// Padding before `id`.
    pub pad0: u32,
    /// The frontend's tag, echoed in the response.
    pub id: u64,
    /// First 512-byte sector on the disk.
    pub sector_number: u64,
    /// The device handle.
    pub handle: u16,
    /// Padding before `indirect_grefs`.
    pub pad1: u16,
    /// Grants of the pages holding the segments.
    pub indirect_grefs: [GrantRef; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST],
    /// Padding to the struct's 8-byte alignment.
    pub pad2: u32,
}

/// `struct blkif_response`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkifResponse {
    /// The request's `id`.
    pub id: u64,
    /// The request's `operation`.
    pub operation: u8,
    /// Padding before `status`.
    pub pad0: u8,
    /// `BLKIF_RSP_*`.
    pub status: i16,
    /// Padding to the struct's 8-byte alignment.
    pub pad1: u32,
}
crate::impl_plain_data!(BlkifResponse {
    id,
    operation,
    pad0,
    status,
    pad1
});

/// One request slot of the blkif ring as raw bytes
/// (`union blkif_sring_entry`'s request side). The operation byte at offset
/// 0 says which request kind it holds.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlkifRequestSlot {
    /// The slot's bytes, little-endian fields at their C offsets.
    pub bytes: [u8; BLKIF_REQUEST_SIZE],
}
crate::impl_plain_data!(BlkifRequestSlot { bytes });

impl Default for BlkifRequestSlot {
    fn default() -> Self {
        Self {
            bytes: [0; BLKIF_REQUEST_SIZE],
        }
    }
}

impl BlkifRequestSlot {
    /// The `operation` byte shared by every request kind.
    pub fn operation(&self) -> u8 {
        self.bytes[0]
    }

    fn put<const N: usize>(&mut self, offset: usize, value: [u8; N]) {
        self.bytes[offset..offset + N].copy_from_slice(&value);
    }

    fn get<const N: usize>(&self, offset: usize) -> [u8; N] {
        let mut out = [0; N];
        out.copy_from_slice(&self.bytes[offset..offset + N]);
        out
    }
}

impl BlkifRequest {
    /// Encode into a ring slot.
    pub fn to_slot(&self) -> BlkifRequestSlot {
        let mut s = BlkifRequestSlot::default();
        s.put(offset_of!(Self, operation), [self.operation]);
        s.put(offset_of!(Self, nr_segments), [self.nr_segments]);
        s.put(offset_of!(Self, handle), self.handle.to_le_bytes());
        s.put(offset_of!(Self, id), self.id.to_le_bytes());
        s.put(
            offset_of!(Self, sector_number),
            self.sector_number.to_le_bytes(),
        );
        for (i, seg) in self.seg.iter().enumerate() {
            s.put(
                offset_of!(Self, seg) + i * BLKIF_SEGMENT_SIZE,
                seg.to_bytes(),
            );
        }
        s
    }

    /// Decode a slot as a read/write/barrier/flush request (whatever its
    /// operation byte says; the caller checks it).
    pub fn from_slot(s: &BlkifRequestSlot) -> Self {
        let mut seg = [BlkifRequestSegment::default(); BLKIF_MAX_SEGMENTS_PER_REQUEST];
        for (i, out) in seg.iter_mut().enumerate() {
            *out = BlkifRequestSegment::from_bytes(
                &s.get(offset_of!(Self, seg) + i * BLKIF_SEGMENT_SIZE),
            );
        }
        Self {
            operation: s.bytes[offset_of!(Self, operation)],
            nr_segments: s.bytes[offset_of!(Self, nr_segments)],
            handle: u16::from_le_bytes(s.get(offset_of!(Self, handle))),
            pad: 0,
            id: u64::from_le_bytes(s.get(offset_of!(Self, id))),
            sector_number: u64::from_le_bytes(s.get(offset_of!(Self, sector_number))),
            seg,
        }
    }
}

impl BlkifRequestDiscard {
    /// Encode into a ring slot.
    pub fn to_slot(&self) -> BlkifRequestSlot {
        let mut s = BlkifRequestSlot::default();
        s.put(offset_of!(Self, operation), [self.operation]);
        s.put(offset_of!(Self, flag), [self.flag]);
        s.put(offset_of!(Self, handle), self.handle.to_le_bytes());
        s.put(offset_of!(Self, id), self.id.to_le_bytes());
        s.put(
            offset_of!(Self, sector_number),
            self.sector_number.to_le_bytes(),
        );
        s.put(offset_of!(Self, nr_sectors), self.nr_sectors.to_le_bytes());
        s
    }

    /// Decode a slot as a discard request.
    pub fn from_slot(s: &BlkifRequestSlot) -> Self {
        Self {
            operation: s.bytes[offset_of!(Self, operation)],
            flag: s.bytes[offset_of!(Self, flag)],
            handle: u16::from_le_bytes(s.get(offset_of!(Self, handle))),
            pad: 0,
            id: u64::from_le_bytes(s.get(offset_of!(Self, id))),
            sector_number: u64::from_le_bytes(s.get(offset_of!(Self, sector_number))),
            nr_sectors: u64::from_le_bytes(s.get(offset_of!(Self, nr_sectors))),
        }
    }
}

impl BlkifRequestIndirect {
    /// Encode into a ring slot.
    pub fn to_slot(&self) -> BlkifRequestSlot {
        let mut s = BlkifRequestSlot::default();
        s.put(offset_of!(Self, operation), [self.operation]);
        s.put(offset_of!(Self, indirect_op), [self.indirect_op]);
        s.put(
            offset_of!(Self, nr_segments),
            self.nr_segments.to_le_bytes(),
        );
        s.put(offset_of!(Self, id), self.id.to_le_bytes());
        s.put(
            offset_of!(Self, sector_number),
            self.sector_number.to_le_bytes(),
        );
        s.put(offset_of!(Self, handle), self.handle.to_le_bytes());
        for (i, gref) in self.indirect_grefs.iter().enumerate() {
            s.put(offset_of!(Self, indirect_grefs) + i * 4, gref.to_le_bytes());
        }
        s
    }

    /// Decode a slot as an indirect request.
    pub fn from_slot(s: &BlkifRequestSlot) -> Self {
        let mut indirect_grefs = [0; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST];
        for (i, out) in indirect_grefs.iter_mut().enumerate() {
            *out = u32::from_le_bytes(s.get(offset_of!(Self, indirect_grefs) + i * 4));
        }
        Self {
            operation: s.bytes[offset_of!(Self, operation)],
            indirect_op: s.bytes[offset_of!(Self, indirect_op)],
            nr_segments: u16::from_le_bytes(s.get(offset_of!(Self, nr_segments))),
            pad0: 0,
            id: u64::from_le_bytes(s.get(offset_of!(Self, id))),
            sector_number: u64::from_le_bytes(s.get(offset_of!(Self, sector_number))),
            handle: u16::from_le_bytes(s.get(offset_of!(Self, handle))),
            pad1: 0,
            indirect_grefs,
            pad2: 0,
        }
    }
}

// Every request kind must fit the slot the ring carries.
const _: () = assert!(core::mem::size_of::<BlkifRequestDiscard>() <= BLKIF_REQUEST_SIZE);
const _: () = assert!(core::mem::size_of::<BlkifRequestIndirect>() <= BLKIF_REQUEST_SIZE);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_kinds_round_trip_through_a_slot() {
        let mut seg = [BlkifRequestSegment::default(); BLKIF_MAX_SEGMENTS_PER_REQUEST];
        for (i, s) in seg.iter_mut().enumerate() {
            *s = BlkifRequestSegment {
                gref: 0x0102_0300 + i as u32,
                first_sect: i as u8 % 8,
                last_sect: 7,
                pad: 0,
            };
        }
        let rw = BlkifRequest {
            operation: BLKIF_OP_WRITE,
            nr_segments: 11,
            handle: 0x5151,
            pad: 0,
            id: 0xdead_beef_0000_0001,
            sector_number: 0x1234_5678_9abc,
            seg,
        };
        let slot = rw.to_slot();
        assert_eq!(slot.operation(), BLKIF_OP_WRITE);
        assert_eq!(&slot.bytes[8..16], &0xdead_beef_0000_0001u64.to_le_bytes());
        assert_eq!(BlkifRequest::from_slot(&slot), rw);

        let ind = BlkifRequestIndirect {
            operation: BLKIF_OP_INDIRECT,
            indirect_op: BLKIF_OP_READ,
            nr_segments: 300,
            id: 7,
            sector_number: 99,
            handle: 3,
            indirect_grefs: [9, 8, 7, 6, 5, 4, 3, 2],
            ..Default::default()
        };
        let slot = ind.to_slot();
        assert_eq!(&slot.bytes[2..4], &300u16.to_le_bytes());
        assert_eq!(&slot.bytes[28..32], &9u32.to_le_bytes());
        assert_eq!(BlkifRequestIndirect::from_slot(&slot), ind);

        let d = BlkifRequestDiscard {
            operation: BLKIF_OP_DISCARD,
            flag: BLKIF_DISCARD_SECURE,
            handle: 1,
            id: 2,
            sector_number: 3,
            nr_sectors: 4,
            ..Default::default()
        };
        assert_eq!(BlkifRequestDiscard::from_slot(&d.to_slot()), d);
    }
}
