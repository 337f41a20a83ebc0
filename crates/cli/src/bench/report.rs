//! The benchmark's report: one JSON object (`--json`) or text for people.

use super::*;

/// `--json`: one object, on one line.
pub(super) fn print_json(plan: &Plan, target: &Target, m: &Measurement) -> Result<(), OutputError> {
    let out = json!({
        "storage": target.name,
        "workers": plan.workers,
        "session_keys": plan.session_keys,
        "target_count": plan.target_count,
        "metrics": plan.metrics,
        "proxies": plan.proxies,
        "operations": m.operations(),
        "ops_per_sec": round2(m.pairs_per_sec()),
        "hits": m.tally.hits,
        "misses": m.tally.misses,
        "errors": m.tally.errors,
        "first_error": m.tally.first_error(),
        "errors_by_kind": m.tally.errors_by_kind,
        "capacity": m.capacity,
        "max_concurrent_leases_seen": m.max_seen,
        "leases_left": m.leases_left,
        "latency_us": {
            "p50": round2(m.percentile_us(0.50)),
            "p95": round2(m.percentile_us(0.95)),
            "p99": round2(m.percentile_us(0.99)),
        },
    });
    output::print(|stdout| {
        outln!(stdout, "{out}");
        Ok(())
    })
}

/// The report for people.
pub(super) fn print_report(
    plan: &Plan,
    target: &Target,
    m: &Measurement,
) -> Result<(), OutputError> {
    let t = &m.tally;
    output::print(|stdout| {
        outln!(
            stdout,
            "pharox bench: {} storage, {} proxies x {} = capacity {}, {} workers, {}, {:.2} s",
            target.name,
            plan.proxies,
            plan.max_concurrency,
            m.capacity,
            plan.workers,
            plan.selector,
            m.elapsed.as_secs_f64()
        );
        outln!(
            stdout,
            "  ops/s (acquire+release pairs per second): {:.0}",
            m.pairs_per_sec()
        );
        outln!(
            stdout,
            "  operations {}: hits {}, misses {}, errors {}",
            m.operations(),
            t.hits,
            t.misses,
            t.errors
        );
        outln!(
            stdout,
            "  acquire latency: p50 {:.2} us, p95 {:.2} us, p99 {:.2} us",
            m.percentile_us(0.50),
            m.percentile_us(0.95),
            m.percentile_us(0.99)
        );
        outln!(
            stdout,
            "  max simultaneous leases seen: {} of capacity {}",
            m.max_seen,
            m.capacity
        );
        if let Some(left) = m.leases_left {
            outln!(stdout, "  active leases left after the run: {left}");
        }
        if let Some(first) = t.first_error() {
            let kinds: Vec<String> = t
                .errors_by_kind
                .iter()
                .map(|(kind, count)| format!("{kind} {count}"))
                .collect();
            outln!(stdout, "  errors by kind: {}", kinds.join(", "));
            outln!(stdout, "  first error: {first}");
        }
        Ok(())
    })
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
