//! Checking a registration before anything connects: the name, the server
//! limits, the secrets it names, a stdio server's read-only paths, an HTTP
//! URL against the address policy.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use super::{
    Checked, MAX_SERVERS, MAX_SERVERS_PER_TENANT, MAX_TENANT_SERVERS, Mcp, Scope, Server,
    TENANT_SECRETS, Transport, tenant_secret, valid_name,
};
use crate::ToolError;

impl Mcp {
    /// Room for `name` in `scope`, under the server limits.
    pub(super) fn room(
        servers: &BTreeMap<(Scope, String), Arc<Server>>,
        scope: &Scope,
        name: &str,
    ) -> Result<(), ToolError> {
        if servers.contains_key(&(scope.clone(), name.to_owned())) {
            return Ok(()); // a replacement
        }
        match scope {
            Scope::Platform => {
                let n = servers
                    .keys()
                    .filter(|(s, _)| *s == Scope::Platform)
                    .count();
                if n >= MAX_SERVERS {
                    return Err(ToolError::Quota(format!(
                        "at most {MAX_SERVERS} platform-wide MCP servers"
                    )));
                }
            }
            Scope::Tenant(tenant) => {
                let own = servers.keys().filter(|(s, _)| s == scope).count();
                if own >= MAX_SERVERS_PER_TENANT {
                    return Err(ToolError::Quota(format!(
                        "tenant `{tenant}` has {MAX_SERVERS_PER_TENANT} MCP servers, its limit"
                    )));
                }
                let tenants = servers
                    .keys()
                    .filter(|(s, _)| *s != Scope::Platform)
                    .count();
                if tenants >= MAX_TENANT_SERVERS {
                    return Err(ToolError::Quota(format!(
                        "at most {MAX_TENANT_SERVERS} tenants' MCP servers in all"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Refuses a secret a tenant's server may not name.
    fn check_secret(scope: &Scope, field: &str, path: &str) -> Result<(), ToolError> {
        match scope {
            Scope::Platform => Ok(()),
            Scope::Tenant(tenant) if tenant_secret(tenant, path) => Ok(()),
            Scope::Tenant(tenant) => Err(ToolError::PermissionDenied(format!(
                "{field}: a tenant's server may name only its tenant's secrets, \
                 under `{TENANT_SECRETS}/{tenant}/`"
            ))),
        }
    }

    /// Checks a registration of `name` in `scope` without connecting: the
    /// name, the server limits, the secrets it names (a tenant's server only
    /// its tenant's), an HTTP URL against the address policy (resolved once;
    /// an `http` URL is then used with the checked address).
    pub async fn check(
        &self,
        scope: &Scope,
        name: &str,
        transport: Transport,
    ) -> Result<Checked, ToolError> {
        if !valid_name(name) {
            return Err(ToolError::InvalidArgument {
                field: "name".into(),
                message: "must be 1 to 64 of a-z, 0-9, `-` and `_`".into(),
            });
        }
        Self::room(&*self.servers.read().await, scope, name)?;
        let http = match &transport {
            Transport::Stdio {
                argv,
                secret_env,
                read_only,
            } => {
                if argv.first().is_none_or(|c| !c.starts_with('/')) {
                    return Err(ToolError::InvalidArgument {
                        field: "stdio.command".into(),
                        message: "must be an absolute path".into(),
                    });
                }
                if let Some(why) = read_only.iter().find_map(|p| crate::sandbox::unshowable(p)) {
                    return Err(ToolError::InvalidArgument {
                        field: "stdio.read_only".into(),
                        message: format!("the sandbox cannot show it read-only: {why}"),
                    });
                }
                for entry in secret_env {
                    let path = entry.split_once('=').map_or(entry.as_str(), |(_, p)| p);
                    Self::check_secret(scope, "stdio.secret_env", path)?;
                }
                None
            }
            Transport::Http { url, bearer_secret } => {
                if let Some(path) = bearer_secret {
                    Self::check_secret(scope, "http.bearer_secret", path)?;
                }
                let mut parsed =
                    reqwest::Url::parse(url).map_err(|e| ToolError::InvalidArgument {
                        field: "http.url".into(),
                        message: format!("is not a URL: {e}"),
                    })?;
                let platform = *scope == Scope::Platform;
                let policy = &self.policy;
                let exempt = |ip: IpAddr| {
                    policy.exempt.contains(&ip)
                        || (platform && policy.platform_exempt.iter().any(|n| n.contains(ip)))
                };
                let address =
                    crate::web::check_url(&parsed, &exempt)
                        .await
                        .map_err(|e| match e {
                            ToolError::PermissionDenied(m) => {
                                ToolError::PermissionDenied(format!("http.url: {m}"))
                            }
                            ToolError::InvalidArgument { message, .. } => {
                                ToolError::InvalidArgument {
                                    field: "http.url".into(),
                                    message,
                                }
                            }
                            other => other,
                        })?;
                if parsed.scheme() == "http" {
                    // Pinned: connect to the checked address, naming the host
                    // in the Host header (a name that resolves elsewhere later
                    // is never asked again). https cannot be pinned this way;
                    // there the certificate must match the name, which an
                    // internal address re-bound to it cannot present.
                    let host = match parsed.port() {
                        Some(port) => format!("{}:{port}", parsed.host_str().unwrap_or_default()),
                        None => parsed.host_str().unwrap_or_default().to_owned(),
                    };
                    let header = http::HeaderValue::from_str(&host).map_err(|_| {
                        ToolError::InvalidArgument {
                            field: "http.url".into(),
                            message: "has a host that cannot be sent".into(),
                        }
                    })?;
                    parsed
                        .set_ip_host(address.ip())
                        .map_err(|()| ToolError::InvalidArgument {
                            field: "http.url".into(),
                            message: "cannot be pinned to its address".into(),
                        })?;
                    Some((parsed.to_string(), Some(header)))
                } else {
                    Some((url.clone(), None))
                }
            }
        };
        Ok(Checked {
            scope: scope.clone(),
            name: name.to_owned(),
            transport,
            http,
        })
    }
}
