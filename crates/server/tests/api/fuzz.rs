//! The schema fuzz: schemathesis generates requests from `/openapi.json`
//! and checks every answer against the document (no 5xx, documented
//! statuses, content types, headers and bodies). The server runs on
//! 127.0.0.1 over the in-memory storage with a seeded pool; schemathesis
//! is told that base URL, so it sends nothing anywhere else.
//!
//! `cargo xtask test` makes a virtualenv with schemathesis and names its
//! executable in `PHAROX_TEST_SCHEMATHESIS`; without it this test fails.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use pharox::SimulatedProbe;
use pharox_adapter_memory::MemoryStorage;
use pharox_server::Limits;
use pharox_server::openapi::EXAMPLE_POOL;

use crate::common::{ADMIN_KEY, seed, spawn_with_sweeps};

/// The variable naming the schemathesis executable.
const ENV_SCHEMATHESIS: &str = "PHAROX_TEST_SCHEMATHESIS";

/// The checks run on every response.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_headers_conformance,response_schema_conformance";

/// Test cases per operation and phase; with 18 operations the run takes
/// well under two minutes on two cores.
const MAX_EXAMPLES: &str = "30";

/// Serializers schemathesis lacks (the import's JSON lines).
const HOOKS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/api/schemathesis_hooks.py"
);

/// A fixed seed, so a failure can be reproduced (`PHAROX_FUZZ_SEED` picks
/// another; `PHAROX_FUZZ_ARGS` adds schemathesis arguments).
const DEFAULT_SEED: &str = "20261203";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_response_that_breaks_the_document() {
    let Some(schemathesis) = std::env::var_os(ENV_SCHEMATHESIS).map(PathBuf::from) else {
        panic!(
            "{ENV_SCHEMATHESIS} is not set: this test runs schemathesis (from PyPI) against the \
             server. `cargo xtask test` makes a virtualenv with it and sets the variable; or \
             `python3 -m venv V && V/bin/pip install schemathesis==4.32.5` and set \
             {ENV_SCHEMATHESIS}=V/bin/schemathesis"
        );
    };
    let storage = Arc::new(MemoryStorage::new());
    // The pool the document's examples name, so the fuzz reaches leases
    // and proxies, not only 404s.
    let proxies = seed(storage.as_ref(), EXAMPLE_POOL, 20, 5).await;
    let limits = Limits {
        // Acquires with ?wait_ms wait for free proxies: keep that short.
        max_wait: Duration::from_millis(100),
        ..Limits::default()
    };
    // The seeded proxies and the ones the fuzz imports have made-up
    // addresses: sweeps check them with a probe that touches no network.
    let probe = Arc::new(SimulatedProbe::new(Duration::from_millis(2)));
    let app = spawn_with_sweeps(storage, limits, probe).await;
    assert!(app.addr.ip().is_loopback());
    let base = format!("http://{}", app.addr);
    // Real lease and proxy ids, drawn for `{id}` half of the time, so the
    // lease and proxy calls answer more than 404.
    let mut leases = Vec::new();
    for _ in 0..20 {
        let lease = app.lease(EXAMPLE_POOL, serde_json::json!({})).await;
        leases.push(lease["lease_id"].as_str().unwrap().to_owned());
    }
    let proxy_ids: Vec<String> = proxies.iter().map(|p| p.id.to_string()).collect();
    let config = schemathesis_config(&leases, &proxy_ids);
    let seed = std::env::var("PHAROX_FUZZ_SEED").unwrap_or_else(|_| DEFAULT_SEED.to_owned());
    let workdir = tempfile::tempdir().unwrap();
    let config_file = workdir.path().join("schemathesis.toml");
    std::fs::write(&config_file, config).unwrap();

    let mut command = Command::new(&schemathesis);
    command
        .arg("--config-file")
        .arg(&config_file)
        .arg("run")
        .arg(format!("{base}/openapi.json"))
        .args(["--url", &base])
        // Both ways of presenting the key, so a value schemathesis makes
        // up for one of them never stands in for the admin key.
        .args(["--header", &format!("X-API-Key: {ADMIN_KEY}")])
        .args(["--header", &format!("Authorization: Bearer {ADMIN_KEY}")])
        .args(["--checks", CHECKS])
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--seed", &seed])
        .args(["--request-timeout", "10"])
        .args(["--max-time", "90"])
        .args(["--workers", "1"])
        .args(["--warnings", "off"])
        .arg("--no-color")
        // More arguments, e.g. `--report har --report-dir /tmp/st`.
        .args(
            std::env::var("PHAROX_FUZZ_ARGS")
                .unwrap_or_default()
                .split_whitespace(),
        )
        .env("SCHEMATHESIS_HOOKS", HOOKS)
        // Its example database and reports stay out of the work tree.
        .current_dir(workdir.path())
        // Loopback only: no proxy may carry the requests elsewhere.
        .env("NO_PROXY", "*")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("ALL_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("all_proxy");
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", schemathesis.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        output.status.success(),
        "schemathesis reported failures ({}); its output is above",
        output.status
    );
    // The key was accepted: the fuzz made pools of its own.
    let pools = app.storage.list_pools().await.unwrap();
    assert!(pools.len() > 1, "the fuzz created no pool: {pools:?}");
    app.stop().await;
}

/// schemathesis's configuration: `{id}` of the lease and proxy calls drawn
/// from real ids half of the time.
fn schemathesis_config(leases: &[String], proxies: &[String]) -> String {
    let list = |ids: &[String]| {
        ids.iter()
            .map(|id| format!("\"{id}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "[dictionaries.leases]\nvalues = [{}]\n\n\
         [dictionaries.proxies]\nvalues = [{}]\n\n\
         [[operations]]\ninclude-path-regex = \"^/v1/leases/\"\n\
         parameters = {{ \"path.id\" = {{ dictionary = \"leases\", probability = 0.5 }} }}\n\n\
         [[operations]]\ninclude-path-regex = \"^/v1/proxies/\"\n\
         parameters = {{ \"path.id\" = {{ dictionary = \"proxies\", probability = 0.5 }} }}\n",
        list(leases),
        list(proxies)
    )
}
