//! Why a tunnel could not be opened, and how an open one ended, as the proxy tells the CLI.
//!
//! A refused tunnel request gets an HTTP status and a small JSON body,
//! `{"error": "<code>", "message": "<for people>"}` (plus `login_url` when a login would help).
//! The codes are stable: the CLI turns them into its exit codes and messages. The agent answers
//! the proxy's `CONNECT` with the status of [`TunnelError::status`] for the codes it can cause.

use serde::{Deserialize, Serialize};

/// Everything a tunnel request can fail with, by stable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TunnelError {
    /// No valid token came with the request (401).
    NotLoggedIn,
    /// A token came, and policy does not let its person through (403).
    Denied,
    /// No tunnel route for the host (404).
    UnknownHost,
    /// The route's target is behind an agent, and no agent of that name is connected (503).
    AgentOffline,
    /// The agent is not configured to dial the target (403 from the agent).
    TargetNotAllowed,
    /// The target refused or did not answer (502).
    TargetUnreachable,
    /// The target did not answer in time (504).
    TargetTimeout,
    /// The request was not a tunnel request the proxy understands (400).
    BadRequest,
    /// The stream asked to be resumed is not waiting anywhere: it ended, it waited too long, it
    /// is someone else's, or what was lost in between is no longer kept (410).
    StreamGone,
    /// The proxy has not read its configuration yet (it is starting): ask again in a moment
    /// (503).
    Starting,
}

impl TunnelError {
    pub const ALL: [Self; 10] = [
        Self::NotLoggedIn,
        Self::Denied,
        Self::UnknownHost,
        Self::AgentOffline,
        Self::TargetNotAllowed,
        Self::TargetUnreachable,
        Self::TargetTimeout,
        Self::BadRequest,
        Self::StreamGone,
        Self::Starting,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Self::NotLoggedIn => "not_logged_in",
            Self::Denied => "denied",
            Self::UnknownHost => "unknown_host",
            Self::AgentOffline => "agent_offline",
            Self::TargetNotAllowed => "target_not_allowed",
            Self::TargetUnreachable => "target_unreachable",
            Self::TargetTimeout => "target_timeout",
            Self::BadRequest => "bad_request",
            Self::StreamGone => "stream_gone",
            Self::Starting => "starting",
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.code() == code)
    }

    pub fn status(self) -> u16 {
        match self {
            Self::NotLoggedIn => 401,
            Self::Denied | Self::TargetNotAllowed => 403,
            Self::UnknownHost => 404,
            Self::BadRequest => 400,
            Self::TargetUnreachable => 502,
            Self::AgentOffline | Self::Starting => 503,
            Self::TargetTimeout => 504,
            Self::StreamGone => 410,
        }
    }

    /// What an agent's answer to `CONNECT` means, when it is not a success.
    pub fn from_agent_status(status: u16) -> Self {
        match status {
            403 => Self::TargetNotAllowed,
            504 => Self::TargetTimeout,
            _ => Self::TargetUnreachable,
        }
    }

    /// The sentence people read.
    pub fn message(self) -> &'static str {
        match self {
            Self::NotLoggedIn => "not logged in (or the login has expired)",
            Self::Denied => "your account is not allowed to reach this host",
            Self::UnknownHost => "the proxy serves no tunnel for this host",
            Self::AgentOffline => "the agent for this host is not connected",
            Self::TargetNotAllowed => "the agent is not configured to reach this target",
            Self::TargetUnreachable => "the target could not be reached",
            Self::TargetTimeout => "the target did not answer in time",
            Self::BadRequest => "the proxy did not understand the tunnel request",
            Self::StreamGone => "the stream could not be resumed (it ended, or was away too long)",
            Self::Starting => "the proxy is starting; try again in a moment",
        }
    }
}

/// How an open tunnel stream ended, by stable code: the `cause` of a closed stream's status,
/// the log line and the metric label.
///
/// Apart from [`TunnelError`], which says why a stream could not be opened (and answers with an
/// HTTP status): a stream that ends has no status to answer with, and most of its ends are
/// normal ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamEnd {
    /// The client closed its side (or went away): the normal end when ssh exits.
    ClientClosed,
    /// The connection to the client broke.
    ClientFailed,
    /// The target closed its side (directly, or through the agent).
    TargetClosed,
    /// The connection to a target the proxy dials itself broke.
    TargetFailed,
    /// The agent's connection to the proxy failed under the stream (killed, cut off, removed).
    AgentGone,
    /// The proxy was shutting down, and the stream outlived its grace.
    ProxyShutdown,
    /// The token expired or its login was revoked.
    LoginEnded,
    /// The policy stopped letting the person through.
    PolicyDenied,
    /// The host's tunnel route was removed.
    RouteRemoved,
}

impl StreamEnd {
    pub const ALL: [Self; 9] = [
        Self::ClientClosed,
        Self::ClientFailed,
        Self::TargetClosed,
        Self::TargetFailed,
        Self::AgentGone,
        Self::ProxyShutdown,
        Self::LoginEnded,
        Self::PolicyDenied,
        Self::RouteRemoved,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Self::ClientClosed => "client_closed",
            Self::ClientFailed => "client_failed",
            Self::TargetClosed => "target_closed",
            Self::TargetFailed => "target_failed",
            Self::AgentGone => "agent_gone",
            Self::ProxyShutdown => "proxy_shutdown",
            Self::LoginEnded => "login_ended",
            Self::PolicyDenied => "policy_denied",
            Self::RouteRemoved => "route_removed",
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.code() == code)
    }

    /// The sentence people read.
    pub fn message(self) -> &'static str {
        match self {
            Self::ClientClosed => "the client closed the connection",
            Self::ClientFailed => "the connection to the client broke",
            Self::TargetClosed => "the target closed the connection",
            Self::TargetFailed => "the connection to the target broke",
            Self::AgentGone => "the agent for this host went away",
            Self::ProxyShutdown => "the proxy is shutting down",
            Self::LoginEnded => "the login expired or was revoked",
            Self::PolicyDenied => "the policy no longer allows you here",
            Self::RouteRemoved => "the tunnel route was removed",
        }
    }

    /// Whether the stream ended as streams do: one of its two ends closed it.
    pub fn is_normal(self) -> bool {
        matches!(self, Self::ClientClosed | Self::TargetClosed)
    }

    /// The code a status's `error` carried for this end before `cause` existed, so that older
    /// CLIs keep telling the same things apart: a cut by the proxy, or a broken stream.
    pub fn tunnel_error(self) -> Option<TunnelError> {
        match self {
            Self::LoginEnded => Some(TunnelError::NotLoggedIn),
            Self::PolicyDenied => Some(TunnelError::Denied),
            Self::RouteRemoved => Some(TunnelError::UnknownHost),
            Self::AgentGone | Self::TargetFailed | Self::ClientFailed => {
                Some(TunnelError::TargetUnreachable)
            }
            Self::ClientClosed | Self::TargetClosed | Self::ProxyShutdown => None,
        }
    }
}

/// The JSON body of a refused tunnel request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
    /// Where to log in, for [`TunnelError::NotLoggedIn`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_url: Option<String>,
}

/// The answer of [`crate::TUNNEL_STATUS_PATH`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamStatus {
    /// `open` or `closed`.
    pub state: String,
    /// For a stream the proxy cut or that broke: the code of why (see
    /// [`StreamEnd::tunnel_error`]; `cause` says more), and the sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TunnelError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For a closed stream: how it ended. Absent from older proxies, and unknown codes (from
    /// newer ones) read as absent.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "known_cause"
    )]
    pub cause: Option<StreamEnd>,
}

/// A `cause` this version knows, else none.
fn known_cause<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Option<StreamEnd>, D::Error> {
    let code: Option<String> = Option::deserialize(de)?;
    Ok(code.as_deref().and_then(StreamEnd::from_code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_reads_back_as_itself() {
        for error in TunnelError::ALL {
            assert_eq!(TunnelError::from_code(error.code()), Some(error));
            let json = serde_json::to_string(&error).unwrap();
            assert_eq!(json, format!("\"{}\"", error.code()));
        }
        assert_eq!(TunnelError::from_code("nope"), None);
    }

    #[test]
    fn every_stream_end_reads_back_as_itself() {
        for end in StreamEnd::ALL {
            assert_eq!(StreamEnd::from_code(end.code()), Some(end));
            let json = serde_json::to_string(&end).unwrap();
            assert_eq!(json, format!("\"{}\"", end.code()));
        }
        assert_eq!(StreamEnd::from_code("nope"), None);
    }

    #[test]
    fn a_status_from_another_version_reads_without_its_unknown_cause() {
        let older: StreamStatus =
            serde_json::from_str(r#"{"state":"closed","error":"denied","reason":"no"}"#).unwrap();
        assert_eq!(older.cause, None);
        assert_eq!(older.error, Some(TunnelError::Denied));
        let newer: StreamStatus =
            serde_json::from_str(r#"{"state":"closed","cause":"moon_phase"}"#).unwrap();
        assert_eq!(newer.cause, None);
        let status = StreamStatus {
            state: "closed".into(),
            error: StreamEnd::AgentGone.tunnel_error(),
            reason: Some(StreamEnd::AgentGone.message().into()),
            cause: Some(StreamEnd::AgentGone),
        };
        let json = serde_json::to_string(&status).unwrap();
        assert_eq!(serde_json::from_str::<StreamStatus>(&json).unwrap(), status);
        assert!(json.contains(r#""cause":"agent_gone""#), "{json}");
    }

    #[test]
    fn a_cut_keeps_the_error_code_older_clis_know_it_by() {
        assert_eq!(
            StreamEnd::LoginEnded.tunnel_error(),
            Some(TunnelError::NotLoggedIn)
        );
        assert_eq!(
            StreamEnd::PolicyDenied.tunnel_error(),
            Some(TunnelError::Denied)
        );
        assert_eq!(
            StreamEnd::RouteRemoved.tunnel_error(),
            Some(TunnelError::UnknownHost)
        );
        for end in StreamEnd::ALL.into_iter().filter(|e| e.is_normal()) {
            assert_eq!(end.tunnel_error(), None, "{end:?}");
        }
    }

    #[test]
    fn an_agents_refusal_keeps_its_meaning() {
        for error in [
            TunnelError::TargetNotAllowed,
            TunnelError::TargetUnreachable,
            TunnelError::TargetTimeout,
        ] {
            assert_eq!(TunnelError::from_agent_status(error.status()), error);
        }
    }

    #[test]
    fn the_body_leaves_out_a_missing_login_url() {
        let body = ErrorBody {
            error: "denied".into(),
            message: "no".into(),
            login_url: None,
        };
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"error":"denied","message":"no"}"#
        );
    }
}
