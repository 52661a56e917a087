//! The recorded state of the columns stored as tokens (`at_rest: token`): which key version
//! their tokens use and whether a migration or rekey is under way. It lives in the upstream
//! database, in `tokengate.at_rest_columns`, written only by `tokengate migrate` and
//! `tokengate rekey` ([`crate::atrest`]) and read by every proxy ([`super::at_rest_cache`]).
//!
//! The proxy never guesses a key version: a column is usable through tokengate only when its
//! row says `tokenized`, and then its tokens are all made with `key_version` under `label`
//! and `token_format`. No row means never migrated (the column may hold plaintext).
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The schema tokengate owns in the upstream database.
pub const SCHEMA: &str = "tokengate";

/// Creates the state table (idempotent; serialized by an advisory lock so two tools starting
/// at once do not race on `CREATE SCHEMA`). Everyone may read it: it names columns and key
/// versions, never a value or a key. Only its owner (the role running migrate) writes it.
pub const CREATE_SQL: &str = "
SELECT pg_advisory_xact_lock(hashtext('tokengate.at_rest_columns'));
CREATE SCHEMA IF NOT EXISTS tokengate;
CREATE TABLE IF NOT EXISTS tokengate.at_rest_columns (
    table_schema   text    NOT NULL,
    table_name     text    NOT NULL,
    column_name    text    NOT NULL,
    label          text    NOT NULL,
    token_format   text    NOT NULL,
    key_name       text    NOT NULL,
    key_version    integer NOT NULL,
    state          text    NOT NULL CHECK (state IN ('migrating', 'tokenized', 'rekeying')),
    target_version integer,
    cursor         text[],
    rows_done      bigint  NOT NULL DEFAULT 0,
    generation     bigint  NOT NULL DEFAULT 1,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (table_schema, table_name, column_name),
    CHECK ((state = 'rekeying') = (target_version IS NOT NULL))
);
GRANT USAGE ON SCHEMA tokengate TO PUBLIC;
GRANT SELECT ON tokengate.at_rest_columns TO PUBLIC;";

/// What the proxy reads (the cursor is the tools' business).
pub const LOAD_SQL: &str = "
SELECT table_schema, table_name, column_name, label, token_format, key_name, key_version,
       state, target_version, rows_done, generation
  FROM tokengate.at_rest_columns";

/// Where a column stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `tokengate migrate` is tokenizing it: rows up to the cursor hold tokens, the rest
    /// plaintext.
    Migrating,
    /// Every value is a token of `key_version`.
    Tokenized,
    /// `tokengate rekey` is moving it to `target_version`.
    Rekeying,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Migrating => "migrating",
            Phase::Tokenized => "tokenized",
            Phase::Rekeying => "rekeying",
        }
    }

    pub fn parse(s: &str) -> Option<Phase> {
        match s {
            "migrating" => Some(Phase::Migrating),
            "tokenized" => Some(Phase::Tokenized),
            "rekeying" => Some(Phase::Rekeying),
            _ => None,
        }
    }
}

/// One row of the state table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnState {
    pub label: String,
    pub token_format: String,
    pub key_name: String,
    /// The version the stored tokens use (while migrating: the version being applied; while
    /// rekeying: the version of the rows not yet rekeyed).
    pub key_version: u32,
    pub phase: Phase,
    pub target_version: Option<u32>,
    pub rows_done: i64,
    /// Bumped on every change of phase or key version.
    pub generation: i64,
}

impl ColumnState {
    /// One line for `policy check --upstream` and the tools.
    pub fn describe(&self) -> String {
        match self.phase {
            Phase::Tokenized => format!("tokenized, key version {}", self.key_version),
            Phase::Migrating => format!(
                "migrating to key version {} ({} rows done)",
                self.key_version, self.rows_done
            ),
            Phase::Rekeying => format!(
                "rekeying {}→{} ({} rows done)",
                self.key_version,
                self.target_version.unwrap_or(0),
                self.rows_done
            ),
        }
    }
}

/// Every column's state in one database, as read at one moment.
#[derive(Debug, Clone)]
pub struct AtRestStates {
    /// `schema.table.column` → state.
    pub columns: HashMap<String, ColumnState>,
    /// When the read that produced this began (the state is at least this recent).
    pub read_at: Instant,
    /// How long it may be trusted (the proxy's `at_rest_max_age`).
    pub max_age: Duration,
}

impl AtRestStates {
    pub fn empty(max_age: Duration) -> Self {
        AtRestStates {
            columns: HashMap::new(),
            read_at: Instant::now(),
            max_age,
        }
    }

    /// Recent enough to decide with.
    pub fn fresh(&self) -> bool {
        self.read_at.elapsed() <= self.max_age
    }

    pub fn get(&self, qualified: &str) -> Option<&ColumnState> {
        self.columns.get(qualified)
    }
}

/// The state table's rows over an open connection (`Ok(empty)` when the table does not exist:
/// no column was ever migrated).
pub async fn load_states(
    client: &tokio_postgres::Client,
) -> Result<HashMap<String, ColumnState>, tokio_postgres::Error> {
    use tokio_postgres::error::SqlState;
    let rows = match client.query(LOAD_SQL, &[]).await {
        Ok(rows) => rows,
        Err(e)
            if e.code() == Some(&SqlState::UNDEFINED_TABLE)
                || e.code() == Some(&SqlState::INVALID_SCHEMA_NAME) =>
        {
            return Ok(HashMap::new());
        }
        Err(e) => return Err(e),
    };
    let mut out = HashMap::with_capacity(rows.len());
    for row in rows {
        let qualified = format!(
            "{}.{}.{}",
            row.try_get::<_, String>(0)?,
            row.try_get::<_, String>(1)?,
            row.try_get::<_, String>(2)?
        );
        let phase: String = row.try_get(7)?;
        // A row tokengate cannot read (hand-edited) is left out: the column then counts as
        // never migrated, which refuses it.
        let Some(phase) = Phase::parse(&phase) else {
            continue;
        };
        let version = |v: i32| u32::try_from(v).ok();
        let Some(key_version) = version(row.try_get(6)?) else {
            continue;
        };
        out.insert(
            qualified,
            ColumnState {
                label: row.try_get(3)?,
                token_format: row.try_get(4)?,
                key_name: row.try_get(5)?,
                key_version,
                phase,
                target_version: row.try_get::<_, Option<i32>>(8)?.and_then(version),
                rows_done: row.try_get(9)?,
                generation: row.try_get(10)?,
            },
        );
    }
    Ok(out)
}
