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
//! access log and exits with 0.
//!
//! At the end of the grace period Pingora drops every task at once, cutting a stream
//! mid-chunk. So a little before (in its last second, or last tenth when shorter), the
//! stopper says the process is [`ending`]: a stream's next chunk then ends it with an error
//! line in its API's format (proxy/relay.rs), which the client can read. A stream that sends
//! nothing in that last second is still cut.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::telemetry::accesslog::AccessLog;

/// What must finish before the process exits.
static BUSY: AtomicUsize = AtomicUsize::new(0);

/// The grace period is about to end: streams still open end now, with their error line.
static ENDING: AtomicBool = AtomicBool::new(false);

/// How often the stopper looks at the count once the stop has begun.
const LOOK_EVERY: Duration = Duration::from_millis(10);

/// One thing the process must finish before it may exit; counted while it lives.
#[derive(Debug)]
pub(crate) struct Busy(());

impl Busy {
    pub(crate) fn hold() -> Busy {
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
pub(crate) fn busy() -> usize {
    BUSY.load(Ordering::Acquire)
}

/// Whether streams still open should end now (the grace period's last moment).
pub(crate) fn ending() -> bool {
    ENDING.load(Ordering::Relaxed)
}

/// How long the access log's writer may take to write what it holds.
const FLUSH_FOR_AT_MOST: Duration = Duration::from_secs(2);

/// Exits the process once a graceful stop has begun and nothing is busy.
pub(crate) struct Stopper {
    pub(crate) access_log: Arc<AccessLog>,
    /// pingora.grace_period_seconds: when Pingora drops what is left.
    pub(crate) grace: Duration,
}

#[async_trait]
impl BackgroundService for Stopper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if shutdown.wait_for(|stopping| *stopping).await.is_err() {
            return;
        }
        let began = std::time::Instant::now();
        let end_streams_after = self.grace - (self.grace / 10).min(Duration::from_secs(1));
        while busy() > 0 {
            if began.elapsed() >= end_streams_after && !ENDING.swap(true, Ordering::Relaxed) {
                log::warn!("grace period ending: {} requests still in flight end now", busy());
            }
            tokio::time::sleep(LOOK_EVERY).await;
        }
        self.access_log.flush(FLUSH_FOR_AT_MOST);
        log::info!("stopped: nothing in flight, exiting {:?} after the stop began", began.elapsed());
        std::process::exit(0);
    }
}
