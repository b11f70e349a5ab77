//! A stop as soon as nothing is left to do: on SIGTERM (or the old process's side of a
//! graceful upgrade, SIGQUIT) drover exits when its last request has finished, not at the
//! end of the grace period.
//!
//! Pingora, on a graceful stop, stops accepting, tells every service, and then sleeps the
//! whole `grace_period_seconds` before it shuts its runtimes down, whatever is still
//! running. So an idle drover took the full grace period (30 s by default) to exit: past
//! `docker stop`'s 10 s, and 30 s per replica in every rolling update. Here, what must
//! finish before the process may exit holds a [`Busy`]: every request from its context's
//! creation to its end (the access-log line is written before the context goes), a
//! connection accepted before the stop that has not spoken yet (accept.rs), and the
//! background services' last writes (counts to the store, token debits to Redis). The
//! [`Stopper`] service waits for the stop, then for the count to reach zero, flushes the
//! access log and exits with 0. Streams still open when the grace period ends are ended
//! by Pingora's shutdown, with their error tail, as before.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::telemetry::accesslog::AccessLog;

/// What must finish before the process exits.
static BUSY: AtomicUsize = AtomicUsize::new(0);

/// How often the stopper looks at the count once the stop has begun.
const LOOK_EVERY: Duration = Duration::from_millis(10);

/// One thing the process must finish before it may exit; counted while it lives.
#[derive(Debug)]
pub struct Busy(());

impl Busy {
    pub fn hold() -> Busy {
        BUSY.fetch_add(1, Ordering::AcqRel);
        Busy(())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        BUSY.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How many things are still running.
pub fn busy() -> usize {
    BUSY.load(Ordering::Acquire)
}

/// How long the access log's writer may take to write what it holds.
const FLUSH_FOR_AT_MOST: Duration = Duration::from_secs(2);

/// Exits the process once a graceful stop has begun and nothing is busy.
pub struct Stopper {
    pub access_log: Arc<AccessLog>,
}

#[async_trait]
impl BackgroundService for Stopper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if shutdown.wait_for(|stopping| *stopping).await.is_err() {
            return;
        }
        let began = std::time::Instant::now();
        while busy() > 0 {
            tokio::time::sleep(LOOK_EVERY).await;
        }
        self.access_log.flush(FLUSH_FOR_AT_MOST);
        log::info!("stopped: nothing in flight, exiting {:?} after the stop began", began.elapsed());
        std::process::exit(0);
    }
}
