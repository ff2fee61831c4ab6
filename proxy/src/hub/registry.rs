//! The hub's registry: every live agent link by agent name, the credential nonces seen, and
//! the tunnel streams open or lately closed. It lives in [`crate::state::Shared`] and outlives
//! configuration reloads; the endpoints ([`super::agent`], [`super::tunnel`]) fill it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper::upgrade::Upgraded;
use sekisho_wire::agent_auth::AgentPublicKey;
use sekisho_wire::tunnel::TunnelError;
use sekisho_wire::{AGENT_DRAIN_PATH, AGENT_DRAINING_HEADER, AGENT_PING_PATH};
use tokio_util::sync::CancellationToken;

use crate::every::Every;
use crate::forward::body::RequestBody;
use crate::request::error::ProxyError;
use crate::routing::snapshot::Snapshot;

use super::stream::{Stream, StreamId};

/// How far an agent's clock may be from the proxy's.
pub(crate) const MAX_CLOCK_SKEW_SECS: u64 = 60;
/// Nonces remembered at most; past this, expired ones are dropped, and if none are, new agent
/// connections are refused until some expire (a flood cannot grow memory without bound).
const MAX_NONCES: usize = 100_000;

/// The live agent connections, by agent name.
#[derive(Debug, Default)]
pub(crate) struct Hub {
    links: DashMap<String, Vec<Arc<Link>>>,
    turn: AtomicUsize,
    next_id: AtomicU64,
    /// Credential nonces seen, with the Unix second after which they may be forgotten.
    nonces: Mutex<HashMap<[u8; 16], u64>>,
    /// Open tunnel streams, and for a while those that closed (so the client can ask why).
    streams: DashMap<StreamId, Arc<Stream>>,
    /// Relayed streams whose connection was lost, waiting to be resumed.
    pub(crate) waiting: super::resume::Waiting,
    /// Woken when an agent link comes or goes (for whoever reports agents' status).
    pub(crate) links_changed: tokio::sync::Notify,
    /// Woken when an agent link comes or goes (for whoever tells the other replicas which
    /// agents this one holds).
    pub(crate) held_changed: tokio::sync::Notify,
    /// When closed streams are swept.
    sweep_streams: Every<{ CLOSED_STREAM_KEPT.as_secs() }>,
    /// Links cut because they stopped answering while a stream waited.
    unresponsive_links: prometheus_client::metrics::counter::Counter,
}

/// How long a new stream waits for the agent's answer before its link is asked whether it is
/// alive at all (a target that takes long to connect is the agent's business; a link that
/// stopped answering must not hold streams for the keep-alive's ten seconds).
const LINK_CHECK_AFTER: Duration = Duration::from_millis(500);
/// How long a link has to answer that check; one silent this long is hung and is cut. With
/// [`LINK_CHECK_AFTER`], a hung link is found within 3 s of a stream waiting on it.
const LINK_CHECK_DEADLINE: Duration = Duration::from_millis(2500);
/// How long a stream waits for the link's task to say why the link ended, or for an answer on a
/// link that just ended.
const LINK_ENDING: Duration = Duration::from_millis(100);
/// Links a new stream tries when they turn out hung: the first, and one other.
const HUNG_LINK_ATTEMPTS: usize = 2;
/// The detail of a refusal when every link of the agent is draining.
const AGENT_DRAINING: &str =
    "the agent is draining (it is stopping or restarting); try again in a moment";

/// Why a stream could not be opened, and what more can be said about it.
pub(crate) type StreamRefusal = (TunnelError, Option<String>);

/// How long a closed stream's reason is kept.
const CLOSED_STREAM_KEPT: Duration = Duration::from_secs(60);
/// Closed streams kept at most; past this the oldest reasons go first.
const MAX_CLOSED_STREAMS: usize = 4096;

/// One live, turned-around connection of an agent.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) id: u64,
    pub(crate) agent: String,
    /// The key it proved itself with: removing the key from the configuration cuts it.
    pub(crate) key: AgentPublicKey,
    pub(crate) sender: SendRequest<RequestBody>,
    /// Cancelled to cut the connection (agent or key removed).
    pub(crate) cancel: CancellationToken,
    /// Being drained: no new streams.
    pub(crate) draining: AtomicBool,
    /// Cancelled once the connection stopped taking streams (and `draining` says whether that
    /// was the agent's own GOAWAY).
    pub(crate) ended: CancellationToken,
    /// When the agent connected.
    pub(crate) since: std::time::SystemTime,
}

/// The `101` that hands a connection to the hub for `protocol`.
pub(crate) fn switching_protocols(
    protocol: &'static str,
) -> Response<crate::respond::body::ResponseBody> {
    let mut response = Response::new(crate::respond::body::ResponseBody::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("upgrade"),
    );
    headers.insert(
        http::header::UPGRADE,
        http::HeaderValue::from_static(protocol),
    );
    response
}

impl Hub {
    /// A hub that counts the links it cuts for not answering in `unresponsive_links`.
    pub(crate) fn new(unresponsive_links: prometheus_client::metrics::counter::Counter) -> Self {
        Self {
            unresponsive_links,
            ..Self::default()
        }
    }

    pub(crate) fn register(&self, link: Arc<Link>) {
        self.links.entry(link.agent.clone()).or_default().push(link);
        self.links_changed.notify_one();
        self.held_changed.notify_one();
    }

    pub(crate) fn unregister(&self, link: &Link) {
        if let dashmap::Entry::Occupied(mut entry) = self.links.entry(link.agent.clone()) {
            entry.get_mut().retain(|l| l.id != link.id);
            if entry.get().is_empty() {
                entry.remove();
            }
        }
        self.links_changed.notify_one();
        self.held_changed.notify_one();
    }

    /// Since when the agent has been connected (its oldest link), if it is.
    pub(crate) fn connected_since(&self, agent: &str) -> Option<std::time::SystemTime> {
        self.links.get(agent)?.iter().map(|l| l.since).min()
    }

    pub(crate) fn new_link(
        &self,
        agent: &str,
        key: AgentPublicKey,
        sender: SendRequest<RequestBody>,
        cancel: CancellationToken,
    ) -> Link {
        Link {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            agent: agent.to_owned(),
            key,
            sender,
            cancel,
            draining: AtomicBool::new(false),
            ended: CancellationToken::new(),
            since: std::time::SystemTime::now(),
        }
    }

    /// The agents with a link that takes new streams, by name.
    pub(crate) fn held(&self) -> std::collections::BTreeSet<String> {
        self.links
            .iter()
            .filter(|links| {
                links
                    .iter()
                    .any(|l| !l.draining.load(Ordering::Relaxed) && !l.sender.is_closed())
            })
            .map(|links| links.key().clone())
            .collect()
    }

    /// Asks each of the agent's links that take new streams to drain ([`Link::ask_to_drain`]):
    /// the agent moves, and its open streams stay here until they end.
    pub(crate) fn ask_to_move(&self, agent: &str) {
        for link in self.links_in_turn(agent) {
            link.ask_to_drain();
        }
        self.held_changed.notify_one();
    }

    /// How many links the agent has.
    pub(crate) fn connected(&self, agent: &str) -> usize {
        self.links.get(agent).map_or(0, |links| links.len())
    }

    /// Whether some link of the agent is draining (it is stopping, or was asked to move).
    fn is_draining(&self, agent: &str) -> bool {
        self.links
            .get(agent)
            .is_some_and(|links| links.iter().any(|l| l.draining.load(Ordering::Relaxed)))
    }

    /// The agent's usable links, starting at the next in turn.
    fn links_in_turn(&self, agent: &str) -> Vec<Arc<Link>> {
        let Some(links) = self.links.get(agent) else {
            return Vec::new();
        };
        let usable: Vec<Arc<Link>> = links
            .iter()
            .filter(|l| !l.draining.load(Ordering::Relaxed) && !l.sender.is_closed())
            .cloned()
            .collect();
        drop(links);
        if usable.is_empty() {
            return usable;
        }
        let start = self.turn.fetch_add(1, Ordering::Relaxed) % usable.len();
        let mut ordered = usable;
        ordered.rotate_left(start);
        ordered
    }

    /// Cuts a link that did not answer its check in time, so no stream chooses it again.
    fn cut_unresponsive(&self, link: &Link) {
        tracing::warn!(
            agent = %link.agent,
            link = link.id,
            "agent link stopped answering (no answer to a check within {LINK_CHECK_DEADLINE:?}): cut"
        );
        self.unresponsive_links.inc();
        link.cancel.cancel();
    }

    /// Cuts the links whose agent, or whose key, the snapshot no longer has.
    pub(crate) fn prune(&self, snapshot: &Snapshot) {
        for links in self.links.iter() {
            for link in links.iter() {
                let kept = snapshot
                    .agents
                    .get(&link.agent)
                    .is_some_and(|keys| keys.contains(&link.key));
                if !kept {
                    link.cancel.cancel();
                }
            }
        }
    }

    /// Remembers a credential's nonce; false when it was seen before (a replay) or when too
    /// many are remembered to take another.
    pub(crate) fn remember_nonce(&self, nonce: [u8; 16], now: u64) -> bool {
        let mut nonces = self.nonces.lock().unwrap_or_else(|e| e.into_inner());
        if nonces.len() >= MAX_NONCES {
            nonces.retain(|_, until| *until >= now);
            if nonces.len() >= MAX_NONCES {
                return false;
            }
        }
        // Seen within the window in which its timestamp is acceptable: a replay.
        if nonces.get(&nonce).is_some_and(|until| *until >= now) {
            return false;
        }
        nonces.insert(nonce, now + 2 * MAX_CLOCK_SKEW_SECS);
        true
    }

    pub(crate) fn add_stream(&self, stream: Arc<Stream>) {
        // Swept when full, and at most every CLOSED_STREAM_KEPT otherwise: the map holds the
        // open streams and the last minute's closed ones, not the last 4,096 streams.
        let now = crate::auth::session::unix_now();
        if self.sweep_streams.due(now) || self.streams.len() >= MAX_CLOSED_STREAMS {
            self.streams.retain(|_, s| {
                s.closed_since()
                    .is_none_or(|at| at.elapsed() < CLOSED_STREAM_KEPT)
            });
        }
        self.streams.insert(stream.id, stream);
    }

    pub(crate) fn stream(&self, id: &StreamId) -> Option<Arc<Stream>> {
        let stream = self.streams.get(id)?.clone();
        if stream
            .closed_since()
            .is_some_and(|at| at.elapsed() >= CLOSED_STREAM_KEPT)
        {
            self.streams.remove(id);
            return None;
        }
        Some(stream)
    }

    /// Opens a byte stream to `target` through one of the agent's links: an HTTP/2 `CONNECT`,
    /// tried on the next link when a link turns out to be gone or draining, and on one other
    /// when it turns out hung ([`Link::unresponsive`]). Only the agent's own answer, or its
    /// silence on a link that still answers checks, blames the target.
    pub(crate) async fn open_stream(
        &self,
        agent: &str,
        target: &str,
        timeout: Duration,
    ) -> Result<Upgraded, StreamRefusal> {
        let links = self.links_in_turn(agent);
        let mut draining = links.is_empty() && self.is_draining(agent);
        let mut hung = 0;
        for link in links {
            let req = Request::builder()
                .method(Method::CONNECT)
                .uri(target)
                .body(RequestBody::buffered(Bytes::new()))
                .map_err(|_| (TunnelError::BadRequest, None))?;
            let mut sender = link.sender.clone();
            // The agent dials within its own connect timeout; allow it a little longer.
            let answer =
                tokio::time::timeout(timeout + Duration::from_secs(1), sender.send_request(req));
            tokio::pin!(answer);
            let answer = tokio::select! {
                answer = &mut answer => answer,
                () = link.ended.cancelled() => {
                    // hyper notices the agent's GOAWAY only when a request comes, and leaves
                    // that request queued, never sent and never answered: what is not answered
                    // moments after the link ended never will be.
                    if let Ok(answer) = tokio::time::timeout(LINK_ENDING, &mut answer).await {
                        answer
                    } else {
                        draining |= link.draining.load(Ordering::Relaxed);
                        continue;
                    }
                }
                () = link.unresponsive() => {
                    self.cut_unresponsive(&link);
                    hung += 1;
                    if hung >= HUNG_LINK_ATTEMPTS {
                        break;
                    }
                    continue;
                }
            };
            let mut response = match answer {
                Err(_) => return Err((TunnelError::TargetTimeout, None)),
                Ok(Err(error)) => {
                    tracing::debug!(agent, link = link.id, %error, "agent link failed; trying the next");
                    // The link's own task learns within moments whether its agent said GOAWAY.
                    let _ = tokio::time::timeout(LINK_ENDING, link.ended.cancelled()).await;
                    draining |= link.draining.load(Ordering::Relaxed);
                    continue;
                }
                Ok(Ok(response)) => response,
            };
            if is_draining(&response) {
                tracing::debug!(
                    agent,
                    link = link.id,
                    "agent is draining; trying the next link"
                );
                link.draining.store(true, Ordering::Relaxed);
                draining = true;
                continue;
            }
            if response.status() != StatusCode::OK {
                let error = TunnelError::from_agent_status(response.status().as_u16());
                return Err((error, None));
            }
            return hyper::upgrade::on(&mut response).await.map_err(|error| {
                tracing::debug!(agent, %error, "agent stream did not open");
                (TunnelError::TargetUnreachable, None)
            });
        }
        let detail = match (draining, hung) {
            (true, _) => Some(AGENT_DRAINING.to_owned()),
            (false, 0) => None,
            (false, _) => Some("the agent's connection stopped answering".to_owned()),
        };
        Err((TunnelError::AgentOffline, detail))
    }
    /// Sends an HTTP request to `endpoint` (`http://host:port`, as the agent sees it) over one
    /// of the agent's links; the next link is tried when a link turns out to be gone.
    ///
    /// An upgrade request (a WebSocket, say) goes as an extended `CONNECT` (RFC 8441) whose
    /// `:protocol` is the `Upgrade` token; the agent makes the HTTP/1.1 upgrade with the target
    /// and answers `200` once the target switched. That answer comes back as the `101` the
    /// client asked for, so the caller splices the two streams as for any upstream.
    pub(crate) async fn send_http(
        &self,
        agent: &str,
        endpoint: &str,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let upgrade = upgrade_protocol(&req);
        let (mut parts, body) = req.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        parts.uri = format!("{endpoint}{path}")
            .parse()
            .map_err(|e| ProxyError::UpstreamProtocol(Box::new(e)))?;
        // HTTP/2 to the agent: no connection-specific headers (the Host is kept, for the
        // upstream to see).
        parts.headers.remove(header::CONNECTION);
        parts.headers.remove(header::UPGRADE);
        parts.headers.remove(header::TRANSFER_ENCODING);
        parts.version = http::Version::HTTP_2;
        if let Some(protocol) = &upgrade {
            parts.method = Method::CONNECT;
            let token = protocol.to_str().unwrap_or_default();
            parts.extensions.insert(hyper::ext::Protocol::from(token));
        }
        let mut req = Some(Request::from_parts(parts, body));
        for link in self.links_in_turn(agent) {
            let mut sender = link.sender.clone();
            if sender.ready().await.is_err() {
                continue;
            }
            let Some(request) = req.take() else { break };
            // The request (and its body) is sent: a hung link fails it instead of holding it.
            let mut response = tokio::select! {
                response = sender.send_request(request) => {
                    response.map_err(|e| ProxyError::UpstreamProtocol(Box::new(e)))?
                }
                // Queued on a link that ended: never sent (see `open_stream`), and the body
                // is gone with it.
                () = link.ended.cancelled() => return Err(ProxyError::AgentOffline),
                () = link.unresponsive() => {
                    self.cut_unresponsive(&link);
                    return Err(ProxyError::AgentOffline);
                }
            };
            if let Some(protocol) = upgrade
                && response.status() == StatusCode::OK
            {
                *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                response.headers_mut().insert(header::UPGRADE, protocol);
            }
            return Ok(response);
        }
        Err(ProxyError::AgentOffline)
    }
}

impl Link {
    /// Asks the agent to drain this link: it dials a new connection at once (through the
    /// load balancer, so most likely to another replica) and sends GOAWAY here, and the streams
    /// open on this link go on. No new streams are opened on it meanwhile.
    pub(crate) fn ask_to_drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
        let mut sender = self.sender.clone();
        let drain = Request::builder()
            .method(Method::POST)
            .uri(format!("http://{}{AGENT_DRAIN_PATH}", self.agent))
            .body(RequestBody::buffered(Bytes::new()))
            .expect("a drain request is well formed");
        tokio::spawn(async move {
            let _ = sender.send_request(drain).await;
        });
    }

    /// Resolves when the link fails a check: after [`LINK_CHECK_AFTER`], a request for
    /// [`AGENT_PING_PATH`] that gets no answer within [`LINK_CHECK_DEADLINE`]. Pending forever
    /// when the link answers: meant to race a stream that waits.
    async fn unresponsive(&self) {
        tokio::time::sleep(LINK_CHECK_AFTER).await;
        let ping = Request::builder()
            .uri(format!("http://{}{AGENT_PING_PATH}", self.agent))
            .body(RequestBody::buffered(Bytes::new()))
            .expect("a ping request is well formed");
        let mut sender = self.sender.clone();
        let answered = tokio::time::timeout(LINK_CHECK_DEADLINE, sender.send_request(ping)).await;
        if let Ok(Ok(_)) = answered {
            std::future::pending::<()>().await;
        }
    }
}

/// Whether an agent's answer is its refusal to take new streams while it stops.
fn is_draining<B>(response: &Response<B>) -> bool {
    response.status() == StatusCode::SERVICE_UNAVAILABLE
        && response.headers().contains_key(AGENT_DRAINING_HEADER)
}

/// The protocol an upgrade request ([`crate::forward::header::is_upgrade_request`]) asks for, when it is
/// a `GET` whose `Upgrade` is one token (`websocket`).
fn upgrade_protocol<B>(req: &Request<B>) -> Option<http::HeaderValue> {
    if req.method() != Method::GET || !crate::forward::header::is_upgrade_request(req) {
        return None;
    }
    let protocol = req.headers().get(header::UPGRADE)?;
    let token = protocol.to_str().ok()?;
    (!token.is_empty() && !token.contains([',', ' ', '\t'])).then(|| protocol.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(id: u8) -> Arc<Stream> {
        Arc::new(Stream {
            id: [id; 16],
            host: "box".into(),
            user: Arc::from("alice"),
            agent: None,
            opened: std::time::Instant::now(),
            issuer: String::new(),
            subject: String::new(),
            token: std::sync::Mutex::new(String::new()),
            closed: std::sync::Mutex::new(None),
        })
    }

    #[test]
    fn closed_streams_are_swept_once_their_minute_is_over_not_only_when_the_map_is_full() {
        let hub = Hub::default();
        let old = stream(1);
        hub.add_stream(old.clone());
        old.close(sekisho_wire::tunnel::StreamEnd::ClientClosed, "done".into());
        // Closed long enough ago to be forgotten.
        let long_ago = std::time::Instant::now()
            .checked_sub(CLOSED_STREAM_KEPT + Duration::from_secs(1))
            .unwrap();
        super::super::stream::lock(&old.closed).as_mut().unwrap().at = long_ago;
        hub.add_stream(stream(2));
        // The first add swept just now: the next sweep is a minute away.
        assert_eq!(hub.streams.len(), 2);
        hub.sweep_streams.expire();
        hub.add_stream(stream(3));
        assert_eq!(hub.streams.len(), 2);
        assert!(!hub.streams.contains_key(&[1; 16]));
    }

    fn request(method: Method, headers: &[(&str, &str)]) -> Request<()> {
        let mut req = Request::builder().method(method);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.body(()).unwrap()
    }

    #[test]
    fn only_a_get_that_asks_for_one_protocol_goes_to_the_agent_as_an_extended_connect() {
        let asks = [("connection", "upgrade"), ("upgrade", "websocket")];
        assert_eq!(
            upgrade_protocol(&request(Method::GET, &asks)).as_ref(),
            Some(&http::HeaderValue::from_static("websocket"))
        );
        assert!(upgrade_protocol(&request(Method::POST, &asks)).is_none());
        assert!(upgrade_protocol(&request(Method::GET, &[("upgrade", "websocket")])).is_none());
        let two = [("connection", "upgrade"), ("upgrade", "websocket, h2c")];
        assert!(upgrade_protocol(&request(Method::GET, &two)).is_none());
        let empty = [("connection", "upgrade"), ("upgrade", "")];
        assert!(upgrade_protocol(&request(Method::GET, &empty)).is_none());
    }

    #[test]
    fn a_nonce_is_accepted_once_within_its_window() {
        let hub = Hub::default();
        assert!(hub.remember_nonce([1; 16], 1000));
        assert!(!hub.remember_nonce([1; 16], 1000 + MAX_CLOCK_SKEW_SECS));
        assert!(hub.remember_nonce([2; 16], 1000));
    }

    #[test]
    fn a_full_nonce_store_forgets_expired_nonces_first() {
        let hub = Hub::default();
        {
            let mut nonces = hub.nonces.lock().unwrap();
            for i in 0..MAX_NONCES as u32 {
                let mut nonce = [0u8; 16];
                nonce[..4].copy_from_slice(&i.to_le_bytes());
                nonces.insert(nonce, 10);
            }
        }
        assert!(hub.remember_nonce([9; 16], 11));
        assert_eq!(hub.nonces.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_full_nonce_store_of_live_nonces_refuses_more() {
        let hub = Hub::default();
        {
            let mut nonces = hub.nonces.lock().unwrap();
            for i in 0..MAX_NONCES as u32 {
                let mut nonce = [0u8; 16];
                nonce[..4].copy_from_slice(&i.to_le_bytes());
                nonces.insert(nonce, 1000);
            }
        }
        assert!(!hub.remember_nonce([9; 16], 11));
    }
}
