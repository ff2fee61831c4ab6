//! A lingering close for HTTP/2 connections: once hyper has said GOAWAY and closed its side
//! (TLS close, FIN), whatever the client still sends is read and thrown away for up to
//! [`LINGER`] before the socket is closed, as nginx's `lingering_close` does.
//!
//! A socket closed while the client's bytes wait unread in it makes the kernel answer RST, and a
//! RST throws away what the client had not read yet: the final GOAWAY that tells it which of
//! its requests were not processed (and may be sent again), and the TLS close. A client that
//! sent a request just before it read the GOAWAY would see its connection reset instead, and
//! fail that request, in every drain (a rolling restart, an idle timeout).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};
use tokio_util::task::TaskTracker;

/// The longest a closed connection is read from before the socket goes.
const LINGER: Duration = Duration::from_secs(2);

/// A connection that lingers, on `tracker` (so a stopping worker waits for it), when it is
/// dropped after its writing side was shut down.
pub(crate) struct Lingering<IO: AsyncRead + Unpin + Send + 'static> {
    inner: Option<IO>,
    shut: bool,
    tracker: TaskTracker,
}

impl<IO: AsyncRead + Unpin + Send + 'static> Lingering<IO> {
    pub(crate) fn new(inner: IO, tracker: TaskTracker) -> Self {
        Self {
            inner: Some(inner),
            shut: false,
            tracker,
        }
    }

    fn inner(&mut self) -> &mut IO {
        self.inner.as_mut().expect("taken only on drop")
    }
}

impl<IO: AsyncRead + Unpin + Send + 'static> Drop for Lingering<IO> {
    fn drop(&mut self) {
        // Dropped by a runtime that is going away (its tasks with it): nothing to linger on.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if let Some(mut io) = self.inner.take().filter(|_| self.shut) {
            self.tracker.spawn_on(
                async move {
                    let mut discard = [0u8; 4096];
                    let _ = tokio::time::timeout(LINGER, async {
                        while matches!(io.read(&mut discard).await, Ok(n) if n > 0) {}
                    })
                    .await;
                },
                &runtime,
            );
        }
    }
}

impl<IO: AsyncRead + Unpin + Send + 'static> AsyncRead for Lingering<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(self.inner()).poll_read(cx, buf)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncWrite for Lingering<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.inner()).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.inner()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(|io| io.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.inner()).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(self.inner()).poll_shutdown(cx);
        if let Poll::Ready(Ok(())) = polled {
            self.shut = true;
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt as _;

    #[tokio::test]
    async fn a_shut_connection_reads_what_the_peer_still_sends_until_it_closes() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let tracker = TaskTracker::new();
        let mut lingering = Lingering::new(ours, tracker.clone());
        lingering.shutdown().await.unwrap();
        drop(lingering);
        // The peer's late bytes are taken (a full pipe would block this write otherwise)...
        tokio::time::timeout(Duration::from_secs(1), theirs.write_all(&[7; 1024]))
            .await
            .expect("the late bytes are read")
            .unwrap();
        // ...and its end of stream ends the linger.
        let mut end = Vec::new();
        theirs.shutdown().await.unwrap();
        theirs.read_to_end(&mut end).await.unwrap();
        tracker.close();
        tokio::time::timeout(Duration::from_secs(1), tracker.wait())
            .await
            .expect("the linger ends with the peer's close");
    }

    #[tokio::test]
    async fn a_connection_dropped_without_a_shutdown_does_not_linger() {
        let (ours, _theirs) = tokio::io::duplex(64);
        let tracker = TaskTracker::new();
        drop(Lingering::new(ours, tracker.clone()));
        assert!(tracker.is_empty());
    }
}
