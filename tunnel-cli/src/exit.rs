//! The CLI's exit codes: distinct for each way a tunnel can fail, each way the proxy can be
//! out of reach (a name, a refusal, the wrong protocol, a certificate) and each way an open
//! tunnel can be lost, so scripts and people can tell them apart (ssh passes a `ProxyCommand`'s failure on as its own exit 255, and the
//! message on stderr says which it was).

use std::process::ExitCode;

use sekisho_wire::tunnel::TunnelError;

use crate::net::NetError;
use crate::tunnel::Outcome;

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
/// The proxy could not be reached for another reason than those below (it did not answer in
/// time, the connection broke) or spoke no sense.
pub const PROXY_UNREACHABLE: u8 = 14;
/// The proxy serves no tunnel for this host.
pub const UNKNOWN_HOST: u8 = 15;
/// The proxy's certificate is not trusted (no trusted CA signed it, it names other hosts, it
/// expired, ...).
pub const UNTRUSTED_CERTIFICATE: u8 = 16;
/// The port does not speak HTTPS (plain HTTP, or something else than TLS).
pub const NOT_HTTPS: u8 = 17;
/// The proxy's name does not resolve.
pub const NO_SUCH_HOST: u8 = 18;
/// Every address of the proxy refused the connection.
pub const CONNECTION_REFUSED: u8 = 19;
/// The proxy refused the token in `SEKISHO_TOKEN`.
pub const TOKEN_REFUSED: u8 = 20;
/// An open tunnel was lost with the proxy: it stopped or restarted, or the connection to it
/// broke or timed out. Running the command again may work at once.
pub const PROXY_WENT_AWAY: u8 = 21;
/// An open tunnel was lost with the host's agent: it stopped, or its link to the proxy broke.
pub const AGENT_WENT_AWAY: u8 = 22;

/// Every code and what it means, as `--help` lists them.
pub const ALL: [(u8, &str); 16] = [
    (OK, "success"),
    (
        FAILURE,
        "another failure (a broken cache directory, a bug, ...)",
    ),
    (USAGE, "the command line was wrong"),
    (
        NOT_LOGGED_IN,
        "not logged in, and a login could not be completed",
    ),
    (DENIED, "policy does not let you through to this host"),
    (
        AGENT_OFFLINE,
        "the host's agent is not connected to the proxy",
    ),
    (
        TARGET_UNREACHABLE,
        "the proxy cannot reach the host's target",
    ),
    (
        PROXY_UNREACHABLE,
        "the proxy cannot be reached otherwise (no answer in time, a broken connection)",
    ),
    (UNKNOWN_HOST, "the proxy serves no tunnel for this host"),
    (
        UNTRUSTED_CERTIFICATE,
        "the proxy's certificate is not trusted (see --ca)",
    ),
    (
        NOT_HTTPS,
        "the port speaks plain HTTP (or something else), not HTTPS",
    ),
    (NO_SUCH_HOST, "the proxy's name does not resolve"),
    (
        CONNECTION_REFUSED,
        "the proxy's address refused the connection",
    ),
    (
        TOKEN_REFUSED,
        "the proxy refused the token in SEKISHO_TOKEN",
    ),
    (
        PROXY_WENT_AWAY,
        "the proxy went away under an open tunnel (it restarted, or the connection broke or \
         timed out)",
    ),
    (
        AGENT_WENT_AWAY,
        "the host's agent went away under an open tunnel",
    ),
];

/// The exit codes, for `--help`.
pub fn help() -> String {
    let mut text = "Exit codes:\n".to_owned();
    for (code, meaning) in ALL {
        text.push_str(&format!("  {code:>2}  {meaning}\n"));
    }
    text
}

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
        TunnelError::BadRequest | TunnelError::Starting => PROXY_UNREACHABLE,
        TunnelError::StreamGone => PROXY_WENT_AWAY,
    }
}

/// The exit code for how an open tunnel ended.
pub fn for_outcome(outcome: &Outcome) -> u8 {
    match outcome {
        Outcome::Normal => OK,
        Outcome::Cut { error, .. } => for_tunnel_error(*error),
        Outcome::AgentWentAway => AGENT_WENT_AWAY,
        Outcome::TargetBroke => TARGET_UNREACHABLE,
        Outcome::ProxyWentAway | Outcome::TimedOut => PROXY_WENT_AWAY,
    }
}

/// The exit code for a failure to talk to the proxy.
pub fn for_net_error(error: &NetError) -> u8 {
    match error {
        NetError::BadOrigin(_) => USAGE,
        NetError::CaFile { .. } | NetError::NoCertificate(_) => FAILURE,
        NetError::Certificate(_) => UNTRUSTED_CERTIFICATE,
        NetError::PlainHttp { .. } | NetError::NotTls { .. } => NOT_HTTPS,
        NetError::NoSuchHost { .. } => NO_SUCH_HOST,
        NetError::Refused { .. } => CONNECTION_REFUSED,
        NetError::Connect { .. }
        | NetError::Tls { .. }
        | NetError::Timeout { .. }
        | NetError::Http { .. }
        | NetError::TooLarge { .. } => PROXY_UNREACHABLE,
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
            UNTRUSTED_CERTIFICATE,
            NOT_HTTPS,
            NO_SUCH_HOST,
            CONNECTION_REFUSED,
            TOKEN_REFUSED,
            for_outcome(&Outcome::ProxyWentAway),
            for_outcome(&Outcome::AgentWentAway),
        ];
        let mut unique = codes.to_vec();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), codes.len());
        assert!(!codes.contains(&OK) && !codes.contains(&USAGE) && !codes.contains(&FAILURE));
    }

    #[test]
    fn the_help_lists_every_code_once_in_order() {
        let help = help();
        let listed: Vec<u8> = help
            .lines()
            .skip(1)
            .map(|line| line.split_whitespace().next().unwrap().parse().unwrap())
            .collect();
        let mut sorted = listed.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(listed, sorted, "{help}");
        assert_eq!(listed.len(), ALL.len());
        for code in [
            NOT_HTTPS,
            TOKEN_REFUSED,
            UNTRUSTED_CERTIFICATE,
            PROXY_WENT_AWAY,
            AGENT_WENT_AWAY,
        ] {
            assert!(listed.contains(&code), "{code}: {help}");
        }
    }

    #[test]
    fn a_tunnel_that_ends_normally_exits_with_success_and_a_cut_with_its_refusals_code() {
        assert_eq!(for_outcome(&Outcome::Normal), OK);
        let cut = |error| Outcome::Cut {
            error,
            reason: String::new(),
        };
        assert_eq!(for_outcome(&cut(TunnelError::Denied)), DENIED);
        assert_eq!(for_outcome(&cut(TunnelError::NotLoggedIn)), NOT_LOGGED_IN);
        assert_eq!(for_outcome(&Outcome::TimedOut), PROXY_WENT_AWAY);
        assert_eq!(for_outcome(&Outcome::TargetBroke), TARGET_UNREACHABLE);
    }
}
