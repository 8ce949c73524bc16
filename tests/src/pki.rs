//! A throwaway certificate authority for TLS and mTLS tests and benches:
//! a CA and leaf certificates made with rcgen, written as PEM files into a
//! temporary directory.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// A CA with its key, and the directory its files are written to.
#[derive(Debug)]
pub struct Pki {
    dir: tempfile::TempDir,
    /// The CA certificate, PEM.
    pub ca_pem: String,
    ca_params: CertificateParams,
    ca_key: KeyPair,
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

impl Pki {
    /// A new CA, its certificate written as `ca.pem`.
    pub fn new() -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "chassis test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Self {
            dir,
            ca_pem: ca.pem(),
            ca_params,
            ca_key,
        }
    }

    /// A leaf certificate for `names`, written as `<file>.pem` / `<file>.key`.
    pub fn leaf(&self, file: &str, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
        std::fs::write(self.path(&format!("{file}.pem")), &cert_pem).unwrap();
        std::fs::write(self.path(&format!("{file}.key")), &key_pem).unwrap();
        (cert_pem, key_pem)
    }

    /// A leaf with DNS SANs `sans` (none at all when empty) and subject
    /// CN `cn`.
    pub fn leaf_with_cn(&self, file: &str, sans: &[&str], cn: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(sans.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
        std::fs::write(self.path(&format!("{file}.pem")), &cert_pem).unwrap();
        std::fs::write(self.path(&format!("{file}.key")), &key_pem).unwrap();
        (cert_pem, key_pem)
    }

    /// Where `file` is written.
    pub fn path(&self, file: &str) -> std::path::PathBuf {
        self.dir.path().join(file)
    }
}
