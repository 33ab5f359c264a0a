//! One suite for both registry backends: in-process, and Redis at
//! `AMAOS_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`), one test per
//! scenario and backend. Time is real and short (a TTL and a cool-down of a
//! few hundred milliseconds), and Redis keeps its own clock, so the suite
//! waits on the condition an expiry or a cool-down brings ([`eventually`]),
//! never for a fixed time.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use amaos_router::backend::WorkerRegistry;
use amaos_router::breaker::State;
use amaos_router::error::RouterError;
use amaos_router::redis_registry::RedisRegistry;
use amaos_router::registry::{
    BreakerPolicy, Outcome, Registration, Registry, RouteQuery, WorkerView,
};

const TTL: Duration = Duration::from_millis(400);
const POLICY: BreakerPolicy = BreakerPolicy {
    failures: 2,
    cool_down: Duration::from_millis(400),
};

/// The owner every worker of the suite registers as, unless it says otherwise.
const OWNER: &str = "worker-key";

/// A registration at an address of its own (two workers never share one).
fn reg(teams: &[&str]) -> Registration {
    static PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(1);
    let port = PORT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Registration {
        address: format!("http://127.0.0.1:{port}"),
        teams: teams.iter().map(|t| t.to_string()).collect(),
        capabilities: vec!["tools".into()],
        capacity: 4,
        labels: HashMap::new(),
        owner: OWNER.into(),
    }
}

/// Polls `check` until it yields a value; fails naming `what` after ten
/// seconds of wall-clock time.
async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn query(team: &str) -> RouteQuery<'_> {
    RouteQuery {
        team,
        ..Default::default()
    }
}

/// Registration, listing, routing, unknown teams, inline specs; then draining
/// and expiry take the worker out of routing and a heartbeat brings it back.
async fn registration_routing_draining_and_expiry<F, Fut>(make: F)
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Arc<dyn WorkerRegistry>>,
{
    let r = make(10).await;
    let a = r
        .register(Some("a".into()), reg(&["crew", "*"]))
        .await
        .unwrap();
    assert_eq!(a, "a");
    let listed = r.list(None, false).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].registration.teams, ["crew", "*"]);
    let routed = r.route(&query("crew")).await.unwrap();
    assert_eq!(routed.worker_id, "a");
    assert_eq!(routed.in_flight, 1);
    assert!(matches!(
        r.route(&query("other")).await,
        Err(RouterError::UnknownTeam(_))
    ));
    let inline = RouteQuery {
        team: "other",
        inline_spec: true,
        ..Default::default()
    };
    assert_eq!(r.route(&inline).await.unwrap().worker_id, "a");
    let needs_gpu = ["gpu".to_owned()];
    let gpu = RouteQuery {
        team: "crew",
        required_capabilities: &needs_gpu,
        ..Default::default()
    };
    assert!(matches!(
        r.route(&gpu).await,
        Err(RouterError::NoLiveWorker(_))
    ));
    assert!(matches!(
        r.heartbeat("ghost", OWNER, 0, false).await,
        Err(RouterError::WorkerNotFound(_))
    ));

    // Draining and expiry take a worker out of routing; a heartbeat brings it back.
    r.heartbeat("a", OWNER, 0, true).await.unwrap();
    assert!(matches!(
        r.route(&query("crew")).await,
        Err(RouterError::NoLiveWorker(_))
    ));
    r.heartbeat("a", OWNER, 0, false).await.unwrap();
    assert!(r.route(&query("crew")).await.is_ok());
    eventually("the worker's registration expires", async || {
        matches!(
            r.route(&query("crew")).await,
            Err(RouterError::NoLiveWorker(_))
        )
        .then_some(())
    })
    .await;
    assert!(r.list(None, false).await.unwrap().is_empty());
    assert_eq!(r.list(None, true).await.unwrap().len(), 1);
    r.heartbeat("a", OWNER, 0, false).await.unwrap();
    assert!(r.route(&query("crew")).await.is_ok());
}

/// Breakers: a worker's opens and traffic goes elsewhere; a team's opens and
/// nothing is routed; after the cool-down one probe passes and success closes it.
async fn breakers_open_and_close<F, Fut>(make: F)
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Arc<dyn WorkerRegistry>>,
{
    let r = make(10).await;
    r.register(Some("a".into()), reg(&["crew"])).await.unwrap();
    r.register(Some("b".into()), reg(&["crew"])).await.unwrap();
    r.report("a", "other-team", Outcome::WorkerFailure)
        .await
        .unwrap();
    let (worker, team) = r
        .report("a", "other-team", Outcome::WorkerFailure)
        .await
        .unwrap();
    assert_eq!(worker, State::Open);
    // A worker's own failures are not its team's.
    assert_eq!(team, State::Closed);
    for _ in 0..10 {
        assert_eq!(r.route(&query("crew")).await.unwrap().worker_id, "b");
    }
    let states = r.worker_breakers(&["a".into(), "b".into()]).await.unwrap();
    assert_eq!(states, [State::Open, State::Closed]);
    assert_eq!(r.tripped().await.unwrap(), (1, 0));
    r.report("b", "crew", Outcome::TeamFailure).await.unwrap();
    let (worker, team) = r.report("b", "crew", Outcome::TeamFailure).await.unwrap();
    assert_eq!((worker, team), (State::Closed, State::Open));
    assert!(matches!(
        r.route(&query("crew")).await,
        Err(RouterError::TeamBreakerOpen(_, _))
    ));
    let probe = after_cool_down(&r, "one probe passes").await;
    r.report(&probe.worker_id, "crew", Outcome::Success)
        .await
        .unwrap();
    assert!(r.route(&query("crew")).await.is_ok());
}

/// An unreachable worker's breaker opens at once; a half-open breaker
/// whose probe is never reported lets another probe through a cool-down
/// later instead of refusing for good.
async fn an_unreachable_worker_and_an_unreported_probe<F, Fut>(make: F)
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Arc<dyn WorkerRegistry>>,
{
    let r = make(10).await;
    r.register(Some("a".into()), reg(&["crew"])).await.unwrap();
    r.register(Some("b".into()), reg(&["crew"])).await.unwrap();
    let (worker, _) = r.report("a", "crew", Outcome::Unreachable).await.unwrap();
    assert_eq!(worker, State::Open);
    for _ in 0..10 {
        assert_eq!(r.route(&query("crew")).await.unwrap().worker_id, "b");
    }
    r.report("b", "crew", Outcome::TeamFailure).await.unwrap();
    r.report("b", "crew", Outcome::TeamFailure).await.unwrap();
    after_cool_down(&r, "the probe passes").await;
    assert!(matches!(
        r.route(&query("crew")).await,
        Err(RouterError::TeamBreakerOpen(_, _))
    ));
    after_cool_down(&r, "another probe passes once the first went unreported").await;
}

/// The probe a team breaker lets through once its cool-down is over, with
/// workers `a` and `b` kept alive meanwhile; until then the team's breaker
/// refuses and nothing changes.
async fn after_cool_down(r: &Arc<dyn WorkerRegistry>, what: &str) -> WorkerView {
    eventually(what, async || {
        r.heartbeat("a", OWNER, 0, false).await.unwrap();
        r.heartbeat("b", OWNER, 0, false).await.unwrap();
        match r.route(&query("crew")).await {
            Ok(probe) => Some(probe),
            Err(RouterError::TeamBreakerOpen(_, _)) => None,
            Err(e) => panic!("{what}: {e:?}"),
        }
    })
    .await
}

/// Session affinity sticks; the registry is bounded.
async fn session_affinity_sticks_and_the_registry_is_bounded<F, Fut>(make: F)
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Arc<dyn WorkerRegistry>>,
{
    let r = make(3).await;
    for id in ["a", "b", "c"] {
        r.register(Some(id.into()), reg(&["crew"])).await.unwrap();
    }
    let sticky = RouteQuery {
        team: "crew",
        session_key: "s-1",
        ..Default::default()
    };
    let first = r.route(&sticky).await.unwrap().worker_id;
    for _ in 0..5 {
        assert_eq!(r.route(&sticky).await.unwrap().worker_id, first);
    }
    assert!(matches!(
        r.register(Some("d".into()), reg(&["crew"])).await,
        Err(RouterError::RegistryFull(3))
    ));
}

/// A worker id belongs to the identity that registered it: another
/// identity can neither take it over (and its traffic) nor heartbeat it.
async fn a_worker_id_belongs_to_its_registrant<F, Fut>(make: F)
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Arc<dyn WorkerRegistry>>,
{
    let r = make(10).await;
    let mine = reg(&["crew"]);
    r.register(Some("a".into()), mine.clone()).await.unwrap();
    let thief = Registration {
        address: "http://127.0.0.1:9".into(),
        owner: "someone-else".into(),
        ..mine.clone()
    };
    assert!(matches!(
        r.register(Some("a".into()), thief).await,
        Err(RouterError::NotOwner(_))
    ));
    assert!(matches!(
        r.heartbeat("a", "someone-else", 0, true).await,
        Err(RouterError::NotOwner(_))
    ));
    let listed = r.list(None, true).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].registration.address, mine.address);
    assert!(!listed[0].draining);

    // A worker restarted at the same address registers as itself and
    // replaces its dead self: nothing is routed to the old id any more.
    r.register(Some("a-restarted".into()), mine.clone())
        .await
        .unwrap();
    let listed = r.list(None, true).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].worker_id, "a-restarted");
    assert!(matches!(
        r.heartbeat("a", OWNER, 0, false).await,
        Err(RouterError::WorkerNotFound(_))
    ));
}

/// A fresh in-process registry of at most `max` workers.
async fn memory(max: usize) -> Arc<dyn WorkerRegistry> {
    Arc::new(Registry::with_breakers(TTL, max, POLICY))
}

/// A fresh Redis registry of at most `max` workers, under its own prefix.
async fn redis(max: usize) -> Arc<dyn WorkerRegistry> {
    let url =
        std::env::var("AMAOS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("amaos-test-{}", amaos_mesh::new_id());
    let registry = RedisRegistry::connect(&url, &prefix, TTL, max, POLICY)
        .await
        .unwrap_or_else(|e| panic!("Redis at {url} is needed for this test: {e}"));
    Arc::new(registry)
}

/// One `#[tokio::test]` per scenario and backend.
macro_rules! conformance {
    ($($scenario:ident,)*) => {
        mod memory_registry {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario(super::memory).await;
                }
            )*
        }
        mod redis_registry {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario(super::redis).await;
                }
            )*
        }
    };
}

conformance! {
    registration_routing_draining_and_expiry,
    breakers_open_and_close,
    an_unreachable_worker_and_an_unreported_probe,
    session_affinity_sticks_and_the_registry_is_bounded,
    a_worker_id_belongs_to_its_registrant,
}
