//! Python tools the tests run, each in a virtualenv under the workspace's
//! `target/`, made from the package registry with `pip`, whose path
//! `cargo xtask test` hands to `cargo test` in an environment variable:
//!
//! - [`INTEROP`]: Python pharox 0.11 for the interop test of the PostgreSQL
//!   adapter (`crates/adapter-postgres/tests/python_interop/`), as
//!   `PHAROX_TEST_PYTHON` (the interpreter);
//! - [`SCHEMATHESIS`]: schemathesis for the schema fuzz of the HTTP API
//!   (`crates/server/tests/api/fuzz.rs`), as `PHAROX_TEST_SCHEMATHESIS`
//!   (its executable).
//!
//! A virtualenv is reused while it still imports its pinned packages; a
//! missing or broken one is made again. No Python, no `venv` module, or no
//! registry is an error that says how to get them: the tests that need a
//! virtualenv are never skipped.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A virtualenv some tests need.
#[derive(Debug)]
pub struct Venv {
    /// What it is for, in messages.
    pub what: &'static str,
    /// The variable that names [`Venv::program`] to the tests.
    pub env: &'static str,
    /// Its folder under the target directory.
    dir: &'static str,
    /// What `pip` installs, pinned.
    packages: &'static [&'static str],
    /// Python that exits 0 when the packages import at the pinned versions.
    check: &'static str,
    /// The program the tests run: `None` for the interpreter, else a script
    /// in the virtualenv's `bin/`.
    program: Option<&'static str>,
    /// Who needs it, for the error that says how to get it.
    needed_by: &'static str,
}

/// Python pharox 0.11 at the version the schema follows, its PostgreSQL
/// extra (SQLAlchemy, psycopg) and the greenlet SQLAlchemy needs.
pub const INTEROP: Venv = Venv {
    what: "Python pharox 0.11 for the interop test",
    env: "PHAROX_TEST_PYTHON",
    dir: "python-interop-venv",
    packages: &["pharox[postgres]==0.11.0", "greenlet"],
    check: "import importlib.metadata as m, pharox, sqlalchemy, psycopg, greenlet; \
         from pharox.storage.postgres import PostgresStorage; \
         v = m.version('pharox'); assert v == '0.11.0', 'pharox ' + v",
    program: None,
    needed_by: "the Python interop test of the PostgreSQL adapter runs Python pharox 0.11",
};

/// schemathesis, at a version whose command line and checks the fuzz test
/// was written against.
pub const SCHEMATHESIS: Venv = Venv {
    what: "schemathesis for the schema fuzz of the HTTP API",
    env: "PHAROX_TEST_SCHEMATHESIS",
    dir: "schemathesis-venv",
    packages: &["schemathesis==4.32.5"],
    check: "import importlib.metadata as m, schemathesis; \
         v = m.version('schemathesis'); assert v == '4.32.5', 'schemathesis ' + v",
    program: Some("schemathesis"),
    needed_by: "the schema fuzz of the HTTP API (crates/server/tests/api/fuzz.rs) runs schemathesis",
};

/// Written into the virtualenv once its packages import; a virtualenv
/// without it (an install cut short) or made for other packages is made
/// again.
const MARKER: &str = "pharox-venv-packages.txt";

/// How to get what a virtualenv is made with.
fn how_to_get_python(venv: &Venv) -> String {
    format!(
        "{} from a virtualenv that `cargo xtask test` makes with pip; it is never skipped. \
         It needs `python3` with its `venv` module on PATH (Debian/Ubuntu: \
         `apt-get install python3 python3-venv`; elsewhere python.org's installer) and access to \
         the Python package registry (PyPI, or the index set by PIP_INDEX_URL)",
        venv.needed_by
    )
}

/// Makes (or reuses) the virtualenv and returns the program the tests run.
pub fn prepare(workspace_root: &Path, venv: &Venv) -> Result<PathBuf, String> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|dir| workspace_root.join(dir))
        .unwrap_or_else(|| workspace_root.join("target"));
    prepare_in(venv, &target.join(venv.dir), &base_python())
}

/// As [`prepare`], with the virtualenv in `dir`, made by the Python `base`.
fn prepare_in(venv: &Venv, dir: &Path, base: &OsStr) -> Result<PathBuf, String> {
    let python = interpreter(dir);
    let program = match venv.program {
        Some(script) => bin_dir(dir).join(script),
        None => python.clone(),
    };
    let wanted = venv.packages.join("\n");
    let marker = dir.join(MARKER);
    let how = how_to_get_python(venv);
    if std::fs::read_to_string(&marker).is_ok_and(|m| m == wanted)
        && run(Command::new(&python).args(["-c", venv.check])).is_ok()
        && program.is_file()
    {
        println!("xtask: {}: {} (reused)", venv.what, program.display());
        return Ok(program);
    }

    println!(
        "xtask: making a virtualenv with {} in {}",
        venv.packages.join(" "),
        dir.display()
    );
    run(Command::new(base).args(["--version"])).map_err(|e| {
        format!(
            "no Python 3: {how}.\n  `{} --version`: {e}",
            base.to_string_lossy()
        )
    })?;
    run(Command::new(base).args(["-m", "venv", "--clear"]).arg(dir)).map_err(|e| {
        format!(
            "`{} -m venv` could not make {}: {how}.\n  {e}",
            base.to_string_lossy(),
            dir.display()
        )
    })?;
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--quiet",
        ])
        .args(venv.packages))
    .map_err(|e| {
        format!(
            "pip could not install {} into {}: {how}.\n  {e}",
            venv.packages.join(" "),
            dir.display()
        )
    })?;
    run(Command::new(&python).args(["-c", venv.check])).map_err(|e| {
        format!(
            "the new virtualenv {} does not import {}: {how}.\n  {e}",
            dir.display(),
            venv.packages.join(" ")
        )
    })?;
    if !program.is_file() {
        return Err(format!(
            "the new virtualenv {} has no {}: {how}",
            dir.display(),
            program.display()
        ));
    }
    std::fs::write(&marker, wanted)
        .map_err(|e| format!("cannot write {}: {e}", marker.display()))?;
    println!("xtask: {}: {}", venv.what, program.display());
    Ok(program)
}

/// A virtualenv's folder of programs.
fn bin_dir(venv: &Path) -> PathBuf {
    if cfg!(windows) {
        venv.join("Scripts")
    } else {
        venv.join("bin")
    }
}

/// The interpreter of a virtualenv.
fn interpreter(venv: &Path) -> PathBuf {
    bin_dir(venv).join(if cfg!(windows) {
        "python.exe"
    } else {
        "python"
    })
}

/// The Python that makes the virtualenv: `PHAROX_PYTHON3` if set, else
/// `python3` from PATH.
fn base_python() -> OsString {
    std::env::var_os("PHAROX_PYTHON3")
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| OsString::from(if cfg!(windows) { "python" } else { "python3" }))
}

/// Runs a command to its end; an error says how it failed, with the end of
/// what it printed.
fn run(command: &mut Command) -> Result<Output, String> {
    let output = command.output().map_err(|e| e.to_string())?;
    if output.status.success() {
        return Ok(output);
    }
    let mut said = String::from_utf8_lossy(&output.stderr).into_owned();
    if said.trim().is_empty() {
        said = String::from_utf8_lossy(&output.stdout).into_owned();
    }
    let lines: Vec<&str> = said.trim().lines().collect();
    let tail = lines[lines.len().saturating_sub(6)..].join("\n    ");
    Err(format!("{}, saying:\n    {tail}", output.status))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_python_is_an_error_that_says_how_to_get_it() {
        let venv = std::env::temp_dir().join(format!("pharox-xtask-venv-{}", std::process::id()));
        for spec in [&INTEROP, &SCHEMATHESIS] {
            let err = prepare_in(spec, &venv, OsStr::new("/nonexistent/python3")).unwrap_err();
            assert!(err.contains("no Python 3"), "{err}");
            assert!(err.contains(spec.needed_by), "{err}");
            assert!(
                err.contains("apt-get install python3 python3-venv"),
                "{err}"
            );
            assert!(err.contains("PIP_INDEX_URL"), "{err}");
            assert!(!venv.exists(), "nothing made");
        }
    }
}
