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
