//! State shared by several drovers through Redis (`state.redis_url`, or `REDIS_URL`):
//! rate-limit buckets and cooldowns. Optional: without Redis, or while it is unreachable,
//! each drover uses its own buckets and cooldowns (limits.rs, fleet.rs).
//!
//! **Limits.** The same token bucket as limits.rs (GCRA's admission rule), kept in a Redis
//! hash per bucket (`t` tokens, `at` microseconds) and run by one Lua script with Redis's own
//! clock (`TIME`), so every drover sees one bucket and one time. A request's buckets (its
//! client address, its key's requests and its key's tokens) are judged in one script call:
//! all pass and are taken together, or none is taken and the first refusal says how long to
//! wait. Tokens are debited after the answer, in batches every 100 ms, off the request path.
//!
//! **Leases.** A limit under `EXACT_BELOW` per minute asks Redis on every request: exact
//! across drovers. A larger one also takes a lease, up to a tenth of a second of the limit
//! (at most `LEASE_MAX`), and admits from it here until it is spent or a second old; the
//! "admit while above zero" check of a tokens-per-minute limit is likewise trusted for
//! `CHECK_TRUST`. Leased tokens are taken from the shared bucket, so the fleet never admits
//! more than the limit; an unspent lease that expires is lost, so it may admit up to a tenth
//! of a second of the limit less per drover. This keeps Redis off the path of most requests.
//!
//! **Cooldowns.** A server that a drover puts into cooldown is written as
//! `drover:cooldown:<url>` with the cooldown as its expiry; every drover reads those keys
//! every 500 ms and cools the server down for what is left, so the others follow within
//! a second.
//!
//! **Redis down.** A failed or slow call (over `state.redis_timeout`) marks Redis down:
//! requests use the local buckets at once, the log says so once, /health reports it, and a
//! background ping every 500 ms brings Redis back into use when it answers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde_json::{json, Value};

use crate::edge::keys::Key;
use crate::fleet::Fleet;
use crate::storage::redis::{Redis, RedisUrlError, Reply};

/// Judges KEYS[i] as a bucket of ARGV[3i-1] per minute taking ARGV[3i] tokens (0: admit while
/// above zero, take nothing) and up to ARGV[3i+1] more as a lease when ARGV[1] is "admit", or
/// takes ARGV[3] from KEYS[1] whatever is left when it is "debit". Returns {0, 0, leased per
/// key...}, or {i, ms to wait} for the first refusal (nothing taken).
const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local state = {}
local granted = {0, 0}
for i, key in ipairs(KEYS) do
  local per = tonumber(ARGV[3 * i - 1])
  local n = tonumber(ARGV[3 * i])
  local lease = tonumber(ARGV[3 * i + 1])
  local b = redis.call('HMGET', key, 't', 'at')
  local tokens = tonumber(b[1]) or per
  local at = tonumber(b[2]) or now
  tokens = math.min(per, tokens + math.max(0, now - at) * per / 60000000)
  local extra = 0
  if ARGV[1] == 'admit' then
    local ok
    if n > 0 then ok = tokens >= n else ok = tokens > 0 end
    if not ok then
      local need = n
      if n == 0 then need = 0.000001 end
      return {i, math.max(1, math.ceil((need - tokens) * 60000 / per))}
    end
    if n > 0 and lease > 0 then extra = math.max(0, math.min(lease, math.floor(tokens - n))) end
  end
  state[i] = {per, tokens - n - extra}
  granted[i + 2] = extra
end
for i, key in ipairs(KEYS) do
  local per, left = state[i][1], state[i][2]
  redis.call('HSET', key, 't', tostring(left), 'at', tostring(now))
  redis.call('PEXPIRE', key, math.ceil((per - left) * 60000 / per) + 1000)
end
return granted
"#;

/// How often cooldowns are read, and a down Redis pinged.
const POLL: Duration = Duration::from_millis(500);
/// How often answers' token counts are taken from the shared buckets.
const FLUSH: Duration = Duration::from_millis(100);

/// Limits below this many per minute take no lease: every request asks Redis.
const EXACT_BELOW: u64 = 600;
/// The most a lease holds.
const LEASE_MAX: u64 = 100;
/// How long a lease, or a passed "above zero" check, is used.
const LEASE_LIFE: Duration = Duration::from_secs(1);
const CHECK_TRUST: Duration = Duration::from_millis(100);

/// Tokens leased here from a shared bucket, or until when its check is trusted.
struct Lease {
    tokens: u64,
    until: std::time::Instant,
}

/// One bucket of a request: its Redis key, its limit, and the tokens it takes (0: admit
/// while above zero).
pub(crate) struct BucketUse {
    pub(crate) key: String,
    pub(crate) per_minute: u64,
    pub(crate) take: u64,
}

impl BucketUse {
    /// A client address's request bucket (limits.client_requests_per_minute).
    pub(crate) fn client(ip: std::net::IpAddr, per_minute: u64) -> BucketUse {
        let client = crate::edge::limits::client_of(ip);
        BucketUse { key: format!("drover:rl:client:{client}"), per_minute, take: 1 }
    }

    /// An API key's buckets, in the order of `Key::limits` (which its refusal numbers).
    pub(crate) fn of_key(key: &Key) -> Vec<BucketUse> {
        key.limits()
            .into_iter()
            .map(|(kind, per_minute)| BucketUse {
                key: format!("drover:rl:key:{}:{kind}", key.record.id),
                per_minute,
                take: u64::from(kind == "req"),
            })
            .collect()
    }

    /// The Redis name of an API key's token bucket and its limit, which answers' tokens are
    /// debited from; `None` for a key without tokens_per_minute.
    pub(crate) fn key_tokens(key: &Key) -> Option<(String, u64)> {
        let n = key.record.tokens_per_minute?;
        Some((format!("drover:rl:key:{}:tok", key.record.id), n.max(1) as u64))
    }
}

pub(crate) struct Shared {
    redis: Option<Redis>,
    leases: Mutex<std::collections::HashMap<String, Lease>>,
    /// Tokens to take from shared buckets (answers' token counts), written every `FLUSH`.
    debits: Mutex<std::collections::HashMap<String, (u64, u64)>>,
    up: AtomicBool,
    /// The script's SHA-1 once loaded (EVALSHA); loaded again after a Redis restart.
    sha: Mutex<Option<String>>,
    last_error: Mutex<Option<String>>,
}

impl Shared {
    pub(crate) fn new(url: Option<&str>, timeout: Duration) -> Result<Shared, RedisUrlError> {
        let redis = url.map(|u| Redis::from_url(u, timeout)).transpose()?;
        Ok(Shared {
            up: AtomicBool::new(redis.is_some()),
            redis,
            leases: Default::default(),
            debits: Default::default(),
            sha: Mutex::new(None),
            last_error: Mutex::new(None),
        })
    }

    /// No shared state: every drover on its own.
    #[cfg(test)]
    pub(crate) fn none() -> Shared {
        Shared {
            redis: None,
            up: AtomicBool::new(false),
            leases: Default::default(),
            debits: Default::default(),
            sha: Mutex::new(None),
            last_error: Mutex::new(None),
        }
    }

    pub(crate) fn configured(&self) -> bool {
        self.redis.is_some()
    }

    /// Redis configured and answering: limits and cooldowns go through it.
    pub(crate) fn active(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// For /health: absent without Redis.
    pub(crate) fn report(&self) -> Option<Value> {
        let redis = self.redis.as_ref()?;
        Some(if self.active() {
            json!({ "state": "ok", "redis": redis.address() })
        } else {
            json!({ "state": "unreachable", "redis": redis.address(), "error": self.last_error.lock().unwrap().clone(),
                    "serving": "per-process limits and cooldowns until Redis answers" })
        })
    }

    fn down(&self, why: impl std::fmt::Display) {
        if self.up.swap(false, Ordering::Relaxed) {
            log::warn!(
                "shared state: Redis unreachable ({why}); limits and cooldowns are per process until it answers"
            );
        }
        *self.last_error.lock().unwrap() = Some(why.to_string());
    }

    /// Runs the bucket script; `None` when Redis is not in use (the caller decides locally).
    async fn script(&self, keys: &[&str], args: &[String]) -> Option<Reply> {
        let redis = self.redis.as_ref().filter(|_| self.active())?;
        for _ in 0..2 {
            let sha = self.sha.lock().unwrap().clone();
            let sha = match sha {
                Some(s) => s,
                None => match redis.query(&[b"SCRIPT", b"LOAD", SCRIPT.as_bytes()]).await {
                    Ok(Reply::Bulk(Some(s))) => {
                        let s = String::from_utf8_lossy(&s).to_string();
                        *self.sha.lock().unwrap() = Some(s.clone());
                        s
                    }
                    Ok(other) => {
                        self.down(format!("SCRIPT LOAD answered {other:?}"));
                        return None;
                    }
                    Err(e) => {
                        self.down(e);
                        return None;
                    }
                },
            };
            let n = keys.len().to_string();
            let mut call: Vec<&[u8]> = vec![b"EVALSHA", sha.as_bytes(), n.as_bytes()];
            call.extend(keys.iter().map(|k| k.as_bytes()));
            call.extend(args.iter().map(|a| a.as_bytes()));
            match redis.query(&call).await {
                Ok(Reply::Error(e)) if e.starts_with("NOSCRIPT") => *self.sha.lock().unwrap() = None,
                Ok(Reply::Error(e)) => {
                    self.down(e);
                    return None;
                }
                Ok(reply) => return Some(reply),
                Err(e) => {
                    self.down(e);
                    return None;
                }
            }
        }
        None
    }

    /// One command, when Redis is in use; `None` otherwise or when it fails (marked down).
    pub(crate) async fn query(&self, args: &[&[u8]]) -> Option<Reply> {
        let redis = self.redis.as_ref().filter(|_| self.active())?;
        match redis.query(args).await {
            Ok(Reply::Error(e)) => {
                log::warn!("shared state: Redis refused a command: {e}");
                None
            }
            Ok(reply) => Some(reply),
            Err(e) => {
                self.down(e);
                None
            }
        }
    }

    /// Judges a request's buckets fleet-wide: `Some(Ok)` all taken, `Some(Err((i, wait)))`
    /// refused by bucket `i`, `None` when Redis is not in use (judge locally).
    pub(crate) async fn admit(&self, buckets: &[BucketUse]) -> Option<Result<(), (usize, Duration)>> {
        if buckets.is_empty() || !self.active() {
            return None;
        }
        if self.admit_from_leases(buckets) {
            return Some(Ok(()));
        }
        let keys: Vec<&str> = buckets.iter().map(|b| b.key.as_str()).collect();
        let mut args = vec!["admit".to_string()];
        for b in buckets {
            args.push(b.per_minute.to_string());
            args.push(b.take.to_string());
            args.push(lease_size(b).to_string());
        }
        match self.script(&keys, &args).await? {
            Reply::Array(Some(r)) if r.len() >= 2 => match (r[0].int(), r[1].int()) {
                (Some(0), _) => {
                    self.keep_leases(buckets, &r[2..]);
                    Some(Ok(()))
                }
                (Some(i), Some(ms)) => Some(Err(((i - 1).max(0) as usize, Duration::from_millis(ms.max(1) as u64)))),
                _ => None,
            },
            other => {
                self.down(format!("the limits script answered {other:?}"));
                None
            }
        }
    }

    /// Admits from what this drover holds when every bucket can: leased tokens, or a
    /// recently passed check. Takes them; false (nothing taken) when one cannot.
    fn admit_from_leases(&self, buckets: &[BucketUse]) -> bool {
        let now = std::time::Instant::now();
        let mut leases = self.leases.lock().unwrap();
        let ready = buckets
            .iter()
            .all(|b| leases.get(&b.key).is_some_and(|l| l.until > now && (b.take == 0 || l.tokens >= b.take)));
        if ready {
            for b in buckets.iter().filter(|b| b.take > 0) {
                leases.get_mut(&b.key).expect("checked").tokens -= b.take;
            }
        }
        ready
    }

    /// Keeps what the script leased (and the checks it passed, for large limits).
    fn keep_leases(&self, buckets: &[BucketUse], granted: &[Reply]) {
        let now = std::time::Instant::now();
        let mut leases = self.leases.lock().unwrap();
        leases.retain(|_, l| l.until > now);
        for (b, g) in buckets.iter().zip(granted) {
            let extra = g.int().unwrap_or(0).max(0) as u64;
            if b.take == 0 && b.per_minute >= EXACT_BELOW {
                leases.insert(b.key.clone(), Lease { tokens: 0, until: now + CHECK_TRUST });
            } else if extra > 0 {
                leases.insert(b.key.clone(), Lease { tokens: extra, until: now + LEASE_LIFE });
            }
        }
    }

    /// Takes `n` tokens from a bucket at the next flush (within `FLUSH`), whatever is left
    /// then: a key's tokens, after its answer. Off the request path, one call per bucket.
    pub(crate) fn debit_soon(&self, key: &str, per_minute: u64, n: u64) {
        let mut debits = self.debits.lock().unwrap();
        let d = debits.entry(key.to_string()).or_insert((per_minute, 0));
        *d = (per_minute, d.1 + n);
    }

    async fn flush_debits(&self) {
        let due: Vec<(String, (u64, u64))> = self.debits.lock().unwrap().drain().collect();
        for (key, (per_minute, n)) in due {
            self.debit(&key, per_minute, n).await;
        }
    }

    /// Takes `n` tokens from a bucket, whatever is left.
    async fn debit(&self, key: &str, per_minute: u64, n: u64) -> bool {
        let args = ["debit".to_string(), per_minute.to_string(), n.to_string(), "0".to_string()];
        self.script(&[key], &args).await.is_some()
    }

    /// Tells the other drovers that `server` cools down for `d`.
    pub(crate) async fn cooldown(&self, server: &str, d: Duration) {
        let Some(redis) = self.redis.as_ref().filter(|_| self.active()) else { return };
        let key = format!("drover:cooldown:{server}");
        let ms = d.as_millis().max(1).to_string();
        if let Err(e) = redis.query(&[b"SET", key.as_bytes(), b"1", b"PX", ms.as_bytes()]).await {
            self.down(e);
        }
    }

    /// One pass: servers other drovers put into cooldown are cooled down here for what is left.
    async fn follow_cooldowns(&self, fleet: &Fleet) {
        let Some(redis) = self.redis.as_ref() else { return };
        let keys: Vec<String> = fleet.servers.iter().map(|s| format!("drover:cooldown:{}", s.url.as_str())).collect();
        let commands: Vec<Vec<&[u8]>> = keys.iter().map(|k| vec![&b"PTTL"[..], k.as_bytes()]).collect();
        match redis.pipeline(&commands).await {
            Ok(replies) => {
                for (server, reply) in fleet.servers.iter().zip(replies) {
                    if let Some(ms) = reply.int().filter(|ms| *ms > 0) {
                        server.cool_down_for(Duration::from_millis(ms as u64));
                    }
                }
            }
            Err(e) => self.down(e),
        }
    }

    /// A down Redis: back in use when it answers a PING.
    async fn ping(&self) {
        let Some(redis) = self.redis.as_ref() else { return };
        match redis.query(&[b"PING"]).await {
            Ok(Reply::Status(s)) if s == "PONG" => {
                if !self.up.swap(true, Ordering::Relaxed) {
                    *self.sha.lock().unwrap() = None;
                    log::info!("shared state: Redis {} answers; limits and cooldowns are fleet-wide", redis.address());
                }
            }
            Ok(other) => self.down(format!("PING answered {other:?}")),
            Err(e) => self.down(e),
        }
    }
}

/// How many tokens a request of this bucket leases beyond its own: none for small limits
/// (exact), else a tenth of a second of the limit, at most `LEASE_MAX`.
fn lease_size(b: &BucketUse) -> u64 {
    if b.take == 0 || b.per_minute < EXACT_BELOW {
        0
    } else {
        (b.per_minute / 600).min(LEASE_MAX)
    }
}

/// Follows cooldowns while Redis is up, pings it while it is down.
pub(crate) struct SharedService {
    pub(crate) shared: Arc<Shared>,
    pub(crate) fleet: Arc<arc_swap::ArcSwap<Fleet>>,
}

#[async_trait]
impl BackgroundService for SharedService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if !self.shared.configured() {
            return;
        }
        // The process does not exit before the last token debits are written (stop.rs).
        let _last_write = crate::stop::Busy::hold();
        // Redis may not be there yet (started in any order): /health says so from the start.
        self.shared.ping().await;
        let mut ticks = 0u32;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(FLUSH) => {
                    ticks += 1;
                    if self.shared.active() {
                        self.shared.flush_debits().await;
                    }
                    if !ticks.is_multiple_of((POLL.as_millis() / FLUSH.as_millis()) as u32) {
                        continue;
                    }
                    if self.shared.active() {
                        self.shared.follow_cooldowns(&self.fleet.load()).await;
                    } else {
                        self.shared.ping().await;
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
        if self.shared.active() {
            self.shared.flush_debits().await;
        }
    }
}
