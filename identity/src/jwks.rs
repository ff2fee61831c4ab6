//! The signing keys of one token issuer, fetched from its JWKS URL and cached.
//!
//! A token whose `kid` is not in the cached set makes the cache fetch the set again, but at most
//! once per [`JwksCache::min_refetch_interval`]: a flood of tokens with made-up key ids costs the
//! issuer one request per interval, not one per token. Concurrent callers that miss at the same
//! time share one fetch.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use openidconnect::core::{CoreJsonWebKey, CoreJsonWebKeySet};
use openidconnect::{JsonWebKey, JsonWebKeySetUrl};
use tokio::time::Instant;

use crate::http::{HttpClient, HttpError};

/// The default least time between two fetches triggered by unknown key ids.
pub const DEFAULT_MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(30);

/// Fetching the key set failed.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("fetching the key set from {url} failed")]
    Fetch {
        url: String,
        #[source]
        source: openidconnect::DiscoveryError<HttpError>,
    },
}

pub(crate) type FetchFuture<'a> =
    Pin<Box<dyn Future<Output = Result<CoreJsonWebKeySet, JwksError>> + Send + 'a>>;

/// Where a key set comes from. A trait so that the rate limit can be tested without a server.
pub(crate) trait FetchKeys: Send + Sync {
    fn fetch(&self) -> FetchFuture<'_>;
}

struct HttpFetch {
    http: HttpClient,
    url: JsonWebKeySetUrl,
}

impl FetchKeys for HttpFetch {
    fn fetch(&self) -> FetchFuture<'_> {
        Box::pin(async move {
            CoreJsonWebKeySet::fetch_async(&self.url, &self.http)
                .await
                .map_err(|source| JwksError::Fetch {
                    url: self.url.to_string(),
                    source,
                })
        })
    }
}

/// The cached key set of one issuer.
pub struct JwksCache {
    fetcher: Box<dyn FetchKeys>,
    source: String,
    keys: RwLock<Arc<CoreJsonWebKeySet>>,
    /// When the set was last fetched (or a fetch was last attempted); `None` before the first.
    /// Held across a fetch so that concurrent misses wait for one fetch instead of starting more.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    min_refetch_interval: Duration,
}

impl std::fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksCache")
            .field("source", &self.source)
            .field("keys", &self.keys().keys().len())
            .field("min_refetch_interval", &self.min_refetch_interval)
            .finish_non_exhaustive()
    }
}

impl JwksCache {
    /// A cache that fetches from `url` when it is first needed.
    pub fn new(http: HttpClient, url: JsonWebKeySetUrl, min_refetch_interval: Duration) -> Self {
        let source = url.to_string();
        Self::with_fetcher(
            Box::new(HttpFetch { http, url }),
            source,
            None,
            min_refetch_interval,
        )
    }

    /// A cache that starts with `keys`, just fetched from `url` (as discovery does).
    pub fn with_keys(
        http: HttpClient,
        url: JsonWebKeySetUrl,
        keys: CoreJsonWebKeySet,
        min_refetch_interval: Duration,
    ) -> Self {
        let source = url.to_string();
        Self::with_fetcher(
            Box::new(HttpFetch { http, url }),
            source,
            Some(keys),
            min_refetch_interval,
        )
    }

    pub(crate) fn with_fetcher(
        fetcher: Box<dyn FetchKeys>,
        source: String,
        keys: Option<CoreJsonWebKeySet>,
        min_refetch_interval: Duration,
    ) -> Self {
        let last_fetch = keys.as_ref().map(|_| Instant::now());
        Self {
            fetcher,
            source,
            keys: RwLock::new(Arc::new(keys.unwrap_or_default())),
            last_fetch: tokio::sync::Mutex::new(last_fetch),
            min_refetch_interval,
        }
    }

    /// The least time between two fetches caused by unknown key ids.
    pub fn min_refetch_interval(&self) -> Duration {
        self.min_refetch_interval
    }

    /// The key set as it is cached now.
    pub fn keys(&self) -> Arc<CoreJsonWebKeySet> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The cached key with this id, if any.
    pub fn find(&self, kid: &str) -> Option<CoreJsonWebKey> {
        find(&self.keys(), kid).cloned()
    }

    /// The key set to verify a token whose header names `kid`.
    ///
    /// When the set has never been fetched, or `kid` is not in it, the set is fetched again if
    /// the last fetch is at least `min_refetch_interval` old; otherwise the cached set is
    /// returned as it is and the caller will find no matching key. A failed refetch is logged
    /// and the cached set is returned; only a failed first fetch is an error.
    pub async fn keys_for(&self, kid: Option<&str>) -> Result<Arc<CoreJsonWebKeySet>, JwksError> {
        let missing = |keys: &CoreJsonWebKeySet| match kid {
            Some(kid) => find(keys, kid).is_none(),
            None => keys.keys().is_empty(),
        };
        let current = self.keys();
        if !missing(&current) {
            return Ok(current);
        }
        let mut last_fetch = self.last_fetch.lock().await;
        // Someone else may have fetched while we waited for the lock.
        let current = self.keys();
        if !missing(&current) {
            return Ok(current);
        }
        let now = Instant::now();
        let first = last_fetch.is_none();
        if let Some(at) = *last_fetch
            && now.duration_since(at) < self.min_refetch_interval
        {
            return Ok(current);
        }
        *last_fetch = Some(now);
        match self.fetcher.fetch().await {
            Ok(keys) => {
                tracing::debug!(source = %self.source, keys = keys.keys().len(), "fetched signing keys");
                let keys = Arc::new(keys);
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) = keys.clone();
                Ok(keys)
            }
            Err(error) if first => Err(error),
            Err(error) => {
                tracing::warn!(source = %self.source, error = %error, "refetching signing keys failed; keeping the cached set");
                Ok(current)
            }
        }
    }
}

fn find<'a>(keys: &'a CoreJsonWebKeySet, kid: &str) -> Option<&'a CoreJsonWebKey> {
    keys.keys()
        .iter()
        .find(|key| key.key_id().is_some_and(|id| id.as_str() == kid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counting {
        calls: Arc<AtomicUsize>,
        kids: Vec<&'static str>,
    }

    impl FetchKeys for Counting {
        fn fetch(&self) -> FetchFuture<'_> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let keys = self
                .kids
                .iter()
                .map(|kid| {
                    serde_json::from_value(serde_json::json!({
                        "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
                        "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                        "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
                    }))
                    .unwrap()
                })
                .collect();
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Ok(CoreJsonWebKeySet::new(keys))
            })
        }
    }

    fn cache(calls: &Arc<AtomicUsize>) -> JwksCache {
        JwksCache::with_fetcher(
            Box::new(Counting {
                calls: calls.clone(),
                kids: vec!["k1"],
            }),
            "test".into(),
            None,
            Duration::from_secs(30),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_lookup_fetches_and_a_known_kid_never_refetches() {
        let calls = Arc::new(AtomicUsize::new(0));
        let cache = cache(&calls);
        let keys = cache.keys_for(Some("k1")).await.unwrap();
        assert_eq!(keys.keys().len(), 1);
        for _ in 0..10 {
            cache.keys_for(Some("k1")).await.unwrap();
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(cache.find("k1").is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_kids_refetch_at_most_once_per_interval() {
        let calls = Arc::new(AtomicUsize::new(0));
        let cache = cache(&calls);
        cache.keys_for(Some("k1")).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        // Within the interval no bogus kid causes a fetch.
        for i in 0..100 {
            let keys = cache.keys_for(Some(&format!("bogus-{i}"))).await.unwrap();
            assert_eq!(keys.keys().len(), 1);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        tokio::time::advance(Duration::from_secs(31)).await;
        for i in 0..100 {
            cache.keys_for(Some(&format!("bogus-{i}"))).await.unwrap();
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);

        tokio::time::advance(Duration::from_secs(10)).await;
        cache.keys_for(Some("bogus")).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_misses_share_one_fetch() {
        let calls = Arc::new(AtomicUsize::new(0));
        let cache = Arc::new(cache(&calls));
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let cache = cache.clone();
                tokio::spawn(
                    async move { cache.keys_for(Some(&format!("x{i}"))).await.map(|_| ()) },
                )
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cache_started_with_keys_waits_the_interval_before_its_first_refetch() {
        let calls = Arc::new(AtomicUsize::new(0));
        let cache = JwksCache::with_fetcher(
            Box::new(Counting {
                calls: calls.clone(),
                kids: vec!["k1", "k2"],
            }),
            "test".into(),
            Some(CoreJsonWebKeySet::default()),
            Duration::from_secs(30),
        );
        assert!(cache.keys_for(Some("k2")).await.unwrap().keys().is_empty());
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(cache.keys_for(Some("k2")).await.unwrap().keys().len(), 2);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
