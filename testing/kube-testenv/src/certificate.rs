use std::{
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

use crate::Error;

/// A PEM certificate and its private key, written to files.
#[derive(Debug, Clone)]
pub(crate) struct KeyFiles {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

/// The test PKI: one CA that signs the API server's serving certificate and the client
/// certificates, plus the key pair that signs service-account tokens. Everything is
/// generated fresh for each control plane and lives only in its temporary directory.
#[derive(Debug)]
pub(crate) struct Pki {
    pub(crate) ca_cert: PathBuf,
    pub(crate) serving: KeyFiles,
    /// `system:masters`: allowed everything, RBAC or not.
    pub(crate) admin: KeyFiles,
    pub(crate) controller_manager: KeyFiles,
    pub(crate) service_account_key: PathBuf,
    pub(crate) service_account_public_key: PathBuf,
}

impl Pki {
    pub(crate) fn generate(dir: &Path) -> Result<Self, Error> {
        let mut ca_params =
            CertificateParams::new(Vec::<String>::new()).map_err(Error::Certificate)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "sekisho-test-ca");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().map_err(Error::Certificate)?;
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(Error::Certificate)?;
        let ca_cert = write(dir, "ca.crt", &ca.pem())?;

        let leaf = |file: &str, common_name: &str, organisation: Option<&str>, server: bool| {
            let names = if server {
                vec![
                    "localhost".to_owned(),
                    "kubernetes".to_owned(),
                    "kubernetes.default".to_owned(),
                    "kubernetes.default.svc".to_owned(),
                ]
            } else {
                Vec::new()
            };
            let mut params = CertificateParams::new(names).map_err(Error::Certificate)?;
            params
                .distinguished_name
                .push(DnType::CommonName, common_name);
            if let Some(organisation) = organisation {
                params
                    .distinguished_name
                    .push(DnType::OrganizationName, organisation);
            }
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            if server {
                params
                    .subject_alt_names
                    .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            } else {
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            }
            let key = KeyPair::generate().map_err(Error::Certificate)?;
            let cert = params.signed_by(&key, &ca).map_err(Error::Certificate)?;
            Ok::<_, Error>(KeyFiles {
                cert: write(dir, &format!("{file}.crt"), &cert.pem())?,
                key: write(dir, &format!("{file}.key"), &key.serialize_pem())?,
            })
        };
        let serving = leaf("kube-apiserver", "kube-apiserver", None, true)?;
        let admin = leaf("admin", "sekisho-test-admin", Some("system:masters"), false)?;
        let controller_manager = leaf(
            "kube-controller-manager",
            "system:kube-controller-manager",
            Some("system:masters"),
            false,
        )?;

        let service_account = KeyPair::generate().map_err(Error::Certificate)?;
        Ok(Self {
            ca_cert,
            serving,
            admin,
            controller_manager,
            service_account_key: write(
                dir,
                "service-account.key",
                &service_account.serialize_pem(),
            )?,
            service_account_public_key: write(
                dir,
                "service-account.pub",
                &service_account.public_key_pem(),
            )?,
        })
    }
}

pub(crate) fn write(dir: &Path, name: &str, contents: &str) -> Result<PathBuf, Error> {
    let path = dir.join(name);
    std::fs::write(&path, contents).map_err(|source| Error::WriteFile {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}
