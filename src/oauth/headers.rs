//! Request headers that some servers route by, or read as CGI variables, instead of the
//! request line the layer classifies. The layer drops them from every request, so no
//! upstream can reach an endpoint through one unchecked.

use http::header::{HeaderMap, HeaderName};

/// Whether a server could route by the header instead of the request line, or read it as a
/// CGI variable: a name with `_` (gunicorn before 22 takes `SCRIPT_NAME` from one, and WSGI and
/// CGI servers fold `X_Forwarded_Host` into `HTTP_X_FORWARDED_HOST`; nginx drops them by
/// default), `X-Original-URL` and `X-Rewrite-URL` (old Symfony and Zend, IIS URL Rewrite),
/// prefix headers (Werkzeug's ProxyFix, Spring) and method overrides.
pub(crate) fn is_routing(name: &str) -> bool {
    name.contains('_')
        || matches!(
            name,
            "x-original-url"
                | "x-rewrite-url"
                | "x-original-uri"
                | "x-script-name"
                | "script-name"
                | "path-info"
                | "x-forwarded-prefix"
                | "x-forwarded-path"
                | "x-http-method-override"
                | "x-http-method"
                | "x-method-override"
        )
}

/// Removes every header whose (lowercase) name `drop` picks. One pass finds whether there is
/// any: most requests have none, and cost no allocation.
pub(crate) fn drop_matching(headers: &mut HeaderMap, drop: impl Fn(&str) -> bool) {
    let picked = |name: &HeaderName| drop(name.as_str());
    if headers.keys().any(picked) {
        let names: Vec<HeaderName> = headers.keys().filter(|n| picked(n)).cloned().collect();
        for name in names {
            headers.remove(name);
        }
    }
}

/// Removes the routing headers ([`is_routing`]).
pub(crate) fn drop_routing(headers: &mut HeaderMap) {
    drop_matching(headers, is_routing);
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn routing_headers_go_and_others_stay() {
        let mut headers = HeaderMap::new();
        for name in [
            "SCRIPT_NAME",
            "X_Forwarded_Host",
            "x_real_ip",
            "x-original-url",
            "x-rewrite-url",
            "x-forwarded-prefix",
            "x-http-method-override",
            "path-info",
            "accept",
            "x-forwarded-for",
            "x-request-id",
            "cookie",
        ] {
            headers.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("x"),
            );
        }
        drop_routing(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            ["accept", "cookie", "x-forwarded-for", "x-request-id"]
        );
    }
}
