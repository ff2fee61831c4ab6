//! Who is asking: a verified identity (from a session cookie or a bearer token) in the form
//! policy decides on and upstreams are told, built once and cached per session. Depends only
//! on the policy's identity type and the session record.

use std::sync::{Arc, Mutex};

use http::header::HeaderValue;

use crate::auth::session::SessionRecord;
use crate::policy::{Identity, claim_values};

/// A verified identity, ready for policy and for the upstream's headers.
///
/// Built once per session cookie and cached (see [`IdentityRuntime::cached_session`]), so a
/// request with a known cookie opens nothing, decodes nothing and formats no header values.
#[derive(Debug)]
pub(crate) struct Who {
    /// The session id (a hash of the token for bearer tokens): the assertion cache's key.
    pub session_id: [u8; 16],
    pub identity: Identity,
    /// The email, or the subject: the name in logs.
    pub user: Arc<str>,
    /// The session this identity came from (none for bearer tokens).
    pub session: Option<SessionRecord>,
    /// The identity headers' values (subject, verified email, groups), formatted once; the
    /// route says which headers carry them.
    pub headers: IdentityHeaders,
    /// The refreshed cookie for the current minute, so it is sealed once per minute at most.
    pub(crate) refreshed: Mutex<Option<(u64, HeaderValue)>>,
    /// The last assertion header: audience, value, reuse it until (Unix seconds).
    assertion: Mutex<Option<(Box<str>, HeaderValue, u64)>>,
}

#[derive(Debug)]
pub(crate) struct IdentityHeaders {
    pub user: Option<HeaderValue>,
    pub email: Option<HeaderValue>,
    pub groups: Option<HeaderValue>,
}

impl Who {
    pub(crate) fn new(
        session_id: [u8; 16],
        identity: Identity,
        session: Option<SessionRecord>,
    ) -> Self {
        let email = identity.verified_email().unwrap_or("");
        let user: Arc<str> = Arc::from(if email.is_empty() {
            identity.subject.as_str()
        } else {
            email
        });
        let value = |text: &str| {
            (!text.is_empty())
                .then(|| HeaderValue::from_str(text).ok())
                .flatten()
        };
        let headers = IdentityHeaders {
            user: value(&identity.subject),
            email: value(email),
            groups: value(&identity.groups.join(",")),
        };
        Self {
            session_id,
            identity,
            user,
            session,
            headers,
            refreshed: Mutex::new(None),
            assertion: Mutex::new(None),
        }
    }

    /// The assertion header for `audience` made for this identity before, while still fresh.
    pub(crate) fn cached_assertion(&self, audience: &str, now: u64) -> Option<HeaderValue> {
        let cached = self.assertion.lock().unwrap_or_else(|e| e.into_inner());
        match &*cached {
            Some((aud, value, until)) if &**aud == audience && now < *until => Some(value.clone()),
            _ => None,
        }
    }

    pub(crate) fn remember_assertion(&self, audience: &str, value: HeaderValue, until: u64) {
        *self.assertion.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((audience.into(), value, until));
    }

    /// The verified email, or `""`.
    pub(crate) fn email(&self) -> &str {
        self.identity.verified_email().unwrap_or("")
    }
}

/// What policy sees of a verified bearer token.
pub(crate) fn bearer_identity(claims: sekisho_identity::bearer::BearerClaims) -> Identity {
    Identity {
        hosted_domain: claims
            .claims
            .get("hd")
            .and_then(|hd| hd.as_str())
            .map(str::to_owned),
        claims: claims
            .claims
            .iter()
            .map(|(name, value)| (name.clone(), claim_values(value)))
            .collect(),
        subject: claims.subject,
        email: claims.email,
        email_verified: claims.email_verified,
        groups: claims.groups,
    }
}

pub(crate) fn who_from_record(record: SessionRecord) -> Who {
    let identity = Identity {
        subject: record.subject.clone(),
        email: (!record.email.is_empty()).then(|| record.email.clone()),
        // Sessions keep an email only when the provider verified it.
        email_verified: !record.email.is_empty(),
        hosted_domain: None,
        groups: record.groups.clone(),
        claims: Default::default(),
    };
    Who::new(record.id.0, identity, Some(record))
}
