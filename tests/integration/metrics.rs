//! Every metric documented in docs/operations.md moves when its event happens: each event is
//! driven through a real tokengate against the shared PostgreSQL, and the metric is read from
//! /metrics before and after.
use crate::crm::{crm, crm_config};
use crate::harness::*;
use std::path::Path;
use tokengate::server::RunningServer;

/// The sum of the samples of `name` whose labels include every `labels` pair (any order).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            (metric == name
                && labels
                    .iter()
                    .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())
            .flatten()
        })
        .sum()
}

struct Probe<'a> {
    server: &'a RunningServer,
}

impl Probe<'_> {
    async fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        sample(&metrics_text(self.server).await, name, labels)
    }

    /// Waits (bounded) until the metric passes `before`; returns its value.
    async fn moved(&self, name: &str, labels: &[(&str, &str)], before: f64) -> f64 {
        let mut value = before;
        eventually(10, async || {
            value = self.get(name, labels).await;
            value > before
        })
        .await;
        value
    }
}

const POLICY: &str = r#"version: 1
labels:
  email: { class: pii, token: email, mask: email }
  ssn:   { class: pii, token: digits, mask: "***-**-####" }
columns:
  public.customers.email: email
  public.customers.ssn: ssn
roles:
  app_admin: { default: clear }
  support:
    pii: mask
    alerts: { max_refusals_per_minute: 1, action: log }
  analyst: { pii: token }
  ana2: { pii: token, enforce: false }
  "*": { default: deny }
"#;

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn session(server: &RunningServer, role: &str) -> tokio_postgres::Client {
    connect(&crm_config(server.addr.port(), role)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_metric_moves_when_its_event_happens() {
    crm();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let keys = dir.path().join("keys.json");
    let mut ring = tokengate::protect::KeyRing::generate("default");
    ring.insert("audit", 1, tokengate::protect::Key::generate());
    ring.write_new(&keys, false).unwrap();
    // The audit log starts on a full disk (/dev/full), to see the failure metrics move.
    let audit = dir.path().join("audit.log");
    std::os::unix::fs::symlink("/dev/full", &audit).unwrap();
    let (p, k, a) = (policy.clone(), keys.clone(), audit.clone());
    let server = proxy_with(move |c| {
        c.policy = Some(p);
        c.keys = Some(k);
        c.catalog_user = Some("postgres".into());
        c.catalog_password = Some(SUPERUSER_PW.into());
        let mut audit = tokengate::audit::AuditConfig::new(a);
        audit.on_failure = tokengate::audit::OnFailure::Continue;
        c.audit = Some(audit);
    })
    .await;
    let m = Probe { server: &server };
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        m.get("tokengate_build_info", &[("version", version)]).await,
        1.0
    );
    assert_eq!(m.get("tokengate_policy_generation", &[]).await, 1.0);

    // The first session loads the catalog (group memberships, relations).
    let catalog = m.get("tokengate_catalog_refresh_total", &[]).await;
    // A session opens: connections_active; its statements: statements, duration, bytes.
    let active = m.get("tokengate_connections_active", &[]).await;
    let statements = m.get("tokengate_statements_total", &[]).await;
    let durations = m
        .get("tokengate_statement_duration_seconds_count", &[])
        .await;
    let to_upstream = m
        .get(
            "tokengate_bytes_total",
            &[("direction", "client_to_upstream")],
        )
        .await;
    let to_client = m
        .get(
            "tokengate_bytes_total",
            &[("direction", "upstream_to_client")],
        )
        .await;
    let completed = m
        .get("tokengate_connections_total", &[("outcome", "completed")])
        .await;
    let admin = session(&server, "app_admin").await;
    assert!(m.moved("tokengate_connections_active", &[], active).await > active);
    let rows = admin
        .query("SELECT email FROM customers WHERE id <= 3", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    assert!(m.moved("tokengate_statements_total", &[], statements).await > statements);
    assert!(
        m.moved("tokengate_statement_duration_seconds_count", &[], durations)
            .await
            > durations
    );
    for (direction, before) in [
        ("client_to_upstream", to_upstream),
        ("upstream_to_client", to_client),
    ] {
        let labels = [("direction", direction)];
        assert!(
            m.moved("tokengate_bytes_total", &labels, before).await > before,
            "{direction}"
        );
    }
    drop(admin);
    assert!(
        m.moved(
            "tokengate_connections_total",
            &[("outcome", "completed")],
            completed
        )
        .await
            > completed
    );

    // A restricted role: catalog refresh, rewrite, protected values, rows.
    let rewritten = [("role", "analyst"), ("decision", "rewritten")];
    let rewritten_before = m
        .get("tokengate_statements_by_role_total", &rewritten)
        .await;
    let tokens = [("label", "email"), ("action", "token")];
    let tokens_before = m.get("tokengate_values_protected_total", &tokens).await;
    let analyst_rows = m.get("tokengate_rows_total", &[("role", "analyst")]).await;
    let analyst = session(&server, "analyst").await;
    let sql = "SELECT email FROM customers WHERE id <= 3 ORDER BY id";
    analyst.simple_query(sql).await.unwrap();
    assert!(
        m.moved("tokengate_catalog_refresh_total", &[], catalog)
            .await
            > catalog
    );
    assert_eq!(
        m.moved(
            "tokengate_statements_by_role_total",
            &rewritten,
            rewritten_before
        )
        .await,
        rewritten_before + 1.0
    );
    assert_eq!(
        m.moved("tokengate_values_protected_total", &tokens, tokens_before)
            .await,
        tokens_before + 3.0
    );
    assert_eq!(
        m.moved("tokengate_rows_total", &[("role", "analyst")], analyst_rows)
            .await,
        analyst_rows + 3.0
    );
    // Masking, refusals, the refusal alert; audit failures while the disk is full.
    let masks = [("label", "email"), ("action", "mask")];
    let masks_before = m.get("tokengate_values_protected_total", &masks).await;
    let refused = [("role", "support"), ("decision", "refused")];
    let refused_before = m.get("tokengate_statements_by_role_total", &refused).await;
    let refusals = m.get("tokengate_refusals_total", &[]).await;
    let alerts = [("role", "support"), ("kind", "refusals")];
    let alerts_before = m.get("tokengate_alerts_total", &alerts).await;
    let write_errors = m.get("tokengate_audit_write_errors_total", &[]).await;
    let dropped = m.get("tokengate_audit_dropped_total", &[]).await;
    let support = session(&server, "support").await;
    support
        .simple_query("SELECT email FROM customers WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(
        m.moved("tokengate_values_protected_total", &masks, masks_before)
            .await,
        masks_before + 1.0
    );
    for _ in 0..2 {
        let e = support
            .simple_query("SELECT lower(email) FROM customers")
            .await
            .unwrap_err();
        let message = e.as_db_error().map(|d| d.message().to_owned());
        assert!(message.as_deref().unwrap_or("").contains("TG106"), "{e:?}");
    }
    assert_eq!(
        m.moved(
            "tokengate_statements_by_role_total",
            &refused,
            refused_before
        )
        .await,
        refused_before + 2.0
    );
    assert_eq!(
        m.moved("tokengate_refusals_total", &[], refusals).await,
        refusals + 2.0
    );
    assert!(
        m.moved("tokengate_alerts_total", &alerts, alerts_before)
            .await
            > alerts_before
    );
    assert!(
        m.moved("tokengate_audit_write_errors_total", &[], write_errors)
            .await
            > write_errors
    );
    assert!(m.moved("tokengate_audit_dropped_total", &[], dropped).await > dropped);
    assert_eq!(m.get("tokengate_audit_healthy", &[]).await, 0.0);

    // The disk comes back: records are written and the log is healthy again.
    let records = m.get("tokengate_audit_records_total", &[]).await;
    std::fs::remove_file(&audit).unwrap();
    support
        .simple_query("SELECT ssn FROM customers WHERE id = 1")
        .await
        .unwrap();
    assert!(m.moved("tokengate_audit_records_total", &[], records).await > records);
    let mut healthy = 0.0;
    eventually(10, async || {
        healthy = m.get("tokengate_audit_healthy", &[]).await;
        healthy == 1.0
    })
    .await;
    assert_eq!(healthy, 1.0);

    // Monitor-only: the refusal is counted as monitored and the statement runs.
    let monitored = [("role", "ana2"), ("decision", "monitored")];
    let monitored_before = m
        .get("tokengate_statements_by_role_total", &monitored)
        .await;
    let ana2 = session(&server, "ana2").await;
    ana2.simple_query("SELECT lower(email) FROM customers WHERE id = 1")
        .await
        .unwrap();
    assert!(
        m.moved(
            "tokengate_statements_by_role_total",
            &monitored,
            monitored_before
        )
        .await
            > monitored_before
    );

    // Policy reloads: a good edit bumps the generation, a bad one counts an error.
    let ok = m
        .get("tokengate_policy_reloads_total", &[("result", "ok")])
        .await;
    write_atomically(
        &policy,
        &POLICY.replace("analyst: { pii: token }", "analyst: { pii: mask }"),
    );
    assert!(
        m.moved("tokengate_policy_reloads_total", &[("result", "ok")], ok)
            .await
            > ok
    );
    assert!(m.moved("tokengate_policy_generation", &[], 1.0).await >= 2.0);
    let errors = m
        .get("tokengate_policy_reloads_total", &[("result", "error")])
        .await;
    write_atomically(&policy, "version: 1\nroles:\n  support: { pii: hide }\n");
    assert!(
        m.moved(
            "tokengate_policy_reloads_total",
            &[("result", "error")],
            errors
        )
        .await
            > errors
    );

    // Connections that end badly, each with its outcome.
    let auth_failed = m
        .get("tokengate_connections_total", &[("outcome", "auth_failed")])
        .await;
    let mut wrong = crm_config(server.addr.port(), "support");
    wrong.password("not-the-password");
    assert!(wrong.connect(tokio_postgres::NoTls).await.is_err());
    assert!(
        m.moved(
            "tokengate_connections_total",
            &[("outcome", "auth_failed")],
            auth_failed
        )
        .await
            > auth_failed
    );
    let protocol_errors = m
        .get(
            "tokengate_connections_total",
            &[("outcome", "protocol_error")],
        )
        .await;
    let mut raw = Raw::tcp(server.addr).await;
    raw.send(&[0, 0, 0, 3, 0, 0, 0, 0]).await;
    while raw.recv().await.is_some() {}
    assert!(
        m.moved(
            "tokengate_connections_total",
            &[("outcome", "protocol_error")],
            protocol_errors
        )
        .await
            > protocol_errors
    );

    // An unreachable upstream: upstream_errors_total.
    let down = proxy_with(|c| {
        c.upstream = tokengate::config::Upstream::parse("postgres://127.0.0.1:1").unwrap();
    })
    .await;
    let d = Probe { server: &down };
    let upstream_errors = d.get("tokengate_upstream_errors_total", &[]).await;
    assert!(
        connect_result(&crm_config(down.addr.port(), "support"))
            .await
            .is_err()
    );
    assert!(
        d.moved("tokengate_upstream_errors_total", &[], upstream_errors)
            .await
            > upstream_errors
    );
}

async fn connect_result(
    config: &tokio_postgres::Config,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// Clear roles' statements and rows, and the analysis cache. These counters stayed flat before
/// the read-path counter fix (the protocol branch); this test fails until it is merged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_roles_and_the_analysis_cache_are_counted() {
    crm();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let keys = crm().keys.clone();
    let server = proxy_with(move |c| {
        c.policy = Some(policy);
        c.keys = Some(keys);
        c.catalog_user = Some("postgres".into());
        c.catalog_password = Some(SUPERUSER_PW.into());
    })
    .await;
    let m = Probe { server: &server };

    let admin_clear = [("role", "app_admin"), ("decision", "clear")];
    let clear_before = m
        .get("tokengate_statements_by_role_total", &admin_clear)
        .await;
    let admin_rows = m
        .get("tokengate_rows_total", &[("role", "app_admin")])
        .await;
    let admin = session(&server, "app_admin").await;
    let rows = admin
        .query("SELECT email FROM customers WHERE id <= 3", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(
        m.moved(
            "tokengate_statements_by_role_total",
            &admin_clear,
            clear_before
        )
        .await,
        clear_before + 1.0,
        "a clear role's statement counts as decision=clear"
    );
    assert_eq!(
        m.moved("tokengate_rows_total", &[("role", "app_admin")], admin_rows)
            .await,
        admin_rows + 3.0,
        "a clear role's rows count"
    );

    // The first analysis of a text is a miss, the same text again a hit.
    let misses = m.get("tokengate_analysis_cache_misses_total", &[]).await;
    let hits = m.get("tokengate_analysis_cache_hits_total", &[]).await;
    let analyst = session(&server, "analyst").await;
    let sql = "SELECT email FROM customers WHERE id <= 2 ORDER BY id DESC";
    analyst.simple_query(sql).await.unwrap();
    assert!(
        m.moved("tokengate_analysis_cache_misses_total", &[], misses)
            .await
            > misses,
        "analysis cache misses"
    );
    analyst.simple_query(sql).await.unwrap();
    assert!(
        m.moved("tokengate_analysis_cache_hits_total", &[], hits)
            .await
            > hits,
        "analysis cache hits"
    );
}
