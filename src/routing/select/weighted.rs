//! The weighted strategy (the default): nginx's smooth weighted round robin over the open
//! routes of a tier, with one running weight per route kept in `ModelRoutes::current`.

use crate::fleet::ModelRoutes;

/// nginx's smooth weighted round robin over a subset: deterministic, and weights 30/70
/// give exactly 3 of 10 and 7 of 10 in every run of ten picks, interleaved.
pub(super) fn pick(mr: &ModelRoutes, open: &[usize]) -> usize {
    let mut current = mr.current.lock().unwrap();
    let total: i64 = open.iter().map(|&i| mr.routes[i].weight as i64).sum();
    let mut best = open[0];
    for &i in open {
        current[i] += mr.routes[i].weight as i64;
        if current[i] > current[best] {
            best = i;
        }
    }
    current[best] -= total;
    best
}
