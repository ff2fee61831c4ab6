//! Relaying a tunnel stream to the replica that holds its agent.
//!
//! With several replicas, an agent holds links to some of them (one, usually); a tunnel request
//! may land on any. A replica without a link for the agent asks its [`Directory`] which
//! replicas hold one, and opens the stream through one of them: a TLS connection to that
//! replica's HTTPS port, an HTTP/1.1 upgrade to [`RELAY_PATH`] naming the agent and the
//! target, and, once the holder has the agent's stream open, the bytes spliced end to end.
//! The decision (who, which route, which policy) is made once, on the replica the person
//! reached, which also keeps re-checking it and ends the stream as for a direct one; the holder
//! only carries. A holder never relays further: one extra hop at most.
//!
//! Both ends prove they hold the replicas' shared session keys, bound to this one TLS
//! connection: keying material exported from it (RFC 8446 §7.5, RFC 5705) goes into an
//! HMAC-SHA256 the relaying replica sends with the request, and another the holder sends back
//! with its `101`; the key is derived from the newest session key ([`KEY_LABEL`]). Someone in
//! between who terminated TLS on both sides would see two different exports, so neither
//! proof would check; the certificates are not what is trusted (a replica's certificates are
//! for the public names, not for the pod address it is dialed at). A replay cannot work either,
//! since every connection exports other material. Without the keys the relay path answers
//! `403` like any other stranger's request.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use ring::hmac;
use sekisho_wire::tunnel::TunnelError;
use subtle::ConstantTimeEq as _;
use tokio::net::TcpStream;

use super::registry::StreamRefusal;
use super::resume::Owner;
use super::stream::StreamId;
use crate::auth::session::SessionKeys;
use crate::forward::body::RequestBody;
use crate::routing::snapshot::Snapshot;
use crate::state::client::ConnState;

/// The path of a relayed stream, on every host of the HTTPS listener.
pub(crate) const RELAY_PATH: &str = "/.sekisho/relay";
/// The `Upgrade` token of a relayed stream.
pub(crate) const PROTOCOL: &str = "sekisho-relay";

/// The label of the keying material exported from the connection (RFC 8446 §7.5).
const EXPORTER_LABEL: &[u8] = b"EXPORTER-sekisho-relay-v1";
/// What the relay key is derived under, from a session key.
const KEY_LABEL: &[u8] = b"sekisho-relay-key-v1";
/// What the relaying replica's proof is over, before the request's fields.
const REQUEST_LABEL: &[u8] = b"sekisho-relay-request-v1\0";
/// What the holder's proof is over, before the request's proof.
const HOLDER_LABEL: &[u8] = b"sekisho-relay-holder-v1\0";

/// `KEY_ID.PROOF`: the session key id, and the relaying replica's proof in base64url.
pub(super) const AUTH_HEADER: HeaderName = HeaderName::from_static("sekisho-relay-auth");
/// The holder's proof (base64url), with its `101`.
const PROOF_HEADER: HeaderName = HeaderName::from_static("sekisho-relay-proof");
const AGENT_HEADER: HeaderName = HeaderName::from_static("sekisho-relay-agent");
const TARGET_HEADER: HeaderName = HeaderName::from_static("sekisho-relay-target");
/// Who the stream is for (for the holder's log).
const USER_HEADER: HeaderName = HeaderName::from_static("sekisho-relay-user");
/// How long the holder may wait for the agent's answer, in milliseconds.
const TIMEOUT_HEADER: HeaderName = HeaderName::from_static("sekisho-relay-timeout-ms");
/// The stream's id (hex), under which the holder keeps it if the connection is lost.
const STREAM_HEADER: HeaderName = HeaderName::from_static("sekisho-relay-stream");
/// Whose stream it is ([`Owner`], base64url): only they may resume it.
const OWNER_HEADER: HeaderName = HeaderName::from_static("sekisho-relay-owner");
/// On a request: resume the waiting stream; the client has received this many bytes of it.
/// On the `101`: the holder has passed on this many bytes from the client.
const RESUME_HEADER: HeaderName = HeaderName::from_static("sekisho-relay-resume");
/// The holder's refusal, as a [`TunnelError`] code.
pub(crate) const ERROR_HEADER: HeaderName = HeaderName::from_static("sekisho-relay-error");

/// How long dialing a holder and its TLS handshake may take, each.
const DIAL_WITHIN: Duration = Duration::from_secs(3);
/// The longest wait for an agent's answer a relayed request may ask for.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// Keying material exported from one TLS connection; equal at both ends only when nobody
/// terminated TLS between them.
pub(crate) type Binding = [u8; 32];

/// The connection's [`Binding`], when it could carry a relay request: TLS 1.3 (whose exporter
/// binds the whole handshake) and not HTTP/2 (relay requests are HTTP/1.1 upgrades), so that
/// browsers' connections cost no export.
pub(crate) fn binding<D>(conn: &rustls::ConnectionCommon<D>) -> Option<Binding> {
    if conn.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3)
        || conn.alpn_protocol() == Some(b"h2")
    {
        return None;
    }
    conn.export_keying_material([0u8; 32], EXPORTER_LABEL, None)
        .ok()
}

/// One replica that holds links of an agent, as the [`Directory`] knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Holder {
    /// Its name (for the log).
    pub replica: String,
    /// Its HTTPS listener, as the other replicas reach it.
    pub address: SocketAddr,
}

/// Which other replicas hold links of an agent (in Kubernetes mode: the replicas' Leases).
pub(crate) trait Directory: Send + Sync {
    /// The live replicas, other than this one, that hold links of `agent`, in the order to
    /// try them.
    fn holders(&self, agent: &str) -> Vec<Holder>;

    /// Every live replica other than this one.
    fn replicas(&self) -> Vec<Holder>;
}

/// The relaying side: where the agents of other replicas are, and how to reach them.
#[derive(Default)]
pub(crate) struct Relay {
    directory: OnceLock<Arc<dyn Directory>>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("directory", &self.directory.get().is_some())
            .finish()
    }
}

/// What a relayed stream is for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ask<'a> {
    pub agent: &'a str,
    pub target: &'a str,
    pub user: &'a str,
    pub timeout: Duration,
    pub stream: StreamId,
    pub owner: Owner,
    /// To resume the stream waiting at the holder: the bytes the client has received of it.
    pub resume_from: Option<u64>,
}

/// A relayed stream, opened or resumed.
pub(crate) struct Relayed {
    pub io: Upgraded,
    /// For a resumed stream: the bytes the holder has passed on from the client.
    pub received: Option<u64>,
}

/// Why one holder did not carry the stream.
enum Miss {
    /// It answered with a refusal.
    Refused(StreamRefusal),
    /// It could not be reached, or did not prove itself.
    Unreachable(String),
}

impl Relay {
    /// Relays through the holders `directory` names from now on (once; later calls change
    /// nothing).
    pub(crate) fn set_directory(&self, directory: Arc<dyn Directory>) {
        let _ = self.directory.set(directory);
    }

    /// The replicas to ask for `agent`: those the directory says hold it, else every replica
    /// the file lists (`replicas`), in an order of their own for each stream.
    fn holders(&self, agent: &str, replicas: &[SocketAddr]) -> Vec<Holder> {
        match self.directory.get() {
            Some(directory) => directory.holders(agent),
            None => listed(replicas),
        }
    }

    /// Every other replica: the directory's, else those the file lists (`replicas`).
    pub(crate) fn replicas(&self, replicas: &[SocketAddr]) -> Vec<Holder> {
        match self.directory.get() {
            Some(directory) => directory.replicas(),
            None => listed(replicas),
        }
    }
}

/// The replicas a file lists, in an order of their own for each stream.
fn listed(replicas: &[SocketAddr]) -> Vec<Holder> {
    let mut holders: Vec<Holder> = replicas
        .iter()
        .map(|address| Holder {
            replica: address.to_string(),
            address: *address,
        })
        .collect();
    spread(&mut holders);
    holders
}

impl Relay {
    /// Opens a stream to `ask.target` through a replica that holds `ask.agent` (asking the
    /// directory, else the file's `replicas`); `host` is the
    /// name to ask the holder's TLS for (one it serves). A holder that no longer has the agent,
    /// or cannot be reached, is skipped for the next; the agent's or target's own refusal is
    /// the answer.
    pub(crate) async fn open(
        &self,
        keys: &SessionKeys,
        replicas: &[SocketAddr],
        host: &str,
        ask: Ask<'_>,
    ) -> Result<Relayed, StreamRefusal> {
        let holders = self.holders(ask.agent, replicas);
        let mut unreachable = None;
        for holder in holders {
            match through(keys, host, &holder, ask).await {
                Ok(relayed) => {
                    tracing::debug!(agent = ask.agent, replica = %holder.replica, resumed = relayed.received.is_some(), "tunnel stream relayed");
                    return Ok(relayed);
                }
                // Not there: the next holder may have it.
                Err(Miss::Refused((TunnelError::AgentOffline | TunnelError::StreamGone, _))) => {}
                Err(Miss::Refused(refusal)) => return Err(refusal),
                Err(Miss::Unreachable(why)) => {
                    tracing::warn!(
                        agent = ask.agent,
                        replica = %holder.replica,
                        address = %holder.address,
                        "cannot relay to the replica holding the agent: {why}"
                    );
                    unreachable = Some(format!(
                        "the replica holding its connection did not answer ({why})"
                    ));
                }
            }
        }
        match ask.resume_from {
            Some(_) => Err((TunnelError::StreamGone, unreachable)),
            None => Err((TunnelError::AgentOffline, unreachable)),
        }
    }
}

/// Starts `holders` at one of them at random, so that the streams of an agent held by several
/// replicas are spread over them.
pub(crate) fn spread(holders: &mut [Holder]) {
    if holders.len() > 1 {
        let start = rand::random::<u32>() as usize % holders.len();
        holders.rotate_left(start);
    }
}

/// The relay key made from `key`.
pub(super) fn relay_key(key: &crate::auth::session::SessionKey) -> hmac::Key {
    key.derived(KEY_LABEL)
}

/// The newest session key's id and the relay key made from it, for a request.
pub(super) fn newest_key(keys: &SessionKeys) -> (u8, hmac::Key) {
    let session_key = keys.newest();
    (session_key.id(), relay_key(session_key))
}

/// The relay key a request's `KEY_ID.PROOF` names, and the proof.
fn claimed_key(keys: &SessionKeys, auth: &str) -> Result<(hmac::Key, Vec<u8>), &'static str> {
    let (id, theirs) = auth.split_once('.').ok_or("the proof is malformed")?;
    let id: u8 = id.parse().map_err(|_| "the proof names no key")?;
    let theirs = URL_SAFE_NO_PAD
        .decode(theirs)
        .map_err(|_| "the proof is malformed")?;
    let session_key = keys
        .get(id)
        .ok_or("the proof is under a key not held here")?;
    Ok((relay_key(session_key), theirs))
}

/// A TLS 1.3 connection to another replica at `address` (asking for `host`, a name it
/// serves), and its [`Binding`].
pub(super) async fn dial(
    host: &str,
    address: SocketAddr,
) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, Binding), String> {
    let tcp = tokio::time::timeout(DIAL_WITHIN, TcpStream::connect(address))
        .await
        .map_err(|_| format!("no connection within {DIAL_WITHIN:?}"))?
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let name = rustls_pki_types::ServerName::try_from(host.to_owned())
        .map_err(|_| "the host is not a name TLS can ask for".to_owned())?;
    let connector = tokio_rustls::TlsConnector::from(crate::frontdoor::tls::relay_client_config());
    let tls = tokio::time::timeout(DIAL_WITHIN, connector.connect(name, tcp))
        .await
        .map_err(|_| format!("no TLS handshake within {DIAL_WITHIN:?}"))?
        .map_err(|e| e.to_string())?;
    let binding = binding(tls.get_ref().1).ok_or("not TLS 1.3")?;
    Ok((tls, binding))
}

/// What the relaying replica proves: the connection and every field of the request.
fn request_proof(key: &hmac::Key, binding: &Binding, ask: &Ask<'_>) -> hmac::Tag {
    let mut context = hmac::Context::with_key(key);
    context.update(REQUEST_LABEL);
    context.update(binding);
    for field in [ask.agent, ask.target, ask.user] {
        // Header values hold no NUL: the fields cannot run into each other.
        context.update(field.as_bytes());
        context.update(b"\0");
    }
    // Fixed lengths from here on.
    context.update(&timeout_ms(ask.timeout).to_be_bytes());
    context.update(&ask.stream);
    context.update(&ask.owner);
    update_count(&mut context, ask.resume_from);
    context.sign()
}

/// What the holder proves: the connection, the request it answers, and for a resumed stream
/// the bytes it has received.
fn holder_proof(
    key: &hmac::Key,
    binding: &Binding,
    request: &[u8],
    received: Option<u64>,
) -> hmac::Tag {
    let mut context = hmac::Context::with_key(key);
    context.update(HOLDER_LABEL);
    context.update(binding);
    context.update(request);
    update_count(&mut context, received);
    context.sign()
}

/// A count that may be absent, in nine bytes.
fn update_count(context: &mut hmac::Context, count: Option<u64>) {
    match count {
        Some(count) => {
            context.update(&[1]);
            context.update(&count.to_be_bytes());
        }
        None => context.update(&[0; 9]),
    }
}

fn timeout_ms(timeout: Duration) -> u64 {
    u64::try_from(timeout.min(MAX_TIMEOUT).as_millis()).unwrap_or(u64::MAX)
}

/// Opens the stream through one holder.
async fn through(
    keys: &SessionKeys,
    host: &str,
    holder: &Holder,
    ask: Ask<'_>,
) -> Result<Relayed, Miss> {
    let unreachable = |why: &dyn std::fmt::Display| Miss::Unreachable(why.to_string());
    let (tls, binding) = dial(host, holder.address)
        .await
        .map_err(Miss::Unreachable)?;
    // The person goes into a header (for the holder's log): a name a header cannot carry as
    // visible ASCII goes as `-`, in the proof as in the header.
    let user = match ask.user.bytes().all(|b| b.is_ascii_graphic()) {
        true => ask.user,
        false => "-",
    };
    let ask = Ask { user, ..ask };
    let (key_id, key) = newest_key(keys);
    let proof = request_proof(&key, &binding, &ask);
    let auth = format!("{key_id}.{}", URL_SAFE_NO_PAD.encode(proof.as_ref()));
    let mut request = Request::builder()
        .method(Method::GET)
        .uri(RELAY_PATH)
        .header(header::HOST, host)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, PROTOCOL)
        .header(AGENT_HEADER, ask.agent)
        .header(TARGET_HEADER, ask.target)
        .header(USER_HEADER, ask.user)
        .header(TIMEOUT_HEADER, timeout_ms(ask.timeout))
        .header(STREAM_HEADER, hex::encode(ask.stream))
        .header(OWNER_HEADER, URL_SAFE_NO_PAD.encode(ask.owner))
        .header(AUTH_HEADER, auth);
    if let Some(count) = ask.resume_from {
        request = request.header(RESUME_HEADER, count);
    }
    let request = request
        .body(RequestBody::buffered(Bytes::new()))
        .map_err(|_| Miss::Refused((TunnelError::BadRequest, None)))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| unreachable(&e))?;
    tokio::spawn(connection.with_upgrades());
    let answer = tokio::time::timeout(
        ask.timeout.min(MAX_TIMEOUT) + DIAL_WITHIN,
        sender.send_request(request),
    )
    .await
    .map_err(|_| Miss::Refused((TunnelError::TargetTimeout, None)))?
    .map_err(|e| unreachable(&e))?;
    if answer.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(refusal(&answer));
    }
    let received = match ask.resume_from {
        None => None,
        Some(_) => Some(
            answer
                .headers()
                .get(RESUME_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(sekisho_wire::resume::parse_count)
                .ok_or_else(|| unreachable(&"it resumed the stream without a count"))?,
        ),
    };
    let proven = answer
        .headers()
        .get(PROOF_HEADER)
        .and_then(|v| URL_SAFE_NO_PAD.decode(v.as_bytes()).ok())
        .is_some_and(|theirs| {
            let expected = holder_proof(&key, &binding, proof.as_ref(), received);
            bool::from(expected.as_ref().ct_eq(theirs.as_slice()))
        });
    if !proven {
        return Err(unreachable(
            &"it did not prove that it holds the session keys",
        ));
    }
    let io = hyper::upgrade::on(answer)
        .await
        .map_err(|e| unreachable(&e))?;
    Ok(Relayed { io, received })
}

/// A holder's refusal, as the client will be told it.
fn refusal(answer: &Response<Incoming>) -> Miss {
    let code = answer
        .headers()
        .get(ERROR_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(TunnelError::from_code);
    match code {
        Some(error) => Miss::Refused((error, None)),
        None => Miss::Unreachable(format!("it answered {}", answer.status())),
    }
}

/// The fields of a relay request, once its proof checked.
pub(crate) struct Checked {
    pub agent: String,
    pub target: String,
    pub user: String,
    pub timeout: Duration,
    pub stream: StreamId,
    pub owner: Owner,
    pub resume_from: Option<u64>,
    /// The request's proof, which the holder's answers.
    request_proof: hmac::Tag,
    key: hmac::Key,
    binding: Binding,
}

impl Checked {
    /// The headers of the `101`: the holder's proof, and for a resumed stream the bytes it has
    /// received from the client.
    pub(crate) fn answer(&self, received: Option<u64>, headers: &mut HeaderMap) {
        let ours = holder_proof(
            &self.key,
            &self.binding,
            self.request_proof.as_ref(),
            received,
        );
        headers.insert(
            PROOF_HEADER,
            HeaderValue::from_str(&URL_SAFE_NO_PAD.encode(ours.as_ref()))
                .expect("base64url is a valid header value"),
        );
        if let Some(count) = received {
            headers.insert(RESUME_HEADER, HeaderValue::from(count));
        }
    }
}

/// The fields of a relay request whose proof checks; else why it is refused (for the log; the
/// caller hears only `403`).
pub(crate) fn check(
    snapshot: &Snapshot,
    conn: &ConnState,
    req: &Request<Incoming>,
) -> Result<Checked, &'static str> {
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(PROTOCOL.as_bytes()));
    if req.method() != Method::GET || req.version() != Version::HTTP_11 || !upgrade {
        return Err("not a relay upgrade");
    }
    let claim = Claim::of(snapshot, conn, req)?;
    let (binding, key, headers) = (&claim.binding, &claim.key, req.headers());
    let field = |name: &HeaderName| claim.field(name);
    let timeout_ms: u64 = field(&TIMEOUT_HEADER)?
        .parse()
        .map_err(|_| "the timeout is not a number")?;
    let stream: StreamId =
        hex::FromHex::from_hex(field(&STREAM_HEADER)?).map_err(|_| "the stream id is malformed")?;
    let owner: Owner = URL_SAFE_NO_PAD
        .decode(field(&OWNER_HEADER)?)
        .ok()
        .and_then(|owner| owner.try_into().ok())
        .ok_or("the owner is malformed")?;
    let resume_from = match headers.get(RESUME_HEADER) {
        None => None,
        Some(_) => Some(
            sekisho_wire::resume::parse_count(field(&RESUME_HEADER)?)
                .ok_or("the resume count is malformed")?,
        ),
    };
    let ask = Ask {
        agent: field(&AGENT_HEADER)?,
        target: field(&TARGET_HEADER)?,
        user: field(&USER_HEADER)?,
        timeout: Duration::from_millis(timeout_ms),
        stream,
        owner,
        resume_from,
    };
    let proof = request_proof(key, binding, &ask);
    claim.verify(&proof)?;
    Ok(Checked {
        agent: ask.agent.to_owned(),
        target: ask.target.to_owned(),
        user: ask.user.to_owned(),
        timeout: ask.timeout.min(MAX_TIMEOUT),
        stream,
        owner,
        resume_from,
        request_proof: proof,
        key: claim.key,
        binding: claim.binding,
    })
}

/// What every request of another replica starts with: the connection's [`Binding`], and the
/// relay key its `KEY_ID.PROOF` names, with the proof.
pub(super) struct Claim<'r> {
    pub binding: Binding,
    pub key: hmac::Key,
    theirs: Vec<u8>,
    headers: &'r HeaderMap,
}

impl<'r> Claim<'r> {
    pub(super) fn of(
        snapshot: &Snapshot,
        conn: &ConnState,
        req: &'r Request<Incoming>,
    ) -> Result<Self, &'static str> {
        let binding = *conn.binding.as_ref().ok_or("not over TLS 1.3")?;
        let keys = &snapshot
            .identity
            .as_deref()
            .ok_or("login is not configured, so there are no shared keys")?
            .session_keys;
        let headers = req.headers();
        let (key, theirs) = claimed_key(keys, field(headers, &AUTH_HEADER)?)?;
        Ok(Self {
            binding,
            key,
            theirs,
            headers,
        })
    }

    /// The one value of a field, as visible ASCII.
    pub(super) fn field(&self, name: &HeaderName) -> Result<&'r str, &'static str> {
        field(self.headers, name)
    }

    /// Whether the proof sent is `proof`, compared in constant time.
    pub(super) fn verify(&self, proof: &hmac::Tag) -> Result<(), &'static str> {
        match bool::from(proof.as_ref().ct_eq(self.theirs.as_slice())) {
            true => Ok(()),
            false => Err("the proof does not check"),
        }
    }
}

/// The one value of a field that must come once, as visible ASCII.
fn field<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Result<&'h str, &'static str> {
    one(headers, name)?
        .to_str()
        .map_err(|_| "a field is not visible ASCII")
}

/// The one value of a header that must come once.
fn one<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Result<&'h HeaderValue, &'static str> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (Some(value), None) => Ok(value),
        (None, _) => Err("a field is missing"),
        (Some(_), Some(_)) => Err("a field comes twice"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, &[7; 32])
    }

    fn ask<'a>(agent: &'a str, target: &'a str) -> Ask<'a> {
        Ask {
            agent,
            target,
            user: "alice@example.com",
            timeout: Duration::from_secs(10),
            stream: [3; 16],
            owner: [4; 32],
            resume_from: None,
        }
    }

    #[test]
    fn a_proof_covers_the_connection_and_every_field() {
        let base = request_proof(&key(), &[1; 32], &ask("nas", "127.0.0.1:22"));
        let other_connection = request_proof(&key(), &[2; 32], &ask("nas", "127.0.0.1:22"));
        let other_agent = request_proof(&key(), &[1; 32], &ask("nas2", "127.0.0.1:22"));
        // The boundary between two fields moves: still another proof.
        let shifted = request_proof(&key(), &[1; 32], &ask("nas1", "27.0.0.1:22"));
        let mut longer = ask("nas", "127.0.0.1:22");
        longer.timeout = Duration::from_secs(11);
        let other_timeout = request_proof(&key(), &[1; 32], &longer);
        let mut theirs = ask("nas", "127.0.0.1:22");
        theirs.stream = [5; 16];
        let other_stream = request_proof(&key(), &[1; 32], &theirs);
        theirs = ask("nas", "127.0.0.1:22");
        theirs.owner = [5; 32];
        let other_owner = request_proof(&key(), &[1; 32], &theirs);
        theirs = ask("nas", "127.0.0.1:22");
        theirs.resume_from = Some(0);
        let resumed = request_proof(&key(), &[1; 32], &theirs);
        let others = [
            other_connection,
            other_agent,
            shifted,
            other_timeout,
            other_stream,
            other_owner,
            resumed,
        ];
        for other in others {
            assert_ne!(base.as_ref(), other.as_ref());
        }
        let holder = holder_proof(&key(), &[1; 32], base.as_ref(), None);
        assert_ne!(holder.as_ref(), base.as_ref());
        let counted = holder_proof(&key(), &[1; 32], base.as_ref(), Some(0));
        assert_ne!(holder.as_ref(), counted.as_ref());
    }

    #[test]
    fn the_timeout_asked_for_is_capped() {
        assert_eq!(timeout_ms(Duration::from_secs(3600)), 60_000);
    }
}
