//! For the bare-metal amd64 images only: compiles `src/x86_64_kernels.rs`
//! (the SSSE3/AVX2 ChaCha20 block functions) for the hard-float
//! `x86_64-unknown-linux-gnu` target into `libmoat_simd_kernels.a`, which
//! the image links. The image target is soft-float, where LLVM emits no
//! vector code even in `#[target_feature]` functions; both targets share
//! the SysV calling convention for the integer and pointer arguments the
//! functions take. The object may only need `memcpy`/`memset` (the image
//! has them): anything else undefined fails the build here.
use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/x86_64_kernels.rs");
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if arch != "x86_64" || os != "none" {
        return;
    }
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let src = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"))
        .join("src/x86_64_kernels.rs");
    let root = out.join("moat_simd_kernels.rs");
    std::fs::write(
        &root,
        format!(
            "#![no_std]\n#![allow(clippy::all)]\ninclude!({:?});\n",
            src.display().to_string()
        ),
    )
    .expect("write the kernels' crate root");
    let obj = out.join("moat_simd_kernels.o");
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let status = Command::new(&rustc)
        .args([
            "--edition=2021",
            "--crate-type=lib",
            "--crate-name=moat_simd_kernels",
            "--target=x86_64-unknown-linux-gnu",
            "-Copt-level=3",
            "-Cpanic=abort",
            "-Ccodegen-units=1",
            "-Crelocation-model=static",
            "-Cdebuginfo=0",
            "-Cforce-frame-pointers=yes",
        ])
        .arg(format!(
            "--remap-path-prefix={}=/moat-simd-kernels",
            out.display()
        ))
        .arg(format!(
            "--remap-path-prefix={}=/moat/wireguard/aead",
            env::var("CARGO_MANIFEST_DIR").unwrap_or_default()
        ))
        .arg("--emit")
        .arg(format!("obj={}", obj.display()))
        .arg(&root)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .expect("run rustc for the SIMD kernels");
    assert!(status.success(), "rustc failed on the SIMD kernels");

    // Nothing but the memory functions may be left undefined.
    let nm = Command::new("nm")
        .arg("-u")
        .arg(&obj)
        .output()
        .expect("run nm on the SIMD kernels");
    let undefined = String::from_utf8_lossy(&nm.stdout);
    for sym in undefined.split_whitespace().filter(|w| *w != "U") {
        assert!(
            ["memcpy", "memset", "memmove"].contains(&sym),
            "the SIMD kernels object needs {sym}, which the image does not provide"
        );
    }

    let lib = out.join("libmoat_simd_kernels.a");
    let _ = std::fs::remove_file(&lib);
    let status = Command::new("ar")
        .arg("crD")
        .arg(&lib)
        .arg(&obj)
        .status()
        .expect("run ar for the SIMD kernels");
    assert!(status.success(), "ar failed on the SIMD kernels");
    println!("cargo:rustc-link-search=native={}", out.display());
    println!("cargo:rustc-link-lib=static=moat_simd_kernels");
}
