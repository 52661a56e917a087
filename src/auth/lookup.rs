//! Reads a role's stored SCRAM secret per login, the way PgBouncer's `auth_user` /
//! `auth_query` do: a configured query, run as a configured auth role over connections that
//! tokengate opens per lookup in flight (up to [`MAX_LOOKUP_CONNECTIONS`], so concurrent
//! logins do not wait on each other) and keeps up to as many idle ones for the next logins:
//! at most twice that many at once. The usual query calls a `SECURITY DEFINER`
//! function owned by a superuser, so the auth role needs no access to `pg_authid`:
//!
//! ```sql
//! CREATE FUNCTION tokengate.get_auth(p_usename text, OUT usename name, OUT passwd text)
//!   RETURNS record LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog AS
//!   $$ SELECT rolname, rolpassword FROM pg_authid WHERE rolname = p_usename AND rolcanlogin $$;
//! ```
//!
//! The secret is never cached, stored or logged. tokengate copies only the parsed keys, which
//! are zeroized when dropped; the secret's text stays in tokio-postgres's receive buffers and
//! `Row` (plain `bytes` buffers, freed but not wiped, and overwritten by the connection's
//! next replies).
use super::scram::ScramSecret;
use crate::net::pg_error;
use crate::net::upstream::{Connector, UpstreamError};
use std::collections::HashMap;
use tokio::sync::Semaphore;

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("auth_query connection for database {database:?} failed: {source}")]
    Connect {
        database: String,
        source: UpstreamError,
    },
    #[error(
        "auth_query on database {database:?} failed: {}",
        pg_error::describe(source)
    )]
    Query {
        database: String,
        source: tokio_postgres::Error,
    },
    #[error("auth_query lookups are shut down")]
    Closed,
}

/// What the lookup returns, from config.
#[derive(Debug, Clone)]
pub struct LookupSettings {
    /// SQL with `$1` = the login role; the secret is the last column of the first row.
    pub query: String,
    pub user: String,
    pub password: Option<String>,
    /// The database the query runs in; `None` = the database the client connects to.
    pub dbname: Option<String>,
}

/// Lookups that may run at once, over as many connections (more logins wait for a free one).
/// Logins no longer wait on each other up to this many. Up to as many idle connections are kept
/// (over all databases), so the auth role holds at most twice this many connections.
pub const MAX_LOOKUP_CONNECTIONS: usize = 8;

/// One open lookup connection, with the auth query prepared on it.
struct LookupConn {
    client: tokio_postgres::Client,
    query: tokio_postgres::Statement,
}

pub struct AuthLookup {
    settings: LookupSettings,
    connector: Connector,
    /// Idle connections per database, reused across logins; at most
    /// [`MAX_LOOKUP_CONNECTIONS`] in all. A connection is taken out for one lookup, so
    /// concurrent logins each get their own.
    idle: std::sync::Mutex<HashMap<String, Vec<LookupConn>>>,
    /// One permit per lookup in flight (and per connection open for it).
    permits: Semaphore,
    /// Derives the mock salts of unknown roles (random per process).
    mock_nonce: [u8; 32],
}

impl AuthLookup {
    pub fn new(settings: LookupSettings, connector: Connector) -> Self {
        AuthLookup {
            settings,
            connector,
            idle: std::sync::Mutex::new(HashMap::new()),
            permits: Semaphore::new(MAX_LOOKUP_CONNECTIONS),
            mock_nonce: rand::random(),
        }
    }

    /// The stand-in secret for a role the query does not know ([`ScramSecret::mock`]).
    pub fn mock_secret(&self, user: &str) -> ScramSecret {
        ScramSecret::mock(&self.mock_nonce, user)
    }

    /// The SCRAM secret of `user`, or `None` when the query knows no such role or the role's
    /// secret is not SCRAM (MD5, none).
    pub async fn scram_secret(
        &self,
        user: &str,
        database: &str,
    ) -> Result<Option<ScramSecret>, LookupError> {
        let database = self.settings.dbname.as_deref().unwrap_or(database);
        // The semaphore is never closed; a wait is bounded by the caller's login deadline.
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| LookupError::Closed)?;
        // One retry: a kept connection may have been closed by the server meanwhile.
        for attempt in 0..2 {
            let conn = match self.take_idle(database) {
                Some(c) => c,
                None => self.open(database).await?,
            };
            match conn.client.query(&conn.query, &[&user]).await {
                Ok(rows) => {
                    let secret = secret_of(&rows, database);
                    // The rows hold the secret's text in tokio-postgres's buffers: drop them
                    // now rather than with the function's other locals.
                    drop(rows);
                    self.put_idle(database, conn);
                    return secret;
                }
                Err(e) if attempt == 0 && conn.client.is_closed() => {
                    tracing::debug!(error = %pg_error::describe(&e), "auth_query connection closed; reopening");
                }
                Err(source) => {
                    return Err(LookupError::Query {
                        database: database.to_string(),
                        source,
                    });
                }
            }
        }
        Ok(None)
    }

    fn take_idle(&self, database: &str) -> Option<LookupConn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let conns = idle.get_mut(database)?;
        while let Some(c) = conns.pop() {
            if !c.client.is_closed() {
                return Some(c);
            }
        }
        None
    }

    /// Keeps `conn` for the next login, unless as many connections are already idle as may
    /// ever run at once (then the oldest idle one of another database makes room, or `conn`
    /// is closed).
    fn put_idle(&self, database: &str, conn: LookupConn) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|_, v| {
            v.retain(|c| !c.client.is_closed());
            !v.is_empty()
        });
        let total: usize = idle.values().map(Vec::len).sum();
        if total >= MAX_LOOKUP_CONNECTIONS {
            let other = idle.keys().find(|k| k.as_str() != database).cloned();
            match other.and_then(|k| idle.get_mut(&k)) {
                Some(v) => {
                    v.remove(0);
                }
                None => return,
            }
        }
        idle.entry(database.to_string()).or_default().push(conn);
    }

    async fn open(&self, database: &str) -> Result<LookupConn, LookupError> {
        let conn = self
            .connector
            .connect()
            .await
            .map_err(|source| LookupError::Connect {
                database: database.to_string(),
                source,
            })?;
        let mut config = tokio_postgres::Config::new();
        config
            .user(&self.settings.user)
            .dbname(database)
            .application_name("tokengate-auth");
        if let Some(p) = &self.settings.password {
            config.password(p);
        }
        let query_error = |source| LookupError::Query {
            database: database.to_string(),
            source,
        };
        let (client, connection) = config
            .connect_raw(conn, tokio_postgres::NoTls)
            .await
            .map_err(query_error)?;
        tokio::spawn(connection);
        let query = client
            .prepare(&self.settings.query)
            .await
            .map_err(query_error)?;
        Ok(LookupConn { client, query })
    }
}

/// The secret in the last column of the first row. It is read as a borrowed `&str` straight
/// from the row, so tokengate makes no copy of its text; only the parsed keys, which
/// [`ScramSecret`] zeroizes on drop.
fn secret_of(
    rows: &[tokio_postgres::Row],
    database: &str,
) -> Result<Option<ScramSecret>, LookupError> {
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    let Some(last) = row.len().checked_sub(1) else {
        return Ok(None);
    };
    let text: Option<&str> = row.try_get(last).map_err(|source| LookupError::Query {
        database: database.to_string(),
        source,
    })?;
    Ok(text.and_then(ScramSecret::parse))
}
