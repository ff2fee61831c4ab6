//! Relayed tunnel streams that outlive the connection they came by.
//!
//! A stream relayed from another replica ([`super::relay`]) runs over two connections: the
//! client's to the replica it reached, and that replica's to this one, which holds the agent's
//! stream. When the first replica stops (a rolling restart) or dies, the agent's stream here
//! need not end with it: it waits ([`WAIT_FOR`]) for the client to come back through any
//! replica and ask for it again by the stream's id. Meanwhile this end keeps the last bytes it
//! sent toward the client ([`KEEP_SENT`]) and counts the bytes it passed on to the agent; the
//! client does the same, and each sends again what the other did not receive.
//!
//! Only a connection lost without a clean close leaves a stream waiting: the relaying replica
//! closes cleanly whenever the stream really ended (the client closed it, the policy cut it),
//! so a finished ssh session does not keep its agent stream. Once either side has sent its end
//! of stream, a lost connection ends the stream: half a stream is not resumed.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use sekisho_wire::COPY_BUFFER;
use sekisho_wire::resume::Sent;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};

use super::stream::{StreamId, lock};

/// How long a stream whose connection was lost waits to be resumed.
pub(crate) const WAIT_FOR: Duration = Duration::from_secs(60);
/// The bytes sent toward the client kept for resuming, at most (per stream). What a lost
/// connection can swallow is what the replica in between had in its buffers: little for an
/// interactive session, possibly more than this in the middle of a bulk transfer, which then
/// ends as `stream_gone` when resumed.
pub(crate) const KEEP_SENT: usize = 256 * 1024;

/// Who a stream is for, as a value to compare: the token's issuer and subject, hashed.
pub(crate) type Owner = [u8; 32];

/// The [`Owner`] of a stream opened with a token of `issuer` for `subject`.
pub(crate) fn owner(issuer: &str, subject: &str) -> Owner {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(issuer.as_bytes());
    context.update(b"\0");
    context.update(subject.as_bytes());
    context
        .finish()
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

/// This replica's end of a resumable stream: the agent's stream, and what resuming needs.
pub(crate) struct Held<A = TokioIo<Upgraded>> {
    pub agent: String,
    pub target: String,
    pub owner: Owner,
    pub io: A,
    /// What went toward the client.
    pub sent: Sent,
    /// The bytes from the client passed on to the agent.
    pub received: u64,
}

/// How long a request to resume a stream waits for it to start waiting: the client may come
/// back before this replica has noticed that the connection the stream came by is lost.
pub(crate) const NOTICE_WITHIN: Duration = Duration::from_secs(3);

/// Streams waiting to be resumed, by id.
#[derive(Default)]
pub(crate) struct Waiting {
    streams: Arc<Mutex<HashMap<StreamId, (u64, Held)>>>,
    turn: AtomicU64,
    /// Woken when a stream starts waiting.
    kept: tokio::sync::Notify,
}

impl std::fmt::Debug for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiting")
            .field("streams", &lock(&self.streams).len())
            .finish()
    }
}

impl Waiting {
    /// Keeps `held` under `id` for [`WAIT_FOR`]; if nobody takes it by then, it is dropped (the
    /// agent's stream ends) and `expired` is called.
    pub(crate) fn keep(&self, id: StreamId, held: Held, expired: impl FnOnce() + Send + 'static) {
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        lock(&self.streams).insert(id, (turn, held));
        self.kept.notify_waiters();
        let streams = self.streams.clone();
        tokio::spawn(async move {
            tokio::time::sleep(WAIT_FOR).await;
            let gone = {
                let mut streams = lock(&streams);
                match streams.get(&id) {
                    Some((kept, _)) if *kept == turn => streams.remove(&id),
                    _ => None,
                }
            };
            if gone.is_some() {
                expired();
            }
        });
    }

    /// The stream waiting under `id`, taken, if it is `owner`'s stream to `agent`'s `target`
    /// (another's is left waiting); waiting up to `within` for it to start waiting.
    pub(crate) async fn take(
        &self,
        id: &StreamId,
        agent: &str,
        target: &str,
        owner: &Owner,
        within: Duration,
    ) -> Option<Held> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let kept = self.kept.notified();
            tokio::pin!(kept);
            kept.as_mut().enable();
            if let Some(held) = self.take_now(id, agent, target, owner) {
                return Some(held);
            }
            tokio::time::timeout_at(deadline, kept).await.ok()?;
        }
    }

    fn take_now(&self, id: &StreamId, agent: &str, target: &str, owner: &Owner) -> Option<Held> {
        let mut streams = lock(&self.streams);
        let (_, held) = streams.get(id)?;
        let same = held.agent == agent && held.target == target;
        if !same || !bool::from(subtle::ConstantTimeEq::ct_eq(&held.owner[..], &owner[..])) {
            return None;
        }
        streams.remove(id).map(|(_, held)| held)
    }
}

/// How pumping between a connection and a held stream ended.
pub(crate) enum Pumped<A = TokioIo<Upgraded>> {
    /// The stream ended: both sides ended, or one failed.
    Ended,
    /// The connection was lost while both sides were open: the stream can wait to be resumed.
    Lost(Held<A>),
}

/// What happened to one direction.
enum Flow {
    /// Its source ended, and the end was passed on.
    Ended,
    /// The connection failed.
    Lost,
    /// The agent's stream failed.
    AgentFailed,
}

/// Copies between `conn` and the agent's stream in `held` (after first sending `resend`
/// toward the client) until the stream ends or the connection is lost. Every byte from the
/// agent is recorded before it is sent, and a byte from the client is counted once the agent's
/// stream took it, so that nothing is lost or doubled however the connection breaks.
pub(crate) async fn pump<C, A>(conn: C, held: Held<A>, resend: Vec<u8>) -> Pumped<A>
where
    C: AsyncRead + AsyncWrite + Unpin,
    A: AsyncRead + AsyncWrite + Unpin,
{
    let Held {
        agent,
        target,
        owner,
        io,
        mut sent,
        mut received,
    } = held;
    let (mut conn_read, mut conn_write) = tokio::io::split(conn);
    let (mut agent_read, mut agent_write) = tokio::io::split(io);
    {
        let up = to_agent(&mut conn_read, &mut agent_write, &mut received);
        let down = to_client(&mut agent_read, &mut conn_write, &mut sent, resend);
        tokio::pin!(up, down);
        let (first, other) = tokio::select! {
            flow = &mut up => (flow, Either::Down(down)),
            flow = &mut down => (flow, Either::Up(up)),
        };
        match first {
            Flow::Lost => {}
            Flow::AgentFailed => return Pumped::Ended,
            // One side ended: the other runs to its end, and a lost connection now ends it.
            Flow::Ended => {
                match other {
                    Either::Up(up) => up.await,
                    Either::Down(down) => down.await,
                };
                return Pumped::Ended;
            }
        }
    }
    Pumped::Lost(Held {
        agent,
        target,
        owner,
        io: agent_read.unsplit(agent_write),
        sent,
        received,
    })
}

enum Either<U, D> {
    Up(U),
    Down(D),
}

/// From the client to the agent: counts what the agent's stream took.
async fn to_agent<R, W>(conn: &mut R, agent: &mut W, received: &mut u64) -> Flow
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; COPY_BUFFER];
    loop {
        let n = match conn.read(&mut buf).await {
            Ok(0) => {
                return match agent.shutdown().await {
                    Ok(()) => Flow::Ended,
                    Err(_) => Flow::AgentFailed,
                };
            }
            Ok(n) => n,
            Err(_) => return Flow::Lost,
        };
        let mut at = 0;
        while at < n {
            match agent.write(&buf[at..n]).await {
                Ok(0) | Err(_) => return Flow::AgentFailed,
                Ok(written) => {
                    at += written;
                    *received += written as u64;
                }
            }
        }
        if agent.flush().await.is_err() {
            return Flow::AgentFailed;
        }
    }
}

/// From the agent to the client: records what is read before sending it.
async fn to_client<R, W>(agent: &mut R, conn: &mut W, sent: &mut Sent, resend: Vec<u8>) -> Flow
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if !resend.is_empty() && (conn.write_all(&resend).await.is_err() || conn.flush().await.is_err())
    {
        return Flow::Lost;
    }
    let mut buf = vec![0u8; COPY_BUFFER];
    loop {
        let n = match agent.read(&mut buf).await {
            Ok(0) => {
                return match conn.shutdown().await {
                    Ok(()) => Flow::Ended,
                    Err(_) => Flow::Lost,
                };
            }
            Ok(n) => n,
            Err(_) => return Flow::AgentFailed,
        };
        sent.record(&buf[..n]);
        if conn.write_all(&buf[..n]).await.is_err() || conn.flush().await.is_err() {
            return Flow::Lost;
        }
    }
}

/// An agent's stream taken back from waiting on the replica the client came back to: it first
/// reads as what the client lacks, then as the agent's stream.
pub(crate) struct Resumed {
    io: TokioIo<Upgraded>,
    resend: Vec<u8>,
    at: usize,
}

impl Resumed {
    pub(crate) fn new(io: TokioIo<Upgraded>, resend: Vec<u8>) -> Self {
        Self { io, resend, at: 0 }
    }
}

impl AsyncRead for Resumed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.at < this.resend.len() {
            let n = buf.remaining().min(this.resend.len() - this.at);
            buf.put_slice(&this.resend[this.at..this.at + n]);
            this.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Resumed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::DuplexStream;

    use super::*;

    /// A connection whose end without a close reads as a failure, as TLS's does.
    struct NoClose(DuplexStream);

    impl AsyncRead for NoClose {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let before = buf.filled().len();
            match Pin::new(&mut self.0).poll_read(cx, buf) {
                Poll::Ready(Ok(())) if buf.filled().len() == before => {
                    Poll::Ready(Err(std::io::ErrorKind::UnexpectedEof.into()))
                }
                polled => polled,
            }
        }
    }

    impl AsyncWrite for NoClose {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, data)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    async fn read(side: &mut DuplexStream, n: usize) -> Vec<u8> {
        let mut got = vec![0; n];
        side.read_exact(&mut got).await.unwrap();
        got
    }

    #[tokio::test]
    async fn a_connection_lost_without_a_close_leaves_the_stream_waiting_with_every_byte_counted() {
        let (conn, mut client) = tokio::io::duplex(4096);
        let (io, mut agent) = tokio::io::duplex(4096);
        let held = Held {
            agent: "nas".into(),
            target: "127.0.0.1:22".into(),
            owner: [1; 32],
            io,
            sent: Sent::new(1024),
            received: 0,
        };
        let pumping = tokio::spawn(pump(NoClose(conn), held, Vec::new()));
        client.write_all(b"ping").await.unwrap();
        assert_eq!(read(&mut agent, 4).await, b"ping");
        agent.write_all(b"pong").await.unwrap();
        assert_eq!(read(&mut client, 4).await, b"pong");
        drop(client);
        let Pumped::Lost(held) = pumping.await.unwrap() else {
            panic!("a lost connection ended the stream");
        };
        assert_eq!(held.received, 4);
        assert_eq!(held.sent.since(0).as_deref(), Some(&b"pong"[..]));

        // The client had received "po": the rest comes first on the next connection (one that
        // can close cleanly), then the stream goes on both ways.
        let resend = held.sent.since(2).unwrap();
        let (conn, mut client) = tokio::io::duplex(4096);
        let pumping = tokio::spawn(pump(conn, held, resend));
        assert_eq!(read(&mut client, 2).await, b"ng");
        agent.write_all(b"!").await.unwrap();
        assert_eq!(read(&mut client, 1).await, b"!");
        client.write_all(b"more").await.unwrap();
        assert_eq!(read(&mut agent, 4).await, b"more");

        // A clean close is the stream's end, passed on: nothing waits.
        client.shutdown().await.unwrap();
        let mut rest = Vec::new();
        agent.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        drop(agent);
        assert!(matches!(pumping.await.unwrap(), Pumped::Ended));
    }

    #[test]
    fn owners_differ_by_issuer_and_subject_and_their_boundary() {
        let alice = owner("https://idp.example", "alice");
        assert_eq!(alice, owner("https://idp.example", "alice"));
        assert_ne!(alice, owner("https://other.example", "alice"));
        assert_ne!(alice, owner("https://idp.example", "bob"));
        assert_ne!(owner("a", "bc"), owner("ab", "c"));
    }
}
