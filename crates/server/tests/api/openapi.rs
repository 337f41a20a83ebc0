//! `GET /openapi.json`: an OpenAPI 3.1 document that lists exactly the
//! router's routes, each with its security and problem responses.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::common::{ADMIN_KEY, spawn_app};

/// Every route of `router()`, as (method, path). A route added to the
/// router goes here too; the tests check that each one is served and that
/// the document lists exactly these.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/openapi.json"),
    ("get", "/metrics"),
    ("get", "/v1/pools"),
    ("post", "/v1/pools"),
    ("get", "/v1/pools/{pool}"),
    ("delete", "/v1/pools/{pool}"),
    ("get", "/v1/pools/{pool}/proxies"),
    ("post", "/v1/pools/{pool}/proxies"),
    ("post", "/v1/pools/{pool}/leases"),
    ("get", "/v1/pools/{pool}/health-sweeps"),
    ("post", "/v1/pools/{pool}/health-sweeps"),
    ("get", "/v1/leases/{id}"),
    ("post", "/v1/leases/{id}/release"),
    ("post", "/v1/leases/{id}/renew"),
    ("post", "/v1/leases/{id}/outcomes"),
    ("get", "/v1/proxies/{id}"),
    ("patch", "/v1/proxies/{id}"),
    ("delete", "/v1/proxies/{id}"),
    ("get", "/v1/proxies/{id}/health"),
];

/// Routes that need no key.
const OPEN: &[&str] = &["/healthz", "/readyz", "/openapi.json", "/metrics"];

async fn document() -> Value {
    let app = spawn_app().await;
    // No key: the document is public.
    let response = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    response.json().await.unwrap()
}

fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|k| ["get", "put", "post", "delete", "patch"].contains(&k.as_str()))
                .map(move |method| (method.clone(), path.clone()))
        })
        .collect()
}

#[tokio::test]
async fn the_document_is_openapi_3_1_and_lists_exactly_the_routes() {
    let doc = document().await;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        doc["openapi"]
    );
    let listed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(operations(&doc), listed);
    let ids: Vec<&str> = ROUTES
        .iter()
        .map(|(m, p)| doc["paths"][p][m]["operationId"].as_str().unwrap())
        .collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "operation ids repeat: {ids:?}");
}

#[tokio::test]
async fn every_listed_route_is_served() {
    let app = spawn_app().await;
    for (method, path) in ROUTES {
        let url = app.url(
            &path
                .replace("{pool}", "no-such-pool")
                .replace("{id}", "00000000-0000-0000-0000-000000000000"),
        );
        let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let response = app
            .client
            .request(method.clone(), url)
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        assert_ne!(status, 405, "{method} {path}: {body}");
        assert!(
            !body.contains("route_not_found"),
            "{method} {path}: {status} {body}"
        );
    }
}

#[tokio::test]
async fn keys_errors_and_bodies_are_described() {
    let doc = document().await;
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["api_key"]["in"], "header");
    assert_eq!(schemes["api_key"]["name"], "X-API-Key");
    for (method, path) in ROUTES {
        let operation = &doc["paths"][path][method];
        let security = operation.get("security");
        let responses = operation["responses"].as_object().unwrap();
        if OPEN.contains(path) {
            assert!(security.is_none(), "{method} {path}");
        } else {
            let names: BTreeSet<&str> = security
                .and_then(Value::as_array)
                .unwrap_or_else(|| panic!("{method} {path} has no security"))
                .iter()
                .flat_map(|r| r.as_object().unwrap().keys().map(String::as_str))
                .collect();
            assert_eq!(
                names,
                BTreeSet::from(["api_key", "bearer"]),
                "{method} {path}"
            );
            assert!(responses.contains_key("401"), "{method} {path}");
        }
        for (status, response) in responses {
            if status.starts_with(['4', '5']) {
                assert_eq!(
                    response["content"]["application/problem+json"]["schema"]["$ref"],
                    "#/components/schemas/Problem",
                    "{method} {path} {status}"
                );
            }
        }
        assert!(
            responses.keys().any(|s| s.starts_with('2')),
            "{method} {path}"
        );
    }
    let import = &doc["paths"]["/v1/pools/{pool}/proxies"]["post"]["requestBody"]["content"];
    for media_type in [
        "application/json",
        "text/csv",
        "application/x-ndjson",
        "text/plain",
    ] {
        assert!(import.get(media_type).is_some(), "{media_type}: {import}");
    }
    // Examples name the pool a client may try (never on DELETE).
    let pool_example =
        |method: &str, path: &str| doc["paths"][path][method]["parameters"][0]["example"].clone();
    assert_eq!(
        pool_example("post", "/v1/pools/{pool}/leases"),
        pharox_server::openapi::EXAMPLE_POOL
    );
    assert_eq!(pool_example("delete", "/v1/pools/{pool}"), Value::Null);
    // Links name their target by operationId (OpenAPI's spelling).
    let links = &doc["paths"]["/v1/pools/{pool}/leases"]["post"]["responses"]["201"]["links"];
    assert_eq!(links["release"]["operationId"], "release_lease", "{links}");
    assert_eq!(
        links["release"]["parameters"]["id"],
        "$response.body#/lease_id"
    );
    // The filter tree is recursive; outcomes are tagged by kind.
    let filter = &doc["components"]["schemas"]["ProxyFilter"];
    assert_eq!(
        filter["properties"]["any_of"]["items"]["$ref"],
        "#/components/schemas/ProxyFilter"
    );
    assert_eq!(
        doc["components"]["schemas"]["Outcome"]["discriminator"]["propertyName"],
        "kind"
    );
    if std::env::var_os("PHAROX_PRINT_OPENAPI").is_some() {
        println!("{}", serde_json::to_string_pretty(&doc).unwrap());
    }
}
