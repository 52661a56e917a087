//! Tokenization-at-rest benchmark (issue 14). Each workload runs, interleaved in the same
//! rounds, directly against PostgreSQL, through `tokengate serve` in read-path-only mode (the
//! same policy without `at_rest: token`: values stored in clear, protected on the way out), and
//! through `tokengate serve` with the three columns stored as tokens. Medians over the rounds:
//! - INSERT of three at-rest columns, pgbench custom script, `-M prepared -c 8 -j 2`: TPS and
//!   tokengate CPU µs per transaction (/proc/PID/stat);
//! - COPY ... FROM STDIN (text) of ROWS rows with psql: wall time and rows/s;
//! - reading ROWS rows with psql as a `clear` role (at rest: three FF1 decryptions per row);
//! - reading ROWS rows as a `token` role (at rest: the stored tokens, no cryptographic work;
//!   read-path-only: three FF1 encryptions per row).
//!
//! Run: `cargo bench --bench at_rest` (env: ROWS=1000000, ROUNDS=3, SECONDS=5). Not run in CI.
mod common;

use common::{cpu_seconds, env_or, median, pgbench, psql_read, start_tokengate};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;
use tokengate::embedded_pg::{EmbeddedPostgres, PgOptions};
use tokengate::protect::KeyRing;

/// The policy with the three columns stored as tokens; read-path-only mode drops `at_rest`.
const POLICY: &str = "version: 1
labels:
  ssn:   { class: pii,       token: digits, at_rest: token }
  card:  { class: financial, token: card,   at_rest: token }
  phone: { class: pii,       token: digits, at_rest: token }
columns:
  public.people.ssn: ssn
  public.people.card: card
  public.people.phone: phone
  public.people_copy.ssn: ssn
  public.people_copy.card: card
  public.people_copy.phone: phone
  public.ins.ssn: ssn
  public.ins.card: card
  public.ins.phone: phone
roles:
  writer: { default: clear }
  reader: { default: token }
  \"*\": { default: deny }
";

/// The tables every workload uses, and the roles. The tables holding at-rest columns are
/// created empty here and filled only through tokengate afterwards.
const TABLES: [&str; 3] = ["people", "people_copy", "ins"];

/// Creates the database, tables and roles; [`init_at_rest`] then records the at-rest columns,
/// which must be ready before a tokengate process serves them.
fn setup(pg: &EmbeddedPostgres, rt: &tokio::runtime::Runtime) {
    rt.block_on(async {
        pg.execute("postgres", "CREATE DATABASE bench")
            .await
            .unwrap();
        pg.execute(
            "bench",
            "CREATE TABLE people (id int PRIMARY KEY, ssn text, card text, phone text);
             CREATE TABLE people_copy (id int, ssn text, card text, phone text);
             CREATE TABLE ins (ssn text, card text, phone text);
             CREATE ROLE writer LOGIN PASSWORD 'bench-pw';
             CREATE ROLE reader LOGIN PASSWORD 'bench-pw';
             GRANT ALL ON ALL TABLES IN SCHEMA public TO writer, reader;",
        )
        .await
        .unwrap();
    });
}

/// Records every at-rest column of [`TABLES`] (empty so far) as tokenized with the key's
/// version, as `tokengate migrate` does, before a tokengate process serves them.
fn init_at_rest(pg: &EmbeddedPostgres, rt: &tokio::runtime::Runtime, keys: &KeyRing) {
    rt.block_on(async {
        let policy = tokengate::policy::Policy::from_yaml(POLICY, "bench").unwrap();
        let mut client = pg.connect_admin("bench").await.unwrap();
        let done = tokengate::atrest::migrate_all(
            &mut client,
            &policy,
            keys,
            &tokengate::atrest::Options::default(),
        )
        .await
        .unwrap();
        assert_eq!(done.len(), TABLES.len() * 3);
    });
}

/// ROWS text-format COPY lines: id, an SSN `ddd-dd-dddd`, a 16-digit card, a 10-digit phone.
fn copy_file(dir: &Path, rows: u64) -> PathBuf {
    let path = dir.join("at-rest-rows.copy");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    for g in 1..=rows {
        let s = 100_000_000 + (g * 7_919) % 899_999_999;
        writeln!(
            f,
            "{g}\t{:03}-{:02}-{:04}\t4{:015}\t{:010}",
            s / 1_000_000,
            (s / 10_000) % 100,
            s % 10_000,
            (g * 104_729) % 1_000_000_000_000_000,
            2_000_000_000 + (g * 31) % 7_999_999_999
        )
        .unwrap();
    }
    f.flush().unwrap();
    path
}

/// `COPY table FROM STDIN` with psql as `user`, reading `file`; returns wall seconds.
fn psql_copy(pg: &EmbeddedPostgres, port: u16, user: &str, table: &str, file: &Path) -> f64 {
    let start = Instant::now();
    let out = Command::new(pg.bindir().join("psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .args(["-U", user, "-d", "bench", "-c"])
        .arg(format!("COPY {table} (id, ssn, card, phone) FROM STDIN"))
        .env("PGPASSWORD", "bench-pw")
        .stdin(std::fs::File::open(file).unwrap())
        .stdout(Stdio::null())
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "COPY failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    start.elapsed().as_secs_f64()
}

/// The rows `sql` returns to `user` through `port` (psql, unaligned, tuples only), so a
/// fast read is known to be a whole one.
fn psql_rows(pg: &EmbeddedPostgres, port: u16, user: &str, sql: &str) -> usize {
    let out = Command::new(pg.bindir().join("psql"))
        .args(["-X", "-A", "-t", "-h", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .args(["-U", user, "-d", "bench", "-c", sql])
        .env("PGPASSWORD", "bench-pw")
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout.iter().filter(|&&b| b == b'\n').count()
}

fn direct_sql(pg: &EmbeddedPostgres, rt: &tokio::runtime::Runtime, sql: &str) {
    rt.block_on(pg.execute("bench", sql)).unwrap();
}

struct Proxy {
    child: Child,
    port: u16,
    pid: u32,
}

fn proxy(pg: &EmbeddedPostgres, policy: &Path, keys: &Path) -> Proxy {
    let (child, port) = start_tokengate(
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
    let pid = child.id();
    Proxy { child, port, pid }
}

/// One contender's samples.
#[derive(Default, Clone)]
struct Samples {
    insert_tps: Vec<f64>,
    insert_cpu_us: Vec<f64>,
    copy_s: Vec<f64>,
    clear_s: Vec<f64>,
    token_s: Vec<f64>,
}

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
    setup(&pg, &rt);
    let dir = pg.socket_dir();
    let at_rest_policy = dir.join("at-rest-policy.yaml");
    std::fs::write(&at_rest_policy, POLICY).unwrap();
    let read_path_policy = dir.join("read-path-policy.yaml");
    std::fs::write(&read_path_policy, POLICY.replace(", at_rest: token", "")).unwrap();
    let keys = dir.join("bench-keys.json");
    let ring = KeyRing::generate("default");
    ring.write_new(&keys, true).unwrap();
    init_at_rest(&pg, &rt, &ring);
    let script = dir.join("insert.sql");
    std::fs::write(
        &script,
        "\\set ssn random(100000000, 999999999)\n\
         \\set card random(4000000000000000, 4999999999999999)\n\
         \\set phone random(2000000000, 9999999999)\n\
         INSERT INTO ins (ssn, card, phone) VALUES (:ssn, :card, :phone);\n",
    )
    .unwrap();
    let file = copy_file(dir, rows);
    let mut read_path = proxy(&pg, &read_path_policy, &keys);
    let mut at_rest = proxy(&pg, &at_rest_policy, &keys);
    // The rows the reads return, stored as tokens (written through tokengate).
    psql_copy(&pg, at_rest.port, "writer", "people", &file);
    direct_sql(&pg, &rt, "VACUUM ANALYZE people");
    println!(
        "tokengate at-rest benchmark: {rounds} rounds, pgbench {seconds}s, {rows} rows; tokengate pids: read-path-only {}, at-rest {}",
        read_path.pid, at_rest.pid
    );
    let read_sql = "SELECT id, ssn, card, phone FROM people";
    let names = ["direct", "read-path-only", "at-rest"];
    let ports = [pg.port(), read_path.port, at_rest.port];
    let pids = [None, Some(read_path.pid), Some(at_rest.pid)];
    for (name, port) in names.iter().zip(ports) {
        for user in ["writer", "reader"] {
            let n = psql_rows(&pg, port, user, read_sql);
            assert_eq!(n as u64, rows, "{name} as {user}");
        }
    }
    let mut s: Vec<Samples> = vec![Samples::default(); 3];
    let workload = ["-f", script.to_str().unwrap()];
    for round in 1..=rounds {
        for i in 0..3 {
            let before = pids[i].map(cpu_seconds);
            let r = pgbench(&pg, ports[i], "writer", &workload, "prepared", seconds);
            s[i].insert_tps.push(r.tps);
            if let (Some(pid), Some(b)) = (pids[i], before) {
                s[i].insert_cpu_us
                    .push((cpu_seconds(pid) - b) / r.transactions * 1e6);
            }
        }
        direct_sql(&pg, &rt, "TRUNCATE ins");
        for i in 0..3 {
            direct_sql(&pg, &rt, "TRUNCATE people_copy");
            s[i].copy_s
                .push(psql_copy(&pg, ports[i], "writer", "people_copy", &file));
        }
        for i in 0..3 {
            s[i].clear_s
                .push(psql_read(&pg, ports[i], "writer", read_sql));
            s[i].token_s
                .push(psql_read(&pg, ports[i], "reader", read_sql));
        }
        let line = |f: &dyn Fn(&Samples) -> f64| {
            names
                .iter()
                .zip(&s)
                .map(|(n, x)| format!("{n} {:.2}", f(x)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!("round {round}:");
        println!(
            "  INSERT tps:        {}",
            line(&|x| *x.insert_tps.last().unwrap())
        );
        println!(
            "  COPY s:            {}",
            line(&|x| *x.copy_s.last().unwrap())
        );
        println!(
            "  clear read s:      {}",
            line(&|x| *x.clear_s.last().unwrap())
        );
        println!(
            "  token read s:      {}",
            line(&|x| *x.token_s.last().unwrap())
        );
    }
    for p in [&mut read_path, &mut at_rest] {
        let _ = p.child.kill();
        let _ = p.child.wait();
    }
    let m = |v: &[f64]| median(v.to_vec());
    let [d, rp, ar] = [&s[0], &s[1], &s[2]];
    let rate = |secs: &[f64]| rows as f64 / m(secs);
    println!(
        "\nMedians over {rounds} rounds ({rows} rows, pgbench -M prepared -c 8 -j 2 -T {seconds}):\n"
    );
    println!("| workload | direct | read-path-only | at rest | at rest / direct | target |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| INSERT, 3 at-rest columns (pgbench) | {:.0} tps | {:.0} tps ({:.1} µs CPU/txn) | {:.0} tps ({:.1} µs CPU/txn) | {:.2}× | ≥ 0.8× |",
        m(&d.insert_tps),
        m(&rp.insert_tps),
        m(&rp.insert_cpu_us),
        m(&ar.insert_tps),
        m(&ar.insert_cpu_us),
        m(&ar.insert_tps) / m(&d.insert_tps)
    );
    for (what, pick, target) in [
        (
            "COPY FROM STDIN (text, psql)",
            (|x: &Samples| x.copy_s.clone()) as fn(&Samples) -> Vec<f64>,
            "≥ 0.7×",
        ),
        (
            "read as a clear role (3 columns decrypted at rest)",
            |x: &Samples| x.clear_s.clone(),
            "≥ 0.5×",
        ),
        (
            "read as a token role (no crypto at rest)",
            |x: &Samples| x.token_s.clone(),
            "≥ 0.95×",
        ),
    ] {
        println!(
            "| {what} | {:.2} s ({:.0} rows/s) | {:.2} s ({:.0} rows/s) | {:.2} s ({:.0} rows/s) | {:.2}× | {target} |",
            m(&pick(d)),
            rate(&pick(d)),
            m(&pick(rp)),
            rate(&pick(rp)),
            m(&pick(ar)),
            rate(&pick(ar)),
            m(&pick(d)) / m(&pick(ar))
        );
    }
}
