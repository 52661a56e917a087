//! Every metric tokengate exports, registered once in [`Metrics`]. Hot paths keep handles
//! (cloned counters) instead of looking labels up per message: a labelled lookup costs
//! ~100 ns, a held handle ~20 ns (STACK.md).
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabel {
    pub version: String,
}

/// `tokengate_statements_by_role_total{role,decision}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleDecisionLabel {
    pub role: String,
    /// clear | rewritten | refused | monitored
    pub decision: String,
}

/// `tokengate_values_protected_total{label,action}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LabelActionLabel {
    pub label: String,
    pub action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabel {
    pub role: String,
}

/// `tokengate_alerts_total{role,kind}`; kind is protected_values | refusals.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleKindLabel {
    pub role: String,
    pub kind: String,
}

/// Registers a labelled family so its HELP/TYPE lines are printed even before its first
/// series exists. prometheus-client 0.25 omits empty families from the exposition
/// (`Registry::encode` filters on `is_empty`), and families labelled by role, label or
/// refusal reason have no value to pre-create; dashboards and the deploy cross-check still
/// need to see the name. OpenMetrics allows a family with no samples.
#[derive(Debug)]
struct AlwaysDescribed<M>(M);

impl<M: EncodeMetric> EncodeMetric for AlwaysDescribed<M> {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }

    fn is_empty(&self) -> bool {
        false
    }
}

/// The process-wide metrics. Cheap to clone (every field is an `Arc` inside).
#[derive(Clone, Debug)]
pub struct Metrics {
    pub connections_active: Gauge,
    pub connections_total: Family<OutcomeLabel, Counter>,
    pub bytes_total: Family<DirectionLabel, Counter>,
    pub statements_total: Counter,
    pub statement_duration_seconds: Histogram,
    pub upstream_errors_total: Counter,
    pub build_info: Family<VersionLabel, Gauge>,
    pub policy_reloads_total: Family<ResultLabel, Counter>,
    pub policy_generation: Gauge,
    pub statements_by_role_total: Family<RoleDecisionLabel, Counter>,
    pub values_protected_total: Family<LabelActionLabel, Counter>,
    pub refusals_total: Family<ReasonLabel, Counter>,
    pub rows_total: Family<RoleLabel, Counter>,
    pub analysis_cache_hits_total: Counter,
    pub analysis_cache_misses_total: Counter,
    pub catalog_refresh_total: Counter,
    pub alerts_total: Family<RoleKindLabel, Counter>,
    pub audit_records_total: Counter,
    pub audit_write_errors_total: Counter,
    pub audit_dropped_total: Counter,
    /// 1 while the audit log is being written, 0 while writes fail.
    pub audit_healthy: Gauge,
}

impl Metrics {
    /// Creates the metrics and registers them under the `tokengate_` prefix.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Metrics {
            connections_active: Gauge::default(),
            connections_total: Family::default(),
            bytes_total: Family::default(),
            statements_total: Counter::default(),
            statement_duration_seconds: Histogram::new([
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0,
            ]),
            upstream_errors_total: Counter::default(),
            build_info: Family::default(),
            policy_reloads_total: Family::default(),
            policy_generation: Gauge::default(),
            statements_by_role_total: Family::default(),
            values_protected_total: Family::default(),
            refusals_total: Family::default(),
            rows_total: Family::default(),
            analysis_cache_hits_total: Counter::default(),
            analysis_cache_misses_total: Counter::default(),
            catalog_refresh_total: Counter::default(),
            alerts_total: Family::default(),
            audit_records_total: Counter::default(),
            audit_write_errors_total: Counter::default(),
            audit_dropped_total: Counter::default(),
            audit_healthy: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("tokengate");
        r.register(
            "connections_active",
            "Client sessions open now",
            m.connections_active.clone(),
        );
        r.register(
            "connections",
            "Client connections by how they ended or were refused",
            m.connections_total.clone(),
        );
        r.register(
            "bytes",
            "Bytes relayed, by direction (client_to_upstream, upstream_to_client)",
            m.bytes_total.clone(),
        );
        r.register(
            "statements",
            "Statements relayed (simple Query messages and extended-protocol Executes)",
            m.statements_total.clone(),
        );
        r.register(
            "statement_duration_seconds",
            "Time from a client's request to the upstream's ReadyForQuery",
            m.statement_duration_seconds.clone(),
        );
        r.register(
            "upstream_errors",
            "Failures to reach or keep the upstream PostgreSQL",
            m.upstream_errors_total.clone(),
        );
        r.register("build_info", "Build information", m.build_info.clone());
        r.register(
            "policy_reloads",
            "Policy reload attempts by result (ok, error)",
            m.policy_reloads_total.clone(),
        );
        r.register(
            "policy_generation",
            "Generation number of the policy in force (increments on each good reload)",
            m.policy_generation.clone(),
        );
        r.register(
            "statements_by_role",
            "Statements by login role and decision (clear, rewritten, refused, monitored)",
            AlwaysDescribed(m.statements_by_role_total.clone()),
        );
        r.register(
            "values_protected",
            "Column values tokenized, masked or nulled, by label and action",
            AlwaysDescribed(m.values_protected_total.clone()),
        );
        r.register(
            "refusals",
            "Statements refused, by reason",
            AlwaysDescribed(m.refusals_total.clone()),
        );
        r.register(
            "rows",
            "Result rows returned to clients, by login role",
            AlwaysDescribed(m.rows_total.clone()),
        );
        r.register(
            "analysis_cache_hits",
            "Statement analyses served from the cache",
            m.analysis_cache_hits_total.clone(),
        );
        r.register(
            "analysis_cache_misses",
            "Statement analyses computed (cache misses)",
            m.analysis_cache_misses_total.clone(),
        );
        r.register(
            "catalog_refresh",
            "Catalog cache refreshes from the upstream",
            m.catalog_refresh_total.clone(),
        );
        r.register(
            "alerts",
            "Exfiltration alert thresholds crossed, by role and kind (protected_values, refusals)",
            AlwaysDescribed(m.alerts_total.clone()),
        );
        r.register(
            "audit_records",
            "Audit records written",
            m.audit_records_total.clone(),
        );
        r.register(
            "audit_write_errors",
            "Failed audit log writes (disk full, permission lost...)",
            m.audit_write_errors_total.clone(),
        );
        r.register(
            "audit_dropped",
            "Audit records dropped (queue full or writer failing with on_failure: continue)",
            m.audit_dropped_total.clone(),
        );
        r.register(
            "audit_healthy",
            "1 while the audit log is written successfully (or disabled), 0 while writes fail",
            m.audit_healthy.clone(),
        );
        // Both results exist from the start, so a failure rate is computable before the
        // first reload (ok/error are the values PolicyStore uses).
        for result in ["ok", "error"] {
            let _ = m.policy_reloads_total.get_or_create(&ResultLabel {
                result: result.to_string(),
            });
        }
        // Healthy until a write fails: a server without an audit log has nothing failing.
        m.audit_healthy.set(1);
        m.build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        m
    }

    /// A registry plus metrics, for tests and tools that don't serve them.
    pub fn standalone() -> (Registry, Self) {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        (registry, m)
    }

    /// Renders the OpenMetrics text exposition.
    pub fn render(registry: &Registry) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail except on fmt errors, which String never returns.
        let _ = prometheus_client::encoding::text::encode(&mut out, registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_prints_help_and_type_even_without_series() {
        let (registry, _m) = Metrics::standalone();
        let text = Metrics::render(&registry);
        for name in [
            "tokengate_statements_by_role",
            "tokengate_values_protected",
            "tokengate_refusals",
            "tokengate_rows",
            "tokengate_analysis_cache_hits",
            "tokengate_analysis_cache_misses",
            "tokengate_catalog_refresh",
            "tokengate_alerts",
            "tokengate_audit_records",
            "tokengate_audit_write_errors",
            "tokengate_audit_dropped",
            "tokengate_policy_reloads",
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} counter")),
                "{name} missing:\n{text}"
            );
        }
        assert!(text.contains("# TYPE tokengate_audit_healthy gauge"));
        assert!(text.contains("tokengate_policy_reloads_total{result=\"error\"} 0"));
        assert!(text.contains("tokengate_audit_healthy 1"));
    }

    #[test]
    fn described_families_print_their_series_once_created() {
        let (registry, m) = Metrics::standalone();
        m.refusals_total
            .get_or_create(&ReasonLabel {
                reason: "derived".into(),
            })
            .inc_by(2);
        let text = Metrics::render(&registry);
        assert!(
            text.contains("tokengate_refusals_total{reason=\"derived\"} 2"),
            "{text}"
        );
        assert_eq!(text.matches("# TYPE tokengate_refusals counter").count(), 1);
    }
}
