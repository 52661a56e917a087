//! The shipped Grafana dashboard and Prometheus rules against a real tokengate's /metrics:
//! every metric they use is exported, every exported family is on the dashboard, and the
//! rules pass `promtool check rules` (when promtool is installed).
use std::collections::BTreeSet;
use std::path::Path;
use tokengate::config::{ServeConfig, Upstream};
use tokengate::server::RunningServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DASHBOARD: &str = "deploy/grafana/tokengate.json";
const RULES: &str = "deploy/prometheus/alerts.yml";

/// Every `tokengate_…` identifier in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("tokengate_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// The PromQL expressions of the dashboard's panels and variables.
fn dashboard_exprs(dashboard: &serde_json::Value) -> Vec<String> {
    fn walk(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("expr" | "query" | "definition", serde_json::Value::String(s)) => {
                            out.push(s.clone())
                        }
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, &mut out);
    out
}

/// Families in an exposition: `# TYPE name kind` lines.
fn exported_families(exposition: &str) -> Vec<(String, String)> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.to_owned()))
        .collect()
}

/// Whether a name used in a query is exported: a sample name (`x_total`, `x_bucket`), or
/// a family whose HELP/TYPE is printed before its first sample.
fn is_exported(name: &str, families: &[(String, String)]) -> bool {
    families.iter().any(|(family, kind)| match kind.as_str() {
        "counter" => name == format!("{family}_total"),
        "histogram" => ["_bucket", "_sum", "_count"]
            .iter()
            .any(|s| name == format!("{family}{s}")),
        _ => name == family,
    })
}

async fn scrape(server: &RunningServer) -> String {
    let admin = server.admin_addr.expect("admin listener");
    let mut tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_rules_use_only_exported_metrics_and_cover_them_all() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // No upstream is needed to serve /metrics; port 1 refuses connections.
    let mut config =
        ServeConfig::for_upstream(Upstream::parse("postgres://127.0.0.1:1/x").unwrap());
    config.admin = Some("127.0.0.1:0".parse().unwrap());
    let server = RunningServer::start(config).await.unwrap();
    let exposition = scrape(&server).await;
    server.shutdown().await;
    let families = exported_families(&exposition);
    assert!(families.len() >= 20, "{exposition}");

    let dashboard_text = std::fs::read_to_string(root.join(DASHBOARD)).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard_text).unwrap();
    let dashboard_names: BTreeSet<String> = dashboard_exprs(&dashboard)
        .iter()
        .flat_map(|e| metric_names(e))
        .collect();
    let rules_text = std::fs::read_to_string(root.join(RULES)).unwrap();
    let rule_names = metric_names(&rules_text);

    for (source, names) in [("dashboard", &dashboard_names), ("rules", &rule_names)] {
        assert!(!names.is_empty(), "{source} uses no metrics");
        let unknown: Vec<&String> = names
            .iter()
            .filter(|n| !is_exported(n, &families))
            .collect();
        assert!(
            unknown.is_empty(),
            "{source} uses metrics tokengate does not export: {unknown:?}\n{exposition}"
        );
    }
    let unused: Vec<&String> = families
        .iter()
        .map(|(family, _)| family)
        .filter(|family| {
            !dashboard_names
                .iter()
                .any(|n| is_exported(n, &[((*family).clone(), kind_of(&families, family))]))
        })
        .collect();
    assert!(unused.is_empty(), "the dashboard does not show {unused:?}");

    // The metrics the brief's read path and audit rely on are there by name.
    for family in [
        "tokengate_statements_by_role",
        "tokengate_values_protected",
        "tokengate_refusals",
        "tokengate_alerts",
        "tokengate_audit_healthy",
        "tokengate_statement_duration_seconds",
    ] {
        assert!(
            families.iter().any(|(f, _)| f == family),
            "{family} missing"
        );
    }
    assert!(rule_names.contains("tokengate_statement_duration_seconds_bucket"));
    assert!(rule_names.contains("tokengate_audit_healthy"));

    match std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(root.join(RULES))
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "promtool check rules failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!(
                "note: promtool is not on PATH; skipped `promtool check rules` (apt-get install prometheus)"
            );
        }
        Err(e) => panic!("running promtool: {e}"),
    }
}

fn kind_of(families: &[(String, String)], family: &str) -> String {
    families
        .iter()
        .find(|(f, _)| f == family)
        .map(|(_, k)| k.clone())
        .unwrap_or_default()
}

#[test]
fn metric_name_scanning_and_matching() {
    assert_eq!(
        metric_names(
            "sum(rate(tokengate_refusals_total{reason=\"x\"}[5m])) / tokengate_rows_total"
        ),
        ["tokengate_refusals_total", "tokengate_rows_total"]
            .map(String::from)
            .into_iter()
            .collect()
    );
    let families = vec![
        ("tokengate_a".to_owned(), "counter".to_owned()),
        ("tokengate_h_seconds".to_owned(), "histogram".to_owned()),
        ("tokengate_g".to_owned(), "gauge".to_owned()),
    ];
    assert!(is_exported("tokengate_a_total", &families));
    assert!(!is_exported("tokengate_a", &families));
    assert!(is_exported("tokengate_h_seconds_bucket", &families));
    assert!(!is_exported("tokengate_h_seconds", &families));
    assert!(is_exported("tokengate_g", &families));
    assert!(!is_exported("tokengate_missing_total", &families));
}
