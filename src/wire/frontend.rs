//! Decoders for the client messages tokengate inspects. Client input is untrusted: every
//! decoder is bounds-checked and returns [`WireError`] instead of panicking.
use super::{Reader, WireError};

pub const QUERY: u8 = b'Q';
pub const PARSE: u8 = b'P';
pub const BIND: u8 = b'B';
pub const DESCRIBE: u8 = b'D';
pub const EXECUTE: u8 = b'E';
pub const CLOSE: u8 = b'C';
pub const SYNC: u8 = b'S';
pub const FLUSH: u8 = b'H';
pub const TERMINATE: u8 = b'X';
pub const FUNCTION_CALL: u8 = b'F';
pub const COPY_DATA: u8 = b'd';
pub const COPY_DONE: u8 = b'c';
pub const COPY_FAIL: u8 = b'f';
pub const PASSWORD: u8 = b'p';

/// True for tags a client may send after startup (PostgreSQL ends the session on any other).
pub fn is_known_tag(tag: u8) -> bool {
    matches!(
        tag,
        QUERY
            | PARSE
            | BIND
            | DESCRIBE
            | EXECUTE
            | CLOSE
            | SYNC
            | FLUSH
            | TERMINATE
            | FUNCTION_CALL
            | COPY_DATA
            | COPY_DONE
            | COPY_FAIL
            | PASSWORD
    )
}

/// Query: the SQL text, as raw bytes (it need not be valid UTF-8).
pub fn query(body: &[u8]) -> Result<&[u8], WireError> {
    let mut r = Reader::new(body, "Query");
    let sql = r.cstr()?;
    r.finish()?;
    Ok(sql)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parse<'a> {
    pub statement: &'a [u8],
    pub sql: &'a [u8],
    pub param_types: Vec<u32>,
}

pub fn parse(body: &[u8]) -> Result<Parse<'_>, WireError> {
    let mut r = Reader::new(body, "Parse");
    let statement = r.cstr()?;
    let sql = r.cstr()?;
    let n = r.count16()?;
    let mut param_types = Vec::with_capacity(n.min(body.len() / 4));
    for _ in 0..n {
        param_types.push(r.u32()?);
    }
    r.finish()?;
    Ok(Parse {
        statement,
        sql,
        param_types,
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind<'a> {
    pub portal: &'a [u8],
    pub statement: &'a [u8],
    pub param_formats: Vec<i16>,
    pub params: Vec<Option<&'a [u8]>>,
    pub result_formats: Vec<i16>,
}

impl Bind<'_> {
    /// The format code of result column `i`, following the protocol's rules: no codes means
    /// all text, one code applies to every column, otherwise one per column.
    pub fn result_format(&self, i: usize) -> i16 {
        result_format(&self.result_formats, i)
    }
}

/// The format code of result column `i` for a Bind's result format codes.
pub fn result_format(formats: &[i16], i: usize) -> i16 {
    match formats.len() {
        0 => 0,
        1 => formats[0],
        _ => formats.get(i).copied().unwrap_or(0),
    }
}

/// Encodes a Describe of a portal.
pub fn describe_portal(name: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 7);
    let start = super::frame::begin_message(&mut out, DESCRIBE);
    out.push(b'P');
    out.extend_from_slice(name);
    out.push(0);
    super::frame::end_message(&mut out, start);
    out
}

pub fn bind(body: &[u8]) -> Result<Bind<'_>, WireError> {
    let mut r = Reader::new(body, "Bind");
    let portal = r.cstr()?;
    let statement = r.cstr()?;
    // Capacities are capped by what the body could hold, so a hostile count cannot allocate.
    let nf = r.count16()?;
    let mut param_formats = Vec::with_capacity(nf.min(body.len() / 2));
    for _ in 0..nf {
        param_formats.push(r.i16()?);
    }
    let np = r.count16()?;
    let mut params = Vec::with_capacity(np.min(body.len() / 4));
    for _ in 0..np {
        params.push(r.value()?);
    }
    let nr = r.count16()?;
    let mut result_formats = Vec::with_capacity(nr.min(body.len() / 2));
    for _ in 0..nr {
        result_formats.push(r.i16()?);
    }
    r.finish()?;
    Ok(Bind {
        portal,
        statement,
        param_formats,
        params,
        result_formats,
    })
}

/// The object kind named by Describe and Close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Statement,
    Portal,
}

/// Describe and Close share a body: a kind byte ('S' or 'P') and a name.
pub fn target<'a>(body: &'a [u8], what: &'static str) -> Result<(Target, &'a [u8]), WireError> {
    let mut r = Reader::new(body, what);
    let kind = match r.u8()? {
        b'S' => Target::Statement,
        b'P' => Target::Portal,
        _ => return Err(WireError::Malformed(what)),
    };
    let name = r.cstr()?;
    r.finish()?;
    Ok((kind, name))
}

/// Execute: the portal and the row limit (0 = all rows).
pub fn execute(body: &[u8]) -> Result<(&[u8], i32), WireError> {
    let mut r = Reader::new(body, "Execute");
    let portal = r.cstr()?;
    let max_rows = r.i32()?;
    r.finish()?;
    Ok((portal, max_rows))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bind_body() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"p1\0s1\0");
        b.extend_from_slice(&1i16.to_be_bytes());
        b.extend_from_slice(&1i16.to_be_bytes());
        b.extend_from_slice(&2i16.to_be_bytes());
        b.extend_from_slice(&4i32.to_be_bytes());
        b.extend_from_slice(&42i32.to_be_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b.extend_from_slice(&2i16.to_be_bytes());
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&1i16.to_be_bytes());
        b
    }

    #[test]
    fn decodes_bind() {
        let body = bind_body();
        let b = bind(&body).unwrap();
        assert_eq!(b.portal, b"p1");
        assert_eq!(b.statement, b"s1");
        assert_eq!(b.param_formats, vec![1]);
        assert_eq!(b.params, vec![Some(&42i32.to_be_bytes()[..]), None]);
        assert_eq!(b.result_format(0), 0);
        assert_eq!(b.result_format(1), 1);
        assert_eq!(b.result_format(7), 0);
    }

    #[test]
    fn bind_single_result_format_applies_to_all() {
        let b = Bind {
            portal: b"",
            statement: b"",
            param_formats: vec![],
            params: vec![],
            result_formats: vec![1],
        };
        assert_eq!(b.result_format(5), 1);
    }

    #[test]
    fn truncated_bind_is_an_error_at_every_length() {
        let body = bind_body();
        for cut in 0..body.len() {
            assert!(bind(&body[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn decodes_parse_execute_and_targets() {
        let mut p = b"s1\0select $1\0".to_vec();
        p.extend_from_slice(&1i16.to_be_bytes());
        p.extend_from_slice(&23u32.to_be_bytes());
        let parsed = parse(&p).unwrap();
        assert_eq!(parsed.sql, b"select $1");
        assert_eq!(parsed.param_types, vec![23]);

        let mut e = b"p1\0".to_vec();
        e.extend_from_slice(&10i32.to_be_bytes());
        assert_eq!(execute(&e).unwrap(), (&b"p1"[..], 10));

        assert_eq!(
            target(b"Pp1\0", "Describe").unwrap(),
            (Target::Portal, &b"p1"[..])
        );
        assert!(target(b"Xp1\0", "Describe").is_err());
        assert_eq!(query(b"select 1\0").unwrap(), b"select 1");
        assert!(query(b"select 1").is_err());
    }

    #[test]
    fn negative_counts_are_errors() {
        let mut b = b"\0\0".to_vec();
        b.extend_from_slice(&(-3i16).to_be_bytes());
        assert!(bind(&b).is_err());
    }

    proptest! {
        #[test]
        fn decoders_never_panic(body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = query(&body);
            let _ = parse(&body);
            let _ = bind(&body);
            let _ = execute(&body);
            let _ = target(&body, "Close");
        }
    }
}
