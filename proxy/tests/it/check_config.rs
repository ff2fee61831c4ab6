//! `sekisho-proxy check-config` as the person who wrote the file meets it: every problem at
//! once, each on its own line as `file:line: field: message`, in words, and exit code 3.

use std::path::Path;
use std::process::{Command, Output};

use crate::support::LISTEN;

const BIN: &str = env!("CARGO_BIN_EXE_sekisho-proxy");

/// Lines `LISTEN` takes: the lines of the cases below start after it.
const LISTEN_LINES: usize = 6;

fn check(dir: &Path, rest: &str) -> Output {
    let file = dir.join("sekisho.yaml");
    std::fs::write(&file, format!("{LISTEN}{rest}")).unwrap();
    Command::new(BIN)
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap()
}

/// The problem lines on standard error (the summary line and warnings left out).
fn problems(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter(|line| line.contains("sekisho.yaml:") && !line.contains("problem"))
        .map(|line| line[line.find("sekisho.yaml").unwrap()..].to_owned())
        .collect()
}

/// `sekisho.yaml:LINE: ` for a line of a case (counted from 1 after `LISTEN`).
fn at(line: usize) -> String {
    format!("sekisho.yaml:{}: ", line + LISTEN_LINES)
}

const UPSTREAM: &str = "upstreams:
  web:
    endpoints: ['http://127.0.0.1:1']
";

/// What is wrong, the file after `LISTEN`, and each expected problem as (line, text).
type Case = (&'static str, String, &'static [(usize, &'static str)]);

#[test]
fn each_kind_of_broken_file_is_named_by_line_field_and_words() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("empty-secret"), "\n").unwrap();
    std::fs::write(dir.path().join("not-a-cert.pem"), "hello\n").unwrap();
    let cases: &[Case] = &[
        (
            "a number written as words",
            format!("limits: {{max_connections: many}}\n{UPSTREAM}"),
            &[(
                1,
                "limits.max_connections: is \"many\", but must be a whole number",
            )],
        ),
        (
            "a section written twice",
            format!("{UPSTREAM}workers: 4\n"),
            &[(4, "workers: is written twice in the same section")],
        ),
        (
            "a misspelt field, with the fields that exist",
            format!("{UPSTREAM}hosts:\n  - host: a.test\n    publik: true\n    default: web\n"),
            &[(6, "hosts[0].publik: `publik` is not a field here (did you mean `public`?)")],
        ),
        (
            "a field indented out of its upstream",
            "upstreams:\n  web:\n    endpoints: ['http://127.0.0.1:1']\n  connect_timeout: 1s\n"
                .to_owned(),
            &[(
                4,
                "upstreams.connect_timeout: `connect_timeout` looks like a field of an upstream \
                 or a tunnel, not the name of an entry: check its indentation",
            )],
        ),
        (
            "a tab for indentation",
            format!("{UPSTREAM}hosts:\n  - host: a.test\n\tpublic: true\n"),
            &[(6, "a tab indents this line; YAML indents with spaces only")],
        ),
        (
            "references to nothing, and a bad host, all at once",
            "hosts:\n  - host: a.test\n    public: true\n    default: nowhere\n  - host: 'bad host!'\n    public: true\n    default: web\n"
                .to_owned(),
            &[
                (4, "hosts[0].default: no upstream named `nowhere`"),
                (5, "hosts[1].host: `bad host!` is not a DNS name or a `*.` wildcard of one"),
                (7, "hosts[1].default: no upstream named `web`"),
            ],
        ),
        (
            "a certificate file that is missing and one that is not PEM",
            format!(
                "tls:\n  certificates:\n    - {{cert: /nonexistent/cert.pem, key: /nonexistent/key.pem}}\n    - {{cert: not-a-cert.pem, key: not-a-cert.pem}}\n{UPSTREAM}"
            ),
            &[
                (3, "tls.certificates[0]: /nonexistent/cert.pem: "),
                (4, "tls.certificates[1]: "),
            ],
        ),
        (
            "a client secret file that is missing and one that is empty",
            format!(
                "{UPSTREAM}identity:
  auth_host: auth.test
  providers:
    - {{name: a, issuer: 'https://a.test', client_id: x, client_secret_file: /nonexistent/secret}}
    - {{name: b, issuer: 'https://b.test', client_id: x, client_secret_file: empty-secret}}
"
            ),
            &[
                (
                    7,
                    "identity.providers[0].client_secret_file: reading the client secret from \
                     /nonexistent/secret failed",
                ),
                (8, "identity.providers[1].client_secret_file: "),
            ],
        ),
        (
            "an upstream CA that is missing",
            "upstreams:\n  web:\n    endpoints: ['https://127.0.0.1:1']\n    tls: {ca: /nonexistent/ca.pem}\n"
                .to_owned(),
            &[(4, "upstreams.web.tls.ca: /nonexistent/ca.pem: ")],
        ),
    ];
    for (what, rest, expected) in cases {
        // Relative paths are relative to the file's directory, as at start-up.
        let output = check(dir.path(), rest);
        assert_eq!(
            output.status.code(),
            Some(3),
            "{what}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let found = problems(&output);
        assert_eq!(
            found.len(),
            expected.len(),
            "{what}: expected {expected:?}, found {found:?}"
        );
        for ((line, text), found) in expected.iter().zip(&found) {
            let wanted = format!("{}{text}", at(*line));
            assert!(
                found.starts_with(&wanted),
                "{what}:\n  wanted {wanted}\n  found  {found}"
            );
        }
        let count = expected.len();
        let summary = format!(
            "{count} problem{} found; the proxy would not start with this file",
            if count == 1 { "" } else { "s" }
        );
        assert!(
            String::from_utf8_lossy(&output.stderr).contains(&summary),
            "{what}: no summary"
        );
    }
}

#[test]
fn a_good_file_is_summarised_with_its_hosts_and_certificate_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let pki = sekisho_testkit::Pki::new("check-config test CA").unwrap();
    let leaf = pki.leaf(&["a.test"]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), &leaf.cert_pem).unwrap();
    std::fs::write(dir.path().join("key.pem"), &leaf.key_pem).unwrap();
    let output = check(
        dir.path(),
        &format!(
            "tls:\n  certificates: [{{cert: cert.pem, key: key.pem}}]\n{UPSTREAM}hosts:\n  - {{host: a.test, public: true, default: web}}\n"
        ),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("sekisho.yaml: ok"), "{stdout}");
    assert!(stdout.contains("hosts:        a.test"), "{stdout}");
    assert!(stdout.contains("upstreams:    web"), "{stdout}");
    // rcgen's default validity ends in 4096.
    assert!(
        stdout.contains("certificate:  a.test, expires 4096-01-01T00:00:00Z"),
        "{stdout}"
    );
}

#[test]
fn the_local_example_checks_clean() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/local.yaml");
    let output = Command::new(BIN)
        .arg("check-config")
        .arg(&example)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("tunnels:      ssh.localhost"));
}
