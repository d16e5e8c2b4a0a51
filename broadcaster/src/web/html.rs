//! Escaping for HTML text and attributes, and percent-encoding for URL path segments.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Characters left as they are in a path segment: RFC 3986 unreserved. Everything else, including `/`, `%`,
/// `?`, `#`, spaces and quotes, is percent-encoded, so an id is always exactly one segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Escapes `s` for HTML text and for attribute values in double or single quotes.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes `s` as one URL path segment (UTF-8, unreserved characters kept).
pub fn encode_segment(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_quotes_and_ampersands() {
        assert_eq!(
            escape("<script>alert('x')</script>"),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"
        );
        assert_eq!(escape(r#"a "b" & c"#), "a &quot;b&quot; &amp; c");
        // Already-escaped text is escaped again, never passed through.
        assert_eq!(escape("&amp;"), "&amp;amp;");
        assert_eq!(escape("plain-id_1.2 ünïcode"), "plain-id_1.2 ünïcode");
        assert_eq!(escape(""), "");
    }

    #[test]
    fn encodes_one_path_segment() {
        assert_eq!(encode_segment("clip-1_a.b~c"), "clip-1_a.b~c");
        assert_eq!(encode_segment(r#"a b<c>&"d"#), "a%20b%3Cc%3E%26%22d");
        assert_eq!(encode_segment("x/y?z#w%"), "x%2Fy%3Fz%23w%25");
        assert_eq!(encode_segment("'()*!"), "%27%28%29%2A%21");
        assert_eq!(encode_segment("é"), "%C3%A9");
    }

    #[test]
    fn encoded_segments_need_no_html_escaping() {
        let weird = r#"<script>"&'"#;
        let enc = encode_segment(weird);
        assert_eq!(escape(&enc), enc);
    }
}
