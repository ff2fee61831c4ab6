//! What the `sekisho` CLI's login carries between the proxy's endpoints (see
//! `crate::auth::cli_login`), sealed like cookies but each with a purpose of its own in the associated
//! data, so none of them opens as a cookie, a handoff code or one of the others:
//!
//! - the one-time **authorization code** (`sekisho-cli-code-v1`), 60 s, which the auth host
//!   hands to the CLI's loopback listener. Plaintext, version 1:
//!   `u8 version || 16-byte nonce || u64 expires_at || u8 len, code_challenge ||
//!   u16 len, redirect_uri || session record`;
//! - the **refresh token** (`sekisho-cli-refresh-v1`), valid until the session's absolute end.
//!   Plaintext: `u8 version || 16-byte token id || session record`;
//! - the device page's **CSRF token** (`sekisho-cli-csrf-v1`), bound to one session id.
//!   Plaintext: `u8 version || 16-byte session id || u64 expires_at`;
//! - a device login's **approval** (`sekisho-cli-device-v1`), the session a person approved
//!   for one device code, which the replicas keep until the CLI polls. Plaintext:
//!   `u8 version || SHA-256 of the device code || session record`. It is not a credential: only
//!   the proxy opens it, and only for a poll with that device code.
//!
//! All four are sealed for the auth host (the session record's `host`). One-time use of a code
//! is the [`ReplayGuard`](super::handoff::ReplayGuard)'s job, revocation the caller's.

use std::fmt;
use std::time::Duration;

use subtle::ConstantTimeEq as _;

use super::envelope::{
    HEADER_LEN, OPEN_BUFFER, Purpose, SealError, SessionError, TAG_LEN, current_session,
};
use super::key::SessionKeys;
use super::key::fill_random;
use super::record::{self, Reader};
use super::record::{SessionId, SessionRecord};

/// How long an authorization code may be redeemed.
pub(crate) const CLI_CODE_TTL: Duration = Duration::from_secs(60);
/// How long the device page's CSRF token is good for (the page's lifetime in a browser tab).
pub const CSRF_TTL: Duration = Duration::from_secs(600);
/// The longest redirect URI a code carries.
pub(crate) const MAX_REDIRECT_URI: usize = 512;
/// The longest PKCE code challenge (RFC 7636 allows 43 to 128 characters).
pub(crate) const MAX_CODE_CHALLENGE: usize = 128;

const CODE_VERSION: u8 = 1;
const REFRESH_VERSION: u8 = 1;
const CSRF_VERSION: u8 = 1;
const DEVICE_VERSION: u8 = 1;

/// A sealed code, refresh token or CSRF token: base64url text, which `Debug` never shows.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedText(String);

impl SealedText {
    /// The text, for the redirect, the token answer or the form.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SealedText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealedText(<redacted>)")
    }
}

/// An opened authorization code.
#[derive(Clone, PartialEq, Eq)]
pub struct CliCode {
    /// The session on the auth host the code was minted from.
    pub session: SessionRecord,
    /// The PKCE S256 challenge the CLI sent to the authorize endpoint.
    pub code_challenge: String,
    /// Where the code was sent: the token request must name the same URI.
    pub redirect_uri: String,
    /// Random; what the replay guard remembers.
    pub nonce: [u8; 16],
    /// Unix seconds; the code is refused from then on.
    pub expires_at: u64,
}

impl fmt::Debug for CliCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CliCode")
            .field("session", &self.session.id)
            .field("redirect_uri", &self.redirect_uri)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// An opened refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliRefresh {
    /// The session the token belongs to; it ends at `session.expires_at`.
    pub session: SessionRecord,
    /// Random, so that two refresh tokens of one session differ.
    pub token_id: [u8; 16],
}

impl SessionKeys {
    /// Seals an authorization code for `session` (minted on `session.host`, the auth host) that
    /// expires [`CLI_CODE_TTL`] after `now`. Groups are trimmed as in [`SessionKeys::seal`].
    pub fn seal_cli_code(
        &self,
        session: &SessionRecord,
        code_challenge: &str,
        redirect_uri: &str,
        now: u64,
        groups_needed: &dyn Fn(&str) -> bool,
    ) -> Result<SealedText, SealError> {
        let mut nonce = [0u8; 16];
        fill_random(&self.rng, &mut nonce)?;
        let expires_at = now.saturating_add(CLI_CODE_TTL.as_secs());
        let (code, _) = self.seal_fitting(
            Purpose::CliCode,
            &session.host,
            &session.groups,
            groups_needed,
            &|keep, trimmed, out| {
                out.push(CODE_VERSION);
                out.extend_from_slice(&nonce);
                out.extend_from_slice(&expires_at.to_be_bytes());
                record::put_u8_text(out, "code challenge", code_challenge, MAX_CODE_CHALLENGE)?;
                record::put_u16_text(out, "redirect URI", redirect_uri, MAX_REDIRECT_URI)?;
                record::encode(session, keep, trimmed, out)
            },
        )?;
        Ok(SealedText(code))
    }

    /// Opens an authorization code on `host` at `now`: [`SessionError::Expired`] once the code
    /// or its session has expired, and otherwise the errors of [`SessionKeys::open`].
    pub fn open_cli_code(&self, code: &str, host: &str, now: u64) -> Result<CliCode, SessionError> {
        let mut buf = [0u8; OPEN_BUFFER];
        let mut r = self.open_versioned(Purpose::CliCode, code, host, CODE_VERSION, &mut buf)?;
        let malformed = |_| SessionError::Malformed;
        let nonce = r.array::<16>().map_err(malformed)?;
        let expires_at = r.u64().map_err(malformed)?;
        let code_challenge = r.u8_text(MAX_CODE_CHALLENGE).map_err(malformed)?;
        let redirect_uri = r.u16_text(MAX_REDIRECT_URI).map_err(malformed)?;
        let session = current_session(r.rest(), host, now, expires_at)?;
        Ok(CliCode {
            session,
            code_challenge,
            redirect_uri,
            nonce,
            expires_at,
        })
    }

    /// Seals a refresh token for `session` (on `session.host`, the auth host).
    pub fn seal_cli_refresh(
        &self,
        session: &SessionRecord,
        groups_needed: &dyn Fn(&str) -> bool,
    ) -> Result<SealedText, SealError> {
        let mut token_id = [0u8; 16];
        fill_random(&self.rng, &mut token_id)?;
        let (token, _) = self.seal_fitting(
            Purpose::CliRefresh,
            &session.host,
            &session.groups,
            groups_needed,
            &|keep, trimmed, out| {
                out.push(REFRESH_VERSION);
                out.extend_from_slice(&token_id);
                record::encode(session, keep, trimmed, out)
            },
        )?;
        Ok(SealedText(token))
    }

    /// Opens a refresh token on `host` at `now`: [`SessionError::Expired`] from the session's
    /// end on. Whether the session was revoked is the caller's question.
    pub fn open_cli_refresh(
        &self,
        token: &str,
        host: &str,
        now: u64,
    ) -> Result<CliRefresh, SessionError> {
        let mut buf = [0u8; OPEN_BUFFER];
        let mut r =
            self.open_versioned(Purpose::CliRefresh, token, host, REFRESH_VERSION, &mut buf)?;
        let token_id = r.array::<16>().map_err(|_| SessionError::Malformed)?;
        let session = current_session(r.rest(), host, now, u64::MAX)?;
        Ok(CliRefresh { session, token_id })
    }

    /// Seals the approval of the device login whose device code hashes to `device_code_sha256`
    /// for `session` (on `session.host`, the auth host). Groups are trimmed as in
    /// [`SessionKeys::seal`].
    pub fn seal_device_approval(
        &self,
        session: &SessionRecord,
        device_code_sha256: &[u8; 32],
        groups_needed: &dyn Fn(&str) -> bool,
    ) -> Result<SealedText, SealError> {
        let (approval, _) = self.seal_fitting(
            Purpose::CliDevice,
            &session.host,
            &session.groups,
            groups_needed,
            &|keep, trimmed, out| {
                out.push(DEVICE_VERSION);
                out.extend_from_slice(device_code_sha256);
                record::encode(session, keep, trimmed, out)
            },
        )?;
        Ok(SealedText(approval))
    }

    /// Opens a device login's approval on `host` at `now` for the device code that hashes to
    /// `device_code_sha256` (compared in constant time; another code's approval is
    /// [`SessionError::Tampered`]). [`SessionError::Expired`] from the session's end on.
    pub fn open_device_approval(
        &self,
        approval: &str,
        host: &str,
        device_code_sha256: &[u8; 32],
        now: u64,
    ) -> Result<SessionRecord, SessionError> {
        let mut buf = [0u8; OPEN_BUFFER];
        let mut r =
            self.open_versioned(Purpose::CliDevice, approval, host, DEVICE_VERSION, &mut buf)?;
        let sealed_for = r.array::<32>().map_err(|_| SessionError::Malformed)?;
        if !bool::from(sealed_for.ct_eq(device_code_sha256)) {
            return Err(SessionError::Tampered);
        }
        let session = current_session(r.rest(), host, now, u64::MAX)?;
        Ok(session)
    }

    /// A CSRF token for forms shown to the session `id` on `host`, good for [`CSRF_TTL`].
    pub fn seal_csrf(&self, id: &SessionId, host: &str, now: u64) -> Result<SealedText, SealError> {
        let expires_at = now.saturating_add(CSRF_TTL.as_secs());
        let start = HEADER_LEN + ring::aead::NONCE_LEN;
        let mut buf = Vec::with_capacity(start + 25 + TAG_LEN);
        buf.resize(start, 0);
        buf.push(CSRF_VERSION);
        buf.extend_from_slice(&id.0);
        buf.extend_from_slice(&expires_at.to_be_bytes());
        self.seal_buffer(Purpose::CliCsrf, host, buf)
            .map(SealedText)
    }

    /// Whether `token` is a current CSRF token of the session `id` on `host` (the session ids
    /// are compared in constant time).
    pub fn check_csrf(&self, token: &str, host: &str, id: &SessionId, now: u64) -> bool {
        let mut buf = [0u8; OPEN_BUFFER];
        let Ok(plaintext) = self.open_bytes(Purpose::CliCsrf, token, host, &mut buf) else {
            return false;
        };
        let mut r = Reader::new(plaintext);
        let (Ok(version), Ok(sealed_id), Ok(expires_at)) = (r.u8(), r.array::<16>(), r.u64())
        else {
            return false;
        };
        version == CSRF_VERSION
            && r.rest().is_empty()
            && bool::from(sealed_id.ct_eq(&id.0))
            && now < expires_at
    }
}

#[cfg(test)]
mod tests {
    use super::super::record::tests::sample;
    use super::*;

    const AUTH: &str = "auth.example.com";
    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
    const REDIRECT: &str = "http://127.0.0.1:53682/callback";

    fn keys() -> SessionKeys {
        SessionKeys::generate().unwrap()
    }

    fn all(_: &str) -> bool {
        true
    }

    fn now() -> u64 {
        sample(AUTH, 0).issued_at + 100
    }

    fn code(keys: &SessionKeys) -> String {
        keys.seal_cli_code(&sample(AUTH, 3), CHALLENGE, REDIRECT, now(), &all)
            .unwrap()
            .expose()
            .to_owned()
    }

    fn flip_each_bit(text: &str, opens: impl Fn(&str) -> bool) {
        use base64::Engine as _;
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let bytes = engine.decode(text).unwrap();
        for i in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[i / 8] ^= 1 << (i % 8);
            assert!(
                !opens(&engine.encode(&flipped)),
                "bit {i} flipped still opens"
            );
        }
    }

    #[test]
    fn every_purpose_label_fits_the_associated_data_buffer() {
        for purpose in [
            Purpose::Session,
            Purpose::Handoff,
            Purpose::Login,
            Purpose::CliCode,
            Purpose::CliRefresh,
            Purpose::CliCsrf,
            Purpose::CliDevice,
        ] {
            assert!(
                purpose.label().len() <= super::super::envelope::PURPOSE_MAX,
                "{purpose:?}"
            );
            assert_eq!(purpose.label().last(), Some(&0));
        }
    }

    #[test]
    fn a_code_opens_on_the_auth_host_with_its_challenge_redirect_uri_and_session() {
        let keys = keys();
        let opened = keys.open_cli_code(&code(&keys), AUTH, now()).unwrap();
        assert_eq!(opened.code_challenge, CHALLENGE);
        assert_eq!(opened.redirect_uri, REDIRECT);
        assert_eq!(opened.session.id, sample(AUTH, 3).id);
        assert_eq!(opened.session.groups, sample(AUTH, 3).groups);
        assert_eq!(opened.expires_at, now() + CLI_CODE_TTL.as_secs());
        assert!(!format!("{opened:?}").contains(CHALLENGE));
        let sealed = keys
            .seal_cli_code(&sample(AUTH, 0), CHALLENGE, REDIRECT, now(), &all)
            .unwrap();
        assert_eq!(format!("{sealed:?}"), "SealedText(<redacted>)");
    }

    #[test]
    fn a_code_is_refused_from_its_expiry_on_and_on_another_host() {
        let keys = keys();
        let code = code(&keys);
        let expires = now() + CLI_CODE_TTL.as_secs();
        assert!(keys.open_cli_code(&code, AUTH, expires - 1).is_ok());
        assert_eq!(
            keys.open_cli_code(&code, AUTH, expires),
            Err(SessionError::Expired)
        );
        assert_eq!(
            keys.open_cli_code(&code, "app.example.com", now()),
            Err(SessionError::Tampered)
        );
    }

    #[test]
    fn a_code_for_a_session_that_ends_sooner_ends_with_the_session() {
        let keys = keys();
        let mut session = sample(AUTH, 0);
        session.expires_at = now() + 10;
        let code = keys
            .seal_cli_code(&session, CHALLENGE, REDIRECT, now(), &all)
            .unwrap()
            .expose()
            .to_owned();
        assert_eq!(
            keys.open_cli_code(&code, AUTH, now() + 10),
            Err(SessionError::Expired)
        );
    }

    #[test]
    fn flipping_any_bit_of_a_code_or_refresh_token_makes_it_fail() {
        let keys = keys();
        flip_each_bit(&code(&keys), |c| keys.open_cli_code(c, AUTH, now()).is_ok());
        let refresh = keys
            .seal_cli_refresh(&sample(AUTH, 2), &all)
            .unwrap()
            .expose()
            .to_owned();
        flip_each_bit(&refresh, |t| keys.open_cli_refresh(t, AUTH, now()).is_ok());
    }

    #[test]
    fn codes_refresh_tokens_csrf_tokens_cookies_and_handoffs_never_open_as_one_another() {
        let keys = keys();
        let session = sample(AUTH, 1);
        let code = code(&keys);
        let refresh = keys
            .seal_cli_refresh(&session, &all)
            .unwrap()
            .expose()
            .to_owned();
        let csrf = keys
            .seal_csrf(&session.id, AUTH, now())
            .unwrap()
            .expose()
            .to_owned();
        let cookie = keys.seal(&session, &all).unwrap().value().to_owned();
        let handoff = keys.seal_handoff(&session, "/", now(), &all).unwrap().code;
        let login = keys.seal_login(AUTH, b"{}").unwrap();
        let device = keys
            .seal_device_approval(&session, &[7; 32], &all)
            .unwrap()
            .expose()
            .to_owned();
        for other in [&code, &refresh, &csrf, &cookie, &handoff, &login] {
            assert_eq!(
                keys.open_device_approval(other, AUTH, &[7; 32], now()),
                Err(SessionError::Tampered)
            );
        }
        assert!(keys.open_cli_refresh(&device, AUTH, now()).is_err());
        assert!(
            keys.open(&device, AUTH, now(), Duration::from_secs(3600))
                .is_err()
        );
        for other in [&refresh, &csrf, &cookie, &handoff, &login] {
            assert_eq!(
                keys.open_cli_code(other, AUTH, now()),
                Err(SessionError::Tampered)
            );
        }
        for other in [&code, &csrf, &cookie, &handoff, &login] {
            assert_eq!(
                keys.open_cli_refresh(other, AUTH, now()),
                Err(SessionError::Tampered)
            );
        }
        for other in [&code, &refresh, &cookie, &handoff, &login] {
            assert!(!keys.check_csrf(other, AUTH, &session.id, now()));
        }
        for other in [&code, &refresh, &csrf] {
            assert!(
                keys.open(other, AUTH, now(), Duration::from_secs(3600))
                    .is_err()
            );
            assert!(keys.open_handoff(other, AUTH, now()).is_err());
            assert!(keys.open_login(other, AUTH).is_err());
        }
    }

    #[test]
    fn a_refresh_token_opens_until_the_session_ends_and_each_one_differs() {
        let keys = keys();
        let session = sample(AUTH, 4);
        let token = keys
            .seal_cli_refresh(&session, &all)
            .unwrap()
            .expose()
            .to_owned();
        assert_ne!(
            token,
            keys.seal_cli_refresh(&session, &all)
                .unwrap()
                .expose()
                .to_owned()
        );
        let opened = keys.open_cli_refresh(&token, AUTH, now()).unwrap();
        assert_eq!(opened.session.id, session.id);
        assert_eq!(opened.session.subject, session.subject);
        assert_eq!(opened.session.expires_at, session.expires_at);
        assert!(
            keys.open_cli_refresh(&token, AUTH, session.expires_at - 1)
                .is_ok()
        );
        assert_eq!(
            keys.open_cli_refresh(&token, AUTH, session.expires_at),
            Err(SessionError::Expired)
        );
        assert_eq!(
            keys.open_cli_refresh(&token, "other.example.com", now()),
            Err(SessionError::Tampered)
        );
    }

    #[test]
    fn a_refresh_token_from_another_key_ring_is_refused() {
        let token = keys()
            .seal_cli_refresh(&sample(AUTH, 0), &all)
            .unwrap()
            .expose()
            .to_owned();
        assert!(keys().open_cli_refresh(&token, AUTH, now()).is_err());
    }

    #[test]
    fn a_csrf_token_is_good_for_its_session_and_host_until_it_expires() {
        let keys = keys();
        let id = SessionId([9; 16]);
        let token = keys
            .seal_csrf(&id, AUTH, now())
            .unwrap()
            .expose()
            .to_owned();
        assert!(keys.check_csrf(&token, AUTH, &id, now()));
        assert!(keys.check_csrf(&token, AUTH, &id, now() + CSRF_TTL.as_secs() - 1));
        assert!(!keys.check_csrf(&token, AUTH, &id, now() + CSRF_TTL.as_secs()));
        assert!(!keys.check_csrf(&token, AUTH, &SessionId([8; 16]), now()));
        assert!(!keys.check_csrf(&token, "app.example.com", &id, now()));
        assert!(!keys.check_csrf("", AUTH, &id, now()));
        assert!(!keys.check_csrf("not a token", AUTH, &id, now()));
    }

    #[test]
    fn a_device_approval_opens_only_for_its_own_device_code_until_the_session_ends() {
        let keys = keys();
        let session = sample(AUTH, 2);
        let approval = keys
            .seal_device_approval(&session, &[1; 32], &all)
            .unwrap()
            .expose()
            .to_owned();
        assert_eq!(
            keys.open_device_approval(&approval, AUTH, &[1; 32], now()),
            Ok(session.clone())
        );
        let mut other = [1; 32];
        other[31] = 2;
        assert_eq!(
            keys.open_device_approval(&approval, AUTH, &other, now()),
            Err(SessionError::Tampered)
        );
        assert_eq!(
            keys.open_device_approval(&approval, AUTH, &[1; 32], session.expires_at),
            Err(SessionError::Expired)
        );
        assert_eq!(
            keys.open_device_approval(&approval, "app.example.com", &[1; 32], now()),
            Err(SessionError::Tampered)
        );
        flip_each_bit(&approval, |a| {
            keys.open_device_approval(a, AUTH, &[1; 32], now()).is_ok()
        });
    }
}
