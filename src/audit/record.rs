//! What one audit record says (who, from where, which statement, what was protected or
//! refused and by which rule, how many rows), its JSON shape, and RFC 3339 time stamps.
//! Pure: no I/O.
use serde::{Serialize, Serializer};
use std::time::{SystemTime, UNIX_EPOCH};

/// One statement's audit record, built by the session and handed to
/// [`AuditLog::record`](super::AuditLog::record). The writer adds `seq`, `kv`, `prev` and
/// `mac` when it seals the record into the chain.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AuditRecord {
    /// When the statement finished, RFC 3339 UTC with milliseconds.
    #[serde(serialize_with = "serialize_time")]
    pub time: SystemTime,
    /// The session id the proxy assigned (also in its logs).
    pub session: u64,
    /// The client's address (`ip:port`).
    pub client: String,
    /// The authenticated login role.
    pub role: String,
    pub application_name: String,
    pub database: String,
    /// The literal-normalised statement fingerprint, 16 hex digits.
    #[serde(serialize_with = "serialize_fingerprint")]
    pub fingerprint: u64,
    /// The statement text; `None` (and omitted) when the log is configured with
    /// `redact_text` — the writer clears it, so callers may always fill it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub statement: Option<String>,
    /// Each protected column's decision and the rule behind it.
    pub columns: Vec<ColumnAudit>,
    /// Why the statement was refused, if it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusal: Option<RefusalAudit>,
    /// Rows returned to the client.
    pub rows: u64,
    pub duration_ms: f64,
}

/// One output column's (or use's) decision: `{column, label, action, rule}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ColumnAudit {
    /// `schema.table.column`.
    pub column: String,
    pub label: String,
    /// deny | null | mask | token | clear (the policy's action names).
    pub action: String,
    /// The policy rule that decided it, as `policy explain` prints it.
    pub rule: String,
}

/// `{code, reason, rule}` for a refused statement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RefusalAudit {
    /// The error code (`TG0xx`).
    pub code: String,
    pub reason: String,
    pub rule: String,
}

/// Written in place of records the writer had to drop (queue full, or `on_failure:
/// continue` while the file was unwritable), so the loss is visible in the chain rather
/// than silent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LossNotice {
    /// Always `"records_lost"`.
    pub event: &'static str,
    #[serde(serialize_with = "serialize_time")]
    pub time: SystemTime,
    /// How many records were dropped since the last record written.
    pub lost: u64,
}

impl LossNotice {
    pub fn new(time: SystemTime, lost: u64) -> Self {
        LossNotice {
            event: "records_lost",
            time,
            lost,
        }
    }
}

fn serialize_time<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339_utc(*time))
}

fn serialize_fingerprint<S: Serializer>(fingerprint: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{fingerprint:016x}"))
}

/// `2026-05-01T12:34:56.789Z`. Times before 1970 print as the epoch (never produced by a
/// live clock; avoids a panic path).
pub fn rfc3339_utc(time: SystemTime) -> String {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs();
    let millis = since_epoch.subsec_millis();
    let (year, month, day) = civil_from_days(secs / 86_400);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`, restricted to non-negative day counts).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64, millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis)
    }

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(rfc3339_utc(at(0, 0)), "1970-01-01T00:00:00.000Z");
        // `date -u -d @951782400` = 2000-02-29 00:00:00 (leap day of a century leap year).
        assert_eq!(rfc3339_utc(at(951_782_400, 5)), "2000-02-29T00:00:00.005Z");
        // `date -u -d @1767225599` = 2025-12-31 23:59:59.
        assert_eq!(
            rfc3339_utc(at(1_767_225_599, 999)),
            "2025-12-31T23:59:59.999Z"
        );
        // 2100 is not a leap year: 2100-02-28 + 1 day = 2100-03-01 (@4107542400).
        assert_eq!(
            rfc3339_utc(at(4_107_542_400, 0)),
            "2100-03-01T00:00:00.000Z"
        );
    }

    #[test]
    fn record_serializes_fields_and_omits_absent_ones() {
        let record = AuditRecord {
            time: at(1_767_225_599, 0),
            session: 7,
            client: "10.0.0.1:5555".into(),
            role: "analyst".into(),
            application_name: "psql".into(),
            database: "crm".into(),
            fingerprint: 0xab,
            statement: None,
            columns: vec![ColumnAudit {
                column: "public.customers.email".into(),
                label: "email".into(),
                action: "token".into(),
                rule: "roles.analyst.pii".into(),
            }],
            refusal: None,
            rows: 3,
            duration_ms: 1.5,
        };
        let json = serde_json::to_string(&record).unwrap();
        assert_eq!(
            json,
            r#"{"time":"2025-12-31T23:59:59.000Z","session":7,"client":"10.0.0.1:5555","role":"analyst","application_name":"psql","database":"crm","fingerprint":"00000000000000ab","columns":[{"column":"public.customers.email","label":"email","action":"token","rule":"roles.analyst.pii"}],"rows":3,"duration_ms":1.5}"#
        );
    }
}
