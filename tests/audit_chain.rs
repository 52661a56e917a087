//! The audit log end to end: records written by `AuditLog`, tampered with, and checked by
//! the verifier and by `tokengate audit verify`; rotation, restart, and write failures
//! (`/dev/full` returns ENOSPC, a disk-full simulation that works even as root).
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};
use tokengate::audit::{
    AuditConfig, AuditLog, AuditRecord, BreakKind, ColumnAudit, FsyncMode, OnFailure, RefusalAudit,
};
use tokengate::cli::audit::verify_paths;
use tokengate::observe::metrics::Metrics;
use tokengate::protect::keys::{Key, KeyRing};

fn ring(byte: u8) -> KeyRing {
    let mut ring = KeyRing::default();
    ring.insert("audit", 1, Key::from_bytes([byte; 32]));
    ring
}

fn record(n: u64) -> AuditRecord {
    AuditRecord {
        time: UNIX_EPOCH + Duration::from_secs(1_767_225_600 + n),
        session: 42,
        client: "10.1.2.3:50000".into(),
        role: "analyst".into(),
        application_name: "psql".into(),
        database: "crm".into(),
        fingerprint: 0x1234_5678_9abc_def0 ^ n,
        statement: Some(format!("SELECT email FROM customers WHERE id = {n}")),
        columns: vec![ColumnAudit {
            column: "public.customers.email".into(),
            label: "email".into(),
            action: "token".into(),
            rule: "roles.analyst.pii: token".into(),
        }],
        refusal: (n % 5 == 4).then(|| RefusalAudit {
            code: "TG101".into(),
            reason: "derived use of a protected column".into(),
            rule: "roles.analyst".into(),
        }),
        rows: n,
        duration_ms: 0.25,
    }
}

/// Writes `count` records with `config` and closes the log.
fn write_log(config: AuditConfig, ring: &KeyRing, range: std::ops::Range<u64>) -> Metrics {
    let (_registry, metrics) = Metrics::standalone();
    let log = AuditLog::open(config, ring, &metrics).unwrap();
    for n in range {
        log.record(record(n));
    }
    assert!(log.flush());
    drop(log);
    metrics
}

fn verify(files: &[PathBuf], ring: &KeyRing) -> Result<u64, tokengate::audit::Break> {
    verify_paths(files, ring, "audit", false)
        .unwrap()
        .map(|s| s.records)
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn single_log(dir: &Path, count: u64) -> PathBuf {
    let path = dir.join("audit.log");
    write_log(AuditConfig::new(&path), &ring(1), 0..count);
    path
}

#[test]
fn an_intact_log_verifies_and_records_carry_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = single_log(dir.path(), 10);
    assert_eq!(verify(std::slice::from_ref(&path), &ring(1)), Ok(10));
    let all = lines(&path);
    assert_eq!(all.len(), 10);
    let fifth: serde_json::Value = serde_json::from_str(&all[4]).unwrap();
    assert_eq!(fifth["seq"], 4);
    assert_eq!(fifth["time"], "2026-01-01T00:00:04.000Z");
    assert_eq!(fifth["role"], "analyst");
    assert_eq!(fifth["fingerprint"], "123456789abcdef4");
    assert_eq!(
        fifth["statement"],
        "SELECT email FROM customers WHERE id = 4"
    );
    assert_eq!(fifth["columns"][0]["rule"], "roles.analyst.pii: token");
    assert_eq!(fifth["refusal"]["code"], "TG101");
    assert_eq!(fifth["rows"], 4);
    assert_eq!(fifth["prev"].as_str().unwrap().len(), 64);
    assert_eq!(fifth["mac"].as_str().unwrap().len(), 64);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "audit logs hold statement text: owner-only");
    }
}

/// Writes `count` records, applies `edit` to the lines, and returns the first break.
fn tampered(count: u64, edit: impl FnOnce(&mut Vec<String>)) -> tokengate::audit::Break {
    let dir = tempfile::tempdir().unwrap();
    let path = single_log(dir.path(), count);
    let mut all = lines(&path);
    edit(&mut all);
    write_lines(&path, &all);
    verify(&[path], &ring(1)).unwrap_err()
}

#[test]
fn an_edited_field_is_reported_on_its_line() {
    let brk = tampered(6, |all| all[3] = all[3].replace("\"rows\":3", "\"rows\":0"));
    assert_eq!((brk.kind, brk.line), (BreakKind::Edited, 4), "{brk}");
}

#[test]
fn an_edited_first_record_is_an_edit_not_a_wrong_key() {
    let brk = tampered(3, |all| all[0] = all[0].replace("analyst", "nobody"));
    assert_eq!((brk.kind, brk.line), (BreakKind::Edited, 1), "{brk}");
}

#[test]
fn a_deleted_line_is_reported_where_the_gap_is() {
    let brk = tampered(6, |all| {
        all.remove(2);
    });
    assert_eq!((brk.kind, brk.line), (BreakKind::Deleted, 3), "{brk}");
    assert!(brk.detail.contains("from 1 to 3"), "{brk}");
}

#[test]
fn a_deleted_first_line_is_reported() {
    let brk = tampered(3, |all| {
        all.remove(0);
    });
    assert_eq!((brk.kind, brk.line), (BreakKind::Truncated, 1), "{brk}");
}

#[test]
fn tail_accepts_a_later_start_but_still_checks_links() {
    let dir = tempfile::tempdir().unwrap();
    let path = single_log(dir.path(), 4);
    let mut all = lines(&path);
    all.remove(0);
    write_lines(&path, &all);
    let summary = verify_paths(std::slice::from_ref(&path), &ring(1), "audit", true)
        .unwrap()
        .unwrap();
    assert_eq!((summary.records, summary.first_seq), (3, Some(1)));
    all.remove(1);
    write_lines(&path, &all);
    let brk = verify_paths(&[path], &ring(1), "audit", true)
        .unwrap()
        .unwrap_err();
    assert_eq!(brk.kind, BreakKind::Deleted, "{brk}");
}

#[test]
fn swapped_lines_are_reported_as_reordered() {
    let brk = tampered(6, |all| all.swap(2, 3));
    assert_eq!((brk.kind, brk.line), (BreakKind::Reordered, 3), "{brk}");
}

#[test]
fn a_truncated_file_is_reported_on_its_partial_last_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = single_log(dir.path(), 4);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 40]).unwrap();
    let brk = verify(&[path], &ring(1)).unwrap_err();
    assert_eq!((brk.kind, brk.line), (BreakKind::Truncated, 4), "{brk}");
}

#[test]
fn a_wrong_key_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let path = single_log(dir.path(), 3);
    let brk = verify(&[path], &ring(2)).unwrap_err();
    assert_eq!((brk.kind, brk.line), (BreakKind::WrongKey, 1), "{brk}");
    assert!(brk.detail.contains("key is likely wrong"), "{brk}");
}

fn rotated_set(dir: &Path) -> Vec<PathBuf> {
    let path = dir.join("audit.log");
    let config = AuditConfig {
        max_bytes: 2000,
        fsync: FsyncMode::Always,
        ..AuditConfig::new(&path)
    };
    write_log(config.clone(), &ring(1), 0..10);
    // A restart continues the chain (seq and prev) from the last line on disk.
    write_log(config, &ring(1), 10..20);
    let mut files = vec![path.clone()];
    for n in 1.. {
        let rotated = dir.join(format!("audit.log.{n}"));
        if !rotated.exists() {
            break;
        }
        let size = std::fs::metadata(&rotated).unwrap().len();
        assert!(size <= 2000, "{} is {size} bytes", rotated.display());
        files.push(rotated);
    }
    files
}

#[test]
fn an_intact_rotated_set_verifies_in_any_argument_order() {
    let dir = tempfile::tempdir().unwrap();
    let files = rotated_set(dir.path());
    assert!(
        files.len() >= 4,
        "expected several rotations, got {files:?}"
    );
    assert_eq!(verify(&files, &ring(1)), Ok(20));
    let mut reversed = files.clone();
    reversed.reverse();
    assert_eq!(verify(&reversed, &ring(1)), Ok(20));
    // The oldest file starts the chain; the newest holds the last record.
    let oldest = files.last().unwrap();
    assert!(lines(oldest)[0].starts_with("{\"seq\":0,"));
    assert!(lines(&files[0]).last().unwrap().starts_with("{\"seq\":19,"));
}

#[test]
fn a_missing_rotated_file_is_reported_as_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = rotated_set(dir.path());
    let missing = files.remove(2);
    let brk = verify(&files, &ring(1)).unwrap_err();
    assert_eq!((brk.kind, brk.line), (BreakKind::Truncated, 1), "{brk}");
    assert!(brk.detail.contains("missing between the files"), "{brk}");
    assert_ne!(brk.file, missing.display().to_string());
}

#[test]
fn redaction_drops_the_statement_text_but_keeps_the_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let config = AuditConfig {
        redact_text: true,
        ..AuditConfig::new(&path)
    };
    write_log(config, &ring(1), 0..2);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("SELECT"), "{text}");
    assert!(text.contains("\"fingerprint\":\"123456789abcdef1\""));
    assert_eq!(verify(&[path], &ring(1)), Ok(2));
}

fn counter(metrics: &Metrics) -> (u64, u64, u64, i64) {
    (
        metrics.audit_records_total.get(),
        metrics.audit_write_errors_total.get(),
        metrics.audit_dropped_total.get(),
        metrics.audit_healthy.get(),
    )
}

#[cfg(target_os = "linux")]
#[test]
fn refuse_mode_fails_closed_on_a_full_disk_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    // The log path points at /dev/full: every write fails with ENOSPC.
    std::os::unix::fs::symlink("/dev/full", &path).unwrap();
    let (_registry, metrics) = Metrics::standalone();
    let config = AuditConfig {
        on_failure: OnFailure::Refuse,
        ..AuditConfig::new(&path)
    };
    let log = AuditLog::open(config, &ring(1), &metrics).unwrap();
    assert!(log.accepting(), "nothing has failed yet");
    log.record(record(0));
    assert!(!log.flush(), "the write must fail");
    assert!(!log.accepting(), "fail closed");
    let (records, errors, dropped, healthy) = counter(&metrics);
    assert_eq!((records, dropped, healthy), (0, 0, 0));
    assert!(errors >= 1);

    // The disk comes back: the kept record is written, nothing was lost.
    std::fs::remove_file(&path).unwrap();
    assert!(log.flush());
    assert!(log.accepting());
    log.record(record(1));
    assert!(log.flush());
    drop(log);
    let (records, _, dropped, healthy) = counter(&metrics);
    assert_eq!((records, dropped, healthy), (2, 0, 1));
    assert_eq!(verify(std::slice::from_ref(&path), &ring(1)), Ok(2));
    assert!(lines(&path)[0].contains("\"rows\":0"));
}

#[cfg(target_os = "linux")]
#[test]
fn continue_mode_keeps_serving_counts_drops_and_notes_the_loss() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    std::os::unix::fs::symlink("/dev/full", &path).unwrap();
    let (_registry, metrics) = Metrics::standalone();
    let config = AuditConfig {
        on_failure: OnFailure::Continue,
        ..AuditConfig::new(&path)
    };
    let log = AuditLog::open(config, &ring(1), &metrics).unwrap();
    log.record(record(0));
    log.record(record(1));
    assert!(!log.flush());
    assert!(log.accepting(), "continue never refuses");
    let (records, errors, dropped, healthy) = counter(&metrics);
    assert_eq!((records, dropped, healthy), (0, 2, 0));
    assert!(errors >= 1);

    std::fs::remove_file(&path).unwrap();
    log.record(record(2));
    assert!(log.flush());
    drop(log);
    assert_eq!(counter(&metrics).3, 1, "healthy again");
    let all = lines(&path);
    assert_eq!(all.len(), 2);
    assert!(all[0].contains("\"event\":\"records_lost\"") && all[0].contains("\"lost\":2"));
    assert!(all[1].contains("\"rows\":2"));
    let summary = verify_paths(&[path], &ring(1), "audit", false)
        .unwrap()
        .unwrap();
    assert_eq!((summary.records, summary.lost), (2, 2));
}

fn tokengate(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(args)
        .env_remove("TOKENGATE_KEYS")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn the_cli_prints_ok_or_the_first_break_with_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let path = single_log(dir.path(), 5);
    let keys = dir.path().join("keys.json");
    ring(1).write_new(&keys, false).unwrap();
    let (p, k) = (path.to_str().unwrap(), keys.to_str().unwrap());

    let (code, out) = tokengate(&["audit", "verify", p, "--keys", k]);
    assert_eq!((code, out.trim()), (0, "OK: 5 records"));

    let mut all = lines(&path);
    all.remove(1);
    write_lines(&path, &all);
    let (code, out) = tokengate(&["audit", "verify", p, "--keys", k]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with(&format!("BROKEN: {p}:2: deleted:")),
        "{out}"
    );

    let (code, out) = tokengate(&["audit", "verify", p, "--keys", k, "--key", "nope"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("wrong key"), "{out}");

    let (code, _) = tokengate(&["audit", "verify", p]);
    assert_eq!(code, 2, "--keys is required");
    let missing = dir.path().join("nope.log");
    let (code, out) = tokengate(&["audit", "verify", missing.to_str().unwrap(), "--keys", k]);
    assert_eq!(code, 2, "{out}");
}

/// Issue 12: after a crash tore the last line and tokengate restarted, verify reports the
/// torn line as `truncated` and goes on to verify what was written after the restart.
#[test]
fn verify_reports_a_torn_line_and_goes_on_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = single_log(dir.path(), 4);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 40]).unwrap(); // the crash
    write_log(AuditConfig::new(&path), &ring(1), 4..7); // the restart
    let (result, torn) = tokengate::cli::audit::verify_paths_reporting(
        std::slice::from_ref(&path),
        &ring(1),
        "audit",
        false,
    )
    .unwrap();
    assert_eq!(torn.len(), 1, "{torn:?}");
    assert_eq!((torn[0].kind, torn[0].line), (BreakKind::Truncated, 4));
    // Records 0..3 before and 4..7 after the torn line; the torn record (3) is lost.
    assert_eq!(result.map(|s| s.records), Ok(6));
    // The CLI says so and exits 1 (records were lost).
    let keys = dir.path().join("keys.json");
    ring(1).write_new(&keys, false).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(["audit", "verify"])
        .arg(&path)
        .arg("--keys")
        .arg(&keys)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("TRUNCATED:") && stdout.contains("truncated"),
        "{stdout}"
    );
    assert!(stdout.contains("6 records"), "{stdout}");
    // Tampering after the torn line is still found.
    let mut all = lines(&path);
    all[5] = all[5].replace("\"rows\":5", "\"rows\":6");
    write_lines(&path, &all);
    let (result, _) =
        tokengate::cli::audit::verify_paths_reporting(&[path], &ring(1), "audit", false).unwrap();
    assert_eq!(result.unwrap_err().kind, BreakKind::Edited);
}

/// Issue 12: an existing log readable by others is refused, as the key file is.
#[test]
fn an_audit_log_readable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = single_log(dir.path(), 2);
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (_registry, metrics) = Metrics::standalone();
    let err = AuditLog::open(AuditConfig::new(&path), &ring(1), &metrics).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("644") && text.contains("chmod 600"), "{text}");
}

/// Issue 12: with `fsync: always`, a durability ticket taken after a record is answered only
/// once that record is on disk; the session waits for it before ReadyForQuery.
#[tokio::test]
async fn fsync_always_tickets_answer_once_records_are_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let (_registry, metrics) = Metrics::standalone();
    let config = AuditConfig {
        fsync: FsyncMode::Always,
        ..AuditConfig::new(&path)
    };
    let log = AuditLog::open(config, &ring(1), &metrics).unwrap();
    for n in 0..50 {
        log.record(record(n));
        let ticket = log.durable().expect("fsync: always gives tickets");
        assert!(ticket.await.unwrap(), "durable");
        // No flush: the line is already in the file.
        assert_eq!(lines(&path).len() as u64, n + 1);
    }
    let interval = AuditLog::open(
        AuditConfig::new(dir.path().join("other.log")),
        &ring(1),
        &metrics,
    )
    .unwrap();
    assert!(
        interval.durable().is_none(),
        "interval promises no durability"
    );
}

/// Issue 12: a ticket is `false` when the log cannot be written (the session then ends
/// instead of reporting success).
#[tokio::test]
async fn fsync_always_tickets_are_false_while_the_log_fails() {
    let (_registry, metrics) = Metrics::standalone();
    let config = AuditConfig {
        fsync: FsyncMode::Always,
        on_failure: OnFailure::Refuse,
        ..AuditConfig::new("/dev/full")
    };
    let log = AuditLog::open(config, &ring(1), &metrics).unwrap();
    log.record(record(1));
    assert!(!log.durable().unwrap().await.unwrap());
}

/// SIGHUP reopens the log: after an external rotation (logrotate renames the file), new
/// records go to a new file at the path, and the chain continues across the two.
#[test]
fn reopen_after_an_external_rotation_continues_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let rotated = dir.path().join("audit.log-20260101");
    let (_registry, metrics) = Metrics::standalone();
    let log = AuditLog::open(AuditConfig::new(&path), &ring(1), &metrics).unwrap();
    for n in 0..3 {
        log.record(record(n));
    }
    assert!(log.flush());
    std::fs::rename(&path, &rotated).unwrap();
    log.reopen();
    for n in 3..5 {
        log.record(record(n));
    }
    assert!(log.flush());
    drop(log);
    assert_eq!(lines(&rotated).len(), 3);
    assert_eq!(lines(&path).len(), 2);
    assert_eq!(verify(&[rotated, path], &ring(1)), Ok(5));
}
