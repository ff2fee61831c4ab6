//! WebSockets: where their handshakes may come from ([`origin`]), and re-authorising them while
//! they are open.
//!
//! A WebSocket outlives the request that opened it, so a session that ends (expiry, logout,
//! back-channel logout) or a policy that stops allowing it must close it: the relay checks every
//! [`RECHECK_EVERY`] and at once when a revocation arrives. When the answer turns to no, it
//! stops passing data on, lets the frame in flight in each direction end, sends both the client
//! and the upstream a close frame with status 1008 (policy violation), waits a little for each
//! to answer with its own, and then closes both connections. Both directions follow the frame boundaries ([`frame`]: RFC 6455
//! §5.2 headers only; payloads pass through untouched), so each close frame lands between two
//! frames rather than inside one.

mod frame;
pub(crate) mod origin;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::auth::revocation::next_change;
use crate::auth::session::{SessionRecord, unix_now};
use crate::auth::who::who_from_record;
use crate::policy::Decision;
use crate::state::Shared;
use crate::state::client::ClientIo;
use frame::{FrameCursor, close_frame};

/// How often an open WebSocket's session and policy are checked again.
pub(crate) const RECHECK_EVERY: Duration = Duration::from_secs(2);

/// How long to wait for the frames in flight to end before cutting a connection without a close
/// frame.
const BOUNDARY_WAIT: Duration = Duration::from_secs(5);

/// How long the client and the upstream have to answer the proxy's close frame with theirs.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// The close frame's status: policy violation (RFC 6455 §7.4.1).
const POLICY_VIOLATION: u16 = 1008;

/// The close frame's reason.
const CLOSE_REASON: &str = "session ended or no longer allowed";

/// Bytes read at a time, in each direction.
const BUFFER: usize = 16 * 1024;

/// What a WebSocket was allowed by, to ask again later.
#[derive(Debug)]
pub(crate) struct Guard {
    pub shared: Arc<Shared>,
    pub host: String,
    pub path: String,
    pub session: SessionRecord,
}

impl Guard {
    /// Whether the session is still current and the route's policy still lets it through.
    pub(crate) fn still_allowed(&self) -> bool {
        let snapshot = self.shared.snapshot.load();
        let Some(identity) = snapshot.identity.as_deref() else {
            return false;
        };
        let session = &self.session;
        if unix_now() >= session.expires_at || identity.state.revocations.ends(session.into()) {
            return false;
        }
        let Some(route) = snapshot.routes.find(&self.host, &self.path) else {
            return false;
        };
        let who = who_from_record(session.clone());
        matches!(
            route.access.decide(
                Some(&who.identity),
                &Method::GET,
                &self.path,
                &HeaderMap::new()
            ),
            Decision::Allow { .. }
        )
    }

    /// Resolves once the session or the policy no longer allows the WebSocket.
    async fn revoked(&self) {
        let mut recheck = tokio::time::interval(RECHECK_EVERY);
        recheck.tick().await;
        // A revocation (here or on another replica) is acted on at once, not at the next tick.
        let mut revocations = self
            .shared
            .snapshot
            .load()
            .identity
            .as_deref()
            .map(|identity| identity.state.revocations.subscribe());
        loop {
            tokio::select! {
                _ = recheck.tick() => {}
                () = next_change(&mut revocations) => {}
            }
            if !self.still_allowed() {
                tracing::info!(
                    target: "sekisho::access",
                    host = %self.host,
                    path = %self.path,
                    subject = %self.session.subject,
                    "closing a WebSocket: its session ended or the policy no longer allows it"
                );
                return;
            }
        }
    }
}

/// Relays a WebSocket both ways until either side closes or `guard` stops allowing it.
pub(crate) async fn relay<C, U>(client: C, upstream: U, guard: Guard)
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    splice(client, upstream, guard.revoked()).await;
}

/// How a pump stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PumpEnd {
    /// Its reader ended, or a read or write failed.
    Ended,
    /// Asked to stop, it forwarded the rest of the frame in flight and nothing after.
    AtBoundary,
}

/// One direction of a WebSocket: reads, follows the frames, forwards.
#[derive(Debug)]
struct Pump {
    cursor: FrameCursor,
    /// A close frame was forwarded before the pump stopped.
    forwarded_close: bool,
    buf: Box<[u8]>,
}

impl Pump {
    fn new() -> Self {
        Self {
            cursor: FrameCursor::default(),
            forwarded_close: false,
            buf: vec![0; BUFFER].into_boxed_slice(),
        }
    }

    /// Forwards from `from` to `to` until `from` ends, or, once `stop` turns true, until the
    /// frame in flight has been forwarded. Bytes read past that frame are followed (a close
    /// frame among them counts as the peer's answer) but not forwarded.
    async fn run<R, W>(
        &mut self,
        from: &mut R,
        to: &mut W,
        mut stop: watch::Receiver<bool>,
    ) -> PumpEnd
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut stopping = false;
        loop {
            if stopping && self.cursor.at_boundary() {
                self.forwarded_close = self.cursor.close_seen();
                return PumpEnd::AtBoundary;
            }
            // Both cancel-safe: a read that loses the race has read nothing.
            let n = tokio::select! {
                read = from.read(&mut self.buf) => match read {
                    Ok(0) | Err(_) => return PumpEnd::Ended,
                    Ok(n) => n,
                },
                _ = stop.changed(), if !stopping => {
                    stopping = true;
                    continue;
                }
            };
            let forward = if stopping {
                self.cursor.advance_to_boundary(&self.buf[..n])
            } else {
                self.cursor.advance(&self.buf[..n]);
                n
            };
            if to.write_all(&self.buf[..forward]).await.is_err() || to.flush().await.is_err() {
                return PumpEnd::Ended;
            }
            if forward < n {
                self.forwarded_close = self.cursor.close_seen();
                self.cursor.advance(&self.buf[forward..n]);
                return PumpEnd::AtBoundary;
            }
        }
    }

    /// Reads from `from`, forwarding nothing, until a close frame has come (or already came),
    /// `from` ends, or a read fails.
    async fn await_close<R: AsyncRead + Unpin>(&mut self, from: &mut R) {
        while !self.cursor.close_seen() {
            match from.read(&mut self.buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => self.cursor.advance(&self.buf[..n]),
            }
        }
    }
}

/// Relays between `client` and `upstream` until either ends; when `revoked` resolves first,
/// closes both with 1008.
async fn splice<C, U>(client: C, upstream: U, revoked: impl Future<Output = ()>)
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut upstream_read, mut upstream_write) = tokio::io::split(upstream);
    let mut to_client = Pump::new();
    let mut to_upstream = Pump::new();

    // Until revoked: both directions; then until each has reached a frame boundary.
    let ends = {
        let (stop, stopping) = watch::channel(false);
        let down = to_client.run(&mut upstream_read, &mut client_write, stopping.clone());
        let up = to_upstream.run(&mut client_read, &mut upstream_write, stopping);
        tokio::pin!(down, up, revoked);
        let (mut down_end, mut up_end) = (None, None);
        let mut deadline: Option<Instant> = None;
        loop {
            let boundary_wait = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                end = &mut down, if down_end.is_none() => down_end = Some(end),
                end = &mut up, if up_end.is_none() => up_end = Some(end),
                () = &mut revoked, if deadline.is_none() => {
                    let _ = stop.send(true);
                    deadline = Some(Instant::now() + BOUNDARY_WAIT);
                }
                () = boundary_wait => break Some((down_end, up_end)),
            }
            if down_end == Some(PumpEnd::Ended) || up_end == Some(PumpEnd::Ended) {
                // One side is gone (or broke the stream): no handshake to finish.
                break None;
            }
            if down_end.is_some() && up_end.is_some() {
                break Some((down_end, up_end));
            }
        }
    };
    let Some((down_end, up_end)) = ends else {
        shut_down(&mut client_write, &mut upstream_write).await;
        return;
    };

    // The closing handshake with each side that stands at a frame boundary; a side whose frame
    // did not end in time is cut without one. The frame towards the upstream is masked, as the
    // proxy is its client.
    let client_got_close = to_client.forwarded_close;
    let upstream_got_close = to_upstream.forwarded_close;
    let send_client = down_end == Some(PumpEnd::AtBoundary) && !client_got_close;
    let send_upstream = up_end == Some(PumpEnd::AtBoundary) && !upstream_got_close;
    let client_side = async {
        if send_client {
            let frame = close_frame(POLICY_VIOLATION, CLOSE_REASON, None);
            if client_write.write_all(&frame).await.is_err() || client_write.flush().await.is_err()
            {
                return;
            }
        }
        if send_client || client_got_close {
            to_upstream.await_close(&mut client_read).await;
        }
    };
    let upstream_side = async {
        if send_upstream {
            // RFC 6455 §5.3: a fresh, unpredictable key, from `rand`'s CSPRNG (seeded by the
            // OS) for every frame.
            let frame = close_frame(POLICY_VIOLATION, CLOSE_REASON, Some(rand::random()));
            if upstream_write.write_all(&frame).await.is_err()
                || upstream_write.flush().await.is_err()
            {
                return;
            }
        }
        if send_upstream || upstream_got_close {
            to_client.await_close(&mut upstream_read).await;
        }
    };
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        tokio::join!(client_side, upstream_side)
    })
    .await;
    shut_down(&mut client_write, &mut upstream_write).await;
}

/// Ends both connections (TLS `close_notify`, then FIN), giving up on a peer that does not read.
async fn shut_down<C: AsyncWrite + Unpin, U: AsyncWrite + Unpin>(client: &mut C, upstream: &mut U) {
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        tokio::join!(client.shutdown(), upstream.shutdown())
    })
    .await;
}

/// Copies bytes both ways between the client and an upgraded upstream connection (WebSocket and
/// other HTTP/1.1 upgrades) until either side closes.
pub(crate) async fn splice_upgraded(
    mut client: ClientIo,
    upstream: OnUpgrade,
    guard: Option<Guard>,
) {
    let upstream = match upstream.await {
        Ok(upgraded) => upgraded,
        Err(error) => {
            tracing::debug!(%error, "upstream upgrade did not complete");
            return;
        }
    };
    let mut upstream = TokioIo::new(upstream);
    if let Some(guard) = guard {
        relay(client, upstream, guard).await;
        return;
    }
    if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(%error, "upgraded connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::DuplexStream;
    use tokio::sync::oneshot;

    use super::*;

    const CLIENT_KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// One frame with FIN set; masked with `mask` when given (as a client sends it).
    fn frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let bit = if mask.is_some() { 0x80 } else { 0 };
        let mut out = vec![0x80 | opcode];
        match payload.len() {
            len @ 0..=125 => out.push(bit | len as u8),
            len @ 126..=0xffff => {
                out.push(bit | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                out.push(bit | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        match mask {
            Some(key) => {
                out.extend_from_slice(&key);
                out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
            }
            None => out.extend_from_slice(payload),
        }
        out
    }

    /// A close frame's payload: the status and the reason.
    fn close_payload(status: u16, reason: &str) -> Vec<u8> {
        let mut payload = status.to_be_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes());
        payload
    }

    /// The next frame on `stream`: opcode, unmasked payload, whether it was masked. `None` when
    /// the stream ends between frames.
    async fn read_frame(stream: &mut DuplexStream) -> Option<(u8, Vec<u8>, bool)> {
        let mut head = [0u8; 2];
        match stream.read_exact(&mut head).await {
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return None,
            other => other.expect("a frame header"),
        };
        let len = match head[1] & 0x7f {
            126 => u64::from(stream.read_u16().await.unwrap()),
            127 => stream.read_u64().await.unwrap(),
            len => u64::from(len),
        };
        let masked = head[1] & 0x80 != 0;
        let mut key = [0u8; 4];
        if masked {
            stream.read_exact(&mut key).await.unwrap();
        }
        let mut payload = vec![0u8; usize::try_from(len).unwrap()];
        stream.read_exact(&mut payload).await.unwrap();
        if masked {
            for (i, byte) in payload.iter_mut().enumerate() {
                *byte ^= key[i % 4];
            }
        }
        Some((head[0] & 0x0f, payload, masked))
    }

    async fn read_n(stream: &mut DuplexStream, n: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; n];
        stream.read_exact(&mut bytes).await.unwrap();
        bytes
    }

    /// The test's ends of a relay between a client and an upstream, and the switch that
    /// revokes it.
    struct Relay {
        client: DuplexStream,
        upstream: DuplexStream,
        revoke: Option<oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<()>,
    }

    fn start() -> Relay {
        let (client, client_end) = tokio::io::duplex(256 * 1024);
        let (upstream_end, upstream) = tokio::io::duplex(256 * 1024);
        let (revoke, revoked) = oneshot::channel::<()>();
        let task = tokio::spawn(splice(client_end, upstream_end, async move {
            if revoked.await.is_err() {
                std::future::pending::<()>().await;
            }
        }));
        Relay {
            client,
            upstream,
            revoke: Some(revoke),
            task,
        }
    }

    impl Relay {
        fn revoke(&mut self) {
            let _ = self.revoke.take().expect("revoked once").send(());
        }
    }

    fn policy_close() -> Vec<u8> {
        close_payload(POLICY_VIOLATION, CLOSE_REASON)
    }

    #[tokio::test(start_paused = true)]
    async fn frames_pass_both_ways_unchanged_until_either_side_ends() {
        let mut relay = start();
        let hello = frame(0x1, b"hello", Some(CLIENT_KEY));
        relay.client.write_all(&hello[..3]).await.unwrap();
        relay.client.write_all(&hello[3..]).await.unwrap();
        assert_eq!(read_n(&mut relay.upstream, hello.len()).await, hello);
        let big = frame(0x2, &vec![9u8; 70_000], None);
        relay.upstream.write_all(&big).await.unwrap();
        assert_eq!(read_n(&mut relay.client, big.len()).await, big);

        relay.upstream.shutdown().await.unwrap();
        assert_eq!(read_frame(&mut relay.client).await, None);
        relay.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_revoked_websocket_finishes_the_frames_in_flight_then_closes_both_sides_with_1008() {
        let mut relay = start();
        // A frame in flight each way: the client's stops inside its payload, the upstream's
        // inside its 64-bit length.
        let to_upstream = frame(0x2, &[1u8; 1000], Some(CLIENT_KEY));
        let to_client = frame(0x2, &[2u8; 70_000], None);
        relay.client.write_all(&to_upstream[..500]).await.unwrap();
        relay.upstream.write_all(&to_client[..5]).await.unwrap();
        assert_eq!(read_n(&mut relay.upstream, 500).await, &to_upstream[..500]);
        assert_eq!(read_n(&mut relay.client, 5).await, &to_client[..5]);

        relay.revoke();
        relay.client.write_all(&to_upstream[500..]).await.unwrap();
        relay.upstream.write_all(&to_client[5..]).await.unwrap();
        assert_eq!(
            read_n(&mut relay.upstream, to_upstream.len() - 500).await,
            &to_upstream[500..]
        );
        assert_eq!(
            read_n(&mut relay.client, to_client.len() - 5).await,
            &to_client[5..]
        );

        // Then a close frame to each, masked only towards the upstream.
        assert_eq!(
            read_frame(&mut relay.client).await,
            Some((0x8, policy_close(), false))
        );
        assert_eq!(
            read_frame(&mut relay.upstream).await,
            Some((0x8, policy_close(), true))
        );

        // Data sent after that is not passed on; each side's close answers the proxy's.
        let mut late = frame(0x1, b"late", Some(CLIENT_KEY));
        late.extend(frame(0x8, &close_payload(1008, ""), Some(CLIENT_KEY)));
        relay.client.write_all(&late).await.unwrap();
        let mut late = frame(0x1, b"late", None);
        late.extend(frame(0x8, &close_payload(1008, ""), None));
        relay.upstream.write_all(&late).await.unwrap();
        assert_eq!(read_frame(&mut relay.client).await, None);
        assert_eq!(read_frame(&mut relay.upstream).await, None);
        relay.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn the_close_frames_to_the_upstream_are_masked_with_a_fresh_key_each_time() {
        let mut keys = Vec::new();
        for _ in 0..2 {
            let mut relay = start();
            relay.revoke();
            let mut head = read_n(&mut relay.upstream, 6).await;
            assert_eq!(head[1] & 0x80, 0x80, "masked");
            keys.push(head.split_off(2));
        }
        assert_ne!(keys[0], keys[1]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_side_that_never_answers_the_close_is_cut_after_the_wait() {
        let mut relay = start();
        relay.revoke();
        assert_eq!(
            read_frame(&mut relay.client).await,
            Some((0x8, policy_close(), false))
        );
        assert_eq!(
            read_frame(&mut relay.upstream).await,
            Some((0x8, policy_close(), true))
        );
        // The upstream answers; the client keeps its connection open and says nothing.
        relay
            .upstream
            .write_all(&frame(0x8, &close_payload(1008, ""), None))
            .await
            .unwrap();
        let started = Instant::now();
        assert_eq!(read_frame(&mut relay.client).await, None);
        assert!(started.elapsed() >= CLOSE_WAIT, "the client had its time");
        assert_eq!(read_frame(&mut relay.upstream).await, None);
        relay.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_that_does_not_end_in_time_is_cut_without_a_close_frame_on_its_side() {
        let mut relay = start();
        let endless = frame(0x2, &[3u8; 1000], None);
        relay.upstream.write_all(&endless[..14]).await.unwrap();
        assert_eq!(read_n(&mut relay.client, 14).await, &endless[..14]);
        relay.revoke();
        // The upstream's frame never ends: the client gets no close frame in the middle of it,
        // the upstream still gets one.
        assert_eq!(
            read_frame(&mut relay.upstream).await,
            Some((0x8, policy_close(), true))
        );
        relay
            .upstream
            .write_all(&frame(0x8, &close_payload(1008, ""), None))
            .await
            .unwrap();
        let mut rest = Vec::new();
        relay.client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "after the cut frame: {rest:?}");
        relay.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_close_already_passed_on_is_not_followed_by_a_second_one() {
        let mut relay = start();
        let client_close = frame(0x8, &close_payload(1000, "bye"), Some(CLIENT_KEY));
        relay.client.write_all(&client_close).await.unwrap();
        assert_eq!(
            read_frame(&mut relay.upstream).await,
            Some((0x8, close_payload(1000, "bye"), true))
        );
        relay.revoke();
        // The client's close went through, so the upstream gets none from the proxy; the client
        // gets the proxy's as its answer, and the upstream's answer is not passed on.
        assert_eq!(
            read_frame(&mut relay.client).await,
            Some((0x8, policy_close(), false))
        );
        relay
            .upstream
            .write_all(&frame(0x8, &close_payload(1000, "bye"), None))
            .await
            .unwrap();
        assert_eq!(read_frame(&mut relay.upstream).await, None);
        assert_eq!(read_frame(&mut relay.client).await, None);
        relay.task.await.unwrap();
    }
}
