//! A `kubernetes.io/tls` Secret (as cert-manager writes it) as a certificate to serve, for the
//! hosts the Ingress naming it may serve and the certificate covers, and for no other name: a
//! tenant's Secret never answers for another tenant's host, whatever names it holds.

use k8s_openapi::api::core::v1::Secret;

use super::object::Key;
use crate::frontdoor::tls::{self, LoadedCert, TlsError};

const TLS_TYPE: &str = "kubernetes.io/tls";
const CERT_KEY: &str = "tls.crt";
const KEY_KEY: &str = "tls.key";

#[derive(Debug, thiserror::Error)]
pub(crate) enum CertificateError {
    #[error("the Secret {0} does not exist")]
    Missing(Key),
    #[error("the Secret {secret} is of type `{found}`, not kubernetes.io/tls")]
    NotTls { secret: Key, found: String },
    #[error("the Secret {secret} has no `{field}`")]
    NoField { secret: Key, field: &'static str },
    #[error(transparent)]
    Invalid(#[from] TlsError),
    #[error(
        "the certificate in Secret {secret} covers none of {hosts} (it names {names})",
        hosts = .hosts.join(", "), names = .names.join(", ")
    )]
    CoversNone {
        secret: Key,
        hosts: Vec<String>,
        names: Vec<String>,
    },
}

/// The certificate in `secret`, with every name it holds.
pub(crate) fn from_secret(key: &Key, secret: &Secret) -> Result<LoadedCert, CertificateError> {
    let found = secret.type_.as_deref().unwrap_or("Opaque");
    if found != TLS_TYPE {
        return Err(CertificateError::NotTls {
            secret: key.clone(),
            found: found.to_owned(),
        });
    }
    let field = |field: &'static str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(field))
            .filter(|v| !v.0.is_empty())
            .ok_or_else(|| CertificateError::NoField {
                secret: key.clone(),
                field,
            })
    };
    let (cert, private) = (field(CERT_KEY)?, field(KEY_KEY)?);
    Ok(tls::certified_pem(
        &cert.0,
        &private.0,
        &format!("Secret {key}, {CERT_KEY}"),
        &format!("Secret {key}, {KEY_KEY}"),
    )?)
}

/// `loaded` (a certificate with all its names) serving those of `hosts` it covers; with no
/// hosts, every name it holds (as the default certificate does).
pub(crate) fn for_hosts(
    key: &Key,
    mut loaded: LoadedCert,
    hosts: &[String],
) -> Result<LoadedCert, CertificateError> {
    if hosts.is_empty() {
        return Ok(loaded);
    }
    let served: Vec<String> = hosts
        .iter()
        .filter(|host| loaded.names.iter().any(|name| covers(name, host)))
        .cloned()
        .collect();
    if served.is_empty() {
        return Err(CertificateError::CoversNone {
            secret: key.clone(),
            hosts: hosts.to_vec(),
            names: loaded.names,
        });
    }
    loaded.names = served;
    Ok(loaded)
}

/// Whether a certificate name covers a host (or a `*.` host pattern): the same name, or a
/// `*.` name whose one label the host's first label stands for.
fn covers(name: &str, host: &str) -> bool {
    if name.eq_ignore_ascii_case(host) {
        return true;
    }
    match (name.strip_prefix("*."), host.split_once('.')) {
        (Some(suffix), Some((label, rest))) => {
            label != "*" && !label.is_empty() && rest.eq_ignore_ascii_case(suffix)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;

    use super::*;

    fn secret(type_: &str, cert: &str, key: &str) -> Secret {
        let mut data = BTreeMap::new();
        data.insert(CERT_KEY.to_owned(), ByteString(cert.as_bytes().to_vec()));
        data.insert(KEY_KEY.to_owned(), ByteString(key.as_bytes().to_vec()));
        Secret {
            type_: Some(type_.to_owned()),
            data: Some(data),
            ..Secret::default()
        }
    }

    fn pair(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_certificate_serves_only_the_hosts_of_its_ingress_that_it_covers() {
        let (cert, key) = pair(&["shop.example.com", "*.example.com", "bank.example.org"]);
        let id = Key::new("shop", "web-tls");
        let whole = from_secret(&id, &secret(TLS_TYPE, &cert, &key)).unwrap();
        let hosts = [
            "shop.example.com".to_owned(),
            "api.example.com".to_owned(),
            "other.test".to_owned(),
        ];
        let loaded = for_hosts(&id, whole.clone(), &hosts).unwrap();
        assert_eq!(loaded.names, ["shop.example.com", "api.example.com"]);
        let error = for_hosts(&id, whole, &["x.test".into()])
            .unwrap_err()
            .to_string();
        assert!(error.contains("covers none of x.test"), "{error}");
    }

    #[test]
    fn a_broken_secret_says_what_is_wrong_with_it() {
        let (cert, key) = pair(&["a.example.com"]);
        let (_, other_key) = pair(&["a.example.com"]);
        let id = Key::new("shop", "web-tls");
        let hosts = ["a.example.com".to_owned()];
        let cases = [
            (secret("Opaque", &cert, &key), "is of type `Opaque`"),
            (secret(TLS_TYPE, "", &key), "has no `tls.crt`"),
            (
                secret(TLS_TYPE, &cert, &other_key),
                "does not match certificate",
            ),
            (
                secret(TLS_TYPE, "-----BEGIN CERTIFICATE-----\nnot base64\n", &key),
                "Secret shop/web-tls, tls.crt",
            ),
        ];
        for (secret, words) in cases {
            let error = from_secret(&id, &secret)
                .and_then(|whole| for_hosts(&id, whole, &hosts))
                .unwrap_err();
            let text = crate::error_chain(&error);
            assert!(text.contains(words), "{words}: {text}");
        }
    }

    #[test]
    fn wildcards_cover_one_label_only() {
        assert!(covers("*.example.com", "a.example.com"));
        assert!(covers("A.Example.com", "a.example.COM"));
        assert!(!covers("*.example.com", "a.b.example.com"));
        assert!(!covers("*.example.com", "example.com"));
        // A wildcard Ingress host is served by the same wildcard.
        assert!(covers("*.example.com", "*.example.com"));
        assert!(!covers("a.example.com", "*.example.com"));
    }
}
