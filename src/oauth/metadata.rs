//! Discovery documents (RFC 8414, OpenID Connect Discovery): advertising
//! `code_challenge_methods_supported`, with every other byte of the document left as it was.

use std::borrow::Cow;

use serde_json::value::RawValue;

use super::json;

/// The member the layer sets.
const MEMBER: &str = "code_challenge_methods_supported";

/// Names of the documents the layer rewrites, under `/.well-known/`.
const NAMES: [&str; 2] = ["openid-configuration", "oauth-authorization-server"];

/// Whether a [`normalize`](super::path::normalize)d path names a discovery document: at the
/// root (`/.well-known/openid-configuration`), for an issuer with a path in RFC 8414 §3.1's
/// form (`/.well-known/oauth-authorization-server/tenant`, and the same shape for
/// `openid-configuration`, which some servers use), or in OpenID Discovery's form
/// (`/tenant/.well-known/openid-configuration`).
pub(crate) fn is_document(normalized: &str) -> bool {
    let mut segments = normalized.split('/').skip(1);
    while let Some(segment) = segments.next() {
        if segment == ".well-known" {
            return segments.next().is_some_and(|name| NAMES.contains(&name));
        }
    }
    false
}

/// Whether the document's `authorization_endpoint` and `token_endpoint`, where present, have
/// the paths the layer guards (both already normalized). A document that is not a JSON object
/// passes this check; [`rewrite`] leaves it alone anyway.
pub(crate) fn endpoints_are(body: &[u8], authorize_path: &str, token_path: &str) -> bool {
    let Ok(text) = std::str::from_utf8(body) else {
        return true;
    };
    let Ok(members) = json::members::<&RawValue>(text) else {
        return true;
    };
    members.iter().all(|(name, raw)| {
        let expected = match name.as_ref() {
            "authorization_endpoint" => authorize_path,
            "token_endpoint" => token_path,
            _ => return true,
        };
        let Ok(url) = serde_json::from_str::<String>(raw.get()) else {
            return false;
        };
        let after_scheme = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
        let path_at = after_scheme.find('/').unwrap_or(after_scheme.len());
        let path = after_scheme.get(path_at..).unwrap_or_default();
        let path = path.split(['?', '#']).next().unwrap_or_default();
        super::path::normalize(path) == expected
    })
}

/// `body` with `code_challenge_methods_supported` set to exactly `methods`: every existing
/// occurrence replaced, or the member inserted first in the object. `None` if the body is not
/// a JSON object (the document then passes unchanged).
pub(crate) fn rewrite(body: &[u8], methods: &[&str]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(body).ok()?;
    let members: Vec<(Cow<'_, str>, &RawValue)> = json::members(text).ok()?;
    let value = serde_json::to_string(methods).ok()?;
    let base = text.as_ptr() as usize;
    // Byte ranges of the values to replace, found from where serde_json's borrowed raw values
    // point into the input.
    let mut ranges: Vec<(usize, usize)> = members
        .iter()
        .filter(|(name, _)| name == MEMBER)
        .map(|(_, raw)| {
            let start = raw.get().as_ptr() as usize - base;
            (start, start + raw.get().len())
        })
        .collect();
    let mut out = Vec::with_capacity(body.len() + MEMBER.len() + value.len() + 4);
    if ranges.is_empty() {
        let open = text.find('{')?;
        out.extend_from_slice(body.get(..=open)?);
        out.extend_from_slice(format!("\"{MEMBER}\":{value}").as_bytes());
        if !members.is_empty() {
            out.push(b',');
        }
        out.extend_from_slice(body.get(open + 1..)?);
        return Some(out);
    }
    ranges.sort_unstable();
    let mut at = 0;
    for (start, end) in ranges {
        out.extend_from_slice(body.get(at..start)?);
        out.extend_from_slice(value.as_bytes());
        at = end;
    }
    out.extend_from_slice(body.get(at..)?);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn rewrite_str(body: &str, methods: &[&str]) -> Option<String> {
        rewrite(body.as_bytes(), methods).map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn only_documents_for_the_guarded_endpoints_count() {
        let doc = |a: &str, t: &str| {
            format!(
                r#"{{"issuer":"https://as.example/t1","authorization_endpoint":"{a}","token_endpoint":"{t}"}}"#
            )
        };
        for (a, t, ok) in [
            (
                "https://as.example/authorize",
                "https://as.example/token",
                true,
            ),
            (
                "https://as.example/Authorize/",
                "https://as.example/token?x=1",
                true,
            ),
            (
                "https://as.example/t1/authorize",
                "https://as.example/token",
                false,
            ),
            (
                "https://as.example/authorize",
                "https://as.example/t1/token",
                false,
            ),
            ("/authorize", "/token", true),
        ] {
            assert_eq!(
                endpoints_are(doc(a, t).as_bytes(), "/authorize", "/token"),
                ok,
                "{a} {t}"
            );
        }
        assert!(endpoints_are(br#"{"issuer":"x"}"#, "/authorize", "/token"));
        assert!(!endpoints_are(
            br#"{"authorization_endpoint":5}"#,
            "/authorize",
            "/token"
        ));
    }

    #[test]
    fn documents_at_the_root_and_at_issuer_paths() {
        use crate::oauth::path::normalize;
        for yes in [
            "/.well-known/openid-configuration",
            "/.well-known/oauth-authorization-server",
            "/.well-known/oauth-authorization-server/tenant1",
            "/.well-known/oauth-authorization-server/realms/acme",
            "/.well-known/openid-configuration/tenant1",
            "/tenant1/.well-known/openid-configuration",
            "/realms/acme/.well-known/openid-configuration",
            "/realms/acme/.well-known/oauth-authorization-server",
            "/Tenant1/.Well-Known/OpenID-Configuration/",
            "/tenant1/%2ewell-known/openid-configuration",
            "//tenant1//.well-known//openid-configuration",
        ] {
            assert!(is_document(&normalize(yes)), "{yes}");
        }
        for no in [
            "/.well-known/jwks.json",
            "/.well-known/",
            "/tenant1/.well-known/webfinger",
            "/openid-configuration",
            "/well-known/openid-configuration",
            "/tenant1/openid-configuration/.well-known",
        ] {
            assert!(!is_document(&normalize(no)), "{no}");
        }
    }

    #[test]
    fn inserts_or_replaces_the_member_only() {
        let cases: &[(&str, &[&str], Option<&str>)] = &[
            (
                r#"{"issuer":"https://as.example","token_endpoint":"https://as.example/token"}"#,
                &["S256"],
                Some(r#"{"code_challenge_methods_supported":["S256"],"issuer":"https://as.example","token_endpoint":"https://as.example/token"}"#),
            ),
            (
                "{\n  \"issuer\": \"https://as.example\",\n  \"code_challenge_methods_supported\": [\"plain\", \"S256\"],\n  \"x\": 1.50\n}",
                &["S256"],
                Some("{\n  \"issuer\": \"https://as.example\",\n  \"code_challenge_methods_supported\": [\"S256\"],\n  \"x\": 1.50\n}"),
            ),
            ("{}", &["S256", "plain"], Some(r#"{"code_challenge_methods_supported":["S256","plain"]}"#)),
            (" { } ", &["S256"], Some(r#" {"code_challenge_methods_supported":["S256"] } "#)),
            (
                r#"{"code_challenge_methods_supported":[],"code_challenge_methods_supported":null}"#,
                &["S256"],
                Some(r#"{"code_challenge_methods_supported":["S256"],"code_challenge_methods_supported":["S256"]}"#),
            ),
            ("[]", &["S256"], None),
            ("not json", &["S256"], None),
            (r#"{"a":1"#, &["S256"], None),
            ("", &["S256"], None),
        ];
        for (body, methods, expected) in cases {
            assert_eq!(rewrite_str(body, methods).as_deref(), *expected, "{body}");
        }
    }

    #[test]
    fn keeps_every_other_value_exactly() {
        let body = r#"{"issuer":"https://as.example/tenant\/x","n":12345678901234567890123,"f":1.000e+2,"s":"\u00e9","nested":{"code_challenge_methods_supported":["plain"]}}"#;
        let out = rewrite_str(body, &["S256"]).unwrap();
        let suffix = &out[out.find(",\"issuer\"").unwrap() + 1..];
        assert_eq!(format!("{{{suffix}"), body);
        let parsed: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            parsed["code_challenge_methods_supported"],
            serde_json::json!(["S256"])
        );
        assert_eq!(
            parsed["nested"]["code_challenge_methods_supported"],
            serde_json::json!(["plain"])
        );
    }
}
