//! The bounded queue between `emit` (any thread or task) and the tracker's worker thread.
//!
//! It exists to make emitting cost a lock and a push: the worker takes everything queued in
//! one swap (batch drain), so the lock is held for nanoseconds on both sides, and the
//! producer wakes the worker only when the worker said it is going to sleep. When the queue
//! is full, the [`Overflow`] policy decides, and every event it refuses is counted.

use crate::event::Event;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// What `emit` does when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Refuse the new event (counted as `dropped.queue_full`). The default: emitting never
    /// waits.
    #[default]
    DropNewest,
    /// Make room by dropping the oldest queued event (counted as `dropped.queue_full`).
    DropOldest,
    /// Wait up to this long for room, then refuse the event (counted). This is the only
    /// policy under which `emit` can wait; do not use it on an async runtime's threads with
    /// a long timeout.
    Block(Duration),
}

/// A request to the worker, answered after every event queued before it was processed.
pub(crate) enum Control {
    Flush {
        deadline: Instant,
        reply: Reply,
    },
    /// Flush, close the backends, and stop the worker.
    Close {
        deadline: Instant,
        reply: Reply,
    },
}

pub(crate) enum Reply {
    Sync(std::sync::mpsc::Sender<u64>),
    Async(tokio::sync::oneshot::Sender<u64>),
}

impl Reply {
    pub(crate) fn send(self, pending: u64) {
        match self {
            Reply::Sync(s) => {
                let _ = s.send(pending);
            }
            Reply::Async(s) => {
                let _ = s.send(pending);
            }
        }
    }
}

struct State {
    buf: VecDeque<Arc<Event>>,
    controls: Vec<Control>,
    /// The worker is waiting for work and must be woken.
    idle: bool,
    /// Producers waiting for room (`Overflow::Block`).
    blocked: usize,
    /// The tracker is gone: the worker drains and stops.
    closed: bool,
    accepted: u64,
    /// New events refused.
    refused: u64,
    /// Queued events dropped to make room.
    evicted: u64,
}

pub(crate) struct Queue {
    state: Mutex<State>,
    work: Condvar,
    room: Condvar,
    capacity: usize,
    overflow: Overflow,
}

/// What the worker takes in one go.
pub(crate) struct Take {
    pub events: VecDeque<Arc<Event>>,
    pub controls: Vec<Control>,
    pub closed: bool,
}

impl Queue {
    pub(crate) fn new(capacity: usize, overflow: Overflow) -> Queue {
        Queue {
            state: Mutex::new(State {
                buf: VecDeque::with_capacity(capacity.min(65_536)),
                controls: Vec::new(),
                idle: false,
                blocked: 0,
                closed: false,
                accepted: 0,
                refused: 0,
                evicted: 0,
            }),
            work: Condvar::new(),
            room: Condvar::new(),
            capacity: capacity.max(1),
            overflow,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state inconsistent (each change
        // is one push or one swap), so a poisoned lock is used as it is.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an event per the overflow policy. Never panics.
    pub(crate) fn push(&self, ev: Arc<Event>) {
        let mut st = self.lock();
        if st.closed {
            st.refused += 1;
            return;
        }
        if st.buf.len() >= self.capacity {
            match self.overflow {
                Overflow::DropNewest => {
                    st.refused += 1;
                    return;
                }
                Overflow::DropOldest => {
                    st.buf.pop_front();
                    st.evicted += 1;
                }
                Overflow::Block(timeout) => {
                    let deadline = Instant::now() + timeout;
                    while st.buf.len() >= self.capacity && !st.closed {
                        let now = Instant::now();
                        if now >= deadline {
                            st.refused += 1;
                            return;
                        }
                        st.blocked += 1;
                        st = self
                            .room
                            .wait_timeout(st, deadline - now)
                            .map(|(g, _)| g)
                            .unwrap_or_else(|e| e.into_inner().0);
                        st.blocked -= 1;
                    }
                    if st.closed {
                        st.refused += 1;
                        return;
                    }
                }
            }
        }
        st.buf.push_back(ev);
        st.accepted += 1;
        let wake = st.idle;
        st.idle = false;
        drop(st);
        if wake {
            self.work.notify_one();
        }
    }

    pub(crate) fn control(&self, c: Control) {
        let mut st = self.lock();
        st.controls.push(c);
        st.idle = false;
        drop(st);
        self.work.notify_one();
    }

    pub(crate) fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        drop(st);
        self.work.notify_one();
        self.room.notify_all();
    }

    /// Takes everything queued, waiting up to `wait` when there is nothing. `spare` is an
    /// empty buffer that replaces the queue's (so that both keep their capacity).
    ///
    /// When the last take found events (`busy`), it first polls a few times with short sleeps
    /// before asking producers to wake it: under load, producers then never make a system
    /// call to wake the worker (which cost more than the rest of an emit), and the worker
    /// takes larger batches. The price is up to about 2 ms of added latency under load.
    pub(crate) fn take(&self, spare: VecDeque<Arc<Event>>, wait: Duration, busy: bool) -> Take {
        let mut st = self.lock();
        let empty = |st: &State| st.buf.is_empty() && st.controls.is_empty() && !st.closed;
        if busy {
            for _ in 0..4 {
                if !empty(&st) {
                    break;
                }
                drop(st);
                std::thread::sleep(Duration::from_micros(500));
                st = self.lock();
            }
        }
        if empty(&st) {
            st.idle = true;
            st = self
                .work
                .wait_timeout(st, wait)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
            st.idle = false;
        }
        let events = std::mem::replace(&mut st.buf, spare);
        let controls = std::mem::take(&mut st.controls);
        let closed = st.closed;
        let wake_producers = st.blocked > 0;
        drop(st);
        if wake_producers {
            self.room.notify_all();
        }
        Take {
            events,
            controls,
            closed,
        }
    }

    /// (emitted, queued now, dropped for lack of room).
    pub(crate) fn counts(&self) -> (u64, u64, u64) {
        let st = self.lock();
        (
            st.accepted + st.refused,
            st.buf.len() as u64,
            st.refused + st.evicted,
        )
    }
}
