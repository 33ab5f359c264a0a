//! `amaos`: run the whole mesh, submit and watch tasks, manage API keys.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use amaos_cli::commands::{self, Client, Failure, Submission, TeamArg};
use amaos_cli::up::Mesh;
use amaos_mesh::config::{Config, EXIT_CONFIG};
use clap::Parser;

mod args;

use amaos_proto::orchestrator::v1::UsageGrouping;
use args::{
    ApprovalsCommand, AuditCommand, BackendArg, CertsCommand, Cli, Command, ConfigCommand,
    GroupArg, KeysCommand, TopologyArg,
};

/// `amaos audit verify`: exit 0 when every record is keyed, chains and
/// agrees with the checkpoint; 1 when a record was edited, deleted, moved or
/// cut, or the checkpoint is missing or altered; 3 when the chain holds but
/// its first records are legacy (unkeyed, so not protected from rewriting);
/// 2 when it cannot be verified.
async fn audit_verify(config: &Config, path: &std::path::Path) -> Result<(), Failure> {
    use amaos_mesh::audit::Verdict;
    let report = amaos_mesh::audit::verify_configured(config, path)
        .await
        .map_err(|message| Failure { message, code: 2 })?;
    let with = format!(
        "key: {}; checkpoint: {}",
        report.key.as_deref().unwrap_or("none"),
        report.checkpoint
    );
    let note = if report.detail.is_empty() {
        String::new()
    } else {
        format!("; {}", report.detail)
    };
    let path = path.display();
    match report.verdict {
        Verdict::Intact(n) => {
            println!("{path}: intact, {n} records, keyed and anchored ({with}){note}");
            Ok(())
        }
        Verdict::Legacy { records, legacy } => Err(Failure {
            message: format!(
                "{path}: the chain holds ({records} records), but the first {legacy} are legacy \
                 records (unkeyed SHA-256, written before the trail was keyed): anyone who could \
                 write the file could have rewritten them; the {} after them are keyed ({with}){note}",
                records - legacy
            ),
            code: 3,
        }),
        Verdict::BrokenAt(index) => Err(Failure {
            message: format!(
                "{path}: broken at record {index}: {} ({with})",
                report.detail
            ),
            code: 1,
        }),
        Verdict::Unanchored(n) => Err(Failure {
            message: format!("{path}: {n} records chain, but {} ({with})", report.detail),
            code: 1,
        }),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("amaos: {error}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("amaos: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let stops_on_signal = matches!(cli.command, Command::Bench { .. });
    let result = runtime.block_on(async {
        let work = dispatch(cli.command, config, cli.api_key, cli.json);
        if !stops_on_signal {
            return work.await;
        }
        // A benchmark starts service processes and meshes of its own. On
        // SIGINT or SIGTERM it drops the run, which kills and reaps them, so
        // none outlives it (a signal would otherwise skip those drops).
        let stop = amaos_mesh::shutdown::on_signal();
        tokio::select! {
            result = work => result,
            () = stop.cancelled() => Err(Failure {
                message: "interrupted; the processes this benchmark started are stopped".into(),
                code: 130,
            }),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("amaos: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

async fn dispatch(
    command: Command,
    config: Config,
    api_key: Option<String>,
    json: bool,
) -> Result<(), Failure> {
    let client = || Client::new(config.clone(), api_key.clone());
    match command {
        Command::Up => up(config).await,
        Command::Run {
            spec,
            input,
            session,
            timeout,
        } => {
            let submission = Submission {
                team: TeamArg::SpecFile(spec),
                input,
                session,
                idempotency_key: None,
                timeout,
            };
            commands::run(&client(), submission, json).await
        }
        Command::Submit {
            team,
            spec,
            input,
            session,
            idempotency_key,
            timeout,
        } => {
            let team = match (team, spec) {
                (Some(name), _) => TeamArg::Name(name),
                (None, Some(path)) => TeamArg::SpecFile(path),
                (None, None) => {
                    return Err(Failure {
                        message: "name --team or --spec".into(),
                        code: commands::EXIT_INVALID,
                    });
                }
            };
            let submission = Submission {
                team,
                input,
                session,
                idempotency_key,
                timeout,
            };
            commands::submit(&client(), submission, json).await
        }
        Command::Tasks { state, team, limit } => {
            commands::tasks(&client(), state.map(Into::into), team, limit, json).await
        }
        Command::Usage {
            tenant,
            team,
            task,
            since,
            until,
            by,
        } => {
            let query = commands::UsageArgs {
                tenant,
                team,
                task,
                since,
                until,
                group_by: match by {
                    GroupArg::Tenant => UsageGrouping::Tenant,
                    GroupArg::Team => UsageGrouping::Team,
                    GroupArg::Day => UsageGrouping::Day,
                },
            };
            commands::usage(&client(), query, json).await
        }
        Command::Task { id } => commands::task(&client(), &id, json).await,
        Command::Watch { id, after } => commands::watch(&client(), &id, after, json).await,
        Command::Cancel { id, reason } => commands::cancel(&client(), &id, reason, json).await,
        Command::Openapi { service } => {
            let document =
                amaos_gateway::openapi_document(service.as_deref()).map_err(|e| Failure {
                    message: e.to_string(),
                    code: 2,
                })?;
            println!("{document}");
            Ok(())
        }
        Command::Validate { spec } => {
            commands::read_spec(&spec)?;
            println!("{}: valid", spec.display());
            Ok(())
        }
        Command::Bench {
            scenario, tasks, ..
        } if scenario == "sandbox" => {
            let report =
                amaos_cli::bench_sandbox::run(&config, tasks.unwrap_or(200) as usize).await;
            print_report(report, |r| r.text(), json)
        }
        Command::Bench {
            scenario,
            tasks,
            fault,
            ..
        } if scenario == "chaos" => chaos(&config, &fault, tasks, json).await,
        Command::Bench {
            scenario, vectors, ..
        } if scenario == "memory" => {
            let report = amaos_cli::bench_memory::run(&config, vectors).await;
            print_report(report, |r| r.text(), json)
        }
        Command::Bench {
            scenario,
            backend,
            concurrency,
            tasks,
            duration,
            model_latency_ms,
            topology,
            ..
        } => {
            let rest = scenario == "rest";
            let options = amaos_cli::bench::BenchOptions {
                scenario,
                backend: match backend {
                    BackendArg::Memory => amaos_mesh::config::StoreBackend::Memory,
                    BackendArg::Redis => amaos_mesh::config::StoreBackend::Redis,
                },
                concurrency,
                tasks: tasks.unwrap_or(if duration.is_some() { 0 } else { 5000 }),
                duration,
                model_latency: Duration::from_millis(model_latency_ms),
                redis_url: config.orchestrator.redis_url.clone(),
                embed_model_dir: config.memory.model_dir(&config.data_dir),
                audit_durability: config.auth.audit_durability,
                topology: match topology {
                    TopologyArg::InProcess => amaos_cli::bench::Topology::InProcess,
                    TopologyArg::Processes => amaos_cli::bench::Topology::Processes,
                },
            };
            if rest {
                let rounds = tasks.unwrap_or(1000) as usize;
                let report = amaos_cli::bench_rest::run(options, rounds).await;
                return print_report(report, |r| r.text(), json);
            }
            print_report(amaos_cli::bench::run(options).await, |r| r.text(), json)
        }
        Command::Config {
            command: ConfigCommand::Check,
        } => {
            // `main` loaded and validated it before dispatching: a wrong
            // config never gets here.
            println!(
                "config ok: orchestrator backend {:?}, tls {:?}, data dir {}",
                config.orchestrator.backend,
                config.tls.mode,
                config.data_dir.display()
            );
            Ok(())
        }
        Command::Audit {
            command: AuditCommand::Verify { file },
        } => {
            let path = file.unwrap_or_else(|| config.audit_file());
            audit_verify(&config, &path).await
        }
        Command::Approvals { command } => match command {
            ApprovalsCommand::List { team, task, all } => {
                commands::approvals_list(&client(), team, task, all, json).await
            }
            ApprovalsCommand::Approve {
                task,
                approval,
                comment,
            } => commands::approvals_decide(&client(), task, approval, true, comment, json).await,
            ApprovalsCommand::Reject {
                task,
                approval,
                comment,
            } => commands::approvals_decide(&client(), task, approval, false, comment, json).await,
        },
        Command::Input { task, message } => {
            commands::send_input(&client(), task, message, json).await
        }
        Command::Keys { command } => match command {
            KeysCommand::Create {
                name,
                tenant,
                roles,
            } => commands::keys_create(&client(), name, tenant, roles, json).await,
            KeysCommand::List { tenant, all } => {
                commands::keys_list(&client(), tenant, all, json).await
            }
            KeysCommand::Revoke { id } => commands::keys_revoke(&client(), id, json).await,
        },
        Command::Certs {
            command: CertsCommand::Init { dir, force },
        } => certs_init(&config, dir, force),
    }
}

fn certs_init(config: &Config, dir: Option<PathBuf>, force: bool) -> Result<(), Failure> {
    let dir = dir
        .or_else(|| config.tls.dir.clone())
        .unwrap_or_else(|| config.data_dir.join("tls"));
    if dir.join("ca.pem").exists() && !force {
        return Err(Failure {
            message: format!(
                "{} already holds a CA; pass --force to replace it and every certificate",
                dir.display()
            ),
            code: 1,
        });
    }
    amaos_mesh::tls::init_dev_pki(&config.tls, &dir, amaos_mesh::tls::PRINCIPALS).map_err(|e| {
        Failure {
            message: e.to_string(),
            code: 1,
        }
    })?;
    println!(
        "wrote a development CA and {} certificates to {} (keys 0600):",
        amaos_mesh::tls::PRINCIPALS.len(),
        dir.display()
    );
    for name in amaos_mesh::tls::PRINCIPALS {
        println!("  {name:<13} {}", config.tls.identity(name));
    }
    println!(
        "serve with AMAOS_TLS__MODE=rustls AMAOS_TLS__DIR={}",
        dir.display()
    );
    Ok(())
}

/// `amaos bench --scenario chaos`: each fault against its own mesh of
/// processes; exits 1 when any acknowledged task did not succeed with its
/// effect once.
async fn chaos(
    config: &Config,
    fault: &str,
    tasks: Option<u64>,
    json: bool,
) -> Result<(), Failure> {
    use amaos_cli::chaos::{self, ChaosOptions, Fault};
    let faults: Vec<Fault> = if fault == "all" {
        Fault::ALL.to_vec()
    } else {
        vec![Fault::parse(fault).ok_or_else(|| Failure {
            message: format!(
                "unknown fault `{fault}`; faults: all, {}",
                Fault::ALL.map(Fault::name).join(", ")
            ),
            code: 2,
        })?]
    };
    let options = ChaosOptions::new(
        tasks.unwrap_or(500) as usize,
        &config.orchestrator.redis_url,
        config.memory.model_dir(&config.data_dir),
    );
    let mut reports = Vec::new();
    for fault in faults {
        if !json {
            eprintln!("{}: {} …", fault.name(), fault.describe());
        }
        let report = chaos::run(fault, &options).await.map_err(|e| Failure {
            message: format!("{}: {e}", fault.name()),
            code: 1,
        })?;
        reports.push(report);
    }
    if json {
        let out = serde_json::json!({
            "scenario": "chaos",
            "tasks": options.tasks,
            "faults": reports,
        });
        println!("{out}");
    } else {
        print!("{}", chaos::table(&reports));
    }
    let problems: Vec<String> = reports
        .iter()
        .flat_map(|r| {
            r.problems()
                .into_iter()
                .map(|p| format!("{}: {p}", r.fault))
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Failure {
            message: problems.join("\n"),
            code: 1,
        })
    }
}

/// Prints a benchmark's report as JSON or text; a failed run exits 1.
fn print_report<R: serde::Serialize>(
    report: Result<R, amaos_mesh::BoxError>,
    text: impl Fn(&R) -> String,
    json: bool,
) -> Result<(), Failure> {
    let report = report.map_err(|e| Failure {
        message: e.to_string(),
        code: 1,
    })?;
    if json {
        println!("{}", serde_json::to_string(&report).unwrap_or_default());
    } else {
        print!("{}", text(&report));
    }
    Ok(())
}

async fn up(config: Config) -> Result<(), Failure> {
    let failure = |e: amaos_mesh::BoxError| Failure {
        message: e.to_string(),
        code: 1,
    };
    let _telemetry = amaos_mesh::telemetry::init(&config, "amaos").map_err(|e| Failure {
        message: e.to_string(),
        code: EXIT_CONFIG as u8,
    })?;
    let shutdown = amaos_mesh::shutdown::on_signal();
    let mesh = Mesh::start(config, shutdown.clone())
        .await
        .map_err(failure)?;
    for (service, addr, admin) in &mesh.addresses {
        let admin = admin
            .map(|a| format!("  metrics http://{a}/metrics"))
            .unwrap_or_default();
        if *service == "gateway" {
            println!("{service:<13} http://{addr}  (REST, /openapi.json, the dashboard){admin}");
        } else {
            println!("{service:<13} grpc://{addr}{admin}");
        }
    }
    if let Some(path) = &mesh.bootstrap_key_file {
        println!(
            "created an admin key for tenant `default`; it is in {}",
            path.display()
        );
    }
    println!("amaos is ready (Ctrl-C to stop)");
    mesh.wait(shutdown).await.map_err(failure)
}
