//! The JSON gate: one iterative pass over a request body that decides, before anything
//! recursive touches it, whether the body is JSON text this service will store.
//!
//! It accepts exactly RFC 8259 JSON that is also I-JSON (RFC 7493) and that
//! PostgreSQL's `jsonb` can hold without refusing it:
//! - nesting of arrays and objects at most `DEPTH_MAX` levels, counted on an explicit
//!   stack (no recursion: a body of 200 000 `[` costs one frame overflow check);
//! - no member name twice in one object, at any depth, compared after unescaping
//!   (`"a"` and `"\u0061"` are one name);
//! - strings of Unicode scalar values only: no `\u0000` (jsonb refuses it), no unpaired
//!   or broken surrogate escape (`"\ud800"`, `"\ud800\ue000"`);
//! - numbers that PostgreSQL's `numeric` can hold (`numeric_limits`) and whose
//!   magnitude a double can hold (I-JSON's interoperable range; digits beyond a
//!   double's precision are fine: PostgreSQL keeps every digit of the text).
//!
//! Cost: one branch per byte outside strings, a table lookup per byte inside them,
//! and for every object one duplicate check over its names when it closes (pairwise up
//! to `PAIRWISE_NAMES_MAX` names, sorted beyond, so a 50 000-member object costs
//! O(n log n), never O(n²)). Memory: the names of the objects currently open, reused
//! across bodies and trimmed back after an outsized one.

/// Deepest nesting of arrays and objects accepted (the top-level value is level 1).
pub const DEPTH_MAX: usize = 128;
/// Objects with at most this many names are checked for duplicates pairwise.
const PAIRWISE_NAMES_MAX: usize = 16;
/// Name entries kept allocated between bodies; beyond it the buffers are trimmed.
const NAMES_RETAINED_MAX: usize = 4096;

/// The limits of PostgreSQL's `numeric` (src/backend/utils/adt/numeric.c), checked on
/// the number's text exactly as `numeric_in` does, so that a number passes here if
/// and only if `jsonb` stores it (a test compares the two on a real server):
/// - the display scale (digits after the point once the exponent is applied, trailing
///   zeros included) is at most `NUMERIC_DSCALE_MAX`;
/// - the decimal position of the leading non-zero digit is at most
///   `NUMERIC_DECIMAL_WEIGHT_MAX` (weight 32767 in base 10000, four digits each);
/// - the exponent's magnitude is below `NUMERIC_EXPONENT_LIMIT` (INT_MAX / 2).
pub mod numeric_limits {
    pub const NUMERIC_DSCALE_MAX: i64 = 0x3FFF;
    pub const NUMERIC_DECIMAL_WEIGHT_MAX: i64 = 32_767 * 4 + 3;
    pub const NUMERIC_EXPONENT_LIMIT: i64 = i32::MAX as i64 / 2;
}
use numeric_limits::*;

/// Why a body is not accepted. Every variant is the client's fault: a 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GateError {
    #[error("the body is not valid UTF-8 (byte {offset})")]
    NotUtf8 { offset: usize },
    #[error("the body is not valid JSON: {what} at byte {offset}")]
    Syntax { offset: usize, what: &'static str },
    #[error("the body nests arrays and objects deeper than {DEPTH_MAX} levels (byte {offset})")]
    TooDeep { offset: usize },
    #[error("the member name {name:?} appears twice in one object (byte {offset})")]
    DuplicateName { offset: usize, name: String },
    #[error("a string holds the escape \\u0000 (byte {offset}); U+0000 cannot be stored")]
    NulEscape { offset: usize },
    #[error("a string holds an unpaired surrogate escape (byte {offset}); only Unicode scalar values can be stored")]
    Surrogate { offset: usize },
    #[error("the number at byte {offset} is outside what PostgreSQL's numeric can hold")]
    NumberOutOfRange { offset: usize },
    #[error("the number at byte {offset} is larger in magnitude than a double can hold (I-JSON)")]
    NumberBeyondDouble { offset: usize },
}

/// A member name of an open object: a range of the body, or of `decoded` when the
/// name holds escapes.
#[derive(Debug, Clone, Copy)]
struct Name {
    start: u32,
    len: u32,
    decoded: bool,
    /// Where the name starts in the body, for the error message.
    offset: u32,
}

#[derive(Debug, Clone, Copy)]
enum Frame {
    Array,
    /// An object whose names start at this index of `names`.
    Object {
        names_from: u32,
    },
}

/// Reusable scratch space of the gate; one per HTTP core. Owned by the core's shard and
/// touched by one request at a time.
#[derive(Debug, Default)]
pub struct Gate {
    /// Names of every object currently open, innermost last.
    names: Vec<Name>,
    /// Unescaped text of names that contain escapes.
    decoded: Vec<u8>,
    /// One frame per open array or object; never more than `DEPTH_MAX`.
    frames: Vec<Frame>,
    /// Indexes into `names`, sorted to find duplicates in wide objects.
    order: Vec<u32>,
}

/// Bytes that end the fast scan of a string: `"`, `\` and control characters.
const STRING_SPECIAL: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

fn syntax(offset: usize, what: &'static str) -> GateError {
    GateError::Syntax { offset, what }
}

fn skip_whitespace(bytes: &[u8], mut pos: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = bytes.get(pos) {
        pos += 1;
    }
    pos
}

fn hex4(bytes: &[u8], pos: usize) -> Option<u32> {
    let digits = bytes.get(pos..pos + 4)?;
    digits.iter().try_fold(0u32, |acc, &b| Some(acc * 16 + (b as char).to_digit(16)?))
}

/// Scans the string whose opening quote is at `open`; returns the position after the
/// closing quote and whether it holds escapes.
fn scan_string(bytes: &[u8], open: usize) -> Result<(usize, bool), GateError> {
    let mut pos = open + 1;
    let mut escaped = false;
    loop {
        while pos < bytes.len() && !STRING_SPECIAL[bytes[pos] as usize] {
            pos += 1;
        }
        match bytes.get(pos) {
            None => return Err(syntax(open, "unterminated string")),
            Some(b'"') => return Ok((pos + 1, escaped)),
            Some(b'\\') => {
                escaped = true;
                pos = scan_escape(bytes, pos)?;
            }
            Some(_) => return Err(syntax(pos, "control character in a string")),
        }
    }
}

/// Checks the escape at `pos` (a backslash); returns the position after it.
fn scan_escape(bytes: &[u8], pos: usize) -> Result<usize, GateError> {
    match bytes.get(pos + 1) {
        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Ok(pos + 2),
        Some(b'u') => {
            let unit = hex4(bytes, pos + 2).ok_or_else(|| syntax(pos, "malformed \\u escape"))?;
            match unit {
                0 => Err(GateError::NulEscape { offset: pos }),
                0xD800..=0xDBFF => {
                    let low =
                        (bytes.get(pos + 6..pos + 8) == Some(b"\\u")).then(|| hex4(bytes, pos + 8)).flatten();
                    match low {
                        Some(0xDC00..=0xDFFF) => Ok(pos + 12),
                        _ => Err(GateError::Surrogate { offset: pos }),
                    }
                }
                0xDC00..=0xDFFF => Err(GateError::Surrogate { offset: pos }),
                _ => Ok(pos + 6),
            }
        }
        _ => Err(syntax(pos, "invalid escape")),
    }
}

/// Appends the unescaped text of a string already checked by `scan_string` (quotes
/// excluded) to `out`.
fn unescape_into(raw: &[u8], out: &mut Vec<u8>) {
    let mut pos = 0;
    while pos < raw.len() {
        if raw[pos] != b'\\' {
            out.push(raw[pos]);
            pos += 1;
            continue;
        }
        let simple = match raw[pos + 1] {
            b'b' => Some(0x08),
            b'f' => Some(0x0c),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            b'u' => None,
            other => Some(other),
        };
        if let Some(byte) = simple {
            out.push(byte);
            pos += 2;
            continue;
        }
        let unit = hex4(raw, pos + 2).unwrap_or(0xFFFD);
        let (scalar, taken) = if (0xD800..=0xDBFF).contains(&unit) {
            let low = hex4(raw, pos + 8).unwrap_or(0xDC00);
            (0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00), 12)
        } else {
            (unit, 6)
        };
        let character = char::from_u32(scalar).unwrap_or(char::REPLACEMENT_CHARACTER);
        out.extend_from_slice(character.encode_utf8(&mut [0u8; 4]).as_bytes());
        pos += taken;
    }
}

/// Scans a number starting at `start`; returns the position after it.
fn scan_number(bytes: &[u8], start: usize) -> Result<usize, GateError> {
    let digits_from = |mut pos: usize| {
        while bytes.get(pos).is_some_and(u8::is_ascii_digit) {
            pos += 1;
        }
        pos
    };
    let mut pos = start;
    if bytes.get(pos) == Some(&b'-') {
        pos += 1;
    }
    let integer = pos;
    match bytes.get(pos) {
        Some(b'0') => pos += 1,
        Some(b'1'..=b'9') => pos = digits_from(pos),
        _ => return Err(syntax(start, "malformed number")),
    }
    let integer_end = pos;
    let mut fraction = pos..pos;
    if bytes.get(pos) == Some(&b'.') {
        let end = digits_from(pos + 1);
        if end == pos + 1 {
            return Err(syntax(start, "malformed number"));
        }
        fraction = pos + 1..end;
        pos = end;
    }
    let mut exponent: i64 = 0;
    if let Some(b'e' | b'E') = bytes.get(pos) {
        pos += 1;
        let negative = match bytes.get(pos) {
            Some(b'-') => {
                pos += 1;
                true
            }
            Some(b'+') => {
                pos += 1;
                false
            }
            _ => false,
        };
        let end = digits_from(pos);
        if end == pos {
            return Err(syntax(start, "malformed number"));
        }
        // Saturates far beyond the limit: only "too large" matters past it.
        for &digit in &bytes[pos..end] {
            exponent = (exponent * 10 + i64::from(digit - b'0')).min(NUMERIC_EXPONENT_LIMIT);
        }
        if negative {
            exponent = -exponent;
        }
        pos = end;
    }
    let weight = match numeric_weight(&bytes[integer..integer_end], &bytes[fraction], exponent) {
        Ok(weight) => weight,
        Err(()) => return Err(GateError::NumberOutOfRange { offset: start }),
    };
    // Only a number whose leading digit is at 10^308 or beyond can overflow a double.
    if weight.is_some_and(|weight| weight >= DOUBLE_DECIMAL_WEIGHT_MAX) {
        let text = std::str::from_utf8(&bytes[start..pos]).unwrap_or("inf");
        if !text.parse::<f64>().is_ok_and(f64::is_finite) {
            return Err(GateError::NumberBeyondDouble { offset: start });
        }
    }
    Ok(pos)
}

/// The decimal weight of a double's largest finite magnitude (1.797...e308).
const DOUBLE_DECIMAL_WEIGHT_MAX: i64 = 308;

/// `Err` when PostgreSQL's `numeric` cannot hold the number with these integer and
/// fraction digits and this (saturated) exponent; else the decimal weight of its
/// leading non-zero digit (`None` for zero).
fn numeric_weight(integer: &[u8], fraction: &[u8], exponent: i64) -> Result<Option<i64>, ()> {
    if exponent.abs() >= NUMERIC_EXPONENT_LIMIT {
        return Err(());
    }
    let scale = (fraction.len() as i64 - exponent).max(0);
    if scale > NUMERIC_DSCALE_MAX {
        return Err(());
    }
    let leading = if integer != b"0" {
        Some(integer.len() as i64 - 1)
    } else {
        fraction.iter().position(|&d| d != b'0').map(|i| -(i as i64) - 1)
    };
    match leading.map(|leading| leading + exponent) {
        Some(weight) if weight > NUMERIC_DECIMAL_WEIGHT_MAX => Err(()),
        weight => Ok(weight),
    }
}

fn scan_literal(bytes: &[u8], pos: usize) -> Result<usize, GateError> {
    for literal in [&b"true"[..], b"false", b"null"] {
        if bytes[pos..].starts_with(literal) {
            return Ok(pos + literal.len());
        }
    }
    Err(syntax(pos, "unexpected character"))
}

impl Gate {
    pub fn new() -> Gate {
        Gate::default()
    }

    /// Checks `body`; on success returns it as text.
    pub fn check<'b>(&mut self, body: &'b [u8]) -> Result<&'b str, GateError> {
        let text = std::str::from_utf8(body).map_err(|e| GateError::NotUtf8 { offset: e.valid_up_to() })?;
        self.names.clear();
        self.decoded.clear();
        self.frames.clear();
        let result = self.scan(body);
        if self.names.capacity() > NAMES_RETAINED_MAX {
            *self = Gate::default();
        }
        result.map(|()| text)
    }

    fn scan(&mut self, bytes: &[u8]) -> Result<(), GateError> {
        let mut pos = skip_whitespace(bytes, 0);
        // Each turn reads one value at `pos`, then the punctuation after it.
        'value: loop {
            match bytes.get(pos) {
                None => return Err(syntax(pos, "expected a value")),
                Some(b'{') => {
                    self.open(Frame::Object { names_from: self.names.len() as u32 }, pos)?;
                    pos = skip_whitespace(bytes, pos + 1);
                    if bytes.get(pos) != Some(&b'}') {
                        pos = self.member_name(bytes, pos)?;
                        continue 'value;
                    }
                    pos += 1;
                    self.close_object(bytes)?;
                }
                Some(b'[') => {
                    self.open(Frame::Array, pos)?;
                    pos = skip_whitespace(bytes, pos + 1);
                    if bytes.get(pos) != Some(&b']') {
                        continue 'value;
                    }
                    pos += 1;
                    self.frames.pop();
                }
                Some(b'"') => pos = scan_string(bytes, pos)?.0,
                Some(b'-' | b'0'..=b'9') => pos = scan_number(bytes, pos)?,
                Some(_) => pos = scan_literal(bytes, pos)?,
            }
            // After a value: close containers until one continues with a comma.
            loop {
                pos = skip_whitespace(bytes, pos);
                let Some(&frame) = self.frames.last() else {
                    if pos == bytes.len() {
                        return Ok(());
                    }
                    return Err(syntax(pos, "unexpected data after the JSON value"));
                };
                match (frame, bytes.get(pos)) {
                    (Frame::Array, Some(b',')) => {
                        pos = skip_whitespace(bytes, pos + 1);
                        continue 'value;
                    }
                    (Frame::Object { .. }, Some(b',')) => {
                        pos = self.member_name(bytes, skip_whitespace(bytes, pos + 1))?;
                        continue 'value;
                    }
                    (Frame::Array, Some(b']')) => {
                        self.frames.pop();
                        pos += 1;
                    }
                    (Frame::Object { .. }, Some(b'}')) => {
                        pos += 1;
                        self.close_object(bytes)?;
                    }
                    _ => return Err(syntax(pos, "expected , or a closing bracket")),
                }
            }
        }
    }

    fn open(&mut self, frame: Frame, pos: usize) -> Result<(), GateError> {
        if self.frames.len() >= DEPTH_MAX {
            return Err(GateError::TooDeep { offset: pos });
        }
        self.frames.push(frame);
        Ok(())
    }

    /// Reads `"name" :` at `pos`, records the name, returns the position of the value.
    fn member_name(&mut self, bytes: &[u8], pos: usize) -> Result<usize, GateError> {
        if bytes.get(pos) != Some(&b'"') {
            return Err(syntax(pos, "expected a member name"));
        }
        let (end, escaped) = scan_string(bytes, pos)?;
        let raw = &bytes[pos + 1..end - 1];
        let name = if escaped {
            let start = self.decoded.len();
            unescape_into(raw, &mut self.decoded);
            Name {
                start: start as u32,
                len: (self.decoded.len() - start) as u32,
                decoded: true,
                offset: pos as u32,
            }
        } else {
            Name { start: (pos + 1) as u32, len: raw.len() as u32, decoded: false, offset: pos as u32 }
        };
        self.names.push(name);
        let colon = skip_whitespace(bytes, end);
        if bytes.get(colon) != Some(&b':') {
            return Err(syntax(colon, "expected : after a member name"));
        }
        Ok(skip_whitespace(bytes, colon + 1))
    }

    /// Pops the innermost object, refusing it if a name repeats.
    fn close_object(&mut self, bytes: &[u8]) -> Result<(), GateError> {
        let Some(Frame::Object { names_from }) = self.frames.pop() else {
            unreachable!("close_object called on an array frame");
        };
        let from = names_from as usize;
        let Gate { names, decoded, order, .. } = self;
        let text = |name: &Name| -> &[u8] {
            let range = name.start as usize..(name.start + name.len) as usize;
            if name.decoded {
                &decoded[range]
            } else {
                &bytes[range]
            }
        };
        let members = &names[from..];
        let duplicate = if members.len() <= PAIRWISE_NAMES_MAX {
            (1..members.len()).find(|&i| members[..i].iter().any(|m| text(m) == text(&members[i])))
        } else {
            order.clear();
            order.extend(0..members.len() as u32);
            order.sort_unstable_by(|&a, &b| {
                text(&members[a as usize]).cmp(text(&members[b as usize])).then_with(|| a.cmp(&b))
            });
            order
                .windows(2)
                .find(|pair| text(&members[pair[0] as usize]) == text(&members[pair[1] as usize]))
                .map(|pair| pair[1] as usize)
        };
        if let Some(index) = duplicate {
            let name = &members[index];
            let shown: String = String::from_utf8_lossy(text(name)).chars().take(64).collect();
            return Err(GateError::DuplicateName { offset: name.offset as usize, name: shown });
        }
        let decoded_from = names[from..].iter().find(|n| n.decoded).map(|n| n.start as usize);
        names.truncate(from);
        if let Some(start) = decoded_from {
            decoded.truncate(start);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: &str) -> Result<(), GateError> {
        Gate::new().check(body.as_bytes()).map(drop)
    }

    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn accepts_plain_json() {
        for body in [
            r#"{"type":"t","payload":{"a":[1,-2.5e3,0,0.0,true,false,null,"x\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00"]}}"#,
            " [ ] ",
            "{}",
            "\"s\"",
            "-0",
            "123456789012345678901234567890",
            r#"{"a":{"a":{"a":1}},"b":[{"a":1},{"a":2}]}"#,
        ] {
            assert_eq!(check(body), Ok(()), "{body}");
        }
    }

    #[test]
    fn refuses_malformed_json() {
        for body in [
            "",
            " ",
            "{",
            "[1,]",
            "[,1]",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{1:2}",
            "[01]",
            "[1.]",
            "[.5]",
            "[1e]",
            "[-]",
            "[+1]",
            "tru",
            "nul",
            "[true false]",
            "{} {}",
            "\"a",
            "\"\\x\"",
            "\"\\u12\"",
            "\"\t\"",
            "[1]x",
            "[\"\0\"]",
            "[null\0]",
            "{\"a\":1 \"b\":2}",
        ] {
            assert!(matches!(check(body), Err(GateError::Syntax { .. })), "{body:?}: {:?}", check(body));
        }
        assert_eq!(Gate::new().check(b"\"\xff\"").map(drop), Err(GateError::NotUtf8 { offset: 1 }));
    }

    #[test]
    fn depth_is_limited_without_recursion() {
        assert_eq!(check(&nested(DEPTH_MAX)), Ok(()));
        assert_eq!(check(&nested(DEPTH_MAX + 1)), Err(GateError::TooDeep { offset: DEPTH_MAX }));
        // Far beyond any stack: refused at the first level too many.
        let deep = "[".repeat(1_000_000);
        assert_eq!(check(&deep), Err(GateError::TooDeep { offset: DEPTH_MAX }));
        let objects = format!("{}1{}", "{\"a\":".repeat(DEPTH_MAX + 1), "}".repeat(DEPTH_MAX + 1));
        assert!(matches!(check(&objects), Err(GateError::TooDeep { .. })));
    }

    #[test]
    fn duplicate_names_are_refused_at_any_depth() {
        assert!(matches!(
            check(r#"{"type":"t","payload":{},"payload":"x"}"#),
            Err(GateError::DuplicateName { .. })
        ));
        assert!(matches!(check(r#"[[{"a":1,"b":{"c":1,"c":2}}]]"#), Err(GateError::DuplicateName { .. })));
        assert!(matches!(check(r#"{"a":1,"\u0061":2}"#), Err(GateError::DuplicateName { .. })));
        assert!(matches!(check(r#"{"\ud83d\ude00":1,"😀":2}"#), Err(GateError::DuplicateName { .. })));
        // The same name in sibling and nested objects is fine.
        assert_eq!(check(r#"{"a":{"a":1},"b":{"a":{"a":[{"a":1}]}}}"#), Ok(()));
        // Wide objects take the sorted path.
        let wide: Vec<String> = (0..1000).map(|i| format!("\"k{i}\":{i}")).collect();
        assert_eq!(check(&format!("{{{}}}", wide.join(","))), Ok(()));
        let with_twin = format!("{{{},\"k500\":0}}", wide.join(","));
        match check(&with_twin) {
            Err(GateError::DuplicateName { name, .. }) => assert_eq!(name, "k500"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn strings_must_be_scalar_text() {
        for (body, expected) in [
            (r#"["\u0000"]"#, GateError::NulEscape { offset: 2 }),
            (r#"{"\u0000":1}"#, GateError::NulEscape { offset: 2 }),
            (r#"["\ud800"]"#, GateError::Surrogate { offset: 2 }),
            (r#"["\ud800\ue000"]"#, GateError::Surrogate { offset: 2 }),
            (r#"["\udc00\ud800"]"#, GateError::Surrogate { offset: 2 }),
            (r#"["\ud800x"]"#, GateError::Surrogate { offset: 2 }),
        ] {
            assert_eq!(check(body), Err(expected), "{body}");
        }
        assert_eq!(check(r#"["\ud800\udc00","\uffff","\u0001"]"#), Ok(()));
    }

    #[test]
    fn numbers_follow_postgresql_numeric() {
        let held = [
            "1e-16383",
            "0e99999",
            "1.5e-16382",
            "0.00001e-16378",
            "1e-0000000000016383",
            "0e-16383",
            "0.0000e-16379",
            "0e1073741822",
            "1e308",
            "-1.7976931348623157e308",
            "1e-400",
        ];
        for number in held {
            assert_eq!(check(number), Ok(()), "{number}");
        }
        // Within numeric's range but beyond a double's magnitude (I-JSON).
        let beyond_double =
            ["1e131071", "9.9e131071", "123e131069", "0.5e131072", "-1e131071", "1E+131071", "1e309"];
        for number in beyond_double {
            assert_eq!(check(number), Err(GateError::NumberBeyondDouble { offset: 0 }), "{number}");
        }
        let refused = [
            "1e-16384",
            "0e-99999",
            "0.0e-16383",
            "1.5e-16383",
            "1e131072",
            "123e131070",
            "0.00001e-16379",
            "1e-2147483647",
            "1.000e-16381",
            "10e-16384",
            "1e-200000",
            "0e1073741823",
            "0e-1073741823",
            "0e99999999999999999999",
            "0.0000e-16380",
            "1e+131072",
        ];
        for number in refused {
            assert_eq!(check(number), Err(GateError::NumberOutOfRange { offset: 0 }), "{number}");
        }
        let digits = |n| format!("1{}", "0".repeat(n));
        assert_eq!(check(&digits(308)), Ok(()));
        assert_eq!(check(&digits(309)), Err(GateError::NumberBeyondDouble { offset: 0 }));
        assert_eq!(check(&digits(131_072)), Err(GateError::NumberOutOfRange { offset: 0 }));
        let fraction = |n| format!("0.{}1", "0".repeat(n));
        assert_eq!(check(&fraction(16_382)), Ok(()));
        assert!(check(&fraction(16_383)).is_err());
    }

    #[test]
    fn scratch_is_reused_and_trimmed() {
        let mut gate = Gate::new();
        let wide: Vec<String> = (0..20_000).map(|i| format!("\"\\u0061{i}\":0")).collect();
        assert!(gate.check(format!("{{{}}}", wide.join(",")).as_bytes()).is_ok());
        assert!(gate.names.capacity() <= NAMES_RETAINED_MAX, "trimmed after an outsized body");
        assert!(gate.check(br#"{"a":1,"a":2}"#).is_err());
        assert!(gate.check(br#"{"a":1,"b":2}"#).is_ok(), "no state leaks from a refused body");
    }
}
