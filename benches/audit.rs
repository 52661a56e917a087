//! What the session pays per audited statement: `AuditLog::record` (queue push; the writer
//! thread does the rest) and `Alerts::observe`, against a baseline of cloning the record
//! (the allocation the caller does anyway) measured in the same run. `chain_seal` is the
//! writer thread's per-record cost (serialise + two HMACs).
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::SystemTime;
use tokengate::alerts::{AlertLimits, Alerts};
use tokengate::audit::chain::{Chain, ChainKey};
use tokengate::audit::{AuditConfig, AuditLog, AuditRecord, ColumnAudit, FsyncMode};
use tokengate::observe::metrics::Metrics;
use tokengate::protect::keys::{Key, KeyRing};

fn record() -> AuditRecord {
    AuditRecord {
        time: SystemTime::now(),
        session: 1,
        client: "10.0.0.1:5000".into(),
        role: "analyst".into(),
        application_name: "app".into(),
        database: "crm".into(),
        fingerprint: 0xdead_beef,
        statement: Some("SELECT email, phone FROM customers WHERE id = $1".into()),
        columns: vec![ColumnAudit {
            column: "public.customers.email".into(),
            label: "email".into(),
            action: "token".into(),
            rule: "roles.analyst.pii".into(),
        }],
        refusal: None,
        rows: 1,
        duration_ms: 0.2,
    }
}

fn bench(c: &mut Criterion) {
    let mut ring = KeyRing::default();
    ring.insert("audit", 1, Key::from_bytes([7; 32]));
    let dir = tempfile::tempdir().expect("temp dir");
    let (_registry, metrics) = Metrics::standalone();
    let config = AuditConfig {
        fsync: FsyncMode::Never,
        queue_capacity: 1 << 16,
        ..AuditConfig::new(dir.path().join("audit.log"))
    };
    let log = AuditLog::open(config, &ring, &metrics).expect("audit log");
    let template = record();
    let mut g = c.benchmark_group("audit");
    g.bench_function("baseline_clone_record", |b| {
        b.iter(|| black_box(template.clone()))
    });
    g.bench_function("record_clone_and_queue", |b| {
        b.iter(|| log.record(black_box(template.clone())))
    });
    let mut chain = Chain::genesis(ChainKey::new(&Key::from_bytes([7; 32]), 1));
    g.bench_function("chain_seal", |b| {
        b.iter(|| chain.seal(black_box(&template)).map(|l| l.len()))
    });
    let alerts = Alerts::new(None);
    let limits = AlertLimits {
        max_protected_values_per_minute: Some(u64::MAX),
        max_refusals_per_minute: Some(u64::MAX),
        action: None,
    };
    g.bench_function("alerts_observe", |b| {
        b.iter(|| alerts.observe(black_box("analyst"), 3, false, &limits))
    });
    g.finish();
    log.flush();
}

criterion_group!(benches, bench);
criterion_main!(benches);
