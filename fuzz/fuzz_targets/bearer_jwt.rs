//! Bearer tokens: Sekisho's own user tokens and assertions (`user_token::verify`,
//! `assertion::verify`) and JWTs from a configured issuer (`BearerVerifier`, which fetches its
//! keys from a JWKS server on loopback, once). One fixed P-256 key signs everything the harness
//! signs (`identity/testdata/openssl-p256.pem`) and is the only key any verifier knows.
//!
//! The first byte picks the mode:
//!
//! - 0: the rest is a token for every verifier.
//! - 1: the rest is a header and a payload (the second byte is the header's length), signed
//!   with the key, so that the header and claims decoders behind the signature see arbitrary
//!   bytes.
//! - 2: a structured header and claims (the JSON shapes providers send, right and wrong),
//!   signed with the key.
//! - 3: a structured round trip: user claims or assertion claims signed by `SigningKeys::sign`
//!   verify to themselves, or fail with exactly the time error the clock calls for.
//!
//! Whatever any verifier accepts has the expected header (ES256, the key's id, the verifier's
//! `typ`; from another issuer, no `crit`), issuer and audience, and is current at the clock.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libfuzzer_sys::fuzz_target;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject as _;
use sekisho_fuzz::{serve_json, split_mode};
use sekisho_identity::assertion::{self, AssertionClaims};
use sekisho_identity::bearer::{BearerIssuerConfig, BearerVerifier};
use sekisho_identity::http::{HttpClient, HttpClientConfig};
use sekisho_identity::signing::{SigningKeys, TokenError};
use sekisho_identity::user_token::{self, TOKEN_TYPE, UserClaims};
use serde_json::{Map, Value, json};

const PEM: &[u8] = include_bytes!("../../identity/testdata/openssl-p256.pem");
/// Sekisho's auth origin (the issuer of user tokens and assertions).
const AUTH: &str = "https://auth.example.com";
/// The proxy (the audience of user tokens).
const PROXY: &str = "https://gate.example.com";
/// A route's host (the audience of assertions).
const APP: &str = "app.example.com";
/// The configured bearer issuer and its audience.
const BEARER_ISS: &str = "https://id.example";
const BEARER_AUD: &str = "sekisho";
const BEARER_SKEW: i64 = 60;
/// `signing::CLOCK_SKEW_LEEWAY_SECS`.
const LEEWAY: u64 = 30;

struct State {
    signing: SigningKeys,
    pair: EcdsaKeyPair,
    rng: SystemRandom,
    runtime: tokio::runtime::Runtime,
    bearer: BearerVerifier,
}

fn state() -> &'static State {
    static STATE: OnceLock<State> = OnceLock::new();
    STATE.get_or_init(|| {
        let signing = SigningKeys::from_pem(PEM).expect("the test key");
        let rng = SystemRandom::new();
        let der = PrivatePkcs8KeyDer::from_pem_slice(PEM).expect("PKCS#8 PEM");
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            der.secret_pkcs8_der(),
            &rng,
        )
        .expect("a P-256 key");
        let addr = serve_json(signing.jwks_json());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let http = HttpClient::new(&HttpClientConfig {
            allow_plain_http: true,
            timeout: Duration::from_secs(5),
            ..HttpClientConfig::default()
        })
        .expect("an HTTP client");
        let config = BearerIssuerConfig {
            issuer: BEARER_ISS.to_owned(),
            audiences: vec![BEARER_AUD.to_owned()],
            jwks_uri: Some(format!("http://{addr}/jwks").parse().expect("a URL")),
            groups_claim: "groups".to_owned(),
            max_clock_skew: Duration::from_secs(BEARER_SKEW as u64),
            hosted_domains: Vec::new(),
        };
        // Capacity 0: nothing is remembered, so every input is verified from scratch.
        let bearer = runtime
            .block_on(BearerVerifier::with_capacity(vec![config], &http, 0))
            .expect("a verifier");
        State {
            signing,
            pair,
            rng,
            runtime,
            bearer,
        }
    })
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fuzz_target!(|data: &[u8]| {
    let state = state();
    let Some((mode, rest)) = split_mode(data) else {
        return;
    };
    match mode % 4 {
        0 => {
            if let Ok(token) = std::str::from_utf8(rest) {
                verify_all(state, token);
            }
        }
        1 => {
            if let Some((len, rest)) = split_mode(rest) {
                let (header, payload) = rest.split_at(usize::from(len).min(rest.len()));
                verify_all(state, &sign(state, header, payload));
            }
        }
        2 => {
            if let Ok(input) = Structured::arbitrary_take_rest(Unstructured::new(rest)) {
                let now = now();
                let header = input.header.to_json();
                let claims = input.claims.to_json(now);
                let token = sign(
                    state,
                    header.to_string().as_bytes(),
                    claims.to_string().as_bytes(),
                );
                verify_all(state, &token);
            }
        }
        _ => {
            if let Ok(input) = RoundTrip::arbitrary_take_rest(Unstructured::new(rest)) {
                round_trip(state, input);
            }
        }
    }
});

fn sign(state: &State, header: &[u8], payload: &[u8]) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let signature = state
        .pair
        .sign(&state.rng, input.as_bytes())
        .expect("signing never fails");
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
}

/// The header and claims of a compact JWS, as JSON objects.
fn decode(token: &str) -> (Map<String, Value>, Map<String, Value>) {
    let mut parts = token.split('.');
    let mut part = || -> Map<String, Value> {
        parts
            .next()
            .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .expect("an accepted token has a JSON object here")
    };
    (part(), part())
}

/// `jws::numeric_date`: whole seconds from an integer or a finite number.
fn numeric_date(value: Option<&Value>) -> Option<i64> {
    let value = value?;
    value
        .as_i64()
        .or_else(|| value.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
}

fn verify_all(state: &State, token: &str) {
    let kid = state.signing.newest().kid();
    let keys = state.signing.verifying_keys();
    let now = now();
    let ours = |header: &Map<String, Value>| {
        assert_eq!(header.get("alg"), Some(&json!("ES256")), "{header:?}");
    };

    if let Ok(claims) = user_token::verify(token, keys, AUTH, PROXY, now) {
        let (header, _) = decode(token);
        ours(&header);
        assert_eq!(header.get("kid"), Some(&json!(kid)));
        assert_eq!(header.get("typ"), Some(&json!(TOKEN_TYPE)));
        assert_eq!((claims.iss.as_str(), claims.aud.as_str()), (AUTH, PROXY));
        assert!(now < claims.exp.saturating_add(LEEWAY), "{claims:?}");
        assert!(claims.iat <= now.saturating_add(LEEWAY), "{claims:?}");
    }
    if let Ok(claims) = assertion::verify(token, keys, AUTH, APP, now) {
        let (header, _) = decode(token);
        ours(&header);
        assert_eq!(header.get("kid"), Some(&json!(kid)));
        let typ = header.get("typ").and_then(Value::as_str);
        assert!(typ.is_none_or(|t| t.eq_ignore_ascii_case("JWT")), "{typ:?}");
        assert_eq!((claims.iss.as_str(), claims.aud.as_str()), (AUTH, APP));
        assert!(now < claims.exp.saturating_add(LEEWAY), "{claims:?}");
        assert!(claims.iat <= now.saturating_add(LEEWAY), "{claims:?}");
    }
    let before = i64::try_from(now).expect("a clock before 2262");
    if let Ok(verified) = state.runtime.block_on(state.bearer.verify(token)) {
        let (header, claims) = decode(token);
        ours(&header);
        // Another issuer's critical extensions are not understood here (RFC 7515 §4.1.11).
        assert!(header.get("crit").is_none_or(Value::is_null), "{header:?}");
        if let Some(header_kid) = header.get("kid").filter(|k| !k.is_null()) {
            assert_eq!(header_kid, &json!(kid));
        }
        assert_eq!(verified.issuer, BEARER_ISS);
        assert_eq!(claims.get("iss"), Some(&json!(BEARER_ISS)));
        let audiences = match claims.get("aud") {
            Some(Value::String(aud)) => vec![aud.as_str()],
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        assert!(audiences.contains(&BEARER_AUD), "{claims:?}");
        assert_eq!(claims.get("sub"), Some(&json!(verified.subject)));
        let exp = numeric_date(claims.get("exp")).expect("an exp");
        assert!(
            i128::from(before) < i128::from(exp) + i128::from(BEARER_SKEW),
            "{claims:?}"
        );
        assert_eq!(verified.claims, claims);
    }
}

/// JSON values of bounded depth.
#[derive(Arbitrary, Debug)]
enum Json {
    Null,
    Bool(bool),
    Int(i64),
    Unsigned(u64),
    Float(f64),
    Known(u8),
    Str(String),
    Array(Vec<Leaf>),
    Object(Vec<(String, Leaf)>),
}

#[derive(Arbitrary, Debug)]
enum Leaf {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Known(u8),
    Str(String),
}

/// Strings the verifiers compare against.
const KNOWN: [&str; 10] = [
    AUTH, PROXY, APP, BEARER_ISS, BEARER_AUD, TOKEN_TYPE, "JWT", "ES256", "EdDSA", "RS256",
];

fn known(i: u8) -> Value {
    json!(KNOWN[usize::from(i) % KNOWN.len()])
}

impl Leaf {
    fn to_json(&self) -> Value {
        match self {
            Leaf::Null => Value::Null,
            Leaf::Bool(b) => json!(b),
            Leaf::Int(i) => json!(i),
            Leaf::Float(f) => json!(f),
            Leaf::Known(i) => known(*i),
            Leaf::Str(s) => json!(s),
        }
    }
}

impl Json {
    fn to_json(&self) -> Value {
        match self {
            Json::Null => Value::Null,
            Json::Bool(b) => json!(b),
            Json::Int(i) => json!(i),
            Json::Unsigned(u) => json!(u),
            Json::Float(f) => json!(f),
            Json::Known(i) => known(*i),
            Json::Str(s) => json!(s),
            Json::Array(items) => Value::Array(items.iter().map(Leaf::to_json).collect()),
            Json::Object(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }
}

/// A claim: absent, a time near the clock, or any JSON.
#[derive(Arbitrary, Debug)]
enum Claim {
    Absent,
    /// The clock plus this many seconds.
    Relative(i32),
    Value(Json),
}

impl Claim {
    fn put(&self, map: &mut Map<String, Value>, name: &str, now: u64) {
        let value = match self {
            Claim::Absent => return,
            Claim::Relative(delta) => json!(now as i64 + i64::from(*delta)),
            Claim::Value(value) => value.to_json(),
        };
        map.insert(name.to_owned(), value);
    }
}

#[derive(Arbitrary, Debug)]
struct Header {
    alg: Claim,
    /// `Absent` leaves `kid` out; `Relative` puts the key's id in.
    kid: Claim,
    typ: Claim,
    crit: Option<Json>,
    extra: Vec<(String, Json)>,
}

impl Header {
    fn to_json(&self) -> Value {
        let mut map = Map::new();
        for (k, v) in &self.extra {
            map.insert(k.clone(), v.to_json());
        }
        match &self.alg {
            Claim::Relative(_) => {
                map.insert("alg".into(), json!("ES256"));
            }
            other => other.put(&mut map, "alg", 0),
        }
        match &self.kid {
            Claim::Relative(_) => {
                let kid = state().signing.newest().kid().to_owned();
                map.insert("kid".into(), json!(kid));
            }
            other => other.put(&mut map, "kid", 0),
        }
        self.typ.put(&mut map, "typ", 0);
        if let Some(crit) = &self.crit {
            map.insert("crit".into(), crit.to_json());
        }
        Value::Object(map)
    }
}

#[derive(Arbitrary, Debug)]
struct Claims {
    iss: Claim,
    aud: Claim,
    sub: Claim,
    exp: Claim,
    nbf: Claim,
    iat: Claim,
    email: Claim,
    email_verified: Claim,
    groups: Claim,
    sid: Claim,
    jti: Claim,
    extra: Vec<(String, Json)>,
}

impl Claims {
    fn to_json(&self, now: u64) -> Value {
        let mut map = Map::new();
        for (k, v) in &self.extra {
            map.insert(k.clone(), v.to_json());
        }
        for (name, claim) in [
            ("iss", &self.iss),
            ("aud", &self.aud),
            ("sub", &self.sub),
            ("exp", &self.exp),
            ("nbf", &self.nbf),
            ("iat", &self.iat),
            ("email", &self.email),
            ("email_verified", &self.email_verified),
            ("groups", &self.groups),
            ("sid", &self.sid),
            ("jti", &self.jti),
        ] {
            claim.put(&mut map, name, now);
        }
        Value::Object(map)
    }
}

#[derive(Arbitrary, Debug)]
struct Structured {
    header: Header,
    claims: Claims,
}

#[derive(Arbitrary, Debug)]
struct RoundTrip {
    assertion: bool,
    iss: String,
    aud: String,
    sub: String,
    email: String,
    groups: Vec<String>,
    sid: String,
    jti: String,
    iat: u64,
    exp: u64,
    now: u64,
}

fn round_trip(state: &State, input: RoundTrip) {
    let keys = state.signing.verifying_keys();
    let now = input.now;
    let want_err = if now >= input.exp.saturating_add(LEEWAY) {
        Some(TokenError::Expired {
            expired_at: input.exp,
            now,
        })
    } else if input.iat > now.saturating_add(LEEWAY) {
        Some(TokenError::IssuedInFuture {
            issued_at: input.iat,
            now,
        })
    } else {
        None
    };
    if input.assertion {
        let claims = AssertionClaims {
            iss: input.iss,
            aud: input.aud,
            sub: input.sub,
            email: input.email,
            groups: input.groups,
            iat: input.iat,
            exp: input.exp,
            sid: input.sid,
        };
        let token = state.signing.sign("JWT", &claims).expect("claims sign");
        let got = assertion::verify(&token, keys, &claims.iss, &claims.aud, now);
        assert_eq!(got, want_err.map_or(Ok(claims.clone()), Err));
        // Never a user token.
        assert!(user_token::verify(&token, keys, &claims.iss, &claims.aud, now).is_err());
    } else {
        let claims = UserClaims {
            iss: input.iss,
            aud: input.aud,
            sub: input.sub,
            email: input.email,
            groups: input.groups,
            sid: input.sid,
            iat: input.iat,
            exp: input.exp,
            jti: input.jti,
        };
        let token = state
            .signing
            .sign(TOKEN_TYPE, &claims)
            .expect("claims sign");
        let got = user_token::verify(&token, keys, &claims.iss, &claims.aud, now);
        assert_eq!(got, want_err.map_or(Ok(claims.clone()), Err));
        // Never an assertion.
        assert!(assertion::verify(&token, keys, &claims.iss, &claims.aud, now).is_err());
    }
}
