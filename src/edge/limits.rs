//! Rate limits: token buckets, per API key and per client address.
//!
//! The algorithm is the token bucket (the same admission rule as GCRA): a bucket holds at
//! most `per_minute` tokens and refills continuously at `per_minute / 60` per second; a
//! request takes one token or is refused with the time until one is back (Retry-After).
//! A limit of 60 per minute therefore allows a burst of 60, then one a second. Each bucket
//! sits behind its own mutex, so concurrent requests are admitted exactly: of N requests
//! that arrive together at a full bucket of B, exactly min(N, B) pass.
//!
//! Tokens-per-minute limits are debited after the answer (its size is not known before):
//! a request is admitted while the bucket is above zero, and the answer's tokens are then
//! taken, possibly below zero, which holds later requests back until it refills.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One token bucket.
#[derive(Debug)]
pub(crate) struct Bucket {
    per_minute: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub(crate) fn new(per_minute: u64, now: Instant) -> Bucket {
        Bucket { per_minute: per_minute as f64, tokens: per_minute as f64, at: now }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_minute / 60.0).min(self.per_minute);
        self.at = now;
    }

    /// Takes `n` tokens, or says how long until they are there.
    pub(crate) fn take(&mut self, n: f64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= n {
            self.tokens -= n;
            Ok(())
        } else {
            Err(self.wait_for(n))
        }
    }

    /// Admits while the bucket is above zero, taking nothing (see `debit`).
    pub(crate) fn check(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens > 0.0 {
            Ok(())
        } else {
            Err(self.wait_for(f64::MIN_POSITIVE))
        }
    }

    /// Takes `n` tokens whatever is left: the bucket may go below zero.
    pub(crate) fn debit(&mut self, n: f64, now: Instant) {
        self.refill(now);
        self.tokens -= n;
    }

    /// Changes the limit, keeping the tokens there are (capped at the new limit).
    pub(crate) fn set_limit(&mut self, per_minute: u64, now: Instant) {
        self.refill(now);
        self.per_minute = per_minute as f64;
        self.tokens = self.tokens.min(self.per_minute);
    }

    fn wait_for(&self, n: f64) -> Duration {
        let missing = n - self.tokens;
        Duration::from_secs_f64((missing * 60.0 / self.per_minute).max(0.001))
    }

    fn full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens + elapsed * self.per_minute / 60.0 >= self.per_minute
    }
}

/// Seconds for a Retry-After header: whole seconds, at least 1.
pub(crate) fn retry_after_seconds(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

/// The client a per-address limit counts: an IPv4 address, or an IPv6 address's /64 (one
/// host is given a whole /64 and can rotate through it at will).
pub(crate) fn client_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(a) & !((1u128 << 64) - 1)).into()),
        },
        v4 => v4,
    }
}

/// Shards of the per-address table, so that requests from different clients rarely contend.
const SHARDS: usize = 16;

/// A shard's full buckets are dropped at most this often (a full bucket is the same as none).
const PRUNE_EVERY: Duration = Duration::from_secs(60);

struct Shard {
    buckets: HashMap<IpAddr, Bucket>,
    pruned_at: Instant,
}

/// Requests per minute per client address.
pub(crate) struct ClientLimiter {
    per_minute: u64,
    shards: Vec<Mutex<Shard>>,
    /// The most addresses a shard tracks (limits.max_tracked_clients / SHARDS): a flood of
    /// new addresses (an IPv6 prefix holds billions) drops full buckets first, then others
    /// at random; the table never outgrows it.
    per_shard: usize,
}

impl ClientLimiter {
    pub(crate) fn new(per_minute: u64, max_tracked: usize) -> ClientLimiter {
        let now = Instant::now();
        let shards = (0..SHARDS).map(|_| Mutex::new(Shard { buckets: HashMap::new(), pruned_at: now })).collect();
        ClientLimiter { per_minute, shards, per_shard: (max_tracked / SHARDS).max(1) }
    }

    pub(crate) fn per_minute(&self) -> u64 {
        self.per_minute
    }

    fn shard(&self, ip: &IpAddr) -> &Mutex<Shard> {
        let n = match ip {
            IpAddr::V4(a) => u32::from(*a) as usize,
            IpAddr::V6(a) => a.segments().iter().fold(0usize, |h, s| h.wrapping_mul(31).wrapping_add(*s as usize)),
        };
        &self.shards[n % SHARDS]
    }

    /// Admits one request from `ip`, or says how long until it would be.
    pub(crate) fn admit(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let ip = client_of(ip);
        let mut shard = self.shard(&ip).lock().unwrap();
        // The table holds only clients seen within the last minute or two.
        if now.saturating_duration_since(shard.pruned_at) >= PRUNE_EVERY {
            shard.buckets.retain(|_, b| !b.full(now));
            shard.pruned_at = now;
        }
        if shard.buckets.len() >= self.per_shard && !shard.buckets.contains_key(&ip) {
            // A sweep at most once a second: under a flood, each new address costs one eviction.
            if now.saturating_duration_since(shard.pruned_at) >= Duration::from_secs(1) {
                shard.buckets.retain(|_, b| !b.full(now));
                shard.pruned_at = now;
            }
            if shard.buckets.len() >= self.per_shard {
                // Still full of active clients: one of them is forgotten (its bucket starts
                // full again), which is all a flood of addresses can win.
                let evicted = *shard.buckets.keys().next().expect("a full shard has entries");
                shard.buckets.remove(&evicted);
            }
        }
        shard.buckets.entry(ip).or_insert_with(|| Bucket::new(self.per_minute, now)).take(1.0, now)
    }

    /// Client addresses currently tracked.
    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap().buckets.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(60, t0);
        for _ in 0..60 {
            assert!(b.take(1.0, t0).is_ok());
        }
        let wait = b.take(1.0, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 1.0).abs() < 1e-6, "{wait:?}");
        assert!(b.take(1.0, t0 + Duration::from_millis(500)).is_err());
        assert!(b.take(1.0, t0 + Duration::from_millis(1000)).is_ok());
        assert_eq!(retry_after_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_seconds(Duration::from_secs(3)), 3);
    }

    #[test]
    fn token_debits_hold_later_requests_back() {
        let t0 = Instant::now();
        let mut b = Bucket::new(600, t0);
        assert!(b.check(t0).is_ok());
        b.debit(900.0, t0);
        let wait = b.check(t0).unwrap_err();
        // 300 below zero at 10 tokens a second: 30 s.
        assert!((wait.as_secs_f64() - 30.0).abs() < 0.01, "{wait:?}");
        assert!(b.check(t0 + Duration::from_secs(31)).is_ok());
    }

    #[test]
    fn clients_are_limited_apart_and_idle_ones_forgotten() {
        let t0 = Instant::now();
        let l = ClientLimiter::new(2, 65_536);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(l.admit(a, t0).is_ok());
        assert!(l.admit(a, t0).is_ok());
        assert!(l.admit(a, t0).is_err());
        assert!(l.admit(b, t0).is_ok());
        for i in 0..5000u32 {
            let _ = l.admit(IpAddr::V4(i.into()), t0);
        }
        assert_eq!(l.tracked(), 5002);
        let later = t0 + Duration::from_secs(120);
        for i in 0..SHARDS as u32 {
            let _ = l.admit(IpAddr::V4(i.into()), later);
        }
        assert_eq!(l.tracked(), SHARDS, "idle clients' full buckets were dropped");
    }

    #[test]
    fn an_ipv6_host_is_its_64() {
        let t0 = Instant::now();
        let l = ClientLimiter::new(2, 65_536);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert!(l.admit(a, t0).is_ok() && l.admit(b, t0).is_ok());
        assert!(l.admit("2001:db8:1:2::77".parse().unwrap(), t0).is_err(), "one /64, one client");
        assert!(l.admit("2001:db8:1:3::1".parse().unwrap(), t0).is_ok(), "another /64");
        assert_eq!(client_of("::ffff:10.1.2.3".parse().unwrap()), "10.1.2.3".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn a_flood_of_addresses_is_bounded() {
        let t0 = Instant::now();
        let l = ClientLimiter::new(2, 65_536);
        // 100,000 distinct hostile addresses, each leaving its bucket not full, within a second.
        for i in 0..100_000u128 {
            let ip = IpAddr::V6((0x2001_0db8u128 << 96 | i << 64).into());
            let _ = l.admit(ip, t0);
        }
        assert_eq!(l.tracked(), 65_536, "the table stops at its bound");
        // A client seen all along is still limited.
        let steady: IpAddr = "10.9.9.9".parse().unwrap();
        assert!(l.admit(steady, t0).is_ok() && l.admit(steady, t0).is_ok());
        assert!(l.admit(steady, t0).is_err());
    }
}
