#!/usr/bin/env python3
"""The trusted code base of each image, from the DWARF line tables of a
build with line-table debug info (`make tcb`, docs/tcb.md).

For every image it reads the .debug_line of the image's twin built with
`profile.release.debug = "line-tables-only"` (same sources, flags and
--remap-path-prefix as the shipped image, only the debug info added), and
counts the distinct (file, line) pairs that the line table attributes to an
address inside the image's executable sections: the source lines whose
code is in the image, inlined code included (the line table names the
innermost inlined line), code the linker or LTO dropped excluded (its rows
lie outside the sections, e.g. at the tombstone address 0). Each file is
classified by its remapped path into a crate and a layer; the unsafe
blocks counted are those whose span holds at least one linked line.

Writes DIR/tcb.md, DIR/tcb.json and one DIR/<arch>-<image>.svg per image.
Needs pyelftools (Debian's python3-pyelftools, installed by make deps).
"""

import argparse
import bisect
import json
import os
import re
import sys
from collections import defaultdict

# Layers, in drawing order: ours first, then third party, then the Rust
# standard library. (name, group, colour)
LAYERS = [
    ("kernel", "ours", "#1f4e8c"),
    ("xen", "ours", "#2f6fbf"),
    ("drivers", "ours", "#4a90d9"),
    ("qubes", "ours", "#6aa8e8"),
    ("wireguard", "ours", "#8cc0f0"),
    ("service", "ours", "#b3d6f7"),
    ("smoltcp", "third party", "#d9822b"),
    ("crypto", "third party", "#e8a33d"),
    ("other third party", "third party", "#f2c57c"),
    ("rust std", "std", "#8c8c8c"),
    ("generated", "other", "#bdbdbd"),
    ("unknown", "other", "#e0e0e0"),
]
LAYER_GROUP = {name: group for name, group, _ in LAYERS}
LAYER_COLOUR = {name: colour for name, _, colour in LAYERS}

# Our top-level folders and the layer each belongs to.
OUR_LAYERS = {
    "kernel": "kernel",
    "arm32": "kernel",
    "xen": "xen",
    "syslog": "kernel",
    "netfront": "drivers",
    "netback": "drivers",
    "blkfront": "drivers",
    "qubes": "qubes",
    "wireguard": "wireguard",
    "netvm": "service",
    "services": "service",
}

# Third-party crates by layer (crates.io names); anything else from the
# registry is "other third party".
SMOLTCP_CRATES = {"smoltcp", "managed", "heapless", "hash32", "byteorder", "stable_deref_trait"}
CRYPTO_CRATES = {
    "aead", "blake2", "block-buffer", "chacha20", "chacha20poly1305", "cipher",
    "crypto-common", "curve25519-dalek", "curve25519-dalek-derive", "digest",
    "fiat-crypto", "hmac", "inout", "poly1305", "subtle", "universal-hash",
    "x25519-dalek", "zeroize", "cpufeatures", "opaque-debug", "rand_core",
    "generic-array", "typenum",
}
STD_CRATES = {"core", "alloc", "compiler_builtins", "compiler-builtins", "std", "stdarch",
              "portable-simd", "rustc-std-workspace-core", "libm"}

# Published figures drawn beside each image: only ones with a source.
PUBLISHED = [
    {
        "what": "qubes-mirage-firewall (MirageOS, OCaml): image size",
        "label": "qubes-mirage-firewall image",
        "bytes": 7454880,
        "source": "mirage/qubes-mirage-firewall README.md (commit 008b5b3b, 2022-08-13 console log: "
                  "\"Uploading 'dist/qubes-firewall.xen' (7454880 bytes)\")",
    },
    {
        "what": "Linux (sys-firewall's kernel + userland): trusted code, order of magnitude",
        "label": "Linux OS trusted code (\"tens of millions of lines\")",
        "lines_at_least": 10_000_000,
        "source": "Qubes OS documentation, \"Security-critical code\" "
                  "(qubes-os.org/doc/security-critical-code/): \"In Windows, Linux, and Mac OSes, "
                  "the amount of trusted code is typically on the order of tens of millions of lines of C code\"",
    },
]
NOT_FOUND = [
    "qubes-mirage-firewall: no published count of its source lines was found",
    "Linux sys-firewall: no published image or template size was found",
]


# ---------------------------------------------------------------- line tables

def exec_ranges(elf):
    """The [start, end) address ranges of the allocated executable sections."""
    ranges = []
    for sec in elf.iter_sections():
        flags = sec["sh_flags"]
        if flags & 0x2 and flags & 0x4 and sec["sh_type"] == "SHT_PROGBITS" and sec["sh_size"]:
            ranges.append((sec["sh_addr"], sec["sh_addr"] + sec["sh_size"]))
    return sorted(ranges)


def in_ranges(ranges, starts, addr):
    i = bisect.bisect_right(starts, addr) - 1
    return i >= 0 and addr < ranges[i][1]


def _decode(x):
    return x.decode("utf-8", "replace") if isinstance(x, bytes) else x


def line_table(path):
    """(lines, code_bytes, text_bytes): lines maps a source path to the set of
    its line numbers with code in the image's executable sections;
    code_bytes maps a source path to the bytes of code the line table
    attributes to it; text_bytes is the size of the executable sections."""
    from elftools.elf.elffile import ELFFile

    lines = defaultdict(set)
    code_bytes = defaultdict(int)
    with open(path, "rb") as f:
        elf = ELFFile(f)
        ranges = exec_ranges(elf)
        starts = [r[0] for r in ranges]
        text_bytes = sum(e - s for s, e in ranges)
        if not elf.has_dwarf_info():
            raise SystemExit(f"tcb: {path} has no DWARF (build it with debug info)")
        dwarf = elf.get_dwarf_info()
        for cu in dwarf.iter_CUs():
            lp = dwarf.line_program_for_CU(cu)
            if lp is None:
                continue
            top = cu.get_top_DIE()
            comp_dir = _decode(top.attributes["DW_AT_comp_dir"].value) if "DW_AT_comp_dir" in top.attributes else ""
            version = lp.header["version"]
            dirs = [_decode(d) for d in lp.header["include_directory"]]
            files = lp.header["file_entry"]
            names = {}

            def file_name(idx):
                if idx in names:
                    return names[idx]
                # DWARF 5 numbers files and directories from 0 (entry 0 is the
                # CU's own); DWARF 2-4 number files from 1 and directories
                # from 1, directory 0 being the compilation directory.
                if version >= 5:
                    fe = files[idx]
                    d = dirs[fe.dir_index] if fe.dir_index < len(dirs) else ""
                else:
                    fe = files[idx - 1]
                    d = comp_dir if fe.dir_index == 0 else dirs[fe.dir_index - 1]
                name = _decode(fe.name)
                if not name.startswith("/"):
                    if d and not d.startswith("/"):
                        d = os.path.join(comp_dir, d)
                    name = os.path.join(d, name)
                names[idx] = os.path.normpath(name)
                return names[idx]

            prev = None  # (address, file index, line) of the previous row
            for entry in lp.get_entries():
                st = entry.state
                if st is None:
                    continue
                if prev is not None:
                    a, fidx, ln = prev
                    if in_ranges(ranges, starts, a) and ln > 0:
                        fn = file_name(fidx)
                        lines[fn].add(ln)
                        if st.address > a:
                            code_bytes[fn] += st.address - a
                if st.end_sequence:
                    prev = None
                else:
                    prev = (st.address, st.file, st.line)
    return lines, code_bytes, text_bytes


# ------------------------------------------------------------ classification

_REG = re.compile(r"^/cargo/(?:registry/src/[^/]+|git/checkouts/[^/]+/[^/]+)/([^/]+)/")
_VER = re.compile(r"^(.*?)-(\d+\.\d+\.\d+.*)$")


def classify(path):
    """(group, layer, crate) of a remapped source path."""
    if path.startswith("/moat/target/") or "/build/" in path and "/out/" in path:
        return "other", "generated", "generated"
    if path.startswith("/moat/"):
        parts = path[len("/moat/"):].split("/")
        top = parts[0]
        layer = OUR_LAYERS.get(top)
        if layer is None:
            return "other", "unknown", top
        crate = top
        if top == "services" and len(parts) > 1:
            crate = parts[1]
        elif top == "wireguard" and len(parts) > 1 and parts[1] == "aead":
            crate = "wg-aead"
        return "ours", layer, crate
    m = re.match(r"^/rustc/[0-9a-f]+/(?:library/)?([^/]+)/", path)
    if m:
        crate = m.group(1)
        if crate in ("compiler-builtins",):
            crate = "compiler_builtins"
        if crate in ("stdarch", "portable-simd", "core"):
            crate = "core"
        if crate == "vendor" or crate not in STD_CRATES:
            # library/vendor/<crate>/ or another std dependency
            crate = path.split("/")[-3] if crate == "vendor" else crate
        return "std", "rust std", crate
    m = _REG.match(path)
    if m:
        dirname = m.group(1)
        vm = _VER.match(dirname)
        crate = vm.group(1) if vm else dirname
        if crate in STD_CRATES or crate.startswith("compiler_builtins"):
            return "std", "rust std", "compiler_builtins" if crate.startswith("compiler") else crate
        if crate in SMOLTCP_CRATES:
            return "third party", "smoltcp", crate
        if crate in CRYPTO_CRATES:
            return "third party", "crypto", crate
        return "third party", "other third party", crate
    return "other", "unknown", path.split("/")[1] if path.startswith("/") else path


# ------------------------------------------------------------------ unsafe

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<line_comment>//[^\n]*)
  | (?P<block_comment>/\*)
  | (?P<raw_string>(?:br|cr|r)(?P<hashes>\#*)")
  | (?P<string>(?:b|c)?")
  | (?P<char>b?'(?:\\(?:x[0-9a-fA-F]{2}|u\{[0-9a-fA-F_]{1,8}\}|.)|[^\\'\n])')
  | (?P<lifetime>'[A-Za-z_][A-Za-z0-9_]*)
  | (?P<ident>r\#[A-Za-z_][A-Za-z0-9_]*|[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>.)
    """,
    re.VERBOSE | re.DOTALL,
)


def tokens(src):
    """Identifiers and punctuation of Rust source, as (text, line) pairs,
    with comments, strings and character literals skipped."""
    out = []
    pos, line, n = 0, 1, len(src)
    while pos < n:
        m = _TOKEN.match(src, pos)
        kind = m.lastgroup if m.lastgroup != "hashes" else "raw_string"
        if m.group("raw_string") is not None:
            kind = "raw_string"
        end = m.end()
        if kind == "block_comment":
            depth, i = 1, end
            while i < n and depth:
                if src.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif src.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
            end = i
        elif kind == "raw_string":
            close = '"' + m.group("hashes")
            j = src.find(close, end)
            end = n if j < 0 else j + len(close)
        elif kind == "string":
            i = end
            while i < n and src[i] != '"':
                i += 2 if src[i] == "\\" else 1
            end = min(i + 1, n)
        elif kind == "ident" or kind == "punct":
            out.append((m.group(0), line))
        line += src.count("\n", pos, end)
        pos = end
    return out


def source_items(src):
    """The unsafe blocks, fns, impls, traits and extern blocks of a Rust
    source, as (kind, first line, last line) spans (for a block or fn: its
    braces; for an item without a body: its line), and the spans of its
    functions with a body (from the `fn` line to the closing brace)."""
    toks = tokens(src)
    match = {}
    stack = []
    for i, (t, _) in enumerate(toks):
        if t == "{":
            stack.append(i)
        elif t == "}" and stack:
            match[stack.pop()] = i

    def body(k):
        # The first `{` before any `;` from token k: the item's body.
        while k < len(toks) and toks[k][0] not in ("{", ";"):
            k += 1
        if k < len(toks) and toks[k][0] == "{" and k in match:
            return k, match[k]
        return None

    items = []
    fns = []
    for i, (t, ln) in enumerate(toks):
        if i + 1 >= len(toks):
            continue
        nxt = toks[i + 1][0]
        if t == "fn":
            # `fn name` (an item; `fn(` is a pointer type).
            if nxt[:1].isalpha() or nxt[:1] == "_":
                b = body(i + 2)
                if b:
                    fns.append((ln, toks[b[1]][1]))
            continue
        if t != "unsafe":
            continue
        j = i + 1
        if nxt == "{":
            kind = "block"
        elif nxt == "fn":
            kind = "fn"
        elif nxt == "impl":
            kind = "impl"
        elif nxt == "trait":
            kind = "trait"
        elif nxt == "extern":
            # `unsafe extern "C" fn` or an `unsafe extern "C" { ... }` block
            # (the ABI string is skipped by the tokenizer).
            k = j + 1
            kind = "fn" if k < len(toks) and toks[k][0] == "fn" else "extern"
        else:
            continue  # #[unsafe(...)] attributes, `unsafe` in macro patterns
        b = body(j)
        if b:
            items.append((kind, toks[b[0]][1], toks[b[1]][1]))
        else:
            items.append((kind, ln, ln))
    return items, fns


def unsafe_items(src):
    """The unsafe items of [`source_items`]."""
    return source_items(src)[0]


def function_lines(fns, linked):
    """How many lines the functions holding a linked line span, together
    with the linked lines outside any function: the lines a reviewer of
    the image reads (the union, so nested functions count once)."""
    sorted_ls = sorted(linked)
    spans = []
    for a, b in fns:
        i = bisect.bisect_left(sorted_ls, a)
        if i < len(sorted_ls) and sorted_ls[i] <= b:
            spans.append((a, b))
    spans.sort()
    total, cur_a, cur_b = 0, None, None
    covered = []
    for a, b in spans:
        if cur_b is None or a > cur_b + 1:
            if cur_b is not None:
                covered.append((cur_a, cur_b))
            cur_a, cur_b = a, b
        else:
            cur_b = max(cur_b, b)
    if cur_b is not None:
        covered.append((cur_a, cur_b))
    starts = [c[0] for c in covered]
    total = sum(b - a + 1 for a, b in covered)
    for ln in sorted_ls:
        i = bisect.bisect_right(starts, ln) - 1
        if i < 0 or ln > covered[i][1]:
            total += 1
    return total


# ------------------------------------------------------------------ report

class Sources:
    """Remapped path -> file on this machine, with cached reads."""

    def __init__(self, remaps):
        # remaps: (real prefix, remapped prefix); the longest remapped prefix wins.
        self.remaps = sorted(remaps, key=lambda r: -len(r[1]))
        self.cache = {}

    def local(self, path):
        for real, virt in self.remaps:
            if path == virt or path.startswith(virt.rstrip("/") + "/"):
                return real + path[len(virt):]
        return path

    def read(self, path):
        if path not in self.cache:
            try:
                with open(self.local(path), encoding="utf-8", errors="replace") as f:
                    text = f.read()
                items, fns = source_items(text) if path.endswith(".rs") else ([], [])
                self.cache[path] = (text.count("\n") + (0 if text.endswith("\n") or not text else 1),
                                    items, fns)
            except OSError:
                self.cache[path] = None
        return self.cache[path]


def analyse(elf_path, image_path, sources, shipped_elf=None):
    lines, code_bytes, text_bytes = line_table(elf_path)
    crates = {}
    missing = []
    for path in sorted(lines):
        group, layer, crate = classify(path)
        key = (layer, crate)
        c = crates.setdefault(key, {"group": group, "layer": layer, "crate": crate, "files": 0,
                                    "lines": 0, "fn_lines": 0, "file_lines": 0, "code_bytes": 0,
                                    "unsafe_blocks": 0, "unsafe_fns": 0, "unsafe_other": 0})
        ls = lines[path]
        c["files"] += 1
        c["lines"] += len(ls)
        c["code_bytes"] += code_bytes.get(path, 0)
        info = sources.read(path)
        if info is None:
            missing.append(path)
            c["fn_lines"] += len(ls)
            continue
        nlines, items, fns = info
        c["file_lines"] += nlines
        c["fn_lines"] += function_lines(fns, ls)
        sorted_ls = sorted(ls)
        for kind, a, b in items:
            i = bisect.bisect_left(sorted_ls, a)
            if i < len(sorted_ls) and sorted_ls[i] <= b:
                if kind == "block":
                    c["unsafe_blocks"] += 1
                elif kind == "fn":
                    c["unsafe_fns"] += 1
                else:
                    c["unsafe_other"] += 1
    rows = sorted(crates.values(), key=lambda c: ([l for l, _, _ in LAYERS].index(c["layer"]), -c["lines"]))
    layers = {}
    for c in rows:
        l = layers.setdefault(c["layer"], {"group": c["group"], "lines": 0, "fn_lines": 0, "file_lines": 0,
                                           "code_bytes": 0, "unsafe_blocks": 0, "unsafe_fns": 0})
        for k in ("lines", "fn_lines", "file_lines", "code_bytes", "unsafe_blocks", "unsafe_fns"):
            l[k] += c[k]
    groups = {}
    for name, l in layers.items():
        g = groups.setdefault(l["group"], {"lines": 0, "fn_lines": 0, "file_lines": 0, "code_bytes": 0,
                                           "unsafe_blocks": 0, "unsafe_fns": 0})
        for k in g:
            g[k] += l[k]
    total = {k: sum(l[k] for l in layers.values()) for k in ("lines", "fn_lines", "file_lines", "code_bytes",
                                                             "unsafe_blocks", "unsafe_fns")}
    return {
        "image_bytes": os.path.getsize(image_path) if image_path and os.path.exists(image_path) else None,
        "text_bytes": text_bytes,
        "same_text_as_image": same_text(elf_path, shipped_elf or image_path),
        "shipped_text_bytes": text_size(shipped_elf or image_path),
        "functions": compare_functions(elf_path, shipped_elf or image_path),
        "crates": rows,
        "layers": layers,
        "groups": groups,
        "total": total,
        "missing_sources": missing,
    }


def _elf(path):
    """The ELFFile of path, or None when it is not an ELF (a zImage)."""
    from elftools.elf.elffile import ELFFile

    if not path or not os.path.exists(path):
        return None
    f = open(path, "rb")
    if f.read(4) != b"\x7fELF":
        f.close()
        return None
    f.seek(0)
    return ELFFile(f)


def text_size(path):
    """The executable sections' size of an ELF image (None for a zImage)."""
    elf = _elf(path)
    if elf is None:
        return None
    ranges = exec_ranges(elf)
    elf.stream.close()
    return sum(e - s for s, e in ranges)


def _without_instantiating_crate(name):
    """A v0-mangled name without its trailing instantiating crate
    (`Cs_<length><crate>` ending the name, after the path)."""
    for m in re.finditer(r"Cs_(\d+)", name):
        n = int(m.group(1))
        if m.end() + n == len(name) and m.start() > 3:
            return name[:m.start()]
    return name


def function_names(path):
    elf = _elf(path)
    if elf is None:
        return None
    symtab = elf.get_section_by_name(".symtab")
    names = set()
    if symtab is not None:
        for sym in symtab.iter_symbols():
            if sym["st_info"]["type"] == "STT_FUNC" and sym["st_size"] > 0:
                # The crates' disambiguators (v0 mangling: `Cs<hash>_`, and
                # the back-references whose offsets they shift; legacy: the
                # trailing `17h<hash>E`) change with the debug-info setting:
                # compare the names without them, without LLVM's `.N`
                # suffixes, and without the crate that instantiated a
                # generic (which of two crates does is LTO's choice).
                n = re.sub(r"\.\d+$", "", sym.name)
                n = re.sub(r"17h[0-9a-f]{16}E$", "E", n)
                n = re.sub(r"Cs[0-9A-Za-z]*_", "Cs_", n)
                n = re.sub(r"B[0-9A-Za-z]*_", "B_", n)
                names.add(_without_instantiating_crate(n))
    elf.stream.close()
    return names


def compare_functions(elf_path, image_path):
    """The function symbols of the debug twin against the shipped image's:
    how many each has and how many only one has (None without symbols)."""
    a, b = function_names(elf_path), function_names(image_path)
    if not a or not b:
        return None
    return {"twin": len(a), "shipped": len(b), "only_twin": len(a - b), "only_shipped": len(b - a)}


def same_text(elf_path, image_path):
    """Whether the debug build's executable sections hold the same bytes as
    the shipped image's (None when the image is not an ELF, e.g. a zImage)."""
    from elftools.elf.elffile import ELFFile

    if not image_path or not os.path.exists(image_path):
        return None

    def text(p):
        with open(p, "rb") as f:
            if f.read(4) != b"\x7fELF":
                return None
            f.seek(0)
            elf = ELFFile(f)
            return [(s["sh_addr"], s.data()) for s in elf.iter_sections()
                    if s["sh_flags"] & 0x2 and s["sh_type"] == "SHT_PROGBITS" and s["sh_size"]]

    a, b = text(elf_path), text(image_path)
    if b is None:
        return None
    return a == b


# ------------------------------------------------------------------- SVG

def _esc(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _k(n):
    return f"{n / 1000:.1f}k" if n >= 1000 else str(n)


def svg(arch, image, r):
    """A stacked bar of the image's linked lines by layer (linear), and the
    image beside the published figures (log scale)."""
    W, left, right = 900, 20, 20
    bar_w = W - left - right
    total = r["total"]["lines"]
    out = []
    y = 30
    size = r["image_bytes"]
    out.append(f'<text x="{left}" y="{y}" font-size="18" font-weight="bold">{_esc(image)} ({arch}): '
               f'{r["total"]["fn_lines"]:,} lines of linked functions, image {size or 0:,} bytes</text>')
    y += 22
    ours = r["groups"].get("ours", {}).get("fn_lines", 0)
    third = r["groups"].get("third party", {}).get("fn_lines", 0)
    std = r["groups"].get("std", {}).get("fn_lines", 0)
    out.append(f'<text x="{left}" y="{y}" font-size="13">function lines: ours {ours:,} · third party {third:,} · '
               f'Rust core/alloc/compiler_builtins {std:,} · unsafe blocks linked '
               f'{r["total"]["unsafe_blocks"]:,} (ours {r["groups"].get("ours", {}).get("unsafe_blocks", 0):,})</text>')
    y += 14
    scale = max(r["total"]["fn_lines"], total, 1)
    for key, label in (("lines", "lines with code (DWARF line table)"),
                       ("fn_lines", "lines of the functions they are in")):
        out.append(f'<text x="{left}" y="{y + 12}" font-size="12">{label}: {r["total"][key]:,}</text>')
        y += 16
        x = left
        for name, _, colour in LAYERS:
            l = r["layers"].get(name)
            if not l or not l[key]:
                continue
            w = bar_w * l[key] / scale
            out.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="30" fill="{colour}" stroke="white">'
                       f'<title>{_esc(name)}: {l[key]:,}</title></rect>')
            if w > 48:
                out.append(f'<text x="{x + 4:.1f}" y="{y + 19}" font-size="11">{_esc(name)}</text>')
            x += w
        y += 38
    y += 12
    # Legend: one row per layer present.
    for name, group, colour in LAYERS:
        l = r["layers"].get(name)
        if not l or not l["lines"]:
            continue
        out.append(f'<rect x="{left}" y="{y - 11}" width="12" height="12" fill="{colour}"/>')
        out.append(f'<text x="{left + 18}" y="{y}" font-size="12">{_esc(name)} ({group}): {l["lines"]:,} lines with code, '
                   f'{l["fn_lines"]:,} function lines, {l["code_bytes"]:,} code bytes, '
                   f'{l["unsafe_blocks"]} unsafe blocks</text>')
        y += 17
    # Comparison, log scale (lines and bytes on one decade axis).
    y += 18
    out.append(f'<text x="{left}" y="{y}" font-size="14" font-weight="bold">Beside published figures '
               f'(log scale; sources in docs/tcb.md)</text>')
    y += 10
    import math
    lo, hi = 3, 8  # 1e3 .. 1e8
    label_w = 330
    axis_w = W - left - right - label_w

    def xpos(v):
        return left + label_w + axis_w * (math.log10(max(v, 10 ** lo)) - lo) / (hi - lo)

    rows = [
        ("this image: lines of linked functions", r["total"]["fn_lines"], LAYER_COLOUR["kernel"], ""),
        ("this image: lines with code", total, LAYER_COLOUR["xen"], ""),
        (f"this image: bytes", size or 0, LAYER_COLOUR["drivers"], ""),
    ]
    for p in PUBLISHED:
        if "bytes" in p:
            rows.append((p["label"] + ": bytes", p["bytes"], LAYER_COLOUR["smoltcp"], ""))
        else:
            rows.append((p["label"], p["lines_at_least"], LAYER_COLOUR["crypto"], "≥ "))
    for label, v, colour, prefix in rows:
        y += 8
        out.append(f'<text x="{left}" y="{y + 13}" font-size="12">{_esc(label)}</text>')
        x1 = xpos(v)
        out.append(f'<rect x="{left + label_w}" y="{y}" width="{x1 - left - label_w:.1f}" height="16" fill="{colour}"/>')
        out.append(f'<text x="{x1 + 4:.1f}" y="{y + 13}" font-size="12">{prefix}{v:,}</text>')
        y += 16
    y += 20
    for d in range(lo, hi + 1):
        xx = xpos(10 ** d)
        out.append(f'<line x1="{xx:.1f}" y1="{y - 6}" x2="{xx:.1f}" y2="{y}" stroke="black"/>')
        out.append(f'<text x="{xx - 10:.1f}" y="{y + 12}" font-size="11">1e{d}</text>')
    y += 30
    for note in NOT_FOUND:
        out.append(f'<text x="{left}" y="{y}" font-size="11" fill="#555">{_esc(note)}</text>')
        y += 14
    y += 6
    body = "\n".join(out)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{y}" viewBox="0 0 {W} {y}" '
            f'font-family="sans-serif">\n<rect width="100%" height="100%" fill="white"/>\n{body}\n</svg>\n')


# ------------------------------------------------------------- markdown

def markdown(results, remaps):
    def split(r, key):
        g = r["groups"]
        return (f"{r['total'][key]:,} ({g.get('ours', {}).get(key, 0):,} / "
                f"{g.get('third party', {}).get(key, 0):,} / {g.get('std', {}).get(key, 0):,})")

    out = ["# Trusted code base per image (generated by `make tcb`)", ""]
    out.append("Lines with code: distinct source lines that the DWARF line table places inside the executable "
               "sections. Function lines: the lines of the functions holding such a line, plus linked lines "
               "outside functions. File lines: every line of the files those lines are in. Unsafe: `unsafe` "
               "blocks whose span holds a linked line. Columns in parentheses: ours / third party / Rust "
               "standard library. Method and caveats: docs/tcb.md.")
    out.append("")
    out.append("| arch | image | bytes | text: twin / shipped | same functions | lines with code | function lines "
               "| file lines | unsafe blocks (ours) |")
    out.append("| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for (arch, image), r in results.items():
        g = r["groups"]
        fns = r["functions"]
        same = "n/a" if fns is None else ("yes" if not fns["only_twin"] and not fns["only_shipped"]
                                          else f"{fns['only_twin']} / {fns['only_shipped']} differ")
        shipped = r["shipped_text_bytes"]
        out.append(f"| {arch} | {image} | {r['image_bytes'] or 0:,} | {r['text_bytes']:,} / "
                   f"{'zImage' if shipped is None else format(shipped, ',')} | {same} | {split(r, 'lines')} | "
                   f"{split(r, 'fn_lines')} | {r['total']['file_lines']:,} | {r['total']['unsafe_blocks']} "
                   f"({g.get('ours', {}).get('unsafe_blocks', 0)}) |")
    for (arch, image), r in results.items():
        out += ["", f"## {image} ({arch})", ""]
        out.append("| layer | crate | files | lines with code | function lines | file lines | code bytes "
                   "| unsafe blocks | unsafe fns |")
        out.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for c in r["crates"]:
            out.append(f"| {c['layer']} | {c['crate']} | {c['files']} | {c['lines']:,} | {c['fn_lines']:,} | "
                       f"{c['file_lines']:,} | {c['code_bytes']:,} | {c['unsafe_blocks']} | {c['unsafe_fns']} |")
        if r["missing_sources"]:
            out.append("")
            out.append(f"Sources not found (their linked lines counted, not their functions, files or unsafe): "
                       f"{', '.join(r['missing_sources'][:10])}{' ...' if len(r['missing_sources']) > 10 else ''}")
    out += ["", "## Published figures drawn beside each image", ""]
    for p in PUBLISHED:
        out.append(f"- {p['what']}: {p.get('bytes', p.get('lines_at_least')):,} — {p['source']}")
    for n in NOT_FOUND:
        out.append(f"- {n}")
    out.append("")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="report directory")
    ap.add_argument("--remap", action="append", default=[], metavar="REAL=REMAPPED",
                    help="a --remap-path-prefix of the build, to find the sources")
    ap.add_argument("--arch", action="append", required=True, metavar="NAME:DEBUG_DIR:IMAGE_DIR[:ELF_DIR]",
                    help="an arch: its debug-info ELFs' directory, its shipped images' directory and, when "
                         "the images are not ELFs (arm32 zImages), the directory of the ELFs they were made from")
    ap.add_argument("images", nargs="+")
    args = ap.parse_args(argv)
    remaps = []
    for m in args.remap:
        real, _, virt = m.partition("=")
        remaps.append((real, virt))
    sources = Sources(remaps)
    os.makedirs(args.out, exist_ok=True)
    results = {}
    for spec in args.arch:
        arch, debug_dir, image_dir, *elf_dir = spec.split(":")
        for image in args.images:
            elf = os.path.join(debug_dir, image)
            shipped_elf = os.path.join(elf_dir[0], image) if elf_dir else None
            r = analyse(elf, os.path.join(image_dir, image), sources, shipped_elf)
            results[(arch, image)] = r
            with open(os.path.join(args.out, f"{arch}-{image}.svg"), "w") as f:
                f.write(svg(arch, image, r))
            g = r["groups"]
            print(f"tcb: {arch} {image}: {r['image_bytes'] or 0:,} bytes, {r['total']['lines']:,} lines with code, "
                  f"{r['total']['fn_lines']:,} function lines (ours {g.get('ours', {}).get('fn_lines', 0):,}, "
                  f"third party {g.get('third party', {}).get('fn_lines', 0):,}, "
                  f"std {g.get('std', {}).get('fn_lines', 0):,}), unsafe blocks {r['total']['unsafe_blocks']} "
                  f"(ours {g.get('ours', {}).get('unsafe_blocks', 0)}), text same as shipped: {r['same_text_as_image']}",
                  flush=True)
    with open(os.path.join(args.out, "tcb.md"), "w") as f:
        f.write(markdown(results, remaps))
    with open(os.path.join(args.out, "tcb.json"), "w") as f:
        json.dump({f"{a}/{i}": r for (a, i), r in results.items()}, f, indent=1, sort_keys=True)
    print(f"tcb: report in {args.out}/tcb.md, pictures {args.out}/<arch>-<image>.svg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
