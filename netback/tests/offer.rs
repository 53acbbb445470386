//! The step-by-step handshake a driver domain uses ([`netback::Offer`]):
//! a frontend that is slow or never connects holds nothing up, and the
//! backend directory is removed once the toolstack is done with the vif.

mod common;

use common::*;
use netback::{BackendDevice, BackendOptions, NetbackError, Offer};
use netfront::Netfront;
use xen::xenbus::XenbusState;

const SLOW: xen::abi::DomId = FRONT + 1;

#[test]
fn a_frontend_that_never_connects_does_not_hold_up_another() {
    let m = Machine::new();
    m.add_vif(SLOW);
    m.add_vif(FRONT);
    let mut back = Backend::new(&m);
    let options = BackendOptions::default();
    // The silent frontend is offered first; every look returns at once.
    let silent = run(Offer::start(&mut back.xs, &back_path(SLOW), &options)).unwrap();
    assert_eq!(
        m.get(&format!("{}/state", back_path(SLOW))).as_deref(),
        Some("2")
    );
    for _ in 0..5 {
        assert!(matches!(
            run(silent.advance(&mut back.env, &mut back.xs)),
            Ok(None)
        ));
    }
    // Meanwhile the other one connects, driven by the same loop.
    let offer = run(Offer::start(&mut back.xs, &back_path(FRONT), &options)).unwrap();
    let env = m.front_env(FRONT);
    let (front, vif) = join(
        async {
            backend_advertised(&m, FRONT).await;
            Netfront::connect(env, "device/vif/0", front_options()).await
        },
        async {
            loop {
                match offer.advance(&mut back.env, &mut back.xs).await {
                    Ok(Some(vif)) => return Ok(vif),
                    Ok(None) => {
                        assert!(matches!(
                            silent.advance(&mut back.env, &mut back.xs).await,
                            Ok(None)
                        ));
                        // let the frontend run
                        yield_once().await;
                    }
                    Err(e) => return Err(e),
                }
            }
        },
    );
    let front = front.map_err(|(_, e)| e).expect("netfront connects");
    let vif = vif.expect("netback connects");
    assert_eq!(vif.device().frontend_id, FRONT);
    assert!(front.features().rx_copy);
    assert_eq!(
        m.get(&format!("{}/state", back_path(FRONT))).as_deref(),
        Some("4")
    );
    // The silent one is still offered, untouched.
    assert_eq!(
        m.get(&format!("{}/state", back_path(SLOW))).as_deref(),
        Some("2")
    );
    // A frontend that starts leaving spends the offer and we publish Closed.
    m.set(&format!("{}/state", front_path(SLOW)), "5");
    assert_eq!(
        run(silent.advance(&mut back.env, &mut back.xs)).err(),
        Some(NetbackError::FrontendClosed(XenbusState::Closing))
    );
    assert_eq!(
        m.get(&format!("{}/state", back_path(SLOW))).as_deref(),
        Some("6")
    );
}

#[test]
fn a_detached_vif_is_finished_once_we_closed_it_as_libxl_waits_for() {
    let m = Machine::new();
    m.add_vif(FRONT);
    let mut back = Backend::new(&m);
    let b = back_path(FRONT);
    let dev = run(BackendDevice::open(&mut back.xs, &b)).unwrap();
    assert_eq!(run(dev.finished(&mut back.xs)), Ok(false));
    // A frontend that left while the vif stays attached (`online` 1): we
    // are Closed, but it may come back.
    m.set(&format!("{b}/state"), "6");
    assert_eq!(run(dev.finished(&mut back.xs)), Ok(false));
    // `xl network-detach` (libxl 4.17): `online` 0 and `Closing`, the
    // frontend's directory still there. Not yet: the vif is ours to close.
    m.set(&format!("{b}/online"), "0");
    m.set(&format!("{b}/state"), "5");
    assert_eq!(run(dev.finished(&mut back.xs)), Ok(false));
    // We closed it. libxl now waits for our directory to go before it
    // removes the frontend's: we must not wait for that.
    m.set(&format!("{b}/state"), "6");
    assert!(m.get(&format!("{}/state", front_path(FRONT))).is_some());
    assert_eq!(run(dev.finished(&mut back.xs)), Ok(true));
    run(dev.remove(&mut back.xs)).unwrap();
    assert_eq!(m.get(&format!("{b}/online")), None);
    assert_eq!(m.get(&format!("{b}/state")), None);
    // The frontend's directory is the toolstack's to remove, not ours.
    assert!(m.get(&format!("{}/state", front_path(FRONT))).is_some());
    // Removing again is not an error.
    assert_eq!(run(dev.remove(&mut back.xs)), Ok(()));
}

#[test]
fn a_destroyed_frontend_finishes_its_vif_whatever_our_state() {
    let m = Machine::new();
    m.add_vif(FRONT);
    let mut back = Backend::new(&m);
    let b = back_path(FRONT);
    let dev = run(BackendDevice::open(&mut back.xs, &b)).unwrap();
    // `xl destroy`: libxl removes the frontend's directory in the same
    // transaction that writes `online` 0 and `Closing`.
    m.xsd.borrow_mut().remove(&front_path(FRONT));
    assert_eq!(run(dev.finished(&mut back.xs)), Ok(false), "online 1");
    m.set(&format!("{b}/online"), "0");
    m.set(&format!("{b}/state"), "5");
    assert_eq!(run(dev.finished(&mut back.xs)), Ok(true));
    run(dev.remove(&mut back.xs)).unwrap();
    assert_eq!(m.get(&format!("{b}/frontend")), None);
}

/// Pending once, so `join` polls the other future.
async fn yield_once() {
    let mut done = false;
    std::future::poll_fn(|cx| {
        if done {
            std::task::Poll::Ready(())
        } else {
            done = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await
}
