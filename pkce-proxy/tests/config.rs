//! The configuration as one struct: `--print-config` reads back as the same configuration
//! (through the built binary), and every way of building a proxy validates it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use pkce_proxy::{Config, Proxy};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_pkce-proxy");

/// Runs the binary with `args` and no `PKCE_PROXY_*` variable from the test's environment.
async fn run(args: &[&str]) -> Output {
    let mut command = Command::new(BIN);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("PKCE_PROXY_") {
            command.env_remove(name);
        }
    }
    command.args(args).output().await.unwrap()
}

async fn print_config(args: &[&str]) -> String {
    let out = run(&[args, &["--print-config"]].concat()).await;
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `pkce-proxy … --print-config > f.toml && pkce-proxy --config f.toml --print-config`
/// prints the same.
async fn assert_round_trip(dir: &Path, name: &str, args: &[&str]) -> String {
    let printed = print_config(args).await;
    let file = dir.join(name);
    std::fs::write(&file, &printed).unwrap();
    let again = print_config(&["--config", file.to_str().unwrap()]).await;
    assert_eq!(again, printed, "{args:?}");
    printed
}

#[tokio::test]
async fn the_printed_configuration_reads_back_the_same() {
    let dir = std::env::temp_dir().join(format!("pkce-proxy-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let printed = assert_round_trip(&dir, "defaults.toml", &["--upstream", "http://x:9"]).await;
    // Every setting is printed, the unset ones too.
    for line in [
        "upstream = \"http://x:9/\"",
        "admin_listen = \"\"",
        "par_path = \"\"",
        "upstream_ca = \"\"",
        "tls_cert = \"\"",
        "tls_key = \"\"",
        "pending_ttl = \"10m\"",
        "max_body = 65536",
        "max_connections = 10000",
        "token_query_params = []",
        "log_format = \"text\"",
    ] {
        assert!(printed.lines().any(|l| l == line), "{line} in\n{printed}");
    }
    assert_eq!(printed.lines().filter(|l| l.contains(" = ")).count(), 31);

    let rich = assert_round_trip(
        &dir,
        "rich.toml",
        &[
            "--upstream",
            "http://127.0.0.1:9000",
            "--listen",
            "0.0.0.0:7000",
            "--admin-listen",
            "127.0.0.1:9100",
            "--par-path",
            "/oauth/par",
            "--exempt-client",
            "backend",
            "--exempt-client",
            "odd \"id\"",
            "--token-query-param",
            "api-version",
            "--token-forward-header",
            "DPoP",
            "--other-route",
            "/token/info",
            "--allow-plain",
            "--mode",
            "REPORT",
            "--code-ttl",
            "1m 30s",
            "--max-body",
            "1MiB",
            "--store-prefix",
            "login:",
            "--idle-timeout",
            "250ms",
            "--workers",
            "3",
            "--log-format",
            "json",
        ],
    )
    .await;
    for line in [
        "mode = \"report\"",
        "code_ttl = \"1m 30s\"",
        "max_body = 1048576",
        "idle_timeout = \"250ms\"",
        "token_query_params = [\"api-version\"]",
        "[clients.backend]",
        "[clients.'odd \"id\"']",
    ] {
        assert!(rich.lines().any(|l| l == line), "{line} in\n{rich}");
    }

    // A Redis password stays `***`, printed and printed again.
    #[cfg(feature = "redis")]
    {
        let redis = assert_round_trip(
            &dir,
            "redis.toml",
            &[
                "--upstream",
                "http://x:9",
                "--store",
                "redis://pkce:s3cret-pw@cache.internal:6380/2",
            ],
        )
        .await;
        assert!(!redis.contains("s3cret"), "{redis}");
        assert!(redis.contains("store = \"redis://pkce:***@cache.internal:6380/2\""));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A configuration built in code is checked as the command line's is: a bad value is an
/// `InvalidInput` error from `Proxy::bind`, with the same one-line message.
#[tokio::test]
async fn proxy_bind_refuses_an_invalid_configuration() {
    let base = || {
        let mut config = Config::new("http://127.0.0.1:9".parse().unwrap());
        config.listen = "127.0.0.1:0".parse().unwrap();
        config
    };
    type Spoil = fn(&mut Config);
    let cases: [(&str, Spoil); 8] = [
        ("--max-connections 0", |c| c.max_connections = 0),
        ("--max-pending 0", |c| c.max_pending = 0),
        ("--pending-ttl \"0s\": must be longer than zero", |c| {
            c.pending_ttl = Duration::ZERO
        }),
        ("must be at most 24h", |c| {
            c.body_timeout = Duration::from_secs(90_000)
        }),
        ("--connect-timeout must be shorter", |c| {
            c.connect_timeout = Duration::from_secs(60)
        }),
        ("expected a path starting with /", |c| {
            c.token_path = "token".into()
        }),
        ("a path or query is not supported", |c| {
            c.upstream = "http://127.0.0.1:9/oauth".parse().unwrap()
        }),
        ("--upstream-ca needs an https:// upstream", |c| {
            c.upstream_ca = Some("ca.pem".into())
        }),
    ];
    for (expected, spoil) in cases {
        let mut config = base();
        spoil(&mut config);
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains(expected), "{message:?} lacks {expected:?}");
        assert!(config.layer().is_err(), "{expected}");
        let err = Proxy::bind(config).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{expected}");
        assert_eq!(err.to_string(), message);
    }
    // The defaults pass.
    base().validate().unwrap();
    let proxy = Proxy::bind(base()).await.unwrap();
    assert_ne!(proxy.local_addr().port(), 0);
}

/// The file's settings, by their snake_case names, are the struct's serde form.
#[test]
fn a_config_deserializes_from_the_file_syntax_and_validates() {
    let config: Config = toml::from_str(
        "upstream = \"https://legacy.example\"\nmax_body = \"2KiB\"\n[clients.spa]\nredirect_uris = [\"https://app/cb\"]\n",
    )
    .unwrap();
    assert_eq!(config.max_body, 2048);
    assert_eq!(config.clients["spa"].redirect_uris, ["https://app/cb"]);
    config.validate().unwrap();
    let zero: Config = toml::from_str("upstream = \"http://x\"\nmax_body = 0\n").unwrap();
    assert!(zero
        .validate()
        .unwrap_err()
        .to_string()
        .contains("--max-body 0"));
}
