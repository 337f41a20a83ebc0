//! `pharox apikey create|list|revoke` on a fresh schema, and the keys it
//! makes on `pharox serve --database-url` (started without static keys):
//! a created key works, the wrong scope is 403, a revoked or unknown key
//! 401; no key shows in listings, errors or the server's log. And
//! `--tls-cert`/`--tls-key`: HTTPS with a certificate made in the test.

#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::sync::Arc;

use serde_json::Value;

mod common;

/// Starts `pharox serve --database-url URL` with no static key and no key
/// cache; returns it and its address.
fn start(url: &str) -> (common::ServeProcess, String) {
    let mut command = common::serve_command(&[
        "--api-key-cache-secs",
        "0",
        "--database-url",
        url,
        "--max-connections",
        "2",
    ]);
    command.env("RUST_LOG", "debug");
    common::spawn_serve(command, "http")
}

/// The key a `create` printed (its second stdout line).
fn key_of(run: &common::Run) -> String {
    assert_eq!(run.code, Some(0), "{run:?}");
    let key = run.stdout.lines().nth(1).unwrap().trim().to_owned();
    assert!(key.starts_with("phx_") && key.len() == 68, "{run:?}");
    key
}

#[test]
fn created_keys_work_on_the_server_until_revoked() {
    let schema = common::Schema::create();
    assert_eq!(schema.pharox(&["pool", "create", "p"]).code, Some(0));
    let lease_run = schema.pharox(&["apikey", "create", "--scope", "lease", "--name", "worker"]);
    let lease_key = key_of(&lease_run);
    assert!(
        lease_run.stderr.contains("not shown again"),
        "{lease_run:?}"
    );
    let admin_run = schema.pharox(&["apikey", "create", "--scope", "admin", "--json"]);
    let admin = common::json(&admin_run);
    let admin_key = admin["key"].as_str().unwrap().to_owned();
    assert_eq!(admin["scope"], "admin");
    assert_eq!(admin["name"], Value::Null);
    assert!(admin["revoked_at"].is_null());

    // Listings carry neither key nor hash.
    let table = schema.pharox(&["apikey", "list"]);
    assert_eq!(table.code, Some(0), "{table:?}");
    assert!(table.stdout.starts_with("ID"), "{table:?}");
    assert!(table.stdout.contains("worker") && table.stdout.contains("lease"));
    let listed = common::json(&schema.pharox(&["apikey", "list", "--json"]));
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["name"], "worker");
    assert_eq!(listed[1]["id"], admin["id"]);
    for item in listed {
        let keys: Vec<&String> = item.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["created_at", "id", "name", "revoked_at", "scope"]);
    }

    let (mut server, addr) = start(&schema.url);
    let statuses = schema.runtime.block_on(async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let lease = |key: String| {
            client
                .post(format!("http://{addr}/v1/pools/p/leases"))
                .bearer_auth(key)
                .send()
        };
        let pools = |key: String| {
            client
                .get(format!("http://{addr}/v1/pools"))
                .header("x-api-key", key)
                .send()
        };
        let mut statuses = vec![
            // The pool is empty: 409 means the key was accepted.
            lease(lease_key.clone()).await.unwrap().status().as_u16(),
            pools(admin_key.clone()).await.unwrap().status().as_u16(),
            pools(lease_key.clone()).await.unwrap().status().as_u16(),
            lease(format!("phx_{}", "0".repeat(64)))
                .await
                .unwrap()
                .status()
                .as_u16(),
        ];
        let revoked = schema.pharox(&["apikey", "revoke", "worker"]);
        assert_eq!(revoked.code, Some(0), "{revoked:?}");
        assert!(revoked.stdout.contains("revoked lease key"), "{revoked:?}");
        statuses.push(lease(lease_key.clone()).await.unwrap().status().as_u16());
        statuses.push(lease(admin_key.clone()).await.unwrap().status().as_u16());
        statuses
    });
    assert_eq!(statuses, [409, 200, 403, 401, 401, 409]);

    // Revoked keys stay listed, with the time; revoking by id again is fine.
    let listed = common::json(&schema.pharox(&["apikey", "list", "--json"]));
    assert!(listed[0]["revoked_at"].is_string(), "{listed}");
    let id = listed[0]["id"].as_str().unwrap();
    let again = common::json(&schema.pharox(&["apikey", "revoke", id, "--json"]));
    assert_eq!(again["revoked_at"], listed[0]["revoked_at"]);

    let pid = server.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(server.child.wait().unwrap().code(), Some(0));
    let log = server.log();
    for key in [&lease_key, &admin_key] {
        assert!(
            !log.contains(key.as_str()),
            "a key in the server's log:\n{log}"
        );
    }
}

#[test]
fn bad_input_names_the_flag_and_shows_no_key() {
    let schema = common::Schema::create();
    let run = schema.pharox(&["apikey", "create", "--scope", "root"]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("--scope"), "{run:?}");
    let run = schema.pharox(&["apikey", "create", "--scope", "lease", "--name", "a b"]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("--name"), "{run:?}");

    let first = schema.pharox(&["apikey", "create", "--scope", "lease", "--name", "ci"]);
    let key = key_of(&first);
    let twice = schema.pharox(&["apikey", "create", "--scope", "admin", "--name", "ci"]);
    assert_eq!(twice.code, Some(2), "{twice:?}");
    assert!(twice.stderr.contains("--name"), "{twice:?}");
    assert!(twice.stdout.is_empty(), "no key is printed: {twice:?}");

    let unknown = schema.pharox(&["apikey", "revoke", "nobody"]);
    assert_ne!(unknown.code, Some(0), "{unknown:?}");
    assert!(unknown.stderr.contains("not found"), "{unknown:?}");
    let runs = [first, twice, unknown, schema.pharox(&["apikey", "list"])];
    for run in &runs[1..] {
        assert!(
            !run.stdout.contains(&key) && !run.stderr.contains(&key),
            "the key shows: {run:?}"
        );
    }
    assert_eq!(
        common::json(&schema.pharox(&["apikey", "list", "--json"]))
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn apikey_needs_a_database_url_and_tls_needs_both_files() {
    let run = common::run_with(&["apikey", "list"], Stdio::piped());
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("--database-url"), "{run:?}");
    let out = Command::new(env!("CARGO_BIN_EXE_pharox"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            "/nonexistent.pem",
        ])
        .env("PHAROX_API_KEYS", "lease:lease-key-0123456789")
        .env_remove("PHAROX_DATABASE_URL")
        .env_remove("PHAROX_TLS_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--tls-key"), "{stderr}");
}

/// `body` (DER) as a PEM block labelled `label`.
fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[test]
fn serve_with_tls_files_answers_over_https() {
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let base = std::env::temp_dir().join(format!("pharox-cli-tls-{}", std::process::id()));
    let (cert, key) = (base.with_extension("crt"), base.with_extension("key"));
    std::fs::write(&cert, pem("CERTIFICATE", made.cert.der())).unwrap();
    std::fs::write(&key, pem("PRIVATE KEY", &made.signing_key.serialize_der())).unwrap();
    let mut command = common::serve_command(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    command.env("PHAROX_API_KEYS", "lease:lease-key-0123456789");
    let (mut server, addr) = common::spawn_serve(command, "https");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(made.cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = runtime.block_on(async {
        let client = reqwest::Client::builder()
            .no_proxy()
            .use_preconfigured_tls(config)
            .build()
            .unwrap();
        client
            .get(format!("https://{addr}/healthz"))
            .send()
            .await
            .unwrap()
            .status()
    });
    let _ = std::fs::remove_file(&cert);
    let _ = std::fs::remove_file(&key);
    assert_eq!(status, 200);
    let pid = server.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(server.child.wait().unwrap().code(), Some(0));
}
