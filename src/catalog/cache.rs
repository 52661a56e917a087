//! Loading and refreshing catalog snapshots over a metadata connection per database, with a
//! service role from the config. A snapshot is reloaded when a session reports DDL and when it
//! is older than the TTL.
//!
//! No session waits on another's load for longer than the load's own bounds, and none waits
//! at all while a usable snapshot exists:
//! - one load per database at a time (single flight), run as its own task; the map's lock
//!   is never held across an await;
//! - an expired snapshot keeps being served while its refresh runs in the background;
//! - only a session with no usable snapshot (none yet, or stale after DDL) waits for the load;
//! - the catalog queries run with `lock_timeout` and `statement_timeout`, and the whole load
//!   (connect, authenticate, query) is bounded, so a stalled connection becomes an error.
use super::snapshot::{Column, Relation, RelationKind, Snapshot};
use crate::net::upstream::Connector;
use prometheus_client::metrics::counter::Counter;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog connection to database {database:?} failed: {source}")]
    Connect {
        database: String,
        source: crate::net::upstream::UpstreamError,
    },
    #[error(
        "catalog query on database {database:?} failed: {}",
        crate::net::pg_error::describe(source)
    )]
    Query {
        database: String,
        source: tokio_postgres::Error,
    },
    #[error("catalog load for database {database:?} did not finish within {secs}s")]
    Timeout { database: String, secs: u64 },
    #[error("catalog load for database {database:?} failed: {message}")]
    Failed { database: String, message: String },
    #[error("no catalog service role is configured (catalog_user); needed to enforce policies")]
    NotConfigured,
}

/// The service role tokengate reads the catalog as.
#[derive(Clone, Debug)]
pub struct CatalogSettings {
    pub user: String,
    pub password: Option<String>,
    pub ttl: Duration,
    /// `lock_timeout` of the catalog queries: a table locked by DDL or VACUUM FULL makes the
    /// load fail fast instead of queueing behind the lock.
    pub lock_timeout: Duration,
    /// `statement_timeout` of the catalog queries.
    pub statement_timeout: Duration,
    /// How often the state of the columns stored as tokens is re-read (independent of `ttl`).
    pub at_rest_refresh: Duration,
    /// How old that state may be before statements touching such columns are refused.
    pub at_rest_max_age: Duration,
}

/// A load's result as waiters see it.
type LoadResult = Option<Result<Arc<Snapshot>, String>>;

#[derive(Default)]
struct Entry {
    snapshot: Option<(Arc<Snapshot>, Instant)>,
    /// DDL was seen: the snapshot may be wrong, so no one uses it until a reload succeeds.
    stale: bool,
    /// The load in flight; `None` in the channel until it finishes.
    loading: Option<watch::Receiver<LoadResult>>,
}

pub struct CatalogCache {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) settings: CatalogSettings,
    connector: Connector,
    entries: Mutex<HashMap<String, Entry>>,
    generation: AtomicU64,
    refreshes: Counter,
    /// The at-rest state pollers, per database ([`super::at_rest_cache`]).
    pub(super) at_rest: super::at_rest_cache::Pollers,
}

/// `information_schema` views show only metadata (they are defined over the system catalogs
/// and filtered by the caller's privileges): they are loaded as plain relations, by
/// classification, rather than expanded through definitions sqlparser cannot all read.
const RELATIONS: &str = "
SELECT c.oid::int8, n.nspname::text, c.relname::text,
       CASE WHEN n.nspname = 'information_schema' THEN 'r' ELSE c.relkind::text END,
       CASE WHEN c.relkind IN ('v', 'm') AND n.nspname <> 'information_schema'
            THEN pg_get_viewdef(c.oid) END
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND n.nspname NOT LIKE 'pg_toast%'";
/// [`RELATIONS`] without the view definitions (which wait for locks on the views' tables).
const RELATIONS_WITHOUT_DEFINITIONS: &str = "
SELECT c.oid::int8, n.nspname::text, c.relname::text,
       CASE WHEN n.nspname = 'information_schema' THEN 'r' ELSE c.relkind::text END, NULL::text
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND n.nspname NOT LIKE 'pg_toast%'";
const COLUMNS: &str = "
SELECT a.attrelid::int8, a.attnum, a.attname::text, a.atttypid::int8
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
 WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
 ORDER BY a.attrelid, a.attnum";
/// Functions, operators and types outside pg_catalog: names a session's search path could
/// make an unqualified call, operator or cast resolve to.
/// Inheritance and partitioning edges (child, parent).
const INHERITS: &str = "SELECT inhrelid::int8, inhparent::int8 FROM pg_inherits";

const ROUTINES: &str = "
SELECT n.nspname::text, p.proname::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
UNION
SELECT n.nspname::text, o.oprname::text FROM pg_operator o JOIN pg_namespace n ON n.oid = o.oprnamespace
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
UNION
SELECT n.nspname::text, t.typname::text FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND t.typrelid = 0
   AND t.typcategory <> 'A'";
const MEMBERSHIPS: &str = "
WITH RECURSIVE m(member, grp) AS (
    SELECT member, roleid FROM pg_auth_members
  UNION
    SELECT m.member, a.roleid FROM m JOIN pg_auth_members a ON a.member = m.grp)
SELECT r.rolname::text, g.rolname::text
  FROM m JOIN pg_roles r ON r.oid = m.member JOIN pg_roles g ON g.oid = m.grp";

impl CatalogCache {
    pub fn new(settings: CatalogSettings, connector: Connector, refreshes: Counter) -> Self {
        CatalogCache {
            inner: Arc::new(Inner {
                settings,
                connector,
                entries: Mutex::new(HashMap::new()),
                generation: AtomicU64::new(0),
                refreshes,
                at_rest: Default::default(),
            }),
        }
    }

    /// The snapshot for `database`. A fresh one is returned at once; an expired one is
    /// returned at once too while a background refresh runs; with none usable, the caller
    /// waits for the (single, bounded) load and gets its error if it fails.
    pub async fn snapshot(&self, database: &str) -> Result<Arc<Snapshot>, CatalogError> {
        let mut waiting = {
            let mut entries = self.inner.lock();
            let entry = entries.entry(database.to_string()).or_default();
            let usable = entry.snapshot.clone().filter(|_| !entry.stale);
            if let Some((snapshot, loaded_at)) = &usable
                && loaded_at.elapsed() < self.inner.settings.ttl
            {
                return Ok(snapshot.clone());
            }
            let receiver = match &entry.loading {
                // A load whose task ended without an answer (its runtime stopped) is
                // replaced.
                Some(rx) if rx.has_changed().is_ok() || rx.borrow().is_some() => rx.clone(),
                _ => {
                    let rx = self.start_load(database);
                    entry.loading = Some(rx.clone());
                    rx
                }
            };
            if let Some((snapshot, _)) = usable {
                return Ok(snapshot);
            }
            receiver
        };
        let result = waiting.wait_for(Option::is_some).await.map(|r| r.clone());
        let failed = |message: String| CatalogError::Failed {
            database: database.to_string(),
            message,
        };
        match result {
            Ok(Some(Ok(snapshot))) => Ok(snapshot),
            Ok(Some(Err(message))) => Err(failed(message)),
            _ => Err(failed("the load was abandoned".into())),
        }
    }

    /// Marks a database's snapshot stale after DDL; the next statement reloads it.
    pub async fn invalidate(&self, database: &str) {
        if let Some(e) = self.inner.lock().get_mut(database) {
            e.stale = true;
            // A load that started before the DDL may not see it: start another.
            e.loading = None;
        }
    }

    /// Starts one load as a task of its own; its result lands in the map and the channel.
    fn start_load(&self, database: &str) -> watch::Receiver<LoadResult> {
        let (tx, rx) = watch::channel(None);
        let inner = self.inner.clone();
        let database = database.to_string();
        let generation = inner.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let rx_kept = rx.clone();
        tokio::spawn(async move {
            let result = inner.load_bounded(&database, generation).await;
            let shared = match result {
                Ok(snapshot) => {
                    inner.refreshes.inc();
                    Ok(Arc::new(snapshot))
                }
                Err(e) => {
                    tracing::warn!(database, error = %e, "catalog load failed; the last good snapshot (if any) stays in use");
                    Err(e.to_string())
                }
            };
            {
                let mut entries = inner.lock();
                let entry = entries.entry(database).or_default();
                let current = entry
                    .loading
                    .as_ref()
                    .is_some_and(|rx| rx.same_channel(&rx_kept));
                if current {
                    entry.loading = None;
                    if let Ok(snapshot) = &shared {
                        entry.snapshot = Some((snapshot.clone(), Instant::now()));
                        entry.stale = false;
                    }
                }
            }
            let _ = tx.send(Some(shared));
        });
        rx
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // Never held across an await or a panic point; recover the data if it ever was.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A whole load (connect, authenticate, three queries) within connect timeout plus the
    /// statement timeout: a stalled connection is an error, not a hang.
    async fn load_bounded(
        &self,
        database: &str,
        generation: u64,
    ) -> Result<Snapshot, CatalogError> {
        let bound = self.connector.timeout() + self.settings.statement_timeout;
        match tokio::time::timeout(bound, self.load(database, generation)).await {
            Ok(r) => r,
            Err(_) => Err(CatalogError::Timeout {
                database: database.to_string(),
                secs: bound.as_secs(),
            }),
        }
    }

    async fn load(&self, database: &str, generation: u64) -> Result<Snapshot, CatalogError> {
        let (client, driver) = self.connect(database, "tokengate-catalog").await?;
        let snapshot = load_snapshot_tolerant(&client, generation).await;
        drop(client);
        let _ = driver.await;
        snapshot.map_err(|source| CatalogError::Query {
            database: database.to_string(),
            source,
        })
    }

    /// A connection to `database` as the catalog role, with the catalog queries' timeouts;
    /// the task driving it ends when the client is dropped.
    pub(super) async fn connect(
        &self,
        database: &str,
        application_name: &str,
    ) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), CatalogError> {
        let conn = self
            .connector
            .connect()
            .await
            .map_err(|source| CatalogError::Connect {
                database: database.to_string(),
                source,
            })?;
        let mut config = tokio_postgres::Config::new();
        config
            .user(&self.settings.user)
            .dbname(database)
            .application_name(application_name)
            .options(format!(
                "-c lock_timeout={} -c statement_timeout={}",
                self.settings.lock_timeout.as_millis(),
                self.settings.statement_timeout.as_millis()
            ));
        if let Some(p) = &self.settings.password {
            config.password(p);
        }
        let (client, connection) = config
            .connect_raw(conn, tokio_postgres::NoTls)
            .await
            .map_err(|source| CatalogError::Query {
                database: database.to_string(),
                source,
            })?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok((client, driver))
    }
}

/// Reads a database's catalog over an open connection (used by the cache and by
/// `tokengate policy explain --upstream`).
pub async fn load_snapshot(
    client: &tokio_postgres::Client,
    generation: u64,
) -> Result<Snapshot, tokio_postgres::Error> {
    let relations = client.query(RELATIONS, &[]).await?;
    finish_snapshot(client, generation, relations, HashMap::new()).await
}

/// A view whose definition could not be read because its tables were locked: text the
/// analyser cannot parse, so statements reading that view are refused for restricted roles
/// (fail closed), while every other relation stays usable.
pub const DEFINITION_UNAVAILABLE: &str =
    "-- tokengate: the view definition could not be read (its tables were locked)";

/// [`load_snapshot`] that survives a locked table: `pg_get_viewdef` waits for the locks of
/// the tables a view reads (VACUUM FULL, ALTER TABLE, LOCK TABLE). When the relations query
/// hits `lock_timeout`, the relations are read without definitions, then each view's
/// definition alone with a short lock timeout; the ones still locked become
/// [`DEFINITION_UNAVAILABLE`].
async fn load_snapshot_tolerant(
    client: &tokio_postgres::Client,
    generation: u64,
) -> Result<Snapshot, tokio_postgres::Error> {
    let relations = match client.query(RELATIONS, &[]).await {
        Ok(relations) => {
            return finish_snapshot(client, generation, relations, HashMap::new()).await;
        }
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
            client.query(RELATIONS_WITHOUT_DEFINITIONS, &[]).await?
        }
        Err(e) => return Err(e),
    };
    client.batch_execute("SET lock_timeout = '100ms'").await?;
    let mut definitions = HashMap::new();
    let mut locked = 0;
    for row in &relations {
        let relkind: String = row.get(3);
        if !matches!(relkind.as_str(), "v" | "m") {
            continue;
        }
        let oid: i64 = row.get(0);
        let definition = match client
            .query_one("SELECT pg_get_viewdef($1::int8::oid)", &[&oid])
            .await
        {
            Ok(r) => r
                .get::<_, Option<String>>(0)
                .unwrap_or_else(|| DEFINITION_UNAVAILABLE.to_string()),
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
                locked += 1;
                DEFINITION_UNAVAILABLE.to_string()
            }
            Err(e) => return Err(e),
        };
        definitions.insert(oid as u32, definition);
    }
    tracing::warn!(
        locked_views = locked,
        "catalog: views whose tables are locked are loaded without their definitions; restricted statements reading them are refused until the next refresh"
    );
    finish_snapshot(client, generation, relations, definitions).await
}

/// Columns and memberships, and the snapshot built from them and `relations`
/// (`definitions` overrides the relations' own definition column).
async fn finish_snapshot(
    client: &tokio_postgres::Client,
    generation: u64,
    relations: Vec<tokio_postgres::Row>,
    mut definitions: HashMap<u32, String>,
) -> Result<Snapshot, tokio_postgres::Error> {
    let columns = client.query(COLUMNS, &[]).await?;
    let memberships = client.query(MEMBERSHIPS, &[]).await?;
    let routines = client.query(ROUTINES, &[]).await?;
    let inherits = client.query(INHERITS, &[]).await?;

    let mut by_oid: HashMap<u32, Vec<Column>> = HashMap::new();
    for row in &columns {
        by_oid
            .entry(row.get::<_, i64>(0) as u32)
            .or_default()
            .push(Column {
                attnum: row.get(1),
                name: row.get(2),
                type_oid: row.get::<_, i64>(3) as u32,
            });
    }
    let relations = relations
        .iter()
        .map(|row| {
            let oid = row.get::<_, i64>(0) as u32;
            let relkind: String = row.get(3);
            Relation {
                oid,
                schema: row.get(1),
                name: row.get(2),
                kind: RelationKind::from_relkind(relkind.bytes().next().unwrap_or(b'r')),
                columns: by_oid.remove(&oid).unwrap_or_default(),
                definition: definitions.remove(&oid).or_else(|| row.get(4)),
            }
        })
        .collect();
    let memberships = memberships
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect();
    let mut snapshot = Snapshot::build(generation, relations, memberships);
    snapshot.add_routines(
        routines
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1))),
    );
    let oid = |r: &tokio_postgres::Row, i: usize| u32::try_from(r.get::<_, i64>(i)).unwrap_or(0);
    snapshot.add_inheritance(inherits.iter().map(|r| (oid(r, 0), oid(r, 1))));
    Ok(snapshot)
}
