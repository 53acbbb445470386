#!/usr/bin/env python3
"""Turns a linked arm32 image (ELF32, from arm32/link.ld) into the zImage
Xen's and xl's arm32 loaders take: the bytes of its PT_LOAD segments laid
out from the first one's address, without .bss (which has no file bytes).

It checks what the loaders will check: the zImage magic 0x016f2818 at
offset 0x24, start 0 at 0x28 and, at 0x2c, the end word equal to the file's
size. No objcopy is needed (the host's binutils has no ARM back end).

usage: python3 arm32/zimage.py IN.elf OUT
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

ZIMAGE_MAGIC = 0x016F2818
PT_LOAD = 1


def flat_binary(elf: bytes) -> tuple:
    """(entry address, bytes) of the PT_LOAD segments of a little-endian
    ELF32 ARM executable from its entry point on (the linker may load the
    ELF headers below it; the zImage starts at the entry); raises
    ValueError on anything else."""
    if elf[:4] != b"\x7fELF" or elf[4] != 1 or elf[5] != 1:
        raise ValueError("not a little-endian ELF32 file")
    (e_machine,) = struct.unpack_from("<H", elf, 0x12)
    if e_machine != 40:
        raise ValueError(f"not an ARM image (e_machine {e_machine})")
    (entry, phoff) = struct.unpack_from("<II", elf, 0x18)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x2A)
    segs = []
    for i in range(phnum):
        p_type, p_offset, _vaddr, p_paddr, p_filesz, _memsz = struct.unpack_from(
            "<IIIIII", elf, phoff + i * phentsize
        )
        if p_type == PT_LOAD and p_filesz > 0 and p_paddr + p_filesz > entry:
            if p_paddr < entry:
                raise ValueError("a segment straddles the entry point")
            if p_offset + p_filesz > len(elf):
                raise ValueError("segment beyond the end of the file")
            segs.append((p_paddr, elf[p_offset:p_offset + p_filesz]))
    if not segs:
        raise ValueError("no loadable segment")
    segs.sort()
    base = entry
    if segs[0][0] != entry:
        raise ValueError("the first loadable byte is not the entry point")
    out = bytearray()
    for addr, data in segs:
        off = addr - base
        if off < len(out):
            raise ValueError("overlapping segments")
        out += b"\0" * (off - len(out)) + data
    return base, bytes(out)


def check_header(img: bytes) -> None:
    """Raises ValueError unless `img` has the zImage header the loaders read."""
    if len(img) < 0x30:
        raise ValueError("image shorter than the zImage header")
    magic, start, end = struct.unpack_from("<III", img, 0x24)
    if magic != ZIMAGE_MAGIC:
        raise ValueError(f"no zImage magic at 0x24 ({magic:#x})")
    if start != 0:
        raise ValueError(f"zImage start {start:#x}, want 0 (xl loads at RAM base + 0x8000)")
    if end != len(img):
        raise ValueError(f"zImage end word {end:#x} != file size {len(img):#x}")


def main(argv: list) -> int:
    """The command line in the module doc."""
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    try:
        base, img = flat_binary(Path(argv[1]).read_bytes())
        if base != 0x40008000:
            raise ValueError(f"linked at {base:#x}, want 0x40008000 (arm32/link.ld)")
        check_header(img)
    except (OSError, ValueError) as e:
        print(f"zimage: {argv[1]}: {e}", file=sys.stderr)
        return 1
    tmp = Path(argv[2] + ".tmp")
    tmp.write_bytes(img)
    tmp.replace(argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
