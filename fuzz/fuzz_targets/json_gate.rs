//! Fuzzes the JSON gate (src/json/gate.rs) with documents built from a small grammar,
//! each on a thread with an HTTP core's stack (see common/mod.rs), up to the service's
//! body limit (256 KiB).
//!
//! Input: when the first byte can start a JSON text (`[`, `{`, `"`, a digit, `-`, `t`,
//! `f`, `n`, whitespace), the input is the body itself (the seeds in fuzz/seeds/json_gate
//! are plain bodies). Otherwise the rest of the input drives the grammar (`Plan`): a
//! flat list of operations run on an explicit stack, so nothing here recurses however
//! deep the document: open/close an array or object, a scalar, a run of N nested
//! openings (to just around `DEPTH_MAX`, up to 32 760, or as deep as the body limit
//! allows: 131 000 levels), a wide container of up to 32 760 members with an optional
//! twin of one name (raw against `\u`-escaped), whitespace, raw garbage, or a stop that
//! leaves everything open. Strings are pieces: text written raw, fully `\u`-escaped or
//! with short escapes, `\u0000`, lone and broken surrogate escapes, valid pairs, raw
//! control characters, invalid escapes. Numbers reach PostgreSQL numeric's limits
//! (display scale 16383, decimal weight 131071, exponent INT_MAX / 2), a double's
//! largest magnitude, long digit runs and exponents with many digits.
//!
//! The generator knows the ground truth of what it wrote (unless it wrote garbage):
//! the first thing the gate must trip on, in document order, and where. Checks:
//! - everything in `common::check_body` (gate vs a fresh gate vs serde_json read by our
//!   own visitor; simd-json and the event contract after the gate, on a 2 MiB stack);
//! - the gate's verdict equals the ground truth: accepted, or refused with the expected
//!   kind at the expected byte (for a repeated name: one of the repeats, by name).
//!
//! To see the body a grammar input makes (an artifact, say), run the target on it with
//! `JSON_GATE_DUMP=<file>` set: the body is written there.
#![no_main]

mod common;

use std::cell::RefCell;
use std::collections::BTreeSet;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use triggerd::http::parser::BODY_BYTES_MAX;
use triggerd::util::json::{GateError, JsonScratch, DEPTH_MAX};

fuzz_target!(|data: &[u8]| common::on_core_stack(check, data));

thread_local! {
    /// Reused across inputs, as an HTTP core reuses its scratch across requests.
    static SCRATCH: RefCell<JsonScratch> = RefCell::new(JsonScratch::default());
}

/// First bytes that make the input a raw body rather than a grammar program.
const RAW_BODY_FIRST: &[u8] = b"[{\"-0123456789tfn \t\r\n";

fn check(data: &[u8]) {
    let (body, truth) = match data.first() {
        Some(first) if RAW_BODY_FIRST.contains(first) => (data.to_vec(), None),
        _ => {
            let input = Unstructured::new(data.get(1..).unwrap_or_default());
            let plan = Plan::arbitrary_take_rest(input).unwrap_or_default();
            let document = plan.write();
            if let Some(path) = std::env::var_os("JSON_GATE_DUMP") {
                std::fs::write(path, &document.body).expect("write the generated body");
            }
            (document.body, document.truth)
        }
    };
    assert!(body.len() <= BODY_BYTES_MAX);
    let verdict = SCRATCH.with(|scratch| common::check_body(&body, &mut scratch.borrow_mut()));
    let Some(truth) = truth else { return };
    let shown = || String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
    match (&truth, &verdict) {
        (None, Ok(())) => {}
        (None, Err(error)) => panic!("the gate refused a good body with {error:?}: {}", shown()),
        (Some(expected), Ok(())) => panic!("the gate accepted a body with {expected:?}: {}", shown()),
        (Some(expected), Err(error)) => {
            let (kind, offset) = kind_of(error);
            assert_eq!(kind, expected.kind, "{error:?}, expected {expected:?}: {}", shown());
            match (kind, error) {
                (Kind::Syntax, _) => {}
                (Kind::DuplicateName, GateError::DuplicateName { name, .. }) => assert!(
                    expected.repeats.iter().any(|(at, repeated)| (*at, repeated) == (offset, name)),
                    "{error:?}, expected one of {:?}: {}",
                    expected.repeats,
                    shown()
                ),
                _ => assert_eq!(offset, expected.offset, "{error:?}, expected {expected:?}: {}", shown()),
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    NotUtf8,
    Syntax,
    TooDeep,
    DuplicateName,
    NulEscape,
    Surrogate,
    NumberOutOfRange,
    NumberBeyondDouble,
}

fn kind_of(error: &GateError) -> (Kind, usize) {
    match *error {
        GateError::NotUtf8 { offset } => (Kind::NotUtf8, offset),
        GateError::Syntax { offset, .. } => (Kind::Syntax, offset),
        GateError::TooDeep { offset } => (Kind::TooDeep, offset),
        GateError::DuplicateName { offset, .. } => (Kind::DuplicateName, offset),
        GateError::NulEscape { offset } => (Kind::NulEscape, offset),
        GateError::Surrogate { offset } => (Kind::Surrogate, offset),
        GateError::NumberOutOfRange { offset } => (Kind::NumberOutOfRange, offset),
        GateError::NumberBeyondDouble { offset } => (Kind::NumberBeyondDouble, offset),
    }
}

/// The first thing in a document the gate must refuse.
#[derive(Debug)]
struct Problem {
    kind: Kind,
    /// Where the gate reports it (unchecked for syntax errors).
    offset: usize,
    /// For a repeated member name: every later occurrence (where its name starts, and
    /// the name as the gate shows it), any of which the gate may report.
    repeats: Vec<(usize, String)>,
}

/// A generated body and what the gate must answer (`None`: unknown, garbage in it).
struct Document {
    body: Vec<u8>,
    truth: Option<Option<Problem>>,
}

// ---------------------------------------------------------------------------------
// The grammar. Nothing in it is recursive: a document is a flat list of operations.

#[derive(Arbitrary, Debug, Default)]
struct Plan {
    /// Wrap everything in `{"type": ..., "dedup_id": ..., "payload": {` ... `}}`.
    envelope: Option<Envelope>,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
struct Envelope {
    event_type: Vec<Piece>,
    dedup_id: Option<Vec<Piece>>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// Open an array or object (as the next value of the one open).
    Open {
        object: bool,
        name: Name,
    },
    Close,
    Scalar {
        value: Scalar,
        name: Name,
    },
    /// Open `levels` containers, each inside the last.
    Deep {
        nesting: Nesting,
        levels: Levels,
        name: Name,
    },
    /// A container of `skewed(count)` members, then closed; in an object the names are
    /// `k0`, `k1`..., and `twin` repeats one of them (maybe in another form) at the end.
    Wide {
        object: bool,
        name: Name,
        count: u16,
        item: Item,
        form: Form,
        twin: Option<(u16, Form)>,
    },
    Space(Space),
    /// Raw bytes: the ground truth is lost from here on.
    Garbage(Vec<u8>),
    /// Stop here, leaving every container open.
    Stop,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Nesting {
    Arrays,
    Objects,
    Alternating,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Levels {
    /// Up to an absolute depth of `DEPTH_MAX - 4 ..= DEPTH_MAX + 4`.
    AroundLimit(u8),
    /// `skewed(n)` levels.
    Count(u16),
    /// As deep as the body limit allows.
    Fill,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Item {
    Zero,
    Null,
    EmptyArray,
    EmptyObject,
    Text,
    Number(NumberSpec),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Space {
    Blank,
    Tab,
    Newline,
    Return,
    Run(u8),
}

#[derive(Arbitrary, Debug)]
enum Scalar {
    Null,
    True,
    False,
    Integer(i64),
    Double(f64),
    Number(NumberSpec),
    Text(Vec<Piece>),
}

/// A member name (ignored for a value in an array).
#[derive(Arbitrary, Debug)]
enum Name {
    /// One of a few names, so that names repeat.
    Common(u8, Form),
    Own(Vec<Piece>),
}

const COMMON_NAMES: &[&str] = &[
    "a", "b", "type", "payload", "dedup_id", "", "é", "😀", "\"", "\\", "/", "a b", "\u{7f}", "\u{ffff}",
    "k1",
];

/// How the characters of a text piece are written.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Form {
    /// As they are, escaping only `"`, `\` and control characters (as `\u00XX`).
    Raw,
    /// Every character as `\uXXXX` (a surrogate pair beyond U+FFFF), in upper or
    /// lower case hex.
    Unicode { upper: bool },
    /// Short escapes (`\"`, `\\`, `\/`, `\b`, `\f`, `\n`, `\r`, `\t`) where one exists.
    Short,
}

#[derive(Arbitrary, Debug)]
enum Piece {
    Chars(String, Form),
    /// `\u0000`.
    Nul,
    /// `\uD800 + n % 0x400`: unpaired unless a low surrogate escape follows.
    High(u16),
    /// `\uDC00 + n % 0x400`: unpaired unless it follows a high one.
    Low(u16),
    /// Any `\uXXXX`.
    Escape(u16, bool),
    /// A character beyond U+FFFF as a valid surrogate pair.
    Pair(u32, bool),
    /// A raw control character (invalid in a string).
    Control(u8),
    /// A backslash and a byte that starts no escape.
    BadEscape(u8),
    /// `\u` and fewer than four hex digits.
    ShortUnicode(u8),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
struct NumberSpec {
    negative: bool,
    integer: Integer,
    fraction: Option<Fraction>,
    exponent: Option<Exponent>,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Integer {
    Zero,
    Digits {
        first: u8,
        len: Len,
        fill: u8,
    },
    /// Mantissas at a double's largest magnitude (1.7976931348623157e308).
    DoubleEdge(u8),
}

const DOUBLE_EDGES: &[&str] = &[
    "17976931348623157",
    "17976931348623158",
    "17976931348623159",
    "179769313486231580793728971405303415079934132710037826936173778980444968292764750946649017977587207096330286416692887910946555547851940402630657488671505820681908902000708383676273854845817711531764475730270069855571366959622842914819860834936475292719074168444365510704342711559699508093042880177904174497791",
    "179769313486231580793728971405303415079934132710037826936173778980444968292764750946649017977587207096330286416692887910946555547851940402630657488671505820681908902000708383676273854845817711531764475730270069855571366959622842914819860834936475292719074168444365510704342711559699508093042880177904174497792",
    "1797693134862315807",
    "1797693134862315708",
    "99999999999999999",
    "1",
];

#[derive(Arbitrary, Debug, Clone, Copy)]
struct Fraction {
    zeros: Len,
    digits: Len,
    fill: u8,
    trailing_zeros: Len,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Len {
    Small(u8),
    Large(u16),
    Limit(u8),
}

/// Digit counts at a double's limit, then at numeric's (display scale, decimal weight).
const LIMIT_LENS: &[usize] = &[307, 308, 309, 310];
const LIMIT_LENS_LONG: &[usize] = &[16_382, 16_383, 16_384, 131_070, 131_071, 131_072, 131_073];

#[derive(Arbitrary, Debug, Clone, Copy)]
struct Exponent {
    upper: bool,
    sign: Sign,
    value: ExponentValue,
    leading_zeros: u8,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Sign {
    None,
    Plus,
    Minus,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum ExponentValue {
    Small(u16),
    /// One of `EXPONENT_LIMITS`, plus -2..=2.
    Near(u8, i8),
    /// 10 to 49 digits.
    Many(u8, bool),
}

const EXPONENT_LIMITS: &[u64] = &[
    0,
    291,
    292,
    307,
    308,
    309,
    324,
    325,
    16_383,
    16_384,
    131_071,
    131_072,
    1_073_741_822,
    1_073_741_823,
    2_147_483_647,
];

impl Len {
    fn get(self) -> usize {
        match self {
            Len::Small(n) => usize::from(n % 24),
            // As `skewed`, up to 131 040 digits; the long ones are rarer, as they are
            // slow to check and a wide container repeats them until the body is full.
            Len::Large(n) => match n {
                0..=0xBFFF => usize::from(n % 400),
                0xC000..=0xEFFF => usize::from(n % 20_000),
                _ => usize::from(n & 0x0FFF) * 32,
            },
            Len::Limit(n) if n < 0xC0 => LIMIT_LENS[usize::from(n) % LIMIT_LENS.len()],
            Len::Limit(n) => LIMIT_LENS_LONG[usize::from(n) % LIMIT_LENS_LONG.len()],
        }
    }
}

fn digit_run(out: &mut String, len: usize, fill: u8) {
    const CYCLE: &[u8] = b"3141592653589793238462643383279";
    out.extend((0..len).map(|i| match fill % 3 {
        0 => '0',
        1 => '9',
        _ => char::from(CYCLE[(i + usize::from(fill)) % CYCLE.len()]),
    }));
}

impl NumberSpec {
    fn text(self) -> String {
        let mut text = String::new();
        if self.negative {
            text.push('-');
        }
        match self.integer {
            Integer::Zero => text.push('0'),
            Integer::Digits { first, len, fill } => {
                text.push(char::from(b'1' + first % 9));
                digit_run(&mut text, len.get().saturating_sub(1), fill);
            }
            Integer::DoubleEdge(n) => text.push_str(DOUBLE_EDGES[usize::from(n) % DOUBLE_EDGES.len()]),
        }
        if let Some(fraction) = self.fraction {
            text.push('.');
            let from = text.len();
            text.extend(std::iter::repeat_n('0', fraction.zeros.get()));
            let digits = fraction.digits.get();
            if digits > 0 {
                text.push(char::from(b'1' + fraction.fill % 9));
                digit_run(&mut text, digits - 1, fraction.fill / 9);
            }
            text.extend(std::iter::repeat_n('0', fraction.trailing_zeros.get()));
            if text.len() == from {
                text.push('0');
            }
        }
        if let Some(exponent) = self.exponent {
            text.push(if exponent.upper { 'E' } else { 'e' });
            match exponent.sign {
                Sign::None => {}
                Sign::Plus => text.push('+'),
                Sign::Minus => text.push('-'),
            }
            text.extend(std::iter::repeat_n('0', usize::from(exponent.leading_zeros % 24)));
            match exponent.value {
                ExponentValue::Small(n) => text.push_str(&n.to_string()),
                ExponentValue::Near(at, delta) => {
                    let limit = EXPONENT_LIMITS[usize::from(at) % EXPONENT_LIMITS.len()];
                    let value = limit.saturating_add_signed(i64::from(delta % 3));
                    text.push_str(&value.to_string());
                }
                ExponentValue::Many(n, nines) => {
                    text.push(if nines { '9' } else { '1' });
                    let fill = if nines { '9' } else { '0' };
                    text.extend(std::iter::repeat_n(fill, 9 + usize::from(n % 40)));
                }
            }
        }
        text
    }
}

/// What the gate must say of a number (valid JSON number syntax) written by
/// `NumberSpec::text` or by Rust's formatting: PostgreSQL's `numeric_in`
/// (src/backend/utils/adt/numeric.c) refuses an exponent of magnitude INT_MAX / 2 or
/// more, a display scale (fraction digits minus the exponent) above 16383 and a base
/// 10000 weight above 32767 (int16); I-JSON refuses what a double cannot hold. Worked
/// out here in i128 from the digits, not the way the gate does it.
fn number_truth(text: &str) -> Option<Kind> {
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(at) => (&unsigned[..at], Some(&unsigned[at + 1..])),
        None => (unsigned, None),
    };
    let (integer, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let exponent: i128 = match exponent {
        None => 0,
        Some(exponent) => {
            let (negative, digits) = match exponent.as_bytes()[0] {
                b'-' => (true, &exponent[1..]),
                b'+' => (false, &exponent[1..]),
                _ => (false, exponent),
            };
            let digits = digits.trim_start_matches('0');
            if digits.len() > 30 {
                return Some(Kind::NumberOutOfRange);
            }
            let magnitude: i128 =
                if digits.is_empty() { 0 } else { digits.parse().expect("exponent digits") };
            if negative {
                -magnitude
            } else {
                magnitude
            }
        }
    };
    const INT_MAX: i128 = i32::MAX as i128;
    if exponent >= INT_MAX / 2 || exponent <= -(INT_MAX / 2) {
        return Some(Kind::NumberOutOfRange);
    }
    let display_scale = (fraction.len() as i128 - exponent).max(0);
    if display_scale > 0x3FFF {
        return Some(Kind::NumberOutOfRange);
    }
    // Position of the leading non-zero digit: 10^position.
    let leading = match integer.bytes().position(|d| d != b'0') {
        Some(at) => Some(integer.len() as i128 - 1 - at as i128),
        None => fraction.bytes().position(|d| d != b'0').map(|at| -(at as i128) - 1),
    };
    if let Some(position) = leading {
        let base_10000_weight = (position + exponent).div_euclid(4);
        if base_10000_weight > i128::from(i16::MAX) {
            return Some(Kind::NumberOutOfRange);
        }
    }
    if text.parse::<f64>().map_or(true, f64::is_infinite) {
        return Some(Kind::NumberBeyondDouble);
    }
    None
}

// ---------------------------------------------------------------------------------
// Writing a string: the characters as written, then the ground truth read back from
// the sequence of units (characters and `\u` escapes) it is made of.

enum Unit {
    /// A character written raw or as a short escape.
    Char(char),
    /// A `\uXXXX` escape at this offset from the opening quote.
    Escape(u16, usize),
    /// A raw control character, an invalid or malformed escape: a syntax error here.
    Invalid(usize),
}

struct Written {
    /// With its quotes.
    bytes: Vec<u8>,
    /// The first problem (offset from the opening quote).
    problem: Option<(Kind, usize)>,
    /// The decoded text (meaningful when there is no problem).
    decoded: String,
}

fn push_escape(bytes: &mut Vec<u8>, units: &mut Vec<Unit>, unit: u16, upper: bool) {
    units.push(Unit::Escape(unit, bytes.len()));
    let hex = if upper { format!("\\u{unit:04X}") } else { format!("\\u{unit:04x}") };
    bytes.extend_from_slice(hex.as_bytes());
}

fn write_string(pieces: &[Piece]) -> Written {
    let mut bytes = vec![b'"'];
    let mut units = Vec::new();
    for piece in pieces {
        match piece {
            Piece::Chars(text, form) => {
                for c in text.chars() {
                    let short = match c {
                        '"' => Some('"'),
                        '\\' => Some('\\'),
                        '/' => Some('/'),
                        '\u{8}' => Some('b'),
                        '\u{c}' => Some('f'),
                        '\n' => Some('n'),
                        '\r' => Some('r'),
                        '\t' => Some('t'),
                        _ => None,
                    };
                    match (form, short) {
                        (Form::Unicode { upper }, _) => {
                            let mut pair = [0u16; 2];
                            for &unit in c.encode_utf16(&mut pair).iter() {
                                push_escape(&mut bytes, &mut units, unit, *upper);
                            }
                        }
                        (Form::Short, Some(escape)) | (Form::Raw, Some(escape @ ('"' | '\\'))) => {
                            units.push(Unit::Char(c));
                            bytes.extend_from_slice(&[b'\\', escape as u8]);
                        }
                        _ if c < ' ' => push_escape(&mut bytes, &mut units, c as u16, false),
                        _ => {
                            units.push(Unit::Char(c));
                            bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                        }
                    }
                }
            }
            Piece::Nul => push_escape(&mut bytes, &mut units, 0, false),
            Piece::High(n) => push_escape(&mut bytes, &mut units, 0xD800 + n % 0x400, n & 0x8000 != 0),
            Piece::Low(n) => push_escape(&mut bytes, &mut units, 0xDC00 + n % 0x400, n & 0x8000 != 0),
            Piece::Escape(unit, upper) => push_escape(&mut bytes, &mut units, *unit, *upper),
            Piece::Pair(n, upper) => {
                let c = char::from_u32(0x10000 + n % 0x10_0000).expect("a scalar beyond the BMP");
                let mut pair = [0u16; 2];
                for &unit in c.encode_utf16(&mut pair).iter() {
                    push_escape(&mut bytes, &mut units, unit, *upper);
                }
            }
            Piece::Control(n) => {
                units.push(Unit::Invalid(bytes.len()));
                bytes.push(n % 0x20);
            }
            Piece::BadEscape(n) => {
                units.push(Unit::Invalid(bytes.len()));
                let after = b"xaU0'v e\x01"[usize::from(*n) % 9];
                bytes.extend_from_slice(&[b'\\', after]);
            }
            Piece::ShortUnicode(n) => {
                units.push(Unit::Invalid(bytes.len()));
                bytes.extend_from_slice(b"\\u");
                bytes.extend_from_slice(&b"fff"[..usize::from(n % 4)]);
                // Not a hex digit: whatever follows cannot complete the escape.
                bytes.push(b'g');
            }
        }
    }
    bytes.push(b'"');
    let mut decoded = String::new();
    let mut problem = None;
    let mut i = 0;
    while i < units.len() && problem.is_none() {
        match units[i] {
            Unit::Char(c) => decoded.push(c),
            Unit::Invalid(at) => problem = Some((Kind::Syntax, at)),
            Unit::Escape(0, at) => problem = Some((Kind::NulEscape, at)),
            Unit::Escape(high @ 0xD800..=0xDBFF, at) => match units.get(i + 1) {
                Some(&Unit::Escape(low @ 0xDC00..=0xDFFF, _)) => {
                    let scalar = 0x10000 + ((u32::from(high) - 0xD800) << 10) + (u32::from(low) - 0xDC00);
                    decoded.push(char::from_u32(scalar).expect("a surrogate pair makes a scalar"));
                    i += 1;
                }
                _ => problem = Some((Kind::Surrogate, at)),
            },
            Unit::Escape(0xDC00..=0xDFFF, at) => problem = Some((Kind::Surrogate, at)),
            Unit::Escape(unit, _) => decoded.push(char::from_u32(u32::from(unit)).expect("a BMP scalar")),
        }
        i += 1;
    }
    Written { bytes, problem, decoded }
}

impl Name {
    fn write(&self) -> Written {
        match self {
            Name::Common(n, form) => {
                let name = COMMON_NAMES[usize::from(*n) % COMMON_NAMES.len()];
                write_string(&[Piece::Chars(name.to_owned(), *form)])
            }
            Name::Own(pieces) => write_string(pieces),
        }
    }
}

// ---------------------------------------------------------------------------------
// Running a plan. (The generator is instrumented like the code under test, so it keeps
// allocations per level and per member few: it writes a name once per run of levels,
// prepares a wide container's item once, and looks for repeated names only when an
// object closes.)

struct Frame {
    object: bool,
    members: usize,
    /// Where each member name starts, and the name decoded.
    names: Vec<(usize, String)>,
}

/// Every later occurrence of a name in `names` (as the gate shows a name: at most 64
/// characters).
fn repeats(names: &[(usize, String)]) -> Vec<(usize, String)> {
    let mut seen = BTreeSet::new();
    names
        .iter()
        .filter(|(_, name)| !seen.insert(name.as_str()))
        .map(|(at, name)| (*at, name.chars().take(64).collect()))
        .collect()
}

/// A value written the same way many times.
enum Prepared {
    Scalar(Vec<u8>, Option<(Kind, usize)>),
    Container { object: bool },
}

struct Writer {
    out: Vec<u8>,
    frames: Vec<Frame>,
    first: Option<Problem>,
    garbage: bool,
    /// The top-level value is complete.
    done: bool,
}

impl Writer {
    /// Bytes still free once every open container is closed.
    fn room(&self) -> usize {
        BODY_BYTES_MAX.saturating_sub(self.out.len() + self.frames.len())
    }

    fn problem(&mut self, kind: Kind, offset: usize) {
        if self.first.is_none() {
            self.first = Some(Problem { kind, offset, repeats: Vec::new() });
        }
    }

    /// `name` written, if the next value is an object member.
    fn name_here(&self, name: &Name) -> Option<Written> {
        self.frames.last().filter(|frame| frame.object).map(|_| name.write())
    }

    /// Writes what precedes a value of `len` bytes here: a comma and, in an object, the
    /// member name (`name`, written already). False (nothing written) when no value
    /// fits: the document is complete, or the value would not fit in the body limit.
    fn lead_in(&mut self, name: Option<&Written>, len: usize) -> bool {
        if self.done {
            return false;
        }
        let Some(frame) = self.frames.last() else { return len <= self.room() };
        let comma = frame.members > 0;
        let name = if frame.object { Some(name.expect("a member name in an object")) } else { None };
        let need = usize::from(comma) + name.map_or(0, |name| name.bytes.len() + 1) + len;
        if need > self.room() {
            return false;
        }
        if comma {
            self.out.push(b',');
        }
        if let Some(name) = name {
            let at = self.out.len();
            if let Some((kind, offset)) = name.problem {
                self.problem(kind, at + offset);
            }
            self.out.extend_from_slice(&name.bytes);
            self.out.push(b':');
            self.frames.last_mut().expect("an open object").names.push((at, name.decoded.clone()));
        }
        self.frames.last_mut().expect("an open container").members += 1;
        true
    }

    fn scalar(&mut self, name: Option<&Written>, text: &[u8], problem: Option<(Kind, usize)>) -> bool {
        if !self.lead_in(name, text.len()) {
            return false;
        }
        if let Some((kind, offset)) = problem {
            self.problem(kind, self.out.len() + offset);
        }
        self.out.extend_from_slice(text);
        self.done = self.frames.is_empty();
        true
    }

    fn open(&mut self, name: Option<&Written>, object: bool) -> bool {
        // The opening bracket and, later, its closing one.
        if !self.lead_in(name, 2) {
            return false;
        }
        if self.frames.len() >= DEPTH_MAX {
            self.problem(Kind::TooDeep, self.out.len());
        }
        self.out.push(if object { b'{' } else { b'[' });
        self.frames.push(Frame { object, members: 0, names: Vec::new() });
        true
    }

    fn close(&mut self) {
        let Some(frame) = self.frames.pop() else { return };
        if frame.object && frame.names.len() > 1 && self.first.is_none() {
            let repeats = repeats(&frame.names);
            if !repeats.is_empty() {
                self.first = Some(Problem { kind: Kind::DuplicateName, offset: self.out.len(), repeats });
            }
        }
        self.out.push(if frame.object { b'}' } else { b']' });
        self.done = self.frames.is_empty();
    }

    /// Writes `value`; false when it did not fit.
    fn prepared(&mut self, name: Option<&Written>, value: &Prepared) -> bool {
        match value {
            Prepared::Scalar(text, problem) => self.scalar(name, text, *problem),
            Prepared::Container { object } => {
                let opened = self.open(name, *object);
                if opened {
                    self.close();
                }
                opened
            }
        }
    }

    fn run(&mut self, op: &Op) {
        match op {
            Op::Open { object, name } => {
                self.open(self.name_here(name).as_ref(), *object);
            }
            Op::Close => self.close(),
            Op::Scalar { value, name } => {
                let name = self.name_here(name);
                let value = match value {
                    Scalar::Null => Prepared::Scalar(b"null".to_vec(), None),
                    Scalar::True => Prepared::Scalar(b"true".to_vec(), None),
                    Scalar::False => Prepared::Scalar(b"false".to_vec(), None),
                    Scalar::Integer(n) => number(n.to_string()),
                    Scalar::Double(x) if x.is_finite() => number(format!("{x:?}")),
                    Scalar::Double(_) => Prepared::Scalar(b"0".to_vec(), None),
                    Scalar::Number(spec) => number(spec.text()),
                    Scalar::Text(pieces) => {
                        let written = write_string(pieces);
                        Prepared::Scalar(written.bytes, written.problem)
                    }
                };
                self.prepared(name.as_ref(), &value);
            }
            Op::Deep { nesting, levels, name } => {
                let levels = match *levels {
                    Levels::AroundLimit(n) => {
                        (DEPTH_MAX - 4 + usize::from(n % 9)).saturating_sub(self.frames.len())
                    }
                    Levels::Count(n) => skewed(n),
                    Levels::Fill => usize::MAX,
                };
                let name = name.write();
                for level in 0..levels {
                    let object = match nesting {
                        Nesting::Arrays => false,
                        Nesting::Objects => true,
                        Nesting::Alternating => level % 2 == 1,
                    };
                    if !self.open(Some(&name), object) {
                        break;
                    }
                }
            }
            Op::Wide { object, name, count, item, form, twin } => {
                if !self.open(self.name_here(name).as_ref(), *object) {
                    return;
                }
                let value = match item {
                    Item::Zero => Prepared::Scalar(b"0".to_vec(), None),
                    Item::Null => Prepared::Scalar(b"null".to_vec(), None),
                    Item::Text => Prepared::Scalar(b"\"x\"".to_vec(), None),
                    Item::EmptyArray => Prepared::Container { object: false },
                    Item::EmptyObject => Prepared::Container { object: true },
                    Item::Number(spec) => number(spec.text()),
                };
                let count = skewed(*count);
                let member = |i: usize, form: Form| object.then(|| member_name(i, form));
                for i in 0..count {
                    if !self.prepared(member(i, *form).as_ref(), &value) {
                        break;
                    }
                }
                if let Some((which, form)) = twin {
                    if count > 0 {
                        self.prepared(member(usize::from(*which) % count, *form).as_ref(), &value);
                    }
                }
                self.close();
            }
            Op::Space(space) => {
                let text: &[u8] = match space {
                    Space::Blank => b" ",
                    Space::Tab => b"\t",
                    Space::Newline => b"\n",
                    Space::Return => b"\r",
                    Space::Run(n) => &b"\r\n \t \n\n  \t\r \n   \t\t\n"[..usize::from(n % 20)],
                };
                if text.len() <= self.room() {
                    self.out.extend_from_slice(text);
                }
            }
            Op::Garbage(bytes) => {
                let take = bytes.len().min(self.room());
                self.out.extend_from_slice(&bytes[..take]);
                self.garbage = true;
            }
            Op::Stop => {}
        }
    }
}

fn number(text: String) -> Prepared {
    let problem = number_truth(&text).map(|kind| (kind, 0));
    Prepared::Scalar(text.into_bytes(), problem)
}

/// Mostly small (below 64: 3 in 4), sometimes up to 1 023 (3 in 16), rarely up to
/// 32 760 (1 in 16): a run of levels or members that often filled the body would make
/// most executions slow (the first 20-minute run managed 37 a second).
fn skewed(n: u16) -> usize {
    match n {
        0..=0xBFFF => usize::from(n % 64),
        0xC000..=0xEFFF => usize::from(n % 1024),
        _ => usize::from(n & 0x0FFF) * 8,
    }
}

/// `"k<i>"` written in `form`.
fn member_name(i: usize, form: Form) -> Written {
    let decoded = format!("k{i}");
    let mut bytes = Vec::with_capacity(decoded.len() * 6 + 2);
    bytes.push(b'"');
    match form {
        Form::Raw | Form::Short => bytes.extend_from_slice(decoded.as_bytes()),
        Form::Unicode { upper } => {
            for b in decoded.bytes() {
                let hex = if upper { format!("\\u{b:04X}") } else { format!("\\u{b:04x}") };
                bytes.extend_from_slice(hex.as_bytes());
            }
        }
    }
    bytes.push(b'"');
    Written { bytes, problem: None, decoded }
}

impl Plan {
    fn write(&self) -> Document {
        let mut writer =
            Writer { out: Vec::new(), frames: Vec::new(), first: None, garbage: false, done: false };
        let raw = |name: &str| write_string(&[Piece::Chars(name.to_owned(), Form::Raw)]);
        if let Some(envelope) = &self.envelope {
            writer.open(None, true);
            let event_type = write_string(&envelope.event_type);
            writer.scalar(Some(&raw("type")), &event_type.bytes, event_type.problem);
            if let Some(dedup_id) = &envelope.dedup_id {
                let dedup_id = write_string(dedup_id);
                writer.scalar(Some(&raw("dedup_id")), &dedup_id.bytes, dedup_id.problem);
            }
            writer.open(Some(&raw("payload")), true);
        }
        let mut stopped = false;
        for op in &self.ops {
            if matches!(op, Op::Stop) {
                stopped = true;
                break;
            }
            writer.run(op);
        }
        if !stopped {
            while !writer.frames.is_empty() {
                writer.close();
            }
        }
        if !writer.done {
            // Nothing, or something left open: the gate runs out of body.
            let end = writer.out.len();
            writer.problem(Kind::Syntax, end);
        }
        let truth = (!writer.garbage).then_some(writer.first);
        Document { body: writer.out, truth }
    }
}
