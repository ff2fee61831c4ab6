//! Hot reload of the configuration file and of certificates, including broken edits.

use std::os::unix::fs::symlink;
use std::time::Duration;

use http::StatusCode;

use crate::support::*;

const WAIT: Duration = Duration::from_secs(10);

fn site(certs: &str, upstream: &Upstream, extra_hosts: &str) -> String {
    format!(
        "{certs}upstreams:
  app: {{endpoints: ['{url}']}}
hosts:
  - host: app.test
    public: true
    default: app
{extra_hosts}",
        url = upstream.url()
    )
}

#[tokio::test]
async fn a_replaced_certificate_is_served_without_restart_and_a_broken_one_is_ignored() {
    let pki = Pki::new();
    let app = Upstream::start("app").await;
    let (cert, key) = pki.write_leaf("site", &["app.test"]);
    let proxy = Proxy::start(&site(
        &certificates_yaml(&[(cert.clone(), key.clone())]),
        &app,
        "",
    ));
    let first = served_certificate(&pki, proxy.https(), "app.test").await;
    assert_eq!(first, pem_to_der(&std::fs::read_to_string(&cert).unwrap()));

    // A renewal: new certificate and key, written over the old files.
    let (new_cert, new_key) = pki.leaf(&["app.test"]);
    write_atomically(&key, new_key.as_bytes());
    write_atomically(&cert, new_cert.as_bytes());
    let renewed = pem_to_der(&new_cert);
    assert!(
        eventually(WAIT, || async {
            served_certificate(&pki, proxy.https(), "app.test").await == renewed
        })
        .await,
        "the renewed certificate is served"
    );

    // A broken write: a key that does not match, then garbage.
    let (_, stray_key) = pki.leaf(&["app.test"]);
    write_atomically(&key, stray_key.as_bytes());
    assert!(
        eventually(WAIT, || async {
            proxy
                .metric(r#"sekisho_certificate_reloads_total{result="failure"}"#)
                .await
                >= 1.0
        })
        .await,
        "the mismatched key is reported"
    );
    let failures = r#"sekisho_certificate_reloads_total{result="failure"}"#;
    let before = proxy.metric(failures).await;
    write_atomically(&cert, b"not a certificate");
    assert!(
        eventually(WAIT, || async { proxy.metric(failures).await > before }).await,
        "the broken certificate is reported"
    );
    assert_eq!(
        served_certificate(&pki, proxy.https(), "app.test").await,
        renewed,
        "the last good certificate keeps serving"
    );
    let client = TlsClient::new(&pki, proxy.https(), false);
    assert_eq!(client.get("app.test", "/").await.0, StatusCode::OK);
}

/// Kubernetes mounts a Secret as a directory whose files are symlinks through `..data`,
/// itself a symlink to a timestamped directory; an update swaps `..data` atomically.
#[tokio::test]
async fn a_kubernetes_secret_volume_update_is_picked_up() {
    let pki = Pki::new();
    let app = Upstream::start("app").await;
    let mount = tempfile::tempdir().unwrap();
    let write_version = |name: &str, cert: &str, key: &str| {
        let dir = mount.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("tls.crt"), cert).unwrap();
        std::fs::write(dir.join("tls.key"), key).unwrap();
    };
    let swap_data = |target: &str| {
        let tmp = mount.path().join("..data_tmp");
        symlink(target, &tmp).unwrap();
        std::fs::rename(&tmp, mount.path().join("..data")).unwrap();
    };
    let (cert_a, key_a) = pki.leaf(&["app.test"]);
    write_version("..2026_11_22_01", &cert_a, &key_a);
    swap_data("..2026_11_22_01");
    symlink("..data/tls.crt", mount.path().join("tls.crt")).unwrap();
    symlink("..data/tls.key", mount.path().join("tls.key")).unwrap();

    let files = (mount.path().join("tls.crt"), mount.path().join("tls.key"));
    let proxy = Proxy::start(&site(&certificates_yaml(&[files]), &app, ""));
    assert_eq!(
        served_certificate(&pki, proxy.https(), "app.test").await,
        pem_to_der(&cert_a)
    );

    let (cert_b, key_b) = pki.leaf(&["app.test"]);
    write_version("..2026_11_22_02", &cert_b, &key_b);
    swap_data("..2026_11_22_02");
    let expected = pem_to_der(&cert_b);
    assert!(
        eventually(WAIT, || async {
            served_certificate(&pki, proxy.https(), "app.test").await == expected
        })
        .await,
        "the certificate behind the swapped ..data link is served"
    );
    assert!(
        proxy
            .metric(r#"sekisho_certificate_reloads_total{result="success"}"#)
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn a_valid_config_edit_takes_effect_and_an_invalid_one_keeps_the_last_good_config() {
    let pki = Pki::new();
    let app = Upstream::start("app").await;
    let (cert, key) = pki.write_leaf("site", &["app.test", "new.test"]);
    let certs = certificates_yaml(&[(cert, key)]);
    let proxy = Proxy::start(&site(&certs, &app, ""));
    let client = TlsClient::new(&pki, proxy.https(), false);
    assert_eq!(client.get("new.test", "/").await.0, StatusCode::NOT_FOUND);

    proxy.rewrite(&site(
        &certs,
        &app,
        "  - host: new.test\n    public: true\n    default: app\n",
    ));
    assert!(
        eventually(WAIT, || async {
            client.get("new.test", "/").await.0 == StatusCode::OK
        })
        .await,
        "the added host is served"
    );

    // An edit that references a missing upstream is rejected as a whole.
    proxy.rewrite(&format!(
        "{}  - host: broken.test\n    public: true\n    default: nowhere\n",
        site(&certs, &app, "")
    ));
    assert!(
        eventually(WAIT, || async {
            proxy
                .metric(r#"sekisho_config_reloads_total{result="failure"}"#)
                .await
                >= 1.0
        })
        .await,
        "the rejected edit is counted"
    );
    assert_eq!(client.get("new.test", "/").await.0, StatusCode::OK);
    assert_eq!(client.get("app.test", "/").await.0, StatusCode::OK);

    // Unparseable YAML: the same.
    proxy.rewrite("hosts: [this is not: valid");
    assert!(
        eventually(WAIT, || async {
            proxy
                .metric(r#"sekisho_config_reloads_total{result="failure"}"#)
                .await
                >= 2.0
        })
        .await,
        "the unparseable edit is counted"
    );
    assert_eq!(client.get("new.test", "/").await.0, StatusCode::OK);
}
