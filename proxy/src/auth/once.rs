//! One-time codes spent once across every replica: the login's handoff codes, the CLI's
//! browser codes and the `jti`s of back-channel logout tokens.
//!
//! A code is spent here first (a [`ReplayGuard`], so a replay to this replica costs nothing
//! more), then, when the replicas share state, in the place they share
//! ([`SharedSpends`]; in Kubernetes mode `source/kube/once.rs`, which creates an object named
//! after the code, and the API server lets only one create of a name succeed). The first
//! spend anywhere wins. When the shared place cannot be reached the spend fails
//! ([`SpendError::Unshared`]): the caller decides whether that refuses (a sign-in link) or
//! only warns (a logout, which ends sessions either way).

use std::sync::{Arc, OnceLock};

use futures_util::future::BoxFuture;

use crate::auth::session::{ReplayError, ReplayGuard};
use crate::every::Every;

/// Where the replicas mark codes spent.
pub(crate) trait SharedSpends: Send + Sync {
    /// Marks `key` spent until `until` (Unix seconds): `Ok(true)` the first time on any
    /// replica, `Ok(false)` when one spent it before.
    fn spend(&self, key: [u8; 16], until: u64) -> BoxFuture<'_, Result<bool, Unshared>>;
}

/// The replicas' shared state could not be reached (or refused the write).
#[derive(Debug, thiserror::Error)]
#[error("the replicas' shared state cannot be reached: {0}")]
pub(crate) struct Unshared(pub String);

/// Why a code could not be spent.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SpendError {
    #[error("the code was already used")]
    AlreadyUsed,
    #[error("too many codes are in flight to remember another")]
    Full,
    #[error(transparent)]
    Unshared(#[from] Unshared),
}

/// Codes spent here, and where the replicas share them.
#[derive(Debug)]
pub(crate) struct OneTime {
    here: ReplayGuard,
    /// When the codes spent here that have expired are forgotten (else only when full).
    sweep: Every<60>,
    shared: OnceLock<Arc<dyn SharedSpends>>,
}

impl std::fmt::Debug for dyn SharedSpends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedSpends")
    }
}

impl OneTime {
    /// Remembers about `capacity` codes here at a time.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            here: ReplayGuard::new(capacity),
            sweep: Every::default(),
            shared: OnceLock::new(),
        }
    }

    /// From now on, codes are also spent in `shared`. Set once; later calls change nothing.
    pub(crate) fn share_with(&self, shared: Arc<dyn SharedSpends>) {
        let _ = self.shared.set(shared);
    }

    /// Spends `key` (a code's random nonce, or a hash naming it) until `until`.
    pub(crate) async fn spend(
        &self,
        key: [u8; 16],
        until: u64,
        now: u64,
    ) -> Result<(), SpendError> {
        if self.sweep.due(now) {
            self.here.purge(now);
        }
        self.here
            .redeem_nonce(key, until, now)
            .map_err(|error| match error {
                ReplayError::AlreadyUsed => SpendError::AlreadyUsed,
                ReplayError::Full => SpendError::Full,
            })?;
        match self.shared.get() {
            None => Ok(()),
            Some(shared) => match shared.spend(key, until).await? {
                true => Ok(()),
                false => Err(SpendError::AlreadyUsed),
            },
        }
    }

    /// Forgets what was spent here and has expired; how many.
    #[cfg(test)]
    pub(crate) fn purge(&self, now: u64) -> usize {
        self.here.purge(now)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Mutex;

    use super::*;

    /// Replicas' shared state in a set, or unreachable.
    #[derive(Default)]
    struct Shared {
        spent: Mutex<HashSet<[u8; 16]>>,
        down: bool,
    }

    impl SharedSpends for Shared {
        fn spend(&self, key: [u8; 16], _until: u64) -> BoxFuture<'_, Result<bool, Unshared>> {
            Box::pin(async move {
                if self.down {
                    return Err(Unshared("down".into()));
                }
                Ok(self.spent.lock().expect("not poisoned").insert(key))
            })
        }
    }

    #[tokio::test]
    async fn a_code_spent_on_one_replica_is_refused_on_another_sharing_its_state() {
        let shared: Arc<Shared> = Arc::default();
        let (one, other) = (OneTime::new(10), OneTime::new(10));
        one.share_with(shared.clone());
        other.share_with(shared);
        assert!(one.spend([1; 16], 100, 10).await.is_ok());
        assert!(matches!(
            other.spend([1; 16], 100, 10).await,
            Err(SpendError::AlreadyUsed)
        ));
        assert!(matches!(
            one.spend([1; 16], 100, 10).await,
            Err(SpendError::AlreadyUsed)
        ));
        assert!(other.spend([2; 16], 100, 10).await.is_ok());
    }

    #[tokio::test]
    async fn without_shared_state_a_code_works_once_per_replica_and_an_unreachable_one_refuses() {
        let alone = OneTime::new(10);
        assert!(alone.spend([1; 16], 100, 10).await.is_ok());
        assert!(matches!(
            alone.spend([1; 16], 100, 10).await,
            Err(SpendError::AlreadyUsed)
        ));
        let cut_off = OneTime::new(10);
        cut_off.share_with(Arc::new(Shared {
            down: true,
            ..Shared::default()
        }));
        assert!(matches!(
            cut_off.spend([1; 16], 100, 10).await,
            Err(SpendError::Unshared(_))
        ));
    }
}
