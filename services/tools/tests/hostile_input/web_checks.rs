//! `web_fetch`: its argument, address and URL checks, and its HTML reduction.

use super::*;

// ---------------------------------------------------------------------------
// web_fetch
// ---------------------------------------------------------------------------

/// web::parse_args on arbitrary argument maps: never panics, accepts exactly
/// a `url` string of 1 to 4096 bytes, and what it accepts its schema accepts.
#[test]
fn web_fetch_arguments_are_parsed_without_panic() {
    runner(1024)
        .run(&args(), |args| {
            let parsed = web::parse_args(&args);
            let expected = args.keys().all(|k| k == "url")
                && matches!(args.get("url"), Some(Value::String(u)) if !u.is_empty() && u.len() <= 4096);
            prop_assert_eq!(parsed.is_ok(), expected, "{:?}", parsed);
            match parsed {
                Ok(url) => {
                    prop_assert!(schema_valid(&web::schema(), &args));
                    prop_assert_eq!(Some(url.as_str()), args["url"].as_str());
                }
                Err(e) => {
                    let field = field_of(&e).expect("argument errors are InvalidArgument");
                    prop_assert!(field.starts_with("arguments."), "{}", field);
                }
            }
            Ok(())
        })
        .unwrap();
}

fn v4_of(ip: Ipv4Addr) -> u32 {
    u32::from(ip)
}

/// web::blocked on every kind of address: never panics; an IPv4 address
/// is judged the same however IPv6 wraps it (mapped, compatible, NAT64,
/// 6to4); the ranges that reach the mesh or the cloud are always blocked.
#[test]
fn address_classification_agrees_across_ipv4_embeddings() {
    runner(4096)
        .run(
            &(any::<u32>(), any::<u128>(), any::<u16>()),
            |(v4, v6, low)| {
                let ip4 = Ipv4Addr::from(v4);
                let verdict = web::blocked(IpAddr::V4(ip4));
                let [a, b, c, d] = ip4.octets();
                let embedded =
                    |segments: [u16; 8]| web::blocked(IpAddr::V6(Ipv6Addr::from(segments)));
                let (hi, lo) = ((v4 >> 16) as u16, v4 as u16);
                prop_assert_eq!(web::blocked(IpAddr::V6(ip4.to_ipv6_mapped())), verdict);
                prop_assert_eq!(embedded([0x64, 0xff9b, 0, 0, 0, 0, hi, lo]), verdict);
                prop_assert_eq!(embedded([0x2002, hi, lo, low, 0, 0, 0, 1]), verdict);
                if v4_of(ip4) > 1 {
                    prop_assert_eq!(web::blocked(IpAddr::V6(ip4.to_ipv6_compatible())), verdict);
                }
                let must_block = a == 0
                    || a == 10
                    || a == 127
                    || (a, b) == (169, 254)
                    || (a == 172 && (16..32).contains(&b))
                    || (a, b) == (192, 168)
                    || (a == 100 && (64..128).contains(&b))
                    || a >= 224
                    || (a, b, c) == (192, 0, 0);
                if must_block {
                    prop_assert!(verdict.is_some(), "{}.{}.{}.{} passes", a, b, c, d);
                }
                // Any IPv6 address is judged without panicking.
                let ip6 = Ipv6Addr::from(v6);
                let verdict6 = web::blocked(IpAddr::V6(ip6));
                if ip6.is_loopback()
                    || ip6.is_unspecified()
                    || (ip6.segments()[0] & 0xfe00) == 0xfc00
                    || (ip6.segments()[0] & 0xffc0) == 0xfe80
                    || ip6.segments()[0] >= 0xff00
                {
                    prop_assert!(verdict6.is_some(), "{} passes", ip6);
                }
                Ok(())
            },
        )
        .unwrap();
}

/// A URL-like string: schemes, credentials, hosts in every literal form
/// (dotted, decimal, hex, octal, short, IPv6, mapped), ports and paths.
pub(super) fn url_like() -> BoxedStrategy<String> {
    let scheme = prop_oneof![
        Just("http"),
        Just("https"),
        Just("HTTP"),
        Just("ftp"),
        Just("file"),
        Just("gopher"),
        Just("javascript"),
        Just("data"),
        Just("ws"),
        Just("unix"),
    ];
    let creds = prop_oneof![
        3 => Just(String::new()),
        1 => Just("user@".to_owned()),
        1 => Just("user:pw@".to_owned()),
        1 => Just(":pw@".to_owned()),
        1 => Just("@".to_owned()),
    ];
    let host = prop_oneof![
        any::<u32>().prop_map(|n| Ipv4Addr::from(n).to_string()),
        any::<u32>().prop_map(|n| n.to_string()),
        any::<u32>().prop_map(|n| format!("0x{n:x}")),
        (any::<u8>(), any::<u32>()).prop_map(|(a, n)| format!("{a}.{}", n & 0xff_ffff)),
        (any::<u8>(), any::<u8>()).prop_map(|(a, b)| format!("0{a:o}.0x{b:x}.0.1")),
        any::<u128>().prop_map(|n| format!("[{}]", Ipv6Addr::from(n))),
        any::<u32>().prop_map(|n| format!("[::ffff:{}]", Ipv4Addr::from(n))),
        any::<u32>().prop_map(|n| format!("[64:ff9b::{}]", Ipv4Addr::from(n))),
        Just("[::1]".to_owned()),
        Just("127.0.0.1".to_owned()),
        Just("169.254.169.254".to_owned()),
        Just("[fe80::1%25eth0]".to_owned()),
        Just(String::new()),
        piece(),
    ];
    let port = prop_oneof![
        Just(String::new()),
        any::<u16>().prop_map(|p| format!(":{p}")),
        Just(":99999".to_owned()),
        Just(":".to_owned()),
    ];
    let path = prop_oneof![
        Just(String::new()),
        path_like().prop_map(|p| format!("/{p}"))
    ];
    prop_oneof![
        8 => (scheme, prop_oneof![Just("://"), Just(":"), Just(":///"), Just(":\\\\")], creds, host, port, path)
            .prop_map(|(s, sep, c, h, p, rest)| format!("{s}{sep}{c}{h}{p}{rest}")),
        1 => any::<String>(),
        1 => hostile_string(),
    ]
    .boxed()
}

/// A parsed URL whose check would resolve a name (network): skipped.
pub(super) fn resolves_a_name(url: &url::Url) -> bool {
    matches!(url.scheme(), "http" | "https")
        && url.username().is_empty()
        && url.password().is_none()
        && matches!(url.host(), Some(url::Host::Domain(_)))
}

pub(super) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// web::check_url (the form and address policy shared by web_fetch and MCP
/// servers' URLs) on hostile URLs with literal hosts: never panics; only
/// http(s) without credentials passes, and only to an address `blocked`
/// allows, on the URL's own port.
#[test]
fn url_checks_refuse_hostile_urls_without_panic() {
    let rt = runtime();
    runner(2048)
        .run(&url_like(), |text| {
            let Ok(url) = url::Url::parse(&text) else {
                return Ok(());
            };
            if resolves_a_name(&url) {
                return Ok(());
            }
            let result = rt.block_on(web::check_url(&url, &|_| false));
            let http = matches!(url.scheme(), "http" | "https");
            let creds = !url.username().is_empty() || url.password().is_some();
            if !http || creds {
                prop_assert!(
                    matches!(result, Err(ToolError::PermissionDenied(_))),
                    "{} {:?}",
                    url,
                    result
                );
                return Ok(());
            }
            let ip = match url.host() {
                Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
                Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
                other => return Err(TestCaseError::fail(format!("{url}: host {other:?}"))),
            };
            match (web::blocked(ip), result) {
                (None, Ok(address)) => {
                    prop_assert_eq!(address.ip(), ip);
                    prop_assert_eq!(Some(address.port()), url.port_or_known_default());
                }
                (Some(_), Err(ToolError::PermissionDenied(_))) => {}
                (verdict, result) => {
                    return Err(TestCaseError::fail(format!(
                        "{url}: {verdict:?} but {result:?}"
                    )));
                }
            }
            // With every address exempt, the form alone decides.
            prop_assert!(rt.block_on(web::check_url(&url, &|_| true)).is_ok());
            Ok(())
        })
        .unwrap();
}

/// HTML-ish text: tags, comments, scripts, entities, unicode, unclosed
/// constructs, with any text between.
fn html_like() -> BoxedStrategy<String> {
    let token = prop_oneof![
        Just("<"),
        Just(">"),
        Just("<p>"),
        Just("</p>"),
        Just("<br/>"),
        Just("<DIV class=x>"),
        Just("<script>"),
        Just("<SCRIPT src=x>"),
        Just("</script>"),
        Just("<style>"),
        Just("</STYLE>"),
        Just("<!--"),
        Just("-->"),
        Just("&amp;"),
        Just("&lt;"),
        Just("&gt;"),
        Just("&nbsp;"),
        Just("&quot;"),
        Just("&#39;"),
        Just("&amp;lt;"),
        Just("&"),
        Just("é"),
        Just("🦀"),
        Just("İ"),
        Just("\u{2028}"),
        Just("\r\n"),
        Just("\n"),
        Just(" "),
        Just("\t"),
        Just("text"),
    ]
    .prop_map(str::to_owned);
    prop_oneof![
        4 => vec(prop_oneof![4 => token, 1 => any::<String>()], 0..64).prop_map(|t| t.concat()),
        1 => any::<String>(),
        1 => (1usize..2000, prop_oneof![Just("<"), Just("<script"), Just("<!--"), Just("<a"), Just("&amp;")])
            .prop_map(|(n, t)| t.repeat(n)),
    ]
    .boxed()
}

/// web::html_to_text on hostile HTML: never panics, its output is never
/// longer than its input (the work is one pass), holds no blank lines and
/// no surrounding whitespace, and drops what scripts hold.
#[test]
fn html_reduction_is_panic_free_and_never_grows() {
    runner(2048)
        .run(&html_like(), |html| {
            let text = web::html_to_text(&html);
            prop_assert!(text.len() <= html.len(), "{:?} -> {:?}", html, text);
            for line in text.split('\n').filter(|_| !text.is_empty()) {
                prop_assert!(!line.is_empty(), "{:?} -> {:?}", html, text);
                prop_assert_eq!(line, line.trim());
            }
            Ok(())
        })
        .unwrap();
    runner(256)
        .run(&("[a-z ]{0,20}", "[A-Z]{8}"), |(around, payload)| {
            let html = format!(
                "{around}<script>{payload}</script><style>{payload}</style><!--{payload}-->{around}"
            );
            prop_assert!(!web::html_to_text(&html).contains(&payload));
            Ok(())
        })
        .unwrap();
}
