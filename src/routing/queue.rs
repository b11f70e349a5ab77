//! The queue: requests waiting for a server with a free slot (or the memory to load their model).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::telemetry::metrics;

/// Requests waiting for a server with a free slot: bounded fleet-wide, first come first
/// served per model (a waiter takes a slot only at the head of its model's line, and a
/// newcomer joins the line rather than overtaking it).
pub struct Queue {
    lines: Mutex<HashMap<String, VecDeque<u64>>>,
    waiting: AtomicUsize,
    next: AtomicU64,
    pub size: usize,
    pub timeout: Duration,
}

/// A place in the queue, left when dropped.
pub struct Ticket<'a> {
    queue: &'a Queue,
    model: String,
    number: u64,
    released: Arc<Notify>,
    entered: Instant,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut lines = self.queue.lines.lock().unwrap();
        if let Some(line) = lines.get_mut(&self.model) {
            line.retain(|&n| n != self.number);
            if line.is_empty() {
                lines.remove(&self.model);
            }
        }
        self.queue.waiting.fetch_sub(1, Ordering::AcqRel);
        metrics::QUEUE_LENGTH.dec();
        metrics::QUEUE_WAIT.observe(self.entered.elapsed().as_secs_f64());
        // The next in line may now be at the head.
        self.released.notify_waiters();
    }
}

impl Ticket<'_> {
    pub fn at_head(&self) -> bool {
        self.queue.lines.lock().unwrap().get(&self.model).and_then(|l| l.front()) == Some(&self.number)
    }
}

impl Queue {
    pub fn new(size: usize, timeout: Duration) -> Queue {
        Queue {
            lines: Mutex::new(HashMap::new()),
            waiting: AtomicUsize::new(0),
            next: AtomicU64::new(0),
            size,
            timeout,
        }
    }

    /// Requests waiting now.
    pub fn len(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn enter(&self, model: &str, released: &Arc<Notify>) -> Option<Ticket<'_>> {
        self.waiting.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| (n < self.size).then_some(n + 1)).ok()?;
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        self.lines.lock().unwrap().entry(model.to_string()).or_default().push_back(number);
        metrics::QUEUE_LENGTH.inc();
        Some(Ticket {
            queue: self,
            model: model.to_string(),
            number,
            released: released.clone(),
            entered: Instant::now(),
        })
    }

    pub fn has_line(&self, model: &str) -> bool {
        self.lines.lock().unwrap().contains_key(model)
    }

    pub fn line_len(&self, model: &str) -> usize {
        self.lines.lock().unwrap().get(model).map_or(0, VecDeque::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_first_come_first_served_per_model_and_bounded() {
        let q = Queue::new(3, Duration::from_secs(1));
        let released = Arc::new(Notify::new());
        let a1 = q.enter("a", &released).unwrap();
        let a2 = q.enter("a", &released).unwrap();
        let b1 = q.enter("b", &released).unwrap();
        assert!(q.enter("c", &released).is_none(), "bounded fleet-wide");
        assert!(a1.at_head() && !a2.at_head() && b1.at_head(), "one line per model");
        drop(a1);
        assert!(a2.at_head());
        assert_eq!((q.len(), q.line_len("a"), q.has_line("c")), (2, 1, false));
        drop((a2, b1));
        assert!(q.is_empty() && !q.has_line("a"));
    }
}
