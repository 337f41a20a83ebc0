//! A throw-away certificate authority for TLS targets and proxies.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A self-signed CA generated in memory (ring), and a server certificate it
/// signed for `localhost`, `127.0.0.1` and `::1`. Trust [`TestCa::cert_der`]
/// (or [`TestCa::cert_pem`]) in the client under test.
pub struct TestCa {
    ca: CertifiedIssuer<'static, KeyPair>,
    server: Arc<ServerConfig>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestCa(..)")
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCa {
    /// Generates a new CA and server certificate.
    ///
    /// # Panics
    ///
    /// If key generation or signing fails (it does not, with ring).
    #[must_use]
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "pharox test CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");

        let leaf_key = KeyPair::generate().expect("server key");
        let mut leaf = CertificateParams::new(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ])
        .expect("server params");
        leaf.distinguished_name
            .push(DnType::CommonName, "pharox test server");
        let leaf_cert = leaf.signed_by(&leaf_key, &ca).expect("server certificate");

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf_cert.der().clone(), ca.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
            )
            .expect("server config");
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self {
            ca,
            server: Arc::new(server),
        }
    }

    /// The CA certificate, DER-encoded.
    #[must_use]
    pub fn cert_der(&self) -> Vec<u8> {
        self.ca.der().to_vec()
    }

    /// The CA certificate as a rustls type.
    #[must_use]
    pub fn cert(&self) -> CertificateDer<'static> {
        self.ca.der().clone()
    }

    /// The CA certificate, PEM-encoded.
    #[must_use]
    pub fn cert_pem(&self) -> String {
        let b64 = STANDARD.encode(self.ca.der());
        let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
        pem
    }

    /// The rustls server configuration (HTTP/1.1 ALPN) the TLS servers use.
    #[must_use]
    pub fn server_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.server)
    }
}
