//! Load and fault soak (issue 12), not a timed benchmark and not run in CI: `SESSIONS`
//! sessions (default 200) query through `tokengate serve --policy` for `SECONDS` (default
//! 180) while
//! - at 1/4 of the run the policy file is swapped in place for a stronger one (the watcher
//!   applies it), then the original is written back and applied by SIGHUP (it is weaker, so
//!   the watcher holds it);
//! - at 1/2 the upstream "restarts": every backend is terminated (FATAL 57P01, as on a
//!   restart) and the network path refuses new connections for 3 s.
//!
//! It counts leaks (a plaintext protected value received by the restricted role), errors by
//! SQLSTATE (the documented ones around the restart: 08001/08006/57P01/TG111, and closed
//! connections; anything else is unexpected), statements, reconnects, and tokengate's file
//! descriptors and RSS before and after. Exits 1 on any leak or unexpected error.
//!
//! Run: `cargo bench --bench load` (env: SESSIONS=200, SECONDS=180).
mod common;

use common::{env_or, start_tokengate};
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokengate::embedded_pg::{EmbeddedPostgres, PgOptions};
use tokio::net::{TcpListener, TcpStream};

const POLICY: &str = "version: 1
labels:
  email: { class: pii, token: email, mask: email }
  ssn:   { class: pii, token: digits, mask: \"***-**-####\" }
columns:
  public.people.email: email
  public.people.ssn: ssn
roles:
  masker: { pii: mask }
  admin: { default: clear }
  \"*\": { default: deny }
";

const ROWS: u64 = 10_000;

/// Errors by SQLSTATE (or "closed"/"other"), split into documented and unexpected.
#[derive(Default)]
struct Tally {
    documented: BTreeMap<String, u64>,
    unexpected: BTreeMap<String, String>,
    unexpected_count: u64,
}

fn main() {
    let sessions = env_or("SESSIONS", 200) as usize;
    let seconds = env_or("SECONDS", 180);
    let pg = EmbeddedPostgres::start(&PgOptions {
        superuser_password: "load-superuser-pw".into(),
        settings: vec![("max_connections".into(), "400".into())],
        ..PgOptions::default()
    })
    .expect("start PostgreSQL");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let secrets: HashSet<String> = rt.block_on(async {
        pg.execute("postgres", "CREATE DATABASE load").await.unwrap();
        pg.execute(
            "load",
            &format!(
                "CREATE TABLE people AS SELECT g AS id, 'user' || g || '@example.com' AS email,
                   lpad((100 + g % 800)::text, 3, '0') || '-' || lpad((10 + g % 90)::text, 2, '0') || '-' || lpad((g % 10000)::text, 4, '0') AS ssn,
                   'city ' || (g % 50) AS city
                 FROM generate_series(1, {ROWS}) g;
                 ALTER TABLE people ADD PRIMARY KEY (id);
                 CREATE ROLE masker LOGIN PASSWORD 'load-pw';
                 CREATE ROLE admin LOGIN PASSWORD 'load-pw';
                 GRANT SELECT ON people TO masker, admin;"
            ),
        )
        .await
        .unwrap();
        let admin = pg.connect_admin("load").await.unwrap();
        let mut all = HashSet::new();
        for row in admin
            .query("SELECT email FROM people UNION ALL SELECT ssn FROM people", &[])
            .await
            .unwrap()
        {
            all.insert(row.get::<_, String>(0));
        }
        all
    });
    let forwarder = rt.block_on(Forwarder::start(SocketAddr::from((
        [127, 0, 0, 1],
        pg.port(),
    ))));
    let dir = pg.socket_dir();
    let policy = dir.join("load-policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let keys = dir.join("load-keys.json");
    tokengate::protect::KeyRing::generate("default")
        .write_new(&keys, true)
        .unwrap();
    let (mut tg, port) = start_tokengate(
        forwarder.addr.port(),
        &[
            "--policy",
            &policy.display().to_string(),
            "--keys",
            &keys.display().to_string(),
            "--catalog-user",
            "postgres",
            "--catalog-password",
            pg.superuser_password(),
        ],
    );
    let pid = tg.id();
    let (fds_before, rss_before) = (fd_count(pid), rss_kib(pid));

    let stop = Arc::new(AtomicBool::new(false));
    let statements = Arc::new(AtomicU64::new(0));
    let leaks = Arc::new(AtomicU64::new(0));
    let reconnects = Arc::new(AtomicU64::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let secrets = Arc::new(secrets);
    let started = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..sessions {
            let role = if i % 10 == 9 { "admin" } else { "masker" };
            let (stop, statements, leaks, reconnects, tally, secrets) = (
                stop.clone(),
                statements.clone(),
                leaks.clone(),
                reconnects.clone(),
                tally.clone(),
                secrets.clone(),
            );
            tasks.push(tokio::spawn(async move {
                session_loop(
                    i, port, role, stop, statements, leaks, reconnects, tally, secrets,
                )
                .await
            }));
        }
        let total = Duration::from_secs(seconds);
        // Policy swap: stronger (watcher), then back (weaker: SIGHUP).
        tokio::time::sleep(total / 4).await;
        std::fs::write(
            &policy,
            POLICY.replace("masker: { pii: mask }", "masker: { pii: null }"),
        )
        .unwrap();
        println!(
            "{:>6.1}s policy swapped in place (stronger: null)",
            started.elapsed().as_secs_f64()
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
        std::fs::write(&policy, POLICY).unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let _ = std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status();
        println!(
            "{:>6.1}s original policy written back, applied by SIGHUP",
            started.elapsed().as_secs_f64()
        );
        // Upstream restart.
        tokio::time::sleep((total / 2).saturating_sub(started.elapsed())).await;
        let admin = pg.connect_admin("postgres").await.unwrap();
        forwarder.up.store(false, Ordering::SeqCst);
        let _ = admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                  WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
                &[],
            )
            .await;
        println!(
            "{:>6.1}s upstream restart: backends terminated, refusing for 3 s",
            started.elapsed().as_secs_f64()
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        forwarder.up.store(true, Ordering::SeqCst);
        tokio::time::sleep(total.saturating_sub(started.elapsed())).await;
        stop.store(true, Ordering::SeqCst);
        for t in tasks {
            let _ = t.await;
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    let (fds_after, rss_after) = (fd_count(pid), rss_kib(pid));
    let _ = tg.kill();
    let _ = tg.wait();

    let tally = tally.lock().unwrap();
    let n = statements.load(Ordering::SeqCst);
    println!(
        "sessions {sessions}, {seconds} s: {n} statements ({:.0}/s)",
        n as f64 / seconds as f64
    );
    println!(
        "leaks (plaintext protected values to the restricted role): {}",
        leaks.load(Ordering::SeqCst)
    );
    println!("reconnects: {}", reconnects.load(Ordering::SeqCst));
    println!("documented errors: {:?}", tally.documented);
    println!(
        "unexpected errors: {} {:?}",
        tally.unexpected_count, tally.unexpected
    );
    println!(
        "tokengate fds {fds_before} -> {fds_after}, RSS {rss_before} -> {rss_after} KiB (idle after the run)"
    );
    if leaks.load(Ordering::SeqCst) > 0 || tally.unexpected_count > 0 {
        std::process::exit(1);
    }
}

#[allow(clippy::too_many_arguments)]
async fn session_loop(
    i: usize,
    port: u16,
    role: &str,
    stop: Arc<AtomicBool>,
    statements: Arc<AtomicU64>,
    leaks: Arc<AtomicU64>,
    reconnects: Arc<AtomicU64>,
    tally: Arc<Mutex<Tally>>,
    secrets: Arc<HashSet<String>>,
) {
    let mut n: u64 = i as u64 * 7919;
    while !stop.load(Ordering::SeqCst) {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(port)
            .user(role)
            .password("load-pw")
            .dbname("load")
            .connect_timeout(Duration::from_secs(10));
        let client = match config.connect(tokio_postgres::NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(conn);
                client
            }
            Err(e) => {
                record(&tally, &e, "connect");
                tokio::time::sleep(Duration::from_millis(200)).await;
                reconnects.fetch_add(1, Ordering::SeqCst);
                continue;
            }
        };
        let Ok(by_id) = client
            .prepare("SELECT id, email, ssn FROM people WHERE id = $1")
            .await
        else {
            reconnects.fetch_add(1, Ordering::SeqCst);
            continue;
        };
        while !stop.load(Ordering::SeqCst) {
            n = n
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let id = (n >> 33) % ROWS + 1;
            let values: Result<Vec<Option<String>>, tokio_postgres::Error> = match n % 3 {
                0 => client.query(&by_id, &[&(id as i32)]).await.map(|rows| {
                    rows.iter()
                        .flat_map(|r| [r.get::<_, Option<String>>(1), r.get(2)])
                        .collect()
                }),
                1 => client
                    .simple_query(&format!("SELECT email, ssn FROM people WHERE id = {id}"))
                    .await
                    .map(|msgs| {
                        msgs.iter()
                            .filter_map(|m| match m {
                                tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
                                _ => None,
                            })
                            .flat_map(|r| [r.get(0).map(String::from), r.get(1).map(String::from)])
                            .collect()
                    }),
                _ => client
                    .query(
                        "SELECT email FROM people WHERE id > $1 ORDER BY id LIMIT 20",
                        &[&(id as i32)],
                    )
                    .await
                    .map(|rows| rows.iter().map(|r| r.get(0)).collect()),
            };
            statements.fetch_add(1, Ordering::SeqCst);
            match values {
                Ok(values) => {
                    if role == "masker" {
                        let leaked = values
                            .iter()
                            .flatten()
                            .filter(|v| secrets.contains(*v))
                            .count();
                        leaks.fetch_add(leaked as u64, Ordering::SeqCst);
                    }
                }
                Err(e) => {
                    record(&tally, &e, "statement");
                    if client.is_closed() {
                        reconnects.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                }
            }
        }
    }
}

/// Documented: connection-class errors and terminations (the restart), a closed connection,
/// TG111 while the catalog is unreachable. Anything else is unexpected.
fn record(tally: &Mutex<Tally>, e: &tokio_postgres::Error, place: &str) {
    let (key, documented) = match e.as_db_error() {
        Some(db) => {
            let code = db.code().code().to_string();
            let ok = code.starts_with("08")
                || code == "57P01"
                || (code == "42501" && db.message().contains("TG111"));
            (
                format!("{code} {}", db.message().split(':').next().unwrap_or("")),
                ok,
            )
        }
        None if e.is_closed() => ("closed".to_string(), true),
        None => (format!("{place}: {e}"), place == "connect"),
    };
    let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
    if documented {
        *t.documented.entry(key).or_default() += 1;
    } else {
        t.unexpected_count += 1;
        t.unexpected.entry(key).or_insert_with(|| e.to_string());
    }
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// The network path to the upstream: refuses new connections while `up` is false.
struct Forwarder {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
}

impl Forwarder {
    async fn start(target: SocketAddr) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let up2 = up.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    continue;
                }
                tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Forwarder { addr, up }
    }
}
