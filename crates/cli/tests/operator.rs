//! `pharox pool`, `proxy` and `lease` run as an operator runs them, against
//! the real PostgreSQL server, each test in a fresh schema of its own, with
//! a real request through a loopback proxy using the URL `lease acquire`
//! prints.

#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::Duration;

use common::{Schema, assert_no_password, json, run_with};
use pharox::{HealthCheckResult, HealthPolicy, Proxy, ProxyStatus, ProxyStorage};
use pharox_test_proxies::{HttpProxy, TargetServer};

const PASSWORD: &str = "s3cr3t-pw";

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A GET through the HTTP proxy at `proxy_url` (`http://user:pass@host:port`),
/// the way `curl -x` sends it; returns the status line.
fn get_through(proxy_url: &str, target: &str) -> String {
    let rest = proxy_url
        .strip_prefix("http://")
        .expect("an http proxy URL");
    let (userinfo, hostport) = rest.rsplit_once('@').expect("credentials in the URL");
    let mut stream = TcpStream::connect(hostport).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let host = target
        .strip_prefix("http://")
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nProxy-Authorization: Basic {}\r\nConnection: close\r\n\r\n",
        base64(userinfo.as_bytes())
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.lines().next().unwrap_or_default().to_owned()
}

#[test]
fn an_operators_day_pool_lease_curl_show_release_delete() {
    let schema = Schema::create();
    let (proxy_server, target) = schema.runtime.block_on(async {
        (
            HttpProxy::start_with_auth("worker", PASSWORD)
                .await
                .unwrap(),
            TargetServer::start().await.unwrap(),
        )
    });
    let mut runs = Vec::new();

    let created = json(&schema.pharox(&[
        "pool",
        "create",
        "latam",
        "--description",
        "south",
        "--json",
    ]));
    assert_eq!(created["pool"], "latam");
    let pools = json(&schema.pharox(&["pool", "list", "--json"]));
    assert_eq!(pools[0]["name"], "latam");

    // The good proxy comes in through `proxy import` (on stdin, the way a
    // provider's list is piped in); the banned one from the library, since
    // an import only sets active or inactive.
    let imported = schema.pharox_stdin(
        &[
            "proxy",
            "import",
            "--pool",
            "latam",
            "--max-concurrency",
            "2",
            "--json",
        ],
        &format!("http://worker:{PASSWORD}@{}\n", proxy_server.addr()),
    );
    assert_eq!(json(&imported)["added"], 1, "{imported:?}");
    runs.push(imported);
    let storage = schema.storage();
    let pool_id = created["id"].as_str().unwrap().parse().unwrap();
    let listed = json(&schema.pharox(&["proxy", "list", "--pool", "latam", "--json"]));
    let good_id: pharox::ProxyId = listed[0]["id"].as_str().unwrap().parse().unwrap();
    let good = schema.runtime.block_on(storage.get_proxy(good_id)).unwrap();
    assert_eq!(good.max_concurrency, Some(2));
    let banned = Proxy::from_url(pool_id, "http://127.0.0.1:9")
        .unwrap()
        .status(ProxyStatus::Banned)
        .build()
        .unwrap();
    schema.runtime.block_on(async {
        storage
            .add_proxies(std::slice::from_ref(&banned))
            .await
            .unwrap();
        let result = HealthCheckResult {
            proxy_id: good.id,
            protocol: good.protocol,
            status: ProxyStatus::Active,
            reachable: true,
            latency_ms: Some(12.0),
            attempts: 1,
            http_status: Some(204),
            checked_at: pharox::domain::now_micros(),
            error: None,
        };
        storage
            .apply_health_result(&result, &HealthPolicy::new(3).unwrap())
            .await
            .unwrap();
    });

    // Lease with the URL only, and use it like curl -x does.
    let url_only = schema.pharox(&["lease", "acquire", "--pool", "latam", "--url-only"]);
    assert_eq!(url_only.code, Some(0), "{url_only:?}");
    let leased_url = url_only.stdout.trim().to_owned();
    assert_eq!(
        leased_url,
        good.connect_url(),
        "the URL with its credentials"
    );
    let status = get_through(&leased_url, &target.url("/ok"));
    assert!(
        status.contains(" 200"),
        "a request through the leased proxy: {status}"
    );

    let acquired = json(&schema.pharox(&[
        "lease",
        "acquire",
        "--pool",
        "latam",
        "--consumer",
        "w2",
        "--ttl",
        "60",
        "--json",
    ]));
    for key in ["lease_id", "proxy_id", "proxy_url", "expires_at"] {
        assert!(
            acquired.get(key).is_some(),
            "acquire --json lacks {key}: {acquired}"
        );
    }
    assert_eq!(acquired["proxy_id"], good.id.to_string());
    let lease_id = acquired["lease_id"].as_str().unwrap().to_owned();

    let overview = json(&schema.pharox(&["pool", "show", "latam", "--json"]));
    for key in [
        "pool",
        "proxies",
        "by_status",
        "leased_proxies",
        "active_leases",
        "capacity",
        "latency_ms",
        "checked_at",
        "expired_unreclaimed",
    ] {
        assert!(
            overview.get(key).is_some(),
            "pool show --json lacks {key}: {overview}"
        );
    }
    assert_eq!(overview["proxies"], 2);
    assert_eq!(overview["by_status"]["active"], 1);
    assert_eq!(overview["by_status"]["banned"], 1);
    assert_eq!(overview["leased_proxies"], 1);
    assert_eq!(overview["active_leases"], 2);
    assert_eq!(overview["capacity"], 2);
    assert_eq!(overview["latency_ms"]["p50"], 12.0);
    assert!(overview["checked_at"]["oldest"].is_string(), "{overview}");
    let table = schema.pharox(&["pool", "show", "latam"]);
    assert!(table.stdout.contains("capacity"), "{table:?}");
    runs.push(table);

    // The pool is full: no proxy available, with the counts.
    let full = schema.pharox(&["lease", "acquire", "--pool", "latam"]);
    assert_eq!(full.code, Some(1), "{full:?}");
    assert!(
        full.stderr.contains("no proxy available in pool latam"),
        "{full:?}"
    );
    assert!(full.stderr.contains("2 active leases"), "{full:?}");
    runs.push(full);
    let unknown = schema.pharox(&["lease", "acquire", "--pool", "latm"]);
    assert_eq!(unknown.code, Some(1), "{unknown:?}");
    assert!(
        unknown
            .stderr
            .contains("pool latm does not exist; did you mean latam?"),
        "{unknown:?}"
    );
    runs.push(unknown);

    // Renew, list, release.
    let renewed = json(&schema.pharox(&["lease", "renew", &lease_id, "--ttl", "600", "--json"]));
    assert!(renewed["expires_at"].as_str().unwrap() > acquired["expires_at"].as_str().unwrap());
    let listed = json(&schema.pharox(&[
        "lease",
        "list",
        "--pool",
        "latam",
        "--consumer",
        "w2",
        "--json",
    ]));
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    let released = json(&schema.pharox(&["lease", "release", &lease_id, "--json"]));
    assert_eq!(released["released"], true);
    let again = json(&schema.pharox(&["lease", "release", &lease_id, "--json"]));
    assert_eq!(again["released"], false);
    assert_eq!(
        json(&schema.pharox(&["lease", "cleanup", "--json"]))["reclaimed"],
        0
    );

    // Proxies: list, show, set-status; no password anywhere.
    let proxies = schema.pharox(&["proxy", "list", "--pool", "latam", "--status", "active"]);
    assert_eq!(proxies.code, Some(0), "{proxies:?}");
    assert_eq!(
        proxies.stdout.lines().count(),
        2,
        "header and one proxy: {proxies:?}"
    );
    runs.push(proxies);
    let shown = json(&schema.pharox(&["proxy", "show", &good.id.to_string(), "--json"]));
    assert_eq!(shown["current_leases"], 1);
    assert_eq!(
        shown["url"],
        format!("http://worker@{}", proxy_server.addr()),
        "the user name and no password"
    );
    runs.push(schema.pharox(&["proxy", "show", &good.id.to_string()]));
    let set = json(&schema.pharox(&[
        "proxy",
        "set-status",
        &good.id.to_string(),
        "banned",
        "--json",
    ]));
    assert_eq!(set["status"], "banned");
    let bad_status = schema.pharox(&["proxy", "set-status", &good.id.to_string(), "slow"]);
    assert_eq!(bad_status.code, Some(2), "{bad_status:?}");
    assert!(
        bad_status.stderr.contains("invalid STATUS"),
        "{bad_status:?}"
    );
    let bad_id = schema.pharox(&["proxy", "show", "not-a-uuid"]);
    assert_eq!(bad_id.code, Some(2), "{bad_id:?}");
    assert!(bad_id.stderr.contains("invalid PROXY_ID"), "{bad_id:?}");
    let bad_filter = schema.pharox(&["proxy", "list", "--pool", "latam", "--filter", "{nope"]);
    assert_eq!(bad_filter.code, Some(2), "{bad_filter:?}");
    assert!(
        bad_filter.stderr.contains("invalid --filter"),
        "{bad_filter:?}"
    );
    runs.push(schema.pharox(&["proxy", "remove", &banned.id.to_string()]));
    assert_eq!(runs.last().unwrap().code, Some(0), "{:?}", runs.last());

    // Delete refuses without a terminal or --yes.
    let refused = schema.pharox(&["pool", "delete", "latam"]);
    assert_eq!(refused.code, Some(2), "{refused:?}");
    assert!(refused.stderr.contains("--yes"), "{refused:?}");
    let deleted = schema.pharox(&["pool", "delete", "latam", "--yes"]);
    assert_eq!(deleted.code, Some(0), "{deleted:?}");
    runs.extend([refused, deleted]);

    assert_no_password(PASSWORD, &runs);
}

#[test]
fn a_closed_stdout_ends_pool_list_quietly() {
    let schema = Schema::create();
    assert_eq!(schema.pharox(&["pool", "create", "p"]).code, Some(0));
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let run = run_with(
        &["pool", "list", "--database-url", &schema.url],
        Stdio::from(writer),
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stderr.is_empty(), "{run:?}");
}

#[test]
fn proxy_remove_with_one_unknown_id_removes_none() {
    let schema = Schema::create();
    assert_eq!(schema.pharox(&["pool", "create", "p"]).code, Some(0));
    let imported = schema.pharox_stdin(
        &["proxy", "import", "--pool", "p", "--json"],
        "http://127.0.0.1:8001\nhttp://127.0.0.1:8002\n",
    );
    assert_eq!(json(&imported)["added"], 2, "{imported:?}");
    let listed = json(&schema.pharox(&["proxy", "list", "--pool", "p", "--json"]));
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    let unknown = pharox::ProxyId::new().to_string();
    let run = schema.pharox(&["proxy", "remove", ids[0], &unknown, ids[1]]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("not found"), "{run:?}");
    let after = json(&schema.pharox(&["proxy", "list", "--pool", "p", "--json"]));
    assert_eq!(
        after.as_array().unwrap().len(),
        2,
        "nothing removed: {after}"
    );
    let removed = json(&schema.pharox(&["proxy", "remove", ids[0], ids[1], "--json"]));
    assert_eq!(removed["removed"].as_array().unwrap().len(), 2);
}
