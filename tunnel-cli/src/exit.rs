//! The CLI's exit codes: distinct for each way a tunnel can fail, so scripts and people can
//! tell them apart (ssh passes a `ProxyCommand`'s failure on as its own exit 255, and the
//! message on stderr says which it was).

use std::process::ExitCode;

use sekisho_wire::tunnel::TunnelError;

/// Success.
pub const OK: u8 = 0;
/// Something else went wrong (a bug, a broken cache directory, ...).
pub const FAILURE: u8 = 1;
/// The command line was wrong (clap's own code).
pub const USAGE: u8 = 2;
/// Not logged in, and a login could not be completed.
pub const NOT_LOGGED_IN: u8 = 10;
/// Policy does not let this person through.
pub const DENIED: u8 = 11;
/// The host's agent is not connected to the proxy.
pub const AGENT_OFFLINE: u8 = 12;
/// The target could not be reached (refused, not allowed by the agent, timed out).
pub const TARGET_UNREACHABLE: u8 = 13;
/// The proxy itself could not be reached or spoke no sense.
pub const PROXY_UNREACHABLE: u8 = 14;
/// The proxy serves no tunnel for this host.
pub const UNKNOWN_HOST: u8 = 15;

/// The exit code for a tunnel refusal.
pub fn for_tunnel_error(error: TunnelError) -> u8 {
    match error {
        TunnelError::NotLoggedIn => NOT_LOGGED_IN,
        TunnelError::Denied => DENIED,
        TunnelError::AgentOffline => AGENT_OFFLINE,
        TunnelError::TargetNotAllowed
        | TunnelError::TargetUnreachable
        | TunnelError::TargetTimeout => TARGET_UNREACHABLE,
        TunnelError::UnknownHost => UNKNOWN_HOST,
        TunnelError::BadRequest => PROXY_UNREACHABLE,
    }
}

pub fn code(code: u8) -> ExitCode {
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_failures_people_must_tell_apart_have_distinct_codes() {
        let codes = [
            for_tunnel_error(TunnelError::NotLoggedIn),
            for_tunnel_error(TunnelError::Denied),
            for_tunnel_error(TunnelError::AgentOffline),
            for_tunnel_error(TunnelError::TargetUnreachable),
            PROXY_UNREACHABLE,
            for_tunnel_error(TunnelError::UnknownHost),
        ];
        let mut unique = codes.to_vec();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), codes.len());
        assert!(!codes.contains(&OK) && !codes.contains(&USAGE) && !codes.contains(&FAILURE));
    }
}
