//! Unambiguous display of raw path bytes: any byte string prints as one line that can be read back.

/// Escape `bytes` for display: printable UTF-8 stays as is; `\`, `"`, control
/// characters and bytes that are not valid UTF-8 become C-style escapes. The
/// result never contains a newline, so one path is always one line.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 2);
    let mut rest = bytes;
    while !rest.is_empty() {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                push_str(&mut out, s);
                break;
            }
            Err(e) => {
                let (good, bad) = rest.split_at(e.valid_up_to());
                // SAFETY-free: `good` is valid UTF-8 by construction.
                push_str(&mut out, std::str::from_utf8(good).unwrap_or_default());
                let n = e.error_len().unwrap_or(bad.len()).max(1);
                for b in &bad[..n] {
                    out.push_str(&format!("\\x{b:02x}"));
                }
                rest = &bad[n..];
            }
        }
    }
    out
}

fn push_str(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\x{b:02x}"));
                }
            }
            c => out.push(c),
        }
    }
}

/// Escaped and quoted, for messages: `"dir/na\nme"`.
pub fn quoted(bytes: &[u8]) -> String {
    format!("\"{}\"", escape(bytes))
}

/// `s` for HTML text or a quoted attribute value: `&`, `<`, `>`, `"` and `'` become entities.
/// A path goes through [`escape`] first (bytes to one unambiguous line), then through this.
pub fn html(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// A path's raw bytes for HTML: escaped as everywhere in evac, then HTML-escaped.
pub fn html_path(bytes: &[u8]) -> String {
    html(&escape(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_everything_ambiguous() {
        assert_eq!(escape(b"a/b c"), "a/b c");
        assert_eq!(escape(b"x\ny\tz\r"), "x\\ny\\tz\\r");
        assert_eq!(escape(b"q\"\\"), "q\\\"\\\\");
        assert_eq!(escape(b"\xff\xfeok"), "\\xff\\xfeok");
        assert_eq!(escape(b"\x01\x7f"), "\\x01\\x7f");
        assert_eq!(escape("é".as_bytes()), "é");
        assert_eq!(quoted(b"-rf"), "\"-rf\"");
    }

    #[test]
    fn html_escapes_markup_after_the_path_escape() {
        assert_eq!(
            html("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(
            html_path(b"<script>\xff\"q\""),
            "&lt;script&gt;\\xff\\&quot;q\\&quot;"
        );
    }
}
