//! The shared integration harness: one throwaway PostgreSQL per test process (started on first
//! use), a TLS CA and server certificate made at run time, helpers to start a tokengate in front
//! of it, a raw protocol client for message-level checks, and a TCP forwarder that simulates
//! upstream outages.
#![allow(dead_code)]

use bytes::{Buf, BytesMut};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokengate::config::{ServeConfig, TlsFiles, Upstream};
use tokengate::embedded_pg::{EmbeddedPostgres, PgOptions};
use tokengate::net::Conn;
use tokengate::server::RunningServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const SUPERUSER_PW: &str = "super-secret-pw";
pub const DB: &str = "app";

pub struct Cluster {
    pub pg: EmbeddedPostgres,
    pub tls_dir: tempfile::TempDir,
}

impl Cluster {
    pub fn ca(&self) -> PathBuf {
        self.tls_dir.path().join("ca.pem")
    }
    pub fn tls_files(&self) -> TlsFiles {
        TlsFiles {
            cert: self.tls_dir.path().join("server.crt"),
            key: self.tls_dir.path().join("server.key"),
        }
    }
    pub fn port(&self) -> u16 {
        self.pg.port()
    }
}

/// (user, password, pg_hba method). Each authenticates with its method, directly or through
/// tokengate.
pub const USERS: &[(&str, &str, &str)] = &[
    ("scram_user", "scram-pw", "scram-sha-256"),
    ("md5_user", "md5-pw", "md5"),
    ("clear_user", "clear-pw", "password"),
    ("trust_user", "", "trust"),
];

static CLUSTER: OnceLock<Cluster> = OnceLock::new();
static INIT: Mutex<()> = Mutex::new(());

fn make_certs(dir: &std::path::Path) -> (String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "tokengate test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("server.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// The shared PostgreSQL, started on first use.
pub fn cluster() -> &'static Cluster {
    if let Some(c) = CLUSTER.get() {
        return c;
    }
    let _guard = INIT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(c) = CLUSTER.get() {
        return c;
    }
    let tls_dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_certs(tls_dir.path());
    let mut hba: Vec<String> = USERS
        .iter()
        .filter(|(_, _, m)| *m != "scram-sha-256")
        .map(|(u, _, m)| format!("host all {u} 127.0.0.1/32 {m}"))
        .collect();
    hba.push("hostssl all tls_user 127.0.0.1/32 scram-sha-256".into());
    hba.push("host all tls_user 127.0.0.1/32 reject".into());
    hba.push("host replication postgres 127.0.0.1/32 trust".into());
    let pg = EmbeddedPostgres::start(&PgOptions {
        superuser_password: SUPERUSER_PW.into(),
        hba,
        ssl: Some((cert, key)),
        settings: vec![],
    })
    .expect("start PostgreSQL");
    let mut setup = String::new();
    for (u, p, m) in USERS {
        let enc = if *m == "md5" { "md5" } else { "scram-sha-256" };
        setup.push_str(&format!(
            "SET password_encryption = '{enc}'; CREATE ROLE {u} LOGIN PASSWORD '{p}';\n"
        ));
    }
    setup.push_str(
        "SET password_encryption = 'scram-sha-256'; CREATE ROLE tls_user LOGIN PASSWORD 'tls-pw';\n",
    );
    // Tests call this from inside their own runtime; the setup gets a runtime of its own on
    // a separate thread.
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                pg.execute("postgres", &format!("CREATE DATABASE {DB}"))
                    .await
                    .expect("create database");
                pg.execute("postgres", &setup).await.expect("setup roles");
                pg.execute(
            DB,
            "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, price numeric(10,2), \
               payload bytea, created date, tags text[]);
             INSERT INTO items SELECT g, 'item ' || g, g * 1.25, decode(md5(g::text), 'hex'),
               date '2024-01-01' + g, ARRAY['t' || (g % 7), 'x'] FROM generate_series(1, 1000) g;
             GRANT ALL ON SCHEMA public TO PUBLIC;
             GRANT ALL ON ALL TABLES IN SCHEMA public TO PUBLIC;",
        )
        .await
        .expect("setup data");
            });
        });
    });
    let _ = CLUSTER.set(Cluster { pg, tls_dir });
    CLUSTER.get().unwrap()
}

/// A tokengate in front of the shared PostgreSQL, configured by `tweak`.
pub async fn proxy_with(tweak: impl FnOnce(&mut ServeConfig)) -> RunningServer {
    let c = cluster();
    let mut config = ServeConfig::for_upstream(
        Upstream::parse(&format!(
            "postgres://127.0.0.1:{}?sslmode=disable",
            c.port()
        ))
        .unwrap(),
    );
    config.admin = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    tweak(&mut config);
    RunningServer::start(config).await.expect("start tokengate")
}

pub async fn proxy() -> RunningServer {
    proxy_with(|_| {}).await
}

pub fn pg_config(port: u16, user: &str, password: &str) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::new();
    c.host("127.0.0.1")
        .port(port)
        .user(user)
        .password(password)
        .dbname(DB);
    c
}

pub async fn connect(config: &tokio_postgres::Config) -> tokio_postgres::Client {
    let (client, conn) = config
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {:?}: {e:?}", config.get_ports()));
    tokio::spawn(conn);
    client
}

/// Direct and proxied clients for the same user.
pub async fn pair(
    proxy: &RunningServer,
    user: &str,
    password: &str,
) -> (tokio_postgres::Client, tokio_postgres::Client) {
    let direct = connect(&pg_config(cluster().port(), user, password)).await;
    let via = connect(&pg_config(proxy.addr.port(), user, password)).await;
    (direct, via)
}

/// Connects with TLS negotiated by SSLRequest, verifying the server against the test CA.
pub async fn connect_tls(
    config: &tokio_postgres::Config,
    addr: SocketAddr,
) -> Result<tokio_postgres::Client, String> {
    let tls = tokengate::net::tls::client_config_trusting(&cluster().ca()).unwrap();
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let conn = tokengate::net::upstream::negotiate_tls(tcp, tls, "localhost", true)
        .await
        .map_err(|e| e.to_string())?;
    let (client, connection) = config
        .connect_raw(conn, tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    Ok(client)
}

pub async fn metrics_text(server: &RunningServer) -> String {
    http_get(server.admin_addr.unwrap(), "/metrics").await.1
}

/// A minimal HTTP/1.0 GET: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    (status, body)
}

/// The value of a metric sample line `name{labels} value`, or 0 if absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .trim()
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// Runs the real psql binary: (exit ok, stdout, stderr).
pub fn psql(
    port: u16,
    user: &str,
    password: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> (bool, String, String) {
    let mut cmd = std::process::Command::new(cluster().pg.bindir().join("psql"));
    cmd.args([
        "-X",
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-U",
        user,
        "-d",
        DB,
    ])
    .args(args)
    .env("PGPASSWORD", password)
    .env("PGCONNECT_TIMEOUT", "10")
    .env_remove("PGSSLMODE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run psql");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One protocol message: tag and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl Msg {
    pub fn field(&self, code: u8) -> Option<String> {
        tokengate::wire::backend::error_field(&self.body, code)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

pub fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

pub fn startup_packet(version: u32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    out.extend(body);
    out
}

/// A raw protocol client for message-level checks (trust auth only).
pub struct Raw {
    pub conn: Conn,
    buf: BytesMut,
}

impl Raw {
    pub async fn tcp(addr: SocketAddr) -> Raw {
        Raw::over(Conn::Plain(TcpStream::connect(addr).await.unwrap()))
    }

    pub fn over(conn: Conn) -> Raw {
        Raw {
            conn,
            buf: BytesMut::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.conn.write_all(bytes).await.unwrap();
    }

    /// Next message, or None at EOF. Panics after 20 s so a hung test fails instead of hanging.
    pub async fn recv(&mut self) -> Option<Msg> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if self.buf.len() > len {
                    let tag = self.buf[0];
                    self.buf.advance(5);
                    let body = self.buf.split_to(len - 4).to_vec();
                    return Some(Msg { tag, body });
                }
            }
            let n =
                tokio::time::timeout(Duration::from_secs(20), self.conn.read_buf(&mut self.buf))
                    .await
                    .expect("timed out waiting for a message");
            match n {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    pub async fn recv_byte(&mut self) -> u8 {
        let mut b = [0u8; 1];
        self.conn.read_exact(&mut b).await.unwrap();
        b[0]
    }

    /// Messages up to and including the next ReadyForQuery (or EOF).
    pub async fn until_ready(&mut self) -> Vec<Msg> {
        let mut out = Vec::new();
        while let Some(m) = self.recv().await {
            let done = m.tag == b'Z';
            out.push(m);
            if done {
                break;
            }
        }
        out
    }

    /// Startup as `user` (trust auth) and read to ReadyForQuery.
    pub async fn login(addr: SocketAddr, user: &str, extra: &[(&str, &str)]) -> (Raw, Vec<Msg>) {
        let mut raw = Raw::tcp(addr).await;
        let mut params = vec![("user", user), ("database", DB)];
        params.extend_from_slice(extra);
        raw.send(&startup_packet(196_608, &params)).await;
        let msgs = raw.until_ready().await;
        (raw, msgs)
    }

    pub async fn query(&mut self, sql: &str) -> Vec<Msg> {
        let mut body = sql.as_bytes().to_vec();
        body.push(0);
        self.send(&frame(b'Q', &body)).await;
        self.until_ready().await
    }
}

/// A TCP forwarder standing in for the network path to the upstream: it can refuse new
/// connections and cut existing ones, like an outage.
pub struct Forwarder {
    pub addr: SocketAddr,
    up: Arc<std::sync::atomic::AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
}

impl Forwarder {
    pub async fn start(target: SocketAddr) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (cut, cut_rx) = tokio::sync::watch::channel(0u64);
        let up2 = up.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if !up2.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(client); // refused: closed at once
                    continue;
                }
                let mut cut_rx = cut_rx.clone();
                // Only outages after this connection opened cut it.
                cut_rx.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut_rx.changed() => {}
                    }
                });
            }
        });
        Forwarder { addr, up, cut }
    }

    /// Refuse new connections and cut the open ones.
    pub fn outage(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    pub fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Polls `f` until it is true or `secs` pass; returns the last result. Never a timing assertion:
/// it only bounds how long a test waits for something that must happen.
pub async fn eventually(secs: u64, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (bounded) until `series` reaches `at_least` in the server's /metrics, and returns its
/// value then. Session outcomes are recorded when the session task ends, which may be just
/// after the client has seen the connection close.
pub async fn metric_reaching(server: &RunningServer, series: &str, at_least: f64) -> f64 {
    let mut value = 0.0;
    eventually(10, async || {
        value = metric(&metrics_text(server).await, series);
        value >= at_least
    })
    .await;
    value
}

/// All values of a simple-protocol query (NULL as None), failing on any error.
pub async fn simple_rows(c: &tokio_postgres::Client, sql: &str) -> Vec<Vec<Option<String>>> {
    c.simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect()
}
