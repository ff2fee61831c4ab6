//! The built `sekisho-agent` binary: its commands, exit codes and signals.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::support::{Echo, SOON, Setup, round_trip};

const BIN: &str = env!("CARGO_BIN_EXE_sekisho-agent");

fn agent(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("SEKISHO_AGENT_CONFIG")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn init_writes_a_private_key_and_prints_how_to_register_it() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("new/dir/agent.key");
    let key = key.to_str().unwrap();
    let out = agent(&["init", "--key", key, "--name", "nas"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let public_key = stdout.lines().next().unwrap().to_owned();
    assert!(public_key.starts_with("ed25519:"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "agents:\n  nas:\n    public_keys: [\"{public_key}\"]\n"
        )),
        "{stdout}"
    );
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(Path::new(key)), 0o600);
    assert_eq!(mode(Path::new(key).parent().unwrap()), 0o700);

    let out = agent(&["public-key", "--key", key]);
    assert!(out.status.success());
    assert_eq!(text(&out.stdout).trim(), public_key);

    let out = agent(&["init", "--key", key]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("--force"),
        "{}",
        text(&out.stderr)
    );
    let out = agent(&["init", "--key", key, "--force"]);
    assert!(out.status.success());
    assert_ne!(text(&out.stdout).lines().next().unwrap(), public_key);
}

#[test]
fn check_config_accepts_a_good_file_and_names_the_problems_of_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = agent(&[
        "init",
        "--key",
        dir.path().join("agent.key").to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        "name: nas\nkey_file: agent.key\nproxies: [{url: \"https://p.example\"}]\n\
         allow: {tcp: [\"127.0.0.1:22\"]}\n",
    )
    .unwrap();
    let out = agent(&["check-config", good.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(": ok (agent nas"),
        "{}",
        text(&out.stdout)
    );

    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "name: nas\nkey_file: agent.key\nproxies: [{url: \"http://p\"}]\n",
    )
    .unwrap();
    let out = agent(&["check-config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("bad.yaml: proxies[0].url:") && stderr.contains("only https://"),
        "{stderr}"
    );

    let keyless = dir.path().join("keyless.yaml");
    std::fs::write(
        &keyless,
        "name: nas\nkey_file: missing.key\nproxies: [{url: \"https://p.example\"}]\n",
    )
    .unwrap();
    let out = agent(&["check-config", keyless.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out.stderr).contains("missing.key: cannot read the key file"));
}

#[test]
fn bad_command_lines_exit_with_2_and_help_explains_the_flags() {
    for args in [
        &["run", "--proxy", "http://p.example"][..],
        &["run", "--allow-tcp", "localhost"],
        &["run", "--name", "Not A Name"],
        &["run", "--proxy-address", "127.0.0.1:1"],
        &[
            "run",
            "--proxy",
            "https://a.example",
            "--proxy",
            "https://b.example",
            "--proxy-address",
            "127.0.0.1:1",
        ],
        &["frobnicate"],
    ] {
        let out = agent(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    let out = agent(&["run", "--help"]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for flag in [
        "--config",
        "--name",
        "--key",
        "--proxy ",
        "--proxy-address",
        "--ca",
        "--allow-tcp",
        "--allow-http",
    ] {
        assert!(help.contains(flag), "{flag} is not in the help:\n{help}");
    }
    let out = agent(&["run"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out.stderr).contains("the command line: name: missing"));
}

#[tokio::test]
async fn run_with_flags_alone_serves_the_proxy_and_stops_cleanly_on_sigterm() {
    let setup = Setup::new();
    let echo = Echo::start().await;
    let mut peer = setup.peer().await;
    let port = peer.addr.port();
    let mut child = Command::new(BIN)
        .args([
            "run",
            "--name",
            "nas",
            "--key",
            setup.key_path.to_str().unwrap(),
            "--proxy",
            &format!("https://localhost:{port}"),
            "--proxy-address",
            &peer.addr.to_string(),
            "--ca",
            setup.ca_path.to_str().unwrap(),
            "--allow-tcp",
            &echo.addr.to_string(),
        ])
        .env("RUST_LOG", "info")
        .env_remove("SEKISHO_AGENT_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let mut conn = peer.next_agent().await;
    let mut io = conn.tunnel(echo.addr).await;
    round_trip(&mut io, b"through the binary").await;
    drop(io);

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let pid = child.id().to_string();
    let mut stderr_pipe = child.stderr.take().unwrap();
    let exited =
        tokio::time::timeout(SOON, tokio::task::spawn_blocking(move || child.wait())).await;
    let Ok(status) = exited else {
        let _ = Command::new("kill").args(["-KILL", &pid]).status();
        panic!("the agent did not exit after SIGTERM");
    };
    let status = status.unwrap().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut stderr_pipe, &mut stderr).unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!("connected to https://localhost:{port}")),
        "{stderr}"
    );
    assert!(stderr.contains("SIGTERM"), "{stderr}");
}
