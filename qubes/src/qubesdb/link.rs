//! Running a [`Client`] over a vchan to dom0's QubesDB daemon.
//!
//! dom0's daemon for a VM is the vchan server (`libvchan_server_init(vm,
//! 111, 4096, 4096)` in `daemon/db-daemon.c`), so the VM connects as the
//! client to `/local/domain/0/data/vchan/<vm>/111`. When the vchan breaks
//! (dom0's daemon restarted: the VM daemon's comment names DispVMs), the
//! VM connects again and asks for a full sync again; [`reconnect`] does
//! that, and the client's resync fires watches for what changed meanwhile.

use super::client::{Client, QdbError};
use super::wire::VCHAN_PORT;
use crate::vchan::wire::{qubes_path, Live};
use crate::vchan::{self, Vchan, VchanEnv, VchanError};
use xen::abi::DomId;
use xen::shared_page::PageMemory;

/// Why driving the link failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkError {
    /// The vchan failed or the peer went away.
    Vchan(VchanError),
    /// dom0 broke the protocol.
    Protocol(QdbError),
    /// dom0 closed the vchan (read end of stream).
    Closed,
}

impl From<VchanError> for LinkError {
    fn from(e: VchanError) -> Self {
        LinkError::Vchan(e)
    }
}
impl From<QdbError> for LinkError {
    fn from(e: QdbError) -> Self {
        LinkError::Protocol(e)
    }
}

/// The xenstore directory of dom0's QubesDB vchan for domain `me`.
pub fn vchan_path(me: DomId) -> alloc::string::String {
    qubes_path(0, me, VCHAN_PORT)
}

/// Wait for dom0's daemon to listen for us, then connect. A server that
/// already closed (the keys of a daemon that just exited, not yet
/// removed) is left, and we wait for its keys to change, or for any
/// write under its path: the next daemon's keys may carry the same
/// numbers (dom0 reuses a freed grant reference and port).
pub async fn connect<E: VchanEnv>(env: &mut E, me: DomId) -> Result<Vchan<E::Mapping>, VchanError> {
    let path = vchan_path(me);
    let key = alloc::format!("{path}/ring-ref");
    loop {
        vchan::wait_for_server(env.xenstore(), &path).await?;
        let stale = env.xenstore().read(&key).await.ok();
        let mut v = vchan::connect(env, 0, &path).await?;
        if v.peer_live()? != Live::Closed {
            return Ok(v);
        }
        let _ = v.close(env).await;
        let token = alloc::format!("moat-qubesdb-stale:{path}");
        let mut guard = xen::xenstore::WatchGuard::new(env.xenstore());
        guard.add(&path, &token).await?;
        // The event xenstored fires when the watch is registered.
        guard.store().next_watch_event_for(&token).await?;
        if guard.store().read(&key).await.ok() == stale {
            guard.store().next_watch_event_for(&token).await?;
        }
        guard.close().await?;
    }
}

/// Send what the client has queued (waiting for room).
pub async fn flush<E: VchanEnv, M: PageMemory>(
    client: &mut Client,
    v: &mut Vchan<M>,
    env: &mut E,
) -> Result<(), LinkError> {
    while !client.output().is_empty() {
        let n = v.try_write(env, client.output())?;
        client.consume_output(n);
        if n == 0 {
            if v.peer_live()? == Live::Closed {
                return Err(VchanError::PeerClosed.into());
            }
            v.wait(env).await?;
        }
    }
    Ok(())
}

/// Send what is queued, then wait for input and apply it (at least one
/// byte; the events are in [`Client::next_event`]).
pub async fn pump<E: VchanEnv, M: PageMemory>(
    client: &mut Client,
    v: &mut Vchan<M>,
    env: &mut E,
) -> Result<(), LinkError> {
    flush(client, v, env).await?;
    let mut buf = [0u8; 1024];
    let n = v.read(env, &mut buf).await?;
    if n == 0 {
        return Err(LinkError::Closed);
    }
    client.feed(&buf[..n])?;
    // Answers to dom0's commands go out at once.
    flush(client, v, env).await
}

/// Start a session on a connected vchan and wait for the full sync.
pub async fn sync<E: VchanEnv, M: PageMemory>(
    client: &mut Client,
    v: &mut Vchan<M>,
    env: &mut E,
) -> Result<(), LinkError> {
    client.start();
    while !client.synced() {
        pump(client, v, env).await?;
    }
    Ok(())
}

/// Close a broken vchan, connect again (waiting for dom0's daemon to
/// listen) and sync again.
pub async fn reconnect<E: VchanEnv>(
    client: &mut Client,
    old: Vchan<E::Mapping>,
    env: &mut E,
    me: DomId,
) -> Result<Vchan<E::Mapping>, LinkError> {
    // A client maps nothing it must keep: closing cannot leave pages behind.
    let _ = old.close(env).await;
    let mut v = connect(env, me).await?;
    sync(client, &mut v, env).await?;
    Ok(v)
}
