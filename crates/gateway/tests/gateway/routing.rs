//! Client auth and routing: the key in the password, the request in the
//! username or the `X-Pharox-*` headers.

use pharox_gateway::GatewayConfig;
use pharox_test_proxies::{HttpProxy, TargetServer};

use crate::common::{POOL, Upstream, spawn_gateway};

/// Two upstreams, in the US and in Germany.
async fn two_countries() -> (HttpProxy, HttpProxy, Vec<Upstream>) {
    let us = HttpProxy::start().await.unwrap();
    let de = HttpProxy::start().await.unwrap();
    let upstreams = vec![
        Upstream::new(format!("http://{}", us.addr())).country("US"),
        Upstream::new(format!("http://{}", de.addr())).country("DE"),
    ];
    (us, de, upstreams)
}

#[tokio::test]
async fn the_username_picks_the_pool_and_the_country() {
    let (_us, _de, upstreams) = two_countries().await;
    let target = TargetServer::start().await.unwrap();
    let gateway = spawn_gateway(GatewayConfig::default(), upstreams).await;
    for (username, expected) in [
        (format!("pool-{POOL}-country-de"), gateway.proxies[1]),
        (format!("pool-{POOL}-country-US"), gateway.proxies[0]),
    ] {
        for _ in 0..3 {
            let response = gateway
                .client(&username)
                .get(target.url("/ok"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{username}");
            assert_eq!(
                response.headers()["x-pharox-proxy-id"].to_str().unwrap(),
                expected.to_string(),
                "{username}"
            );
        }
    }
    // No proxy in France: 503, with when to try again.
    let response = gateway
        .client(&format!("pool-{POOL}-country-fr"))
        .get(target.url("/ok"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let error = response.headers()["x-pharox-error"].to_str().unwrap();
    assert!(error.starts_with("no_proxy_available"), "{error}");
}

#[tokio::test]
async fn headers_route_clients_that_cannot_set_a_username() {
    let (_us, _de, upstreams) = two_countries().await;
    let target = TargetServer::start().await.unwrap();
    let gateway = spawn_gateway(GatewayConfig::default(), upstreams).await;
    let response = gateway
        .client("")
        .get(target.url("/ok"))
        .header("X-Pharox-Pool", POOL)
        .header("X-Pharox-Country", "de")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["x-pharox-proxy-id"].to_str().unwrap(),
        gateway.proxies[1].to_string()
    );
    // The routing headers stay with the gateway.
    let seen = target.requests();
    assert!(seen[0].header("x-pharox-pool").is_none(), "{seen:?}");
    assert!(seen[0].header("x-pharox-country").is_none(), "{seen:?}");
    // A session header keeps a client on one proxy.
    let mut ids = std::collections::HashSet::new();
    for _ in 0..6 {
        let response = gateway
            .client("")
            .get(target.url("/ok"))
            .header("X-Pharox-Pool", POOL)
            .header("X-Pharox-Session", "by-header")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        ids.insert(
            response.headers()["x-pharox-proxy-id"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
}

#[tokio::test]
async fn a_missing_or_wrong_key_or_a_bad_username_is_a_407() {
    let upstream = HttpProxy::start().await.unwrap();
    let target = TargetServer::start().await.unwrap();
    let gateway = spawn_gateway(
        GatewayConfig::default(),
        vec![Upstream::new(format!("http://{}", upstream.addr()))],
    )
    .await;
    let missing = gateway
        .anonymous_client()
        .get(target.url("/ok"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 407);
    assert_eq!(
        missing.headers()["proxy-authenticate"],
        "Basic realm=\"pharox\""
    );
    let wrong = gateway
        .client_with_password(&format!("pool-{POOL}"), "not-the-key-0123456789")
        .get(target.url("/ok"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 407);
    let message = wrong.headers()["x-pharox-error"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(!message.contains("not-the-key"), "{message}");
    let unknown = gateway
        .client(&format!("pool-{POOL}-colour-red"))
        .get(target.url("/ok"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 407);
    let message = unknown.headers()["x-pharox-error"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("\"colour\""), "{message}");
    let no_pool = gateway
        .client("country-us")
        .get(target.url("/ok"))
        .send()
        .await
        .unwrap();
    assert_eq!(no_pool.status(), 407);
    assert!(
        no_pool.headers()["x-pharox-error"]
            .to_str()
            .unwrap()
            .contains("no pool"),
        "{:?}",
        no_pool.headers()
    );
    // Nothing refused reached an upstream or left a lease.
    assert_eq!(upstream.connections(), 0);
    assert_eq!(target.request_count(), 0);
    assert_eq!(gateway.active_leases().await, 0);
}

#[tokio::test]
async fn without_auth_a_default_pool_serves_bare_clients() {
    let upstream = HttpProxy::start().await.unwrap();
    let target = TargetServer::start().await.unwrap();
    let config = GatewayConfig {
        no_auth: true,
        default_pool: Some(POOL.to_owned()),
        ..GatewayConfig::default()
    };
    let gateway = spawn_gateway(
        config,
        vec![Upstream::new(format!("http://{}", upstream.addr()))],
    )
    .await;
    let response = gateway
        .anonymous_client()
        .get(target.url("/ok"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "ok");
}

#[tokio::test]
async fn socks5_clients_authenticate_and_route_by_username() {
    let upstream = HttpProxy::start().await.unwrap();
    let target = TargetServer::start().await.unwrap();
    let gateway = spawn_gateway(
        GatewayConfig::default(),
        vec![Upstream::new(format!("http://{}", upstream.addr()))],
    )
    .await;
    let socks = |username: &str, password: &str| {
        let proxy = reqwest::Proxy::all(format!("socks5h://{}", gateway.socks))
            .unwrap()
            .basic_auth(username, password);
        reqwest::Client::builder().proxy(proxy).build().unwrap()
    };
    let response = socks(&format!("pool-{POOL}"), crate::common::KEY)
        .get(target.localhost_url("/ok"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "ok");
    assert_eq!(upstream.tunnels(), 1);
    assert!(
        socks(&format!("pool-{POOL}"), "not-the-key-0123456789")
            .get(target.url("/ok"))
            .send()
            .await
            .is_err()
    );
    assert!(
        socks(&format!("pool-{POOL}-colour-red"), crate::common::KEY)
            .get(target.url("/ok"))
            .send()
            .await
            .is_err()
    );
    assert_eq!(upstream.tunnels(), 1);
}

#[tokio::test]
async fn the_gateway_sets_host_to_the_target_it_dials() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let upstream = HttpProxy::start().await.unwrap();
    let target = TargetServer::start().await.unwrap();
    let gateway = spawn_gateway(
        GatewayConfig::default(),
        vec![Upstream::new(format!("http://{}", upstream.addr()))],
    )
    .await;
    let mut stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let request = format!(
        "GET http://user:secret@{}/ok HTTP/1.1\r\nHost: elsewhere.example\r\nProxy-Authorization: {}\r\nConnection: close\r\n\r\n",
        target.addr(),
        crate::common::basic(&format!("pool-{POOL}"))
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = target.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].header("host"),
        Some(target.addr().to_string().as_str())
    );
    // The user info of the client's URL goes nowhere.
    for (name, value) in &seen[0].headers {
        assert!(!value.contains("secret"), "{name}: {value}");
    }
}
