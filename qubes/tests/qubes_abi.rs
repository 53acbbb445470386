//! QubesDB's and qrexec's message layouts checked by a C compiler.
//!
//! Debian ships neither `qubesdb.h` nor `qrexec.h` (no qubesdb-dev or
//! qubes-core-qrexec package; `apt-cache search qubes` finds nothing), so
//! the probe declares the structs itself, field for field as the headers
//! at these commits declare them (read with the project's source search,
//! facts only):
//! - qubes-core-qubesdb `include/qubesdb.h` at aeb3c8d (v4.3.3):
//!   `struct qdb_hdr`, `enum qdb_msg`, `QDB_MAX_DATA`, `QDB_MAX_PATH`;
//! - qubes-core-qrexec `libqrexec/qrexec.h` at b2822df (4.4.2):
//!   `struct msg_header`, `exec_params`, `service_params`, `peer_info`,
//!   the message numbers and exit codes.
//!
//! The C compiler then lays the structs out by the platform's ABI, and
//! `qubes::qubesdb::wire` and `qubes::qrexec::wire` must match. A missing
//! compiler fails the test.

use std::collections::HashMap;
use std::process::Command;

const PROBE: &str = r#"
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
/* qubesdb.h */
enum qdb_msg { QDB_CMD_READ, QDB_CMD_WRITE, QDB_CMD_MULTIREAD, QDB_CMD_LIST,
    QDB_CMD_RM, QDB_CMD_WATCH, QDB_CMD_UNWATCH, QDB_RESP_OK,
    QDB_RESP_ERROR_NOENT, QDB_RESP_ERROR, QDB_RESP_READ, QDB_RESP_MULTIREAD,
    QDB_RESP_LIST, QDB_RESP_WATCH };
#define QDB_MAX_DATA 3072
#define QDB_MAX_PATH 64
struct qdb_hdr { uint8_t type; char path[QDB_MAX_PATH]; uint32_t data_len; char data[0]; };
/* qrexec.h */
enum { MSG_EXEC_CMDLINE = 0x200, MSG_JUST_EXEC, MSG_SERVICE_CONNECT,
    MSG_SERVICE_REFUSED, MSG_TRIGGER_SERVICE = 0x210,
    MSG_CONNECTION_TERMINATED, MSG_TRIGGER_SERVICE3, MSG_TRIGGER_SERVICE4,
    MSG_HELLO = 0x300 };
enum { MSG_DATA_STDIN = 0x190, MSG_DATA_STDOUT, MSG_DATA_STDERR, MSG_DATA_EXIT_CODE };
struct msg_header { uint32_t type; uint32_t len; };
struct exec_params { uint32_t connect_domain; uint32_t connect_port; char cmdline[]; };
struct service_params { char ident[32]; };
struct peer_info { uint32_t version; };
#define P(k, v) printf("%s=%llu\n", k, (unsigned long long)(v))
int main(void) {
    P("qdb.type", offsetof(struct qdb_hdr, type));
    P("qdb.path", offsetof(struct qdb_hdr, path));
    P("qdb.data_len", offsetof(struct qdb_hdr, data_len));
    P("qdb.sizeof", sizeof(struct qdb_hdr));
    P("qdb.MAX_DATA", QDB_MAX_DATA);
    P("qdb.MAX_PATH", QDB_MAX_PATH);
    P("qdb.WRITE", QDB_CMD_WRITE);
    P("qdb.MULTIREAD", QDB_CMD_MULTIREAD);
    P("qdb.RM", QDB_CMD_RM);
    P("qdb.RESP_OK", QDB_RESP_OK);
    P("qdb.RESP_ERROR_NOENT", QDB_RESP_ERROR_NOENT);
    P("qdb.RESP_ERROR", QDB_RESP_ERROR);
    P("qdb.RESP_MULTIREAD", QDB_RESP_MULTIREAD);
    P("qdb.RESP_WATCH", QDB_RESP_WATCH);
    P("qx.msg_header", sizeof(struct msg_header));
    P("qx.exec_params", sizeof(struct exec_params));
    P("qx.exec_params.cmdline", offsetof(struct exec_params, cmdline));
    P("qx.service_params", sizeof(struct service_params));
    P("qx.peer_info", sizeof(struct peer_info));
    P("qx.EXEC_CMDLINE", MSG_EXEC_CMDLINE);
    P("qx.JUST_EXEC", MSG_JUST_EXEC);
    P("qx.SERVICE_CONNECT", MSG_SERVICE_CONNECT);
    P("qx.SERVICE_REFUSED", MSG_SERVICE_REFUSED);
    P("qx.CONNECTION_TERMINATED", MSG_CONNECTION_TERMINATED);
    P("qx.TRIGGER_SERVICE4", MSG_TRIGGER_SERVICE4);
    P("qx.HELLO", MSG_HELLO);
    P("qx.DATA_STDIN", MSG_DATA_STDIN);
    P("qx.DATA_STDOUT", MSG_DATA_STDOUT);
    P("qx.DATA_STDERR", MSG_DATA_STDERR);
    P("qx.DATA_EXIT_CODE", MSG_DATA_EXIT_CODE);
    return 0;
}
"#;

fn c_values() -> HashMap<String, u64> {
    let dir = std::env::temp_dir().join(format!("moat-qubes-abi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (src, bin) = (dir.join("probe.c"), dir.join("probe"));
    std::fs::write(&src, PROBE).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .args(["-std=gnu11", "-Wall", "-Werror", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("set-up error: cannot run `{cc}` ({e}); install gcc"));
    assert!(
        out.status.success(),
        "set-up error: compiling the probe failed:\n{}",
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
fn qubesdb_and_qrexec_layouts_match_the_headers() {
    use qubes::qrexec::wire::{self as qx, MsgType as X};
    use qubes::qubesdb::wire::{self as qdb, MsgType as D};
    let c = c_values();
    let rust: Vec<(&str, u64)> = vec![
        ("qdb.type", qdb::TYPE as u64),
        ("qdb.path", qdb::PATH as u64),
        ("qdb.data_len", qdb::DATA_LEN as u64),
        ("qdb.sizeof", qdb::HEADER_LEN as u64),
        ("qdb.MAX_DATA", qdb::MAX_DATA as u64),
        ("qdb.MAX_PATH", qdb::MAX_PATH as u64),
        ("qdb.WRITE", D::Write as u64),
        ("qdb.MULTIREAD", D::Multiread as u64),
        ("qdb.RM", D::Rm as u64),
        ("qdb.RESP_OK", D::RespOk as u64),
        ("qdb.RESP_ERROR_NOENT", D::RespErrorNoent as u64),
        ("qdb.RESP_ERROR", D::RespError as u64),
        ("qdb.RESP_MULTIREAD", D::RespMultiread as u64),
        ("qdb.RESP_WATCH", D::RespWatch as u64),
        ("qx.msg_header", qx::HEADER_LEN as u64),
        ("qx.exec_params", qx::EXEC_PARAMS_LEN as u64),
        ("qx.exec_params.cmdline", qx::EXEC_PARAMS_LEN as u64),
        ("qx.service_params", qx::SERVICE_PARAMS_LEN as u64),
        ("qx.peer_info", qx::PEER_INFO_LEN as u64),
        ("qx.EXEC_CMDLINE", X::ExecCmdline.code() as u64),
        ("qx.JUST_EXEC", X::JustExec.code() as u64),
        ("qx.SERVICE_CONNECT", X::ServiceConnect.code() as u64),
        ("qx.SERVICE_REFUSED", X::ServiceRefused.code() as u64),
        (
            "qx.CONNECTION_TERMINATED",
            X::ConnectionTerminated.code() as u64,
        ),
        ("qx.TRIGGER_SERVICE4", X::TriggerService4.code() as u64),
        ("qx.HELLO", X::Hello.code() as u64),
        ("qx.DATA_STDIN", X::DataStdin.code() as u64),
        ("qx.DATA_STDOUT", X::DataStdout.code() as u64),
        ("qx.DATA_STDERR", X::DataStderr.code() as u64),
        ("qx.DATA_EXIT_CODE", X::DataExitCode.code() as u64),
    ];
    for (key, value) in &rust {
        assert_eq!(c.get(*key).copied(), Some(*value), "{key}");
    }
    assert_eq!(c.len(), rust.len());
    // Every type round-trips through its code.
    for code in (0..0x400).chain([u32::MAX]) {
        if let Ok(t) = X::parse(code) {
            assert_eq!(t.code(), code);
        }
    }
    for b in 0..=255u8 {
        if let Ok(t) = D::parse(b) {
            assert_eq!(t as u8, b);
        }
    }
}
