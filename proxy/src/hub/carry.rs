//! The holder's side of a relayed tunnel stream ([`super::relay`]): a relay request from
//! another replica, checked, answered with the agent's stream spliced to it; if that
//! connection is lost, the agent's stream waits to be resumed ([`super::resume`]).

use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderValue;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use sekisho_wire::resume::Sent;
use sekisho_wire::tunnel::TunnelError;

use super::registry::switching_protocols;
use super::relay::{ERROR_HEADER, PROTOCOL, check};
use super::resume::{Held, KEEP_SENT, NOTICE_WITHIN, Pumped, pump};
use crate::observe::metrics::{ResultLabels, RoleLabels};
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

/// Counts in `sekisho_tunnel_stream_resumes_total{result}`.
pub(crate) fn count_resume(shared: &Shared, result: &'static str) {
    shared
        .metrics
        .tunnel
        .resumes
        .get_or_create(&ResultLabels { result })
        .inc();
}

/// A request on a path for the replicas without a valid proof: counted, logged with `why`,
/// and answered `403` without saying why.
pub(crate) fn refuse_stranger(
    shared: &Shared,
    conn: &ConnState,
    what: &str,
    why: &str,
) -> Response<ResponseBody> {
    count(shared, "refused");
    tracing::warn!(peer = %conn.peer, "{what} refused: {why}");
    json_error(
        StatusCode::FORBIDDEN,
        "forbidden",
        "this path is for the proxy's own replicas",
        None,
    )
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
        Err(why) => return refuse_stranger(shared, conn, "relay request", why),
    };
    if !snapshot.agents.contains_key(&checked.agent) {
        return refuse(TunnelError::AgentOffline);
    }
    let (held, resend) = match checked.resume_from {
        None => {
            let opened = shared
                .hub
                .open_stream(&checked.agent, &checked.target, checked.timeout)
                .await;
            let held = match opened {
                Ok(upgraded) => Held {
                    agent: checked.agent.clone(),
                    target: checked.target.clone(),
                    owner: checked.owner,
                    io: TokioIo::new(upgraded),
                    sent: Sent::new(KEEP_SENT),
                    received: 0,
                },
                Err((error, _)) => return refuse(error),
            };
            (held, Vec::new())
        }
        Some(client_received) => {
            let waiting = &shared.hub.waiting;
            let (id, owner) = (&checked.stream, &checked.owner);
            let held = waiting
                .take(id, &checked.agent, &checked.target, owner, NOTICE_WITHIN)
                .await;
            let Some(held) = held else {
                return refuse(TunnelError::StreamGone);
            };
            // What the client lacks must still be here; if not, the stream cannot go on.
            let Some(resend) = held.sent.since(client_received) else {
                tracing::info!(agent = %checked.agent, user = %checked.user, "a waiting tunnel stream cannot be resumed: what the client lacks is no longer kept");
                return refuse(TunnelError::StreamGone);
            };
            count_resume(shared, "resumed");
            (held, resend)
        }
    };
    let resumed = checked.resume_from.map(|_| held.received);
    count(shared, "carried");
    tracing::debug!(agent = %checked.agent, user = %checked.user, peer = %conn.peer, resumed = resumed.is_some(), "carrying a relayed tunnel stream");
    let (shared, id) = (shared.clone(), checked.stream);
    conn.take_over(Box::new(move |io, mut shutdown| {
        Box::pin(async move {
            let shutting_down = async {
                stopped(&mut shutdown).await;
                let grace = shared.snapshot.load().limits.shutdown_grace;
                tokio::time::sleep(grace.saturating_sub(CUT_BEFORE_GRACE_ENDS)).await;
            };
            // However it ends, `io` is dropped without a TLS close unless both sides ended:
            // the relaying replica reads a failure, not an end, when the agent's stream
            // failed or this replica stops.
            let pumped = tokio::select! {
                pumped = pump(io, held, resend) => pumped,
                () = shutting_down => return,
            };
            if let Pumped::Lost(held) = pumped {
                tracing::info!(agent = %held.agent, "the connection of a relayed tunnel stream was lost; the stream waits to be resumed");
                count_resume(&shared, "waiting");
                let counted = shared.clone();
                shared
                    .hub
                    .waiting
                    .keep(id, held, move || count_resume(&counted, "expired"));
            }
        })
    }));
    let mut response = switching_protocols(PROTOCOL);
    checked.answer(resumed, response.headers_mut());
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
