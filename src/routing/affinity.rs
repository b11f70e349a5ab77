//! Conversation affinity: the turns of one conversation go back to the server that served
//! the last one, where its KV cache still holds the history (so the prompt is not processed
//! again).
//!
//! The key is the session header (`affinity.header`, `X-Session-Id` by default) or, with
//! `affinity.mode: prefix`, a hash of the conversation's opening (`RoutableBody::conversation_key`).
//! The servers of the winning tier are ranked for the key by weighted rendezvous hashing
//! (highest random weight: a consistent hash, so adding or losing a server moves only the
//! conversations it held). Bounded load (Mirrokni, Thorup, Zadimoghaddam 2018): a server
//! whose requests in flight reach `load_factor` times its weighted share of the tier's
//! load, counting this request, is passed over for the next one in the ranking, so a busy
//! conversation cannot pile onto one server. Affinity orders the candidates that
//! selection has already found eligible (healthy, tier, warm_first, capacity) and the
//! resource check still judges the one picked: it never overrides those rules.

use std::hash::{Hash, Hasher};

use crate::fleet::ModelRoutes;

/// The key of a session header's value, per model (one session may use several models).
pub(crate) fn header_key(model: &str, value: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    model.hash(&mut h);
    value.hash(&mut h);
    h.finish()
}

/// `in_tier` (indices into `mr.routes`) in the order a request with `key` tries them: by
/// rendezvous score, with servers at or over their load bound moved behind the others.
pub(crate) fn order(mr: &ModelRoutes, in_tier: &[usize], key: u64, load_factor: f64) -> Vec<usize> {
    let total_weight: f64 = in_tier.iter().map(|&i| mr.routes[i].weight as f64).sum::<f64>().max(1.0);
    // Load as each server reckons it: drover's own in flight and what it reported beyond them.
    let in_flight: usize = in_tier.iter().map(|&i| mr.routes[i].server.load_estimate()).sum();
    let mut ranked: Vec<(bool, f64, usize)> = in_tier
        .iter()
        .map(|&i| {
            let r = &mr.routes[i];
            let share = r.weight as f64 / total_weight;
            let bound = (load_factor * (in_flight + 1) as f64 * share).ceil();
            let over = r.server.load_estimate() as f64 >= bound;
            (over, score(key, r.server.url.as_str(), r.weight), i)
        })
        .collect();
    ranked.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)));
    ranked.into_iter().map(|(_, _, i)| i).collect()
}

/// Weighted rendezvous score: `-weight / ln(u)` for a uniform `u` in (0, 1) drawn from the
/// key and the server; the highest wins, each server in proportion to its weight.
fn score(key: u64, server: &str, weight: u32) -> f64 {
    let mut h = std::hash::DefaultHasher::new();
    key.hash(&mut h);
    server.hash(&mut h);
    let u = ((h.finish() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -(weight.max(1) as f64) / u.ln()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Env, Settings};
    use crate::fleet::backends::Health;
    use crate::fleet::Fleet;

    fn fleet(weights: &[u32]) -> Fleet {
        let routes: String = weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                format!(
                    "  - {{ virtual_model_name: m, server_url: 'http://s{i}:1', actual_model_name: m, weight: {w} }}\n"
                )
            })
            .collect();
        let settings = Settings::parse(&format!("routes:\n{routes}"), None, &Env::default()).unwrap();
        Fleet::build(&settings, &[], &[], &Health::new(), None)
    }

    #[test]
    fn a_key_keeps_its_server_and_keys_spread_by_weight() {
        let f = fleet(&[100, 100, 200]);
        let mr = &f.routes["m:latest"];
        let all = [0, 1, 2];
        let mut counts = [0usize; 3];
        for k in 0..4000u64 {
            let first = order(mr, &all, k, 1.25)[0];
            assert_eq!(order(mr, &all, k, 1.25)[0], first, "stable for a key");
            counts[first] += 1;
        }
        // Shares 1/4, 1/4, 1/2 within a few percent.
        assert!((850..1150).contains(&counts[0]) && (850..1150).contains(&counts[1]), "{counts:?}");
        assert!((1800..2200).contains(&counts[2]), "{counts:?}");
    }

    #[test]
    fn losing_a_server_moves_only_its_conversations() {
        let f = fleet(&[100, 100, 100]);
        let mr = &f.routes["m:latest"];
        for k in 0..500u64 {
            let before = order(mr, &[0, 1, 2], k, 1.25)[0];
            let after = order(mr, &[0, 2], k, 1.25)[0];
            if before != 1 {
                assert_eq!(before, after, "key {k} moved though its server stayed");
            }
        }
    }

    #[test]
    fn a_server_over_its_bound_spills_to_the_next() {
        let f = fleet(&[100, 100]);
        let mr = &f.routes["m:latest"];
        let key = 7;
        let first = order(mr, &[0, 1], key, 1.25)[0];
        // Three in flight on the first, none on the other: bound ceil(1.25 * 4 / 2) = 3.
        let slots: Vec<_> = (0..3).map(|_| mr.routes[first].server.try_acquire("m").unwrap()).collect();
        assert_eq!(order(mr, &[0, 1], key, 1.25)[0], 1 - first);
        drop(slots);
        assert_eq!(order(mr, &[0, 1], key, 1.25)[0], first, "back once the load is gone");
    }
}
