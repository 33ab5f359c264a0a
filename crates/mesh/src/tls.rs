//! Transport security between services.
//!
//! Three modes (`tls.mode`):
//!
//! - `off`: plaintext h2c, for a laptop or a single-process `amaos up`.
//! - `rustls`: mTLS between every pair of services, terminated in-process
//!   with rustls. Every service presents a certificate whose identity has
//!   Linkerd's form, `<service-account>.<namespace>.serviceaccount.identity.linkerd.<trust-domain>`,
//!   and accepts a call only from a certificate signed by the mesh CA whose
//!   identity is on its list of callers ([`allowed_identities`]).
//! - `mesh`: plaintext h2c inside the pod; a service mesh (Linkerd) proxies
//!   every connection and does mTLS between pods. Not stacked with `rustls`:
//!   the proxy could not read TLS it did not terminate (no protocol detection,
//!   no per-route metrics or retries), and the two layers would need two PKIs.
//!
//! [`init_dev_pki`] writes a development CA and a certificate per service
//! (`amaos certs init`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The `tls` section's types, defined with the rest of the configuration.
pub use crate::config::{PRINCIPALS, TlsConfig, TlsMode};

impl TlsConfig {
    /// The identity of an AMAOS principal (service account `amaos-<name>`).
    pub fn identity(&self, name: &str) -> String {
        format!(
            "amaos-{name}.{}.serviceaccount.identity.linkerd.{}",
            self.namespace, self.trust_domain
        )
    }

    fn dir(&self, data_dir: &Path) -> PathBuf {
        self.dir.clone().unwrap_or_else(|| data_dir.join("tls"))
    }
}

/// Who calls `service` in the mesh: its callers by design, plus `cli`
/// (operators with the CLI's certificate).
pub fn default_callers(service: &str) -> &'static [&'static str] {
    match service {
        // Tools and memory ask whether a run token's attempt still runs.
        // The gateway transcodes REST for every service with HTTP rules.
        "orchestrator" => &["tools", "memory", "gateway", "cli"],
        "router" => &["orchestrator", "agents", "gateway", "cli"],
        "agents" => &["orchestrator", "gateway", "cli"],
        "tools" => &["agents", "gateway", "cli"],
        "memory" => &["agents", "gateway", "cli"],
        "auth" => &[
            "orchestrator",
            "router",
            "agents",
            "tools",
            "memory",
            "gateway",
            "cli",
        ],
        _ => &["cli"],
    }
}

/// The identities allowed to call `service`.
pub fn allowed_identities(config: &TlsConfig, service: &str) -> Vec<String> {
    match config.allow.get(service) {
        Some(list) => list
            .iter()
            .map(|entry| {
                if entry.contains('.') {
                    entry.clone()
                } else {
                    config.identity(entry)
                }
            })
            .collect(),
        None => default_callers(service)
            .iter()
            .map(|name| config.identity(name))
            .collect(),
    }
}

/// Why transport security could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{what} {}: {source}", path.display())]
    File {
        /// What the file is.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A certificate could not be made.
    #[error("making certificates: {0}")]
    Generate(#[from] rcgen::Error),
    /// The transport rejected the material.
    #[error("TLS setup: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// The PEM files of one principal.
struct Material {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

fn read(what: &'static str, path: PathBuf) -> Result<Vec<u8>, TlsError> {
    std::fs::read(&path).map_err(|source| TlsError::File { what, path, source })
}

fn material(config: &TlsConfig, data_dir: &Path, me: &str) -> Result<Material, TlsError> {
    let dir = config.dir(data_dir);
    Ok(Material {
        ca: read(
            "CA certificate (tls.ca)",
            config.ca.clone().unwrap_or_else(|| dir.join("ca.pem")),
        )?,
        cert: read(
            "certificate (tls.cert)",
            config
                .cert
                .clone()
                .unwrap_or_else(|| dir.join(format!("{me}.pem"))),
        )?,
        key: read(
            "private key (tls.key)",
            config
                .key
                .clone()
                .unwrap_or_else(|| dir.join(format!("{me}.key"))),
        )?,
    })
}

/// What a server needs for mTLS: the acceptor settings and its callers.
pub struct ServerTls {
    /// Presents this service's certificate and requires a client certificate
    /// signed by the mesh CA.
    pub config: ServerTlsConfig,
    /// Identities allowed to call.
    pub allowed: Arc<[String]>,
}

/// Server settings for service `me`, or `None` when the mode is not `rustls`.
pub fn server(
    config: &TlsConfig,
    data_dir: &Path,
    me: &str,
) -> Result<Option<ServerTls>, TlsError> {
    if config.mode != TlsMode::Rustls {
        return Ok(None);
    }
    let m = material(config, data_dir, me)?;
    Ok(Some(ServerTls {
        config: ServerTlsConfig::new()
            .identity(Identity::from_pem(m.cert, m.key))
            .client_ca_root(Certificate::from_pem(m.ca))
            .timeout(config.handshake_timeout),
        allowed: allowed_identities(config, me).into(),
    }))
}

/// Client settings for principal `me`: its certificate and the mesh CA.
#[derive(Clone, Debug)]
pub struct ClientTls {
    base: ClientTlsConfig,
    config: TlsConfig,
}

impl ClientTls {
    /// Settings for calling `peer`, whose certificate must carry its identity.
    pub fn for_peer(&self, peer: &str) -> ClientTlsConfig {
        self.base
            .clone()
            .domain_name(self.config.identity(peer))
            .assume_http2(true)
    }
}

/// Client settings for principal `me`, or `None` when the mode is not `rustls`.
pub fn client(
    config: &TlsConfig,
    data_dir: &Path,
    me: &str,
) -> Result<Option<ClientTls>, TlsError> {
    if config.mode != TlsMode::Rustls {
        return Ok(None);
    }
    let m = material(config, data_dir, me)?;
    Ok(Some(ClientTls {
        base: ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(m.ca))
            .identity(Identity::from_pem(m.cert, m.key)),
        config: config.clone(),
    }))
}

/// Whether the (CA-verified) peer certificate carries one of `allowed`.
pub fn certificate_allowed(der: &[u8], allowed: &[String]) -> bool {
    let der = rustls::pki_types::CertificateDer::from(der);
    let Ok(cert) = webpki::EndEntityCert::try_from(&der) else {
        return false;
    };
    allowed.iter().any(|identity| {
        rustls::pki_types::ServerName::try_from(identity.as_str())
            .is_ok_and(|name| cert.verify_is_valid_for_subject_name(&name).is_ok())
    })
}

/// Writes a development CA (`ca.pem`, `ca.key`) and, for each of `names`, a
/// certificate with its identity (`<name>.pem`, `<name>.key`) into `dir`.
/// Certificates are valid for a year; keys are ECDSA P-256, written 0600.
pub fn init_dev_pki(
    config: &TlsConfig,
    dir: &Path,
    names: &[&str],
) -> Result<Vec<PathBuf>, TlsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };

    let now = time::OffsetDateTime::now_utc();
    std::fs::create_dir_all(dir).map_err(|source| TlsError::File {
        what: "directory",
        path: dir.to_owned(),
        source,
    })?;

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name.push(
        DnType::CommonName,
        format!(
            "identity.linkerd.{} (AMAOS development CA)",
            config.trust_domain
        ),
    );
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = now - time::Duration::hours(1);
    ca_params.not_after = now + time::Duration::days(3650);
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let mut written = Vec::new();
    write(dir, "ca.pem", ca_cert.pem().as_bytes(), false, &mut written)?;
    write(
        dir,
        "ca.key",
        ca_key.serialize_pem().as_bytes(),
        true,
        &mut written,
    )?;
    let issuer = Issuer::new(ca_params, ca_key);

    for name in names {
        let identity = config.identity(name);
        let mut params = CertificateParams::new(vec![identity.clone()])?;
        params.distinguished_name.push(DnType::CommonName, identity);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(365);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        write(
            dir,
            &format!("{name}.pem"),
            cert.pem().as_bytes(),
            false,
            &mut written,
        )?;
        write(
            dir,
            &format!("{name}.key"),
            key.serialize_pem().as_bytes(),
            true,
            &mut written,
        )?;
    }
    Ok(written)
}

fn write(
    dir: &Path,
    name: &str,
    contents: &[u8],
    secret: bool,
    written: &mut Vec<PathBuf>,
) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    let path = dir.join(name);
    let error = |source| TlsError::File {
        what: "file",
        path: path.clone(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&path)
        .map_err(error)?;
    file.write_all(contents).map_err(error)?;
    written.push(path);
    Ok(())
}
