//! One client connection, as a state machine:
//!
//! ```text
//! Negotiating ──SSLRequest/GSSENCRequest/direct TLS──▶ Negotiating
//!     │ CancelRequest ──▶ (forward to upstream, close)
//!     ▼ StartupMessage
//! Authenticating (relay or terminate the auth exchange, issue the cancel secret) ──ErrorResponse──▶ closed
//!     ▼ ReadyForQuery
//! Relaying (two pumps: client→upstream and upstream→client) ──Terminate/EOF/error──▶ closed
//! ```
//!
//! [`startup`] owns the first two states (with [`terminate`] for SCRAM termination), [`relay`]
//! the last; [`cancel`] maps client-facing
//! cancel keys to upstream ones. While relaying, [`protocol`] matches every server reply to the
//! message it answers and [`readpath`] applies the policy (planning itself is in
//! [`crate::plan`]). [`admission`] decides whether a connection is served at all.
pub mod admission;
pub mod cancel;
pub mod protocol;
pub mod readpath;
pub mod relay;
pub mod startup;
pub mod terminate;

use crate::catalog::{CatalogCache, CatalogSettings};
use crate::config::ServeConfig;
use crate::net::upstream::Connector;
use crate::observe::metrics::{DirectionLabel, Metrics, OutcomeLabel};
use crate::policy::store::PolicyStore;
use crate::protect::KeyRing;
use admission::Admission;
use cancel::CancelRegistry;
use prometheus_client::metrics::counter::Counter;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// State shared by every session of one server.
pub struct Context {
    pub config: ServeConfig,
    pub connector: Connector,
    pub client_tls: Option<TlsAcceptor>,
    pub metrics: Metrics,
    pub bytes_from_client: Counter,
    pub bytes_from_upstream: Counter,
    pub cancels: CancelRegistry,
    pub health: Health,
    /// Becomes `true` when the drain period is over and open sessions must close.
    pub force_close: watch::Receiver<bool>,
    /// The policy in force (reloaded atomically); `None` relays without protection.
    pub policy: Option<PolicyStore>,
    /// Keys for tokens; an empty ring when none are configured (token actions then refuse).
    pub keys: Arc<KeyRing>,
    /// The upstream catalog, read with the service role; present whenever a policy is.
    pub catalog: Option<CatalogCache>,
    pub readpath: Arc<readpath::ReadPathShared>,
    /// The audit log, when configured (set by the server after opening it).
    pub audit: Option<Arc<crate::audit::AuditLog>>,
    pub alerts: Arc<crate::alerts::Alerts>,
    /// Admission control: sessions served now, and connections being refused.
    pub admission: Admission,
    /// SCRAM termination, when `auth_query` is configured; `None` passes authentication through.
    pub auth: Option<crate::auth::lookup::AuthLookup>,
    /// tls-server-end-point data for tokengate's own certificate (SCRAM-SHA-256-PLUS on the
    /// client leg), when it has a definite hash.
    pub client_binding: Option<Vec<u8>>,
}

impl Context {
    pub fn new(
        config: ServeConfig,
        connector: Connector,
        client_tls: Option<TlsAcceptor>,
        metrics: Metrics,
        force_close: watch::Receiver<bool>,
        policy: Option<PolicyStore>,
        keys: Option<Arc<KeyRing>>,
    ) -> Self {
        let dir = |d: &str| {
            metrics
                .bytes_total
                .get_or_create(&DirectionLabel {
                    direction: d.to_string(),
                })
                .clone()
        };
        // Every outcome series exists from the start, so dashboards and alerts see zeros.
        for outcome in Outcome::ALL {
            let _ = metrics.connections_total.get_or_create(&OutcomeLabel {
                outcome: outcome.label().to_string(),
            });
        }
        let catalog = match (&policy, &config.catalog_user) {
            (Some(_), Some(user)) => Some(CatalogCache::new(
                CatalogSettings {
                    user: user.clone(),
                    password: config.catalog_password.clone(),
                    ttl: config.catalog_ttl,
                    lock_timeout: config.catalog_lock_timeout,
                    statement_timeout: config.catalog_statement_timeout,
                    at_rest_refresh: config.at_rest_refresh,
                    at_rest_max_age: config.at_rest_max_age,
                },
                connector.clone(),
                metrics.catalog_refresh_total.clone(),
            )),
            _ => None,
        };
        let admission = Admission::new(config.max_client_connections);
        let auth = auth_lookup(&config, &connector);
        let client_binding = config
            .tls
            .as_ref()
            .and_then(|t| certificate_binding(&t.cert));
        Context {
            admission,
            auth,
            client_binding,
            catalog,
            readpath: Arc::default(),
            audit: None,
            alerts: Arc::new(crate::alerts::Alerts::new(Some(metrics.clone()))),
            bytes_from_client: dir("client_to_upstream"),
            bytes_from_upstream: dir("upstream_to_client"),
            config,
            connector,
            client_tls,
            metrics,
            cancels: CancelRegistry::default(),
            health: Health::default(),
            force_close,
            policy,
            keys: keys.unwrap_or_default(),
        }
    }
}

fn auth_lookup(
    config: &ServeConfig,
    connector: &Connector,
) -> Option<crate::auth::lookup::AuthLookup> {
    let query = config.auth_query.clone()?;
    let Some(user) = config.auth_user.clone().or(config.catalog_user.clone()) else {
        tracing::error!(
            "auth_query needs auth_user (or catalog_user); authentication passes through"
        );
        return None;
    };
    let password = match &config.auth_user {
        Some(_) => config.auth_password.clone(),
        None => config
            .auth_password
            .clone()
            .or(config.catalog_password.clone()),
    };
    Some(crate::auth::lookup::AuthLookup::new(
        crate::auth::lookup::LookupSettings {
            query,
            user,
            password,
            dbname: config.auth_dbname.clone(),
        },
        connector.clone(),
    ))
}

/// The channel-binding hash of the first certificate in a PEM file (already validated when
/// the TLS acceptor was built).
fn certificate_binding(path: &std::path::Path) -> Option<Vec<u8>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let cert = CertificateDer::pem_file_iter(path).ok()?.next()?.ok()?;
    crate::auth::binding::server_end_point(&cert)
}

/// What /readyz reports.
#[derive(Debug)]
pub struct Health {
    upstream_up: AtomicBool,
    draining: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            upstream_up: AtomicBool::new(true),
            draining: AtomicBool::new(false),
        }
    }
}

impl Health {
    pub fn set_upstream_up(&self, up: bool) {
        self.upstream_up.store(up, Ordering::Relaxed);
    }
    pub fn upstream_up(&self) -> bool {
        self.upstream_up.load(Ordering::Relaxed)
    }
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// How a connection ended; the `outcome` label of `tokengate_connections_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The session ran and ended normally (Terminate or the client closing).
    Completed,
    /// A CancelRequest connection.
    Cancel,
    /// The client closed before completing startup.
    ClientGone,
    ProtocolError,
    StartupTimeout,
    TlsError,
    /// Upstream unreachable, TLS refused, or lost mid-session.
    UpstreamError,
    /// The upstream rejected the startup or authentication (e.g. a wrong password).
    AuthFailed,
    /// tokengate refused the connection (replication, protocol version).
    Refused,
    Shutdown,
}

impl Outcome {
    pub const ALL: [Outcome; 10] = [
        Outcome::Completed,
        Outcome::Cancel,
        Outcome::ClientGone,
        Outcome::ProtocolError,
        Outcome::StartupTimeout,
        Outcome::TlsError,
        Outcome::UpstreamError,
        Outcome::AuthFailed,
        Outcome::Refused,
        Outcome::Shutdown,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Cancel => "cancel_request",
            Outcome::ClientGone => "client_gone",
            Outcome::ProtocolError => "protocol_error",
            Outcome::StartupTimeout => "startup_timeout",
            Outcome::TlsError => "tls_error",
            Outcome::UpstreamError => "upstream_error",
            Outcome::AuthFailed => "auth_failed",
            Outcome::Refused => "refused",
            Outcome::Shutdown => "shutdown",
        }
    }
}

/// Serves one accepted TCP connection to the end and records its outcome.
pub async fn serve_connection(ctx: Arc<Context>, tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    if let Some(keepalive) = &ctx.config.tcp_keepalive {
        let _ = keepalive.apply(&tcp);
    }
    let Some(_slot) = ctx.admission.admit() else {
        let outcome = match ctx.admission.refusing() {
            Some(_refusing) => {
                let max = ctx.admission.max_sessions();
                let e = crate::errors::Code::TooManyConnections
                    .error(format!("sorry, too many clients already ({max} sessions)"));
                startup::refuse(&ctx, tcp, e, admission::REFUSE_WITHIN).await
            }
            None => Outcome::Refused,
        };
        count_outcome(&ctx, outcome);
        return;
    };
    crate::net::bound_upload_buffer(&tcp, crate::net::Leg::Client);
    ctx.metrics.connections_active.inc();
    let outcome = match startup::handshake(&ctx, tcp, peer).await {
        Ok(established) => {
            let key = established.info.client_key.clone();
            let outcome = relay::run(&ctx, established).await;
            if let Some(key) = &key {
                ctx.cancels.unregister(key);
            }
            outcome
        }
        Err(outcome) => outcome,
    };
    tracing::debug!(%peer, outcome = outcome.label(), "connection closed");
    ctx.metrics.connections_active.dec();
    count_outcome(&ctx, outcome);
}

fn count_outcome(ctx: &Context, outcome: Outcome) {
    ctx.metrics
        .connections_total
        .get_or_create(&OutcomeLabel {
            outcome: outcome.label().to_string(),
        })
        .inc();
}
