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
    /// Time a client has to finish startup and authentication, e.g. 30s [default: 30s].
    #[arg(long, env = "TOKENGATE_STARTUP_TIMEOUT", value_parser = config::parse_duration)]
    pub startup_timeout: Option<Duration>,
    /// Time to wait for an upstream connection, e.g. 5s [default: 5s].
    #[arg(long, env = "TOKENGATE_CONNECT_TIMEOUT", value_parser = config::parse_duration)]
    pub connect_timeout: Option<Duration>,
    /// Time sessions may drain after SIGTERM/SIGINT before they are closed [default: 30s].
    #[arg(long, env = "TOKENGATE_DRAIN_TIMEOUT", value_parser = config::parse_duration)]
    pub drain_timeout: Option<Duration>,
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
    /// How long a catalog snapshot is used before it is reloaded [default: 60s].
    #[arg(long, env = "TOKENGATE_CATALOG_TTL", value_parser = config::parse_duration)]
    pub catalog_ttl: Option<Duration>,
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
    /// Client sessions served at once; more get 53300 "too many clients" [default: 10000].
    #[arg(long, env = "TOKENGATE_MAX_CLIENT_CONNECTIONS")]
    pub max_client_connections: Option<usize>,
    /// How long a request may wait with no byte from the upstream before the session ends
    /// with an upstream error, e.g. 30s; 0 = no limit [default: 0].
    #[arg(long, env = "TOKENGATE_QUERY_TIMEOUT", value_parser = config::parse_duration)]
    pub query_timeout: Option<Duration>,
    /// How long an idle session (nothing in flight) is kept, e.g. 10m; 0 = forever [default: 0].
    #[arg(long, env = "TOKENGATE_IDLE_TIMEOUT", value_parser = config::parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// Let the policy file watcher apply a change that protects less (by default only SIGHUP
    /// applies such a change).
    #[arg(long, env = "TOKENGATE_ALLOW_WEAKENING_RELOAD")]
    pub allow_weakening_reload: bool,
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
        // Durations: a flag or env var, else the file, else the default in `config`.
        let duration =
            |flag: Option<Duration>, file: Option<config::ConfigDuration>, default: Duration| {
                flag.or(file.map(|d| d.0)).unwrap_or(default)
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
            startup_timeout: duration(
                self.startup_timeout,
                file.startup_timeout_secs,
                config::DEFAULT_STARTUP_TIMEOUT,
            ),
            connect_timeout: duration(
                self.connect_timeout,
                file.connect_timeout_secs,
                config::DEFAULT_CONNECT_TIMEOUT,
            ),
            drain_timeout: duration(
                self.drain_timeout,
                file.drain_timeout_secs,
                config::DEFAULT_DRAIN_TIMEOUT,
            ),
            allow_replication: self.allow_replication || file.allow_replication.unwrap_or(false),
            workers: self.workers.or(file.workers).unwrap_or(0),
            catalog_user,
            catalog_password: self.catalog_password.or(file.catalog_password),
            catalog_ttl: duration(
                self.catalog_ttl,
                file.catalog_ttl_secs,
                config::DEFAULT_CATALOG_TTL,
            ),
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
            max_client_connections: self
                .max_client_connections
                .or(file.max_client_connections)
                .unwrap_or(config::DEFAULT_MAX_CLIENT_CONNECTIONS),
            tcp_keepalive: config::keepalive_from(
                file.tcp_keepalive,
                file.tcp_keepalive_idle_secs.map(|d| d.0),
                file.tcp_keepalive_interval_secs.map(|d| d.0),
                file.tcp_keepalive_count,
            ),
            query_timeout: config::optional_duration(
                self.query_timeout.or(file.query_timeout_secs.map(|d| d.0)),
            ),
            idle_timeout: config::optional_duration(
                self.idle_timeout.or(file.idle_timeout_secs.map(|d| d.0)),
            ),
            catalog_lock_timeout: file
                .catalog_lock_timeout
                .map_or(config::DEFAULT_CATALOG_LOCK_TIMEOUT, |d| d.0),
            catalog_statement_timeout: file
                .catalog_statement_timeout
                .map_or(config::DEFAULT_CATALOG_STATEMENT_TIMEOUT, |d| d.0),
            allow_weakening_reload: self.allow_weakening_reload
                || file.allow_weakening_reload.unwrap_or(false),
            at_rest_refresh: file
                .at_rest_refresh
                .map_or(config::DEFAULT_AT_REST_REFRESH, |d| d.0),
            at_rest_max_age: file
                .at_rest_max_age
                .map_or(config::DEFAULT_AT_REST_MAX_AGE, |d| d.0),
        };
        check_at_rest_timing(config.at_rest_refresh, config.at_rest_max_age)?;
        Ok((config, log_format))
    }
}

/// A proxy may use a column's at-rest state for at most `at_rest_max_age`; `tokengate rekey`
/// changes rows only after waiting longer than the largest one a proxy accepts, so a larger
/// value (or a refresh that cannot keep the state that fresh) is a configuration error.
fn check_at_rest_timing(refresh: Duration, max_age: Duration) -> Result<(), ConfigError> {
    if max_age > config::MAX_AT_REST_MAX_AGE || max_age.is_zero() {
        return Err(ConfigError::Invalid {
            field: "at_rest_max_age",
            reason: format!(
                "{max_age:?} is outside (0, {:?}]: `tokengate rekey` changes rows {:?} (its --grace) after a state change, trusting that no proxy uses a state older than {:?}",
                config::MAX_AT_REST_MAX_AGE,
                config::DEFAULT_AT_REST_GRACE,
                config::MAX_AT_REST_MAX_AGE
            ),
        });
    }
    if refresh.is_zero() || refresh >= max_age {
        return Err(ConfigError::Invalid {
            field: "at_rest_refresh",
            reason: format!(
                "{refresh:?} must be above zero and below at_rest_max_age ({max_age:?}), or every state read expires before the next one"
            ),
        });
    }
    Ok(())
}

/// Checks that need the policy file, before anything binds: a policy whose roles get tokens
/// or keyed hash masks needs a key file, or every such query would fail later.
fn startup_checks(config: &ServeConfig) -> Result<(), String> {
    let Some(path) = &config.policy else {
        return Ok(());
    };
    if config.keys.is_some() {
        return Ok(());
    }
    let policy = crate::policy::Policy::load(path).map_err(|e| e.to_string())?;
    let keyed = policy.roles().iter().find_map(|rule| {
        policy
            .for_role(&rule.name, &[])
            .columns()
            .find(|d| match d.action {
                crate::policy::Action::Token => true,
                crate::policy::Action::Mask => d
                    .mask
                    .as_ref()
                    .is_some_and(|m| m.kind() == crate::policy::formats::MaskKind::Hash),
                _ => false,
            })
            .map(|d| format!("{} ({})", d.column, d.rule))
    });
    match keyed {
        Some(example) => Err(format!(
            "the policy {} tokenizes or hashes values (e.g. {example}) but no key file is \
             configured; create one with `tokengate keygen --out keys.json` and pass --keys \
             (TOKENGATE_KEYS, or keys: in the config file)",
            path.display()
        )),
        None => Ok(()),
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
    if let Err(e) = startup_checks(&config) {
        eprintln!("tokengate: {e}");
        return ExitCode::from(2);
    }
    logging::init(log_format);
    let Some(runtime) = super::runtime() else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async move {
        // From here on SIGHUP never ends the process, even during startup: tokio keeps its
        // handler installed for the life of the process once a listener exists.
        let _early_hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
        let shutdown = shutdown_signal();
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
        shutdown.await;
        server.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// SIGTERM or SIGINT. The handlers are installed when this is called (inside a runtime), so a
/// signal that arrives before the future is first polled is not lost to the default action.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            // Without signal handlers the only way out is being killed; wait forever.
            std::future::pending::<()>().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// `tokengate rekey` trusts that no proxy uses an at-rest state older than
    /// `MAX_AT_REST_MAX_AGE`: a config that would is refused at startup.
    #[test]
    fn at_rest_max_age_is_bounded_by_what_rekey_waits_for() {
        let ms = Duration::from_millis;
        assert!(
            check_at_rest_timing(
                config::DEFAULT_AT_REST_REFRESH,
                config::DEFAULT_AT_REST_MAX_AGE
            )
            .is_ok()
        );
        assert!(check_at_rest_timing(ms(100), ms(500)).is_ok());
        for (refresh, max_age, field) in [
            (ms(1000), ms(30_000), "at_rest_max_age"),
            (ms(1000), Duration::ZERO, "at_rest_max_age"),
            (ms(5000), ms(5000), "at_rest_refresh"),
            (Duration::ZERO, ms(500), "at_rest_refresh"),
        ] {
            match check_at_rest_timing(refresh, max_age) {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{refresh:?}/{max_age:?}: {other:?}"),
            }
        }
        assert!(config::DEFAULT_AT_REST_GRACE > config::MAX_AT_REST_MAX_AGE * 2);
    }

    /// With nothing set, `serve` runs on the defaults of `config` (the one place they live),
    /// and its `--help` states those same defaults.
    #[test]
    fn defaults_come_from_config_and_help_states_them() {
        let args = ServeArgs {
            upstream: Some("postgres://db:5432".into()),
            ..ServeArgs::default()
        };
        let (c, format) = args.resolve().unwrap();
        let base = ServeConfig::for_upstream(c.upstream.clone());
        assert_eq!(c.listen.to_string(), config::DEFAULT_LISTEN);
        assert_eq!(
            c.admin.map(|a| a.to_string()).as_deref(),
            Some(config::DEFAULT_ADMIN)
        );
        assert_eq!(
            (
                c.max_message_bytes,
                c.startup_timeout,
                c.connect_timeout,
                c.drain_timeout,
                c.catalog_ttl,
                c.workers,
                c.allow_replication
            ),
            (
                base.max_message_bytes,
                base.startup_timeout,
                base.connect_timeout,
                base.drain_timeout,
                base.catalog_ttl,
                base.workers,
                base.allow_replication
            )
        );
        assert_eq!(format, LogFormat::Text);

        let cli = crate::cli::Cli::command();
        let serve = cli.find_subcommand("serve").unwrap();
        let help = |id: &str| {
            serve
                .get_arguments()
                .find(|a| a.get_id() == id)
                .and_then(|a| a.get_help())
                .map(|h| h.to_string())
                .unwrap_or_default()
        };
        let secs = |d: Duration| format!("[default: {}s]", d.as_secs());
        for (id, expected) in [
            ("listen", format!("[default: {}]", config::DEFAULT_LISTEN)),
            ("admin", format!("[default: {}]", config::DEFAULT_ADMIN)),
            (
                "max_message_bytes",
                format!("[default: {}]", config::DEFAULT_MAX_MESSAGE_BYTES),
            ),
            ("startup_timeout", secs(config::DEFAULT_STARTUP_TIMEOUT)),
            ("connect_timeout", secs(config::DEFAULT_CONNECT_TIMEOUT)),
            ("drain_timeout", secs(config::DEFAULT_DRAIN_TIMEOUT)),
            ("catalog_ttl", secs(config::DEFAULT_CATALOG_TTL)),
        ] {
            let text = help(id);
            assert!(
                text.contains(&expected),
                "--{id}: {text:?} lacks {expected}"
            );
        }
    }

    #[test]
    fn durations_parse_from_flags() {
        let args = ServeArgs {
            upstream: Some("postgres://db".into()),
            drain_timeout: Some(config::parse_duration("45s").unwrap()),
            ..ServeArgs::default()
        };
        assert_eq!(
            args.resolve().unwrap().0.drain_timeout,
            Duration::from_secs(45)
        );
    }
}
