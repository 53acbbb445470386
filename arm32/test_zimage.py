#!/usr/bin/env python3
"""Host tests of arm32/zimage.py on synthetic ELF32 files.

usage: python3 arm32/test_zimage.py [-v]
"""

import struct
import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zimage  # noqa: E402

BASE = 0x40008000


def header(size: int, magic: int = zimage.ZIMAGE_MAGIC, start: int = 0) -> bytes:
    """A zImage header (8 nops, a branch, magic, start, end, endianness)."""
    return b"\x00\x00\xa0\xe1" * 8 + b"\x03\x00\x00\xea" + struct.pack("<IIII", magic, start, size, 0x04030201)


def elf(segments: list, entry: int = BASE, machine: int = 40) -> bytes:
    """An ELF32 file with PT_LOAD segments [(paddr, data, memsz)]."""
    phoff, n = 52, len(segments)
    data_off = phoff + 32 * n
    ehdr = b"\x7fELF\x01\x01\x01" + b"\0" * 9
    ehdr += struct.pack("<HHIIIIIHHHHHH", 2, machine, 1, entry, phoff, 0, 0, 52, 32, n, 40, 0, 0)
    phdrs, blobs, off = b"", b"", data_off
    for paddr, data, memsz in segments:
        phdrs += struct.pack("<IIIIIIII", 1, off, paddr, paddr, len(data), memsz, 5, 4)
        blobs += data
        off += len(data)
    return ehdr + phdrs + blobs


class ZImage(unittest.TestCase):
    def test_segments_are_laid_out_from_the_entry_with_gaps_zeroed(self):
        text = header(0x40 + 8) + b"\xaa" * 8  # 0x3c bytes, then a 4-byte gap
        img = elf([(BASE - 0x8000, b"hdr", 3), (BASE, text, len(text)), (BASE + 0x40, b"\xbb" * 8, 0x1000)])
        base, out = zimage.flat_binary(img)
        self.assertEqual(base, BASE)
        self.assertEqual(len(out), 0x48)
        self.assertEqual(out[0x3c:0x40], b"\0" * 4)
        self.assertEqual(out[0x40:], b"\xbb" * 8)
        zimage.check_header(out)

    def test_bad_files_are_refused(self):
        text = header(0x30)
        with self.assertRaises(ValueError):
            zimage.flat_binary(b"\x7fELF\x02" + b"\0" * 60)  # ELF64
        with self.assertRaises(ValueError):
            zimage.flat_binary(elf([(BASE, text, 0x30)], machine=62))  # x86-64
        with self.assertRaises(ValueError):
            zimage.flat_binary(elf([(BASE - 4, b"\0" * 8 + text, 0x38)]))  # straddles the entry
        with self.assertRaises(ValueError):
            zimage.flat_binary(elf([(BASE, text, 0x30), (BASE + 8, b"x", 1)]))  # overlap

    def test_header_checks(self):
        zimage.check_header(header(0x34))  # the header alone is 0x34 bytes
        for bad in (header(0x34, magic=0), header(0x34, start=BASE), header(0x35), b"short"):
            with self.assertRaises(ValueError):
                zimage.check_header(bad)


if __name__ == "__main__":
    unittest.main()
