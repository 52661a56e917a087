//! The batch machinery shared by migrate and rekey: the table's primary key, the state row,
//! the lock barrier, and the batches themselves (rows and progress in one transaction).
use super::{AtRestError, Column, Options, Progress, state_error};
use crate::catalog::at_rest::Phase;
use crate::policy::detect::quote_ident;
use crate::protect::token::Crypted;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Transaction};

/// The table being walked: its quoted name, its primary key (quoted names and types in key
/// order), and the quoted column.
pub(super) struct Table {
    relation: String,
    pk: Vec<(String, String)>,
    column: String,
}

/// The text-like types a column stored as tokens may have.
const TEXT_TYPES: [u32; 3] = [25, 1043, 1042];

impl Table {
    pub(super) async fn inspect(client: &Client, c: &Column) -> Result<Table, AtRestError> {
        let relation = c.relation();
        let col = client
            .query_opt(
                "SELECT a.atttypid::int8, format_type(a.atttypid, a.atttypmod)
                   FROM pg_attribute a
                  WHERE a.attrelid = to_regclass($1) AND a.attname = $2 AND a.attnum > 0
                    AND NOT a.attisdropped",
                &[&relation, &c.column],
            )
            .await?
            .ok_or_else(|| AtRestError::NoSuchColumn(c.qualified()))?;
        let oid = u32::try_from(col.try_get::<_, i64>(0)?).unwrap_or(0);
        if !TEXT_TYPES.contains(&oid) {
            return Err(AtRestError::UnsupportedType {
                column: c.qualified(),
                type_name: col.try_get(1)?,
            });
        }
        let pk = client
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod)
                   FROM pg_index i
                   CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
                   JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                  WHERE i.indrelid = to_regclass($1) AND i.indisprimary
                  ORDER BY k.n",
                &[&relation],
            )
            .await?;
        // A walk of a parent would also rewrite its children's rows (and a child's key need
        // not be unique across the family): tables of a family are not supported.
        let family: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_inherits
                                 WHERE inhrelid = to_regclass($1) OR inhparent = to_regclass($1))",
                &[&relation],
            )
            .await?
            .try_get(0)?;
        if family {
            return Err(state_error(
                c,
                "its table belongs to an inheritance or partition family (INHERITS, PARTITION OF), which columns stored as tokens do not support",
            ));
        }
        let mut key = Vec::with_capacity(pk.len());
        for row in pk {
            key.push((quote_ident(&row.try_get::<_, String>(0)?), row.try_get(1)?));
        }
        Ok(Table {
            relation,
            pk: key,
            column: quote_ident(&c.column),
        })
    }

    /// Batches walk the primary key: a table without one can only be recorded while its
    /// column holds no value ([`Table::holds_no_value`]).
    pub(super) fn require_pk(&self) -> Result<(), AtRestError> {
        if self.pk.is_empty() {
            return Err(AtRestError::NoPrimaryKey(self.relation.clone()));
        }
        Ok(())
    }

    /// Whether the column holds no value, with the table locked against writes (`SHARE`)
    /// until `tx` ends, so none can arrive before the state commits.
    pub(super) async fn holds_no_value(&self, tx: &Transaction<'_>) -> Result<bool, AtRestError> {
        tx.batch_execute(&format!("LOCK TABLE {} IN SHARE MODE", self.relation))
            .await?;
        let row = tx
            .query_one(
                &format!(
                    "SELECT NOT EXISTS (SELECT 1 FROM {} WHERE {} IS NOT NULL)",
                    self.relation, self.column
                ),
                &[],
            )
            .await?;
        Ok(row.try_get(0)?)
    }

    /// The key columns qualified by the alias `t`: an unqualified ORDER BY name would mean
    /// the output column of that name (the key's text form, sorted as text).
    fn pk_list(&self) -> String {
        let names: Vec<String> = self.pk.iter().map(|(n, _)| format!("t.{n}")).collect();
        names.join(", ")
    }

    /// The next batch after the cursor (`$1..$k`, when there is one), locked.
    fn select(&self, after_cursor: bool, limit: usize) -> String {
        let texts: Vec<String> = self
            .pk
            .iter()
            .map(|(n, _)| format!("t.{n}::text"))
            .collect();
        let filter = if after_cursor {
            let casts: Vec<String> = self
                .pk
                .iter()
                .enumerate()
                .map(|(i, (_, t))| format!("CAST(${}::text AS {t})", i + 1))
                .collect();
            format!("WHERE ({}) > ({})", self.pk_list(), casts.join(", "))
        } else {
            String::new()
        };
        format!(
            "SELECT {}, t.{}::text FROM {} AS t {filter} ORDER BY {} LIMIT {limit} FOR UPDATE",
            texts.join(", "),
            self.column,
            self.relation,
            self.pk_list()
        )
    }

    /// Sets the column from arrays: `$1..$k` the key columns as text, `$k+1` the new values.
    fn update(&self) -> String {
        let k = self.pk.len();
        let arrays: Vec<String> = (1..=k + 1).map(|i| format!("${i}::text[]")).collect();
        let names: Vec<String> = (1..=k).map(|i| format!("k{i}")).collect();
        let join: Vec<String> = self
            .pk
            .iter()
            .enumerate()
            .map(|(i, (n, t))| format!("t.{n} = CAST(v.k{} AS {t})", i + 1))
            .collect();
        format!(
            "UPDATE {} AS t SET {} = v.new FROM unnest({}) AS v({}, new) WHERE {}",
            self.relation,
            self.column,
            arrays.join(", "),
            names.join(", "),
            join.join(" AND ")
        )
    }
}

/// The state row as the tools need it.
pub(super) struct Locked {
    pub phase: Phase,
    pub key_version: u32,
    pub target_version: Option<u32>,
    pub cursor: Option<Vec<String>>,
    pub rows_done: i64,
    pub label: String,
    pub token_format: String,
}

const WHERE_COLUMN: &str = "table_schema = $1 AND table_name = $2 AND column_name = $3";

/// The column's state row, locked for the transaction (`None`: never migrated).
pub(super) async fn lock_state(
    tx: &Transaction<'_>,
    c: &Column,
) -> Result<Option<Locked>, AtRestError> {
    let row = tx
        .query_opt(
            &format!(
                "SELECT state, key_version, target_version, cursor, rows_done, label, token_format
                   FROM tokengate.at_rest_columns WHERE {WHERE_COLUMN} FOR UPDATE"
            ),
            &[&c.schema, &c.table, &c.column],
        )
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let phase: String = row.try_get(0)?;
    let phase = Phase::parse(&phase)
        .ok_or_else(|| state_error(c, format!("unknown state {phase:?} in the state table")))?;
    let version =
        |v: i32| u32::try_from(v).map_err(|_| state_error(c, format!("invalid key version {v}")));
    Ok(Some(Locked {
        phase,
        key_version: version(row.try_get(1)?)?,
        target_version: row.try_get::<_, Option<i32>>(2)?.map(version).transpose()?,
        cursor: row.try_get(3)?,
        rows_done: row.try_get(4)?,
        label: row.try_get(5)?,
        token_format: row.try_get(6)?,
    }))
}

/// Client backends of this database (other than ours) running a statement now.
const BUSY_SQL: &str = "
SELECT pid, backend_start::text FROM pg_stat_activity
 WHERE datname = current_database() AND pid <> pg_backend_pid()
   AND backend_type = 'client backend' AND state = 'active'";

/// After the grace period: waits until every other client backend of the database that is
/// running a statement has been seen not running one at least once. A statement a proxy
/// planned under the old state may sit queued behind a long one on its connection (a
/// pipeline, or an earlier statement of its transaction that does not touch the table),
/// where the lock barrier cannot see it; once its backend has been seen idle, it has started
/// (and holds its table lock, which the barrier then waits for) or finished.
pub(super) async fn drain(
    client: &Client,
    options: &Options,
    progress: &dyn Progress,
) -> Result<(), AtRestError> {
    let busy = || async {
        let rows = client.query(BUSY_SQL, &[]).await?;
        let mut out = std::collections::HashSet::new();
        for r in rows {
            out.insert((r.try_get::<_, i32>(0)?, r.try_get::<_, Option<String>>(1)?));
        }
        Ok::<_, AtRestError>(out)
    };
    let hidden: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND pid <> pg_backend_pid()
                AND backend_type = 'client backend' AND state IS NULL",
            &[],
        )
        .await?
        .try_get(0)?;
    if hidden > 0 {
        return Err(AtRestError::Privilege(format!(
            "{hidden} sessions of other roles hide their state in pg_stat_activity; rekey must see whether they run statements: run it as a superuser or a member of pg_read_all_stats"
        )));
    }
    let mut waiting = busy().await?;
    let started = std::time::Instant::now();
    let mut said = false;
    while !waiting.is_empty() {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let now = busy().await?;
        waiting.retain(|p| now.contains(p));
        if waiting.is_empty() {
            break;
        }
        if !said && started.elapsed() > std::time::Duration::from_secs(2) {
            said = true;
            let pids: Vec<String> = waiting.iter().map(|(p, _)| p.to_string()).collect();
            progress.note(&format!(
                "waiting for backends {} to finish the statements they were running",
                pids.join(", ")
            ));
        }
        if started.elapsed() > options.drain_timeout {
            let mut pids: Vec<i32> = waiting.iter().map(|(p, _)| *p).collect();
            pids.sort_unstable();
            return Err(AtRestError::Drain {
                pids,
                secs: options.drain_timeout.as_secs(),
            });
        }
    }
    Ok(())
}

/// Takes and releases `ACCESS EXCLUSIVE` on the table: every transaction that touched it
/// before (under the old state) has ended once this returns. Retried with a short
/// `lock_timeout`, so waiting for it does not block the table's readers for long.
pub(super) async fn barrier(
    client: &mut Client,
    c: &Column,
    options: &Options,
    progress: &dyn Progress,
) -> Result<(), AtRestError> {
    let relation = c.relation();
    for attempt in 1..=options.lock_attempts.max(1) {
        let tx = client.transaction().await?;
        tx.batch_execute(&format!(
            "SET LOCAL lock_timeout = {}",
            options.lock_timeout.as_millis().max(1)
        ))
        .await?;
        match tx
            .batch_execute(&format!("LOCK TABLE {relation} IN ACCESS EXCLUSIVE MODE"))
            .await
        {
            Ok(()) => {
                tx.commit().await?;
                return Ok(());
            }
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
                drop(tx);
                progress.note(&format!(
                    "table {relation} is busy (attempt {attempt}); waiting for its transactions to end"
                ));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(AtRestError::Lock {
        column: c.qualified(),
        table: relation,
        attempts: options.lock_attempts,
        timeout_ms: options.lock_timeout.as_millis(),
    })
}

/// A batch of values' new forms, appended to the buffer: one outcome per value, in order
/// (see [`crate::protect::Tokenizer::tokenize_many`]).
pub(super) type Convert<'a> = dyn Fn(&[&[u8]], &mut Vec<u8>) -> Vec<Crypted> + 'a;

/// Walks the table in batches after the recorded cursor until none is left; returns the rows
/// changed by this run. Each batch commits its rows and the new cursor together.
pub(super) async fn run(
    client: &mut Client,
    c: &Column,
    table: &Table,
    phase: Phase,
    options: &Options,
    progress: &dyn Progress,
    convert: &Convert<'_>,
) -> Result<u64, AtRestError> {
    let total: i64 = client
        .query_one(&format!("SELECT count(*) FROM {}", table.relation), &[])
        .await?
        .try_get(0)?;
    let batch_size = options.batch_size.max(1);
    let mut started = false;
    let mut changed = 0u64;
    let result = async {
        loop {
            let tx = client.transaction().await?;
            let state = lock_state(&tx, c)
                .await?
                .filter(|s| s.phase == phase)
                .ok_or_else(|| {
                    state_error(
                        c,
                        "its state changed while this run was going on (another tool?)",
                    )
                })?;
            if !started {
                started = true;
                progress.begin(
                    &c.qualified(),
                    u64::try_from(total).unwrap_or(0),
                    u64::try_from(state.rows_done).unwrap_or(0),
                );
            }
            let cursor = state.cursor.filter(|k| k.len() == table.pk.len());
            let sql = table.select(cursor.is_some(), batch_size);
            let params: Vec<&(dyn ToSql + Sync)> = cursor
                .iter()
                .flat_map(|k| k.iter().map(|v| v as &(dyn ToSql + Sync)))
                .collect();
            let rows = tx.query(&sql, &params).await?;
            let Some(last) = rows.last() else {
                tx.commit().await?;
                return Ok::<u64, AtRestError>(changed);
            };
            let k = table.pk.len();
            let mut last_key = Vec::with_capacity(k);
            for i in 0..k {
                last_key.push(last.try_get::<_, String>(i)?);
            }
            let mut keys: Vec<Vec<String>> = vec![Vec::with_capacity(rows.len()); k];
            let mut values = Vec::with_capacity(rows.len());
            // The batch's values (NULL stays NULL), converted in one call.
            let mut plain: Vec<(usize, String)> = Vec::with_capacity(rows.len());
            for (n, row) in rows.iter().enumerate() {
                if let Some(value) = row.try_get::<_, Option<String>>(k)? {
                    plain.push((n, value));
                }
            }
            let inputs: Vec<&[u8]> = plain.iter().map(|(_, v)| v.as_bytes()).collect();
            let mut out = Vec::new();
            let converted = convert(&inputs, &mut out);
            for ((n, _), result) in plain.iter().zip(converted) {
                let row = &rows[*n];
                let key = || {
                    let parts: Vec<String> = (0..k)
                        .filter_map(|i| row.try_get::<_, String>(i).ok())
                        .collect();
                    format!("({})", parts.join(", "))
                };
                let bad = |reason: String| AtRestError::Value {
                    column: c.qualified(),
                    key: key(),
                    reason,
                };
                let range = match result {
                    Ok(Some(range)) => range,
                    Ok(None) => return Err(bad("it would become NULL".into())),
                    Err(e) => return Err(bad(e.to_string())),
                };
                let token = std::str::from_utf8(out.get(range).unwrap_or(&[]))
                    .map_err(|_| bad("the token is not UTF-8".into()))?;
                for (i, ks) in keys.iter_mut().enumerate() {
                    ks.push(row.try_get::<_, String>(i)?);
                }
                values.push(token.to_string());
            }
            if !values.is_empty() {
                let mut params: Vec<&(dyn ToSql + Sync)> =
                    keys.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
                params.push(&values);
                tx.execute(&table.update(), &params).await?;
            }
            let n = rows.len() as i64;
            tx.execute(
                &format!(
                    "UPDATE tokengate.at_rest_columns
                        SET cursor = $4, rows_done = rows_done + $5, updated_at = now()
                      WHERE {WHERE_COLUMN}"
                ),
                &[&c.schema, &c.table, &c.column, &last_key, &n],
            )
            .await?;
            tx.commit().await?;
            changed += values.len() as u64;
            progress.advance(rows.len() as u64);
        }
    }
    .await;
    progress.end();
    result
}

/// Records the column `tokenized` (with the target version after a rekey).
pub(super) async fn finish(
    client: &mut Client,
    c: &Column,
    phase: Phase,
) -> Result<(), AtRestError> {
    let n = client
        .execute(
            &format!(
                "UPDATE tokengate.at_rest_columns
                    SET state = 'tokenized', key_version = COALESCE(target_version, key_version),
                        target_version = NULL, cursor = NULL, generation = generation + 1,
                        updated_at = now()
                  WHERE {WHERE_COLUMN} AND state = $4"
            ),
            &[&c.schema, &c.table, &c.column, &phase.as_str()],
        )
        .await?;
    if n != 1 {
        return Err(state_error(
            c,
            "its state changed before this run could record it done (another tool?)",
        ));
    }
    Ok(())
}
