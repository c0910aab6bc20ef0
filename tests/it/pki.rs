//! A test PKI made in the test: a CA, a server certificate it signed, and an unrelated CA (the
//! wrong one), for every TLS test (tls.rs, sentinel.rs).

use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// A test CA, a server certificate it signed (for `localhost` and `127.0.0.1`), and a second,
/// unrelated CA (the wrong one), as PEM files in a temp dir.
pub struct Pki {
    dir: tempfile::TempDir,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_key = KeyPair::generate().expect("CA key");
        let params = ca_params("gatemeter test CA");
        let ca_cert = params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(params, ca_key);
        let leaf_key = KeyPair::generate().expect("server key");
        let mut leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".into()])
            .expect("server params");
        leaf.distinguished_name
            .push(DnType::CommonName, "gatemeter test server");
        let leaf_cert = leaf
            .signed_by(&leaf_key, &issuer)
            .expect("server certificate");
        let other_key = KeyPair::generate().expect("other CA key");
        let other = ca_params("another CA")
            .self_signed(&other_key)
            .expect("other CA certificate");
        let pki = Self {
            cert_pem: leaf_cert.pem(),
            key_pem: leaf_key.serialize_pem(),
            dir,
        };
        std::fs::write(pki.ca(), ca_cert.pem()).expect("write");
        std::fs::write(pki.wrong_ca(), other.pem()).expect("write");
        std::fs::write(pki.cert(), &pki.cert_pem).expect("write");
        std::fs::write(pki.key(), &pki.key_pem).expect("write");
        pki
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn wrong_ca(&self) -> PathBuf {
        self.dir.path().join("wrong-ca.pem")
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }

    pub fn key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }

    /// The `listen_tls:` section with this server certificate.
    pub fn listen_tls(&self) -> String {
        format!(
            "listen_tls:\n  cert_file: {}\n  key_file: {}\n",
            self.cert().display(),
            self.key().display()
        )
    }
}

fn ca_params(name: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}
