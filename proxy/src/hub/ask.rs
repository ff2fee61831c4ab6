//! Asking the other replicas about a tunnel stream one of them keeps.
//!
//! A stream's record (its token, how it ended) lives on the replica the person reached. The
//! client's later requests about it, a renewal of its token ([`sekisho_wire::TUNNEL_RENEW_PATH`])
//! and its status ([`sekisho_wire::TUNNEL_STATUS_PATH`]), come through the Service to any
//! replica. One that does not know the stream, once the request's bearer token checks, asks
//! the others: `POST` [`STREAM_PATH`] over TLS 1.3, proven as a relay request is
//! ([`super::relay`]): an HMAC under the relay key of the keying material exported from this
//! connection and of every field, and the answer's HMAC over the request's proof, its status
//! and its body. A renewal's token travels sealed (ChaCha20-Poly1305 under a key derived from
//! the relay key and this connection's export, one seal per connection): only a replica holding
//! the session keys, at the end of this very connection, can open it. A replica asked never
//! asks on.

use std::net::SocketAddr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use ring::{aead, hmac};
use subtle::ConstantTimeEq as _;

use super::relay::{AUTH_HEADER, Binding, Claim, Relay, dial, newest_key};
use super::stream::StreamId;
use crate::auth::session::SessionKeys;
use crate::forward::body::RequestBody;
use crate::respond::body::ResponseBody;
use crate::routing::snapshot::Snapshot;
use crate::state::client::ConnState;

/// Where a replica asks another about a stream.
pub(crate) const STREAM_PATH: &str = "/.sekisho/relay/stream";

/// The stream's id, in hex.
const ID_HEADER: HeaderName = HeaderName::from_static("sekisho-relay-stream");
/// A renewal's token, sealed (base64url).
const TOKEN_HEADER: HeaderName = HeaderName::from_static("sekisho-relay-token");
/// The answer's proof (base64url).
const PROOF_HEADER: HeaderName = HeaderName::from_static("sekisho-relay-proof");

const REQUEST_LABEL: &[u8] = b"sekisho-relay-stream-request-v1\0";
const ANSWER_LABEL: &[u8] = b"sekisho-relay-stream-answer-v1\0";
const SEAL_LABEL: &[u8] = b"sekisho-relay-seal-v1\0";

/// The largest answer read: a status, or nothing.
const MAX_ANSWER: usize = 16 * 1024;

/// What is asked about a stream.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Question<'a> {
    /// Renew it with this token.
    Renew(&'a str),
    /// How is it: open, or closed and why?
    Status,
}

/// What the replica that keeps the stream answered: its status and body, as it would have
/// answered the client.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Relay {
    /// Asks the other replicas about stream `id` in turn, until one knows it; `host` is a name
    /// they serve. `None` when none does (or none could be asked).
    pub(crate) async fn ask(
        &self,
        keys: &SessionKeys,
        replicas: &[SocketAddr],
        host: &str,
        id: &StreamId,
        question: Question<'_>,
    ) -> Option<Answer> {
        for replica in self.replicas(replicas) {
            match ask_one(keys, host, replica.address, id, question).await {
                Ok(answer) if answer.status != StatusCode::NOT_FOUND => return Some(answer),
                Ok(_) => {}
                Err(why) => tracing::debug!(
                    replica = %replica.replica,
                    address = %replica.address,
                    "cannot ask another replica about a tunnel stream: {why}"
                ),
            }
        }
        None
    }
}

async fn ask_one(
    keys: &SessionKeys,
    host: &str,
    address: SocketAddr,
    id: &StreamId,
    question: Question<'_>,
) -> Result<Answer, String> {
    let (tls, binding) = dial(host, address).await?;
    let (key_id, key) = newest_key(keys);
    let sealed = match question {
        Question::Renew(token) => Some(seal(&key, &binding, token.as_bytes())?),
        Question::Status => None,
    };
    let proof = request_proof(&key, &binding, id, sealed.as_deref());
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(STREAM_PATH)
        .header(header::HOST, host)
        .header(ID_HEADER, hex::encode(id))
        .header(
            AUTH_HEADER,
            format!("{key_id}.{}", URL_SAFE_NO_PAD.encode(proof.as_ref())),
        );
    if let Some(sealed) = &sealed {
        request = request.header(TOKEN_HEADER, URL_SAFE_NO_PAD.encode(sealed));
    }
    let request = request
        .body(RequestBody::buffered(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>((parts, body))
    };
    let (parts, body) = tokio::time::timeout(std::time::Duration::from_secs(5), exchange)
        .await
        .map_err(|_| "no answer within 5 s".to_owned())??;
    let proven = parts
        .headers
        .get(PROOF_HEADER)
        .and_then(|v| URL_SAFE_NO_PAD.decode(v.as_bytes()).ok())
        .is_some_and(|theirs| {
            let expected = answer_proof(&key, &binding, proof.as_ref(), parts.status, &body);
            bool::from(expected.as_ref().ct_eq(theirs.as_slice()))
        });
    if !proven {
        return Err("it did not prove that it holds the session keys".to_owned());
    }
    Ok(Answer {
        status: parts.status,
        body,
    })
}

/// The request's proof: the connection, the stream, and the sealed token if any.
fn request_proof(
    key: &hmac::Key,
    binding: &Binding,
    id: &StreamId,
    sealed: Option<&[u8]>,
) -> hmac::Tag {
    let mut context = hmac::Context::with_key(key);
    context.update(REQUEST_LABEL);
    context.update(binding);
    context.update(id);
    if let Some(sealed) = sealed {
        context.update(&[1]);
        context.update(sealed);
    }
    context.sign()
}

/// The answer's proof: the connection, the request's proof, the status and the body.
fn answer_proof(
    key: &hmac::Key,
    binding: &Binding,
    request: &[u8],
    status: StatusCode,
    body: &[u8],
) -> hmac::Tag {
    let mut context = hmac::Context::with_key(key);
    context.update(ANSWER_LABEL);
    context.update(binding);
    context.update(request);
    context.update(&status.as_u16().to_be_bytes());
    context.update(body);
    context.sign()
}

/// The key a token is sealed under on this connection.
fn seal_key(key: &hmac::Key, binding: &Binding) -> aead::LessSafeKey {
    let mut context = hmac::Context::with_key(key);
    context.update(SEAL_LABEL);
    context.update(binding);
    let derived = context.sign();
    let unbound = aead::UnboundKey::new(&aead::CHACHA20_POLY1305, derived.as_ref())
        .expect("an HMAC-SHA256 tag is a ChaCha20 key");
    aead::LessSafeKey::new(unbound)
}

/// Seals `token` for this connection. The key is this connection's alone and seals once, so
/// the nonce may be fixed.
fn seal(key: &hmac::Key, binding: &Binding, token: &[u8]) -> Result<Vec<u8>, String> {
    let mut sealed = token.to_vec();
    seal_key(key, binding)
        .seal_in_place_append_tag(
            aead::Nonce::assume_unique_for_key([0; 12]),
            aead::Aad::empty(),
            &mut sealed,
        )
        .map_err(|_| "cannot seal the token".to_owned())?;
    Ok(sealed)
}

fn open_sealed(key: &hmac::Key, binding: &Binding, sealed: &[u8]) -> Option<String> {
    let mut sealed = sealed.to_vec();
    let token = seal_key(key, binding)
        .open_in_place(
            aead::Nonce::assume_unique_for_key([0; 12]),
            aead::Aad::empty(),
            &mut sealed,
        )
        .ok()?;
    String::from_utf8(token.to_vec()).ok()
}

/// A checked question from another replica.
pub(crate) struct Asked {
    pub id: StreamId,
    /// The token to renew the stream with; `None` asks for its status.
    pub token: Option<String>,
    key: hmac::Key,
    binding: Binding,
    request_proof: hmac::Tag,
}

impl Asked {
    /// Signs the answer for the replica that asked.
    pub(crate) fn sign(
        &self,
        mut answer: Response<ResponseBody>,
        body: &[u8],
    ) -> Response<ResponseBody> {
        let proof = answer_proof(
            &self.key,
            &self.binding,
            self.request_proof.as_ref(),
            answer.status(),
            body,
        );
        answer.headers_mut().insert(
            PROOF_HEADER,
            HeaderValue::from_str(&URL_SAFE_NO_PAD.encode(proof.as_ref()))
                .expect("base64url is a valid header value"),
        );
        answer
    }
}

/// The question of another replica, once its proof checks; else why it is refused (for the
/// log; the caller hears only `403`).
pub(crate) fn check(
    snapshot: &Snapshot,
    conn: &ConnState,
    req: &Request<Incoming>,
) -> Result<Asked, &'static str> {
    if req.method() != Method::POST || req.version() != Version::HTTP_11 {
        return Err("not a replica's question");
    }
    let claim = Claim::of(snapshot, conn, req)?;
    let id: StreamId = hex::FromHex::from_hex(claim.field(&ID_HEADER)?)
        .map_err(|_| "the stream id is malformed")?;
    let sealed = match req.headers().get(TOKEN_HEADER) {
        None => None,
        Some(_) => Some(
            URL_SAFE_NO_PAD
                .decode(claim.field(&TOKEN_HEADER)?)
                .map_err(|_| "the token is malformed")?,
        ),
    };
    let proof = request_proof(&claim.key, &claim.binding, &id, sealed.as_deref());
    claim.verify(&proof)?;
    let token = match sealed {
        None => None,
        Some(sealed) => Some(
            open_sealed(&claim.key, &claim.binding, &sealed).ok_or("the token does not open")?,
        ),
    };
    Ok(Asked {
        id,
        token,
        key: claim.key,
        binding: claim.binding,
        request_proof: proof,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, &[7; 32])
    }

    #[test]
    fn a_sealed_token_opens_only_on_the_same_connection_under_the_same_key() {
        let sealed = seal(&key(), &[1; 32], b"token").unwrap();
        assert!(!sealed.windows(5).any(|w| w == b"token"));
        assert_eq!(
            open_sealed(&key(), &[1; 32], &sealed).as_deref(),
            Some("token")
        );
        assert_eq!(open_sealed(&key(), &[2; 32], &sealed), None);
        let other = hmac::Key::new(hmac::HMAC_SHA256, &[8; 32]);
        assert_eq!(open_sealed(&other, &[1; 32], &sealed), None);
    }

    #[test]
    fn proofs_cover_the_stream_the_token_and_the_answer() {
        let status = request_proof(&key(), &[1; 32], &[3; 16], None);
        let renew = request_proof(&key(), &[1; 32], &[3; 16], Some(b"sealed"));
        let other = request_proof(&key(), &[1; 32], &[4; 16], None);
        assert_ne!(status.as_ref(), renew.as_ref());
        assert_ne!(status.as_ref(), other.as_ref());
        let ok = answer_proof(&key(), &[1; 32], status.as_ref(), StatusCode::OK, b"{}");
        let gone = answer_proof(
            &key(),
            &[1; 32],
            status.as_ref(),
            StatusCode::NOT_FOUND,
            b"{}",
        );
        let changed = answer_proof(&key(), &[1; 32], status.as_ref(), StatusCode::OK, b"{ }");
        assert_ne!(ok.as_ref(), gone.as_ref());
        assert_ne!(ok.as_ref(), changed.as_ref());
    }
}
