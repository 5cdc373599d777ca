//! A UBJSON (Universal Binary JSON, draft 12) reader producing `serde_json::Value`,
//! enough for XGBoost's `.ubj` models: all scalar markers, optimised (typed and
//! counted) containers. Every length is checked against the remaining input, so
//! truncated or hostile files fail with an error naming the byte offset.

use serde_json::{Map, Number, Value};

const MAX_DEPTH: usize = 128;

pub fn parse(data: &[u8]) -> Result<Value, String> {
    let mut r = Reader { data, pos: 0 };
    let v = r.value(0)?;
    Ok(v)
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn err(&self, what: &str) -> String {
        format!("UBJSON: {what} at byte {}", self.pos)
    }

    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.data.len())
            .ok_or_else(|| self.err("unexpected end of data"))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn peek(&self) -> Result<u8, String> {
        self.data.get(self.pos).copied().ok_or_else(|| self.err("unexpected end of data"))
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn int_of(&mut self, marker: u8) -> Result<i64, String> {
        Ok(match marker {
            b'i' => i64::from(self.byte()? as i8),
            b'U' => i64::from(self.byte()?),
            b'I' => i64::from(i16::from_be_bytes(self.array()?)),
            b'l' => i64::from(i32::from_be_bytes(self.array()?)),
            b'L' => i64::from_be_bytes(self.array()?),
            m => return Err(self.err(&format!("expected an integer marker, found {:?}", m as char))),
        })
    }

    fn length(&mut self) -> Result<usize, String> {
        let m = self.byte()?;
        let n = self.int_of(m)?;
        let n = usize::try_from(n).map_err(|_| self.err(&format!("negative length {n}")))?;
        // Each element takes at least one byte, so a length beyond the remaining input is a lie.
        if n > self.data.len() - self.pos.min(self.data.len()) {
            return Err(self.err(&format!("length {n} exceeds the remaining data")));
        }
        Ok(n)
    }

    fn string(&mut self) -> Result<String, String> {
        let n = self.length()?;
        let s = self.take(n)?;
        String::from_utf8(s.to_vec()).map_err(|_| self.err("string is not UTF-8"))
    }

    fn value(&mut self, depth: usize) -> Result<Value, String> {
        let m = self.byte()?;
        self.value_of(m, depth)
    }

    fn value_of(&mut self, m: u8, depth: usize) -> Result<Value, String> {
        if depth > MAX_DEPTH {
            return Err(self.err("containers nested too deeply"));
        }
        Ok(match m {
            b'Z' => Value::Null,
            b'T' => Value::Bool(true),
            b'F' => Value::Bool(false),
            b'i' | b'U' | b'I' | b'l' | b'L' => Value::from(self.int_of(m)?),
            b'd' => float(f64::from(f32::from_be_bytes(self.array()?))),
            b'D' => float(f64::from_be_bytes(self.array()?)),
            b'C' => Value::String((self.byte()? as char).to_string()),
            b'S' => Value::String(self.string()?),
            b'H' => {
                let s = self.string()?;
                let n: f64 = s.parse().map_err(|_| self.err(&format!("bad high-precision number {s:?}")))?;
                float(n)
            }
            b'[' => self.array_body(depth)?,
            b'{' => self.object_body(depth)?,
            b'N' => return self.value(depth),
            m => return Err(self.err(&format!("unknown marker {:?}", m as char))),
        })
    }

    /// After `[` or `{`: optional `$type` and `#count`.
    fn container_header(&mut self) -> Result<(Option<u8>, Option<usize>), String> {
        let mut ty = None;
        if self.peek()? == b'$' {
            self.pos += 1;
            ty = Some(self.byte()?);
            if self.peek()? != b'#' {
                return Err(self.err("a typed container must be counted"));
            }
        }
        let mut count = None;
        if self.peek()? == b'#' {
            self.pos += 1;
            count = Some(self.length()?);
        }
        Ok((ty, count))
    }

    fn array_body(&mut self, depth: usize) -> Result<Value, String> {
        let (ty, count) = self.container_header()?;
        let mut out = Vec::new();
        match count {
            Some(n) => {
                out.reserve(n.min(1 << 20));
                for _ in 0..n {
                    out.push(match ty {
                        Some(t) => self.value_of(t, depth + 1)?,
                        None => self.value(depth + 1)?,
                    });
                }
            }
            None => loop {
                if self.peek()? == b']' {
                    self.pos += 1;
                    break;
                }
                out.push(self.value(depth + 1)?);
            },
        }
        Ok(Value::Array(out))
    }

    fn object_body(&mut self, depth: usize) -> Result<Value, String> {
        let (ty, count) = self.container_header()?;
        let mut map = Map::new();
        let mut entry = |r: &mut Self| -> Result<(), String> {
            let k = r.string()?;
            let v = match ty {
                Some(t) => r.value_of(t, depth + 1)?,
                None => r.value(depth + 1)?,
            };
            map.insert(k, v);
            Ok(())
        };
        match count {
            Some(n) => {
                for _ in 0..n {
                    entry(self)?;
                }
            }
            None => loop {
                if self.peek()? == b'}' {
                    self.pos += 1;
                    break;
                }
                entry(self)?;
            },
        }
        Ok(Value::Object(map))
    }
}

fn float(x: f64) -> Value {
    Number::from_f64(x).map(Value::Number).unwrap_or_else(|| Value::String(x.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_typed_counted_arrays_and_objects() {
        // {"a": [$d#i2 1.5 -2.0], "b": "x"}
        let mut b = vec![b'{', b'i', 1, b'a', b'[', b'$', b'd', b'#', b'i', 2];
        b.extend(1.5f32.to_be_bytes());
        b.extend((-2.0f32).to_be_bytes());
        b.extend([b'i', 1, b'b', b'S', b'i', 1, b'x', b'}']);
        let v = parse(&b).unwrap();
        assert_eq!(v, serde_json::json!({"a": [1.5, -2.0], "b": "x"}));
    }

    #[test]
    fn truncated_and_lying_lengths_are_errors() {
        assert!(parse(&[b'[', b'$', b'd', b'#', b'l', 0x7f, 0, 0, 0]).unwrap_err().contains("exceeds"));
        assert!(parse(&[b'S', b'i', 5, b'a']).is_err());
        assert!(parse(&[]).is_err());
        assert!(parse(b"Q").unwrap_err().contains("unknown marker"));
        let deep = vec![b'['; 1000];
        assert!(parse(&deep).is_err());
    }
}
