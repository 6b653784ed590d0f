//! A small JSON reader and writer (xtask is std-only): what `mae bench`,
//! `mae info --presets --json` and torch_bench.py print, and bench's
//! `--json` lines.

use std::fmt::Write as _;

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Num(f64),
    Str(String),
    Bool(bool),
    Null,
    Array(Vec<Value>),
    Object(Object),
}

/// A JSON object, keys in order.
pub type Object = Vec<(String, Value)>;

impl Value {
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Num(n) => Some(*n),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_object(&self) -> Option<&[(String, Value)]> {
        match self {
            Value::Object(o) => Some(o),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

pub fn get<'a>(obj: &'a [(String, Value)], key: &str) -> Option<&'a Value> {
    obj.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// Parse a text that is one JSON object (values may nest).
pub fn parse_object(s: &str) -> Result<Object, String> {
    let mut p = Parser { s: s.as_bytes(), i: 0, depth: 0 };
    p.ws();
    let obj = p.object()?;
    p.ws();
    if p.i != p.s.len() {
        return Err(format!("trailing characters at byte {}", p.i));
    }
    Ok(obj)
}

/// Nesting deeper than this is refused rather than risking the stack.
const MAX_DEPTH: usize = 32;

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    /// Objects and arrays open around the current value.
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn next(&mut self) -> Option<u8> {
        let c = self.peek();
        self.i += 1;
        c
    }
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> Result<(), String> {
        if self.next() == Some(c) {
            Ok(())
        } else {
            Err(format!("expected `{}` at byte {}", c as char, self.i - 1))
        }
    }

    /// The items of `{...}` or `[...]` after the opening bracket: calls
    /// `item` for each, separated by `,`, up to `close`.
    fn items(
        &mut self,
        close: u8,
        mut item: impl FnMut(&mut Self) -> Result<(), String>,
    ) -> Result<(), String> {
        self.ws();
        if self.peek() == Some(close) {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.ws();
            item(self)?;
            self.ws();
            match self.next() {
                Some(b',') => continue,
                Some(c) if c == close => return Ok(()),
                _ => return Err(format!("expected `,` or `{}` at byte {}", close as char, self.i - 1)),
            }
        }
    }

    fn object(&mut self) -> Result<Object, String> {
        self.eat(b'{')?;
        let mut out = Vec::new();
        self.items(b'}', |p| {
            let key = p.string()?;
            p.ws();
            p.eat(b':')?;
            p.ws();
            out.push((key, p.value()?));
            Ok(())
        })?;
        Ok(out)
    }

    fn array(&mut self) -> Result<Vec<Value>, String> {
        self.eat(b'[')?;
        let mut out = Vec::new();
        self.items(b']', |p| {
            out.push(p.value()?);
            Ok(())
        })?;
        Ok(out)
    }

    fn string(&mut self) -> Result<String, String> {
        self.eat(b'"')?;
        let mut out: Vec<u8> = Vec::new();
        loop {
            match self.next() {
                None => return Err("unterminated string".into()),
                Some(b'"') => break,
                Some(b'\\') => self.escape(&mut out)?,
                Some(c) => out.push(c),
            }
        }
        String::from_utf8(out).map_err(|e| e.to_string())
    }

    fn escape(&mut self, out: &mut Vec<u8>) -> Result<(), String> {
        match self.next() {
            Some(b'n') => out.push(b'\n'),
            Some(b't') => out.push(b'\t'),
            Some(b'r') => out.push(b'\r'),
            Some(b'b') => out.push(8),
            Some(b'f') => out.push(12),
            Some(b'u') => {
                let hex = self.s.get(self.i..self.i + 4).ok_or("short \\u escape")?;
                let code = u32::from_str_radix(std::str::from_utf8(hex).map_err(|e| e.to_string())?, 16)
                    .map_err(|e| e.to_string())?;
                self.i += 4;
                let c = char::from_u32(code).unwrap_or('\u{fffd}');
                out.extend_from_slice(c.to_string().as_bytes());
            }
            Some(c) => out.push(c), // \" \\ \/
            None => return Err("unterminated escape".into()),
        }
        Ok(())
    }

    fn value(&mut self) -> Result<Value, String> {
        match self.peek() {
            Some(b'"') => Ok(Value::Str(self.string()?)),
            Some(b'{' | b'[') if self.depth >= MAX_DEPTH => {
                Err(format!("nested deeper than {MAX_DEPTH} at byte {}", self.i))
            }
            Some(b'{') => self.nested(Self::object).map(Value::Object),
            Some(b'[') => self.nested(Self::array).map(Value::Array),
            _ => self.word(),
        }
    }

    fn nested<T>(&mut self, f: fn(&mut Self) -> Result<T, String>) -> Result<T, String> {
        self.depth += 1;
        let out = f(self);
        self.depth -= 1;
        out
    }

    /// A number, `true`, `false` or `null`.
    fn word(&mut self) -> Result<Value, String> {
        let start = self.i;
        while matches!(self.peek(), Some(c) if !matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
        {
            self.i += 1;
        }
        let word = std::str::from_utf8(&self.s[start..self.i]).map_err(|e| e.to_string())?;
        match word {
            "null" => Ok(Value::Null),
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            // Python's json.dumps writes NaN / Infinity for non-finite floats.
            "NaN" | "Infinity" | "-Infinity" => Ok(Value::Null),
            w => w.parse::<f64>().map(Value::Num).map_err(|_| format!("bad value `{w}` at byte {start}")),
        }
    }
}

/// A JSON object from key/value pairs (keys are plain identifiers), on one
/// line, `{"a": 1, "b": [1, 2]}`.
pub fn json_object(fields: &[(&str, Value)]) -> String {
    let mut s = String::new();
    write_object(&mut s, fields.iter().map(|(k, v)| (*k, v)));
    s
}

fn write_object<'a>(s: &mut String, fields: impl Iterator<Item = (&'a str, &'a Value)>) {
    s.push('{');
    for (i, (k, v)) in fields.enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        json_string(s, k);
        s.push_str(": ");
        write_value(s, v);
    }
    s.push('}');
}

fn write_value(s: &mut String, v: &Value) {
    match v {
        Value::Num(n) if n.is_finite() => {
            let _ = write!(s, "{n}");
        }
        Value::Num(_) | Value::Null => s.push_str("null"),
        Value::Bool(b) => {
            let _ = write!(s, "{b}");
        }
        Value::Str(t) => json_string(s, t),
        Value::Array(items) => {
            s.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    s.push_str(", ");
                }
                write_value(s, item);
            }
            s.push(']');
        }
        Value::Object(o) => write_object(s, o.iter().map(|(k, v)| (k.as_str(), v))),
    }
}

fn json_string(s: &mut String, t: &str) {
    s.push('"');
    for c in t.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
}

pub fn num(x: f64) -> Value {
    Value::Num(x)
}

pub fn opt_num(x: Option<f64>) -> Value {
    x.map_or(Value::Null, Value::Num)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_json_round_trip() {
        let line = r#"{"preset":"mae-vit-tiny-patch4-32","batch_size":64,"step_s_median":0.5,"x":1e-3,"n":null,"b":true,"s":"a\"b\u00e9"}"#;
        let obj = parse_object(line).unwrap();
        assert_eq!(get(&obj, "preset"), Some(&Value::Str("mae-vit-tiny-patch4-32".into())));
        assert_eq!(get(&obj, "batch_size").and_then(Value::as_f64), Some(64.0));
        assert_eq!(get(&obj, "x").and_then(Value::as_f64), Some(1e-3));
        assert_eq!(get(&obj, "n"), Some(&Value::Null));
        assert_eq!(get(&obj, "b"), Some(&Value::Bool(true)));
        assert_eq!(get(&obj, "s").and_then(Value::as_str), Some("a\"bé"));
        let py = r#"{"a": 1.5, "b": NaN, "c": "x"}"#; // Python's json.dumps spacing
        let obj = parse_object(py).unwrap();
        assert_eq!(get(&obj, "a").and_then(Value::as_f64), Some(1.5));
        assert_eq!(get(&obj, "b"), Some(&Value::Null));
        let back =
            json_object(&[("a", Value::Num(1.5)), ("s", Value::Str("q\"".into())), ("n", Value::Null)]);
        assert_eq!(back, r#"{"a": 1.5, "s": "q\"", "n": null}"#);
        assert_eq!(parse_object(&back).unwrap().len(), 3);
        assert!(parse_object(r#"{"a": 1"#).is_err());
        assert!(parse_object(r#"{"a": 1} x"#).is_err());
        assert!(parse_object(r#"[1]"#).is_err());
        assert_eq!(parse_object("{}").unwrap().len(), 0);
    }

    #[test]
    fn nested_values() {
        let text = r#"{"p": {"image_size": [224, 224], "enc": {"dim": 768}, "e": [], "o": {}}, "q": 1}"#;
        let obj = parse_object(text).unwrap();
        let p = get(&obj, "p").and_then(Value::as_object).unwrap();
        let size: Vec<f64> = get(p, "image_size")
            .and_then(Value::as_array)
            .unwrap()
            .iter()
            .filter_map(Value::as_f64)
            .collect();
        assert_eq!(size, [224.0, 224.0]);
        let enc = get(p, "enc").and_then(Value::as_object).unwrap();
        assert_eq!(get(enc, "dim").and_then(Value::as_f64), Some(768.0));
        assert_eq!(get(p, "e"), Some(&Value::Array(vec![])));
        // The writer nests the same way, and what it writes reads back.
        let fields: Vec<(&str, Value)> = obj.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let back = json_object(&fields);
        assert_eq!(
            back,
            r#"{"p": {"image_size": [224, 224], "enc": {"dim": 768}, "e": [], "o": {}}, "q": 1}"#
        );
        assert_eq!(parse_object(&back).unwrap(), obj);
        assert!(parse_object(r#"{"a": [1, }"#).is_err());
        assert!(parse_object(r#"{"a": [1 2]}"#).is_err());
        let deep = format!("{{\"a\": {}1{}}}", "[".repeat(40), "]".repeat(40));
        assert!(parse_object(&deep).unwrap_err().contains("nested deeper"));
    }
}
