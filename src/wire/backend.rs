//! Server messages: the tags the relay watches, decoders for the few it rewrites during
//! startup, and encoders for the messages tokengate synthesizes itself (errors, keys).
use super::frame::{begin_message, end_message};
use super::startup::CancelKey;
use super::{Reader, WireError};

pub const AUTHENTICATION: u8 = b'R';
pub const BACKEND_KEY_DATA: u8 = b'K';
pub const ERROR_RESPONSE: u8 = b'E';
pub const NOTICE_RESPONSE: u8 = b'N';
pub const READY_FOR_QUERY: u8 = b'Z';
pub const PARAMETER_STATUS: u8 = b'S';
pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
pub const ROW_DESCRIPTION: u8 = b'T';
pub const DATA_ROW: u8 = b'D';
pub const COMMAND_COMPLETE: u8 = b'C';
pub const PARSE_COMPLETE: u8 = b'1';
pub const BIND_COMPLETE: u8 = b'2';
pub const CLOSE_COMPLETE: u8 = b'3';
pub const NOTIFICATION_RESPONSE: u8 = b'A';
pub const COPY_DONE: u8 = b'c';
pub const COPY_DATA: u8 = b'd';
pub const COPY_IN_RESPONSE: u8 = b'G';
pub const COPY_OUT_RESPONSE: u8 = b'H';
pub const COPY_BOTH_RESPONSE: u8 = b'W';
pub const EMPTY_QUERY_RESPONSE: u8 = b'I';
pub const NO_DATA: u8 = b'n';
pub const PORTAL_SUSPENDED: u8 = b's';
pub const PARAMETER_DESCRIPTION: u8 = b't';
pub const FUNCTION_CALL_RESPONSE: u8 = b'V';

/// Authentication request codes (the first int32 of an 'R' message).
pub const AUTH_OK: i32 = 0;
pub const AUTH_SASL: i32 = 10;

/// The SASL mechanism that binds to the TLS channel; it cannot survive TLS termination.
pub const SCRAM_PLUS: &[u8] = b"SCRAM-SHA-256-PLUS";

/// The authentication request code of an 'R' body.
pub fn auth_code(body: &[u8]) -> Result<i32, WireError> {
    Reader::new(body, "Authentication").i32()
}

/// Rewrites an AuthenticationSASL body without SCRAM-SHA-256-PLUS. Returns `None` when the
/// mechanism was not offered (so the original bytes can be forwarded), or the new full message.
pub fn strip_scram_plus(body: &[u8]) -> Result<Option<Vec<u8>>, WireError> {
    let mut r = Reader::new(body, "AuthenticationSASL");
    if r.i32()? != AUTH_SASL {
        return Err(WireError::Malformed("AuthenticationSASL"));
    }
    let mut mechanisms = Vec::new();
    loop {
        let m = r.cstr()?;
        if m.is_empty() {
            break;
        }
        mechanisms.push(m);
    }
    r.finish()?;
    if !mechanisms.contains(&SCRAM_PLUS) {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(body.len() + 5);
    let start = begin_message(&mut out, AUTHENTICATION);
    out.extend_from_slice(&AUTH_SASL.to_be_bytes());
    for m in mechanisms.into_iter().filter(|m| *m != SCRAM_PLUS) {
        out.extend_from_slice(m);
        out.push(0);
    }
    out.push(0);
    end_message(&mut out, start);
    Ok(Some(out))
}

/// Decodes BackendKeyData: pid plus a secret of 4 (protocol 3.0) to 256 (3.2) bytes.
pub fn backend_key_data(body: &[u8]) -> Result<CancelKey, WireError> {
    let mut r = Reader::new(body, "BackendKeyData");
    let pid = r.u32()?;
    let secret = r.remaining();
    if secret.len() < 4 || secret.len() > 256 {
        return Err(WireError::Malformed("BackendKeyData"));
    }
    Ok(CancelKey {
        pid,
        secret: secret.to_vec(),
    })
}

pub fn encode_backend_key_data(key: &CancelKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + key.secret.len());
    let start = begin_message(&mut out, BACKEND_KEY_DATA);
    out.extend_from_slice(&key.pid.to_be_bytes());
    out.extend_from_slice(&key.secret);
    end_message(&mut out, start);
    out
}

/// The severity of an ErrorResponse or NoticeResponse body ('S' field), if present.
pub fn error_severity(body: &[u8]) -> Option<&[u8]> {
    error_field(body, b'S')
}

/// One field of an ErrorResponse/NoticeResponse body, e.g. b'C' for the SQLSTATE.
pub fn error_field(body: &[u8], code: u8) -> Option<&[u8]> {
    let mut r = Reader::new(body, "ErrorResponse");
    loop {
        let field = r.u8().ok()?;
        if field == 0 {
            return None;
        }
        let value = r.cstr().ok()?;
        if field == code {
            return Some(value);
        }
    }
}

/// Severity of a synthesized error: ERROR keeps the session, FATAL ends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

/// A server-style error that tokengate itself reports to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFields {
    pub severity: Severity,
    pub sqlstate: &'static str,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl ErrorFields {
    pub fn fatal(sqlstate: &'static str, message: impl Into<String>) -> Self {
        ErrorFields {
            severity: Severity::Fatal,
            sqlstate,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Encodes an ErrorResponse message.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.message.len());
        let start = begin_message(&mut out, ERROR_RESPONSE);
        let severity = match self.severity {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        };
        let mut field = |code: u8, value: &str| {
            out.push(code);
            // A NUL inside a field would end it early and desynchronise the client.
            out.extend(value.bytes().filter(|&b| b != 0));
            out.push(0);
        };
        field(b'S', severity);
        field(b'V', severity);
        field(b'C', self.sqlstate);
        field(b'M', &self.message);
        if let Some(d) = &self.detail {
            field(b'D', d);
        }
        if let Some(h) = &self.hint {
            field(b'H', h);
        }
        out.push(0);
        end_message(&mut out, start);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::peek_header;

    #[test]
    fn strips_scram_plus_and_keeps_others() {
        let mut body = AUTH_SASL.to_be_bytes().to_vec();
        body.extend_from_slice(b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
        let out = strip_scram_plus(&body).unwrap().unwrap();
        let h = peek_header(&out, 1000).unwrap().unwrap();
        assert_eq!(h.frame_len, out.len());
        assert_eq!(&out[5..9], &AUTH_SASL.to_be_bytes());
        assert_eq!(&out[9..], b"SCRAM-SHA-256\0\0");
    }

    #[test]
    fn leaves_plain_scram_alone() {
        let mut body = AUTH_SASL.to_be_bytes().to_vec();
        body.extend_from_slice(b"SCRAM-SHA-256\0\0");
        assert_eq!(strip_scram_plus(&body).unwrap(), None);
    }

    #[test]
    fn error_response_round_trips_fields() {
        let e = ErrorFields::fatal("08001", "no upstream").with_hint("start it");
        let bytes = e.encode();
        let h = peek_header(&bytes, 1000).unwrap().unwrap();
        assert_eq!(h.tag, ERROR_RESPONSE);
        assert_eq!(h.frame_len, bytes.len());
        let body = &bytes[5..];
        assert_eq!(error_severity(body), Some(&b"FATAL"[..]));
        assert_eq!(error_field(body, b'C'), Some(&b"08001"[..]));
        assert_eq!(error_field(body, b'M'), Some(&b"no upstream"[..]));
        assert_eq!(error_field(body, b'H'), Some(&b"start it"[..]));
        assert_eq!(error_field(body, b'D'), None);
    }

    #[test]
    fn backend_key_data_round_trips_long_secrets() {
        let key = CancelKey {
            pid: 9,
            secret: (0..32).collect(),
        };
        let bytes = encode_backend_key_data(&key);
        assert_eq!(backend_key_data(&bytes[5..]).unwrap(), key);
        assert!(backend_key_data(&[0, 0, 0, 1, 2]).is_err());
    }
}
