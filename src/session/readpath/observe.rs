//! Audit and metrics hooks of the read path: pending audit records (written when a statement
//! completes, with its rows), per-session metric handles, alert windows and refusal records.
use super::ReadPath;
use super::transform::ActiveResult;
use crate::alerts::AlertAction;
use crate::audit::{AuditRecord, ColumnAudit, RefusalAudit, should_audit};
use crate::errors::Code;
use crate::observe::metrics::{Metrics, ReasonLabel, RoleDecisionLabel, RoleLabel};
use crate::plan::{Refusal, ResultPlan};
use crate::policy::ColumnDecision;
use prometheus_client::metrics::counter::Counter;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// What the audit log needs to know about a statement, created when it is decided and
/// written when it completes (rows and duration known).
#[derive(Debug)]
pub struct PendingAudit {
    text: String,
    pub(super) columns: Vec<ColumnAudit>,
    started: Instant,
    pub(super) rows: AtomicU64,
}

/// Who the audit records are about.
#[derive(Debug, Clone, Default)]
pub struct AuditSession {
    pub id: u64,
    pub client: String,
    pub application_name: String,
}

/// Metric handles resolved once per session (labelled lookups cost ~100 ns, held handles ~20).
pub(super) struct SessionMetrics {
    pub(super) metrics: Metrics,
    /// `tokengate_rows_total{role}`: every result row, whatever the role's decisions.
    pub(super) rows: Counter,
    pub(super) clear: Counter,
    pub(super) rewritten: Counter,
    pub(super) refused: Counter,
    pub(super) monitored: Counter,
}

impl SessionMetrics {
    pub(super) fn new(metrics: Metrics, role: &str) -> Self {
        let decision = |d: &str| {
            metrics
                .statements_by_role_total
                .get_or_create(&RoleDecisionLabel {
                    role: role.to_string(),
                    decision: d.to_string(),
                })
                .clone()
        };
        let rows = metrics
            .rows_total
            .get_or_create(&RoleLabel {
                role: role.to_string(),
            })
            .clone();
        let (clear, rewritten) = (decision("clear"), decision("rewritten"));
        let (refused, monitored) = (decision("refused"), decision("monitored"));
        SessionMetrics {
            metrics,
            rows,
            clear,
            rewritten,
            refused,
            monitored,
        }
    }

    pub(super) fn refusal(&self, r: &Refusal) {
        self.refused.inc();
        self.metrics
            .refusals_total
            .get_or_create(&ReasonLabel {
                reason: r.reason().to_string(),
            })
            .inc();
    }
}

fn column_audit(d: &ColumnDecision) -> ColumnAudit {
    ColumnAudit {
        column: d.column.to_string(),
        label: d.label.to_string(),
        action: format!("{:?}", d.action).to_lowercase(),
        rule: d.rule.to_string(),
    }
}

impl ReadPath {
    /// A pending audit record when this statement must be audited.
    pub(super) fn pending<'p>(
        &self,
        sql: &[u8],
        plans: impl Iterator<Item = &'p ResultPlan>,
    ) -> Option<Arc<PendingAudit>> {
        self.audit.as_ref()?;
        let columns: Vec<ColumnAudit> = plans
            .flat_map(|p| p.protected.iter())
            .map(|p| column_audit(&p.decision))
            .collect();
        if !should_audit(self.view.audit(), !columns.is_empty(), false) {
            return None;
        }
        let text = String::from_utf8_lossy(sql).into_owned();
        Some(Arc::new(PendingAudit {
            text,
            columns,
            started: Instant::now(),
            rows: Default::default(),
        }))
    }

    /// The pending record for one Execute of a portal.
    pub(super) fn pending_for_portal(
        &self,
        text: Option<&Arc<str>>,
        active: Option<&Arc<ActiveResult>>,
    ) -> Option<Arc<PendingAudit>> {
        let text = text?;
        let plan = active.map(|a| a.plan.as_ref());
        self.pending(text.as_bytes(), plan.into_iter())
    }

    /// Writes a completed statement's record and feeds the role's alert windows.
    pub(super) fn finish_audit(&mut self, pending: &PendingAudit, rows: u64) {
        let values = rows * pending.columns.len() as u64;
        if let Some(log) = &self.audit {
            let mut record = self.audit_record(Some(pending.text.clone()));
            record.columns = pending.columns.clone();
            record.rows = rows;
            record.duration_ms = pending.started.elapsed().as_secs_f64() * 1000.0;
            log.record(record);
            self.audit_queued = true;
        }
        self.observe_alerts(values, false);
    }

    /// After a server frame: a ticket to wait on before forwarding it when it completed audit
    /// records and the log promises durability (`fsync: always`).
    pub fn durable_ticket(&mut self) -> Option<tokio::sync::oneshot::Receiver<bool>> {
        if !std::mem::take(&mut self.audit_queued) {
            return None;
        }
        self.audit.as_ref()?.durable()
    }

    /// Whether a record that could not be made durable must end the session.
    pub fn audit_fails_closed(&self) -> bool {
        self.audit.as_ref().is_some_and(|a| a.fails_closed())
    }

    /// A record about this session and statement; callers add decisions, refusal, rows.
    pub(super) fn audit_record(&self, statement: Option<String>) -> AuditRecord {
        AuditRecord {
            time: std::time::SystemTime::now(),
            session: self.session.id,
            client: self.session.client.clone(),
            role: self.login.clone(),
            application_name: self.session.application_name.clone(),
            database: self.database.clone(),
            fingerprint: statement.as_deref().map_or(0, crate::sql::fingerprint),
            statement,
            columns: Vec::new(),
            refusal: None,
            rows: 0,
            duration_ms: 0.0,
        }
    }

    pub(super) fn observe_alerts(&mut self, protected_values: u64, refused: bool) {
        let Some(limits) = self.view.alerts() else {
            return;
        };
        if self
            .alerts
            .observe(&self.login, protected_values, refused, &limits)
            == Some(AlertAction::Terminate)
            && self.terminate.is_none()
        {
            self.terminate = Some(Refusal::new(
                Code::AlertTerminated,
                format!(
                    "role {} crossed an alert threshold of its policy",
                    self.login
                ),
            ));
        }
    }

    /// Counts, logs and audits a refusal.
    pub(super) fn refused(&mut self, r: &Refusal, sql: Option<&[u8]>) {
        self.metrics.refusal(r);
        tracing::info!(role = %self.login, code = r.code.id(), reason = %crate::observe::logging::redact_literals(&r.message), "statement refused");
        if let Some(log) = &self.audit {
            let mut record =
                self.audit_record(sql.map(|s| String::from_utf8_lossy(s).into_owned()));
            record.refusal = Some(RefusalAudit {
                code: r.code.id().to_string(),
                reason: r.reason().to_string(),
                rule: r.message.clone(),
            });
            log.record(record);
        }
        self.observe_alerts(0, true);
    }

    /// Writes the audit record of a finished result (rows read so far).
    pub(super) fn finish_pending(&mut self, audit: Option<Arc<PendingAudit>>) {
        if let Some(p) = audit {
            let rows = p.rows.load(Ordering::Relaxed);
            self.finish_audit(&p, rows);
        }
    }
}
