//! `tokengate serve` as a process: startup checks, durations, and what it logs.
use crate::harness::*;
use std::process::{Command, Stdio};

const DEMO_POLICY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/policies/demo.yaml");

fn serve(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tokengate"));
    c.arg("serve")
        .args(["--listen", "127.0.0.1:0", "--admin", "off"])
        .args(args)
        .env_remove("TOKENGATE_KEYS")
        .env_remove("TOKENGATE_POLICY")
        .stdin(Stdio::null());
    c
}

/// A policy that tokenizes needs a key file: refused at startup, not at the first query.
#[test]
fn serve_refuses_a_token_policy_without_keys() {
    let out = serve(&[
        "--upstream",
        &cluster().pg.upstream_url(),
        "--policy",
        DEMO_POLICY,
        "--catalog-user",
        "postgres",
    ])
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no key file"), "{stderr}");
    assert!(stderr.contains("tokengate keygen"), "{stderr}");
    assert!(stderr.contains("--keys"), "{stderr}");
}

#[test]
fn serve_rejects_a_duration_it_cannot_read() {
    let out = serve(&[
        "--upstream",
        "postgres://127.0.0.1:1",
        "--drain-timeout",
        "soon",
    ])
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("not a duration"), "{stderr}");
}

/// Durations written as `30s`; several workers; stderr to a file (not a terminal): the log
/// has no colour codes and the shutdown is logged once, not once per worker.
#[test]
fn serve_takes_durations_and_logs_its_shutdown_once_without_colours() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let mut child = serve(&[
        "--upstream",
        "postgres://127.0.0.1:1",
        "--workers",
        "3",
        "--drain-timeout",
        "30s",
        "--startup-timeout",
        "1m",
        "--connect-timeout",
        "500ms",
        "--catalog-ttl",
        "90",
    ])
    .env("TOKENGATE_LOG_FORMAT", "text")
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(&log).unwrap())
    .spawn()
    .unwrap();
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !text().contains("tokengate listening") {
        assert!(child.try_wait().unwrap().is_none(), "exited:\n{}", text());
        assert!(std::time::Instant::now() < deadline, "{}", text());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    let text = text();
    assert!(exit.success(), "{exit}:\n{text}");
    assert!(!text.contains('\u{1b}'), "colour codes in a file:\n{text}");
    assert_eq!(text.matches("shutting down").count(), 1, "{text}");
    assert_eq!(text.matches("tokengate stopped").count(), 1, "{text}");
    assert!(text.contains("drain_secs=30"), "{text}");
}
