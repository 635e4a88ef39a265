use super::*;
use std::time::Duration;

fn parse(args: &[&str], file: &str) -> Result<Config, ConfigError> {
    let mut argv = vec!["pkce-proxy"];
    argv.extend_from_slice(args);
    let args = cli::parse_args(argv)?;
    let table = cli::parse_file(file).map_err(ConfigError::new)?;
    let name = "test.toml".to_owned();
    cli::resolve(&args, Some(cli::File { name, table }))
}

fn parse_size(text: &str) -> Result<usize, String> {
    values::size::parse(text)
}

#[test]
fn token_forwarding_settings_are_checked_and_reach_the_layer() {
    let up = ["--upstream", "http://127.0.0.1:9"];
    let with = |extra: &[&str]| parse(&[&up[..], extra].concat(), "");
    let c = with(&[
        "--token-query-param",
        "api-version",
        "--token-forward-header",
        "DPoP",
        "--other-route",
        "/oauth/token/info",
    ])
    .unwrap();
    assert_eq!(c.token_query_params, ["api-version"]);
    assert_eq!(c.token_forward_headers, ["DPoP"]);
    assert_eq!(c.other_routes, ["/oauth/token/info"]);
    let layer = c.layer().unwrap();
    let layer = format!("{layer:?}");
    assert!(
        layer.contains(r#"token_forward_headers: ["dpop"]"#),
        "{layer}"
    );
    assert!(
        layer.contains(r#"other_routes: ["/oauth/token/info"]"#),
        "{layer}"
    );
    // OAuth names (or their lookalikes) are never read from the query; bad names and
    // paths are configuration errors.
    for bad in [
        &["--token-query-param", "code"][..],
        &["--token-query-param", "Client.Id"],
        &["--token-query-param", "a b"],
        &["--token-forward-header", "bad header"],
        &["--other-route", "oauth/token/info"],
    ] {
        assert!(with(bad).is_err(), "{bad:?}");
    }
    // The layer's own refusals are configuration errors too, naming the flag.
    for (bad, message) in [
        (
            &["--token-path", "/Authorize"][..],
            "invalid --token-path: two endpoints on the path \"/authorize\"",
        ),
        (
            &["--par-path", "/token/"],
            "invalid --par-path: two endpoints on the path \"/token\"",
        ),
        (
            &["--authorize-path", "/"],
            "invalid --authorize-path: an endpoint path cannot be the root, /",
        ),
    ] {
        let error = with(bad).unwrap_err().to_string();
        assert_eq!(error, message, "{bad:?}");
    }
    let file = "upstream = \"http://127.0.0.1:9\"\ntoken_query_params = [\"api-version\"]\nother_routes = [\"/t/x\"]\n";
    let c = parse(&[], file).unwrap();
    assert_eq!(c.token_query_params, ["api-version"]);
    assert_eq!(c.other_routes, ["/t/x"]);
    let printed = c.render();
    assert!(
        printed.contains("token_query_params = [\"api-version\"]"),
        "{printed}"
    );
    assert_eq!(parse(&[], &printed).unwrap().other_routes, ["/t/x"]);
}

#[test]
fn defaults_are_strict() {
    let c = parse(&["--upstream", "http://127.0.0.1:9000"], "").unwrap();
    assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
    assert_eq!(c.admin_listen, None);
    assert_eq!(c.mode, Mode::Enforce);
    assert!(!c.allow_plain);
    assert!(!c.trust_forwarded);
    assert_eq!(c.pending_ttl, DEFAULT_PENDING_TTL);
    assert_eq!(c.code_ttl, DEFAULT_CODE_TTL);
    assert_eq!(c.max_body, DEFAULT_MAX_BODY_BYTES);
    assert_eq!(c.max_pending, DEFAULT_CAPACITY);
    assert_eq!(c.store, StoreSpec::Memory);
    assert!(c.clients.is_empty());
}

#[test]
fn flags_are_read() {
    let c = parse(
        &[
            "--upstream",
            "https://legacy.example:8443",
            "--listen",
            "0.0.0.0:9999",
            "--admin-listen",
            "127.0.0.1:9100",
            "--authorize-path",
            "/oauth/authorize",
            "--token-path",
            "/oauth/token",
            "--exempt-client",
            "a",
            "--exempt-client",
            "b",
            "--allow-plain",
            "--mode",
            "report",
            "--pending-ttl",
            "5m",
            "--code-ttl",
            "1m 30s",
            "--max-pending",
            "42",
            "--max-body",
            "1MiB",
            "--store",
            "memory",
            "--trust-forwarded",
            "--log-format",
            "json",
        ],
        "",
    )
    .unwrap();
    assert_eq!(c.upstream.to_string(), "https://legacy.example:8443/");
    assert_eq!(c.listen.to_string(), "0.0.0.0:9999");
    assert_eq!(c.admin_listen.unwrap().to_string(), "127.0.0.1:9100");
    assert_eq!(c.authorize_path, "/oauth/authorize");
    assert_eq!(c.token_path, "/oauth/token");
    assert!(c.clients["a"].exempt && c.clients["b"].exempt);
    assert!(c.allow_plain);
    assert_eq!(c.mode, Mode::Report);
    assert_eq!(c.pending_ttl, Duration::from_secs(300));
    assert_eq!(c.code_ttl, Duration::from_secs(90));
    assert_eq!(c.max_pending, 42);
    assert_eq!(c.max_body, 1 << 20);
    assert!(c.trust_forwarded);
    assert_eq!(c.log_format, LogFormat::Json);
}

#[test]
fn the_file_is_read_and_flags_win() {
    let file = r#"
        upstream = "http://10.0.0.1:9000"
        listen = "127.0.0.1:7000"
        mode = "report"
        pending_ttl = "2m"
        max_body = 1024
        allow_plain = true
        exempt_clients = ["from-file"]

        [clients.backend]
        exempt = true

        [clients.spa]
        redirect_uris = ["https://app.example/cb"]
    "#;
    let c = parse(&[], file).unwrap();
    assert_eq!(c.upstream.to_string(), "http://10.0.0.1:9000/");
    assert_eq!(c.listen.to_string(), "127.0.0.1:7000");
    assert_eq!(c.mode, Mode::Report);
    assert_eq!(c.pending_ttl, Duration::from_secs(120));
    assert_eq!(c.max_body, 1024);
    assert!(c.allow_plain);
    assert!(c.clients["from-file"].exempt);
    assert!(c.clients["backend"].exempt);
    assert!(!c.clients["spa"].exempt);
    assert_eq!(c.clients["spa"].redirect_uris, ["https://app.example/cb"]);

    let c = parse(
        &[
            "--upstream",
            "http://10.0.0.2:9000",
            "--mode",
            "enforce",
            "--allow-plain=false",
            "--exempt-client",
            "from-flag",
        ],
        file,
    )
    .unwrap();
    assert_eq!(c.upstream.to_string(), "http://10.0.0.2:9000/");
    assert_eq!(c.mode, Mode::Enforce);
    assert!(!c.allow_plain);
    // The flag's list replaces the file's list; the client tables stay.
    assert!(c.clients["from-flag"].exempt);
    assert!(!c.clients.contains_key("from-file"));
    assert!(c.clients["backend"].exempt);
    // Not given on the command line: from the file.
    assert_eq!(c.listen.to_string(), "127.0.0.1:7000");
    assert_eq!(c.pending_ttl, Duration::from_secs(120));
}

#[test]
fn bad_settings_are_one_line_errors() {
    let cases: &[(&[&str], &str, &str)] = &[
        (&[], "", "--upstream URL is required"),
        (
            &["--upstream", "ftp://x"],
            "",
            "scheme must be http or https",
        ),
        (&["--upstream", "127.0.0.1:9000"], "", "expected http://"),
        (&["--upstream", "http://x/oauth"], "", "a path or query"),
        (&["--upstream", "http://u:p@x"], "", "credentials"),
        (
            &["--upstream", "http://x", "--body-timeout", "300000000000y"],
            "",
            "at most 24h",
        ),
        (
            &[
                "--upstream",
                "http://x",
                "--connect-timeout",
                "1m",
                "--upstream-timeout",
                "30s",
            ],
            "",
            "shorter than",
        ),
        (
            &["--upstream", "https://x", "--upstream-ca", "Cargo.toml"],
            "",
            "no PEM certificate",
        ),
        (
            &["--upstream", "https://x", "--upstream-ca", "/nonexistent"],
            "",
            "invalid --upstream-ca",
        ),
        (
            &["--upstream", "http://x", "--listen", "nowhere"],
            "",
            "invalid --listen",
        ),
        (
            &["--upstream", "http://x", "--pending-ttl", "ten"],
            "",
            "invalid --pending-ttl",
        ),
        (
            &["--upstream", "http://x", "--code-ttl", "0s"],
            "",
            "longer than zero",
        ),
        (
            &["--upstream", "http://x", "--mode", "lax"],
            "",
            "enforce or report",
        ),
        (
            &["--upstream", "http://x", "--max-body", "lots"],
            "",
            "invalid --max-body",
        ),
        (
            &["--upstream", "http://x", "--max-pending", "0"],
            "",
            "at least 1",
        ),
        (
            &["--upstream", "http://x", "--store", "mongo"],
            "",
            "invalid --store",
        ),
        (
            &["--upstream", "http://x", "--token-path", "token"],
            "",
            "starting with /",
        ),
        (
            &["--upstream", "http://x", "--upstream-ca", "/nonexistent"],
            "",
            "https:// upstream",
        ),
        (
            &["--upstream", "http://x", "--frobnicate"],
            "",
            "unexpected argument",
        ),
        (
            &["--upstream", "http://x"],
            "pending_tll = \"1m\"",
            "unknown field",
        ),
        (&["--upstream", "http://x"], "mode = ", "line 1"),
        (
            &["--upstream", "http://x"],
            "max_body = \"x\"",
            "invalid --max-body",
        ),
    ];
    for (args, file, expected) in cases {
        let err = parse(args, file).expect_err(&format!("{args:?} {file:?} should fail"));
        let message = err.to_string();
        assert!(!message.contains("u:p@"), "{message}: a password echoed");
        assert!(
            message.contains(expected),
            "{args:?} {file:?}: {message:?} lacks {expected:?}"
        );
        assert!(
            !message.contains('\n'),
            "{args:?}: {message:?} is not one line"
        );
        assert_eq!(err.exit_code(), 2);
    }
}

#[test]
fn help_is_not_an_error() {
    let err = parse(&["--help"], "").unwrap_err();
    assert_eq!(err.exit_code(), 0);
    assert!(err.to_string().contains("--upstream"));
}

#[test]
fn sizes() {
    for (text, n) in [
        ("100", 100),
        ("64KiB", 65536),
        ("64k", 65536),
        ("2 MiB", 2 << 20),
    ] {
        assert_eq!(parse_size(text).unwrap(), n, "{text}");
    }
    for text in ["", "KiB", "1GiB", "-1", "99999999999999999999"] {
        assert!(parse_size(text).is_err(), "{text}");
    }
}

#[test]
fn rendered_config_reads_back() {
    let file = "upstream = \"http://10.0.0.1:9000\"\n[clients.\"odd \\\"id\\\"\"]\nexempt = true\nredirect_uris = [\"https://a/cb\"]\n";
    let c = parse(&[], file).unwrap();
    let again = parse(&[], &c.render()).unwrap();
    assert_eq!(again.render(), c.render());
    assert!(again.clients["odd \"id\""].exempt);
}

#[test]
fn a_redis_store_is_read_and_its_password_never_shown() {
    let c = parse(
        &[
            "--upstream",
            "http://x",
            "--store",
            "redis://pkce:s3cret-pw@cache.internal:6380/2",
            "--store-prefix",
            "login:",
            "--store-timeout",
            "250ms",
        ],
        "",
    )
    .unwrap();
    assert_eq!(
        c.store,
        StoreSpec::Redis(RedisUrl::new("redis://pkce:s3cret-pw@cache.internal:6380/2").unwrap())
    );
    let StoreSpec::Redis(url) = &c.store else {
        unreachable!()
    };
    assert_eq!(url.expose(), "redis://pkce:s3cret-pw@cache.internal:6380/2");
    assert_eq!(c.store_prefix, "login:");
    assert_eq!(c.store_timeout, Duration::from_millis(250));
    for shown in [format!("{c:?}"), c.render(), c.store.to_string()] {
        assert!(!shown.contains("s3cret"), "{shown}");
    }
    assert!(c
        .render()
        .contains("store = \"redis://pkce:***@cache.internal:6380/2\""));
    assert!(c.render().contains("store_prefix = \"login:\""));
    assert_eq!(
        RedisUrl::new("rediss://:pw@h/0").unwrap().to_string(),
        "rediss://:***@h/0"
    );
    assert_eq!(
        RedisUrl::new("redis://h:6379/0?x=a@b").unwrap().to_string(),
        "redis://h:6379/0?x=***"
    );
    assert_eq!(
        RedisUrl::new("redis+unix:///run/redis.sock?db=1&pass=S3CRETunix")
            .unwrap()
            .to_string(),
        "redis+unix:///run/redis.sock?db=1&pass=***"
    );
    assert!(RedisUrl::new("rediss://h:6379/0#insecure").is_err());
    // From the file too; a URL the redis crate cannot read is refused at load time, and
    // the message hides the password.
    let c = parse(&[], "upstream = \"http://x\"\nstore = \"rediss://h:6379\"").unwrap();
    assert!(matches!(c.store, StoreSpec::Redis(_)));
    for bad in [
        "redis://:hunter2@[::1",
        "mongodb://:hunter2@h",
        "redis",
        "redis://:ab#cdhunter2@host:6379/0",
        "redis://:a/b?hunter2@host:6379/0",
        "redis://:a@b/hunter2@host:6379/0",
        "redis+unix:///s?pass=hunter2#x",
    ] {
        let err = parse(&["--upstream", "http://x", "--store", bad], "").unwrap_err();
        let message = err.to_string();
        assert!(message.starts_with("invalid --store"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }
}

#[test]
fn help_takes_its_defaults_from_the_struct() {
    let help = parse(&["--help"], "").unwrap_err().to_string();
    for shown in [
        "[default: 127.0.0.1:8080]",
        "[default: 10m]",
        "[default: 100000]",
        "[default: 65536]",
        "[default: memory]",
        "[default: enforce]",
        "[default: none]",
        "[default: false]",
    ] {
        assert!(help.contains(shown), "{shown} missing in {help}");
    }
}

#[test]
fn value_errors_name_the_setting_and_where_it_came_from() {
    let up = "upstream = \"http://x\"\n";
    let cases: &[(&[&str], &str, &str)] = &[
        (
            &[],
            "max_body = \"x\"",
            "config file test.toml: invalid --max-body \"x\": expected bytes",
        ),
        (
            &["--max-body", "y"],
            "max_body = 1",
            "invalid --max-body \"y\": expected bytes",
        ),
        (
            &[],
            "allow_plain = \"yes\"",
            "config file test.toml: invalid --allow-plain: invalid type: string \"yes\"",
        ),
        (
            &["--max-pending=-1"],
            "",
            "invalid --max-pending: invalid value: integer `-1`",
        ),
        (
            &[],
            "[clients.a]\nexmpt = true",
            "config file test.toml: invalid clients.a: unknown field `exmpt`",
        ),
        (
            &[],
            "clients = 3",
            "config file test.toml: invalid clients: invalid type",
        ),
        (
            &[],
            "exempt_clients = [\" \"]",
            "invalid --exempt-client: empty client id",
        ),
        (
            &[],
            "upstream = \"http://u:p@x/ y\"",
            "config file test.toml: invalid --upstream \"[redacted]\": not a URL",
        ),
    ];
    for (args, file, expected) in cases {
        let file = if file.starts_with("upstream") {
            (*file).to_owned()
        } else {
            format!("{up}{file}")
        };
        let err = parse(args, &file).expect_err(&format!("{args:?} {file:?} should fail"));
        let message = err.to_string();
        assert!(
            message.starts_with(expected),
            "{args:?} {file:?}: {message:?} is not {expected:?}…"
        );
        assert!(!message.contains('\n'), "{message:?}");
        assert_eq!(err.exit_code(), 2);
    }
}

#[test]
fn tls_needs_a_certificate_and_its_key() {
    let dir = std::env::temp_dir().join(format!("pkce-proxy-config-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let (c, k) = (
        cert_file.display().to_string(),
        key_file.display().to_string(),
    );
    let up = ["--upstream", "http://127.0.0.1:9"];
    let with = |extra: &[&str], file: &str| parse(&[&up[..], extra].concat(), file);

    let config = with(&["--tls-cert", &c, "--tls-key", &k], "").unwrap();
    assert_eq!(config.tls_cert.as_deref(), Some(cert_file.as_path()));
    assert_eq!(config.tls_key.as_deref(), Some(key_file.as_path()));
    let file = format!("tls_cert = {c:?}\ntls_key = {k:?}\n");
    let config = with(&[], &file).unwrap();
    assert_eq!(config.tls_cert.as_deref(), Some(cert_file.as_path()));
    assert_eq!(Config::defaults().tls_cert, None, "cleartext by default");

    let error = |extra: &[&str]| with(extra, "").unwrap_err().to_string();
    assert_eq!(error(&["--tls-cert", &c]), "--tls-cert needs --tls-key");
    assert_eq!(error(&["--tls-key", &k]), "--tls-key needs --tls-cert");
    // The key as the certificate, the certificate as the key, another key, no file.
    assert!(error(&["--tls-cert", &k, "--tls-key", &k]).starts_with("invalid --tls-cert"));
    assert!(error(&["--tls-cert", &c, "--tls-key", &c]).starts_with("invalid --tls-key"));
    let other = dir.join("other.pem");
    std::fs::write(&other, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let other = other.display().to_string();
    let mismatch = error(&["--tls-cert", &c, "--tls-key", &other]);
    assert!(mismatch.contains("not the key of"), "{mismatch}");
    let missing = error(&["--tls-cert", "/nonexistent.pem", "--tls-key", &k]);
    assert!(
        missing.starts_with("invalid --tls-cert /nonexistent.pem"),
        "{missing}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
