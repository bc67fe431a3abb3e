//! Capacity: how many requests of one route (one model) run at once across every client, in
//! this instance, and the fair, bounded wait of the requests that find it full.
//!
//! `capacity = adaptive` on the attribute gives a route a limit that follows the handler's
//! latency with TCP Vegas, as Netflix's concurrency-limits has it (the implementation is
//! `tower-acc`'s [`Vegas`]): the queue inside the model is estimated as `limit × (1 −
//! no_load_latency / latency)`, and the limit grows while that queue is short and shrinks
//! while it is long. `capacity = N` is a fixed limit.
//!
//! When the limit is reached, a request waits (with `queue = "2s"`) in its client's queue;
//! the queues are served round robin across clients, higher [`Priority`] first, as
//! Kubernetes' API Priority and Fairness serves its flows. A client holds at most its fair
//! share of the capacity: the limit divided among the clients with requests waiting or in
//! flight, at least one each, so that a client with many connections cannot starve a client
//! with one. A request that finds its client's queue full, or waits past the bound, is shed
//! (the 503 of an overloaded server, not the 429 of a client over its limit).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tower_acc::{Algorithm as _, Vegas};

use crate::limits::Priority;

/// How many requests one client may have waiting in one route's queue.
pub const QUEUE_PER_CLIENT: usize = 16;

/// How many requests may wait in one route's queue in all: past it, the newest waiting
/// request of the lowest priority is shed for a request of a higher one.
pub const QUEUE_TOTAL: usize = 4096;

/// How often, at least, the no-load latency is measured again (from a request that ran while
/// the route was at most half busy, so that it is a true no-load sample).
const REBASELINE: Duration = Duration::from_secs(30);

/// The limit on a route's requests in flight, across every client (`capacity =` on the
/// attribute).
///
/// ```
/// use ratelimit_core::CapacityLimit;
///
/// let adaptive = CapacityLimit::adaptive().min(2).max(64);
/// assert_eq!(adaptive.to_string(), "adaptive(min = 2, max = 64)");
/// assert_eq!(CapacityLimit::fixed(60).to_string(), "60");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapacityLimit {
    kind: Kind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Adaptive { min: u32, max: u32 },
    Fixed(u32),
    Unlimited,
}

impl CapacityLimit {
    /// A limit that follows the handler's latency (TCP Vegas), between 1 and 256 unless
    /// bounded with [`min`](CapacityLimit::min) and [`max`](CapacityLimit::max). It starts
    /// at its minimum, so that the first latencies it sees are the model's no-load latency.
    pub const fn adaptive() -> CapacityLimit {
        CapacityLimit {
            kind: Kind::Adaptive { min: 1, max: 256 },
        }
    }

    /// At most `limit` requests in flight (at least 1).
    pub const fn fixed(limit: u32) -> CapacityLimit {
        CapacityLimit {
            kind: Kind::Fixed(if limit == 0 { 1 } else { limit }),
        }
    }

    /// No limit: in flight, latency and queue are only measured (metrics).
    pub const fn unlimited() -> CapacityLimit {
        CapacityLimit {
            kind: Kind::Unlimited,
        }
    }

    /// The adaptive limit's floor (at least 1). No effect on a fixed limit.
    pub const fn min(mut self, min: u32) -> CapacityLimit {
        if let Kind::Adaptive { max, .. } = self.kind {
            let min = if min == 0 { 1 } else { min };
            self.kind = Kind::Adaptive {
                min,
                max: if max < min { min } else { max },
            };
        }
        self
    }

    /// The adaptive limit's ceiling (at least its floor). No effect on a fixed limit.
    pub const fn max(mut self, max: u32) -> CapacityLimit {
        if let Kind::Adaptive { min, .. } = self.kind {
            self.kind = Kind::Adaptive {
                min,
                max: if max < min { min } else { max },
            };
        }
        self
    }

    /// The limit before the first request: an adaptive limit's floor, a fixed limit, or
    /// `None` when unlimited.
    pub const fn initial(&self) -> Option<u32> {
        match self.kind {
            Kind::Adaptive { min, .. } => Some(min),
            Kind::Fixed(limit) => Some(limit),
            Kind::Unlimited => None,
        }
    }

    /// Whether the limit follows latency.
    pub const fn is_adaptive(&self) -> bool {
        matches!(self.kind, Kind::Adaptive { .. })
    }
}

impl fmt::Display for CapacityLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Kind::Adaptive { min, max } => write!(f, "adaptive(min = {min}, max = {max})"),
            Kind::Fixed(limit) => write!(f, "{limit}"),
            Kind::Unlimited => f.write_str("unlimited"),
        }
    }
}

/// What a route's capacity holds now.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CapacityStats {
    /// The limit on requests in flight now (`None`: unlimited).
    pub limit: Option<u32>,
    /// Requests in flight.
    pub in_flight: u32,
    /// Requests waiting.
    pub queued: u32,
    /// Clients with requests in flight or waiting.
    pub clients: u32,
    /// The handler's latency, a moving average over about the last twenty requests.
    pub latency: Duration,
    /// The lowest latency seen since the last re-measure: the model's latency without a
    /// queue, which the adaptive limit compares with (`None` before the first request).
    pub no_load_latency: Option<Duration>,
    /// Requests admitted, at once or after waiting.
    pub admitted: u64,
    /// Requests that waited before they were admitted.
    pub waited: u64,
    /// Requests shed: the queue full, or the wait past its bound.
    pub shed: u64,
}

/// Why a request was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shed {
    /// The route is at its limit and the request may not wait (no `queue`).
    Full,
    /// The client's queue, or the route's, is full.
    QueueFull,
    /// The request waited as long as it may.
    Timeout,
}

/// One route's capacity in this instance.
pub struct Capacity {
    spec: CapacityLimit,
    state: Mutex<State>,
}

impl fmt::Debug for Capacity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Capacity")
            .field("spec", &self.spec)
            .field("stats", &self.stats())
            .finish()
    }
}

struct State {
    vegas: Option<Vegas>,
    /// When the no-load latency was last measured afresh.
    baseline_at: Instant,
    no_load: Option<Duration>,
    limit: usize,
    in_flight: usize,
    queued: usize,
    clients: HashMap<u64, Client, foldhash::fast::RandomState>,
    /// The clients with requests waiting at each priority, in the order they are served.
    rings: [VecDeque<u64>; 3],
    next_waiter: u64,
    latency_ns: f64,
    admitted: u64,
    waited: u64,
    shed: u64,
}

#[derive(Default)]
struct Client {
    in_flight: usize,
    waiting: [VecDeque<Waiter>; 3],
}

impl Client {
    fn queued(&self) -> usize {
        self.waiting.iter().map(VecDeque::len).sum()
    }

    fn is_idle(&self) -> bool {
        self.in_flight == 0 && self.waiting.iter().all(VecDeque::is_empty)
    }
}

struct Waiter {
    id: u64,
    grant: oneshot::Sender<()>,
}

fn vegas(initial: usize, max: u32) -> Vegas {
    Vegas::builder()
        .initial_limit(initial)
        .max_limit(max as usize)
        // No probing by resetting the no-load latency to the latest sample, which under a
        // steady overload is itself queued: re-measured from a half-idle route instead.
        .probe_multiplier(0)
        .build()
}

impl Capacity {
    /// A route's capacity under `spec`.
    pub fn new(spec: CapacityLimit) -> Capacity {
        let (vegas, limit) = match spec.kind {
            Kind::Adaptive { min, max } => (Some(self::vegas(min as usize, max)), min as usize),
            Kind::Fixed(limit) => (None, limit as usize),
            Kind::Unlimited => (None, usize::MAX),
        };
        Capacity {
            spec,
            state: Mutex::new(State {
                vegas,
                baseline_at: Instant::now(),
                no_load: None,
                limit,
                in_flight: 0,
                queued: 0,
                clients: HashMap::default(),
                rings: Default::default(),
                next_waiter: 0,
                latency_ns: 0.0,
                admitted: 0,
                waited: 0,
                shed: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics under the lock; were it poisoned, its counts are still whole.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What it holds now.
    pub fn stats(&self) -> CapacityStats {
        let state = self.lock();
        CapacityStats {
            limit: (state.limit != usize::MAX).then(|| state.limit.min(u32::MAX as usize) as u32),
            in_flight: state.in_flight as u32,
            queued: state.queued as u32,
            clients: state.clients.len() as u32,
            latency: Duration::from_nanos(state.latency_ns as u64),
            no_load_latency: state.no_load,
            admitted: state.admitted,
            waited: state.waited,
            shed: state.shed,
        }
    }

    /// Admits a request of `client` (a hash of its key) at `priority`: at once when the route
    /// is under its limit and the client under its fair share, else after waiting up to
    /// `wait` (not at all without one). Dropping the future leaves the queue at once and
    /// takes nothing.
    pub async fn acquire(
        self: &Arc<Self>,
        client: u64,
        priority: Priority,
        wait: Option<Duration>,
    ) -> Result<Permit, Shed> {
        let receiver = {
            let mut state = self.lock();
            if state.admits(client, priority) {
                return Ok(self.admit(&mut state, client));
            }
            let Some(wait) = wait.filter(|w| !w.is_zero()) else {
                state.shed += 1;
                return Err(Shed::Full);
            };
            match state.enqueue(client, priority) {
                Some((id, receiver)) => (id, receiver, wait),
                None => {
                    state.shed += 1;
                    return Err(Shed::QueueFull);
                }
            }
        };
        let (id, receiver, wait) = receiver;
        let mut waiting = Waiting {
            capacity: self,
            client,
            priority,
            id,
            receiver: Some(receiver),
        };
        let granted = tokio::time::timeout(
            wait,
            waiting.receiver.as_mut().expect("held until taken below"),
        )
        .await;
        let receiver = waiting.receiver.take();
        drop(waiting); // disarmed: what happened is settled below, under the lock
        let mut state = self.lock();
        match granted {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                // Shed for a request of a higher priority.
                state.shed += 1;
                return Err(Shed::QueueFull);
            }
            Err(_) => {
                let mut receiver = receiver.expect("taken once");
                if receiver.try_recv().is_err() {
                    state.leave(client, priority, id);
                    state.shed += 1;
                    return Err(Shed::Timeout);
                }
                // Granted as the wait ran out: take it.
            }
        }
        state.waited += 1;
        Ok(Permit {
            capacity: Arc::clone(self),
            client,
            admitted_at: Instant::now(),
        })
    }

    fn admit(self: &Arc<Self>, state: &mut State, client: u64) -> Permit {
        state.in_flight += 1;
        state.admitted += 1;
        state.clients.entry(client).or_default().in_flight += 1;
        Permit {
            capacity: Arc::clone(self),
            client,
            admitted_at: Instant::now(),
        }
    }

    /// A request of `client` completed (or was dropped) `latency` after its admission; a
    /// grant never used gives no latency.
    fn release(&self, client: u64, latency: Option<Duration>) {
        let mut state = self.lock();
        let in_flight = state.in_flight;
        state.in_flight = in_flight.saturating_sub(1);
        if let Some(c) = state.clients.get_mut(&client) {
            c.in_flight = c.in_flight.saturating_sub(1);
            if c.is_idle() {
                state.clients.remove(&client);
            }
        }
        if let Some(latency) = latency {
            state.sample(&self.spec, latency, in_flight, Instant::now());
        }
        state.dispatch();
    }

    /// Feeds one latency sample, as a request completing with `in_flight` in flight at `now`
    /// would (for tests of the limit's arithmetic).
    #[cfg(test)]
    fn sample(&self, latency: Duration, in_flight: usize, now: Instant) {
        let mut state = self.lock();
        state.sample(&self.spec, latency, in_flight, now);
    }
}

impl State {
    /// Whether `client` may start a request at `priority` now: the route under its limit,
    /// the client under its fair share, and no request of the client's waiting ahead.
    fn admits(&self, client: u64, priority: Priority) -> bool {
        if self.in_flight >= self.limit {
            return false;
        }
        let (held, waiting_ahead) = match self.clients.get(&client) {
            Some(c) => (
                c.in_flight,
                c.waiting[priority.index()..].iter().any(|q| !q.is_empty()),
            ),
            None => (0, false),
        };
        let active = self.clients.len() + usize::from(!self.clients.contains_key(&client));
        !waiting_ahead && held < self.share(active)
    }

    /// The fair share of each of `active` clients.
    fn share(&self, active: usize) -> usize {
        (self.limit / active.max(1)).max(1)
    }

    /// Queues a request; `None` when its client's queue is full, or the route's is and holds
    /// nothing of a lower priority to shed.
    fn enqueue(&mut self, client: u64, priority: Priority) -> Option<(u64, oneshot::Receiver<()>)> {
        if self
            .clients
            .get(&client)
            .is_some_and(|c| c.queued() >= QUEUE_PER_CLIENT)
        {
            return None;
        }
        if self.queued >= QUEUE_TOTAL && !self.shed_lower_than(priority) {
            return None;
        }
        let (grant, receiver) = oneshot::channel();
        let id = self.next_waiter;
        self.next_waiter += 1;
        let c = self.clients.entry(client).or_default();
        let queue = &mut c.waiting[priority.index()];
        if queue.is_empty() {
            self.rings[priority.index()].push_back(client);
        }
        queue.push_back(Waiter { id, grant });
        self.queued += 1;
        Some((id, receiver))
    }

    /// Sheds the newest waiting request of the lowest priority below `priority` (its waiter
    /// sees its sender dropped): whether there was one.
    fn shed_lower_than(&mut self, priority: Priority) -> bool {
        for lower in Priority::ALL.iter().take(priority.index()) {
            let ring = &self.rings[lower.index()];
            if let Some(&client) = ring.back() {
                if let Some(c) = self.clients.get_mut(&client) {
                    if c.waiting[lower.index()].pop_back().is_some() {
                        self.queued -= 1;
                        if c.waiting[lower.index()].is_empty() {
                            self.rings[lower.index()].retain(|&k| k != client);
                        }
                        if c.is_idle() {
                            self.clients.remove(&client);
                        }
                        return true;
                    }
                }
            }
        }
        false
    }

    /// Takes waiter `id` of `client` out of the queue (it timed out or hung up).
    fn leave(&mut self, client: u64, priority: Priority, id: u64) {
        let Some(c) = self.clients.get_mut(&client) else {
            return;
        };
        let queue = &mut c.waiting[priority.index()];
        let before = queue.len();
        queue.retain(|w| w.id != id);
        if queue.len() < before {
            self.queued -= 1;
        }
        if queue.is_empty() {
            self.rings[priority.index()].retain(|&k| k != client);
        }
        if c.is_idle() {
            self.clients.remove(&client);
        }
        // One client fewer may raise everyone's share.
        self.dispatch();
    }

    /// Admits waiting requests while the route is under its limit: the highest priority
    /// first, round robin across clients within one, each client under its fair share.
    fn dispatch(&mut self) {
        'grant: while self.in_flight < self.limit && self.queued > 0 {
            let share = self.share(self.clients.len());
            for priority in Priority::ALL.iter().rev() {
                let p = priority.index();
                for _ in 0..self.rings[p].len() {
                    let client = self.rings[p].pop_front().expect("counted");
                    let Some(c) = self.clients.get_mut(&client) else {
                        continue;
                    };
                    if c.waiting[p].is_empty() {
                        continue;
                    }
                    if c.in_flight >= share {
                        self.rings[p].push_back(client);
                        continue;
                    }
                    let waiter = c.waiting[p].pop_front().expect("not empty");
                    self.queued -= 1;
                    if !c.waiting[p].is_empty() {
                        self.rings[p].push_back(client);
                    }
                    if waiter.grant.send(()).is_ok() {
                        c.in_flight += 1;
                        self.in_flight += 1;
                        self.admitted += 1;
                    } else if c.is_idle() {
                        self.clients.remove(&client);
                    }
                    continue 'grant;
                }
            }
            break; // every waiting client is at its share
        }
    }

    fn sample(&mut self, spec: &CapacityLimit, latency: Duration, in_flight: usize, now: Instant) {
        let ns = latency.as_nanos() as f64;
        self.latency_ns = if self.latency_ns == 0.0 {
            ns
        } else {
            self.latency_ns * 0.9 + ns * 0.1
        };
        let Kind::Adaptive { min, max } = spec.kind else {
            return;
        };
        let Some(vegas) = self.vegas.as_mut() else {
            return;
        };
        // A request that ran while the route was at most half busy saw no queue: when the
        // no-load latency is old, it is measured again from such a request, so that a model
        // that became slower for good is not taken for a queued one forever.
        let half_idle = in_flight * 2 <= self.limit;
        if half_idle && now.saturating_duration_since(self.baseline_at) >= REBASELINE {
            *vegas = self::vegas(self.limit, max);
            self.baseline_at = now;
            self.no_load = None;
        }
        if self.no_load.is_none_or(|known| latency < known) {
            self.no_load = Some(latency);
        }
        vegas.update(latency, in_flight, false, false);
        self.limit = vegas
            .max_concurrency()
            .clamp(min as usize, max as usize)
            .max(1);
    }
}

/// A request admitted by a route's capacity: given back when dropped (the handler's future
/// completed or was dropped), with the time since admission as a latency sample.
pub struct Permit {
    capacity: Arc<Capacity>,
    client: u64,
    admitted_at: Instant,
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("client", &self.client)
            .field("admitted_at", &self.admitted_at)
            .finish()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.capacity
            .release(self.client, Some(self.admitted_at.elapsed()));
    }
}

/// A request in the queue: leaves it when dropped (the client hung up), and gives back a
/// grant that arrived as it was dropped.
struct Waiting<'a> {
    capacity: &'a Arc<Capacity>,
    client: u64,
    priority: Priority,
    id: u64,
    receiver: Option<oneshot::Receiver<()>>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let Some(mut receiver) = self.receiver.take() else {
            return;
        };
        let granted = {
            let mut state = self.capacity.lock();
            let granted = receiver.try_recv().is_ok();
            if !granted {
                state.leave(self.client, self.priority, self.id);
            }
            granted
        };
        if granted {
            self.capacity.release(self.client, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(c: &Capacity) -> CapacityStats {
        c.stats()
    }

    #[tokio::test]
    async fn a_fixed_limit_admits_up_to_it_and_sheds_without_a_queue() {
        let c = Arc::new(Capacity::new(CapacityLimit::fixed(2)));
        let a = c.acquire(1, Priority::Normal, None).await.unwrap();
        let b = c.acquire(2, Priority::Normal, None).await.unwrap();
        assert_eq!(
            c.acquire(3, Priority::Normal, None).await.unwrap_err(),
            Shed::Full
        );
        drop(a);
        let _c = c.acquire(3, Priority::Normal, None).await.unwrap();
        drop(b);
        assert_eq!(stats(&c).in_flight, 1);
        assert_eq!(stats(&c).shed, 1);
    }

    #[tokio::test]
    async fn waiting_clients_are_served_round_robin_within_their_share() {
        let c = Arc::new(Capacity::new(CapacityLimit::fixed(2)));
        // Client 1 fills the capacity and queues three more; client 2 queues one.
        let first = c.acquire(1, Priority::Normal, None).await.unwrap();
        let second = c.acquire(1, Priority::Normal, None).await.unwrap();
        let wait = Some(Duration::from_secs(5));
        let mut ones: Vec<_> = (0..3)
            .map(|_| {
                let c = Arc::clone(&c);
                tokio::spawn(async move { c.acquire(1, Priority::Normal, wait).await })
            })
            .collect();
        tokio::task::yield_now().await;
        let two = {
            let c = Arc::clone(&c);
            tokio::spawn(async move { c.acquire(2, Priority::Normal, wait).await })
        };
        while stats(&c).queued < 4 {
            tokio::task::yield_now().await;
        }
        // Two clients: a share of one each. Client 1 holds two, so the first slot freed goes
        // to client 2, whichever came first.
        drop(first);
        let two = two.await.unwrap().unwrap();
        assert_eq!(stats(&c).queued, 3);
        drop(second);
        drop(two);
        let next = ones.remove(0).await.unwrap().unwrap();
        drop(next);
        for one in ones {
            drop(one.await.unwrap().unwrap());
        }
        assert_eq!(stats(&c).in_flight, 0);
        assert_eq!(stats(&c).clients, 0);
    }

    #[tokio::test]
    async fn a_dropped_waiter_leaves_the_queue_and_takes_nothing() {
        let c = Arc::new(Capacity::new(CapacityLimit::fixed(1)));
        let held = c.acquire(1, Priority::Normal, None).await.unwrap();
        let waiter = {
            let c = Arc::clone(&c);
            tokio::spawn(async move {
                c.acquire(2, Priority::Normal, Some(Duration::from_secs(30)))
                    .await
            })
        };
        while stats(&c).queued == 0 {
            tokio::task::yield_now().await;
        }
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(stats(&c).queued, 0);
        drop(held);
        assert_eq!(stats(&c).in_flight, 0);
        assert_eq!(stats(&c).clients, 0);
        let _again = c.acquire(3, Priority::Normal, None).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_past_its_bound_is_shed() {
        let c = Arc::new(Capacity::new(CapacityLimit::fixed(1)));
        let _held = c.acquire(1, Priority::Normal, None).await.unwrap();
        let shed = c
            .acquire(2, Priority::Normal, Some(Duration::from_millis(200)))
            .await
            .unwrap_err();
        assert_eq!(shed, Shed::Timeout);
        assert_eq!(stats(&c).queued, 0);
        assert_eq!(stats(&c).clients, 1);
    }

    #[tokio::test]
    async fn a_higher_priority_is_served_first() {
        let c = Arc::new(Capacity::new(CapacityLimit::fixed(1)));
        let held = c.acquire(9, Priority::Normal, None).await.unwrap();
        let wait = Some(Duration::from_secs(5));
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (client, priority) in [
            (1, Priority::Normal),
            (2, Priority::Low),
            (3, Priority::High),
        ] {
            let (capacity, order) = (Arc::clone(&c), Arc::clone(&order));
            tasks.push(tokio::spawn(async move {
                let permit = capacity.acquire(client, priority, wait).await.unwrap();
                order.lock().unwrap().push(client);
                drop(permit);
            }));
            while stats(&c).queued < tasks.len() as u32 {
                tokio::task::yield_now().await;
            }
        }
        drop(held);
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), [3, 1, 2]);
    }

    #[tokio::test]
    async fn a_full_queue_sheds_the_lowest_priority_for_a_higher_one() {
        let c = Arc::new(Capacity::new(CapacityLimit::fixed(1)));
        let _held = c.acquire(0, Priority::Normal, None).await.unwrap();
        let mut state = c.lock();
        for client in 0..QUEUE_TOTAL as u64 {
            let priority = if client == 7 {
                Priority::Low
            } else {
                Priority::Normal
            };
            assert!(state.enqueue(1000 + client, priority).is_some());
        }
        assert!(state.enqueue(1, Priority::Low).is_none()); // nothing lower to shed
        assert!(state.enqueue(2, Priority::High).is_some()); // the low one is shed
        assert_eq!(state.queued, QUEUE_TOTAL);
        assert!(!state.clients.contains_key(&1007));
        assert!(state.enqueue(3, Priority::Normal).is_none()); // none lower is left
    }

    /// Vegas as published (Netflix's concurrency-limits, `VegasLimit`): with the queue
    /// estimated as `limit × (1 − rtt_noload / rtt)`, the limit grows by `beta` while that
    /// queue is at most `threshold` (log10 of the limit, at least 1), grows by log10 below
    /// `alpha` (3 × log10), shrinks by log10 above `beta` (6 × log10), and holds between.
    /// Against a model of `units` parallel units whose latency grows in proportion beyond
    /// them, it settles with a queue of 3 to 6: between `units + 3` and `units + 6`.
    #[test]
    fn the_adaptive_limit_settles_on_the_model_plus_a_short_queue() {
        let c = Capacity::new(CapacityLimit::adaptive().max(64));
        let base = Duration::from_millis(200);
        let units = 4.0;
        let start = Instant::now();
        let mut limits = Vec::new();
        for i in 0..400u32 {
            let limit = c.stats().limit.unwrap() as f64;
            let latency = base.mul_f64((limit / units).max(1.0));
            c.sample(
                latency,
                limit as usize,
                start + Duration::from_millis(50) * i,
            );
            limits.push(c.stats().limit.unwrap());
        }
        let settled = &limits[50..];
        assert!(settled.iter().all(|&l| (7..=10).contains(&l)), "{limits:?}");
        assert_eq!(c.stats().no_load_latency, Some(base));
    }

    #[test]
    fn a_limit_is_shrunk_at_once_from_a_high_start() {
        // The published step: from 60 with the queue past beta, minus log10(60) = 1 a sample.
        let c = Capacity::new(CapacityLimit::adaptive().min(60).max(64));
        let now = Instant::now();
        c.sample(Duration::from_millis(200), 60, now); // the baseline
        c.sample(Duration::from_millis(3000), 60, now);
        assert_eq!(c.stats().limit, Some(60)); // clamped at the floor
        let c = Capacity::new(CapacityLimit::adaptive().max(64));
        c.sample(Duration::from_millis(200), 1, now);
        // Queue 0 ≤ threshold 1: + beta (6 × 1).
        c.sample(Duration::from_millis(200), 1, now);
        assert_eq!(c.stats().limit, Some(7));
    }

    #[test]
    fn the_no_load_latency_is_measured_again_from_a_half_idle_route() {
        let c = Capacity::new(CapacityLimit::adaptive().max(64));
        let now = Instant::now();
        c.sample(Duration::from_millis(100), 1, now);
        assert_eq!(c.stats().no_load_latency, Some(Duration::from_millis(100)));
        // The model became slower for good: a half-idle sample after REBASELINE resets it.
        c.sample(Duration::from_millis(300), 0, now + REBASELINE);
        assert_eq!(c.stats().no_load_latency, Some(Duration::from_millis(300)));
    }
}
