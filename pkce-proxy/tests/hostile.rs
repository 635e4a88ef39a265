//! Hostile clients against the `pkce-proxy` binary, over real sockets: oversized and
//! malformed bodies, parameter and header floods, invalid encodings, HTTP/2 stream floods and
//! rapid resets, a flood that fills the store, and (ignored by default) a long soak of
//! legitimate flows mixed with attacks.
//!
//! Every test asserts a clear refusal (status, and RFC 6749 JSON on the OAuth endpoints where
//! the layer answers), that nothing hangs (every read has a deadline), and ends with a full
//! PKCE flow through the same proxy.
//!
//! HTTP/2 is spoken by hand (a few frame types, HPACK literals without Huffman coding) so that
//! the tests can break the rules a well-behaved client library would keep.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod proxy_support;
#[path = "../../tests/support/mod.rs"]
mod support;

use proxy_support::*;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use reqwest::redirect::Policy;
use reqwest::StatusCode;
use serde_json::Value;
use support::{authorize_query, Pkce, CLIENT, OTHER_CLIENT, OTHER_REDIRECT, REDIRECT};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// The longest any single exchange may take before the test calls it a hang.
const LIMIT: Duration = Duration::from_secs(10);

/// The proxy's default `--max-body`.
const MAX_BODY: usize = 64 * 1024;

const EIGHT_MIB: usize = 8 * 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Helpers

/// Runs `fut`, failing the test if it takes longer than `limit`.
async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {limit:?}"))
}

/// A client that follows no redirects and gives up after [`LIMIT`].
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .timeout(LIMIT)
        .build()
        .unwrap()
}

/// A full PKCE flow through `proxy` (authorize, sign-in, code, token with the verifier), then
/// the same code replayed: the proxy still does its job after whatever came before.
async fn assert_healthy(proxy: &Proxy) {
    let base = proxy.url("");
    within(
        Duration::from_secs(30),
        "a full flow after the attack",
        async {
            let (code, pkce) = new_code(&base).await;
            let (status, body) = redeem(&base, &code, Some(&pkce.verifier)).await;
            assert_eq!(
                status,
                StatusCode::OK,
                "a full flow after the attack: {body}"
            );
            assert!(
                body["access_token"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("at-")),
                "{body}"
            );
            let (status, body) = redeem(&base, &code, Some(&pkce.verifier)).await;
            assert_eq!(
                (status, body["error"].as_str()),
                (StatusCode::BAD_REQUEST, Some("invalid_grant")),
                "a replay after the attack"
            );
        },
    )
    .await;
}

/// Checks an RFC 6749 §5.2 error as the layer makes it: the status, a JSON object with the
/// `error` code and a string `error_description`, `application/json`, `no-store`.
fn check_oauth_error(
    what: &str,
    (status, content_type, cache_control, body): (u16, Option<&str>, Option<&str>, &[u8]),
    want_status: u16,
    want_error: &str,
) -> Value {
    let text = String::from_utf8_lossy(body);
    assert_eq!(status, want_status, "{what}: status; body {text}");
    assert!(
        content_type.is_some_and(|t| t.starts_with("application/json")),
        "{what}: content type {content_type:?}; body {text}"
    );
    assert_eq!(cache_control, Some("no-store"), "{what}: cache-control");
    let json: Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{what}: the body is not JSON ({e}): {text}"));
    assert_eq!(json["error"], want_error, "{what}: {json}");
    assert!(json["error_description"].is_string(), "{what}: {json}");
    json
}

/// Reads a reqwest response and checks it as an RFC 6749 error.
async fn oauth_error(
    what: &str,
    response: reqwest::Response,
    want_status: StatusCode,
    want_error: &str,
) -> Value {
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let (content_type, cache_control) = (header("content-type"), header("cache-control"));
    let body = within(LIMIT, what, response.bytes()).await.unwrap();
    check_oauth_error(
        what,
        (
            status,
            content_type.as_deref(),
            cache_control.as_deref(),
            &body,
        ),
        want_status.as_u16(),
        want_error,
    )
}

/// Sends a token request with a body of any bytes.
async fn post_token(
    http: &reqwest::Client,
    base: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    within(
        LIMIT,
        "a token request",
        http.post(format!("{base}/token"))
            .header("content-type", content_type)
            .body(body)
            .send(),
    )
    .await
    .unwrap()
}

/// The form fields of a redemption of `code` by the app.
fn redemption(code: &str, verifier: &str) -> String {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("grant_type", "authorization_code")
        .append_pair("code", code)
        .append_pair("client_id", CLIENT)
        .append_pair("redirect_uri", REDIRECT)
        .append_pair("code_verifier", verifier);
    form.finish()
}

/// The proxy's resident set size, from `/proc`.
fn rss_kib(proxy: &Proxy) -> u64 {
    let pid = proxy.child.id().expect("the proxy is running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in {status}"))
}

/// The value of one series of the admin listener's `/metrics`, if it is there.
async fn metric(proxy: &Proxy, series: &str) -> Option<f64> {
    let text = within(
        LIMIT,
        "/metrics",
        client().get(proxy.admin_url("/metrics")).send(),
    )
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    text.lines()
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(name, _)| *name == series)
        .map(|(_, v)| v.parse().unwrap())
}

/// Polls `/metrics` until `series` reads `want`.
async fn await_metric(proxy: &Proxy, series: &str, want: f64) {
    let deadline = Instant::now() + LIMIT;
    loop {
        let seen = metric(proxy, series).await;
        if seen == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} stayed at {seen:?}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 on a raw socket

/// An HTTP/1.1 response read off a raw socket.
#[derive(Debug)]
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn oauth_error(&self, what: &str, want_status: u16, want_error: &str) -> Value {
        check_oauth_error(
            what,
            (
                self.status,
                self.header("content-type"),
                self.header("cache-control"),
                &self.body,
            ),
            want_status,
            want_error,
        )
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads one response (its head, then `Content-Length` bytes of body). `Err` says what was
/// seen when the connection ended (closed or reset) before a whole response.
async fn read_response(r: &mut (impl AsyncRead + Unpin)) -> Result<Raw, String> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let seen = |buf: &[u8]| String::from_utf8_lossy(buf).into_owned();
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        match r.read(&mut chunk).await {
            Ok(0) => return Err(format!("closed after {:?}", seen(&buf))),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("{e} after {:?}", seen(&buf))),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not a response: {head:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        match r.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("{e} in the body of {head:?}")),
        }
    }
    body.truncate(length);
    Ok(Raw {
        status,
        headers,
        body,
    })
}

/// Writes `request` on a fresh connection (from a task of its own, so that a proxy that
/// answers before reading it all is heard) and reads the answer.
async fn exchange(addr: SocketAddr, request: Vec<u8>) -> Result<Raw, String> {
    let (mut rd, mut wr) = TcpStream::connect(addr).await.unwrap().into_split();
    let writer = tokio::spawn(async move {
        // The proxy may close (or reset) the connection before all of it is written.
        let _ = wr.write_all(&request).await;
        wr
    });
    let answer = within(LIMIT, "a raw request", read_response(&mut rd)).await;
    writer.abort();
    answer
}

/// Reads until the proxy closes the connection (or resets it); fails after `limit`.
async fn closed_within(rd: &mut OwnedReadHalf, limit: Duration, what: &str) {
    let mut sink = vec![0u8; 64 * 1024];
    within(limit, what, async {
        loop {
            match rd.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 by hand (RFC 9113, RFC 7541)

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const MAX_CONCURRENT_STREAMS: u16 = 0x3;
const MAX_HEADER_LIST_SIZE: u16 = 0x6;
const CANCEL: u32 = 0x8;
const REFUSED_STREAM: u32 = 0x7;
const ENHANCE_YOUR_CALM: u32 = 0xb;

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    assert!(len < 1 << 24);
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with an `prefix`-bit prefix (RFC 7541 §5.1).
fn hpack_int(out: &mut Vec<u8>, prefix: u32, mut value: usize) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(value as u8);
        return;
    }
    out.push(max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128 + 128) as u8);
        value /= 128;
    }
    out.push(value as u8);
}

/// A header field as a literal without indexing, with a literal name, no Huffman coding
/// (RFC 7541 §6.2.2).
fn hpack_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0);
    hpack_int(out, 7, name.len());
    out.extend_from_slice(name);
    hpack_int(out, 7, value.len());
    out.extend_from_slice(value);
}

/// The header block of a request.
fn h2_request(method: &str, path: &str, authority: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut block = Vec::new();
    hpack_literal(&mut block, b":method", method.as_bytes());
    hpack_literal(&mut block, b":scheme", b"http");
    hpack_literal(&mut block, b":path", path.as_bytes());
    hpack_literal(&mut block, b":authority", authority.as_bytes());
    for (name, value) in extra {
        hpack_literal(&mut block, name.as_bytes(), value.as_bytes());
    }
    block
}

/// A header block as one HEADERS frame and as many CONTINUATION frames as 16 KiB frames need.
fn h2_headers(stream: u32, block: &[u8], end_stream: bool) -> Vec<u8> {
    let chunks: Vec<&[u8]> = block.chunks(16 * 1024).collect();
    let mut out = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        let mut flags = if last { END_HEADERS } else { 0 };
        let kind = if i == 0 {
            if end_stream {
                flags |= END_STREAM;
            }
            HEADERS
        } else {
            CONTINUATION
        };
        out.extend(h2_frame(kind, flags, stream, chunk));
    }
    out
}

#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl Frame {
    /// The error code of a RST_STREAM or GOAWAY.
    fn error_code(&self) -> u32 {
        let at = if self.kind == GOAWAY { 4 } else { 0 };
        u32::from_be_bytes(self.payload[at..at + 4].try_into().unwrap())
    }
}

/// The next frame; `None` once the proxy has closed or reset the connection.
async fn read_frame(rd: &mut OwnedReadHalf) -> Option<Frame> {
    let mut head = [0u8; 9];
    rd.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    rd.read_exact(&mut payload).await.ok()?;
    Some(Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes(head[5..9].try_into().unwrap()) & 0x7fff_ffff,
        payload,
    })
}

/// The `:status` of a response header block, which servers put first: an indexed field for
/// the common statuses, else a literal with the indexed name `:status` (index 8).
fn h2_status(block: &[u8]) -> Option<u16> {
    let first = *block.first()?;
    if first & 0x80 != 0 {
        return match first & 0x7f {
            8 => Some(200),
            9 => Some(204),
            10 => Some(206),
            11 => Some(304),
            12 => Some(400),
            13 => Some(404),
            14 => Some(500),
            _ => None,
        };
    }
    let index = if first & 0xc0 == 0x40 {
        first & 0x3f
    } else {
        first & 0x0f
    };
    if index != 8 {
        return None;
    }
    let len_byte = *block.get(1)?;
    let value = block.get(2..2 + usize::from(len_byte & 0x7f))?;
    if len_byte & 0x80 == 0 {
        return std::str::from_utf8(value).ok()?.parse().ok();
    }
    // Huffman-coded digits (RFC 7541 Appendix B): 0-2 take 5 bits, 3-9 take 6.
    let mut bits = value
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1));
    let mut status = 0u16;
    for _ in 0..3 {
        let mut code = 0u8;
        for _ in 0..5 {
            code = code << 1 | bits.next()?;
        }
        let digit = if code <= 2 {
            code
        } else {
            code = code << 1 | bits.next()?;
            if !(0x19..=0x1f).contains(&code) {
                return None;
            }
            code - 0x19 + 3
        };
        status = status * 10 + u16::from(digit);
    }
    Some(status)
}

/// Opens an HTTP/2 connection with prior knowledge: the preface, empty SETTINGS, the
/// server's SETTINGS read and acknowledged. Returns the server's settings.
async fn h2_connect(addr: SocketAddr) -> (OwnedReadHalf, OwnedWriteHalf, Vec<(u16, u32)>) {
    let (mut rd, mut wr) = TcpStream::connect(addr).await.unwrap().into_split();
    let mut hello = H2_PREFACE.to_vec();
    hello.extend(h2_frame(SETTINGS, 0, 0, &[]));
    wr.write_all(&hello).await.unwrap();
    let settings = within(LIMIT, "the server's SETTINGS", async {
        loop {
            let frame = read_frame(&mut rd).await.expect("closed before SETTINGS");
            if frame.kind == SETTINGS && frame.flags & ACK == 0 {
                break frame
                    .payload
                    .chunks(6)
                    .map(|s| {
                        (
                            u16::from_be_bytes([s[0], s[1]]),
                            u32::from_be_bytes([s[2], s[3], s[4], s[5]]),
                        )
                    })
                    .collect::<Vec<_>>();
            }
        }
    })
    .await;
    wr.write_all(&h2_frame(SETTINGS, ACK, 0, &[]))
        .await
        .unwrap();
    (rd, wr, settings)
}

/// What the server did with the streams of one connection, read until it closed the
/// connection, `done` said enough, or `limit` passed.
#[derive(Debug, Default)]
struct H2Outcome {
    /// Streams answered, with their status (`None` when not decoded).
    answered: BTreeMap<u32, Option<u16>>,
    /// Streams reset by the server, with the error code.
    reset: BTreeMap<u32, u32>,
    /// GOAWAY: last stream id and error code.
    goaway: Option<(u32, u32)>,
    closed: bool,
}

async fn h2_observe(
    rd: &mut OwnedReadHalf,
    wr: &mut Option<OwnedWriteHalf>,
    limit: Duration,
    done: impl Fn(&H2Outcome) -> bool,
) -> H2Outcome {
    let mut out = H2Outcome::default();
    let deadline = Instant::now() + limit;
    while !done(&out) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(frame) = tokio::time::timeout(left, read_frame(rd)).await else {
            break;
        };
        let Some(frame) = frame else {
            out.closed = true;
            break;
        };
        match frame.kind {
            HEADERS => {
                out.answered.insert(frame.stream, h2_status(&frame.payload));
            }
            RST_STREAM => {
                out.reset.insert(frame.stream, frame.error_code());
            }
            GOAWAY => {
                let last = u32::from_be_bytes(frame.payload[..4].try_into().unwrap());
                out.goaway = Some((last & 0x7fff_ffff, frame.error_code()));
            }
            SETTINGS if frame.flags & ACK == 0 => {
                if let Some(w) = wr.as_mut() {
                    let _ = w.write_all(&h2_frame(SETTINGS, ACK, 0, &[])).await;
                }
            }
            PING if frame.flags & ACK == 0 => {
                if let Some(w) = wr.as_mut() {
                    let _ = w.write_all(&h2_frame(PING, ACK, 0, &frame.payload)).await;
                }
            }
            DATA => {}
            _ => {}
        }
    }
    out
}

/// A header block over the advertised SETTINGS_MAX_HEADER_LIST_SIZE on stream 1: answered
/// 431 (RFC 9113 §10.5.1), or the connection is ended with a GOAWAY that says stream 1 was
/// never processed. Either way it is not forwarded.
fn assert_oversize_refused(outcome: &H2Outcome) {
    let answered_431 = outcome.answered.get(&1) == Some(&Some(431));
    let goaway_unprocessed = outcome.goaway.is_some_and(|(last, _)| last == 0);
    assert!(answered_431 || goaway_unprocessed, "{outcome:?}");
    assert!(
        outcome.answered.values().all(|s| *s == Some(431)),
        "{outcome:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 1. Oversized bodies

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_8_mib_token_body_is_413_before_it_is_read() {
    let (legacy, upstream) = legacy().await;
    let proxy = Proxy::start(upstream, &[]).await;
    let base = proxy.url("");
    let http = client();

    // The limit is --max-body, 64 KiB by default: a body of exactly 64 KiB is read and judged
    // (an unknown code), one byte more is not read.
    let fields = format!("{}&pad=", redemption("unknown-code", &Pkce::new().verifier));
    let at_limit = format!("{fields}{}", "x".repeat(MAX_BODY - fields.len()));
    assert_eq!(at_limit.len(), MAX_BODY);
    let response = post_token(
        &http,
        &base,
        "application/x-www-form-urlencoded",
        at_limit.clone(),
    )
    .await;
    oauth_error("64 KiB", response, StatusCode::BAD_REQUEST, "invalid_grant").await;
    let response = post_token(
        &http,
        &base,
        "application/x-www-form-urlencoded",
        format!("{at_limit}x"),
    )
    .await;
    oauth_error(
        "64 KiB + 1",
        response,
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request",
    )
    .await;

    // 8 MiB declared, 4 KiB sent: the answer comes at once, without the rest, and the
    // connection is closed (the rest is never read as a request).
    let (mut rd, mut wr) = TcpStream::connect(proxy.addr).await.unwrap().into_split();
    let head = format!(
        "POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {EIGHT_MIB}\r\n\r\n{fields}"
    );
    wr.write_all(head.as_bytes()).await.unwrap();
    wr.write_all(&vec![b'x'; 4096]).await.unwrap();
    let sent = Instant::now();
    let answer = within(
        Duration::from_secs(2),
        "413 for a declared 8 MiB",
        read_response(&mut rd),
    )
    .await
    .unwrap();
    let took = sent.elapsed();
    answer.oauth_error("declared 8 MiB", 413, "invalid_request");
    closed_within(&mut rd, LIMIT, "the connection after 413").await;
    drop(wr);
    println!("declared 8 MiB: 413 after {took:?}");

    // Chunked, 8 MiB, all of it written: 413 too, after at most 64 KiB read.
    let mut request = format!(
        "POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{fields}\r\n",
        fields.len()
    )
    .into_bytes();
    for _ in 0..EIGHT_MIB / (64 * 1024) {
        request.extend_from_slice(format!("{:x}\r\n", 64 * 1024).as_bytes());
        request.extend(std::iter::repeat_n(b'x', 64 * 1024));
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let started = Instant::now();
    let answer = exchange(proxy.addr, request).await.unwrap();
    answer.oauth_error("chunked 8 MiB", 413, "invalid_request");
    println!("chunked 8 MiB: 413 after {:?}", started.elapsed());

    // Waiting for `100 Continue` with 8 MiB declared: refused at once, no invitation to send.
    let answer = exchange(
        proxy.addr,
        format!(
            "POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
             Expect: 100-continue\r\nContent-Length: {EIGHT_MIB}\r\n\r\n"
        )
        .into_bytes(),
    )
    .await
    .unwrap();
    answer.oauth_error("Expect: 100-continue, 8 MiB", 413, "invalid_request");

    // The authorization endpoint reads POST bodies too, under the same limit.
    let answer = exchange(
        proxy.addr,
        format!(
            "POST /authorize HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: {EIGHT_MIB}\r\n\r\nresponse_type=code"
        )
        .into_bytes(),
    )
    .await
    .unwrap();
    answer.oauth_error("authorize POST, 8 MiB", 413, "invalid_request");

    // Chunked framing that does not parse: the body cannot be read.
    for (what, chunk) in [
        (
            "a chunk size that overflows",
            "FFFFFFFFFFFFFFFFFFFFFF\r\nabc\r\n".to_owned(),
        ),
        ("a chunk size that is not hex", "zz\r\nabc\r\n".to_owned()),
        (
            "a 200 kB chunk extension",
            format!("3;{}\r\nabc\r\n", "x".repeat(200_000)),
        ),
    ] {
        let answer = exchange(
            proxy.addr,
            format!(
                "POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
                 Transfer-Encoding: chunked\r\n\r\n{chunk}0\r\n\r\n"
            )
            .into_bytes(),
        )
        .await
        .unwrap();
        answer.oauth_error(what, 400, "invalid_request");
    }

    // The same over HTTP/2, where the proxy resets the stream it stopped reading.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(LIMIT)
        .build()
        .unwrap();
    let mut body = fields.clone().into_bytes();
    body.resize(EIGHT_MIB, b'x');
    let response = post_token(&h2, &base, "application/x-www-form-urlencoded", body).await;
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    oauth_error(
        "8 MiB over HTTP/2",
        response,
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request",
    )
    .await;

    assert!(
        legacy.token_bodies.lock().unwrap().is_empty(),
        "nothing reached the upstream"
    );
    assert_healthy(&proxy).await;
}

// ---------------------------------------------------------------------------------------------
// 2. Parameter floods

/// `n` distinct parameter names of `[a-z0-9]`, shortest first, each `name` or `name=value`.
fn distinct_params(n: usize, value: &str) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::new();
    let mut i = 0;
    let mut width = 1;
    while i < n {
        let count = ALPHABET.len().pow(width);
        for k in 0..count.min(n - i) {
            let mut name = Vec::new();
            let mut rest = k;
            for _ in 0..width {
                name.push(ALPHABET[rest % ALPHABET.len()]);
                rest /= ALPHABET.len();
            }
            out.push('&');
            out.push_str(std::str::from_utf8(&name).unwrap());
            if !value.is_empty() {
                out.push('=');
                out.push_str(value);
            }
        }
        i += count.min(n - i);
        width += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_parameters_are_judged_quickly() {
    let (legacy, upstream) = legacy().await;
    let proxy = Proxy::start(upstream, &["--max-body", "1MiB"]).await;
    let base = proxy.url("");
    let http = client();
    let form = "application/x-www-form-urlencoded";
    let (code, pkce) = new_code(&base).await;
    let repeated = "&x=1".repeat(20_000);
    let distinct = distinct_params(20_000, "1");
    assert!(distinct.len() > MAX_BODY && distinct.len() < 1024 * 1024);

    // 20 000 copies of one parameter: refused as repeated, quickly, and not counted against
    // the code.
    let started = Instant::now();
    let response = post_token(
        &http,
        &base,
        form,
        format!("{}{repeated}", redemption(&code, &pkce.verifier)),
    )
    .await;
    let took = started.elapsed();
    oauth_error(
        "20 000 repeated",
        response,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    assert!(took < Duration::from_secs(2), "{took:?}");

    // 20 000 distinct parameters: no token request has that many; refused as quickly, and
    // nothing reaches the upstream.
    for code in ["unknown", code.as_str()] {
        let started = Instant::now();
        let response = post_token(
            &http,
            &base,
            form,
            format!("{}{distinct}", redemption(code, &pkce.verifier)),
        )
        .await;
        let took = started.elapsed();
        oauth_error(
            "20 000 distinct",
            response,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
    assert!(legacy.token_bodies.lock().unwrap().is_empty());

    // A few unknown parameters are not the layer's business (RFC 6749 §3.2): with the right
    // code and verifier, they are forwarded, re-encoded.
    let few = distinct_params(20, "1");
    let response = post_token(
        &http,
        &base,
        form,
        format!("{}{few}", redemption(&code, &pkce.verifier)),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let received = legacy.token_bodies.lock().unwrap().clone();
    assert_eq!(received.len(), 1);
    assert!(received[0].ends_with(few.as_bytes()));

    // The default limit refuses such a body by size.
    let default = Proxy::start(upstream, &[]).await;
    let response = post_token(
        &http,
        &default.url(""),
        form,
        format!("{}{distinct}", redemption("unknown", &pkce.verifier)),
    )
    .await;
    oauth_error(
        "20 000 distinct, default limit",
        response,
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request",
    )
    .await;

    // Authorize with 20 000 copies of one parameter (40 kB fits in a request head):
    // invalid_request, JSON for an API client, an HTML page for a browser.
    let challenge = Pkce::new().challenge;
    let query = authorize_query(CLIENT, REDIRECT, Some("s"), Some(&challenge));
    let url = proxy.url(&format!("/authorize?{query}{}", "&x".repeat(20_000)));
    let started = Instant::now();
    let response = within(LIMIT, "authorize", http.get(&url).send())
        .await
        .unwrap();
    oauth_error(
        "authorize, 20 000 repeated",
        response,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(2));
    let page = within(
        LIMIT,
        "authorize",
        http.get(&url).header("accept", "text/html").send(),
    )
    .await
    .unwrap();
    assert_eq!(page.status(), StatusCode::BAD_REQUEST);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(page.text().await.unwrap().contains("invalid_request"));

    // 20 000 distinct parameters do not fit in the 64 KiB the proxy reads of a request head:
    // 431 before the layer sees it.
    let long = distinct_params(20_000, "");
    assert!(long.len() > MAX_BODY);
    let request = format!("GET /authorize?{query}{long} HTTP/1.1\r\nHost: x\r\n\r\n");
    let answer = exchange(proxy.addr, request.into_bytes()).await.unwrap();
    assert_eq!(answer.status, 431, "{answer:?}");

    // 14 000 distinct ones do fit: judged (nothing wrong with them) and forwarded, so the
    // upstream's sign-in page answers.
    let fits = distinct_params(14_000, "");
    let started = Instant::now();
    let response = within(
        LIMIT,
        "authorize",
        http.get(proxy.url(&format!("/authorize?{query}{fits}")))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::FOUND);
    assert!(response.headers()["location"]
        .to_str()
        .unwrap()
        .starts_with("/login?next="));
    assert!(started.elapsed() < Duration::from_secs(2));

    assert_healthy(&proxy).await;
    assert_healthy(&default).await;
}

// ---------------------------------------------------------------------------------------------
// 3. Invalid UTF-8 and percent-encoding

#[tokio::test]
async fn invalid_utf8_and_percent_encoding_are_invalid_request() {
    let (legacy, upstream) = legacy().await;
    let proxy = Proxy::start(upstream, &[]).await;
    let base = proxy.url("");
    let http = client();
    let challenge = Pkce::new().challenge;
    let with = |name: &str, raw: &str| {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (n, v) in [
            ("response_type", "code"),
            ("client_id", CLIENT),
            ("redirect_uri", REDIRECT),
            ("state", "s"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ] {
            if n != name {
                q.append_pair(n, v);
            }
        }
        format!("{}&{name}={raw}", q.finish())
    };
    let authorize_cases = [
        ("code_challenge", "%ZZ"),
        // 43 characters, as an S256 challenge has, but not base64url.
        (
            "code_challenge",
            "%ZZAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ),
        (
            "code_challenge",
            "%C3%28AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ),
        ("state", "%FF%FE"),
        ("client_id", "%FF"),
        ("client_id", "app%C0%AF"),
        ("redirect_uri", "https%3A%2F%2Fapp.example%2Fcb%C3%28"),
        ("response_type", "code%FF"),
        ("code_challenge_method", "S256%E2%82"),
    ];
    for (name, raw) in authorize_cases {
        let url = proxy.url(&format!("/authorize?{}", with(name, raw)));
        let what = format!("authorize {name}={raw}");
        let response = within(LIMIT, &what, http.get(&url).send()).await.unwrap();
        oauth_error(&what, response, StatusCode::BAD_REQUEST, "invalid_request").await;
        // A browser gets the same refusal as a page, never a redirect.
        let page = within(
            LIMIT,
            &what,
            http.get(&url)
                .header("accept", "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8")
                .send(),
        )
        .await
        .unwrap();
        assert_eq!(page.status(), StatusCode::BAD_REQUEST, "{what}");
        assert!(page.headers().get("location").is_none(), "{what}");
        assert!(
            page.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html"),
            "{what}"
        );
    }

    // A raw 0xFF byte in the request target: the HTTP parser refuses it with a bare 400
    // before the layer sees it (so no JSON), and the connection is closed.
    let mut request = b"GET /authorize?response_type=code&client_id=".to_vec();
    request.push(0xff);
    request.extend_from_slice(
        format!(
            "app&code_challenge={challenge}&code_challenge_method=S256 HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        .as_bytes(),
    );
    let answer = exchange(proxy.addr, request).await.unwrap();
    assert_eq!(answer.status, 400, "{answer:?}");

    // An escape that is not one is kept literally (as most servers read it): as a `state` it
    // is the client's own and comes back exactly.
    let pkce = Pkce::new();
    let query = format!(
        "{}&state=%ZZ%",
        authorize_query(CLIENT, REDIRECT, None, Some(&pkce.challenge))
    );
    let location = within(
        LIMIT,
        "a flow with state %ZZ%",
        sign_in_flow(&browser(), &base, &query),
    )
    .await;
    let p = params(&location);
    assert_eq!(p["state"], "%ZZ%", "{location}");
    let (status, body) = redeem(&base, &p["code"], Some(&pkce.verifier)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let forwarded = legacy.token_bodies.lock().unwrap().len();

    // Token requests against a bound code.
    let (code, pkce) = new_code(&base).await;
    let form = "application/x-www-form-urlencoded";
    let enc = support::urlencode(&code);
    let head = format!("grant_type=authorization_code&code={enc}&client_id={CLIENT}");
    let token_cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "verifier %C3%28",
            format!("{head}&code_verifier=%C3%28{}", "a".repeat(43)).into_bytes(),
            400,
            "invalid_request",
        ),
        (
            "verifier with a raw 0xFF",
            [
                format!("{head}&code_verifier=").as_bytes(),
                &[0xff],
                "a".repeat(43).as_bytes(),
            ]
            .concat(),
            400,
            "invalid_request",
        ),
        (
            "client_id %FF",
            format!(
                "grant_type=authorization_code&code={enc}&client_id=%FF&code_verifier={}",
                pkce.verifier
            )
            .into_bytes(),
            400,
            "invalid_request",
        ),
        (
            "a parameter name %FF",
            format!("{head}&%FF=1&code_verifier={}", pkce.verifier).into_bytes(),
            400,
            "invalid_request",
        ),
        // Valid UTF-8, but not a verifier: refused for that code (one failed attempt).
        (
            "verifier %ZZ…",
            format!("{head}&code_verifier=%ZZ{}", "a".repeat(41)).into_bytes(),
            400,
            "invalid_grant",
        ),
        // A code that is not UTF-8 (RFC 6749: VSCHAR) is not read at all.
        (
            "code %FF%FE",
            format!(
                "grant_type=authorization_code&code=%FF%FE&client_id={CLIENT}&code_verifier={}",
                pkce.verifier
            )
            .into_bytes(),
            400,
            "invalid_request",
        ),
        (
            "code %ZZ",
            format!(
                "grant_type=authorization_code&code=%ZZ&client_id={CLIENT}&code_verifier={}",
                pkce.verifier
            )
            .into_bytes(),
            400,
            "invalid_grant",
        ),
        // An undecodable grant_type: the request is not read, so it is not forwarded.
        (
            "grant_type %FF without verifier",
            format!("grant_type=%FF&code={enc}&client_id={CLIENT}").into_bytes(),
            400,
            "invalid_request",
        ),
    ];
    for (what, body, status, error) in token_cases {
        let response = post_token(&http, &base, form, body).await;
        oauth_error(what, response, StatusCode::from_u16(status).unwrap(), error).await;
    }
    // HTTP Basic that does not decode: invalid_client, 401, with a challenge.
    let bad_user = STANDARD.encode([&[0xffu8][..], b":secret"].concat());
    for credentials in ["!!!not-base64", bad_user.as_str()] {
        let response = within(
            LIMIT,
            "basic",
            http.post(proxy.url("/token"))
                .header("authorization", format!("Basic {credentials}"))
                .header("content-type", form)
                .body(redemption(&code, &pkce.verifier))
                .send(),
        )
        .await
        .unwrap();
        assert!(response.headers().contains_key("www-authenticate"));
        oauth_error(
            credentials,
            response,
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        )
        .await;
    }
    assert_eq!(
        legacy.token_bodies.lock().unwrap().len(),
        forwarded,
        "no malformed request reached the upstream"
    );
    // One failed attempt of five: the code still works with its verifier.
    let (status, body) = redeem(&base, &code, Some(&pkce.verifier)).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    assert_healthy(&proxy).await;
}

// ---------------------------------------------------------------------------------------------
// 4. Malformed JSON token bodies

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_token_bodies_are_invalid_request() {
    let (legacy, upstream) = legacy().await;
    let proxy = Proxy::start(upstream, &["--max-body", "1MiB"]).await;
    let base = proxy.url("");
    let http = client();
    let (code, pkce) = new_code(&base).await;
    let v = pkce.verifier.as_str();
    let grant = format!(r#""grant_type":"authorization_code","client_id":"{CLIENT}""#);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated",
            format!(r#"{{{grant},"code":"{code}","code_verifier":"{v}"#).into_bytes(),
            "invalid_request",
        ),
        ("100 000 [", "[".repeat(100_000).into_bytes(), "invalid_request"),
        (
            "a member nested 100 000 deep",
            format!(r#"{{{grant},"code":{}"#, "[".repeat(100_000)).into_bytes(),
            "invalid_request",
        ),
        (
            "objects nested 100 000 deep",
            r#"{"a":"#.repeat(100_000).into_bytes(),
            "invalid_request",
        ),
        (
            "code twice",
            format!(r#"{{{grant},"code":"{code}","code":"other","code_verifier":"{v}"}}"#)
                .into_bytes(),
            "invalid_request",
        ),
        (
            "code and CODE",
            format!(r#"{{{grant},"code":"{code}","CODE":"{code}","code_verifier":"{v}"}}"#)
                .into_bytes(),
            "invalid_request",
        ),
        (
            "code_verifier twice",
            format!(r#"{{{grant},"code":"{code}","code_verifier":"x","code_verifier":"{v}"}}"#)
                .into_bytes(),
            "invalid_request",
        ),
        (
            "an object as code",
            format!(r#"{{{grant},"code":{{"code":"{code}"}},"code_verifier":"{v}"}}"#)
                .into_bytes(),
            "invalid_request",
        ),
        (
            "an array as verifier",
            format!(r#"{{{grant},"code":"{code}","code_verifier":["{v}"]}}"#).into_bytes(),
            "invalid_request",
        ),
        (
            "1e999999 as code",
            format!(r#"{{{grant},"code":1e999999,"code_verifier":"{v}"}}"#).into_bytes(),
            "invalid_request",
        ),
        (
            "a 10 000 digit code",
            format!(r#"{{{grant},"code":{},"code_verifier":"{v}"}}"#, "9".repeat(10_000))
                .into_bytes(),
            "invalid_request",
        ),
        (
            "a number as code",
            format!(r#"{{{grant},"code":12345,"code_verifier":"{v}"}}"#).into_bytes(),
            "invalid_grant",
        ),
        (
            "a huge but finite number as code",
            format!(r#"{{{grant},"code":1.7976931348623157e308,"code_verifier":"{v}"}}"#)
                .into_bytes(),
            "invalid_grant",
        ),
        // Scalars are read as their text: `true` is not a verifier (one failed attempt).
        (
            "true as verifier",
            format!(r#"{{{grant},"code":"{code}","code_verifier":true}}"#).into_bytes(),
            "invalid_grant",
        ),
        (
            "null as client_id",
            format!(
                r#"{{"grant_type":"authorization_code","client_id":null,"code":"{code}","code_verifier":"{v}"}}"#
            )
            .into_bytes(),
            "invalid_request",
        ),
        ("an array", br#"["grant_type","code"]"#.to_vec(), "invalid_request"),
        (
            "a string",
            format!(r#""{}""#, redemption(&code, v)).into_bytes(),
            "invalid_request",
        ),
        ("null", b"null".to_vec(), "invalid_request"),
        ("a number", b"42".to_vec(), "invalid_request"),
        (
            "invalid UTF-8",
            [
                format!(r#"{{{grant},"code":"{code}","code_verifier":""#).as_bytes(),
                &[0xff, 0xfe],
                b"\"}",
            ]
            .concat(),
            "invalid_request",
        ),
        (
            "a lone surrogate",
            format!(r#"{{{grant},"code":"\ud800","code_verifier":"{v}"}}"#).into_bytes(),
            "invalid_request",
        ),
        (
            "trailing garbage",
            format!(r#"{{{grant},"code":"{code}","code_verifier":"{v}"}} x"#).into_bytes(),
            "invalid_request",
        ),
        (
            "two objects",
            format!(r#"{{{grant},"code":"{code}","code_verifier":"{v}"}}{{}}"#).into_bytes(),
            "invalid_request",
        ),
    ];
    for (what, body, error) in cases {
        let started = Instant::now();
        let response = post_token(&http, &base, "application/json", body).await;
        oauth_error(what, response, StatusCode::BAD_REQUEST, error).await;
        let took = started.elapsed();
        assert!(took < Duration::from_secs(2), "{what}: {took:?}");
    }
    assert!(
        legacy.token_bodies.lock().unwrap().is_empty(),
        "nothing reached the upstream"
    );

    // The same code, in well-formed JSON with its verifier: one failed attempt of five was
    // spent, the code is still good, and the upstream gets a form.
    let response = post_token(
        &http,
        &base,
        "application/json",
        format!(r#"{{{grant},"code":"{code}","code_verifier":"{v}"}}"#),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let received = legacy.token_bodies.lock().unwrap().clone();
    assert_eq!(received.len(), 1);
    assert!(received[0].starts_with(b"grant_type=authorization_code&client_id=app&code="));

    assert_healthy(&proxy).await;
}

// ---------------------------------------------------------------------------------------------
// 5 and 6. Oversized request heads

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_kb_authorize_query_is_refused_by_size() {
    let (_legacy, upstream) = legacy().await;
    let proxy = Proxy::start(upstream, &[]).await;
    let challenge = Pkce::new().challenge;
    let query = format!(
        "{}&junk={}",
        authorize_query(CLIENT, REDIRECT, Some("s"), Some(&challenge)),
        "a".repeat(200_000)
    );

    // HTTP/1.1: the request head is over the 64 KiB the proxy reads: 431, closed.
    let started = Instant::now();
    let (mut rd, mut wr) = TcpStream::connect(proxy.addr).await.unwrap().into_split();
    let request = format!("GET /authorize?{query} HTTP/1.1\r\nHost: x\r\n\r\n");
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(request.as_bytes()).await;
        wr
    });
    let answer = within(LIMIT, "200 kB query", read_response(&mut rd))
        .await
        .unwrap();
    assert_eq!(answer.status, 431, "{answer:?}");
    closed_within(&mut rd, LIMIT, "the connection after 431").await;
    writer.abort();
    println!(
        "200 kB query over HTTP/1.1: 431 after {:?}",
        started.elapsed()
    );

    // HTTP/2: the header list is over the advertised SETTINGS_MAX_HEADER_LIST_SIZE: the
    // stream is answered 431 or refused, or the connection is closed; never forwarded.
    let (mut rd, wr, settings) = h2_connect(proxy.addr).await;
    assert!(
        settings.contains(&(MAX_HEADER_LIST_SIZE, 64 * 1024)),
        "{settings:?}"
    );
    let block = h2_request("GET", &format!("/authorize?{query}"), "x", &[]);
    let mut wr = Some(wr);
    wr.as_mut()
        .unwrap()
        .write_all(&h2_headers(1, &block, true))
        .await
        .unwrap();
    let outcome = h2_observe(&mut rd, &mut wr, LIMIT, |o| {
        o.reset.contains_key(&1) || o.goaway.is_some()
    })
    .await;
    println!("200 kB query over HTTP/2: {outcome:?}");
    assert_oversize_refused(&outcome);

    // Under the transport's limit the layer's own applies: a 60 kB state is over the 1 KiB
    // a pending flow may keep.
    let url = proxy.url(&format!(
        "/authorize?{}",
        authorize_query(
            CLIENT,
            REDIRECT,
            Some(&"s".repeat(60_000)),
            Some(&challenge)
        )
    ));
    let response = within(LIMIT, "60 kB state", client().get(&url).send())
        .await
        .unwrap();
    oauth_error(
        "60 kB state",
        response,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;

    assert_healthy(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_floods_are_431() {
    let (legacy, upstream) = legacy().await;
    let proxy = Proxy::start(upstream, &[]).await;
    let head = |path: &str, headers: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: 0\r\n{headers}\r\n"
        )
        .into_bytes()
    };
    let ten_thousand: String = (0..10_000).map(|i| format!("X-Flood-{i}: v\r\n")).collect();
    // Small, but more than the 100 header fields the HTTP/1 parser takes.
    let two_hundred: String = (0..200).map(|i| format!("X-{i}: v\r\n")).collect();
    let one_mib = format!("X-Big: {}\r\n", "v".repeat(1024 * 1024));
    for path in ["/token", "/authorize", "/resource"] {
        for (what, headers) in [
            ("10 000 headers", &ten_thousand),
            ("200 headers", &two_hundred),
            ("a 1 MiB header", &one_mib),
        ] {
            let started = Instant::now();
            let answer = exchange(proxy.addr, head(path, headers))
                .await
                .unwrap_or_else(|e| panic!("{what} on {path}: {e}"));
            // The HTTP parser answers before routing: a bare 431, on the OAuth endpoints too.
            assert_eq!(answer.status, 431, "{what} on {path}: {answer:?}");
            assert!(started.elapsed() < Duration::from_secs(2));
        }
    }

    // HTTP/2: 10 000 headers in one header block (a HEADERS and CONTINUATION frames).
    let extra: Vec<(String, String)> = (0..10_000)
        .map(|i| (format!("x-flood-{i}"), "v".to_owned()))
        .collect();
    let extra: Vec<(&str, &str)> = extra
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let (mut rd, wr, _) = h2_connect(proxy.addr).await;
    let mut wr = Some(wr);
    let block = h2_request("GET", "/resource", "x", &extra);
    let frames = h2_headers(1, &block, true);
    let mut w = wr.take().unwrap();
    let writer = tokio::spawn(async move {
        let _ = w.write_all(&frames).await;
        w
    });
    let outcome = h2_observe(&mut rd, &mut None, LIMIT, |o| {
        o.reset.contains_key(&1) || o.goaway.is_some()
    })
    .await;
    println!("10 000 headers over HTTP/2: {outcome:?}");
    assert_oversize_refused(&outcome);
    writer.abort();

    // HTTP/2 CONTINUATION flood: a header block that never ends. The proxy must stop
    // reading (GOAWAY or close) long before 64 MiB.
    let (mut rd, mut wr, _) = h2_connect(proxy.addr).await;
    let mut first = Vec::new();
    hpack_literal(&mut first, b":method", b"GET");
    wr.write_all(&h2_frame(HEADERS, END_STREAM, 1, &first))
        .await
        .unwrap();
    let mut filler = Vec::new();
    while filler.len() < 16 * 1024 - 64 {
        hpack_literal(&mut filler, b"x-flood", b"vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv");
    }
    let continuation = h2_frame(CONTINUATION, 0, 1, &filler);
    let flood = tokio::spawn(async move {
        let mut sent = 0usize;
        while sent < 64 * 1024 * 1024 {
            if wr.write_all(&continuation).await.is_err() {
                return (sent, true);
            }
            sent += continuation.len();
        }
        (sent, false)
    });
    let outcome = h2_observe(&mut rd, &mut None, Duration::from_secs(20), |o| {
        o.goaway.is_some()
    })
    .await;
    let (sent, cut_off) = within(LIMIT, "the CONTINUATION flood's writer", flood)
        .await
        .unwrap();
    println!("CONTINUATION flood: {outcome:?}; {sent} bytes written, cut off: {cut_off}");
    assert!(
        outcome.goaway.is_some_and(|(last, _)| last == 0),
        "the proxy kept reading an endless header block: {outcome:?}"
    );
    assert!(cut_off, "all 64 MiB were taken");
    assert!(outcome.answered.is_empty(), "{outcome:?}");

    assert!(legacy.token_bodies.lock().unwrap().is_empty());
    assert_healthy(&proxy).await;
}

// ---------------------------------------------------------------------------------------------
// 7. HTTP/2 stream floods

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_stream_flood_meets_the_concurrency_limit() {
    let (_legacy, upstream) = legacy().await;
    let proxy = Proxy::start(upstream, &["--admin-listen", "127.0.0.1:0"]).await;
    let authority = proxy.addr.to_string();

    // At the limit: 256 streams held open for 5 s by a slow page of the upstream's, then one
    // more. That one is refused (REFUSED_STREAM: safe to retry) and the connection lives on;
    // another client's flow meanwhile is not held up; the 256 are served.
    let (mut rd, wr, settings) = h2_connect(proxy.addr).await;
    assert!(
        settings.contains(&(MAX_CONCURRENT_STREAMS, 256)),
        "{settings:?}"
    );
    let slow = h2_request("GET", "/slow?ms=5000", &authority, &[]);
    let mut frames = Vec::new();
    for i in 0..257u32 {
        frames.extend(h2_frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            2 * i + 1,
            &slow,
        ));
    }
    let mut wr = Some(wr);
    wr.as_mut().unwrap().write_all(&frames).await.unwrap();
    let opened = Instant::now();
    let refused = h2_observe(&mut rd, &mut wr, LIMIT, |o| {
        !o.reset.is_empty() || o.goaway.is_some()
    })
    .await;
    assert_eq!(
        refused.reset,
        BTreeMap::from([(513, REFUSED_STREAM)]),
        "{refused:?}"
    );
    assert!(
        refused.answered.is_empty() && refused.goaway.is_none(),
        "{refused:?}"
    );
    let started = Instant::now();
    assert_healthy(&proxy).await;
    let took = started.elapsed();
    println!("a flow beside 256 slow streams took {took:?}");
    assert!(
        opened.elapsed() < Duration::from_secs(5),
        "the flow finished only after the slow streams: {took:?}"
    );
    let served = h2_observe(&mut rd, &mut wr, Duration::from_secs(20), |o| {
        o.answered.len() == 256
    })
    .await;
    let expected: BTreeMap<u32, Option<u16>> = (0..256).map(|i| (2 * i + 1, Some(200))).collect();
    assert_eq!(served.answered, expected, "{served:?}");
    assert!(
        served.reset.is_empty() && served.goaway.is_none(),
        "{served:?}"
    );
    drop((rd, wr));

    // A client that ignores the limit: 5 000 streams at once, each held open for 3 s.
    const STREAMS: u32 = 5_000;
    let (mut rd, wr, _) = h2_connect(proxy.addr).await;
    let block = h2_request("GET", "/slow?ms=3000", &authority, &[]);
    let mut burst = Vec::new();
    for i in 0..STREAMS {
        burst.extend(h2_frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            2 * i + 1,
            &block,
        ));
    }
    let mut w = wr;
    let writer = tokio::spawn(async move {
        let _ = w.write_all(&burst).await;
        w
    });
    // Meanwhile, another client completes a whole flow.
    let base = proxy.url("");
    let during = tokio::spawn(async move {
        let started = Instant::now();
        let (code, pkce) = new_code(&base).await;
        let (status, body) = redeem(&base, &code, Some(&pkce.verifier)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        started.elapsed()
    });
    let outcome = h2_observe(&mut rd, &mut None, Duration::from_secs(20), |o| {
        o.answered.len() + o.reset.len() >= STREAMS as usize
    })
    .await;
    let refused = outcome
        .reset
        .values()
        .filter(|r| **r == REFUSED_STREAM)
        .count();
    println!(
        "stream flood: {} answered ({:?} of them 200), {} reset ({refused} refused), goaway {:?}, closed {}",
        outcome.answered.len(),
        outcome.answered.values().filter(|s| **s == Some(200)).count(),
        outcome.reset.len(),
        outcome.goaway,
        outcome.closed
    );
    // No more than the limit were taken (streams 1, 3, …, 511); the next ones were refused
    // (REFUSED_STREAM: safe to retry), until the proxy gave up on the connection (h2 allows
    // 1 024 such resets) with ENHANCE_YOUR_CALM.
    assert!(outcome.answered.len() <= 256, "{outcome:?}");
    assert!(refused > 0, "{outcome:?}");
    assert!(
        outcome
            .reset
            .keys()
            .all(|id| *id > 511 && outcome.reset[id] == REFUSED_STREAM),
        "{outcome:?}"
    );
    match outcome.goaway {
        Some((last, code)) => {
            assert!(last <= 511, "more than 256 streams taken: {outcome:?}");
            assert_eq!(code, ENHANCE_YOUR_CALM, "{outcome:?}");
        }
        None => assert_eq!(
            outcome.answered.len() + outcome.reset.len(),
            STREAMS as usize,
            "streams left without an answer, and no GOAWAY: {outcome:?}"
        ),
    }
    let took = within(Duration::from_secs(30), "a flow during the flood", during)
        .await
        .unwrap();
    println!("a flow during the stream flood took {took:?}");
    writer.abort();
    drop(rd);
    await_metric(&proxy, "pkce_proxy_requests_in_flight", 0.0).await;
    assert_healthy(&proxy).await;

    // A well-behaved client with 5 000 concurrent requests on one connection: it keeps to the
    // limit, and all of them are served.
    let before = metric(&proxy, "pkce_proxy_connections_total")
        .await
        .unwrap();
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    // One request first, so the client's connection is up before the 5 000 start. Fired all
    // at once on a cold client, they can race to connect and open a second connection: this
    // assertion failed about once in seven runs of this file on 2 cores (at `d0f6596` too),
    // and in none of ten with the connection up first.
    let first = h2.get(proxy.url("/resource")).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let started = Instant::now();
    let tasks: Vec<_> = (0..5_000)
        .map(|_| {
            let h2 = h2.clone();
            let url = proxy.url("/resource");
            // The body is read to its end: a response dropped after its status makes the
            // client cancel the stream, and DATA then arriving for a stream the client has
            // already forgotten counts as one of the client's own protocol-error resets. At
            // 1 024 of those, h2's client gives up on the connection itself
            // ("too_many_internal_resets"): CI saw that once at `f512bf6`.
            tokio::spawn(async move {
                let response = h2.get(url).send().await?;
                let status = response.status();
                response.bytes().await?;
                Ok::<_, reqwest::Error>(status)
            })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        if task.await.unwrap().unwrap() == StatusCode::OK {
            ok += 1;
        }
    }
    println!("5 000 requests on one connection: {:?}", started.elapsed());
    assert_eq!(ok, 5_000);
    assert_eq!(
        metric(&proxy, "pkce_proxy_connections_total").await,
        Some(before + 1.0),
        "one connection"
    );
    assert_healthy(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_rapid_reset_is_cut_off() {
    let (_legacy, upstream) = legacy().await;
    let proxy = Proxy::start(upstream, &["--admin-listen", "127.0.0.1:0"]).await;
    let authority = proxy.addr.to_string();
    let (mut rd, wr, _) = h2_connect(proxy.addr).await;
    // Open a stream and cancel it at once, 10 000 times (CVE-2023-44487).
    let block = h2_request("GET", "/slow?ms=2000", &authority, &[]);
    let mut burst = Vec::new();
    for i in 0..10_000u32 {
        let id = 2 * i + 1;
        burst.extend(h2_frame(HEADERS, END_STREAM | END_HEADERS, id, &block));
        burst.extend(h2_frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
    }
    let mut w = wr;
    let writer = tokio::spawn(async move {
        let _ = w.write_all(&burst).await;
        w
    });
    let outcome = h2_observe(&mut rd, &mut None, LIMIT, |o| o.goaway.is_some()).await;
    println!(
        "rapid reset: goaway {:?}, {} answered, {} reset, closed {}",
        outcome.goaway,
        outcome.answered.len(),
        outcome.reset.len(),
        outcome.closed
    );
    assert_eq!(
        outcome.goaway.map(|(_, code)| code),
        Some(ENHANCE_YOUR_CALM),
        "{outcome:?}"
    );
    closed_within(&mut rd, LIMIT, "the connection after GOAWAY").await;
    writer.abort();
    await_metric(&proxy, "pkce_proxy_requests_in_flight", 0.0).await;
    assert_healthy(&proxy).await;
}

// ---------------------------------------------------------------------------------------------
// 8. A flood that fills the store

/// An authorization request for a fresh challenge, as an attacker floods them: it starts a
/// flow that will never finish. `state` and `redirect_uri` are as long as the layer keeps
/// (1 KiB and 2 KiB), so that every kept flow weighs its most.
fn flood_url(base: &str, i: usize) -> String {
    let pkce = Pkce::new();
    let redirect = format!("https://app.example/cb/{}", "r".repeat(2000));
    let state = format!("{i:08}{}", "s".repeat(1000));
    format!(
        "{base}/authorize?{}",
        authorize_query(CLIENT, &redirect, Some(&state), Some(&pkce.challenge))
    )
}

/// Sends `n` flood requests, `concurrency` at a time; returns the statuses seen, and the
/// first 503's `Retry-After` and body.
async fn flood(
    base: &str,
    n: usize,
    concurrency: usize,
) -> (BTreeMap<u16, usize>, Option<(String, Value)>) {
    let http = client();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new((BTreeMap::new(), None)));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (http, next, seen, base) =
                (http.clone(), next.clone(), seen.clone(), base.to_owned());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        return;
                    }
                    let response = http.get(flood_url(&base, i)).send().await.unwrap();
                    let status = response.status().as_u16();
                    let retry = response
                        .headers()
                        .get("retry-after")
                        .map(|v| v.to_str().unwrap().to_owned());
                    let body = response.json::<Value>().await.unwrap_or(Value::Null);
                    let mut seen = seen.lock().unwrap();
                    *seen.0.entry(status).or_insert(0) += 1;
                    if status == 503 && seen.1.is_none() {
                        seen.1 = Some((retry.unwrap_or_default(), body));
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        within(Duration::from_secs(120), "the flood", worker)
            .await
            .unwrap();
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_fills_the_store_but_flows_in_progress_complete() {
    const CAPACITY: usize = 500;
    let (_legacy, upstream) = legacy().await;
    let proxy = Proxy::start(
        upstream,
        &[
            "--max-pending",
            "500",
            "--pending-ttl",
            "20s",
            "--admin-listen",
            "127.0.0.1:0",
        ],
    )
    .await;
    let base = proxy.url("");
    let started = Instant::now();

    // Before the flood: a flow with its code (one code record), and a flow at the sign-in
    // page (one pending flow).
    let (code, pkce) = new_code(&base).await;
    let waiting = Pkce::new();
    let waiting_browser = browser();
    let next = open_sign_in(
        &waiting_browser,
        &base,
        &authorize_query(CLIENT, REDIRECT, Some("waiting"), Some(&waiting.challenge)),
    )
    .await;

    // The flood fills what is left, then is refused.
    let (statuses, first_503) = flood(&base, CAPACITY + 100, 8).await;
    assert_eq!(
        statuses,
        BTreeMap::from([(302, CAPACITY - 2), (503, 102)]),
        "exactly the capacity is taken"
    );
    let (retry_after, body) = first_503.unwrap();
    assert_eq!(retry_after, "1");
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    let rss_full = rss_kib(&proxy);

    // A browser gets a page that says so, with Retry-After.
    let page = within(
        LIMIT,
        "authorize when full",
        client()
            .get(flood_url(&base, 0))
            .header("accept", "text/html")
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(page.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(page.headers()["retry-after"], "1");
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));

    // Flows in progress are not evicted: the one at the sign-in page gets its code, and both
    // codes are redeemed.
    let location = submit_sign_in(&waiting_browser, &base, &next).await;
    let p = params(&location);
    assert_eq!(p["state"], "waiting", "{location}");
    let (status, body) = redeem(&base, &p["code"], Some(&waiting.verifier)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = redeem(&base, &code, Some(&pkce.verifier)).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Twice as many more attempts: all refused, and memory does not grow with them.
    let (statuses, _) = flood(&base, 2 * (CAPACITY + 100), 8).await;
    assert_eq!(statuses, BTreeMap::from([(503, 2 * (CAPACITY + 100))]));
    let rss_after = rss_kib(&proxy);
    println!("RSS at full {rss_full} KiB, after 1 200 more attempts {rss_after} KiB");
    assert!(
        rss_after <= rss_full + 2048,
        "RSS grew from {rss_full} to {rss_after} KiB while every flow was refused"
    );
    let refused = metric(
        &proxy,
        "pkce_decisions_total{outcome=\"refused\",reason=\"store_full\"}",
    )
    .await;
    assert_eq!(refused, Some((102 + 1 + 2 * (CAPACITY + 100)) as f64));

    // The flood's flows expire with --pending-ttl; then new flows are taken again.
    // 20 s: the floods take about 12 s on a loaded 2-core machine (CI runs this beside the
    // other hostile tests), and must end before the first flows expire.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the test ran past the pending TTL: {:?}",
        started.elapsed()
    );
    let deadline = started + Duration::from_secs(20 + 10);
    loop {
        let status = within(LIMIT, "authorize", client().get(flood_url(&base, 0)).send())
            .await
            .unwrap()
            .status();
        if status == StatusCode::FOUND {
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(Instant::now() < deadline, "the store stayed full");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!("the store took flows again after {:?}", started.elapsed());
    assert_healthy(&proxy).await;
}

// ---------------------------------------------------------------------------------------------
// 9. Soak

#[derive(Default)]
struct Tally {
    legit_ok: u64,
    abandoned: u64,
    legit_failed: Vec<String>,
    refused: BTreeMap<&'static str, u64>,
    let_through: Vec<String>,
}

impl Tally {
    fn refused(&mut self, attack: &'static str) {
        *self.refused.entry(attack).or_insert(0) += 1;
    }
}

type Shared = Arc<Mutex<Tally>>;

/// One attack on the token endpoint: refused if `invalid_grant`.
async fn token_attack(tally: &Shared, attack: &'static str, (status, body): (StatusCode, Value)) {
    if status == StatusCode::BAD_REQUEST && body["error"] == "invalid_grant" {
        tally.lock().unwrap().refused(attack);
    } else {
        tally
            .lock()
            .unwrap()
            .let_through
            .push(format!("{attack}: {status} {body}"));
    }
}

/// A legitimate flow, with every attack on its code a thief could try around it.
async fn legit_round(base: String, tally: Shared) {
    let (code, pkce) = new_code(&base).await;
    token_attack(
        &tally,
        "wrong verifier",
        redeem(&base, &code, Some(&Pkce::new().verifier)).await,
    )
    .await;
    token_attack(&tally, "no verifier", redeem(&base, &code, None).await).await;
    token_attack(
        &tally,
        "stolen code",
        token(
            &base,
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("client_id", OTHER_CLIENT),
                ("redirect_uri", OTHER_REDIRECT),
                ("code_verifier", &pkce.verifier),
            ],
        )
        .await,
    )
    .await;
    let (status, body) = redeem(&base, &code, Some(&pkce.verifier)).await;
    if status == StatusCode::OK && body["access_token"].is_string() {
        tally.lock().unwrap().legit_ok += 1;
    } else {
        tally
            .lock()
            .unwrap()
            .legit_failed
            .push(format!("{status} {body}"));
    }
    token_attack(
        &tally,
        "replay",
        redeem(&base, &code, Some(&pkce.verifier)).await,
    )
    .await;
}

/// Attacks that need no code of anyone's.
async fn attack_round(base: String, tally: Shared, i: usize) {
    let http = client();
    let pkce = Pkce::new();
    let authorize = |query: String| {
        let http = http.clone();
        let url = format!("{base}/authorize?{query}");
        async move { http.get(url).send().await.unwrap() }
    };
    let plain = format!(
        "{}&code_challenge={}&code_challenge_method=plain",
        authorize_query(CLIENT, REDIRECT, Some("x"), None),
        pkce.verifier
    );
    let no_method = format!(
        "{}&code_challenge={}",
        authorize_query(CLIENT, REDIRECT, Some("x"), None),
        pkce.verifier
    );
    for (attack, query) in [
        ("downgrade to plain", plain),
        ("challenge without method", no_method),
        (
            "no challenge",
            authorize_query(CLIENT, REDIRECT, Some("x"), None),
        ),
    ] {
        let response = authorize(query).await;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status == StatusCode::BAD_REQUEST && body["error"] == "invalid_request" {
            tally.lock().unwrap().refused(attack);
        } else {
            tally
                .lock()
                .unwrap()
                .let_through
                .push(format!("{attack}: {status} {body}"));
        }
    }
    token_attack(
        &tally,
        "guessed code",
        redeem(&base, &format!("guess-{i}"), Some(&pkce.verifier)).await,
    )
    .await;
    // An abandoned flow, as a flood leaves them.
    let status = http.get(flood_url(&base, i)).send().await.unwrap().status();
    if status == StatusCode::FOUND {
        tally.lock().unwrap().abandoned += 1;
    } else {
        tally
            .lock()
            .unwrap()
            .legit_failed
            .push(format!("an abandoned flow's authorize: {status}"));
    }
}

/// A soak: legitimate flows mixed with attacks (wrong verifier, no verifier, stolen code,
/// replay, downgrade to plain, no challenge, guessed codes, abandoned flows), for
/// `TOWER_PKCE_SOAK_SECS` seconds (default 600). Every legitimate flow must succeed and every
/// attack be refused; afterwards, once the TTLs have passed, the store must be empty again
/// (it takes exactly its capacity of new flows) and memory must not have kept growing.
///
/// ```sh
/// TOWER_PKCE_SOAK_SECS=30 cargo test --all-features --test hostile -- --ignored soak --nocapture
/// ```
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long; run with `-- --ignored soak`"]
async fn soak_legitimate_flows_survive_a_mix_of_attacks() {
    const CAPACITY: usize = 4_000;
    const TTL: Duration = Duration::from_secs(3);
    let secs: u64 = std::env::var("TOWER_PKCE_SOAK_SECS")
        .ok()
        .map(|s| s.parse().expect("TOWER_PKCE_SOAK_SECS is a number"))
        .unwrap_or(600);
    let (_legacy, upstream) = legacy().await;
    let proxy = Proxy::start(
        upstream,
        &[
            "--max-pending",
            "4000",
            "--pending-ttl",
            "3s",
            "--code-ttl",
            "3s",
            "--admin-listen",
            "127.0.0.1:0",
        ],
    )
    .await;
    let base = proxy.url("");
    assert_healthy(&proxy).await;
    let rss_start = rss_kib(&proxy);

    let tally: Shared = Arc::default();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut workers = Vec::new();
    for _ in 0..6 {
        let (base, tally) = (base.clone(), tally.clone());
        workers.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                // A panic (a refused step of the flow itself) is a failed legitimate flow.
                let round = tokio::spawn(legit_round(base.clone(), tally.clone()));
                match tokio::time::timeout(Duration::from_secs(30), round).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tally.lock().unwrap().legit_failed.push(e.to_string()),
                    Err(_) => tally.lock().unwrap().legit_failed.push("hung".into()),
                }
            }
        }));
    }
    for w in 0..2 {
        let (base, tally) = (base.clone(), tally.clone());
        workers.push(tokio::spawn(async move {
            let mut i = w;
            while Instant::now() < deadline {
                let round = tokio::spawn(attack_round(base.clone(), tally.clone(), i));
                match tokio::time::timeout(Duration::from_secs(30), round).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tally.lock().unwrap().let_through.push(e.to_string()),
                    Err(_) => tally.lock().unwrap().let_through.push("hung".into()),
                }
                i += 2;
            }
        }));
    }
    // Memory, sampled ten times over the run.
    let mut samples = Vec::new();
    for k in 1..=10u32 {
        tokio::time::sleep_until((deadline - Duration::from_secs(secs) * (10 - k) / 10).into())
            .await;
        samples.push(rss_kib(&proxy));
    }
    for w in workers {
        within(Duration::from_secs(60), "a soak worker", w)
            .await
            .unwrap();
    }
    let tally = std::mem::take(&mut *tally.lock().unwrap());
    println!(
        "soak {secs}s: {} legitimate flows, {} abandoned, refused {:?}; RSS {rss_start} KiB at the start, samples {samples:?}",
        tally.legit_ok, tally.abandoned, tally.refused
    );
    assert!(
        tally.legit_failed.is_empty(),
        "{} legitimate flows failed, e.g. {:?}",
        tally.legit_failed.len(),
        &tally.legit_failed[..tally.legit_failed.len().min(5)]
    );
    assert!(
        tally.let_through.is_empty(),
        "{} attacks were not refused, e.g. {:?}",
        tally.let_through.len(),
        &tally.let_through[..tally.let_through.len().min(5)]
    );
    assert!(tally.legit_ok > 0);
    for attack in [
        "wrong verifier",
        "no verifier",
        "stolen code",
        "replay",
        "downgrade to plain",
        "challenge without method",
        "no challenge",
        "guessed code",
    ] {
        assert!(
            tally.refused.get(attack).is_some_and(|n| *n > 0),
            "{attack}"
        );
    }
    // Memory levels off: the second half of the run holds no more than the first half's peak,
    // give or take allocator noise.
    let peak_first_half = *samples[..5].iter().max().unwrap();
    let peak_second_half = *samples[5..].iter().max().unwrap();
    assert!(
        peak_second_half <= peak_first_half + peak_first_half / 10 + 4096,
        "RSS kept growing: {samples:?}"
    );

    // Once the TTLs have passed, everything the soak left in the store has expired: the
    // store takes exactly its capacity of new flows.
    tokio::time::sleep(TTL + Duration::from_millis(1500)).await;
    let rss_idle = rss_kib(&proxy);
    // One request at a time: `MemoryStore` refuses a request that finds the store full (of
    // expired flows) while another request is sweeping them out, so concurrent requests
    // would see a few spurious 503s here.
    let (statuses, _) = flood(&base, CAPACITY, 1).await;
    println!("after the TTL: RSS {rss_idle} KiB; a fill of the store: {statuses:?}");
    assert_eq!(statuses, BTreeMap::from([(302, CAPACITY)]));
    assert!(rss_idle <= peak_second_half.max(peak_first_half) + 4096);

    tokio::time::sleep(TTL + Duration::from_millis(1500)).await;
    assert_healthy(&proxy).await;
}
