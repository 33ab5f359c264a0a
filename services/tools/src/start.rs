//! Starting the service: the sandbox helper found and probed, the service
//! built and served, and the workspace sweeper.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use amaos_mesh::config::Limits;
use amaos_mesh::metrics::Metrics;
use amaos_mesh::server::GrpcService;
use amaos_mesh::{BoxError, Config, limit_messages};
use amaos_proto::tools::v1::tools_service_server::ToolsServiceServer;
use tokio_util::sync::CancellationToken;

use crate::{Tools, journal, sandbox, workspace};

/// The tools service, ready for [`amaos_mesh::server::serve`].
pub fn grpc_service(tools: Tools, limits: &Limits) -> GrpcService {
    GrpcService::public(
        "tools",
        limit_messages!(ToolsServiceServer::new(tools), limits),
    )
}

/// Serves the tools service on `listener` until `shutdown`, authorizing by
/// `policy`.
pub async fn serve(
    config: Config,
    policy: amaos_mesh::policy::Policy,
    listener: impl Into<amaos_mesh::server::Listener> + Send,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), BoxError> {
    let sandbox = start_sandbox(&config).await?;
    let secrets = amaos_mesh::secrets::open_audited(&config, "tools").await?;
    let tools = Tools::new(&config, policy, sandbox, Some(secrets))?
        .with_journal(journal::open(&config).await?)
        .with_metrics(&metrics);
    tools.register_configured(&config).await?;
    let sweeper = tokio::spawn(sweep_workspaces(
        config.workspace_dir(),
        config.tools.workspace_retention,
        shutdown.clone(),
    ));
    let service = grpc_service(tools, &config.limits);
    let served = amaos_mesh::server::serve(service, listener, &config, metrics, shutdown).await;
    sweeper.abort();
    served?;
    Ok(())
}

/// Removes workspaces untouched for longer than `retention` (see
/// [`workspace::sweep`]), every quarter of it (at least every 5 minutes,
/// at most every second), until `shutdown`.
pub async fn sweep_workspaces(base: PathBuf, retention: Duration, shutdown: CancellationToken) {
    let every = (retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(300));
    loop {
        let (base_, retention_) = (base.clone(), retention);
        match tokio::task::spawn_blocking(move || workspace::sweep(&base_, retention_)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(removed = n, "workspaces past their retention removed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "the workspace sweep failed"),
            Err(e) => tracing::warn!(error = %e, "the workspace sweep panicked"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// The sandbox helper `tools` names (`tools.sandbox_helper`), else the one
/// next to this program; when there is none, why, and the command that
/// builds it.
pub fn sandbox_helper(tools: &amaos_mesh::config::ToolsConfig) -> Result<PathBuf, String> {
    const BUILD: &str = "build it with `cargo build --bin amaos-sandbox`";
    match &tools.sandbox_helper {
        Some(helper) if helper.is_file() => Ok(helper.clone()),
        Some(helper) => Err(format!(
            "the sandbox helper {} (config key `tools.sandbox_helper`) does not exist; {BUILD}",
            helper.display()
        )),
        None => sandbox::Sandbox::find_helper().ok_or_else(|| {
            let here = std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(|d| d.display().to_string()))
                .unwrap_or_else(|| "this program".into());
            format!(
                "the sandbox helper amaos-sandbox is not next to this program (in {here}); \
                 {BUILD}, or name it in config key `tools.sandbox_helper`"
            )
        }),
    }
}

/// The sandbox of `config`, checked by running `true` in it. Without a
/// working sandbox the service refuses to start, naming why — unless
/// `tools.allow_no_sandbox` (a development flag) says to go on without the
/// `shell` tool.
pub async fn start_sandbox(config: &Config) -> Result<Option<Arc<sandbox::Sandbox>>, BoxError> {
    let t = &config.tools;
    let refuse = |why: String| -> Result<Option<Arc<sandbox::Sandbox>>, BoxError> {
        if t.allow_no_sandbox {
            tracing::warn!(%why, "no sandbox: the shell tool is not offered (tools.allow_no_sandbox)");
            Ok(None)
        } else {
            Err(format!(
                "{why}; the tools service will not run commands unsandboxed \
                 (set tools.allow_no_sandbox = true to start without the shell tool)"
            )
            .into())
        }
    };
    let helper = match sandbox_helper(t) {
        Ok(helper) => helper,
        Err(why) => return refuse(why),
    };
    let sandbox = sandbox::Sandbox::new(
        helper,
        t.sandbox_uid_base,
        t.max_sandboxes,
        sandbox::Limits {
            cpu_seconds: t.sandbox_cpu_seconds,
            memory_bytes: t.sandbox_memory_bytes,
            processes: t.sandbox_processes,
            output_bytes: t.sandbox_output_bytes,
            // No single file larger than the workspace may hold.
            file_bytes: sandbox::Limits::default()
                .file_bytes
                .min(t.workspace_max_bytes),
            ..sandbox::Limits::default()
        },
    );
    match sandbox
        .probe(&config.data_dir.join("sandbox").join("probe"))
        .await
    {
        Ok(()) => Ok(Some(Arc::new(sandbox))),
        Err(e) => refuse(format!(
            "{e} (the sandbox needs user, mount and pid namespaces and permission to map ids)"
        )),
    }
}
