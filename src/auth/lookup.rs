//! Reads a role's stored SCRAM secret per login, the way PgBouncer's `auth_user` /
//! `auth_query` do: a configured query, run as a configured auth role over a connection that
//! tokengate keeps per database. The usual query calls a `SECURITY DEFINER` function owned by
//! a superuser, so the auth role needs no access to `pg_authid`:
//!
//! ```sql
//! CREATE FUNCTION tokengate.get_auth(p_usename text, OUT usename name, OUT passwd text)
//!   RETURNS record LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog AS
//!   $$ SELECT rolname, rolpassword FROM pg_authid WHERE rolname = p_usename AND rolcanlogin $$;
//! ```
//!
//! The secret is never cached, stored or logged; the parsed keys are zeroized when dropped.
use super::scram::ScramSecret;
use crate::net::pg_error;
use crate::net::upstream::{Connector, UpstreamError};
use std::collections::HashMap;
use tokio::sync::Mutex;
use zeroize::Zeroizing;

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

pub struct AuthLookup {
    settings: LookupSettings,
    connector: Connector,
    /// One open connection per database, reused across logins (reopened when closed).
    clients: Mutex<HashMap<String, tokio_postgres::Client>>,
    /// Derives the mock salts of unknown roles (random per process).
    mock_nonce: [u8; 32],
}

impl AuthLookup {
    pub fn new(settings: LookupSettings, connector: Connector) -> Self {
        AuthLookup {
            settings,
            connector,
            clients: Mutex::new(HashMap::new()),
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
        let mut clients = self.clients.lock().await;
        // One retry: a kept connection may have been closed by the server meanwhile.
        for attempt in 0..2 {
            let client = match clients.remove(database) {
                Some(c) if !c.is_closed() => c,
                _ => self.open(database).await?,
            };
            match client.query(self.settings.query.as_str(), &[&user]).await {
                Ok(rows) => {
                    clients.insert(database.to_string(), client);
                    let Some(row) = rows.first() else {
                        return Ok(None);
                    };
                    let Some(last) = row.len().checked_sub(1) else {
                        return Ok(None);
                    };
                    let text: Option<String> =
                        row.try_get(last).map_err(|source| LookupError::Query {
                            database: database.to_string(),
                            source,
                        })?;
                    let text = Zeroizing::new(text.unwrap_or_default());
                    return Ok(ScramSecret::parse(&text));
                }
                Err(e) if attempt == 0 && client.is_closed() => {
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

    async fn open(&self, database: &str) -> Result<tokio_postgres::Client, LookupError> {
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
        let (client, connection) = config
            .connect_raw(conn, tokio_postgres::NoTls)
            .await
            .map_err(|source| LookupError::Query {
                database: database.to_string(),
                source,
            })?;
        tokio::spawn(connection);
        Ok(client)
    }
}
