//! Audit trail and alerts end to end: statements through tokengate land in the hash-chained
//! log with their decisions, rows and refusals; `tokengate audit verify` proves it intact; an
//! alert with `action: terminate` ends the offending session at its threshold, not below.
use crate::crm::*;
use crate::harness::*;
use std::path::PathBuf;
use tokengate::protect::keys::{Key, KeyRing};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_log_records_decisions_and_alerts_terminate() {
    crm();
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.json");
    let mut ring = KeyRing::generate("default");
    ring.insert("audit", 1, Key::generate());
    ring.write_new(&keys, false).unwrap();
    let demo = crm_policy_text();
    let support_rule = "support:   { pii: mask, financial: mask, health: deny }";
    assert!(
        demo.contains(support_rule),
        "the demo policy changed; update this test"
    );
    let policy_text = demo.replace(
        support_rule,
        "support:   { pii: mask, financial: mask, health: deny, alerts: { max_refusals_per_minute: 2, action: terminate } }",
    );
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, policy_text).unwrap();
    let log = dir.path().join("audit.log");
    let (k, p, l) = (keys.clone(), policy.clone(), log.clone());
    let proxy = proxy_with(move |c| {
        c.policy = Some(p);
        c.keys = Some(k);
        c.catalog_user = Some("postgres".into());
        c.catalog_password = Some(SUPERUSER_PW.into());
        c.audit = Some(tokengate::audit::AuditConfig::new(l));
    })
    .await;

    let s = via(&proxy, "support").await;
    let rows = s
        .client
        .simple_query("SELECT id, email FROM customers ORDER BY id LIMIT 5")
        .await
        .unwrap();
    assert_eq!(
        rows.iter()
            .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
            .count(),
        5
    );
    // Two refusals are within the limit: the session goes on.
    for _ in 0..2 {
        let e = s
            .client
            .simple_query("SELECT lower(email) FROM customers")
            .await
            .unwrap_err();
        assert_eq!(e.code().map(|c| c.code()), Some("42501"));
    }
    assert!(
        s.client.simple_query("SELECT 1").await.is_ok(),
        "below the threshold the session stays"
    );
    // The third crosses it: refused, then the session is ended with TG010.
    let e = s
        .client
        .simple_query("SELECT upper(ssn) FROM customers")
        .await
        .unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("42501"));
    let gone = eventually(10, async || {
        s.client.simple_query("SELECT 1").await.is_err() && s.client.is_closed()
    })
    .await;
    assert!(gone, "the session was terminated by the alert");
    let alerts = metric_reaching(
        &proxy,
        "tokengate_alerts_total{role=\"support\",kind=\"refusals\"}",
        1.0,
    )
    .await;
    assert!(alerts >= 1.0);

    // The log holds the rewritten read (rows, column decisions) and each refusal.
    let audit = proxy.context.audit.as_ref().unwrap();
    assert!(audit.flush());
    let text = std::fs::read_to_string(&log).unwrap();
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let read = records
        .iter()
        .find(|r| {
            r["statement"]
                .as_str()
                .is_some_and(|s| s.contains("SELECT id, email"))
        })
        .expect("the read is audited");
    assert_eq!(read["role"], "support");
    assert_eq!(read["rows"], 5);
    assert_eq!(read["database"], CRM_DB);
    assert_eq!(read["columns"][0]["column"], "public.customers.email");
    assert_eq!(read["columns"][0]["action"], "mask");
    assert!(
        read["columns"][0]["rule"]
            .as_str()
            .unwrap()
            .contains("roles.support")
    );
    let refusals: Vec<_> = records.iter().filter(|r| !r["refusal"].is_null()).collect();
    assert_eq!(refusals.len(), 3);
    assert_eq!(refusals[0]["refusal"]["code"], "TG106");
    assert!(
        !text.contains("SELECT 1\""),
        "statements touching nothing protected are not audited by default"
    );

    // The chain verifies with the audit key, and names a tampered line.
    let verify = |file: &PathBuf| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
            .args([
                "audit",
                "verify",
                file.to_str().unwrap(),
                "--keys",
                keys.to_str().unwrap(),
            ])
            .output()
            .unwrap()
    };
    let ok = verify(&log);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).starts_with("OK"));
    let tampered = dir.path().join("tampered.log");
    std::fs::write(&tampered, text.replacen("\"rows\":5", "\"rows\":0", 1)).unwrap();
    let bad = verify(&tampered);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bad.stdout).contains("edited"),
        "{}",
        String::from_utf8_lossy(&bad.stdout)
    );
}
