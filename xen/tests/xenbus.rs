//! The xenbus frontend helper against the simulated xenstored, with a
//! scripted backend that changes state while the frontend waits.

mod common;

use common::block_on;
use common::xenstored::{SimTransport, Xenstored};
use std::cell::RefCell;
use std::rc::Rc;
use xen::xenbus::{read_state, XenbusDevice, XenbusError, XenbusState};
use xen::xenstore::{XenStore, XsError};

const BACKEND: &str = "/local/domain/0/backend/vif/7/0";

fn setup() -> (Rc<RefCell<Xenstored>>, XenStore<SimTransport>) {
    let daemon = Rc::new(RefCell::new(Xenstored::new(7)));
    {
        let mut d = daemon.borrow_mut();
        d.set("device/vif/0/backend", BACKEND.as_bytes());
        d.set("device/vif/0/backend-id", b"0");
        d.set(&format!("{BACKEND}/state"), b"2");
    }
    let xs = XenStore::new(SimTransport::new(daemon.clone(), 13));
    (daemon, xs)
}

#[test]
fn states_parse_strictly() {
    for state in XenbusState::ALL {
        assert_eq!(XenbusState::parse(state.to_value().as_bytes()), Ok(state));
    }
    assert_eq!(XenbusState::parse(b"4"), Ok(XenbusState::Connected));
    assert_eq!(XenbusState::Reconfigured as u32, 8);
    for bad in [
        &b""[..],
        b"9",
        b"-1",
        b" 4",
        b"4\n",
        b"4\0",
        b"x",
        b"99999999999999999999",
    ] {
        match XenbusState::parse(bad) {
            Err(XenbusError::BadState(v)) => {
                assert_eq!(v.as_bytes(), &bad[..bad.len().min(16)])
            }
            other => panic!("{bad:?} -> {other:?}"),
        }
    }
}

#[test]
fn open_finds_the_backend() {
    let (daemon, mut xs) = setup();
    let dev = block_on(XenbusDevice::open(&mut xs, "device/vif/0")).unwrap();
    assert_eq!(dev.backend, BACKEND);
    assert_eq!(dev.backend_id, 0);

    daemon
        .borrow_mut()
        .set("device/vif/1/backend", b"relative/path");
    daemon.borrow_mut().set("device/vif/1/backend-id", b"0");
    assert!(matches!(
        block_on(XenbusDevice::open(&mut xs, "device/vif/1")),
        Err(XenbusError::BadBackendPath(_))
    ));
    daemon
        .borrow_mut()
        .set("device/vif/1/backend", BACKEND.as_bytes());
    daemon.borrow_mut().set("device/vif/1/backend-id", b"70000");
    assert!(matches!(
        block_on(XenbusDevice::open(&mut xs, "device/vif/1")),
        Err(XenbusError::BadBackendId(_))
    ));
    assert_eq!(
        block_on(XenbusDevice::open(&mut xs, "device/vif/9")),
        Err(XenbusError::Xs(XsError::Enoent))
    );
}

#[test]
fn handshake_waits_for_the_backend_through_a_watch() {
    let (daemon, mut xs) = setup();
    let dev = block_on(XenbusDevice::open(&mut xs, "device/vif/0")).unwrap();
    block_on(dev.set_state(&mut xs, XenbusState::Initialising)).unwrap();
    assert_eq!(
        daemon.borrow().get("device/vif/0/state"),
        Some(b"1".to_vec())
    );
    assert_eq!(
        block_on(dev.backend_state(&mut xs)),
        Ok(XenbusState::InitWait)
    );
    // The backend will move on only while we wait, in two steps, with an
    // unrelated change in between.
    let state = format!("{BACKEND}/state");
    daemon.borrow_mut().scheduled.extend([
        (format!("{BACKEND}/feature-sg"), b"1".to_vec()),
        (state.clone(), b"3".to_vec()),
        (state.clone(), b"4".to_vec()),
    ]);
    block_on(dev.set_state(&mut xs, XenbusState::Initialised)).unwrap();
    assert_eq!(
        block_on(dev.wait_for_backend(&mut xs, XenbusState::Connected)),
        Ok(XenbusState::Connected)
    );
    assert!(daemon.borrow().scheduled.is_empty(), "it really waited");
    assert_eq!(daemon.borrow().watch_count(), 0, "watch removed");
    block_on(dev.set_state(&mut xs, XenbusState::Connected)).unwrap();
    assert_eq!(block_on(dev.state(&mut xs)), Ok(XenbusState::Connected));
    // Already there: returns at once.
    assert_eq!(
        block_on(dev.wait_for_backend(&mut xs, XenbusState::Connected)),
        Ok(XenbusState::Connected)
    );
}

#[test]
fn backend_closing_while_waiting_is_an_error() {
    let (daemon, mut xs) = setup();
    let dev = block_on(XenbusDevice::open(&mut xs, "device/vif/0")).unwrap();
    daemon
        .borrow_mut()
        .scheduled
        .push_back((format!("{BACKEND}/state"), b"5".to_vec()));
    assert_eq!(
        block_on(dev.wait_for_backend(&mut xs, XenbusState::Connected)),
        Err(XenbusError::BackendClosed(XenbusState::Closing))
    );
    assert_eq!(daemon.borrow().watch_count(), 0);
}

#[test]
fn garbage_backend_state_is_an_error_and_missing_is_unknown() {
    let (daemon, mut xs) = setup();
    assert_eq!(
        block_on(read_state(&mut xs, "/nowhere")),
        Ok(XenbusState::Unknown)
    );
    daemon
        .borrow_mut()
        .set(&format!("{BACKEND}/state"), b"connected");
    let dev = block_on(XenbusDevice::open(&mut xs, "device/vif/0")).unwrap();
    assert!(matches!(
        block_on(dev.wait_for_backend(&mut xs, XenbusState::Connected)),
        Err(XenbusError::BadState(_))
    ));
    assert_eq!(daemon.borrow().watch_count(), 0);
}

#[test]
fn state_is_published_only_into_a_directory_that_exists() {
    let (daemon, mut xs) = setup();
    daemon.borrow_mut().set("device/vif/0/state", b"4");
    let dev = block_on(XenbusDevice::open(&mut xs, "device/vif/0")).unwrap();
    // A conflicting commit is retried.
    daemon.borrow_mut().force_conflicts = 2;
    assert_eq!(
        block_on(dev.set_state_if_present(&mut xs, XenbusState::Closing)),
        Ok(true)
    );
    assert_eq!(daemon.borrow().force_conflicts, 0);
    assert_eq!(
        daemon.borrow().get("device/vif/0/state"),
        Some(b"5".to_vec())
    );
    // The toolstack removed our directory (`xl network-detach`): nothing
    // is written, nothing created.
    daemon.borrow_mut().remove("device/vif/0");
    assert_eq!(
        block_on(dev.set_state_if_present(&mut xs, XenbusState::Closed)),
        Ok(false)
    );
    assert_eq!(daemon.borrow().get("device/vif/0"), None);
    assert_eq!(daemon.borrow().get("device/vif/0/state"), None);
}

#[test]
fn an_online_backend_passes_through_closed_a_detached_one_does_not() {
    let (daemon, mut xs) = setup();
    let dev = block_on(XenbusDevice::open(&mut xs, "device/vif/0")).unwrap();
    let state = format!("{BACKEND}/state");
    daemon.borrow_mut().set(&format!("{BACKEND}/online"), b"1");
    daemon.borrow_mut().set(&state, b"4");
    // Catching up with our earlier Closed, then answering Initialising.
    daemon.borrow_mut().scheduled.extend([
        (state.clone(), b"5".to_vec()),
        (state.clone(), b"6".to_vec()),
        (state.clone(), b"2".to_vec()),
    ]);
    let mut bound = xen::xenbus::Unbounded;
    assert_eq!(
        block_on(dev.wait_for_backend_online(&mut xs, XenbusState::InitWait, &mut bound)),
        Ok(XenbusState::InitWait)
    );
    assert!(daemon.borrow().scheduled.is_empty(), "it really waited");
    assert_eq!(daemon.borrow().watch_count(), 0);
    // The toolstack detaching: online 0, then Closing.
    daemon.borrow_mut().set(&format!("{BACKEND}/online"), b"0");
    daemon
        .borrow_mut()
        .scheduled
        .push_back((state.clone(), b"5".to_vec()));
    assert_eq!(
        block_on(dev.wait_for_backend_online(&mut xs, XenbusState::Connected, &mut bound)),
        Err(XenbusError::BackendClosed(XenbusState::Closing))
    );
    assert_eq!(daemon.borrow().watch_count(), 0);
}
