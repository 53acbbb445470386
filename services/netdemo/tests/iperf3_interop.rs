//! netdemo's iperf3 server core (`netdemo::iperf3::Control`) against the
//! real `iperf3 -c` (Debian's, installed by scripts/install-deps.sh), over
//! loopback TCP sockets: a normal and a reverse (`-R`) test must complete
//! with iperf3's exit status 0, and iperf3's JSON report must carry the
//! byte counts our side reported. Without iperf3 the test is skipped,
//! except under `CI`, where it fails.

use netdemo::iperf3::{Control, Phase, COOKIE_LEN};
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn have_iperf3() -> bool {
    let found = Command::new("iperf3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "iperf3 is missing (scripts/install-deps.sh installs it)"
        );
        eprintln!("iperf3 not installed: skipped");
    }
    found
}

/// What our side saw of one test.
struct Served {
    bytes: u64,
    completed: bool,
    reverse: bool,
}

/// Serves one iperf3 test on `listener` with `Control`, moving the data
/// itself (counting what arrives, or sending zeros with `-R`).
fn serve(listener: TcpListener) -> Served {
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut control, _) = listener.accept().unwrap();
    control.set_nonblocking(true).unwrap();
    listener.set_nonblocking(true).unwrap();
    let mut c = Control::new();
    let mut data: Option<TcpStream> = None;
    let mut pending: Vec<u8> = Vec::new();
    let mut bytes = 0u64;
    let mut started: Option<Instant> = None;
    let block = vec![0u8; 128 * 1024];
    let mut buf = vec![0u8; 256 * 1024];
    while c.phase() != Phase::Closed {
        assert!(Instant::now() < deadline, "test stalled in {:?}", c.phase());
        // Control bytes out, then in.
        while !c.output().is_empty() {
            match control.write(c.output()) {
                Ok(n) => c.consume_output(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("control write: {e}"),
            }
        }
        let mut tmp = [0u8; 4096];
        match control.read(&mut tmp) {
            Ok(0) => break,
            Ok(n) => pending.extend_from_slice(&tmp[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => panic!("control read: {e}"),
        }
        if !pending.is_empty() {
            if c.phase() == Phase::ClientResults {
                // The count our results (sent once the client's arrive)
                // report.
                c.set_stream_bytes(bytes, started.map_or(0, |s| s.elapsed().as_nanos() as u64));
            }
            let used = c.feed(&pending).expect("a well-formed client");
            pending.drain(..used);
            if c.phase() == Phase::ClientResults {
                c.set_stream_bytes(bytes, started.map_or(0, |s| s.elapsed().as_nanos() as u64));
            }
        }
        if c.wants_stream() && data.is_none() {
            if let Ok((mut s, _)) = listener.accept() {
                s.set_nonblocking(false).unwrap();
                let mut cookie = [0u8; COOKIE_LEN];
                s.read_exact(&mut cookie).unwrap();
                assert!(c.stream_cookie_ok(&cookie), "the data connection's cookie");
                s.set_nonblocking(true).unwrap();
                started = Some(Instant::now());
                data = Some(s);
            }
        }
        if let Some(s) = data.as_mut() {
            let reverse = c.params().is_some_and(|p| p.reverse);
            if c.running() && reverse {
                match s.write(&block) {
                    Ok(n) => bytes += n as u64,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => panic!("data write: {e}"),
                }
            } else if !reverse {
                match s.read(&mut buf) {
                    Ok(n) => bytes += n as u64,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => panic!("data read: {e}"),
                }
            }
            if c.phase() == Phase::ClientResults {
                c.set_stream_bytes(bytes, started.map_or(0, |s| s.elapsed().as_nanos() as u64));
            }
        }
        if c.stream_done() {
            // Closed as iperf3's server does at TEST_END.
            data = None;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    // Flush what is left (DISPLAY_RESULTS went out before IPERF_DONE came).
    let o = c.outcome();
    Served {
        bytes: o.bytes,
        completed: o.completed,
        reverse: o.reverse,
    }
}

/// Runs `iperf3 -c` with `extra` against a fresh server; (our side, the
/// client's JSON report).
fn run(extra: &[&str]) -> (Served, String) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || serve(listener));
    let out = Command::new("iperf3")
        .args(["-c", "127.0.0.1", "-p", &port.to_string(), "-t", "2", "-J"])
        .args(extra)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "iperf3 {extra:?} failed: {report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (server.join().unwrap(), report)
}

/// The number after `"bytes":` in the JSON object that follows `section`
/// (iperf3 -J's `"sum_sent": { ... "bytes": N, ... }`).
fn bytes_of(report: &str, section: &str) -> u64 {
    let at = report
        .find(&format!("\"{section}\""))
        .unwrap_or_else(|| panic!("no {section} in {report}"));
    let rest = &report[at..];
    let b = rest.find("\"bytes\":").unwrap() + "\"bytes\":".len();
    rest[b..]
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn real_iperf3_client_measures_us_both_ways() {
    if !have_iperf3() {
        return;
    }
    let (served, report) = run(&[]);
    assert!(served.completed && !served.reverse);
    let sent = bytes_of(&report, "sum_sent");
    let received = bytes_of(&report, "sum_received");
    assert_eq!(received, served.bytes, "the client shows what we counted");
    assert!(
        served.bytes > 0 && served.bytes <= sent,
        "{} of {sent}",
        served.bytes
    );
    eprintln!("iperf3 -c: sent {sent}, we received {}", served.bytes);

    let (served, report) = run(&["-R"]);
    assert!(served.completed && served.reverse);
    let sent = bytes_of(&report, "sum_sent");
    let received = bytes_of(&report, "sum_received");
    assert_eq!(sent, served.bytes, "the client shows what we sent");
    assert!(
        received > 0 && received <= served.bytes,
        "{received} of {}",
        served.bytes
    );
    eprintln!(
        "iperf3 -c -R: we sent {}, it received {received}",
        served.bytes
    );
}

#[test]
fn real_iperf3_is_told_a_udp_test_is_refused() {
    if !have_iperf3() {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut c = Control::new();
        let mut buf = [0u8; 4096];
        while c.phase() != Phase::Closed {
            s.write_all(c.output()).unwrap();
            let n = c.output().len();
            c.consume_output(n);
            let got = s.read(&mut buf).unwrap();
            if got == 0 {
                break;
            }
            c.feed(&buf[..got]).unwrap();
        }
        s.write_all(c.output()).unwrap();
        c.refusal().map(String::from)
    });
    let out = Command::new("iperf3")
        .args(["-c", "127.0.0.1", "-p", &port.to_string(), "-u", "-t", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let why = server.join().unwrap();
    assert!(why.unwrap().contains("UDP"));
}
