//! Background upkeep: health sweeps and expiry cleanup on an interval, run
//! by one process at a time however many share the storage.
//!
//! Each task ([`UpkeepTask`]) has a *leader lock* ([`TaskLocks`]; on
//! PostgreSQL a session advisory lock). The process holding it runs the
//! task every interval and keeps the lock between runs; the others stand
//! by, asking for the lock now and then, and take over when the leader
//! goes away (its lock goes with its database session: a crash, a kill or
//! a lost connection frees it). Before each run the leader checks that it
//! still holds the lock, and stands by again when it does not, so two
//! processes never run the same task on purpose at once.
//!
//! A health sweep of one pool also takes the pool's *sweep lock*
//! ([`sweep_lock_key`]), the one `pharox health check` takes, so a sweep
//! started by hand, by the HTTP API or by the upkeep never overlaps another
//! of the same pool; a pool whose sweep lock is taken is skipped that
//! round.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use pharox_domain::{PoolId, ProxyPool};
use pharox_ports::{ProxyStorage, TaskLockGuard, TaskLocks};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::PharoxError;
use crate::health::{HealthOrchestrator, Sweep, SweepSummary};

/// The leader lock of the background health sweeps.
pub const HEALTH_LEADER_KEY: &str = "pharox.upkeep.health";
/// The leader lock of the background expiry cleanup.
pub const CLEANUP_LEADER_KEY: &str = "pharox.upkeep.cleanup";
/// The longest a process standing by waits before asking for a leader lock
/// again (it asks every interval when the interval is shorter).
pub const MAX_STANDBY_POLL: Duration = Duration::from_secs(5);

/// The lock a sweep of one pool holds while it runs (the same for every
/// caller: `pharox health check`, the API and the upkeep).
#[must_use]
pub fn sweep_lock_key(pool: PoolId) -> String {
    format!("pharox.health.sweep:{pool}")
}

/// A background task of the upkeep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpkeepTask {
    /// Health sweeps of the pools.
    Health,
    /// Reclaiming expired leases.
    Cleanup,
}

impl UpkeepTask {
    /// The task's name in logs and events: `health`, `cleanup`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Health => "health",
            Self::Cleanup => "cleanup",
        }
    }

    /// The task's leader lock.
    #[must_use]
    pub fn leader_key(self) -> &'static str {
        match self {
            Self::Health => HEALTH_LEADER_KEY,
            Self::Cleanup => CLEANUP_LEADER_KEY,
        }
    }
}

impl std::fmt::Display for UpkeepTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the upkeep did, for logs, metrics and tests.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum UpkeepEvent {
    /// This process took the task's leader lock and runs it from now on.
    Leading(UpkeepTask),
    /// Another process leads the task; this one stands by.
    StandingBy {
        /// The task.
        task: UpkeepTask,
        /// The leader, as it described itself (when it could be read).
        leader: Option<String>,
    },
    /// This process no longer holds the task's leader lock (its connection
    /// was lost) and stands by again.
    LostLead {
        /// The task.
        task: UpkeepTask,
        /// Why the lock is gone.
        error: String,
    },
    /// A pool was swept.
    Swept {
        /// The pool.
        pool: String,
        /// What the sweep found.
        summary: SweepSummary,
    },
    /// A pool was not swept this round: another sweep of it is running.
    SweepSkipped {
        /// The pool.
        pool: String,
        /// Who runs the other sweep, when known.
        holder: Option<String>,
    },
    /// Expired leases were reclaimed.
    Cleaned {
        /// How many.
        reclaimed: u64,
    },
    /// A run of the task failed; the next interval tries again.
    Failed {
        /// The task.
        task: UpkeepTask,
        /// What went wrong (no secrets: storage errors carry none).
        error: String,
    },
}

/// Receives [`UpkeepEvent`]s (they are also logged with `tracing`).
pub type UpkeepListener = Arc<dyn Fn(&UpkeepEvent) + Send + Sync>;

/// Which pools the health task sweeps.
#[derive(Debug, Clone)]
pub enum SweepPools {
    /// Every pool of the storage, as listed at each round.
    All,
    /// These pools, by name (an unknown name fails that pool's round).
    Named(Vec<String>),
}

/// A sweep holding its pool's sweep lock; see [`start_locked_sweep`].
#[derive(Debug)]
pub struct LockedSweep {
    pool: ProxyPool,
    sweep: Sweep,
    lock: TaskLockGuard,
}

/// What [`start_locked_sweep`] found.
#[derive(Debug)]
pub enum SweepStart {
    /// The sweep runs, holding the pool's sweep lock.
    Started(LockedSweep),
    /// Another sweep of the pool holds its lock.
    Busy {
        /// That sweep's holder, as it described itself (when known).
        holder: Option<String>,
    },
}

/// Starts a sweep of `pool_name` under its sweep lock, taken for `holder`
/// (a description such as "pharox serve, pid 42 on host-a"), or says who
/// runs one already. Nothing is probed when the lock is taken.
pub async fn start_locked_sweep(
    orchestrator: &HealthOrchestrator,
    locks: &dyn TaskLocks,
    pool_name: &str,
    holder: &str,
) -> Result<SweepStart, PharoxError> {
    let storage = orchestrator.storage();
    let pool = storage.get_pool_by_name(pool_name).await?;
    let key = sweep_lock_key(pool.id);
    let Some(lock) = locks.try_lock(&key, holder).await? else {
        let holder = locks.holder(&key).await.ok().flatten();
        return Ok(SweepStart::Busy { holder });
    };
    // Listed under the lock, so the sweep covers the pool as it is now.
    let proxies = storage.list_proxies(pool.id).await?;
    let sweep = orchestrator.sweep(proxies);
    Ok(SweepStart::Started(LockedSweep { pool, sweep, lock }))
}

impl LockedSweep {
    /// The pool being swept.
    #[must_use]
    pub fn pool(&self) -> &ProxyPool {
        &self.pool
    }

    /// How many proxies the sweep covers.
    #[must_use]
    pub fn total(&self) -> usize {
        self.sweep.total()
    }

    /// Drives the sweep to its end, then releases the lock. When `stop`
    /// turns true first, the sweep stops gently: no new probe, results
    /// being written are written (see [`Sweep::stop`]).
    pub async fn finish(self, mut stop: watch::Receiver<bool>) -> SweepSummary {
        let Self {
            pool: _,
            mut sweep,
            lock,
        } = self;
        let mut summary = sweep.summary();
        let mut stopping = *stop.borrow();
        if stopping {
            sweep.stop();
        }
        loop {
            let item = tokio::select! {
                item = sweep.next() => item,
                changed = stop.changed(), if !stopping => {
                    // Asked to stop, or nobody is left to ask: stop gently.
                    if changed.is_err() || *stop.borrow() {
                        stopping = true;
                        sweep.stop();
                    }
                    continue;
                }
            };
            let Some(item) = item else { break };
            summary.record(&item);
        }
        drop(sweep);
        if let Err(e) = lock.release().await {
            tracing::warn!(error = %e, "could not release a sweep lock; it goes with its connection");
        }
        summary
    }
}

/// Configures and starts the upkeep; see the [module docs](self).
pub struct UpkeepBuilder {
    storage: Arc<dyn ProxyStorage>,
    locks: Arc<dyn TaskLocks>,
    holder: String,
    health: Option<(HealthOrchestrator, Duration, SweepPools)>,
    cleanup: Option<Duration>,
    listener: Option<UpkeepListener>,
}

impl std::fmt::Debug for UpkeepBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpkeepBuilder")
            .field("holder", &self.holder)
            .field(
                "health",
                &self.health.as_ref().map(|(_, every, pools)| (every, pools)),
            )
            .field("cleanup", &self.cleanup)
            .finish_non_exhaustive()
    }
}

/// Starts configuring the upkeep of `storage`, leading tasks through
/// `locks` as `holder` (how this process describes itself to the others).
pub fn upkeep(
    storage: Arc<dyn ProxyStorage>,
    locks: Arc<dyn TaskLocks>,
    holder: impl Into<String>,
) -> UpkeepBuilder {
    UpkeepBuilder {
        storage,
        locks,
        holder: holder.into(),
        health: None,
        cleanup: None,
        listener: None,
    }
}

impl UpkeepBuilder {
    /// Sweeps `pools` with `orchestrator` every `every` (from the end of one
    /// round to the start of the next, so rounds never pile up).
    #[must_use]
    pub fn health(
        mut self,
        orchestrator: HealthOrchestrator,
        every: Duration,
        pools: SweepPools,
    ) -> Self {
        self.health = Some((orchestrator, every, pools));
        self
    }

    /// Reclaims expired leases every `every`.
    #[must_use]
    pub fn cleanup(mut self, every: Duration) -> Self {
        self.cleanup = Some(every);
        self
    }

    /// Calls `listener` with every event.
    #[must_use]
    pub fn listener(mut self, listener: UpkeepListener) -> Self {
        self.listener = Some(listener);
        self
    }

    /// Starts the configured tasks on the current tokio runtime. An interval
    /// of zero is refused (it would spin).
    pub fn spawn(self) -> Result<Upkeep, PharoxError> {
        let (stop, stopped) = watch::channel(false);
        let shared = Arc::new(Shared {
            storage: self.storage,
            locks: self.locks,
            holder: self.holder,
            listener: self.listener,
        });
        let mut tasks = Vec::new();
        if let Some((orchestrator, every, pools)) = self.health {
            nonzero("health_interval", every)?;
            let work = Work::Health {
                orchestrator,
                pools,
            };
            tasks.push(spawn_led(Arc::clone(&shared), work, every, stopped.clone()));
        }
        if let Some(every) = self.cleanup {
            nonzero("cleanup_interval", every)?;
            tasks.push(spawn_led(
                Arc::clone(&shared),
                Work::Cleanup,
                every,
                stopped.clone(),
            ));
        }
        Ok(Upkeep { stop, tasks })
    }
}

fn nonzero(field: &'static str, every: Duration) -> Result<(), PharoxError> {
    if every.is_zero() {
        return Err(pharox_domain::ValidationError::new(field, "must be more than zero").into());
    }
    Ok(())
}

/// The running upkeep; [`stop`](Self::stop) ends it and waits (dropping it
/// asks the tasks to stop without waiting).
#[derive(Debug)]
pub struct Upkeep {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Upkeep {
    /// Stops every task: a sweep in flight stops gently (results being
    /// written are written), then the leader locks are released.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }

    /// Whether any task is configured.
    #[must_use]
    pub fn is_idle(&self) -> bool {
        self.tasks.is_empty()
    }
}

struct Shared {
    storage: Arc<dyn ProxyStorage>,
    locks: Arc<dyn TaskLocks>,
    holder: String,
    listener: Option<UpkeepListener>,
}

impl Shared {
    fn emit(&self, event: &UpkeepEvent) {
        match event {
            UpkeepEvent::Leading(task) => tracing::info!(task = %task, "leading the upkeep task"),
            UpkeepEvent::StandingBy { task, leader } => {
                tracing::info!(task = %task, leader = leader.as_deref(), "standing by");
            }
            UpkeepEvent::LostLead { task, error } => {
                tracing::warn!(task = %task, %error, "lost the upkeep task's lock");
            }
            UpkeepEvent::Swept { pool, summary } => tracing::info!(
                pool = %pool,
                checked = summary.checked,
                failed = summary.failed,
                "swept"
            ),
            UpkeepEvent::SweepSkipped { pool, holder } => {
                tracing::info!(pool = %pool, holder = holder.as_deref(), "sweep skipped: another is running");
            }
            UpkeepEvent::Cleaned { reclaimed } => {
                tracing::debug!(reclaimed, "expired leases reclaimed");
            }
            UpkeepEvent::Failed { task, error } => {
                tracing::warn!(task = %task, %error, "upkeep run failed");
            }
        }
        if let Some(listener) = &self.listener {
            listener(event);
        }
    }
}

enum Work {
    Health {
        orchestrator: HealthOrchestrator,
        pools: SweepPools,
    },
    Cleanup,
}

impl Work {
    fn task(&self) -> UpkeepTask {
        match self {
            Self::Health { .. } => UpkeepTask::Health,
            Self::Cleanup => UpkeepTask::Cleanup,
        }
    }

    /// One round of the task.
    async fn run(&self, shared: &Shared, stop: &watch::Receiver<bool>) {
        match self {
            Self::Cleanup => match shared.storage.cleanup_expired().await {
                Ok(reclaimed) => shared.emit(&UpkeepEvent::Cleaned { reclaimed }),
                Err(e) => shared.emit(&UpkeepEvent::Failed {
                    task: UpkeepTask::Cleanup,
                    error: e.to_string(),
                }),
            },
            Self::Health {
                orchestrator,
                pools,
            } => {
                let names = match pools {
                    SweepPools::Named(names) => names.clone(),
                    SweepPools::All => match shared.storage.list_pools().await {
                        Ok(pools) => pools.into_iter().map(|p| p.name).collect(),
                        Err(e) => {
                            shared.emit(&UpkeepEvent::Failed {
                                task: UpkeepTask::Health,
                                error: e.to_string(),
                            });
                            return;
                        }
                    },
                };
                for name in names {
                    if *stop.borrow() {
                        return;
                    }
                    let started = start_locked_sweep(
                        orchestrator,
                        shared.locks.as_ref(),
                        &name,
                        &shared.holder,
                    )
                    .await;
                    match started {
                        Ok(SweepStart::Started(sweep)) => {
                            let summary = sweep.finish(stop.clone()).await;
                            shared.emit(&UpkeepEvent::Swept {
                                pool: name,
                                summary,
                            });
                        }
                        Ok(SweepStart::Busy { holder }) => {
                            shared.emit(&UpkeepEvent::SweepSkipped { pool: name, holder });
                        }
                        Err(e) => shared.emit(&UpkeepEvent::Failed {
                            task: UpkeepTask::Health,
                            error: format!("pool {name}: {e}"),
                        }),
                    }
                }
            }
        }
    }
}

fn spawn_led(
    shared: Arc<Shared>,
    work: Work,
    every: Duration,
    stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let span = tracing::info_span!("pharox.upkeep", task = %work.task());
    tokio::spawn(lead(shared, work, every, stop).instrument(span))
}

/// Stands by until the task's leader lock is free, then runs the task every
/// `every` while the lock holds; back to standing by when it is lost.
async fn lead(shared: Arc<Shared>, work: Work, every: Duration, mut stop: watch::Receiver<bool>) {
    let task = work.task();
    let poll = every.min(MAX_STANDBY_POLL);
    let mut last_leader: Option<Option<String>> = None;
    while !*stop.borrow() {
        let taken = shared
            .locks
            .try_lock(task.leader_key(), &shared.holder)
            .await;
        let mut lock = match taken {
            Ok(Some(lock)) => lock,
            Ok(None) => {
                let leader = shared.locks.holder(task.leader_key()).await.ok().flatten();
                // Said once per leader, not at every poll.
                if last_leader.as_ref() != Some(&leader) {
                    shared.emit(&UpkeepEvent::StandingBy {
                        task,
                        leader: leader.clone(),
                    });
                    last_leader = Some(leader);
                }
                if wait(&mut stop, poll).await {
                    return;
                }
                continue;
            }
            Err(e) => {
                shared.emit(&UpkeepEvent::Failed {
                    task,
                    error: format!("taking the leader lock: {e}"),
                });
                if wait(&mut stop, poll).await {
                    return;
                }
                continue;
            }
        };
        last_leader = None;
        shared.emit(&UpkeepEvent::Leading(task));
        loop {
            work.run(&shared, &stop).await;
            if wait(&mut stop, every).await {
                if let Err(e) = lock.release().await {
                    tracing::debug!(error = %e, "leader lock released with its connection");
                }
                return;
            }
            if let Err(e) = lock.check().await {
                shared.emit(&UpkeepEvent::LostLead {
                    task,
                    error: e.to_string(),
                });
                break;
            }
        }
    }
}

/// Waits `period` or until asked to stop; true when asked to stop.
async fn wait(stop: &mut watch::Receiver<bool>, period: Duration) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        () = tokio::time::sleep(period) => *stop.borrow(),
        changed = stop.changed() => changed.is_err() || *stop.borrow(),
    }
}
