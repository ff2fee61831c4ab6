use std::sync::Arc;

use base64::Engine as _;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

use crate::Error;

/// The base64 SHA-256 of a certificate's SubjectPublicKeyInfo, the form Chromium's
/// `--ignore-certificate-errors-spki-list` takes ([`crate::BrowserOptions::spki_hashes`]).
/// `pem` holds one certificate; further PEM blocks after it are ignored.
pub fn spki_sha256_base64(pem: &str) -> Result<String, Error> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|error| Error::Certificate(format!("not a PEM certificate: {error}")))?;
    let certificate = block
        .parse_x509()
        .map_err(|error| Error::Certificate(format!("not an X.509 certificate: {error}")))?;
    let spki = certificate.tbs_certificate.subject_pki.raw;
    let digest = ring::digest::digest(&ring::digest::SHA256, spki);
    Ok(base64::engine::general_purpose::STANDARD.encode(digest.as_ref()))
}

/// A throwaway CA that signs leaf certificates, for a test's servers and the clients that
/// trust them.
pub struct Pki {
    /// The CA certificate, as PEM: what a client trusts.
    pub ca_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").finish_non_exhaustive()
    }
}

/// A leaf certificate and its key, as PEM.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

fn certificate_error(error: rcgen::Error) -> Error {
    Error::Certificate(error.to_string())
}

impl Pki {
    /// A new CA whose common name is `ca_name`.
    pub fn new(ca_name: &str) -> Result<Self, Error> {
        let key = rcgen::KeyPair::generate().map_err(certificate_error)?;
        let mut params = rcgen::CertificateParams::new(Vec::new()).map_err(certificate_error)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, ca_name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).map_err(certificate_error)?;
        Ok(Self {
            ca_pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        })
    }

    /// A leaf for `names` signed by this CA (the first name is also its common name).
    pub fn leaf(&self, names: &[&str]) -> Result<Leaf, Error> {
        let key = rcgen::KeyPair::generate().map_err(certificate_error)?;
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .map_err(certificate_error)?;
        if let Some(first) = names.first() {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, *first);
        }
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(certificate_error)?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A TLS client configuration that trusts this CA alone and offers `alpn`.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Result<Arc<rustls::ClientConfig>, Error> {
        let tls_error = |error: rustls::Error| Error::Certificate(error.to_string());
        let ca = CertificateDer::from_pem_slice(self.ca_pem.as_bytes())
            .map_err(|error| Error::Certificate(format!("the CA's own PEM: {error}")))?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).map_err(tls_error)?;
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(tls_error)?
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use rcgen::PublicKeyData as _;

    use super::{Pki, spki_sha256_base64};

    #[test]
    fn the_hash_is_that_of_the_certificates_public_key_info() {
        let certified = rcgen::generate_simple_self_signed(vec!["app.sekisho.test".to_owned()])
            .expect("rcgen makes a certificate");
        let spki = certified.signing_key.subject_public_key_info();
        let expected = base64::engine::general_purpose::STANDARD
            .encode(ring::digest::digest(&ring::digest::SHA256, &spki).as_ref());
        assert_eq!(
            spki_sha256_base64(&certified.cert.pem()).expect("a valid PEM certificate"),
            expected
        );
    }

    #[test]
    fn text_that_is_not_a_pem_certificate_is_rejected() {
        assert!(spki_sha256_base64("hello").is_err());
        assert!(
            spki_sha256_base64(
                "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n"
            )
            .is_err()
        );
    }

    #[test]
    fn a_leaf_names_its_hosts_and_is_signed_by_the_ca() {
        let pki = Pki::new("testkit CA").expect("a CA");
        let leaf = pki
            .leaf(&["app.sekisho.test", "auth.sekisho.test"])
            .expect("a leaf");
        let (_, block) = x509_parser::pem::parse_x509_pem(leaf.cert_pem.as_bytes()).unwrap();
        let cert = block.parse_x509().unwrap();
        assert_eq!(cert.issuer().to_string(), "CN=testkit CA");
        assert_eq!(cert.subject().to_string(), "CN=app.sekisho.test");
        assert!(pki.client_config(&[b"h2"]).is_ok());
    }
}
