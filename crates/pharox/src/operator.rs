//! [`Operator`]: the use cases of someone who runs pools (create, delete,
//! inspect, switch proxies on and off), shared by the CLI and any later
//! service, and the "did you mean" rule for unknown pool names.

use std::sync::Arc;

use pharox_domain::{PoolOverview, Proxy, ProxyFilter, ProxyId, ProxyPool, ProxyStatus, TargetBan};
use pharox_ports::{ProxyStorage, StorageError};

use crate::PharoxError;

/// The largest edit distance at which a pool name counts as close.
pub const CLOSE_NAME_DISTANCE: usize = 2;

/// The operator's calls on a storage.
#[derive(Clone)]
pub struct Operator {
    storage: Arc<dyn ProxyStorage>,
}

impl std::fmt::Debug for Operator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operator").finish_non_exhaustive()
    }
}

impl Operator {
    /// An operator on `storage`.
    #[must_use]
    pub fn new(storage: Arc<dyn ProxyStorage>) -> Self {
        Self { storage }
    }

    /// Creates the pool `name`; a taken name is a conflict.
    pub async fn create_pool(
        &self,
        name: &str,
        description: Option<&str>,
    ) -> Result<ProxyPool, PharoxError> {
        let mut pool = ProxyPool::new(name)?;
        if let Some(description) = description {
            pool = pool.with_description(description);
        }
        Ok(self.storage.save_pool(&pool).await?)
    }

    /// Every pool, by name.
    pub async fn pools(&self) -> Result<Vec<ProxyPool>, PharoxError> {
        Ok(self.storage.list_pools().await?)
    }

    /// Deletes the pool `name` with its proxies, leases and health history;
    /// returns what it deleted.
    pub async fn delete_pool(&self, name: &str) -> Result<ProxyPool, PharoxError> {
        let pool = self.storage.get_pool_by_name(name).await?;
        self.storage.delete_pool(pool.id).await?;
        Ok(pool)
    }

    /// The overview of the pool `name` (see [`PoolOverview`]).
    pub async fn overview(&self, name: &str) -> Result<PoolOverview, PharoxError> {
        Ok(self.storage.pool_overview(name).await?)
    }

    /// Up to `limit` proxies of the pool `name` that have `status` (any
    /// when `None`) and match `filter`, by id.
    pub async fn proxies(
        &self,
        name: &str,
        status: Option<ProxyStatus>,
        filter: &ProxyFilter,
        limit: usize,
    ) -> Result<Vec<Proxy>, PharoxError> {
        filter.validate()?;
        let pool = self.storage.get_pool_by_name(name).await?;
        Ok(self
            .storage
            .list_proxies(pool.id)
            .await?
            .into_iter()
            .filter(|p| status.is_none_or(|s| p.status == s) && filter.matches(p))
            .take(limit)
            .collect())
    }

    /// The proxy with this id.
    pub async fn proxy(&self, id: ProxyId) -> Result<Proxy, PharoxError> {
        Ok(self.storage.get_proxy(id).await?)
    }

    /// The bans of a proxy per target site that hold now, by target.
    pub async fn target_bans(&self, id: ProxyId) -> Result<Vec<TargetBan>, PharoxError> {
        Ok(self.storage.list_target_bans(id).await?)
    }

    /// Sets a proxy's status by hand. A proxy banned this way stays banned:
    /// health checks never lift a ban.
    pub async fn set_status(&self, id: ProxyId, status: ProxyStatus) -> Result<Proxy, PharoxError> {
        let mut proxy = self.storage.get_proxy(id).await?;
        proxy.status = status;
        Ok(self.storage.save_proxy(&proxy).await?)
    }

    /// Removes proxies with their leases and health history. Every id is
    /// looked up first, so an unknown one (not found) removes nothing; a
    /// storage failure during the removals stops there, and those before it
    /// are gone (run it again: removing is per proxy).
    pub async fn remove_proxies(&self, ids: &[ProxyId]) -> Result<(), PharoxError> {
        for id in ids {
            self.storage.get_proxy(*id).await?;
        }
        for id in ids {
            self.storage.delete_proxy(*id).await?;
        }
        Ok(())
    }

    /// Whether the pool `name` exists, and if not, the pool names close to
    /// it (see [`close_names`]).
    pub async fn pool_or_close_names(
        &self,
        name: &str,
    ) -> Result<Result<ProxyPool, Vec<String>>, PharoxError> {
        match self.storage.get_pool_by_name(name).await {
            Ok(pool) => Ok(Ok(pool)),
            Err(StorageError::NotFound { .. }) => {
                let pools = self.storage.list_pools().await?;
                Ok(Err(close_names(
                    name,
                    pools.iter().map(|p| p.name.as_str()),
                )))
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// The candidates close to `name`, closest first: those within
/// [`CLOSE_NAME_DISTANCE`] edits (ignoring case), and those one is a prefix
/// of the other.
pub fn close_names<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let wanted = name.to_lowercase();
    let mut close: Vec<(usize, String)> = candidates
        .into_iter()
        .filter_map(|candidate| {
            let lower = candidate.to_lowercase();
            let distance = edit_distance(&wanted, &lower);
            let prefix = !wanted.is_empty()
                && !lower.is_empty()
                && (lower.starts_with(&wanted) || wanted.starts_with(&lower));
            (distance <= CLOSE_NAME_DISTANCE || prefix).then(|| (distance, candidate.to_owned()))
        })
        .collect();
    close.sort();
    close.into_iter().map(|(_, name)| name).collect()
}

/// The Levenshtein distance between two strings, in characters: the fewest
/// insertions, deletions and substitutions that turn one into the other.
#[must_use]
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    // One row of the dynamic-programming table at a time.
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use pharox_adapter_memory::MemoryStorage;

    use super::*;

    #[test]
    fn edit_distance_counts_single_character_edits() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("latam", "latam"), 0);
        assert_eq!(edit_distance("latam", "latm"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("eu-west", "eu-east"), 2);
    }

    #[test]
    fn close_names_are_near_or_share_a_prefix() {
        let pools = ["latam", "latam-premium", "europe", "us"];
        assert_eq!(close_names("latm", pools), ["latam"]);
        assert_eq!(close_names("lat", pools), ["latam", "latam-premium"]);
        assert_eq!(close_names("Europe", pools), ["europe"]);
        assert!(close_names("asia-pacific", pools).is_empty());
    }

    #[tokio::test]
    async fn a_hand_made_ban_survives_and_unknown_pools_get_close_names() {
        let storage: Arc<dyn ProxyStorage> = Arc::new(MemoryStorage::new());
        let operator = Operator::new(Arc::clone(&storage));
        let pool = operator.create_pool("latam", Some("south")).await.unwrap();
        let proxy = Proxy::from_url(pool.id, "http://10.0.0.1:8080")
            .unwrap()
            .build()
            .unwrap();
        storage.save_proxy(&proxy).await.unwrap();
        let banned = operator
            .set_status(proxy.id, ProxyStatus::Banned)
            .await
            .unwrap();
        assert_eq!(banned.status, ProxyStatus::Banned);
        let listed = operator
            .proxies("latam", Some(ProxyStatus::Banned), &ProxyFilter::new(), 10)
            .await
            .unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            operator.overview("latam").await.unwrap().by_status[&ProxyStatus::Banned],
            1
        );
        assert_eq!(
            operator
                .pool_or_close_names("latamm")
                .await
                .unwrap()
                .unwrap_err(),
            ["latam"]
        );
        operator.delete_pool("latam").await.unwrap();
        assert!(operator.pools().await.unwrap().is_empty());
    }
}
