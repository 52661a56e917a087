//! Issue 12: nothing a client, an editor or a slow upstream does can crash tokengate, hang it,
//! or open it. Each test fails on the code before the fix (checked when it was written).
//!
//! Some tests run the real `tokengate serve` binary (signals, a second process, file
//! descriptor limits, stderr); `TOKENGATE_TEST_BIN` points them at another build.
use crate::crm::*;
use crate::harness::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokengate::config::Upstream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bounds every test that could hang on the old code: a hang is a failure, not a timing.
const HANG: Duration = Duration::from_secs(60);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn bin() -> PathBuf {
    std::env::var_os("TOKENGATE_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tokengate")))
}

/// A `tokengate serve` child process; killed on drop.
struct Serve {
    child: Child,
    listen: SocketAddr,
    admin: SocketAddr,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Serve {
    /// Starts `tokengate serve` on `listen` (a fresh port when `None`), wrapped in `sh -c`
    /// with `prefix` (e.g. `ulimit -n 128;`), and waits until it accepts.
    fn start(
        listen: Option<SocketAddr>,
        prefix: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Serve {
        let listen = listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], free_port())));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let dir = tempfile::tempdir().unwrap();
        let stderr = dir.path().join("stderr.log");
        let mut args = vec![
            bin().display().to_string(),
            "serve".into(),
            "--upstream".into(),
            format!("postgres://127.0.0.1:{}?sslmode=disable", cluster().port()),
            "--listen".into(),
            listen.to_string(),
            "--admin".into(),
            admin.to_string(),
            "--workers".into(),
            "2".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
        let script = format!("{prefix} exec {}", quoted.join(" "));
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .env_remove("TOKENGATE_LOG")
            .env_remove("RUST_LOG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn tokengate serve");
        Serve {
            child,
            listen,
            admin,
            stderr,
            _dir: dir,
        }
    }

    async fn ready(mut self) -> Serve {
        for _ in 0..400 {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("tokengate exited {status}: {}", self.stderr_text());
            }
            if TcpStream::connect(self.admin).await.is_ok()
                && TcpStream::connect(self.listen).await.is_ok()
            {
                return self;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("tokengate did not start: {}", self.stderr_text());
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits (bounded) for the process to end after SIGTERM; returns its stderr.
    async fn stop(mut self) -> String {
        self.signal("TERM");
        for _ in 0..400 {
            if self.child.try_wait().ok().flatten().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.stderr_text()
    }

    /// Names of the process's threads.
    fn threads(&self) -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{}/task", self.pid())) else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
            .map(|s| s.trim().to_string())
            .collect()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn select_one(port: u16) -> Result<i32, tokio_postgres::Error> {
    let (client, conn) = pg_config(port, "trust_user", "")
        .connect(tokio_postgres::NoTls)
        .await?;
    tokio::spawn(conn);
    Ok(client.query_one("SELECT 1", &[]).await?.get(0))
}

/// An HTTP GET that gives up (as a failure) instead of hanging.
async fn http_get_bounded(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    tokio::time::timeout(Duration::from_secs(10), http_get(addr, path))
        .await
        .ok()
}

// ---- 6. SIGHUP in every mode ----------------------------------------------------------------

#[tokio::test]
async fn sighup_without_a_policy_keeps_serving() {
    let serve = Serve::start(None, "", &[], &[]).ready().await;
    assert_eq!(select_one(serve.listen.port()).await.unwrap(), 1);
    serve.signal("HUP");
    serve.signal("HUP");
    // Still serving after the signals have certainly been delivered and handled.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            select_one(serve.listen.port())
                .await
                .expect("still serving"),
            1
        );
    }
    let mut serve = serve;
    assert!(
        serve.child.try_wait().unwrap().is_none(),
        "SIGHUP ended the process: {}",
        serve.stderr_text()
    );
    let log = serve.stop().await;
    assert!(log.contains("SIGHUP"), "{log}");
}

// ---- 3. a second instance never shares the port ---------------------------------------------

#[tokio::test]
async fn a_second_instance_on_the_same_address_fails_to_start() {
    let first = Serve::start(None, "", &[], &[]).ready().await;
    let mut second = Serve::start(Some(first.listen), "", &[], &[]);
    let mut status = None;
    for _ in 0..400 {
        if let Some(s) = second.child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = status.unwrap_or_else(|| {
        panic!(
            "the second instance is running on {}: {}",
            first.listen,
            second.stderr_text()
        )
    });
    assert!(!status.success(), "{status}");
    let err = second.stderr_text();
    assert!(err.contains("in use"), "{err}");
    assert!(err.contains(&first.listen.to_string()), "{err}");
    // The first keeps all its workers and answers every connection.
    let threads = first.threads();
    for w in ["tokengate-w0", "tokengate-w1"] {
        assert!(threads.iter().any(|t| t == w), "{threads:?}");
    }
    for _ in 0..12 {
        assert_eq!(select_one(first.listen.port()).await.unwrap(), 1);
    }
}

// ---- 9. connection limit and file descriptors -----------------------------------------------

#[tokio::test]
async fn connections_over_the_limit_get_too_many_clients() {
    let proxy = proxy_with(|c| c.max_client_connections = 2).await;
    let a = connect(&pg_config(proxy.addr.port(), "trust_user", "")).await;
    let b = connect(&pg_config(proxy.addr.port(), "trust_user", "")).await;
    let err = pg_config(proxy.addr.port(), "trust_user", "")
        .connect(tokio_postgres::NoTls)
        .await
        .err()
        .expect("a third session is refused");
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "53300", "{db:?}");
    assert!(db.message().contains("too many clients"), "{db:?}");
    // psql (libpq, sslmode=prefer: SSLRequest first) gets the same error.
    let (ok, _, stderr) = psql(
        proxy.addr.port(),
        "trust_user",
        "",
        &["-c", "SELECT 1"],
        &[],
    );
    assert!(!ok);
    assert!(stderr.contains("too many clients"), "{stderr}");
    // The admitted sessions work, and a freed slot admits a new one.
    assert_eq!(
        a.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0),
        1
    );
    drop(b);
    assert!(
        eventually(10, async || select_one(proxy.addr.port()).await.is_ok()).await,
        "a slot was freed"
    );
}

#[tokio::test]
async fn health_endpoints_answer_when_file_descriptors_run_out() {
    let serve = Serve::start(None, "ulimit -n 128;", &[], &[]).ready().await;
    // Far more connections than 128 descriptors allow, each sending a startup packet.
    let mut held = Vec::new();
    let mut refused = 0;
    // Half send a startup packet (sessions, two descriptors each), half send nothing and
    // just hold a descriptor (slowloris).
    for i in 0..200 {
        let Ok(Ok(mut tcp)) =
            tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(serve.listen)).await
        else {
            continue;
        };
        if i < 100 {
            let _ = tcp
                .write_all(&startup_packet(
                    196_608,
                    &[("user", "trust_user"), ("database", DB)],
                ))
                .await;
        }
        held.push(tcp);
    }
    // Over-limit connections are answered 53300, as PostgreSQL does.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for tcp in held.iter_mut() {
        let mut buf = vec![0u8; 512];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(20), tcp.read(&mut buf)).await
            && n > 0
            && String::from_utf8_lossy(&buf[..n]).contains("53300")
        {
            refused += 1;
        }
    }
    for path in ["/healthz", "/readyz", "/healthz"] {
        let answer = http_get_bounded(serve.admin, path).await;
        let (status, body) =
            answer.unwrap_or_else(|| panic!("{path} did not answer: {}", serve.stderr_text()));
        if path == "/healthz" {
            assert_eq!((status, body.as_str()), (200, "ok\n"));
        } else {
            assert!([200, 503].contains(&status), "{status} {body}");
        }
    }
    assert!(refused > 0, "no connection was told 53300");
    let mut serve = serve;
    assert!(
        serve.child.try_wait().unwrap().is_none(),
        "the process died"
    );
    drop(held);
    assert!(
        eventually(20, async || select_one(serve.listen.port()).await.is_ok()).await,
        "serves again once connections close: {}",
        serve.stderr_text()
    );
}

// ---- 8. logs carry no literal values --------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_never_contain_statement_literals() {
    let keys = crm().keys.display().to_string();
    let policy_path = crm_policy_path();
    let policy = policy_path.to_str().unwrap();
    let serve = Serve::start(
        None,
        "",
        &[
            "--policy",
            policy,
            "--keys",
            &keys,
            "--catalog-user",
            "postgres",
        ],
        &[
            ("TOKENGATE_LOG", "trace,sqlparser=trace"),
            ("TOKENGATE_CATALOG_PASSWORD", SUPERUSER_PW),
        ],
    )
    .ready()
    .await;
    let port = serve.listen.port();
    let (client, conn) = crm_config(port, "support")
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let statements = [
        // Malformed: the parser's error names the offending literal.
        "SELECT 'UNIQUECANARY-555-12-3456' 'UNIQUECANARY-2' FROM customers",
        "SELECT email FROM customers WHERE id = 'UNIQUECANARY-3' +",
        "SELECT $q$UNIQUECANARY-4$q$ FROM FROM",
        // Valid, refused (a filter on a protected column) and allowed.
        "SELECT id FROM customers WHERE ssn = 'UNIQUECANARY-5'",
        "SELECT id FROM customers WHERE full_name = 'UNIQUECANARY-6' AND id = 987654321",
        "SELECT email FROM customers WHERE id = 1 OR 'UNIQUECANARY-7' = 'x'",
    ];
    for sql in statements {
        let _ = client.simple_query(sql).await;
        let _ = client.query(sql, &[]).await;
    }
    let admin_client = connect(&pg_config(port, "trust_user", "")).await;
    let _ = admin_client
        .simple_query("SELECT 'UNIQUECANARY-8' FROM FROM")
        .await;
    drop(client);
    drop(admin_client);
    let log = serve.stop().await;
    assert!(log.contains("statement refused"), "logging works: {log}");
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "trace level is on"
    );
    for (i, line) in log.lines().enumerate() {
        assert!(
            !line.contains("UNIQUECANARY") && !line.contains("987654321"),
            "line {i} carries a literal: {line}"
        );
    }
}

// ---- 4. catalog loads never hang sessions ---------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_view_base_table_does_not_block_new_sessions() {
    crm();
    let admin = cluster().pg.connect_admin(DB).await.unwrap();
    admin
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS robust_locked (id int);
             CREATE OR REPLACE VIEW robust_locked_view AS SELECT id FROM robust_locked;
             GRANT SELECT ON robust_locked, robust_locked_view TO PUBLIC;",
        )
        .await
        .unwrap();
    let keys = crm().keys.clone();
    let proxy = proxy_with(move |c| {
        c.policy = Some(crm_policy_path());
        c.keys = Some(keys);
        c.catalog_user = Some("postgres".into());
        c.catalog_password = Some(SUPERUSER_PW.into());
        c.catalog_ttl = Duration::from_millis(200);
        c.catalog_lock_timeout = Duration::from_secs(30);
        c.catalog_statement_timeout = Duration::from_secs(30);
    })
    .await;
    let port = proxy.addr.port();
    let app_admin = |port| {
        let mut c = pg_config(port, "app_admin", password("app_admin"));
        c.dbname(DB);
        c
    };
    // A first session loads the catalog of `app`.
    let first = connect(&app_admin(port)).await;
    assert_eq!(
        first
            .query_one("SELECT count(*) FROM items", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        1000
    );
    // Another connection holds ACCESS EXCLUSIVE on the view's base table: pg_get_viewdef
    // (in every catalog load) now blocks until the lock goes.
    let locker = cluster().pg.connect_admin(DB).await.unwrap();
    locker
        .batch_execute("BEGIN; LOCK TABLE robust_locked IN ACCESS EXCLUSIVE MODE;")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await; // the snapshot's TTL is over
    // New sessions of a clear role on unrelated tables answer while the lock is still held.
    let answered = tokio::time::timeout(HANG, async {
        for _ in 0..3 {
            let s = connect(&app_admin(port)).await;
            let n: i64 = s
                .query_one("SELECT count(*) FROM items", &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(n, 1000);
        }
    })
    .await;
    locker.batch_execute("ROLLBACK").await.unwrap();
    assert!(answered.is_ok(), "new sessions waited for the catalog lock");
}

/// A forwarder to the shared PostgreSQL that never forwards a connection whose first packet
/// contains `stall_marker`, and stops forwarding every connection while `blackhole` is set
/// (bytes are held, sockets stay open: a silent network path).
struct Stall {
    addr: SocketAddr,
    blackhole: Arc<AtomicBool>,
    stalled: Arc<AtomicUsize>,
}

impl Stall {
    async fn start(stall_marker: Option<&'static [u8]>) -> Stall {
        let target = SocketAddr::from(([127, 0, 0, 1], cluster().port()));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let blackhole = Arc::new(AtomicBool::new(false));
        let stalled = Arc::new(AtomicUsize::new(0));
        let (bh, st) = (blackhole.clone(), stalled.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (bh, st) = (bh.clone(), st.clone());
                tokio::spawn(async move {
                    let (mut cr, mut cw) = client.into_split();
                    let mut first = vec![0u8; 8192];
                    let Ok(n) = cr.read(&mut first).await else {
                        return;
                    };
                    first.truncate(n);
                    // An SSLRequest comes alone; the startup packet follows.
                    if first.len() == 8 && first[4..8] == [4, 210, 22, 47] {
                        if cw.write_all(b"N").await.is_err() {
                            return;
                        }
                        let mut more = vec![0u8; 8192];
                        let Ok(m) = cr.read(&mut more).await else {
                            return;
                        };
                        first = more[..m].to_vec();
                    }
                    if let Some(marker) = stall_marker
                        && first.windows(marker.len()).any(|w| w == marker)
                    {
                        st.fetch_add(1, Ordering::SeqCst);
                        std::future::pending::<()>().await;
                    }
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (sr, mut sw) = server.into_split();
                    if sw.write_all(&first).await.is_err() {
                        return;
                    }
                    let pump = |mut from: tokio::net::tcp::OwnedReadHalf,
                                mut to: tokio::net::tcp::OwnedWriteHalf,
                                bh: Arc<AtomicBool>| async move {
                        let mut buf = vec![0u8; 16384];
                        loop {
                            let Ok(n) = from.read(&mut buf).await else {
                                return;
                            };
                            if n == 0 {
                                return;
                            }
                            while bh.load(Ordering::SeqCst) {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            if to.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    tokio::join!(pump(cr, sw, bh.clone()), pump(sr, cw, bh));
                });
            }
        });
        Stall {
            addr,
            blackhole,
            stalled,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_catalog_connection_is_an_error_not_a_hang() {
    crm();
    let stall = Stall::start(Some(b"tokengate-catalog")).await;
    let (keys, fwd) = (crm().keys.clone(), stall.addr);
    let proxy = proxy_with(move |c| {
        c.upstream = Upstream::parse(&format!("postgres://{fwd}?sslmode=disable")).unwrap();
        c.policy = Some(crm_policy_path());
        c.keys = Some(keys);
        c.catalog_user = Some("postgres".into());
        c.catalog_password = Some(SUPERUSER_PW.into());
        c.connect_timeout = Duration::from_secs(2);
        c.catalog_statement_timeout = Duration::from_secs(2);
    })
    .await;
    let result = tokio::time::timeout(HANG, async {
        let s = via(&proxy, "support").await;
        s.client
            .simple_query("SELECT email FROM customers WHERE id = 1")
            .await
    })
    .await
    .expect("the session hung on a stalled catalog connection");
    let err = result.expect_err("no catalog, no answer for a restricted role");
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "42501", "{db:?}");
    assert!(db.message().contains("TG111"), "{db:?}");
    assert!(
        stall.stalled.load(Ordering::SeqCst) >= 1,
        "the catalog connection stalled"
    );
}

// ---- 5. a dead upstream is an upstream error ------------------------------------------------

#[tokio::test]
async fn a_blackholed_upstream_ends_the_query_with_an_upstream_error() {
    let stall = Stall::start(None).await;
    let fwd = stall.addr;
    let proxy = proxy_with(move |c| {
        c.upstream = Upstream::parse(&format!("postgres://{fwd}?sslmode=disable")).unwrap();
        c.query_timeout = Some(Duration::from_secs(1));
    })
    .await;
    let (mut raw, _) = Raw::login(proxy.addr, "trust_user", &[]).await;
    assert!(raw.query("SELECT 1").await.iter().any(|m| m.tag == b'D'));
    stall.blackhole.store(true, Ordering::SeqCst);
    let msgs = tokio::time::timeout(HANG, raw.query("SELECT 2"))
        .await
        .expect("the query hung on a blackholed upstream");
    let e = msgs
        .iter()
        .find(|m| m.tag == b'E')
        .unwrap_or_else(|| panic!("an ErrorResponse, not a dropped socket: {msgs:?}"));
    assert_eq!(e.field(b'C').as_deref(), Some("08006"), "{e:?}");
    assert_eq!(e.field(b'S').as_deref(), Some("FATAL"), "{e:?}");
    assert!(e.field(b'M').unwrap_or_default().contains("TG036"), "{e:?}");
    stall.blackhole.store(false, Ordering::SeqCst);
    let text = metrics_text(&proxy).await;
    assert!(
        metric(&text, "tokengate_upstream_errors_total") >= 1.0,
        "{text}"
    );
}

// ---- 2. a half-written policy never opens a column ------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_place_truncated_policy_writes_never_leak() {
    crm();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    let full = crm_policy_text();
    std::fs::write(&path, &full).unwrap();
    let proxy = crm_proxy_with_policy(path.clone()).await;
    let admin = direct("app_admin").await;
    let secrets: std::collections::HashSet<String> = admin
        .client
        .query(
            "SELECT ssn FROM customers UNION ALL SELECT email FROM customers",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let done = Arc::new(AtomicBool::new(false));
    let (leaks, answers) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut readers = Vec::new();
    for _ in 0..2 {
        let s = via(&proxy, "support").await;
        let (done, leaks, answers, secrets) = (
            done.clone(),
            leaks.clone(),
            answers.clone(),
            secrets.clone(),
        );
        readers.push(tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                if let Ok(rows) = s
                    .client
                    .query("SELECT ssn, email FROM customers", &[])
                    .await
                {
                    answers.fetch_add(1, Ordering::SeqCst);
                    for row in rows {
                        for i in 0..2 {
                            let v: Option<String> = row.get(i);
                            if v.is_some_and(|v| secrets.contains(&v)) {
                                leaks.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    }
                }
            }
        }));
    }
    // Cut the file in place at points all through it; some cuts stay long enough for any
    // settle window, then the whole file comes back.
    let cuts: Vec<usize> = (1..=24).map(|i| full.len() * i / 25).collect();
    for (i, cut) in cuts.iter().enumerate() {
        std::fs::write(&path, &full.as_bytes()[..*cut]).unwrap();
        let hold = if i % 3 == 0 { 1200 } else { 150 };
        tokio::time::sleep(Duration::from_millis(hold)).await;
        std::fs::write(&path, &full).unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    done.store(true, Ordering::SeqCst);
    for r in readers {
        r.await.unwrap();
    }
    assert!(answers.load(Ordering::SeqCst) > 10, "the readers ran");
    assert_eq!(
        leaks.load(Ordering::SeqCst),
        0,
        "plaintext values reached a restricted role"
    );
    let store = proxy.context.policy.as_ref().unwrap();
    assert!(
        store.current().roles().len() >= 5,
        "the whole policy is in force"
    );
}

/// Writes `text` atomically next to `path` (used by the weakening test).
fn save(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weakening_edit_waits_for_an_explicit_reload() {
    crm();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    let full = crm_policy_text();
    std::fs::write(&path, &full).unwrap();
    let proxy = crm_proxy_with_policy(path.clone()).await;
    let support_rule = "support:   { pii: mask, financial: mask, health: deny }";
    assert!(full.contains(support_rule));
    save(
        &path,
        &full.replace(support_rule, "support:   { default: clear }"),
    );
    let series = "tokengate_policy_reloads_total{result=\"held\"}";
    assert!(metric_reaching(&proxy, series, 1.0).await >= 1.0, "held");
    let s = via(&proxy, "support").await;
    let ssn: String = s
        .client
        .query_one("SELECT ssn FROM customers WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert!(ssn.starts_with("***-**-"), "still masked: {ssn}");
    // The operator's explicit reload applies it.
    let store = proxy.context.policy.clone().unwrap();
    let generation = tokio::task::spawn_blocking(move || store.reload_now().unwrap())
        .await
        .unwrap();
    assert_eq!(generation, 2);
    let clear: String = s
        .client
        .query_one("SELECT ssn FROM customers WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        !clear.starts_with("***"),
        "applied by the explicit reload: {clear}"
    );
}

// ---- 7. audit records are durable before the client sees success ----------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_fsync_always_the_record_is_on_disk_before_ready_for_query() {
    use tokengate::protect::keys::{Key, KeyRing};
    crm();
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.json");
    let mut ring = KeyRing::generate("default");
    ring.insert("audit", 1, Key::generate());
    ring.write_new(&keys, false).unwrap();
    let log = dir.path().join("audit.log");
    let (k, l) = (keys.clone(), log.clone());
    let proxy = proxy_with(move |c| {
        c.policy = Some(crm_policy_path());
        c.keys = Some(k);
        c.catalog_user = Some("postgres".into());
        c.catalog_password = Some(SUPERUSER_PW.into());
        c.audit = Some(tokengate::audit::AuditConfig {
            fsync: tokengate::audit::FsyncMode::Always,
            ..tokengate::audit::AuditConfig::new(l)
        });
    })
    .await;
    let s = via(&proxy, "support").await;
    let count = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count()
    };
    for i in 0..100 {
        // Simple and extended protocol, each an audited statement (a protected column).
        if i % 2 == 0 {
            s.client
                .simple_query(&format!("SELECT email FROM customers WHERE id = {}", i + 1))
                .await
                .unwrap();
        } else {
            s.client
                .query("SELECT email FROM customers WHERE id = $1", &[&(i + 1)])
                .await
                .unwrap();
        }
        // Read at once, without flushing the log: the record must already be there.
        assert_eq!(
            count(),
            i as usize + 1,
            "statement {i} finished before its record was written"
        );
    }
}

/// `ss` lines for established TCP sockets matching `filter`, with their timers.
fn sockets(filter: &str) -> String {
    let out = Command::new("ss")
        .args(["-tnoH", "state", "established", filter])
        .output()
        .expect("run ss");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn client_and_upstream_sockets_have_tcp_keepalive() {
    let stall = Stall::start(None).await;
    let fwd = stall.addr;
    let proxy = proxy_with(move |c| {
        c.upstream = Upstream::parse(&format!("postgres://{fwd}?sslmode=disable")).unwrap();
    })
    .await;
    let client = connect(&pg_config(proxy.addr.port(), "trust_user", "")).await;
    assert_eq!(
        client
            .query_one("SELECT 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
    // tokengate's end of the client connection, and its connection to the upstream.
    // A socket shows its keepalive timer once idle (no data in flight).
    let (mut client_leg, mut upstream_leg) = (String::new(), String::new());
    let both = eventually(10, async || {
        client_leg = sockets(&format!("( sport = :{} )", proxy.addr.port()));
        upstream_leg = sockets(&format!("( dport = :{} )", fwd.port()));
        client_leg.contains("keepalive") && upstream_leg.contains("keepalive")
    })
    .await;
    assert!(
        both,
        "client leg: {client_leg}\nupstream leg: {upstream_leg}"
    );
}

#[tokio::test]
async fn the_soft_open_files_limit_is_raised_to_the_hard_one() {
    let serve = Serve::start(None, "ulimit -S -n 256;", &[], &[])
        .ready()
        .await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", serve.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    // "Max open files  SOFT  HARD  files"
    assert_eq!(fields[3], fields[4], "{line}");
    assert_ne!(fields[3], "256", "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_catalog_load_survives_a_locked_view_base_table() {
    crm();
    let admin = cluster().pg.connect_admin(DB).await.unwrap();
    admin
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS robust_locked2 (id int, secret text);
             CREATE OR REPLACE VIEW robust_locked2_view AS SELECT id, secret FROM robust_locked2;
             GRANT SELECT ON robust_locked2, robust_locked2_view TO PUBLIC;",
        )
        .await
        .unwrap();
    let locker = cluster().pg.connect_admin(DB).await.unwrap();
    locker
        .batch_execute("BEGIN; LOCK TABLE robust_locked2 IN ACCESS EXCLUSIVE MODE;")
        .await
        .unwrap();
    // A fresh tokengate: no snapshot yet, and the view's definition cannot be read.
    let keys = crm().keys.clone();
    let proxy = proxy_with(move |c| {
        c.policy = Some(crm_policy_path());
        c.keys = Some(keys);
        c.catalog_user = Some("postgres".into());
        c.catalog_password = Some(SUPERUSER_PW.into());
        c.catalog_lock_timeout = Duration::from_millis(300);
    })
    .await;
    let session = |role: &'static str| {
        let mut c = pg_config(proxy.addr.port(), role, password(role));
        c.dbname(DB);
        c
    };
    let outcome = tokio::time::timeout(HANG, async {
        // A clear role and a restricted one both work on unrelated tables.
        for role in ["app_admin", "support"] {
            let s = connect(&session(role)).await;
            let n: i64 = s
                .query_one("SELECT count(*) FROM items", &[])
                .await
                .unwrap_or_else(|e| panic!("{role}: {e}"))
                .get(0);
            assert_eq!(n, 1000);
        }
        // The restricted role cannot read the view whose definition is unknown.
        let s = connect(&session("support")).await;
        s.simple_query("SELECT secret FROM robust_locked2_view")
            .await
            .expect_err("a view tokengate cannot see into is refused")
    })
    .await;
    locker.batch_execute("ROLLBACK").await.unwrap();
    let err = outcome.expect("sessions waited for the lock");
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "42501", "{db:?}");
    assert!(db.message().starts_with("tokengate TG"), "{db:?}");
}

#[tokio::test]
async fn idle_sessions_are_closed_after_idle_timeout() {
    let proxy = proxy_with(|c| c.idle_timeout = Some(Duration::from_secs(1))).await;
    let (mut raw, _) = Raw::login(proxy.addr, "trust_user", &[]).await;
    assert!(raw.query("SELECT 1").await.iter().any(|m| m.tag == b'D'));
    // A statement longer than the idle timeout is not idle.
    let msgs = raw.query("SELECT pg_sleep(1.5)").await;
    assert!(msgs.iter().any(|m| m.tag == b'D'), "{msgs:?}");
    // Then nothing: closed with 57P05.
    let m = raw.recv().await.expect("an ErrorResponse");
    assert_eq!(m.tag, b'E', "{m:?}");
    assert_eq!(m.field(b'C').as_deref(), Some("57P05"), "{m:?}");
    assert!(m.field(b'M').unwrap_or_default().contains("TG037"), "{m:?}");
    assert_eq!(raw.recv().await, None, "closed");
}

#[tokio::test]
async fn an_upstream_stalled_during_startup_is_an_upstream_error() {
    let stall = Stall::start(None).await;
    stall.blackhole.store(true, Ordering::SeqCst);
    let fwd = stall.addr;
    let proxy = proxy_with(move |c| {
        c.upstream = Upstream::parse(&format!("postgres://{fwd}?sslmode=disable")).unwrap();
        c.startup_timeout = Duration::from_secs(1);
    })
    .await;
    let mut raw = Raw::tcp(proxy.addr).await;
    raw.send(&startup_packet(
        196_608,
        &[("user", "trust_user"), ("database", DB)],
    ))
    .await;
    let m = raw.recv().await.expect("an ErrorResponse");
    assert_eq!(m.tag, b'E', "{m:?}");
    // The client did its part: the upstream's silence is not the client's protocol error.
    assert_eq!(m.field(b'C').as_deref(), Some("08006"), "{m:?}");
    assert!(m.field(b'M').unwrap_or_default().contains("TG036"), "{m:?}");
}
