//! Building requests, and reading the parameters a redirect brings back.

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request};
use http_body_util::Full;

use crate::ops::Extra;
use crate::readings::form;

pub fn add_extras(request: &mut Request<Full<Bytes>>, extras: &[Extra], endpoint: &str) {
    for extra in extras {
        let (name, value): (&str, Vec<u8>) = match extra {
            Extra::ScriptName(v) => (
                "script_name",
                v.as_deref().unwrap_or("/app").as_bytes().to_vec(),
            ),
            Extra::OriginalUrl { rewrite, url } => (
                if *rewrite {
                    "x-rewrite-url"
                } else {
                    "x-original-url"
                },
                url.as_deref().unwrap_or(endpoint).as_bytes().to_vec(),
            ),
            Extra::Cookie(c) => ("cookie", c.clone()),
        };
        if let Ok(value) = HeaderValue::from_bytes(&value) {
            request
                .headers_mut()
                .append(http::HeaderName::from_static(name), value);
        }
    }
}

pub fn params_of(location: &str) -> Vec<(String, String)> {
    let after = location.split_once(['?', '#']).map_or("", |(_, rest)| rest);
    form(after.replace('#', "&").as_bytes())
}

pub fn build(
    method: &Method,
    path: &str,
    query: &[u8],
    body: Vec<u8>,
    content_type: Option<&str>,
) -> Option<Request<Full<Bytes>>> {
    let mut uri = path.to_owned();
    if !query.is_empty() {
        uri.push('?');
        uri.push_str(std::str::from_utf8(query).ok()?);
    }
    let mut builder = Request::builder().method(method.clone()).uri(uri);
    if let Some(content_type) = content_type {
        builder = builder.header(CONTENT_TYPE, content_type);
    }
    builder.body(Full::new(Bytes::from(body))).ok()
}

/// Adds the `SCRIPT_NAME` a trick path goes with.
pub fn add_script_name(request: &mut Request<Full<Bytes>>, script: Option<&'static str>) {
    if let Some(script) = script {
        request
            .headers_mut()
            .append("script_name", HeaderValue::from_static(script));
    }
}

pub fn join(pairs: &[String], separator: &str) -> Vec<u8> {
    pairs.join(separator).into_bytes()
}
