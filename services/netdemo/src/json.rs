//! A small, bounded JSON reader for the iperf3 control protocol's
//! messages (the client's test parameters and results).
//!
//! It accepts RFC 8259 JSON and returns a tree of [`Value`]s. The input is
//! untrusted (it comes from the network), so nesting depth and element
//! counts are bounded and every malformed input is an [`Error`], never a
//! panic. Strings keep their escapes decoded only for the common ones
//! (`\" \\ \/ \b \f \n \r \t`); `\uXXXX` is decoded for the Basic
//! Multilingual Plane and surrogate pairs.

use alloc::string::String;
use alloc::vec::Vec;

/// Deepest nesting of arrays and objects accepted.
pub const MAX_DEPTH: usize = 16;
/// Most members of one object or elements of one array.
pub const MAX_ITEMS: usize = 256;

/// A JSON value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// Any number, as f64 (iperf3's byte counts fit exactly below 2^53).
    Number(f64),
    /// A string, unescaped.
    String(String),
    /// An array.
    Array(Vec<Value>),
    /// An object's members in input order.
    Object(Vec<(String, Value)>),
}

/// Why a text is not acceptable JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The text ended inside a value.
    Truncated,
    /// A byte that cannot start or continue a value here, at this offset.
    Unexpected(usize),
    /// Nesting deeper than [`MAX_DEPTH`].
    TooDeep,
    /// An object or array with more than [`MAX_ITEMS`] entries.
    TooManyItems,
    /// Something other than whitespace after the value.
    TrailingBytes,
    /// A string that is not valid UTF-8 or has a bad escape.
    BadString,
    /// A number that does not parse.
    BadNumber,
}

impl Value {
    /// The member `key` of an object (the first, if repeated).
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Object(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The value as a boolean: `true`/`false`, or a number (iperf3 writes
    /// some flags as `1`).
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            Value::Number(n) => Some(*n != 0.0),
            _ => None,
        }
    }

    /// The value as an unsigned integer, if it is a whole number in range.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Number(n)
                if *n >= 0.0 && *n <= 9_007_199_254_740_992.0 && *n == (*n as u64) as f64 =>
            {
                Some(*n as u64)
            }
            _ => None,
        }
    }
}

/// Parses `text` as one JSON value.
pub fn parse(text: &[u8]) -> Result<Value, Error> {
    let mut p = Parser { s: text, i: 0 };
    let v = p.value(0)?;
    p.ws();
    if p.i != p.s.len() {
        return Err(Error::TrailingBytes);
    }
    Ok(v)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.s.get(self.i) {
            self.i += 1;
        }
    }

    fn peek(&self) -> Result<u8, Error> {
        self.s.get(self.i).copied().ok_or(Error::Truncated)
    }

    fn expect(&mut self, b: u8) -> Result<(), Error> {
        if self.peek()? != b {
            return Err(Error::Unexpected(self.i));
        }
        self.i += 1;
        Ok(())
    }

    fn literal(&mut self, word: &[u8], v: Value) -> Result<Value, Error> {
        let end = self.i + word.len();
        match self.s.get(self.i..end) {
            Some(w) if w == word => {
                self.i = end;
                Ok(v)
            }
            Some(_) => Err(Error::Unexpected(self.i)),
            None => Err(Error::Truncated),
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, Error> {
        self.ws();
        match self.peek()? {
            b'{' => self.object(depth + 1),
            b'[' => self.array(depth + 1),
            b'"' => self.string().map(Value::String),
            b't' => self.literal(b"true", Value::Bool(true)),
            b'f' => self.literal(b"false", Value::Bool(false)),
            b'n' => self.literal(b"null", Value::Null),
            b'-' | b'0'..=b'9' => self.number(),
            _ => Err(Error::Unexpected(self.i)),
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, Error> {
        if depth > MAX_DEPTH {
            return Err(Error::TooDeep);
        }
        self.expect(b'{')?;
        let mut members = Vec::new();
        self.ws();
        if self.peek()? == b'}' {
            self.i += 1;
            return Ok(Value::Object(members));
        }
        loop {
            if members.len() == MAX_ITEMS {
                return Err(Error::TooManyItems);
            }
            self.ws();
            if self.peek()? != b'"' {
                return Err(Error::Unexpected(self.i));
            }
            let key = self.string()?;
            self.ws();
            self.expect(b':')?;
            let v = self.value(depth)?;
            members.push((key, v));
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Ok(Value::Object(members));
                }
                _ => return Err(Error::Unexpected(self.i)),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, Error> {
        if depth > MAX_DEPTH {
            return Err(Error::TooDeep);
        }
        self.expect(b'[')?;
        let mut items = Vec::new();
        self.ws();
        if self.peek()? == b']' {
            self.i += 1;
            return Ok(Value::Array(items));
        }
        loop {
            if items.len() == MAX_ITEMS {
                return Err(Error::TooManyItems);
            }
            items.push(self.value(depth)?);
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b']' => {
                    self.i += 1;
                    return Ok(Value::Array(items));
                }
                _ => return Err(Error::Unexpected(self.i)),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, Error> {
        let digits = self.s.get(self.i..self.i + 4).ok_or(Error::Truncated)?;
        let text = core::str::from_utf8(digits).map_err(|_| Error::BadString)?;
        let v = u32::from_str_radix(text, 16).map_err(|_| Error::BadString)?;
        self.i += 4;
        Ok(v)
    }

    fn string(&mut self) -> Result<String, Error> {
        self.expect(b'"')?;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let b = self.peek()?;
            self.i += 1;
            match b {
                b'"' => return String::from_utf8(out).map_err(|_| Error::BadString),
                b'\\' => {
                    let e = self.peek()?;
                    self.i += 1;
                    let c = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            let code = if (0xd800..0xdc00).contains(&hi) {
                                if self.s.get(self.i..self.i + 2) != Some(b"\\u") {
                                    return Err(Error::BadString);
                                }
                                self.i += 2;
                                let lo = self.hex4()?;
                                if !(0xdc00..0xe000).contains(&lo) {
                                    return Err(Error::BadString);
                                }
                                0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00)
                            } else {
                                hi
                            };
                            char::from_u32(code).ok_or(Error::BadString)?
                        }
                        _ => return Err(Error::BadString),
                    };
                    let mut buf = [0; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                0x00..=0x1f => return Err(Error::BadString),
                _ => out.push(b),
            }
        }
    }

    fn number(&mut self) -> Result<Value, Error> {
        let start = self.i;
        while let Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') = self.s.get(self.i) {
            self.i += 1;
        }
        let text = core::str::from_utf8(&self.s[start..self.i]).map_err(|_| Error::BadNumber)?;
        // Rust's float grammar is a superset of JSON's except for these.
        if text.starts_with('+')
            || text.ends_with('.')
            || text.contains(".e")
            || text.contains(".E")
        {
            return Err(Error::BadNumber);
        }
        text.parse::<f64>()
            .map(Value::Number)
            .map_err(|_| Error::BadNumber)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn parses_iperf3_parameters() {
        let text = br#"{"tcp":true,"omit":0,"time":10,"num":0,"blockcount":0,"parallel":1,"reverse":true,"len":131072,"pacing_timer":1000,"client_version":"3.12"}"#;
        let v = parse(text).unwrap();
        assert_eq!(v.get("tcp"), Some(&Value::Bool(true)));
        assert_eq!(v.get("parallel").and_then(Value::as_u64), Some(1));
        assert_eq!(v.get("reverse").and_then(Value::as_bool), Some(true));
        assert_eq!(
            v.get("client_version"),
            Some(&Value::String("3.12".to_string()))
        );
        assert_eq!(v.get("udp"), None);
    }

    #[test]
    fn nested_values_and_escapes() {
        let v = parse(
            br#" {"streams":[{"id":1,"bytes":1.5e3}],"s":"a\"b\\\u00e9\ud83d\ude00","n":null} "#,
        )
        .unwrap();
        let Some(Value::Array(streams)) = v.get("streams") else {
            panic!("no streams")
        };
        assert_eq!(streams[0].get("bytes").and_then(Value::as_u64), Some(1500));
        assert_eq!(
            v.get("s"),
            Some(&Value::String("a\"b\\\u{e9}\u{1f600}".to_string()))
        );
        assert_eq!(v.get("n"), Some(&Value::Null));
    }

    #[test]
    fn rejects_malformed_input() {
        for bad in [
            &b""[..],
            b"{",
            b"{\"a\":}",
            b"{\"a\" 1}",
            b"[1,]",
            b"{\"a\":1,}",
            b"tru",
            b"nul",
            b"+1",
            b"1.",
            b"\"\x01\"",
            b"\"\\x\"",
            b"\"\\ud800\"",
            b"{} x",
            b"\"\xff\"",
        ] {
            assert!(
                parse(bad).is_err(),
                "{:?} accepted",
                core::str::from_utf8(bad)
            );
        }
    }

    #[test]
    fn depth_and_size_are_bounded() {
        let deep: Vec<u8> = core::iter::repeat_n(b'[', MAX_DEPTH + 1)
            .chain(core::iter::repeat_n(b']', MAX_DEPTH + 1))
            .collect();
        assert_eq!(parse(&deep), Err(Error::TooDeep));
        let ok: Vec<u8> = core::iter::repeat_n(b'[', MAX_DEPTH)
            .chain(core::iter::repeat_n(b']', MAX_DEPTH))
            .collect();
        assert!(parse(&ok).is_ok());
        let mut many = b"[".to_vec();
        for i in 0..=MAX_ITEMS {
            if i > 0 {
                many.push(b',');
            }
            many.push(b'0');
        }
        many.push(b']');
        assert_eq!(parse(&many), Err(Error::TooManyItems));
    }

    #[test]
    fn whole_numbers_only_as_u64() {
        assert_eq!(Value::Number(3.0).as_u64(), Some(3));
        assert_eq!(Value::Number(3.5).as_u64(), None);
        assert_eq!(Value::Number(-1.0).as_u64(), None);
        assert_eq!(Value::Number(1e300).as_u64(), None);
    }
}
