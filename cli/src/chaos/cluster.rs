//! The processes of one run: the services (and a Redis of its own), started,
//! killed and restarted.

use super::*;

/// A service process (or Redis) this run started.
pub(super) struct Proc {
    pub(super) name: String,
    pub(super) service: &'static str,
    pub(super) env: HashMap<String, String>,
    pub(super) child: Option<Child>,
}

/// The processes of one run; killed when dropped, so a failed run leaves
/// none behind.
pub(super) struct Cluster {
    pub(super) dir: Option<tempfile::TempDir>,
    pub(super) path: PathBuf,
    pub(super) bins: PathBuf,
    pub(super) procs: Vec<Proc>,
    pub(super) redis: Option<(Child, u16, PathBuf)>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for proc in &mut self.procs {
            if let Some(child) = &mut proc.child {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if let Some((child, _, _)) = &mut self.redis {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Cluster {
    pub(super) fn new(bins: PathBuf) -> Result<Self, BoxError> {
        let dir = tempfile::Builder::new().prefix("amaos-chaos-").tempdir()?;
        let path = dir.path().to_owned();
        std::fs::create_dir_all(path.join("logs"))?;
        std::fs::create_dir_all(path.join("teams"))?;
        Ok(Self {
            dir: Some(dir),
            path,
            bins,
            procs: Vec::new(),
            redis: None,
        })
    }

    pub(super) fn keep(&mut self) -> Option<String> {
        std::env::var_os("AMAOS_CHAOS_KEEP")?;
        let dir = self.dir.take()?;
        Some(dir.keep().display().to_string())
    }

    pub(super) fn workspaces(&self) -> PathBuf {
        self.path.join("data").join("workspaces")
    }

    pub(super) fn admin_key(&self) -> PathBuf {
        self.path.join("data").join("admin.key")
    }

    /// Starts `amaos-<service>` as `name`, its output appended to
    /// `logs/<name>.log`.
    pub(super) fn spawn(
        &mut self,
        name: &str,
        service: &'static str,
        env: &HashMap<String, String>,
    ) -> Result<(), BoxError> {
        let child = self.start(name, service, env)?;
        self.procs.push(Proc {
            name: name.to_owned(),
            service,
            env: env.clone(),
            child: Some(child),
        });
        Ok(())
    }

    pub(super) fn start(
        &self,
        name: &str,
        service: &str,
        env: &HashMap<String, String>,
    ) -> Result<Child, BoxError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path.join("logs").join(format!("{name}.log")))?;
        let program = self.bins.join(format!("amaos-{service}"));
        Ok(Command::new(&program)
            .envs(env)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", program.display()))?)
    }

    pub(super) fn proc_mut(&mut self, name: &str) -> &mut Proc {
        self.procs
            .iter_mut()
            .find(|p| p.name == name)
            .expect("a process this run started")
    }

    /// SIGKILL of `name`.
    pub(super) fn kill9(&mut self, name: &str) {
        if let Some(mut child) = self.proc_mut(name).child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts `name` again with its environment.
    pub(super) fn restart(&mut self, name: &str) -> Result<(), BoxError> {
        let (service, env) = {
            let p = self.proc_mut(name);
            (p.service, p.env.clone())
        };
        let child = self.start(name, service, &env)?;
        self.proc_mut(name).child = Some(child);
        Ok(())
    }

    /// A Redis server of its own, AOF with fsync every second.
    pub(super) fn start_redis(&mut self) -> Result<String, BoxError> {
        let port = free_port()?;
        let dir = self.path.join("redis");
        std::fs::create_dir_all(&dir)?;
        let child = redis_server(port, &dir)?;
        self.redis = Some((child, port, dir));
        wait_for_port(port, Duration::from_secs(20))?;
        Ok(format!("redis://127.0.0.1:{port}"))
    }

    pub(super) fn kill_redis(&mut self) {
        if let Some((child, _, _)) = &mut self.redis {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub(super) fn restart_redis(&mut self) -> Result<(), BoxError> {
        let Some((child, port, dir)) = &mut self.redis else {
            return Err("no Redis of this run".into());
        };
        *child = redis_server(*port, dir)?;
        wait_for_port(*port, Duration::from_secs(20))
    }
}

pub(super) fn redis_server(port: u16, dir: &Path) -> Result<Child, BoxError> {
    Ok(Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "yes", "--appendfsync", "everysec"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting redis-server (is it installed?): {e}"))?)
}

pub(super) fn wait_for_port(port: u16, within: Duration) -> Result<(), BoxError> {
    let deadline = Instant::now() + within;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(format!("nothing listens on port {port}").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
