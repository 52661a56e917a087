//! Side channels: every byte a restricted role receives besides result rows.
//!
//! - ErrorResponse and NoticeResponse: for a statement that reads, uses or writes a protected
//!   column (its plan is *sensitive*), the server's free text (message, DETAIL, HINT, CONTEXT,
//!   WHERE, internal query, schema/table/column/constraint names...) can quote protected values
//!   in any form (`invalid input syntax for type integer: "<value>"`, `relation "<value>" does
//!   not exist`, `Failing row contains (...)`). Such messages are rebuilt from safe parts only:
//!   severity, SQLSTATE, a generic message naming TG140, and the error position. Statements no
//!   protected column reaches keep the server's own messages unchanged (a unique violation's
//!   DETAIL, "Perhaps you meant", positions).
//! - NotificationResponse: the payload is chosen by whoever sent the NOTIFY (a trigger can put
//!   a protected value in it); restricted roles receive the channel and the sender's pid with
//!   an empty payload. The channel is the one the role itself LISTENed to.
//! - ParameterStatus: handled by the server side (a setting changed while a sensitive
//!   statement runs ends the session, TG021).
use crate::errors::Code;
use crate::wire::Reader;
use crate::wire::backend::{ERROR_RESPONSE, NOTIFICATION_RESPONSE};
use crate::wire::frame::{begin_message, end_message};

/// Rebuilds an ErrorResponse (`tag` b'E') or NoticeResponse (b'N') body from its safe parts.
pub fn rebuild(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut severity: &[u8] = if tag == ERROR_RESPONSE {
        b"ERROR"
    } else {
        b"NOTICE"
    };
    let mut plain_severity: Option<&[u8]> = None;
    let mut sqlstate: &[u8] = b"XX000";
    let mut position: Option<&[u8]> = None;
    let mut r = Reader::new(body, "ErrorResponse");
    while let Ok(code) = r.u8() {
        if code == 0 {
            break;
        }
        let Ok(value) = r.cstr() else {
            break;
        };
        match code {
            b'S' if is_severity(value) => severity = value,
            b'V' if is_severity(value) => plain_severity = Some(value),
            b'C' if value.len() == 5 && value.iter().all(u8::is_ascii_alphanumeric) => {
                sqlstate = value
            }
            b'P' if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                position = Some(value)
            }
            _ => {}
        }
    }
    let mut out = Vec::with_capacity(256);
    let start = begin_message(&mut out, tag);
    field(&mut out, b'S', severity);
    field(&mut out, b'V', plain_severity.unwrap_or(severity));
    field(&mut out, b'C', sqlstate);
    let what = if tag == ERROR_RESPONSE {
        "error"
    } else {
        "notice"
    };
    let message = format!(
        "tokengate {}: the server's {what} (SQLSTATE {}) is withheld because the statement involves protected columns",
        Code::MessageWithheld.id(),
        String::from_utf8_lossy(sqlstate)
    );
    field(&mut out, b'M', message.as_bytes());
    field(&mut out, b'H', Code::MessageWithheld.hint().as_bytes());
    if let Some(p) = position {
        field(&mut out, b'P', p);
    }
    out.push(0);
    end_message(&mut out, start);
    out
}

/// Severity words are a closed list (localized ones are replaced by the English word).
fn is_severity(v: &[u8]) -> bool {
    matches!(
        v,
        b"ERROR" | b"FATAL" | b"PANIC" | b"WARNING" | b"NOTICE" | b"DEBUG" | b"INFO" | b"LOG"
    )
}

fn field(out: &mut Vec<u8>, code: u8, value: &[u8]) {
    out.push(code);
    out.extend_from_slice(value);
    out.push(0);
}

/// A NotificationResponse with its payload emptied; `None` when it is malformed (the caller
/// then ends the session) .
/// A NotificationResponse's sender pid, channel and payload (UTF-8 only).
pub fn notification_parts(body: &[u8]) -> Option<(u32, String, String)> {
    let mut r = Reader::new(body, "NotificationResponse");
    let pid = r.u32().ok()?;
    let channel = String::from_utf8(r.cstr().ok()?.to_vec()).ok()?;
    let payload = String::from_utf8(r.cstr().ok()?.to_vec()).ok()?;
    Some((pid, channel, payload))
}

pub fn notification_without_payload(body: &[u8]) -> Option<Vec<u8>> {
    let mut r = Reader::new(body, "NotificationResponse");
    let pid = r.u32().ok()?;
    let channel = r.cstr().ok()?;
    r.cstr().ok()?;
    let mut out = Vec::with_capacity(channel.len() + 16);
    let start = begin_message(&mut out, NOTIFICATION_RESPONSE);
    out.extend_from_slice(&pid.to_be_bytes());
    out.extend_from_slice(channel);
    out.push(0);
    out.push(0);
    end_message(&mut out, start);
    Some(out)
}

/// Whether an ErrorResponse/NoticeResponse body's severity ends the session.
pub fn is_fatal(body: &[u8]) -> bool {
    let v = crate::wire::backend::error_field(body, b'V')
        .or_else(|| crate::wire::backend::error_field(body, b'S'));
    matches!(v, Some(b"FATAL" | b"PANIC"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::backend::error_field;

    pub(super) fn body(fields: &[(u8, &str)]) -> Vec<u8> {
        let mut b = Vec::new();
        for (c, v) in fields {
            b.push(*c);
            b.extend_from_slice(v.as_bytes());
            b.push(0);
        }
        b.push(0);
        b
    }

    #[test]
    fn rebuilt_errors_keep_only_safe_parts() {
        let e = body(&[
            (b'S', "ERROR"),
            (b'V', "ERROR"),
            (b'C', "42P01"),
            (b'M', "relation \"123-45-6789\" does not exist"),
            (b'D', "Failing row contains (1, ada@example.com)."),
            (b'H', "hint 123-45-6789"),
            (b'W', "SQL function \"f\" statement 1 ada@example.com"),
            (b'P', "15"),
            (b'c', "ssn"),
        ]);
        let out = rebuild(b'E', &e);
        let text = String::from_utf8_lossy(&out);
        assert!(
            !text.contains("123-45-6789") && !text.contains("ada@"),
            "{text}"
        );
        let fields = &out[5..];
        assert_eq!(error_field(fields, b'C'), Some(&b"42P01"[..]));
        assert_eq!(error_field(fields, b'P'), Some(&b"15"[..]));
        assert!(error_field(fields, b'D').is_none());
        assert!(error_field(fields, b'W').is_none());
        assert!(error_field(fields, b'c').is_none());
        let m = error_field(fields, b'M').unwrap();
        assert!(m.starts_with(b"tokengate TG140"));
        // A forged SQLSTATE or severity cannot carry text either.
        let forged = body(&[(b'S', "ERROR 123-45-6789"), (b'C', "123-45-6789")]);
        let out = rebuild(b'N', &forged);
        assert!(!String::from_utf8_lossy(&out).contains("6789"));
        assert_eq!(out[0], b'N');
    }

    #[test]
    fn notifications_lose_their_payload() {
        let mut b = 42u32.to_be_bytes().to_vec();
        b.extend_from_slice(b"chan\x00123-45-6789\x00");
        let out = notification_without_payload(&b).unwrap();
        assert_eq!(&out[5..], b"\0\0\0\x2achan\0\0");
        assert!(notification_without_payload(b"\0\0").is_none());
    }
}

/// A unique violation's table (schema, name) and key columns, from its fields and its DETAIL
/// (`Key (a, b)=(…) already exists.`), when every key column is a plain lower-case identifier.
/// The caller lets the error through unchanged when none of those columns is protected: the
/// DETAIL then quotes only values of unprotected columns.
pub fn unique_violation_key(body: &[u8]) -> Option<(String, String, Vec<String>)> {
    let (mut sqlstate, mut schema, mut table, mut detail) = (None, None, None, None);
    let mut r = Reader::new(body, "ErrorResponse");
    while let Ok(code) = r.u8() {
        if code == 0 {
            break;
        }
        let value = std::str::from_utf8(r.cstr().ok()?).ok()?;
        match code {
            b'C' => sqlstate = Some(value),
            b's' => schema = Some(value),
            b't' => table = Some(value),
            b'D' => detail = Some(value),
            _ => {}
        }
    }
    if sqlstate? != "23505" {
        return None;
    }
    let rest = detail?.strip_prefix("Key (")?;
    let (list, _) = rest.split_once(")=(")?;
    let plain = |c: &str| {
        c.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
            && c.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    let columns: Vec<String> = list.split(", ").map(str::to_owned).collect();
    if !columns.iter().all(|c| plain(c)) {
        return None;
    }
    Some((schema?.to_owned(), table?.to_owned(), columns))
}

#[cfg(test)]
mod unique_tests {
    use super::*;
    use tests::body as error;

    #[test]
    fn unique_violation_keys_are_read_only_when_plain() {
        let ok = error(&[
            (b'C', "23505"),
            (b's', "public"),
            (b't', "customers"),
            (b'D', "Key (id, city)=(2, x)=(y) already exists."),
        ]);
        assert_eq!(
            unique_violation_key(&ok),
            Some((
                "public".into(),
                "customers".into(),
                vec!["id".into(), "city".into()]
            ))
        );
        for detail in [
            "Key (lower(email))=(a@b) already exists.",
            "Key (\"Email\")=(a) already exists.",
            "Failing row contains (1, 2).",
        ] {
            let e = error(&[
                (b'C', "23505"),
                (b's', "public"),
                (b't', "c"),
                (b'D', detail),
            ]);
            assert_eq!(unique_violation_key(&e), None, "{detail}");
        }
        let other = error(&[
            (b'C', "23502"),
            (b's', "public"),
            (b't', "c"),
            (b'D', "Key (id)=(1)"),
        ]);
        assert_eq!(unique_violation_key(&other), None);
    }
}
