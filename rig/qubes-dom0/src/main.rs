//! `moat-qubes-dom0`: the rig's Qubes-shaped dom0 for one VM (issue 13
//! item 6, docs/qubes.md). The rig's dom0 has no compiler and no Python,
//! so this is a static binary built on the host (`make qubes-dom0`) and
//! shipped into the rig like the guest images. The vchan itself is
//! Debian's `vchan-socket-proxy` (libxenvchan, xen-utils-4.17), run as a
//! child with its stdin and stdout on pipes; the protocols on top are ours
//! (`qdb`, `qrexec`), written from the upstream headers and docs.
//!
//! ```text
//! moat-qubes-dom0 qubesdb-daemon --domid N --keys FILE --ctl FIFO [--proxy PATH]
//! moat-qubes-dom0 qrexec-daemon  --domid N --ctl FIFO [--proxy PATH] [--version V]
//! ```
//!
//! - `qubesdb-daemon` is dom0's `qubesdb-daemon <xid> <name>`: the vchan
//!   server on port 111 (`/local/domain/0/data/vchan/<xid>/111`) holding
//!   the entries of FILE (`PATH VALUE` lines, as qubesd writes them before
//!   the VM runs). Lines on the FIFO are qubesd's later changes: `write
//!   PATH [VALUE]`, `rm PATH` (a directory when it ends in `/`).
//! - `qrexec-daemon` is `qrexec-daemon` plus `qrexec-client`: the client
//!   of the agent's port 512; a FIFO line `call NAME USER SERVICE[+ARG]
//!   [STDIN]` runs `USER:QUBESRPC SERVICE dom0` with STDIN (plus a
//!   newline) on a data vchan served on port 513 and up, one call at a
//!   time, as qubesd's `run_service` does.
//!
//! Everything is logged on stdout, one line per event, `qdb: ...` or
//! `qrexec: ...` (values quoted); the rig test reads those lines. A
//! protocol violation by the VM is a `... violation: ...` line.

#![forbid(unsafe_code)]

use qubes_dom0::{qdb, qrexec};

use std::collections::{HashMap, VecDeque};
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

/// Where Debian's xen-utils-4.17 installs the proxy.
const DEFAULT_PROXY: &str = "/usr/lib/xen-4.17/bin/vchan-socket-proxy";

/// What the threads hand the main loop.
enum Msg {
    /// Bytes from the vchan of channel `id` (0: the daemon's own).
    Vchan(u32, Vec<u8>),
    /// That vchan's proxy closed its stdout (the vchan ended).
    Eof(u32),
    /// A line from the control FIFO.
    Ctl(String),
}

fn quote(b: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(b))
}

/// Parses `--key value` pairs.
fn options(args: &[String]) -> Result<HashMap<String, String>, String> {
    let mut out = HashMap::new();
    let mut it = args.iter();
    while let Some(k) = it.next() {
        let Some(key) = k.strip_prefix("--") else {
            return Err(format!("unexpected argument {k}"));
        };
        let v = it.next().ok_or_else(|| format!("--{key} needs a value"))?;
        out.insert(key.to_string(), v.clone());
    }
    Ok(out)
}

/// A vchan through `vchan-socket-proxy -m MODE DOMID PATH -`, its stdout
/// read by a thread that sends `Msg::Vchan(id, ..)` and `Msg::Eof(id)`.
struct Proxy {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Proxy {
    fn spawn(
        proxy: &str,
        mode: &str,
        domid: u32,
        path: &str,
        id: u32,
        tx: &Sender<Msg>,
    ) -> Result<Proxy, String> {
        let mut child = Command::new(proxy)
            .args(["-m", mode, &domid.to_string(), path, "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {proxy}: {e}"))?;
        let mut out = child.stdout.take().ok_or("no stdout pipe")?;
        let stdin = child.stdin.take();
        let tx = tx.clone();
        thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            loop {
                match out.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send(Msg::Vchan(id, buf[..n].to_vec())).is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = tx.send(Msg::Eof(id));
        });
        Ok(Proxy { child, stdin })
    }

    fn send(&mut self, bytes: &[u8]) -> bool {
        if bytes.is_empty() {
            return true;
        }
        match &mut self.stdin {
            Some(s) => s.write_all(bytes).and_then(|()| s.flush()).is_ok(),
            None => false,
        }
    }

    fn stop(mut self) -> String {
        drop(self.stdin.take());
        let _ = self.child.kill();
        match self.child.wait() {
            Ok(s) => format!("{s}"),
            Err(e) => format!("{e}"),
        }
    }

    /// The proxy's exit status once it ended by itself, waiting up to `t`.
    fn wait_for(&mut self, t: Duration) -> Option<String> {
        let end = Instant::now() + t;
        while Instant::now() < end {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(format!("{s}"));
            }
            thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

/// Reads the control FIFO line by line (opened read-write, so it never
/// sees end of file when a writer closes).
fn ctl_reader(path: &str, tx: &Sender<Msg>) -> Result<(), String> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| format!("cannot open {path}: {e}"))?;
    let tx = tx.clone();
    thread::spawn(move || {
        for line in BufReader::new(f).lines() {
            let Ok(line) = line else { break };
            if tx.send(Msg::Ctl(line)).is_err() {
                break;
            }
        }
    });
    Ok(())
}

fn domid(o: &HashMap<String, String>) -> Result<u32, String> {
    o.get("domid")
        .ok_or("--domid is required")?
        .parse()
        .map_err(|_| "--domid takes a number".to_string())
}

fn qubesdb_daemon(o: &HashMap<String, String>) -> Result<(), String> {
    let dom = domid(o)?;
    let proxy = o.get("proxy").map(String::as_str).unwrap_or(DEFAULT_PROXY);
    let keys = o.get("keys").ok_or("--keys is required")?;
    let text = std::fs::read_to_string(keys).map_err(|e| format!("{keys}: {e}"))?;
    let mut server = qdb::QdbServer::new();
    for (p, v) in qdb::parse_keys(&text).map_err(|e| e.0)? {
        server.write(&p, v.as_bytes()).map_err(|e| e.0)?;
    }
    let (tx, rx) = mpsc::channel();
    if let Some(ctl) = o.get("ctl") {
        ctl_reader(ctl, &tx)?;
    }
    let path = format!("data/vchan/{dom}/111");
    let mut vchan = Proxy::spawn(proxy, "server", dom, &path, 0, &tx)?;
    println!(
        "qdb: serving {} entries to domain {dom} at /local/domain/0/{path}",
        server.entries().count()
    );
    for m in rx {
        match m {
            Msg::Vchan(_, bytes) => {
                for ev in server.feed(&bytes) {
                    match ev {
                        qdb::Event::Synced { entries } => {
                            println!("qdb: vm synced ({entries} entries sent)")
                        }
                        qdb::Event::VmWrite { path, value } => {
                            println!("qdb: vm write {path} {}", quote(&value))
                        }
                        qdb::Event::VmRm { path } => println!("qdb: vm rm {path}"),
                        qdb::Event::VmOk { path, expected } => {
                            println!(
                                "qdb: vm ok {path}{}",
                                if expected { "" } else { " (unexpected)" }
                            )
                        }
                        qdb::Event::VmError { path } => println!("qdb: vm error {path}"),
                        qdb::Event::Refused(why) => println!("qdb: refused: {why}"),
                        qdb::Event::Violation(why) => println!("qdb: violation: {why}"),
                    }
                }
                let out = server.take_output();
                if !vchan.send(&out) {
                    println!("qdb: cannot write to the proxy");
                }
                if server.broken() {
                    println!("qdb: fatal: closing the vchan, as dom0's daemon does");
                    println!("qdb: proxy {}", vchan.stop());
                    return Err("protocol violation".into());
                }
            }
            Msg::Eof(_) => {
                println!(
                    "qdb: vchan closed (proxy {})",
                    vchan
                        .wait_for(Duration::from_secs(5))
                        .unwrap_or_else(|| "still running".into())
                );
                return Ok(());
            }
            Msg::Ctl(line) => {
                let (cmd, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
                let result = match cmd {
                    "write" => {
                        let (p, v) = rest.split_once(' ').unwrap_or((rest, ""));
                        server
                            .write(p, v.as_bytes())
                            .map(|f| format!("dom0 write {p} {} {}", quote(v.as_bytes()), sent(f)))
                    }
                    "rm" => server
                        .rm(rest)
                        .map(|f| format!("dom0 rm {rest} {}", sent(f))),
                    _ => Err(qdb::Refused(format!("unknown command {line:?}"))),
                };
                match result {
                    Ok(l) => println!("qdb: {l}"),
                    Err(e) => println!("qdb: ctl refused: {}", e.0),
                }
                let out = server.take_output();
                if !vchan.send(&out) {
                    println!("qdb: cannot write to the proxy");
                }
            }
        }
    }
    Ok(())
}

fn sent(forwarded: bool) -> &'static str {
    if forwarded {
        "sent"
    } else {
        "stored"
    }
}

/// A call waiting or running.
struct CallReq {
    name: String,
    cmdline: String,
    stdin: Vec<u8>,
}

struct Active {
    req: CallReq,
    port: u32,
    proxy: Proxy,
    data: qrexec::DataServer,
    started: Instant,
    exit_at: Option<Instant>,
    vchan_closed: bool,
    terminated: bool,
}

fn qrexec_daemon(o: &HashMap<String, String>) -> Result<(), String> {
    let dom = domid(o)?;
    let proxy = o
        .get("proxy")
        .map(String::as_str)
        .unwrap_or(DEFAULT_PROXY)
        .to_string();
    let answer = match o.get("version") {
        Some(v) => Some(v.parse::<u32>().map_err(|_| "--version takes a number")?),
        None => None,
    };
    let (tx, rx): (Sender<Msg>, Receiver<Msg>) = mpsc::channel();
    if let Some(ctl) = o.get("ctl") {
        ctl_reader(ctl, &tx)?;
    }
    let path = format!("/local/domain/{dom}/data/vchan/0/512");
    let mut control = Proxy::spawn(&proxy, "client", dom, &path, 0, &tx)?;
    let mut ctl = qrexec::ControlClient::new(answer);
    println!("qrexec: connecting to the agent at {path}");
    let started = Instant::now();
    let mut queue: VecDeque<CallReq> = VecDeque::new();
    let mut active: Option<Active> = None;
    let mut next_port = 513u32;
    loop {
        let m = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(m) => Some(m),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        };
        match m {
            Some(Msg::Vchan(0, bytes)) => match ctl.feed(&bytes) {
                Ok(events) => {
                    for ev in events {
                        match ev {
                            qrexec::CtlEvent::Hello { version } => println!(
                                "qrexec: agent hello version {version} after {:.1} s; using {}",
                                started.elapsed().as_secs_f64(),
                                ctl.version().unwrap_or(0)
                            ),
                            qrexec::CtlEvent::Terminated { domain, port } => {
                                println!(
                                    "qrexec: connection terminated domain {domain} port {port}"
                                );
                                match &mut active {
                                    Some(a) if a.port == port && domain == 0 => a.terminated = true,
                                    _ => println!("qrexec: violation: MSG_CONNECTION_TERMINATED for a port not in use"),
                                }
                            }
                            qrexec::CtlEvent::Trigger { kind } => {
                                println!("qrexec: the VM asked for a call ({kind:#x}); not served")
                            }
                        }
                    }
                    if !control.send(&ctl.take_output()) {
                        println!("qrexec: cannot write to the control proxy");
                    }
                }
                Err(v) => println!("qrexec: violation: control: {v}"),
            },
            Some(Msg::Eof(0)) => {
                println!(
                    "qrexec: control vchan closed (proxy {})",
                    control
                        .wait_for(Duration::from_secs(5))
                        .unwrap_or_else(|| "still running".into())
                );
                if let Some(a) = active.take() {
                    println!(
                        "qrexec: call {} abandoned (proxy {})",
                        a.req.name,
                        a.proxy.stop()
                    );
                }
                return Ok(());
            }
            Some(Msg::Vchan(port, bytes)) => {
                if let Some(a) = active.as_mut().filter(|a| a.port == port) {
                    match a.data.feed(&bytes) {
                        Ok(events) => {
                            for ev in events {
                                match ev {
                                    qrexec::DataEvent::Hello { version } => {
                                        println!(
                                            "qrexec: call {} service hello version {version}",
                                            a.req.name
                                        )
                                    }
                                    qrexec::DataEvent::Exit(_) => a.exit_at = Some(Instant::now()),
                                }
                            }
                            let out = a.data.take_output();
                            a.proxy.send(&out);
                        }
                        Err(v) => {
                            println!("qrexec: violation: call {}: {v}", a.req.name);
                            a.exit_at.get_or_insert_with(Instant::now);
                        }
                    }
                }
            }
            Some(Msg::Eof(port)) => {
                if let Some(a) = active.as_mut().filter(|a| a.port == port) {
                    a.vchan_closed = true;
                }
            }
            Some(Msg::Ctl(line)) => {
                let mut w = line.splitn(5, ' ');
                match (w.next(), w.next(), w.next(), w.next()) {
                    (Some("call"), Some(name), Some(user), Some(service)) => {
                        let stdin = w
                            .next()
                            .map(|s| format!("{s}\n").into_bytes())
                            .unwrap_or_default();
                        queue.push_back(CallReq {
                            name: name.to_string(),
                            cmdline: format!("{user}:QUBESRPC {service} dom0"),
                            stdin,
                        });
                    }
                    _ => println!("qrexec: ctl refused: {line:?}"),
                }
            }
            None => {}
        }
        // A call is over when its exit code came, the agent said
        // MSG_CONNECTION_TERMINATED and the data vchan closed (or 10 s
        // after the exit code); one with no exit code in 120 s is given
        // up (the agent's own wait for a data vchan).
        let done = active.as_ref().is_some_and(|a| {
            let late = a
                .exit_at
                .is_some_and(|t| t.elapsed() > Duration::from_secs(10));
            (a.exit_at.is_some() && a.terminated && a.vchan_closed)
                || late
                || a.started.elapsed() > Duration::from_secs(120)
        });
        if done {
            if let Some(mut a) = active.take() {
                let proxy_rc = a
                    .proxy
                    .wait_for(Duration::from_millis(500))
                    .unwrap_or_else(|| a.proxy.stop());
                let exit = a.data.exit().map_or("none".to_string(), |c| c.to_string());
                println!(
                    "qrexec: call {} exit {exit} stdout {} stderr {} streams-ended {} terminated {} vchan-closed {} in {:.2} s (proxy {proxy_rc})",
                    a.req.name,
                    quote(&a.data.stdout),
                    quote(&a.data.stderr),
                    a.data.streams_ended(),
                    a.terminated,
                    a.vchan_closed,
                    a.started.elapsed().as_secs_f64()
                );
            }
        }
        if active.is_none() && ctl.version().is_some() {
            if let Some(req) = queue.pop_front() {
                let port = next_port;
                next_port += 1;
                let data_path = format!("data/vchan/{dom}/{port}");
                match Proxy::spawn(&proxy, "server", dom, &data_path, port, &tx) {
                    Ok(mut p) => {
                        let mut data =
                            qrexec::DataServer::new(&req.stdin, qrexec::PROTOCOL_VERSION);
                        p.send(&data.take_output());
                        ctl.exec(port, &req.cmdline);
                        if !control.send(&ctl.take_output()) {
                            println!("qrexec: cannot write to the control proxy");
                        }
                        println!("qrexec: call {} {:?} on port {port}", req.name, req.cmdline);
                        active = Some(Active {
                            req,
                            port,
                            proxy: p,
                            data,
                            started: Instant::now(),
                            exit_at: None,
                            vchan_closed: false,
                            terminated: false,
                        });
                    }
                    Err(e) => println!("qrexec: call {} failed: {e}", req.name),
                }
            }
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let run = match args.get(1).map(String::as_str) {
        Some("qubesdb-daemon") => qubesdb_daemon,
        Some("qrexec-daemon") => qrexec_daemon,
        _ => {
            eprintln!(
                "usage: moat-qubes-dom0 qubesdb-daemon --domid N --keys FILE [--ctl FIFO] [--proxy PATH]\n       \
                 moat-qubes-dom0 qrexec-daemon --domid N [--ctl FIFO] [--proxy PATH] [--version V]"
            );
            return ExitCode::from(2);
        }
    };
    let result = options(&args[2..]).and_then(|o| run(&o));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
