//! Loading and refreshing catalog snapshots over a metadata connection per database, with a
//! service role from the config. A snapshot is reloaded when a session reports DDL and when it
//! is older than the TTL; concurrent sessions share one load.
use super::snapshot::{Column, Relation, RelationKind, Snapshot};
use crate::net::upstream::Connector;
use prometheus_client::metrics::counter::Counter;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog connection to database {database:?} failed: {source}")]
    Connect {
        database: String,
        source: crate::net::upstream::UpstreamError,
    },
    #[error("catalog query on database {database:?} failed: {source}")]
    Query {
        database: String,
        source: tokio_postgres::Error,
    },
    #[error("no catalog service role is configured (catalog_user); needed to enforce policies")]
    NotConfigured,
}

/// The service role tokengate reads the catalog as.
#[derive(Clone, Debug)]
pub struct CatalogSettings {
    pub user: String,
    pub password: Option<String>,
    pub ttl: Duration,
}

struct Entry {
    loaded_at: Instant,
    snapshot: Arc<Snapshot>,
    stale: bool,
}

pub struct CatalogCache {
    settings: CatalogSettings,
    connector: Connector,
    entries: Mutex<HashMap<String, Entry>>,
    generation: AtomicU64,
    refreshes: Counter,
}

const RELATIONS: &str = "
SELECT c.oid::int8, n.nspname::text, c.relname::text, c.relkind::text,
       CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
   AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg_toast%'";
const COLUMNS: &str = "
SELECT a.attrelid::int8, a.attnum, a.attname::text, a.atttypid::int8
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
 WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
 ORDER BY a.attrelid, a.attnum";
/// Functions, operators and types outside pg_catalog: names a session's search path could
/// make an unqualified call, operator or cast resolve to.
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
            settings,
            connector,
            entries: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            refreshes,
        }
    }

    /// The snapshot for `database`, loading or refreshing it when missing, stale or expired.
    pub async fn snapshot(&self, database: &str) -> Result<Arc<Snapshot>, CatalogError> {
        let mut entries = self.entries.lock().await;
        if let Some(e) = entries.get(database)
            && !e.stale
            && e.loaded_at.elapsed() < self.settings.ttl
        {
            return Ok(e.snapshot.clone());
        }
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let snapshot = Arc::new(self.load(database, generation).await?);
        self.refreshes.inc();
        entries.insert(
            database.to_string(),
            Entry {
                loaded_at: Instant::now(),
                snapshot: snapshot.clone(),
                stale: false,
            },
        );
        Ok(snapshot)
    }

    /// Marks a database's snapshot stale after DDL; the next statement reloads it.
    pub async fn invalidate(&self, database: &str) {
        if let Some(e) = self.entries.lock().await.get_mut(database) {
            e.stale = true;
        }
    }

    async fn load(&self, database: &str, generation: u64) -> Result<Snapshot, CatalogError> {
        let conn = self
            .connector
            .connect()
            .await
            .map_err(|source| CatalogError::Connect {
                database: database.to_string(),
                source,
            })?;
        let query_err = |source| CatalogError::Query {
            database: database.to_string(),
            source,
        };
        let mut config = tokio_postgres::Config::new();
        config
            .user(&self.settings.user)
            .dbname(database)
            .application_name("tokengate-catalog");
        if let Some(p) = &self.settings.password {
            config.password(p);
        }
        let (client, connection) = config
            .connect_raw(conn, tokio_postgres::NoTls)
            .await
            .map_err(query_err)?;
        let driver = tokio::spawn(connection);
        let snapshot = load_snapshot(&client, generation)
            .await
            .map_err(query_err)?;
        drop(client);
        let _ = driver.await;
        Ok(snapshot)
    }
}

/// Reads a database's catalog over an open connection (used by the cache and by
/// `tokengate policy explain --upstream`).
pub async fn load_snapshot(
    client: &tokio_postgres::Client,
    generation: u64,
) -> Result<Snapshot, tokio_postgres::Error> {
    let relations = client.query(RELATIONS, &[]).await?;
    let columns = client.query(COLUMNS, &[]).await?;
    let memberships = client.query(MEMBERSHIPS, &[]).await?;
    let routines = client.query(ROUTINES, &[]).await?;

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
                definition: row.get(4),
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
    Ok(snapshot)
}
