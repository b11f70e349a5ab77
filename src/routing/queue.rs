//! The queue: requests waiting for a server with a free slot (or the memory to load their model), in fair order across API keys.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
// tokio's clock: the real one, unless a test pauses it to step the waits exactly.
use tokio::time::Instant;

use crate::telemetry::metrics;

/// Who a request is for, as the queue orders it: its API key (0 without keys), the key's
/// weight, and whether it is batch work (served after every interactive request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tenant {
    pub(crate) key: i64,
    pub(crate) weight: u32,
    pub(crate) batch: bool,
}

impl Default for Tenant {
    fn default() -> Self {
        Tenant { key: 0, weight: 1, batch: false }
    }
}

/// The virtual time one request of a weight-1 key costs (a key of weight w pays 1/w of it).
const COST: u64 = 1_000_000;

/// Requests waiting for a server with a free slot: bounded fleet-wide, one line per model.
/// A line is served in start-time fair order (SFQ): a request's tag is the later of the
/// line's virtual time and its key's last tag plus COST / weight, and the smallest tag goes
/// first, interactive before batch. So a key with a backlog cannot take more than its
/// weight's share of freed slots while others wait, and takes all of them when nobody else
/// does. A waiter takes a slot only at the head of its line; a newcomer joins the line
/// rather than overtaking it.
pub(crate) struct Queue {
    lines: Mutex<HashMap<String, Line>>,
    waiting: AtomicUsize,
    pub(crate) size: usize,
    pub(crate) timeout: Duration,
}

#[derive(Default)]
struct Line {
    /// (batch, tag, number): the first is at the head.
    order: BTreeSet<(bool, u64, u64)>,
    /// The tag of the last request served from this line.
    now: u64,
    /// Each key's last tag in this line.
    last: HashMap<i64, u64>,
    next: u64,
    /// When each waiting request entered, by its number (so the first is the oldest).
    entered: std::collections::BTreeMap<u64, Instant>,
}

/// A place in the queue, left when dropped.
pub(crate) struct Ticket<'a> {
    queue: &'a Queue,
    model: String,
    place: (bool, u64, u64),
    released: Arc<Notify>,
    entered: Instant,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut lines = self.queue.lines.lock().unwrap();
        if let Some(line) = lines.get_mut(&self.model) {
            if line.order.first() == Some(&self.place) {
                // The head leaves (served, or gone): virtual time moves on to its tag.
                line.now = line.now.max(self.place.1);
            }
            line.order.remove(&self.place);
            line.entered.remove(&self.place.2);
            if line.order.is_empty() {
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
    pub(crate) fn at_head(&self) -> bool {
        self.queue.lines.lock().unwrap().get(&self.model).and_then(|l| l.order.first()) == Some(&self.place)
    }
}

impl Queue {
    pub(crate) fn new(size: usize, timeout: Duration) -> Queue {
        Queue { lines: Mutex::new(HashMap::new()), waiting: AtomicUsize::new(0), size, timeout }
    }

    /// Requests waiting now.
    pub(crate) fn len(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn enter(&self, model: &str, tenant: Tenant, released: &Arc<Notify>) -> Option<Ticket<'_>> {
        self.waiting.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| (n < self.size).then_some(n + 1)).ok()?;
        let entered = Instant::now();
        let place = {
            let mut lines = self.lines.lock().unwrap();
            let line = lines.entry(model.to_string()).or_default();
            let last = line.last.get(&tenant.key).copied().unwrap_or(0);
            let tag = line.now.max(last) + COST / u64::from(tenant.weight.max(1));
            line.last.insert(tenant.key, tag);
            line.next += 1;
            let place = (tenant.batch, tag, line.next);
            line.order.insert(place);
            line.entered.insert(line.next, entered);
            place
        };
        metrics::QUEUE_LENGTH.inc();
        Some(Ticket { queue: self, model: model.to_string(), place, released: released.clone(), entered })
    }

    pub(crate) fn has_line(&self, model: &str) -> bool {
        self.lines.lock().unwrap().contains_key(model)
    }

    pub(crate) fn line_len(&self, model: &str) -> usize {
        self.lines.lock().unwrap().get(model).map_or(0, |l| l.order.len())
    }

    /// Each model with requests waiting, and how long its oldest has waited.
    pub(crate) fn waits(&self) -> Vec<(String, Duration)> {
        let lines = self.lines.lock().unwrap();
        // One `now` for every line, so the waits compare as the entries do.
        let now = Instant::now();
        lines.iter().filter_map(|(m, l)| Some((m.clone(), now.duration_since(*l.entered.values().next()?)))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(key: i64, weight: u32, batch: bool) -> Tenant {
        Tenant { key, weight, batch }
    }

    #[tokio::test(start_paused = true)]
    async fn lines_are_per_model_and_bounded() {
        let q = Queue::new(3, Duration::from_secs(1));
        let released = Arc::new(Notify::new());
        let a1 = q.enter("a", Tenant::default(), &released).unwrap();
        tokio::time::advance(Duration::from_millis(100)).await;
        let a2 = q.enter("a", Tenant::default(), &released).unwrap();
        tokio::time::advance(Duration::from_millis(200)).await;
        let b1 = q.enter("b", Tenant::default(), &released).unwrap();
        assert!(q.enter("c", Tenant::default(), &released).is_none(), "bounded fleet-wide");
        assert!(a1.at_head() && !a2.at_head() && b1.at_head(), "one line per model, first come first served");
        tokio::time::advance(Duration::from_millis(50)).await;
        let waits = |q: &Queue| {
            let mut waits: Vec<(String, u128)> = q.waits().into_iter().map(|(m, d)| (m, d.as_millis())).collect();
            waits.sort();
            waits
        };
        assert_eq!(waits(&q), [("a".to_string(), 350), ("b".to_string(), 50)], "each line's oldest");
        drop(a1);
        assert!(a2.at_head());
        assert_eq!((q.len(), q.line_len("a"), q.has_line("c")), (2, 1, false));
        assert_eq!(waits(&q), [("a".to_string(), 250), ("b".to_string(), 50)], "a2 is a's oldest now");
        drop((a2, b1));
        assert!(q.is_empty() && !q.has_line("a"));
    }

    /// Serves the head of line "m" until it is empty: the keys in the order served.
    fn served(q: &Queue, mut tickets: Vec<(i64, Ticket<'_>)>) -> Vec<i64> {
        let mut order = Vec::new();
        while !tickets.is_empty() {
            let i = tickets.iter().position(|(_, t)| t.at_head()).expect("one is at the head");
            order.push(tickets.remove(i).0);
        }
        assert!(q.is_empty());
        order
    }

    #[test]
    fn a_flooding_key_gets_its_share_and_a_light_key_is_not_stuck_behind_it() {
        let q = Queue::new(100, Duration::from_secs(1));
        let released = Arc::new(Notify::new());
        // Key 1 queues ten requests first; key 2 then two.
        let mut tickets: Vec<(i64, Ticket)> =
            (0..10).map(|_| (1, q.enter("m", tenant(1, 1, false), &released).unwrap())).collect();
        tickets.extend((0..2).map(|_| (2, q.enter("m", tenant(2, 1, false), &released).unwrap())));
        let order = served(&q, tickets);
        assert_eq!(&order[..4], &[1, 2, 1, 2], "alternating while both wait: {order:?}");

        // Weight 3 against 1: three freed slots to one for as long as both wait.
        let mut tickets: Vec<(i64, Ticket)> =
            (0..8).map(|_| (1, q.enter("m", tenant(1, 1, false), &released).unwrap())).collect();
        tickets.extend((0..6).map(|_| (2, q.enter("m", tenant(2, 3, false), &released).unwrap())));
        let order = served(&q, tickets);
        let heavy_in_first_8 = order[..8].iter().filter(|&&k| k == 2).count();
        assert_eq!(heavy_in_first_8, 6, "{order:?}");
    }

    #[test]
    fn interactive_requests_go_before_batch_ones() {
        let q = Queue::new(100, Duration::from_secs(1));
        let released = Arc::new(Notify::new());
        let mut tickets: Vec<(i64, Ticket)> =
            (0..3).map(|_| (1, q.enter("m", tenant(1, 5, true), &released).unwrap())).collect();
        tickets.push((2, q.enter("m", tenant(2, 1, false), &released).unwrap()));
        assert_eq!(served(&q, tickets), [2, 1, 1, 1]);
    }
}
