//! Request and response headers at the proxy's edge: hop-by-hop headers (RFC 9110 §7.6.1),
//! `Host`, and the forwarding headers.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Request;
use hyper::body::Incoming;

use super::Shared;

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), and `Upgrade`.
/// `Connection` must stay first: see [`strip_hop_by_hop`]. A `static`, not a `const`: a
/// `const` array would be built and dropped again at every use.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Headers `Connection` may not remove: the message's identity and framing, and what the
/// proxy itself vouches for. `name` is as it came, in any case.
fn protected(name: &str) -> bool {
    const PREFIX: &str = "x-forwarded-";
    ["host", "content-length", "content-type", "authorization"]
        .iter()
        .any(|p| name.eq_ignore_ascii_case(p))
        || name
            .get(..PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(PREFIX))
}

/// Removes the hop-by-hop headers, including every header `Connection` names (but not the
/// protected ones: `Connection: host` must not strip `Host`). One pass over the names finds
/// which are there, so a message without any (most requests) costs no lookup, and with one
/// `Connection` header (the usual case) this allocates nothing.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name.as_str()) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        let mut connection = headers.get_all(header::CONNECTION).iter();
        if connection.next().is_some() && connection.next().is_some() {
            let values: Vec<HeaderValue> = headers
                .get_all(header::CONNECTION)
                .iter()
                .cloned()
                .collect();
            for value in &values {
                remove_named(headers, value);
            }
        } else if let Some(value) = headers.remove(header::CONNECTION) {
            remove_named(headers, &value);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// Where a (lowercase) header name is in [`HOP_BY_HOP`]. A `match` on the name: one length
/// switch and at most a few comparisons, where comparing with each entry would cost nine.
fn hop_by_hop_index(name: &str) -> Option<usize> {
    Some(match name {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authenticate" => 3,
        "proxy-authorization" => 4,
        "te" => 5,
        "trailer" => 6,
        "transfer-encoding" => 7,
        "upgrade" => 8,
        _ => return None,
    })
}

/// Removes the headers a `Connection` value names, except the protected ones.
fn remove_named(headers: &mut HeaderMap, connection: &HeaderValue) {
    let Ok(value) = connection.to_str() else {
        return;
    };
    for name in value.split(',').map(str::trim) {
        if !name.is_empty() && !protected(name) {
            // By `&str`: parsed on the stack, and a token that is no header name removes
            // nothing. A hop-by-hop name (`keep-alive`) goes here or in the caller's pass,
            // whichever comes first.
            headers.remove(name);
        }
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Makes a client's request fit to forward: hop-by-hop headers out, `Host` kept (or made from
/// an HTTP/2 `:authority`), forwarding headers set.
pub(crate) fn prepare_request(
    shared: &Shared,
    peer_ip: Option<&HeaderValue>,
    req: &mut Request<Incoming>,
) {
    // An absolute-form target (HTTP/1) or `:authority` (HTTP/2) names the host: it wins over
    // a `Host` header (RFC 9112 §3.2.2, RFC 9113 §8.3.1).
    let authority = req
        .uri()
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    drop_untrusted_headers(headers, shared.trust_forwarded);
    headers.remove(header::EXPECT);
    if let Some(value) = authority {
        headers.insert(header::HOST, value);
    }
    if shared.trust_forwarded {
        if let Some(ip) = peer_ip {
            let chain = match (headers.get(&X_FORWARDED_FOR), ip.to_str()) {
                (Some(prior), Ok(ip)) => prior
                    .to_str()
                    .ok()
                    .and_then(|prior| HeaderValue::from_str(&format!("{prior}, {ip}")).ok()),
                _ => None,
            };
            headers.insert(X_FORWARDED_FOR, chain.unwrap_or_else(|| ip.clone()));
        }
        if !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(X_FORWARDED_PROTO, shared.forwarded_proto());
        }
        if !headers.contains_key(&X_FORWARDED_HOST) {
            if let Some(host) = headers.get(header::HOST).cloned() {
                headers.insert(X_FORWARDED_HOST, host);
            }
        }
    } else {
        if let Some(ip) = peer_ip {
            headers.insert(X_FORWARDED_FOR, ip.clone());
        }
        headers.insert(X_FORWARDED_PROTO, shared.forwarded_proto());
        if let Some(host) = headers.get(header::HOST).cloned() {
            headers.insert(X_FORWARDED_HOST, host);
        }
    }
}

/// Whether a client could use the header to claim another address, scheme or host, in any
/// of the spellings servers read (`X-Forwarded-*`, `Forwarded`, `X-Real-IP`, `True-Client-IP`
/// and the like).
fn is_forwarding(name: &str) -> bool {
    name.starts_with("x-forwarded-")
        || matches!(
            name,
            "forwarded"
                | "x-forwarded"
                | "forwarded-for"
                | "x-real-ip"
                | "x-client-ip"
                | "client-ip"
                | "true-client-ip"
                | "cf-connecting-ip"
                | "fastly-client-ip"
                | "x-cluster-client-ip"
                | "x-proxyuser-ip"
                | "x-host"
                | "x-original-host"
                | "x-scheme"
                | "x-url-scheme"
                | "front-end-https"
        )
}

/// Drops the forwarding headers a client sent unless they are trusted. (The routing headers,
/// trusted or not, are the layer's to drop: `oauth::headers`.)
fn drop_untrusted_headers(headers: &mut HeaderMap, trust_forwarded: bool) {
    // Checked before collecting: most requests carry none (no allocation then).
    if !trust_forwarded && headers.keys().any(|n| is_forwarding(n.as_str())) {
        let names: Vec<http::HeaderName> = headers
            .keys()
            .filter(|n| is_forwarding(n.as_str()))
            .cloned()
            .collect();
        for name in names {
            headers.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hop_by_hop_match_agrees_with_the_table() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name.as_str()), Some(i), "{name}");
        }
        for name in ["host", "content-length", "connections", "x-keep-alive", ""] {
            assert_eq!(hop_by_hop_index(name), None, "{name}");
        }
    }

    #[test]
    fn hop_by_hop_headers_go_including_the_named_ones() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret-Hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_static("Basic x"),
        );
        h.insert(header::SET_COOKIE, HeaderValue::from_static("a=b"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-length", "set-cookie"]);
    }

    #[test]
    fn spoofable_forwarding_headers_go_unless_trusted() {
        let forwarding = [
            "x-forwarded-for",
            "x-forwarded-host",
            "forwarded",
            "x-real-ip",
            "true-client-ip",
            "x-forwarded",
        ];
        let kept = ["accept", "x-forwardedness", "x-request-id"];
        let left = |trust| {
            let mut h = HeaderMap::new();
            for name in forwarding.iter().chain(&kept) {
                h.insert(
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_static("x"),
                );
            }
            drop_untrusted_headers(&mut h, trust);
            let mut left: Vec<String> = h.keys().map(|k| k.as_str().to_owned()).collect();
            left.sort_unstable();
            left
        };
        assert_eq!(left(false), kept);
        let mut all: Vec<&str> = forwarding.iter().chain(&kept).copied().collect();
        all.sort_unstable();
        assert_eq!(left(true), all);
    }

    #[test]
    fn connection_cannot_remove_protected_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("host, content-length, x-forwarded-for, authorization"),
        );
        h.insert(header::HOST, HeaderValue::from_static("login.example"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic x"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 4);
    }

    /// `Connection` tokens are matched whatever their case, and every `Connection` header
    /// counts.
    #[test]
    fn connection_tokens_are_read_in_any_case_and_from_every_header() {
        let mut h = HeaderMap::new();
        h.append(
            header::CONNECTION,
            HeaderValue::from_static("Host, X-Forwarded-For, X-Hop-One"),
        );
        h.append(
            header::CONNECTION,
            HeaderValue::from_static("AUTHORIZATION,x-hop-TWO"),
        );
        h.insert(header::HOST, HeaderValue::from_static("login.example"));
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic x"));
        h.insert("x-hop-one", HeaderValue::from_static("1"));
        h.insert("x-hop-two", HeaderValue::from_static("2"));
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["authorization", "host", "x-forwarded-for"]);
    }
}
