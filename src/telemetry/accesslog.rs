//! The access log: one JSON line per request, written by its own thread, reopened on SIGUSR1.
//!
//! The request path only formats the line and hands it over a bounded channel; a full
//! channel drops the line (and counts it) rather than slow a request. The writer thread
//! starts on first use, so it runs in the process that serves (after a daemon fork), and
//! reopens the file when SIGUSR1 arrives, so logrotate can move it away.

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Lines waiting for the writer; beyond this they are dropped.
const BACKLOG: usize = 64 * 1024;

/// How long the writer rests after a batch (lines wait at most this long to be written).
const BATCH_PAUSE: Duration = Duration::from_millis(20);

/// What the writer thread is handed: a line, or a request to write everything before it
/// and say so (at exit).
enum Message {
    Line(String),
    Flush(SyncSender<()>),
}

pub(crate) struct AccessLog {
    target: String,
    sender: OnceLock<Option<SyncSender<Message>>>,
    pub(crate) dropped: AtomicU64,
}

impl AccessLog {
    /// `target`: a file path, or "-" for standard output.
    pub(crate) fn new(target: &str) -> AccessLog {
        AccessLog { target: target.to_string(), sender: OnceLock::new(), dropped: AtomicU64::new(0) }
    }

    pub(crate) fn write(&self, line: String) {
        let Some(tx) = self.sender.get_or_init(|| self.start()) else { return };
        if tx.try_send(Message::Line(line)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Writes out every line handed over so far, waiting at most `within` (before the
    /// process exits: its writer thread would otherwise die with lines still queued).
    pub(crate) fn flush(&self, within: Duration) {
        let Some(Some(tx)) = self.sender.get() else { return };
        let (done, written) = sync_channel(1);
        // A full channel is being emptied by the writer: the send waits for room.
        if tx.send(Message::Flush(done)).is_ok() {
            let _ = written.recv_timeout(within);
        }
    }

    fn start(&self) -> Option<SyncSender<Message>> {
        let reopen = Arc::new(AtomicBool::new(false));
        if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGUSR1, reopen.clone()) {
            log::warn!("access log: SIGUSR1 reopen unavailable: {e}");
        }
        let mut out = match open(&self.target) {
            Ok(o) => o,
            Err(e) => {
                log::error!("access log {}: {e}; access logging is off", self.target);
                return None;
            }
        };
        let (tx, rx) = sync_channel::<Message>(BACKLOG);
        let target = self.target.clone();
        let spawned = std::thread::Builder::new().name("access-log".into()).spawn(move || loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(first) => {
                    // Everything already waiting goes out with it, then one flush; then a
                    // pause, so that under load the writer wakes a few dozen times a
                    // second, not once per request (the channel holds the lines meanwhile).
                    let mut asked = Vec::new();
                    for message in std::iter::once(first).chain(rx.try_iter()) {
                        match message {
                            Message::Line(line) => {
                                let _ = out.write_all(line.as_bytes());
                                let _ = out.write_all(b"\n");
                            }
                            Message::Flush(done) => asked.push(done),
                        }
                    }
                    let _ = out.flush();
                    if !asked.is_empty() {
                        asked.into_iter().for_each(|done| {
                            let _ = done.try_send(());
                        });
                        continue;
                    }
                    std::thread::sleep(BATCH_PAUSE);
                }
                Err(RecvTimeoutError::Timeout) => {
                    let _ = out.flush();
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = out.flush();
                    return;
                }
            }
            if reopen.swap(false, Ordering::Relaxed) {
                let _ = out.flush();
                match open(&target) {
                    Ok(o) => {
                        out = o;
                        log::info!("access log {target} reopened");
                    }
                    Err(e) => log::error!("access log {target}: cannot reopen: {e}"),
                }
            }
        });
        match spawned {
            Ok(_) => Some(tx),
            Err(e) => {
                log::error!("access log: cannot start its writer: {e}");
                None
            }
        }
    }
}

/// One access-log line, a JSON object written straight into a string (no intermediate
/// value tree: the line is built on the request path, once per request).
pub(crate) struct Line(String);

impl Default for Line {
    fn default() -> Self {
        Line::new()
    }
}

impl Line {
    pub(crate) fn new() -> Line {
        let mut s = String::with_capacity(400);
        s.push('{');
        Line(s)
    }

    fn key(&mut self, key: &str) {
        if self.0.len() > 1 {
            self.0.push(',');
        }
        self.0.push('"');
        self.0.push_str(key);
        self.0.push_str("\":");
    }

    /// A string field; `None` is written as null.
    pub(crate) fn str(&mut self, key: &str, value: Option<&str>) -> &mut Line {
        self.key(key);
        match value {
            Some(v) => escape_into(&mut self.0, v),
            None => self.0.push_str("null"),
        }
        self
    }

    /// A number field; `None` is written as null. (itoa, not `fmt`: the line is written
    /// once per request.)
    pub(crate) fn num(&mut self, key: &str, value: Option<impl itoa::Integer>) -> &mut Line {
        self.key(key);
        match value {
            Some(v) => self.0.push_str(itoa::Buffer::new().format(v)),
            None => self.0.push_str("null"),
        }
        self
    }

    /// A duration in milliseconds with microsecond precision; `None` is written as null.
    pub(crate) fn millis(&mut self, key: &str, value: Option<Duration>) -> &mut Line {
        self.key(key);
        match value {
            Some(d) => {
                let micros = d.as_micros();
                self.0.push_str(itoa::Buffer::new().format(micros / 1000));
                push_fraction(&mut self.0, (micros % 1000) as u32);
            }
            None => self.0.push_str("null"),
        }
        self
    }

    /// The time now, RFC 3339 in UTC with milliseconds ("2026-12-05T07:10:38.123Z").
    pub(crate) fn now(&mut self, key: &str) -> &mut Line {
        self.key(key);
        self.0.push('"');
        push_time(&mut self.0, std::time::SystemTime::now());
        self.0.push('"');
        self
    }

    /// A client's address ("127.0.0.1:5000", "[::1]:5000"); `None` is written as null.
    pub(crate) fn addr(&mut self, key: &str, value: Option<std::net::SocketAddr>) -> &mut Line {
        self.key(key);
        match value {
            Some(std::net::SocketAddr::V4(a)) => {
                self.0.push('"');
                for (i, octet) in a.ip().octets().iter().enumerate() {
                    if i > 0 {
                        self.0.push('.');
                    }
                    self.0.push_str(itoa::Buffer::new().format(*octet));
                }
                self.0.push(':');
                self.0.push_str(itoa::Buffer::new().format(a.port()));
                self.0.push('"');
            }
            Some(a) => escape_into(&mut self.0, &a.to_string()),
            None => self.0.push_str("null"),
        }
        self
    }

    pub(crate) fn finish(&mut self) -> String {
        self.0.push('}');
        std::mem::take(&mut self.0)
    }
}

/// Appends "." and `n` (under 1000) as three digits.
fn push_fraction(out: &mut String, n: u32) {
    out.push('.');
    for d in [n / 100, n / 10 % 10, n % 10] {
        out.push(char::from(b'0' + d as u8));
    }
}

/// Appends `t` as RFC 3339 in UTC with milliseconds. The part up to the second is
/// formatted once a second per thread, not once per line.
fn push_time(out: &mut String, t: std::time::SystemTime) {
    use std::cell::RefCell;
    thread_local! {
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let since = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    SECOND.with_borrow_mut(|(second, text)| {
        if *second != since.as_secs() {
            let whole = std::time::UNIX_EPOCH + Duration::from_secs(since.as_secs());
            *text = humantime::format_rfc3339_seconds(whole).to_string();
            text.pop(); // the "Z"
            *second = since.as_secs();
        }
        out.push_str(text);
    });
    push_fraction(out, since.subsec_millis());
    out.push('Z');
}

/// Appends `s` as a JSON string literal.
fn escape_into(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escaped = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escaped.is_empty() {
            use std::fmt::Write as _;
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escaped);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

fn open(target: &str) -> std::io::Result<BufWriter<Box<dyn Write + Send>>> {
    let sink: Box<dyn Write + Send> = if target == "-" {
        Box::new(std::io::stdout())
    } else {
        if let Some(dir) = Path::new(target).parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        Box::new(OpenOptions::new().create(true).append(true).open(target)?) as Box<dyn Write + Send>
    };
    Ok(BufWriter::with_capacity(64 * 1024, sink))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_json_with_every_field_and_nulls() {
        let awkward = "quote \" back \\ nl \n tab \t bell \u{7} é ✓";
        let line = Line::new()
            .str("path", Some(awkward))
            .str("model", None)
            .num("status", Some(200u16))
            .num("attempts", None::<u32>)
            .millis("ttfb_ms", Some(Duration::from_micros(1500)))
            .millis("duration_ms", None)
            .addr("client", Some("127.0.0.1:5000".parse().unwrap()))
            .addr("v6", Some("[::1]:80".parse().unwrap()))
            .finish();
        let v: serde_json::Value = serde_json::from_str(&line).expect(&line);
        assert_eq!(v["path"], awkward);
        assert!(v["model"].is_null() && v["attempts"].is_null() && v["duration_ms"].is_null());
        assert_eq!((v["status"].as_u64(), v["ttfb_ms"].as_f64()), (Some(200), Some(1.5)));
        assert_eq!((v["client"].as_str(), v["v6"].as_str()), (Some("127.0.0.1:5000"), Some("[::1]:80")));
        assert_eq!(v.as_object().unwrap().len(), 8);
        let line = Line::new()
            .millis("a", Some(Duration::from_micros(7)))
            .millis("b", Some(Duration::from_micros(12_345_678)))
            .num("c", Some(u64::MAX))
            .finish();
        assert_eq!(line, format!(r#"{{"a":0.007,"b":12345.678,"c":{}}}"#, u64::MAX));
    }

    #[test]
    fn the_time_is_rfc3339_to_the_millisecond_whatever_the_cached_second() {
        let at = |secs, millis| std::time::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis);
        let mut out = String::new();
        push_time(&mut out, at(1_764_918_638, 5));
        assert_eq!(out, "2025-12-05T07:10:38.005Z");
        out.clear();
        push_time(&mut out, at(1_764_918_638, 999));
        assert_eq!(out, "2025-12-05T07:10:38.999Z");
        out.clear();
        push_time(&mut out, at(1_764_918_639, 0));
        assert_eq!(out, "2025-12-05T07:10:39.000Z");
        let now = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        let line = Line::new().now("time").finish();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        // Same second (or the next one, at a boundary): the cached part is the right one.
        assert_eq!(v["time"].as_str().unwrap().len(), now.len());
        assert!(humantime::parse_rfc3339(v["time"].as_str().unwrap()).is_ok());
    }
}
