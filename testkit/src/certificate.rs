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
