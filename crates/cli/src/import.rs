//! `pharox proxy import`: a provider's proxy list into a pool. Parsing,
//! matching and the all-or-nothing write are the library's
//! ([`pharox::parse_proxy_list`], [`pharox::admin::import_proxies`]); this
//! module reads the input, maps flags to defaults and prints the report.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};

use clap::Args;
use pharox::admin::{ImportOptions, import_proxies};
use pharox::{
    ImportDefaults, ImportReport, MaxConcurrency, Operator, ProxyListFormat, ProxyProtocol,
    ProxyStatus, ValidationError, parse_proxy_list,
};

use crate::error::CliError;
use crate::operate::{Db, print_value, unknown_pool, usage};
use crate::output::{self, outln};

/// Flags of `pharox proxy import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The pool to import into.
    #[arg(long)]
    pool: String,
    /// The list: a file, or `-` (the default) for stdin.
    #[arg(value_name = "FILE", default_value = "-")]
    file: PathBuf,
    /// text, csv or jsonl [default: from the file's extension (.csv,
    /// .jsonl, .ndjson), else text].
    #[arg(long)]
    format: Option<String>,
    /// The scheme of lines that have none (`host:port`,
    /// `host:port:user:pass`): http, https, socks4 or socks5.
    #[arg(long)]
    protocol: Option<String>,
    /// Country (ISO 3166-1 alpha-2) of every proxy whose line gives none.
    #[arg(long)]
    country: Option<String>,
    /// City of every proxy whose line gives none.
    #[arg(long)]
    city: Option<String>,
    /// Source (provider) of every proxy whose line gives none.
    #[arg(long)]
    source: Option<String>,
    /// ISP of every proxy whose line gives none.
    #[arg(long)]
    isp: Option<String>,
    /// Autonomous system number of every proxy whose line gives none
    /// (`13335` or `AS13335`).
    #[arg(long)]
    asn: Option<String>,
    /// Leases a proxy may carry at once, a whole number or `unlimited`, for
    /// every proxy whose line gives none.
    #[arg(long)]
    max_concurrency: Option<String>,
    /// Status of every imported proxy: active or inactive [default: new
    /// proxies active, proxies already in the pool keep theirs].
    #[arg(long)]
    status: Option<String>,
    /// Report what the import would do; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Write the good lines even when some are bad (the bad ones are
    /// listed, and the exit code is still 2).
    #[arg(long)]
    skip_invalid: bool,
}

/// Runs `pharox proxy import`.
pub async fn run(args: ImportArgs, db: &Db) -> Result<(), CliError> {
    let defaults = defaults(&args)?;
    let format = match &args.format {
        Some(format) => format
            .parse::<ProxyListFormat>()
            .map_err(|e| usage("format", &e.reason))?,
        None => format_of(&args.file),
    };
    // Everything the command line can get wrong is refused before the
    // database is opened.
    let input = read_input(&args.file)?;
    let parsed = parse_proxy_list(&input, format, &defaults).map_err(|e| list_error(&e, format))?;
    drop(input);
    let storage = db.storage().await?;
    let options = ImportOptions {
        dry_run: args.dry_run,
        skip_invalid: args.skip_invalid,
    };
    let report = match import_proxies(storage.as_ref(), &args.pool, parsed, options).await {
        Err(pharox::PharoxError::Storage(pharox::StorageError::NotFound { .. })) => {
            return Err(unknown_pool(&Operator::new(storage), &args.pool).await);
        }
        other => other?,
    };
    print_report(&args.pool, &report, db.json, args.skip_invalid)?;
    if report.invalid.is_empty() {
        Ok(())
    } else {
        Err(CliError::InvalidLines {
            invalid: report.invalid.len(),
            written: args.skip_invalid && !args.dry_run,
        })
    }
}

/// The defaults the flags give, each checked with the flag named.
fn defaults(args: &ImportArgs) -> Result<ImportDefaults, CliError> {
    let protocol = args
        .protocol
        .as_deref()
        .map(str::parse::<ProxyProtocol>)
        .transpose()
        .map_err(|e| usage("protocol", &e.reason))?;
    let asn = args
        .asn
        .as_deref()
        .map(pharox::domain::parse_asn)
        .transpose()
        .map_err(|e| usage("asn", &e.reason))?;
    let max_concurrency = args
        .max_concurrency
        .as_deref()
        .map(str::parse::<MaxConcurrency>)
        .transpose()
        .map_err(|e| usage("max-concurrency", &e.reason))?;
    let status = match args
        .status
        .as_deref()
        .map(|s| s.trim().to_ascii_lowercase())
    {
        None => None,
        Some(s) if s == "active" => Some(ProxyStatus::Active),
        Some(s) if s == "inactive" => Some(ProxyStatus::Inactive),
        Some(_) => return Err(usage("status", "must be active or inactive")),
    };
    let defaults = ImportDefaults {
        protocol,
        country: args.country.clone(),
        city: args.city.clone(),
        source: args.source.clone(),
        isp: args.isp.clone(),
        asn,
        max_concurrency,
        status,
    };
    defaults.validate().map_err(|e| default_error(&e))?;
    Ok(defaults)
}

/// A rejected default, naming its flag.
fn default_error(e: &ValidationError) -> CliError {
    let flag = match e.field.as_ref() {
        "country" => "country",
        "city" => "city",
        "source" => "source",
        "isp" => "isp",
        "asn" => "asn",
        "status" => "status",
        "max_concurrency" => "max-concurrency",
        "protocol" => "protocol",
        _ => {
            return CliError::Other(format!("invalid import defaults: {e}"));
        }
    };
    usage(flag, &e.reason)
}

/// An error for the whole list (a bad CSV header, say).
pub(crate) fn list_error(e: &ValidationError, format: ProxyListFormat) -> CliError {
    if e.field.starts_with("csv") || e.field == "json" {
        CliError::BadArgument {
            name: "FILE",
            reason: format!("is not a valid {format} list: {e}"),
        }
    } else {
        default_error(e)
    }
}

/// The format a file's extension says, else text.
pub(crate) fn format_of(path: &Path) -> ProxyListFormat {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("csv") => ProxyListFormat::Csv,
        Some("jsonl" | "ndjson") => ProxyListFormat::Jsonl,
        _ => ProxyListFormat::Text,
    }
}

/// The whole list, from the file or stdin. Not UTF-8, or unreadable, is an
/// error naming `FILE`.
pub(crate) fn read_input(path: &Path) -> Result<String, CliError> {
    let bad = |reason: String| CliError::BadArgument {
        name: "FILE",
        reason,
    };
    let bytes = if path == Path::new("-") {
        let stdin = std::io::stdin();
        if stdin.is_terminal() {
            return Err(bad(
                "is required: give a file, or pipe the list into stdin".to_owned()
            ));
        }
        let mut bytes = Vec::new();
        stdin
            .lock()
            .read_to_end(&mut bytes)
            .map_err(|e| bad(format!("stdin cannot be read: {e}")))?;
        bytes
    } else {
        std::fs::read(path).map_err(|e| bad(format!("{} cannot be read: {e}", path.display())))?
    };
    String::from_utf8(bytes).map_err(|e| {
        bad(format!(
            "is not UTF-8 text (the first bad byte is at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

fn print_report(
    pool: &str,
    report: &ImportReport,
    json: bool,
    skip_invalid: bool,
) -> Result<(), CliError> {
    if json {
        return print_value(
            &serde_json::to_value(report).map_err(|e| CliError::Other(e.to_string()))?,
        );
    }
    let rejected = !report.invalid.is_empty() && !skip_invalid;
    output::print(|out| {
        if rejected {
            outln!(
                out,
                "nothing imported into pool {pool}: {} invalid lines (fix them, or pass --skip-invalid to import the rest)",
                report.invalid.len()
            );
        } else {
            let verb = if report.dry_run {
                "dry run, nothing written: would import into"
            } else {
                "imported into"
            };
            outln!(
                out,
                "{verb} pool {pool}: {} added, {} updated, {} skipped, {} invalid",
                report.added,
                report.updated,
                report.skipped,
                report.invalid.len()
            );
        }
        for line in &report.invalid {
            outln!(out, "line {}: {}", line.line, line.error);
        }
        Ok(())
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_follows_the_extension_else_text() {
        assert_eq!(format_of(Path::new("list.CSV")), ProxyListFormat::Csv);
        assert_eq!(format_of(Path::new("a/b.jsonl")), ProxyListFormat::Jsonl);
        assert_eq!(format_of(Path::new("b.ndjson")), ProxyListFormat::Jsonl);
        assert_eq!(format_of(Path::new("proxies.txt")), ProxyListFormat::Text);
        assert_eq!(format_of(Path::new("-")), ProxyListFormat::Text);
    }

    #[test]
    fn every_default_the_domain_rejects_names_its_flag() {
        for field in [
            "country",
            "city",
            "source",
            "isp",
            "asn",
            "status",
            "max_concurrency",
            "protocol",
        ] {
            let error = default_error(&ValidationError::new(field, "is wrong"));
            assert!(
                matches!(error, CliError::Usage { flag, .. } if flag == field.replace('_', "-")),
                "{field}: {error:?}"
            );
        }
    }
}
