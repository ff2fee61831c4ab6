//! What the replicas share: a sign-out taken by one replica ends the session on the other (its
//! cookie and its open WebSocket), so does the provider's back-channel logout (devidp's), an
//! administrator's `Revocation` signs a user out of all of them, Revocations whose sessions
//! have all expired are deleted, and a one-time code spent on one replica is refused on the
//! other. The replicas run as the proxy's own RBAC.

use std::time::{Duration, Instant};

use anyhow::ensure;
use futures_util::{SinkExt as _, StreamExt as _};
use http::StatusCode;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use sekisho_api::{AccessPolicy, AccessPolicySpec, Revocation, RevocationSpec, Subject};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{Answer, As, Gate, Running, apply, number, until};

/// How long a test waits for a revocation to reach the other replica before it fails. The
/// issue promises 2 s, and a quiet machine takes milliseconds (each test prints what it took);
/// the bound is far over that so that a loaded CI machine, whose API server may answer a
/// first write in seconds, does not fail a test on time alone: tests assert events, not speed.
const EVERYWHERE: Duration = Duration::from_secs(30);

/// A gate with identity and two replicas, both ready, serving one site for `staff`: `/` on
/// Service `web` (an echo), `/ws` on Service `ws` (a WebSocket echo).
pub(crate) struct TwoReplicas {
    pub(crate) gate: Gate,
    pub(crate) other: Running,
    pub(crate) host: String,
    _web: sekisho_testkit::EchoUpstream,
    _ws: tokio::task::JoinHandle<()>,
}

/// A WebSocket server on `listener` that echoes every text and binary message.
fn websocket_echo(listener: std::net::TcpListener) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    Ok(tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut socket) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(message)) = socket.next().await {
                    if (message.is_text() || message.is_binary())
                        && socket.send(message).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    }))
}

pub(crate) async fn two_replicas(prefix: &str) -> anyhow::Result<TwoReplicas> {
    replicas_of(Gate::start_with_identity(prefix, As::ItsClusterRole).await?).await
}

/// [`two_replicas`] of `gate`.
async fn replicas_of(gate: Gate) -> anyhow::Result<TwoReplicas> {
    let web = gate.backend("web").await?;
    let ws_listener = gate.pods.listen(false)?;
    let ws_addr = ws_listener.local_addr()?;
    let ws = websocket_echo(ws_listener)?;
    gate.service_to("ws", ws_addr).await?;
    let host = format!("site.{}.test", gate.namespace);
    gate.tls_secret("site-tls", &[&host]).await?;
    let mut policy = AccessPolicy::new(
        "staff",
        AccessPolicySpec {
            allow: vec![Subject {
                group: Some("staff".into()),
                ..Subject::default()
            }],
            ..AccessPolicySpec::default()
        },
    );
    policy.metadata.namespace = Some(gate.namespace.clone());
    apply(&gate.api(), &policy).await?;
    let site = gate
        .site("site", &host)
        .policy("staff")
        .tls("site-tls")
        .path("/", "Prefix", "web", number(80))
        .path("/ws", "Prefix", "ws", number(80));
    apply(&gate.api(), &site.build()).await?;
    // The test API server answers the first create of a kind in its life after about 2 s
    // (later ones in milliseconds): made here, so that the tests time the replicas, not that.
    let mut warm_up = Revocation::new(
        "warm-up",
        RevocationSpec {
            session: Some("00".repeat(16)),
            ..RevocationSpec::default()
        },
    );
    warm_up.metadata.namespace = Some(gate.namespace.clone());
    gate.api::<Revocation>()
        .create(&PostParams::default(), &warm_up)
        .await?;
    let other = gate.another_ready_replica(&["198.51.100.7"]).await?;
    Ok(TwoReplicas {
        gate,
        other,
        host,
        _web: web,
        _ws: ws,
    })
}

/// Waits until both replicas answer `cookie` with `status`.
async fn both_answer(
    gate: &Gate,
    other: &Running,
    host: &str,
    cookie: &str,
    status: StatusCode,
) -> anyhow::Result<()> {
    until(&format!("both replicas to answer {status}"), || async {
        for https in [gate.https, other.https()?] {
            let answer = gate.get_signed_in(https, host, "/", cookie).await?;
            ensure!(answer.status == status, "{https}: {answer:?}");
        }
        Ok(Answer::none())
    })
    .await?;
    Ok(())
}

pub(crate) fn now() -> u64 {
    sekisho_proxy::unix_now()
}

#[tokio::test]
async fn a_sign_out_on_one_replica_ends_the_session_on_the_other() -> anyhow::Result<()> {
    let TwoReplicas {
        gate, other, host, ..
    } = &two_replicas("revoke-session").await?;
    let (gate, other, host) = (gate, other, host.as_str());
    let (id, cookie) = gate.session(host, "alice@uniqe.example", now())?;
    let (_, bobs) = gate.session(host, "bob@uniqe.example", now())?;
    both_answer(gate, other, host, &cookie, StatusCode::OK).await?;

    let signed_out = Instant::now();
    gate.sign_out(id, now() + 3600)?;
    // The replica that took the sign-out ends the session at once…
    let here = gate.get_signed_in(gate.https, host, "/", &cookie).await?;
    assert_eq!(here.status, StatusCode::FOUND, "{here:?}");
    // …and the other as soon as it has read the Revocation.
    loop {
        let there = gate
            .get_signed_in(other.https()?, host, "/", &cookie)
            .await?;
        if there.status == StatusCode::FOUND {
            break;
        }
        assert_eq!(there.status, StatusCode::OK, "{there:?}");
        ensure!(
            signed_out.elapsed() < EVERYWHERE,
            "the other replica still let the signed-out session in after {:?}",
            signed_out.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "signed out on the other replica after {:?}",
        signed_out.elapsed()
    );
    // The Revocation is named after the session, and nobody else's session ended.
    let name: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let object = gate
        .api::<Revocation>()
        .get(&format!("session-{name}"))
        .await?;
    assert_eq!(object.spec.session.as_deref(), Some(name.as_str()));
    both_answer(gate, other, host, &bobs, StatusCode::OK).await
}

#[tokio::test]
async fn an_administrators_revocation_by_email_signs_the_user_out_of_every_replica_and_later_logins_live()
-> anyhow::Result<()> {
    let TwoReplicas {
        gate, other, host, ..
    } = &two_replicas("revoke-email").await?;
    let (gate, other, host) = (gate, other, host.as_str());
    let before = now();
    let (_, earlier) = gate.session(host, "Alice@Uniqe.example", before - 60)?;
    let (_, later) = gate.session(host, "alice@uniqe.example", before + 1)?;
    let (_, bobs) = gate.session(host, "bob@uniqe.example", before - 60)?;
    both_answer(gate, other, host, &earlier, StatusCode::OK).await?;

    let mut revocation = Revocation::new(
        "sign-out-alice",
        RevocationSpec {
            email: Some("alice@UNIQE.example".into()),
            before: Some(Time(Timestamp::from_second(i64::try_from(before)?)?)),
            ..RevocationSpec::default()
        },
    );
    revocation.metadata.namespace = Some(gate.namespace.clone());
    gate.api::<Revocation>()
        .create(&PostParams::default(), &revocation)
        .await?;
    both_answer(gate, other, host, &earlier, StatusCode::FOUND).await?;
    // A session begun after `before` lives, and so does another user's.
    both_answer(gate, other, host, &later, StatusCode::OK).await?;
    both_answer(gate, other, host, &bobs, StatusCode::OK).await
}

#[tokio::test]
async fn a_sign_out_on_one_replica_closes_the_users_websocket_on_the_other() -> anyhow::Result<()> {
    let TwoReplicas {
        gate, other, host, ..
    } = &two_replicas("revoke-websocket").await?;
    let (id, cookie) = gate.session(host, "alice@uniqe.example", now())?;
    both_answer(gate, other, host, &cookie, StatusCode::OK).await?;
    let mut socket = gate.websocket(other.https()?, host, "/ws", &cookie).await?;
    socket.send(Message::text("ping")).await?;
    let echoed = tokio::time::timeout(EVERYWHERE, socket.next()).await?;
    assert_eq!(echoed.transpose()?, Some(Message::text("ping")));

    let signed_out = Instant::now();
    gate.sign_out(id, now() + 3600)?;
    assert_eq!(
        closed(&mut socket).await?,
        Some(1008),
        "closed as a policy violation"
    );
    eprintln!(
        "the other replica closed the WebSocket after {:?}",
        signed_out.elapsed()
    );
    Ok(())
}

/// Waits for the WebSocket to be closed, then the close code; fails after [`EVERYWHERE`].
async fn closed<S>(socket: &mut S) -> anyhow::Result<Option<u16>>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    tokio::time::timeout(EVERYWHERE, async {
        while let Some(message) = socket.next().await {
            if let Message::Close(frame) = message? {
                return Ok::<_, anyhow::Error>(frame.map(|f| u16::from(f.code)));
            }
        }
        Ok(None)
    })
    .await
    .map_err(|_| {
        anyhow::anyhow!("the WebSocket on the other replica was still open after {EVERYWHERE:?}")
    })?
}

/// Signs alice in at devidp itself (its login form, in a browser), as client `sekisho`: the
/// provider session that its `/__dev/logout` ends, telling the client by back-channel.
async fn sign_in_at_provider(idp: &sekisho_testkit::Idp) -> anyhow::Result<()> {
    let browser =
        sekisho_testkit::Browser::start(sekisho_testkit::BrowserOptions::default()).await?;
    let (_, challenge) = sekisho_testkit::pkce();
    let authorize = url::Url::parse_with_params(
        &format!("{}/auth", idp.issuer()),
        [
            ("client_id", "sekisho"),
            ("response_type", "code"),
            (
                "redirect_uri",
                "https://auth.localhost:8443/.sekisho/callback",
            ),
            ("scope", "openid email"),
            ("state", "s"),
            ("nonce", "n"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ],
    )?;
    browser.goto(authorize.as_str()).await?;
    let shown =
        sekisho_testkit::login_with_browser(&browser, "alice@uniqe.example", "password").await?;
    ensure!(shown, "devidp showed no login form");
    Ok(())
}

/// `POST <issuer>/__dev/logout?sub=<sub>` at devidp: it sends the logout token.
async fn provider_logout(idp: &sekisho_testkit::Idp, sub: &str) -> anyhow::Result<()> {
    use http_body_util::BodyExt as _;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let request = http::Request::post(format!("{}/__dev/logout?sub={sub}", idp.issuer()))
        .body(http_body_util::Full::new(bytes::Bytes::new()))?;
    let response = tokio::time::timeout(EVERYWHERE, client.request(request)).await??;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    ensure!(
        status == StatusCode::OK,
        "devidp's /__dev/logout: {status} {body:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_back_channel_logout_sent_to_one_replica_closes_the_users_websocket_on_the_other()
-> anyhow::Result<()> {
    let mut capture = sekisho_testkit::LogoutCapture::start().await?;
    let idp = sekisho_testkit::Idp::builder()
        .backchannel_logout_uri(capture.uri())
        .backchannel_logout_without_sid()
        .start()
        .await?;
    let gate = Gate::start_with_provider("backchannel", As::ItsClusterRole, idp.issuer()).await?;
    let TwoReplicas {
        gate, other, host, ..
    } = &replicas_of(gate).await?;
    let auth = format!("auth.{}.test", gate.namespace);
    gate.tls_secret("default-tls", &[&auth]).await?;
    sign_in_at_provider(&idp).await?;
    let (_, cookie) = gate.session_of(
        host,
        idp.issuer(),
        "alice",
        "alice@uniqe.example",
        now().saturating_sub(1),
    )?;
    both_answer(gate, other, host, &cookie, StatusCode::OK).await?;
    let mut socket = gate.websocket(other.https()?, host, "/ws", &cookie).await?;
    socket.send(Message::text("ping")).await?;
    let echoed = tokio::time::timeout(EVERYWHERE, socket.next()).await?;
    assert_eq!(echoed.transpose()?, Some(Message::text("ping")));

    // The provider logs alice out; its logout token goes to the first replica only.
    provider_logout(&idp, "alice").await?;
    let token = capture.next_token(EVERYWHERE).await?;
    let form = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("logout_token", &token)
        .finish();
    let logged_out = Instant::now();
    let answer = until("the first replica to take the logout token", || async {
        let answer = gate
            .post_form(
                gate.https,
                &auth,
                "/.sekisho/backchannel-logout",
                form.clone(),
            )
            .await?;
        ensure!(answer.status == StatusCode::OK, "{answer:?}");
        Ok(answer)
    })
    .await?;
    ensure!(answer.status == StatusCode::OK, "{answer:?}");
    assert_eq!(
        closed(&mut socket).await?,
        Some(1008),
        "closed as a policy violation"
    );
    eprintln!(
        "the other replica closed the WebSocket {:?} after the logout token was posted",
        logged_out.elapsed()
    );
    both_answer(gate, other, host, &cookie, StatusCode::FOUND).await
}

#[tokio::test]
async fn a_cli_code_spent_on_one_replica_is_refused_on_the_other() -> anyhow::Result<()> {
    let TwoReplicas { gate, other, .. } = &two_replicas("one-time").await?;
    // The auth host's certificate: the default one, for names no Ingress covers.
    let auth = format!("auth.{}.test", gate.namespace);
    gate.tls_secret("default-tls", &[&auth]).await?;
    let (_, cookie) = gate.session(&auth, "alice@uniqe.example", now())?;
    let (verifier, challenge) = sekisho_testkit::pkce();
    let redirect = "http://127.0.0.1:9/callback";
    let authorize = format!(
        "/.sekisho/cli/authorize?redirect_uri={}&state=s1&code_challenge={challenge}&code_challenge_method=S256",
        url::form_urlencoded::byte_serialize(redirect.as_bytes()).collect::<String>()
    );
    let answer = until("the auth host to hand out a CLI code", || async {
        // Both replicas serve the auth host with its certificate by now.
        let config = gate
            .get_signed_in(other.https()?, &auth, "/.sekisho/cli/config", &cookie)
            .await?;
        ensure!(config.status == StatusCode::OK, "{config:?}");
        let answer = gate
            .get_signed_in(gate.https, &auth, &authorize, &cookie)
            .await?;
        ensure!(answer.status == StatusCode::FOUND, "{answer:?}");
        Ok(answer)
    })
    .await?;
    let location = url::Url::parse(answer.location.as_deref().unwrap_or_default())?;
    let code = location
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .ok_or_else(|| anyhow::anyhow!("no code in {location}"))?;
    let form = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "authorization_code")
        .append_pair("code", &code)
        .append_pair("code_verifier", &verifier)
        .append_pair("redirect_uri", redirect)
        .finish();

    // Spent on the other replica first…
    let first = gate
        .post_form(other.https()?, &auth, "/.sekisho/cli/token", form.clone())
        .await?;
    assert_eq!(first.status, StatusCode::OK, "{first:?}");
    assert!(first.body.contains("access_token"), "{first:?}");
    // …it is refused on this one, which never saw it used.
    let again = gate
        .post_form(gate.https, &auth, "/.sekisho/cli/token", form)
        .await?;
    assert_eq!(again.status, StatusCode::BAD_REQUEST, "{again:?}");
    assert!(again.body.contains("invalid_grant"), "{again:?}");
    let leases = gate
        .api::<k8s_openapi::api::coordination::v1::Lease>()
        .list(&kube::api::ListParams::default().labels("sekisho.dev/one-time-code"))
        .await?;
    assert_eq!(leases.items.len(), 1, "one Lease for the one code spent");
    Ok(())
}

#[tokio::test]
async fn a_revocation_whose_sessions_have_all_expired_is_deleted_and_a_live_one_is_kept()
-> anyhow::Result<()> {
    let gate = Gate::start_with_identity("revoke-sweep", As::ItsClusterRole).await?;
    let api = gate.api::<Revocation>();
    let at = |seconds: u64| -> anyhow::Result<Time> {
        Ok(Time(Timestamp::from_second(i64::try_from(seconds)?)?))
    };
    for (name, expires) in [("expired", now() - 60), ("live", now() + 3600)] {
        let mut revocation = Revocation::new(
            name,
            RevocationSpec {
                session: Some("ab".repeat(16)),
                expires: Some(at(expires)?),
                ..RevocationSpec::default()
            },
        );
        revocation.metadata.namespace = Some(gate.namespace.clone());
        api.create(&PostParams::default(), &revocation).await?;
    }
    // A replica sweeps when it starts (and every ten minutes after).
    let _other = gate.another_replica(&["198.51.100.7"])?;
    until("the expired Revocation to be deleted", || async {
        let left: Vec<String> = api
            .list(&Default::default())
            .await?
            .items
            .into_iter()
            .filter_map(|r| r.metadata.name)
            .collect();
        ensure!(left == ["live"], "{left:?}");
        Ok(Answer::none())
    })
    .await?;
    Ok(())
}
