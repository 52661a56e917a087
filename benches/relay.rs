//! Relay benchmark: pgbench -S (simple, extended, prepared; -c 8 -j 2) and a 1,000,000-row
//! SELECT, each run directly against PostgreSQL and through a `tokengate serve` process,
//! interleaved, several rounds. Reports TPS ratios and tokengate's CPU per transaction and per
//! row, read from /proc/PID/stat (utime + stime), as medians over the rounds.
//!
//! When `pgbouncer` is on PATH (Debian's package), PgBouncer in session mode runs as a third
//! contender in the same rounds, so tokengate's CPU cost has a same-machine, same-run baseline.
//!
//! Run: `cargo bench --bench relay` (env: ROUNDS=5, SECONDS=5, SCALE=10, ROWS=1000000;
//! TOKENGATE_BENCH_BIN=path runs that tokengate binary instead of the one just built).
//! `TLS=1` puts TLS on both legs for every contender: PostgreSQL with `ssl=on`, clients with
//! `sslmode=require`, tokengate and PgBouncer terminating TLS and connecting upstream with
//! `sslmode=require` (direct runs are TLS too).
mod common;

use common::{bench_tls, cpu_seconds, env_or, median, pgbench, psql_read, start_tokengate_sslmode};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokengate::embedded_pg::{EmbeddedPostgres, PgOptions};

/// Starts PgBouncer (session pooling, like tokengate's one upstream connection per client)
/// in front of `pg`, as the PostgreSQL OS user because PgBouncer refuses to run as root.
fn start_pgbouncer(pg: &EmbeddedPostgres, tls: Option<&Tls>) -> Option<(Child, u16)> {
    use std::os::unix::process::CommandExt;
    let binary = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let dir = pg.socket_dir();
    std::fs::write(
        dir.join("userlist.txt"),
        format!("\"postgres\" \"{}\"\n", pg.superuser_password()),
    )
    .ok()?;
    let mut ini = format!(
        "[databases]\nbench = host=127.0.0.1 port={} dbname=bench\n[pgbouncer]\nlisten_addr = 127.0.0.1\n\
         listen_port = {port}\nunix_socket_dir =\nauth_type = plain\nauth_file = {}\npool_mode = session\n\
         max_client_conn = 200\ndefault_pool_size = 50\nlogfile = {}\n",
        pg.port(),
        dir.join("userlist.txt").display(),
        dir.join("pgbouncer.log").display()
    );
    if let Some(tls) = tls {
        ini.push_str(&format!(
            "client_tls_sslmode = require\nclient_tls_cert_file = {}\nclient_tls_key_file = {}\n\
             server_tls_sslmode = require\n",
            tls.cert.display(),
            tls.key.display()
        ));
    }
    std::fs::write(dir.join("pgbouncer.ini"), ini).ok()?;
    let mut cmd = Command::new(binary);
    cmd.arg(dir.join("pgbouncer.ini"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Ok(Some((uid, gid))) = tokengate::embedded_pg::server_identity() {
        cmd.uid(uid).gid(gid);
    }
    let child = cmd.spawn().ok()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some((child, port))
}

/// Certificate and key files for client-leg TLS (PostgreSQL gets the same pair).
struct Tls {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    pem: (String, String),
}

fn make_tls(dir: &std::path::Path) -> Tls {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    let (cert_path, key_path) = (dir.join("bench.crt"), dir.join("bench.key"));
    std::fs::write(&cert_path, cert.pem()).expect("write cert");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    Tls {
        cert: cert_path,
        key: key_path,
        pem: (cert.pem(), key.serialize_pem()),
    }
}

fn main() {
    // `cargo bench` passes --bench; nothing else to parse.
    let rounds = env_or("ROUNDS", 5) as usize;
    let seconds = env_or("SECONDS", 5);
    let scale = env_or("SCALE", 10);
    let rows = env_or("ROWS", 1_000_000);
    // Readable by PgBouncer, which runs as the PostgreSQL OS user.
    let tls_dir = tempfile::Builder::new()
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .tempdir()
        .expect("tempdir");
    let tls = bench_tls().then(|| make_tls(tls_dir.path()));
    let pg = EmbeddedPostgres::start(&PgOptions {
        superuser_password: "bench-pw".into(),
        settings: vec![("shared_buffers".into(), "256MB".into())],
        ssl: tls.as_ref().map(|t| t.pem.clone()),
        ..PgOptions::default()
    })
    .expect("start PostgreSQL");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        pg.execute("postgres", "CREATE DATABASE bench")
            .await
            .unwrap();
        pg.execute(
            "bench",
            &format!(
                "CREATE TABLE bulk AS SELECT g AS id, md5(g::text) AS a, 'customer-' || g AS b,
                   now() AS c, g * 1.5 AS d FROM generate_series(1, {rows}) g"
            ),
        )
        .await
        .unwrap();
        pg.execute("bench", "VACUUM ANALYZE bulk").await.unwrap();
    });
    let init = Command::new(pg.bindir().join("pgbench"))
        .args([
            "-i",
            "-q",
            "-s",
            &scale.to_string(),
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port().to_string(),
            "-U",
            "postgres",
            "bench",
        ])
        .env("PGPASSWORD", pg.superuser_password())
        .output()
        .expect("pgbench -i");
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let (mut tg, tg_port) = match &tls {
        Some(t) => start_tokengate_sslmode(
            pg.port(),
            "require",
            &[
                "--tls-cert",
                t.cert.to_str().unwrap_or_default(),
                "--tls-key",
                t.key.to_str().unwrap_or_default(),
            ],
        ),
        None => start_tokengate_sslmode(pg.port(), "disable", &[]),
    };
    let pid = tg.id();
    let mut bouncer = start_pgbouncer(&pg, tls.as_ref());
    if tls.is_some() {
        println!("TLS on both legs for every contender");
    }
    println!(
        "tokengate relay benchmark: {rounds} rounds x {seconds}s, pgbench scale {scale}, {rows} rows; tokengate pid {pid}"
    );
    match &bouncer {
        Some((b, port)) => println!("PgBouncer baseline: pid {} on port {port}", b.id()),
        None => println!("PgBouncer not found: no baseline (apt-get install pgbouncer)"),
    }
    let mut bouncer_us: Vec<Vec<f64>> = vec![Vec::new(); 3];
    let mut bouncer_ns_per_row = Vec::new();

    let modes = ["simple", "extended", "prepared"];
    let mut tps_ratio: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    let mut cpu_us: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    let mut bulk_ratio = Vec::new();
    let mut ns_per_row = Vec::new();
    for round in 1..=rounds {
        for (i, mode) in modes.iter().enumerate() {
            let direct = pgbench(&pg, pg.port(), "postgres", &["-S"], mode, seconds);
            let before = cpu_seconds(pid);
            let via = pgbench(&pg, tg_port, "postgres", &["-S"], mode, seconds);
            let cpu = cpu_seconds(pid) - before;
            tps_ratio[i].push(via.tps / direct.tps);
            cpu_us[i].push(cpu / via.transactions * 1e6);
            println!(
                "round {round} {mode:>8}: direct {:>8.0} tps, via tokengate {:>8.0} tps (ratio {:.3}), tokengate CPU {:.1} us/txn",
                direct.tps,
                via.tps,
                via.tps / direct.tps,
                cpu / via.transactions * 1e6
            );
            if let Some((b, port)) = &bouncer {
                let before = cpu_seconds(b.id());
                let run = pgbench(&pg, *port, "postgres", &["-S"], mode, seconds);
                let cpu = cpu_seconds(b.id()) - before;
                bouncer_us[i].push(cpu / run.transactions * 1e6);
                println!(
                    "round {round} {mode:>8}: via PgBouncer {:>8.0} tps, PgBouncer CPU {:.1} us/txn",
                    run.tps,
                    cpu / run.transactions * 1e6
                );
            }
        }
        let direct = psql_read(&pg, pg.port(), "postgres", "SELECT * FROM bulk");
        let before = cpu_seconds(pid);
        let via = psql_read(&pg, tg_port, "postgres", "SELECT * FROM bulk");
        let cpu = cpu_seconds(pid) - before;
        bulk_ratio.push(direct / via);
        ns_per_row.push(cpu / rows as f64 * 1e9);
        if let Some((b, port)) = &bouncer {
            let before = cpu_seconds(b.id());
            psql_read(&pg, *port, "postgres", "SELECT * FROM bulk");
            bouncer_ns_per_row.push((cpu_seconds(b.id()) - before) / rows as f64 * 1e9);
        }
        println!(
            "round {round}     bulk: direct {direct:.2}s, via tokengate {via:.2}s (rows/s ratio {:.3}), tokengate CPU {:.0} ns/row",
            direct / via,
            cpu / rows as f64 * 1e9
        );
    }
    let _ = tg.kill();
    let _ = tg.wait();
    if let Some((b, _)) = &mut bouncer {
        let _ = b.kill();
        let _ = b.wait();
    }
    let baseline = |v: &Vec<f64>, unit: &str| {
        if v.is_empty() {
            "n/a".to_string()
        } else {
            format!("{:.1} {unit}", median(v.clone()))
        }
    };
    println!("\nMedians over {rounds} rounds:\n");
    println!(
        "| workload | throughput via tokengate / direct | tokengate CPU | PgBouncer 1.18 CPU (same run) |"
    );
    println!("|---|---|---|---|");
    for (i, mode) in modes.iter().enumerate() {
        println!(
            "| pgbench -S -M {mode} -c 8 -j 2 | {:.3} | {:.1} µs/txn | {} |",
            median(tps_ratio[i].clone()),
            median(cpu_us[i].clone()),
            baseline(&bouncer_us[i], "µs/txn")
        );
    }
    println!(
        "| SELECT * of {rows} rows (psql) | {:.3} | {:.0} ns/row | {} |",
        median(bulk_ratio),
        median(ns_per_row),
        baseline(&bouncer_ns_per_row, "ns/row")
    );
}
