//! Running the agent over vchans: the control vchan to dom0's
//! qrexec-daemon (we serve it on port 512) and, per call, a data vchan to
//! the caller (we are its client).
//!
//! [`session`] is the whole life of one control vchan: listen, hand
//! shake, serve until it breaks, close. The upstream agent exits when its
//! control vchan breaks and systemd starts it again, listening anew; a
//! caller of [`session`] loops the same way.
//!
//! Calls are served one at a time: a call runs to its exit code before the
//! next control message is read (dom0's daemon queues them in the ring).
//! Built-in services answer at once, so this does not hold anything up.

use super::call::{Call, Service};
use super::control::{Control, ExecKind, Request};
use super::time::Clock;
use super::wire::{WireError, CONTROL_PORT};
use crate::vchan::wire::{qubes_path, Live};
use crate::vchan::{self, Vchan, VchanEnv, VchanError};
use alloc::string::String;
use alloc::vec::Vec;
use xen::abi::DomId;
use xen::shared_page::PageMemory;

/// Why the agent stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentError {
    /// A vchan failed or its peer went away.
    Vchan(VchanError),
    /// The peer broke the protocol.
    Protocol(WireError),
    /// The peer closed the vchan.
    Closed,
    /// A data vchan's domain is not a domain id.
    BadDomain(u32),
}

impl From<VchanError> for AgentError {
    fn from(e: VchanError) -> Self {
        AgentError::Vchan(e)
    }
}
impl From<WireError> for AgentError {
    fn from(e: WireError) -> Self {
        AgentError::Protocol(e)
    }
}

/// What one control message led to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handled {
    /// A call ran (or failed on its data vchan); `MSG_CONNECTION_TERMINATED`
    /// was sent either way.
    Call {
        /// What ran.
        service: Service,
        /// Its exit status, or why the data vchan failed.
        result: Result<u32, AgentError>,
    },
    /// dom0 refused a call we triggered (we trigger none).
    Refused(Vec<u8>),
    /// `MSG_SERVICE_CONNECT` for a call we did not trigger: ignored, as the
    /// upstream agent ignores an unknown ident.
    Ignored,
}

/// The xenstore directory of our control vchan.
pub fn control_path(me: DomId) -> String {
    qubes_path(me, 0, CONTROL_PORT)
}

/// Listen for dom0's qrexec-daemon (rings of 4096 bytes each way, as the
/// upstream agent asks).
pub async fn listen<E: VchanEnv>(env: &mut E, me: DomId) -> Result<Vchan<E::Page>, VchanError> {
    vchan::listen(env, 0, &control_path(me), 4096, 4096).await
}

/// Something with queued output.
trait Output {
    fn out(&self) -> &[u8];
    fn sent(&mut self, n: usize);
}
impl Output for Control {
    fn out(&self) -> &[u8] {
        self.output()
    }
    fn sent(&mut self, n: usize) {
        self.consume_output(n)
    }
}
impl Output for Call {
    fn out(&self) -> &[u8] {
        self.output()
    }
    fn sent(&mut self, n: usize) {
        self.consume_output(n)
    }
}

async fn flush<E: VchanEnv, M: PageMemory, P: Output>(
    p: &mut P,
    v: &mut Vchan<M>,
    env: &mut E,
) -> Result<(), AgentError> {
    while !p.out().is_empty() {
        let n = v.try_write(env, p.out())?;
        p.sent(n);
        if n == 0 {
            if v.peer_live()? == Live::Closed {
                return Err(VchanError::PeerClosed.into());
            }
            v.wait(env).await?;
        }
    }
    Ok(())
}

async fn read_some<E: VchanEnv, M: PageMemory>(
    v: &mut Vchan<M>,
    env: &mut E,
    buf: &mut [u8],
) -> Result<usize, AgentError> {
    match v.read(env, buf).await? {
        0 => Err(AgentError::Closed),
        n => Ok(n),
    }
}

/// Accept dom0's daemon on a listening control vchan and shake hands;
/// the version in use.
pub async fn handshake<E: VchanEnv, M: PageMemory>(
    ctrl: &mut Control,
    v: &mut Vchan<M>,
    env: &mut E,
) -> Result<u32, AgentError> {
    v.accept(env).await?;
    flush(ctrl, v, env).await?;
    let mut buf = [0u8; 64];
    loop {
        if let Some(version) = ctrl.version() {
            return Ok(version);
        }
        let n = read_some(v, env, &mut buf).await?;
        ctrl.feed(&buf[..n])?;
    }
}

/// Wait for dom0's next request on the control vchan and handle it.
pub async fn next<E: VchanEnv, M: PageMemory, C: Clock>(
    ctrl: &mut Control,
    v: &mut Vchan<M>,
    env: &mut E,
    me: DomId,
    clock: &mut C,
) -> Result<Handled, AgentError> {
    let mut buf = [0u8; 1024];
    let req = loop {
        if let Some(r) = ctrl.next_request() {
            break r;
        }
        if let Some(e) = ctrl.broken() {
            return Err(e.into());
        }
        // Requests parsed before an error are still served; the error
        // is reported once they are.
        let n = read_some(v, env, &mut buf).await?;
        let _ = ctrl.feed(&buf[..n]);
    };
    let handled = match req {
        Request::Refused { ident } => Handled::Refused(ident),
        Request::Exec {
            kind: ExecKind::ServiceConnect,
            ..
        } => Handled::Ignored,
        Request::Exec {
            kind,
            domain,
            port,
            cmdline,
        } => {
            let mut call = Call::new(kind, &cmdline);
            let result = run_call(&mut call, env, me, domain, port, clock).await;
            ctrl.terminated(domain, port);
            Handled::Call {
                service: call.service(),
                result,
            }
        }
    };
    flush(ctrl, v, env).await?;
    Ok(handled)
}

/// Connect to the call's data vchan, run the service, send its answer and
/// close.
async fn run_call<E: VchanEnv, C: Clock>(
    call: &mut Call,
    env: &mut E,
    me: DomId,
    domain: u32,
    port: u32,
    clock: &mut C,
) -> Result<u32, AgentError> {
    let server = DomId::try_from(domain).map_err(|_| AgentError::BadDomain(domain))?;
    let path = qubes_path(server, me, port);
    vchan::wait_for_server(env.xenstore(), &path).await?;
    let mut v = vchan::connect(env, server, &path).await?;
    let r = serve(call, &mut v, env, clock).await;
    // The answer is in the ring. A closed vchan still delivers what was
    // written, and qrexec-client reads it, but not every libxenvchan
    // reader does (vchan-socket-proxy leaves at the close with the data
    // unread, as the rig showed): wait until the caller has taken it (or
    // left), then close.
    if r.is_ok() {
        let _ = v.flush(env).await;
    }
    let _ = v.close(env).await;
    r
}

async fn serve<E: VchanEnv, M: PageMemory, C: Clock>(
    call: &mut Call,
    v: &mut Vchan<M>,
    env: &mut E,
    clock: &mut C,
) -> Result<u32, AgentError> {
    let mut buf = [0u8; 4096];
    loop {
        flush(call, v, env).await?;
        if let Some(code) = call.exit_code() {
            return Ok(code);
        }
        let n = read_some(v, env, &mut buf).await?;
        call.feed(&buf[..n], clock)?;
    }
}

/// One control-vchan session: listen for dom0's qrexec-daemon, shake
/// hands, serve requests (each passed to `seen`) until the vchan or the
/// protocol breaks, then close. Pages the daemon still maps at the close
/// are leaked, never reused. Returns why the session ended.
pub async fn session<E: VchanEnv, C: Clock, F: FnMut(&Handled)>(
    env: &mut E,
    me: DomId,
    clock: &mut C,
    mut seen: F,
) -> AgentError {
    let mut v = match listen(env, me).await {
        Ok(v) => v,
        Err(e) => return e.into(),
    };
    let mut ctrl = Control::new();
    let end = match handshake(&mut ctrl, &mut v, env).await {
        Err(e) => e,
        Ok(_) => loop {
            match next(&mut ctrl, &mut v, env, me, clock).await {
                Ok(h) => seen(&h),
                Err(e) => break e,
            }
        },
    };
    if let Ok(mut lingering) = v.close(env).await {
        // What dom0 still maps is deferred by the page type when dropped:
        // never reused while mapped.
        lingering.retry(env);
    }
    end
}
