//! The session's name-resolution state, read from the server itself: the effective search path
//! (`current_schemas(true)`: pg_temp and pg_catalog where they apply, `"$user"` expanded,
//! schemas without USAGE left out) and the session's temp schema (`pg_my_temp_schema()`).
//!
//! tokengate sends an internal query for them after authentication, before the first client
//! statement, and again whenever a statement may have changed them: SET/RESET/set_config,
//! DISCARD, SET ROLE/SESSION AUTHORIZATION, DDL (a new schema named like the role, the first
//! temp object), CALL/DO, and the end of a transaction or a ROLLBACK TO after any of these
//! (SET LOCAL and a rolled-back SET revert). Until the new state is read ("dirty"), unqualified
//! names resolve to nothing and the statement is refused (TG141), and so are the later
//! statements of the same message. The internal query's replies are consumed, never forwarded.
//!
//! It also keeps the session's `standard_conforming_strings`, as the server reports it in
//! ParameterStatus (startup and every change), for the lexer.
use crate::sql::catalog::SearchPath;
use crate::sql::{StatementAnalysis, StatementKind};
use std::sync::Arc;

/// The internal query. Every name is qualified and the operator spelled with OPERATOR(), so a
/// session's own objects cannot change what it reads. Rows: (0, temp schema) when the session
/// has one, then (n, schema) for the effective search path in order.
pub const READ_NAMES_SQL: &str = "SELECT 0::pg_catalog.int4, n.nspname::pg_catalog.text \
     FROM pg_catalog.pg_namespace n \
     WHERE n.oid OPERATOR(pg_catalog.=) pg_catalog.pg_my_temp_schema() \
     UNION ALL SELECT s.n::pg_catalog.int4, s.nsp::pg_catalog.text \
     FROM pg_catalog.unnest(pg_catalog.current_schemas(true)) WITH ORDINALITY AS s(nsp, n) \
     ORDER BY 1";

#[derive(Debug)]
pub struct SessionNames {
    /// The state last read; `None` until the first read succeeds.
    pub path: Option<Arc<SearchPath>>,
    /// A statement may have changed it since.
    pub dirty: bool,
    /// Something changed it in the current transaction: its end or a ROLLBACK TO may revert it.
    pub changed_in_transaction: bool,
    /// Rows of an internal read in progress.
    reading: Vec<(i32, String)>,
    /// A row of the read in progress could not be understood.
    read_failed: bool,
    /// `standard_conforming_strings` as the server reports it (on by default since 9.1).
    pub standard_conforming_strings: bool,
    /// The cache key of `path`.
    key: String,
}

impl Default for SessionNames {
    fn default() -> Self {
        SessionNames {
            path: None,
            dirty: false,
            changed_in_transaction: false,
            reading: Vec::new(),
            read_failed: false,
            standard_conforming_strings: true,
            key: String::new(),
        }
    }
}

impl SessionNames {
    /// Whether the state must be read before a statement can be analysed.
    pub fn needs_read(&self) -> bool {
        self.path.is_none() || self.dirty
    }

    /// The path analysis may use now: `None` while unknown or dirty (unqualified names then
    /// resolve to nothing).
    pub fn current(&self) -> Option<&Arc<SearchPath>> {
        if self.dirty { None } else { self.path.as_ref() }
    }

    /// The analysis cache key for the current state (the lexing setting is part of it: the
    /// same text splits differently with `standard_conforming_strings = off`).
    pub fn cache_key(&self) -> &str {
        match (
            self.dirty || self.path.is_none(),
            self.standard_conforming_strings,
        ) {
            (true, true) => "?",
            (true, false) => "?\u{2}scs=off",
            (false, _) => &self.key,
        }
    }

    fn update_key(&mut self) {
        self.key = self.path.as_ref().map(|p| p.key()).unwrap_or_default();
        if !self.standard_conforming_strings {
            self.key.push_str("\u{2}scs=off");
        }
    }

    /// A statement was planned: mark the state dirty if it may change it (so the rest of its
    /// message and pipeline resolves nothing); its completion marks it again.
    pub fn planned(&mut self, a: &StatementAnalysis, text: &str) {
        if may_change_names(a, text) {
            self.changed();
        }
    }

    /// A statement that may change the state ran (or is about to).
    pub fn changed(&mut self) {
        self.dirty = true;
        self.changed_in_transaction = true;
    }

    /// ReadyForQuery: a transaction that changed the state has ended.
    pub fn ready(&mut self, status: u8) {
        if status == b'I' {
            if self.changed_in_transaction {
                self.dirty = true;
            }
            self.changed_in_transaction = false;
        }
    }

    /// ROLLBACK TO SAVEPOINT confirmed: settings of the rolled-back part revert.
    pub fn rolled_back_to_savepoint(&mut self) {
        if self.changed_in_transaction {
            self.dirty = true;
        }
    }

    pub fn begin_read(&mut self) {
        self.reading.clear();
        self.read_failed = false;
    }

    /// One row of the internal query (text format).
    pub fn read_row(&mut self, n: &[u8], schema: &[u8]) -> bool {
        let Some(n) = std::str::from_utf8(n)
            .ok()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            return false;
        };
        let Ok(schema) = std::str::from_utf8(schema) else {
            return false;
        };
        if self.reading.len() < 1024 {
            self.reading.push((n, schema.to_string()));
        }
        true
    }

    /// The internal query completed: the rows read are the state.
    pub fn finish_read(&mut self) {
        let rows = std::mem::take(&mut self.reading);
        if std::mem::take(&mut self.read_failed) {
            self.dirty = true;
            return;
        }
        let temp = rows.iter().find(|(n, _)| *n == 0).map(|(_, s)| s.clone());
        let schemas = rows
            .into_iter()
            .filter(|(n, _)| *n > 0)
            .map(|(_, s)| s)
            .collect();
        self.path = Some(Arc::new(SearchPath::new(schemas, temp)));
        self.update_key();
        self.dirty = false;
    }

    /// The internal query failed: the state stays unknown (refusals) until the next read.
    pub fn failed_read(&mut self) {
        self.reading.clear();
        self.read_failed = true;
        self.dirty = true;
    }

    /// A ParameterStatus from the server.
    pub fn parameter(&mut self, name: &[u8], value: &[u8]) {
        if name == b"standard_conforming_strings" {
            self.standard_conforming_strings = value != b"off";
            self.update_key();
        }
    }
}

/// Statements that may change the search path, the role `"$user"` names, the temp schema or
/// which schemas exist. Conservative: any doubt counts.
pub fn may_change_names(a: &StatementAnalysis, text: &str) -> bool {
    if a.is_ddl || matches!(a.kind, StatementKind::Call | StatementKind::Other) {
        return true;
    }
    let contains = |needle: &[u8]| {
        text.as_bytes()
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
    };
    if contains(b"set_config") || contains(b"search_path") {
        return true;
    }
    if a.kind == StatementKind::Utility {
        let first = text
            .split(|c: char| !c.is_ascii_alphabetic())
            .find(|w| !w.is_empty())
            .unwrap_or("")
            .to_ascii_lowercase();
        return matches!(
            first.as_str(),
            "set" | "reset" | "discard" | "do" | "load" | "call"
        );
    }
    false
}

/// Parses a ParameterStatus body: (name, value).
pub fn parameter_status(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut r = crate::wire::Reader::new(body, "ParameterStatus");
    let name = r.cstr().ok()?;
    let value = r.cstr().ok()?;
    Some((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn analysis(kind: StatementKind) -> StatementAnalysis {
        let mut a = crate::sql::analyze("SELECT 1", &crate::sql::StaticCatalog::new())
            .pop()
            .unwrap();
        a.kind = kind;
        a
    }

    #[test]
    fn statements_that_may_change_names_mark_the_state_dirty() {
        let mut n = SessionNames::default();
        assert!(n.needs_read());
        n.read_row(b"0", b"pg_temp_3");
        n.read_row(b"1", b"pg_temp_3");
        n.read_row(b"2", b"pg_catalog");
        n.read_row(b"3", b"analyst");
        n.read_row(b"4", b"public");
        n.finish_read();
        assert!(!n.needs_read());
        let p = n.current().unwrap().clone();
        assert_eq!(p.temp(), Some("pg_temp_3"));
        for (kind, text) in [
            (StatementKind::Utility, "SET search_path = x"),
            (StatementKind::Utility, "set local search_path to x"),
            (StatementKind::Utility, "RESET ALL"),
            (StatementKind::Utility, "DISCARD ALL"),
            (StatementKind::Utility, "SET ROLE app_admin"),
            (
                StatementKind::Select,
                "SELECT set_config('search_path', 'x', false)",
            ),
            (StatementKind::Ddl, "CREATE TEMP VIEW v AS SELECT 1"),
        ] {
            let mut m = SessionNames {
                path: Some(p.clone()),
                ..SessionNames::default()
            };
            let mut a = analysis(kind);
            a.is_ddl = kind == StatementKind::Ddl;
            m.planned(&a, text);
            assert!(m.dirty && m.current().is_none(), "{text}");
        }
        let mut m = SessionNames {
            path: Some(p.clone()),
            ..SessionNames::default()
        };
        m.planned(
            &analysis(StatementKind::Select),
            "SELECT email FROM customers",
        );
        m.planned(&analysis(StatementKind::Utility), "SHOW search_paths");
        assert!(m.dirty, "a SHOW naming search_path is enough doubt");
        let mut m = SessionNames {
            path: Some(p),
            ..SessionNames::default()
        };
        m.planned(&analysis(StatementKind::Utility), "BEGIN");
        assert!(!m.dirty);
        // SET LOCAL, read inside the transaction, then ROLLBACK: dirty again.
        m.planned(
            &analysis(StatementKind::Utility),
            "SET LOCAL search_path = x",
        );
        m.finish_read();
        assert!(!m.dirty);
        m.ready(b'T');
        assert!(!m.dirty);
        m.ready(b'I');
        assert!(m.dirty);
    }

    #[test]
    fn standard_conforming_strings_follows_the_server() {
        let mut n = SessionNames::default();
        assert!(n.standard_conforming_strings);
        n.finish_read();
        let on = n.cache_key().to_string();
        n.parameter(b"standard_conforming_strings", b"off");
        assert!(!n.standard_conforming_strings);
        assert_ne!(n.cache_key(), on);
        n.parameter(b"standard_conforming_strings", b"on");
        assert!(n.standard_conforming_strings);
        assert_eq!(parameter_status(b"a\0b\0"), Some((&b"a"[..], &b"b"[..])));
    }
}
