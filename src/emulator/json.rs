//! A JSON reader with the behaviour of Go's `json.Decoder.Decode`, which gin's `ShouldBindJSON` uses.
//!
//! It keeps what serde_json's `Value` loses and Go binding needs: object members in order (for
//! duplicate keys, the last one wins), the literal text of numbers (for `cannot unmarshal number
//! 1.5 into ...`), and Go's error texts (`EOF`, `unexpected EOF`, `invalid character 'x' looking for
//! beginning of value`, ...). Like the Go decoder it reads one value and ignores what follows a
//! top-level object or array. Nesting deeper than [`MAX_DEPTH`] is refused (Go allows 10 000).

use super::gostr::quote_char_body;

/// Deepest nesting accepted, kept low enough for a recursive reader on a small task stack.
const MAX_DEPTH: usize = 1000;

/// One decoded JSON value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum GoJson {
    Null,
    Bool(bool),
    /// The number's literal text, exactly as sent.
    Number(String),
    Str(String),
    Array(Vec<GoJson>),
    /// Members in order, duplicates kept.
    Object(Vec<(String, GoJson)>),
}

impl GoJson {
    /// The word Go's `UnmarshalTypeError` uses for this kind of value.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            GoJson::Null => "null",
            GoJson::Bool(_) => "bool",
            GoJson::Number(_) => "number",
            GoJson::Str(_) => "string",
            GoJson::Array(_) => "array",
            GoJson::Object(_) => "object",
        }
    }
}

/// Decode the first JSON value of `input` as `json.Decoder.Decode` does.
pub(crate) fn decode(input: &[u8]) -> Result<GoJson, String> {
    let mut p = Parser { b: input, i: 0 };
    p.skip_ws();
    if p.i >= p.b.len() {
        return Err("EOF".into());
    }
    let value = p.value(0)?;
    if !matches!(value, GoJson::Object(_) | GoJson::Array(_)) {
        if let Some(&c) = p.b.get(p.i) {
            if !is_space(c) {
                return Err(invalid(c, "after top-level value"));
            }
        }
    }
    Ok(value)
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

/// Go's `quoteChar`.
fn quote_char(c: u8) -> String {
    match c {
        b'\'' => "'\\''".into(),
        b'"' => "'\"'".into(),
        c => format!("'{}'", quote_char_body(char::from(c), '"')),
    }
}

fn invalid(c: u8, context: &str) -> String {
    format!("invalid character {} {context}", quote_char(c))
}

const UNEXPECTED_EOF: &str = "unexpected EOF";

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.b.get(self.i).is_some_and(|&c| is_space(c)) {
            self.i += 1;
        }
    }

    /// The next non-space byte, not consumed.
    fn peek(&mut self) -> Result<u8, String> {
        self.skip_ws();
        self.b
            .get(self.i)
            .copied()
            .ok_or_else(|| UNEXPECTED_EOF.to_owned())
    }

    fn next_raw(&mut self) -> Result<u8, String> {
        let c = self
            .b
            .get(self.i)
            .copied()
            .ok_or_else(|| UNEXPECTED_EOF.to_owned())?;
        self.i += 1;
        Ok(c)
    }

    fn value(&mut self, depth: usize) -> Result<GoJson, String> {
        let c = self.peek()?;
        match c {
            b'{' | b'[' if depth >= MAX_DEPTH => Err("exceeded max depth".into()),
            b'{' => self.object(depth + 1),
            b'[' => self.array(depth + 1),
            b'"' => self.string().map(GoJson::Str),
            b't' => self.literal("true").map(|_| GoJson::Bool(true)),
            b'f' => self.literal("false").map(|_| GoJson::Bool(false)),
            b'n' => self.literal("null").map(|_| GoJson::Null),
            b'-' | b'0'..=b'9' => self.number().map(GoJson::Number),
            c => Err(invalid(c, "looking for beginning of value")),
        }
    }

    fn object(&mut self, depth: usize) -> Result<GoJson, String> {
        self.i += 1;
        let mut members = Vec::new();
        if self.peek()? == b'}' {
            self.i += 1;
            return Ok(GoJson::Object(members));
        }
        loop {
            let c = self.peek()?;
            if c != b'"' {
                return Err(invalid(c, "looking for beginning of object key string"));
            }
            let key = self.string()?;
            let c = self.peek()?;
            if c != b':' {
                return Err(invalid(c, "after object key"));
            }
            self.i += 1;
            let value = self.value(depth)?;
            members.push((key, value));
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Ok(GoJson::Object(members));
                }
                c => return Err(invalid(c, "after object key:value pair")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<GoJson, String> {
        self.i += 1;
        let mut items = Vec::new();
        if self.peek()? == b']' {
            self.i += 1;
            return Ok(GoJson::Array(items));
        }
        loop {
            items.push(self.value(depth)?);
            match self.peek()? {
                b',' => self.i += 1,
                b']' => {
                    self.i += 1;
                    return Ok(GoJson::Array(items));
                }
                c => return Err(invalid(c, "after array element")),
            }
        }
    }

    fn literal(&mut self, word: &'static str) -> Result<(), String> {
        for expected in word.bytes() {
            let c = self.next_raw()?;
            if c != expected {
                return Err(invalid(
                    c,
                    &format!("in literal {word} (expecting {})", quote_char(expected)),
                ));
            }
        }
        Ok(())
    }

    fn digits(&mut self) {
        while self.b.get(self.i).is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
    }

    /// A number per Go's scanner; the byte that ends it is judged by the caller's context.
    fn number(&mut self) -> Result<String, String> {
        let start = self.i;
        if self.b[self.i] == b'-' {
            self.i += 1;
            let c = self.next_raw()?;
            if !c.is_ascii_digit() {
                return Err(invalid(c, "in numeric literal"));
            }
            self.i -= 1;
        }
        if self.b.get(self.i) == Some(&b'0') {
            self.i += 1;
        } else {
            self.digits();
        }
        if self.b.get(self.i) == Some(&b'.') {
            self.i += 1;
            let c = self.next_raw()?;
            if !c.is_ascii_digit() {
                return Err(invalid(c, "after decimal point in numeric literal"));
            }
            self.digits();
        }
        if matches!(self.b.get(self.i), Some(b'e' | b'E')) {
            self.i += 1;
            let mut c = self.next_raw()?;
            if c == b'+' || c == b'-' {
                c = self.next_raw()?;
            }
            if !c.is_ascii_digit() {
                return Err(invalid(c, "in exponent of numeric literal"));
            }
            self.digits();
        }
        Ok(String::from_utf8_lossy(&self.b[start..self.i]).into_owned())
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let mut v = 0u32;
        for _ in 0..4 {
            let c = self.next_raw()?;
            let d = char::from(c)
                .to_digit(16)
                .ok_or_else(|| invalid(c, "in \\u hexadecimal character escape"))?;
            v = v * 16 + d;
        }
        Ok(v)
    }

    fn string(&mut self) -> Result<String, String> {
        self.i += 1;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let c = self.next_raw()?;
            match c {
                b'"' => return Ok(String::from_utf8_lossy(&out).into_owned()),
                b'\\' => {
                    let e = self.next_raw()?;
                    let simple = match e {
                        b'"' | b'\\' | b'/' => Some(e),
                        b'b' => Some(8),
                        b'f' => Some(12),
                        b'n' => Some(b'\n'),
                        b'r' => Some(b'\r'),
                        b't' => Some(b'\t'),
                        b'u' => None,
                        e => return Err(invalid(e, "in string escape code")),
                    };
                    match simple {
                        Some(b) => out.push(b),
                        None => self.unicode_escape(&mut out)?,
                    }
                }
                c if c < 0x20 => return Err(invalid(c, "in string literal")),
                c => out.push(c),
            }
        }
    }

    /// The rest of a `\uXXXX` escape (and a following low surrogate, if any).
    fn unicode_escape(&mut self, out: &mut Vec<u8>) -> Result<(), String> {
        let hi = self.hex4()?;
        let mut ch = char::from_u32(hi);
        if (0xD800..0xDC00).contains(&hi) && self.b.get(self.i..self.i + 2) == Some(b"\\u") {
            let save = self.i;
            self.i += 2;
            let lo = self.hex4()?;
            if (0xDC00..0xE000).contains(&lo) {
                ch = char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00));
            } else {
                self.i = save;
            }
        }
        let mut buf = [0u8; 4];
        out.extend_from_slice(ch.unwrap_or('\u{FFFD}').encode_utf8(&mut buf).as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_error_texts() {
        assert_eq!(decode(b"").unwrap_err(), "EOF");
        assert_eq!(decode(b"  ").unwrap_err(), "EOF");
        assert_eq!(decode(b"{\"a\":1").unwrap_err(), "unexpected EOF");
        assert_eq!(
            decode(b"x").unwrap_err(),
            "invalid character 'x' looking for beginning of value"
        );
        assert_eq!(
            decode(b"{\"a\" 1}").unwrap_err(),
            "invalid character '1' after object key"
        );
        assert_eq!(
            decode(b"{\"a\":1 \"b\"}").unwrap_err(),
            "invalid character '\"' after object key:value pair"
        );
        assert_eq!(
            decode(b"{a:1}").unwrap_err(),
            "invalid character 'a' looking for beginning of object key string"
        );
        assert_eq!(
            decode(b"[1,]").unwrap_err(),
            "invalid character ']' looking for beginning of value"
        );
        assert_eq!(
            decode(b"{\"a\":01}").unwrap_err(),
            "invalid character '1' after object key:value pair"
        );
        assert_eq!(
            decode(b"tru ").unwrap_err(),
            "invalid character ' ' in literal true (expecting 'e')"
        );
        assert_eq!(
            decode(b"\"a\nb\"").unwrap_err(),
            "invalid character '\\n' in string literal"
        );
    }

    #[test]
    fn keeps_order_duplicates_and_number_text() {
        let v = decode(b"{\"a\":1.50,\"a\":\"\\u00e9\\ud83d\\ude00\"} trailing").unwrap();
        assert_eq!(
            v,
            GoJson::Object(vec![
                ("a".into(), GoJson::Number("1.50".into())),
                ("a".into(), GoJson::Str("é😀".into())),
            ])
        );
    }
}
