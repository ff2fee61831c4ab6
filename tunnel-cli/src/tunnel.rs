//! `sekisho tunnel HOST[:PORT]`: asks the proxy serving HOST for a byte stream to the host's
//! target and joins it to standard input and output, for ssh's `ProxyCommand`.
//!
//! The request is an HTTP/1.1 upgrade on the proxy's HTTPS port (so it passes wherever HTTPS
//! does, TLS-terminating load balancers included), carrying the user's bearer token. A refusal
//! comes back as a status and a JSON body with a stable code ([`TunnelError`]).
//!
//! An open stream can be resumed when the connection to the proxy is lost under it (the
//! replica it came by restarted): [`Splice`] keeps the last input it sent and counts the output
//! it passed on, [`open`] asks for the stream again by its id with that count, and each end
//! sends again what the other lacks.

use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONNECTION, UPGRADE};
use http::{HeaderValue, Method, Request};
use http_body_util::Full;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use sekisho_wire::resume::Sent;
use sekisho_wire::tunnel::{ErrorBody, StreamEnd, StreamStatus, TunnelError};
use sekisho_wire::{
    COPY_BUFFER, RESUMABLE_HEADER, RESUME_HEADER, STREAM_HEADER, TUNNEL_PATH, TUNNEL_PROTOCOL,
    TUNNEL_RENEW_PATH, TUNNEL_STATUS_PATH,
};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::net::{Net, NetError, Origin, Upgrade};
use crate::secret::printable;

/// Why a tunnel did not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("{}", refusal_text(*.error, .body.as_ref()))]
    Refused {
        error: TunnelError,
        /// The proxy's own words, when it sent any.
        body: Option<ErrorBody>,
    },
    #[error("the proxy answered {0}, which is not a tunnel answer")]
    Unexpected(http::StatusCode),
}

impl OpenError {
    /// The failure to talk to the proxy, when that is what it was.
    pub fn net_error(&self) -> Option<&NetError> {
        match self {
            Self::Net(error) => Some(error),
            _ => None,
        }
    }

    /// The proxy's reason for a refusal, without the sentence every refusal of its kind has.
    pub fn reason(&self) -> Option<String> {
        match self {
            Self::Refused {
                error,
                body: Some(body),
            } => refusal_reason(*error, body),
            _ => None,
        }
    }

    /// The tunnel error code, when the proxy gave one.
    pub fn tunnel_error(&self) -> Option<TunnelError> {
        match self {
            Self::Refused { error, .. } => Some(*error),
            _ => None,
        }
    }
}

/// What the proxy said about a refusal beyond `error`'s sentence, if anything (its own words,
/// so without control characters and bounded).
fn refusal_reason(error: TunnelError, body: &ErrorBody) -> Option<String> {
    let message = body.message.as_str();
    let reason = message
        .strip_prefix(error.message())
        .map(|rest| rest.trim_start_matches([':', ' ']))
        .unwrap_or(message);
    (!reason.is_empty() && reason != error.message()).then(|| printable(reason, 300))
}

/// A refusal's sentence, and the proxy's reason after it.
fn refusal_text(error: TunnelError, body: Option<&ErrorBody>) -> String {
    match body.and_then(|body| refusal_reason(error, body)) {
        Some(reason) => format!("{}: {reason}", error.message()),
        None => error.message().to_owned(),
    }
}

/// An open tunnel.
#[derive(Debug)]
pub struct Tunnel {
    pub io: TokioIo<Upgraded>,
    /// The proxy's name for the stream, to ask why it closed.
    pub stream_id: Option<String>,
    /// For a resumed stream: the bytes the far end has received from this one.
    pub peer_received: Option<u64>,
    /// Whether the stream can be resumed if this connection is lost.
    pub resumable: bool,
}

/// A stream to ask for again: its id, and the bytes of it received so far.
#[derive(Debug, Clone, Copy)]
pub struct Resume<'a> {
    pub stream_id: &'a str,
    pub received: u64,
}

/// Opens a stream to `host`'s target through the proxy that serves it, or resumes the one
/// `resume` names.
pub async fn open(
    net: &Net,
    host: &Origin,
    token: Option<&str>,
    resume: Option<Resume<'_>>,
) -> Result<Tunnel, OpenError> {
    let mut req = Request::builder()
        .method(Method::GET)
        .uri(TUNNEL_PATH)
        .header(CONNECTION, "upgrade")
        .header(UPGRADE, TUNNEL_PROTOCOL);
    if let Some(resume) = resume {
        req = req
            .header(STREAM_HEADER, resume.stream_id)
            .header(RESUME_HEADER, resume.received);
    }
    if let Some(token) = token {
        let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| OpenError::Unexpected(http::StatusCode::BAD_REQUEST))?;
        value.set_sensitive(true);
        req = req.header(AUTHORIZATION, value);
    }
    let req = req
        .body(Full::new(Bytes::new()))
        .expect("a tunnel request is well formed");
    match net.upgrade(host, req).await? {
        Upgrade::Switched(headers, io) => {
            let peer_received = headers
                .get(RESUME_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(sekisho_wire::resume::parse_count);
            if resume.is_some() && peer_received.is_none() {
                // A proxy that does not resume streams opened a new one: not the stream asked.
                return Err(OpenError::Refused {
                    error: TunnelError::StreamGone,
                    body: None,
                });
            }
            Ok(Tunnel {
                io,
                stream_id: headers
                    .get(STREAM_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .filter(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
                    .map(str::to_owned),
                peer_received,
                resumable: headers
                    .get(RESUMABLE_HEADER)
                    .is_some_and(|v| v.as_bytes() == b"1"),
            })
        }
        Upgrade::Refused(response) => {
            let body: Option<ErrorBody> = serde_json::from_slice(response.body()).ok();
            let error = body
                .as_ref()
                .and_then(|b| TunnelError::from_code(&b.error))
                .or_else(|| match response.status().as_u16() {
                    401 => Some(TunnelError::NotLoggedIn),
                    403 => Some(TunnelError::Denied),
                    _ => None,
                });
            match error {
                Some(error) => Err(OpenError::Refused { error, body }),
                None => Err(OpenError::Unexpected(response.status())),
            }
        }
    }
}

/// Who ended a splice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Input ended, then the stream: the normal end.
    Both,
    /// The stream ended while input was still open: the far side, or the proxy, closed it.
    Remote,
}

/// Copies `input` into the stream and the stream into `output` until the stream ends (see
/// [`Splice::run`]).
pub async fn splice<I, O, S>(input: I, output: O, stream: S) -> std::io::Result<Ended>
where
    I: AsyncRead + Unpin,
    O: AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    Splice::new(input, output).run(stream, Vec::new()).await
}

/// The input sent kept for resuming a stream, at most: more than a lost connection swallows
/// of an interactive session.
pub const KEEP_SENT: usize = 1024 * 1024;

/// Input and output joined to a tunnel stream, and what resuming the stream needs: the last
/// input sent, and the count of output passed on. Kept across connections, so that input read
/// but not yet sent is not lost either.
pub struct Splice<I, O> {
    input: I,
    output: O,
    sent: Sent,
    received: u64,
    /// Input ended, and the stream was told: half a stream is not resumed.
    input_ended: bool,
    /// Reading input or writing output failed: there is nobody to resume the stream for.
    local_failed: bool,
}

impl<I, O> Splice<I, O>
where
    I: AsyncRead + Unpin,
    O: AsyncWrite + Unpin,
{
    pub fn new(input: I, output: O) -> Self {
        Self {
            input,
            output,
            sent: Sent::new(KEEP_SENT),
            received: 0,
            input_ended: false,
            local_failed: false,
        }
    }

    /// The bytes of the stream passed on to output.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Whether the stream could be resumed: both directions were open, here, when it broke.
    pub fn resumable(&self) -> bool {
        !self.input_ended && !self.local_failed
    }

    /// What to send again to a far end that has received `peer_received` bytes; `None` when
    /// they are no longer kept.
    pub fn resend(&self, peer_received: u64) -> Option<Vec<u8>> {
        self.sent.since(peer_received)
    }

    /// Copies input into the stream (after `resend`) and the stream into output until the
    /// stream ends. When input ends first, the stream's sending side is shut down and its
    /// answer still read to the end (ssh and scp close their side and wait for the other's).
    /// Input is recorded as it is read, output counted as it is written.
    pub async fn run<S>(&mut self, stream: S, resend: Vec<u8>) -> std::io::Result<Ended>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let (mut from_stream, mut to_stream) = tokio::io::split(stream);
        let Self {
            input,
            output,
            sent,
            received,
            input_ended,
            local_failed,
        } = self;
        // Flags, not results: each future keeps its own, and the one that is cut short says
        // nothing.
        let (input_failed, output_failed) = (AtomicBool::new(false), AtomicBool::new(false));
        let upload = async {
            to_stream.write_all(&resend).await?;
            let mut buf = vec![0u8; COPY_BUFFER];
            loop {
                let n = input
                    .read(&mut buf)
                    .await
                    .inspect_err(|_| input_failed.store(true, Ordering::Relaxed))?;
                if n == 0 {
                    *input_ended = true;
                    to_stream.shutdown().await?;
                    return Ok::<_, std::io::Error>(());
                }
                sent.record(&buf[..n]);
                to_stream.write_all(&buf[..n]).await?;
            }
        };
        let download = async {
            let mut buf = vec![0u8; COPY_BUFFER];
            let failed = |error| {
                output_failed.store(true, Ordering::Relaxed);
                error
            };
            loop {
                let n = from_stream.read(&mut buf).await?;
                if n == 0 {
                    output.flush().await.map_err(failed)?;
                    return Ok::<_, std::io::Error>(());
                }
                let mut at = 0;
                while at < n {
                    let written = output.write(&buf[at..n]).await.map_err(failed)?;
                    if written == 0 {
                        return Err(failed(std::io::ErrorKind::WriteZero.into()));
                    }
                    at += written;
                    *received += written as u64;
                }
                output.flush().await.map_err(failed)?;
            }
        };
        tokio::pin!(download);
        let ended = tokio::select! {
            // The stream ended: nothing more can come, whatever input still has.
            done = &mut download => done.map(|()| Ended::Remote),
            sent = upload => match sent {
                Ok(()) => download.await.map(|()| Ended::Both),
                Err(error) => Err(error),
            },
        };
        *local_failed |=
            input_failed.load(Ordering::Relaxed) || output_failed.load(Ordering::Relaxed);
        if matches!(ended, Ok(Ended::Remote)) {
            // Close our side too (a clean TLS close), whatever input still holds.
            let closing = to_stream.shutdown();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), closing).await;
        }
        ended
    }
}

/// How long a lost stream is asked for again before giving up (the replica holding its agent
/// keeps it for a minute).
pub const RESUME_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

/// Asks for the stream `stream_id` again after the connection it came by was lost, through
/// whatever replica answers now, until [`RESUME_WITHIN`] has passed; a refusal is final. Gives
/// the new connection and what to send again on it.
pub async fn resume<I, O>(
    net: &Net,
    host: &Origin,
    token: Option<&str>,
    stream_id: &str,
    splice: &Splice<I, O>,
) -> Result<(Tunnel, Vec<u8>), OpenError>
where
    I: AsyncRead + Unpin,
    O: AsyncWrite + Unpin,
{
    let deadline = tokio::time::Instant::now() + RESUME_WITHIN;
    let mut pause = std::time::Duration::from_millis(100);
    loop {
        let ask = Resume {
            stream_id,
            received: splice.received(),
        };
        match open(net, host, token, Some(ask)).await {
            Ok(tunnel) => {
                let resend = tunnel.peer_received.and_then(|peer| splice.resend(peer));
                return match resend {
                    Some(resend) => Ok((tunnel, resend)),
                    None => Err(OpenError::Refused {
                        error: TunnelError::StreamGone,
                        body: None,
                    }),
                };
            }
            // Nobody answered, something other than the proxy did, or a replica that is still
            // starting: once more, a little later.
            Err(error)
                if matches!(error.tunnel_error(), None | Some(TunnelError::Starting))
                    && tokio::time::Instant::now() + pause < deadline =>
            {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(2));
            }
            Err(error) => return Err(error),
        }
    }
}

/// Serves `listener`: every connection accepted gets a tunnel of its own to `host` (for tools
/// that speak TCP rather than stdin/stdout). Runs until the listener fails; a tunnel that
/// cannot open closes its connection and is reported on stderr.
pub async fn serve_listener(
    net: &Net,
    host: &Origin,
    token: Option<&str>,
    listener: tokio::net::TcpListener,
) -> std::io::Result<()> {
    loop {
        let (socket, peer) = listener.accept().await?;
        let _ = socket.set_nodelay(true);
        let (net, host, token) = (net.clone(), host.clone(), token.map(str::to_owned));
        tokio::spawn(async move {
            match open(&net, &host, token.as_deref(), None).await {
                Ok(tunnel) => {
                    let (read, write) = socket.into_split();
                    let spliced = splice(read, write, tunnel.io).await;
                    let id = tunnel.stream_id.as_deref();
                    let outcome = ended(&net, &host, id, token.as_deref(), spliced).await;
                    if let Some(message) = outcome.message() {
                        eprintln!("sekisho: tunnel for {peer}: {message}");
                    }
                }
                Err(error) => eprintln!("sekisho: no tunnel for {peer}: {error}"),
            }
        });
    }
}

/// Presents `token` for the open stream `stream_id` (the proxy keeps it open under the new
/// token, if it is for the same person).
pub async fn renew(
    net: &Net,
    host: &Origin,
    stream_id: &str,
    token: &str,
) -> Result<(), OpenError> {
    let mut bearer = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| OpenError::Unexpected(http::StatusCode::BAD_REQUEST))?;
    bearer.set_sensitive(true);
    let req = Request::builder()
        .method(Method::POST)
        .uri(TUNNEL_RENEW_PATH)
        .header(AUTHORIZATION, bearer)
        .header(STREAM_HEADER, stream_id)
        .body(Full::new(Bytes::new()))
        .expect("a renewal is well formed");
    let response = net.exchange(host, req).await?;
    match response.status() {
        http::StatusCode::NO_CONTENT => Ok(()),
        status => Err(OpenError::Unexpected(status)),
    }
}

/// What the proxy says about the stream `stream_id`, if it answers in time with a status. With
/// `token`, a replica other than the one keeping the stream asks that one.
pub async fn stream_status(
    net: &Net,
    host: &Origin,
    stream_id: &str,
    token: Option<&str>,
) -> Option<StreamStatus> {
    let mut req = Request::builder()
        .method(Method::GET)
        .uri(format!("{TUNNEL_STATUS_PATH}?stream={stream_id}"));
    if let Some(mut bearer) = token.and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok())
    {
        bearer.set_sensitive(true);
        req = req.header(AUTHORIZATION, bearer);
    }
    let req = req.body(Full::new(Bytes::new())).ok()?;
    let ask = net.exchange(host, req);
    let response = tokio::time::timeout(std::time::Duration::from_secs(3), ask)
        .await
        .ok()?
        .ok()?;
    serde_json::from_slice(response.body()).ok()
}

/// How an open tunnel ended, as the person reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// One of its ends closed it: nothing to say.
    Normal,
    /// The proxy cut it (the login ended, the policy or the route changed), in its words.
    Cut { error: TunnelError, reason: String },
    /// The host's agent went away under it.
    AgentWentAway,
    /// The connection from the proxy to the target broke.
    TargetBroke,
    /// The proxy went away under it (it stopped or restarted), or the connection to it broke.
    ProxyWentAway,
    /// The connection to the proxy timed out.
    TimedOut,
}

impl Outcome {
    /// The one sentence to print, if there is anything to say.
    pub fn message(&self) -> Option<String> {
        Some(match self {
            Self::Normal => return None,
            Self::Cut { reason, .. } => format!("the proxy closed the tunnel: {reason}"),
            Self::AgentWentAway => "the agent for this host went away (it stopped, or lost its \
                                    connection to the proxy); run the command again once it is \
                                    back"
                .to_owned(),
            Self::TargetBroke => format!(
                "the proxy closed the tunnel: {}",
                StreamEnd::TargetFailed.message()
            ),
            Self::ProxyWentAway => "the proxy went away (it restarted, or the connection to it \
                                    was cut); run the command again"
                .to_owned(),
            Self::TimedOut => "the connection to the proxy timed out (the network between here \
                               and the proxy stopped carrying it); run the command again"
                .to_owned(),
        })
    }
}

/// How a splice ended, as far as this side can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpliceEnd {
    /// Input ended, then the stream: the normal end, nothing to ask.
    Done,
    /// The stream ended cleanly while input was open: the far side or the proxy closed it.
    Closed,
    /// Reading or writing the stream failed (reset, no TLS close, timed out).
    Broke(std::io::ErrorKind),
}

impl SpliceEnd {
    pub fn of(spliced: &std::io::Result<Ended>) -> Self {
        match spliced {
            Ok(Ended::Both) => Self::Done,
            Ok(Ended::Remote) => Self::Closed,
            Err(error) => Self::Broke(error.kind()),
        }
    }
}

/// What the proxy answered when asked about the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Not asked: the splice ended normally, or the proxy named no stream.
    NotAsked,
    /// No status came: the proxy is not there, or it is another process that does not know
    /// the stream.
    NoAnswer,
    Status(StreamStatus),
}

/// How the tunnel ended, from how the splice ended and what the proxy says about it.
///
/// A stream the proxy ended for a reason of its own (a cut, the agent, the target) is recorded
/// before the proxy closes it, so a status without one, or a proxy that cannot be asked,
/// tell apart a normal end from the proxy going away.
pub fn outcome(splice: SpliceEnd, answer: &Answer) -> Outcome {
    let gone = match splice {
        SpliceEnd::Done => return Outcome::Normal,
        SpliceEnd::Broke(std::io::ErrorKind::TimedOut) => Outcome::TimedOut,
        SpliceEnd::Closed | SpliceEnd::Broke(_) => Outcome::ProxyWentAway,
    };
    let status = match answer {
        Answer::Status(status) => status,
        Answer::NotAsked if splice == SpliceEnd::Closed => return Outcome::Normal,
        Answer::NotAsked | Answer::NoAnswer => return gone,
    };
    let cut = |error: TunnelError| Outcome::Cut {
        error,
        reason: status
            .reason
            .as_deref()
            .map(|reason| printable(reason, 300))
            .unwrap_or_else(|| error.message().to_owned()),
    };
    match (status.cause, status.error) {
        (Some(StreamEnd::ClientClosed | StreamEnd::TargetClosed), _) => Outcome::Normal,
        (Some(StreamEnd::AgentGone), _) => Outcome::AgentWentAway,
        (Some(StreamEnd::TargetFailed), _) => Outcome::TargetBroke,
        (Some(StreamEnd::ClientFailed | StreamEnd::ProxyShutdown), _) => gone,
        (
            Some(end @ (StreamEnd::LoginEnded | StreamEnd::PolicyDenied | StreamEnd::RouteRemoved)),
            _,
        ) => cut(end.tunnel_error().unwrap_or(TunnelError::Denied)),
        // A proxy that does not say `cause`: its `error` for a cut.
        (None, Some(error)) if status.state == "closed" => cut(error),
        // Still open to the proxy, or ended normally: the stream itself says which.
        (None, _) if splice == SpliceEnd::Closed => Outcome::Normal,
        (None, _) => gone,
    }
}

/// How a tunnel that opened ended: asks the proxy about the stream unless it ended normally.
pub async fn ended(
    net: &Net,
    host: &Origin,
    stream_id: Option<&str>,
    token: Option<&str>,
    spliced: std::io::Result<Ended>,
) -> Outcome {
    let splice = SpliceEnd::of(&spliced);
    let answer = match (splice, stream_id) {
        (SpliceEnd::Done, _) | (_, None) => Answer::NotAsked,
        (_, Some(id)) => match stream_status(net, host, id, token).await {
            Some(status) => Answer::Status(status),
            None => Answer::NoAnswer,
        },
    };
    outcome(splice, &answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_says_its_sentence_and_the_proxys_reason_once() {
        let refused = |error: TunnelError, message: &str| OpenError::Refused {
            error,
            body: Some(ErrorBody {
                error: error.code().into(),
                message: message.into(),
                login_url: None,
            }),
        };
        let unreachable = refused(
            TunnelError::TargetUnreachable,
            "the target could not be reached: Connection refused (os error 111)",
        );
        assert_eq!(
            unreachable.to_string(),
            "the target could not be reached: Connection refused (os error 111)"
        );
        assert_eq!(
            unreachable.reason().as_deref(),
            Some("Connection refused (os error 111)")
        );
        let bare = refused(TunnelError::UnknownHost, TunnelError::UnknownHost.message());
        assert_eq!(bare.to_string(), "the proxy serves no tunnel for this host");
        assert_eq!(bare.reason(), None);
        let own = refused(TunnelError::Denied, "not in group \x1b[31mstaff");
        assert_eq!(
            own.to_string(),
            "your account is not allowed to reach this host: not in group [31mstaff"
        );
        let silent = OpenError::Refused {
            error: TunnelError::Denied,
            body: None,
        };
        assert_eq!(silent.to_string(), TunnelError::Denied.message());
    }

    fn status(cause: Option<StreamEnd>, error: Option<TunnelError>, reason: &str) -> Answer {
        Answer::Status(StreamStatus {
            state: "closed".into(),
            error,
            reason: Some(reason.into()),
            cause,
        })
    }

    #[test]
    fn every_way_a_stream_ends_says_one_thing() {
        let closed = SpliceEnd::Closed;
        let reset = SpliceEnd::Broke(std::io::ErrorKind::ConnectionReset);
        let agent = status(Some(StreamEnd::AgentGone), None, "the agent went");
        assert_eq!(outcome(closed, &agent), Outcome::AgentWentAway);
        assert_eq!(outcome(reset, &agent), Outcome::AgentWentAway);
        let denied = status(
            Some(StreamEnd::PolicyDenied),
            Some(TunnelError::Denied),
            "the policy no longer allows you here",
        );
        assert_eq!(
            outcome(closed, &denied),
            Outcome::Cut {
                error: TunnelError::Denied,
                reason: "the policy no longer allows you here".into()
            }
        );
        let login = status(Some(StreamEnd::LoginEnded), None, "expired");
        assert!(matches!(
            outcome(closed, &login),
            Outcome::Cut {
                error: TunnelError::NotLoggedIn,
                ..
            }
        ));
        let target = status(Some(StreamEnd::TargetFailed), None, "");
        assert_eq!(outcome(closed, &target), Outcome::TargetBroke);
        let shutdown = status(Some(StreamEnd::ProxyShutdown), None, "");
        assert_eq!(outcome(closed, &shutdown), Outcome::ProxyWentAway);
    }

    #[test]
    fn a_normal_end_says_nothing() {
        assert_eq!(outcome(SpliceEnd::Done, &Answer::NotAsked), Outcome::Normal);
        // ssh's own end: the target closed, the proxy says so (or has not noticed yet).
        for cause in [StreamEnd::TargetClosed, StreamEnd::ClientClosed] {
            let answer = status(Some(cause), None, cause.message());
            assert_eq!(outcome(SpliceEnd::Closed, &answer), Outcome::Normal);
        }
        let open = Answer::Status(StreamStatus {
            state: "open".into(),
            error: None,
            reason: None,
            cause: None,
        });
        assert_eq!(outcome(SpliceEnd::Closed, &open), Outcome::Normal);
        // A proxy that names no stream cannot be asked.
        assert_eq!(
            outcome(SpliceEnd::Closed, &Answer::NotAsked),
            Outcome::Normal
        );
        assert_eq!(Outcome::Normal.message(), None);
    }

    #[test]
    fn a_proxy_that_cannot_be_asked_went_away() {
        for kind in [
            std::io::ErrorKind::UnexpectedEof,
            std::io::ErrorKind::ConnectionReset,
            std::io::ErrorKind::BrokenPipe,
        ] {
            assert_eq!(
                outcome(SpliceEnd::Broke(kind), &Answer::NoAnswer),
                Outcome::ProxyWentAway,
                "{kind:?}"
            );
        }
        // Closed cleanly (a proxy shutting down does), and then nothing answers.
        assert_eq!(
            outcome(SpliceEnd::Closed, &Answer::NoAnswer),
            Outcome::ProxyWentAway
        );
        assert_eq!(
            outcome(
                SpliceEnd::Broke(std::io::ErrorKind::TimedOut),
                &Answer::NoAnswer
            ),
            Outcome::TimedOut
        );
    }

    #[test]
    fn an_older_proxys_status_still_says_why_it_cut() {
        let older = status(None, Some(TunnelError::NotLoggedIn), "the login expired");
        assert_eq!(
            outcome(SpliceEnd::Closed, &older),
            Outcome::Cut {
                error: TunnelError::NotLoggedIn,
                reason: "the login expired".into()
            }
        );
    }

    #[test]
    fn the_sentences_carry_no_library_words() {
        for outcome in [
            Outcome::AgentWentAway,
            Outcome::TargetBroke,
            Outcome::ProxyWentAway,
            Outcome::TimedOut,
        ] {
            let message = outcome.message().unwrap();
            assert!(
                !message.contains("://") && !message.contains("os error"),
                "{message}"
            );
            assert!(!message.contains('\n'), "one line: {message}");
        }
    }

    #[tokio::test]
    async fn input_reaches_the_stream_and_the_answer_reaches_output_after_input_ends() {
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let peer = tokio::spawn(async move {
            let mut got = Vec::new();
            theirs.read_to_end(&mut got).await.unwrap();
            theirs.write_all(b"answer to ").await.unwrap();
            theirs.write_all(&got).await.unwrap();
        });
        let mut output = Vec::new();
        let ended = splice(&b"question"[..], &mut output, ours).await.unwrap();
        peer.await.unwrap();
        assert_eq!(ended, Ended::Both);
        assert_eq!(output, b"answer to question");
    }

    #[tokio::test]
    async fn a_resumed_stream_gets_again_what_the_far_end_lacks_and_output_passes_on_once() {
        let (mut input, input_side) = tokio::io::duplex(1024);
        let (output_side, mut output) = tokio::io::duplex(1024);
        let mut splice = Splice::new(input_side, output_side);
        let (ours, mut far) = tokio::io::duplex(1024);
        let first = async {
            input.write_all(b"abc").await.unwrap();
            let mut got = [0u8; 3];
            far.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"abc");
            far.write_all(b"xyz").await.unwrap();
            output.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"xyz");
            // The connection goes away under the stream.
            drop(far);
        };
        let (ended, ()) = tokio::join!(splice.run(ours, Vec::new()), first);
        assert_eq!(ended.unwrap(), Ended::Remote);
        assert!(splice.resumable());
        assert_eq!(splice.received(), 3);
        // More than was ever sent: not this stream's far end.
        assert_eq!(splice.resend(4), None);

        // The far end had received "a" only: "bc" goes first on the next connection.
        let resend = splice.resend(1).unwrap();
        let (ours, mut far) = tokio::io::duplex(1024);
        let second = async {
            input.write_all(b"d").await.unwrap();
            let mut got = [0u8; 3];
            far.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"bcd");
            far.write_all(b"!").await.unwrap();
            let mut one = [0u8; 1];
            output.read_exact(&mut one).await.unwrap();
            assert_eq!(&one, b"!");
            // Input ends: the stream is told, and ends from the far side.
            drop(input);
            let mut rest = Vec::new();
            far.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty());
            drop(far);
        };
        let (ended, ()) = tokio::join!(splice.run(ours, resend), second);
        assert_eq!(ended.unwrap(), Ended::Both);
        assert_eq!(splice.received(), 4);
        assert!(!splice.resumable(), "half a stream is not resumed");
    }

    #[tokio::test]
    async fn the_splice_ends_when_the_stream_ends_even_if_input_never_does() {
        let (ours, theirs) = tokio::io::duplex(1024);
        let (never_ending, _keep) = tokio::io::duplex(16);
        drop(theirs);
        let mut output = Vec::new();
        let ended = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            splice(never_ending, &mut output, ours),
        )
        .await
        .expect("the splice returns once the stream is closed")
        .unwrap();
        assert!(output.is_empty());
        assert_eq!(ended, Ended::Remote);
    }
}
