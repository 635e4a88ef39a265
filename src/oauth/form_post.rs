//! `response_mode=form_post` (OAuth 2.0 Form Post Response Mode): the authorization response is
//! an HTML page whose form POSTs `code` (or `error`), `state` and maybe `iss` to the redirect
//! URI. The layer finds its handle in the `state` input, binds the code, and writes the
//! client's own state back.
//!
//! The reading is deliberately narrow: `<input>` tags anywhere in the page, attributes quoted
//! or not, entities decoded. A page with two `state`, `code` or `error` inputs, or a `state`
//! that is not one of the layer's handles, is not read (its code stays unknown to the layer and
//! fails closed at the token endpoint).

use std::borrow::Cow;
use std::ops::Range;

use super::redirect::is_handle;

/// The largest page the layer reads for a form_post response. Longer pages pass unread.
pub(crate) const MAX_PAGE_BYTES: usize = 64 * 1024;

/// A form_post authorization response found in a page. No `Debug`: it holds the code.
pub(crate) struct Capture {
    /// The handle in the `state` input.
    pub(crate) handle: String,
    /// The `code` input's value, if any.
    pub(crate) code: Option<String>,
    /// Whether the form carries `error`.
    pub(crate) error: bool,
    /// The form's `action`, decoded: where the browser will POST.
    pub(crate) action: Option<String>,
    /// The whole `state` input tag, as a byte range of the page.
    state_tag: Range<usize>,
}

/// One HTML tag's name and attributes.
struct Tag<'a> {
    name: &'a str,
    span: Range<usize>,
    attributes: Vec<(&'a str, Cow<'a, str>)>,
}

impl Tag<'_> {
    fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_ref())
    }
}

/// Every start tag of `html`, in order. Comments, and the contents of `<script>` and `<style>`,
/// are skipped as a browser would.
fn tags(html: &str) -> Vec<Tag<'_>> {
    let bytes = html.as_bytes();
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(offset) = html.get(at..).and_then(|rest| rest.find('<')) {
        let start = at + offset;
        let rest = html.get(start..).unwrap_or_default();
        if rest.starts_with("<!--") {
            at = rest.find("-->").map_or(html.len(), |end| start + end + 3);
            continue;
        }
        let name_len = rest
            .get(1..)
            .unwrap_or_default()
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(rest.len().saturating_sub(1));
        if name_len == 0 {
            at = start + 1;
            continue;
        }
        let name = rest.get(1..1 + name_len).unwrap_or_default();
        let (attributes, end) = attributes(html, start + 1 + name_len);
        out.push(Tag {
            name,
            span: start..end,
            attributes,
        });
        at = end;
        // Raw text elements: their content is not markup.
        for raw in ["script", "style"] {
            if name.eq_ignore_ascii_case(raw) {
                let close = format!("</{raw}");
                at = find_ignore_case(bytes, close.as_bytes(), end).unwrap_or(html.len());
            }
        }
    }
    out
}

fn find_ignore_case(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
        .map(|i| from + i)
}

/// Reads attributes from `at` to the tag's `>`; returns them and the offset after the tag.
fn attributes(html: &str, mut at: usize) -> (Vec<(&str, Cow<'_, str>)>, usize) {
    let bytes = html.as_bytes();
    let mut out = Vec::new();
    let skip_space = |mut i: usize| {
        while bytes
            .get(i)
            .is_some_and(|b| b.is_ascii_whitespace() || *b == b'/')
        {
            i += 1;
        }
        i
    };
    loop {
        at = skip_space(at);
        match bytes.get(at) {
            None => return (out, html.len()),
            Some(b'>') => return (out, at + 1),
            Some(_) => {}
        }
        let name_start = at;
        while bytes
            .get(at)
            .is_some_and(|b| !b.is_ascii_whitespace() && !matches!(b, b'=' | b'>' | b'/'))
        {
            at += 1;
        }
        let name = html.get(name_start..at).unwrap_or_default();
        while bytes.get(at).is_some_and(u8::is_ascii_whitespace) {
            at += 1;
        }
        if bytes.get(at) != Some(&b'=') {
            out.push((name, Cow::Borrowed("")));
            continue;
        }
        at += 1;
        while bytes.get(at).is_some_and(u8::is_ascii_whitespace) {
            at += 1;
        }
        let (raw, next) = match bytes.get(at) {
            Some(&quote @ (b'"' | b'\'')) => {
                let end = html
                    .get(at + 1..)
                    .and_then(|r| r.find(quote as char))
                    .map_or(html.len(), |e| at + 1 + e);
                (html.get(at + 1..end).unwrap_or_default(), end + 1)
            }
            _ => {
                let start = at;
                while bytes
                    .get(at)
                    .is_some_and(|b| !b.is_ascii_whitespace() && *b != b'>')
                {
                    at += 1;
                }
                (html.get(start..at).unwrap_or_default(), at)
            }
        };
        out.push((name, html_escape::decode_html_entities(raw)));
        at = next;
    }
}

/// Finds a form_post authorization response in `html`: exactly one `state` input holding a
/// handle, and a single `code` or `error` input beside it.
pub(crate) fn capture(html: &str) -> Option<Capture> {
    let tags = tags(html);
    let action = tags
        .iter()
        .find(|t| t.name.eq_ignore_ascii_case("form"))
        .and_then(|t| t.attribute("action"))
        .map(str::to_owned);
    let inputs: Vec<&Tag<'_>> = tags
        .iter()
        .filter(|t| t.name.eq_ignore_ascii_case("input"))
        .collect();
    let named = |name: &str| -> Vec<&Tag<'_>> {
        inputs
            .iter()
            .copied()
            .filter(|t| t.attribute("name") == Some(name))
            .collect()
    };
    let (states, codes, errors) = (named("state"), named("code"), named("error"));
    let [state] = states.as_slice() else {
        return None;
    };
    if codes.len() > 1 || errors.len() > 1 || codes.len() + errors.len() == 0 {
        return None;
    }
    let handle = state.attribute("value")?;
    if !is_handle(handle.as_bytes()) {
        return None;
    }
    let code = codes
        .first()
        .and_then(|t| t.attribute("value"))
        .filter(|v| !v.is_empty())
        .map(str::to_owned);
    if code.is_none() && errors.is_empty() {
        // An empty `code` input (a template that renders every field, a one-time-password
        // page) is no authorization response.
        return None;
    }
    Some(Capture {
        handle: handle.to_owned(),
        code,
        error: !errors.is_empty(),
        action,
        state_tag: state.span.clone(),
    })
}

/// `html` with the `state` input carrying the client's own `state`, HTML-escaped, or an empty
/// comment in its place when the client sent none.
pub(crate) fn restore_state(html: &str, capture: &Capture, state: Option<&str>) -> String {
    let Range { start, end } = capture.state_tag.clone();
    let mut out = String::with_capacity(html.len() + state.map_or(0, str::len) * 2);
    out.push_str(html.get(..start).unwrap_or_default());
    match state {
        Some(state) => {
            out.push_str(r#"<input type="hidden" name="state" value=""#);
            out.push_str(&html_escape::encode_double_quoted_attribute(state));
            out.push_str(r#""/>"#);
        }
        // An empty comment in place of the tag: removing it outright could join the text on
        // either side into a new tag (`<` + `input name=state …>`, found by fuzzing).
        None => out.push_str("<!---->"),
    }
    out.push_str(html.get(end..).unwrap_or_default());
    out
}

/// The values of every `<input>` named `name`, as this reader reads them (for fuzzing).
#[cfg(feature = "fuzzing")]
pub(crate) fn input_values(html: &str, name: &str) -> Vec<String> {
    tags(html)
        .iter()
        .filter(|t| t.name.eq_ignore_ascii_case("input") && t.attribute("name") == Some(name))
        .map(|t| t.attribute("value").unwrap_or_default().to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "Qm9vdHN0cmFwSGFuZGxlMQ";

    fn page(inputs: &str) -> String {
        format!(
            "<!DOCTYPE html><html><head><title>Submit</title></head>\
             <body onload=\"document.forms[0].submit()\">\
             <form method=\"post\" action=\"https://app.example/cb?x=1&amp;y=2\">{inputs}\
             <noscript><button>Continue</button></noscript></form></body></html>"
        )
    }

    proptest::proptest! {
        /// Any client state comes back exactly as the browser will read it, HTML-escaped.
        #[test]
        fn any_state_round_trips_through_the_page(state in "[ -~]{0,64}|\\PC{0,16}") {
            let html = page(&format!(
                r#"<input type="hidden" name="code" value="c1"/><input type="hidden" name="state" value="{H}"/>"#
            ));
            let found = capture(&html).expect("a form_post response");
            let restored = restore_state(&html, &found, Some(&state));
            let tags = tags(&restored);
            let states: Vec<&str> = tags
                .iter()
                .filter(|t| t.attribute("name") == Some("state"))
                .filter_map(|t| t.attribute("value"))
                .collect();
            proptest::prop_assert_eq!(states, vec![state.as_str()]);
            let codes = tags.iter().filter(|t| t.attribute("name") == Some("code")).count();
            proptest::prop_assert_eq!(codes, 1);
        }

        /// Arbitrary text never panics the reader.
        #[test]
        fn arbitrary_pages_never_panic(html in "\\PC{0,300}|[<>=\"' a-z/!-]{0,300}") {
            let _ = capture(&html);
        }
    }

    #[test]
    fn a_handle_is_long_enough_for_these_tests() {
        assert!(
            is_handle(H.as_bytes()),
            "the test handle must look like one"
        );
    }

    #[test]
    fn finds_the_code_and_the_handle_whatever_the_quoting() {
        for inputs in [
            format!(
                r#"<input type="hidden" name="code" value="c-1"/><input type="hidden" name="state" value="{H}"/>"#
            ),
            format!(r#"<INPUT TYPE=hidden NAME=state VALUE={H}><INPUT NAME='code' VALUE='c-1'>"#),
            format!(r#"<input name = "state" value = "{H}" ><input value="c-1" name="code" >"#),
            format!(
                r#"<input type="hidden" name="code" value="c&#45;1"><input name="state" value="{H}"><input name="iss" value="https://as.example">"#
            ),
        ] {
            let html = page(&inputs);
            let capture = capture(&html).unwrap_or_else(|| panic!("{inputs}"));
            assert_eq!(capture.handle, H);
            assert_eq!(capture.code.as_deref(), Some("c-1"));
            assert!(!capture.error);
            assert_eq!(
                capture.action.as_deref(),
                Some("https://app.example/cb?x=1&y=2")
            );
        }
    }

    #[test]
    fn state_is_restored_escaped_or_removed_and_nothing_else_changes() {
        let html = page(&format!(
            r#"<input type="hidden" name="code" value="c1"/><input type="hidden" name="state" value="{H}"/><input type="hidden" name="iss" value="https://as.example"/>"#
        ));
        let capture = capture(&html).unwrap();
        let restored = restore_state(&html, &capture, Some(r#"a"b<c>&'d é"#));
        assert!(
            restored.contains(r#"name="state" value="a&quot;b&lt;c&gt;&amp;'d é""#),
            "{restored}"
        );
        assert!(!restored.contains(H));
        assert!(
            restored.contains(r#"<input type="hidden" name="iss" value="https://as.example"/>"#)
        );
        assert!(restored.contains(r#"name="code" value="c1""#));
        // Read back, the client's value is exactly what it sent.
        let again = tags(&restored);
        let state = again
            .iter()
            .find(|t| t.attribute("name") == Some("state"))
            .unwrap();
        assert_eq!(state.attribute("value"), Some(r#"a"b<c>&'d é"#));

        let removed = restore_state(&html, &capture, None);
        assert!(!removed.contains("name=\"state\""), "{removed}");
        assert_eq!(
            removed.len(),
            html.len() - capture.state_tag.len() + "<!---->".len()
        );

        // Removing the tag never joins the text around it into a new `state` input.
        let joined = format!(
            r#"<form action="https://app.example/cb">x <<input name="state" value="{H}">input name="state" value="{H}"><input name="code" value="c1"></form>"#
        );
        let capture = super::capture(&joined).expect("one state input");
        let removed = restore_state(&joined, &capture, None);
        let states = tags(&removed)
            .iter()
            .filter(|t| t.attribute("name") == Some("state"))
            .count();
        assert_eq!(states, 0, "{removed}");
        let empty = restore_state(&html, &capture, Some(""));
        assert!(empty.contains(r#"name="state" value="""#));
    }

    #[test]
    fn an_empty_code_is_no_code() {
        let otp = page(&format!(
            r#"<input name="code" value=""><input type="hidden" name="state" value="{H}">"#
        ));
        assert!(capture(&otp).is_none());
        let error = page(&format!(
            r#"<input name="code" value=""><input name="error" value="access_denied"><input name="state" value="{H}">"#
        ));
        let found = capture(&error).unwrap();
        assert!(found.error && found.code.is_none());
    }

    #[test]
    fn errors_are_found_too() {
        let html = page(&format!(
            r#"<input name="error" value="access_denied"><input name="state" value="{H}">"#
        ));
        let capture = capture(&html).unwrap();
        assert!(capture.error);
        assert!(capture.code.is_none());
    }

    #[test]
    fn ambiguous_or_foreign_pages_are_not_read() {
        for inputs in [
            // No handle.
            r#"<input name="code" value="c1"><input name="state" value="client-state">"#.to_owned(),
            // Two states, two codes, a code and nothing.
            format!(
                r#"<input name="code" value="c1"><input name="state" value="{H}"><input name="state" value="x">"#
            ),
            format!(
                r#"<input name="code" value="c1"><input name="code" value="c2"><input name="state" value="{H}">"#
            ),
            format!(r#"<input name="state" value="{H}">"#),
            // The handle only in a comment or a script.
            format!(r#"<!-- <input name="state" value="{H}"> --><input name="code" value="c1">"#),
            format!(
                r#"<script>var s = '<input name="state" value="{H}">';</script><input name="code" value="c1">"#
            ),
        ] {
            assert!(capture(&page(&inputs)).is_none(), "{inputs}");
        }
    }

    #[test]
    fn truncated_and_hostile_markup_does_not_panic() {
        let html = page(&format!(
            r#"<input name="code" value="c1"><input name="state" value="{H}">"#
        ));
        for cut in 0..html.len() {
            if let Some(prefix) = html.get(..cut) {
                let _ = capture(prefix);
            }
        }
        for junk in [
            "<",
            "<<<>>>",
            "<input",
            "<input name=",
            "<input name=\"",
            "<!--",
            "<script>",
            "<a b=c d='e",
            "<é name=state>",
        ] {
            let _ = capture(junk);
        }
    }
}
