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
fn a_detached_vif_is_removed_once_its_frontend_is_gone() {
    let m = Machine::new();
    m.add_vif(FRONT);
    let mut back = Backend::new(&m);
    let b = back_path(FRONT);
    let dev = run(BackendDevice::open(&mut back.xs, &b)).unwrap();
    assert_eq!(run(dev.finished(&mut back.xs)), Ok(false));
    // `xl network-detach`: online 0, but the frontend is still there.
    m.set(&format!("{b}/online"), "0");
    assert_eq!(run(dev.finished(&mut back.xs)), Ok(false));
    // The toolstack removed the frontend's directory: ours is to go.
    m.xsd.borrow_mut().remove(&front_path(FRONT));
    assert_eq!(run(dev.finished(&mut back.xs)), Ok(true));
    run(dev.remove(&mut back.xs)).unwrap();
    assert_eq!(m.get(&format!("{b}/online")), None);
    // Removing again is not an error.
    assert_eq!(run(dev.remove(&mut back.xs)), Ok(()));
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
