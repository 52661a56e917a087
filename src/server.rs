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

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "cannot listen on {addr}: the address is in use (is another tokengate already running there?); a second instance never shares a listening address"
    )]
    AddressInUse { addr: SocketAddr },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error(transparent)]
    Keys(#[from] crate::protect::KeyError),
    #[error(transparent)]
    Watch(#[from] crate::policy::store::WatchError),
    #[error(
        "a policy needs a catalog service role to resolve columns: set catalog_user (and catalog_password or TOKENGATE_CATALOG_PASSWORD)"
    )]
    NoCatalogRole,
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
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
    force_close: Arc<watch::Sender<bool>>,
    /// Each worker reports how many sessions it had to close when the drain period ended.
    workers_done: Vec<tokio::sync::oneshot::Receiver<usize>>,
    /// Reloads the policy on SIGHUP and file changes while the server runs.
    _policy_watch: Watch,
}

/// What answers SIGHUP while the server runs. Every mode handles it: systemd's ExecReload and
/// logrotate send it, and its default action would end the process.
struct Watch {
    _policy: Option<crate::policy::store::WatchHandle>,
    _hangup: AbortOnDrop,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// SIGHUP in every mode: the audit log is reopened (after an external rotation); the policy,
/// if any, is reloaded by its own watcher; without either, the signal is only logged.
fn on_hangup(
    audit: Option<Arc<crate::audit::AuditLog>>,
    has_policy: bool,
) -> Result<AbortOnDrop, ServerError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = signal(SignalKind::hangup())
        .map_err(|e| ServerError::Watch(crate::policy::store::WatchError::Signal(e)))?;
    Ok(AbortOnDrop(tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            match &audit {
                Some(log) => {
                    tracing::info!("SIGHUP: reopening the audit log");
                    log.reopen();
                }
                None if !has_policy => {
                    tracing::info!("SIGHUP: no policy or audit log configured, nothing to reload");
                }
                None => {}
            }
        }
    })))
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
        if policy.is_some() && config.catalog_user.is_none() {
            return Err(ServerError::NoCatalogRole);
        }
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
        )
        .with_keepalive(config.tcp_keepalive);
        let (force_tx, force_rx) = watch::channel(false);
        let force_tx = Arc::new(force_tx);
        let (stop_tx, stop_rx) = watch::channel(false);
        let drain = config.drain_timeout;
        let admin_listen = config.admin;
        let listen = config.listen;
        let workers = match config.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let audit = match &config.audit {
            Some(a) => Some(Arc::new(crate::audit::AuditLog::open(
                a.clone(),
                keys.as_deref().unwrap_or(&KeyRing::default()),
                &metrics,
            )?)),
            None => None,
        };
        let mut context = Context::new(
            config,
            connector,
            client_tls,
            metrics,
            force_rx,
            policy.clone(),
            keys,
        );
        context.audit = audit;
        context
            .admission
            .fit_fd_limit(context.config.max_client_connections);
        let context = Arc::new(context);
        let policy_watch = match &policy {
            Some(store) => {
                tracing::info!(path = %store.path().display(), generation = store.generation(), "policy loaded");
                store.set_allow_weakening_reload(context.config.allow_weakening_reload);
                Watch {
                    _policy: Some(store.spawn_watchers()?),
                    _hangup: on_hangup(context.audit.clone(), true)?,
                }
            }
            None => {
                tracing::info!("no policy: relaying without protection");
                Watch {
                    _policy: None,
                    _hangup: on_hangup(context.audit.clone(), false)?,
                }
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
        // One listening socket for the process, without SO_REUSEPORT, so that a second
        // process on the same address fails to start instead of taking a share of the
        // connections. Thread per core: each worker has its own current-thread runtime and
        // accepts on its own duplicate of the socket, so a session never wakes another
        // thread (measured: the work-stealing runtime spent ~0.3 futex calls per pgbench
        // transaction).
        let listener = bind_listener(listen).map_err(|source| bind_error(listen, source))?;
        let addr = listener
            .local_addr()
            .map_err(|source| bind_error(listen, source))?;
        let mut done = Vec::with_capacity(workers);
        for i in 0..workers {
            let listener = listener
                .try_clone()
                .map_err(|source| bind_error(addr, source))?;
            let (bound_tx, bound_rx) = std::sync::mpsc::channel();
            let (done_tx, done_rx) = tokio::sync::oneshot::channel::<usize>();
            let (ctx, stop, force) = (context.clone(), stop_rx.clone(), force_tx.clone());
            std::thread::Builder::new()
                .name(format!("tokengate-w{i}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(r) => r,
                        Err(e) => {
                            let _ = bound_tx.send(Err(e));
                            return;
                        }
                    };
                    let closed = runtime.block_on(async move {
                        let listener = match TcpListener::from_std(listener) {
                            Ok(l) => l,
                            Err(e) => {
                                let _ = bound_tx.send(Err(e));
                                return 0;
                            }
                        };
                        let _ = bound_tx.send(Ok(()));
                        accept_loop(listener, ctx, stop, force, drain).await
                    });
                    let _ = done_tx.send(closed);
                })
                .map_err(|source| ServerError::Bind { addr, source })?;
            bound_rx
                .recv()
                .map_err(|_| ServerError::Bind {
                    addr,
                    source: std::io::Error::other("worker thread ended before accepting"),
                })?
                .map_err(|source| ServerError::Bind { addr, source })?;
            done.push(done_rx);
        }
        drop(listener);
        tracing::info!(%addr, upstream = %context.connector.address(), "tokengate listening");
        Ok(RunningServer {
            addr,
            admin_addr,
            context,
            registry,
            stop_accepting: stop_tx,
            force_close: force_tx,
            workers_done: done,
            _policy_watch: policy_watch,
        })
    }

    /// Stops accepting, drains, and returns when every session has ended. Logs once for the
    /// whole server, not once per worker.
    pub async fn shutdown(mut self) {
        tracing::info!(
            open = self.context.metrics.connections_active.get(),
            drain_secs = self.context.config.drain_timeout.as_secs(),
            "shutting down: no new connections, draining sessions"
        );
        let _ = self.stop_accepting.send(true);
        let mut closed = 0;
        for done in std::mem::take(&mut self.workers_done) {
            closed += done.await.unwrap_or(0);
        }
        if closed > 0 {
            tracing::warn!(closed, "drain period over, sessions closed");
        }
        tracing::info!("tokengate stopped");
    }

    /// The Prometheus text of this server's metrics.
    pub fn metrics_text(&self) -> String {
        Metrics::render(&self.registry)
    }
}

impl Drop for RunningServer {
    /// A server dropped without `shutdown` (e.g. at the end of a test) stops at once: its
    /// worker threads close their listeners and sessions instead of draining.
    fn drop(&mut self) {
        if !self.workers_done.is_empty() {
            let _ = self.force_close.send(true);
            let _ = self.stop_accepting.send(true);
        }
    }
}

/// Binds the process's listening socket. SO_REUSEADDR only lets a restart bind over
/// connections in TIME_WAIT: Linux still refuses it while another socket listens there.
fn bind_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

fn bind_error(addr: SocketAddr, source: std::io::Error) -> ServerError {
    if source.kind() == std::io::ErrorKind::AddrInUse {
        ServerError::AddressInUse { addr }
    } else {
        ServerError::Bind { addr, source }
    }
}

async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<Context>,
    mut stop: watch::Receiver<bool>,
    force_close: Arc<watch::Sender<bool>>,
    drain: Duration,
) -> usize {
    let mut sessions = tokio::task::JoinSet::new();
    let mut warned: Option<tokio::time::Instant> = None;
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
                    // EMFILE and friends: back off instead of spinning, and say so once a
                    // second at most. The admin listener keeps a descriptor in reserve.
                    if warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        tracing::warn!(error = %e, "accept failed (out of file descriptors?)");
                        warned = Some(tokio::time::Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
    drop(listener);
    ctx.health.set_draining();
    let drained = tokio::time::timeout(drain, async {
        while sessions.join_next().await.is_some() {}
    })
    .await;
    let mut closed = 0;
    if drained.is_err() {
        closed = sessions.len();
        let _ = force_close.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while sessions.join_next().await.is_some() {}
        })
        .await;
        sessions.abort_all();
    }
    closed
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
