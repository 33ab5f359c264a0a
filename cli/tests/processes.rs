//! End-to-end across processes: the six `amaos-<svc>` binaries on loopback,
//! driven by the `amaos` CLI as a user would.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::procs::{Processes, SERVICES, amaos, bin, env_for, spawn, wait_until_serving};

#[tokio::test]
async fn the_six_binaries_run_the_example_crew_driven_by_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let env = env_for(dir.path());
    let mut processes = Processes(Vec::new());
    for service in SERVICES {
        let child = Command::new(bin(&format!("amaos-{service}")))
            .envs(&env)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        processes.0.push((service, child));
    }
    wait_until_serving(&env).await;
    assert!(
        dir.path().join("admin.key").exists(),
        "auth writes the first admin key"
    );

    // A key for a tenant, made with the CLI; the secret is the last line.
    let created = amaos(
        &env,
        &[
            "keys",
            "create",
            "ci",
            "--tenant",
            "acme",
            "--role",
            "developer",
        ],
    );
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let stdout = String::from_utf8(created.stdout).unwrap();
    let key = stdout.lines().last().unwrap().trim().to_owned();
    assert!(key.starts_with("amaos_"), "{stdout}");

    let mut with_key = env.clone();
    with_key.insert(
        "AMAOS_DATA_DIR".into(),
        dir.path().join("elsewhere").display().to_string(),
    );
    let run = Command::new(bin("amaos"))
        .args(["run", "examples/teams/research-crew.yaml", "edge computing"])
        .envs(&with_key)
        .env("AMAOS_API_KEY", &key)
        .current_dir(common::repo_root())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8(run.stdout).unwrap().trim(),
        "Brief: edge computing — what it is, who uses it, and the trade-offs to weigh."
    );
    // Progress went to stderr, in order.
    let research = stderr.find("task research assigned").unwrap();
    let write = stderr.find("task write assigned").unwrap();
    assert!(research < write, "{stderr}");
    assert!(stderr.contains("SUCCEEDED"), "{stderr}");

    // The task is listed for the key's tenant, as JSON for scripts.
    let listed = Command::new(bin("amaos"))
        .args(["tasks", "--json"])
        .envs(&with_key)
        .env("AMAOS_API_KEY", &key)
        .output()
        .unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed["tasks"][0]["state"], "SUCCEEDED");
    assert_eq!(listed["tasks"][0]["tenant"], "acme");

    // A bad key is refused with a clear message and a non-zero exit.
    let refused = Command::new(bin("amaos"))
        .args(["tasks"])
        .envs(&with_key)
        .env("AMAOS_API_KEY", "amaos_000000000000_nope")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("Unauthenticated"));

    // SIGTERM drains every service and each exits 0.
    for (service, child) in &mut processes.0 {
        let pid = child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success(),
            "{service}"
        );
    }
    for (service, child) in &mut processes.0 {
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "{service} did not stop after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(status.success(), "{service} exited with {status}");
    }
}

#[test]
fn an_invalid_config_value_exits_64_naming_the_key() {
    let out = Command::new(bin("amaos-router"))
        .env("AMAOS_ROUTER__LISTEN", "not-an-address")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("`router.listen`"), "{stderr}");
    assert!(stderr.contains("AMAOS_ROUTER__LISTEN"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    let out = Command::new(bin("amaos"))
        .arg("up")
        .env("AMAOS_LIMITS__MAX_MESSAGE_BYTES", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`limits.max_message_bytes`"));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("amaos.toml");
    std::fs::write(&file, "[agents]\ncapacity = \"many\"\n").unwrap();
    let out = Command::new(bin("amaos-agents"))
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`agents.capacity`"));
}

/// `amaos up` checks what it needs before it starts anything: without the
/// embedding model, or without the sandbox helper, it exits naming the
/// missing piece and the command that provides it (it used to start every
/// service and stop with "memory stopped while the mesh was starting").
#[test]
fn amaos_up_names_a_missing_model_or_sandbox_helper_and_how_to_get_it() {
    let dir = tempfile::tempdir().unwrap();
    let env = env_for(&dir.path().join("data"));
    let up = |vars: &[(&str, std::path::PathBuf)]| {
        let mut command = Command::new(bin("amaos"));
        command.arg("up").envs(&env);
        for (name, value) in vars {
            command.env(name, value);
        }
        let out = command.output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let nowhere = dir.path().join("nowhere");
    let stderr = up(&[("AMAOS_MEMORY__EMBED_MODEL_DIR", nowhere.clone())]);
    assert!(stderr.contains("all-MiniLM-L6-v2"), "{stderr}");
    assert!(
        stderr.contains(&nowhere.join("model.safetensors").display().to_string()),
        "{stderr}"
    );
    assert!(stderr.contains("scripts/fetch-embedding-model"), "{stderr}");
    assert!(!stderr.contains("while the mesh was starting"), "{stderr}");

    let helper = dir.path().join("no-amaos-sandbox");
    let stderr = up(&[("AMAOS_TOOLS__SANDBOX_HELPER", helper.clone())]);
    assert!(stderr.contains(&helper.display().to_string()), "{stderr}");
    assert!(
        stderr.contains("cargo build --bin amaos-sandbox"),
        "{stderr}"
    );
    assert!(!stderr.contains("while the mesh was starting"), "{stderr}");
}

/// The README's path: `amaos up` run where the data directory is the default,
/// relative `.amaos`. Paths under it reach the sandbox helper, which wants
/// them absolute; `amaos up` used to stop with "tools stopped while the mesh
/// was starting: … .amaos/sandbox/probe is not absolute".
#[tokio::test]
async fn amaos_up_serves_with_the_default_relative_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join(".amaos");
    let mut env = env_for(&data_dir);
    for key in ["AMAOS_GATEWAY__LISTEN", "AMAOS_GATEWAY__ADMIN_LISTEN"] {
        env.insert(
            key.into(),
            format!("127.0.0.1:{}", common::procs::free_port()),
        );
    }
    let child = Command::new(bin("amaos"))
        .arg("up")
        .envs(&env)
        .env_remove("AMAOS_DATA_DIR")
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _processes = Processes(vec![("amaos", child)]);
    wait_until_serving(&env).await;
    assert!(
        data_dir.join("admin.key").exists(),
        "the data directory is `.amaos` under the working directory"
    );
}

/// A service checks the sections it reads: a bad `[models.x]` stops
/// `amaos config check` and the agents, not the router (which reports the
/// next problem it does read, a bad `tls.namespace`).
#[test]
fn a_service_refuses_only_bad_sections_it_reads() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("amaos.toml");
    std::fs::write(
        &file,
        "[models.x]\nprovider = \"openai\"\nbase_url = \"ftp://x\"\nmodel = \"m\"\n\
         [tls]\nnamespace = \"Bad\"\n",
    )
    .unwrap();
    let run = |binary: &str, args: &[&str]| {
        let out = Command::new(bin(binary))
            .arg("--config")
            .arg(&file)
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{binary}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let everything = run("amaos", &["config", "check"]);
    assert!(everything.contains("`models.x.base_url`"), "{everything}");
    let agents = run("amaos-agents", &[]);
    assert!(agents.contains("`models.x.base_url`"), "{agents}");
    let router = run("amaos-router", &[]);
    assert!(router.contains("`tls.namespace`"), "{router}");
}

/// A service binds its port only once its start-up checks pass: a tools
/// service whose sandbox probe takes two seconds and then fails never
/// answers on its port, and exits with the probe's own error. (It used to
/// bind first, so a client or a load balancer's TCP check found it "up".)
#[test]
fn a_service_that_fails_its_start_up_checks_never_binds_its_port() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let helper = dir.path().join("slow-broken-sandbox");
    std::fs::write(
        &helper,
        "#!/bin/sh\nsleep 2\necho 'amaos-sandbox: no namespaces here' >&2\nexit 125\n",
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let env = env_for(&dir.path().join("data"));
    let address = env["AMAOS_TOOLS__LISTEN"].clone();
    let mut child = Command::new(bin("amaos-tools"))
        .envs(&env)
        .env("AMAOS_TOOLS__SANDBOX_HELPER", &helper)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut answered = 0;
    let status = loop {
        if std::net::TcpStream::connect(&address).is_ok() {
            answered += 1;
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("no namespaces here"), "{stderr}");
    assert_eq!(
        answered, 0,
        "the port answered while the service was starting"
    );
}

/// One agent whose only model call takes 11 s: nothing happens on the
/// task's stream for longer than ten seconds.
const QUIET_TEAM: &str = r#"name: quiet-team
agents:
  - name: a
    role: r
    goal: g
    replay_latency: 11s
    replay:
      - say: "done after a long think about {input}"
crew:
  tasks:
    - { name: one, description: "one {input}", agent: a }
"#;

/// `amaos watch` stays open through more than ten quiet seconds and ends
/// with the task's result, on the in-process backend and on Redis (a watch
/// on Redis used to break with "task store: timed out" half a second after
/// the last event).
#[tokio::test]
async fn amaos_watch_outlasts_ten_quiet_seconds_on_both_backends() {
    for backend in ["memory", "redis"] {
        let dir = tempfile::tempdir().unwrap();
        let mut env = env_for(dir.path());
        if backend == "redis" {
            let redis = std::env::var("AMAOS_TEST_REDIS_URL")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
            let prefix = format!("amaos-quiet-{}", amaos_mesh::new_id());
            for (k, v) in [
                ("AMAOS_ORCHESTRATOR__BACKEND", "redis".to_owned()),
                ("AMAOS_ORCHESTRATOR__REDIS_URL", redis.clone()),
                ("AMAOS_ORCHESTRATOR__REDIS_PREFIX", prefix.clone()),
                ("AMAOS_ROUTER__BACKEND", "redis".to_owned()),
                ("AMAOS_ROUTER__REDIS_URL", redis),
                ("AMAOS_ROUTER__REDIS_PREFIX", prefix),
            ] {
                env.insert(k.into(), v);
            }
        }
        let processes = Processes(SERVICES.iter().map(|s| (*s, spawn(s, &env))).collect());
        wait_until_serving(&env).await;
        let spec = dir.path().join("quiet.yaml");
        std::fs::write(&spec, QUIET_TEAM).unwrap();
        let submitted = amaos(
            &env,
            &["submit", "--spec", spec.to_str().unwrap(), "the sea"],
        );
        assert!(
            submitted.status.success(),
            "{backend}: {}",
            String::from_utf8_lossy(&submitted.stderr)
        );
        let id = String::from_utf8(submitted.stdout)
            .unwrap()
            .trim()
            .to_owned();
        let started = Instant::now();
        let watched = amaos(&env, &["watch", &id]);
        let stderr = String::from_utf8_lossy(&watched.stderr);
        let stdout = String::from_utf8_lossy(&watched.stdout);
        assert!(watched.status.success(), "{backend}: {stderr}");
        assert!(
            format!("{stdout}{stderr}").contains("SUCCEEDED"),
            "{backend}: {stdout} {stderr}"
        );
        assert!(
            started.elapsed() >= Duration::from_secs(10),
            "{backend}: the watch ended before the quiet stretch did"
        );
        drop(processes);
    }
}
