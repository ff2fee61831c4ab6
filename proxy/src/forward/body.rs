//! Bodies that stream through the proxy without buffering, counting bytes on the way.
//!
//! The response body carries the request's [`Completion`]: when hyper drops it (the response
//! was fully sent, or the client went away) the access-log line is written. That is the
//! pipeline's last phase, `logging`.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::frontdoor::connection::InFlight;
use crate::frontdoor::server::Shared;
use crate::observe::access_log::AccessRecord;

/// A client's request body on its way upstream.
pub struct RequestBody {
    inner: Source,
    received: Option<Arc<AtomicU64>>,
}

enum Source {
    Client(Incoming),
    /// Read whole before forwarding (webhook bodies, whose signature covers all of them).
    Buffered(Option<Bytes>),
}

impl RequestBody {
    /// Wraps a body; `received` counts its bytes (none for bodies known to be empty).
    pub fn new(inner: Incoming, received: Option<Arc<AtomicU64>>) -> Self {
        Self {
            inner: Source::Client(inner),
            received,
        }
    }

    /// A body already read in full.
    pub fn buffered(bytes: Bytes) -> Self {
        Self {
            inner: Source::Buffered((!bytes.is_empty()).then_some(bytes)),
            received: None,
        }
    }
}

/// The client's request body failed (malformed chunked framing, or the client went away):
/// the client's fault, not the upstream's.
#[derive(Debug, thiserror::Error)]
#[error("the client's request body failed")]
pub struct ClientBodyError(#[source] hyper::Error);

impl Body for RequestBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let polled = match &mut self.inner {
            Source::Client(body) => Pin::new(body).poll_frame(cx).map_err(ClientBodyError),
            Source::Buffered(bytes) => {
                return Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b))));
            }
        };
        if let (Poll::Ready(Some(Ok(frame))), Some(received)) = (&polled, &self.received)
            && let Some(data) = frame.data_ref()
        {
            received.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Source::Client(body) => body.is_end_stream(),
            Source::Buffered(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Source::Client(body) => body.size_hint(),
            Source::Buffered(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

/// What the proxy sends back: an upstream's body, or one the proxy made itself.
pub struct ResponseBody {
    kind: Kind,
    sent: u64,
    completion: Option<Box<Completion>>,
}

enum Kind {
    Upstream(Incoming),
    Full(Option<Bytes>),
}

impl ResponseBody {
    pub fn upstream(body: Incoming) -> Self {
        Self {
            kind: Kind::Upstream(body),
            sent: 0,
            completion: None,
        }
    }

    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Self {
            kind: Kind::Full((!bytes.is_empty()).then_some(bytes)),
            sent: 0,
            completion: None,
        }
    }

    pub fn empty() -> Self {
        Self::full(Bytes::new())
    }

    pub fn with_completion(mut self, completion: Completion) -> Self {
        self.completion = Some(Box::new(completion));
        self
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = match &mut this.kind {
            Kind::Upstream(body) => Pin::new(body).poll_frame(cx),
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        };
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.sent += data.len() as u64;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream(body) => body.is_end_stream(),
            Kind::Full(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream(body) => body.size_hint(),
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Some(completion) = self.completion.take() {
            completion.finish(self.sent);
        }
    }
}

/// Everything the logging phase needs once the response is done.
pub struct Completion {
    pub shared: Arc<Shared>,
    /// Ends the request's in-flight count when the response is done.
    pub in_flight: InFlight,
    pub log: bool,
    pub record: AccessRecord,
    pub received: Option<Arc<AtomicU64>>,
}

impl Completion {
    fn finish(mut self, sent: u64) {
        if self.log {
            self.record.bytes_in = self
                .received
                .as_ref()
                .map_or(0, |r| r.load(Ordering::Relaxed));
            self.record.bytes_out = sent;
            self.record.duration_ms = self.record.start.elapsed().as_secs_f64() * 1000.0;
            self.shared.access_log.write(&self.record);
        }
    }
}
