//! The listener: accepts connections, spawns a session per client, probes upstream health,
//! and drains on shutdown (stop accepting, wait up to the drain period, then close sessions).
use crate::admin;
use crate::config::ServeConfig;
use crate::net::tls;
use crate::net::upstream::Connector;
use crate::observe::metrics::Metrics;
use crate::policy::store::PolicyStore;
use crate::protect::KeyRing;
use crate::session::{self, Context};
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error(transparent)]
    Keys(#[from] crate::protect::KeyError),
    #[error(transparent)]
    Watch(#[from] crate::policy::store::WatchError),
}

/// How often the upstream is probed for /readyz.
const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// A running tokengate: its bound addresses and a handle to stop it.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    pub context: Arc<Context>,
    pub registry: Arc<Registry>,
    stop_accepting: watch::Sender<bool>,
    task: JoinHandle<()>,
    /// Reloads the policy on SIGHUP and file changes while the server runs.
    _policy_watch: Option<crate::policy::store::WatchHandle>,
}

impl RunningServer {
    /// Binds the listeners and starts serving in the current tokio runtime.
    pub async fn start(config: ServeConfig) -> Result<RunningServer, ServerError> {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        // A bad policy or key file stops startup with its own message (file:line:column for
        // policies); nothing is served half-configured.
        let policy = match &config.policy {
            Some(path) => Some(PolicyStore::load(path, metrics.clone())?),
            None => None,
        };
        let keys = match &config.keys {
            Some(path) => Some(Arc::new(KeyRing::load(path)?)),
            None => None,
        };
        let client_tls = match &config.tls {
            Some(files) => Some(tokio_rustls::TlsAcceptor::from(tls::server_config(
                &files.cert,
                &files.key,
            )?)),
            None => None,
        };
        let upstream_tls = tls::upstream_client_config(
            config.upstream.sslmode,
            config.upstream.sslrootcert.as_deref(),
        )?;
        let connector = Connector::new(
            config.upstream.clone(),
            upstream_tls,
            config.connect_timeout,
        );
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
        let (force_tx, force_rx) = watch::channel(false);
        let (stop_tx, stop_rx) = watch::channel(false);
        let drain = config.drain_timeout;
        let admin_listen = config.admin;
        let context = Arc::new(Context::new(
            config,
            connector,
            client_tls,
            metrics,
            force_rx,
            policy.clone(),
            keys,
        ));
        let policy_watch = match &policy {
            Some(store) => {
                tracing::info!(path = %store.path().display(), generation = store.generation(), "policy loaded");
                Some(store.spawn_watchers()?)
            }
            None => {
                tracing::info!("no policy: relaying without protection");
                None
            }
        };
        let registry = Arc::new(registry);

        let admin_addr = match admin_listen {
            Some(a) => Some(
                admin::serve(a, context.clone(), registry.clone())
                    .await
                    .map_err(|source| ServerError::Bind { addr: a, source })?,
            ),
            None => None,
        };
        tokio::spawn(probe_upstream(context.clone(), stop_rx.clone()));
        let task = tokio::spawn(accept_loop(
            listener,
            context.clone(),
            stop_rx,
            force_tx,
            drain,
        ));
        tracing::info!(%addr, upstream = %context.connector.address(), "tokengate listening");
        Ok(RunningServer {
            addr,
            admin_addr,
            context,
            registry,
            stop_accepting: stop_tx,
            task,
            _policy_watch: policy_watch,
        })
    }

    /// Stops accepting, drains, and returns when every session has ended.
    pub async fn shutdown(self) {
        let _ = self.stop_accepting.send(true);
        let _ = self.task.await;
    }

    /// The Prometheus text of this server's metrics.
    pub fn metrics_text(&self) -> String {
        Metrics::render(&self.registry)
    }
}

async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<Context>,
    mut stop: watch::Receiver<bool>,
    force_close: watch::Sender<bool>,
    drain: Duration,
) {
    let mut sessions = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() { break; }
            }
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    sessions.spawn(session::serve_connection(ctx.clone(), tcp, peer));
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
    drop(listener);
    ctx.health.set_draining();
    tracing::info!(
        open = sessions.len(),
        drain_secs = drain.as_secs(),
        "draining sessions"
    );
    let drained = tokio::time::timeout(drain, async {
        while sessions.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(open = sessions.len(), "drain period over, closing sessions");
        let _ = force_close.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while sessions.join_next().await.is_some() {}
        })
        .await;
        sessions.abort_all();
    }
    tracing::info!("tokengate stopped");
}

/// Keeps /readyz honest while no sessions are connecting.
async fn probe_upstream(ctx: Arc<Context>, mut stop: watch::Receiver<bool>) {
    loop {
        let up = ctx.connector.probe().await;
        if up != ctx.health.upstream_up() {
            if up {
                tracing::info!(upstream = %ctx.connector.address(), "upstream reachable again");
            } else {
                tracing::warn!(upstream = %ctx.connector.address(), "upstream unreachable");
            }
        }
        ctx.health.set_upstream_up(up);
        tokio::select! {
            _ = tokio::time::sleep(PROBE_INTERVAL) => {}
            _ = stop.changed() => return,
        }
    }
}
