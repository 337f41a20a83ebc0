//! HTTPS for `pharox serve --tls-cert FILE --tls-key FILE`: loading a PEM
//! certificate chain and private key into a rustls configuration (ring, the
//! workspace's one provider), and the handshake limits `serve_tls` applies.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why the certificate or key cannot be used. Names the flag; never quotes
/// the files' contents (the key file holds the private key).
#[derive(Debug, thiserror::Error)]
#[error("invalid --{flag} {path}: {reason}")]
pub struct TlsError {
    /// `tls-cert` or `tls-key`.
    pub flag: &'static str,
    /// The file as given.
    pub path: String,
    /// Why.
    pub reason: String,
}

/// A rustls server configuration (HTTP/1.1 by ALPN, ring) from a PEM file
/// holding the certificate chain (leaf first) and one holding its private
/// key (PKCS#8, PKCS#1 or SEC1).
pub fn load_server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let fail = |flag, path: &Path, reason: String| TlsError {
        flag,
        path: path.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| fail("tls-cert", cert, pem_reason(&e, "certificates")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail("tls-cert", cert, pem_reason(&e, "certificates")))?;
    if certs.is_empty() {
        return Err(fail("tls-cert", cert, "holds no certificate".into()));
    }
    let private_key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| fail("tls-key", key, pem_reason(&e, "a private key")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail("tls-cert", cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, private_key)
        // rustls says what does not fit (a key that does not match the
        // certificate, an unsupported algorithm) without the key's bytes.
        .map_err(|e| fail("tls-key", key, format!("does not fit the certificate: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A reason for a PEM failure that never quotes the file (pem's own
/// messages can carry a line of it).
fn pem_reason(e: &pem::Error, what: &str) -> String {
    match e {
        pem::Error::Io(io) => format!("cannot be read: {io}"),
        pem::Error::NoItemsFound => format!("holds no PEM {what}"),
        _ => format!("is not valid PEM {what}"),
    }
}
