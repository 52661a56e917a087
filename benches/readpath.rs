//! Read-path benchmark for restricted roles, each workload run directly and through
//! `tokengate serve --policy`, interleaved, several rounds (medians):
//! - a pgbench workload selecting a protected column by primary key (`-M prepared` and
//!   `-M simple`), as a role whose policy masks it: tokengate CPU per transaction;
//! - reading 1,000,000 rows with 3 masked columns, and with 3 FF1-tokenized columns, with psql:
//!   rows/s through tokengate relative to direct.
//!
//! Run: `cargo bench --bench readpath` (env: ROUNDS=3, SECONDS=5, ROWS=1000000).
mod common;

use common::{cpu_seconds, env_or, median, pgbench, psql_read, start_tokengate};

const ROWS_SQL: &str = "SELECT id, email, phone, ssn FROM people";
use tokengate::embedded_pg::{EmbeddedPostgres, PgOptions};

const POLICY: &str = "version: 1
labels:
  email: { class: pii, token: email, mask: email }
  phone: { class: pii, token: digits, mask: last4 }
  ssn:   { class: pii, token: digits, mask: \"***-**-####\" }
columns:
  public.people.email: email
  public.people.phone: phone
  public.people.ssn: ssn
roles:
  masker: { pii: mask }
  tokenizer: { pii: token }
  \"*\": { default: deny }
";

fn main() {
    let rounds = env_or("ROUNDS", 3) as usize;
    let seconds = env_or("SECONDS", 5);
    let rows = env_or("ROWS", 1_000_000);
    let pg = EmbeddedPostgres::start(&PgOptions {
        superuser_password: "bench-superuser-pw".into(),
        settings: vec![("shared_buffers".into(), "256MB".into())],
        ..PgOptions::default()
    })
    .expect("start PostgreSQL");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        pg.execute("postgres", "CREATE DATABASE bench").await.unwrap();
        pg.execute(
            "bench",
            &format!(
                "CREATE TABLE people AS SELECT g AS id,
                   'user' || g || '@example.com' AS email,
                   '+1 (555) ' || lpad((g % 1000)::text, 3, '0') || '-' || lpad((g % 10000)::text, 4, '0') AS phone,
                   lpad((100 + g % 800)::text, 3, '0') || '-' || lpad((10 + g % 90)::text, 2, '0') || '-' || lpad((g % 10000)::text, 4, '0') AS ssn,
                   'city ' || (g % 50) AS city
                 FROM generate_series(1, {rows}) g;
                 ALTER TABLE people ADD PRIMARY KEY (id);
                 CREATE ROLE masker LOGIN PASSWORD 'bench-pw';
                 CREATE ROLE tokenizer LOGIN PASSWORD 'bench-pw';
                 GRANT SELECT ON people TO masker, tokenizer;"
            ),
        )
        .await
        .unwrap();
        pg.execute("bench", "VACUUM ANALYZE people").await.unwrap();
    });
    let dir = pg.socket_dir();
    let policy = dir.join("bench-policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let keys = dir.join("bench-keys.json");
    tokengate::protect::KeyRing::generate("default")
        .write_new(&keys, true)
        .unwrap();
    let script = dir.join("select-email.sql");
    std::fs::write(
        &script,
        "\\set id random(1, 100000)\nSELECT id, email, city FROM people WHERE id = :id;\n",
    )
    .unwrap();
    let (mut tg, tg_port) = start_tokengate(
        pg.port(),
        &[
            "--policy",
            policy.to_str().unwrap(),
            "--keys",
            keys.to_str().unwrap(),
            "--catalog-user",
            "postgres",
            "--catalog-password",
            pg.superuser_password(),
        ],
    );
    let pid = tg.id();
    println!(
        "tokengate read-path benchmark: {rounds} rounds x {seconds}s, {rows} rows; tokengate pid {pid}"
    );
    let workload = ["-f", script.to_str().unwrap()];
    let modes = ["prepared", "simple"];
    let mut cpu_us: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    let mut tps_ratio: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    let (mut masked, mut tokenized) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        for (i, mode) in modes.iter().enumerate() {
            let direct = pgbench(&pg, pg.port(), "masker", &workload, mode, seconds);
            let before = cpu_seconds(pid);
            let via = pgbench(&pg, tg_port, "masker", &workload, mode, seconds);
            let cpu = cpu_seconds(pid) - before;
            cpu_us[i].push(cpu / via.transactions * 1e6);
            tps_ratio[i].push(via.tps / direct.tps);
            println!(
                "round {round} {mode:>8}: direct {:>8.0} tps, via tokengate (email masked) {:>8.0} tps, tokengate CPU {:.1} us/txn",
                direct.tps,
                via.tps,
                cpu / via.transactions * 1e6
            );
        }
        for (user, out) in [("masker", &mut masked), ("tokenizer", &mut tokenized)] {
            let direct = psql_read(&pg, pg.port(), user, ROWS_SQL);
            let via = psql_read(&pg, tg_port, user, ROWS_SQL);
            out.push(direct / via);
            println!(
                "round {round} {user:>9}: direct {direct:.2}s, via tokengate {via:.2}s (rows/s ratio {:.3})",
                direct / via
            );
        }
    }
    let _ = tg.kill();
    let _ = tg.wait();
    println!("\nMedians over {rounds} rounds:\n");
    println!("| workload | via tokengate / direct | tokengate CPU |");
    println!("|---|---|---|");
    for (i, mode) in modes.iter().enumerate() {
        println!(
            "| pgbench SELECT id, email (masked), city by id, -M {mode} -c 8 -j 2 | {:.3} tps | {:.1} µs/txn |",
            median(tps_ratio[i].clone()),
            median(cpu_us[i].clone())
        );
    }
    println!(
        "| {rows} rows, 3 masked columns (psql) | {:.3} rows/s | |",
        median(masked)
    );
    println!(
        "| {rows} rows, 3 FF1-tokenized columns (psql) | {:.3} rows/s | |",
        median(tokenized)
    );
}
