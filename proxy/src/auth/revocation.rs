//! Sessions that end before they expire: sign-outs, back-channel logouts and an
//! administrator's revocations, checked on every request that carries a session (cookie, CLI
//! token, open WebSocket, tunnel stream).
//!
//! What one replica revokes, the others must too: [`Revocations::revoke`] applies a revocation
//! here and hands it to the outbox when one is set (in Kubernetes mode,
//! `source/kube/revocation.rs` writes it as a `Revocation` object, and every replica's watch
//! [`Revocations::apply`]s what the others wrote). Every revocation is therefore plain data
//! ([`Revoked`]) that any replica can act on alone: a session by its id, a user by subject or
//! email and a time, an OpenID provider's session by a key that the sessions it began carry in
//! their own ids ([`session_id_for`]), so no replica needs to know which sessions another began.
//!
//! Pure state (maps and a channel); of the crate it uses only the session record.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use dashmap::DashMap;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::watch;

use crate::auth::session::{SessionRecord, unix_now};

/// Beyond this many revoked sessions, those that expired are swept before one more is added
/// (a revocation itself is never refused).
const SWEEP_ABOVE: usize = 100_000;

/// One revocation, as every replica applies it. Times are Unix seconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Revoked {
    /// One session, until it would have expired anyway.
    Session { id: [u8; 16], until: u64 },
    /// The sessions of `subject` at `issuer` that began at or before `at`.
    Subject {
        issuer: String,
        subject: String,
        at: u64,
    },
    /// The sessions with this email (lowercase) that began at or before `at`.
    Email { email: String, at: u64 },
    /// The sessions that logged in with one session of an OpenID provider
    /// ([`provider_session_key`]), until the last of them would have expired.
    ProviderSession { key: [u8; 8], until: u64 },
}

/// What a revocation is checked against: the session's id, who it belongs to and when it began.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SessionFacts<'a> {
    pub id: &'a [u8; 16],
    /// The OpenID provider's issuer; `None` when only the user is known (a CLI token names
    /// the proxy as its issuer): then a subject revocation of any issuer applies.
    pub issuer: Option<&'a str>,
    pub subject: &'a str,
    pub email: &'a str,
    pub issued_at: u64,
}

impl<'a> From<&'a SessionRecord> for SessionFacts<'a> {
    fn from(record: &'a SessionRecord) -> Self {
        Self {
            id: &record.id.0,
            issuer: Some(&record.issuer),
            subject: &record.subject,
            email: &record.email,
            issued_at: record.issued_at,
        }
    }
}

/// The revocations this replica knows of (its own and, through the outbox's counterpart, the
/// other replicas').
#[derive(Default)]
pub(crate) struct Revocations {
    /// Session ids, until the session would have expired anyway.
    sessions: DashMap<[u8; 16], u64, foldhash::fast::RandomState>,
    /// Subject → its logouts (one per issuer that logged it out).
    subjects: DashMap<String, Vec<SubjectRevocation>>,
    /// Lowercase email → sessions begun at or before this second end.
    emails: DashMap<String, u64>,
    /// Provider-session keys, until their sessions would have expired.
    provider_sessions: DashMap<[u8; 8], u64, foldhash::fast::RandomState>,
    /// Whether any of `subjects`, `emails` or `provider_sessions` has an entry: asked on every
    /// request, where `DashMap::is_empty` would lock every shard.
    any_beyond_sessions: AtomicBool,
    /// Where the revocations made here go to reach the other replicas.
    outbox: OnceLock<UnboundedSender<Revoked>>,
    /// Told whenever a revocation changes what is revoked, so that open WebSockets and tunnel
    /// streams check their session at once rather than at their next periodic check.
    changes: Changes,
}

/// A `watch` channel with no value: its receivers learn that something changed.
struct Changes(watch::Sender<()>);

impl Default for Changes {
    fn default() -> Self {
        Self(watch::channel(()).0)
    }
}

/// Resolves when a revocation changes what is revoked (never, without `changes`: a process
/// without login). For a loop that checks its session again each time.
pub(crate) async fn next_change(changes: &mut Option<watch::Receiver<()>>) {
    if let Some(changes) = changes
        && changes.changed().await.is_ok()
    {
        return;
    }
    std::future::pending().await
}

/// A logout of every session of one subject at one issuer: the sessions that began before it
/// are over, the ones that began after it are not.
///
/// A session record carries its issue time in whole seconds, so the second of the logout alone
/// cannot order it against a session issued in that same second. The proxy notes the sessions
/// that begin here after the logout while the record's second is not yet past it
/// ([`Revocations::session_started`]); those stay good. A replica that did not see such a
/// session begin ends it: a login in the very second of a logout elsewhere may have to be
/// made again, never the other way round.
#[derive(Debug)]
struct SubjectRevocation {
    issuer: String,
    /// Unix second of the logout: sessions issued up to and including it are over…
    at: u64,
    /// …except these, which began after the logout.
    started_after: Vec<[u8; 16]>,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations")
            .field("sessions", &self.sessions.len())
            .field("subjects", &self.subjects.len())
            .field("emails", &self.emails.len())
            .field("provider_sessions", &self.provider_sessions.len())
            .finish_non_exhaustive()
    }
}

/// The key of an OpenID provider's session: the first 8 bytes of SHA-256 of `issuer`, a NUL
/// byte and `sid`.
pub(crate) fn provider_session_key(issuer: &str, sid: &str) -> [u8; 8] {
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    hash.update(issuer.as_bytes());
    hash.update(&[0]);
    hash.update(sid.as_bytes());
    let mut key = [0u8; 8];
    key.copy_from_slice(&hash.finish().as_ref()[..8]);
    key
}

/// The id of a session that logs in now: `random` (16 bytes from the CSPRNG), whose second
/// half is the provider session's key when the provider named its session (`sid`), so that a
/// logout of that provider session ends it on any replica by the id alone. The first half
/// stays random: 64 bits tell sessions apart, and revocation by id names all 16 bytes.
pub(crate) fn session_id_for(random: [u8; 16], provider_session: Option<[u8; 8]>) -> [u8; 16] {
    let mut id = random;
    if let Some(key) = provider_session {
        id[8..].copy_from_slice(&key);
    }
    id
}

impl Revocations {
    /// From now on, what [`Revocations::revoke`] applies also goes to `outbox`. Set once; later
    /// calls change nothing.
    pub(crate) fn share_with(&self, outbox: UnboundedSender<Revoked>) {
        let _ = self.outbox.set(outbox);
    }

    /// Applies `revoked` here and hands it to the other replicas.
    pub(crate) fn revoke(&self, revoked: Revoked) {
        self.apply(&revoked);
        if let Some(outbox) = self.outbox.get() {
            let _ = outbox.send(revoked);
        }
    }

    /// Applies `revoked` here only (what another replica revoked). Applying one twice changes
    /// nothing, and a logout that is older than one already applied ends nothing new.
    pub(crate) fn apply(&self, revoked: &Revoked) {
        let new = match revoked {
            Revoked::Session { id, until } => {
                if self.sessions.len() >= SWEEP_ABOVE {
                    let now = unix_now();
                    self.sessions.retain(|_, until| *until > now);
                }
                let mut entry = self.sessions.entry(*id).or_insert(0);
                let new = *entry == 0;
                *entry = (*entry).max(*until);
                new
            }
            Revoked::Subject {
                issuer,
                subject,
                at,
            } => {
                let mut logouts = self.subjects.entry(subject.clone()).or_default();
                match logouts.iter_mut().find(|l| l.issuer == *issuer) {
                    Some(logout) if *at > logout.at => {
                        logout.at = *at;
                        logout.started_after.clear();
                        true
                    }
                    // A clock stepped back must not bring back what an earlier logout ended.
                    Some(_) => false,
                    None => {
                        logouts.push(SubjectRevocation {
                            issuer: issuer.clone(),
                            at: *at,
                            started_after: Vec::new(),
                        });
                        true
                    }
                }
            }
            Revoked::Email { email, at } => {
                let mut entry = self.emails.entry(email.to_ascii_lowercase()).or_insert(0);
                let later = *at > *entry;
                *entry = (*entry).max(*at);
                later
            }
            Revoked::ProviderSession { key, until } => {
                let mut entry = self.provider_sessions.entry(*key).or_insert(0);
                let new = *entry == 0;
                *entry = (*entry).max(*until);
                new
            }
        };
        if !matches!(revoked, Revoked::Session { .. }) {
            self.any_beyond_sessions.store(true, Ordering::Release);
        }
        if new {
            self.changes.0.send_replace(());
        }
    }

    /// Learns of every change [`Revocations::apply`] makes from now on ([`next_change`]).
    pub(crate) fn subscribe(&self) -> watch::Receiver<()> {
        self.changes.0.subscribe()
    }

    /// Notes a session that begins now, before its cookie is handed out, so that a logout of
    /// its subject earlier in the same second does not end it.
    pub(crate) fn session_started(
        &self,
        id: &[u8; 16],
        issuer: &str,
        subject: &str,
        issued_at: u64,
    ) {
        // Once per login, so no fast path: the entry's lock orders this against the logout.
        if let Some(mut logouts) = self.subjects.get_mut(subject) {
            for logout in logouts.iter_mut() {
                if logout.issuer == issuer && issued_at <= logout.at {
                    logout.started_after.push(*id);
                }
            }
        }
    }

    /// Whether any revocation ends the session.
    pub(crate) fn ends(&self, session: SessionFacts<'_>) -> bool {
        if self.sessions.contains_key(session.id) {
            return true;
        }
        if !self.any_beyond_sessions.load(Ordering::Acquire) {
            return false;
        }
        let mut key = [0u8; 8];
        key.copy_from_slice(&session.id[8..]);
        if self.provider_sessions.contains_key(&key) {
            return true;
        }
        // Emails are kept lowercase; most arrive so, and need no copy to be looked up.
        let email = match session.email.bytes().any(|b| b.is_ascii_uppercase()) {
            true => std::borrow::Cow::Owned(session.email.to_ascii_lowercase()),
            false => std::borrow::Cow::Borrowed(session.email),
        };
        if !email.is_empty()
            && self
                .emails
                .get(email.as_ref())
                .is_some_and(|at| session.issued_at <= *at)
        {
            return true;
        }
        self.subjects.get(session.subject).is_some_and(|logouts| {
            logouts.iter().any(|logout| {
                session.issuer.is_none_or(|issuer| issuer == logout.issuer)
                    && session.issued_at <= logout.at
                    && !logout.started_after.contains(session.id)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::*;

    const ISSUER: &str = "https://id.example";
    const T: u64 = 1_800_000_000;

    fn alice(id: &[u8; 16], issued_at: u64) -> SessionFacts<'_> {
        SessionFacts {
            id,
            issuer: Some(ISSUER),
            subject: "alice",
            email: "Alice@Uniqe.example",
            issued_at,
        }
    }

    fn subject(at: u64) -> Revoked {
        Revoked::Subject {
            issuer: ISSUER.into(),
            subject: "alice".into(),
            at,
        }
    }

    #[test]
    fn a_subject_logout_ends_every_session_that_began_before_it_even_in_its_own_second() {
        let revocations = Revocations::default();
        revocations.session_started(&[1; 16], ISSUER, "alice", T - 100);
        revocations.session_started(&[2; 16], ISSUER, "alice", T);
        revocations.revoke(subject(T));
        assert!(revocations.ends(alice(&[1; 16], T - 100)));
        assert!(revocations.ends(alice(&[2; 16], T)));
        // Other subjects and issuers are not touched.
        let bob = SessionFacts {
            subject: "bob",
            email: "bob@uniqe.example",
            ..alice(&[3; 16], T)
        };
        assert!(!revocations.ends(bob));
        let elsewhere = SessionFacts {
            issuer: Some("https://other.example"),
            ..alice(&[4; 16], T)
        };
        assert!(!revocations.ends(elsewhere));
        // A CLI token names no provider: the subject's logout at any provider ends it.
        let token = SessionFacts {
            issuer: None,
            ..alice(&[4; 16], T)
        };
        assert!(revocations.ends(token));
    }

    #[test]
    fn a_session_that_begins_after_a_subject_logout_in_the_same_second_lives() {
        let revocations = Revocations::default();
        revocations.revoke(subject(T));
        revocations.session_started(&[5; 16], ISSUER, "alice", T);
        assert!(!revocations.ends(alice(&[5; 16], T)));
        revocations.session_started(&[6; 16], ISSUER, "alice", T + 1);
        assert!(!revocations.ends(alice(&[6; 16], T + 1)));
        // A cookie claiming second T that this replica did not see begin is from before.
        assert!(revocations.ends(alice(&[7; 16], T)));
    }

    #[test]
    fn a_later_logout_ends_the_sessions_an_earlier_one_let_live_and_an_older_one_changes_nothing() {
        let revocations = Revocations::default();
        revocations.revoke(subject(T));
        revocations.session_started(&[5; 16], ISSUER, "alice", T);
        revocations.session_started(&[6; 16], ISSUER, "alice", T + 1);
        revocations.revoke(subject(T + 1));
        assert!(revocations.ends(alice(&[5; 16], T)));
        assert!(revocations.ends(alice(&[6; 16], T + 1)));
        // With the clock stepped back (or an old object read again), the later logout holds.
        revocations.apply(&subject(T - 10));
        assert!(revocations.ends(alice(&[6; 16], T + 1)));
        revocations.session_started(&[8; 16], ISSUER, "alice", T + 2);
        assert!(!revocations.ends(alice(&[8; 16], T + 2)));
    }

    #[test]
    fn an_email_revocation_ends_the_sessions_before_it_whatever_the_case_or_provider() {
        let revocations = Revocations::default();
        revocations.apply(&Revoked::Email {
            email: "alice@uniqe.example".into(),
            at: T,
        });
        assert!(revocations.ends(alice(&[1; 16], T)));
        let other_provider = SessionFacts {
            issuer: Some("https://accounts.google.com"),
            subject: "1234",
            ..alice(&[2; 16], T - 5)
        };
        assert!(revocations.ends(other_provider));
        assert!(!revocations.ends(alice(&[3; 16], T + 1)));
        // A session without an email is not everybody's.
        let no_email = SessionFacts {
            email: "",
            ..alice(&[4; 16], T)
        };
        assert!(!revocations.ends(no_email));
    }

    #[test]
    fn a_provider_session_logout_ends_exactly_the_sessions_whose_ids_carry_its_key() {
        let revocations = Revocations::default();
        let key = provider_session_key(ISSUER, "sid-1");
        let with_sid = session_id_for([7; 16], Some(key));
        let other_sid = session_id_for([7; 16], Some(provider_session_key(ISSUER, "sid-2")));
        let no_sid = session_id_for([7; 16], None);
        assert_eq!(no_sid, [7; 16]);
        assert_eq!(with_sid[..8], [7; 8]);
        revocations.revoke(Revoked::ProviderSession { key, until: T });
        assert!(revocations.ends(alice(&with_sid, T)));
        assert!(!revocations.ends(alice(&other_sid, T)));
        assert!(!revocations.ends(alice(&no_sid, T)));
        // Issuer and sid are not simply joined.
        assert_ne!(key, provider_session_key("https://id.exampl", "e\0sid-1"));
    }

    #[test]
    fn what_is_revoked_here_goes_to_the_outbox_and_what_is_applied_does_not() {
        let revocations = Revocations::default();
        let (outbox, mut sent) = mpsc::unbounded_channel();
        revocations.share_with(outbox);
        let session = Revoked::Session {
            id: [9; 16],
            until: T,
        };
        revocations.revoke(session.clone());
        revocations.apply(&subject(T));
        assert_eq!(sent.try_recv().ok(), Some(session));
        assert!(sent.try_recv().is_err());
        let changes = revocations.subscribe();
        revocations.apply(&subject(T));
        assert!(!changes.has_changed().expect("open"), "nothing new");
        revocations.apply(&subject(T + 1));
        assert!(
            changes.has_changed().expect("open"),
            "a later logout is news"
        );
        assert!(revocations.ends(alice(&[9; 16], T + 1)));
        assert!(revocations.ends(alice(&[1; 16], T)));
    }
}
