//! The device flow (RFC 8628): ask the proxy for a user code, tell the person where to enter
//! it, and poll the token endpoint at the interval the proxy asks for until the login is
//! approved, denied or expired. Everything is printed on stderr.

use std::time::Duration;

use crate::grant::unix_now;
use crate::grant::{AuthServer, GrantError, Tokens};

/// The longest a device login is waited for, whatever the proxy says.
const MAX_WAIT: Duration = Duration::from_secs(30 * 60);
/// Interval bounds, whatever the proxy says.
const MIN_INTERVAL: u64 = 1;
const MAX_INTERVAL: u64 = 60;
/// What `slow_down` adds (RFC 8628 §3.5).
const SLOW_DOWN_STEP: u64 = 5;
/// Added to every wait, so that a poll never arrives early by the proxy's clock.
const MARGIN: Duration = Duration::from_millis(150);

/// What to do after a poll.
#[derive(Debug)]
pub(crate) enum Next {
    /// Poll again after the current interval.
    Wait,
    /// Poll again after an interval grown by 5 s.
    SlowDown,
    /// Stop with this error.
    Stop(DeviceError),
}

/// What a poll's refusal means for the loop.
pub(crate) fn next(error: GrantError) -> Next {
    match error.oauth_error() {
        Some("authorization_pending") => Next::Wait,
        Some("slow_down") => Next::SlowDown,
        Some("access_denied") => Next::Stop(DeviceError::Denied),
        Some("expired_token") => Next::Stop(DeviceError::Expired),
        _ => Next::Stop(DeviceError::Grant(error)),
    }
}

/// Runs the device flow against the auth host `server`.
/// Why a device login ended without tokens.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("the sign-in was denied")]
    Denied,
    #[error("the sign-in was not approved in time")]
    Expired,
    #[error("the proxy did not complete the login")]
    Grant(#[source] GrantError),
}

pub async fn run(server: AuthServer<'_>) -> Result<Tokens, DeviceError> {
    let start = server.start_device().await.map_err(DeviceError::Grant)?;
    let wait = Duration::from_secs(start.expires_in).min(MAX_WAIT);
    let mut interval = start.interval.clamp(MIN_INTERVAL, MAX_INTERVAL);
    eprintln!(
        "To log in, open {} in a browser on any device and enter the code {}",
        start.verification_uri, start.user_code
    );
    if let Some(complete) = &start.verification_uri_complete {
        eprintln!(
            "(or open {complete} and check that it shows {})",
            start.user_code
        );
    }
    eprintln!(
        "Waiting for the approval (up to {} minutes)...",
        wait.as_secs() / 60
    );
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let pause = Duration::from_secs(interval) + MARGIN;
        if tokio::time::Instant::now() + pause >= deadline {
            return Err(DeviceError::Expired);
        }
        tokio::time::sleep(pause).await;
        match server.poll_device(&start.device_code, unix_now()).await {
            Ok(tokens) => return Ok(tokens),
            Err(error) => match next(error) {
                Next::Wait => {}
                Next::SlowDown => {
                    interval = (interval + SLOW_DOWN_STEP).min(MAX_INTERVAL);
                }
                Next::Stop(error) => return Err(error),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(error: &str) -> GrantError {
        GrantError::Refused {
            error: error.into(),
            description: String::new(),
        }
    }

    #[test]
    fn pending_waits_slow_down_slows_and_a_decision_or_an_expiry_stops() {
        assert!(matches!(next(refused("authorization_pending")), Next::Wait));
        assert!(matches!(next(refused("slow_down")), Next::SlowDown));
        assert!(matches!(
            next(refused("access_denied")),
            Next::Stop(DeviceError::Denied)
        ));
        assert!(matches!(
            next(refused("expired_token")),
            Next::Stop(DeviceError::Expired)
        ));
        assert!(matches!(
            next(refused("invalid_grant")),
            Next::Stop(DeviceError::Grant(_))
        ));
    }
}
