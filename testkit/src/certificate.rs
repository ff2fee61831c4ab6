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
