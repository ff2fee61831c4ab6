//! The configuration loader, `Config::parse`, on arbitrary text (a YAML dictionary in
//! `fuzz/dict/config.dict` and seeds from `deploy/examples` and the docs steer it to documents
//! that get past the YAML parser).
//!
//! A refused file's error names the file. An accepted file validates again without problems,
//! its policies' paths are in `normalize_path`'s normal form, its routes' paths are absolute
//! without dot segments or `//`, and every file it names has been resolved to an absolute path.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sekisho_proxy::Config;
use sekisho_proxy::fuzzing::normalize_path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let config = match Config::parse(text, Path::new("fuzz.yaml"), Path::new("/etc/sekisho")) {
        Ok(config) => config,
        Err(error) => {
            let message = error.to_string();
            // `fuzz.yaml: field: …`, or `fuzz.yaml:LINE: …` where the line is known.
            assert!(message.starts_with("fuzz.yaml:"), "{message}");
            return;
        }
    };
    assert_eq!(config.validate(), Vec::new());
    for (name, policy) in &config.policies {
        for rule in &policy.rules {
            for path in &rule.paths {
                assert_eq!(
                    normalize_path(&path.path).as_deref(),
                    Ok(path.path.as_str()),
                    "policies.{name}"
                );
            }
        }
    }
    for host in &config.hosts {
        for path in &host.paths {
            let p = path.path.as_str();
            assert!(p.starts_with('/') && !p.contains("//"), "{p:?}");
            assert!(!p.split('/').any(|s| s == "." || s == ".."), "{p:?}");
            if let Some(webhook) = &path.webhook {
                assert!(webhook.secret_file.is_absolute());
            }
        }
    }
    for files in &config.tls.certificates {
        assert!(files.cert.is_absolute() && files.key.is_absolute());
    }
    for upstream in config.upstreams.values() {
        assert!(upstream.tls.ca.as_deref().is_none_or(Path::is_absolute));
    }
    if let Some(identity) = &config.identity {
        for file in [&identity.session_keys_file, &identity.signing_keys_file]
            .into_iter()
            .flatten()
        {
            assert!(file.is_absolute(), "{file:?}");
        }
        for provider in &identity.providers {
            assert!(provider.client_secret_file.is_absolute());
        }
    }
});
