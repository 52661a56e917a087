//! The per-session read path: tracks the statements, portals and cursors a client creates, the
//! order in which the server will answer, and rewrites result rows (DataRow, CopyData) by the
//! plan of the statement they belong to.
//!
//! Refusals are substitutions: a refused Query, Parse, Bind, Execute or FunctionCall is replaced
//! by one that PostgreSQL itself rejects, and the server's ErrorResponse is then replaced by
//! tokengate's. So PostgreSQL's own semantics apply: an aborted transaction block, and messages
//! skipped until Sync in the extended protocol.
//!
//! The expectation queue is kept for every role whenever a policy is configured, so a policy
//! reload mid-session can never attribute one statement's rows to another's plan.
use super::enforce::{NamedPlans, ProtectedColumn, Refusal, ResultPlan, plan_statement};
use crate::alerts::{AlertAction, Alerts};
use crate::audit::{AuditLog, AuditRecord, ColumnAudit, RefusalAudit, should_audit};
use crate::catalog::Snapshot;
use crate::errors::Code;
use crate::observe::metrics::{
    LabelActionLabel, Metrics, ReasonLabel, RoleDecisionLabel, RoleLabel,
};
use crate::policy::{Action as PolicyAction, ColumnDecision, RoleView};
use crate::protect::{Action, ColumnTransform, KeyRing, Output, TransformSpec};
use crate::sql::{AnalysisCache, StatementKind};
use crate::wire::backend::ErrorFields;
use crate::wire::frame::{begin_message, end_message};
use crate::wire::{Reader, frontend};
use dashmap::DashMap;
use prometheus_client::metrics::counter::Counter;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

/// Substitute SQL that PostgreSQL rejects at parse time (a syntax error).
const REFUSED_SQL: &[u8] = b"tokengate refused this statement";
/// Names that never exist, so Bind/Execute on them fail in the server.
const REFUSED_NAME: &[u8] = b"tokengate refused";

/// Shared across sessions: analyses per database and prepared column transforms.
#[derive(Default)]
pub struct ReadPathShared {
    analyses: DashMap<String, Arc<AnalysisCache>>,
    /// Prepared transforms with their `values_protected_total{label,action}` handle.
    transforms: DashMap<TransformKey, (Arc<ColumnTransform>, Counter)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct TransformKey {
    label: Arc<str>,
    action: PolicyAction,
    /// The token format or mask as the policy spells it (parsed only on a cache miss).
    spec: String,
    type_oid: u32,
    format: i16,
}

impl ReadPathShared {
    fn cache(&self, database: &str) -> Arc<AnalysisCache> {
        self.analyses
            .entry(database.to_string())
            .or_insert_with(|| Arc::new(AnalysisCache::new(4096)))
            .clone()
    }

    /// The prepared transform for a protected column in a given type and wire format.
    fn transform(
        &self,
        p: &ProtectedColumn,
        type_oid: u32,
        format: i16,
        keys: &KeyRing,
        metrics: &Metrics,
    ) -> Result<(Arc<ColumnTransform>, Counter), Refusal> {
        let d = &p.decision;
        let spec_text = match d.action {
            PolicyAction::Token => d.token.as_ref().map(|t| t.as_str()),
            PolicyAction::Mask => d.mask.as_ref().map(|m| m.as_str()),
            _ => None,
        };
        let key = TransformKey {
            label: d.label.clone(),
            action: d.action,
            spec: spec_text.unwrap_or_default().to_string(),
            type_oid,
            format,
        };
        if let Some(t) = self.transforms.get(&key) {
            return Ok(t.clone());
        }
        let counter = metrics
            .values_protected_total
            .get_or_create(&LabelActionLabel {
                label: d.label.to_string(),
                action: format!("{:?}", d.action).to_lowercase(),
            })
            .clone();
        let spec = transform_spec(d)?;
        let t = Arc::new(
            ColumnTransform::new(&spec, type_oid, format, keys).map_err(|e| {
                Refusal::new(
                    Code::UnsupportedValue,
                    format!("column {} cannot be protected: {e} ({})", d.column, d.rule),
                )
            })?,
        );
        self.transforms.insert(key, (t.clone(), counter.clone()));
        Ok((t, counter))
    }
}

fn transform_spec(d: &ColumnDecision) -> Result<TransformSpec, Refusal> {
    let bad = |what: &str| {
        Refusal::new(
            Code::UnsupportedValue,
            format!("column {} has no usable {what} ({})", d.column, d.rule),
        )
    };
    let action = match d.action {
        PolicyAction::Token => Action::Token(
            d.token
                .as_ref()
                .ok_or_else(|| bad("token format"))?
                .as_str()
                .parse()
                .map_err(|_| bad("token format"))?,
        ),
        PolicyAction::Mask => Action::Mask(
            d.mask
                .as_ref()
                .ok_or_else(|| bad("mask"))?
                .as_str()
                .parse()
                .map_err(|_| bad("mask"))?,
        ),
        PolicyAction::Null => Action::Null,
        PolicyAction::Clear | PolicyAction::Deny => return Err(bad("action")),
    };
    Ok(TransformSpec::new(action, d.label.to_string()))
}

/// What the audit log needs to know about a statement, created when it is decided and
/// written when it completes (rows and duration known).
#[derive(Debug)]
pub struct PendingAudit {
    text: String,
    columns: Vec<ColumnAudit>,
    started: Instant,
    rows: std::sync::atomic::AtomicU64,
}

/// A result being rewritten: the transforms per column and the rows seen so far.
#[derive(Debug)]
pub struct ActiveResult {
    plan: Arc<ResultPlan>,
    /// (column index, transform, `tokengate_values_protected_total{label,action}` handle).
    transforms: Vec<(usize, Arc<ColumnTransform>, Counter)>,
    rows_counter: Counter,
    /// The audit record this result's rows count toward.
    audit: Option<Arc<PendingAudit>>,
    rows: std::sync::atomic::AtomicU64,
}

impl ActiveResult {
    fn build(
        plan: Arc<ResultPlan>,
        types: &dyn Fn(&ProtectedColumn) -> u32,
        formats: &dyn Fn(usize) -> i16,
        shared: &ReadPathShared,
        keys: &KeyRing,
        metrics: &SessionMetrics,
        audit: Option<Arc<PendingAudit>>,
    ) -> Result<Arc<ActiveResult>, Refusal> {
        let mut transforms = Vec::with_capacity(plan.protected.len());
        for p in &plan.protected {
            let (t, counter) =
                shared.transform(p, types(p), formats(p.index), keys, &metrics.metrics)?;
            transforms.push((p.index, t, counter));
        }
        Ok(Arc::new(ActiveResult {
            audit,
            rows_counter: metrics.rows.clone(),
            plan,
            transforms,
            rows: Default::default(),
        }))
    }

    /// Counts a row; true when it is over the limit (and must not reach the client).
    fn count_row(&self) -> bool {
        self.rows_counter.inc();
        if let Some(a) = &self.audit {
            a.rows.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let n = self.rows.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        self.plan
            .row_limit
            .as_ref()
            .is_some_and(|(limit, _)| n > *limit)
    }

    fn over_limit(&self) -> Option<Refusal> {
        let (limit, rule) = self.plan.row_limit.as_ref()?;
        (self.rows.load(std::sync::atomic::Ordering::Relaxed) > *limit).then(|| {
            Refusal::new(
                Code::RowLimit,
                format!("the result exceeded the row limit of {limit} ({rule})"),
            )
        })
    }
}

/// What the server will send next, in order.
#[derive(Debug)]
enum Expect {
    /// A simple Query: one plan per statement (None = nothing to rewrite).
    Simple {
        plans: Vec<Option<Arc<ResultPlan>>>,
        index: usize,
        active: Option<Arc<ActiveResult>>,
        refusal: Option<Refusal>,
        /// A refusal decided while results streamed (row limit, lineage): swallow the rest of
        /// this statement's output and report it in place of its CommandComplete.
        failed: Option<Refusal>,
        audit: Option<Arc<PendingAudit>>,
    },
    /// An Execute of a portal.
    Execute {
        active: Option<Arc<ActiveResult>>,
        failed: Option<Refusal>,
        audit: Option<Arc<PendingAudit>>,
    },
    /// A substituted extended-protocol message whose ErrorResponse is tokengate's refusal.
    Refused(Refusal),
    Sync,
}

/// The per-session state.
pub struct ReadPath {
    pub database: String,
    pub login: String,
    pub view: Arc<RoleView>,
    pub snapshot: Option<Arc<Snapshot>>,
    pub catalog_error: Option<String>,
    pub needs_refresh: bool,
    /// The policy generation `view` was computed from.
    pub policy_generation: u64,
    named: NamedPlans,
    statements: HashMap<Vec<u8>, Option<Arc<ResultPlan>>>,
    portals: HashMap<Vec<u8>, Option<Arc<ActiveResult>>>,
    queue: VecDeque<Expect>,
    pub shared: Arc<ReadPathShared>,
    pub keys: Arc<KeyRing>,
    metrics: SessionMetrics,
    audit: Option<Arc<AuditLog>>,
    alerts: Arc<Alerts>,
    session: AuditSession,
    /// Set when an alert with `action: terminate` fires; the relay then ends the session.
    pub terminate: Option<Refusal>,
    /// Statement texts by prepared statement and portal name, for audit records.
    texts: HashMap<Vec<u8>, Arc<str>>,
    portal_texts: HashMap<Vec<u8>, Arc<str>>,
    /// Reused per protected value, so rewriting a row allocates nothing in the common case.
    scratch: Vec<u8>,
    /// The session's lexing settings (standard_conforming_strings from ParameterStatus).
    lex: crate::sql::LexSettings,
}

/// Who the audit records are about.
#[derive(Debug, Clone, Default)]
pub struct AuditSession {
    pub id: u64,
    pub client: String,
    pub application_name: String,
}

/// Metric handles resolved once per session (labelled lookups cost ~100 ns, held handles ~20).
struct SessionMetrics {
    metrics: Metrics,
    rows: Counter,
    clear: Counter,
    rewritten: Counter,
    refused: Counter,
    monitored: Counter,
}

impl SessionMetrics {
    fn new(metrics: Metrics, role: &str) -> Self {
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

    fn refusal(&self, r: &Refusal) {
        self.refused.inc();
        self.metrics
            .refusals_total
            .get_or_create(&ReasonLabel {
                reason: r.reason().to_string(),
            })
            .inc();
    }
}

/// Result plans per statement and the pending audit record.
type Decided = (Vec<Option<Arc<ResultPlan>>>, Option<Arc<PendingAudit>>);

fn column_audit(d: &ColumnDecision) -> ColumnAudit {
    ColumnAudit {
        column: d.column.to_string(),
        label: d.label.to_string(),
        action: format!("{:?}", d.action).to_lowercase(),
        rule: d.rule.to_string(),
    }
}

/// What the client-side handler should do with a frame.
pub enum ClientVerdict {
    Forward,
    Replace(Vec<u8>),
}

/// What the server-side handler should do with a frame.
pub enum ServerVerdict {
    Forward,
    Replace(Vec<u8>),
    Drop,
}

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    let start = begin_message(&mut out, tag);
    out.extend_from_slice(body);
    end_message(&mut out, start);
    out
}

fn cstr(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(s);
    out.push(0);
}

fn refusal_error(r: &Refusal) -> Vec<u8> {
    let e: ErrorFields = r.code.error(&r.message);
    e.encode()
}

impl ReadPath {
    pub fn new(
        database: String,
        login: String,
        view: Arc<RoleView>,
        shared: Arc<ReadPathShared>,
        keys: Arc<KeyRing>,
        metrics: Metrics,
        audit: (Option<Arc<AuditLog>>, Arc<Alerts>, AuditSession),
    ) -> Self {
        let (audit, alerts, session) = audit;
        ReadPath {
            audit,
            alerts,
            session,
            terminate: None,
            texts: HashMap::new(),
            portal_texts: HashMap::new(),
            scratch: Vec::new(),
            lex: crate::sql::LexSettings::default(),
            metrics: SessionMetrics::new(metrics, &login),
            database,
            login,
            view,
            snapshot: None,
            catalog_error: None,
            needs_refresh: true,
            policy_generation: 0,
            named: NamedPlans::default(),
            statements: HashMap::new(),
            portals: HashMap::new(),
            queue: VecDeque::new(),
            shared,
            keys,
        }
    }

    /// Without a catalog the role's groups are unknown, and a group rule may restrict it:
    /// fail closed.
    /// A role whose policy says `audit: all` takes the analysed path too, so every statement
    /// is recorded.
    fn restricted(&self) -> bool {
        self.snapshot.is_none()
            || !self.view.fully_clear()
            || (self.audit.is_some() && self.view.audit() == Some(crate::policy::AuditLevel::All))
    }

    /// Sets the session's `standard_conforming_strings` (from ParameterStatus, also the one
    /// sent during startup): it changes where string literals end, so it is part of the
    /// analysis and of its cache key. Analysis refuses statements whose literals would end
    /// elsewhere under the other value, so a stale value cannot open a leak.
    pub fn set_standard_conforming_strings(&mut self, on: bool) {
        self.lex.standard_conforming_strings = on;
    }

    /// Plans every statement of `sql`, or the first refusal.
    fn plan(&mut self, sql: &[u8]) -> Result<Vec<super::enforce::StatementPlan>, Refusal> {
        let Some(snapshot) = self.snapshot.clone() else {
            return Err(Refusal::new(
                Code::CatalogUnavailable,
                self.catalog_error
                    .clone()
                    .unwrap_or_else(|| "the catalog is not loaded".into()),
            ));
        };
        let Ok(sql) = std::str::from_utf8(sql) else {
            return Err(Refusal::new(
                Code::Unproven,
                "the statement is not valid UTF-8",
            ));
        };
        let analyses = self.shared.cache(&self.database).get_or_analyze(
            sql,
            self.lex,
            snapshot.as_ref(),
            snapshot.generation,
        );
        let mut plans = Vec::with_capacity(analyses.len());
        for a in analyses.iter() {
            let plan = plan_statement(a, &self.view, &snapshot, &self.named)?;
            if plan.is_ddl {
                self.needs_refresh = true;
            }
            // A later statement of the same message may FETCH from this cursor.
            if let Some((kind, name)) = &plan.names {
                let map = if *kind == StatementKind::DeclareCursor {
                    &mut self.named.cursors
                } else {
                    &mut self.named.prepared
                };
                map.insert(name.clone(), plan.result.clone());
            }
            plans.push(plan);
        }
        Ok(plans)
    }

    /// Plans a statement text and applies the role's enforcement mode: the result plans to
    /// use, or the refusal to send. Monitor-only roles (`enforce: false`) get no rewriting and
    /// no refusal; what would have happened is logged and counted as `monitored`.
    fn decide(&mut self, sql: &[u8]) -> Result<Decided, Refusal> {
        let mut outcome = self.plan(sql).map(|plans| {
            plans
                .into_iter()
                .map(|p| if p.names.is_some() { None } else { p.result })
                .collect::<Vec<_>>()
        });
        let rewrites = |plans: &Vec<Option<Arc<ResultPlan>>>| plans.iter().any(|p| p.is_some());
        if !self.view.enforce() {
            self.metrics.monitored.inc();
            match &outcome {
                Err(r) => {
                    tracing::warn!(role = %self.login, code = r.code.id(), reason = %r.message, "monitor-only: statement would be refused")
                }
                Ok(plans) if rewrites(plans) => {
                    tracing::info!(role = %self.login, "monitor-only: result would be rewritten")
                }
                Ok(_) => {}
            }
            return Ok((Vec::new(), None));
        }
        let touched = matches!(&outcome, Ok(plans) if rewrites(plans));
        if let Some(log) = &self.audit
            && should_audit(self.view.audit(), touched, outcome.is_err())
            && !log.accepting()
        {
            outcome = Err(Refusal::new(
                Code::AuditUnavailable,
                "the audit log cannot be written, and statements that must be audited are refused",
            ));
        }
        match &outcome {
            Ok(plans) if rewrites(plans) => {
                self.metrics.rewritten.inc();
            }
            Ok(_) => {
                self.metrics.clear.inc();
            }
            Err(r) => self.refused(r, Some(sql)),
        }
        let pending = match &outcome {
            Ok(plans) => self.pending(sql, plans.iter().flatten().map(|p| p.as_ref())),
            Err(_) => None,
        };
        outcome.map(|plans| (plans, pending))
    }

    /// A pending audit record when this statement must be audited.
    fn pending<'p>(
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
    fn pending_for_portal(
        &self,
        portal: &[u8],
        active: Option<&Arc<ActiveResult>>,
    ) -> Option<Arc<PendingAudit>> {
        let text = self.portal_texts.get(portal)?;
        let plan = active.map(|a| a.plan.as_ref());
        self.pending(text.as_bytes(), plan.into_iter())
    }

    /// Writes a completed statement's record and feeds the role's alert windows.
    fn finish_audit(&mut self, pending: &PendingAudit, rows: u64) {
        let values = rows * pending.columns.len() as u64;
        if let Some(log) = &self.audit {
            let mut record = self.audit_record(Some(pending.text.clone()));
            record.columns = pending.columns.clone();
            record.rows = rows;
            record.duration_ms = pending.started.elapsed().as_secs_f64() * 1000.0;
            log.record(record);
        }
        self.observe_alerts(values, false);
    }

    /// A record about this session and statement; callers add decisions, refusal, rows.
    fn audit_record(&self, statement: Option<String>) -> AuditRecord {
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

    fn observe_alerts(&mut self, protected_values: u64, refused: bool) {
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
    fn refused(&mut self, r: &Refusal, sql: Option<&[u8]>) {
        self.metrics.refusal(r);
        tracing::info!(role = %self.login, code = r.code.id(), reason = %r.message, "statement refused");
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

    /// Handles a client frame (tag + length + body). Only called for tags the relay routes
    /// here: Q, P, B, E, D, C, S, F.
    pub fn client_frame(
        &mut self,
        frame_bytes: &[u8],
    ) -> Result<ClientVerdict, crate::wire::WireError> {
        let tag = frame_bytes[0];
        let body = &frame_bytes[5..];
        let restricted = self.restricted();
        match tag {
            frontend::QUERY => {
                let sql = frontend::query(body)?;
                if !restricted {
                    self.queue.push_back(simple(Vec::new(), None));
                    return Ok(ClientVerdict::Forward);
                }
                match self.decide(sql) {
                    Ok((results, pending)) => {
                        let mut e = simple(results, None);
                        if let Expect::Simple { audit, .. } = &mut e {
                            *audit = pending;
                        }
                        self.queue.push_back(e);
                        Ok(ClientVerdict::Forward)
                    }
                    Err(r) => {
                        self.queue.push_back(simple(Vec::new(), Some(r)));
                        Ok(ClientVerdict::Replace(frame(
                            frontend::QUERY,
                            &[REFUSED_SQL, b"\0"].concat(),
                        )))
                    }
                }
            }
            frontend::PARSE => {
                let p = frontend::parse(body)?;
                if !restricted {
                    // Not analysed: if a reload later restricts this role, Bind must not find
                    // a "nothing to rewrite" plan for it (unknown statements are refused).
                    self.statements.remove(p.statement);
                    return Ok(ClientVerdict::Forward);
                }
                match self.decide(p.sql) {
                    Ok((results, _)) => {
                        let result = results.into_iter().next().flatten();
                        self.statements.insert(p.statement.to_vec(), result);
                        if self.audit.is_some() {
                            let text: Arc<str> = String::from_utf8_lossy(p.sql).into();
                            self.texts.insert(p.statement.to_vec(), text);
                        }
                        Ok(ClientVerdict::Forward)
                    }
                    Err(r) => {
                        self.statements.remove(p.statement);
                        self.queue.push_back(Expect::Refused(r));
                        let mut b = Vec::new();
                        cstr(&mut b, p.statement);
                        cstr(&mut b, REFUSED_SQL);
                        b.extend_from_slice(&0i16.to_be_bytes());
                        Ok(ClientVerdict::Replace(frame(frontend::PARSE, &b)))
                    }
                }
            }
            frontend::BIND => {
                let b = frontend::bind(body)?;
                if !restricted {
                    self.portals.remove(b.portal);
                    return Ok(ClientVerdict::Forward);
                }
                let plan = match self.statements.get(b.statement) {
                    Some(p) => Ok(p.clone()),
                    None => Err(Refusal::new(
                        Code::Unproven,
                        format!(
                            "prepared statement {:?} was not parsed through tokengate",
                            String::from_utf8_lossy(b.statement)
                        ),
                    )),
                };
                let active = plan.and_then(|plan| match plan {
                    None => Ok(None),
                    Some(plan) => {
                        let is_copy = plan.copy;
                        let snapshot = self.snapshot.clone();
                        ActiveResult::build(
                            plan,
                            &|p| {
                                if p.type_oid != 0 {
                                    p.type_oid
                                } else {
                                    snapshot
                                        .as_ref()
                                        .and_then(|s| s.column_type(&p.decision.column))
                                        .unwrap_or(0)
                                }
                            },
                            &|i| if is_copy { 0 } else { b.result_format(i) },
                            &self.shared,
                            &self.keys,
                            &self.metrics,
                            None,
                        )
                        .map(Some)
                    }
                });
                match active {
                    Ok(a) => {
                        self.portals.insert(b.portal.to_vec(), a);
                        if let Some(text) = self.texts.get(b.statement).cloned() {
                            self.portal_texts.insert(b.portal.to_vec(), text);
                        }
                        Ok(ClientVerdict::Forward)
                    }
                    Err(r) => {
                        self.refused(&r, None);
                        self.portals.remove(b.portal);
                        self.queue.push_back(Expect::Refused(r));
                        let mut out = Vec::new();
                        cstr(&mut out, b.portal);
                        cstr(&mut out, REFUSED_NAME);
                        out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
                        Ok(ClientVerdict::Replace(frame(frontend::BIND, &out)))
                    }
                }
            }
            frontend::EXECUTE => {
                let (portal, _) = frontend::execute(body)?;
                if !restricted {
                    self.queue.push_back(Expect::Execute {
                        active: None,
                        failed: None,
                        audit: None,
                    });
                    return Ok(ClientVerdict::Forward);
                }
                let active = match self.portals.get(portal) {
                    Some(a) => Ok(a.clone()),
                    // A cursor declared with SQL is a portal too.
                    None => match std::str::from_utf8(portal)
                        .ok()
                        .and_then(|n| self.named.cursors.get(n))
                    {
                        Some(None) => Ok(None),
                        Some(Some(plan)) => ActiveResult::build(
                            plan.clone(),
                            &|p| p.type_oid,
                            &|_| 0,
                            &self.shared,
                            &self.keys,
                            &self.metrics,
                            None,
                        )
                        .map(Some),
                        None => Err(Refusal::new(
                            Code::Unproven,
                            format!(
                                "portal {:?} was not bound through tokengate",
                                String::from_utf8_lossy(portal)
                            ),
                        )),
                    },
                };
                match active {
                    Ok(active) => {
                        let audit = self.pending_for_portal(portal, active.as_ref());
                        self.queue.push_back(Expect::Execute {
                            active,
                            failed: None,
                            audit,
                        });
                        Ok(ClientVerdict::Forward)
                    }
                    Err(r) => {
                        self.refused(&r, None);
                        self.queue.push_back(Expect::Refused(r));
                        let mut out = Vec::new();
                        cstr(&mut out, REFUSED_NAME);
                        out.extend_from_slice(&0i32.to_be_bytes());
                        Ok(ClientVerdict::Replace(frame(frontend::EXECUTE, &out)))
                    }
                }
            }
            frontend::CLOSE => {
                let (target, name) = frontend::target(body, "Close")?;
                match target {
                    frontend::Target::Statement => {
                        self.statements.remove(name);
                    }
                    frontend::Target::Portal => {
                        self.portals.remove(name);
                    }
                }
                Ok(ClientVerdict::Forward)
            }
            frontend::SYNC => {
                self.queue.push_back(Expect::Sync);
                Ok(ClientVerdict::Forward)
            }
            frontend::FUNCTION_CALL => {
                if !restricted {
                    self.queue.push_back(simple(Vec::new(), None));
                    return Ok(ClientVerdict::Forward);
                }
                // A function called by OID could return anything: not provable.
                let r = Refusal::new(
                    Code::Unproven,
                    "FunctionCall messages cannot be analysed; call the function in a SELECT",
                );
                self.refused(&r, None);
                self.queue.push_back(simple(Vec::new(), Some(r)));
                let mut out = 0u32.to_be_bytes().to_vec();
                out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
                Ok(ClientVerdict::Replace(frame(frontend::FUNCTION_CALL, &out)))
            }
            _ => Ok(ClientVerdict::Forward),
        }
    }

    /// Whether a server message with this tag must be buffered whole and passed to
    /// [`ReadPath::server_frame`]; tag-only bookkeeping happens here for the rest.
    pub fn server_needs_body(&self, tag: u8) -> bool {
        match tag {
            b'D' | b'd' => self.current_active().is_some() || self.current_failed(),
            b'T' | b'E' | b'C' | b's' | b'I' | b'Z' | b'H' | b'c' | b'S' => true,
            _ => false,
        }
    }

    fn current_active(&self) -> Option<&Arc<ActiveResult>> {
        match self.queue.front()? {
            Expect::Simple { active, .. } | Expect::Execute { active, .. } => active.as_ref(),
            _ => None,
        }
    }

    fn current_failed(&self) -> bool {
        matches!(
            self.queue.front(),
            Some(
                Expect::Simple {
                    failed: Some(_),
                    ..
                } | Expect::Execute {
                    failed: Some(_),
                    ..
                }
            )
        )
    }

    /// Handles a server frame routed here by [`ReadPath::server_needs_body`].
    pub fn server_frame(&mut self, frame_bytes: &[u8], out: &mut Vec<u8>) -> ServerVerdict {
        let tag = frame_bytes[0];
        let body = &frame_bytes[5..];
        match tag {
            b'T' => self.row_description(body),
            b'D' => self.data_row(body, out),
            b'd' => self.copy_data(body, out),
            b'H' => self.copy_out_response(body),
            b'C' | b'I' | b'c' => self.complete(tag),
            b's' => {
                let v = self.finish_execute();
                v.unwrap_or(ServerVerdict::Forward)
            }
            b'E' => self.error(body),
            b'S' => {
                // ParameterStatus: the server's value of a setting that changes lexing.
                let mut parts = body.split(|&b| b == 0);
                if parts.next() == Some(b"standard_conforming_strings") {
                    self.set_standard_conforming_strings(parts.next() != Some(b"off"));
                }
                ServerVerdict::Forward
            }
            b'Z' => {
                // Pops the Simple or Sync this ReadyForQuery answers, and anything stale before it.
                while let Some(e) = self.queue.pop_front() {
                    match e {
                        Expect::Simple { audit, .. } => {
                            if let Some(p) = audit {
                                let rows = p.rows.load(std::sync::atomic::Ordering::Relaxed);
                                self.finish_audit(&p, rows);
                            }
                            break;
                        }
                        Expect::Sync => break,
                        _ => {}
                    }
                }
                ServerVerdict::Forward
            }
            _ => ServerVerdict::Forward,
        }
    }

    fn row_description(&mut self, body: &[u8]) -> ServerVerdict {
        let snapshot = self.snapshot.clone();
        let view = self.view.clone();
        let shared = self.shared.clone();
        let keys = self.keys.clone();
        let Some(Expect::Simple {
            plans,
            index,
            active,
            failed,
            audit: pending_audit,
            ..
        }) = self.queue.front_mut()
        else {
            return ServerVerdict::Forward;
        };
        let pending_audit = pending_audit.clone();
        let plan = plans.get(*index).cloned().flatten();
        let columns = match parse_row_description(body) {
            Some(c) => c,
            None => return ServerVerdict::Forward,
        };
        // Server truth: a column RowDescription attributes to a protected table column must be
        // protected by the plan at that position, or the two sources disagree.
        if view.fully_clear() {
            return ServerVerdict::Forward;
        }
        for (i, c) in columns.iter().enumerate() {
            if c.table_oid == 0 {
                continue;
            }
            let Some((name, _)) = snapshot
                .as_ref()
                .and_then(|s| s.column_by_oid(c.table_oid, c.attnum))
            else {
                continue;
            };
            let Some(d) = view.column(&name) else {
                continue;
            };
            if d.action == PolicyAction::Clear {
                continue;
            }
            let covered = plan
                .as_ref()
                .and_then(|p| p.protected_at(i))
                .is_some_and(|p| p.decision.label == d.label);
            if !covered {
                let r = Refusal::new(
                    Code::LineageMismatch,
                    format!(
                        "the server reports result column {} as {name}, which the analysis did not see",
                        i + 1
                    ),
                );
                *failed = Some(r);
                return ServerVerdict::Drop;
            }
        }
        if let Some(plan) = plan {
            if plan.width != columns.len() {
                *failed = Some(Refusal::new(
                    Code::LineageMismatch,
                    format!(
                        "the server returns {} columns where the analysis expected {}",
                        columns.len(),
                        plan.width
                    ),
                ));
                return ServerVerdict::Drop;
            }
            let built = ActiveResult::build(
                plan,
                &|p| columns.get(p.index).map_or(0, |c| c.type_oid),
                &|i| columns.get(i).map_or(0, |c| c.format),
                &shared,
                &keys,
                &self.metrics,
                pending_audit,
            );
            match built {
                Ok(a) => *active = Some(a),
                Err(r) => {
                    *failed = Some(r);
                    return ServerVerdict::Drop;
                }
            }
        }
        ServerVerdict::Forward
    }

    /// Counts a result row against its plan: the active result when it must be rewritten,
    /// or the verdict to apply right away (dropped after a failure or over the row limit).
    fn row_to_rewrite(&mut self) -> Result<Arc<ActiveResult>, ServerVerdict> {
        if self.current_failed() {
            return Err(ServerVerdict::Drop);
        }
        let Some(active) = self.current_active().cloned() else {
            return Err(ServerVerdict::Forward);
        };
        if active.count_row() {
            self.fail_current(active.over_limit());
            return Err(ServerVerdict::Drop);
        }
        if active.transforms.is_empty() {
            return Err(ServerVerdict::Forward);
        }
        Ok(active)
    }

    fn data_row(&mut self, body: &[u8], out: &mut Vec<u8>) -> ServerVerdict {
        let active = match self.row_to_rewrite() {
            Ok(a) => a,
            Err(verdict) => return verdict,
        };
        match rewrite_data_row(body, &active, out, &mut self.scratch) {
            Ok(()) => ServerVerdict::Replace(std::mem::take(out)),
            Err(r) => {
                self.fail_current(Some(r));
                ServerVerdict::Drop
            }
        }
    }

    fn fail_current(&mut self, r: Option<Refusal>) {
        if let Some(Expect::Simple { failed, .. } | Expect::Execute { failed, .. }) =
            self.queue.front_mut()
            && failed.is_none()
            && let Some(r) = r
        {
            self.metrics.refusal(&r);
            tracing::info!(role = %self.login, code = r.code.id(), reason = %r.message, "result stopped");
            *failed = Some(r);
        }
    }

    fn copy_out_response(&mut self, body: &[u8]) -> ServerVerdict {
        let binary = body.first() == Some(&1);
        // COPY sends no RowDescription: in the simple protocol the result is built here, with
        // the catalog's column types and text format.
        if let Some(Expect::Simple {
            plans,
            index,
            active,
            failed,
            audit,
            ..
        }) = self.queue.front_mut()
            && active.is_none()
            && let Some(plan) = plans.get(*index).cloned().flatten()
        {
            match ActiveResult::build(
                plan,
                &|p| p.type_oid,
                &|_| 0,
                &self.shared,
                &self.keys,
                &self.metrics,
                audit.clone(),
            ) {
                Ok(a) => *active = Some(a),
                Err(r) => {
                    *failed = Some(r);
                    return ServerVerdict::Drop;
                }
            }
        }
        let Some(active) = self.current_active().cloned() else {
            return ServerVerdict::Forward;
        };
        if binary && !active.transforms.is_empty() {
            self.fail_current(Some(Refusal::new(
                Code::UnsupportedValue,
                "binary COPY of protected columns is not supported; use text or CSV",
            )));
            return ServerVerdict::Drop;
        }
        ServerVerdict::Forward
    }

    fn copy_data(&mut self, body: &[u8], out: &mut Vec<u8>) -> ServerVerdict {
        let active = match self.row_to_rewrite() {
            Ok(a) => a,
            Err(verdict) => return verdict,
        };
        // COPY ... HEADER: the first line holds column names, not values.
        if active.plan.copy_format.as_ref().is_some_and(|f| f.header)
            && active.rows.load(std::sync::atomic::Ordering::Relaxed) == 1
        {
            return ServerVerdict::Forward;
        }
        match rewrite_copy_line(body, &active) {
            Ok(line) => {
                *out = frame(b'd', &line);
                ServerVerdict::Replace(std::mem::take(out))
            }
            Err(r) => {
                self.fail_current(Some(r));
                ServerVerdict::Drop
            }
        }
    }

    /// CommandComplete, EmptyQueryResponse or CopyDone.
    fn complete(&mut self, tag: u8) -> ServerVerdict {
        let failure = match self.queue.front_mut() {
            Some(Expect::Simple {
                index,
                active,
                failed,
                ..
            }) => {
                if tag == b'c' {
                    // CopyDone: the statement's CommandComplete follows.
                    return if failed.is_some() {
                        ServerVerdict::Drop
                    } else {
                        ServerVerdict::Forward
                    };
                }
                *index += 1;
                *active = None;
                failed.take()
            }
            Some(Expect::Execute { failed, .. }) => {
                if tag == b'c' {
                    return if failed.is_some() {
                        ServerVerdict::Drop
                    } else {
                        ServerVerdict::Forward
                    };
                }
                let f = failed.take();
                self.pop_execute();
                f
            }
            _ => None,
        };
        match failure {
            Some(r) => ServerVerdict::Replace(refusal_error(&r)),
            None => ServerVerdict::Forward,
        }
    }

    fn finish_execute(&mut self) -> Option<ServerVerdict> {
        if let Some(Expect::Execute { failed, .. }) = self.queue.front_mut() {
            let f = failed.take();
            self.pop_execute();
            return f.map(|r| ServerVerdict::Replace(refusal_error(&r)));
        }
        None
    }

    /// Pops a completed Execute and writes its audit record (rows read from the portal so far).
    fn pop_execute(&mut self) {
        if let Some(Expect::Execute { active, audit, .. }) = self.queue.pop_front()
            && let Some(p) = audit
        {
            let rows = active.map_or(0, |a| a.rows.load(std::sync::atomic::Ordering::Relaxed));
            self.finish_audit(&p, rows);
        }
    }

    fn error(&mut self, body: &[u8]) -> ServerVerdict {
        let verdict = self.error_bookkeeping();
        match verdict {
            ServerVerdict::Forward if self.restricted() => match scrub_error(body) {
                Some(scrubbed) => ServerVerdict::Replace(scrubbed),
                None => ServerVerdict::Forward,
            },
            v => v,
        }
    }

    fn error_bookkeeping(&mut self) -> ServerVerdict {
        match self.queue.front_mut() {
            Some(Expect::Simple {
                refusal, active, ..
            }) => {
                *active = None;
                match refusal.take() {
                    Some(r) => ServerVerdict::Replace(refusal_error(&r)),
                    None => ServerVerdict::Forward,
                }
            }
            Some(Expect::Refused(_)) | Some(Expect::Execute { .. }) => {
                let replaced = match self.queue.pop_front() {
                    Some(Expect::Refused(r)) => Some(r),
                    _ => None,
                };
                // The server now skips everything until Sync.
                while matches!(
                    self.queue.front(),
                    Some(Expect::Refused(_) | Expect::Execute { .. })
                ) {
                    self.queue.pop_front();
                }
                match replaced {
                    Some(r) => ServerVerdict::Replace(refusal_error(&r)),
                    None => ServerVerdict::Forward,
                }
            }
            _ => ServerVerdict::Forward,
        }
    }
}

/// Server errors can echo stored values: `invalid input syntax for type integer: "<email>"`
/// for a cast in a WHERE clause, or a failing row in DETAIL. For restricted roles tokengate
/// drops DETAIL, CONTEXT and internal-query fields and redacts quoted text after a colon in the
/// message (identifiers in messages such as `relation "x" does not exist` are not after one).
/// Returns the rewritten message when anything was removed.
pub fn scrub_error(body: &[u8]) -> Option<Vec<u8>> {
    let mut r = Reader::new(body, "ErrorResponse");
    let mut fields = Vec::new();
    let mut changed = false;
    loop {
        let code = r.u8().ok()?;
        if code == 0 {
            break;
        }
        let value = r.cstr().ok()?;
        match code {
            b'D' | b'W' | b'q' | b'p' => changed = true,
            b'M' => {
                let redacted = redact_quoted_values(value);
                changed |= redacted != value;
                fields.push((code, redacted));
            }
            _ => fields.push((code, value.to_vec())),
        }
    }
    if !changed {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() + 5);
    let start = begin_message(&mut out, b'E');
    for (code, value) in fields {
        out.push(code);
        out.extend_from_slice(&value);
        out.push(0);
    }
    out.push(0);
    end_message(&mut out, start);
    Some(out)
}

/// Replaces `: "..."` (a value quoted after a colon) with `: "(withheld by tokengate)"`.
fn redact_quoted_values(message: &[u8]) -> Vec<u8> {
    const MARK: &[u8] = b": \"";
    let mut out = Vec::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.windows(MARK.len()).position(|w| w == MARK) {
        out.extend_from_slice(&rest[..at + MARK.len()]);
        let after = &rest[at + MARK.len()..];
        // PostgreSQL doubles nothing inside these quotes; the value ends at the last quote.
        match after.iter().rposition(|&b| b == b'"') {
            Some(end) => {
                out.extend_from_slice(b"(withheld by tokengate)\"");
                rest = &after[end + 1..];
            }
            None => {
                rest = after;
                break;
            }
        }
    }
    out.extend_from_slice(rest);
    out
}

fn simple(plans: Vec<Option<Arc<ResultPlan>>>, refusal: Option<Refusal>) -> Expect {
    Expect::Simple {
        plans,
        index: 0,
        active: None,
        refusal,
        failed: None,
        audit: None,
    }
}

struct DescribedColumn {
    table_oid: u32,
    attnum: i16,
    type_oid: u32,
    format: i16,
}

fn parse_row_description(body: &[u8]) -> Option<Vec<DescribedColumn>> {
    let mut r = Reader::new(body, "RowDescription");
    let n = r.count16().ok()?;
    let mut cols = Vec::with_capacity(n);
    for _ in 0..n {
        r.cstr().ok()?;
        let table_oid = r.u32().ok()?;
        let attnum = r.i16().ok()?;
        let type_oid = r.u32().ok()?;
        r.i16().ok()?;
        r.i32().ok()?;
        let format = r.i16().ok()?;
        cols.push(DescribedColumn {
            table_oid,
            attnum,
            type_oid,
            format,
        });
    }
    Some(cols)
}

/// Rewrites a DataRow body into `out` (a whole frame).
fn rewrite_data_row(
    body: &[u8],
    active: &ActiveResult,
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) -> Result<(), Refusal> {
    let malformed = || Refusal::new(Code::LineageMismatch, "malformed DataRow from the server");
    let mut r = Reader::new(body, "DataRow");
    let n = r.count16().map_err(|_| malformed())?;
    if n != active.plan.width {
        return Err(Refusal::new(
            Code::LineageMismatch,
            format!(
                "the server returns {n} columns where the analysis expected {}",
                active.plan.width
            ),
        ));
    }
    out.clear();
    let start = begin_message(out, b'D');
    out.extend_from_slice(&(n as i16).to_be_bytes());
    for i in 0..n {
        let value = r.value().map_err(|_| malformed())?;
        let transform = active.transforms.iter().find(|(idx, _, _)| *idx == i);
        match (value, transform) {
            (None, _) => out.extend_from_slice(&(-1i32).to_be_bytes()),
            (Some(v), None) => {
                out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                out.extend_from_slice(v);
            }
            (Some(v), Some((_, t, counter))) => {
                counter.inc();
                scratch.clear();
                match t.apply(v, scratch) {
                    Ok(Output::Value) => {
                        out.extend_from_slice(&(scratch.len() as i32).to_be_bytes());
                        out.extend_from_slice(scratch);
                    }
                    Ok(Output::Null) => out.extend_from_slice(&(-1i32).to_be_bytes()),
                    Err(e) => {
                        return Err(Refusal::new(
                            Code::UnsupportedValue,
                            format!(
                                "a value of result column {} cannot be protected: {e}",
                                i + 1
                            ),
                        ));
                    }
                }
            }
        }
    }
    end_message(out, start);
    Ok(())
}

/// Rewrites one COPY text-format line (tab-separated, `\N` = NULL, backslash escapes). Fields
/// with escapes are refused rather than guessed at.
fn rewrite_copy_line(line: &[u8], active: &ActiveResult) -> Result<Vec<u8>, Refusal> {
    let unsupported = |why: &str| Refusal::new(Code::UnsupportedValue, format!("COPY row: {why}"));
    let (content, newline) = match line.strip_suffix(b"\n") {
        Some(c) => (c, true),
        None => (line, false),
    };
    let Some(format) = active.plan.copy_format.as_ref() else {
        return Err(unsupported("the COPY format is unknown"));
    };
    let sep = format.delimiter;
    let Some(fields) = format.split(content) else {
        return Err(unsupported("binary rows, or a CSV value spanning lines"));
    };
    if fields.len() != active.plan.width {
        return Err(unsupported("the column count does not match the statement"));
    }
    let null = format.null.as_bytes();
    let mut out = Vec::with_capacity(line.len() + 16);
    let mut scratch = Vec::new();
    for (i, field) in fields.iter().enumerate() {
        let f = &content[field.range.clone()];
        if i > 0 {
            out.push(sep);
        }
        let transform = active.transforms.iter().find(|(idx, _, _)| *idx == i);
        match transform {
            None => out.extend_from_slice(f),
            Some(_) if !field.quoted && f == null => {
                // A custom NULL marker is also how a value equal to it is written.
                if !format.null_is_unambiguous() {
                    return Err(unsupported("a protected value equals the NULL marker"));
                }
                out.extend_from_slice(f)
            }
            Some((_, t, counter)) => {
                counter.inc();
                if field.quoted || f.contains(&b'\\') || f.contains(&format.quote) {
                    return Err(unsupported("escaped or quoted values in protected columns"));
                }
                scratch.clear();
                match t.apply(f, &mut scratch) {
                    Ok(Output::Value) => {
                        if scratch.iter().any(|&b| {
                            b == sep || b == b'\\' || b == b'\n' || b == b'\r' || b == format.quote
                        }) || (scratch.as_slice() == null)
                        {
                            return Err(unsupported("a protected value would need escaping"));
                        }
                        out.extend_from_slice(&scratch);
                    }
                    Ok(Output::Null) => out.extend_from_slice(null),
                    Err(e) => return Err(unsupported(&e.to_string())),
                }
            }
        }
    }
    if newline {
        out.push(b'\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::backend::error_field;

    fn error(fields: &[(u8, &str)]) -> Vec<u8> {
        let mut body = Vec::new();
        for (c, v) in fields {
            body.push(*c);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        body
    }

    #[test]
    fn scrubbing_removes_values_but_keeps_identifiers() {
        let body = error(&[
            (b'S', "ERROR"),
            (b'C', "22P02"),
            (
                b'M',
                "invalid input syntax for type integer: \"ada@example.com\"",
            ),
            (b'D', "Failing row contains (1, ada@example.com)."),
        ]);
        let out = scrub_error(&body).unwrap();
        let m = String::from_utf8(error_field(&out[5..], b'M').unwrap().to_vec()).unwrap();
        assert_eq!(
            m,
            "invalid input syntax for type integer: \"(withheld by tokengate)\""
        );
        assert!(error_field(&out[5..], b'D').is_none());
        assert_eq!(error_field(&out[5..], b'C'), Some(&b"22P02"[..]));
        let plain = error(&[
            (b'S', "ERROR"),
            (b'M', "relation \"nowhere\" does not exist"),
        ]);
        assert_eq!(scrub_error(&plain), None);
    }
}
