//! Why a tunnel could not be opened, as the proxy tells the CLI.
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
}

impl TunnelError {
    pub const ALL: [Self; 8] = [
        Self::NotLoggedIn,
        Self::Denied,
        Self::UnknownHost,
        Self::AgentOffline,
        Self::TargetNotAllowed,
        Self::TargetUnreachable,
        Self::TargetTimeout,
        Self::BadRequest,
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
            Self::AgentOffline => 503,
            Self::TargetTimeout => 504,
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
    /// For a stream the proxy closed: the code of why, and the sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TunnelError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
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
