//! The vchan control page checked against Xen's `io/libxenvchan.h`
//! (Debian's `libxen-dev`): a C program prints the offsets and sizes, and
//! `qubes::vchan::wire` must match. A missing compiler or header fails.

use qubes::vchan::wire::*;
use std::collections::HashMap;
use std::mem::size_of;
use std::process::Command;

const PROBE: &str = r#"
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <xen/io/libxenvchan.h>
#define P(k, v) printf("%s=%llu\n", k, (unsigned long long)(v))
int main(void) {
    P("left.cons", offsetof(struct vchan_interface, left.cons));
    P("left.prod", offsetof(struct vchan_interface, left.prod));
    P("right.cons", offsetof(struct vchan_interface, right.cons));
    P("right.prod", offsetof(struct vchan_interface, right.prod));
    P("left_order", offsetof(struct vchan_interface, left_order));
    P("right_order", offsetof(struct vchan_interface, right_order));
    P("cli_live", offsetof(struct vchan_interface, cli_live));
    P("srv_live", offsetof(struct vchan_interface, srv_live));
    P("cli_notify", offsetof(struct vchan_interface, cli_notify));
    P("srv_notify", offsetof(struct vchan_interface, srv_notify));
    P("grants", offsetof(struct vchan_interface, grants));
    P("sizeof", sizeof(struct vchan_interface));
    P("sizeof.ring_shared", sizeof(struct ring_shared));
    P("sizeof.grant", sizeof(((struct vchan_interface *)0)->grants[0]));
    P("NOTIFY_WRITE", VCHAN_NOTIFY_WRITE);
    P("NOTIFY_READ", VCHAN_NOTIFY_READ);
    return 0;
}
"#;

fn c_values() -> HashMap<String, u64> {
    let dir = std::env::temp_dir().join(format!("moat-vchan-abi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (src, bin) = (dir.join("probe.c"), dir.join("probe"));
    std::fs::write(&src, PROBE).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .args(["-std=gnu11", "-Wall", "-Werror", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| {
            panic!("set-up error: cannot run `{cc}` ({e}); install gcc and libxen-dev")
        });
    assert!(
        out.status.success(),
        "set-up error: compiling against xen/io/libxenvchan.h failed (libxen-dev?):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&bin).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

#[test]
fn control_page_matches_libxenvchan_h() {
    let c = c_values();
    let rust: [(&str, usize); 16] = [
        ("left.cons", LEFT_CONS),
        ("left.prod", LEFT_PROD),
        ("right.cons", RIGHT_CONS),
        ("right.prod", RIGHT_PROD),
        ("left_order", LEFT_ORDER),
        ("right_order", RIGHT_ORDER),
        ("cli_live", CLI_LIVE),
        ("srv_live", SRV_LIVE),
        ("cli_notify", CLI_NOTIFY),
        ("srv_notify", SRV_NOTIFY),
        ("grants", GRANTS),
        ("sizeof", size_of::<VchanInterface>()),
        ("sizeof.ring_shared", size_of::<RingShared>()),
        ("sizeof.grant", grant_offset(1) - grant_offset(0)),
        ("NOTIFY_WRITE", NOTIFY_WRITE as usize),
        ("NOTIFY_READ", NOTIFY_READ as usize),
    ];
    for (key, value) in rust {
        assert_eq!(c.get(key).copied(), Some(value as u64), "{key}");
    }
    assert_eq!(c.len(), rust.len());
}
