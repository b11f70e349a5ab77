//! The listener's side of a graceful stop: a connection accepted before the stop gets its first request answered.
//!
//! Pingora's HTTP app drops, at its cleanup, every connection still waiting for a request:
//! right for an idle kept-alive connection (nginx closes those at once too), wrong for one
//! accepted a moment before the stop whose request is still on the wire. On loopback that
//! window is microseconds; under load, or on a busy two-core machine, a client saw its
//! fresh connection closed without an answer in the middle of a graceful upgrade. This
//! wrapper holds a new connection until its first bytes have arrived (Pingora's own `Peek`,
//! which puts them back), so Pingora's request read finds them there and serves the request,
//! with `Connection: close` as it does for every request after the stop. A connection that
//! sends nothing is given `linger` after the stop, then dropped as before, and never more
//! than Pingora's own 60 s for a first request.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;

use crate::stop::Busy;

/// How long a new connection may stay silent: Pingora's own limit for reading a first request.
const SILENT_FOR_AT_MOST: Duration = Duration::from_secs(60);

/// `app` (Pingora's HTTP proxy app), its new connections held until they have spoken.
pub struct FirstRequest<A> {
    app: Arc<A>,
    linger: Duration,
}

impl<A> FirstRequest<A> {
    pub fn new(app: A, linger: Duration) -> Self {
        FirstRequest { app: Arc::new(app), linger }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for FirstRequest<A> {
    async fn process_new(self: &Arc<Self>, mut stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        // A stopping process waits for this connection while it is silent (at most `linger`
        // after the stop) and, if it speaks after the stop, while its first request's header
        // is read: the request counts itself from its context on (stop.rs).
        let waiting = Busy::hold();
        let mut watch = shutdown.clone();
        let spoke = async {
            // Pingora's TLS streams cannot peek (Ok(false) at once): they go on unheld, as before.
            let mut first = [0u8; 1];
            matches!(tokio::time::timeout(SILENT_FOR_AT_MOST, stream.try_peek(&mut first)).await, Ok(Ok(_)))
        };
        let stopped_long_ago = async {
            let _ = watch.wait_for(|stopping| *stopping).await;
            tokio::time::sleep(self.linger).await;
        };
        let spoke = tokio::select! {
            spoke = spoke => spoke,
            () = stopped_long_ago => false,
        };
        if !spoke {
            return None;
        }
        if !*shutdown.borrow() {
            drop(waiting);
            return self.app.process_new(stream, shutdown).await;
        }
        let work = self.app.process_new(stream, shutdown);
        tokio::pin!(work);
        tokio::select! {
            kept = &mut work => return kept,
            () = tokio::time::sleep(self.linger) => {}
        }
        drop(waiting);
        work.await
    }

    async fn cleanup(&self) {
        self.app.cleanup().await;
    }
}
