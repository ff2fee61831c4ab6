//! The client's request body on its way upstream: streamed without buffering (or read whole
//! for a webhook's signature), counting bytes on the way. A leaf: it depends on hyper only.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// A client's request body on its way upstream.
pub(crate) struct RequestBody {
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
    pub(crate) fn new(inner: Incoming, received: Option<Arc<AtomicU64>>) -> Self {
        Self {
            inner: Source::Client(inner),
            received,
        }
    }

    /// A body already read in full.
    pub(crate) fn buffered(bytes: Bytes) -> Self {
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
pub(crate) struct ClientBodyError(#[source] hyper::Error);

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
