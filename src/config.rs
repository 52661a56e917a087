//! The `serve` configuration. Precedence: command-line flags, then `TOKENGATE_*` environment
//! variables (both handled by clap), then the YAML config file, then defaults.
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid upstream URL {url:?}: {reason}")]
    Upstream { url: String, reason: String },
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// libpq's `sslmode` for the upstream leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl std::str::FromStr for SslMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "unknown sslmode {other:?} (allowed: disable, allow, prefer, require, verify-ca, verify-full)"
                ));
            }
        })
    }
}

/// Where the upstream PostgreSQL is and how to secure the connection to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
    pub sslmode: SslMode,
    pub sslrootcert: Option<PathBuf>,
}

impl Upstream {
    /// Parses `postgres://HOST:PORT[/...][?sslmode=...&sslrootcert=...]`. User, password and
    /// database are ignored: clients bring their own.
    pub fn parse(raw: &str) -> Result<Self, ConfigError> {
        let err = |reason: &str| ConfigError::Upstream {
            url: raw.to_string(),
            reason: reason.to_string(),
        };
        let url = url::Url::parse(raw).map_err(|e| err(&e.to_string()))?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(err("the scheme must be postgres:// or postgresql://"));
        }
        let host = match url.host() {
            Some(url::Host::Ipv6(a)) => a.to_string(),
            Some(h) => h.to_string(),
            None => return Err(err("a host is required")),
        };
        let mut up = Upstream {
            host,
            port: url.port().unwrap_or(5432),
            sslmode: SslMode::Prefer,
            sslrootcert: None,
        };
        for (k, v) in url.query_pairs() {
            match k.as_ref() {
                "sslmode" => up.sslmode = v.parse().map_err(|e: String| err(&e))?,
                "sslrootcert" => up.sslrootcert = Some(PathBuf::from(v.as_ref())),
                other => return Err(err(&format!("unsupported parameter {other:?}"))),
            }
        }
        if matches!(up.sslmode, SslMode::VerifyCa | SslMode::VerifyFull) && up.sslrootcert.is_none()
        {
            return Err(err(
                "sslmode verify-ca and verify-full need sslrootcert=FILE",
            ));
        }
        Ok(up)
    }

    /// `host:port`, the name used in logs and client-facing errors.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The config file. Every field is optional; missing ones fall back to flags, env or defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub upstream: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub admin: Option<String>,
    pub policy: Option<PathBuf>,
    pub keys: Option<PathBuf>,
    pub max_message_bytes: Option<usize>,
    pub startup_timeout_secs: Option<u64>,
    pub connect_timeout_secs: Option<u64>,
    pub drain_timeout_secs: Option<u64>,
    pub allow_replication: Option<bool>,
    pub log_format: Option<String>,
    pub workers: Option<usize>,
    pub catalog_user: Option<String>,
    pub catalog_password: Option<String>,
    pub catalog_ttl_secs: Option<u64>,
    pub auth_query: Option<String>,
    pub auth_user: Option<String>,
    pub auth_password: Option<String>,
    pub auth_dbname: Option<String>,
    /// `audit: { path, fsync, max_bytes, on_failure, redact_text, key_name, queue_capacity }`
    pub audit: Option<crate::audit::AuditConfig>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        serde_saphyr::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }
}

/// The resolved configuration the server runs with.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub upstream: Upstream,
    pub tls: Option<TlsFiles>,
    pub admin: Option<SocketAddr>,
    pub policy: Option<PathBuf>,
    pub keys: Option<PathBuf>,
    pub max_message_bytes: usize,
    pub startup_timeout: Duration,
    pub connect_timeout: Duration,
    pub drain_timeout: Duration,
    pub allow_replication: bool,
    /// Worker threads, each with its own listener (SO_REUSEPORT); 0 = one per core.
    pub workers: usize,
    /// The service role tokengate reads the upstream's catalog as (needed with a policy).
    pub catalog_user: Option<String>,
    pub catalog_password: Option<String>,
    /// How long a catalog snapshot is trusted without DDL before it is reloaded.
    pub catalog_ttl: Duration,
    /// SCRAM termination (see `crate::auth`): the query reading a role's stored secret, with
    /// `$1` = the role. `None` passes authentication through.
    pub auth_query: Option<String>,
    /// The role the auth query runs as (defaults to the catalog role) and its password.
    pub auth_user: Option<String>,
    pub auth_password: Option<String>,
    /// The database the auth query runs in (defaults to the client's database).
    pub auth_dbname: Option<String>,
    /// The hash-chained audit log (off when `None`).
    pub audit: Option<crate::audit::AuditConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:6432";
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9187";
/// Larger than any Bind or CopyData a driver sends in practice, small enough that a hostile
/// length cannot exhaust memory. PostgreSQL's own ceiling is 1 GiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 << 20;

impl ServeConfig {
    /// A config for tests and the demo: relay `upstream` from an OS-assigned port.
    pub fn for_upstream(upstream: Upstream) -> Self {
        ServeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            upstream,
            tls: None,
            admin: None,
            policy: None,
            keys: None,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            startup_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(30),
            allow_replication: false,
            workers: 0,
            catalog_user: None,
            catalog_password: None,
            catalog_ttl: Duration::from_secs(60),
            auth_query: None,
            auth_user: None,
            auth_password: None,
            auth_dbname: None,
            audit: None,
        }
    }
}

pub fn parse_addr(field: &'static str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse().map_err(|e| ConfigError::Invalid {
        field,
        reason: format!("{s:?}: {e} (expected IP:PORT)"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_upstream_with_sslmode() {
        let u = Upstream::parse(
            "postgres://db.internal:6543/app?sslmode=verify-full&sslrootcert=/ca.pem",
        )
        .unwrap();
        assert_eq!(u.host, "db.internal");
        assert_eq!(u.port, 6543);
        assert_eq!(u.sslmode, SslMode::VerifyFull);
        assert_eq!(u.sslrootcert, Some(PathBuf::from("/ca.pem")));
        assert_eq!(u.address(), "db.internal:6543");
    }

    #[test]
    fn upstream_defaults_to_prefer_and_5432() {
        let u = Upstream::parse("postgresql://127.0.0.1").unwrap();
        assert_eq!((u.port, u.sslmode), (5432, SslMode::Prefer));
        assert_eq!(
            Upstream::parse("postgres://[::1]:7000").unwrap().address(),
            "[::1]:7000"
        );
    }

    #[test]
    fn upstream_errors_name_the_problem() {
        let e = Upstream::parse("mysql://x").unwrap_err().to_string();
        assert!(e.contains("scheme"), "{e}");
        let e = Upstream::parse("postgres://x?sslmode=maybe")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown sslmode \"maybe\""), "{e}");
        let e = Upstream::parse("postgres://x?sslmode=verify-ca")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sslrootcert"), "{e}");
    }

    #[test]
    fn file_config_rejects_unknown_keys() {
        let e = serde_saphyr::from_str::<FileConfig>("listen: 1.2.3.4:5\nlisen: x\n").unwrap_err();
        assert!(e.to_string().contains("lisen"), "{e}");
        let ok: FileConfig =
            serde_saphyr::from_str("upstream: postgres://h:1\nmax_message_bytes: 1024\n").unwrap();
        assert_eq!(ok.max_message_bytes, Some(1024));
    }
}
