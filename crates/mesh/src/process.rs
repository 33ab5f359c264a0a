//! The life of a one-service process (`amaos-<svc>` binaries): load and
//! validate config (the sections the service reads) before binding
//! anything, exit 64 on bad config, bind the gRPC and admin listeners, serve
//! until SIGTERM/SIGINT, then drain.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, EXIT_CONFIG, Service, ServiceEndpoint};
use crate::metrics::{self, Metrics};
use crate::{shutdown, telemetry};

/// Reads `--config <file>` from the arguments, or `AMAOS_CONFIG`.
pub fn config_path_from_args() -> Result<Option<PathBuf>, String> {
    let mut args = std::env::args().skip(1);
    let mut path = std::env::var_os("AMAOS_CONFIG").map(PathBuf::from);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" => path = Some(args.next().ok_or("--config needs a file")?.into()),
            "-h" | "--help" => {
                return Err(
                    "usage: [--config <file.toml>]  (or AMAOS_CONFIG; AMAOS_* variables override)"
                        .into(),
                );
            }
            other => return Err(format!("unexpected argument `{other}`")),
        }
    }
    Ok(path)
}

/// Loads config, validating every section, or prints the one-line error;
/// `Err` carries the exit code.
pub fn load_config() -> Result<Config, ExitCode> {
    load(None)
}

/// Loads config, validating only the sections `service` reads (a router
/// does not refuse to start over a bad `[models.x]`), or prints the
/// one-line error; `Err` carries the exit code.
pub fn load_config_for(service: Service) -> Result<Config, ExitCode> {
    load(Some(service))
}

fn load(service: Option<Service>) -> Result<Config, ExitCode> {
    let path = config_path_from_args().map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(EXIT_CONFIG as u8)
    })?;
    match service {
        Some(service) => Config::load_for(path.as_deref(), service),
        None => Config::load(path.as_deref()),
    }
    .map_err(|e| {
        eprintln!("amaos: {e}");
        ExitCode::from(EXIT_CONFIG as u8)
    })
}

/// Runs one service as a whole process and returns its exit code. `serve`
/// is given the process's RBAC policy (the configured files, watched).
pub fn run_service<F, Fut>(
    service: &'static str,
    endpoint: fn(&Config) -> &dyn ServiceEndpoint,
    serve: F,
) -> ExitCode
where
    F: FnOnce(
        Config,
        crate::policy::Policy,
        crate::server::Listener,
        Metrics,
        CancellationToken,
    ) -> Fut,
    Fut: Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>>,
{
    // A service this crate does not know validates everything.
    let loaded = match Service::from_name(service) {
        Some(known) => load_config_for(known),
        None => load_config(),
    };
    let config = match loaded {
        Ok(config) => config,
        Err(code) => return code,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("amaos-{service}: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    crate::install_crypto_provider();
    runtime.block_on(async move {
        let _telemetry = match telemetry::init(&config, service) {
            Ok(guard) => guard,
            Err(error) => {
                eprintln!("amaos-{service}: {error}");
                return ExitCode::from(EXIT_CONFIG as u8);
            }
        };
        let ep = endpoint(&config);
        // Bound by the service once its start-up checks pass (sandbox probe,
        // catalog, embedder, MCP servers, keys): a service that will not
        // start never answers on its port.
        let listener = crate::server::Listener::Address(ep.listen());
        let shutdown = shutdown::on_signal();
        // Every trail writer of this process keys and anchors as configured.
        crate::audit::configure(&config);
        let policy = match crate::policy::Policy::load(
            config.auth.rbac_model.clone(),
            config.auth.rbac_policy.clone(),
            std::time::Duration::from_secs(2),
            Some(config.audit_file()),
            shutdown.clone(),
        ) {
            Ok(policy) => policy,
            Err(error) => {
                eprintln!("amaos-{service}: config key `auth.rbac_policy`: {error}");
                return ExitCode::from(EXIT_CONFIG as u8);
            }
        };
        let metrics = Metrics::with_telemetry(service, &config.telemetry);
        if let Some(admin) = ep.admin_listen() {
            match TcpListener::bind(admin).await {
                Ok(admin_listener) => {
                    tracing::info!(address = %admin, "serving /metrics and /healthz");
                    tokio::spawn(metrics::serve_admin(
                        admin_listener,
                        metrics.clone(),
                        shutdown.clone(),
                    ));
                }
                Err(error) => {
                    tracing::error!(address = %admin, %error, "cannot bind the admin listener");
                    return ExitCode::FAILURE;
                }
            }
        }
        match serve(config, policy, listener, metrics, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!(%error, "stopped with an error");
                ExitCode::FAILURE
            }
        }
    })
}
