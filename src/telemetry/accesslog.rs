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

pub struct AccessLog {
    target: String,
    sender: OnceLock<Option<SyncSender<String>>>,
    pub dropped: AtomicU64,
}

impl AccessLog {
    /// `target`: a file path, or "-" for standard output.
    pub fn new(target: &str) -> AccessLog {
        AccessLog { target: target.to_string(), sender: OnceLock::new(), dropped: AtomicU64::new(0) }
    }

    pub fn write(&self, line: String) {
        let Some(tx) = self.sender.get_or_init(|| self.start()) else { return };
        if tx.try_send(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn start(&self) -> Option<SyncSender<String>> {
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
        let (tx, rx) = sync_channel::<String>(BACKLOG);
        let target = self.target.clone();
        let spawned = std::thread::Builder::new().name("access-log".into()).spawn(move || loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    // Everything already waiting goes out with it, then one flush; then a
                    // pause, so that under load the writer wakes a few dozen times a
                    // second, not once per request (the channel holds the lines meanwhile).
                    for line in std::iter::once(line).chain(rx.try_iter()) {
                        let _ = out.write_all(line.as_bytes());
                        let _ = out.write_all(b"\n");
                    }
                    let _ = out.flush();
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
pub struct Line(String);

impl Default for Line {
    fn default() -> Self {
        Line::new()
    }
}

impl Line {
    pub fn new() -> Line {
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
    pub fn str(&mut self, key: &str, value: Option<&str>) -> &mut Line {
        self.key(key);
        match value {
            Some(v) => escape_into(&mut self.0, v),
            None => self.0.push_str("null"),
        }
        self
    }

    /// A number field; `None` is written as null.
    pub fn num(&mut self, key: &str, value: Option<impl std::fmt::Display>) -> &mut Line {
        use std::fmt::Write as _;
        self.key(key);
        match value {
            Some(v) => {
                let _ = write!(self.0, "{v}");
            }
            None => self.0.push_str("null"),
        }
        self
    }

    /// A duration in milliseconds with microsecond precision; `None` is written as null.
    pub fn millis(&mut self, key: &str, value: Option<Duration>) -> &mut Line {
        use std::fmt::Write as _;
        self.key(key);
        match value {
            Some(d) => {
                let _ = write!(self.0, "{:.3}", d.as_secs_f64() * 1000.0);
            }
            None => self.0.push_str("null"),
        }
        self
    }

    pub fn finish(&mut self) -> String {
        self.0.push('}');
        std::mem::take(&mut self.0)
    }
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
            .finish();
        let v: serde_json::Value = serde_json::from_str(&line).expect(&line);
        assert_eq!(v["path"], awkward);
        assert!(v["model"].is_null() && v["attempts"].is_null() && v["duration_ms"].is_null());
        assert_eq!((v["status"].as_u64(), v["ttfb_ms"].as_f64()), (Some(200), Some(1.5)));
        assert_eq!(v.as_object().unwrap().len(), 6);
    }
}
