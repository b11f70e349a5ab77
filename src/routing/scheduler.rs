//! Turning selections into slots: refresh the probe readings, apply the model's strategy,
//! and keep the queue of requests waiting while every server of a model is busy (or
//! lacks the memory to load it). Refusals carry the client's error: 404 for an unknown
//! model, 503 with Retry-After when nothing can serve it now.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

// tokio's clock: the real one, unless a test pauses it to step the queue's wait exactly.
use tokio::time::Instant;

use super::queue::{Queue, Tenant};
use super::resources::{Reservation, ResourceCheck};
use super::select::{routes_of, select_from, ModelRoutesRef, Request, Selection};
use crate::config::{Affinity, AffinityMode, Settings, Strategy};
use crate::fleet::{Fleet, Route, Server, Slot};
use crate::protocol::api::ApiError;
use crate::protocol::body::RoutableBody;

/// A route picked for an attempt, with its concurrency slot and (for a cold load) the
/// memory reserved on its server: held, never read, both given back when this is dropped.
pub(crate) struct Chosen {
    pub(crate) route: Arc<Route>,
    _slot: Slot,
    _reservation: Option<Reservation>,
}

/// Why no route was taken.
pub(crate) enum Refused {
    /// Nothing can serve the request; the client gets this error.
    Error(ApiError),
    /// The client hung up while waiting.
    ClientGone,
}

/// Turns selections into slots: refreshes probe readings, applies the strategy, and keeps
/// the queue of requests waiting for a busy model.
pub(crate) struct Scheduler {
    resources: Arc<ResourceCheck>,
    queue: Arc<Queue>,
    strategy: Strategy,
    model_strategies: HashMap<String, Strategy>,
    panic_mode: bool,
    cooldown: Duration,
    match_num_ctx: bool,
    affinity: Affinity,
    /// load_balancer.replicas is on: warm_first waits for a warm server rather than load
    /// the model elsewhere for a request; the replica keeper places copies instead.
    replicas: bool,
}

impl Scheduler {
    /// The scheduler over `queue` (shared with the replica keeper, which reads its waits).
    pub(crate) fn new(settings: &Settings, resources: Arc<ResourceCheck>, queue: Arc<Queue>) -> Scheduler {
        let lb = &settings.load_balancer;
        Scheduler {
            resources,
            queue,
            strategy: lb.strategy,
            model_strategies: lb.model_strategies.clone(),
            panic_mode: lb.panic_mode,
            cooldown: lb.cooldown,
            match_num_ctx: lb.match_num_ctx,
            affinity: settings.affinity.clone(),
            replicas: lb.replicas.enabled,
        }
    }

    /// The strategy for a virtual model.
    pub(crate) fn strategy_of(&self, model: &str) -> Strategy {
        // Keys are canonical (config/parse.rs), as is every request's model.
        self.model_strategies.get(model).copied().unwrap_or(self.strategy)
    }

    /// A routed request as selection sees it: its body, the API it came in on, the servers
    /// it tried already and the conversation it continues.
    pub(crate) fn request<'a>(
        &self,
        body: &'a RoutableBody,
        native_api: bool,
        tried: &'a [Arc<Server>],
        conversation: Option<u64>,
    ) -> Request<'a> {
        Request {
            model: &body.name,
            native_api,
            tried,
            waiting: 0,
            panic_mode: self.panic_mode,
            num_ctx: body.num_ctx.filter(|_| self.match_num_ctx),
            affinity: conversation.map(|key| (key, self.affinity.load_factor)),
        }
    }

    /// The conversation a request belongs to (affinity.rs): its session header, else, in
    /// prefix mode, the hash of its opening; `None` with affinity off.
    pub(crate) fn conversation(&self, headers: &http::HeaderMap, body: &RoutableBody) -> Option<u64> {
        match self.affinity.mode {
            AffinityMode::Off => None,
            mode => match headers.get(&self.affinity.header) {
                Some(v) if !v.is_empty() => Some(super::affinity::header_key(&body.name, v.as_bytes())),
                _ if mode == AffinityMode::Prefix => body.conversation_key(),
                _ => None,
            },
        }
    }

    /// Takes a slot on the best eligible route, waiting in the queue (in fair order across
    /// tenants) while all are busy; gives up when `client_gone` resolves.
    pub(crate) async fn acquire(
        &self,
        fleet: &Fleet,
        req: &Request<'_>,
        tenant: Tenant,
        retrying: bool,
        client_gone: impl Future<Output = ()>,
    ) -> Result<Chosen, Refused> {
        tokio::pin!(client_gone);
        let deadline = Instant::now() + self.queue.timeout;
        let mut ticket = None;
        let queue_full = || {
            Refused::Error(
                ApiError::new(
                    503,
                    "queue_full",
                    format!(
                        "every server for model {:?} is busy and {} requests are already waiting (load_balancer.queue_size); retry later",
                        req.model, self.queue.size
                    ),
                )
                .retry_after(1),
            )
        };
        if self.queue.has_line(req.model) {
            // Others are already waiting for this model: no overtaking them.
            ticket = Some(self.queue.enter(req.model, tenant, &fleet.released).ok_or_else(queue_full)?);
        }
        loop {
            let released = fleet.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let my_turn = ticket.as_ref().is_none_or(|t| t.at_head());
            let selection = if my_turn {
                // The model's routes, looked up once for this pick.
                let found = routes_of(fleet, req.model);
                if let Some(ModelRoutesRef::Named(mr)) = &found {
                    self.resources.refresh(&mr.routes).await;
                }
                let waiting = if self.replicas { 0 } else { self.queue.line_len(req.model) };
                let req = Request { waiting, ..*req };
                select_from(found.as_ref(), self.strategy_of(req.model), &req, &self.resources)
            } else {
                Selection::AllBusy { memory: None }
            };
            match selection {
                Selection::Chosen(route, slot, reservation) => {
                    return Ok(Chosen { route, _slot: slot, _reservation: reservation })
                }
                Selection::UnknownModel => return Err(Refused::Error(unknown_model(fleet, req.model))),
                Selection::Unavailable(why) => {
                    let what = if retrying { "no other server can serve" } else { "no server can serve" };
                    return Err(Refused::Error(
                        ApiError::new(503, "no_server_available", format!("{what} model {:?} now: {why}", req.model))
                            .retry_after(self.cooldown.as_secs().max(1)),
                    ));
                }
                Selection::Resting(left) => return Err(Refused::Error(rate_limited(req.model, left))),
                Selection::AllBusy { memory } => {
                    if ticket.is_none() {
                        ticket = Some(self.queue.enter(req.model, tenant, &fleet.released).ok_or_else(queue_full)?);
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(Refused::Error(self.timed_out(req.model, memory)));
                    }
                    // Wake on a freed slot, and now and then anyway: health and cooldowns change too.
                    tokio::select! {
                        _ = released => {}
                        _ = tokio::time::sleep(left.min(Duration::from_millis(250))) => {}
                        _ = &mut client_gone => return Err(Refused::ClientGone),
                    }
                }
            }
        }
    }

    fn timed_out(&self, model: &str, memory: Option<String>) -> ApiError {
        let message = match memory {
            Some(why) => format!(
                "no server had the memory to load model {model:?} within {:?} (load_balancer.queue_timeout): {why}",
                self.queue.timeout
            ),
            None => format!(
                "every server for model {model:?} stayed busy for {:?} (load_balancer.queue_timeout); retry later",
                self.queue.timeout
            ),
        };
        ApiError::new(503, "queue_timeout", message).retry_after(self.queue.timeout.as_secs().max(1))
    }
}

/// The 429 a client gets when every server of its model asked to be left alone (429 or 503
/// with Retry-After), with the soonest a server takes requests again.
pub(crate) fn rate_limited(model: &str, left: Duration) -> ApiError {
    let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
    ApiError::new(
        429,
        "rate_limited",
        format!("every server for model {model:?} is rate-limiting drover (429 with Retry-After); retry after {secs}s"),
    )
    .retry_after(secs.max(1))
}

/// A 404 that lists the models a client can ask for.
pub(crate) fn unknown_model(fleet: &Fleet, model: &str) -> ApiError {
    let names = fleet.model_names();
    let known = if names.is_empty() {
        "no models are available yet (no server reported any)".to_string()
    } else {
        let shown: Vec<&str> = names.iter().take(50).map(String::as_str).collect();
        format!("available models: {}", shown.join(", "))
    };
    let shown = model.strip_suffix(":latest").unwrap_or(model);
    ApiError::new(404, "model_not_found", format!("model {shown:?} not found on any server; {known}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Env;
    use crate::fleet::backends::Health;
    use std::future::pending;

    const QUEUE_TIMEOUT: Duration = Duration::from_secs(2);

    /// One server taking one request at a time for model m, and a queue that waits 2 s.
    fn one_slot() -> (Fleet, Scheduler) {
        let yaml = "load_balancer: { max_concurrency: 1, queue_timeout: 2s }\n\
                    routes: [ { virtual_model_name: m, server_url: 'http://a:1' } ]\n";
        let settings = Settings::parse(yaml, None, &Env::default()).unwrap();
        let fleet = Fleet::build(&settings, &[], &[], &Health::new(), None);
        let lb = &settings.load_balancer;
        let queue = Arc::new(Queue::new(lb.queue_size, lb.queue_timeout));
        let scheduler =
            Scheduler::new(&settings, ResourceCheck::new(settings.resources.clone(), Duration::from_secs(1)), queue);
        (fleet, scheduler)
    }

    async fn take(s: &Scheduler, fleet: &Fleet, client_gone: impl Future<Output = ()>) -> Result<Chosen, Refused> {
        s.acquire(fleet, &Request::plain("m", true), Tenant::default(), false, client_gone).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_waits_exactly_queue_timeout_for_a_busy_model() {
        let (fleet, s) = one_slot();
        let Ok(_busy) = take(&s, &fleet, pending()).await else { panic!("the slot is free") };
        let started = Instant::now();
        let Err(Refused::Error(e)) = take(&s, &fleet, pending()).await else { panic!("no slot frees") };
        assert_eq!(started.elapsed(), QUEUE_TIMEOUT, "given up at the timeout, not a tick later");
        assert_eq!((e.status, e.code, e.retry_after), (503, "queue_timeout", Some(2)));
        assert!(s.queue.is_empty(), "its place is given back");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_freed_just_before_the_timeout_is_taken_at_once() {
        let (fleet, s) = one_slot();
        let Ok(busy) = take(&s, &fleet, pending()).await else { panic!("the slot is free") };
        let started = Instant::now();
        let freed = async {
            tokio::time::sleep(QUEUE_TIMEOUT - Duration::from_millis(1)).await;
            drop(busy);
        };
        let (waited, ()) = tokio::join!(take(&s, &fleet, pending()), freed);
        assert!(waited.is_ok(), "served");
        assert_eq!(started.elapsed(), QUEUE_TIMEOUT - Duration::from_millis(1), "woken by the release");
        assert!(s.queue.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_hangs_up_leaves_the_queue_then() {
        let (fleet, s) = one_slot();
        let Ok(_busy) = take(&s, &fleet, pending()).await else { panic!("the slot is free") };
        let started = Instant::now();
        let hang_up = tokio::time::sleep(Duration::from_millis(700));
        assert!(matches!(take(&s, &fleet, hang_up).await, Err(Refused::ClientGone)));
        assert_eq!(started.elapsed(), Duration::from_millis(700));
        assert!(s.queue.is_empty());
    }
}
