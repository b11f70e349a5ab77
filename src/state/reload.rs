//! Hot reload from the store: poll a change marker, rebuild and swap the fleet when it moves, write counts in batches.
//!
//! Every db_check_interval the reloader reads one number (`drover_changes.version`, bumped
//! by triggers on any change to a routing column, from drover or from hand-written SQL).
//! Only when it moved is the table read and a new `Fleet` built and swapped in; requests
//! in flight keep the snapshot they started with. If the database cannot be reached,
//! drover keeps the last good table, reports `degraded` in /health, logs once per change
//! of state, and recovers by itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::{ServerSpec, Settings};
use crate::fleet::Fleet;
use crate::storage::store::{Store, StoreError, StoreHandle, StoreState, StoredRoute};

/// Requests served per stored route, not yet written to `count`.
#[derive(Default)]
pub(crate) struct Tally {
    pending: Mutex<HashMap<i64, u64>>,
}

impl Tally {
    pub(crate) fn add(&self, route_id: i64) {
        *self.pending.lock().unwrap().entry(route_id).or_default() += 1;
    }

    fn take(&self) -> Vec<(i64, u64)> {
        self.pending.lock().unwrap().drain().collect()
    }

    /// Puts back counts a failed write did not store.
    fn restore(&self, counts: Vec<(i64, u64)>) {
        let mut pending = self.pending.lock().unwrap();
        for (id, n) in counts {
            *pending.entry(id).or_default() += n;
        }
    }
}

pub(crate) struct Reloader {
    settings: Arc<Settings>,
    fleet: Arc<ArcSwap<Fleet>>,
    tally: Arc<Tally>,
    /// The API keys, read with the routes.
    keys: Arc<crate::edge::keys::Keyring>,
    store: Arc<StoreHandle>,
    /// The marker of the table the current fleet was built from.
    seen: AtomicI64,
    /// The fleet's other sources, kept so that either can change alone: the stored routes
    /// last read, and the servers DNS found last (dns.rs).
    stored: Mutex<Arc<Vec<StoredRoute>>>,
    discovered: Mutex<Arc<Vec<ServerSpec>>>,
    state: Mutex<StoreState>,
    /// One reload at a time, so an older table never overwrites a newer one.
    reloading: tokio::sync::Mutex<()>,
}

impl Reloader {
    /// `seen` is the marker the starting fleet was built from, `stored` and `discovered` the
    /// routes and servers it was built with.
    pub(crate) fn new(
        settings: Arc<Settings>,
        store: Arc<StoreHandle>,
        fleet: Arc<ArcSwap<Fleet>>,
        keys: Arc<crate::edge::keys::Keyring>,
        tally: Arc<Tally>,
        (seen, stored, discovered): (i64, Vec<StoredRoute>, Vec<ServerSpec>),
    ) -> Reloader {
        Reloader {
            settings,
            fleet,
            keys,
            tally,
            store,
            seen: AtomicI64::new(seen),
            stored: Mutex::new(Arc::new(stored)),
            discovered: Mutex::new(Arc::new(discovered)),
            state: Mutex::new(StoreState::Ok),
            reloading: tokio::sync::Mutex::new(()),
        }
    }

    /// The store's state found at start, before the first poll (unreachable: /health is
    /// degraded from the first request).
    pub(crate) fn starts(&self, state: StoreState) {
        *self.state.lock().unwrap() = state;
    }

    pub(crate) fn state(&self) -> StoreState {
        self.state.lock().unwrap().clone()
    }

    /// Reads the routes and keys and swaps in a new fleet and keyring; returns the number of stored routes.
    pub(crate) async fn reload(&self) -> Result<usize, StoreError> {
        let store = self.store.get().await?;
        let _one_at_a_time = self.reloading.lock().await;
        // The marker is read first: a change made while the tables are read moves it again.
        let marker = store.marker().await?;
        let rows = Arc::new(store.list().await?);
        let keys = store.list_keys().await?;
        self.keys.replace(keys);
        *self.stored.lock().unwrap() = rows.clone();
        self.rebuild();
        self.seen.store(marker, Ordering::SeqCst);
        Ok(rows.len())
    }

    /// The servers DNS now finds: the fleet is rebuilt with them (and the stored routes last
    /// read), as a reload rebuilds it.
    pub(crate) async fn rediscovered(&self, servers: Vec<ServerSpec>) {
        let _one_at_a_time = self.reloading.lock().await;
        *self.discovered.lock().unwrap() = Arc::new(servers);
        self.rebuild();
    }

    /// A new fleet from the settings and the current sources, swapped in; servers that left
    /// are retired from the health checks (requests on them keep their snapshot).
    fn rebuild(&self) {
        let stored = self.stored.lock().unwrap().clone();
        let discovered = self.discovered.lock().unwrap().clone();
        let previous = self.fleet.load_full();
        let fleet = Arc::new(Fleet::build(&self.settings, &stored, &discovered, &previous.health, Some(&previous)));
        self.fleet.store(fleet.clone());
        fleet.retire_departed();
    }

    /// One poll: reload if the marker moved, then write pending counts.
    pub(crate) async fn poll(&self) {
        let result = self.poll_once().await;
        self.set_state(match result {
            Ok(()) => StoreState::Ok,
            Err(e) => StoreState::Unreachable(e.to_string()),
        });
    }

    async fn poll_once(&self) -> Result<(), StoreError> {
        let store = self.store.get().await?;
        let marker = store.marker().await?;
        if marker != self.seen.load(Ordering::SeqCst) {
            let started = Instant::now();
            let n = self.reload().await?;
            log::info!("routes reloaded from {}: {n} stored routes in {:?}", store.url, started.elapsed());
        }
        self.flush_counts(store).await
    }

    /// Writes the requests served per route and the usage per key since the last flush.
    async fn flush_counts(&self, store: &Store) -> Result<(), StoreError> {
        let counts = self.tally.take();
        if !counts.is_empty() {
            if let Err(e) = store.add_counts(&counts).await {
                self.tally.restore(counts);
                return Err(e);
            }
        }
        let usage = self.keys.take_usage();
        if !usage.is_empty() {
            if let Err(e) = store.add_key_usage(&usage).await {
                self.keys.restore(usage);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Records the store's state, logging only when it changes.
    fn set_state(&self, new: StoreState) {
        let mut state = self.state.lock().unwrap();
        if *state == new {
            return;
        }
        match (&*state, &new) {
            (_, StoreState::Unreachable(why)) => log::error!(
                "database {} unreachable, serving with the last good routes: {why}",
                crate::storage::store::redact_url(&self.settings.database_url)
            ),
            (StoreState::Unreachable(_), StoreState::Ok) => {
                log::info!(
                    "database {} reachable again",
                    crate::storage::store::redact_url(&self.settings.database_url)
                )
            }
            _ => {}
        }
        *state = new;
    }
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // The process does not exit before the last counts are written (stop.rs).
        let _last_write = crate::stop::Busy::hold();
        let interval = self.settings.load_balancer.db_check_interval;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => self.poll().await,
                _ = shutdown.changed() => break,
            }
        }
        // Counts served since the last poll are not lost on a graceful stop (with none
        // pending, the flush touches nothing; with no database connected, nothing was counted).
        if let Some(store) = self.store.connected() {
            let _ = tokio::time::timeout(Duration::from_secs(5), self.flush_counts(store)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_takes_and_restores() {
        let t = Tally::default();
        t.add(1);
        t.add(1);
        t.add(2);
        let mut taken = t.take();
        taken.sort();
        assert_eq!(taken, [(1, 2), (2, 1)]);
        assert!(t.take().is_empty());
        t.restore(vec![(1, 2)]);
        t.add(1);
        assert_eq!(t.take(), [(1, 3)]);
    }
}
