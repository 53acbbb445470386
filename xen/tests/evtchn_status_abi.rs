//! `xen::evtchn_status` checked against Xen's `xen/event_channel.h`
//! (Debian's `libxen-dev`), as `tests/abi.rs` does for `xen::abi`.

use std::mem::{offset_of, size_of};
use std::process::Command;
use xen::evtchn_status::*;

const PROBE: &str = r#"
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <xen/xen.h>
#include <xen/event_channel.h>
#define P(v) printf("%llu\n", (unsigned long long)(v))
int main(void) {
    P(sizeof(struct evtchn_status));
    P(offsetof(struct evtchn_status, dom));
    P(offsetof(struct evtchn_status, port));
    P(offsetof(struct evtchn_status, status));
    P(offsetof(struct evtchn_status, vcpu));
    P(offsetof(struct evtchn_status, u.interdomain.dom));
    P(offsetof(struct evtchn_status, u.interdomain.port));
    P(offsetof(struct evtchn_status, u.unbound.dom));
    P(EVTCHNOP_status);
    P(EVTCHNSTAT_closed);
    P(EVTCHNSTAT_unbound);
    P(EVTCHNSTAT_interdomain);
    return 0;
}
"#;

#[test]
fn evtchn_status_matches_event_channel_h() {
    let dir = std::env::temp_dir().join(format!("moat-evtchn-status-{}", std::process::id()));
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
        "set-up error: compiling against xen/event_channel.h failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&bin).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let c: Vec<u64> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let rust = [
        size_of::<EvtchnStatus>(),
        offset_of!(EvtchnStatus, dom),
        offset_of!(EvtchnStatus, port),
        offset_of!(EvtchnStatus, status),
        offset_of!(EvtchnStatus, vcpu),
        offset_of!(EvtchnStatus, u),
        offset_of!(EvtchnStatus, u) + 4,
        offset_of!(EvtchnStatus, u),
        EVTCHNOP_STATUS as usize,
        EVTCHNSTAT_CLOSED as usize,
        EVTCHNSTAT_UNBOUND as usize,
        EVTCHNSTAT_INTERDOMAIN as usize,
    ];
    assert_eq!(c, rust.map(|v| v as u64));
}
