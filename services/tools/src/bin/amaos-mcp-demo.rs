//! `amaos-mcp-demo`: a small MCP server (built with rmcp) offering `add`
//! and `echo`, for trying custom tools and for the tools service's tests.
//!
//! - `amaos-mcp-demo` serves MCP over stdio (how the tools service runs it,
//!   inside the sandbox);
//! - `amaos-mcp-demo --http 127.0.0.1:8931` serves streamable HTTP at `/mcp`;
//!   with `AMAOS_MCP_DEMO_TOKEN` set, only to requests bearing that token.
//!
//! `env_len` tells how long an environment variable is (never its value),
//! to show that secrets reach a server as environment variables.

use axum::response::IntoResponse;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{ServerCapabilities, ServerConfig};
use rmcp::{ServerHandler, ServiceExt, schemars, tool, tool_handler, tool_router};

/// Arguments of `add`.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct AddRequest {
    /// The left operand.
    a: i64,
    /// The right operand.
    b: i64,
}

/// Arguments of `env_len`.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct EnvRequest {
    /// The variable's name.
    name: String,
}

/// Arguments of `echo`.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct EchoRequest {
    /// The text to send back.
    text: String,
}

/// The demo server.
#[derive(Clone)]
struct Demo;

#[tool_router]
impl Demo {
    fn new() -> Self {
        Self
    }

    #[tool(description = "Add two integers")]
    fn add(&self, Parameters(AddRequest { a, b }): Parameters<AddRequest>) -> String {
        a.saturating_add(b).to_string()
    }

    #[tool(description = "The length of an environment variable's value (-1 when unset)")]
    fn env_len(&self, Parameters(EnvRequest { name }): Parameters<EnvRequest>) -> String {
        std::env::var(&name)
            .map(|v| v.len() as i64)
            .unwrap_or(-1)
            .to_string()
    }

    #[tool(description = "Send the text back")]
    fn echo(&self, Parameters(EchoRequest { text }): Parameters<EchoRequest>) -> String {
        text
    }
}

#[tool_handler]
impl ServerHandler for Demo {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_instructions("A demo server: add and echo.")
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--http") {
        let address = args.get(i + 1).ok_or("--http needs an address")?;
        let listener = tokio::net::TcpListener::bind(address).await?;
        println!("{}", listener.local_addr()?);
        let sessions: std::sync::Arc<
            rmcp::transport::streamable_http_server::session::local::LocalSessionManager,
        > = Default::default();
        // The Host names it answers: its own address's too (tests listen on
        // 127.0.0.2, say), besides the loopback names.
        let ip = listener.local_addr()?.ip().to_string();
        let config = rmcp::transport::streamable_http_server::StreamableHttpServerConfig::default()
            .with_allowed_hosts(["localhost".to_owned(), "127.0.0.1".into(), "::1".into(), ip]);
        let service = rmcp::transport::streamable_http_server::StreamableHttpService::new(
            || Ok(Demo::new()),
            sessions,
            config,
        );
        let token = std::env::var("AMAOS_MCP_DEMO_TOKEN").ok();
        let app =
            axum::Router::new()
                .nest_service("/mcp", service)
                .layer(axum::middleware::from_fn(
                    move |request: axum::extract::Request, next: axum::middleware::Next| {
                        let expected = token.as_ref().map(|t| format!("Bearer {t}"));
                        async move {
                            let presented = request
                                .headers()
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned);
                            if expected.is_some() && presented != expected {
                                return axum::http::StatusCode::UNAUTHORIZED.into_response();
                            }
                            next.run(request).await
                        }
                    },
                ));
        axum::serve(listener, app).await?;
        return Ok(());
    }
    let running = Demo::new().serve(rmcp::transport::stdio()).await?;
    running.waiting().await?;
    Ok(())
}
