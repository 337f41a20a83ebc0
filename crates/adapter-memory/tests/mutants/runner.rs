//! The harness's runner: a quiet runtime, every scenario run on a fresh
//! fixture in its own task, and the panic messages of the failures.

use super::*;

thread_local! {
    /// Set on the harness runtime's threads: scenario panics are expected
    /// there, and reported by the harness instead of the panic hook.
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// A runtime whose worker threads do not print the panics of failing
/// scenarios (the test threads still print theirs).
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                default(info);
            }
        }));
    });
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(|| QUIET.with(|q| q.set(true)))
        .build()
        .expect("tokio runtime")
}

/// Runs every scenario on a fresh fixture from `make`; returns the failed
/// ones with their panic messages.
pub(crate) async fn run_suite(
    make: impl Fn() -> ContractFixture,
) -> BTreeMap<&'static str, String> {
    let mut failures = BTreeMap::new();
    for scenario in SUITE {
        if let Err(why) = run_one(scenario, make()).await {
            failures.insert(scenario.name, why);
        }
    }
    failures
}

async fn run_one(scenario: &Scenario, fixture: ContractFixture) -> Result<(), String> {
    let run = scenario.run;
    let mut task = tokio::spawn(async move { run(&fixture).await });
    match tokio::time::timeout(SCENARIO_TIMEOUT, &mut task).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) if e.is_panic() => Err(panic_message(e.into_panic())),
        Ok(Err(e)) => Err(format!("task ended: {e}")),
        Err(_) => {
            task.abort();
            Err(format!("timed out after {SCENARIO_TIMEOUT:?}"))
        }
    }
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => payload.downcast_ref::<&str>().map_or_else(
            || "a panic without a message".to_owned(),
            |s| (*s).to_owned(),
        ),
    }
}

pub(crate) fn first_line(message: &str) -> String {
    let line = message.lines().next().unwrap_or_default();
    line.chars().take(160).collect()
}

pub(crate) fn report(failures: &BTreeMap<&'static str, String>) -> String {
    failures
        .iter()
        .map(|(name, why)| format!("  {name}: {why}"))
        .collect::<Vec<_>>()
        .join("\n")
}

pub(crate) fn fixture(mutant: Mutant) -> ContractFixture {
    let clock = Arc::new(ManualClock::starting_now());
    let storage = Broken::new(
        MemoryStorage::with_clock(clock.clone()),
        clock.clone(),
        mutant,
    );
    ContractFixture::new(storage, clock)
}
