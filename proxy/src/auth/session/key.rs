//! The session key ring: AES-256-GCM keys read from a key file that every replica shares.
//!
//! Key file format (a Kubernetes Secret mounted as a file, or any text file):
//!
//! ```text
//! # newest first: new cookies are sealed with the first key
//! 2:<43 base64url characters: 32 random bytes>
//! 1:<43 base64url characters: 32 random bytes>
//! ```
//!
//! One key per line, `ID:KEY`: `ID` is a decimal key id from 0 to 255 (written into every
//! cookie so the right key is tried first and only), `KEY` is 32 bytes in base64url without
//! padding. Blank lines and lines starting with `#` are ignored; spaces around a line are
//! trimmed. The **first** key is the newest: it seals new cookies. Every listed key opens
//! cookies until its line is removed. Rotation: add a new line at the top, wait at least the
//! session lifetime, then remove the old line.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{AES_256_GCM, LessSafeKey, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// Bytes in one session key (AES-256).
pub(crate) const KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: cannot read the session key file")]
    KeyFileUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid session key file")]
    KeyFileInvalid {
        path: PathBuf,
        #[source]
        source: Box<KeyError>,
    },
    #[error("line {line}: expected `ID:KEY`")]
    MalformedKeyLine { line: usize },
    #[error("line {line}: the key id must be a number from 0 to 255")]
    BadKeyId { line: usize },
    #[error("line {line}: the key is not base64url without padding")]
    KeyNotBase64 { line: usize },
    #[error("line {line}: the key has {len} bytes; a session key has {KEY_LEN}")]
    KeyTooShort { line: usize, len: usize },
    #[error("line {line}: the key has {len} bytes; a session key has {KEY_LEN}")]
    KeyTooLong { line: usize, len: usize },
    #[error("line {line}: key id {id} is listed twice")]
    DuplicateKeyId { line: usize, id: u8 },
    #[error("the session key file lists no keys")]
    NoKeys,
    #[error("the session key file is not UTF-8 text")]
    NotUtf8,
    #[error(
        "{path}: all 256 key ids (0 to 255) are in use; remove the oldest keys (the last lines: \
         a key can go once a newer one has sealed cookies for longer than the session lifetime), \
         then add a key again"
    )]
    NoFreeKeyId { path: PathBuf },
    #[error("{path}: cannot write the session key file")]
    KeyFileUnwritable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Random(#[from] RandomUnavailable),
}

/// The operating system's random number generator failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the operating system's random number generator failed")]
pub struct RandomUnavailable;

/// Fills `out` from the OS CSPRNG.
pub(super) fn fill_random(rng: &SystemRandom, out: &mut [u8]) -> Result<(), RandomUnavailable> {
    rng.fill(out).map_err(|_| RandomUnavailable)
}

/// Raw key bytes; `Debug` never shows them.
struct SecretBytes([u8; KEY_LEN]);

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// One session key and its id.
pub struct SessionKey {
    id: u8,
    secret: SecretBytes,
    aead: LessSafeKey,
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionKey")
            .field("id", &self.id)
            .field("secret", &self.secret)
            .finish()
    }
}

impl SessionKey {
    fn from_bytes(id: u8, bytes: [u8; KEY_LEN]) -> Self {
        // Cannot fail: AES-256-GCM takes exactly KEY_LEN (32) bytes, and `bytes` has that type.
        let unbound = UnboundKey::new(&AES_256_GCM, &bytes).expect("a 32-byte AES-256 key");
        Self {
            id,
            secret: SecretBytes(bytes),
            aead: LessSafeKey::new(unbound),
        }
    }

    /// A fresh random key from the OS CSPRNG.
    pub fn generate(id: u8) -> Result<Self, RandomUnavailable> {
        let mut bytes = [0u8; KEY_LEN];
        fill_random(&SystemRandom::new(), &mut bytes)?;
        Ok(Self::from_bytes(id, bytes))
    }

    pub fn id(&self) -> u8 {
        self.id
    }

    /// A key of its own for another use than sealing (`label` names the use): HMAC-SHA256 of
    /// the label under this key, as an HMAC-SHA256 key. Every replica holding this key derives
    /// the same one; knowing it tells nothing of this key.
    pub(crate) fn derived(&self, label: &[u8]) -> ring::hmac::Key {
        let this = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.secret.0);
        ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            ring::hmac::sign(&this, label).as_ref(),
        )
    }

    /// This key as one line of the key file (`ID:BASE64URL`, no newline).
    ///
    /// The line is the secret itself: write it to the Secret, never to a log.
    pub fn key_file_line(&self) -> String {
        format!("{}:{}", self.id, URL_SAFE_NO_PAD.encode(self.secret.0))
    }

    pub(super) fn aead(&self) -> &LessSafeKey {
        &self.aead
    }
}

/// A fresh key-file line for `id`, for the operator's "add a session key" command.
pub(crate) fn new_key_file_line(id: u8) -> Result<String, RandomUnavailable> {
    Ok(SessionKey::generate(id)?.key_file_line())
}

/// Puts a fresh key on top of the key file at `path` (creating it, 0600, when it does not
/// exist) and returns its id: the lowest id the file does not use. New cookies are sealed with
/// it from the next load; the keys already in the file keep opening cookies.
///
/// Only a missing file starts a new ring. A file that cannot be read or parsed is an error and
/// is left as it is: rewriting it with the new key alone would end every session. So is a file
/// that uses all 256 ids: a reused id would make the file invalid (ids are distinct).
pub fn add_key_to_file(path: &Path) -> Result<u8, KeyError> {
    let existing = sekisho_identity::key_file::read_if_present(path)
        .map_err(|source| KeyError::KeyFileUnreadable {
            path: path.to_path_buf(),
            source,
        })?
        .unwrap_or_default();
    let invalid = |source| KeyError::KeyFileInvalid {
        path: path.to_path_buf(),
        source: Box::new(source),
    };
    let existing = String::from_utf8(existing).map_err(|_| invalid(KeyError::NotUtf8))?;
    let used: Vec<u8> = match SessionKeys::parse(&existing) {
        Ok(keys) => keys.ids().collect(),
        // Only blank and comment lines: nothing to keep but the comments, which stay.
        Err(KeyError::NoKeys) => Vec::new(),
        Err(error) => return Err(invalid(error)),
    };
    let id = (0..=u8::MAX)
        .find(|id| !used.contains(id))
        .ok_or_else(|| KeyError::NoFreeKeyId {
            path: path.to_path_buf(),
        })?;
    let contents = format!("{}\n{existing}", new_key_file_line(id)?);
    // What is written must load: checked before the file is touched.
    SessionKeys::parse(&contents).map_err(invalid)?;
    sekisho_identity::key_file::replace(path, &[contents.as_bytes()]).map_err(|source| {
        KeyError::KeyFileUnwritable {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(id)
}

/// The key ring: the newest key seals, every key opens.
pub struct SessionKeys {
    /// Newest first; never empty; ids are distinct.
    keys: Vec<SessionKey>,
    /// Index by key id into `keys`, so opening is one array lookup.
    by_id: Box<[Option<u8>; 256]>,
    pub(super) rng: SystemRandom,
}

impl fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionKeys")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl SessionKeys {
    /// A ring from keys, newest first.
    pub fn new(keys: Vec<SessionKey>) -> Result<Self, KeyError> {
        if keys.is_empty() {
            return Err(KeyError::NoKeys);
        }
        let mut by_id = Box::new([None; 256]);
        for (index, key) in keys.iter().enumerate() {
            let slot = &mut by_id[usize::from(key.id)];
            if slot.is_some() {
                return Err(KeyError::DuplicateKeyId {
                    line: index + 1,
                    id: key.id,
                });
            }
            // At most 256 keys reach here (ids are distinct u8 values), so the index fits a u8.
            *slot = u8::try_from(index).ok();
        }
        Ok(Self {
            keys,
            by_id,
            rng: SystemRandom::new(),
        })
    }

    /// One fresh random key (id 1), for development mode: cookies die with the process.
    pub fn generate() -> Result<Self, KeyError> {
        Self::new(vec![SessionKey::generate(1)?])
    }

    /// Reads and parses a key file.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let bytes = std::fs::read(path).map_err(|source| KeyError::KeyFileUnreadable {
            path: path.to_path_buf(),
            source,
        })?;
        std::str::from_utf8(&bytes)
            .map_err(|_| KeyError::NotUtf8)
            .and_then(Self::parse)
            .map_err(|source| KeyError::KeyFileInvalid {
                path: path.to_path_buf(),
                source: Box::new(source),
            })
    }

    /// Parses the text of a key file (format in the module documentation).
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let mut keys: Vec<SessionKey> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let (id, encoded) = trimmed
                .split_once(':')
                .ok_or(KeyError::MalformedKeyLine { line })?;
            let id = id.trim();
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
                return Err(KeyError::BadKeyId { line });
            }
            let id: u8 = id.parse().map_err(|_| KeyError::BadKeyId { line })?;
            let decoded = URL_SAFE_NO_PAD
                .decode(encoded.trim())
                .map_err(|_| KeyError::KeyNotBase64 { line })?;
            let bytes: [u8; KEY_LEN] = match decoded.len() {
                KEY_LEN => {
                    let mut bytes = [0u8; KEY_LEN];
                    bytes.copy_from_slice(&decoded);
                    bytes
                }
                len if len < KEY_LEN => return Err(KeyError::KeyTooShort { line, len }),
                len => return Err(KeyError::KeyTooLong { line, len }),
            };
            if keys.iter().any(|key| key.id == id) {
                return Err(KeyError::DuplicateKeyId { line, id });
            }
            keys.push(SessionKey::from_bytes(id, bytes));
        }
        Self::new(keys)
    }

    /// The key that seals new cookies.
    pub fn newest(&self) -> &SessionKey {
        // `new` refuses an empty ring, so there is always a first key.
        &self.keys[0]
    }

    /// The key with this id, if the ring still has it.
    pub fn get(&self, id: u8) -> Option<&SessionKey> {
        self.by_id[usize::from(id)].map(|index| &self.keys[usize::from(index)])
    }

    /// Key ids, newest first (for status reports; never the keys).
    pub fn ids(&self) -> impl Iterator<Item = u8> + '_ {
        self.keys.iter().map(|key| key.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
    const KEY_B: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8";

    #[test]
    fn a_key_file_lists_newest_first_and_skips_comments_and_blank_lines() {
        let text = format!("# rotation 2\n\n  7:{KEY_B}  \n# old\n3:{KEY_A}\n");
        let keys = SessionKeys::parse(&text).unwrap();
        assert_eq!(keys.newest().id(), 7);
        assert_eq!(keys.ids().collect::<Vec<_>>(), vec![7, 3]);
        assert!(keys.get(3).is_some());
        assert!(keys.get(4).is_none());
        assert_eq!(keys.get(3).unwrap().key_file_line(), format!("3:{KEY_A}"));
    }

    #[test]
    fn a_short_key_is_rejected_with_its_line() {
        let err =
            SessionKeys::parse(&format!("1:{KEY_A}\n2:AAECAwQFBgcICQoLDA0ODw\n")).unwrap_err();
        assert!(
            matches!(err, KeyError::KeyTooShort { line: 2, len: 16 }),
            "{err:?}"
        );
    }

    #[test]
    fn a_long_key_is_rejected() {
        let err = SessionKeys::parse(&format!("1:{KEY_A}AAAA\n")).unwrap_err();
        assert!(
            matches!(err, KeyError::KeyTooLong { line: 1, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn a_duplicate_key_id_is_rejected() {
        let err = SessionKeys::parse(&format!("1:{KEY_A}\n1:{KEY_B}\n")).unwrap_err();
        assert!(
            matches!(err, KeyError::DuplicateKeyId { line: 2, id: 1 }),
            "{err:?}"
        );
    }

    #[test]
    fn a_file_without_keys_is_rejected() {
        assert!(matches!(SessionKeys::parse(""), Err(KeyError::NoKeys)));
        assert!(matches!(
            SessionKeys::parse("# nothing yet\n\n"),
            Err(KeyError::NoKeys)
        ));
    }

    #[test]
    fn bad_ids_and_bad_encodings_name_their_line() {
        for (text, want) in [
            (format!("256:{KEY_A}"), "BadKeyId"),
            (format!("-1:{KEY_A}"), "BadKeyId"),
            (format!("+1:{KEY_A}"), "BadKeyId"),
            (format!(":{KEY_A}"), "BadKeyId"),
            (format!("x:{KEY_A}"), "BadKeyId"),
            (KEY_A.to_owned(), "MalformedKeyLine"),
            (format!("1:{KEY_A}="), "KeyNotBase64"),
            ("1:not base64!".to_owned(), "KeyNotBase64"),
            (format!("1:{}", KEY_A.replace('A', "+")), "KeyNotBase64"),
        ] {
            let err = SessionKeys::parse(&text).unwrap_err();
            assert!(format!("{err:?}").starts_with(want), "{text}: {err:?}");
            assert!(err.to_string().starts_with("line 1: "), "{err}");
        }
    }

    #[test]
    fn an_unreadable_key_file_names_its_path() {
        let err = SessionKeys::load(Path::new("/nonexistent/sekisho/keys")).unwrap_err();
        assert!(matches!(err, KeyError::KeyFileUnreadable { .. }));
        assert!(err.to_string().contains("/nonexistent/sekisho/keys"));
    }

    #[test]
    fn a_key_file_is_loaded_from_disk_and_its_errors_name_path_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good");
        std::fs::write(&good, format!("5:{KEY_A}\n")).unwrap();
        assert_eq!(SessionKeys::load(&good).unwrap().newest().id(), 5);

        let bad = dir.path().join("bad");
        std::fs::write(&bad, format!("5:{KEY_A}\n6:AAAA\n")).unwrap();
        let err = SessionKeys::load(&bad).unwrap_err();
        let KeyError::KeyFileInvalid { path, source } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(path, &bad);
        assert!(matches!(
            **source,
            KeyError::KeyTooShort { line: 2, len: 3 }
        ));
        let chain = crate::error_chain(&err);
        assert!(
            chain.contains("bad: invalid session key file: line 2: "),
            "{chain}"
        );
    }

    #[test]
    fn a_new_key_file_line_parses_back_into_a_ring() {
        let line = new_key_file_line(42).unwrap();
        let keys = SessionKeys::parse(&line).unwrap();
        assert_eq!(keys.newest().id(), 42);
        assert_eq!(keys.newest().key_file_line(), line);
        assert_ne!(new_key_file_line(42).unwrap(), line, "keys are random");
    }

    #[test]
    fn a_new_key_goes_on_top_with_the_lowest_free_id_and_the_old_keys_stay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        // A missing file starts a new ring.
        assert_eq!(add_key_to_file(&path).unwrap(), 0);
        let first = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("# ring\n{first}2:{KEY_A}\n")).unwrap();
        assert_eq!(add_key_to_file(&path).unwrap(), 1);
        let keys = SessionKeys::load(&path).unwrap();
        assert_eq!(keys.ids().collect::<Vec<_>>(), [1, 0, 2]);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.ends_with(&format!(
                "# ring\n{}\n2:{KEY_A}\n",
                keys.get(0).unwrap().key_file_line()
            )),
            "{text}"
        );
    }

    #[test]
    fn a_file_of_blank_and_comment_lines_takes_a_first_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, "# session keys, newest first\n\n").unwrap();
        assert_eq!(add_key_to_file(&path).unwrap(), 0);
        assert_eq!(SessionKeys::load(&path).unwrap().newest().id(), 0);
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .ends_with("\n# session keys, newest first\n\n")
        );
    }

    #[test]
    fn a_key_file_that_cannot_be_read_or_parsed_is_left_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        // Not readable as a file (as with a permission error): never taken for "no keys yet".
        let err = add_key_to_file(dir.path()).unwrap_err();
        assert!(matches!(err, KeyError::KeyFileUnreadable { .. }), "{err:?}");

        let mut not_utf8 = format!("1:{KEY_A}\n").into_bytes();
        not_utf8.extend_from_slice(b"2:\xff\xfe\n");
        let short = format!("1:{KEY_A}\n2:AAAA\n");
        let duplicate = format!("1:{KEY_A}\n1:{KEY_B}\n");
        let cases: [(&str, &[u8], &str); 3] = [
            ("not-utf8", &not_utf8, "NotUtf8"),
            ("short", short.as_bytes(), "KeyTooShort"),
            ("duplicate", duplicate.as_bytes(), "DuplicateKeyId"),
        ];
        for (name, contents, reason) in cases {
            let path = dir.path().join(name);
            std::fs::write(&path, contents).unwrap();
            let err = add_key_to_file(&path).unwrap_err();
            let KeyError::KeyFileInvalid { source, .. } = &err else {
                panic!("{name}: {err:?}")
            };
            assert!(format!("{source:?}").starts_with(reason), "{name}: {err:?}");
            assert!(err.to_string().contains(name), "{name}: {err}");
            assert_eq!(std::fs::read(&path).unwrap(), contents, "{name}");
            // The proxy refuses the file for the same reason.
            assert!(matches!(
                SessionKeys::load(&path),
                Err(KeyError::KeyFileInvalid { .. })
            ));
        }
    }

    #[test]
    fn a_ring_using_all_256_ids_takes_no_new_key_and_says_how_to_make_room() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        let full: String = (0..=u8::MAX)
            .rev()
            .map(|id| format!("{id}:{KEY_A}\n"))
            .collect();
        std::fs::write(&path, &full).unwrap();
        let err = add_key_to_file(&path).unwrap_err();
        assert!(matches!(err, KeyError::NoFreeKeyId { .. }), "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains("all 256 key ids") && message.contains("remove the oldest keys"),
            "{message}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), full);

        // With the oldest line removed its id is free again.
        let pruned = full.rsplit_once(&format!("0:{KEY_A}\n")).unwrap().0;
        std::fs::write(&path, pruned).unwrap();
        assert_eq!(add_key_to_file(&path).unwrap(), 0);
        assert_eq!(SessionKeys::load(&path).unwrap().ids().count(), 256);
    }

    #[test]
    fn generated_rings_differ() {
        let a = SessionKeys::generate().unwrap();
        let b = SessionKeys::generate().unwrap();
        assert_ne!(a.newest().key_file_line(), b.newest().key_file_line());
    }

    #[test]
    fn debug_output_shows_no_key_bytes() {
        let keys = SessionKeys::parse(&format!("1:{KEY_A}\n2:{KEY_B}\n")).unwrap();
        let shown = format!("{keys:?} {:#?} {:?}", keys, keys.newest());
        assert!(!shown.contains(KEY_A) && !shown.contains(KEY_B), "{shown}");
        // The raw bytes of KEY_A are 0, 1, 2, ...; of KEY_B 32, 33, 34, ...
        assert!(
            !shown.contains("1, 2, 3") && !shown.contains("32, 33, 34"),
            "{shown}"
        );
        assert!(
            !shown.contains("0102") && !shown.contains("2021"),
            "{shown}"
        );
        assert!(shown.contains("<redacted>"), "{shown}");
        let generated = SessionKeys::generate().unwrap();
        let line = generated.newest().key_file_line();
        let (_, secret) = line.split_once(':').unwrap();
        assert!(!format!("{generated:?}").contains(secret));
    }

    #[test]
    fn a_ring_built_in_code_rejects_duplicates_and_emptiness() {
        assert!(matches!(
            SessionKeys::new(Vec::new()),
            Err(KeyError::NoKeys)
        ));
        let err = SessionKeys::new(vec![
            SessionKey::generate(9).unwrap(),
            SessionKey::generate(9).unwrap(),
        ])
        .unwrap_err();
        assert!(matches!(err, KeyError::DuplicateKeyId { line: 2, id: 9 }));
    }
}
