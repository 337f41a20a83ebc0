//! The workspace's layout rules, checked mechanically:
//!
//! - every member inherits version, edition and lints from the workspace and
//!   is named after its folder (`crates/adapter-memory` is
//!   `pharox-adapter-memory`);
//! - every dependency comes from `[workspace.dependencies]`;
//! - dependencies point inwards: the domain depends on no pharox crate and no
//!   async, runtime or database crate; ports only on the domain; adapters
//!   never on each other or on the application (the PostgreSQL adapter may
//!   use `pharox-migration`, its own schema).

use std::path::Path;

use toml::Value;

/// Checks every rule; the error lists every violation.
pub fn check(root: &Path) -> Result<(), String> {
    let manifest = read(&root.join("Cargo.toml"))?;
    let members = manifest
        .get("workspace")
        .and_then(|w| w.get("members"))
        .and_then(Value::as_array)
        .ok_or("root Cargo.toml has no [workspace] members")?;
    let mut problems = Vec::new();
    if manifest.get("package").is_some() {
        problems.push("the root manifest must be virtual (no [package])".to_owned());
    }
    for member in members.iter().filter_map(Value::as_str) {
        check_member(root, member, &mut problems)?;
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "workspace rules broken:\n  - {}",
            problems.join("\n  - ")
        ))
    }
}

fn read(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    toml::from_str::<toml::Table>(&text)
        .map(Value::Table)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The package name a member folder must have.
fn expected_name(member: &str) -> String {
    let folder = member.rsplit('/').next().unwrap_or(member);
    match folder {
        "pharox" | "xtask" => folder.to_owned(),
        other => format!("pharox-{other}"),
    }
}

/// Crates the domain must never depend on: it is pure.
const IMPURE: &[&str] = &[
    "tokio",
    "async-trait",
    "futures",
    "sea-orm",
    "sea-orm-migration",
    "reqwest",
    "mockall",
    "rustls",
];

/// `pharox`'s features that pull in a storage adapter.
const ADAPTER_FEATURES: &[&str] = &["memory", "postgres"];

fn check_member(root: &Path, member: &str, problems: &mut Vec<String>) -> Result<(), String> {
    let manifest = read(&root.join(member).join("Cargo.toml"))?;
    let package = manifest
        .get("package")
        .ok_or(format!("{member}: no [package]"))?;
    let name = package
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if name != expected_name(member) {
        problems.push(format!(
            "{member}: package is {name:?}, expected {:?}",
            expected_name(member)
        ));
    }
    for key in ["version", "edition", "license"] {
        let inherited = package
            .get(key)
            .and_then(|v| v.get("workspace"))
            .and_then(Value::as_bool)
            == Some(true);
        if !inherited {
            problems.push(format!("{name}: {key} must be `{key}.workspace = true`"));
        }
    }
    let lints = manifest
        .get("lints")
        .and_then(|l| l.get("workspace"))
        .and_then(Value::as_bool);
    if lints != Some(true) {
        problems.push(format!("{name}: needs `[lints] workspace = true`"));
    }

    let mut normal = Vec::new();
    for table in ["dependencies", "dev-dependencies", "build-dependencies"] {
        let Some(deps) = manifest.get(table).and_then(Value::as_table) else {
            continue;
        };
        for (dep, spec) in deps {
            let from_workspace = spec.get("workspace").and_then(Value::as_bool) == Some(true);
            if !from_workspace {
                problems.push(format!(
                    "{name}: {table}.{dep} must come from [workspace.dependencies]"
                ));
            }
            if table == "dependencies" {
                normal.push(dep.as_str());
            }
        }
    }
    let forbid = |problems: &mut Vec<String>, allowed: &[&str]| {
        for dep in normal.iter().filter(|dep| dep.starts_with("pharox")) {
            if !allowed.contains(dep) {
                problems.push(format!(
                    "{name} must not depend on {dep} (dependencies point inwards)"
                ));
            }
        }
    };
    match name {
        "pharox-domain" => {
            forbid(problems, &[]);
            for dep in normal.iter().filter(|d| IMPURE.contains(d)) {
                problems.push(format!("pharox-domain must stay pure: no {dep}"));
            }
        }
        "pharox-ports" => forbid(problems, &["pharox-domain"]),
        // The PostgreSQL adapter owns its schema: it may run its migrations.
        "pharox-adapter-postgres" => forbid(
            problems,
            &["pharox-domain", "pharox-ports", "pharox-migration"],
        ),
        adapter if adapter.starts_with("pharox-adapter-") => {
            forbid(problems, &["pharox-domain", "pharox-ports"])
        }
        "pharox-migration" => forbid(problems, &[]),
        "pharox-contract-tests" => forbid(problems, &["pharox-domain", "pharox-ports"]),
        // Delivery over HTTP: the application and its types, never a storage
        // adapter (the CLI wires one in), not even through `pharox`'s
        // adapter features.
        "pharox-server" | "pharox-gateway" => {
            forbid(problems, &["pharox", "pharox-domain", "pharox-ports"]);
            let features = manifest
                .get("dependencies")
                .and_then(|d| d.get("pharox"))
                .and_then(|p| p.get("features"))
                .and_then(Value::as_array);
            for feature in features.into_iter().flatten().filter_map(Value::as_str) {
                if ADAPTER_FEATURES.contains(&feature) {
                    problems.push(format!(
                        "{name} must not enable pharox's {feature} adapter (the CLI chooses storage)"
                    ));
                }
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_workspace_is_tidy() {
        check(&crate::workspace_root()).unwrap();
    }

    #[test]
    fn names_follow_folders() {
        assert_eq!(
            expected_name("crates/adapter-memory"),
            "pharox-adapter-memory"
        );
        assert_eq!(expected_name("crates/pharox"), "pharox");
        assert_eq!(expected_name("migration"), "pharox-migration");
        assert_eq!(expected_name("xtask"), "xtask");
    }
}
