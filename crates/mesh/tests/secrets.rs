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
    /// Transit ciphertexts handed out, and the base64 plaintext of each.
    transit: HashMap<String, String>,
    /// Transit calls seen, as `encrypt <key>` or `decrypt <key>`.
    transit_calls: Vec<String>,
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
        .route(
            "/v1/transit/{op}/{key}",
            post(
                |State(s): State<Shared>,
                 Path((op, key)): Path<(String, String)>,
                 headers: HeaderMap,
                 body: String| async move {
                    if !authorized(&headers) {
                        return (StatusCode::FORBIDDEN, Json(json!({"errors": ["permission denied"]})));
                    }
                    let body: Value = serde_json::from_str(&body).unwrap_or_default();
                    let mut vault = s.lock().unwrap();
                    vault.transit_calls.push(format!("{op} {key}"));
                    let data = match op.as_str() {
                        "encrypt" => {
                            let ciphertext = format!("vault:v1:{}", amaos_mesh::new_id());
                            let plain = body["plaintext"].as_str().unwrap_or_default().to_owned();
                            vault.transit.insert(ciphertext.clone(), plain);
                            json!({"ciphertext": ciphertext, "key_version": 1})
                        }
                        "decrypt" => match vault.transit.get(body["ciphertext"].as_str().unwrap_or_default()) {
                            Some(plain) => json!({"plaintext": plain}),
                            None => return (StatusCode::BAD_REQUEST, Json(json!({"errors": ["invalid ciphertext"]}))),
                        },
                        _ => return (StatusCode::NOT_FOUND, Json(json!({"errors": []}))),
                    };
                    (
                        StatusCode::OK,
                        Json(json!({
                            "request_id": "r", "lease_id": "", "lease_duration": 0, "renewable": false,
                            "warnings": null, "wrap_info": null, "auth": null, "data": data
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

/// The address of the real Vault the ignored tests run against
/// (`VAULT_ADDR` and `VAULT_TOKEN` must be set).
fn real_vault() -> String {
    let (Ok(addr), Ok(_)) = (std::env::var("VAULT_ADDR"), std::env::var("VAULT_TOKEN")) else {
        panic!("set VAULT_ADDR and VAULT_TOKEN to the Vault server this test runs against");
    };
    addr
}

#[tokio::test]
#[ignore = "needs a Vault server: set VAULT_ADDR and VAULT_TOKEN and run with --ignored"]
async fn a_real_vault_serves_kv_v2_when_vault_addr_is_set() {
    let addr = real_vault();
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

#[tokio::test]
async fn master_keys_are_wrapped_by_vault_transit_and_unwrapped_only_through_it() {
    use amaos_mesh::seal::Sealer;
    let state: Shared = Arc::default();
    let addr = fake_vault(state.clone()).await;
    let mut config = approle_config(addr);
    config.transit_key = "amaos-memory".into();
    let vault = VaultSecrets::login_to(&config).await.unwrap();
    let dir = tempfile::tempdir().unwrap();

    // A key file written before transit was configured is rewritten wrapped,
    // and what it sealed still opens.
    let path = dir.path().join("memory.keys");
    let before = Sealer::open_or_create(&path).unwrap();
    let old = before.seal("acme", "sealed before transit").unwrap();
    let sealer = Sealer::open_or_create_wrapped(&path, &vault).await.unwrap();
    assert_eq!(sealer.open("acme", &old).unwrap(), "sealed before transit");
    let file: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(
        file.get("keys").is_none(),
        "no key is left in clear: {file}"
    );
    assert!(
        file["wrapped"]["1"]
            .as_str()
            .unwrap()
            .starts_with("vault:v1:")
    );
    assert_eq!(file["transit_key"], "amaos-memory");

    // Rotation adds a wrapped version; old values open, new ones use it.
    assert_eq!(Sealer::rotate_wrapped(&path, &vault).await.unwrap(), 2);
    let rotated = Sealer::open_or_create_wrapped(&path, &vault).await.unwrap();
    let new = rotated.seal("acme", "sealed after rotation").unwrap();
    assert!(new.starts_with("sealed:1:2:"));
    assert_eq!(rotated.open("acme", &old).unwrap(), "sealed before transit");
    {
        let seen = state.lock().unwrap();
        assert!(
            seen.transit_calls
                .contains(&"decrypt amaos-memory".to_owned())
        );
        assert!(
            seen.transit_calls
                .iter()
                .all(|c| c.ends_with(" amaos-memory"))
        );
    }

    // Without Vault the file is useless, and says why.
    let error = Sealer::open_or_create(&path).err().unwrap().to_string();
    assert!(error.contains("secrets.transit_key"), "{error}");
    // A fresh file under transit never holds a clear key.
    let fresh = dir.path().join("orchestrator.keys");
    let sealer = Sealer::open_or_create_wrapped(&fresh, &vault)
        .await
        .unwrap();
    let value = sealer.seal_bytes("task/1", b"output").unwrap();
    assert_eq!(
        sealer.open_bytes("task/1", value.as_bytes()).unwrap(),
        b"output"
    );
    let text = std::fs::read_to_string(&fresh).unwrap();
    assert!(!text.contains("\"keys\""), "{text}");
    // A ciphertext Vault does not know is an error, not a key.
    state.lock().unwrap().transit.clear();
    assert!(
        Sealer::open_or_create_wrapped(&fresh, &vault)
            .await
            .is_err()
    );
}

#[tokio::test]
#[ignore = "needs a Vault server: set VAULT_ADDR and VAULT_TOKEN and run with --ignored"]
async fn a_real_vault_wraps_master_keys_with_transit_when_vault_addr_is_set() {
    let addr = real_vault();
    // The test expects the transit engine at `transit` (`vault secrets
    // enable transit`) and a key `amaos-test` (`vault write -f
    // transit/keys/amaos-test`).
    let config = SecretsConfig {
        backend: SecretsBackend::Vault,
        vault_addr: addr,
        transit_key: "amaos-test".into(),
        ..SecretsConfig::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("memory.keys");
    let sealer = amaos_mesh::seal::open_configured(path.clone(), &config)
        .await
        .unwrap();
    let sealed = sealer.seal("acme", "through a real Vault").unwrap();
    let again = amaos_mesh::seal::open_configured(path, &config)
        .await
        .unwrap();
    assert_eq!(again.open("acme", &sealed).unwrap(), "through a real Vault");
}
