#!/usr/bin/env python3
"""Tests of scripts/tcb.py: the line table of a tiny ELF whose lines are
known (gcc -g, one function dropped by --gc-sections), the path
classification, and the unsafe counting on Rust snippets."""

import os
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tcb  # noqa: E402

C_SRC = """\
int kept(int x)
{
    int y = x * 3;
    return y + 1;
}

int dropped(int x)
{
    return x - 7;
}

void _start(void)
{
    volatile int r = kept(2);
    (void)r;
    for (;;) {
    }
}
"""


@unittest.skipUnless(shutil.which("gcc"), "gcc not installed")
class LineTable(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="tcb-test-")
        cls.src = os.path.join(cls.dir, "t.c")
        with open(cls.src, "w") as f:
            f.write(C_SRC)
        cls.elf = os.path.join(cls.dir, "t")
        subprocess.run(["gcc", "-g", "-O0", "-ffunction-sections", "-fno-pie", "-no-pie", "-nostdlib",
                        "-static", "-Wl,--gc-sections", "-Wl,-e,_start", "-o", cls.elf, cls.src],
                       check=True, cwd=cls.dir)
        cls.stripped = os.path.join(cls.dir, "t.stripped")
        subprocess.run(["objcopy", "--strip-debug", cls.elf, cls.stripped], check=True)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir)

    def test_lines_of_kept_code_only(self):
        lines, code_bytes, text_bytes = tcb.line_table(self.elf)
        self.assertEqual(list(lines), [self.src])
        got = lines[self.src]
        # kept() and _start() are in the image; dropped() (lines 7-10) was
        # removed by --gc-sections and must not count.
        for ln in (2, 3, 4, 5, 13, 14, 15):
            self.assertIn(ln, got)
        for ln in (7, 8, 9, 10):
            self.assertNotIn(ln, got)
        self.assertGreater(code_bytes[self.src], 0)
        self.assertLessEqual(code_bytes[self.src], text_bytes)

    def test_same_text(self):
        self.assertTrue(tcb.same_text(self.elf, self.stripped))
        other = os.path.join(self.dir, "t.other")
        subprocess.run(["gcc", "-g", "-O2", "-ffunction-sections", "-fno-pie", "-no-pie", "-nostdlib",
                        "-static", "-Wl,--gc-sections", "-Wl,-e,_start", "-o", other, self.src],
                       check=True, cwd=self.dir)
        self.assertFalse(tcb.same_text(self.elf, other))

    def test_analyse_counts_file_lines(self):
        r = tcb.analyse(self.elf, self.stripped, tcb.Sources([]))
        self.assertEqual([(c["crate"], c["files"]) for c in r["crates"]], [("tmp", 1)])
        self.assertEqual(r["total"]["file_lines"], C_SRC.count("\n"))
        # Not Rust: no function spans are known, so the function lines are
        # the linked lines themselves.
        self.assertEqual(r["total"]["fn_lines"], r["total"]["lines"])
        self.assertEqual(r["functions"], {"twin": 2, "shipped": 2, "only_twin": 0, "only_shipped": 0})
        self.assertTrue(r["same_text_as_image"])
        self.assertEqual(r["image_bytes"], os.path.getsize(self.stripped))


class Classify(unittest.TestCase):
    def test_paths(self):
        c = tcb.classify
        self.assertEqual(c("/moat/kernel/src/heap.rs"), ("ours", "kernel", "kernel"))
        self.assertEqual(c("/moat/arm32/src/lib.rs"), ("ours", "kernel", "arm32"))
        self.assertEqual(c("/moat/syslog/src/lib.rs"), ("ours", "kernel", "syslog"))
        self.assertEqual(c("/moat/netback/src/lib.rs"), ("ours", "drivers", "netback"))
        self.assertEqual(c("/moat/services/firewall/src/lib.rs"), ("ours", "service", "firewall"))
        self.assertEqual(c("/moat/wireguard/aead/src/lib.rs"), ("ours", "wireguard", "wg-aead"))
        self.assertEqual(c("/cargo/registry/src/index.crates.io-1949cf8c6b5b557f/smoltcp-0.12.0/src/iface/mod.rs"),
                         ("third party", "smoltcp", "smoltcp"))
        self.assertEqual(c("/cargo/registry/src/index.crates.io-1949cf8c6b5b557f/curve25519-dalek-4.0.0-rc.3/src/x.rs"),
                         ("third party", "crypto", "curve25519-dalek"))
        self.assertEqual(c("/cargo/registry/src/index.crates.io-1949cf8c6b5b557f/spin-0.9.9/src/mutex.rs"),
                         ("third party", "other third party", "spin"))
        self.assertEqual(c("/cargo/registry/src/index.crates.io-1949cf8c6b5b557f/compiler_builtins-0.1.160/src/mem.rs"),
                         ("std", "rust std", "compiler_builtins"))
        self.assertEqual(c("/rustc/0123abcd/library/core/src/slice/mod.rs"), ("std", "rust std", "core"))
        self.assertEqual(c("/rustc/0123abcd/library/alloc/src/vec/mod.rs"), ("std", "rust std", "alloc"))
        self.assertEqual(c("/rustc/0123abcd/library/compiler-builtins/compiler-builtins/src/mem/mod.rs"),
                         ("std", "rust std", "compiler_builtins"))
        self.assertEqual(c("/moat/target/x86_64-unknown-none/release/build/foo-1/out/gen.rs")[1], "generated")
        self.assertEqual(c("/somewhere/else.rs")[1], "unknown")


RUST_SRC = r'''// unsafe { in a comment }
/* unsafe { /* nested */ unsafe { } } */
#[unsafe(no_mangle)]
pub extern "C" fn entry() {
    let s = "unsafe { in a string }";
    let r = r#"unsafe { "raw" }"#;
    let c = '{';
    let q = '\'';
    let v = unsafe { core::ptr::read(&1u8) };
    let w = unsafe {
        let x = 1;
        if x > 0 { x } else { 2 }
    };
}

unsafe fn raw<'a>(p: &'a u8) -> u8 {
    *p
}

trait T {
    unsafe fn no_body(&self);
}

unsafe impl Send for S {}

pub unsafe extern "C" fn abi() {}
'''


class FunctionLines(unittest.TestCase):
    def test_spans_of_functions_with_a_linked_line(self):
        src = "fn a() {\n    x();\n}\n\nfn b() -> fn(u8) {\n    y\n}\ntrait T { fn c(&self); }\n"
        items, fns = tcb.source_items(src)
        self.assertEqual(items, [])
        self.assertEqual(fns, [(1, 3), (5, 7)])
        # Line 2 is in a() (3 lines); line 9 is outside any function.
        self.assertEqual(tcb.function_lines(fns, {2, 9}), 4)
        # Nested spans count once.
        self.assertEqual(tcb.function_lines([(1, 10), (3, 5)], {4}), 10)
        self.assertEqual(tcb.function_lines(fns, set()), 0)

    def test_v0_names_without_the_instantiating_crate(self):
        self.assertEqual(tcb._without_instantiating_crate("_RINvNtCs_5alloc3vec9from_elemhECs_8firewall"),
                         "_RINvNtCs_5alloc3vec9from_elemhE")
        self.assertEqual(tcb._without_instantiating_crate("_RNvCs_5kernel4main"), "_RNvCs_5kernel4main")


class Unsafe(unittest.TestCase):
    def test_items(self):
        items = tcb.unsafe_items(RUST_SRC)
        self.assertEqual([i for i in items if i[0] == "block"], [("block", 9, 9), ("block", 10, 13)])
        self.assertEqual([i for i in items if i[0] == "fn"], [("fn", 16, 18), ("fn", 21, 21), ("fn", 26, 26)])
        self.assertEqual([i for i in items if i[0] == "impl"], [("impl", 24, 24)])

    def test_tokens_skip_literals_and_count_lines(self):
        toks = tcb.tokens('let a = "x\n{";\n/* {\n */ }\n')
        self.assertEqual(toks[-1], ("}", 4))
        self.assertNotIn(("{", 1), toks)


if __name__ == "__main__":
    unittest.main()
