// The cases of `tests/axum_layer.rs`, included once per store: `store_layer()` is a
// `PkceLayer` with the store under test.
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use crate::support::*;
use tower_pkce::{MemoryStore, Mode, PkceLayer, Reason};

fn layer() -> PkceLayer {
    store_layer().exempt_client(CONFIDENTIAL)
}

fn build(layer: &PkceLayer) -> (Router, Legacy) {
    let legacy = Legacy::default();
    (legacy.router().layer(layer.clone()), legacy)
}

/// Redeems `code` with `verifier` for `CLIENT` and asserts the upstream issued a token.
async fn assert_redeems(app: &Router, code: &str, verifier: &str) {
    let response = redeem(app, code, Some(verifier), CLIENT).await;
    assert_eq!(response.status(), StatusCode::OK, "{:?}", response.body());
    assert!(json_body(&response)["access_token"].is_string());
}

fn reason(response: &axum::http::Response<axum::body::Bytes>) -> Option<Reason> {
    response.extensions().get::<Reason>().copied()
}

fn assert_refused(response: &axum::http::Response<axum::body::Bytes>, expected: Reason) {
    assert_eq!(
        reason(response),
        Some(expected),
        "body {:?}",
        response.body()
    );
    assert_eq!(response.status(), expected.status());
    let body = json_body(response);
    assert_eq!(body["error"], expected.error_code(), "{body}");
    assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
}

// ---------------------------------------------------------------------------------------------
// Whole flows

#[tokio::test]
async fn full_flow_through_sign_in_and_reentry() {
    let layer = layer();
    let (app, legacy) = build(&layer);
    let (code, pkce) = code_for(&app, CLIENT, REDIRECT).await;
    let response = redeem(&app, &code, Some(&pkce.verifier), CLIENT).await;
    assert_eq!(response.status(), StatusCode::OK, "{:?}", response.body());
    assert!(json_body(&response)["access_token"]
        .as_str()
        .unwrap()
        .starts_with("at-"));
    assert!(reason(&response).is_none());
    // The legacy server got the form as the client sent it.
    let received = legacy.token_bodies.lock().unwrap().last().cloned().unwrap();
    assert!(std::str::from_utf8(&received)
        .unwrap()
        .contains("code_verifier="));
    assert_eq!(
        layer
            .metrics()
            .snapshot()
            .iter()
            .filter(|(_, r, _)| *r == "reentry")
            .count(),
        1
    );
}

#[tokio::test]
async fn the_upstream_never_sees_the_client_state() {
    let legacy = Legacy::default();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let spy = legacy.router().layer(axum::middleware::from_fn(
        move |req: Request<Body>, next: axum::middleware::Next| {
            let seen = seen2.clone();
            async move {
                seen.lock().unwrap().push(req.uri().to_string());
                next.run(req).await
            }
        },
    ));
    let app = spy.layer(layer());
    let pkce = Pkce::new();
    let params = browser_flow(
        &app,
        &authorize_query(
            CLIENT,
            REDIRECT,
            Some("client-secret-state"),
            Some(&pkce.challenge),
        ),
    )
    .await;
    assert_eq!(params["state"], "client-secret-state");
    let seen = seen.lock().unwrap();
    assert!(
        seen.iter().all(|uri| !uri.contains("client-secret-state")),
        "{seen:?}"
    );
    // The handle went upstream instead: 22 base64url characters.
    let first = &seen[0];
    let handle = form_urlencoded::parse(first.split_once('?').unwrap().1.as_bytes())
        .find(|(k, _)| k == "state")
        .unwrap()
        .1;
    assert_eq!(handle.len(), 22);
}

#[tokio::test]
async fn exact_state_comes_back_and_none_when_none_was_sent() {
    let (app, _) = build(&layer());
    for state in [
        "simple",
        "with space & ampersand",
        "ünïcødé/?#=",
        "+%2B",
        "x".repeat(500).as_str(),
    ] {
        let pkce = Pkce::new();
        let params = browser_flow(
            &app,
            &authorize_query(CLIENT, REDIRECT, Some(state), Some(&pkce.challenge)),
        )
        .await;
        assert_eq!(params.get("state").map(String::as_str), Some(state));
    }
    let pkce = Pkce::new();
    let params = browser_flow(
        &app,
        &authorize_query(CLIENT, REDIRECT, None, Some(&pkce.challenge)),
    )
    .await;
    assert!(!params.contains_key("state"), "{params:?}");
    assert!(params.contains_key("code"));
    // And the code still redeems.
    let response = redeem(&app, &params["code"], Some(&pkce.verifier), CLIENT).await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn error_redirects_restore_state_and_release_the_flow() {
    let layer = layer();
    let (app, _) = build(&layer);
    let pkce = Pkce::new();
    let query = authorize_query(CLIENT, REDIRECT, Some("mine"), Some(&pkce.challenge))
        .replace("scope=openid", "scope=forbidden");
    let params = browser_flow(&app, &query).await;
    assert_eq!(params["error"], "access_denied");
    assert_eq!(params["state"], "mine");
    assert_eq!(
        layer
            .metrics()
            .snapshot()
            .iter()
            .find(|(_, r, _)| *r == "error_released")
            .map(|e| e.2),
        Some(1)
    );
}

#[tokio::test]
async fn hybrid_flows_carry_code_and_state_in_the_fragment() {
    let (app, _) = build(&layer());
    let pkce = Pkce::new();
    let query = authorize_query(CLIENT, REDIRECT, Some("frag"), Some(&pkce.challenge))
        .replace("response_type=code", "response_type=code+id_token");
    let params = browser_flow(&app, &query).await;
    assert!(
        params["_location"].contains("#code="),
        "{}",
        params["_location"]
    );
    assert_eq!(params["state"], "frag");
    assert_eq!(params["iss"], ISSUER, "iss passes untouched");
    let response = redeem(&app, &params["code"], Some(&pkce.verifier), CLIENT).await;
    assert_eq!(response.status(), StatusCode::OK);
    // An error in the fragment releases the flow and restores the state the same way.
    let query = authorize_query(CLIENT, REDIRECT, Some("frag err"), Some(&Pkce::new().challenge))
        .replace("response_type=code", "response_type=code+id_token")
        .replace("scope=openid", "scope=forbidden");
    let params = browser_flow(&app, &query).await;
    assert!(params["_location"].contains("#error=access_denied"), "{}", params["_location"]);
    assert_eq!(params["state"], "frag err");
    assert_eq!(params["iss"], ISSUER);
    // Without the verifier, the fragment-delivered code is refused like any other.
    let (code, _) = code_for(&app, CLIENT, REDIRECT).await;
    assert_refused(
        &redeem(&app, &code, None, CLIENT).await,
        Reason::VerifierRequired,
    );
}

fn input<'a>(inputs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    let mut found = inputs.iter().filter(|(n, _)| n == name);
    let value = found.next().map(|(_, v)| v.as_str());
    assert!(found.next().is_none(), "{name} twice");
    value
}

#[tokio::test]
async fn form_post_pages_bind_the_code_and_restore_the_state() {
    let (app, _) = build(&layer());
    let pkce = Pkce::new();
    let state = r#"a"b<c>&'d é/+"#;
    let query = format!(
        "{}&response_mode=form_post",
        authorize_query(CLIENT, REDIRECT, Some(state), Some(&pkce.challenge))
    );
    let page = form_post_flow(&app, &query).await;
    assert_eq!(page.headers()[header::CACHE_CONTROL], "no-store");
    let length: usize = page.headers()[header::CONTENT_LENGTH]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(length, page.body().len());
    let inputs = form_inputs(page.body());
    assert_eq!(input(&inputs, "state"), Some(state), "exactly the client's state");
    assert_eq!(input(&inputs, "iss"), Some(ISSUER), "iss untouched");
    let html = std::str::from_utf8(page.body()).unwrap();
    assert!(html.contains(&format!(r#"action="{REDIRECT}""#)), "{html}");
    assert!(html.contains("document.forms[0].submit()"));
    let code = input(&inputs, "code").unwrap().to_owned();
    assert_refused(
        &redeem(&app, &code, None, CLIENT).await,
        Reason::VerifierRequired,
    );
    assert_refused(
        &redeem(&app, &code, Some(&Pkce::new().verifier), CLIENT).await,
        Reason::VerifierMismatch,
    );
    assert_redeems(&app, &code, &pkce.verifier).await;
}

#[tokio::test]
async fn form_post_without_state_and_form_post_errors() {
    let (app, _) = build(&layer());
    // No state sent: none comes back.
    let pkce = Pkce::new();
    let query = format!(
        "{}&response_mode=form_post",
        authorize_query(CLIENT, REDIRECT, None, Some(&pkce.challenge))
    );
    let inputs = form_inputs(form_post_flow(&app, &query).await.body());
    assert_eq!(input(&inputs, "state"), None, "{inputs:?}");
    assert_eq!(input(&inputs, "iss"), Some(ISSUER));
    let code = input(&inputs, "code").unwrap().to_owned();
    assert_redeems(&app, &code, &pkce.verifier).await;
    // An error page restores the state the same way.
    let query = format!(
        "{}&response_mode=form_post",
        authorize_query(CLIENT, REDIRECT, Some("err-state"), Some(&pkce.challenge))
    )
    .replace("scope=openid", "scope=forbidden");
    let inputs = form_inputs(form_post_flow(&app, &query).await.body());
    assert_eq!(input(&inputs, "error"), Some("access_denied"));
    assert_eq!(input(&inputs, "state"), Some("err-state"));
}

#[tokio::test]
async fn html_pages_pass_untouched_while_a_form_post_flow_is_pending() {
    let (app, _) = build(&layer());
    let pkce = Pkce::new();
    let query = format!(
        "{}&response_mode=form_post",
        authorize_query(CLIENT, REDIRECT, Some("s"), Some(&pkce.challenge))
    );
    let first = app.send(get(&format!("/authorize?{query}"))).await;
    assert_eq!(first.status(), StatusCode::FOUND);
    // The sign-in page is HTML and is read, but not one of ours: byte for byte.
    let direct = Legacy::default().router();
    let login = location(&first);
    let through = app.send(get(&login)).await;
    let straight = direct.send(get(&login)).await;
    assert_eq!(through.status(), StatusCode::OK);
    assert_eq!(through.body(), straight.body());
    assert!(!through.headers().contains_key(header::CACHE_CONTROL));
}

#[tokio::test]
async fn non_oauth_traffic_passes_untouched() {
    let (app, _) = build(&layer());
    let response = app.send(get("/resource")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.body(), "protected resource");
    let response = app.send(form_post("/echo", "state=a&state=b&code=x")).await;
    assert_eq!(response.body(), "state=a&state=b&code=x");
    // Implicit and other response types are not inspected.
    let response = app
        .send(get(&format!(
            "/authorize?response_type=token&client_id={CLIENT}&state=s"
        )))
        .await;
    assert_eq!(response.status(), StatusCode::FOUND);
    assert!(
        location(&response).contains("state%3Ds"),
        "{}",
        location(&response)
    );
}

// ---------------------------------------------------------------------------------------------
// The token decision table

#[tokio::test]
async fn bound_code_with_matching_verifier_is_forwarded_once() {
    let (app, _) = build(&layer());
    let (code, pkce) = code_for(&app, CLIENT, REDIRECT).await;
    assert_redeems(&app, &code, &pkce.verifier).await;
    // Redeemed: refused on replay even though the legacy server would accept it again.
    assert_refused(
        &redeem(&app, &code, Some(&pkce.verifier), CLIENT).await,
        Reason::CodeReused,
    );
    assert_refused(&redeem(&app, &code, None, CLIENT).await, Reason::CodeReused);
}

#[tokio::test]
async fn bound_code_with_wrong_verifier_is_refused_and_keeps_its_binding() {
    let (app, _) = build(&layer());
    let (code, pkce) = code_for(&app, CLIENT, REDIRECT).await;
    let wrong = Pkce::new();
    assert_refused(
        &redeem(&app, &code, Some(&wrong.verifier), CLIENT).await,
        Reason::VerifierMismatch,
    );
    // A retry without a verifier is still refused: the binding was not deleted.
    assert_refused(
        &redeem(&app, &code, None, CLIENT).await,
        Reason::VerifierRequired,
    );
    assert_refused(
        &redeem(&app, &code, Some("short"), CLIENT).await,
        Reason::MalformedVerifier,
    );
    // The legitimate client still gets its token.
    assert_redeems(&app, &code, &pkce.verifier).await;
}

#[tokio::test]
async fn bound_code_without_verifier_is_refused() {
    let (app, legacy) = build(&layer());
    let (code, _) = code_for(&app, CLIENT, REDIRECT).await;
    assert_refused(
        &redeem(&app, &code, None, CLIENT).await,
        Reason::VerifierRequired,
    );
    assert!(
        legacy.token_bodies.lock().unwrap().is_empty(),
        "nothing reached the upstream"
    );
}

#[tokio::test]
async fn failed_attempts_burn_the_code() {
    let layer = layer().max_failed_attempts(3).unwrap();
    let (app, _) = build(&layer);
    let (code, pkce) = code_for(&app, CLIENT, REDIRECT).await;
    let wrong = Pkce::new();
    assert_refused(
        &redeem(&app, &code, Some(&wrong.verifier), CLIENT).await,
        Reason::VerifierMismatch,
    );
    assert_refused(
        &redeem(&app, &code, None, CLIENT).await,
        Reason::VerifierRequired,
    );
    // A wrong client counts too.
    assert_refused(
        &redeem(&app, &code, Some(&pkce.verifier), OTHER_CLIENT).await,
        Reason::WrongClient,
    );
    // Three refusals: burned, even for the right verifier.
    assert_refused(
        &redeem(&app, &code, Some(&pkce.verifier), CLIENT).await,
        Reason::CodeBurned,
    );
}

#[tokio::test]
async fn unbound_code_refuses_a_verifier_downgrade() {
    let (app, _) = build(&layer());
    // The exempt client authorizes without a challenge: its code is recorded as unbound.
    let params = browser_flow(
        &app,
        &authorize_query(CONFIDENTIAL, CONFIDENTIAL_REDIRECT, Some("s"), None),
    )
    .await;
    let code = params["code"].clone();
    let attacker = Pkce::new();
    let response = app
        .send(token_request(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("client_id", CONFIDENTIAL),
            ("client_secret", CONFIDENTIAL_SECRET),
            ("code_verifier", &attacker.verifier),
        ]))
        .await;
    assert_refused(&response, Reason::Downgrade);
    // Without a verifier the exempt client's code is forwarded, once.
    let fields = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("client_id", CONFIDENTIAL),
        ("client_secret", CONFIDENTIAL_SECRET),
    ];
    assert_eq!(
        app.send(token_request(&fields)).await.status(),
        StatusCode::OK
    );
    assert_refused(&app.send(token_request(&fields)).await, Reason::CodeReused);
}

#[tokio::test]
async fn unbound_codes_are_bound_to_their_client() {
    let (app, _) = build(&layer().exempt_client(OTHER_CLIENT));
    let params = browser_flow(
        &app,
        &authorize_query(CONFIDENTIAL, CONFIDENTIAL_REDIRECT, None, None),
    )
    .await;
    let response = app
        .send(token_request(&[
            ("grant_type", "authorization_code"),
            ("code", &params["code"]),
            ("client_id", OTHER_CLIENT),
        ]))
        .await;
    assert_refused(&response, Reason::WrongClient);
}

#[tokio::test]
async fn unknown_codes_fail_closed_except_for_exempt_clients_without_verifier() {
    let (app, legacy) = build(&layer());
    let pkce = Pkce::new();
    assert_refused(
        &redeem(&app, "never-issued", Some(&pkce.verifier), CLIENT).await,
        Reason::UnknownCode,
    );
    assert_refused(
        &redeem(&app, "never-issued", None, CLIENT).await,
        Reason::UnknownCode,
    );
    let exempt = |code: &str, verifier: Option<&str>| {
        let mut fields = vec![
            ("grant_type", "authorization_code".to_owned()),
            ("code", code.to_owned()),
            ("client_id", CONFIDENTIAL.to_owned()),
            ("client_secret", CONFIDENTIAL_SECRET.to_owned()),
        ];
        if let Some(v) = verifier {
            fields.push(("code_verifier", v.to_owned()));
        }
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        token_request(&fields)
    };
    assert_refused(
        &app.send(exempt("unseen", Some(&pkce.verifier))).await,
        Reason::UnknownCode,
    );
    // Forwarded: the legacy server answers (it does not know the code either).
    let response = app.send(exempt("unseen", None)).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(reason(&response).is_none(), "the upstream answered");
    assert_eq!(json_body(&response)["error"], "invalid_grant");
    assert_eq!(legacy.token_bodies.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_code_is_redeemable_only_by_its_client() {
    let (app, _) = build(&layer());
    let (code, pkce) = code_for(&app, CLIENT, REDIRECT).await;
    assert_refused(
        &redeem(&app, &code, Some(&pkce.verifier), OTHER_CLIENT).await,
        Reason::WrongClient,
    );
    // Through HTTP Basic as well.
    let basic = format!("Basic {}", STANDARD.encode(format!("{OTHER_CLIENT}:pw")));
    let mut req = token_request(&[
        ("grant_type", "authorization_code"),
        ("code", &code),
        ("code_verifier", &pkce.verifier),
    ]);
    req.headers_mut()
        .insert(header::AUTHORIZATION, basic.parse().unwrap());
    assert_refused(&app.send(req).await, Reason::WrongClient);
    // A body client_id contradicting Basic is refused outright.
    let basic = format!("Basic {}", STANDARD.encode(format!("{CLIENT}:pw")));
    let mut req = token_request(&[
        ("grant_type", "authorization_code"),
        ("code", &code),
        ("client_id", OTHER_CLIENT),
        ("code_verifier", &pkce.verifier),
    ]);
    req.headers_mut()
        .insert(header::AUTHORIZATION, basic.parse().unwrap());
    assert_refused(&app.send(req).await, Reason::ClientIdMismatch);
    // Its own client, identified by Basic only, succeeds.
    let mut req = token_request(&[
        ("grant_type", "authorization_code"),
        ("code", &code),
        ("code_verifier", &pkce.verifier),
        ("redirect_uri", REDIRECT),
    ]);
    req.headers_mut()
        .insert(header::AUTHORIZATION, basic.parse().unwrap());
    let response = app.send(req).await;
    assert_eq!(response.status(), StatusCode::OK, "{:?}", response.body());
}

#[tokio::test]
async fn exactly_one_of_concurrent_correct_redemptions_passes() {
    for _ in 0..20 {
        let (app, _) = build(&layer());
        let (code, pkce) = code_for(&app, CLIENT, REDIRECT).await;
        let attempts = (0..8).map(|_| {
            let app = app.clone();
            let code = code.clone();
            let verifier = pkce.verifier.clone();
            tokio::spawn(async move { redeem(&app, &code, Some(&verifier), CLIENT).await.status() })
        });
        let mut ok = 0;
        for attempt in attempts {
            if attempt.await.unwrap() == StatusCode::OK {
                ok += 1;
            }
        }
        assert_eq!(ok, 1);
    }
}

#[tokio::test]
async fn a_redemption_the_upstream_refuses_returns_the_code_to_bound() {
    let (app, _) = build(&layer());
    let (code, pkce) = code_for(&app, CLIENT, REDIRECT).await;
    // The legacy server refuses a redirect_uri that differs: no token, so the code goes back.
    let response = app
        .send(token_request(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("client_id", CLIENT),
            ("redirect_uri", "https://elsewhere.example/cb"),
            ("code_verifier", &pkce.verifier),
        ]))
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(
        reason(&response).is_none(),
        "the upstream refused, not the layer"
    );
    // Bound again: no verifier is still refused, the right request succeeds.
    assert_refused(
        &redeem(&app, &code, None, CLIENT).await,
        Reason::VerifierRequired,
    );
    assert_redeems(&app, &code, &pkce.verifier).await;
}

#[tokio::test]
async fn other_grants_are_forwarded_as_they_were_read() {
    let layer = layer();
    let (app, legacy) = build(&layer);
    let bodies = [
        (
            "grant_type=refresh_token&refresh_token=rt-1&client_id=app",
            "grant_type=refresh_token&refresh_token=rt-1&client_id=app",
        ),
        // Encoded afresh, the one way: an upstream reads what the layer read.
        (
            "grant_type=client_credentials&scope=a+b%20c&empty=",
            "grant_type=client_credentials&scope=a+b+c",
        ),
    ];
    for (body, forwarded) in bodies {
        let response = app.send(form_post("/token", body)).await;
        assert!(reason(&response).is_none());
        assert_eq!(
            legacy.token_bodies.lock().unwrap().last().unwrap(),
            forwarded
        );
    }
    // JSON for another grant is forwarded as the form it was read as.
    let json = r#"{"grant_type":"refresh_token","refresh_token":"rt"}"#;
    let req = Request::post("/token")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(json))
        .unwrap();
    let response = app.send(req).await;
    assert!(reason(&response).is_none());
    assert_eq!(
        legacy.token_bodies.lock().unwrap().last().unwrap(),
        "grant_type=refresh_token&refresh_token=rt"
    );
    // Every one of them decided and counted.
    let counted = layer
        .metrics()
        .snapshot()
        .into_iter()
        .find(|(_, reason, _)| *reason == "other_grant");
    assert_eq!(counted.map(|(_, _, n)| n), Some(3));
}

#[tokio::test]
async fn json_token_requests_are_checked_and_forwarded_as_forms() {
    let (app, legacy) = build(&layer());
    let (code, pkce) = code_for(&app, CLIENT, REDIRECT).await;
    let send = |verifier: &str| {
        let body = serde_json::json!({"grant_type":"authorization_code","code":code,"client_id":CLIENT,"code_verifier":verifier,"redirect_uri":REDIRECT});
        Request::post("/token")
            .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    assert_refused(
        &app.send(send(&Pkce::new().verifier)).await,
        Reason::VerifierMismatch,
    );
    let response = app.send(send(&pkce.verifier)).await;
    assert_eq!(response.status(), StatusCode::OK, "{:?}", response.body());
    let received = legacy.token_bodies.lock().unwrap().last().cloned().unwrap();
    let form: Vec<(String, String)> = form_urlencoded::parse(&received).into_owned().collect();
    assert!(form.contains(&("code".into(), code.clone())), "{form:?}");
}

#[tokio::test]
async fn token_request_shapes() {
    let (app, legacy) = build(&layer());
    let (code, pkce) = code_for(&app, CLIENT, REDIRECT).await;
    let body = format!(
        "grant_type=authorization_code&code={code}&client_id={CLIENT}&code_verifier={}",
        pkce.verifier
    );
    let with_ct = |ct: &str, body: &str| {
        Request::post("/token")
            .header(header::CONTENT_TYPE, ct)
            .body(Body::from(body.to_owned()))
            .unwrap()
    };
    let cases: Vec<(Request<Body>, Reason)> = vec![
        (
            form_post(&format!("/token?code={code}"), &body),
            Reason::ParametersInQuery,
        ),
        (
            form_post(
                "/token?grant_type=refresh_token",
                "grant_type=refresh_token&refresh_token=x",
            ),
            Reason::ParametersInQuery,
        ),
        (
            form_post("/token", &format!("{body}&code=other")),
            Reason::DuplicateParameter,
        ),
        (
            form_post("/token", &format!("{body}&code[]=other")),
            Reason::MalformedParameter,
        ),
        (
            form_post("/token", &format!("{body}&client[id=other")),
            Reason::MalformedParameter,
        ),
        (with_ct("text/plain", &body), Reason::UnsupportedContentType),
        (
            with_ct("application/x-www-form-urlencoded; charset=ibm037", &body),
            Reason::UnsupportedContentType,
        ),
        (
            with_ct("multipart/form-data; boundary=x", &body),
            Reason::UnsupportedContentType,
        ),
        (
            with_ct("application/json", "{not json"),
            Reason::UnreadableBody,
        ),
        (
            form_post("/token", "grant_type=authorization_code&client_id=app"),
            Reason::MissingCode,
        ),
        (
            form_post("/token", &"a".repeat(70_000)),
            Reason::BodyTooLarge,
        ),
        (
            form_post(
                "/token",
                &format!("{body}&client_secret=s&client_assertion=j"),
            ),
            Reason::MultipleClientAuth,
        ),
    ];
    for (req, expected) in cases {
        assert_refused(&app.send(req).await, expected);
    }
    let mut bad_basic = form_post("/token", &body);
    bad_basic
        .headers_mut()
        .insert(header::AUTHORIZATION, "Basic %%%".parse().unwrap());
    let response = app.send(bad_basic).await;
    assert_refused(&response, Reason::MalformedBasic);
    assert!(response.headers().contains_key(header::WWW_AUTHENTICATE));
    assert!(legacy.token_bodies.lock().unwrap().is_empty());
    // Content-type parameters are tolerated, and the code still redeems after all that.
    let response = app
        .send(with_ct(
            "application/x-www-form-urlencoded;charset=UTF-8",
            &body,
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK, "{:?}", response.body());
}

#[tokio::test]
async fn lenient_token_paths_are_still_the_token_endpoint() {
    let (app, _) = build(&layer().max_failed_attempts(100).unwrap());
    let (code, _) = code_for(&app, CLIENT, REDIRECT).await;
    for path in [
        "/Token",
        "/token/",
        "//token",
        "/%74oken",
        "/x/../token",
        "/token;jsessionid=1",
        "/TOKEN//",
    ] {
        let req = form_post(
            path,
            &format!("grant_type=authorization_code&code={code}&client_id={CLIENT}"),
        );
        let response = app.send(req).await;
        assert_eq!(reason(&response), Some(Reason::VerifierRequired), "{path}");
    }
}

// ---------------------------------------------------------------------------------------------
// The authorization endpoint

#[tokio::test]
async fn invalid_authorization_requests_never_reach_the_server() {
    let (app, _) = build(&layer());
    let c = Pkce::new().challenge;
    let base = format!(
        "response_type=code&client_id={CLIENT}&redirect_uri={}",
        urlencode(REDIRECT)
    );
    let cases: Vec<(String, Reason)> = vec![
        (base.clone(), Reason::ChallengeRequired),
        (
            format!("{base}&code_challenge={c}"),
            Reason::UnsupportedMethod,
        ),
        (
            format!("{base}&code_challenge={c}&code_challenge_method=plain"),
            Reason::UnsupportedMethod,
        ),
        (
            format!("{base}&code_challenge={c}&code_challenge_method=s256"),
            Reason::UnsupportedMethod,
        ),
        (
            format!("{base}&code_challenge_method=S256"),
            Reason::MethodWithoutChallenge,
        ),
        (
            format!("{base}&code_challenge=tooshort&code_challenge_method=S256"),
            Reason::MalformedChallenge,
        ),
        (
            format!("{base}&code_challenge={c}&code_challenge_method=S256&state=a&state=b"),
            Reason::DuplicateParameter,
        ),
        (
            format!("{base}&code_challenge={c}&code_challenge_method=S256&client_id[]=x"),
            Reason::DuplicateParameter,
        ),
        (
            format!("response_type=code&code_challenge={c}&code_challenge_method=S256"),
            Reason::MissingClientId,
        ),
        (
            format!("{base}&code_challenge={c}&code_challenge_method=S256&request_uri=urn:x"),
            Reason::RequestObject,
        ),
        (
            format!("{base}&code_challenge=&code_challenge_method="),
            Reason::ChallengeRequired,
        ),
    ];
    for (query, expected) in cases {
        let response = app.send(get(&format!("/authorize?{query}"))).await;
        assert_refused(&response, expected);
    }
}

/// Pushes an authorization request (RFC 9126) through `app`.
async fn push(app: &Router, fields: &[(&str, &str)]) -> axum::http::Response<axum::body::Bytes> {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish();
    app.send(form_post("/par", &body)).await
}

fn pushed_fields<'a>(challenge: &'a str, state: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("response_type", "code"),
        ("client_id", CLIENT),
        ("redirect_uri", REDIRECT),
        ("scope", "openid"),
        ("state", state),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
    ]
}

#[tokio::test]
async fn pushed_authorization_requests_complete_and_hold_their_challenge() {
    let (app, legacy) = build(&layer().par_path("/par").unwrap());
    let pkce = Pkce::new();
    let pushed = push(&app, &pushed_fields(&pkce.challenge, "par state")).await;
    assert_eq!(pushed.status(), StatusCode::CREATED, "{:?}", pushed.body());
    let request_uri = json_body(&pushed)["request_uri"]
        .as_str()
        .unwrap()
        .to_owned();
    // The upstream got a handle in place of the client's state.
    let upstream_state = legacy.pushed.lock().unwrap()[&request_uri]["state"].clone();
    assert_ne!(upstream_state, "par state");
    assert_eq!(upstream_state.len(), 22);

    let by_reference = format!("client_id={CLIENT}&request_uri={}", urlencode(&request_uri));
    let params = browser_flow(&app, &by_reference).await;
    assert_eq!(params["state"], "par state", "the client's own state");
    assert_eq!(params["iss"], ISSUER);
    let code = params["code"].clone();
    assert_refused(
        &redeem(&app, &code, None, CLIENT).await,
        Reason::VerifierRequired,
    );
    assert_refused(
        &redeem(&app, &code, Some(&Pkce::new().verifier), CLIENT).await,
        Reason::VerifierMismatch,
    );
    assert_redeems(&app, &code, &pkce.verifier).await;
}

#[tokio::test]
async fn pushed_requests_are_checked_and_cannot_be_overridden() {
    let (app, legacy) = build(&layer().par_path("/par").unwrap());
    // No challenge, a plain one, a JAR request, a request_uri inside: refused in JSON, and
    // never pushed upstream.
    let pkce = Pkce::new();
    let mut no_challenge = pushed_fields(&pkce.challenge, "s");
    no_challenge.retain(|(k, _)| !k.starts_with("code_challenge"));
    let mut plain = pushed_fields(&pkce.challenge, "s");
    plain.retain(|(k, _)| *k != "code_challenge_method");
    let mut jar = pushed_fields(&pkce.challenge, "s");
    jar.push(("request", "eyJhbGciOiJub25lIn0.e30."));
    let mut nested = pushed_fields(&pkce.challenge, "s");
    nested.push(("request_uri", "urn:x"));
    // A request object alone: its response_type is inside, where the layer cannot read it.
    let jar_only = vec![("client_id", CLIENT), ("request", "eyJhbGciOiJub25lIn0.e30.")];
    for (fields, expected) in [
        (jar_only, Reason::RequestObject),
        (no_challenge, Reason::ChallengeRequired),
        (plain, Reason::UnsupportedMethod),
        (jar, Reason::RequestObject),
        (nested, Reason::RequestObject),
    ] {
        let response = push(&app, &fields).await;
        assert_refused(&response, expected);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/json"
        );
    }
    // Pushed bodies are read completely, as token requests are: a name in another spelling
    // (qs's `[state]`, PHP's `client.id`, another case) or a GET is refused.
    for (body, expected) in [
        ("[state]=x", Reason::MalformedParameter),
        ("client.id=x", Reason::MalformedParameter),
        ("Scope=x", Reason::DuplicateParameter),
    ] {
        let fields = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pushed_fields(&pkce.challenge, "s"))
            .finish();
        let response = app.send(form_post("/par", &format!("{fields}&{body}"))).await;
        assert_refused(&response, expected);
    }
    assert_refused(&app.send(get("/par")).await, Reason::PostOnly);
    assert!(legacy.pushed.lock().unwrap().is_empty());

    let pushed = push(&app, &pushed_fields(&pkce.challenge, "s")).await;
    let request_uri = json_body(&pushed)["request_uri"]
        .as_str()
        .unwrap()
        .to_owned();
    let uri = urlencode(&request_uri);
    let other = Pkce::new().challenge;
    for (query, expected) in [
        // Another client using the pushed request.
        (
            format!("client_id={OTHER_CLIENT}&request_uri={uri}"),
            Reason::PushedRequestMismatch,
        ),
        // A challenge in the query that is not the pushed one.
        (
            format!("client_id={CLIENT}&request_uri={uri}&code_challenge={other}&code_challenge_method=S256"),
            Reason::PushedRequestMismatch,
        ),
        // A request_uri nobody pushed through the layer.
        (
            format!("client_id={CLIENT}&request_uri=urn%3Aietf%3Aparams%3Aoauth%3Arequest_uri%3Anope"),
            Reason::UnknownRequestUri,
        ),
        // A signed request object beside it.
        (
            format!("client_id={CLIENT}&request_uri={uri}&request=eyJhbGciOiJub25lIn0.e30."),
            Reason::RequestObject,
        ),
    ] {
        let response = app.send(get(&format!("/authorize?{query}"))).await;
        assert_refused(&response, expected);
    }
    // The same challenge repeated in the query is no conflict.
    let same = format!(
        "client_id={CLIENT}&request_uri={uri}&code_challenge={}&code_challenge_method=S256",
        pkce.challenge
    );
    let response = app.send(get(&format!("/authorize?{same}"))).await;
    assert_eq!(response.status(), StatusCode::FOUND, "{:?}", response.body());
    assert!(reason(&response).is_none());

    // Without a PAR endpoint configured, request_uri is refused outright.
    let (plain_app, _) = build(&layer());
    let response = plain_app
        .send(get(&format!("/authorize?client_id={CLIENT}&request_uri={uri}")))
        .await;
    assert_refused(&response, Reason::RequestObject);
}

#[tokio::test]
async fn pushed_requests_keep_to_their_own_flow() {
    let store_layer = layer().par_path("/par").unwrap();
    let (app, _) = build(&store_layer);
    let pkce = Pkce::new();
    // A live handle pushed as a client's state is not a re-entry: refused.
    let query = authorize_query(CLIENT, REDIRECT, Some("s"), Some(&pkce.challenge));
    let first = app.send(get(&format!("/authorize?{query}"))).await;
    let next = query_of(&location(&first)).remove("next").unwrap();
    let handle = query_of(&next).remove("state").unwrap();
    assert_refused(
        &push(&app, &pushed_fields(&pkce.challenge, &handle)).await,
        Reason::HandleMismatch,
    );
    // Parameters in the query string of a pushed request are refused.
    let response = app
        .send(form_post(
            "/par?state=x",
            &form_urlencoded::Serializer::new(String::new())
                .extend_pairs(pushed_fields(&pkce.challenge, "s"))
                .finish(),
        ))
        .await;
    assert_refused(&response, Reason::ParametersInQuery);
    // Once the pushed flow delivered its code, its request_uri is spent.
    let pushed = push(&app, &pushed_fields(&pkce.challenge, "s")).await;
    let uri = urlencode(json_body(&pushed)["request_uri"].as_str().unwrap());
    let by_reference = format!("client_id={CLIENT}&request_uri={uri}");
    let params = browser_flow(&app, &by_reference).await;
    assert!(params.contains_key("code"));
    let again = app.send(get(&format!("/authorize?{by_reference}"))).await;
    assert_refused(&again, Reason::UnknownRequestUri);
}

#[tokio::test]
async fn a_pushed_form_post_flow_is_read_by_another_replica() {
    // Two layers (two replicas) on one store: the push goes to one, the browser to the other.
    let shared_store = layer().par_path("/par").unwrap();
    let a = shared_store.clone().exempt_client("unrelated");
    let (app_a, legacy) = build(&a);
    let b = shared_store.exempt_client("also-unrelated");
    let app_b = legacy.router().layer(b);
    let pkce = Pkce::new();
    let mut fields = pushed_fields(&pkce.challenge, "fp state");
    fields.push(("response_mode", "form_post"));
    let pushed = push(&app_a, &fields).await;
    assert_eq!(pushed.status(), StatusCode::CREATED);
    let uri = urlencode(json_body(&pushed)["request_uri"].as_str().unwrap());
    let page = form_post_flow(&app_b, &format!("client_id={CLIENT}&request_uri={uri}")).await;
    let inputs = form_inputs(page.body());
    assert_eq!(input(&inputs, "state"), Some("fp state"));
    let code = input(&inputs, "code").unwrap().to_owned();
    assert_refused(
        &redeem(&app_a, &code, None, CLIENT).await,
        Reason::VerifierRequired,
    );
    assert_redeems(&app_a, &code, &pkce.verifier).await;
}

#[tokio::test]
async fn a_form_post_page_to_another_uri_does_not_capture_the_flow() {
    let (app, _) = build(&layer());
    let pkce = Pkce::new();
    let query = format!(
        "{}&response_mode=form_post",
        authorize_query(CLIENT, REDIRECT, Some("mine"), Some(&pkce.challenge))
    );
    let first = app.send(get(&format!("/authorize?{query}"))).await;
    let next = query_of(&location(&first)).remove("next").unwrap();
    let handle = query_of(&next).remove("state").unwrap();
    // A page posting the live handle and a code of someone's choosing elsewhere: untouched.
    let echo = format!(
        "/echo-form?action={}&state={handle}&code=chosen-code",
        urlencode("https://evil.example/collect")
    );
    let page = app.send(get(&echo)).await;
    assert_eq!(input(&form_inputs(page.body()), "state"), Some(handle.as_str()));
    assert_eq!(page.headers()[header::CACHE_CONTROL], "no-cache", "as the upstream sent it");
    assert_refused(
        &redeem(&app, "chosen-code", Some(&pkce.verifier), CLIENT).await,
        Reason::UnknownCode,
    );
    // The real flow still completes.
    let back = sign_in(&app, &next).await;
    let page = reenter(&app, &back).await;
    let inputs = form_inputs(page.body());
    assert_eq!(input(&inputs, "state"), Some("mine"));
    assert_redeems(&app, input(&inputs, "code").unwrap(), &pkce.verifier).await;
}

#[tokio::test]
async fn discovery_for_endpoints_the_layer_does_not_guard_is_left_alone() {
    let (app, _) = build(&layer());
    let response = app.send(get("/t2/.well-known/openid-configuration")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let doc = json_body(&response);
    assert!(doc.get("code_challenge_methods_supported").is_none(), "{doc}");
    assert_eq!(doc["issuer"], "https://as.example/t2");
}

#[tokio::test]
async fn authorize_by_post_and_in_both_places() {
    let (app, _) = build(&layer());
    let pkce = Pkce::new();
    let query = authorize_query(CLIENT, REDIRECT, Some("posted"), Some(&pkce.challenge));
    let response = app.send(form_post("/authorize", &query)).await;
    // The legacy server only routes GET: but the layer inspected and rewrote the body first.
    assert!(reason(&response).is_none());
    // Identical copies in the query and the body are one parameter (Django OAuth Toolkit's
    // consent form); copies that differ are refused.
    let response = app
        .send(form_post(&format!("/authorize?client_id={CLIENT}"), &query))
        .await;
    assert!(reason(&response).is_none(), "{:?}", response.body());
    let response = app
        .send(form_post("/authorize?client_id=another", &query))
        .await;
    assert_refused(&response, Reason::ParameterInQueryAndBody);
    let response = app
        .send(form_post(
            "/authorize",
            &format!("response_type=code&client_id={CLIENT}"),
        ))
        .await;
    assert_refused(&response, Reason::ChallengeRequired);
}

#[tokio::test]
async fn authorize_errors_are_html_for_browsers_and_redirected_only_to_configured_uris() {
    let layer = layer().client_redirect_uris(CLIENT, [REDIRECT]);
    let (app, _) = build(&layer);
    let query = authorize_query(CLIENT, REDIRECT, Some("my state"), None);
    let mut req = get(&format!("/authorize?{query}"));
    req.headers_mut()
        .insert(header::ACCEPT, "text/html,*/*;q=0.8".parse().unwrap());
    let response = app.send(req).await;
    assert_eq!(response.status(), StatusCode::FOUND);
    let params = query_of(&location(&response));
    assert!(location(&response).starts_with(REDIRECT));
    assert_eq!(params["error"], "invalid_request");
    assert_eq!(params["state"], "my state");

    // A redirect_uri that is not configured: no redirect, an HTML page for the browser.
    let query = authorize_query(CLIENT, "https://evil.example/cb", Some("s"), None);
    let mut req = get(&format!("/authorize?{query}"));
    req.headers_mut()
        .insert(header::ACCEPT, "text/html".parse().unwrap());
    let response = app.send(req).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(response.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(!response.headers().contains_key(header::LOCATION));

    // A client without configured URIs: JSON for a non-browser, never a redirect.
    let query = authorize_query(OTHER_CLIENT, OTHER_REDIRECT, Some("s"), None);
    let response = app.send(get(&format!("/authorize?{query}"))).await;
    assert_refused(&response, Reason::ChallengeRequired);
    assert!(!response.headers().contains_key(header::LOCATION));

    // Error redirects without state carry none.
    let query = authorize_query(CLIENT, REDIRECT, None, None);
    let response = app.send(get(&format!("/authorize?{query}"))).await;
    assert!(!query_of(&location(&response)).contains_key("state"));
}

#[tokio::test]
async fn a_live_handle_reused_with_other_parameters_is_refused() {
    let (app, _) = build(&layer());
    let pkce = Pkce::new();
    let first = app
        .send(get(&format!(
            "/authorize?{}",
            authorize_query(CLIENT, REDIRECT, Some("s"), Some(&pkce.challenge))
        )))
        .await;
    let next = query_of(&location(&first)).remove("next").unwrap();
    let handle = form_urlencoded::parse(next.split_once('?').unwrap().1.as_bytes())
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    let attacker = Pkce::new();
    let cases = [
        (
            authorize_query(CLIENT, REDIRECT, Some(&handle), Some(&attacker.challenge)),
            Reason::HandleMismatch,
        ),
        (
            authorize_query(
                OTHER_CLIENT,
                OTHER_REDIRECT,
                Some(&handle),
                Some(&pkce.challenge),
            ),
            Reason::HandleMismatch,
        ),
        (
            authorize_query(
                CLIENT,
                "https://evil.example/cb",
                Some(&handle),
                Some(&pkce.challenge),
            ),
            Reason::HandleMismatch,
        ),
    ];
    for (query, expected) in cases {
        assert_refused(
            &app.send(get(&format!("/authorize?{query}"))).await,
            expected,
        );
    }
    // Requests the layer does not read as code flows may not use the handle either: the
    // upstream's answer would end the victim's flow and carry the victim's state (found in
    // review), or, from an upstream that defaults `response_type`, a code of the attacker's.
    let same = authorize_query(CLIENT, REDIRECT, Some(&handle), Some(&pkce.challenge));
    for query in [
        same.replace("response_type=code", "response_type=token"),
        same.replace("response_type=code&", ""),
        same.replace("response_type=code", "response_type=code%09"),
    ] {
        assert_ne!(query, same);
        assert_refused(
            &app.send(get(&format!("/authorize?{query}"))).await,
            Reason::HandleMismatch,
        );
    }
    // A re-entry without the challenge fields, or with them empty (a consent form written
    // before PKCE, as Doorkeeper's was) re-enters too: the code stays bound to the recorded
    // challenge (DESIGN.md, re-entry).
    let without = authorize_query(CLIENT, REDIRECT, Some(&handle), None);
    for query in [
        without.clone(),
        format!("{without}&code_challenge=&code_challenge_method="),
        format!("{without}&code_challenge_method=S256"),
    ] {
        let response = app.send(get(&format!("/authorize?{query}"))).await;
        assert!(reason(&response).is_none(), "{query}: {:?}", response.body());
        let next = query_of(&location(&response)).remove("next").unwrap();
        assert!(next.contains(&format!("state={handle}")), "{next}");
    }
    // The same parameters re-enter, unwrapped.
    let again = app
        .send(get(&format!(
            "/authorize?{}",
            authorize_query(CLIENT, REDIRECT, Some(&handle), Some(&pkce.challenge))
        )))
        .await;
    let next_again = query_of(&location(&again)).remove("next").unwrap();
    assert!(
        next_again.contains(&format!("state={handle}")),
        "{next_again}"
    );
}

#[tokio::test]
async fn plain_when_allowed() {
    let (app, _) = build(&layer().allow_plain(true));
    let verifier = "p".repeat(50);
    let query = format!(
        "response_type=code&client_id={CLIENT}&redirect_uri={}&code_challenge={verifier}",
        urlencode(REDIRECT)
    );
    let params = browser_flow(&app, &query).await;
    assert_refused(
        &redeem(&app, &params["code"], Some(&"q".repeat(50)), CLIENT).await,
        Reason::VerifierMismatch,
    );
    assert_redeems(&app, &params["code"], &verifier).await;
}

// ---------------------------------------------------------------------------------------------
// Around the flow

#[tokio::test]
async fn discovery_advertises_exactly_the_allowed_methods() {
    for (layer, methods) in [
        (layer(), vec!["S256"]),
        (layer().allow_plain(true), vec!["S256", "plain"]),
    ] {
        let (app, _) = build(&layer);
        for path in [
            "/.well-known/openid-configuration",
            "/.well-known/oauth-authorization-server/tenant1",
            "/tenant1/.well-known/openid-configuration",
        ] {
            let response = app.send(get(path)).await;
            assert_discovery(&response, &methods);
        }
    }
}

fn assert_discovery(response: &axum::http::Response<axum::body::Bytes>, methods: &[&str]) {
        assert_eq!(response.status(), StatusCode::OK);
        let length: usize = response.headers()[header::CONTENT_LENGTH]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(length, response.body().len());
        let doc = json_body(response);
        assert_eq!(
            doc["code_challenge_methods_supported"],
            serde_json::json!(methods)
        );
        assert_eq!(doc["issuer"], "https://as.example");
        // Every other byte is the legacy document's.
        let body = std::str::from_utf8(response.body()).unwrap();
        assert!(body.ends_with(&DISCOVERY[1..]), "{body}");
        assert!(!response.headers().contains_key(header::ETAG));
}

#[tokio::test]
async fn report_mode_forwards_what_enforce_refuses_and_counts_it() {
    let layer = layer().mode(Mode::Report);
    let (app, _) = build(&layer);
    let query = authorize_query(CLIENT, REDIRECT, Some("s"), None);
    let response = app.send(get(&format!("/authorize?{query}"))).await;
    assert!(reason(&response).is_none());
    assert_eq!(
        response.status(),
        StatusCode::FOUND,
        "forwarded to the sign-in page"
    );
    assert_eq!(layer.metrics().reported(Reason::ChallengeRequired), 1);
    assert_eq!(layer.metrics().refused(Reason::ChallengeRequired), 0);
    // A full flow without PKCE works, and its unknown code is reported, not refused.
    let params = browser_flow(&app, &query).await;
    let response = redeem(&app, &params["code"], None, CLIENT).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(layer.metrics().reported(Reason::UnknownCode), 1);
    // Correct PKCE flows still work and are verified.
    let (code, pkce) = code_for(&app, CLIENT, REDIRECT).await;
    assert_redeems(&app, &code, &pkce.verifier).await;
}

#[tokio::test]
async fn a_full_store_answers_503_and_keeps_live_flows() {
    let layer = layer().with_store(MemoryStore::with_capacity(2));
    let (app, _) = build(&layer);
    let first = Pkce::new();
    let first_query = authorize_query(CLIENT, REDIRECT, Some("one"), Some(&first.challenge));
    let response = app.send(get(&format!("/authorize?{first_query}"))).await;
    let next = query_of(&location(&response)).remove("next").unwrap();
    // Fill the store.
    let second = Pkce::new();
    app.send(get(&format!(
        "/authorize?{}",
        authorize_query(CLIENT, REDIRECT, None, Some(&second.challenge))
    )))
    .await;
    let third = Pkce::new();
    let response = app
        .send(get(&format!(
            "/authorize?{}",
            authorize_query(CLIENT, REDIRECT, None, Some(&third.challenge))
        )))
        .await;
    assert_refused(&response, Reason::StoreFull);
    assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    // The first flow still completes.
    let back = sign_in(&app, &next).await;
    let done = reenter(&app, &back).await;
    let params = query_of(&location(&done));
    assert_eq!(params["state"], "one");
    assert_redeems(&app, &params["code"], &first.verifier).await;
}

#[tokio::test]
async fn pending_flows_and_codes_expire() {
    let layer = layer()
        .pending_ttl(Duration::from_millis(50))
        .unwrap()
        .code_ttl(Duration::from_millis(300))
        .unwrap();
    let (app, _) = build(&layer);
    // A pending flow that outlives its TTL is gone: its handle no longer names a live flow,
    // so a request reusing it with another challenge is a new flow, not a hijack attempt.
    let pkce = Pkce::new();
    let first = app
        .send(get(&format!(
            "/authorize?{}",
            authorize_query(CLIENT, REDIRECT, Some("s"), Some(&pkce.challenge))
        )))
        .await;
    let next = query_of(&location(&first)).remove("next").unwrap();
    let handle = form_urlencoded::parse(next.split_once('?').unwrap().1.as_bytes())
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    let other = Pkce::new();
    let reuse = format!(
        "/authorize?{}",
        authorize_query(CLIENT, REDIRECT, Some(&handle), Some(&other.challenge))
    );
    assert_refused(&app.send(get(&reuse)).await, Reason::HandleMismatch);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let response = app.send(get(&reuse)).await;
    assert!(reason(&response).is_none(), "{:?}", response.body());

    // A bound code that outlives its TTL is unknown too.
    let layer = layer.pending_ttl(Duration::from_secs(60)).unwrap();
    let (app, _) = build(&layer);
    let (code, pkce) = code_for(&app, CLIENT, REDIRECT).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_refused(
        &redeem(&app, &code, Some(&pkce.verifier), CLIENT).await,
        Reason::UnknownCode,
    );
}

#[tokio::test]
async fn every_route_shares_one_store() {
    // axum applies the layer to each route separately; authorize and token must still meet.
    let layer = layer();
    let (app, _) = build(&layer);
    let (code, pkce) = code_for(&app, CLIENT, REDIRECT).await;
    let response = redeem(&app, &code, Some(&pkce.verifier), CLIENT).await;
    assert_eq!(response.status(), StatusCode::OK);
    // And a second router built from a clone of the layer sees the same codes.
    let (app2, _) = build(&layer);
    let (code, pkce) = code_for(&app, CLIENT, REDIRECT).await;
    assert_refused(
        &redeem(&app2, &code, None, CLIENT).await,
        Reason::VerifierRequired,
    );
    let _ = pkce;
}

#[tokio::test]
async fn a_handle_echoed_by_another_redirect_does_not_capture_the_flow() {
    let (app, _) = build(&layer());
    let pkce = Pkce::new();
    let query = authorize_query(CLIENT, REDIRECT, Some("victim"), Some(&pkce.challenge));
    let first = app.send(get(&format!("/authorize?{query}"))).await;
    let next = query_of(&location(&first)).remove("next").unwrap();
    let handle = form_urlencoded::parse(next.split_once('?').unwrap().1.as_bytes())
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    // Someone who learned the handle bounces it, with a code of their choosing, off an open
    // redirector of the legacy app.
    let target = format!("https://evil.example/cb?code=attacker-code&state={handle}");
    let bounced = app
        .send(get(&format!("/go?to={}", urlencode(&target))))
        .await;
    assert_eq!(location(&bounced), target, "passed unchanged");
    assert_refused(
        &redeem(&app, "attacker-code", Some(&pkce.verifier), CLIENT).await,
        Reason::UnknownCode,
    );
    // The victim's flow is intact and completes.
    let back = sign_in(&app, &next).await;
    let params = query_of(&location(&reenter(&app, &back).await));
    assert_eq!(params["state"], "victim");
    assert_redeems(&app, &params["code"], &pkce.verifier).await;
}

#[tokio::test]
async fn token_bodies_a_lenient_upstream_reads_differently_are_refused() {
    let (app, legacy) = build(&layer());
    let (victim, _) = code_for(&app, CLIENT, REDIRECT).await;
    let (decoy, decoy_pkce) = code_for(&app, CLIENT, REDIRECT).await;
    let with_ct = |path: &str, ct: &str, extra: Option<(&str, &str)>, body: Vec<u8>| {
        let mut req = Request::post(path).header(header::CONTENT_TYPE, ct);
        if let Some((k, v)) = extra {
            req = req.header(k, v);
        }
        req.body(Body::from(body)).unwrap()
    };
    let form = "application/x-www-form-urlencoded";
    let cases: Vec<(Request<Body>, Reason)> = vec![
        // No grant_type (some servers default it), and an empty body: not read completely.
        (form_post("/token", &format!("code={victim}&client_id={CLIENT}")), Reason::MissingGrantType),
        (form_post("/token", ""), Reason::MissingGrantType),
        // Another grant carrying a code.
        (form_post("/token", &format!("grant_type=refresh_token&code={victim}&client_id={CLIENT}")), Reason::GrantMismatch),
        // Other spellings of a name the layer reads.
        (form_post("/token", &format!("grant_type=authorization_code&Code={victim}&client_id={CLIENT}")), Reason::MalformedParameter),
        (form_post("/token", &format!("grant_type=authorization_code&code%00={victim}&client_id={CLIENT}")), Reason::MalformedParameter),
        (form_post("/token", &format!("grant_type=authorization_code&%u0063ode={victim}&client_id={CLIENT}")), Reason::MalformedParameter),
        // Query parameters in qs's and PHP's spellings, with an empty body.
        (form_post(&format!("/token?[grant_type]=authorization_code&[code]={victim}&[client_id]={CLIENT}"), ""), Reason::ParametersInQuery),
        (form_post(&format!("/token?grant_type%00=authorization_code&code%00={victim}"), ""), Reason::ParametersInQuery),
        // Read by a server that decodes the whole body before splitting it.
        (form_post("/token", &format!("grant_type=refresh_token&refresh_token=x%26grant_type%3Dauthorization_code%26code%3D{victim}")), Reason::MalformedParameter),
        // Not POST.
        (get(&format!("/token?grant_type=authorization_code&code={victim}")), Reason::PostOnly),
        // Names PHP reads as grant_type / code.
        (form_post("/token", &format!("grant.type=authorization_code&code={victim}&client_id={CLIENT}")), Reason::MalformedParameter),
        (form_post("/token", &format!("+grant_type=authorization_code&code={victim}&client_id={CLIENT}")), Reason::MalformedParameter),
        (
            form_post("/token", &format!("grant_type=authorization_code&code={decoy}&code_verifier={}&client_id={CLIENT}&+code={victim}", decoy_pkce.verifier)),
            Reason::MalformedParameter,
        ),
        // `;` as a separator, in the body or the query.
        (form_post("/token", &format!("grant_type=authorization_code;code={victim};client_id={CLIENT}")), Reason::MalformedParameter),
        (form_post(&format!("/token?x=1;grant_type=authorization_code;code={victim}"), ""), Reason::ParametersInQuery),
        // A compressed body the layer cannot read, and two content types.
        (with_ct("/token", form, Some(("content-encoding", "gzip")), vec![0x1f, 0x8b, 0, 1, 2]), Reason::UnsupportedContentType),
        (with_ct("/token", form, Some(("content-type", "application/json")), format!("code={victim}").into_bytes()), Reason::UnsupportedContentType),
        // A format suffix or a trailing dot on the path.
        (form_post("/token.json", &format!("grant_type=authorization_code&code={victim}&client_id={CLIENT}")), Reason::VerifierRequired),
        (form_post("/token.", &format!("grant_type=authorization_code&code={victim}&client_id={CLIENT}")), Reason::VerifierRequired),
    ];
    for (i, (req, expected)) in cases.into_iter().enumerate() {
        let response = app.send(req).await;
        assert_eq!(
            reason(&response),
            Some(expected),
            "case {i}: {:?}",
            response.body()
        );
    }
    assert!(
        legacy.token_bodies.lock().unwrap().is_empty(),
        "nothing reached the upstream"
    );
}

#[tokio::test]
async fn authorize_bodies_that_are_not_forms_and_oversized_values_are_refused() {
    let (app, _) = build(&layer());
    let c = Pkce::new().challenge;
    let query = authorize_query(CLIENT, REDIRECT, Some("s"), Some(&c));
    let json = Request::post("/authorize")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(r#"{"response_type":"code","client_id":"app"}"#))
        .unwrap();
    assert_refused(&app.send(json).await, Reason::UnsupportedContentType);
    let gzip = Request::post("/authorize")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::CONTENT_ENCODING, "gzip")
        .body(Body::from(vec![0x1f, 0x8b, 0]))
        .unwrap();
    assert_refused(&app.send(gzip).await, Reason::UnsupportedContentType);
    let long_state = authorize_query(CLIENT, REDIRECT, Some(&"s".repeat(2000)), Some(&c));
    assert_refused(
        &app.send(get(&format!("/authorize?{long_state}"))).await,
        Reason::ParameterTooLong,
    );
    // An empty state pair is replaced, not duplicated, and the client gets its empty state
    // back (RFC 6749 §4.1.2: present in the request, present in the response).
    let pkce = Pkce::new();
    let query_empty = format!(
        "state=&{}",
        authorize_query(CLIENT, REDIRECT, None, Some(&pkce.challenge))
    );
    let first = app.send(get(&format!("/authorize?{query_empty}"))).await;
    let next = query_of(&location(&first)).remove("next").unwrap();
    assert_eq!(next.matches("state=").count(), 1, "{next}");
    let params = browser_flow(&app, &query_empty).await;
    assert_eq!(params.get("state").map(String::as_str), Some(""));
    assert!(params["_location"].contains("state=&") || params["_location"].ends_with("state="));
    let _ = query;
}

#[tokio::test]
async fn an_exempt_clients_unknown_code_is_single_use_once_forwarded() {
    // A code the layer never saw (issued by the legacy server directly, as before the layer
    // was deployed), redeemed by an exempt client: forwarded once, then refused, although the
    // legacy server would accept it again.
    let legacy = Legacy::default();
    let bare = legacy.router();
    let app = legacy.router().layer(layer());
    let params = browser_flow(
        &bare,
        &authorize_query(CONFIDENTIAL, CONFIDENTIAL_REDIRECT, None, None),
    )
    .await;
    let fields = [
        ("grant_type", "authorization_code"),
        ("code", params["code"].as_str()),
        ("client_id", CONFIDENTIAL),
        ("client_secret", CONFIDENTIAL_SECRET),
    ];
    assert_eq!(
        app.send(token_request(&fields)).await.status(),
        StatusCode::OK
    );
    assert_refused(&app.send(token_request(&fields)).await, Reason::CodeReused);
    assert_eq!(
        bare.send(token_request(&fields)).await.status(),
        StatusCode::OK,
        "the legacy server alone would accept it again"
    );
}

#[tokio::test]
async fn a_basic_user_is_read_raw_or_form_decoded() {
    // Many clients put a client id such as `svc+prod` into Basic unencoded; RFC 6749 §2.3.1
    // would read it as `svc prod`. The layer accepts either reading as the code's owner, and
    // nothing else.
    let (app, legacy) = build(&layer());
    let pkce = Pkce::new();
    let params = browser_flow(
        &app,
        &authorize_query(PLUS_CLIENT, PLUS_REDIRECT, Some("s"), Some(&pkce.challenge)),
    )
    .await;
    let code = params["code"].clone();
    let basic = |user: &str| format!("Basic {}", STANDARD.encode(format!("{user}:secret")));
    let send = |user: &str, body: String| {
        let mut req = form_post("/token", &body);
        req.headers_mut()
            .insert(header::AUTHORIZATION, basic(user).parse().unwrap());
        app.send(req)
    };
    let grant = |extra: &str| {
        format!(
            "grant_type=authorization_code&code={code}&redirect_uri={}&code_verifier={}{extra}",
            urlencode(PLUS_REDIRECT),
            pkce.verifier
        )
    };
    // Another client, or a body client_id contradicting both readings: refused.
    assert_refused(&send("svc", grant("")).await, Reason::WrongClient);
    assert_refused(
        &send(PLUS_CLIENT, grant("&client_id=svc")).await,
        Reason::ClientIdMismatch,
    );
    assert!(legacy.token_bodies.lock().unwrap().is_empty());
    // The raw reading is the owner: forwarded (what the upstream then says is its business).
    let forwarded = send(PLUS_CLIENT, grant("")).await;
    assert_eq!(reason(&forwarded), None, "{:?}", forwarded.body());
    assert_eq!(legacy.token_bodies.lock().unwrap().len(), 1);
}
