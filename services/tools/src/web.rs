//! The `web_fetch` tool: an HTTP(S) GET that cannot be turned against the
//! mesh or the cloud it runs in (SSRF). The URL's host is resolved once and
//! every address is checked against loopback, private, link-local
//! (cloud metadata included), CGNAT, multicast and reserved ranges — IPv4
//! inside IPv6 (mapped, compatible, NAT64, 6to4) is unwrapped first — and
//! the connection goes to the address that was checked. Redirects are
//! followed by hand, each one checked again. Bodies and time are capped;
//! HTML is reduced to readable text.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use futures::StreamExt;
use reqwest::Url;
use serde_json::{Map, Value, json};

use crate::ToolError;

/// The tool's name.
pub const NAME: &str = "web_fetch";
/// What it does, for the model.
pub const DESCRIPTION: &str = "Fetch an http(s) URL and return its text (HTML reduced to readable text). Private, loopback and metadata addresses are refused.";
/// Redirects followed at most.
const MAX_REDIRECTS: usize = 5;

/// Its arguments' JSON Schema.
pub fn schema() -> Value {
    json!({
        "type": "object",
        "required": ["url"],
        "additionalProperties": false,
        "properties": {"url": {"type": "string", "minLength": 1, "maxLength": 4096}}
    })
}

/// Why an address may not be fetched, if it may not.
pub fn blocked(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => blocked_v4(v4),
        IpAddr::V6(v6) => blocked_v6(v6),
    }
}

fn blocked_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, _, _) => "the unspecified network 0.0.0.0/8",
        (10, _, _) => "a private address (10.0.0.0/8)",
        (100, 64..=127, _) => "a carrier-grade NAT address (100.64.0.0/10)",
        (127, _, _) => "a loopback address",
        (169, 254, _) => "a link-local address (cloud metadata lives here)",
        (172, 16..=31, _) => "a private address (172.16.0.0/12)",
        (192, 0, 0) | (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => {
            "a reserved or documentation address"
        }
        (192, 168, _) => "a private address (192.168.0.0/16)",
        (198, 18..=19, _) => "a benchmarking address (198.18.0.0/15)",
        (224..=239, _, _) => "a multicast address",
        (240..=255, _, _) => "a reserved or broadcast address",
        _ => return None,
    })
}

fn blocked_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return blocked_v4(v4);
    }
    let s = ip.segments();
    // IPv4-compatible (::a.b.c.d), NAT64 (64:ff9b::/96) and 6to4 (2002::/16) embed an IPv4 address.
    if s[..6] == [0, 0, 0, 0, 0, 0] && !ip.is_unspecified() && !ip.is_loopback() {
        return blocked_v4(Ipv4Addr::from(((s[6] as u32) << 16) | s[7] as u32));
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return blocked_v4(Ipv4Addr::from(((s[6] as u32) << 16) | s[7] as u32));
    }
    if s[0] == 0x2002 {
        return blocked_v4(Ipv4Addr::from(((s[1] as u32) << 16) | s[2] as u32));
    }
    Some(match s[0] {
        _ if ip.is_unspecified() => "the unspecified address",
        _ if ip.is_loopback() => "a loopback address",
        0xfc00..=0xfdff => "a unique-local address (fc00::/7)",
        0xfe80..=0xfebf => "a link-local address",
        0xfec0..=0xfeff => "a site-local address",
        0xff00..=0xffff => "a multicast address",
        0x2001 if s[1] == 0x0db8 => "a documentation address",
        0x0100 if s[1..4] == [0, 0, 0] => "a discard-only address",
        _ => return None,
    })
}

/// Fetches web pages for tools.
pub struct WebFetch {
    max_bytes: usize,
    timeout: Duration,
    /// Addresses allowed although their range is blocked (tests, private deployments).
    exempt: Vec<IpAddr>,
    /// Per tenant, the only domains it may fetch (and their subdomains).
    allow: BTreeMap<String, Vec<String>>,
    /// Fetches refused by the address policy or the allowlist.
    pub(crate) refusals: prometheus_client::metrics::counter::Counter,
}

fn denied(message: String) -> ToolError {
    ToolError::PermissionDenied(message)
}

fn invalid(message: impl Into<String>) -> ToolError {
    ToolError::InvalidArgument {
        field: "arguments.url".into(),
        message: message.into(),
    }
}

/// The `url` argument, checked.
pub fn parse_args(args: &Map<String, Value>) -> Result<String, ToolError> {
    if let Some(unknown) = args.keys().find(|k| *k != "url") {
        return Err(ToolError::InvalidArgument {
            field: format!("arguments.{unknown}"),
            message: "is not an argument of `web_fetch`".into(),
        });
    }
    match args.get("url") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 4096 => Ok(s.clone()),
        Some(Value::String(_)) => Err(invalid("must be 1 to 4096 characters")),
        Some(other) => Err(invalid(format!("must be a string, not {other}"))),
        None => Err(invalid("is required")),
    }
}

impl WebFetch {
    /// A fetcher reading at most `max_bytes` within `timeout`.
    pub fn new(
        max_bytes: usize,
        timeout: Duration,
        exempt: Vec<IpAddr>,
        allow: BTreeMap<String, Vec<String>>,
    ) -> Self {
        Self {
            max_bytes,
            timeout,
            exempt,
            allow,
            refusals: Default::default(),
        }
    }

    /// Checks `url` for `tenant` and returns the address to connect to.
    async fn check(&self, tenant: &str, url: &Url) -> Result<SocketAddr, ToolError> {
        let checked = self.check_uncounted(tenant, url).await;
        if let Err(ToolError::PermissionDenied(_)) = &checked {
            self.refusals.inc();
        }
        checked
    }

    async fn check_uncounted(&self, tenant: &str, url: &Url) -> Result<SocketAddr, ToolError> {
        let (host, port) = check_form(url)?;
        if let Some(domains) = self.allow.get(tenant) {
            let name = match &host {
                url::Host::Domain(d) => d.to_ascii_lowercase(),
                _ => String::new(),
            };
            let ok = domains
                .iter()
                .any(|d| name == *d || name.ends_with(&format!(".{d}")));
            if !ok {
                return Err(denied(format!(
                    "`{host}` is not in tenant `{tenant}`'s domain allowlist"
                )));
            }
        }
        resolve_checked(&host, port, &|ip| self.exempt.contains(&ip)).await
    }

    /// Fetches `url` for `tenant`.
    pub async fn fetch(&self, tenant: &str, url: &str) -> Result<Value, ToolError> {
        let mut url = Url::parse(url).map_err(|e| invalid(format!("is not a URL: {e}")))?;
        for _ in 0..=MAX_REDIRECTS {
            let address = self.check(tenant, &url).await?;
            let mut builder = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .timeout(self.timeout)
                .connect_timeout(Duration::from_secs(5));
            if let Some(url::Host::Domain(name)) = url.host() {
                // Connect to the address that was checked, not to a second lookup.
                builder = builder.resolve(name, address);
            }
            let client = builder.build().map_err(|e| ToolError::Io(e.to_string()))?;
            let response = client
                .get(url.clone())
                .header("user-agent", "amaos-web-fetch/1")
                .send()
                .await
                .map_err(|e| ToolError::Io(format!("fetching {url}: {e}")))?;
            let status = response.status();
            if status.is_redirection() {
                let location = response
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .ok_or_else(|| ToolError::Io(format!("{url} redirected without a Location")))?;
                url = url
                    .join(location)
                    .map_err(|e| ToolError::Io(format!("bad redirect `{location}`: {e}")))?;
                continue;
            }
            let content_type = response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_ascii_lowercase();
            let (body, truncated) = self.read(response).await?;
            let text = String::from_utf8_lossy(&body);
            let text = if content_type.contains("html") {
                html_to_text(&text)
            } else if content_type.is_empty()
                || content_type.starts_with("text/")
                || content_type.contains("json")
                || content_type.contains("xml")
            {
                text.into_owned()
            } else {
                return Err(ToolError::InvalidArgument {
                    field: "arguments.url".into(),
                    message: format!("serves `{content_type}`, not text"),
                });
            };
            return Ok(json!({
                "url": url.as_str(),
                "status": status.as_u16(),
                "content_type": content_type,
                "text": text,
                "truncated": truncated,
            }));
        }
        Err(ToolError::Io(format!(
            "more than {MAX_REDIRECTS} redirects"
        )))
    }

    async fn read(&self, response: reqwest::Response) -> Result<(Vec<u8>, bool), ToolError> {
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ToolError::Io(format!("reading the body: {e}")))?;
            let room = self.max_bytes - body.len();
            if chunk.len() > room {
                body.extend_from_slice(&chunk[..room]);
                return Ok((body, true));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, false))
    }
}

/// The host and port of `url` when its form is allowed: http or https,
/// no credentials, a host and a port.
fn check_form(url: &Url) -> Result<(url::Host<String>, u16), ToolError> {
    match url.scheme() {
        "http" | "https" => {}
        other => {
            return Err(denied(format!(
                "scheme `{other}` is not allowed; use http or https"
            )));
        }
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(denied(
            "URLs with credentials (user@host) are not allowed".into(),
        ));
    }
    let port = url
        .port_or_known_default()
        .ok_or_else(|| invalid("has no port"))?;
    let host = url.host().ok_or_else(|| invalid("has no host"))?.to_owned();
    Ok((host, port))
}

/// Resolves `host` once and checks every address against [`blocked`]
/// (unless `exempt` says otherwise); the address to connect to.
async fn resolve_checked(
    host: &url::Host<String>,
    port: u16,
    exempt: &(dyn Fn(IpAddr) -> bool + Sync),
) -> Result<SocketAddr, ToolError> {
    let addresses: Vec<SocketAddr> = match host {
        url::Host::Ipv4(ip) => vec![SocketAddr::new(IpAddr::V4(*ip), port)],
        url::Host::Ipv6(ip) => vec![SocketAddr::new(IpAddr::V6(*ip), port)],
        url::Host::Domain(name) => tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::lookup_host((name.as_str(), port)),
        )
        .await
        .map_err(|_| ToolError::Io(format!("resolving `{name}` timed out")))?
        .map_err(|e| ToolError::Io(format!("resolving `{name}`: {e}")))?
        .collect(),
    };
    if addresses.is_empty() {
        return Err(ToolError::Io(format!("`{host}` has no address")));
    }
    // Every address must pass: a name that resolves to one public and one
    // private address is refused, not raced.
    for a in &addresses {
        if let Some(why) = blocked(a.ip())
            && !exempt(a.ip())
        {
            return Err(denied(format!("`{host}` resolves to {}, {why}", a.ip())));
        }
    }
    Ok(addresses[0])
}

/// Checks `url` with `web_fetch`'s address policy (form, then every
/// address the host resolves to, unless `exempt` allows it) and returns
/// the checked address: for other outgoing requests made for tenants,
/// such as MCP servers' URLs. The caller must connect to that address.
pub async fn check_url(
    url: &Url,
    exempt: &(dyn Fn(IpAddr) -> bool + Sync),
) -> Result<SocketAddr, ToolError> {
    let (host, port) = check_form(url)?;
    resolve_checked(&host, port, exempt).await
}

/// Readable text of an HTML page: scripts, styles and tags removed, common
/// entities decoded, whitespace collapsed (block elements become newlines).
pub fn html_to_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len() / 2);
    let lower = html.to_ascii_lowercase();
    let mut i = 0;
    while i < html.len() {
        if lower[i..].starts_with("<script") || lower[i..].starts_with("<style") {
            let close = if lower[i..].starts_with("<script") {
                "</script>"
            } else {
                "</style>"
            };
            i = lower[i..]
                .find(close)
                .map_or(html.len(), |j| i + j + close.len());
            continue;
        }
        if html[i..].starts_with("<!--") {
            i = html[i..].find("-->").map_or(html.len(), |j| i + j + 3);
            continue;
        }
        if html[i..].starts_with('<') {
            let end = html[i..].find('>').map_or(html.len(), |j| i + j + 1);
            let tag = &lower[i..end];
            if [
                "<p", "<br", "<div", "<li", "<h1", "<h2", "<h3", "<h4", "<tr", "</p", "</div",
                "</li", "</h",
            ]
            .iter()
            .any(|t| tag.starts_with(t))
            {
                out.push('\n');
            } else {
                out.push(' ');
            }
            i = end;
            continue;
        }
        let next = html[i..].find('<').map_or(html.len(), |j| i + j);
        out.push_str(&html[i..next]);
        i = next;
    }
    let decoded = out
        .replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&");
    decoded
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}
