//! `pharox migrate status --database-url URL` with URLs that went wrong: a
//! password with an unencoded `/` or `@`/`#` is refused as malformed with
//! none of its pieces in the output, and a refused port fails at once and
//! says "connection refused". Needs no database server: nothing here
//! connects anywhere but a closed port on 127.0.0.1.

#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Only a guard against a hang: every run here ends well before.
const HANG_GUARD: Duration = Duration::from_secs(30);

/// What one run of the binary did.
struct Run {
    code: Option<i32>,
    /// stdout, then stderr.
    output: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit code {:?}\n{}", self.code, self.output)
    }
}

/// Runs `pharox args...` with `env` set and neither `PHAROX_DATABASE_URL`
/// nor `RUST_LOG` inherited; fails the test if it runs past [`HANG_GUARD`].
fn pharox(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pharox"));
    command
        .args(args)
        .env_remove("PHAROX_DATABASE_URL")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let child = command.spawn().expect("running the pharox binary");
    let pid = child.id();
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    let Output {
        status,
        stdout,
        stderr,
    } = match finished.recv_timeout(HANG_GUARD) {
        Ok(output) => output.expect("waiting for the pharox binary"),
        Err(_) => {
            // Ours to end: the child this test started.
            let _ = Command::new("kill").arg(pid.to_string()).status();
            panic!("pharox {args:?} still ran after {HANG_GUARD:?}");
        }
    };
    Run {
        code: status.code(),
        output: format!(
            "--- stdout\n{}--- stderr\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        ),
    }
}

/// Whether `shown` contains `fragment`: as a substring, or as a whole
/// word when the fragment is short enough to occur inside ordinary words
/// ("ss" in "password").
fn leaks(shown: &str, fragment: &str) -> bool {
    if fragment.len() > 3 || !fragment.chars().all(char::is_alphanumeric) {
        shown.contains(fragment)
    } else {
        shown
            .split(|c: char| !c.is_alphanumeric())
            .any(|word| word == fragment)
    }
}

/// A loopback port nobody listens on: bound, read and released again.
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Runs `migrate status` with `url` as the flag and as
/// `PHAROX_DATABASE_URL`, and checks the exit code and that no secret shows.
fn migrate_status(url: &str, code: i32, secrets: &[&str]) -> Vec<Run> {
    let runs = vec![
        pharox(&["migrate", "status", "--database-url", url], &[]),
        pharox(&["migrate", "status"], &[("PHAROX_DATABASE_URL", url)]),
    ];
    for run in &runs {
        assert_eq!(run.code, Some(code), "{url}: {run:?}");
        assert!(!run.output.contains("panicked"), "{url}: {run:?}");
        for secret in secrets {
            assert!(!leaks(&run.output, secret), "{url}: {secret:?} in {run:?}");
        }
    }
    runs
}

#[test]
fn a_password_with_an_unencoded_slash_is_refused_without_a_piece_of_it() {
    // URL parsers read host "postgres", port 4321, path "/S3cr3t@...".
    let url = "postgres://postgres:4321/S3cr3t@127.0.0.1/db";
    for run in migrate_status(url, 2, &["4321", "S3cr3t", "postgres:"]) {
        assert!(run.output.contains("malformed"), "{run:?}");
        assert!(run.output.contains("percent-encoded"), "{run:?}");
    }
}

#[test]
fn a_password_with_an_unencoded_at_and_hash_is_refused_without_a_piece_of_it() {
    // URL parsers read host "ss", the rest as a fragment.
    let url = "postgres://u:p@ss#x@127.0.0.1/db";
    for run in migrate_status(url, 2, &["p@ss", "ss", "ss#x", "#x", "u:p"]) {
        assert!(run.output.contains("malformed"), "{run:?}");
        assert!(run.output.contains("percent-encoded"), "{run:?}");
    }
}

#[test]
fn a_refused_port_fails_at_once_and_says_connection_refused() {
    let port = closed_port();
    // Timeouts far past the hang guard: the refusal must end the run, not
    // a timeout.
    let url = format!(
        "postgres://pharox_user:S3cr3t-pw@127.0.0.1:{port}/db\
         ?connect_timeout=120&acquire_timeout=120"
    );
    for run in migrate_status(&url, 1, &["S3cr3t", "pharox_user"]) {
        assert!(run.output.contains("connection refused"), "{run:?}");
        assert!(run.output.contains(&format!("127.0.0.1:{port}")), "{run:?}");
    }
}
