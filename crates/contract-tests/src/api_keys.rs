//! The behaviour of [`ApiKeyStore`]: one `pub async fn` per rule of its
//! contract (see the trait's docs), each taking a fresh store used by no
//! other test. [`api_key_store_contract_tests!`](crate::api_key_store_contract_tests)
//! runs them all; [`API_KEY_SCENARIOS`] names them.

use std::sync::Arc;

use pharox_domain::{ApiKeyHash, ApiKeyId, ApiKeyScope, ApiKeySelector, NewApiKey};
use pharox_ports::{ApiKeyStore, StorageError};

/// A store under test.
pub type ApiKeyFixture = Arc<dyn ApiKeyStore>;

/// A hash no other test uses.
fn fresh_hash() -> ApiKeyHash {
    let mut bytes = [0u8; 32];
    bytes[..16].copy_from_slice(ApiKeyId::new().as_uuid().as_bytes());
    bytes[16..].copy_from_slice(ApiKeyId::new().as_uuid().as_bytes());
    ApiKeyHash(bytes)
}

fn new_key(name: Option<&str>, scope: ApiKeyScope) -> NewApiKey {
    NewApiKey {
        id: ApiKeyId::new(),
        name: name.map(str::to_owned),
        scope,
        key_hash: fresh_hash(),
    }
}

/// A created key comes back as stored (id, name, scope, hash, a creation
/// time, not revoked) and is found by its hash; an unknown hash finds nothing.
pub async fn created_key_is_found_by_its_hash(store: &ApiKeyFixture) {
    let key = new_key(Some("ci-worker"), ApiKeyScope::Lease);
    let created = store.create_api_key(&key).await.unwrap();
    assert_eq!(created.id, key.id);
    assert_eq!(created.name.as_deref(), Some("ci-worker"));
    assert_eq!(created.scope, ApiKeyScope::Lease);
    assert_eq!(created.key_hash, key.key_hash);
    assert!(created.revoked_at.is_none());
    let found = store.find_active_api_key(&key.key_hash).await.unwrap();
    assert_eq!(found.as_ref(), Some(&created), "found by hash as created");
    let admin = store
        .create_api_key(&new_key(None, ApiKeyScope::Admin))
        .await
        .unwrap();
    assert_eq!(admin.name, None);
    assert_eq!(admin.scope, ApiKeyScope::Admin);
    assert_eq!(
        store.find_active_api_key(&fresh_hash()).await.unwrap(),
        None,
        "an unknown hash finds no key"
    );
}

/// The listing holds every key, revoked ones too, oldest first.
pub async fn list_is_oldest_first_with_revoked_keys(store: &ApiKeyFixture) {
    assert!(store.list_api_keys().await.unwrap().is_empty());
    let mut ids = Vec::new();
    for name in ["a", "b", "c"] {
        let key = new_key(Some(name), ApiKeyScope::Lease);
        ids.push(store.create_api_key(&key).await.unwrap().id);
    }
    store
        .revoke_api_key(&ApiKeySelector::Id(ids[1]))
        .await
        .unwrap();
    let listed = store.list_api_keys().await.unwrap();
    assert_eq!(listed.iter().map(|k| k.id).collect::<Vec<_>>(), ids);
    assert_eq!(
        listed.iter().map(|k| k.is_active()).collect::<Vec<_>>(),
        [true, false, true]
    );
    assert!(
        listed
            .windows(2)
            .all(|w| w[0].created_at <= w[1].created_at)
    );
}

/// A key revoked by id is found no more; revoking it again returns it with
/// its first revocation time.
pub async fn revoked_key_is_not_found_and_revoking_again_changes_nothing(store: &ApiKeyFixture) {
    let key = new_key(None, ApiKeyScope::Admin);
    let created = store.create_api_key(&key).await.unwrap();
    let revoked = store
        .revoke_api_key(&ApiKeySelector::Id(created.id))
        .await
        .unwrap();
    let at = revoked.revoked_at.expect("revoked_at is set");
    assert!(at >= created.created_at);
    assert_eq!(
        store.find_active_api_key(&key.key_hash).await.unwrap(),
        None
    );
    let again = store
        .revoke_api_key(&ApiKeySelector::Id(created.id))
        .await
        .unwrap();
    assert_eq!(
        again.revoked_at,
        Some(at),
        "the first revocation time stays"
    );
}

/// Revoking by name revokes the one key not revoked with that name; the
/// name can then be given to a new key, and revoking by it again means the
/// new one.
pub async fn revoke_by_name_frees_the_name(store: &ApiKeyFixture) {
    let first = new_key(Some("deploy"), ApiKeyScope::Lease);
    store.create_api_key(&first).await.unwrap();
    let other = new_key(Some("other"), ApiKeyScope::Lease);
    store.create_api_key(&other).await.unwrap();
    let revoked = store
        .revoke_api_key(&ApiKeySelector::Name("deploy".into()))
        .await
        .unwrap();
    assert_eq!(revoked.id, first.id);
    assert_eq!(
        store.find_active_api_key(&first.key_hash).await.unwrap(),
        None
    );
    assert!(
        store
            .find_active_api_key(&other.key_hash)
            .await
            .unwrap()
            .is_some(),
        "only the named key is revoked"
    );
    let second = new_key(Some("deploy"), ApiKeyScope::Admin);
    store.create_api_key(&second).await.unwrap();
    let revoked = store
        .revoke_api_key(&ApiKeySelector::Name("deploy".into()))
        .await
        .unwrap();
    assert_eq!(revoked.id, second.id);
    let gone = store
        .revoke_api_key(&ApiKeySelector::Name("deploy".into()))
        .await;
    assert!(
        matches!(
            gone,
            Err(StorageError::NotFound {
                entity: "api key",
                ..
            })
        ),
        "no key not revoked is named deploy: {gone:?}"
    );
}

/// A hash is stored once, and a name is unique among keys not revoked:
/// both clashes are conflicts that store nothing.
pub async fn duplicate_hash_or_active_name_conflicts(store: &ApiKeyFixture) {
    let key = new_key(Some("dup"), ApiKeyScope::Lease);
    store.create_api_key(&key).await.unwrap();
    let same_hash = NewApiKey {
        id: ApiKeyId::new(),
        name: None,
        ..key.clone()
    };
    let e = store.create_api_key(&same_hash).await.unwrap_err();
    assert!(matches!(e, StorageError::Conflict(_)), "{e:?}");
    let same_name = new_key(Some("dup"), ApiKeyScope::Admin);
    let e = store.create_api_key(&same_name).await.unwrap_err();
    assert!(matches!(e, StorageError::Conflict(_)), "{e:?}");
    assert_eq!(store.list_api_keys().await.unwrap().len(), 1);
}

/// Unknown ids and names are `NotFound` (entity "api key").
pub async fn revoking_an_unknown_key_is_not_found(store: &ApiKeyFixture) {
    for which in [
        ApiKeySelector::Id(ApiKeyId::new()),
        ApiKeySelector::Name("nobody".into()),
    ] {
        let e = store.revoke_api_key(&which).await.unwrap_err();
        assert!(
            matches!(
                e,
                StorageError::NotFound {
                    entity: "api key",
                    ..
                }
            ),
            "{which}: {e:?}"
        );
    }
}

/// A bad name is `Invalid` naming the field, and nothing is stored.
pub async fn invalid_name_is_rejected(store: &ApiKeyFixture) {
    for name in ["", "has space", &"x".repeat(65)] {
        let e = store
            .create_api_key(&new_key(Some(name), ApiKeyScope::Lease))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, StorageError::Invalid(v) if v.field == "name"),
            "{name:?}: {e:?}"
        );
    }
    assert!(store.list_api_keys().await.unwrap().is_empty());
}

/// The one list of API key scenarios, feeding [`API_KEY_SCENARIOS`] and
/// [`api_key_store_contract_tests!`](crate::api_key_store_contract_tests).
/// Not API.
#[doc(hidden)]
#[macro_export]
macro_rules! __pharox_api_key_scenario_list {
    ($($mode:tt)+) => {
        $crate::__pharox_api_key_scenario_expand! { [$($mode)+]
            created_key_is_found_by_its_hash,
            list_is_oldest_first_with_revoked_keys,
            revoked_key_is_not_found_and_revoking_again_changes_nothing,
            revoke_by_name_frees_the_name,
            duplicate_hash_or_active_name_conflicts,
            revoking_an_unknown_key_is_not_found,
            invalid_name_is_rejected,
        }
    };
}

/// What [`__pharox_api_key_scenario_list!`] expands to, by mode. Not API.
#[doc(hidden)]
#[macro_export]
macro_rules! __pharox_api_key_scenario_expand {
    ([names] $($name:ident),* $(,)?) => {
        &[$(stringify!($name)),*]
    };
    ([tests $factory:expr] $($name:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let store: $crate::api_keys::ApiKeyFixture = ($factory)().await;
                $crate::api_keys::$name(&store).await;
            }
        )*
    };
}

/// Expands to one `#[tokio::test]` per [`ApiKeyStore`] scenario, each
/// calling the factory (`|| async { ... }` returning an
/// `Arc<dyn ApiKeyStore>` that no other test uses).
#[macro_export]
macro_rules! api_key_store_contract_tests {
    ($factory:expr $(,)?) => {
        $crate::__pharox_api_key_scenario_list!(tests $factory);
    };
}

/// The name of every API key scenario.
pub const API_KEY_SCENARIOS: &[&str] = __pharox_api_key_scenario_list!(names);

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::API_KEY_SCENARIOS;

    /// Every `pub async fn` of this module is in the list, and only those.
    #[test]
    fn the_list_names_every_api_key_scenario() {
        let defined: BTreeSet<&str> = include_str!("api_keys.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("pub async fn "))
            .map(|rest| rest.split('(').next().unwrap_or_default())
            .collect();
        let listed: BTreeSet<&str> = API_KEY_SCENARIOS.iter().copied().collect();
        assert_eq!(listed.len(), API_KEY_SCENARIOS.len(), "listed twice");
        assert_eq!(defined, listed);
    }
}
