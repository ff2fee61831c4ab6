//! The holder's side of a relayed tunnel stream ([`super::relay`]): a relay request from
//! another replica, checked, answered with the agent's stream spliced to it.

use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderValue;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use sekisho_wire::COPY_BUFFER;
use sekisho_wire::tunnel::TunnelError;

use super::registry::switching_protocols;
use super::relay::{ERROR_HEADER, PROOF_HEADER, PROTOCOL, check};
use crate::observe::metrics::RoleLabels;
use crate::respond::body::ResponseBody;
use crate::respond::json_error;
use crate::routing::snapshot::Snapshot;
use crate::state::client::ConnState;
use crate::state::{Shared, stopped};

/// How long before the end of the shutdown grace a carried stream is cut.
const CUT_BEFORE_GRACE_ENDS: Duration = Duration::from_millis(500);

/// Counts a relayed stream in `sekisho_tunnel_relayed_streams_total{role}`.
pub(crate) fn count(shared: &Shared, role: &'static str) {
    shared
        .metrics
        .tunnel
        .relayed
        .get_or_create(&RoleLabels { role })
        .inc();
}

/// Answers a relay request from another replica: once its proof checks, the agent's stream is
/// opened on a link held here (never relayed on), and spliced to this connection.
pub(crate) async fn carry(
    shared: &Arc<Shared>,
    snapshot: &Snapshot,
    conn: &ConnState,
    req: &Request<Incoming>,
) -> Response<ResponseBody> {
    let checked = match check(snapshot, conn, req) {
        Ok(checked) => checked,
        Err(why) => {
            count(shared, "refused");
            tracing::warn!(peer = %conn.peer, "relay request refused: {why}");
            return json_error(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this path is for the proxy's own replicas",
                None,
            );
        }
    };
    if !snapshot.agents.contains_key(&checked.agent) {
        return refuse(TunnelError::AgentOffline);
    }
    let opened = shared
        .hub
        .open_stream(&checked.agent, &checked.target, checked.timeout)
        .await;
    let upgraded = match opened {
        Ok(upgraded) => upgraded,
        Err((error, _)) => return refuse(error),
    };
    count(shared, "carried");
    tracing::debug!(agent = %checked.agent, user = %checked.user, peer = %conn.peer, "carrying a relayed tunnel stream");
    let shared = shared.clone();
    conn.take_over(Box::new(move |mut io, mut shutdown| {
        Box::pin(async move {
            let mut target = TokioIo::new(upgraded);
            let copy = tokio::io::copy_bidirectional_with_sizes(
                &mut io,
                &mut target,
                COPY_BUFFER,
                COPY_BUFFER,
            );
            let shutting_down = async {
                stopped(&mut shutdown).await;
                let grace = shared.snapshot.load().limits.shutdown_grace;
                tokio::time::sleep(grace.saturating_sub(CUT_BEFORE_GRACE_ENDS)).await;
            };
            // However it ends, `io` is dropped without a TLS close unless the copy ended both
            // ways: the relaying replica reads a failure, not an end, when the agent's stream
            // failed or this replica stops.
            tokio::select! {
                _ = copy => {}
                () = shutting_down => {}
            }
        })
    }));
    let mut response = switching_protocols(PROTOCOL);
    response.headers_mut().insert(PROOF_HEADER, checked.proof);
    response
}

/// A refusal the relaying replica turns back into the [`TunnelError`] it stands for.
fn refuse(error: TunnelError) -> Response<ResponseBody> {
    let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = json_error(status, error.code(), error.message(), None);
    response
        .headers_mut()
        .insert(ERROR_HEADER, HeaderValue::from_static(error.code()));
    response
}
