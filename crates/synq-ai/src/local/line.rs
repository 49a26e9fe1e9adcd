//! The embedded model's line: one generation at a time (the CPU is the bottleneck), the
//! other requests wait in arrival order and can tell how many are ahead of them. A request
//! that goes away leaves the line at once, and those behind it move up.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

/// The line of requests for one model.
#[derive(Debug)]
pub(crate) struct Line {
    state: Mutex<State>,
    /// Bumped on every change, so that waiters recompute their place.
    changed: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct State {
    /// A generation holds the model.
    running: bool,
    /// Waiting tickets, first in first out.
    waiting: VecDeque<u64>,
    next: u64,
}

impl Line {
    pub(crate) fn new() -> Arc<Line> {
        Arc::new(Line {
            state: Mutex::new(State::default()),
            changed: watch::Sender::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding it; a poisoned state is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Takes a place at the end of the line.
    pub(crate) fn join(self: &Arc<Self>) -> Ticket {
        let id = {
            let mut s = self.lock();
            s.next += 1;
            let id = s.next;
            s.waiting.push_back(id);
            id
        };
        Ticket {
            line: Arc::clone(self),
            id,
            changes: self.changed.subscribe(),
            waiting: true,
        }
    }

    /// Requests in the line: (generating, waiting).
    #[cfg(test)]
    fn len(&self) -> (bool, usize) {
        let s = self.lock();
        (s.running, s.waiting.len())
    }
}

/// A place in the line. Dropping it leaves the line.
#[derive(Debug)]
pub(crate) struct Ticket {
    line: Arc<Line>,
    id: u64,
    changes: watch::Receiver<u64>,
    waiting: bool,
}

impl Ticket {
    /// The model if it is this ticket's turn, else how many requests are ahead.
    pub(crate) fn try_start(&mut self) -> Result<Turn, u32> {
        let mut s = self.line.lock();
        let index = s.waiting.iter().position(|&t| t == self.id).unwrap_or(0);
        if index == 0 && !s.running {
            s.waiting.pop_front();
            s.running = true;
            self.waiting = false;
            drop(s);
            self.line.bump();
            return Ok(Turn {
                line: Arc::clone(&self.line),
            });
        }
        Err(u32::try_from(index + usize::from(s.running)).unwrap_or(u32::MAX))
    }

    /// Waits until the line changes (someone started, finished or left).
    pub(crate) async fn changed(&mut self) {
        // The sender lives in `line`, which this ticket holds: never closed.
        let _ = self.changes.changed().await;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.waiting {
            self.line.lock().waiting.retain(|&t| t != self.id);
            self.line.bump();
        }
    }
}

/// The model, for one generation. Dropping it lets the next request start.
#[derive(Debug)]
pub(crate) struct Turn {
    line: Arc<Line>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.line.lock().running = false;
        self.line.bump();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_come_first_served_and_leaving_moves_the_others_up() {
        let line = Line::new();
        let mut a = line.join();
        let mut b = line.join();
        let mut c = line.join();
        let mut d = line.join();
        // b is not first: it cannot jump the line even while the model is free.
        assert_eq!(b.try_start().err(), Some(1));
        let turn = a.try_start().expect("first");
        assert_eq!(b.try_start().err(), Some(1));
        assert_eq!(c.try_start().err(), Some(2));
        assert_eq!(d.try_start().err(), Some(3));
        drop(c);
        assert_eq!(d.try_start().err(), Some(2));
        drop(turn);
        assert_eq!(d.try_start().err(), Some(1));
        let turn = b.try_start().expect("b's turn");
        assert_eq!(d.try_start().err(), Some(1));
        drop(turn);
        let _turn = d.try_start().expect("d's turn");
        drop(a);
        drop(b);
        assert_eq!(line.len(), (true, 0));
    }

    #[tokio::test]
    async fn a_waiter_is_woken_by_every_change() {
        let line = Line::new();
        let mut a = line.join();
        let mut b = line.join();
        let turn = a.try_start().expect("first");
        let waiter = tokio::spawn(async move {
            loop {
                match b.try_start() {
                    Ok(turn) => return turn,
                    Err(_) => b.changed().await,
                }
            }
        });
        drop(turn);
        let _turn = waiter.await.expect("b started");
        assert_eq!(line.len(), (true, 0));
    }
}
