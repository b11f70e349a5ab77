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
//!
//! It also gives every HTTP/1 request header a deadline (`HeaderDeadline`): Pingora's read
//! timeout is per read, so a client trickling its header a byte at a time held a connection
//! (and its task) for as long as it liked.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::stop::Busy;

/// How long a new connection may stay silent: Pingora's own limit for reading a first request.
const SILENT_FOR_AT_MOST: Duration = Duration::from_secs(60);

/// `app` (Pingora's HTTP proxy app), its new connections held until they have spoken.
pub(crate) struct FirstRequest<A> {
    app: Arc<A>,
    linger: Duration,
    /// The longest a request header may take to arrive, first byte to last.
    header_timeout: Duration,
}

impl<A> FirstRequest<A> {
    pub(crate) fn new(app: A, linger: Duration, header_timeout: Duration) -> Self {
        FirstRequest { app: Arc::new(app), linger, header_timeout }
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
        // HTTP/2 (by ALPN) frames its headers itself: h2's own limits apply there.
        let stream: Stream = if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            stream
        } else {
            Box::new(HeaderDeadline::new(stream, self.header_timeout))
        };
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

/// A client connection whose every HTTP/1 request header must arrive within `limit` of its
/// first byte. Between requests the stream is idle and nothing is timed (Pingora's keep-alive
/// timeout applies); a read after a response began starts the next header's clock; the blank
/// line that ends the header stops it (empty lines before a request line, which the parser
/// skips, do not). A read of a header past its deadline fails, and Pingora closes the
/// connection: a trickling client is cut at its next byte after the deadline, a silent one
/// by Pingora's own timeout of each read. The deadline is an instant compared on each read,
/// no timer: nothing is registered or woken per request. A body is never timed here (the per-read timeout and the size
/// limits apply). drover's listeners speak HTTP/2 only by TLS's ALPN, where this is not used.
#[derive(Debug)]
pub(crate) struct HeaderDeadline {
    inner: Stream,
    limit: Duration,
    phase: Phase,
    /// When the header being read must be in.
    deadline: Option<Instant>,
    /// Whether the header's first line has begun (only line breaks before it so far: not).
    begun: bool,
    /// The last two bytes read of the header, for a blank line split across reads.
    last: [u8; 2],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request's first byte.
    Idle,
    /// Reading a request header.
    Header,
    /// The header is in: the body, then the response.
    Past,
}

impl HeaderDeadline {
    pub(crate) fn new(inner: Stream, limit: Duration) -> HeaderDeadline {
        HeaderDeadline { inner, limit, phase: Phase::Idle, deadline: None, begun: false, last: [0; 2] }
    }

    /// Follows the bytes a read brought.
    fn saw(&mut self, bytes: &[u8]) {
        if self.phase == Phase::Idle {
            self.phase = Phase::Header;
            self.deadline = Some(Instant::now() + self.limit);
            self.begun = false;
            self.last = [0; 2];
        }
        if self.phase != Phase::Header {
            return;
        }
        let mut bytes = bytes;
        if !self.begun {
            // The clock runs from the first byte, but a blank line ends a header only after
            // its request line has begun.
            match bytes.iter().position(|b| !matches!(b, b'\r' | b'\n')) {
                Some(start) => {
                    bytes = &bytes[start..];
                    self.begun = true;
                }
                None => return,
            }
        }
        let at = |i: isize| -> u8 {
            match i {
                i if i >= 0 => bytes[i as usize],
                -1 => self.last[1],
                _ => self.last[0],
            }
        };
        // The header ends at an empty line: "\n\n" or "\n\r\n".
        let ended = memchr::memchr_iter(b'\n', bytes).any(|p| {
            let p = p as isize;
            at(p - 1) == b'\n' || (at(p - 1) == b'\r' && at(p - 2) == b'\n')
        });
        if ended {
            self.phase = Phase::Past;
            self.deadline = None;
        } else {
            self.last = match bytes.len() {
                0 => self.last,
                1 => [self.last[1], bytes[0]],
                n => [bytes[n - 2], bytes[n - 1]],
            };
        }
    }

    /// Follows what is written: the start of a final response (not a 100 Continue) means the
    /// next bytes read begin the next request.
    fn wrote(&mut self, bytes: &[u8]) {
        if self.phase == Phase::Past && bytes.starts_with(b"HTTP/1.") && bytes.get(9) != Some(&b'1') {
            self.phase = Phase::Idle;
        }
    }
}

impl AsyncRead for HeaderDeadline {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.deadline.is_some_and(|d| Instant::now() >= d) {
            let why = format!("the request header did not arrive within {:?} (server.header_timeout)", this.limit);
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why)));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let filled = buf.filled();
        if filled.len() > before {
            this.saw(&filled[before..]);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for HeaderDeadline {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        if n > 0 {
            // What this write began (a response's first bytes, even when fewer went out).
            this.wrote(buf);
        }
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()).filter(|_| n > 0) {
            this.wrote(first);
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for HeaderDeadline {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for HeaderDeadline {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeaderDeadline {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeaderDeadline {
    fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeaderDeadline {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for HeaderDeadline {
    fn get_socket_digest(&self) -> Option<Arc<pingora::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

#[async_trait]
impl Peek for HeaderDeadline {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}
