//! `tokengate serve`: flags and env vars, merged over the config file.
use crate::config::{self, ConfigError, FileConfig, ServeConfig, TlsFiles, Upstream};
use crate::observe::logging::{self, LogFormat};
use crate::server::RunningServer;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// YAML config file; flags and TOKENGATE_* env vars override its values.
    #[arg(long, env = "TOKENGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address clients connect to [default: 127.0.0.1:6432].
    #[arg(long, env = "TOKENGATE_LISTEN")]
    pub listen: Option<String>,
    /// Upstream PostgreSQL, e.g. postgres://db:5432?sslmode=verify-full&sslrootcert=ca.pem
    #[arg(long, env = "TOKENGATE_UPSTREAM")]
    pub upstream: Option<String>,
    /// PEM certificate chain for client-leg TLS.
    #[arg(long, env = "TOKENGATE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for client-leg TLS.
    #[arg(long, env = "TOKENGATE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Admin HTTP address for /metrics, /healthz, /readyz [default: 127.0.0.1:9187]; "off" disables it.
    #[arg(long, env = "TOKENGATE_ADMIN")]
    pub admin: Option<String>,
    /// Policy file. Without one, tokengate is a pure relay.
    #[arg(long, env = "TOKENGATE_POLICY")]
    pub policy: Option<PathBuf>,
    /// Key file for tokens.
    #[arg(long, env = "TOKENGATE_KEYS")]
    pub keys: Option<PathBuf>,
    /// Largest client message accepted, in bytes [default: 67108864].
    #[arg(long, env = "TOKENGATE_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Seconds a client has to finish startup and authentication [default: 30].
    #[arg(long, env = "TOKENGATE_STARTUP_TIMEOUT")]
    pub startup_timeout: Option<u64>,
    /// Seconds to wait for an upstream connection [default: 5].
    #[arg(long, env = "TOKENGATE_CONNECT_TIMEOUT")]
    pub connect_timeout: Option<u64>,
    /// Seconds sessions may drain after SIGTERM/SIGINT before they are closed [default: 30].
    #[arg(long, env = "TOKENGATE_DRAIN_TIMEOUT")]
    pub drain_timeout: Option<u64>,
    /// Let replication connections through (they bypass policies).
    #[arg(long, env = "TOKENGATE_ALLOW_REPLICATION")]
    pub allow_replication: bool,
    /// Worker threads, each with its own listener [default: one per core].
    #[arg(long, env = "TOKENGATE_WORKERS")]
    pub workers: Option<usize>,
    /// Service role tokengate reads the upstream catalog as (required with --policy).
    #[arg(long, env = "TOKENGATE_CATALOG_USER")]
    pub catalog_user: Option<String>,
    /// Its password (prefer the env var to the flag).
    #[arg(long, env = "TOKENGATE_CATALOG_PASSWORD", hide_env_values = true)]
    pub catalog_password: Option<String>,
    /// Seconds a catalog snapshot is used before it is reloaded [default: 60].
    #[arg(long, env = "TOKENGATE_CATALOG_TTL")]
    pub catalog_ttl: Option<u64>,
    /// Terminate SCRAM in tokengate: the query that reads a login role's stored SCRAM secret
    /// (`$1` = the role; the secret is the last column), e.g.
    /// "SELECT usename, passwd FROM tokengate.get_auth($1)". Without it, authentication
    /// passes through to the upstream.
    #[arg(long, env = "TOKENGATE_AUTH_QUERY")]
    pub auth_query: Option<String>,
    /// The role the auth query runs as [default: the catalog role].
    #[arg(long, env = "TOKENGATE_AUTH_USER")]
    pub auth_user: Option<String>,
    /// Its password [default: the catalog role's] (prefer the env var to the flag).
    #[arg(long, env = "TOKENGATE_AUTH_PASSWORD", hide_env_values = true)]
    pub auth_password: Option<String>,
    /// The database the auth query runs in [default: the database the client connects to].
    #[arg(long, env = "TOKENGATE_AUTH_DBNAME")]
    pub auth_dbname: Option<String>,
    /// Audit log file (hash-chained JSON lines; needs an `audit` key in the key file). The
    /// config file's `audit:` section sets rotation, fsync and failure behaviour.
    #[arg(long, env = "TOKENGATE_AUDIT_LOG")]
    pub audit_log: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "TOKENGATE_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
}

impl ServeArgs {
    /// Resolves flags/env over the file over defaults.
    pub fn resolve(self) -> Result<(ServeConfig, LogFormat), ConfigError> {
        let file = match &self.config {
            Some(p) => FileConfig::load(p)?,
            None => FileConfig::default(),
        };
        let listen = self
            .listen
            .or(file.listen)
            .unwrap_or_else(|| config::DEFAULT_LISTEN.to_string());
        let upstream = self
            .upstream
            .or(file.upstream)
            .ok_or(ConfigError::Invalid {
                field: "upstream",
                reason: "required (--upstream, TOKENGATE_UPSTREAM or upstream: in the config file)"
                    .into(),
            })?;
        let admin = self
            .admin
            .or(file.admin)
            .unwrap_or_else(|| config::DEFAULT_ADMIN.to_string());
        let tls = match (
            self.tls_cert.or(file.tls_cert),
            self.tls_key.or(file.tls_key),
        ) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Invalid {
                    field: "tls",
                    reason: "--tls-cert and --tls-key go together".into(),
                });
            }
        };
        let log_format = match (self.log_format, file.log_format) {
            (Some(f), _) => f,
            (None, Some(s)) => s.parse().map_err(|reason| ConfigError::Invalid {
                field: "log_format",
                reason,
            })?,
            (None, None) => LogFormat::Text,
        };
        let auth_user = self.auth_user.or(file.auth_user);
        let catalog_user = self.catalog_user.or(file.catalog_user);
        let auth_query = self.auth_query.or(file.auth_query);
        if auth_query.is_some() && auth_user.is_none() && catalog_user.is_none() {
            return Err(ConfigError::Invalid {
                field: "auth_query",
                reason: "needs auth_user (or catalog_user) to run as".into(),
            });
        }
        let secs = |flag: Option<u64>, file: Option<u64>, default: u64| {
            Duration::from_secs(flag.or(file).unwrap_or(default))
        };
        let config = ServeConfig {
            listen: config::parse_addr("listen", &listen)?,
            upstream: Upstream::parse(&upstream)?,
            tls,
            admin: if admin == "off" {
                None
            } else {
                Some(config::parse_addr("admin", &admin)?)
            },
            policy: self.policy.or(file.policy),
            keys: self.keys.or(file.keys),
            max_message_bytes: self
                .max_message_bytes
                .or(file.max_message_bytes)
                .unwrap_or(config::DEFAULT_MAX_MESSAGE_BYTES),
            startup_timeout: secs(self.startup_timeout, file.startup_timeout_secs, 30),
            connect_timeout: secs(self.connect_timeout, file.connect_timeout_secs, 5),
            drain_timeout: secs(self.drain_timeout, file.drain_timeout_secs, 30),
            allow_replication: self.allow_replication || file.allow_replication.unwrap_or(false),
            workers: self.workers.or(file.workers).unwrap_or(0),
            catalog_user,
            catalog_password: self.catalog_password.or(file.catalog_password),
            catalog_ttl: secs(self.catalog_ttl, file.catalog_ttl_secs, 60),
            auth_query,
            auth_user,
            auth_password: self.auth_password.or(file.auth_password),
            auth_dbname: self.auth_dbname.or(file.auth_dbname),
            audit: match (self.audit_log, file.audit) {
                (Some(path), Some(mut a)) => {
                    a.path = path;
                    Some(a)
                }
                (Some(path), None) => Some(crate::audit::AuditConfig::new(path)),
                (None, a) => a,
            },
        };
        Ok((config, log_format))
    }
}

pub fn run(args: ServeArgs) -> ExitCode {
    let (config, log_format) = match args.resolve() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tokengate: {e}");
            return ExitCode::from(2);
        }
    };
    logging::init(log_format);
    let Some(runtime) = super::runtime() else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async move {
        let server = match RunningServer::start(config).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("tokengate: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Some(admin) = server.admin_addr {
            tracing::info!(%admin, "admin endpoint: /metrics /healthz /readyz");
        }
        wait_for_shutdown_signal().await;
        tracing::info!("shutdown requested");
        server.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// SIGTERM or SIGINT.
pub async fn wait_for_shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the only way out is being killed; wait forever.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
