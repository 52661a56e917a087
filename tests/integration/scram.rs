//! SCRAM termination with `auth_query`: with TLS on both legs and default client settings
//! (libpq and tokio-postgres with `channel_binding=prefer`), logins work; `channel_binding=
//! require` binds to tokengate's certificate; a wrong password gets PostgreSQL's 28P01; roles
//! the lookup does not know, and MD5, cleartext and trust, pass through to the upstream.
use crate::harness::*;
use rustls::pki_types::ServerName;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokengate::config::{ServeConfig, Upstream};
use tokengate::server::RunningServer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_postgres::tls::{ChannelBinding, TlsConnect};

const AUTH_USER: &str = "tg_auth";
const AUTH_PW: &str = "auth-pw";
const AUTH_QUERY: &str = "SELECT usename, passwd FROM tokengate.get_auth($1)";

static SETUP: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

/// The lookup function, as README documents it: SECURITY DEFINER, owned by the superuser,
/// executable only by the auth role, and blind to superusers.
async fn setup() {
    SETUP
        .get_or_init(|| async {
            cluster()
                .pg
                .execute(
                    DB,
                    &format!(
                        "CREATE ROLE {AUTH_USER} LOGIN PASSWORD '{AUTH_PW}';
                         CREATE SCHEMA tokengate;
                         CREATE FUNCTION tokengate.get_auth(p_usename text, OUT usename name, OUT passwd text)
                           RETURNS record LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog AS
                           $$ SELECT rolname, rolpassword FROM pg_authid
                               WHERE rolname = p_usename AND rolcanlogin AND NOT rolsuper $$;
                         REVOKE ALL ON FUNCTION tokengate.get_auth(text) FROM PUBLIC;
                         GRANT USAGE ON SCHEMA tokengate TO {AUTH_USER};
                         GRANT EXECUTE ON FUNCTION tokengate.get_auth(text) TO {AUTH_USER};"
                    ),
                )
                .await
                .expect("create the lookup function");
        })
        .await;
}

fn tls_upstream() -> Upstream {
    Upstream::parse(&format!(
        "postgres://127.0.0.1:{}?sslmode=require",
        cluster().port()
    ))
    .unwrap()
}

fn terminating(c: &mut ServeConfig) {
    c.auth_query = Some(AUTH_QUERY.into());
    c.auth_user = Some(AUTH_USER.into());
    c.auth_password = Some(AUTH_PW.into());
}

/// tokengate with client TLS, a TLS upstream and SCRAM termination.
async fn tls_proxy() -> RunningServer {
    setup().await;
    let files = cluster().tls_files();
    proxy_with(|c| {
        c.tls = Some(files);
        c.upstream = tls_upstream();
        terminating(c);
    })
    .await
}

fn run_psql(
    port: u16,
    user: &str,
    password: &str,
    sql: &str,
    env: &[(&str, &str)],
) -> (bool, String, String) {
    tokio::task::block_in_place(|| psql(port, user, password, &["-At", "-c", sql], env))
}

const WHO: &str = "SELECT current_user || ' ' || ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libpq_defaults_log_in_with_tls_on_both_legs() {
    let proxy = tls_proxy().await;
    let port = proxy.addr.port();
    // libpq's defaults: sslmode=prefer, channel_binding=prefer (SCRAM-SHA-256-PLUS is used).
    for env in [
        vec![],
        vec![("PGSSLMODE", "disable")],
        vec![("PGSSLMODE", "require")],
        vec![("PGSSLMODE", "require"), ("PGCHANNELBINDING", "require")],
        vec![("PGSSLMODE", "require"), ("PGCHANNELBINDING", "disable")],
    ] {
        let (ok, out, err) = run_psql(port, "scram_user", "scram-pw", WHO, &env);
        assert!(ok, "{env:?}: {err}");
        assert_eq!(
            out.trim(),
            "scram_user true",
            "{env:?}: the upstream leg is TLS"
        );
    }
    // The same client settings directly: the comparison that makes this test meaningful.
    let (ok, out, err) = run_psql(
        cluster().port(),
        "scram_user",
        "scram-pw",
        WHO,
        &[("PGSSLMODE", "require"), ("PGCHANNELBINDING", "require")],
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "scram_user true");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_binding_require_needs_a_tls_client_leg() {
    let proxy = tls_proxy().await;
    // Without TLS there is nothing to bind to: libpq refuses, as it does directly.
    let (ok, _, err) = run_psql(
        proxy.addr.port(),
        "scram_user",
        "scram-pw",
        "SELECT 1",
        &[("PGSSLMODE", "disable"), ("PGCHANNELBINDING", "require")],
    );
    assert!(!ok);
    assert!(err.contains("channel binding"), "{err}");
}

/// A rustls TLS connector for tokio-postgres that provides tls-server-end-point channel
/// binding, as tokio-postgres-rustls and postgres-native-tls do: with its default
/// `channel_binding=prefer`, tokio-postgres then uses SCRAM-SHA-256-PLUS.
#[derive(Clone)]
struct RustlsConnect(Arc<rustls::ClientConfig>);

struct RustlsStream(tokio_rustls::client::TlsStream<TcpStream>);

impl AsyncRead for RustlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for RustlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl tokio_postgres::tls::TlsStream for RustlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        match self
            .0
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
        {
            Some(cert) => match tokengate::auth::binding::server_end_point(cert) {
                Some(hash) => ChannelBinding::tls_server_end_point(hash),
                None => ChannelBinding::none(),
            },
            None => ChannelBinding::none(),
        }
    }
}

impl TlsConnect<TcpStream> for RustlsConnect {
    type Stream = RustlsStream;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<RustlsStream>> + Send>>;

    fn connect(self, stream: TcpStream) -> Self::Future {
        Box::pin(async move {
            let name = ServerName::try_from("localhost").map_err(std::io::Error::other)?;
            let tls = tokio_rustls::TlsConnector::from(self.0)
                .connect(name, stream)
                .await?;
            Ok(RustlsStream(tls))
        })
    }
}

async fn tokio_postgres_tls(
    port: u16,
    user: &str,
    password: &str,
    binding: tokio_postgres::config::ChannelBinding,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config = pg_config(port, user, password);
    config
        .ssl_mode(tokio_postgres::config::SslMode::Require)
        .channel_binding(binding);
    let tls = RustlsConnect(tokengate::net::tls::client_config_trusting(&cluster().ca()).unwrap());
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (client, connection) = config.connect_raw(tcp, tls).await?;
    tokio::spawn(connection);
    Ok(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_defaults_log_in_with_tls_on_both_legs() {
    use tokio_postgres::config::ChannelBinding as Cb;
    let proxy = tls_proxy().await;
    for binding in [Cb::Prefer, Cb::Require, Cb::Disable] {
        // Directly and through tokengate, the same outcome.
        for port in [cluster().port(), proxy.addr.port()] {
            let client = tokio_postgres_tls(port, "scram_user", "scram-pw", binding)
                .await
                .unwrap_or_else(|e| panic!("{binding:?} via {port}: {e:?}"));
            let row = client.query_one(WHO, &[]).await.unwrap();
            assert_eq!(row.get::<_, String>(0), "scram_user true", "{binding:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_gets_postgres_own_error() {
    use tokio_postgres::config::ChannelBinding as Cb;
    let proxy = tls_proxy().await;
    let direct = tokio_postgres_tls(cluster().port(), "scram_user", "wrong", Cb::Prefer)
        .await
        .err()
        .unwrap();
    let via = tokio_postgres_tls(proxy.addr.port(), "scram_user", "wrong", Cb::Prefer)
        .await
        .err()
        .unwrap();
    let (d, v) = (direct.as_db_error().unwrap(), via.as_db_error().unwrap());
    assert_eq!(v.code().code(), "28P01");
    assert_eq!((v.code(), v.message()), (d.code(), d.message()));
    // psql too.
    let (ok, _, err) = run_psql(
        proxy.addr.port(),
        "scram_user",
        "wrong",
        "SELECT 1",
        &[("PGSSLMODE", "require")],
    );
    assert!(!ok);
    assert!(
        err.contains("password authentication failed for user \"scram_user\""),
        "{err}"
    );
}

/// A role the lookup does not know fails exactly like a wrong password (PostgreSQL's own
/// mock authentication), so roles cannot be enumerated through tokengate; that includes the
/// superuser, whom the lookup function hides on purpose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_the_lookup_does_not_know_fail_like_a_wrong_password() {
    let proxy = tls_proxy().await;
    let port = proxy.addr.port();
    let env = [("PGSSLMODE", "require")];
    let direct = run_psql(cluster().port(), "nobody_here", "x", "SELECT 1", &env);
    let via = run_psql(port, "nobody_here", "x", "SELECT 1", &env);
    assert!(!direct.0 && !via.0);
    let expected = "FATAL:  password authentication failed for user \"nobody_here\"";
    assert!(direct.2.contains(expected), "{}", direct.2);
    assert!(via.2.contains(expected), "{}", via.2);
    let (ok, _, err) = run_psql(port, "postgres", SUPERUSER_PW, "SELECT 1", &env);
    assert!(!ok);
    assert!(
        err.contains("password authentication failed for user \"postgres\""),
        "{err}"
    );
    // With the superuser's right password directly, it logs in: the refusal is tokengate's.
    let (ok, _, err) = run_psql(cluster().port(), "postgres", SUPERUSER_PW, "SELECT 1", &env);
    assert!(ok, "{err}");
}

#[tokio::test]
async fn md5_cleartext_and_trust_still_pass_through() {
    setup().await;
    let proxy = proxy_with(terminating).await;
    for (user, password, method) in USERS {
        let via = connect(&pg_config(proxy.addr.port(), user, password)).await;
        let row = via
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), *user, "method {method}");
    }
    for (user, _, method) in USERS.iter().filter(|(_, _, m)| *m != "trust") {
        let err = pg_config(proxy.addr.port(), user, "wrong")
            .connect(tokio_postgres::NoTls)
            .await
            .err()
            .unwrap();
        assert_eq!(err.code().map(|c| c.code()), Some("28P01"), "{method}");
    }
}

#[tokio::test]
async fn a_failing_lookup_refuses_scram_logins_with_tg025() {
    setup().await;
    let proxy = proxy_with(|c| {
        terminating(c);
        c.auth_query = Some("SELECT passwd FROM tokengate.no_such_function($1)".into());
    })
    .await;
    let err = pg_config(proxy.addr.port(), "scram_user", "scram-pw")
        .connect(tokio_postgres::NoTls)
        .await
        .err()
        .unwrap();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "08001");
    assert!(db.message().contains("TG025"), "{}", db.message());
    // The secret-free paths are unaffected.
    connect(&pg_config(proxy.addr.port(), "md5_user", "md5-pw")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_pids_work_after_termination() {
    use tokio_postgres::config::ChannelBinding as Cb;
    let proxy = tls_proxy().await;
    let client = tokio_postgres_tls(proxy.addr.port(), "scram_user", "scram-pw", Cb::Prefer)
        .await
        .unwrap();
    let token = client.cancel_token();
    let slow = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(30)").await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let tls = RustlsConnect(tokengate::net::tls::client_config_trusting(&cluster().ca()).unwrap());
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    token.cancel_query_raw(tcp, tls).await.unwrap();
    let err = slow.await.unwrap().unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
}

static GATED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
const GATE_LOCK: i64 = 4_242_011;

/// A lookup function that, for `gated_user` only, first waits on an advisory lock the test
/// holds: a lookup that is slow for as long as the test wants.
async fn gated_setup() {
    setup().await;
    GATED
        .get_or_init(|| async {
            cluster()
                .pg
                .execute(
                    DB,
                    &format!(
                        "SET password_encryption = 'scram-sha-256';
                         CREATE ROLE gated_user LOGIN PASSWORD 'gated-pw';
                         CREATE FUNCTION tokengate.get_auth_gated(p_usename text, OUT usename name, OUT passwd text)
                           RETURNS record LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS
                           $$ BEGIN
                                IF p_usename = 'gated_user' THEN
                                  PERFORM pg_advisory_xact_lock_shared({GATE_LOCK});
                                END IF;
                                SELECT rolname, rolpassword INTO usename, passwd FROM pg_authid
                                 WHERE rolname = p_usename AND rolcanlogin AND NOT rolsuper;
                              END $$;
                         REVOKE ALL ON FUNCTION tokengate.get_auth_gated(text) FROM PUBLIC;
                         GRANT EXECUTE ON FUNCTION tokengate.get_auth_gated(text) TO {AUTH_USER};"
                    ),
                )
                .await
                .expect("create the gated lookup function");
        })
        .await;
}

/// Logins whose secret lookups overlap do not wait on each other: while one login's lookup is
/// stuck (its function waits on a lock), more logins than there are lookup connections, all
/// at once, complete, and the stuck one is still waiting; once released, it completes too.
/// (With one lookup connection per database, the others queued behind the stuck one until its
/// login deadline passed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_logins_do_not_wait_on_a_slow_lookup() {
    use tokio_postgres::config::ChannelBinding as Cb;
    gated_setup().await;
    let files = cluster().tls_files();
    let proxy = proxy_with(|c| {
        c.tls = Some(files);
        c.upstream = tls_upstream();
        terminating(c);
        c.auth_query = Some("SELECT usename, passwd FROM tokengate.get_auth_gated($1)".into());
        c.startup_timeout = std::time::Duration::from_secs(60);
    })
    .await;
    let port = proxy.addr.port();

    let gate = connect(&pg_config(cluster().port(), "postgres", SUPERUSER_PW)).await;
    gate.execute("SELECT pg_advisory_lock($1)", &[&GATE_LOCK])
        .await
        .unwrap();
    let gated = tokio::spawn(async move {
        tokio_postgres_tls(port, "gated_user", "gated-pw", Cb::Prefer).await
    });
    // Wait until its lookup is blocked on the lock (a hang guard, not a timing assertion).
    let mut blocked = false;
    for _ in 0..400 {
        let row = gate
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE application_name = 'tokengate-auth' AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap();
        if row.get::<_, i64>(0) == 1 {
            blocked = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(blocked, "the gated lookup never started");

    let n = tokengate::auth::lookup::MAX_LOOKUP_CONNECTIONS + 2;
    let logins = (0..n).map(|_| async {
        let client = tokio_postgres_tls(port, "scram_user", "scram-pw", Cb::Prefer)
            .await
            .expect("a login beside a stuck lookup");
        let row = client.query_one(WHO, &[]).await.unwrap();
        row.get::<_, String>(0)
    });
    let whos = futures_util::future::join_all(logins).await;
    assert_eq!(whos, vec!["scram_user true".to_string(); n]);
    assert!(
        !gated.is_finished(),
        "the stuck login should still be waiting for its lookup"
    );

    gate.execute("SELECT pg_advisory_unlock($1)", &[&GATE_LOCK])
        .await
        .unwrap();
    let client = gated
        .await
        .unwrap()
        .expect("the gated login, once released");
    let row = client.query_one(WHO, &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "gated_user true");
}
