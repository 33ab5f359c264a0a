//! The API key store contract, run against the file store and against the
//! real Redis at `AMAOS_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`;
//! `scripts/test` starts one when none runs).

use std::sync::Arc;
use std::time::Duration;

use amaos_auth::error::AuthError;
use amaos_auth::keys::{KeyBackend, KeyStore, NewKey};
use amaos_auth::redis_keys::RedisKeys;

fn redis_url() -> String {
    std::env::var("AMAOS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn new_key<'a>(tenant: &'a str, idempotency_key: Option<&'a str>) -> NewKey<'a> {
    NewKey {
        key_id: amaos_mesh::new_id(),
        name: "ci",
        tenant,
        roles: vec!["developer".into()],
        ttl: None,
        idempotency_key,
    }
}

async fn conforms(store: Arc<dyn KeyBackend>) {
    assert!(store.is_empty().await.unwrap());
    let (key, secret) = store.create(new_key("acme", None)).await.unwrap();
    let secret = secret.expect("a new key's secret is returned once");
    assert!(!store.is_empty().await.unwrap());
    assert!(
        !key.hash.contains(&secret[secret.len() - 16..]),
        "stored hashed"
    );

    // Verification, and the time of use.
    let verified = store.verify(&secret).await.unwrap();
    assert_eq!(verified.key_id, key.key_id);
    assert!(verified.last_used_at_ms.is_some());
    let wrong = format!("{}x", &secret[..secret.len() - 1]);
    let unknown_prefix = format!("amaos_000000000000_{}", &secret[19..]);
    for bad in [wrong.as_str(), "amaos_short", "", unknown_prefix.as_str()] {
        assert!(
            matches!(store.verify(bad).await, Err(AuthError::InvalidKey)),
            "{bad}"
        );
    }

    // Idempotency is per tenant.
    let (first, s1) = store
        .create(new_key("acme", Some("deploy-1")))
        .await
        .unwrap();
    let (again, s2) = store
        .create(new_key("acme", Some("deploy-1")))
        .await
        .unwrap();
    assert!(s1.is_some() && s2.is_none());
    assert_eq!(first.key_id, again.key_id);
    let (other, s3) = store
        .create(new_key("globex", Some("deploy-1")))
        .await
        .unwrap();
    assert!(s3.is_some());
    assert_ne!(other.key_id, first.key_id);

    // Lists: per tenant, oldest first; all tenants.
    let acme: Vec<String> = store
        .list(Some("acme"), false)
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.key_id)
        .collect();
    assert_eq!(acme, [key.key_id.clone(), first.key_id.clone()]);
    assert_eq!(store.list(None, false).await.unwrap().len(), 3);

    // Revocation: not across tenants; once; at once.
    assert!(matches!(
        store.revoke(&key.key_id, Some("globex")).await,
        Err(AuthError::KeyNotFound(_))
    ));
    assert!(matches!(
        store.revoke("no-such-key", None).await,
        Err(AuthError::KeyNotFound(_))
    ));
    let revoked = store.revoke(&key.key_id, Some("acme")).await.unwrap();
    let at = revoked.revoked_at_ms.expect("revoked");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let twice = store.revoke(&key.key_id, None).await.unwrap();
    assert_eq!(twice.revoked_at_ms, Some(at), "the first revocation stays");
    assert!(matches!(
        store.verify(&secret).await,
        Err(AuthError::InvalidKey)
    ));
    assert_eq!(store.list(Some("acme"), false).await.unwrap().len(), 1);
    assert_eq!(store.list(Some("acme"), true).await.unwrap().len(), 2);

    // Expiry.
    let mut short = new_key("acme", None);
    short.ttl = Some(Duration::from_millis(1));
    let (_, expiring) = store.create(short).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(matches!(
        store.verify(&expiring.unwrap()).await,
        Err(AuthError::InvalidKey)
    ));
}

#[tokio::test]
async fn the_file_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store = KeyStore::open(&dir.path().join("keys.json")).unwrap();
    conforms(Arc::new(store)).await;
}

#[tokio::test]
async fn the_redis_store_conforms_and_is_shared_by_replicas() {
    let url = redis_url();
    let prefix = format!("amaos-test-{}", amaos_mesh::new_id());
    let connect = || async {
        RedisKeys::connect(&url, &prefix).await.unwrap_or_else(|e| {
            panic!("Redis at {url} is needed for this test (scripts/test starts one): {e}")
        })
    };
    conforms(Arc::new(connect().await)).await;

    // Two auth replicas on one store: a key made on one works on the other,
    // and a revocation on either is seen by both.
    let (a, b) = (connect().await, connect().await);
    let (key, secret) = a.create(new_key("initech", None)).await.unwrap();
    let secret = secret.unwrap();
    assert_eq!(b.verify(&secret).await.unwrap().key_id, key.key_id);
    b.revoke(&key.key_id, Some("initech")).await.unwrap();
    assert!(matches!(
        a.verify(&secret).await,
        Err(AuthError::InvalidKey)
    ));
}
