//! The one rustls client setup of the crate (HTTPS probes; later the Redis and PostgreSQL TLS
//! connections): rustls 0.23 on the `ring` provider, trusting the system's roots
//! (`rustls-native-certs`, read once per process) plus, when given, the certificates of one PEM
//! file. No I/O beyond reading those files; no clock.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

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
    /// rustls refused the settings (cannot happen with the `ring` provider's defaults).
    #[error("TLS settings: {0}")]
    Settings(String),
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
    // rustls 0.23.48 deprecates the ring provider for lacking post-quantum key exchange (only
    // aws-lc-rs has it, and it needs cmake and a C toolchain's assembler): ring is the choice.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Settings(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
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
}
