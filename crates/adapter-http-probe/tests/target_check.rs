//! `HttpProbe::check_target`: the target fetched directly, no proxy, on
//! real loopback servers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use pharox_adapter_http_probe::HttpProbe;
use pharox_domain::HealthCheckOptions;
use pharox_test_proxies::{BlackHole, TargetServer, TestCa, closed_port};

fn options(target_url: String) -> HealthCheckOptions {
    HealthCheckOptions {
        target_url,
        timeout: Duration::from_secs(5),
        attempts: 1,
        remote_dns: false,
        ..HealthCheckOptions::default()
    }
}

#[tokio::test]
async fn a_target_that_answers_passes_and_one_that_does_not_is_explained() {
    let target = TargetServer::start().await.unwrap();
    let probe = HttpProbe::new().unwrap();
    let ok = probe
        .check_target(&options(target.url("/no-content")))
        .await
        .unwrap();
    assert_eq!(ok.http_status, 204);
    assert_eq!(target.request_count(), 1, "fetched directly, once");

    let unavailable = probe
        .check_target(&options(target.url("/unavailable")))
        .await
        .unwrap_err();
    assert!(unavailable.0.contains("503"), "{unavailable}");

    let closed = closed_port().unwrap();
    let refused = probe
        .check_target(&options(format!("http://{closed}/")))
        .await
        .unwrap_err();
    assert!(refused.0.contains("refused"), "{refused}");
}

#[tokio::test]
async fn a_target_that_never_answers_times_out() {
    let hole = BlackHole::start().await.unwrap();
    let probe = HttpProbe::new().unwrap();
    let mut opts = options(format!("http://{}/", hole.addr()));
    opts.timeout = Duration::from_millis(300);
    let err = probe.check_target(&opts).await.unwrap_err();
    assert!(err.0.contains("timed out"), "{err}");
}

#[tokio::test]
async fn an_https_target_needs_its_ca() {
    let ca = TestCa::new();
    let target = TargetServer::start_tls(&ca).await.unwrap();
    let untrusting = HttpProbe::builder().platform_roots(false).build().unwrap();
    let err = untrusting
        .check_target(&options(target.url("/ok")))
        .await
        .unwrap_err();
    assert!(!err.0.is_empty());
    let trusting = HttpProbe::builder()
        .platform_roots(false)
        .add_root_certificates_pem(ca.cert_pem().as_bytes())
        .unwrap()
        .build()
        .unwrap();
    let ok = trusting
        .check_target(&options(target.url("/ok")))
        .await
        .unwrap();
    assert_eq!(ok.http_status, 200);
}
