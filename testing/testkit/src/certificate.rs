use base64::Engine as _;

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

/// A throwaway CA and one leaf certificate it signed, as PEM.
#[derive(Debug, Clone)]
pub struct TestPki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// A CA named `ca_name` and a leaf for `names` (the first is also its common name).
pub fn test_pki(ca_name: &str, names: &[&str]) -> Result<TestPki, Error> {
    let fail = |error: rcgen::Error| Error::Certificate(error.to_string());
    let ca_key = rcgen::KeyPair::generate().map_err(fail)?;
    let mut ca = rcgen::CertificateParams::new(Vec::new()).map_err(fail)?;
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, ca_name);
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).map_err(fail)?;
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().map_err(fail)?;
    let mut leaf =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .map_err(fail)?;
    if let Some(first) = names.first() {
        leaf.distinguished_name
            .push(rcgen::DnType::CommonName, *first);
    }
    let cert = leaf.signed_by(&key, &issuer).map_err(fail)?;
    Ok(TestPki {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use rcgen::PublicKeyData as _;

    use super::spki_sha256_base64;

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
}
