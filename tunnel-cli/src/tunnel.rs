//! `sekisho tunnel HOST[:PORT]`: asks the proxy serving HOST for a byte stream to the host's
//! target and joins it to standard input and output, for ssh's `ProxyCommand`.
//!
//! The request is an HTTP/1.1 upgrade on the proxy's HTTPS port (so it passes wherever HTTPS
//! does, TLS-terminating load balancers included), carrying the user's bearer token. A refusal
//! comes back as a status and a JSON body with a stable code ([`TunnelError`]).

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONNECTION, UPGRADE};
use http::{HeaderValue, Method, Request};
use http_body_util::Full;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use sekisho_wire::tunnel::{ErrorBody, StreamStatus, TunnelError};
use sekisho_wire::{
    COPY_BUFFER, STREAM_HEADER, TUNNEL_PATH, TUNNEL_PROTOCOL, TUNNEL_RENEW_PATH, TUNNEL_STATUS_PATH,
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
}

/// Opens a stream to `host`'s target through the proxy that serves it.
pub async fn open(net: &Net, host: &Origin, token: Option<&str>) -> Result<Tunnel, OpenError> {
    let mut req = Request::builder()
        .method(Method::GET)
        .uri(TUNNEL_PATH)
        .header(CONNECTION, "upgrade")
        .header(UPGRADE, TUNNEL_PROTOCOL);
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
        Upgrade::Switched(headers, io) => Ok(Tunnel {
            io,
            stream_id: headers
                .get(STREAM_HEADER)
                .and_then(|v| v.to_str().ok())
                .filter(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
                .map(str::to_owned),
        }),
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

/// Copies `input` into the stream and the stream into `output` until the stream ends. When
/// `input` ends first, the stream's sending side is shut down and its answer still read to the
/// end (ssh and scp close their side and wait for the other's).
pub async fn splice<I, O, S>(mut input: I, mut output: O, stream: S) -> std::io::Result<Ended>
where
    I: AsyncRead + Unpin,
    O: AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut from_stream, mut to_stream) = tokio::io::split(stream);
    let upload = async {
        let mut buf = vec![0u8; COPY_BUFFER];
        loop {
            let n = input.read(&mut buf).await?;
            if n == 0 {
                to_stream.shutdown().await?;
                return Ok::<_, std::io::Error>(());
            }
            to_stream.write_all(&buf[..n]).await?;
        }
    };
    let download = async {
        let mut buf = vec![0u8; COPY_BUFFER];
        loop {
            let n = from_stream.read(&mut buf).await?;
            if n == 0 {
                output.flush().await?;
                return Ok::<_, std::io::Error>(());
            }
            output.write_all(&buf[..n]).await?;
            output.flush().await?;
        }
    };
    tokio::pin!(download);
    let ended = tokio::select! {
        // The stream ended: nothing more can come, whatever input still has.
        done = &mut download => done.map(|()| Ended::Remote),
        sent = upload => {
            sent?;
            return download.await.map(|()| Ended::Both);
        }
    };
    // Close our side too (a clean TLS close), whatever input still holds.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), to_stream.shutdown()).await;
    ended
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
            match open(&net, &host, token.as_deref()).await {
                Ok(tunnel) => {
                    let (read, write) = socket.into_split();
                    if let Err(error) = splice(read, write, tunnel.io).await {
                        eprintln!("sekisho: tunnel for {peer} ended: {error}");
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

/// Why the proxy closed the stream, if it did and says so (asked right after a stream ended
/// from the far side).
pub async fn closed_reason(net: &Net, host: &Origin, stream_id: &str) -> Option<StreamStatus> {
    let req = Request::builder()
        .method(Method::GET)
        .uri(format!("{TUNNEL_STATUS_PATH}?stream={stream_id}"))
        .body(Full::new(Bytes::new()))
        .ok()?;
    let ask = net.exchange(host, req);
    let response = tokio::time::timeout(std::time::Duration::from_secs(3), ask)
        .await
        .ok()?
        .ok()?;
    let status: StreamStatus = serde_json::from_slice(response.body()).ok()?;
    (status.state == "closed" && status.error.is_some()).then_some(status)
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
