//! The secret stores: the file store (with rotation by rewriting the file),
//! a contract test of the Vault backend against an HTTP server in the test
//! speaking the KV v2, AppRole and token endpoints it uses (login, versioned
//! reads, renewal, a rotated secret picked up after the cache TTL), and an
//! integration test against a real Vault when `VAULT_ADDR` is set.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use amaos_mesh::secrets::{
    FileSecrets, Secret, SecretError, SecretStore, SecretsBackend, SecretsConfig, VaultAuthMethod,
    VaultSecrets, env_name,
};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

#[tokio::test]
async fn the_file_store_reads_rotates_and_never_prints_values() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secrets.json");
    std::fs::write(&file, r#"{"llm/openai": "sk-first"}"#).unwrap();
    let store = FileSecrets::new(file.clone());
    let secret = store.get("llm/openai").await.unwrap();
    assert_eq!(secret.expose(), "sk-first");
    assert_eq!(format!("{secret:?}"), "Secret(***)");
    assert_eq!(secret.scrub("key sk-first leaked"), "key *** leaked");
    assert!(matches!(
        store.get("llm/other").await,
        Err(SecretError::NotFound(p)) if p == "llm/other"
    ));
    // Rotation: a rewritten file is read again.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&file, r#"{"llm/openai": "sk-second"}"#).unwrap();
    assert_eq!(store.get("llm/openai").await.unwrap().expose(), "sk-second");
    // A broken file is an error naming the file and position, not its content.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&file, r#"{"llm/openai": "sk-third""#).unwrap();
    let error = store.get("llm/openai").await.unwrap_err().to_string();
    assert!(
        error.contains("secrets.json") && !error.contains("sk-third"),
        "{error}"
    );
    assert_eq!(env_name("llm/openai"), "AMAOS_SECRET__LLM__OPENAI");
}

/// What the fake Vault holds and saw.
#[derive(Default)]
struct Vault {
    /// Versions of `secret/llm/openai`, oldest first.
    versions: Vec<String>,
    logins: u32,
    renewals: u32,
}

type Shared = Arc<Mutex<Vault>>;

const TOKEN: &str = "hvs.test-token";

fn authorized(headers: &HeaderMap) -> bool {
    headers.get("x-vault-token").and_then(|v| v.to_str().ok()) == Some(TOKEN)
}

fn auth_body(lease: u64) -> Value {
    json!({
        "request_id": "r", "lease_id": "", "lease_duration": 0, "renewable": false,
        "data": null, "warnings": null, "wrap_info": null,
        "auth": {
            "client_token": TOKEN, "accessor": "a", "policies": ["amaos"],
            "token_policies": ["amaos"], "metadata": null, "lease_duration": lease,
            "renewable": true, "entity_id": "", "token_type": "service", "orphan": true
        }
    })
}

async fn fake_vault(state: Shared) -> String {
    let app = Router::new()
        .route(
            "/v1/auth/approle/login",
            post(|State(s): State<Shared>, body: String| async move {
                let body: Value = serde_json::from_str(&body).unwrap_or_default();
                // The role and secret ids come from the environment variables the config names.
                if body["role_id"] != env!("CARGO_PKG_NAME") || body["secret_id"] != env!("CARGO_PKG_VERSION") {
                    return (StatusCode::BAD_REQUEST, Json(json!({"errors": ["invalid role or secret ID"]})));
                }
                s.lock().unwrap().logins += 1;
                (StatusCode::OK, Json(auth_body(3)))
            }),
        )
        .route(
            "/v1/auth/token/renew-self",
            post(|State(s): State<Shared>, headers: HeaderMap| async move {
                if !authorized(&headers) {
                    return (StatusCode::FORBIDDEN, Json(json!({"errors": ["permission denied"]})));
                }
                s.lock().unwrap().renewals += 1;
                (StatusCode::OK, Json(auth_body(3)))
            }),
        )
        .route(
            "/v1/secret/data/{*path}",
            get(
                |State(s): State<Shared>,
                 Path(path): Path<String>,
                 Query(query): Query<HashMap<String, u64>>,
                 headers: HeaderMap| async move {
                    if !authorized(&headers) {
                        return (StatusCode::FORBIDDEN, Json(json!({"errors": ["permission denied"]})));
                    }
                    let vault = s.lock().unwrap();
                    let index = match query.get("version") {
                        Some(v) => (*v as usize).checked_sub(1),
                        None => vault.versions.len().checked_sub(1),
                    };
                    let value = match (path.as_str(), index.and_then(|i| vault.versions.get(i))) {
                        ("llm/openai", Some(v)) => v.clone(),
                        _ => return (StatusCode::NOT_FOUND, Json(json!({"errors": []}))),
                    };
                    let version = index.unwrap_or(0) + 1;
                    (
                        StatusCode::OK,
                        Json(json!({
                            "request_id": "r", "lease_id": "", "lease_duration": 0, "renewable": false,
                            "warnings": null, "wrap_info": null, "auth": null,
                            "data": {
                                "data": {"value": value},
                                "metadata": {"created_time": "2026-11-24T00:00:00Z", "deletion_time": "",
                                             "custom_metadata": null, "destroyed": false, "version": version}
                            }
                        })),
                    )
                },
            ),
        )
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}")
}

fn approle_config(addr: String) -> SecretsConfig {
    SecretsConfig {
        backend: SecretsBackend::Vault,
        vault_addr: addr,
        vault_auth: VaultAuthMethod::Approle,
        vault_role_id_env: "CARGO_PKG_NAME".into(),
        vault_secret_id_env: "CARGO_PKG_VERSION".into(),
        cache_ttl: Duration::from_millis(300),
        ..SecretsConfig::default()
    }
}

#[tokio::test]
async fn the_vault_backend_logs_in_reads_versions_renews_and_picks_up_rotation() {
    let state: Shared = Arc::new(Mutex::new(Vault {
        versions: vec!["sk-v1".into()],
        ..Vault::default()
    }));
    let addr = fake_vault(state.clone()).await;
    let store = VaultSecrets::connect(&approle_config(addr)).await.unwrap();
    assert_eq!(store.name(), "vault");
    assert_eq!(state.lock().unwrap().logins, 1);
    assert_eq!(store.get("llm/openai").await.unwrap().expose(), "sk-v1");
    assert!(matches!(
        store.get("llm/missing").await,
        Err(SecretError::NotFound(_))
    ));
    // Rotation: a new version is served after the cache entry ages out.
    state.lock().unwrap().versions.push("sk-v2".into());
    assert_eq!(
        store.get("llm/openai").await.unwrap().expose(),
        "sk-v1",
        "cached"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(store.get("llm/openai").await.unwrap().expose(), "sk-v2");
    // A pinned version.
    assert_eq!(store.get("llm/openai@1").await.unwrap().expose(), "sk-v1");
    // The 3 s token is renewed at 2 s.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert!(state.lock().unwrap().renewals >= 1, "the token was renewed");
}

#[tokio::test]
async fn a_bad_login_is_an_error_without_secrets_in_it() {
    let state: Shared = Arc::default();
    let addr = fake_vault(state).await;
    let mut config = approle_config(addr);
    config.vault_secret_id_env = "CARGO_PKG_NAME".into();
    let Err(error) = VaultSecrets::connect(&config).await else {
        panic!("a wrong secret id is refused")
    };
    let text = error.to_string();
    assert!(text.contains("vault"), "{text}");
    assert!(!text.contains(env!("CARGO_PKG_NAME")), "{text}");
    let _ = Secret::new("x");
}

#[tokio::test]
async fn a_real_vault_serves_kv_v2_when_vault_addr_is_set() {
    let (Ok(addr), Ok(_)) = (std::env::var("VAULT_ADDR"), std::env::var("VAULT_TOKEN")) else {
        eprintln!("VAULT_ADDR and VAULT_TOKEN are not set: no Vault server to test against");
        return;
    };
    // The test expects `secret/amaos-test` with a `value` field.
    let config = SecretsConfig {
        backend: SecretsBackend::Vault,
        vault_addr: addr,
        ..SecretsConfig::default()
    };
    let store = VaultSecrets::connect(&config).await.unwrap();
    let secret = store.get("amaos-test").await.unwrap();
    assert!(!secret.expose().is_empty());
}
