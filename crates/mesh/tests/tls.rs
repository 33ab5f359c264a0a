//! mTLS between services (`tls.mode = rustls`): only certificates of the
//! mesh CA get in, only allowed identities get past the door, and a client
//! only talks to the service whose identity it expected.

use std::path::Path;
use std::time::Duration;

use amaos_mesh::client::Dialer;
use amaos_mesh::config::Config;
use amaos_mesh::metrics::Metrics;
use amaos_mesh::server::{GrpcService, serve};
use amaos_mesh::tls::{self, TlsMode};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

fn config(dir: &Path) -> Config {
    let mut config = Config {
        data_dir: dir.to_owned(),
        ..Config::default()
    };
    config.tls.mode = TlsMode::Rustls;
    config.tls.dir = Some(dir.join("tls"));
    config.limits.request_timeout = Duration::from_secs(5);
    config
}

/// Serves the health service as `router` on a loopback port; returns its URL.
async fn serve_router(config: &Config, shutdown: &CancellationToken) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
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
    url
}

async fn check<T>(client: &mut HealthClient<T>) -> Result<(), tonic::Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<amaos_mesh::BoxError>,
    T::ResponseBody: tonic::transport::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::transport::Body>::Error: Into<amaos_mesh::BoxError> + Send,
{
    client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|_| ())
}

async fn as_principal(
    config: &Config,
    me: &str,
    peer: &str,
    url: &str,
) -> Result<(), tonic::Status> {
    let channel = Dialer::new(config, me).unwrap().channel(peer, url).unwrap();
    check(&mut HealthClient::new(channel)).await
}

#[tokio::test]
async fn only_allowed_identities_of_the_mesh_ca_are_served() {
    amaos_mesh::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    tls::init_dev_pki(&config.tls, &dir.path().join("tls"), tls::PRINCIPALS).unwrap();
    let shutdown = CancellationToken::new();
    let url = serve_router(&config, &shutdown).await;

    // The router's callers by default: the orchestrator, agents and the CLI.
    as_principal(&config, "agents", "router", &url)
        .await
        .unwrap();
    as_principal(&config, "cli", "router", &url).await.unwrap();

    // A valid mesh certificate whose identity may not call the router.
    let status = as_principal(&config, "memory", "router", &url)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("tls.allow.router"), "{status:?}");

    // A client expecting another service's identity refuses the router.
    let status = as_principal(&config, "cli", "auth", &url)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    // Plaintext is not spoken.
    let plain = amaos_mesh::client::channel(&url, &config.limits).unwrap();
    assert!(check(&mut HealthClient::new(plain)).await.is_err());

    // TLS without a client certificate is refused in the handshake.
    let ca = std::fs::read(dir.path().join("tls/ca.pem")).unwrap();
    let https = url.replace("http://", "https://");
    let anonymous = Endpoint::from_shared(https.clone())
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&ca))
                .domain_name(config.tls.identity("router")),
        )
        .unwrap()
        .connect_lazy();
    let status = check(&mut HealthClient::new(anonymous)).await.unwrap_err();
    assert!(
        format!("{status:?}").contains("CertificateRequired"),
        "{status:?}"
    );

    // A certificate with an allowed name from another CA is refused too.
    let rogue = dir.path().join("rogue");
    tls::init_dev_pki(&config.tls, &rogue, &["cli"]).unwrap();
    let forged = Endpoint::from_shared(https)
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&ca))
                .identity(Identity::from_pem(
                    std::fs::read(rogue.join("cli.pem")).unwrap(),
                    std::fs::read(rogue.join("cli.key")).unwrap(),
                ))
                .domain_name(config.tls.identity("router")),
        )
        .unwrap()
        .connect_lazy();
    let status = check(&mut HealthClient::new(forged)).await.unwrap_err();
    // (Its CA has the same name as ours, so the signature is what fails.)
    assert!(format!("{status:?}").contains("fatal alert"), "{status:?}");
    shutdown.cancel();
}

#[tokio::test]
async fn the_allow_list_is_configurable_per_service() {
    amaos_mesh::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    tls::init_dev_pki(&config.tls, &dir.path().join("tls"), tls::PRINCIPALS).unwrap();
    config.tls.allow.insert(
        "router".into(),
        vec![
            "memory".into(),
            "amaos-tools.amaos.serviceaccount.identity.linkerd.cluster.local".into(),
        ],
    );
    let shutdown = CancellationToken::new();
    let url = serve_router(&config, &shutdown).await;
    as_principal(&config, "memory", "router", &url)
        .await
        .unwrap();
    as_principal(&config, "tools", "router", &url)
        .await
        .unwrap();
    let status = as_principal(&config, "agents", "router", &url)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    shutdown.cancel();
}

#[test]
fn identities_have_the_linkerd_form_and_bad_settings_name_their_key() {
    let mut config = Config::default();
    assert_eq!(
        config.tls.identity("agents"),
        "amaos-agents.amaos.serviceaccount.identity.linkerd.cluster.local"
    );
    config.tls.namespace = "Prod_NS".into();
    let error = config.validate().unwrap_err();
    assert_eq!(error.key, "tls.namespace");
    config.tls.namespace = "prod".into();
    config.tls.allow.insert("gateway".into(), vec![]);
    assert_eq!(config.validate().unwrap_err().key, "tls.allow.gateway");

    // Missing certificates are named with the key that points at them.
    config.tls.allow.clear();
    config.tls.mode = TlsMode::Rustls;
    config.tls.dir = Some("/nonexistent".into());
    let error = Dialer::new(&config, "cli").unwrap_err().to_string();
    assert!(
        error.contains("tls.ca") && error.contains("/nonexistent/ca.pem"),
        "{error}"
    );
}
