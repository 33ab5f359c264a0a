//! The Lua scripts against [`Breaker`]: from every kind of stored state,
//! each operation leaves the same breaker in Redis as the Rust machine
//! computes. Needs Redis (`AMAOS_TEST_REDIS_URL`, default
//! `redis://127.0.0.1:6379`).

use amaos_mesh::breaker::BreakerPolicy;

use super::*;

const POLICY: BreakerPolicy = BreakerPolicy {
    failures: 3,
    cool_down: Duration::from_secs(60),
};
/// How far apart the test's and the script's reading of the server clock may be.
const SLACK_MS: u64 = 2_000;

#[derive(Clone, Copy, Debug)]
enum Op {
    Admit,
    Success,
    Failure,
    Trip,
}

async fn server_now(conn: &mut Conn) -> u64 {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await.unwrap();
    secs * 1000 + micros / 1000
}

fn encode(b: &Breaker<Millis>) -> String {
    format!(
        "{}:{}:{}",
        b.failures(),
        b.open_until().map_or(0, |t| t.0),
        u8::from(b.probing())
    )
}

#[tokio::test]
async fn the_lua_scripts_are_the_mesh_breaker() {
    let url =
        std::env::var("AMAOS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let (_, mut conn) = amaos_mesh::redis_conn::connect(&url).await.unwrap();
    let hash = format!("test-breaker-lua-{}", amaos_mesh::new_id());
    let (record, admit) = (Script::new(RECORD), Script::new(ADMIT));
    let cool_down_ms = POLICY.cool_down.as_millis() as u64;
    let now = server_now(&mut conn).await;
    let hour = 3_600_000;
    // Closed (never failed, failed below the threshold), open, half-open,
    // open with a probe out, and a probe unreported past its cool-down.
    let starts: Vec<Option<String>> = vec![
        None,
        Some("2:0:0".into()),
        Some(format!("4:{}:0", now + hour)),
        Some(format!("4:{}:0", now - 1_000)),
        Some(format!("4:{}:1", now + hour)),
        Some(format!("4:{}:1", now - 1_000)),
    ];
    for start in &starts {
        for op in [Op::Admit, Op::Success, Op::Failure, Op::Trip] {
            let field = "k";
            let _: () = match start {
                Some(s) => conn.hset(&hash, field, s).await.unwrap(),
                None => conn.hdel(&hash, field).await.unwrap(),
            };
            let mut expected = stored_breaker(start.as_deref());
            let at = Millis(server_now(&mut conn).await);
            let (lua_result, rust_result) = match op {
                Op::Admit => {
                    let wait: i64 = admit
                        .key(&hash)
                        .arg(field)
                        .arg(cool_down_ms)
                        .invoke_async(&mut conn)
                        .await
                        .unwrap();
                    (wait < 0, expected.admit(&POLICY, at).is_ok())
                }
                Op::Success | Op::Failure | Op::Trip => {
                    let (change, state) = match op {
                        Op::Success => ("1", expected.record(&POLICY, true, at)),
                        Op::Failure => ("0", expected.record(&POLICY, false, at)),
                        _ => ("t", expected.trip(&POLICY, at)),
                    };
                    let open: i64 = record
                        .key(&hash)
                        .arg(field)
                        .arg(change)
                        .arg(POLICY.failures)
                        .arg(cool_down_ms)
                        .invoke_async(&mut conn)
                        .await
                        .unwrap();
                    (open == 1, state == State::Open)
                }
            };
            let case = format!("{op:?} from {start:?}");
            assert_eq!(lua_result, rust_result, "{case}: result");
            let stored: Option<String> = conn.hget(&hash, field).await.unwrap();
            let got = stored_breaker(stored.as_deref());
            assert_eq!(got.failures(), expected.failures(), "{case}: {stored:?}");
            assert_eq!(got.probing(), expected.probing(), "{case}: {stored:?}");
            match (got.open_until(), expected.open_until()) {
                (None, None) => {}
                (Some(a), Some(b)) => assert!(
                    a.0.abs_diff(b.0) <= SLACK_MS,
                    "{case}: open until {a:?} in Redis, {b:?} in Rust ({})",
                    encode(&expected)
                ),
                (a, b) => panic!("{case}: open until {a:?} in Redis, {b:?} in Rust"),
            }
        }
    }
    let _: () = conn.del(&hash).await.unwrap();
}
