//! What the proxy sends back: an upstream's body streamed through, or one the proxy made
//! itself, counting bytes on the way.
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

use crate::observe::access_log::{AccessLog, AccessRecord};
use crate::state::client::InFlight;

/// What the proxy sends back: an upstream's body, or one the proxy made itself.
pub(crate) struct ResponseBody {
    kind: Kind,
    sent: u64,
    completion: Option<Box<Completion>>,
}

enum Kind {
    Upstream(Incoming),
    Full(Option<Bytes>),
}

impl ResponseBody {
    pub(crate) fn upstream(body: Incoming) -> Self {
        Self {
            kind: Kind::Upstream(body),
            sent: 0,
            completion: None,
        }
    }

    pub(crate) fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Self {
            kind: Kind::Full((!bytes.is_empty()).then_some(bytes)),
            sent: 0,
            completion: None,
        }
    }

    pub(crate) fn empty() -> Self {
        Self::full(Bytes::new())
    }

    pub(crate) fn with_completion(mut self, completion: Completion) -> Self {
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
pub(crate) struct Completion {
    pub access_log: Arc<AccessLog>,
    /// Ends the request's in-flight count when the response is done.
    #[allow(
        dead_code,
        reason = "held for its Drop: the request counts as in flight"
    )]
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
            self.access_log.write(&self.record);
        }
    }
}
