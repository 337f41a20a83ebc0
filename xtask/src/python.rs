//! Python pharox 0.11 for the interop test of the PostgreSQL adapter
//! (`crates/adapter-postgres/tests/python_interop.rs`): a virtualenv under
//! the workspace's `target/`, made from the package registry with `pip`,
//! whose interpreter `cargo xtask test` hands to `cargo test` as
//! [`ENV_PYTHON`].
//!
//! The virtualenv is reused while it still imports the pinned packages; a
//! missing or broken one is made again. No Python, no `venv` module, or no
//! registry is an error that says how to get them: the interop test is
//! never skipped.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The variable naming the interpreter the interop test runs.
pub const ENV_PYTHON: &str = "PHAROX_TEST_PYTHON";

/// What the virtualenv holds: the Python reference at the version the
/// schema follows, its PostgreSQL extra (SQLAlchemy, psycopg) and the
/// greenlet SQLAlchemy needs.
const PACKAGES: &[&str] = &["pharox[postgres]==0.11.0", "greenlet"];

/// The virtualenv's folder under the target directory.
const VENV_DIR: &str = "python-interop-venv";

/// Written into the virtualenv once its packages import; a virtualenv
/// without it (an install cut short) or made for other packages is made
/// again.
const MARKER: &str = "pharox-interop-packages.txt";

/// Checks that the interpreter has what the test imports, at the version
/// pinned above.
const CHECK: &str = "import importlib.metadata as m, pharox, sqlalchemy, psycopg, greenlet; \
     from pharox.storage.postgres import PostgresStorage; \
     v = m.version('pharox'); assert v == '0.11.0', 'pharox ' + v";

const HOW_TO_GET_PYTHON: &str = "the Python interop test of the PostgreSQL adapter runs Python \
     pharox 0.11 from a virtualenv that `cargo xtask test` makes with pip; it is never skipped. \
     It needs `python3` with its `venv` module on PATH (Debian/Ubuntu: \
     `apt-get install python3 python3-venv`; elsewhere python.org's installer) and access to \
     the Python package registry (PyPI, or the index set by PIP_INDEX_URL)";

/// Makes (or reuses) the virtualenv and returns its interpreter.
pub fn prepare(workspace_root: &Path) -> Result<PathBuf, String> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|dir| workspace_root.join(dir))
        .unwrap_or_else(|| workspace_root.join("target"));
    prepare_in(&target.join(VENV_DIR), &base_python())
}

/// As [`prepare`], with the virtualenv in `venv`, made by the Python `base`.
fn prepare_in(venv: &Path, base: &OsStr) -> Result<PathBuf, String> {
    let python = interpreter(venv);
    let wanted = PACKAGES.join("\n");
    let marker = venv.join(MARKER);
    if std::fs::read_to_string(&marker).is_ok_and(|m| m == wanted)
        && run(Command::new(&python).args(["-c", CHECK])).is_ok()
    {
        println!("xtask: Python pharox 0.11: {} (reused)", python.display());
        return Ok(python);
    }

    println!(
        "xtask: making a virtualenv with {} in {}",
        PACKAGES.join(" "),
        venv.display()
    );
    run(Command::new(base).args(["--version"])).map_err(|e| {
        format!(
            "no Python 3: {HOW_TO_GET_PYTHON}.\n  `{} --version`: {e}",
            base.to_string_lossy()
        )
    })?;
    run(Command::new(base).args(["-m", "venv", "--clear"]).arg(venv)).map_err(|e| {
        format!(
            "`{} -m venv` could not make {}: {HOW_TO_GET_PYTHON}.\n  {e}",
            base.to_string_lossy(),
            venv.display()
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
        .args(PACKAGES))
    .map_err(|e| {
        format!(
            "pip could not install {} into {}: {HOW_TO_GET_PYTHON}.\n  {e}",
            PACKAGES.join(" "),
            venv.display()
        )
    })?;
    run(Command::new(&python).args(["-c", CHECK])).map_err(|e| {
        format!(
            "the new virtualenv {} does not import pharox 0.11: {HOW_TO_GET_PYTHON}.\n  {e}",
            venv.display()
        )
    })?;
    std::fs::write(&marker, wanted)
        .map_err(|e| format!("cannot write {}: {e}", marker.display()))?;
    println!("xtask: Python pharox 0.11: {}", python.display());
    Ok(python)
}

/// The interpreter of a virtualenv.
fn interpreter(venv: &Path) -> PathBuf {
    if cfg!(windows) {
        venv.join("Scripts").join("python.exe")
    } else {
        venv.join("bin").join("python")
    }
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
        let err = prepare_in(&venv, OsStr::new("/nonexistent/python3")).unwrap_err();
        assert!(err.contains("no Python 3"), "{err}");
        assert!(
            err.contains("apt-get install python3 python3-venv"),
            "{err}"
        );
        assert!(err.contains("PIP_INDEX_URL"), "{err}");
        assert!(!venv.exists(), "nothing made");
    }
}
