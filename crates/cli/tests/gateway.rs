//! `pharox gateway` and `pharox serve --gateway-listen`: the built binary on
//! ephemeral loopback ports, in front of real proxies from
//! `pharox-test-proxies`, driven by curl and by raw proxy requests; on
//! PostgreSQL, two gateways sharing one database.

#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use pharox_migration::sea_orm_migration::sea_orm::sqlx::{self, AssertSqlSafe};
use pharox_test_proxies::{HttpProxy, Socks4Server, Socks5Server, TargetServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;

use common::{ServeProcess, gateway_command, spawn_announcing};

const KEY: &str = "gateway-key-for-the-cli-test";
const ADMIN_KEY: &str = "admin-key-for-the-cli-test";
const LISTENING: &str = "pharox gateway: listening on http://";
const SOCKS: &str = "pharox gateway: socks5 on socks5://";
const METRICS: &str = "pharox gateway: metrics on http://";

/// A proxy list file (`.txt`) naming `proxies` (host:port per line).
fn proxy_list(proxies: &[SocketAddr]) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new()
        .prefix("pharox-gateway-")
        .suffix(".txt")
        .tempfile()
        .unwrap();
    for proxy in proxies {
        writeln!(file, "{proxy}").unwrap();
    }
    file.flush().unwrap();
    file
}

/// Runs curl with `args`; no proxy from the environment applies.
fn curl(args: &[&str]) -> Output {
    let curl = ["/usr/bin/curl", "/usr/local/bin/curl"]
        .into_iter()
        .find(|path| std::path::Path::new(path).exists())
        .expect("these tests drive the gateway with curl: install curl (/usr/bin/curl)");
    Command::new(curl)
        .args(["--silent", "--show-error", "--max-time", "20"])
        .args(args)
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// curl in a blocking task, so the test proxies on this runtime keep serving.
async fn curl_async(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(&args)
    })
    .await
    .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The value of header `name` in a head printed by `curl -D -`: the last
/// one, so a CONNECT's header is found when the target's has none.
fn header<'a>(printed: &'a str, name: &str) -> Option<&'a str> {
    printed
        .lines()
        .rev()
        .filter_map(|line| line.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

/// A client that reaches loopback directly (no proxy from the environment).
fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// `Proxy-Authorization: Basic` for `user` and `key`.
fn basic(user: &str, key: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{key}")))
}

/// Sends `head` to the proxy at `gateway` and reads the response head:
/// its status and the open stream.
async fn proxy_request(gateway: &str, head: &str) -> (u16, String, TcpStream) {
    let mut stream = TcpStream::connect(gateway).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        let read = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut byte))
            .await
            .expect("the gateway answered within 20 s")
            .unwrap();
        assert!(
            read == 1,
            "the gateway closed before a whole head: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.push(byte[0]);
    }
    let head = String::from_utf8(got).unwrap();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a response head: {head:?}"));
    (status, head, stream)
}

/// `CONNECT target` through the gateway at `gateway` with the pool's
/// username and `key`: the status and the stream (a tunnel when 200).
async fn connect_tunnel(gateway: &str, target: SocketAddr, key: &str) -> (u16, String, TcpStream) {
    let head = format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {}\r\n\r\n",
        basic("pool-web", key)
    );
    proxy_request(gateway, &head).await
}

/// A gateway process with `PHAROX_API_KEYS` set to `keys` (none when
/// empty), once it announced `prefixes`.
fn start_gateway(args: &[&str], keys: &str, prefixes: &[&str]) -> (ServeProcess, Vec<String>) {
    let mut command = gateway_command(args);
    if !keys.is_empty() {
        command.env("PHAROX_API_KEYS", keys);
    }
    spawn_announcing(command, prefixes)
}

/// Sends SIGTERM and waits (at most `limit`) for the exit: its code and
/// how long it took.
fn terminate_within(process: &mut ServeProcess, limit: Duration) -> (Option<i32>, Duration) {
    let pid = process.child.id().to_string();
    let sent = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    loop {
        if let Some(status) = process.child.try_wait().unwrap() {
            return (status.code(), sent.elapsed());
        }
        assert!(
            sent.elapsed() < limit,
            "still running {limit:?} after SIGTERM; it said:\n{}",
            process.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_goes_through_the_gateway_in_memory_over_http_connect_and_socks5() {
    let upstream = HttpProxy::start().await.unwrap();
    let target = TargetServer::start().await.unwrap();
    let list = proxy_list(&[upstream.addr()]);
    let (mut gateway, found) = start_gateway(
        &[
            "--pool",
            "web",
            "--proxies",
            list.path().to_str().unwrap(),
            "--protocol",
            "http",
            "--socks-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        &format!("lease:{KEY}"),
        &[LISTENING, SOCKS, METRICS],
    );
    let (http, socks, metrics) = (&found[0], &found[1], &found[2]);
    assert!(metrics.ends_with("/metrics"), "{metrics}");
    let proxy = format!("http://pool-web:{KEY}@{http}");

    // An absolute-form request, forwarded through the upstream.
    let out = curl_async(vec![
        "-D".into(),
        "-".into(),
        "-x".into(),
        proxy.clone(),
        target.url("/ok"),
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(printed.starts_with("HTTP/1.1 200"), "{}", text(&out));
    assert!(printed.ends_with("\r\n\r\nok"), "{}", text(&out));
    let id = header(&printed, "x-pharox-proxy-id").unwrap_or_else(|| panic!("{}", text(&out)));
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    assert_eq!(upstream.forwarded_requests(), 1);

    // A CONNECT tunnel (curl -p), the proxy id on its 200.
    let out = curl_async(vec![
        "-p".into(),
        "-D".into(),
        "-".into(),
        "-x".into(),
        proxy.clone(),
        target.url("/ok"),
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(printed.starts_with("HTTP/1.1 200"), "{}", text(&out));
    assert!(printed.ends_with("ok"), "{}", text(&out));
    assert_eq!(header(&printed, "x-pharox-proxy-id"), Some(id), "{printed}");
    assert_eq!(upstream.tunnels(), 1);

    // SOCKS5 with the host name resolved by the proxies (socks5h), both
    // spellings of it.
    for args in [
        vec![
            "-x".to_owned(),
            format!("socks5h://pool-web:{KEY}@{socks}"),
            target.localhost_url("/ok"),
        ],
        vec![
            "--socks5-hostname".to_owned(),
            socks.clone(),
            "--proxy-user".to_owned(),
            format!("pool-web:{KEY}"),
            target.url("/ok"),
        ],
    ] {
        let out = curl_async(args).await;
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "ok", "{}", text(&out));
    }
    assert_eq!(upstream.tunnels(), 3);

    // A wrong key: 407, and nothing reaches the upstream.
    let out = curl_async(vec![
        "-D".into(),
        "-".into(),
        "-x".into(),
        format!("http://pool-web:not-the-key-0123456789@{http}"),
        target.url("/ok"),
    ])
    .await;
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(printed.starts_with("HTTP/1.1 407"), "{}", text(&out));
    assert_eq!(upstream.forwarded_requests(), 1);
    assert_eq!(target.request_count(), 4);

    // The metrics listener: the gateway's series and the lease metrics.
    let client = http_client();
    let scraped = client
        .get(format!("http://{metrics}"))
        .send()
        .await
        .unwrap();
    assert_eq!(scraped.status(), 200);
    assert!(
        scraped.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let body = scraped.text().await.unwrap();
    for wanted in ["pharox_gateway_requests_total{", "pharox_acquire_total{"] {
        assert!(
            body.lines()
                .any(|l| l.starts_with(wanted) && l.contains("pool=\"web\"")),
            "{wanted} with pool=\"web\" in\n{body}"
        );
    }
    let other = metrics.trim_end_matches("/metrics");
    let missing = client
        .get(format!("http://{other}/other"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    let (code, _) = terminate_within(&mut gateway, Duration::from_secs(15));
    assert_eq!(code, Some(0), "{}", gateway.log());
}

/// A proxy list file (`.txt`) of proxy URLs, one per line.
fn url_list(urls: &[String]) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new()
        .prefix("pharox-gateway-")
        .suffix(".txt")
        .tempfile()
        .unwrap();
    for url in urls {
        writeln!(file, "{url}").unwrap();
    }
    file.flush().unwrap();
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_reaches_the_target_through_every_upstream_kind() {
    let target = TargetServer::start().await.unwrap();
    let http = HttpProxy::start().await.unwrap();
    let http_auth = HttpProxy::start_with_auth("up", "up-secret").await.unwrap();
    let socks5 = Socks5Server::start().await.unwrap();
    let socks5_auth = Socks5Server::start_with_auth("up", "up-secret")
        .await
        .unwrap();
    let socks4 = Socks4Server::start().await.unwrap();
    let kinds = [
        ("http", format!("http://{}", http.addr())),
        (
            "http with credentials",
            format!("http://up:up-secret@{}", http_auth.addr()),
        ),
        ("socks5", format!("socks5://{}", socks5.addr())),
        (
            "socks5 with credentials",
            format!("socks5://up:up-secret@{}", socks5_auth.addr()),
        ),
        ("socks4a", format!("socks4://{}", socks4.addr())),
    ];
    for (kind, url) in kinds {
        let list = url_list(&[url]);
        let (mut gateway, found) = start_gateway(
            &["--pool", "web", "--proxies", list.path().to_str().unwrap()],
            &format!("lease:{KEY}"),
            &[LISTENING],
        );
        let proxy = format!("http://pool-web:{KEY}@{}", found[0]);
        // Absolute-form, then a CONNECT tunnel (curl -p), by host name so
        // the SOCKS upstreams resolve it (remote DNS).
        for tunnel in [false, true] {
            let mut args = vec![
                "-D".to_owned(),
                "-".to_owned(),
                "-x".to_owned(),
                proxy.clone(),
            ];
            if tunnel {
                args.insert(0, "-p".to_owned());
            }
            args.push(target.localhost_url("/ok"));
            let out = curl_async(args).await;
            assert!(
                out.status.success(),
                "{kind}, tunnel {tunnel}: {}",
                text(&out)
            );
            let printed = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                printed.starts_with("HTTP/1.1 200"),
                "{kind}: {}",
                text(&out)
            );
            assert!(printed.ends_with("ok"), "{kind}: {}", text(&out));
            assert!(
                header(&printed, "x-pharox-lease-id").is_some(),
                "{kind}: {printed}"
            );
        }
        let (code, _) = terminate_within(&mut gateway, Duration::from_secs(15));
        assert_eq!(code, Some(0), "{kind}: {}", gateway.log());
    }
    // Each upstream carried both: forwarded or tunnelled by the HTTP ones,
    // tunnelled (by name) by the SOCKS ones.
    for proxy in [&http, &http_auth] {
        assert_eq!(proxy.forwarded_requests(), 1);
        assert_eq!(proxy.tunnels(), 1);
    }
    assert_eq!(http_auth.auth_failures(), 0);
    for targets in [socks5.targets(), socks5_auth.targets(), socks4.targets()] {
        assert_eq!(targets.len(), 2, "{targets:?}");
        assert!(targets.iter().all(|t| t.is_domain()), "{targets:?}");
    }
    assert_eq!(target.request_count(), 10);
}

#[test]
fn bad_gateway_flags_are_refused_naming_the_flag() {
    let refused = |args: &[&str], keys: Option<&str>| {
        let mut command = gateway_command(args);
        command.stdout(Stdio::piped());
        if let Some(keys) = keys {
            command.env("PHAROX_API_KEYS", keys);
        }
        let out = command.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let keys = format!("lease:{KEY}");
    let k = Some(keys.as_str());
    for (args, keys, flag) in [
        (
            vec!["--no-auth", "--listen", "0.0.0.0:0"],
            None,
            "--no-auth",
        ),
        (
            vec!["--no-auth", "--socks-listen", "0.0.0.0:0"],
            None,
            "--no-auth",
        ),
        (vec!["--pool", "web"], None, "--api-keys-file"),
        (vec!["--max-attempts", "0"], k, "--max-attempts"),
        (vec!["--lease-ttl", "1"], k, "--lease-ttl"),
        (vec!["--header-timeout", "0"], k, "--header-timeout"),
        (vec!["--shutdown-timeout=-1"], k, "--shutdown-timeout"),
        (
            vec!["--max-client-connections", "0"],
            k,
            "--max-client-connections",
        ),
        (vec!["--blocked-status", "700"], k, "--blocked-status"),
        (vec![], Some("lease:short"), "--api-keys-file"),
    ] {
        let (code, stderr) = refused(&args, keys);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("invalid {flag}:")),
            "{args:?} names {flag}: {stderr}"
        );
        assert!(!stderr.contains("short"), "{stderr}");
    }
    // --no-auth on loopback needs no keys.
    let (mut open, found) = start_gateway(&["--no-auth"], "", &[LISTENING]);
    assert!(found[0].starts_with("127.0.0.1:"), "{found:?}");
    let (code, _) = terminate_within(&mut open, Duration::from_secs(15));
    assert_eq!(code, Some(0), "{}", open.log());
}

/// `SELECT proxy_id, count(*)` of the active leases in `schema`.
fn active_leases_by_proxy(schema: &common::Schema) -> Vec<(uuid::Uuid, i64)> {
    let sql = format!(
        "SELECT proxy_id, count(*) FROM \"{}\".lease WHERE status = 'active' \
         GROUP BY proxy_id ORDER BY proxy_id",
        schema.name
    );
    schema
        .runtime
        .block_on(sqlx::query_as(AssertSqlSafe(sql)).fetch_all(schema.admin.pg_pool()))
        .unwrap()
}

/// The leases each proxy of `schema` counts as current, and their capacity.
fn current_leases(schema: &common::Schema) -> Vec<(i32, Option<i32>)> {
    let sql = format!(
        "SELECT current_leases, max_concurrency FROM \"{}\".proxy ORDER BY id",
        schema.name
    );
    schema
        .runtime
        .block_on(sqlx::query_as(AssertSqlSafe(sql)).fetch_all(schema.admin.pg_pool()))
        .unwrap()
}

/// Waits (at most 10 s) until `schema` has `expected` active leases.
fn wait_for_active(schema: &common::Schema, expected: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let active: i64 = active_leases_by_proxy(schema).iter().map(|(_, n)| n).sum();
        if active == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{active} active leases, not {expected}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A pool `web` of `proxies`, each of max concurrency `max`, in `schema`,
/// and a stored lease key for it (`pharox apikey create`).
fn seed_postgres(schema: &common::Schema, proxies: &[SocketAddr], max: u32) -> String {
    let created = schema.pharox(&["pool", "create", "web"]);
    assert_eq!(created.code, Some(0), "{created:?}");
    let list: String = proxies.iter().map(|p| format!("{p}\n")).collect();
    let imported = schema.pharox_stdin(
        &[
            "proxy",
            "import",
            "--pool",
            "web",
            "--protocol",
            "http",
            "--max-concurrency",
            &max.to_string(),
        ],
        &list,
    );
    assert_eq!(imported.code, Some(0), "{imported:?}");
    let key = common::json(&schema.pharox(&[
        "apikey", "create", "--scope", "lease", "--name", "gateway", "--json",
    ]));
    key["key"].as_str().unwrap().to_owned()
}

#[test]
fn two_gateways_on_one_database_never_put_more_tunnels_on_a_proxy_than_its_max_concurrency() {
    let schema = common::Schema::create();
    let (upstreams, target) = schema.runtime.block_on(async {
        let mut upstreams = Vec::new();
        for _ in 0..3 {
            upstreams.push(HttpProxy::start().await.unwrap());
        }
        (upstreams, TargetServer::start().await.unwrap())
    });
    let addrs: Vec<SocketAddr> = upstreams.iter().map(HttpProxy::addr).collect();
    let key = seed_postgres(&schema, &addrs, 2);
    let capacity = 3 * 2;
    // The stored key only: no static key is given.
    let gateway_args = ["--database-url", &schema.url, "--max-connections", "4"];
    let (mut first, a) = start_gateway(&gateway_args, "", &[LISTENING]);
    let (mut second, b) = start_gateway(&gateway_args, "", &[LISTENING]);
    let gateways = [a[0].clone(), b[0].clone()];

    // Twelve tunnels at once, six through each gateway, all held open.
    let opened = schema.runtime.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..12 {
            let gateway = gateways[i % 2].clone();
            let key = key.clone();
            let target = target.addr();
            tasks.push(tokio::spawn(async move {
                connect_tunnel(&gateway, target, &key).await
            }));
        }
        let mut opened = Vec::new();
        for task in tasks {
            opened.push(task.await.unwrap());
        }
        opened
    });
    let statuses: Vec<u16> = opened.iter().map(|(status, _, _)| *status).collect();
    let tunnels = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(tunnels, capacity, "{statuses:?}");
    for (status, head, _) in &opened {
        assert!(
            *status == 200 || *status == 503,
            "a refusal other than 503 (no proxy free): {head}"
        );
    }

    // While they are open: no proxy over its capacity, in the leases and
    // in the proxies' counts, and every upstream tunnel is one of them.
    let by_proxy = active_leases_by_proxy(&schema);
    assert_eq!(by_proxy.len(), 3, "{by_proxy:?}");
    assert!(by_proxy.iter().all(|(_, n)| *n <= 2), "{by_proxy:?}");
    assert_eq!(by_proxy.iter().map(|(_, n)| n).sum::<i64>(), 6);
    let counted = current_leases(&schema);
    assert!(
        counted.iter().all(|(n, max)| *max == Some(2) && *n <= 2),
        "{counted:?}"
    );
    let upstream_tunnels: Vec<usize> = upstreams.iter().map(HttpProxy::tunnels).collect();
    assert!(
        upstream_tunnels.iter().all(|n| *n <= 2),
        "{upstream_tunnels:?}"
    );
    assert_eq!(upstream_tunnels.iter().sum::<usize>(), capacity);
    // One more through either gateway finds no proxy free.
    for gateway in &gateways {
        let (status, head, _) =
            schema
                .runtime
                .block_on(connect_tunnel(gateway, target.addr(), &key));
        assert_eq!(status, 503, "{head}");
    }

    // Closing the tunnels releases their leases.
    drop(opened);
    wait_for_active(&schema, 0);
    assert!(current_leases(&schema).iter().all(|(n, _)| *n == 0));
    for gateway in [&mut first, &mut second] {
        let (code, _) = terminate_within(gateway, Duration::from_secs(15));
        assert_eq!(code, Some(0), "{}", gateway.log());
    }
}

#[test]
fn sigterm_finishes_requests_closes_tunnels_and_leaves_no_lease_behind() {
    let schema = common::Schema::create();
    let (upstreams, target) = schema.runtime.block_on(async {
        let mut upstreams = Vec::new();
        for _ in 0..3 {
            upstreams.push(HttpProxy::start().await.unwrap());
        }
        (upstreams, TargetServer::start().await.unwrap())
    });
    let addrs: Vec<SocketAddr> = upstreams.iter().map(HttpProxy::addr).collect();
    let key = seed_postgres(&schema, &addrs, 1);
    let (mut gateway, found) = start_gateway(
        &[
            "--database-url",
            &schema.url,
            "--max-connections",
            "4",
            "--shutdown-timeout",
            "10",
        ],
        "",
        &[LISTENING],
    );
    let addr = found[0].clone();

    // Two tunnels held open and a forwarded request the target answers
    // after 1.5 s: three leases.
    let mut tunnels = Vec::new();
    for _ in 0..2 {
        let (status, head, stream) =
            schema
                .runtime
                .block_on(connect_tunnel(&addr, target.addr(), &key));
        assert_eq!(status, 200, "{head}");
        tunnels.push(stream);
    }
    let slow = target.url("/slow?ms=1500");
    let head = format!(
        "GET {slow} HTTP/1.1\r\nHost: {}\r\nProxy-Authorization: {}\r\nConnection: close\r\n\r\n",
        target.addr(),
        basic("pool-web", &key)
    );
    let request = {
        let addr = addr.clone();
        schema.runtime.spawn(async move {
            let (status, head, mut stream) = proxy_request(&addr, &head).await;
            let mut body = String::new();
            let _ = stream.read_to_string(&mut body).await;
            (status, head, body)
        })
    };
    wait_for_active(&schema, 3);

    let (code, took) = terminate_within(&mut gateway, Duration::from_secs(10));
    assert_eq!(code, Some(0), "{}", gateway.log());
    // The request in flight was finished, not cut off...
    let (status, head, body) = schema.runtime.block_on(request).unwrap();
    assert_eq!(status, 200, "{head}");
    assert_eq!(body, "slow");
    assert!(
        !gateway.log().contains("shutdown timeout reached"),
        "took {took:?}: {}",
        gateway.log()
    );
    // ...the tunnels were closed...
    schema.runtime.block_on(async {
        for mut tunnel in tunnels {
            let mut rest = Vec::new();
            // Closed: the end of the stream (or a reset), with nothing in it.
            let _ = tokio::time::timeout(Duration::from_secs(5), tunnel.read_to_end(&mut rest))
                .await
                .expect("the gateway closed its tunnels");
            assert!(rest.is_empty(), "{rest:?}");
        }
    });
    // ...and every lease was released before the exit.
    assert!(active_leases_by_proxy(&schema).is_empty());
    assert!(current_leases(&schema).iter().all(|(n, _)| *n == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_gateway_listen_shares_the_manager_keys_and_metrics() {
    let upstream = HttpProxy::start().await.unwrap();
    let target = TargetServer::start().await.unwrap();
    let list = proxy_list(&[upstream.addr()]);
    let mut command = common::serve_command(&[
        "--pool",
        "web",
        "--proxies",
        list.path().to_str().unwrap(),
        "--protocol",
        "http",
        "--gateway-listen",
        "127.0.0.1:0",
        "--gateway-socks-listen",
        "127.0.0.1:0",
        "--max-client-connections",
        "64",
    ]);
    command.env("PHAROX_API_KEYS", format!("lease:{KEY},admin:{ADMIN_KEY}"));
    let (mut server, found) = spawn_announcing(
        command,
        &[
            "pharox serve: listening on http://",
            "pharox serve: gateway listening on http://",
            "pharox serve: gateway socks5 on socks5://",
        ],
    );
    let (api, gateway, socks) = (&found[0], &found[1], &found[2]);

    // The server's key works as the gateway's password.
    let out = curl_async(vec![
        "-D".into(),
        "-".into(),
        "-x".into(),
        format!("http://pool-web:{KEY}@{gateway}"),
        target.url("/ok"),
    ])
    .await;
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(printed.starts_with("HTTP/1.1 200"), "{}", text(&out));
    assert!(printed.ends_with("ok"), "{}", text(&out));
    assert!(header(&printed, "x-pharox-proxy-id").is_some(), "{printed}");
    let out = curl_async(vec![
        "-x".into(),
        format!("socks5h://pool-web:{KEY}@{socks}"),
        target.url("/ok"),
    ])
    .await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok", "{}", text(&out));

    // The API's /metrics shows the gateway's series and the leases it took
    // (through the server's manager), and the lease API sees the released
    // lease in its pool.
    let client = http_client();
    let metrics = client
        .get(format!("http://{api}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for wanted in [
        "pharox_gateway_requests_total{",
        "pharox_gateway_tunnels_total{",
        "pharox_acquire_total{",
    ] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with(wanted) && l.contains("pool=\"web\"")),
            "{wanted} with pool=\"web\" in\n{metrics}"
        );
    }
    let overview: serde_json::Value = client
        .get(format!("http://{api}/v1/pools/web"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(overview["proxies"], 1);
    assert_eq!(overview["active_leases"], 0, "{overview}");

    let (code, _) = terminate_within(&mut server, Duration::from_secs(15));
    assert_eq!(code, Some(0), "{}", server.log());
}

#[test]
fn serve_refuses_gateway_no_auth_off_loopback() {
    let mut command = common::serve_command(&["--gateway-listen", "0.0.0.0:0", "--no-auth"]);
    command.env("PHAROX_API_KEYS", format!("lease:{KEY}"));
    let out = command.output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid --no-auth:"), "{stderr}");
}
