//! Relations the session itself created in its open transaction block.
//!
//! The catalog snapshot comes from a separate metadata connection, which cannot see catalog
//! rows the session has not committed: `BEGIN; CREATE TEMP TABLE t (...); INSERT INTO t ...`
//! would find `t` unknown (TG101 for restricted roles, TG180 while columns are stored as
//! tokens). So, once the server confirms a `CREATE TABLE` (its CommandComplete) inside a
//! transaction block, tokengate reads the relation's real definition on the session's own
//! connection, which sees its uncommitted rows: an internal query like the one for the
//! session's names ([`super::names`]), whose replies are consumed. It cannot fail inside the
//! client's transaction: it only reads catalogs with qualified names and resolves the names
//! with `to_regclass` (NULL, never an error, for a missing relation).
//!
//! What is learned is an overlay on the snapshot, used only for analysis ([`Created::overlay`]):
//! - only ordinary tables, outside any inheritance or partition family, without rules or user
//!   triggers, outside the `tokengate` schema, and with no column the policy labels (a
//!   labelled table needs the real catalog and, at rest, a migration): anything else stays
//!   unknown, as before;
//! - it is read again before the first batch of client messages after any statement was
//!   planned or completed, and is not used by the statements that follow DDL, CALL/DO, a
//!   setting change, or the Bind of a prepared statement that is one of these, in the same
//!   batch (they may have dropped, altered or replaced the relation), nor after ROLLBACK TO
//!   SAVEPOINT until it is read again (the CREATE may be undone); a name that no longer
//!   resolves to a usable table drops out;
//! - it is dropped when the transaction ends (ReadyForQuery 'I'): after COMMIT the catalog
//!   refresh takes over, after ROLLBACK the relation is gone.
//!
//! Analyses made with the overlay are not cached (the shared cache is per database, not per
//! session).
use crate::catalog::{Column, Relation, RelationKind, Snapshot};
use crate::policy::RoleView;
use std::sync::Arc;

/// At most this many names are followed per transaction; later ones stay unknown.
const MAX_NAMES: usize = 64;
/// At most this many rows (columns) are read per batch; a read with more fails (unknown).
const MAX_ROWS: usize = 16 * 1024;
/// PostgreSQL's identifier limit (NAMEDATALEN - 1): a longer name would be truncated, with a
/// notice, and is not followed (nor is a name with other than printable ASCII).
const MAX_IDENT: usize = 63;

#[derive(Debug, Default)]
pub struct Created {
    /// The names confirmed created in this transaction, as `"schema"."name"` or `"name"`.
    names: Vec<String>,
    /// The usable relations the last read found.
    relations: Vec<Relation>,
    /// Relations the last read found but cannot use (a view, a family member, a labelled
    /// table), as `(oid, schema, name)`: a different relation the snapshot knows under that
    /// name (dropped in this transaction) is hidden.
    hidden: Vec<(u32, String, String)>,
    /// The snapshot the overlay was merged into, and the merged snapshot.
    merged: Option<(Arc<Snapshot>, Arc<Snapshot>)>,
    /// Must be read again before it is used.
    stale: bool,
    /// A statement was planned since the last read.
    planned_since_read: bool,
    reading: Vec<Row>,
    read_failed: bool,
    /// DDL was planned since the last ReadyForQuery 'I'.
    ddl: bool,
}

#[derive(Debug)]
struct Row {
    oid: u32,
    schema: String,
    name: String,
    usable: bool,
    column: Option<Column>,
}

impl Created {
    /// A `CREATE TABLE` or `CREATE VIEW` naming `parts` (as PostgreSQL folds them) completed.
    pub fn created(&mut self, parts: &[String]) {
        let parts = match parts {
            [.., schema, name] => [schema.as_str(), name.as_str()].to_vec(),
            [name] => vec![name.as_str()],
            [] => return,
        };
        // Only ASCII names without control characters are followed: the query text is read
        // in the client's encoding (SJIS can hide a backslash in a multibyte character).
        if parts.iter().any(|p| {
            p.is_empty() || p.len() > MAX_IDENT || !p.bytes().all(|b| (0x20..0x7f).contains(&b))
        }) {
            return;
        }
        let name = parts
            .iter()
            .map(|p| format!("\"{}\"", p.replace('"', "\"\"")))
            .collect::<Vec<_>>()
            .join(".");
        if !self.names.contains(&name) && self.names.len() < MAX_NAMES {
            self.names.push(name);
        }
        self.stale = true;
    }

    /// A statement was planned; `changes` says it may change the catalog or names (DDL,
    /// CALL/DO, settings): the statements after it in the same batch get no overlay. `ddl`:
    /// it is DDL (the catalog is read again when its transaction ends).
    pub fn planned(&mut self, changes: bool, ddl: bool) {
        self.planned_since_read = true;
        self.stale |= changes || ddl;
        self.ddl |= ddl;
    }

    /// A prepared statement that may change the catalog is bound: the statements after it in
    /// the same batch get no overlay.
    pub fn invalidate(&mut self) {
        if !self.names.is_empty() {
            self.stale = true;
        }
    }

    /// A statement completed (the server's CommandComplete): whatever it did, the next batch
    /// reads the relations again.
    pub fn ran(&mut self) {
        self.planned_since_read = true;
    }

    /// A new batch of client messages: statements run since the last read may have changed
    /// the relations (functions, triggers elsewhere): read them again first.
    pub fn batch_starts(&mut self) {
        if self.planned_since_read {
            self.stale = true;
        }
    }

    /// ROLLBACK TO SAVEPOINT confirmed: the CREATE may be undone.
    pub fn rolled_back_to_savepoint(&mut self) {
        self.stale = true;
    }

    /// ReadyForQuery: the transaction ended ('I': forget everything), or failed ('E': nothing
    /// runs until ROLLBACK or ROLLBACK TO, which reads again). True when a transaction block
    /// that ran DDL ended: the catalog was refreshed while its changes were not committed, so
    /// it must be read again.
    pub fn ready(&mut self, status: u8) -> bool {
        match status {
            b'I' => std::mem::take(self).ddl,
            b'E' => {
                self.stale = true;
                false
            }
            _ => false,
        }
    }

    /// Whether a read is due (the caller checks that one can be sent now).
    pub fn wants_read(&self) -> bool {
        !self.names.is_empty() && self.stale
    }

    /// The internal query reading the named relations. Every name is qualified and every
    /// operator spelled with OPERATOR(), so the session's own objects cannot change what it
    /// reads. Rows: oid, schema, name, usable ('t'/'f'), then attnum, attname, type (NULL for a
    /// relation without columns).
    /// The names are E'' strings, read the same whatever `standard_conforming_strings` is.
    pub fn read_sql(&self) -> String {
        let names = self
            .names
            .iter()
            .map(|n| format!("E'{}'", n.replace('\\', "\\\\").replace('\'', "''")))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "SELECT c.oid::pg_catalog.int8, n.nspname::pg_catalog.text, c.relname::pg_catalog.text, \
             (c.relkind OPERATOR(pg_catalog.=) 'r'::pg_catalog.\"char\" AND NOT c.relispartition \
             AND NOT c.relhasrules \
             AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_inherits i \
               WHERE i.inhrelid OPERATOR(pg_catalog.=) c.oid OR i.inhparent OPERATOR(pg_catalog.=) c.oid) \
             AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t \
               WHERE t.tgrelid OPERATOR(pg_catalog.=) c.oid AND NOT t.tgisinternal))::pg_catalog.text, \
             a.attnum::pg_catalog.int4, a.attname::pg_catalog.text, a.atttypid::pg_catalog.int8 \
             FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
             LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) c.oid \
               AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped \
             WHERE c.oid OPERATOR(pg_catalog.=) ANY (SELECT pg_catalog.to_regclass(x)::pg_catalog.oid \
               FROM pg_catalog.unnest(ARRAY[{names}]::pg_catalog.text[]) AS u(x)) \
             ORDER BY 1, 5"
        )
    }

    pub fn begin_read(&mut self) {
        self.reading.clear();
        self.read_failed = false;
    }

    /// One row of the internal query (text format): its seven fields.
    pub fn read_row(&mut self, fields: &[Option<&[u8]>]) {
        let text = |i: usize| {
            fields
                .get(i)
                .copied()
                .flatten()
                .and_then(|v| std::str::from_utf8(v).ok())
        };
        let row = (|| {
            if fields.len() != 7 {
                return None;
            }
            let oid = text(0)?.parse::<u32>().ok()?;
            let column = match (text(4), text(5), text(6)) {
                (None, None, None) => None,
                (Some(n), Some(name), Some(t)) => Some(Column {
                    attnum: n.parse().ok()?,
                    name: name.to_string(),
                    type_oid: t.parse().ok()?,
                }),
                _ => return None,
            };
            Some(Row {
                oid,
                schema: text(1)?.to_string(),
                name: text(2)?.to_string(),
                usable: text(3)? == "true",
                column,
            })
        })();
        match row {
            Some(row) if self.reading.len() < MAX_ROWS => self.reading.push(row),
            _ => self.read_failed = true,
        }
    }

    /// The internal query completed: the usable relations read are the overlay.
    pub fn finish_read(&mut self, view: &RoleView) {
        let rows = std::mem::take(&mut self.reading);
        self.merged = None;
        self.relations.clear();
        self.hidden.clear();
        self.planned_since_read = false;
        if std::mem::take(&mut self.read_failed) {
            self.stale = true;
            return;
        }
        let mut unusable = std::collections::HashSet::new();
        for row in rows {
            if !row.usable || row.schema == "tokengate" {
                if unusable.insert(row.oid) {
                    self.hidden.push((row.oid, row.schema, row.name));
                }
                continue;
            }
            let at = match self.relations.iter().position(|r| r.oid == row.oid) {
                Some(i) => i,
                None => {
                    self.relations.push(Relation {
                        oid: row.oid,
                        schema: row.schema,
                        name: row.name,
                        kind: RelationKind::Table,
                        columns: Vec::new(),
                        definition: None,
                    });
                    self.relations.len() - 1
                }
            };
            if let Some(c) = row.column {
                self.relations[at].columns.push(c);
            }
        }
        // A column the policy labels needs the real catalog (and, at rest, a migration).
        let (keep, labelled): (Vec<Relation>, Vec<Relation>) = std::mem::take(&mut self.relations)
            .into_iter()
            .partition(|r| {
                !r.columns
                    .iter()
                    .any(|c| view.column(&r.qualified(&c.name)).is_some())
            });
        self.relations = keep;
        self.hidden
            .extend(labelled.into_iter().map(|r| (r.oid, r.schema, r.name)));
        self.stale = false;
    }

    /// The internal query failed: nothing is known until the next read.
    pub fn failed_read(&mut self) {
        self.reading.clear();
        self.read_failed = false;
        self.relations.clear();
        self.hidden.clear();
        self.merged = None;
        self.stale = true;
    }

    /// The snapshot to analyse with: `base` plus the relations read, when they are current.
    /// `None`: use `base` as it is.
    pub fn overlay(&mut self, base: &Arc<Snapshot>) -> Option<Arc<Snapshot>> {
        if self.stale || (self.relations.is_empty() && self.hidden.is_empty()) {
            return None;
        }
        match &self.merged {
            Some((b, m)) if Arc::ptr_eq(b, base) => Some(m.clone()),
            _ => {
                let m = Arc::new(base.with_relations(&self.relations, &self.hidden));
                self.merged = Some((base.clone(), m.clone()));
                Some(m)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> Arc<RoleView> {
        let policy = crate::policy::Policy::from_yaml(
            "version: 1\nlabels:\n  ssn: { class: pii, token: digits }\ncolumns:\n  pg_temp_3.t3.ssn: ssn\nroles:\n  admin: { default: clear }\n",
            "p.yaml",
        )
        .unwrap();
        policy.for_role("admin", &[])
    }

    fn row(fields: [Option<&str>; 7]) -> Vec<Option<&[u8]>> {
        fields.iter().map(|f| f.map(str::as_bytes)).collect()
    }

    #[test]
    fn names_are_quoted_and_the_read_replaces_the_overlay() {
        let mut c = Created::default();
        c.created(&["db".into(), "pg_temp".into(), "t\"2".into()]);
        c.created(&["it's".into()]);
        c.created(&["x".repeat(64)]);
        c.created(&["tä".into()]);
        assert!(c.wants_read());
        let sql = c.read_sql();
        assert!(sql.contains(r#"E'"pg_temp"."t""2"'"#), "{sql}");
        assert!(sql.contains(r#"E'"it''s"'"#), "{sql}");
        assert!(!sql.contains("xxxx") && !sql.contains('ä'));
        let view = view();
        c.begin_read();
        c.read_row(&row([
            Some("16500"),
            Some("pg_temp_3"),
            Some("t2"),
            Some("true"),
            Some("1"),
            Some("id"),
            Some("23"),
        ]));
        c.read_row(&row([
            Some("16500"),
            Some("pg_temp_3"),
            Some("t2"),
            Some("true"),
            Some("2"),
            Some("v"),
            Some("25"),
        ]));
        c.read_row(&row([
            Some("16700"),
            Some("pg_temp_3"),
            Some("t3"),
            Some("true"),
            Some("1"),
            Some("ssn"),
            Some("25"),
        ]));
        c.read_row(&row([
            Some("16600"),
            Some("pg_temp_3"),
            Some("v2"),
            Some("false"),
            None,
            None,
            None,
        ]));
        c.finish_read(&view);
        assert!(!c.wants_read());
        let base = Arc::new(Snapshot::build(7, vec![], vec![]));
        let merged = c.overlay(&base).unwrap();
        assert_eq!(
            merged.column_by_oid(16500, 2),
            Some(("pg_temp_3.t2.v".into(), 25))
        );
        assert!(merged.relation(Some("pg_temp_3"), "v2").is_none());
        assert!(
            merged.relation(Some("pg_temp_3"), "t3").is_none(),
            "labelled"
        );
        // A view found under a name hides the snapshot's older relation of that name.
        let old = Relation {
            oid: 1,
            schema: "pg_temp_3".into(),
            name: "v2".into(),
            kind: RelationKind::Table,
            columns: vec![],
            definition: None,
        };
        let base2 = Arc::new(Snapshot::build(7, vec![old], vec![]));
        assert!(
            c.overlay(&base2)
                .unwrap()
                .relation(Some("pg_temp_3"), "v2")
                .is_none()
        );
        // Planned in the batch: still current; a new batch must read again first.
        c.planned(false, false);
        assert!(c.overlay(&base).is_some());
        c.batch_starts();
        assert!(c.overlay(&base).is_none() && c.wants_read());
        // A statement completed (e.g. a prepared DROP executed): read again next batch.
        c.begin_read();
        c.finish_read(&view);
        c.ran();
        assert!(!c.wants_read());
        c.batch_starts();
        assert!(c.wants_read());
        // DDL in the batch: the rest of the batch gets no overlay.
        c.begin_read();
        c.finish_read(&view);
        assert!(!c.wants_read());
        c.planned(true, true);
        assert!(c.wants_read() && c.overlay(&base).is_none());
        assert!(c.ready(b'I'), "DDL ran in the transaction");
        assert!(!c.wants_read());
    }

    #[test]
    fn a_malformed_row_fails_the_read() {
        let mut c = Created::default();
        c.created(&["t2".into()]);
        c.begin_read();
        c.read_row(&row([Some("x"), None, None, None, None, None, None]));
        c.finish_read(&view());
        assert!(c.wants_read());
        assert!(
            c.overlay(&Arc::new(Snapshot::build(1, vec![], vec![])))
                .is_none()
        );
    }
}
