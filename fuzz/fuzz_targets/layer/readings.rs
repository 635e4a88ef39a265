//! How a lenient server reads a request's parameters: from a form, JSON or cookies.

use http::header::COOKIE;
use http::HeaderMap;
use tower_pkce::fuzzing::{Reading, READINGS};

/// Every value whose name a lenient server reads as `name`: decoded, any case, a `[...]`
/// suffix dropped.
pub fn lenient(pairs: &[(String, String)], name: &str) -> Vec<String> {
    pairs
        .iter()
        .filter(|(n, _)| n.to_ascii_lowercase().split('[').next() == Some(name))
        .map(|(_, v)| v.clone())
        .collect()
}

pub fn one(pairs: &[(String, String)], name: &str) -> Option<String> {
    let values: Vec<String> = lenient(pairs, name)
        .into_iter()
        .filter(|v| !v.is_empty())
        .collect();
    let mut distinct = values.clone();
    distinct.sort();
    distinct.dedup();
    assert!(
        distinct.len() <= 1,
        "the upstream could read {name} as any of {values:?}"
    );
    distinct.pop()
}

pub fn form(bytes: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(bytes)
        .map(|(n, v)| (n.into_owned(), v.into_owned()))
        .collect()
}

/// This target's own reading, as [`lenient`]: names in ASCII case, a `[...]` suffix dropped.
fn lenient_reading(form: &[u8]) -> Vec<(String, Vec<u8>)> {
    form_urlencoded::parse(form)
        .map(|(n, v)| {
            let name = n.to_ascii_lowercase();
            let name = name.split('[').next().unwrap_or_default().to_owned();
            (name, v.into_owned().into_bytes())
        })
        .collect()
}

/// The readings of a token request's parameters: the library's table and this target's own.
pub fn readings() -> Vec<(&'static str, Reading)> {
    let mut all: Vec<(&'static str, Reading)> = READINGS.to_vec();
    all.push((
        "names in ASCII case with a `[...]` suffix dropped (this target's own)",
        lenient_reading,
    ));
    all
}

/// How `reading` spells a parameter's name: as it reads a form of that one name.
pub fn key(reading: Reading, name: &str) -> String {
    reading(format!("{name}=x").as_bytes())
        .into_iter()
        .next()
        .map(|(n, _)| n)
        .unwrap_or_default()
}

/// A JSON object's members as a form, for the readings (a server that binds JSON names as it
/// binds form names); `None` if the body is no JSON object.
pub fn json_as_form(bytes: &[u8]) -> Option<Vec<u8>> {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(bytes) else {
        return None;
    };
    let mut form = form_urlencoded::Serializer::new(String::new());
    for (k, v) in map {
        match v {
            serde_json::Value::String(s) => form.append_pair(&k, &s),
            other => form.append_pair(&k, &other.to_string()),
        };
    }
    Some(form.finish().into_bytes())
}

/// The `Cookie` headers as a form: PHP splits them at `;` and drops the spaces before a name,
/// then reads the pairs as it reads a query string.
pub fn cookies_as_form(headers: &HeaderMap) -> Vec<u8> {
    let mut form = Vec::new();
    for value in headers.get_all(COOKIE) {
        for pair in value.as_bytes().split(|&b| b == b';') {
            let start = pair
                .iter()
                .position(|b| !b.is_ascii_whitespace())
                .unwrap_or(pair.len());
            if start < pair.len() {
                if !form.is_empty() {
                    form.push(b'&');
                }
                form.extend_from_slice(&pair[start..]);
            }
        }
    }
    form
}
