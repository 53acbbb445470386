//! Frames from several TAP readers to one service loop, fairly.
//!
//! Each TAP device has a reader thread; the service runs in one loop. A
//! single channel for all of them let one busy link fill it and delay or
//! block every other link's frames behind its own (issue 14 item 3).
//! Here each link has its own bounded queue ([`channel`]'s
//! `per_link`); the loop takes frames from the links in turn
//! ([`Receiver::recv_timeout`]), and a reader whose queue is full waits
//! for room in its own queue only (its TAP device's kernel queue then
//! fills and drops, as it would for a slow Linux process), so a flood on
//! one link costs the others at most one frame of delay per frame of
//! theirs.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

struct State<T> {
    queues: Vec<VecDeque<T>>,
    per_link: usize,
    /// The link to look at first next time.
    next: usize,
    senders: usize,
    receiver: bool,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    /// Signalled when a frame was queued (or the last sender went).
    ready: Condvar,
    /// Signalled when a frame was taken (or the receiver went).
    room: Condvar,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A reader thread that panicked while holding the lock left the
        // queues consistent (every change is one push or pop).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Queues for `links` links of at most `per_link` frames each (at least
/// one): the senders, in link order, and the receiver.
pub fn channel<T>(links: usize, per_link: usize) -> (Vec<Sender<T>>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queues: (0..links).map(|_| VecDeque::new()).collect(),
            per_link: per_link.max(1),
            next: 0,
            senders: links,
            receiver: true,
        }),
        ready: Condvar::new(),
        room: Condvar::new(),
    });
    let senders = (0..links)
        .map(|link| Sender {
            shared: shared.clone(),
            link,
        })
        .collect();
    (senders, Receiver { shared })
}

/// One link's end: its reader thread sends with it.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
    link: usize,
}

impl<T> Sender<T> {
    /// Queue `item` on this link, waiting while its queue is full. `Err`
    /// gives it back when the receiver is gone.
    pub fn send(&self, item: T) -> Result<(), T> {
        let mut s = self.shared.lock();
        loop {
            if !s.receiver {
                return Err(item);
            }
            let per_link = s.per_link;
            match s.queues.get_mut(self.link) {
                Some(q) if q.len() < per_link => {
                    q.push_back(item);
                    self.shared.ready.notify_one();
                    return Ok(());
                }
                Some(_) => {}
                None => return Err(item),
            }
            s = self.shared.room.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut s = self.shared.lock();
        s.senders = s.senders.saturating_sub(1);
        self.shared.ready.notify_all();
    }
}

/// Why [`Receiver::recv_timeout`] returned nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecvTimeoutError {
    /// Nothing came in time.
    Timeout,
    /// Every sender is gone and nothing is left.
    Disconnected,
}

/// The service loop's end.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Receiver<T> {
    /// The next frame, taking the links in turn, as `(link, frame)`;
    /// waits up to `timeout` for one.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<(usize, T), RecvTimeoutError> {
        let deadline = Instant::now() + timeout;
        let mut s = self.shared.lock();
        loop {
            let n = s.queues.len();
            for k in 0..n {
                let link = (s.next + k) % n;
                if let Some(item) = s.queues.get_mut(link).and_then(VecDeque::pop_front) {
                    s.next = (link + 1) % n;
                    self.shared.room.notify_all();
                    return Ok((link, item));
                }
            }
            if s.senders == 0 {
                return Err(RecvTimeoutError::Disconnected);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(RecvTimeoutError::Timeout);
            }
            s = self
                .shared
                .ready
                .wait_timeout(s, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// Frames queued on `link` now.
    pub fn queued(&self, link: usize) -> usize {
        self.shared.lock().queues.get(link).map_or(0, VecDeque::len)
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut s = self.shared.lock();
        s.receiver = false;
        self.shared.room.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    #[test]
    fn a_flooding_link_does_not_hold_up_the_others() {
        let (mut senders, rx) = channel::<u32>(3, 64);
        let quiet = senders.pop().unwrap();
        let flood = senders.remove(0);
        drop(senders);
        // Link 0 floods without end (its reader blocks on its own full
        // queue); link 2 sends ten frames.
        let flooder = thread::spawn(move || {
            let mut i = 0;
            while flood.send(i).is_ok() {
                i += 1;
            }
            i
        });
        // The flood fills its queue first.
        while rx.queued(0) < 64 {
            thread::yield_now();
        }
        for i in 0..10 {
            quiet.send(1000 + i).unwrap();
        }
        // The quiet link's ten frames come within the next twenty.
        let mut got_quiet = 0;
        for _ in 0..20 {
            let (link, item) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
            if link == 2 {
                assert_eq!(item, 1000 + got_quiet);
                got_quiet += 1;
            }
        }
        assert_eq!(got_quiet, 10);
        // No link ever holds more than its share.
        assert!(rx.queued(0) <= 64);
        drop(quiet);
        drop(rx);
        // The flooder's reader ends once the loop is gone.
        let sent = flooder.join().unwrap();
        assert!(sent >= 64);
    }

    #[test]
    fn frames_keep_their_order_per_link_and_the_end_is_seen() {
        let (senders, rx) = channel::<(usize, u32)>(2, 4);
        let threads: Vec<_> = senders
            .into_iter()
            .enumerate()
            .map(|(link, tx)| {
                thread::spawn(move || {
                    for i in 0..100 {
                        tx.send((link, i)).unwrap();
                    }
                })
            })
            .collect();
        let mut next = [0u32; 2];
        loop {
            match rx.recv_timeout(Duration::from_secs(5)) {
                Ok((link, (l, i))) => {
                    assert_eq!(link, l);
                    assert_eq!(i, next[link]);
                    next[link] += 1;
                }
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!("stalled"),
            }
        }
        assert_eq!(next, [100, 100]);
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(
            rx.recv_timeout(Duration::from_millis(1)),
            Err(RecvTimeoutError::Disconnected)
        );
    }

    #[test]
    fn nothing_in_time_is_a_timeout() {
        let (senders, rx) = channel::<u8>(1, 1);
        let start = Instant::now();
        assert_eq!(
            rx.recv_timeout(Duration::from_millis(20)),
            Err(RecvTimeoutError::Timeout)
        );
        assert!(start.elapsed() >= Duration::from_millis(20));
        drop(senders);
    }
}
