//! The SASL messages of the startup phase, both directions: AuthenticationSASL (10),
//! SASLContinue (11) and SASLFinal (12) from the server; SASLInitialResponse and SASLResponse
//! (both tag `p`) from the client.
use crate::wire::backend::{AUTH_SASL, AUTHENTICATION};
use crate::wire::frame::{begin_message, end_message};
use crate::wire::{Reader, WireError};

pub const AUTH_SASL_CONTINUE: i32 = 11;
pub const AUTH_SASL_FINAL: i32 = 12;
/// The client's password/SASL message tag.
pub const SASL_RESPONSE: u8 = b'p';

/// The mechanisms of an AuthenticationSASL body.
pub fn mechanisms(body: &[u8]) -> Result<Vec<String>, WireError> {
    let mut r = Reader::new(body, "AuthenticationSASL");
    if r.i32()? != AUTH_SASL {
        return Err(WireError::Malformed("AuthenticationSASL"));
    }
    let mut out = Vec::new();
    loop {
        let m = r.cstr()?;
        if m.is_empty() {
            break;
        }
        out.push(String::from_utf8_lossy(m).into_owned());
    }
    r.finish()?;
    Ok(out)
}

pub fn sasl(mechanisms: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    let start = begin_message(&mut out, AUTHENTICATION);
    out.extend_from_slice(&AUTH_SASL.to_be_bytes());
    for m in mechanisms {
        out.extend_from_slice(m.as_bytes());
        out.push(0);
    }
    out.push(0);
    end_message(&mut out, start);
    out
}

/// SASLContinue or SASLFinal with `data`.
pub fn sasl_step(code: i32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + data.len());
    let start = begin_message(&mut out, AUTHENTICATION);
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(data);
    end_message(&mut out, start);
    out
}

/// The data of a server SASL step (`code` 11 or 12), or `None` if the body is another request.
pub fn server_step(body: &[u8], code: i32) -> Result<Option<&[u8]>, WireError> {
    let mut r = Reader::new(body, "AuthenticationSASLContinue");
    if r.i32()? != code {
        return Ok(None);
    }
    Ok(Some(r.remaining()))
}

pub fn initial_response(mechanism: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let start = begin_message(&mut out, SASL_RESPONSE);
    out.extend_from_slice(mechanism.as_bytes());
    out.push(0);
    out.extend_from_slice(&(data.len() as i32).to_be_bytes());
    out.extend_from_slice(data);
    end_message(&mut out, start);
    out
}

pub fn response(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + data.len());
    let start = begin_message(&mut out, SASL_RESPONSE);
    out.extend_from_slice(data);
    end_message(&mut out, start);
    out
}

/// Decodes a SASLInitialResponse body: (mechanism, initial data).
pub fn parse_initial_response(body: &[u8]) -> Result<(String, &[u8]), WireError> {
    let mut r = Reader::new(body, "SASLInitialResponse");
    let mechanism = String::from_utf8_lossy(r.cstr()?).into_owned();
    let data = r
        .value()?
        .ok_or(WireError::Malformed("SASLInitialResponse"))?;
    r.finish()?;
    Ok((mechanism, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let m = sasl(&["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]);
        assert_eq!(
            mechanisms(&m[5..]).unwrap(),
            vec!["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
        );
        let i = initial_response("SCRAM-SHA-256", b"n,,n=,r=abc");
        assert_eq!(
            parse_initial_response(&i[5..]).unwrap(),
            ("SCRAM-SHA-256".to_string(), &b"n,,n=,r=abc"[..])
        );
        let s = sasl_step(AUTH_SASL_CONTINUE, b"r=x");
        assert_eq!(
            server_step(&s[5..], AUTH_SASL_CONTINUE).unwrap(),
            Some(&b"r=x"[..])
        );
        assert_eq!(server_step(&s[5..], AUTH_SASL_FINAL).unwrap(), None);
        assert!(parse_initial_response(b"SCRAM\0\xff\xff\xff\xff").is_err());
    }
}
