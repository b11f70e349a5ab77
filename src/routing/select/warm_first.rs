//! The warm_first strategy: inside a tier, the servers with the model loaded (at the
//! request's num_ctx) take it; a request waits for one of them rather than load the model
//! again elsewhere, unless more are waiting than the warm servers can take. The pick among
//! what is left is weighted.

use super::eligible::{Policy, Request};
use crate::fleet::ModelRoutes;

/// The routes of `open` (indices into `mr.routes`, within `in_tier`) warm_first picks among;
/// `None` when the request should wait for a warm server.
pub(super) fn narrow<P: Policy>(
    mr: &ModelRoutes,
    in_tier: &[usize],
    mut open: Vec<usize>,
    req: &Request,
    policy: &P,
) -> Option<Vec<usize>> {
    let warm: Vec<usize> = in_tier.iter().copied().filter(|&i| policy.warm(&mr.routes[i], req.num_ctx)).collect();
    let warm_open: Vec<usize> = open.iter().copied().filter(|i| warm.contains(i)).collect();
    let warm_capacity: usize = warm.iter().map(|&i| mr.routes[i].server.max_concurrency).sum();
    if !warm_open.is_empty() {
        return Some(warm_open);
    }
    if !warm.is_empty() && req.waiting < warm_capacity {
        return None;
    }
    if req.num_ctx.is_some() {
        // A load where the model is not running at another context size does not take it
        // away from the requests using that size.
        let clash = |i: &usize| policy.warm(&mr.routes[*i], None);
        if open.iter().any(|i| !clash(i)) {
            open.retain(|i| !clash(i));
        }
    }
    Some(open)
}
