//! `sekisho-wire`: the small set of things Sekisho's proxy, agent and CLI must agree on for
//! tunnels: the paths and upgrade tokens on the proxy's HTTPS listener, the HTTP/2 settings both
//! ends of an agent connection use, the agent's credential ([`agent_auth`]) and the error codes
//! a tunnel request can fail with ([`tunnel`]).
//!
//! Pure code: no sockets, no runtime. It must stay small, because the agent and the CLI link
//! it; nothing of the proxy (config, policy, OpenID) belongs here.

pub mod agent_auth;
pub mod resume;
pub mod tunnel;

use std::time::Duration;

/// An error and its causes on one line: `outer: inner: innermost`. For log lines and messages
/// of all three binaries.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Where an agent asks the proxy to turn its connection around (HTTP/1.1 `Upgrade`).
pub const AGENT_CONNECT_PATH: &str = "/.sekisho/agent/connect";
/// The `Upgrade` token of an agent connection.
pub const AGENT_PROTOCOL: &str = "sekisho-agent/1";
/// The header carrying the agent's signed credential on [`AGENT_CONNECT_PATH`].
pub const AGENT_AUTH_HEADER: &str = "sekisho-agent-auth";
/// Sent by the proxy to the agent, over the turned-around HTTP/2 connection, when the proxy is
/// about to go away: the agent answers, stops taking new streams (GOAWAY) and dials again while
/// the streams it has finish.
pub const AGENT_DRAIN_PATH: &str = "/.sekisho/agent/drain";
/// Answered at once (`204`) by the agent, whatever the method: how the proxy checks that a link
/// still answers while a stream waits on it. (An agent older than this path answers `404`,
/// which proves the link alive just as well.)
pub const AGENT_PING_PATH: &str = "/.sekisho/agent/ping";
/// Set on the agent's `503` refusal of a new stream while it stops: the proxy tries another
/// link of the same agent instead.
pub const AGENT_DRAINING_HEADER: &str = "sekisho-agent-draining";

/// Where `sekisho tunnel` asks for a byte stream to the host it names (HTTP/1.1 `Upgrade`).
pub const TUNNEL_PATH: &str = "/.sekisho/tunnel";
/// The `Upgrade` token of a tunnel.
pub const TUNNEL_PROTOCOL: &str = "sekisho-tunnel/1";
/// The header of a tunnel's `101` that names the stream: 32 hex digits, random, known only to
/// the client that opened it.
pub const STREAM_HEADER: &str = "sekisho-stream";
/// On a tunnel request with [`STREAM_HEADER`]: the client asks for that stream back after the
/// connection it came by was lost, and says how many bytes of it the client has received
/// (decimal). On the `101`: how many the far end has received from the client. Each end then
/// sends again what the other has not received ([`resume::Sent`]).
pub const RESUME_HEADER: &str = "sekisho-resume";
/// On a tunnel's `101` (`1`): the stream can be resumed if the connection it came by is lost
/// (it is relayed to the replica holding its agent). Without it, a lost connection is the
/// stream's end.
pub const RESUMABLE_HEADER: &str = "sekisho-resumable";
/// `POST` with [`STREAM_HEADER`] and a fresh bearer token of the same person: the open stream
/// goes on under the new token (tokens are short-lived; an ssh session is not).
pub const TUNNEL_RENEW_PATH: &str = "/.sekisho/tunnel/renew";
/// `GET ?stream=ID`: whether the stream is open, or why the proxy closed it
/// ([`tunnel::StreamStatus`]).
pub const TUNNEL_STATUS_PATH: &str = "/.sekisho/tunnel/status";

/// HTTP/2 settings of the turned-around agent connection. Both ends apply them, because the
/// receiver's windows govern the sender (measured on the project's 2-core machines: these
/// windows and buffers took the tunnel from ~950 to ~1500 MB/s).
pub mod h2 {
    /// Per-stream flow-control window.
    pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
    /// Connection flow-control window: room for several full stream windows.
    pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
    /// Largest frame either end sends.
    pub const MAX_FRAME: u32 = 64 * 1024;
    /// Bytes a stream may have buffered for sending.
    pub const MAX_SEND_BUF: usize = 1024 * 1024;
    /// Streams one agent connection carries at once.
    pub const MAX_CONCURRENT_STREAMS: u32 = 1024;
    /// Largest header block the agent accepts from the proxy.
    pub const MAX_HEADER_LIST: u32 = 64 * 1024;
}

/// How often each end pings an idle agent connection.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// How long a ping may go unanswered before the peer counts as dead.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Size of the buffers that copy between a socket and a stream.
pub const COPY_BUFFER: usize = 64 * 1024;

/// Whether `name` is a valid agent (or site) name: 1 to 63 of lowercase ASCII letters, digits,
/// `-`, `_` and `.`, the same rule the proxy applies to every name in its configuration.
pub fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_lowercase_words() {
        for good in ["nas", "lab-box.1", "a_b"] {
            assert!(is_name(good), "{good}");
        }
        for bad in ["", "NAS", "a b", "a/b", "é", &"x".repeat(64)] {
            assert!(!is_name(bad), "{bad}");
        }
    }

    #[test]
    fn the_connection_window_holds_several_stream_windows() {
        const { assert!(h2::CONNECTION_WINDOW >= 4 * h2::STREAM_WINDOW) };
    }
}
