//! The selftest service image (in progress).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("selftest is a Xen guest image: build it with `make images`");
    std::process::exit(2);
}
