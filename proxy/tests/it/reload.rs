//! Hot reload of the configuration file and of certificates, including broken edits.
