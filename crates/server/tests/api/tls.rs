//! HTTPS: a self-signed certificate made in the test (rcgen, ring), loaded
//! from PEM files as `--tls-cert`/`--tls-key` are, and a reqwest client
//! that trusts it over 127.0.0.1; a client that never finishes its
//! handshake neither blocks other connections nor stays connected.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use pharox::ProxyManager;
use pharox_adapter_memory::MemoryStorage;
use pharox_server::tls::load_server_config;
use pharox_server::{AppState, Limits};
use reqwest::Client;
use tokio::io::AsyncReadExt;

use crate::common::{LEASE_KEY, problem, seed, spawn_state, static_keys};

/// PEM files of a fresh self-signed certificate for 127.0.0.1 and its key,
/// removed on drop; and a client trusting only that certificate.
struct TestCert {
    cert: PathBuf,
    key: PathBuf,
    der: Vec<u8>,
}

impl Drop for TestCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.cert);
        let _ = std::fs::remove_file(&self.key);
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn test_cert() -> TestCert {
    let made =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    let base = std::env::temp_dir().join(format!("pharox-tls-{}", uuid::Uuid::new_v4().simple()));
    let cert = base.with_extension("crt.pem");
    let key = base.with_extension("key.pem");
    let der = made.cert.der().to_vec();
    std::fs::write(&cert, pem("CERTIFICATE", &der)).unwrap();
    std::fs::write(&key, pem("PRIVATE KEY", &made.signing_key.serialize_der())).unwrap();
    TestCert { cert, key, der }
}

impl TestCert {
    fn client(&self) -> Client {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(self.der.clone()))
            .unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        Client::builder()
            .no_proxy()
            .use_preconfigured_tls(config)
            .build()
            .unwrap()
    }
}

async fn spawn_tls(cert: &TestCert, limits: Limits) -> crate::common::TestApp {
    let config = load_server_config(&cert.cert, &cert.key).unwrap();
    let storage: Arc<dyn pharox::ProxyStorage> = Arc::new(MemoryStorage::new());
    let manager = Arc::new(ProxyManager::from_arc(Arc::clone(&storage)));
    let state = AppState::new(manager, static_keys(), limits);
    spawn_state(storage, state, Some((config, cert.client()))).await
}

#[tokio::test]
async fn the_api_is_served_over_https() {
    let cert = test_cert();
    let app = spawn_tls(&cert, Limits::default()).await;
    assert!(app.url("/").starts_with("https://127.0.0.1:"));
    assert_eq!(
        app.client
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    seed(app.storage.as_ref(), "p", 1, 1).await;
    let lease = app.lease("p", serde_json::json!({"ttl_seconds": 60})).await;
    assert_eq!(lease["pool"], "p");
    problem(
        app.client
            .post(app.url("/v1/pools/p/leases"))
            .send()
            .await
            .unwrap(),
        401,
        "unauthorized",
    )
    .await;
    // Plain HTTP on the TLS port gets no answer.
    let plain = crate::common::client()
        .get(format!("http://{}/healthz", app.addr))
        .header("x-api-key", LEASE_KEY)
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    app.stop().await;
}

#[tokio::test]
async fn a_stalled_handshake_does_not_block_accepting() {
    let cert = test_cert();
    // A handshake timeout far longer than the test waits for an answer: a
    // handshake done in the accept loop would hold every new connection.
    let limits = Limits {
        header_timeout: Duration::from_secs(60),
        ..Limits::default()
    };
    let app = spawn_tls(&cert, limits).await;
    // A client that connects and never sends a ClientHello.
    let stalled = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    for _ in 0..3 {
        let answered = tokio::time::timeout(
            Duration::from_secs(10),
            app.client.get(app.url("/healthz")).send(),
        )
        .await
        .expect("answered while a handshake is stalled");
        assert_eq!(answered.unwrap().status(), 200);
    }
    drop(stalled);
    app.stop().await;
}

#[tokio::test]
async fn a_stalled_handshake_is_cut_off_at_the_timeout() {
    let cert = test_cert();
    let limits = Limits {
        header_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let app = spawn_tls(&cert, limits).await;
    let mut stalled = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    // The server closes it (EOF or reset) once the timeout passes; without
    // a timeout the read would wait for the 20 s bound and fail the test.
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(20), stalled.read(&mut buf))
        .await
        .expect("the stalled connection was closed within the handshake timeout");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    app.stop().await;
}

#[test]
fn bad_files_name_the_flag_without_quoting_them() {
    let cert = test_cert();
    std::fs::write(
        &cert.key,
        "-----BEGIN PRIVATE KEY-----\nnot-base64-secret-line!!\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let e = load_server_config(&cert.cert, &cert.key).unwrap_err();
    assert_eq!(e.flag, "tls-key");
    assert!(!e.to_string().contains("secret-line"), "{e}");
    let other = test_cert();
    // A key that is not the certificate's.
    let e = load_server_config(&cert.cert, &other.key).unwrap_err();
    assert_eq!(e.flag, "tls-key", "{e}");
    std::fs::write(&cert.cert, "no pem here\n").unwrap();
    let e = load_server_config(&cert.cert, &other.key).unwrap_err();
    assert_eq!(e.flag, "tls-cert", "{e}");
}
