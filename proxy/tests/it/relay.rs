//! The relay path between replicas (`/.sekisho/relay`) as a stranger meets it: every request
//! without a proof made with the replicas' session keys, over this very TLS connection, is
//! refused alike and counted, whatever is wrong with it.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{Request, StatusCode};

use crate::support::{
    Pki, Proxy, TlsClient, certificates_yaml, empty, identity_yaml, plain_get, read_text,
};

const REFUSED: &str = r#"sekisho_tunnel_relayed_streams_total{role="refused"}"#;

fn relay_request(headers: &[(&str, String)]) -> Request<crate::support::TestBody> {
    let mut request = Request::get("/.sekisho/relay")
        .header("host", "app.test")
        .header("connection", "upgrade")
        .header("upgrade", "sekisho-relay");
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    request.body(empty()).unwrap()
}

#[tokio::test]
async fn relay_requests_without_a_proof_made_with_the_replicas_keys_are_refused_and_counted() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pki.write_leaf("site", &["app.test"]);
    let (agent_key, _) = sekisho_wire::agent_auth::AgentKey::generate().unwrap();
    let proxy = Proxy::start(&format!(
        "{certs}{identity}agents:\n  nas: {{public_keys: ['{public}']}}\n",
        certs = certificates_yaml(&[(cert, key)]),
        identity = identity_yaml(dir.path(), ""),
        public = agent_key.public_key(),
    ));
    let guessed = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let fields = |auth: &str| {
        vec![
            ("sekisho-relay-agent", "nas".to_owned()),
            ("sekisho-relay-target", "127.0.0.1:22".to_owned()),
            ("sekisho-relay-user", "mallory@example.com".to_owned()),
            ("sekisho-relay-timeout-ms", "1000".to_owned()),
            ("sekisho-relay-auth", auth.to_owned()),
        ]
    };
    let mut twice = fields(&format!("1.{guessed}"));
    twice.push(("sekisho-relay-agent", "other".to_owned()));
    let cases = [
        // Well formed, under the key id the proxy holds, with a proof made without the key.
        fields(&format!("1.{guessed}")),
        // Under a key id it does not hold.
        fields(&format!("200.{guessed}")),
        // Malformed proofs.
        fields("1."),
        fields("."),
        fields("1"),
        fields("+1.AAAA"),
        fields(&format!("1.{guessed}!")),
        // A field missing, or twice.
        fields(&format!("1.{guessed}"))[1..].to_vec(),
        twice,
    ];
    let client = TlsClient::new(&pki, proxy.https(), false);
    for headers in &cases {
        let (status, _, body) =
            read_text(client.send("app.test", relay_request(headers)).await).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{headers:?}: {body}");
        assert!(!body.contains("proof"), "the refusal tells why: {body}");
    }
    // Over HTTP/2 (no upgrade there) and over plain HTTP (no TLS to bind a proof to): refused.
    let http2 = TlsClient::new(&pki, proxy.https(), true);
    let mut request = relay_request(&[]);
    *request.uri_mut() = "https://app.test/.sekisho/relay".parse().unwrap();
    request.headers_mut().remove("connection");
    request.headers_mut().remove("upgrade");
    request.headers_mut().remove("host");
    let (status, _, _) = read_text(http2.send("app.test", request).await).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = plain_get(proxy.http(), "app.test", "/.sekisho/relay").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(proxy.metric(REFUSED).await, (cases.len() + 2) as f64);
}
