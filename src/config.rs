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
    /// Durations take `30s`, `500ms`, `5m`, `1h30m`; a plain number is seconds.
    #[serde(alias = "startup_timeout")]
    pub startup_timeout_secs: Option<ConfigDuration>,
    #[serde(alias = "connect_timeout")]
    pub connect_timeout_secs: Option<ConfigDuration>,
    #[serde(alias = "drain_timeout")]
    pub drain_timeout_secs: Option<ConfigDuration>,
    pub allow_replication: Option<bool>,
    pub log_format: Option<String>,
    pub workers: Option<usize>,
    pub catalog_user: Option<String>,
    pub catalog_password: Option<String>,
    #[serde(alias = "catalog_ttl")]
    pub catalog_ttl_secs: Option<ConfigDuration>,
    pub auth_query: Option<String>,
    pub auth_user: Option<String>,
    pub auth_password: Option<String>,
    pub auth_dbname: Option<String>,
    /// `audit: { path, fsync, max_bytes, on_failure, redact_text, key_name, queue_capacity }`
    pub audit: Option<crate::audit::AuditConfig>,
    pub max_client_connections: Option<usize>,
    pub tcp_keepalive: Option<bool>,
    #[serde(alias = "tcp_keepalive_idle")]
    pub tcp_keepalive_idle_secs: Option<ConfigDuration>,
    #[serde(alias = "tcp_keepalive_interval")]
    pub tcp_keepalive_interval_secs: Option<ConfigDuration>,
    pub tcp_keepalive_count: Option<u32>,
    #[serde(alias = "query_timeout")]
    pub query_timeout_secs: Option<ConfigDuration>,
    #[serde(alias = "idle_timeout")]
    pub idle_timeout_secs: Option<ConfigDuration>,
    /// Durations (`2s`, `500ms`); a plain number is seconds.
    pub catalog_lock_timeout: Option<ConfigDuration>,
    pub catalog_statement_timeout: Option<ConfigDuration>,
    pub allow_weakening_reload: Option<bool>,
    /// How often the state of the columns stored as tokens is re-read (`1s`).
    pub at_rest_refresh: Option<ConfigDuration>,
    /// How old that state may be before statements touching them are refused (`5s`).
    pub at_rest_max_age: Option<ConfigDuration>,
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
    /// Worker threads, each accepting on the process's one listening socket; 0 = one per core.
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
    /// Client sessions served at once; further clients get 53300 "too many clients".
    pub max_client_connections: usize,
    /// TCP keepalive on client and upstream sockets (`None`: off).
    pub tcp_keepalive: Option<Keepalive>,
    /// A request waiting longer than this for its ReadyForQuery ends the session with an
    /// upstream error (`None`: no limit).
    pub query_timeout: Option<Duration>,
    /// A session with nothing in flight and no traffic for this long is closed (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// `lock_timeout` and `statement_timeout` of the catalog queries.
    pub catalog_lock_timeout: Duration,
    pub catalog_statement_timeout: Duration,
    /// Let the file watcher apply a policy that protects less than the one in force (by
    /// default only SIGHUP applies such a policy).
    pub allow_weakening_reload: bool,
    /// How often the state of the columns stored as tokens is re-read.
    pub at_rest_refresh: Duration,
    /// How old that state may be before statements touching such columns are refused; keep
    /// it below the `--grace` of `tokengate rekey` (see docs/at-rest.md).
    pub at_rest_max_age: Duration,
}

/// TCP keepalive timing (idle time before the first probe, between probes, probes before
/// the connection is declared dead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub idle: Duration,
    pub interval: Duration,
    pub count: u32,
}

impl Keepalive {
    /// Applies the keepalive to a connected socket.
    pub fn apply(&self, tcp: &tokio::net::TcpStream) -> std::io::Result<()> {
        let params = socket2::TcpKeepalive::new()
            .with_time(self.idle)
            .with_interval(self.interval)
            .with_retries(self.count);
        socket2::SockRef::from(tcp).set_tcp_keepalive(&params)
    }

    /// [`apply`](Self::apply), plus `TCP_USER_TIMEOUT` of the same length (as libpq's
    /// `tcp_user_timeout`): keepalive probes only run on an idle connection, so without it a
    /// query sent into a black hole is retransmitted for ~15 minutes. Upstream sockets only:
    /// on the client leg it could cut a client that merely stopped reading for a while.
    pub fn apply_upstream(&self, tcp: &tokio::net::TcpStream) -> std::io::Result<()> {
        self.apply(tcp)?;
        #[cfg(target_os = "linux")]
        {
            let dead_after = self.idle + self.interval * self.count;
            socket2::SockRef::from(tcp).set_tcp_user_timeout(Some(dead_after))?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

// The defaults, in one place: `serve`'s flags, the config file and `for_upstream` use these.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:6432";
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9187";
/// Larger than any Bind or CopyData a driver sends in practice, small enough that a hostile
/// length cannot exhaust memory. PostgreSQL's own ceiling is 1 GiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 << 20;
/// PostgreSQL's own `max_connections` is far lower; this bounds tokengate's memory and file
/// descriptors (two per session), not the upstream's.
pub const DEFAULT_MAX_CLIENT_CONNECTIONS: usize = 10_000;
/// Like PgBouncer's defaults on Linux: a dead peer is noticed after about two minutes.
pub const DEFAULT_KEEPALIVE: Keepalive = Keepalive {
    idle: Duration::from_secs(60),
    interval: Duration::from_secs(10),
    count: 6,
};
pub const DEFAULT_CATALOG_LOCK_TIMEOUT: Duration = Duration::from_millis(2000);
pub const DEFAULT_CATALOG_STATEMENT_TIMEOUT: Duration = Duration::from_millis(10_000);
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_CATALOG_TTL: Duration = Duration::from_secs(60);
/// How often a proxy re-reads the state of the columns stored as tokens.
pub const DEFAULT_AT_REST_REFRESH: Duration = Duration::from_secs(1);
/// How old that state may be before statements touching such columns are refused.
pub const DEFAULT_AT_REST_MAX_AGE: Duration = Duration::from_secs(5);
/// The largest `at_rest_max_age` a proxy accepts: `tokengate rekey` cannot know the proxies'
/// settings, so its default `--grace` ([`DEFAULT_AT_REST_GRACE`]) is built on this bound.
pub const MAX_AT_REST_MAX_AGE: Duration = DEFAULT_AT_REST_MAX_AGE;
/// How long `tokengate rekey` waits after changing a column's state before it takes its lock
/// barrier: longer than any proxy may use the old state ([`MAX_AT_REST_MAX_AGE`]), twice
/// over, plus a margin for a statement already planned to reach the server.
pub const DEFAULT_AT_REST_GRACE: Duration = Duration::from_secs(12);

/// A duration in the config file: a number of seconds (`30`) or a duration text (`30s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigDuration(pub Duration);

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(s) => Ok(ConfigDuration(Duration::from_secs(s))),
            Raw::Text(t) => parse_duration(&t)
                .map(ConfigDuration)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Parses a duration as people write it: `30s`, `500ms`, `5m`, `1h30m`, `1h 30m`, `2d`
/// (units ms, s, m, h, d and their long forms). A plain number is seconds, as before.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || {
        format!(
            "{text:?} is not a duration (examples: 30s, 500ms, 5m, 1h30m; a plain number is seconds)"
        )
    };
    let s = text.trim();
    if s.is_empty() {
        return Err(invalid());
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(invalid());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| invalid())?;
        rest = rest[digits..].trim_start();
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let millis_per_unit: u64 = match &rest[..unit_len] {
            "ms" | "msec" | "msecs" | "millis" => 1,
            "s" | "sec" | "secs" | "second" | "seconds" => 1_000,
            "m" | "min" | "mins" | "minute" | "minutes" => 60_000,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3_600_000,
            "d" | "day" | "days" => 86_400_000,
            _ => return Err(invalid()),
        };
        let part = number.checked_mul(millis_per_unit).ok_or_else(invalid)?;
        total = total
            .checked_add(Duration::from_millis(part))
            .ok_or_else(invalid)?;
        rest = rest[unit_len..].trim_start();
    }
    Ok(total)
}

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
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            allow_replication: false,
            workers: 0,
            catalog_user: None,
            catalog_password: None,
            catalog_ttl: DEFAULT_CATALOG_TTL,
            auth_query: None,
            auth_user: None,
            auth_password: None,
            auth_dbname: None,
            audit: None,
            max_client_connections: DEFAULT_MAX_CLIENT_CONNECTIONS,
            tcp_keepalive: Some(DEFAULT_KEEPALIVE),
            query_timeout: None,
            idle_timeout: None,
            catalog_lock_timeout: DEFAULT_CATALOG_LOCK_TIMEOUT,
            catalog_statement_timeout: DEFAULT_CATALOG_STATEMENT_TIMEOUT,
            allow_weakening_reload: false,
            at_rest_refresh: DEFAULT_AT_REST_REFRESH,
            at_rest_max_age: DEFAULT_AT_REST_MAX_AGE,
        }
    }
}

/// `0` or unset: no timeout.
pub fn optional_duration(d: Option<Duration>) -> Option<Duration> {
    d.filter(|d| !d.is_zero())
}

/// Keepalive from the config file's keys over [`DEFAULT_KEEPALIVE`]; `tcp_keepalive: false`
/// turns it off.
pub fn keepalive_from(
    enabled: Option<bool>,
    idle: Option<Duration>,
    interval: Option<Duration>,
    count: Option<u32>,
) -> Option<Keepalive> {
    if enabled == Some(false) {
        return None;
    }
    let d = DEFAULT_KEEPALIVE;
    Some(Keepalive {
        idle: idle.unwrap_or(d.idle),
        interval: interval.unwrap_or(d.interval),
        count: count.unwrap_or(d.count),
    })
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
    fn durations_take_units_and_plain_numbers_are_seconds() {
        let secs = |s: &str| parse_duration(s).map(|d| d.as_millis());
        assert_eq!(secs("30"), Ok(30_000));
        assert_eq!(secs("30s"), Ok(30_000));
        assert_eq!(secs(" 500ms "), Ok(500));
        assert_eq!(secs("5m"), Ok(300_000));
        assert_eq!(secs("1h30m"), Ok(5_400_000));
        assert_eq!(secs("1h 30m 5s"), Ok(5_405_000));
        assert_eq!(secs("2 minutes"), Ok(120_000));
        assert_eq!(secs("1d"), Ok(86_400_000));
        for bad in [
            "",
            "s",
            "30x",
            "-5s",
            "1.5s",
            "30s5",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        let e = parse_duration("thirty").unwrap_err();
        assert!(
            e.contains("30s") && e.contains("plain number is seconds"),
            "{e}"
        );
    }

    #[test]
    fn file_durations_take_numbers_or_text_under_either_key() {
        let c: FileConfig = serde_saphyr::from_str(
            "drain_timeout_secs: 45\nstartup_timeout: 1m\nconnect_timeout_secs: \"2s\"\ncatalog_ttl: 90\n",
        )
        .unwrap();
        assert_eq!(
            c.drain_timeout_secs,
            Some(ConfigDuration(Duration::from_secs(45)))
        );
        assert_eq!(
            c.startup_timeout_secs,
            Some(ConfigDuration(Duration::from_secs(60)))
        );
        assert_eq!(
            c.connect_timeout_secs,
            Some(ConfigDuration(Duration::from_secs(2)))
        );
        assert_eq!(
            c.catalog_ttl_secs,
            Some(ConfigDuration(Duration::from_secs(90)))
        );
        let e = serde_saphyr::from_str::<FileConfig>("drain_timeout: soon\n").unwrap_err();
        assert!(e.to_string().contains("not a duration"), "{e}");
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
