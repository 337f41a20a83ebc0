//! Operator tasks on pools: importing a proxy list into a pool.
//!
//! The CLI (`pharox proxy import`) and the HTTP API call these; they only
//! read the input and print the report. Parsing is the domain's
//! ([`parse_proxy_list`](pharox_domain::parse_proxy_list),
//! [`parse_proxy_json`](pharox_domain::parse_proxy_json)), matching too
//! ([`plan_import`]); this module checks the pool, lists it once and writes
//! once.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use pharox::admin::{ImportOptions, import_proxies};
//! use pharox::{ImportDefaults, MemoryStorage, ProxyListFormat, ProxyPool, ProxyProtocol, ProxyStorage, parse_proxy_list};
//!
//! let storage = MemoryStorage::new();
//! storage.save_pool(&ProxyPool::new("latam")?).await?;
//! let defaults = ImportDefaults { protocol: Some(ProxyProtocol::Http), ..ImportDefaults::default() };
//! let list = parse_proxy_list("10.0.0.1:8080\n10.0.0.1:8080:user:secret\n", ProxyListFormat::Text, &defaults)?;
//! let report = import_proxies(&storage, "latam", list, ImportOptions::default()).await?;
//! assert_eq!((report.added, report.updated, report.skipped), (2, 0, 0));
//! # Ok(()) }
//! ```

use pharox_domain::{ImportReport, ParsedList, plan_import, validate_name};
use pharox_ports::ProxyStorage;

use crate::PharoxError;

/// How [`import_proxies`] treats bad lines, and whether it writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ImportOptions {
    /// Work out and report what the import would do, and write nothing.
    pub dry_run: bool,
    /// Write the good lines even when some are bad (the bad ones are
    /// reported). Off (the default), any bad line means nothing is written.
    pub skip_invalid: bool,
}

/// Imports `parsed` into the pool named `pool_name`.
///
/// - A proxy already in the pool with the same protocol, host, port and user
///   name ([`ProxyKey`](pharox_domain::ProxyKey)) is updated, keeping its id,
///   leases and health history; fields its line does not give keep their
///   value, and its status changes only when the import gives one. Any
///   other line adds a proxy.
/// - When several lines name one proxy, the last one wins and the earlier
///   ones count as `skipped`; so does a line that would change nothing,
///   which is not rewritten (re-importing the same list writes nothing).
/// - **All or nothing.** Without `skip_invalid`, any invalid line (from the
///   parser, or found while matching) means nothing is written: the report
///   lists the invalid lines and its counts are 0. With it, the good lines
///   are written and the bad ones listed.
/// - Everything is written in one [`ProxyStorage::add_proxies`] call, which
///   is itself all or nothing: a storage error means nothing was written.
///   One call holds 100,000 proxies: the PostgreSQL adapter binds one array
///   a column, whatever the count, so there is no need to split the write
///   (which would end all or nothing). In PostgreSQL the changed proxies
///   stay locked until that one transaction commits: acquires pass them
///   over meanwhile, and wait for them only when no other proxy is free.
/// - A dry run reads the pool and reports what would happen, writing
///   nothing.
///
/// The pool is read once and written once, with no lock in between: two
/// imports of the same new proxy into one pool at the same moment may both
/// add it. Run one import per pool at a time.
///
/// # Errors
///
/// [`PharoxError::Invalid`] for a bad pool name; [`PharoxError::Storage`]
/// with [`StorageError::NotFound`](pharox_ports::StorageError::NotFound)
/// for an unknown pool; any storage failure as it is (see
/// [`PharoxError::is_retryable`]).
pub async fn import_proxies(
    storage: &dyn ProxyStorage,
    pool_name: &str,
    parsed: ParsedList,
    options: ImportOptions,
) -> Result<ImportReport, PharoxError> {
    validate_name("pool.name", pool_name)?;
    let pool = storage.get_pool_by_name(pool_name).await?;
    let ParsedList {
        entries,
        mut invalid,
    } = parsed;
    let rejected = |invalid| ImportReport {
        invalid,
        dry_run: options.dry_run,
        ..ImportReport::default()
    };
    if !invalid.is_empty() && !options.skip_invalid {
        // No need to read the pool: nothing will be written.
        tracing::info!(pool = %pool_name, invalid = invalid.len(), "import rejected: invalid lines");
        return Ok(rejected(invalid));
    }
    let existing = storage.list_proxies(pool.id).await?;
    let plan = plan_import(pool.id, &existing, &entries);
    if !plan.invalid.is_empty() {
        invalid.extend(plan.invalid);
        invalid.sort_by_key(|i| i.line);
        if !options.skip_invalid {
            tracing::info!(pool = %pool_name, invalid = invalid.len(), "import rejected: invalid lines");
            return Ok(rejected(invalid));
        }
    }
    if !options.dry_run && !plan.proxies.is_empty() {
        storage.add_proxies(&plan.proxies).await?;
    }
    tracing::info!(
        pool = %pool_name,
        added = plan.added,
        updated = plan.updated,
        skipped = plan.skipped,
        invalid = invalid.len(),
        dry_run = options.dry_run,
        "proxies imported"
    );
    Ok(ImportReport {
        added: plan.added,
        updated: plan.updated,
        skipped: plan.skipped,
        invalid,
        dry_run: options.dry_run,
    })
}
