//! `sekisho-proxy keys session|signing FILE`, the built binary: a new key goes on top, and a file
//! it cannot use is left exactly as it was, with exit code 3 (contents) or 1 (I/O).

use std::path::Path;
use std::process::{Command, Output};

use sekisho_identity::signing::SigningKeys;
use sekisho_proxy::SessionKeys;

const BIN: &str = env!("CARGO_BIN_EXE_sekisho-proxy");
const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

fn keys(kind: &str, file: &Path) -> Output {
    Command::new(BIN)
        .args(["keys", kind])
        .arg(file)
        .env_remove("SEKISHO_CONFIG")
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn keys_session_creates_a_private_file_then_adds_keys_on_top() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("session-keys");
    let out = keys("session", &file);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("session key id 0"),
        "{}",
        stderr(&out)
    );
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let out = keys("session", &file);
    assert!(out.status.success(), "{}", stderr(&out));
    let ring = SessionKeys::load(&file).unwrap();
    assert_eq!(ring.ids().collect::<Vec<_>>(), [1, 0]);
}

#[test]
fn keys_session_leaves_a_file_that_is_not_utf8_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("session-keys");
    let mut contents = format!("1:{KEY}\n").into_bytes();
    contents.extend_from_slice(b"# caf\xe9\n");
    std::fs::write(&file, &contents).unwrap();
    let out = keys("session", &file);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let message = stderr(&out);
    assert!(
        message.contains("session-keys: invalid session key file")
            && message.contains("not UTF-8")
            && message.contains("unchanged"),
        "{message}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), contents);
}

#[test]
fn keys_session_refuses_a_ring_that_uses_every_id() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("session-keys");
    let full: String = (0..=u8::MAX)
        .rev()
        .map(|id| format!("{id}:{KEY}\n"))
        .collect();
    std::fs::write(&file, &full).unwrap();
    let out = keys("session", &file);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("remove the oldest keys"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), full);
    SessionKeys::load(&file).expect("the file still loads");
}

#[test]
fn keys_session_and_signing_fail_with_exit_1_on_a_path_they_cannot_read() {
    let dir = tempfile::tempdir().unwrap();
    for kind in ["session", "signing"] {
        let out = keys(kind, dir.path());
        assert_eq!(out.status.code(), Some(1), "{kind}: {}", stderr(&out));
        assert!(stderr(&out).contains("cannot read"), "{}", stderr(&out));
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn keys_signing_keeps_the_keys_of_a_file_with_a_non_utf8_comment() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("signing-keys.pem");
    let out = keys("signing", &file);
    assert!(out.status.success(), "{}", stderr(&out));
    let first = SigningKeys::load(&file).unwrap().newest().kid().to_owned();
    let mut contents = std::fs::read(&file).unwrap();
    contents.extend_from_slice(b"# caf\xe9's key\n");
    std::fs::write(&file, &contents).unwrap();

    let out = keys("signing", &file);
    assert!(out.status.success(), "{}", stderr(&out));
    let kids: Vec<String> = SigningKeys::load(&file)
        .unwrap()
        .keys()
        .iter()
        .map(|key| key.kid().to_owned())
        .collect();
    assert_eq!(kids.len(), 2, "{kids:?}");
    assert_eq!(kids[1], first);
    assert!(std::fs::read(&file).unwrap().ends_with(&contents));
}

#[test]
fn keys_signing_leaves_a_file_with_a_broken_key_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("signing-keys.pem");
    let contents = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
    std::fs::write(&file, contents).unwrap();
    let out = keys("signing", &file);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("invalid signing key file"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), contents);
}
