//! Failures of upstreams: failover, 502 when every attempt fails, blocks
//! recorded against the target, and sticky sessions that move only when
//! their upstream dies.

use std::collections::HashSet;
use std::time::Duration;

use pharox_gateway::GatewayConfig;
use pharox_test_proxies::{BlackHole, HttpProxy, TargetServer, closed_port};

use crate::common::{POOL, Upstream, spawn_gateway};

#[tokio::test]
async fn a_dead_upstream_is_replaced_and_its_score_rises() {
    let live = HttpProxy::start().await.unwrap();
    let dead = closed_port().unwrap();
    let target = TargetServer::start().await.unwrap();
    let gateway = spawn_gateway(
        GatewayConfig::default(),
        vec![
            Upstream::new(format!("http://{dead}")),
            Upstream::new(format!("http://{}", live.addr())),
        ],
    )
    .await;
    let client = gateway.client(&format!("pool-{POOL}-selector-round_robin"));
    for _ in 0..4 {
        let response = client.get(target.url("/ok")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["x-pharox-proxy-id"].to_str().unwrap(),
            gateway.proxies[1].to_string()
        );
        assert_eq!(response.text().await.unwrap(), "ok");
    }
    assert_eq!(live.forwarded_requests(), 4);
    let settled = async {
        while gateway.active_leases().await > 0 {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), settled)
        .await
        .unwrap();
    let dead_proxy = gateway.proxy(gateway.proxies[0]).await;
    assert!(dead_proxy.usage.error_score > 0.0, "{:?}", dead_proxy.usage);
    assert_eq!(
        gateway.proxy(gateway.proxies[1]).await.usage.error_score,
        0.0
    );
    let text = gateway.metrics.render();
    assert!(
        text.contains("pharox_gateway_requests_total{pool=\"web\",result=\"success\"} 4"),
        "{text}"
    );
}

#[tokio::test]
async fn when_every_attempt_fails_the_client_gets_a_502_saying_why() {
    let dead = [
        closed_port().unwrap(),
        closed_port().unwrap(),
        closed_port().unwrap(),
    ];
    let target = TargetServer::start().await.unwrap();
    let gateway = spawn_gateway(
        GatewayConfig::default(),
        dead.iter()
            .map(|addr| Upstream::new(format!("http://{addr}")))
            .collect(),
    )
    .await;
    let response = gateway
        .client(&format!("pool-{POOL}"))
        .get(target.url("/ok"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let error = response.headers()["x-pharox-error"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        error.starts_with("upstream_failed: 3 proxies tried"),
        "{error}"
    );
    assert!(error.contains("connect_refused"), "{error}");
    let settled = async {
        while gateway.active_leases().await > 0 {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), settled)
        .await
        .unwrap();
    for id in &gateway.proxies {
        assert!(gateway.proxy(*id).await.usage.error_score > 0.0);
    }
    assert_eq!(target.request_count(), 0);
}

#[tokio::test]
async fn a_silent_upstream_times_out_within_the_connect_timeout() {
    let silent = BlackHole::start().await.unwrap();
    let target = TargetServer::start().await.unwrap();
    let config = GatewayConfig {
        connect_timeout: Duration::from_millis(300),
        ..GatewayConfig::default()
    };
    let gateway = spawn_gateway(
        config,
        vec![Upstream::new(format!("socks5://{}", silent.addr()))],
    )
    .await;
    let response = gateway
        .client(&format!("pool-{POOL}"))
        .get(target.url("/ok"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let error = response.headers()["x-pharox-error"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(error.contains("timeout"), "{error}");
}

#[tokio::test]
async fn blocked_statuses_ban_the_proxy_for_that_target_only() {
    let live = HttpProxy::start().await.unwrap();
    let target = TargetServer::start().await.unwrap();
    let gateway = spawn_gateway(
        GatewayConfig::default(),
        vec![Upstream::new(format!("http://{}", live.addr()))],
    )
    .await;
    let client = gateway.client(&format!("pool-{POOL}"));
    // A target error is no ban.
    let failed = client
        .get(target.localhost_url("/status/500"))
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), 500);
    drop(failed);
    let blocked = client
        .get(target.localhost_url("/status/429"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        blocked.status(),
        429,
        "the target's answer reaches the client"
    );
    drop(blocked);
    let bans = async {
        loop {
            let bans = gateway
                .storage
                .list_target_bans(gateway.proxies[0])
                .await
                .unwrap();
            if !bans.is_empty() {
                return bans;
            }
            tokio::task::yield_now().await;
        }
    };
    let bans = tokio::time::timeout(Duration::from_secs(5), bans)
        .await
        .unwrap();
    assert_eq!(bans.len(), 1);
    assert_eq!(bans[0].target.as_str(), "localhost");
    // Another site is still served through it.
    let other = client.get(target.url("/ok")).send().await.unwrap();
    assert_eq!(other.status(), 200);
    let text = gateway.metrics.render();
    assert!(
        text.contains("pharox_gateway_requests_total{pool=\"web\",result=\"blocked\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn a_sticky_session_keeps_its_upstream_and_moves_when_it_dies() {
    let mut upstreams: Vec<Option<HttpProxy>> = Vec::new();
    for _ in 0..3 {
        upstreams.push(Some(HttpProxy::start().await.unwrap()));
    }
    let target = TargetServer::start().await.unwrap();
    let gateway = spawn_gateway(
        GatewayConfig::default(),
        upstreams
            .iter()
            .map(|u| Upstream::new(format!("http://{}", u.as_ref().unwrap().addr())))
            .collect(),
    )
    .await;
    let proxy_of = |response: &reqwest::Response| {
        response.headers()["x-pharox-proxy-id"]
            .to_str()
            .unwrap()
            .to_owned()
    };
    // Without a session, round robin spreads the requests.
    let rotating = gateway.client(&format!("pool-{POOL}-selector-round_robin"));
    let mut seen = HashSet::new();
    for _ in 0..6 {
        let response = rotating.get(target.url("/ok")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        seen.insert(proxy_of(&response));
    }
    assert!(seen.len() > 1, "{seen:?}");
    // With one, 20 requests keep one upstream.
    let sticky = gateway.client(&format!(
        "pool-{POOL}-selector-round_robin-session-abc-ttl-600"
    ));
    let mut kept = HashSet::new();
    for _ in 0..20 {
        let response = sticky.get(target.url("/ok")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        kept.insert(proxy_of(&response));
    }
    assert_eq!(kept.len(), 1, "{kept:?}");
    let first = kept.into_iter().next().unwrap();
    // Its upstream dies: the session moves, and stays where it moved.
    let index = gateway
        .proxies
        .iter()
        .position(|id| id.to_string() == first)
        .unwrap();
    drop(upstreams[index].take());
    let mut after = HashSet::new();
    for _ in 0..5 {
        let response = sticky.get(target.url("/ok")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        after.insert(proxy_of(&response));
    }
    assert_eq!(after.len(), 1, "{after:?}");
    assert!(!after.contains(&first));
}

#[tokio::test]
async fn an_upstream_rejecting_its_credentials_is_a_proxy_failure() {
    let strict = HttpProxy::start_with_auth("up", "right-secret")
        .await
        .unwrap();
    let live = HttpProxy::start().await.unwrap();
    let target = TargetServer::start().await.unwrap();
    let gateway = spawn_gateway(
        GatewayConfig::default(),
        vec![
            Upstream::new(format!("http://up:wrong-secret@{}", strict.addr())),
            Upstream::new(format!("http://{}", live.addr())),
        ],
    )
    .await;
    // Absolute-form: the upstream answers 407, the gateway moves on (the
    // request had no body, so it can be sent again).
    let client = gateway.client(&format!("pool-{POOL}-selector-round_robin"));
    for _ in 0..2 {
        let response = client.get(target.url("/ok")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["x-pharox-proxy-id"].to_str().unwrap(),
            gateway.proxies[1].to_string()
        );
    }
    assert!(strict.auth_failures() >= 1);
    // Alone in a pool, it is a 502 that says so; CONNECT too.
    let only = spawn_gateway(
        GatewayConfig::default(),
        vec![Upstream::new(format!(
            "http://up:wrong-secret@{}",
            strict.addr()
        ))],
    )
    .await;
    let response = only
        .client(&format!("pool-{POOL}"))
        .get(target.url("/ok"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let error = response.headers()["x-pharox-error"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(error.contains("proxy_auth"), "{error}");
    assert!(!error.contains("wrong-secret"), "{error}");
    let (_, head) = crate::common::connect(only.addr, target.addr(), &format!("pool-{POOL}")).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    assert!(!head.contains("wrong-secret"), "{head}");
    let settled = async {
        while gateway.active_leases().await > 0 || only.active_leases().await > 0 {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), settled)
        .await
        .unwrap();
    assert!(gateway.proxy(gateway.proxies[0]).await.usage.error_score > 0.0);
    assert!(only.proxy(only.proxies[0]).await.usage.error_score > 0.0);
}

#[tokio::test]
async fn with_a_wait_a_request_gets_the_proxy_another_gives_back() {
    let upstream = HttpProxy::start().await.unwrap();
    let target = TargetServer::start().await.unwrap();
    let config = GatewayConfig {
        wait: Duration::from_secs(20),
        ..GatewayConfig::default()
    };
    let gateway = spawn_gateway(
        config,
        vec![Upstream::new(format!("http://{}", upstream.addr()))],
    )
    .await;
    let (held, head) =
        crate::common::connect(gateway.addr, target.addr(), &format!("pool-{POOL}")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // The only proxy is taken: this request waits instead of a 503 ...
    let client = gateway.client(&format!("pool-{POOL}"));
    let url = target.url("/ok");
    let waiting = tokio::spawn(async move { client.get(url).send().await.unwrap().status() });
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    assert!(!waiting.is_finished());
    // ... and is served once the tunnel gives the proxy back.
    drop(held);
    let status = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_retry_never_leases_a_proxy_that_failed_this_request() {
    // The dead proxy could take five leases at once and comes first: a
    // retry that did not exclude it would get it three times over.
    let dead = closed_port().unwrap();
    let live = HttpProxy::start().await.unwrap();
    let target = TargetServer::start().await.unwrap();
    let gateway = spawn_gateway(
        GatewayConfig::default(),
        vec![
            Upstream::new(format!("http://{dead}")).max_concurrency(5),
            Upstream::new(format!("http://{}", live.addr())),
        ],
    )
    .await;
    let response = gateway
        .client(&format!("pool-{POOL}-selector-first_available"))
        .get(target.url("/ok"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["x-pharox-proxy-id"].to_str().unwrap(),
        gateway.proxies[1].to_string()
    );
    drop(response);
    let settled = async {
        while gateway.active_leases().await > 0 {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), settled)
        .await
        .unwrap();
    assert!(gateway.proxy(gateway.proxies[0]).await.usage.error_score > 0.0);
}

#[tokio::test]
async fn a_request_that_may_have_reached_the_target_is_not_sent_twice() {
    // Upstreams that take the request and never answer.
    let silent = [
        BlackHole::start().await.unwrap(),
        BlackHole::start().await.unwrap(),
        BlackHole::start().await.unwrap(),
    ];
    let target = TargetServer::start().await.unwrap();
    let config = GatewayConfig {
        idle_timeout: Duration::from_millis(300),
        ..GatewayConfig::default()
    };
    let gateway = spawn_gateway(
        config,
        silent
            .iter()
            .map(|s| Upstream::new(format!("http://{}", s.addr())))
            .collect(),
    )
    .await;
    let client = gateway.client(&format!("pool-{POOL}"));
    // A POST is not repeated: one proxy tried.
    let post = client.post(target.url("/ok")).send().await.unwrap();
    assert_eq!(post.status(), 502);
    let error = post.headers()["x-pharox-error"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        error.starts_with("upstream_failed: 1 proxies tried"),
        "{error}"
    );
    // A GET may be: three.
    let get = client.get(target.url("/ok")).send().await.unwrap();
    assert_eq!(get.status(), 502);
    let error = get.headers()["x-pharox-error"].to_str().unwrap().to_owned();
    assert!(
        error.starts_with("upstream_failed: 3 proxies tried"),
        "{error}"
    );
}
