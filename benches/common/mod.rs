//! Helpers shared by the benchmarks that drive real processes: CPU time from /proc,
//! pgbench, medians, and a `tokengate serve` child process.
#![allow(dead_code)]
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokengate::embedded_pg::EmbeddedPostgres;

pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU seconds (user + system) used so far by `pid`.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after = &stat[stat.rfind(')').expect("stat format") + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / clock_ticks_per_second()
}

pub fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub struct PgBench {
    pub tps: f64,
    pub transactions: f64,
}

/// Runs pgbench as `user` (password: the superuser's for "postgres", else "bench-pw") with
/// `workload` (e.g. `["-S"]` or `["-f", script]`).
pub fn pgbench(
    pg: &EmbeddedPostgres,
    port: u16,
    user: &str,
    workload: &[&str],
    mode: &str,
    seconds: u64,
) -> PgBench {
    let password = if user == "postgres" {
        pg.superuser_password()
    } else {
        "bench-pw"
    };
    let mut cmd = Command::new(pg.bindir().join("pgbench"));
    client_env(&mut cmd);
    let out = cmd
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", user, "-n"])
        .args(workload)
        .args([
            "-M",
            mode,
            "-c",
            "8",
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
            "bench",
        ])
        .env("PGPASSWORD", password)
        .output()
        .expect("run pgbench");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pgbench failed: {}{}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    let grab = |prefix: &str| -> f64 {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|r| r.trim().split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix:?} in pgbench output:\n{text}"))
    };
    PgBench {
        tps: grab("tps ="),
        transactions: grab("number of transactions actually processed:"),
    }
}

/// `TLS=1`: every benchmark client (pgbench, psql) connects with TLS (`sslmode=require`; channel
/// binding off, so pass-through authentication works with TLS on both legs).
pub fn bench_tls() -> bool {
    std::env::var("TLS").is_ok_and(|v| v == "1")
}

fn client_env(cmd: &mut Command) {
    if bench_tls() {
        cmd.env("PGSSLMODE", "require")
            .env("PGCHANNELBINDING", "disable");
    }
}

/// Starts `tokengate serve` in front of PostgreSQL with extra flags; waits until it listens.
pub fn start_tokengate(pg_port: u16, extra: &[&str]) -> (Child, u16) {
    start_tokengate_sslmode(pg_port, "disable", extra)
}

/// [`start_tokengate`] with the upstream leg's `sslmode`.
pub fn start_tokengate_sslmode(pg_port: u16, sslmode: &str, extra: &[&str]) -> (Child, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // TOKENGATE_BENCH_BIN runs another build (e.g. the previous commit's, for an interleaved
    // before/after comparison); by default the one cargo built with this bench.
    let binary = std::env::var_os("TOKENGATE_BENCH_BIN")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_tokengate").into());
    let child = Command::new(binary)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin",
            "off",
        ])
        .args([
            "--upstream",
            &format!("postgres://127.0.0.1:{pg_port}?sslmode={sslmode}"),
        ])
        .args(extra)
        .env("TOKENGATE_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start tokengate");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "tokengate did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, port)
}

/// Reads every row `sql` returns with psql into /dev/null, as `user` (password as for
/// [`pgbench`]); returns wall seconds.
pub fn psql_read(pg: &EmbeddedPostgres, port: u16, user: &str, sql: &str) -> f64 {
    let password = if user == "postgres" {
        pg.superuser_password()
    } else {
        "bench-pw"
    };
    let start = Instant::now();
    let mut cmd = Command::new(pg.bindir().join("psql"));
    client_env(&mut cmd);
    let out = cmd
        .args([
            "-X",
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            user,
            "-d",
            "bench",
        ])
        .args(["-c", sql, "-o", "/dev/null"])
        .env("PGPASSWORD", password)
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    start.elapsed().as_secs_f64()
}
