//! `tokengate migrate` and `tokengate rekey`: moving the values of a column stored as tokens
//! (`at_rest: token`) from plaintext to tokens, or from key version N to M, in place, in
//! resumable batches, and recording the column's state in `tokengate.at_rest_columns`
//! ([`crate::catalog::at_rest`]), which every proxy obeys.
//!
//! - Every batch is one transaction: the rows it changes (locked `FOR UPDATE`, in primary-key
//!   order after the recorded cursor) and the new cursor and row count commit together, so a
//!   crash or `kill -9` at any point resumes exactly after the last committed batch: no value
//!   is tokenized twice or skipped. The state row is locked `FOR UPDATE` in each batch too,
//!   so two tools on one column take turns rather than race.
//! - A state change commits before any row changes. `rekey` then waits `grace` (longer than
//!   any proxy's `at_rest_max_age`), waits until the database's backends that were running a
//!   statement have each been seen idle once (a statement queued behind a long one on its
//!   connection has then started), and takes a barrier `LOCK TABLE ... IN ACCESS EXCLUSIVE
//!   MODE`, which waits out the transactions that touched the table under the old state.
//!   `migrate` needs no wait: proxies refuse a column with no state row, and a migrating one.
//! - The library API is small: [`columns`] lists a policy's columns stored as tokens,
//!   [`migrate`] and [`rekey`] run one column, [`migrate_all`] initializes every column of a
//!   policy (what a new deployment, a demo or a test runs once after creating its tables).
mod batch;

use crate::catalog::at_rest::{self, Phase};
use crate::policy::Policy;
use crate::policy::detect::quote_ident;
use crate::protect::keys::DEFAULT_KEY_NAME;
use crate::protect::{KeyRing, ProtectError, TokenFormat, Tokenizer};
use std::time::{Duration, Instant};
use tokio_postgres::Client;

pub use crate::catalog::at_rest::{ColumnState, load_states};

/// A column the policy stores as tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub schema: String,
    pub table: String,
    pub column: String,
    pub label: String,
    /// The token format as the policy spells it.
    pub format: String,
}

impl Column {
    /// `schema.table.column`.
    pub fn qualified(&self) -> String {
        format!("{}.{}.{}", self.schema, self.table, self.column)
    }

    fn relation(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table))
    }
}

/// How a run goes.
#[derive(Debug, Clone)]
pub struct Options {
    /// Rows per batch (one transaction each).
    pub batch_size: usize,
    /// `rekey`: the wait between committing the state change and the lock barrier. Must be
    /// longer than every proxy's `at_rest_max_age`.
    pub grace: Duration,
    /// `lock_timeout` of one attempt at the lock barrier.
    pub lock_timeout: Duration,
    /// Attempts at the lock barrier before giving up (the state stays resumable).
    pub lock_attempts: u32,
    /// `rekey`: how long to wait for the database's other backends that were running a
    /// statement after the grace period to be seen idle once.
    pub drain_timeout: Duration,
    /// `rekey`: the version to move to (default: the key file's active version).
    pub to_version: Option<u32>,
    /// `migrate`: the column already holds tokens made with this key version (written by a
    /// tokengate without the state table): record it `tokenized` without touching a row.
    pub already_tokenized: Option<u32>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            batch_size: 1000,
            grace: crate::config::DEFAULT_AT_REST_GRACE,
            lock_timeout: Duration::from_secs(1),
            lock_attempts: 60,
            drain_timeout: Duration::from_secs(600),
            to_version: None,
            already_tokenized: None,
        }
    }
}

/// Progress reports (the CLI draws a progress bar; the library default is silent).
pub trait Progress {
    /// A column's run begins: `total` rows estimated, `done` already done by earlier runs.
    fn begin(&self, _column: &str, _total: u64, _done: u64) {}
    /// A batch of `rows` committed.
    fn advance(&self, _rows: u64) {}
    /// Something worth saying (waiting for the grace period or a lock).
    fn note(&self, _message: &str) {}
    /// The run of the current column ended (successfully or not).
    fn end(&self) {}
}

/// No progress reports.
pub struct Quiet;
impl Progress for Quiet {}

/// How a column's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to do: the column was already tokenized with this key version.
    AlreadyDone { key_version: u32 },
    /// `already_tokenized`: the state was recorded as given; no row was read or changed.
    Recorded { key_version: u32 },
    /// Done: `rows` values changed by this run (earlier interrupted runs not counted).
    Done {
        rows: u64,
        key_version: u32,
        elapsed: Duration,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum AtRestError {
    #[error("{}", crate::net::pg_error::describe(.0))]
    Query(#[from] tokio_postgres::Error),
    #[error("the policy stores no column {0} as tokens (at_rest: token)")]
    NotInPolicy(String),
    #[error("column {0} does not exist in the database")]
    NoSuchColumn(String),
    #[error(
        "column {column} has type {type_name}; columns stored as tokens must be text, varchar or char"
    )]
    UnsupportedType { column: String, type_name: String },
    #[error(
        "table {0} has no primary key; migrate and rekey walk a table in primary-key order so an interrupted run resumes exactly (add a primary key first)"
    )]
    NoPrimaryKey(String),
    #[error(
        "column {column}: the value of the row with key {key} cannot be tokenized ({reason}); fix that row directly in PostgreSQL, then run the command again to resume"
    )]
    Value {
        column: String,
        key: String,
        reason: String,
    },
    #[error("column {column}: {message}")]
    State { column: String, message: String },
    #[error("key file: {0}")]
    Key(#[from] crate::protect::KeyError),
    #[error(
        "backends {pids:?} of the database kept running statements for {secs}s after the grace period; a statement planned under the old state may be queued behind them; run the command again to resume (pg_stat_activity shows them)"
    )]
    Drain { pids: Vec<i32>, secs: u64 },
    #[error("{0}")]
    Privilege(String),
    #[error(
        "column {column}: could not lock table {table} after {attempts} attempts (lock_timeout {timeout_ms} ms each); long transactions hold it; run the command again to resume"
    )]
    Lock {
        column: String,
        table: String,
        attempts: u32,
        timeout_ms: u128,
    },
}

/// The policy's columns stored as tokens, or only `only` (`schema.table.column`).
pub fn columns(policy: &Policy, only: Option<&str>) -> Result<Vec<Column>, AtRestError> {
    let mut out = Vec::new();
    for entry in policy.columns() {
        let Some(label) = policy.labels().get(entry.label) else {
            continue;
        };
        if !label.at_rest {
            continue;
        }
        let column = Column {
            schema: entry.name.schema.clone(),
            table: entry.name.table.clone(),
            column: entry.name.column.clone(),
            label: label.name.clone(),
            format: label
                .token
                .as_ref()
                .map_or(String::new(), |t| t.as_str().to_string()),
        };
        if only.is_none_or(|o| o == column.qualified()) {
            out.push(column);
        }
    }
    match only {
        Some(o) if out.is_empty() => Err(AtRestError::NotInPolicy(o.to_string())),
        _ => Ok(out),
    }
}

/// Migrates (or confirms) every column of the policy stored as tokens: run once after
/// creating the tables, before clients write through tokengate. On empty tables it only
/// records the state (`tokenized` with the key file's active version).
pub async fn migrate_all(
    client: &mut Client,
    policy: &Policy,
    keys: &KeyRing,
    options: &Options,
) -> Result<Vec<(String, Outcome)>, AtRestError> {
    let mut out = Vec::new();
    for c in columns(policy, None)? {
        let outcome = migrate(client, keys, &c, options, &Quiet).await?;
        out.push((c.qualified(), outcome));
    }
    Ok(out)
}

/// A tokenizer (or revealer) of one label, format and key version.
fn tokenizer(c: &Column, keys: &KeyRing, version: u32) -> Result<Tokenizer, AtRestError> {
    let format: TokenFormat = c.format.parse().map_err(|_| AtRestError::State {
        column: c.qualified(),
        message: format!("the token format {:?} is not usable", c.format),
    })?;
    let key = keys.get(DEFAULT_KEY_NAME, Some(version))?;
    Tokenizer::new(key, &c.label, format).map_err(|e| AtRestError::State {
        column: c.qualified(),
        message: e.to_string(),
    })
}

fn state_error(c: &Column, message: impl Into<String>) -> AtRestError {
    AtRestError::State {
        column: c.qualified(),
        message: message.into(),
    }
}

/// The recorded state must be for the policy's label and format: tokens made under another
/// would be decrypted to garbage.
fn same_label(c: &Column, s: &batch::Locked) -> Result<(), AtRestError> {
    if s.label != c.label || s.token_format != c.format {
        return Err(state_error(
            c,
            format!(
                "its tokens were made under label {} (token format {}), but the policy says label {} (token format {})",
                s.label, s.token_format, c.label, c.format
            ),
        ));
    }
    Ok(())
}

/// Records the first state of `c`: its label, token format, key and key version.
async fn insert_state(
    tx: &tokio_postgres::Transaction<'_>,
    c: &Column,
    version: u32,
    phase: Phase,
) -> Result<(), AtRestError> {
    tx.execute(
        "INSERT INTO tokengate.at_rest_columns
           (table_schema, table_name, column_name, label, token_format, key_name,
            key_version, state)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &c.schema,
            &c.table,
            &c.column,
            &c.label,
            &c.format,
            &DEFAULT_KEY_NAME,
            &(version as i32),
            &phase.as_str(),
        ],
    )
    .await?;
    Ok(())
}

/// Tokenizes the existing values of `c` in place (resuming an interrupted run), then records
/// it `tokenized` with the key version used.
pub async fn migrate(
    client: &mut Client,
    keys: &KeyRing,
    c: &Column,
    options: &Options,
    progress: &dyn Progress,
) -> Result<Outcome, AtRestError> {
    client.batch_execute(at_rest::CREATE_SQL).await?;
    let table = batch::Table::inspect(client, c).await?;
    let tx = client.transaction().await?;
    let version = match (batch::lock_state(&tx, c).await?, options.already_tokenized) {
        (None, Some(version)) => {
            keys.get(DEFAULT_KEY_NAME, Some(version))?;
            insert_state(&tx, c, version, Phase::Tokenized).await?;
            tx.commit().await?;
            return Ok(Outcome::Recorded {
                key_version: version,
            });
        }
        (Some(s), Some(version)) => {
            same_label(c, &s)?;
            if s.phase == Phase::Tokenized && s.key_version == version {
                return Ok(Outcome::AlreadyDone {
                    key_version: s.key_version,
                });
            }
            return Err(state_error(
                c,
                format!(
                    "its state is already recorded ({} with key version {}); \
                     --already-tokenized only records a column that has no state",
                    s.phase.as_str(),
                    s.key_version
                ),
            ));
        }
        (None, None) => {
            let active = keys.active_version(DEFAULT_KEY_NAME)?;
            // A table without a primary key cannot be walked in batches; while its column
            // holds no value (a new table) there is nothing to walk: record it tokenized.
            let empty_without_key = if table.require_pk().is_err() {
                if !table.holds_no_value(&tx).await? {
                    table.require_pk()?;
                }
                true
            } else {
                false
            };
            let phase = if empty_without_key {
                Phase::Tokenized
            } else {
                Phase::Migrating
            };
            insert_state(&tx, c, active, phase).await?;
            if empty_without_key {
                tx.commit().await?;
                return Ok(Outcome::Done {
                    rows: 0,
                    key_version: active,
                    elapsed: std::time::Duration::ZERO,
                });
            }
            active
        }
        (Some(s), None) => {
            same_label(c, &s)?;
            match s.phase {
                Phase::Tokenized => {
                    return Ok(Outcome::AlreadyDone {
                        key_version: s.key_version,
                    });
                }
                Phase::Rekeying => {
                    return Err(state_error(
                        c,
                        "a rekey is under way; run `tokengate rekey` to finish it",
                    ));
                }
                Phase::Migrating => s.key_version,
            }
        }
    };
    tx.commit().await?;
    keys.get(DEFAULT_KEY_NAME, Some(version))?;
    let tokenizer = tokenizer(c, keys, version)?;
    let started = Instant::now();
    table.require_pk()?;
    let rows = batch::run(
        client,
        c,
        &table,
        Phase::Migrating,
        options,
        progress,
        &|plain, out| tokenizer.tokenize_many(plain, out),
    )
    .await?;
    batch::finish(client, c, Phase::Migrating).await?;
    Ok(Outcome::Done {
        rows,
        key_version: version,
        elapsed: started.elapsed(),
    })
}

/// Re-encrypts the tokens of `c` from its recorded key version N to the key file's active
/// version (or `options.to_version`) M > N, resuming an interrupted rekey.
pub async fn rekey(
    client: &mut Client,
    keys: &KeyRing,
    c: &Column,
    options: &Options,
    progress: &dyn Progress,
) -> Result<Outcome, AtRestError> {
    client.batch_execute(at_rest::CREATE_SQL).await?;
    let table = batch::Table::inspect(client, c).await?;
    table.require_pk()?;
    let tx = client.transaction().await?;
    let Some(s) = batch::lock_state(&tx, c).await? else {
        return Err(state_error(
            c,
            "it was never migrated; run `tokengate migrate` first",
        ));
    };
    same_label(c, &s)?;
    let (from, to) = match s.phase {
        Phase::Migrating => {
            return Err(state_error(
                c,
                "its migration has not finished; run `tokengate migrate` first",
            ));
        }
        Phase::Rekeying => {
            let to = s.target_version.unwrap_or(0);
            if options.to_version.is_some_and(|v| v != to) {
                return Err(state_error(
                    c,
                    format!(
                        "a rekey to version {to} is under way; finish it before moving to another version"
                    ),
                ));
            }
            (s.key_version, to)
        }
        Phase::Tokenized => {
            let to = match options.to_version {
                Some(v) => v,
                None => keys.active_version(DEFAULT_KEY_NAME)?,
            };
            if to == s.key_version {
                return Ok(Outcome::AlreadyDone { key_version: to });
            }
            if to < s.key_version {
                return Err(state_error(
                    c,
                    format!(
                        "its tokens use key version {}; rekey moves only to a newer version (asked for {to})",
                        s.key_version
                    ),
                ));
            }
            // Both versions must be there before anything changes.
            keys.get(DEFAULT_KEY_NAME, Some(s.key_version))?;
            keys.get(DEFAULT_KEY_NAME, Some(to))?;
            tx.execute(
                "UPDATE tokengate.at_rest_columns
                    SET state = 'rekeying', target_version = $4, cursor = NULL, rows_done = 0,
                        generation = generation + 1, updated_at = now()
                  WHERE table_schema = $1 AND table_name = $2 AND column_name = $3",
                &[&c.schema, &c.table, &c.column, &(to as i32)],
            )
            .await?;
            (s.key_version, to)
        }
    };
    tx.commit().await?;
    keys.get(DEFAULT_KEY_NAME, Some(from))?;
    keys.get(DEFAULT_KEY_NAME, Some(to))?;
    let old = tokenizer(c, keys, from)?;
    let new = tokenizer(c, keys, to)?;
    // Proxies may still be running statements under `tokenized, version N`: wait until none
    // can start one, then until the transactions that did have ended.
    progress.note(&format!(
        "waiting {} ms for proxies to see the rekeying state",
        options.grace.as_millis()
    ));
    tokio::time::sleep(options.grace).await;
    batch::drain(client, options, progress).await?;
    batch::barrier(client, c, options, progress).await?;
    let started = Instant::now();
    let rows = batch::run(
        client,
        c,
        &table,
        Phase::Rekeying,
        options,
        progress,
        &|tokens, out| {
            // Decrypted with N, then encrypted with M, both batched.
            let mut plain = Vec::new();
            let revealed = old.reveal_many(tokens, &mut plain);
            let values: Vec<&[u8]> = revealed
                .iter()
                .filter_map(|r| r.as_ref().ok().and_then(Option::as_ref))
                .map(|r| &plain[r.clone()])
                .collect();
            let mut fresh = new.tokenize_many(&values, out).into_iter();
            revealed
                .into_iter()
                .map(|r| match r {
                    Ok(Some(_)) => fresh
                        .next()
                        .unwrap_or_else(|| Err(ProtectError::bad("token", "batch mismatch"))),
                    other => other,
                })
                .collect()
        },
    )
    .await?;
    batch::finish(client, c, Phase::Rekeying).await?;
    Ok(Outcome::Done {
        rows,
        key_version: to,
        elapsed: started.elapsed(),
    })
}
