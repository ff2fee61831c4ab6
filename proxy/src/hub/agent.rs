//! Accepting an agent: its upgrade request and credential, then the turned-around HTTP/2
//! connection on which the proxy is the client, for as long as it lives.
//!
//! The connection ends when the agent goes away (or stops answering PINGs), when the agent or
//! the key it used leaves the configuration, or when the proxy shuts down: then the proxy asks
//! the agent to drain ([`sekisho_wire::AGENT_DRAIN_PATH`]), so that it dials again elsewhere
//! and sends GOAWAY, and the streams in flight get the shutdown grace to finish.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use http::header;
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use sekisho_wire::agent_auth::{AgentCredential, AgentPublicKey, CredentialError};
use sekisho_wire::{AGENT_AUTH_HEADER, AGENT_PROTOCOL, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

use super::registry::{MAX_CLOCK_SKEW_SECS, switching_protocols};
use crate::auth::session::unix_now;
use crate::forward::body::RequestBody;
use crate::observe::metrics::{AgentLabels, ReasonLabels};
use crate::request::context::RequestCtx;
use crate::respond::body::ResponseBody;
use crate::respond::json_error;
use crate::routing::snapshot::Snapshot;
use crate::state::client::{ClientIo, ConnState};
use crate::state::{Shared, stopped};

/// Answers an agent's connect request: `101` and the connection handed to the hub, or a
/// refusal that says why.
pub(crate) fn accept_agent(
    shared: &Arc<Shared>,
    snapshot: &Snapshot,
    conn: &ConnState,
    ctx: &RequestCtx,
    req: &Request<Incoming>,
) -> Response<ResponseBody> {
    let (name, key) = match admit(shared, snapshot, ctx, req) {
        Ok(admitted) => admitted,
        Err((status, reason, message)) => {
            shared
                .metrics
                .tunnel
                .agent_refusals
                .get_or_create(&ReasonLabels { reason })
                .inc();
            tracing::warn!(
                request_id = ctx.request_id.to_str().unwrap_or("-"),
                peer = %conn.peer,
                host = %ctx.host,
                reason,
                message = %message,
                "agent refused"
            );
            return json_error(status, "agent_refused", &message, None);
        }
    };
    let shared = shared.clone();
    let peer = conn.peer;
    conn.take_over(Box::new(move |io, shutdown| {
        Box::pin(serve(shared, name, key, peer, io, shutdown))
    }));
    switching_protocols(AGENT_PROTOCOL)
}

type Refusal = (StatusCode, &'static str, String);

/// Checks the request and the credential; the agent's name and the key it proved.
fn admit(
    shared: &Shared,
    snapshot: &Snapshot,
    ctx: &RequestCtx,
    req: &Request<Incoming>,
) -> Result<(String, AgentPublicKey), Refusal> {
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(AGENT_PROTOCOL.as_bytes()));
    if req.method() != Method::GET || req.version() != Version::HTTP_11 || !upgrade {
        return Err((
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("agents connect with an HTTP/1.1 GET and `Upgrade: {AGENT_PROTOCOL}`"),
        ));
    }
    let unauthorized = |reason, message: String| (StatusCode::UNAUTHORIZED, reason, message);
    let credential = req
        .headers()
        .get(AGENT_AUTH_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            unauthorized(
                "no_credential",
                format!("the request has no {AGENT_AUTH_HEADER} header"),
            )
        })?;
    let credential =
        AgentCredential::parse(credential).map_err(|e| unauthorized("malformed", e.to_string()))?;
    let Some(keys) = snapshot.agents.get(&credential.name) else {
        return Err(unauthorized(
            "unknown_agent",
            format!(
                "no agent named `{}` is configured on this proxy",
                credential.name
            ),
        ));
    };
    let now = unix_now();
    // Several keys while one is rotated: find the one that signed, to cut the link if it goes.
    let mut last_error = None;
    for key in keys {
        match credential.verify(
            &ctx.host,
            std::slice::from_ref(key),
            now,
            MAX_CLOCK_SKEW_SECS,
        ) {
            Ok(()) => {
                if !shared.hub.remember_nonce(credential.nonce, now) {
                    return Err(unauthorized(
                        "replay",
                        "this credential was used before".into(),
                    ));
                }
                return Ok((credential.name, *key));
            }
            Err(error) => last_error = Some(error),
        }
    }
    Err(match last_error {
        // The time is checked before the signature, and is the same for every key.
        Some(CredentialError::Skewed(seconds)) => unauthorized(
            "clock_skew",
            format!(
                "the agent's clock is {seconds} s away from the proxy's (at most \
                 {MAX_CLOCK_SKEW_SECS} s): set the time on both (NTP)"
            ),
        ),
        Some(error) => unauthorized("bad_signature", error.to_string()),
        None => unauthorized("bad_signature", "the agent has no keys".to_owned()),
    })
}

/// Serves one agent connection until it ends.
async fn serve(
    shared: Arc<Shared>,
    agent: String,
    key: AgentPublicKey,
    peer: std::net::SocketAddr,
    io: ClientIo,
    mut shutdown: watch::Receiver<bool>,
) {
    // hyper drives the HTTP/2 connection in a task of its own that outlives the `Connection`
    // handle and drains gracefully when that is dropped; a link that must be cut is cut at
    // the socket instead, which fails every stream on it at once.
    let cancel = tokio_util::sync::CancellationToken::new();
    // Cancelled when hyper drops the socket: the connection is over, streams and all.
    let closed = tokio_util::sync::CancellationToken::new();
    let io = Cuttable {
        inner: io,
        cut: Box::pin(cancel.clone().cancelled_owned()),
        _closed: closed.clone().drop_guard(),
    };
    let handshake = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(sekisho_wire::h2::STREAM_WINDOW)
        .initial_connection_window_size(sekisho_wire::h2::CONNECTION_WINDOW)
        .max_frame_size(sekisho_wire::h2::MAX_FRAME)
        .max_send_buf_size(sekisho_wire::h2::MAX_SEND_BUF)
        .keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .handshake::<_, RequestBody>(TokioIo::new(io))
        .await;
    let (sender, connection) = match handshake {
        Ok(parts) => parts,
        Err(error) => {
            tracing::warn!(%agent, %peer, %error, "agent connection failed before it was ready");
            return;
        }
    };
    let link = Arc::new(shared.hub.new_link(&agent, key, sender, cancel));
    let labels = AgentLabels {
        agent: agent.clone(),
    };
    let metrics = &shared.metrics.tunnel;
    metrics.agent_connections.get_or_create(&labels).inc();
    let gauge = metrics.agents_connected.get_or_create(&labels).clone();
    gauge.inc();
    shared.hub.register(link.clone());
    tracing::info!(%agent, %peer, link = link.id, "agent connected");

    tokio::pin!(connection);
    let why = tokio::select! {
        result = &mut connection => match result {
            Ok(()) => {
                link.draining.store(true, Ordering::Relaxed);
                link.ended.cancel();
                // The agent said GOAWAY (it is stopping, or it was asked to drain): no new
                // streams here, but the open ones keep the socket, which hyper keeps driving,
                // until they end or the agent's grace runs out.
                tokio::select! {
                    () = closed.cancelled() => {}
                    () = link.cancel.cancelled() => {}
                    () = stopped(&mut shutdown) => {
                        let grace = shared.snapshot.load().limits.shutdown_grace;
                        let _ = tokio::time::timeout(grace, closed.cancelled()).await;
                    }
                }
                "the agent closed the connection".to_owned()
            }
            Err(error) => format!("the connection failed: {}", crate::error_chain(&error)),
        },
        () = link.cancel.cancelled() => {
            "the agent or its key was removed from the configuration".to_owned()
        }
        () = stopped(&mut shutdown) => {
            link.ask_to_drain();
            // The other replicas stop relaying new streams here.
            shared.hub.held_changed.notify_one();
            // The agent answers GOAWAY, and closes once the streams it has are done; the
            // server's grace period bounds how long that may take. The connection is polled
            // meanwhile: it is what sends the drain request.
            let grace = shared.snapshot.load().limits.shutdown_grace;
            let _ = tokio::time::timeout(grace, async {
                let _ = (&mut connection).await;
                closed.cancelled().await;
            })
            .await;
            "the proxy is shutting down".to_owned()
        }
    };
    link.ended.cancel();
    link.cancel.cancel();
    shared.hub.unregister(&link);
    gauge.dec();
    tracing::info!(%agent, %peer, link = link.id, reason = %why, "agent disconnected");
}

/// A socket that fails every read and write once its token is cancelled.
struct Cuttable {
    inner: ClientIo,
    cut: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    /// Tells the link's task that the socket is gone.
    _closed: tokio_util::sync::DropGuard,
}

impl Cuttable {
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.cut.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the agent link was cut",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl AsyncRead for Cuttable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Cuttable {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
