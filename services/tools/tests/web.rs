//! `web_fetch` against the SSRF set — each refused with PERMISSION_DENIED —
//! and against a real HTTP server on 127.0.0.2 (exempted, as a private
//! deployment would exempt an internal address): HTML to text, a redirect
//! to loopback refused, the size cap, and a tenant's domain allowlist.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use amaos_tools::ToolError;
use amaos_tools::web::{WebFetch, blocked, html_to_text};
use axum::response::{Html, Redirect};
use axum::routing::get;

const EXEMPT: &str = "127.0.0.2";

async fn serve() -> u16 {
    let app = axum::Router::new()
        .route(
            "/page",
            get(|| async {
                Html("<html><head><style>p{}</style><script>alert('x')</script></head><body><h1>Title</h1><p>Hello &amp; welcome</p></body></html>")
            }),
        )
        .route("/to-loopback", get(|| async { Redirect::temporary("http://127.0.0.1:1/secret") }))
        .route("/to-page", get(|| async { Redirect::temporary("/page") }))
        .route("/big", get(|| async { "x".repeat(3 * 1024 * 1024) }));
    let listener = tokio::net::TcpListener::bind((EXEMPT, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

fn fetcher(allow: BTreeMap<String, Vec<String>>) -> WebFetch {
    WebFetch::new(
        64 * 1024,
        Duration::from_secs(5),
        vec![EXEMPT.parse::<IpAddr>().unwrap()],
        allow,
    )
}

#[tokio::test]
async fn the_ssrf_set_is_refused() {
    let port = serve().await;
    let web = fetcher(BTreeMap::new());
    for url in [
        "http://127.0.0.1/".to_owned(),
        format!("http://localhost:{port}/page"),
        "http://2130706433/".into(),
        "http://0177.0.0.1/".into(),
        "http://0x7f.0.0.1/".into(),
        "http://017700000001/".into(),
        "http://[::1]/".into(),
        "http://[::ffff:127.0.0.1]/".into(),
        "http://[::ffff:7f00:1]/".into(),
        "http://[64:ff9b::a9fe:a9fe]/".into(),
        "http://169.254.169.254/latest/meta-data/".into(),
        "http://[fd00:ec2::254]/".into(),
        "http://10.0.0.1/".into(),
        "http://100.64.0.1/".into(),
        "http://192.168.1.1/".into(),
        "http://0.0.0.0/".into(),
        "file:///etc/passwd".into(),
        "gopher://127.0.0.2:70/".into(),
        format!("http://user:pw@{EXEMPT}:{port}/page"),
        format!("http://evil.example@{EXEMPT}:{port}/page"),
        format!("http://{EXEMPT}:{port}/to-loopback"),
    ] {
        match web.fetch("acme", &url).await {
            Err(ToolError::PermissionDenied(why)) => assert!(!why.is_empty()),
            other => panic!("{url}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_page_is_fetched_as_text_with_redirects_checked_and_size_capped() {
    let port = serve().await;
    let web = fetcher(BTreeMap::new());
    let page = web
        .fetch("acme", &format!("http://{EXEMPT}:{port}/to-page"))
        .await
        .unwrap();
    assert_eq!(page["status"], 200);
    assert_eq!(page["text"], "Title\nHello & welcome", "{page}");
    assert!(page["url"].as_str().unwrap().ends_with("/page"));
    let big = web
        .fetch("acme", &format!("http://{EXEMPT}:{port}/big"))
        .await
        .unwrap();
    assert_eq!(big["truncated"], true);
    assert_eq!(big["text"].as_str().unwrap().len(), 64 * 1024);
}

#[tokio::test]
async fn a_tenant_allowlist_limits_the_domains() {
    let port = serve().await;
    let web = fetcher(BTreeMap::from([(
        "acme".to_owned(),
        vec!["example.org".to_owned()],
    )]));
    let Err(ToolError::PermissionDenied(why)) = web
        .fetch("acme", &format!("http://{EXEMPT}:{port}/page"))
        .await
    else {
        panic!("an address outside the allowlist is refused")
    };
    assert!(why.contains("allowlist"), "{why}");
    // Other tenants are not bound by acme's list.
    assert!(
        web.fetch("globex", &format!("http://{EXEMPT}:{port}/page"))
            .await
            .is_ok()
    );
}

#[test]
fn address_classes() {
    for ip in ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"] {
        assert_eq!(blocked(ip.parse().unwrap()), None, "{ip}");
    }
    for ip in [
        "127.0.0.53",
        "172.20.0.1",
        "169.254.170.2",
        "224.0.0.1",
        "255.255.255.255",
        "fe80::1",
        "ff02::1",
        "::",
        "::127.0.0.1",
        "2002:7f00:1::",
    ] {
        assert!(blocked(ip.parse().unwrap()).is_some(), "{ip}");
    }
    assert_eq!(html_to_text("<p>a<br>b</p><!-- c -->"), "a\nb");
}

#[tokio::test]
async fn option_like_and_malformed_urls_are_arguments_not_commands() {
    let port = serve().await;
    let web = fetcher(BTreeMap::new());
    for url in [
        "--proxy=http://127.0.0.1:1 http://example.org/",
        "-K /etc/passwd",
        "",
    ] {
        match web.fetch("acme", url).await {
            Err(ToolError::InvalidArgument { field, .. }) => assert_eq!(field, "arguments.url"),
            other => panic!("{url:?}: {other:?}"),
        }
    }
    // Option-like text after a URL is part of its path, sent to the server as such.
    let page = web
        .fetch(
            "acme",
            &format!("http://{EXEMPT}:{port}/page -o /etc/passwd"),
        )
        .await
        .unwrap();
    assert_eq!(page["status"], 404);
    assert!(
        page["url"]
            .as_str()
            .unwrap()
            .ends_with("/page%20-o%20/etc/passwd")
    );
}
