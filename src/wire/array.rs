//! PostgreSQL arrays of text-like elements, in the text (`{a,"b c",NULL}`) and binary
//! (`array_send`) formats: what `col = ANY($1)` binds for a column stored as tokens, so that
//! tokengate can tokenize each element (issue 14).
//!
//! Strict on purpose: only what PostgreSQL's `array_in` / `array_recv` accept for a
//! one-dimensional (text) or up to six-dimensional (binary) array of strings. Anything else
//! (dimension decorations `[1:2]=`, nested braces in text, a stray quote) is an error, and the
//! caller refuses the statement rather than guess how the server reads it.

/// Why an array value could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArrayError {
    #[error("malformed array value: {0}")]
    Malformed(&'static str),
    #[error("unsupported array value: {0}")]
    Unsupported(&'static str),
}

/// One element: `None` is SQL NULL.
pub type Element = Option<Vec<u8>>;

/// `array_isspace` in PostgreSQL's arrayfuncs.c.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// Reads a one-dimensional text-format array (`array_in` with delimiter `,`).
pub fn parse_text(s: &[u8]) -> Result<Vec<Element>, ArrayError> {
    let mut i = 0;
    let skip = |i: &mut usize| {
        while *i < s.len() && is_space(s[*i]) {
            *i += 1;
        }
    };
    skip(&mut i);
    match s.get(i) {
        Some(b'{') => i += 1,
        Some(b'[') => return Err(ArrayError::Unsupported("dimension decoration")),
        _ => return Err(ArrayError::Malformed("it does not start with {")),
    }
    let mut out = Vec::new();
    skip(&mut i);
    if s.get(i) == Some(&b'}') {
        i += 1;
    } else {
        loop {
            skip(&mut i);
            match s.get(i) {
                Some(b'"') => {
                    i += 1;
                    let mut v = Vec::new();
                    loop {
                        match s.get(i) {
                            Some(b'\\') => {
                                let c = s.get(i + 1).ok_or(ArrayError::Malformed("escape"))?;
                                v.push(*c);
                                i += 2;
                            }
                            Some(b'"') => {
                                i += 1;
                                break;
                            }
                            Some(c) => {
                                v.push(*c);
                                i += 1;
                            }
                            None => return Err(ArrayError::Malformed("unterminated quote")),
                        }
                    }
                    skip(&mut i);
                    out.push(Some(v));
                }
                Some(b'{') => return Err(ArrayError::Unsupported("a multi-dimensional array")),
                Some(_) => {
                    let mut v = Vec::new();
                    // Bytes up to here were escaped: trailing spaces are trimmed after them.
                    let mut kept = 0;
                    let mut escaped = false;
                    loop {
                        match s.get(i) {
                            Some(b'\\') => {
                                let c = s.get(i + 1).ok_or(ArrayError::Malformed("escape"))?;
                                v.push(*c);
                                kept = v.len();
                                escaped = true;
                                i += 2;
                            }
                            Some(b',' | b'}') => break,
                            Some(b'"' | b'{') => {
                                return Err(ArrayError::Malformed("a quote or brace in a value"));
                            }
                            Some(c) => {
                                v.push(*c);
                                i += 1;
                            }
                            None => return Err(ArrayError::Malformed("unterminated array")),
                        }
                    }
                    while v.len() > kept && v.last().is_some_and(|b| is_space(*b)) {
                        v.pop();
                    }
                    if v.is_empty() {
                        return Err(ArrayError::Malformed("an empty element"));
                    }
                    if !escaped && v.eq_ignore_ascii_case(b"null") {
                        out.push(None);
                    } else {
                        out.push(Some(v));
                    }
                }
                None => return Err(ArrayError::Malformed("unterminated array")),
            }
            match s.get(i) {
                Some(b',') => i += 1,
                Some(b'}') => {
                    i += 1;
                    break;
                }
                _ => return Err(ArrayError::Malformed("expected , or }")),
            }
        }
    }
    skip(&mut i);
    if i != s.len() {
        return Err(ArrayError::Malformed("text after the array"));
    }
    Ok(out)
}

/// Writes a one-dimensional text-format array: every element quoted, `\` and `"` escaped.
pub fn write_text(elements: &[Element], out: &mut Vec<u8>) {
    out.push(b'{');
    for (k, e) in elements.iter().enumerate() {
        if k > 0 {
            out.push(b',');
        }
        match e {
            None => out.extend_from_slice(b"NULL"),
            Some(v) => {
                out.push(b'"');
                for &b in v {
                    if b == b'\\' || b == b'"' {
                        out.push(b'\\');
                    }
                    out.push(b);
                }
                out.push(b'"');
            }
        }
    }
    out.push(b'}');
}

/// A binary-format array (`array_send`): its header is kept as it came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryArray {
    pub element_type: u32,
    /// (length, lower bound) per dimension.
    pub dims: Vec<(i32, i32)>,
    pub elements: Vec<Element>,
}

/// PostgreSQL's MAXDIM.
const MAX_DIMS: i32 = 6;

fn int(b: &[u8], at: &mut usize) -> Result<i32, ArrayError> {
    let v = b
        .get(*at..*at + 4)
        .ok_or(ArrayError::Malformed("truncated"))?;
    *at += 4;
    Ok(i32::from_be_bytes([v[0], v[1], v[2], v[3]]))
}

/// Reads a binary-format array (`array_recv`).
pub fn parse_binary(b: &[u8]) -> Result<BinaryArray, ArrayError> {
    let mut at = 0;
    let ndim = int(b, &mut at)?;
    let flags = int(b, &mut at)?;
    let element_type = int(b, &mut at)? as u32;
    if !(0..=MAX_DIMS).contains(&ndim) {
        return Err(ArrayError::Malformed("number of dimensions"));
    }
    if flags != 0 && flags != 1 {
        return Err(ArrayError::Malformed("flags"));
    }
    let mut dims = Vec::new();
    let mut count: usize = if ndim == 0 { 0 } else { 1 };
    for _ in 0..ndim {
        let len = int(b, &mut at)?;
        let lbound = int(b, &mut at)?;
        let len_u = usize::try_from(len).map_err(|_| ArrayError::Malformed("dimension"))?;
        count = count
            .checked_mul(len_u)
            .filter(|c| *c <= b.len())
            .ok_or(ArrayError::Malformed("too many elements"))?;
        dims.push((len, lbound));
    }
    let mut elements = Vec::with_capacity(count);
    for _ in 0..count {
        let len = int(b, &mut at)?;
        if len == -1 {
            elements.push(None);
            continue;
        }
        let n = usize::try_from(len).map_err(|_| ArrayError::Malformed("element length"))?;
        let v = b
            .get(at..at + n)
            .ok_or(ArrayError::Malformed("truncated element"))?;
        at += n;
        elements.push(Some(v.to_vec()));
    }
    if at != b.len() {
        return Err(ArrayError::Malformed("bytes after the last element"));
    }
    Ok(BinaryArray {
        element_type,
        dims,
        elements,
    })
}

/// Writes a binary-format array (`array_send`).
pub fn write_binary(a: &BinaryArray, out: &mut Vec<u8>) {
    let has_null = a.elements.iter().any(Option::is_none);
    out.extend_from_slice(&(a.dims.len() as i32).to_be_bytes());
    out.extend_from_slice(&i32::from(has_null).to_be_bytes());
    out.extend_from_slice(&a.element_type.to_be_bytes());
    for (len, lbound) in &a.dims {
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&lbound.to_be_bytes());
    }
    for e in &a.elements {
        match e {
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(v) => {
                out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                out.extend_from_slice(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Element {
        Some(v.as_bytes().to_vec())
    }

    #[test]
    fn text_arrays_read_like_array_in() {
        assert_eq!(
            parse_text(br#" { a , "b c",NULL, "NULL", \N\ULL ,x\ y\ , "q\"\\"} "#).unwrap(),
            vec![
                s("a"),
                s("b c"),
                None,
                s("NULL"),
                s("NULL"),
                s("x y "),
                s("q\"\\")
            ]
        );
        assert_eq!(parse_text(b"{}").unwrap(), Vec::<Element>::new());
        assert_eq!(parse_text(b"{ }").unwrap(), Vec::<Element>::new());
        for bad in [
            &b"a,b"[..],
            b"[1:2]={a,b}",
            b"{{a},{b}}",
            b"{a,}",
            b"{a b\"c}",
            b"{\"a\"b}",
            b"{a} x",
            b"{a",
            b"{\"a",
            b"{a\\",
        ] {
            assert!(parse_text(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let elements = vec![s("a\"b\\c"), None, s("NULL"), s("")];
        let mut out = Vec::new();
        write_text(&elements, &mut out);
        assert_eq!(out, br#"{"a\"b\\c",NULL,"NULL",""}"#);
        assert_eq!(parse_text(&out).unwrap(), elements);
    }

    #[test]
    fn binary_arrays_round_trip_and_reject_truncation() {
        let a = BinaryArray {
            element_type: 25,
            dims: vec![(3, 1)],
            elements: vec![s("x"), None, s("yz")],
        };
        let mut out = Vec::new();
        write_binary(&a, &mut out);
        assert_eq!(parse_binary(&out).unwrap(), a);
        for cut in 0..out.len() {
            assert!(parse_binary(&out[..cut]).is_err(), "{cut}");
        }
        let mut extra = out.clone();
        extra.push(0);
        assert!(parse_binary(&extra).is_err());
        let empty = BinaryArray {
            element_type: 1042,
            dims: vec![],
            elements: vec![],
        };
        let mut out = Vec::new();
        write_binary(&empty, &mut out);
        assert_eq!(parse_binary(&out).unwrap(), empty);
        // A huge declared dimension with few bytes is refused, not allocated.
        let mut huge = Vec::new();
        for v in [1i32, 0, 25, i32::MAX, 1] {
            huge.extend_from_slice(&v.to_be_bytes());
        }
        assert!(parse_binary(&huge).is_err());
    }
}
