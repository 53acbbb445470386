//! The error names this server sends checked against `xsd_errors` of
//! Xen's `io/xs_wire.h` (Debian's `libxen-dev`): a C program prints the
//! table in order and the Rust side must match, name for name. (The
//! structs and other constants of the header are checked in
//! `xen/tests/abi.rs`.)

use std::process::Command;
use xenstored::Errno;

const PROGRAM: &str = r#"
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <xen/io/xs_wire.h>
int main(void) {
    for (unsigned i = 0; i < sizeof(xsd_errors) / sizeof(xsd_errors[0]); i++)
        printf("%s\n", xsd_errors[i].errstring);
    return 0;
}
"#;

fn c_names() -> Vec<String> {
    assert!(
        std::path::Path::new("/usr/include/xen/io/xs_wire.h").exists(),
        "set-up error: /usr/include/xen/io/xs_wire.h missing; install Debian's libxen-dev"
    );
    let dir = std::env::temp_dir().join(format!("moat-xenstored-abi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (src, bin) = (dir.join("errors.c"), dir.join("errors"));
    std::fs::write(&src, PROGRAM).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| String::from("cc"));
    let out = Command::new(&cc)
        .args(["-std=gnu11", "-Wall", "-Werror", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("set-up error: cannot run `{cc}` ({e}); install gcc"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&bin).output().expect("run the probe");
    let _ = std::fs::remove_dir_all(&dir);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn error_names_match_xsd_errors() {
    let c = c_names();
    let rust: Vec<&str> = Errno::ALL.iter().map(|e| e.name()).collect();
    assert_eq!(c, rust);
}
