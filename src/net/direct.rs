//! Direct connections for the command-line tools that read or change the upstream themselves
//! (`policy check|explain --upstream`, `migrate`, `rekey`). They negotiate TCP and TLS exactly
//! like the proxy's upstream and catalog connections ([`Connector`]: `sslmode`,
//! `sslrootcert`), so a server that requires TLS works the same for both; the URL's user,
//! password and database (or `PGUSER`, `PGPASSWORD`) log in.
use super::pg_error;
use super::tls;
use super::upstream::{Connector, UpstreamError};
use crate::config::{ConfigError, Upstream};
use std::time::Duration;

/// How long the TCP connect and TLS handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DirectError {
    #[error(transparent)]
    Url(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Connect(#[from] UpstreamError),
    #[error("{}", pg_error::describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
}

/// Connects to the server of `url` (`postgres://user:password@host:port/db?sslmode=...`);
/// the returned task drives the connection until the client is dropped.
pub async fn connect(
    url: &str,
    application_name: &str,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), DirectError> {
    let upstream = Upstream::parse(url)?;
    let parsed = url::Url::parse(url).map_err(|e| ConfigError::Upstream {
        url: url.to_string(),
        reason: e.to_string(),
    })?;
    let decode = |s: &str| {
        percent_decode(s).ok_or_else(|| ConfigError::Upstream {
            url: url.to_string(),
            reason: "user or password is not valid percent-encoded UTF-8".to_string(),
        })
    };
    let user = match parsed.username() {
        "" => std::env::var("PGUSER")
            .or_else(|_| std::env::var("USER"))
            .unwrap_or_else(|_| "postgres".to_string()),
        u => decode(u)?,
    };
    let password = match parsed.password() {
        Some(p) => Some(decode(p)?),
        None => std::env::var("PGPASSWORD").ok(),
    };
    let dbname = match parsed.path().trim_start_matches('/') {
        "" => user.clone(),
        d => decode(d)?,
    };
    let tls = tls::upstream_client_config(upstream.sslmode, upstream.sslrootcert.as_deref())?;
    let conn = Connector::new(upstream, tls, CONNECT_TIMEOUT)
        .connect()
        .await?;
    let mut config = tokio_postgres::Config::new();
    config
        .user(&user)
        .dbname(&dbname)
        .application_name(application_name);
    if let Some(p) = &password {
        config.password(p);
    }
    let (client, connection) = config.connect_raw(conn, tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %pg_error::describe(&e), "upstream connection ended");
        }
    });
    Ok((client, driver))
}

/// `%XX` decoding of a URL component (the `url` crate leaves user, password and path encoded).
fn percent_decode(s: &str) -> Option<String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("p%40ss%2Fw").as_deref(), Some("p@ss/w"));
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
        assert_eq!(percent_decode("bad%FF"), None);
    }
}
