//! `pharox lease acquire --session/--target`, `lease report`, `lease release
//! --outcome` and what `proxy show` says afterwards, against the real
//! PostgreSQL server in a fresh schema.

#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Schema, json};

#[test]
fn outcomes_and_sessions_from_the_command_line() {
    let schema = Schema::create();
    assert_eq!(schema.pharox(&["pool", "create", "p"]).code, Some(0));
    let imported = schema.pharox_stdin(
        &[
            "proxy",
            "import",
            "--pool",
            "p",
            "--max-concurrency",
            "1",
            "--json",
        ],
        "http://127.0.0.1:8001\nhttp://127.0.0.1:8002\n",
    );
    assert_eq!(json(&imported)["added"], 2, "{imported:?}");
    let acquire = |extra: &[&str]| {
        let mut args = vec!["lease", "acquire", "--pool", "p", "--json"];
        args.extend_from_slice(extra);
        json(&schema.pharox(&args))
    };

    // A new session: not moved.
    let first = acquire(&["--session", "checkout-1", "--target", "Shop.Example"]);
    assert_eq!(first["session_moved"], false, "{first}");
    let lease = first["lease_id"].as_str().unwrap().to_owned();
    let proxy = first["proxy_id"].as_str().unwrap().to_owned();
    let plain = acquire(&[]);
    assert!(plain["session_moved"].is_null(), "{plain}");
    let plain_lease = plain["lease_id"].as_str().unwrap().to_owned();
    assert_eq!(
        schema.pharox(&["lease", "release", &plain_lease]).code,
        Some(0)
    );

    // A block on one site: a ban for it, and a first block counts once.
    let report = json(&schema.pharox(&[
        "lease",
        "report",
        &lease,
        "--outcome",
        "blocked",
        "--target",
        "SHOP.example",
        "--http-status",
        "403",
        "--json",
    ]));
    assert_eq!(report["error_score"], 1.0, "{report}");
    assert!(report["cooldown_until"].is_null(), "{report}");
    let shown = json(&schema.pharox(&["proxy", "show", &proxy, "--json"]));
    let bans = shown["target_bans"].as_array().unwrap();
    assert_eq!(bans.len(), 1, "{shown}");
    assert_eq!(bans[0]["target"], "shop.example");
    assert!(bans[0]["until"].is_string(), "{shown}");
    assert_eq!(shown["error_score"], 1.0);

    // Released with a failure: applied once, with the release.
    let released = json(&schema.pharox(&[
        "lease",
        "release",
        &lease,
        "--outcome",
        "proxy-failure",
        "--failure",
        "timeout",
        "--json",
    ]));
    assert_eq!(released["released"], true, "{released}");
    assert_eq!(released["outcome"], "proxy_failure");
    let again = json(&schema.pharox(&[
        "lease",
        "release",
        &lease,
        "--outcome",
        "proxy-failure",
        "--json",
    ]));
    assert_eq!(again["released"], false, "{again}");
    assert!(again["outcome"].is_null(), "not applied: {again}");
    let shown = json(&schema.pharox(&["proxy", "show", &proxy, "--json"]));
    assert_eq!(shown["error_score"], 2.0, "{shown}");

    // The session's proxy is banned for the site: the session moves.
    let moved = acquire(&["--session", "checkout-1", "--target", "shop.example"]);
    assert_eq!(moved["session_moved"], true, "{moved}");
    assert_ne!(moved["proxy_id"], first["proxy_id"]);

    // Three failures reach the default threshold: the pool counts one
    // proxy cooling down.
    let overview = json(&schema.pharox(&["pool", "show", "p", "--json"]));
    assert_eq!(overview["cooling_down"], 0, "{overview}");
    let moved_lease = moved["lease_id"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        let run = schema.pharox(&[
            "lease",
            "report",
            &moved_lease,
            "--outcome",
            "proxy-failure",
        ]);
        assert_eq!(run.code, Some(0), "{run:?}");
    }
    let overview = json(&schema.pharox(&["pool", "show", "p", "--json"]));
    assert_eq!(overview["cooling_down"], 1, "{overview}");
    let text = schema.pharox(&["pool", "show", "p"]);
    assert!(text.stdout.contains("cooling down         1"), "{text:?}");

    // A report on a released lease changes nothing and says why.
    let late = schema.pharox(&["lease", "report", &lease, "--outcome", "success"]);
    assert_eq!(late.code, Some(1), "{late:?}");
    assert!(late.stderr.contains("no longer active"), "{late:?}");

    // Flags that do not fit are refused by name, before anything is done.
    let refused = [
        (
            vec!["lease", "report", &lease, "--outcome", "blocked"],
            "--target",
        ),
        (
            vec![
                "lease",
                "report",
                &lease,
                "--outcome",
                "proxy-failure",
                "--target",
                "a.example",
            ],
            "--target",
        ),
        (
            vec![
                "lease",
                "report",
                &lease,
                "--outcome",
                "success",
                "--http-status",
                "403",
            ],
            "--http-status",
        ),
        (
            vec![
                "lease",
                "report",
                &lease,
                "--outcome",
                "target-error",
                "--http-status",
                "42",
            ],
            "--http-status",
        ),
        (
            vec!["lease", "release", &lease, "--target", "a.example"],
            "--outcome",
        ),
        (
            vec!["lease", "acquire", "--pool", "p", "--session", "two words"],
            "--session",
        ),
        (
            vec![
                "lease",
                "acquire",
                "--pool",
                "p",
                "--target",
                "http://a.example/",
            ],
            "--target",
        ),
    ];
    for (args, flag) in refused {
        let run = schema.pharox(&args);
        assert_eq!(run.code, Some(2), "{args:?}: {run:?}");
        assert!(run.stderr.contains(flag), "{args:?} names {flag}: {run:?}");
    }
}
