//! Workspace automation, run as `cargo xtask <command>`:
//!
//! - `test`: every test of the workspace plus the storage contract suite on
//!   every adapter, against a real PostgreSQL (see [`postgres`]) and with
//!   Python pharox 0.11 for the interop test and schemathesis for the
//!   server's schema fuzz (see [`python`]), with a summary of which
//!   adapters passed.
//! - `migrate [up|down|status|fresh] [--database-url URL]`: the schema.
//! - `tidy`: checks the workspace layout rules (also run by `cargo test`).

mod postgres;
mod python;
mod tidy;

use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("migrate") => migrate(&args[1..]),
        Some("postgres") => postgres_check(),
        Some("tidy") => tidy::check(&workspace_root()).map(|()| println!("workspace is tidy")),
        _ => Err(USAGE.to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

const USAGE: &str = "usage: cargo xtask test [-- <cargo test args>]
       cargo xtask migrate [up|down|status|fresh] [--database-url URL]
       cargo xtask postgres   (find or start a server, create and drop a test database)
       cargo xtask tidy";

fn workspace_root() -> std::path::PathBuf {
    let manifest_dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or(manifest_dir)
}

/// The adapters whose contract suites run, and the test target of each.
const ADAPTERS: &[(&str, &str)] = &[
    ("memory", "pharox-adapter-memory"),
    ("postgres", "pharox-adapter-postgres"),
];

fn test(extra: &[String]) -> Result<(), String> {
    tidy::check(&workspace_root())?;
    let server = postgres::Server::find_or_start()?;
    println!("xtask: PostgreSQL: {}", server.describe());
    let database = server.create_test_database()?;
    println!("xtask: test database {}", database.name());

    let mut summary = Vec::new();
    let mut failed = false;
    // Python tools: pharox 0.11 for the adapter's interop test, schemathesis
    // for the server's schema fuzz. Without one, its test fails (never
    // skips), and so does this run.
    let mut venvs = Vec::new();
    for venv in [&python::INTEROP, &python::SCHEMATHESIS] {
        match python::prepare(&workspace_root(), venv) {
            Ok(program) => venvs.push((venv.env, program)),
            Err(e) => {
                failed = true;
                summary.push((venv.what.to_owned(), Err(e)));
            }
        }
    }
    let envs: Vec<(&str, &std::path::Path)> = venvs
        .iter()
        .map(|(env, program)| (*env, program.as_path()))
        .collect();
    for (adapter, package) in ADAPTERS {
        let outcome = cargo_test(
            &["-p", package, "--test", "contract"],
            extra,
            database.url(),
            &envs,
        );
        failed |= outcome.is_err();
        summary.push((format!("contract suite on {adapter}"), outcome));
    }
    let outcome = cargo_test(
        &["--workspace", "--all-features"],
        extra,
        database.url(),
        &envs,
    );
    failed |= outcome.is_err();
    summary.push(("workspace tests".to_owned(), outcome));

    drop(database);
    drop(server);
    println!("\nxtask test summary:");
    for (what, outcome) in &summary {
        match outcome {
            Ok(counts) => println!("  ok      {what}: {counts}"),
            Err(e) => println!("  FAILED  {what}: {e}"),
        }
    }
    if failed {
        Err("some tests failed".to_owned())
    } else {
        Ok(())
    }
}

/// Runs `cargo test` with the database URL (and `envs`) in the environment;
/// returns the summed counts from libtest's result lines.
fn cargo_test(
    args: &[&str],
    extra: &[String],
    database_url: &str,
    envs: &[(&str, &std::path::Path)],
) -> Result<String, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    println!("xtask: cargo test {}", args.join(" "));
    let output = Command::new(cargo)
        .arg("test")
        .args(args)
        .args(extra)
        .env("PHAROX_TEST_DATABASE_URL", database_url)
        .envs(envs.iter().copied())
        .current_dir(workspace_root())
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    print!("{stdout}");
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in stdout.lines().filter(|l| l.starts_with("test result:")) {
        let count = |word: &str| {
            line.split(';')
                .find_map(|part| {
                    part.trim()
                        .trim_start_matches("test result: ok.")
                        .trim_start_matches("test result: FAILED.")
                        .trim()
                        .strip_suffix(word)
                })
                .and_then(|n| n.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        passed += count("passed");
        failed += count("failed");
    }
    let counts = format!("{passed} passed, {failed} failed");
    if output.status.success() {
        if passed == 0 {
            return Err("ran no test".to_owned());
        }
        Ok(counts)
    } else {
        Err(counts)
    }
}

/// Finds (or starts) a server the way `test` does, and creates and drops a
/// database on it: a quick check of the test set-up.
fn postgres_check() -> Result<(), String> {
    let server = postgres::Server::find_or_start()?;
    println!("PostgreSQL: {}", server.describe());
    let database = server.create_test_database()?;
    println!("created {}", database.name());
    drop(database);
    println!("dropped it again");
    Ok(())
}

fn migrate(args: &[String]) -> Result<(), String> {
    let mut command = "up".to_owned();
    let mut url = std::env::var("PHAROX_DATABASE_URL").ok();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--database-url" => url = rest.next().cloned(),
            other if !other.starts_with('-') => command = other.to_owned(),
            other => return Err(format!("unknown flag {other}\n{USAGE}")),
        }
    }
    let url = url.ok_or("no database: pass --database-url URL or set PHAROX_DATABASE_URL")?;
    let command = command
        .parse::<pharox_migration::MigrationCommand>()
        .map_err(|e| e.to_string())?;
    // Parsed and connected as `pharox migrate` does, so that the same URL
    // (its `schema`, `sslmode`, ...) means the same in both tools.
    let config = postgres::migrate_config(&url)?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let storage = postgres::connect_storage(&config).await?;
        let outcome = pharox_migration::run(storage.connection(), command).await;
        storage.close().await;
        // The migration's errors are the server's words about the schema:
        // they carry no part of the URL.
        let report = outcome.map_err(|e| e.to_string())?;
        println!("migrate {}: changed {:?}", report.command, report.changed);
        println!("applied: {:?}", report.applied);
        println!("pending: {:?}", report.pending);
        Ok(())
    })
}
