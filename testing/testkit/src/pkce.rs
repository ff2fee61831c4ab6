use base64::Engine as _;

/// A PKCE verifier and its S256 challenge (RFC 7636), as a client sends them.
pub fn pkce() -> (String, String) {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0_u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the OS random source works");
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let verifier = engine.encode(bytes);
    let challenge = engine.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.as_bytes(),
    ));
    (verifier, challenge)
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::pkce;

    #[test]
    fn the_pkce_challenge_is_the_verifiers_sha256() {
        let (verifier, challenge) = pkce();
        let expected = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()).as_ref());
        assert_eq!(challenge, expected);
        assert_eq!(verifier.len(), 43);
    }
}
