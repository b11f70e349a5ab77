//! The least_busy strategy: the open route whose server has the fewest requests per unit of
//! weight: drover's own in flight, plus those the server reported beyond them at its last
//! reading (another drover's, other clients', its own queue: `Server::load_estimate`).

use crate::fleet::ModelRoutes;

/// Picks one of `open` (indices into `mr.routes`, non-empty).
pub(super) fn pick(mr: &ModelRoutes, open: &[usize]) -> usize {
    *open
        .iter()
        .min_by(|&&a, &&b| {
            let load = |i: usize| {
                let r = &mr.routes[i];
                (r.server.load_estimate() as f64 + 1.0) / r.weight as f64
            };
            load(a).total_cmp(&load(b))
        })
        .expect("open is not empty")
}
