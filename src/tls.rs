//! The one rustls setup of the crate: rustls 0.23 on the `ring` provider.
//!
//! - [`client_config`]: HTTPS probes and the OTLP log export, trusting the system's roots
//!   (`rustls-native-certs`, read once per process) plus, when given, the certificates of one
//!   PEM file. (The redis and sqlx crates build their own client configs on the same rustls and
//!   provider: `rediss://` with `redis.ca_file`, PostgreSQL's `sslmode` / `sslrootcert`.)
//! - [`server_config`]: `listen_tls` / `metrics_listen_tls`, a certificate chain and its key
//!   from PEM files, HTTP/1.1 only.
//!
//! No I/O beyond reading those files; no clock.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why a TLS client configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA file could not be read or holds no PEM certificate.
    #[error("CA file {path}: {message}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The certificate file could not be read or holds no PEM certificate.
    #[error("certificate file {path}: {message}")]
    CertFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The key file could not be read, holds no PEM private key, or a key that does not
    /// belong to the certificate.
    #[error("key file {path}: {message}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// rustls refused the settings (cannot happen with the `ring` provider's defaults).
    #[error("TLS settings: {0}")]
    Settings(String),
}

/// The `ring` provider: rustls 0.23.48 deprecates it for lacking post-quantum key exchange
/// (only aws-lc-rs has it, and it needs cmake and a C toolchain's assembler): ring is the choice.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The system's trusted roots, loaded once (a few milliseconds; unreadable entries skipped).
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::debug!(error = %e, "A system root certificate could not be read.");
        }
        found.certs
    })
}

/// The certificates of a PEM file (one or more `CERTIFICATE` blocks).
pub fn read_pem_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |message: String| TlsError::CaFile {
        path: path.to_path_buf(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// A client configuration trusting the system's roots and the certificates of `extra_ca`.
pub fn client_config(extra_ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    let (_added, _ignored) = roots.add_parsable_certificates(system_roots().iter().cloned());
    if let Some(path) = extra_ca {
        for cert in read_pem_certificates(path)? {
            roots.add(cert).map_err(|e| TlsError::CaFile {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Settings(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A server configuration presenting the chain of `cert_file` (leaf first) with the private key
/// of `key_file` (PKCS#8, PKCS#1 or SEC1 PEM), offering HTTP/1.1 by ALPN. Every failure names
/// its file: unreadable, no PEM block of the right kind, or a key that is not the
/// certificate's.
pub fn server_config(
    cert_file: &Path,
    key_file: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = read_pem_certificates(cert_file).map_err(|e| match e {
        TlsError::CaFile { path, message } => TlsError::CertFile { path, message },
        e => e,
    })?;
    let key_err = |message: String| TlsError::KeyFile {
        path: key_file.to_path_buf(),
        message,
    };
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
        key_err(match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no PEM private key in it (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)".into()
            }
            e => e.to_string(),
        })
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Settings(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => key_err(format!(
                "the key does not belong to the certificate of {}",
                cert_file.display()
            )),
            e => key_err(e.to_string()),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_ca_file_is_named() {
        let e = client_config(Some(Path::new("/nonexistent/ca.pem"))).expect_err("missing");
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let e = client_config(Some(&empty)).expect_err("empty");
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
        assert!(client_config(None).is_ok());
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p
    }

    #[test]
    fn server_files_are_checked_and_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert a");
        let b = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert b");
        let cert = write(dir.path(), "a.pem", &a.cert.pem());
        let key = write(dir.path(), "a.key", &a.signing_key.serialize_pem());
        let other_key = write(dir.path(), "b.key", &b.signing_key.serialize_pem());
        let config = server_config(&cert, &key).expect("a matching pair");
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        let e = server_config(&cert, &other_key).expect_err("someone else's key");
        assert!(
            e.to_string().contains("b.key") && e.to_string().contains("does not belong"),
            "{e}"
        );
        let e = server_config(&key, &key).expect_err("a key as the certificate");
        assert!(e.to_string().starts_with("certificate file"), "{e}");
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
        let e = server_config(&cert, &cert).expect_err("a certificate as the key");
        assert!(e.to_string().contains("no PEM private key"), "{e}");
        let e = server_config(&cert, Path::new("/nonexistent/k.pem")).expect_err("missing");
        assert!(e.to_string().contains("/nonexistent/k.pem"), "{e}");
    }
}
