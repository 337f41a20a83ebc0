//! `POST/GET /v1/pools/{pool}/health-sweeps` on the in-memory storage: a
//! sweep starts (202), a second one is refused while it runs (409), its
//! status shows who runs it, it writes its results and frees the pool for
//! the next one; unknown pools, lease keys and a server without sweeps.
//! PostgreSQL, with the lock shared by replicas and `pharox health check`,
//! is in `crates/cli/tests/serve_upkeep.rs`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pharox::{HealthCheckOptions, HealthCheckResult, HealthProbe, Proxy, SimulatedProbe};
use pharox_adapter_memory::MemoryStorage;
use pharox_server::Limits;
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::common::{ADMIN_KEY, LEASE_KEY, TestApp, problem, seed, spawn_app, spawn_with_sweeps};

/// A probe that holds every check until the test opens its gate, so a
/// sweep runs exactly as long as the test needs; then it answers as
/// [`SimulatedProbe`] does. It touches no network (the seeded proxies
/// have made-up addresses).
struct GatedProbe {
    gate: Arc<Semaphore>,
}

#[async_trait]
impl HealthProbe for GatedProbe {
    async fn probe(&self, proxy: &Proxy, options: &HealthCheckOptions) -> HealthCheckResult {
        let _pass = self.gate.acquire().await;
        SimulatedProbe::new(Duration::ZERO)
            .probe(proxy, options)
            .await
    }
}

async fn status(app: &TestApp, pool: &str) -> Value {
    let response = app
        .get(&format!("/v1/pools/{pool}/health-sweeps"), ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test]
async fn a_sweep_runs_once_at_a_time_writes_its_results_and_frees_the_pool() {
    let gate = Arc::new(Semaphore::new(0));
    let storage = Arc::new(MemoryStorage::new());
    let proxies = seed(storage.as_ref(), "p", 3, 1).await;
    let probe = Arc::new(GatedProbe {
        gate: Arc::clone(&gate),
    });
    let app = spawn_with_sweeps(storage, Limits::default(), probe).await;
    assert_eq!(status(&app, "p").await["running"], false);

    let started = app
        .post("/v1/pools/p/health-sweeps", ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 202);
    let started: Value = started.json().await.unwrap();
    assert_eq!(started["pool"], "p");
    assert_eq!(started["proxies"], 3);
    assert_eq!(started["holder"], "the API tests");

    let second = app
        .post("/v1/pools/p/health-sweeps", ADMIN_KEY)
        .send()
        .await
        .unwrap();
    let refused = problem(second, 409, "sweep_running").await;
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("the API tests"),
        "{refused}"
    );
    let running = status(&app, "p").await;
    assert_eq!(running["running"], true, "{running}");
    assert_eq!(running["holder"], "the API tests", "{running}");

    // Let every check through; the sweep ends and frees the pool.
    gate.add_permits(Semaphore::MAX_PERMITS / 2);
    let mut rounds = 0;
    while status(&app, "p").await["running"] == true {
        rounds += 1;
        assert!(rounds < 2_000, "the sweep never finished");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for proxy in &proxies {
        let health: Value = app
            .get(&format!("/v1/proxies/{}/health", proxy.id), ADMIN_KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(health["status"], "active", "{health}");
        assert_eq!(health["records"].as_array().unwrap().len(), 1, "{health}");
    }
    let again = app
        .post("/v1/pools/p/health-sweeps", ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 202);
    app.stop().await;
}

#[tokio::test]
async fn unknown_pools_lease_keys_and_a_server_without_sweeps_are_refused() {
    let storage = Arc::new(MemoryStorage::new());
    seed(storage.as_ref(), "p", 1, 1).await;
    let probe = Arc::new(SimulatedProbe::new(Duration::ZERO));
    let app = spawn_with_sweeps(storage, Limits::default(), probe).await;
    for unknown in [
        app.post("/v1/pools/nope/health-sweeps", ADMIN_KEY),
        app.get("/v1/pools/nope/health-sweeps", ADMIN_KEY),
    ] {
        problem(unknown.send().await.unwrap(), 404, "pool_not_found").await;
    }
    for lease_key in [
        app.post("/v1/pools/p/health-sweeps", LEASE_KEY),
        app.get("/v1/pools/p/health-sweeps", LEASE_KEY),
    ] {
        problem(lease_key.send().await.unwrap(), 403, "forbidden").await;
    }
    app.stop().await;

    let without = spawn_app().await;
    seed(without.storage.as_ref(), "p", 1, 1).await;
    let response = without
        .post("/v1/pools/p/health-sweeps", ADMIN_KEY)
        .send()
        .await
        .unwrap();
    problem(response, 501, "not_configured").await;
}
