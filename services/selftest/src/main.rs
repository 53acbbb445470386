//! The selftest service image (bring-up version).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod image {
    use kernel::boot::{Env, Exit};
    kernel::service!(main);

    async fn main(env: Env) -> Exit {
        kernel::println!("selftest: hello from {}", env.platform.guest.name());
        Exit::Poweroff
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("selftest is a Xen guest image: build it with `make images`");
    std::process::exit(2);
}
