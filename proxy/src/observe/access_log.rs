//! One JSON line per request, written off the request path by a background thread.

use std::cell::RefCell;
use std::io::Write;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime};

use http::{HeaderValue, Method};
use serde::Serialize;
use tracing_appender::non_blocking::{NonBlocking, WorkerGuard};
use tracing_subscriber::fmt::MakeWriter;

/// What is known about a request by the time its response is done.
#[derive(Debug, Clone)]
pub(crate) struct AccessRecord {
    pub start: Instant,
    pub request_id: HeaderValue,
    pub client: IpAddr,
    pub host: String,
    pub route: Option<Arc<str>>,
    pub method: Method,
    pub path: String,
    pub status: u16,
    pub upstream: Option<Arc<str>>,
    /// Who the access phase identified (email or subject).
    pub user: Option<Arc<str>>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration_ms: f64,
}

#[derive(Serialize)]
struct Line<'a> {
    /// RFC 3339, as the diagnostic log's `timestamp`.
    timestamp: String,
    request_id: &'a str,
    client: IpAddr,
    host: &'a str,
    route: Option<&'a str>,
    method: &'a str,
    path: &'a str,
    status: u16,
    bytes_in: u64,
    bytes_out: u64,
    duration_ms: f64,
    upstream: Option<&'a str>,
    user: Option<&'a str>,
}

/// The background writer starts with the first line: its queue (tracing-appender's default
/// of 128,000 lines, ≈ 4 MiB) costs nothing while the access log is off.
pub(crate) struct AccessLog {
    sink: Mutex<Option<Box<dyn Write + Send>>>,
    writer: OnceLock<(NonBlocking, WorkerGuard)>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessLog")
    }
}

impl AccessLog {
    /// Lines go to `sink` from a background thread; when it falls behind, lines are dropped
    /// rather than slowing requests down.
    pub(crate) fn new(sink: Box<dyn Write + Send>) -> Self {
        Self {
            sink: Mutex::new(Some(sink)),
            writer: OnceLock::new(),
        }
    }

    fn writer(&self) -> &NonBlocking {
        let (writer, _guard) = self.writer.get_or_init(|| {
            let sink = self
                .sink
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .unwrap_or_else(|| Box::new(std::io::sink()));
            // The background thread writes whatever has queued up, then flushes: under load,
            // lines leave in batches of up to 64 KiB instead of one write(2) each.
            tracing_appender::non_blocking(std::io::BufWriter::with_capacity(64 * 1024, sink))
        });
        writer
    }

    pub(crate) fn write(&self, record: &AccessRecord) {
        thread_local! {
            static BUF: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
        }
        let line = Line {
            timestamp: humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
            request_id: record.request_id.to_str().unwrap_or("-"),
            client: record.client,
            host: &record.host,
            route: record.route.as_deref(),
            method: record.method.as_str(),
            path: &record.path,
            status: record.status,
            bytes_in: record.bytes_in,
            bytes_out: record.bytes_out,
            duration_ms: (record.duration_ms * 1000.0).round() / 1000.0,
            upstream: record.upstream.as_deref(),
            user: record.user.as_deref(),
        };
        BUF.with_borrow_mut(|buf| {
            buf.clear();
            if serde_json::to_writer(&mut *buf, &line).is_ok() {
                buf.push(b'\n');
                let _ = self.writer().make_writer().write_all(buf);
            }
        });
    }
}
