use std::{fmt::Display, future::Future, time::Duration};

use tokio::time::Instant;

use crate::Error;

/// How long [`eventually`] waits between tries.
const INTERVAL: Duration = Duration::from_millis(50);

/// Calls `f` until it returns `Ok`, at most for `timeout`, and returns that value. A try that
/// has started always finishes, so the whole may take a little longer than `timeout`. The error
/// of the last try is in [`Error::Eventually`].
pub async fn eventually<T, E, F, Fut>(timeout: Duration, mut f: F) -> Result<T, Error>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + timeout;
    let mut tries = 0_u32;
    loop {
        tries += 1;
        match f().await {
            Ok(value) => return Ok(value),
            Err(error) if Instant::now() >= deadline => {
                return Err(Error::Eventually {
                    waited: timeout,
                    tries,
                    last: error.to_string(),
                });
            }
            Err(_) => tokio::time::sleep(INTERVAL).await,
        }
    }
}
