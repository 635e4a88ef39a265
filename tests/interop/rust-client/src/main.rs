//! The `oauth2` crate (v5) through pkce-proxy, against the legacy Authlib server.
//!
//! Public client `public-app`: authorization code + PKCE S256, state checked exactly, token
//! exchange with the verifier, protected resource, refresh; then a code redeemed without a
//! verifier and with a wrong one, which the crate must surface as `invalid_grant`.
//!
//! Prints `RESULT|<suite>|<check>|PASS or FAIL|<detail>` lines; exits 1 on any failure.
//! Usage: pkce-proxy-interop-rust-client PROXY_URL

use std::time::Duration;

use oauth2::basic::{BasicClient, BasicErrorResponseType};
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, CsrfToken, EndpointNotSet, EndpointSet,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RequestTokenError, Scope, TokenResponse,
    TokenUrl,
};
use url::Url;

const CALLBACK: &str = "http://127.0.0.1:9/callback";
const SUITE: &str = "rust-oauth2";

type Client =
    BasicClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;
type Res<T> = Result<T, String>;

struct Report {
    passed: usize,
    failed: usize,
}

impl Report {
    fn record(&mut self, suite: &str, name: &str, result: Res<String>) {
        let (word, detail) = match result {
            Ok(d) => {
                self.passed += 1;
                ("PASS", d)
            }
            Err(e) => {
                self.failed += 1;
                ("FAIL", e)
            }
        };
        let detail: String = detail.replace(['|', '\n'], " ").chars().take(300).collect();
        println!("RESULT|{suite}|{name}|{word}|{detail}");
    }
}

fn html_unescape(s: &str) -> String {
    s.replace("&#34;", "\"")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// A minimal browser: manual redirects, a cookie jar, the legacy sign-in form. Returns the
/// callback URL the authorization server redirected to.
async fn browse(url: &str) -> Res<Url> {
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let mut url = Url::parse(url).map_err(|e| e.to_string())?;
    for _ in 0..10 {
        let res = browser.get(url.clone()).send().await.map_err(|e| e.to_string())?;
        let status = res.status();
        if status.is_redirection() {
            let loc = res
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .ok_or("redirect without Location")?;
            let next = url.join(loc).map_err(|e| e.to_string())?;
            if next.as_str().starts_with(CALLBACK) {
                return Ok(next);
            }
            url = next;
            continue;
        }
        let body = res.text().await.map_err(|e| e.to_string())?;
        if status == 200 && url.path() == "/login" {
            let marker = "name=\"next\" value=\"";
            let start = body.find(marker).ok_or("login form without next")? + marker.len();
            let end = start + body[start..].find('"').ok_or("bad login form")?;
            let next = html_unescape(&body[start..end]);
            let post = browser
                .post(url.join("/login").map_err(|e| e.to_string())?)
                .form(&[
                    ("next", next.as_str()),
                    ("username", "alice"),
                    ("password", "wonderland"),
                ])
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let loc = post
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| format!("sign-in answered {}", post.status()))?;
            url = url.join(loc).map_err(|e| e.to_string())?;
            continue;
        }
        return Err(format!("browser stopped at {status}: {body:.200}"));
    }
    Err("too many redirects".into())
}

fn client(proxy: &str) -> Res<Client> {
    Ok(BasicClient::new(ClientId::new("public-app".into()))
        .set_auth_uri(AuthUrl::new(format!("{proxy}/authorize")).map_err(|e| e.to_string())?)
        .set_token_uri(TokenUrl::new(format!("{proxy}/token")).map_err(|e| e.to_string())?)
        .set_redirect_uri(RedirectUrl::new(CALLBACK.into()).map_err(|e| e.to_string())?))
}

/// Authorize with a fresh S256 challenge; returns (verifier, state, callback URL, code).
async fn start_flow(client: &Client) -> Res<(PkceCodeVerifier, CsrfToken, Url, String)> {
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, state) = client
        .authorize_url(CsrfToken::new_random)
        .add_scope(Scope::new("profile".into()))
        .set_pkce_challenge(challenge)
        .url();
    let cb = browse(url.as_str()).await?;
    let states: Vec<String> = cb
        .query_pairs()
        .filter(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .collect();
    if states != [state.secret().clone()] {
        return Err(format!("state sent {:?}, came back {states:?} in {cb}", state.secret()));
    }
    let code = cb
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .ok_or_else(|| format!("no code in {cb}"))?;
    Ok((verifier, state, cb, code))
}

fn http() -> Res<reqwest::Client> {
    // As the oauth2 docs advise: no redirects on the token endpoint (SSRF).
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())
}

/// Expects the crate to surface the server's refusal as a typed `invalid_grant`.
fn expect_invalid_grant<T, RE: std::error::Error + 'static>(
    result: Result<T, RequestTokenError<RE, oauth2::basic::BasicErrorResponse>>,
) -> Res<String> {
    match result {
        Ok(_) => Err("a token was issued!".into()),
        // Authlib's own wording: the legacy server refused, so the proxy let the request through.
        Err(RequestTokenError::ServerResponse(e))
            if e.error_description().is_some_and(|d| d.contains("Invalid 'code'")) =>
        {
            Err(format!("refused by the legacy server, not the proxy: {e:?}"))
        }
        Err(RequestTokenError::ServerResponse(e))
            if *e.error() == BasicErrorResponseType::InvalidGrant =>
        {
            Ok(format!(
                "oauth2 crate: ServerResponse invalid_grant ({})",
                e.error_description().map_or("", String::as_str)
            ))
        }
        Err(RequestTokenError::ServerResponse(e)) => Err(format!("wrong error: {e:?}")),
        Err(e) => Err(format!("not a parsed OAuth error: {e:?}")),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let Some(proxy) = std::env::args().nth(1) else {
        eprintln!("usage: pkce-proxy-interop-rust-client PROXY_URL");
        std::process::exit(2);
    };
    let proxy = proxy.trim_end_matches('/').to_string();
    let mut report = Report {
        passed: 0,
        failed: 0,
    };
    let client = match client(&proxy) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bad proxy URL: {e}");
            std::process::exit(2);
        }
    };
    let http = match http() {
        Ok(h) => h,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };

    let flow = start_flow(&client).await;
    let mut tokens = None;
    report.record(
        SUITE,
        "authorize -> sign-in -> callback, state exact",
        flow.as_ref().map(|_| "state round-tripped".to_string()).map_err(Clone::clone),
    );

    let result = async {
        let (verifier, _state, _cb, code) = flow.map_err(|_| "no flow".to_string())?;
        let token = client
            .exchange_code(AuthorizationCode::new(code.clone()))
            .set_pkce_verifier(verifier)
            .request_async(&http)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let detail = format!(
            "token_type={:?} refresh={}",
            token.token_type(),
            token.refresh_token().is_some()
        );
        tokens = Some((token, code));
        Ok(detail)
    }
    .await;
    report.record(SUITE, "token exchange with set_pkce_verifier", result);

    let result = async {
        let (token, _) = tokens.as_ref().ok_or("no token")?;
        let get = |access: String| {
            let http = http.clone();
            let url = format!("{proxy}/api/me");
            async move {
                let r = http
                    .get(url)
                    .bearer_auth(access)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                let status = r.status();
                let body: serde_json::Value = r.json().await.map_err(|e| e.to_string())?;
                if status != 200 || body["sub"] != "alice" {
                    return Err(format!("{status} {body}"));
                }
                Ok::<_, String>(())
            }
        };
        get(token.access_token().secret().clone()).await?;
        let refresh = token.refresh_token().ok_or("no refresh token")?;
        let fresh = client
            .exchange_refresh_token(refresh)
            .request_async(&http)
            .await
            .map_err(|e| format!("{e:?}"))?;
        if fresh.access_token().secret() == token.access_token().secret() {
            return Err("refresh returned the same token".into());
        }
        get(fresh.access_token().secret().clone()).await?;
        Ok("resource 200, refreshed, resource 200".to_string())
    }
    .await;
    report.record(SUITE, "protected resource + refresh", result);

    let result = async {
        let (_, code) = tokens.as_ref().ok_or("no redeemed code")?;
        expect_invalid_grant(
            client
                .exchange_code(AuthorizationCode::new(code.clone()))
                .set_pkce_verifier(PkceCodeVerifier::new("x".repeat(64)))
                .request_async(&http)
                .await,
        )
    }
    .await;
    report.record("attack", "rust: replay a used code -> invalid_grant", result);

    let result = async {
        let (_v, _s, _cb, code) = start_flow(&client).await?;
        expect_invalid_grant(
            client
                .exchange_code(AuthorizationCode::new(code))
                .request_async(&http)
                .await,
        )
    }
    .await;
    report.record("attack", "rust: intercepted code, no verifier -> invalid_grant", result);

    let result = async {
        let (_v, _s, _cb, code) = start_flow(&client).await?;
        let (_, wrong) = PkceCodeChallenge::new_random_sha256();
        expect_invalid_grant(
            client
                .exchange_code(AuthorizationCode::new(code))
                .set_pkce_verifier(wrong)
                .request_async(&http)
                .await,
        )
    }
    .await;
    report.record("attack", "rust: intercepted code, wrong verifier -> invalid_grant", result);

    eprintln!("rust client: {} passed, {} failed", report.passed, report.failed);
    std::process::exit(if report.failed > 0 || report.passed == 0 { 1 } else { 0 });
}
