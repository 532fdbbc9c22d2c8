//! A small JSON writer for responses and webhook bodies. Handlers write straight into the connection's
//! body buffer; no intermediate `Value` tree, no `String` per field.

use uuid::Uuid;

use crate::util::time::write_rfc3339_micros;

/// Writes one JSON object field by field, managing commas.
pub struct ObjectWriter<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> ObjectWriter<'a> {
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        ObjectWriter { out, first: true }
    }

    fn key(&mut self, key: &str) -> &mut Vec<u8> {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        write_str(self.out, key);
        self.out.push(b':');
        self.out
    }

    pub fn str(&mut self, key: &str, value: &str) -> &mut Self {
        let out = self.key(key);
        write_str(out, value);
        self
    }

    pub fn opt_str(&mut self, key: &str, value: Option<&str>) -> &mut Self {
        match value {
            Some(value) => self.str(key, value),
            None => self.null(key),
        }
    }

    pub fn null(&mut self, key: &str) -> &mut Self {
        self.key(key).extend_from_slice(b"null");
        self
    }

    pub fn uint(&mut self, key: &str, value: u64) -> &mut Self {
        let mut digits = itoa::Buffer::new();
        self.key(key).extend_from_slice(digits.format(value).as_bytes());
        self
    }

    pub fn uuid(&mut self, key: &str, value: &Uuid) -> &mut Self {
        let out = self.key(key);
        write_uuid(out, value);
        self
    }

    /// A timestamp in microseconds since the epoch, as RFC 3339 UTC.
    pub fn time(&mut self, key: &str, micros: i64) -> &mut Self {
        let out = self.key(key);
        out.push(b'"');
        write_rfc3339_micros(out, micros);
        out.push(b'"');
        self
    }

    pub fn opt_time(&mut self, key: &str, micros: Option<i64>) -> &mut Self {
        match micros {
            Some(micros) => self.time(key, micros),
            None => self.null(key),
        }
    }

    /// A value written by `write` (an array of objects, say).
    pub fn with(&mut self, key: &str, write: impl FnOnce(&mut Vec<u8>)) -> &mut Self {
        write(self.key(key));
        self
    }

    /// A value that is already JSON text (a stored payload).
    pub fn raw(&mut self, key: &str, json: &str) -> &mut Self {
        self.key(key).extend_from_slice(json.as_bytes());
        self
    }

    pub fn finish(&mut self) {
        self.out.push(b'}');
    }
}

pub fn write_uuid(out: &mut Vec<u8>, value: &Uuid) {
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    out.push(b'"');
    out.extend_from_slice(value.hyphenated().encode_lower(&mut text).as_bytes());
    out.push(b'"');
}

/// Appends `value` as a JSON string with the escapes RFC 8259 requires.
pub fn write_str(out: &mut Vec<u8>, value: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = value.as_bytes();
    let mut clean_from = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[clean_from..i]);
        if escape.is_empty() {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ]);
        } else {
            out.extend_from_slice(escape);
        }
        clean_from = i + 1;
    }
    out.extend_from_slice(&bytes[clean_from..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_strings() {
        let mut out = Vec::new();
        write_str(&mut out, "a\"b\\c\nd\u{1}é");
        assert_eq!(String::from_utf8(out).unwrap(), r#""a\"b\\c\nd\u0001é""#);
    }

    #[test]
    fn writes_objects() {
        let mut out = Vec::new();
        ObjectWriter::new(&mut out).str("a", "x").uint("n", 7).null("z").raw("p", "{\"k\":1}").finish();
        assert_eq!(String::from_utf8(out).unwrap(), r#"{"a":"x","n":7,"z":null,"p":{"k":1}}"#);
    }
}
