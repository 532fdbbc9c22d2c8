//! Byte ranges inside JSON text that has already passed the gate (so it is valid):
//! where a top-level member's value is, to carry that exact text onwards (numbers keep
//! every digit) without parsing it into values and writing it back.

use std::ops::Range;

/// The span of the value of the top-level object member named `name` (compared after
/// unescaping, so `"pay\u006coad"` is `payload`), or `None` when there is none.
/// `text` must be valid JSON.
pub fn member_span(text: &[u8], name: &str) -> Option<Range<usize>> {
    let mut depth = 0usize;
    let mut i = 0;
    // At depth 1, strings alternate: a member name, then (after ':') maybe a value.
    let mut expect_name = true;
    let mut value_start: Option<usize> = None;
    while i < text.len() {
        let b = text[i];
        match b {
            b'"' => {
                let end = string_end(text, i);
                if depth == 1 {
                    if expect_name {
                        if unescaped_equals(&text[i + 1..end], name.as_bytes()) {
                            value_start = Some(end + 1);
                        }
                    } else if is_target(value_start, text, i) {
                        return Some(i..end + 1);
                    }
                }
                i = end + 1;
                continue;
            }
            b'{' | b'[' => {
                if depth == 1 && !expect_name && is_target(value_start, text, i) {
                    return Some(i..container_end(text, i) + 1);
                }
                depth += 1;
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b':' if depth == 1 => expect_name = false,
            b',' if depth == 1 => {
                expect_name = true;
                value_start = None;
            }
            _ if depth == 1
                && !expect_name
                && !b.is_ascii_whitespace()
                && is_target(value_start, text, i) =>
            {
                // A number, true, false or null.
                let end = text[i..]
                    .iter()
                    .position(|c| matches!(c, b',' | b'}' | b']') || c.is_ascii_whitespace())
                    .map_or(text.len(), |n| i + n);
                return Some(i..end);
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// True when the member whose value starts here is the one looked for.
fn is_target(value_start: Option<usize>, text: &[u8], at: usize) -> bool {
    value_start.is_some_and(|start| text[start..at].iter().all(|c| c.is_ascii_whitespace() || *c == b':'))
}

/// Index of the closing quote of the string opening at `open`.
fn string_end(text: &[u8], open: usize) -> usize {
    let mut i = open + 1;
    while i < text.len() {
        match text[i] {
            b'\\' => i += 2,
            b'"' => return i,
            _ => i += 1,
        }
    }
    text.len()
}

/// Index of the bracket closing the container opening at `open`.
fn container_end(text: &[u8], open: usize) -> usize {
    let mut depth = 0usize;
    let mut i = open;
    while i < text.len() {
        match text[i] {
            b'"' => i = string_end(text, i),
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
        i += 1;
    }
    text.len().saturating_sub(1)
}

/// Whether a JSON string's raw content (between its quotes) unescapes to `target`
/// (ASCII).
fn unescaped_equals(raw: &[u8], target: &[u8]) -> bool {
    let (mut i, mut matched) = (0, 0);
    while i < raw.len() {
        let c = if raw[i] == b'\\' {
            let escaped = raw.get(i + 1).copied();
            i += 2;
            match escaped {
                Some(b'u') => {
                    let hex = raw.get(i..i + 4).and_then(|h| std::str::from_utf8(h).ok());
                    let Some(code) = hex.and_then(|h| u16::from_str_radix(h, 16).ok()) else { return false };
                    i += 4;
                    if code > 0x7f {
                        return false;
                    }
                    code as u8
                }
                Some(b'b') => 0x08,
                Some(b'f') => 0x0c,
                Some(b'n') => b'\n',
                Some(b'r') => b'\r',
                Some(b't') => b'\t',
                Some(other) => other,
                None => return false,
            }
        } else {
            i += 1;
            raw[i - 1]
        };
        if target.get(matched) != Some(&c) {
            return false;
        }
        matched += 1;
    }
    matched == target.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span<'t>(text: &'t str, name: &str) -> Option<&'t str> {
        member_span(text.as_bytes(), name).map(|range| &text[range])
    }

    #[test]
    fn finds_the_top_level_member_whatever_its_kind_and_place() {
        let text = r#"{"type":"payload","nested":{"payload":1},"payload" : {"a":[1,"}"],"b":"\""} ,"z":2}"#;
        assert_eq!(span(text, "payload"), Some(r#"{"a":[1,"}"],"b":"\""}"#));
        assert_eq!(span(text, "type"), Some(r#""payload""#));
        assert_eq!(span(text, "z"), Some("2"));
        assert_eq!(span(r#"{"n": -1.5e3 }"#, "n"), Some("-1.5e3"));
        assert_eq!(span(r#"{"n":true}"#, "n"), Some("true"));
        assert_eq!(span(r#"{"a":["payload",{"payload":2}]}"#, "payload"), None, "only top-level members");
        assert_eq!(span(r#"{"pay\u006coad":{"x":1}}"#, "payload"), Some(r#"{"x":1}"#), "escaped name");
        assert_eq!(span(r#"{"payloads":{}}"#, "payload"), None);
        assert_eq!(span(r#"{"type":"t"}"#, "payload"), None);
    }
}
