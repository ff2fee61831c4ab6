//! The sites every server is given (a host, its certificate, its upstream), how the bench sees
//! that they are served, and how it times one change.

use std::net::SocketAddr;
use std::time::Duration;

use sekisho_testkit::{Leaf, Pki};
use tokio::time::Instant;

use crate::cluster::Layout;
use crate::probe::{self, Probe};

/// The first line of every answer from the sites' upstream.
pub(crate) const SITE_UPSTREAM: &str = "upstream: site\n";
/// The first line of every answer from the upstream edited paths lead to.
pub(crate) const EDITED_UPSTREAM: &str = "upstream: edited\n";

pub(crate) struct Sites {
    pub(crate) layout: Layout,
    pub(crate) pki: Pki,
    /// Each site's first certificate.
    pub(crate) leaves: Vec<Leaf>,
    pub(crate) probe: Probe,
    /// The upstreams (in the pod network).
    pub(crate) site: SocketAddr,
    pub(crate) edited: SocketAddr,
    /// Time between two probes.
    pub(crate) poll: Duration,
    /// How long a change, or a start, may take before the bench stops waiting.
    pub(crate) limit: Duration,
    /// Changes of each kind per server.
    pub(crate) changes: usize,
}

impl Sites {
    /// The sites checked to tell that a server is up: the first, the middle and the last.
    fn samples(&self) -> [usize; 3] {
        let n = self.layout.sites;
        [0, n / 2, n - 1]
    }

    /// `Some` once every sample site answers 200 from its upstream over a handshake that
    /// presented the site's own certificate: the probe trusts the bench's CA alone and checks
    /// the host name, and only the site's Secret (or files) holds a certificate of that CA for
    /// it (the proxy's fallback is its development CA's).
    pub(crate) async fn samples_served(&self, addr: SocketAddr) -> anyhow::Result<Option<()>> {
        for i in self.samples() {
            let answer = self.probe.get(addr, &Layout::host(i), "/").await?;
            if answer.status != http::StatusCode::OK || !answer.body.starts_with(SITE_UPSTREAM) {
                return Ok(None);
            }
        }
        Ok(Some(()))
    }

    /// The sites changed, one per change: spread over all of them, `offset` apart for each
    /// kind of change so that two kinds touch different sites.
    pub(crate) fn changed(&self, offset: usize) -> Vec<usize> {
        let n = self.layout.sites;
        let step = (n / self.changes.max(1)).max(1);
        (0..self.changes).map(|j| (j * step + offset) % n).collect()
    }

    /// Until `seen` says the change shows, from `since`; `None` (and a line on stderr) when
    /// it does not within the limit.
    pub(crate) async fn seen_after<F, Fut>(
        &self,
        what: &str,
        since: Instant,
        seen: F,
    ) -> Option<Duration>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = anyhow::Result<Option<()>>>,
    {
        match probe::until(what, since, self.poll, self.limit, seen).await {
            Ok((elapsed, ())) => Some(elapsed),
            Err(error) => {
                eprintln!("  missed: {error:#}");
                None
            }
        }
    }

    /// `Some` once `host` presents `certificate`.
    pub(crate) async fn presents(
        &self,
        addr: SocketAddr,
        host: &str,
        certificate: &[u8],
    ) -> anyhow::Result<Option<()>> {
        let served = self.probe.certificate(addr, host).await?;
        Ok((served == certificate).then_some(()))
    }

    /// `Some` once `host` routes `path` to the edited paths' upstream.
    pub(crate) async fn routes_to_edited(
        &self,
        addr: SocketAddr,
        host: &str,
        path: &str,
    ) -> anyhow::Result<Option<()>> {
        let answer = self.probe.get(addr, host, path).await?;
        Ok(
            (answer.status == http::StatusCode::OK && answer.body.starts_with(EDITED_UPSTREAM))
                .then_some(()),
        )
    }

    /// A new certificate for site `i`, and its DER.
    pub(crate) fn renewal(&self, i: usize) -> anyhow::Result<(Leaf, Vec<u8>)> {
        let leaf = self.pki.leaf(&[&Layout::host(i)])?;
        let der = probe::der(&leaf.cert_pem)?;
        Ok((leaf, der))
    }
}
