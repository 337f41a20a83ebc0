//! [`ProxyManager`]'s release, outcome report and renew: retried where
//! idempotent, and watched (spans and observer events).

use super::*;

impl ProxyManager {
    /// Releases a lease. Idempotent: a second release reports
    /// [`ReleaseOutcome::AlreadyReleased`].
    ///
    /// A retryable storage failure (a lost connection, a server restart) is
    /// tried again per the config's release retry policy (see
    /// [`default_release_retry`]) before its error is returned, so a
    /// passing fault does not leave the proxy held until the lease's TTL.
    /// When an attempt's reply was lost after it took effect, the next one
    /// reports `AlreadyReleased`.
    pub async fn release(&self, lease: &Lease) -> Result<ReleaseOutcome, PharoxError> {
        self.release_id(lease.id).await
    }

    /// Releases a lease by id (see [`release`](Self::release)).
    pub async fn release_id(&self, lease_id: LeaseId) -> Result<ReleaseOutcome, PharoxError> {
        self.release_reporting(lease_id, None).await
    }

    /// Releases a lease and, when this call is the one that ends it, applies
    /// `outcome` to its proxy under the config's usage policy, atomically
    /// with the release (see [`ProxyStorage::release_with_outcome`]).
    /// Retried like [`release`](Self::release): a retry after a lost reply
    /// finds the lease released and applies nothing, so the outcome counts
    /// at most once. `None` is a plain release.
    pub async fn release_with_outcome(
        &self,
        lease_id: LeaseId,
        outcome: Option<Outcome>,
    ) -> Result<ReleaseOutcome, PharoxError> {
        if let Some(outcome) = &outcome {
            outcome.validate()?;
        }
        self.release_reporting(lease_id, outcome.as_ref()).await
    }

    /// Reports what a use of a held lease came to (several reports per lease
    /// are fine); returns the proxy's standing afterwards. Not retried: a
    /// report whose reply was lost may have counted, and counting it twice
    /// would punish the proxy twice. A released lease gives
    /// [`StorageError::LeaseNotActive`].
    pub async fn report(&self, lease_id: LeaseId, outcome: &Outcome) -> Result<Proxy, PharoxError> {
        outcome.validate()?;
        let span =
            tracing::debug_span!("pharox.report", lease = %lease_id, outcome = outcome.kind());
        let proxy = self
            .storage
            .report_outcome(lease_id, outcome, &self.config.usage_policy)
            .instrument(span)
            .await?;
        tracing::debug!(
            lease = %lease_id,
            proxy = %proxy.id,
            outcome = outcome.kind(),
            error_score = proxy.usage.error_score,
            cooling_down = proxy.usage.cooldown_until.is_some_and(|t| t > self.clock.now()),
            "outcome reported"
        );
        if self.observers.is_empty() {
            return Ok(proxy);
        }
        let pool_name = self.pool_name(proxy.pool_id, self.read_pool_names).await;
        let event = OutcomeEvent {
            lease_id,
            proxy_id: proxy.id,
            pool_name: pool_name.as_deref(),
            outcome,
            on_release: false,
            proxy: Some(&proxy),
        };
        self.observers.iter().for_each(|o| o.on_outcome(&event));
        Ok(proxy)
    }

    async fn release_reporting(
        &self,
        lease_id: LeaseId,
        reported: Option<&Outcome>,
    ) -> Result<ReleaseOutcome, PharoxError> {
        let span = tracing::debug_span!("pharox.release", lease = %lease_id);
        // Without an outcome, the plain release: the hot path's statement.
        // As for acquire: a storage that answers without waiting spares a
        // boxed future, and unwatched its answer is the result; what is
        // worth retrying goes through the retries all the same.
        let answered = match reported {
            None => {
                let _in = span.enter();
                self.storage.release_now(lease_id)
            }
            Some(_) => None,
        };
        let answered =
            answered.filter(|result| !result.as_ref().is_err_and(StorageError::is_retryable));
        if self.unwatched(&span)
            && let Some(result) = answered
        {
            return result.map_err(PharoxError::from);
        }
        Box::pin(self.release_watched(lease_id, reported, span, answered)).await
    }

    /// [`release_reporting`](Self::release_reporting) with its retries and
    /// events, given the storage's immediate answer if it had a final one.
    async fn release_watched(
        &self,
        lease_id: LeaseId,
        reported: Option<&Outcome>,
        span: tracing::Span,
        answered: Option<Result<ReleaseOutcome, StorageError>>,
    ) -> Result<ReleaseOutcome, PharoxError> {
        let policy = &self.config.usage_policy;
        let release = retry_storage(&self.config.release_retry, "release", lease_id, || async {
            match reported {
                Some(_) => {
                    self.storage
                        .release_with_outcome(lease_id, reported, policy)
                        .await
                }
                None => self.storage.release(lease_id).await,
            }
        });
        let outcome = match answered {
            Some(result) => result?,
            None => in_span(span, release).await?,
        };
        if let ReleaseOutcome::Released(released) = &outcome {
            tracing::debug!(
                lease = %lease_id,
                proxy = %released.proxy_id,
                outcome = reported.map(Outcome::kind),
                "lease released"
            );
            if !self.observers.is_empty() {
                // Pool stats in events need the name too (as they always did).
                let read = self.read_pool_names || self.config.pool_stats_in_events;
                let pool_name = self.pool_name(released.pool_id, read).await;
                if let Some(reported) = reported {
                    let event = OutcomeEvent {
                        lease_id,
                        proxy_id: released.proxy_id,
                        pool_name: pool_name.as_deref(),
                        outcome: reported,
                        on_release: true,
                        proxy: None,
                    };
                    self.observers.iter().for_each(|o| o.on_outcome(&event));
                }
                let stats = match (self.config.pool_stats_in_events, &pool_name) {
                    (true, Some(name)) => self.stats_for_event(name).await,
                    _ => None,
                };
                let event = ReleaseEvent {
                    lease_id,
                    proxy_id: released.proxy_id,
                    pool_id: released.pool_id,
                    pool_name: pool_name.as_deref(),
                    consumer_id: released.consumer_id,
                    released_at: released.released_at,
                    lease_duration: (released.released_at - released.acquired_at)
                        .try_into()
                        .unwrap_or_default(),
                    outcome: reported,
                    pool_stats: stats.as_ref(),
                };
                self.observers.iter().for_each(|o| o.on_release(&event));
            }
        }
        Ok(outcome)
    }

    /// Extends a lease to now + `ttl`. Retryable failures are tried again
    /// as for [`release`](Self::release) (renewing twice is harmless).
    pub async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, PharoxError> {
        validate_ttl(ttl)?;
        let policy = &self.config.release_retry;
        Ok(retry_storage(policy, "renew", lease.id, || {
            self.storage.renew(lease.id, ttl)
        })
        .await?)
    }
}
