//! The benchmark's workers: the acquire/release loop with its yield and
//! sampling constants, and the progress bar kept current beside them.

use super::*;

/// How many operations a worker runs between yields to the scheduler, when
/// workers are as many as the runtime's threads. In-memory calls never
/// suspend, so without the yield the first workers to start would hold every
/// runtime thread and the others would never run. Yielding wakes an idle thread (a context switch),
/// so not too often: 1,024 in-memory operations take about a millisecond.
const YIELD_EVERY: u64 = 1024;

/// Operations faster than this (in-memory ones) are timed one in
/// [`SAMPLE_EVERY`]: two clock reads would cost a fifth of an in-memory pair
/// and measure the harness more than the storage, while a sample still
/// gives the percentiles hundreds of thousands of points a second. Slower
/// ones (a database round trip) are each timed.
const FAST_NANOS: u64 = 20_000;

/// One in how many fast operations is timed: coprime with [`YIELD_EVERY`],
/// so the operation after a yield is not always the one timed.
const SAMPLE_EVERY: u64 = 13;

pub(super) async fn worker(
    run: Arc<Run>,
    quota: Option<u64>,
    deadline: Option<Instant>,
    mut latency: Histogram<u64>,
) -> (Tally, Histogram<u64>) {
    let mut tally = Tally::default();
    let mut stopped = run.stopped.subscribe();
    let mut done: u64 = 0;
    // A cheap per-worker generator (xorshift) for the request to send: the
    // draw must not cost what an in-memory acquire costs.
    // Each worker its own start, so the workers do not draw in lockstep.
    static NEXT_SEED: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    let mut draw = NEXT_SEED.fetch_add(0x6A09_E667_F3BC_C909, Ordering::Relaxed) | 1;
    let variants = run.requests.len() as u64;
    // With a runtime thread to spare for the others (the progress ticker),
    // a worker need not yield: a yield wakes the idle thread, which then
    // takes the worker over, and its caches with it.
    let share_threads = run.workers >= tokio::runtime::Handle::current().metrics().num_workers();
    // Every operation is timed until one proves fast.
    let mut stride: u64 = 1;
    loop {
        if done > 0 && done.is_multiple_of(YIELD_EVERY) {
            run.progress.fetch_add(YIELD_EVERY, Ordering::Relaxed);
            if share_threads {
                tokio::task::yield_now().await;
            }
        }
        if quota.is_some_and(|quota| done >= quota) || run.stop.load(Ordering::Relaxed) {
            break;
        }
        let started = (stride == 1 || done.is_multiple_of(stride)).then(Instant::now);
        // The clock is read for the latency anyway: checking the deadline
        // here keeps timed runs exact (to a few microseconds when sampling).
        if let Some(started) = started
            && deadline.is_some_and(|d| started >= d)
        {
            run.halt();
            break;
        }
        let request = if variants == 1 {
            &run.requests[0]
        } else {
            draw ^= draw << 13;
            draw ^= draw >> 7;
            draw ^= draw << 17;
            &run.requests[(draw % variants) as usize]
        };
        let outcome = run.manager.acquire_prepared(request).await;
        if let Some(started) = started {
            let nanos = started.elapsed().as_nanos().try_into().unwrap_or(u64::MAX);
            latency.saturating_record(nanos);
            stride = if nanos < FAST_NANOS { SAMPLE_EVERY } else { 1 };
        }
        match outcome {
            Ok(Some(lease)) => {
                tally.hits += 1;
                // One worker holds one lease at a time: nothing to count.
                if run.workers == 1 {
                    if run.max_in_flight.load(Ordering::Relaxed) == 0 {
                        run.max_in_flight.store(1, Ordering::Relaxed);
                    }
                } else {
                    let held = run.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
                    if held > run.max_in_flight.load(Ordering::Relaxed) {
                        run.max_in_flight.fetch_max(held, Ordering::Relaxed);
                    }
                }
                // One worker holds one lease at a time, which no proxy's
                // limit can be below: only several workers can over-lease.
                let on_proxy = (run.workers > 1)
                    .then(|| run.per_proxy.get(&lease.proxy_id))
                    .flatten();
                if let Some(count) = on_proxy
                    && count.fetch_add(1, Ordering::Relaxed) + 1 > run.max_concurrency
                {
                    run.over_leased.fetch_add(1, Ordering::Relaxed);
                }
                if !run.hold.is_zero() {
                    // A stop cuts the hold short: the lease is released
                    // all the same.
                    tokio::select! {
                        () = tokio::time::sleep(run.hold) => {}
                        () = until_stopped(&mut stopped) => {}
                    }
                }
                if let Some(count) = on_proxy {
                    count.fetch_sub(1, Ordering::Relaxed);
                }
                if run.workers > 1 {
                    run.in_flight.fetch_sub(1, Ordering::Relaxed);
                }
                // The manager retries what is worth retrying; what still
                // fails is counted.
                if let Err(e) = run.manager.release(&lease).await {
                    tally.release_errors += 1;
                    tally.record_error(&e);
                }
            }
            Ok(None) => {
                tally.misses += 1;
                // Nothing free: let the holders run before asking again.
                tokio::task::yield_now().await;
            }
            Err(e) => tally.record_error(&e),
        }
        done += 1;
    }
    (tally, latency)
}

/// Returns once the run is halted.
async fn until_stopped(stopped: &mut watch::Receiver<bool>) {
    // An error means the run is gone, which is a stop too.
    let _ = stopped.wait_for(|stopped| *stopped).await;
}

pub(super) fn progress_bar(stop: &Stop) -> ProgressBar {
    let bar = match stop {
        Stop::After(d) if *d > Duration::from_secs(1) => ProgressBar::new(d.as_millis() as u64),
        Stop::Iterations(n) => ProgressBar::new(*n),
        Stop::After(_) => return ProgressBar::hidden(),
    };
    bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {percent}%")
    {
        bar.set_style(style);
    }
    bar
}

/// Keeps the progress bar current; it only appears once the run has lasted
/// a second. (Workers stop themselves: see [`worker()`].)
pub(super) async fn tick(run: Arc<Run>, stop_after: Option<Duration>, bar: ProgressBar) {
    let started = Instant::now();
    let mut shown = false;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let elapsed = started.elapsed();
        if !shown && elapsed >= Duration::from_secs(1) {
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            shown = true;
        }
        match stop_after {
            Some(limit) => bar.set_position(elapsed.min(limit).as_millis() as u64),
            None => bar.set_position(run.progress.load(Ordering::Relaxed)),
        }
    }
}
