//! The rustls client configuration: ring crypto, explicit roots.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

use crate::BuildError;

/// Which certificates a TLS target (or TLS proxy) must chain to.
pub(crate) struct Roots {
    pub(crate) platform: bool,
    pub(crate) extra: Vec<CertificateDer<'static>>,
    pub(crate) accept_invalid: bool,
}

/// Builds the client configuration every probe client shares. Uses ring
/// explicitly, so it works whether or not a process-wide default provider is
/// installed, and never installs one.
pub(crate) fn client_config(roots: Roots) -> Result<ClientConfig, BuildError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let algorithms = provider.signature_verification_algorithms;
    let verifier: Arc<dyn ServerCertVerifier> = if roots.accept_invalid {
        Arc::new(NoVerification { algorithms })
    } else if roots.platform {
        match rustls_platform_verifier::Verifier::new_with_extra_roots(
            roots.extra,
            Arc::clone(&provider),
        ) {
            Ok(verifier) => Arc::new(verifier),
            Err(rustls::Error::General(why)) => {
                // The system store is empty (a bare container) and no extra
                // roots were given: plain-HTTP probing still works; HTTPS
                // targets fail with a readable TLS error.
                tracing::warn!(%why, "no trusted root certificates; HTTPS targets will fail");
                Arc::new(NoRoots { algorithms })
            }
            Err(e) => return Err(BuildError::Certificate(e.to_string())),
        }
    } else if roots.extra.is_empty() {
        Arc::new(NoRoots { algorithms })
    } else {
        let mut store = rustls::RootCertStore::empty();
        for cert in roots.extra {
            store
                .add(cert)
                .map_err(|e| BuildError::Certificate(e.to_string()))?;
        }
        rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(store),
            Arc::clone(&provider),
        )
        .build()
        .map_err(|e| BuildError::Tls(e.to_string()))?
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| BuildError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    // What reqwest offers by default (it clears ALPN for TLS to a proxy).
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Accepts any certificate (labs only); handshake signatures are still checked.
#[derive(Debug)]
struct NoVerification {
    algorithms: WebPkiSupportedAlgorithms,
}

/// Trusts nothing: every certificate is rejected with an explanation.
#[derive(Debug)]
struct NoRoots {
    algorithms: WebPkiSupportedAlgorithms,
}

macro_rules! signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    };
}

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    signatures!();
}

impl ServerCertVerifier for NoRoots {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Err(rustls::Error::General(
            "no trusted root certificates configured".to_owned(),
        ))
    }

    signatures!();
}
