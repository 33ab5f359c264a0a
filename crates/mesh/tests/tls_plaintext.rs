//! A plaintext client (`tls.mode = off`) against a service that speaks
//! only TLS (`tls.mode = rustls`) is told so, and which setting to change,
//! instead of "Unknown: transport error".

use std::path::Path;
use std::time::Duration;

use amaos_mesh::config::Config;
use amaos_mesh::metrics::Metrics;
use amaos_mesh::server::{GrpcService, serve};
use amaos_mesh::tls::{self, TlsMode};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

fn tls_config(dir: &Path) -> Config {
    let mut config = Config {
        data_dir: dir.to_owned(),
        ..Config::default()
    };
    config.tls.mode = TlsMode::Rustls;
    config.tls.dir = Some(dir.join("tls"));
    config.limits.request_timeout = Duration::from_secs(5);
    config
}

/// Serves the health service as `router` under `config`; returns its address.
async fn serve_router(config: &Config, shutdown: &CancellationToken) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let service = GrpcService {
        name: "router",
        grpc_names: vec![],
        routes: tonic::service::Routes::default(),
        reflection: false,
    };
    let config = config.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        serve(service, listener, &config, Metrics::new("router"), stop)
            .await
            .unwrap();
    });
    address
}

async fn check(url: &str, config: &Config) -> Result<(), tonic::Status> {
    let channel = amaos_mesh::client::Dialer::new(config, "cli")
        .unwrap()
        .channel("router", url)
        .unwrap();
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|_| ())
}

#[tokio::test]
async fn a_plaintext_client_is_told_the_server_wants_tls_and_which_setting_to_change() {
    amaos_mesh::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let config = tls_config(dir.path());
    tls::init_dev_pki(&config.tls, &dir.path().join("tls"), tls::PRINCIPALS).unwrap();
    let shutdown = CancellationToken::new();
    let address = serve_router(&config, &shutdown).await;
    let url = format!("http://{address}");

    // With the mesh's own settings the call goes through.
    check(&url, &config).await.unwrap();

    // The same client with `tls.mode = off`.
    let mut plain = config.clone();
    plain.tls.mode = TlsMode::Off;
    let status = check(&url, &plain).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let message = status.message();
    assert!(message.contains(&address), "{message}");
    assert!(message.contains("expects TLS"), "{message}");
    assert!(message.contains("tls.mode"), "{message}");
    assert!(message.contains("AMAOS_TLS__MODE=rustls"), "{message}");
    shutdown.cancel();
}

#[tokio::test]
async fn a_plaintext_server_that_is_down_is_not_mistaken_for_tls() {
    let dir = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let config = Config {
        data_dir: dir.path().to_owned(),
        ..Config::default()
    };
    let status = check(&url, &config).await.unwrap_err();
    assert!(!status.message().contains("TLS"), "{status:?}");
}
