//! Client-side decisions: every message that the server will answer is recorded in the
//! expectation queue; statements of restricted roles are analysed and planned, and refused ones
//! are replaced by messages PostgreSQL itself rejects.
//!
//! Nothing here changes the session's named objects: a Parse, Bind or DECLARE only takes effect
//! when the server confirms it (see [`super::objects`]). Early refusals (a Bind of a statement
//! tokengate never analysed, an Execute of a portal it never saw) look at what is confirmed plus
//! what is on its way; the server side checks the confirmed state again when replies arrive.
use super::objects::{Effect, Planned};
use super::{ClientVerdict, ExecuteReply, Pending, QueryReply, ReadPath, cstr, frame};
use crate::catalog::SessionCatalog;
use crate::errors::Code;
use crate::plan::{Named, NamedPlans, Overlay, Refusal, ResultPlan, plan_statement};
use crate::session::protocol::{Found, Request};
use crate::sql::{StatementAnalysis, StatementKind};
use crate::wire::frontend;
use std::sync::Arc;

/// Substitute SQL that PostgreSQL rejects at parse time (a syntax error).
const REFUSED_SQL: &[u8] = b"tokengate refused this statement";
/// How many literal notification payloads a session remembers as its own.
const OWN_PAYLOADS: usize = 1024;
/// The prepared statement a probe parses the client's text into (and closes at once).
const PROBE_NAME: &[u8] = b"tokengate probe";
/// Names that never exist, so Bind/Execute on them fail in the server.
const REFUSED_NAME: &[u8] = b"tokengate refused";

/// How many pending requests a name lookup scans (newest first); beyond it a name counts as
/// unknown, so a huge pipeline costs bounded work per message.
pub(super) const SCAN_LIMIT: usize = 4096;

/// The plans named objects will have once the messages already sent are confirmed.
struct Projection<'a>(&'a ReadPath);

impl Projection<'_> {
    /// The latest pending definition, if any; `Err` when the queue is too long to be sure.
    fn pending(
        &self,
        f: impl Fn(&Pending) -> Option<Option<Arc<ResultPlan>>>,
    ) -> Found<Option<Arc<ResultPlan>>> {
        self.0.protocol.find_recent(SCAN_LIMIT, f)
    }
}

impl Named for Projection<'_> {
    fn cursor(&self, name: &str) -> Option<Option<Arc<ResultPlan>>> {
        let pending = self.pending(|p| match p {
            Pending::Query(q) => q.statements.iter().rev().find_map(|s| match &s.effect {
                Effect::Declare { name: n, plan, .. } if n == name => Some(plan.clone()),
                _ => None,
            }),
            _ => None,
        });
        match pending {
            Found::Yes(plan) => Some(plan),
            Found::No => self
                .0
                .objects
                .portal(name.as_bytes())
                .and_then(|p| p.plan.clone()),
            Found::Unsure => None,
        }
    }

    fn prepared(&self, name: &str) -> Option<Option<Arc<ResultPlan>>> {
        let pending = self.pending(|p| match p {
            Pending::Query(q) => q.statements.iter().rev().find_map(|s| match &s.effect {
                Effect::Prepare { name: n, plan, .. } if n == name => Some(plan.clone()),
                _ => None,
            }),
            Pending::Parse { name: n, planned } if n == name.as_bytes() => {
                planned.as_ref().map(|p| p.result.clone())
            }
            _ => None,
        });
        match pending {
            Found::Yes(plan) => Some(plan),
            Found::No => self
                .0
                .objects
                .statements
                .get(name.as_bytes())
                .and_then(|s| s.planned.as_ref().map(|p| p.result.clone())),
            Found::Unsure => None,
        }
    }
}

impl ReadPath {
    /// Plans every statement of `sql`, or the first refusal. `runs`: the statements run now
    /// (a simple Query), in the current transaction; a Parse's run at Bind.
    fn plan(&mut self, sql: &[u8], runs: bool) -> Result<Vec<Planned>, Refusal> {
        let Some(snapshot) = self.snapshot.clone() else {
            return Err(Refusal::new(
                Code::CatalogUnavailable,
                self.catalog_error
                    .clone()
                    .unwrap_or_else(|| "the catalog is not loaded".into()),
            ));
        };
        if self.needs_refresh {
            return Err(Refusal::new(
                Code::SessionStateChanging,
                format!(
                    "the catalog has not been re-read since a statement that may have changed it{}",
                    self.catalog_error
                        .as_deref()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                ),
            ));
        }
        let Ok(sql) = std::str::from_utf8(sql) else {
            return Err(Refusal::new(
                Code::Unproven,
                "the statement is not valid UTF-8",
            ));
        };
        let path = self.names.current().cloned();
        // Relations the session created in its open transaction (read on its connection).
        let base = snapshot;
        let overlay = path.as_ref().and_then(|_| self.created.overlay(&base));
        let snapshot = overlay.clone().unwrap_or_else(|| base.clone());
        let catalog = SessionCatalog {
            snapshot: &snapshot,
            path: path.as_deref(),
        };
        let key = self.names.cache_key();
        let cache = match &self.cache {
            Some((k, c)) if k == key => c.clone(),
            _ => {
                let c = self.shared.cache(&self.database, key);
                self.cache = Some((key.to_string(), c.clone()));
                c
            }
        };
        let lex = crate::sql::LexSettings {
            standard_conforming_strings: self.names.standard_conforming_strings,
        };
        let analyses = match cache.get(sql, lex, snapshot.generation) {
            // The shared cache is per database: an analysis that saw this session's own
            // relations is neither taken from it nor put in it.
            _ if overlay.is_some() => Arc::new(crate::sql::analyze_with(sql, &catalog, lex)),
            Some(a) => {
                self.metrics.metrics.analysis_cache_hits_total.inc();
                a
            }
            None => {
                self.metrics.metrics.analysis_cache_misses_total.inc();
                cache.get_or_analyze(sql, lex, &catalog, snapshot.generation)
            }
        };
        if let Some((schema, name)) = catalog.shadowing_name(sql) {
            return Err(Refusal::new(
                Code::Unproven,
                format!(
                    "{name:?} may resolve to a user-defined function, operator or type in schema {schema} of the session's search_path"
                ),
            ));
        }
        let texts = crate::sql::split_statements(sql, lex);
        let at_rest_index = self.at_rest_index(&snapshot);
        let mut local = NamedPlans::default();
        let mut planned = Vec::with_capacity(analyses.len());
        // Lookups by token that put a decrypted value into the text PostgreSQL runs, and
        // whether every statement of the message only reads (checked after the loop).
        let mut reveals_literals = false;
        let mut only_reads = true;
        // Set once a statement may have changed name resolution: the later ones of this
        // message were analysed with the old names, so they resolve nothing now.
        let mut stale = path.is_none();
        for (i, a) in analyses.iter().enumerate() {
            let text = texts.get(i).copied().unwrap_or(sql);
            let reanalysed;
            // After a statement that may have changed names or the catalog, the relations
            // read for this transaction may be gone or different: the base snapshot only.
            let catalog = SessionCatalog {
                snapshot: if stale { &base } else { &snapshot },
                path: path.as_deref(),
            };
            let a: &StatementAnalysis = if stale && path.is_some() {
                let unknown = SessionCatalog {
                    snapshot: &base,
                    path: None,
                };
                reanalysed = crate::sql::analyze_with(text, &unknown, lex);
                reanalysed.first().unwrap_or(a)
            } else {
                a
            };
            if stale && !a.problems.is_empty() {
                return Err(Refusal::new(
                    Code::SessionStateChanging,
                    format!(
                        "the session's search_path, temp schema or catalog may have changed before this statement ({})",
                        a.problems[0].message
                    ),
                ));
            }
            let session = Projection(self);
            let named = Overlay {
                local: &local,
                session: &session,
            };
            if self.view.has_at_rest() {
                crate::plan::at_rest_state::writes_tokengate_schema(a, text, lex)?;
                crate::plan::at_rest_state::imports_snapshot(text, lex)?;
            }
            let mut plan = plan_statement(a, &self.view, &catalog, &named)?;
            let offset = (text.as_ptr() as usize).saturating_sub(sql.as_ptr() as usize);
            let mut at_rest =
                crate::plan::write::plan_at_rest(text, offset, lex, a, &at_rest_index, &catalog)?;
            if let Some(lookups) =
                crate::plan::write::plan_lookups(text, offset, lex, a, &self.view, &catalog)?
            {
                reveals_literals |= lookups.reveals_literals();
                match &mut at_rest {
                    Some(p) => p.merge(lookups),
                    None => at_rest = Some(lookups),
                }
            }
            only_reads &= matches!(a.kind, StatementKind::Select | StatementKind::DeclareCursor)
                && a.write_targets.is_empty()
                && !a.is_ddl;
            self.executes_planned_values(a)?;
            // With at-rest labels every statement carries a plan (maybe empty), so a Bind
            // can tell "nothing to tokenize" from "planned before at-rest applied".
            let at_rest = match at_rest {
                Some(p) => Some(Arc::new(self.at_rest_versions(a, p, &mut plan)?)),
                None if self.rewrites_values() => Some(Arc::new(self.at_rest_versions(
                    a,
                    Default::default(),
                    &mut plan,
                )?)),
                None => None,
            };
            if runs && let Some(p) = &at_rest {
                self.transaction_states.check(&p.versions)?;
            }
            if plan.is_ddl {
                self.needs_refresh = true;
            }
            let effect = effect_of(a, text, &plan);
            match &effect {
                Effect::Declare { name, plan: p, .. } => {
                    local.cursors.insert(name.clone(), p.clone());
                }
                Effect::Prepare { name, plan: p, .. } => {
                    local.prepared.insert(name.clone(), p.clone());
                }
                _ => {}
            }
            // Bounded: past the limit, further payloads are simply delivered empty.
            for n in crate::sql::literal_notifications(text) {
                if self.own_payloads.len() < OWN_PAYLOADS {
                    self.own_payloads.insert(n);
                }
            }
            let changes_names = super::names::may_change_names(a, text);
            self.created.planned(changes_names, plan.is_ddl);
            self.names.planned(a, text);
            if self.names.dirty {
                stale = true;
            }
            let rows = if plan.names.is_some() {
                None
            } else {
                plan.result
            };
            planned.push(Planned {
                result: rows,
                sensitive: plan.sensitive,
                effect,
                text: self
                    .audit
                    .is_some()
                    .then(|| Arc::<str>::from(text.to_string())),
                changes_names,
                is_ddl: plan.is_ddl,
                at_rest,
            });
        }
        if reveals_literals {
            // Another statement of the message could run a trigger recording current_query(),
            // which is the whole message.
            if !only_reads {
                return Err(Refusal::new(
                    Code::TokenLookupUnsupported,
                    "a lookup by token written as a literal in a message with statements that are not SELECT: send it on its own, or bind the token as a parameter ($1)",
                ));
            }
            crate::plan::write::check_revealed_text(sql, lex, &snapshot)?;
        }
        Ok(planned)
    }

    /// The key versions of the columns stored as tokens the statement touches, from their
    /// recorded states (refused when one is not usable now), given to the values to tokenize
    /// and to the result columns to decrypt.
    fn at_rest_versions(
        &self,
        a: &StatementAnalysis,
        mut at_rest: crate::plan::write::AtRestPlan,
        plan: &mut crate::plan::StatementPlan,
    ) -> Result<crate::plan::write::AtRestPlan, Refusal> {
        use crate::plan::at_rest_state;
        if a.kind == StatementKind::Fetch {
            // The cursor's rows were read under its DECLARE's state, which must still be the
            // current one; a Bind of a prepared FETCH checks them again.
            let declared = plan
                .result
                .as_ref()
                .map(|r| r.at_rest.clone())
                .unwrap_or_default();
            at_rest_state::cursor_current(
                a.name.as_deref().unwrap_or_default(),
                &declared,
                &self.view,
                self.at_rest_states.as_deref(),
                self.at_rest_error.as_deref(),
                &self.keys,
            )?;
            at_rest.set_versions(declared);
            return Ok(at_rest);
        }
        let touched = at_rest_state::touched(a, &self.view, Some(&at_rest));
        if touched.is_empty() {
            return Ok(at_rest);
        }
        let versions = at_rest_state::resolve(
            &touched,
            &self.view,
            self.at_rest_states.as_deref(),
            self.at_rest_error.as_deref(),
            &self.keys,
        )?;
        match plan.result.as_mut() {
            Some(result) => {
                let result = Arc::make_mut(result);
                for p in result.protected.iter_mut().filter(|p| p.decision.at_rest) {
                    p.key_version = versions
                        .iter()
                        .find(|v| v.column == p.decision.column)
                        .map(|v| v.key_version);
                }
                result.at_rest = versions.clone();
            }
            // A cursor with nothing to rewrite (a token role's): FETCH still needs the state
            // its rows are read under.
            None if a.kind == StatementKind::DeclareCursor => {
                plan.result = Some(Arc::new(ResultPlan {
                    width: a.outputs.len(),
                    at_rest: versions.clone(),
                    ..ResultPlan::default()
                }));
            }
            None => {}
        }
        at_rest.set_versions(versions);
        Ok(at_rest)
    }

    /// Plans a statement text and applies the role's enforcement mode. Monitor-only roles
    /// (`enforce: false`) get no rewriting and no refusal; what would have happened is logged
    /// and counted as `monitored`.
    fn decide(
        &mut self,
        sql: &[u8],
        runs: bool,
    ) -> Result<(Vec<Planned>, Option<Arc<super::PendingAudit>>), Refusal> {
        let mut outcome = self.plan(sql, runs);
        let rewrites = |plans: &Vec<Planned>| plans.iter().any(|p| p.result.is_some());
        // Columns stored as tokens are always enforced: a monitor-only role's writes must be
        // tokenized too.
        if !self.view.enforce() && !self.view.has_at_rest() {
            self.metrics.monitored.inc();
            match &outcome {
                Err(r) => {
                    tracing::warn!(role = %self.login, code = r.code.id(), reason = %crate::observe::logging::redact_literals(&r.message), "monitor-only: statement would be refused")
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
            && crate::audit::should_audit(self.view.audit(), touched, outcome.is_err())
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
            Ok(plans) => self.pending(
                sql,
                plans
                    .iter()
                    .filter_map(|p| p.result.as_ref())
                    .map(|p| p.as_ref()),
            ),
            Err(_) => None,
        };
        outcome.map(|plans| (plans, pending))
    }

    /// A refused simple Query may be replaced by a probe when it is one statement and nothing
    /// else is waiting for the server (a Sync of ours must not end a client's pipeline).
    fn may_probe(&self, sql: &[u8]) -> bool {
        self.protocol.front().is_none()
            && std::str::from_utf8(sql).is_ok_and(|text| {
                crate::sql::split_statements(
                    text,
                    crate::sql::LexSettings {
                        standard_conforming_strings: self.names.standard_conforming_strings,
                    },
                )
                .len()
                    == 1
            })
    }

    /// Parse of the client's text as [`PROBE_NAME`], Close of it, Parse of [`REFUSED_SQL`] as
    /// `target`. The server parses and analyses the text without running it: when it cannot,
    /// its own error is the answer (what the client would have got straight from PostgreSQL)
    /// and it skips the rest up to the client's (or our) Sync; when it can, the probe is closed
    /// and the last Parse fails, carrying the refusal. Either way the client sees one
    /// ErrorResponse, and the server is in the failed state the client expects.
    fn probe(
        &mut self,
        sql: &[u8],
        param_types: &[u32],
        target: &[u8],
        refusal: Refusal,
    ) -> Vec<u8> {
        let parse = |name: &[u8], text: &[u8], types: &[u32]| {
            let mut b = Vec::new();
            cstr(&mut b, name);
            cstr(&mut b, text);
            b.extend_from_slice(&(types.len().min(i16::MAX as usize) as i16).to_be_bytes());
            for t in types.iter().take(i16::MAX as usize) {
                b.extend_from_slice(&t.to_be_bytes());
            }
            frame(frontend::PARSE, &b)
        };
        let mut close = vec![b'S'];
        cstr(&mut close, PROBE_NAME);
        self.sent(Request::Parse, Pending::Probe);
        self.sent(Request::Close, Pending::Probe);
        self.sent(Request::Parse, Pending::Refused(refusal));
        [
            parse(PROBE_NAME, sql, param_types),
            frame(frontend::CLOSE, &close),
            parse(target, REFUSED_SQL, &[]),
        ]
        .concat()
    }

    fn sent(&mut self, request: Request, pending: Pending) {
        self.protocol.sent(request, pending);
    }

    /// A statement this role runs without analysis: counted, and the names may change unseen.
    fn unanalysed(&mut self) {
        self.metrics.clear.inc();
        self.names.dirty = true;
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
        self.transaction_states
            .client_message(self.at_rest_states.as_ref(), self.protocol.next_seq());
        match tag {
            frontend::QUERY => {
                let sql = frontend::query(body)?;
                // A Query drops the unnamed portal, and may DECLARE or CLOSE any other.
                self.described = None;
                self.copy_in = None;
                if !restricted {
                    self.unanalysed();
                    self.sent(Request::Query, Pending::Query(Box::default()));
                    return Ok(ClientVerdict::Forward);
                }
                match self.decide(sql, true).and_then(|(statements, audit)| {
                    let rewritten = self.tokenize_query(sql, &statements)?;
                    self.copy_in = self.copy_in_of(&statements)?;
                    Ok((statements, audit, rewritten))
                }) {
                    Ok((statements, audit, rewritten)) => {
                        let enforced = self.view.enforce();
                        self.sent(
                            Request::Query,
                            Pending::Query(Box::new(QueryReply {
                                statements,
                                audit,
                                restricted: true,
                                enforced,
                                ..QueryReply::default()
                            })),
                        );
                        Ok(match rewritten {
                            Some(sql) => ClientVerdict::Replace(frame(
                                frontend::QUERY,
                                &[sql.as_slice(), b"\0"].concat(),
                            )),
                            None => ClientVerdict::Forward,
                        })
                    }
                    Err(r) if r.server_may_explain && self.may_probe(sql) => {
                        let mut bytes = self.probe(sql, &[], b"", r);
                        self.sent(Request::Sync, Pending::Sync);
                        bytes.extend_from_slice(&frame(frontend::SYNC, &[]));
                        Ok(ClientVerdict::Replace(bytes))
                    }
                    Err(r) => {
                        self.sent(
                            Request::Query,
                            Pending::Query(Box::new(QueryReply {
                                refusal: Some(r),
                                restricted: true,
                                ..QueryReply::default()
                            })),
                        );
                        Ok(ClientVerdict::Replace(frame(
                            frontend::QUERY,
                            &[REFUSED_SQL, b"\0"].concat(),
                        )))
                    }
                }
            }
            frontend::PARSE => {
                let p = frontend::parse(body)?;
                let name = p.statement.to_vec();
                if !restricted {
                    self.unanalysed();
                    self.sent(
                        Request::Parse,
                        Pending::Parse {
                            name,
                            planned: None,
                        },
                    );
                    return Ok(ClientVerdict::Forward);
                }
                match self.decide(p.sql, false).and_then(|(planned, audit)| {
                    let mut planned = planned.into_iter().next().unwrap_or_default();
                    if planned.at_rest.is_none() && self.rewrites_values() {
                        // An empty statement: nothing to tokenize.
                        planned.at_rest = Some(Arc::default());
                    }
                    let rewritten = self.tokenize_parse(&p, &planned)?;
                    Ok((planned, audit, rewritten))
                }) {
                    Ok((planned, _, rewritten)) => {
                        self.sent(
                            Request::Parse,
                            Pending::Parse {
                                name,
                                planned: Some(planned),
                            },
                        );
                        Ok(match rewritten {
                            Some(body) => ClientVerdict::Replace(frame(frontend::PARSE, &body)),
                            None => ClientVerdict::Forward,
                        })
                    }
                    Err(r) if r.server_may_explain => Ok(ClientVerdict::Replace(self.probe(
                        p.sql,
                        &p.param_types,
                        p.statement,
                        r,
                    ))),
                    Err(r) => {
                        self.sent(Request::Parse, Pending::Refused(r));
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
                if self.described.as_deref() == Some(b.portal) {
                    self.described = None;
                }
                if restricted && !self.statement_may_be_known(b.statement) {
                    let r = Refusal::new(
                        Code::Unproven,
                        format!(
                            "prepared statement {:?} was not parsed through tokengate",
                            String::from_utf8_lossy(b.statement)
                        ),
                    );
                    self.refused(&r, None);
                    self.sent(Request::Bind, Pending::Refused(r));
                    let mut out = Vec::new();
                    cstr(&mut out, b.portal);
                    cstr(&mut out, REFUSED_NAME);
                    out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
                    return Ok(ClientVerdict::Replace(frame(frontend::BIND, &out)));
                }
                if restricted && self.statement_may_change_catalog(b.statement) {
                    // Executing it may drop or replace a relation created in the transaction.
                    self.created.invalidate();
                }
                let rewritten = match self.tokenize_bind(&b).and_then(|r| {
                    self.bound(&b)?;
                    Ok(r)
                }) {
                    Ok(r) => r,
                    Err(r) => {
                        self.refused(&r, None);
                        self.sent(Request::Bind, Pending::Refused(r));
                        let mut out = Vec::new();
                        cstr(&mut out, b.portal);
                        cstr(&mut out, REFUSED_NAME);
                        out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
                        return Ok(ClientVerdict::Replace(frame(frontend::BIND, &out)));
                    }
                };
                self.sent(
                    Request::Bind,
                    Pending::Bind {
                        portal: b.portal.to_vec(),
                        statement: b.statement.to_vec(),
                        formats: b.result_formats.clone(),
                        restricted,
                    },
                );
                Ok(match rewritten {
                    Some(body) => ClientVerdict::Replace(frame(frontend::BIND, &body)),
                    None => ClientVerdict::Forward,
                })
            }
            frontend::EXECUTE => {
                let (portal, _) = frontend::execute(body)?;
                if !restricted {
                    self.sent(
                        Request::Execute,
                        Pending::Execute(Box::new(ExecuteReply {
                            portal: portal.to_vec(),
                            ..ExecuteReply::default()
                        })),
                    );
                    return Ok(ClientVerdict::Forward);
                }
                if !self.portal_may_be_known(portal) {
                    let r = Refusal::new(
                        Code::Unproven,
                        format!(
                            "portal {:?} was not bound through tokengate",
                            String::from_utf8_lossy(portal)
                        ),
                    );
                    self.refused(&r, None);
                    self.sent(Request::Execute, Pending::Refused(r));
                    let mut out = Vec::new();
                    cstr(&mut out, REFUSED_NAME);
                    out.extend_from_slice(&0i32.to_be_bytes());
                    return Ok(ClientVerdict::Replace(frame(frontend::EXECUTE, &out)));
                }
                self.executed(portal);
                // The server's own description of the portal, checked against its plan before
                // any row is forwarded (TG110 on the extended protocol): the client's Describe
                // since the portal's Bind (libpq sends one), or one tokengate adds.
                let described = self.described.as_deref() == Some(portal);
                if !described {
                    self.sent(
                        Request::DescribePortal,
                        Pending::Describe {
                            statement: false,
                            name: portal.to_vec(),
                            internal: true,
                        },
                    );
                }
                self.sent(
                    Request::Execute,
                    Pending::Execute(Box::new(ExecuteReply {
                        portal: portal.to_vec(),
                        restricted: true,
                        ..ExecuteReply::default()
                    })),
                );
                if described {
                    return Ok(ClientVerdict::Forward);
                }
                let mut out = frontend::describe_portal(portal);
                out.extend_from_slice(frame_bytes);
                Ok(ClientVerdict::Replace(out))
            }
            frontend::DESCRIBE => {
                let (target, name) = frontend::target(body, "Describe")?;
                let statement = target == frontend::Target::Statement;
                if !statement {
                    self.described = Some(name.to_vec());
                }
                self.sent(
                    if statement {
                        Request::DescribeStatement
                    } else {
                        Request::DescribePortal
                    },
                    Pending::Describe {
                        statement,
                        name: name.to_vec(),
                        internal: false,
                    },
                );
                Ok(ClientVerdict::Forward)
            }
            frontend::CLOSE => {
                let (target, name) = frontend::target(body, "Close")?;
                if target == frontend::Target::Portal && self.described.as_deref() == Some(name) {
                    self.described = None;
                }
                self.sent(
                    Request::Close,
                    Pending::Close {
                        statement: target == frontend::Target::Statement,
                        name: name.to_vec(),
                    },
                );
                Ok(ClientVerdict::Forward)
            }
            frontend::COPY_DATA => Ok(self.client_copy_data(body)),
            frontend::COPY_DONE => Ok(self.client_copy_done(frame_bytes)),
            frontend::SYNC => {
                self.sent(Request::Sync, Pending::Sync);
                Ok(ClientVerdict::Forward)
            }
            frontend::FUNCTION_CALL => {
                if !restricted {
                    self.unanalysed();
                    self.sent(Request::FunctionCall, Pending::FunctionCall);
                    return Ok(ClientVerdict::Forward);
                }
                // A function called by OID could return anything: not provable.
                let r = Refusal::new(
                    Code::Unproven,
                    "FunctionCall messages cannot be analysed; call the function in a SELECT",
                );
                self.refused(&r, None);
                self.sent(Request::FunctionCall, Pending::Refused(r));
                let mut out = 0u32.to_be_bytes().to_vec();
                out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
                Ok(ClientVerdict::Replace(frame(frontend::FUNCTION_CALL, &out)))
            }
            _ => Ok(ClientVerdict::Forward),
        }
    }

    /// Client messages whose body is not needed: CopyDone and CopyFail end a COPY FROM STDIN
    /// (or are dropped by the server outside one).
    pub fn client_tag(&mut self, tag: u8) {
        match tag {
            frontend::COPY_DONE => self.sent(Request::CopyDone, Pending::CopyEnd),
            frontend::COPY_FAIL => self.sent(Request::CopyFail, Pending::CopyEnd),
            _ => {}
        }
    }

    /// The statement is analysed, confirmed or on its way (a Parse already sent).
    fn statement_may_be_known(&self, name: &[u8]) -> bool {
        let pending = self.protocol.find_recent(SCAN_LIMIT, |p| match p {
            Pending::Parse { name: n, planned } if n == name => Some(planned.is_some()),
            Pending::Query(q) => q
                .statements
                .iter()
                .any(|s| matches!(&s.effect, Effect::Prepare { name: n, .. } if n.as_bytes() == name))
                .then_some(true),
            _ => None,
        });
        match pending {
            Found::Yes(known) => known,
            Found::No => self
                .objects
                .statements
                .get(name)
                .is_some_and(|s| s.planned.is_some()),
            Found::Unsure => false,
        }
    }

    /// Whether running the prepared statement may change the catalog or name resolution
    /// (DDL, CALL, DO, settings), or it is not known.
    fn statement_may_change_catalog(&self, name: &[u8]) -> bool {
        let changes = |p: &Planned| p.changes_names || p.is_ddl;
        let pending = self.protocol.find_recent(SCAN_LIMIT, |p| match p {
            Pending::Parse { name: n, planned } if n == name => {
                Some(planned.as_ref().is_none_or(changes))
            }
            // PREPARE takes only SELECT, INSERT, UPDATE, DELETE, MERGE and VALUES.
            Pending::Query(q) => q
                .statements
                .iter()
                .any(|s| matches!(&s.effect, Effect::Prepare { name: n, .. } if n.as_bytes() == name))
                .then_some(false),
            _ => None,
        });
        match pending {
            Found::Yes(c) => c,
            Found::No => self
                .objects
                .statements
                .get(name)
                .is_none_or(|s| s.planned.as_ref().is_none_or(changes)),
            Found::Unsure => true,
        }
    }

    /// The portal is confirmed with a plan, or a Bind or DECLARE of it is on its way.
    fn portal_may_be_known(&self, name: &[u8]) -> bool {
        let pending = self.protocol.find_recent(SCAN_LIMIT, |p| match p {
            Pending::Bind { portal, .. } if portal == name => Some(true),
            Pending::Query(q) => q
                .statements
                .iter()
                .any(|s| matches!(&s.effect, Effect::Declare { name: n, .. } if n.as_bytes() == name))
                .then_some(true),
            _ => None,
        });
        match pending {
            Found::Yes(known) => known,
            Found::No => self.objects.portal(name).is_some_and(|p| p.plan.is_some()),
            Found::Unsure => false,
        }
    }
}

/// What a planned statement does to the session's named objects once confirmed.
fn effect_of(a: &StatementAnalysis, text: &str, plan: &crate::plan::StatementPlan) -> Effect {
    let name = || a.name.clone().unwrap_or_default();
    match a.kind {
        StatementKind::DeclareCursor => {
            let (hold, binary) = cursor_options(text);
            Effect::Declare {
                name: name(),
                hold,
                binary,
                plan: plan.result.clone(),
                sensitive: plan.sensitive,
            }
        }
        StatementKind::Prepare => Effect::Prepare {
            name: name(),
            plan: plan.result.clone(),
            sensitive: plan.sensitive,
        },
        StatementKind::Fetch => Effect::Fetch(name()),
        StatementKind::Execute => Effect::Execute(name()),
        StatementKind::Utility => utility_effect(a, text),
        StatementKind::Ddl => created_effect(text),
        _ => Effect::None,
    }
}

/// CREATE TABLE (without AS) and CREATE VIEW: the name created, its parts folded as
/// PostgreSQL folds them in UTF-8 (unquoted ASCII letters only).
fn created_effect(text: &str) -> Effect {
    use sqlparser::ast::Statement;
    let dialect = sqlparser::dialect::PostgreSqlDialect {};
    let name = match sqlparser::parser::Parser::parse_sql(&dialect, text).as_deref() {
        Ok([Statement::CreateTable(c)]) if c.query.is_none() => c.name.clone(),
        Ok([Statement::CreateView(v)]) if !v.materialized => v.name.clone(),
        _ => return Effect::None,
    };
    let parts: Option<Vec<String>> = name
        .0
        .iter()
        .map(|p| {
            p.as_ident().map(|i| match i.quote_style {
                Some(_) => i.value.clone(),
                None => i.value.to_ascii_lowercase(),
            })
        })
        .collect();
    parts.map_or(Effect::None, Effect::Created)
}

/// WITH HOLD and BINARY of a DECLARE (parsed; unparseable means neither, and the cursor's
/// rows are then read as its Describe says).
fn cursor_options(text: &str) -> (bool, bool) {
    use sqlparser::ast::Statement;
    let dialect = sqlparser::dialect::PostgreSqlDialect {};
    match sqlparser::parser::Parser::parse_sql(&dialect, text).as_deref() {
        Ok([Statement::Declare { stmts }]) => stmts.first().map_or((false, false), |d| {
            (d.hold.unwrap_or(false), d.binary.unwrap_or(false))
        }),
        _ => (false, false),
    }
}

/// CLOSE, DEALLOCATE and savepoint statements: the names they act on.
fn utility_effect(a: &StatementAnalysis, text: &str) -> Effect {
    use sqlparser::ast::Statement;
    let first = text
        .trim_start()
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    match first.as_str() {
        "close" => Effect::Close(a.name.clone().unwrap_or_default()),
        "deallocate" => Effect::Deallocate(a.name.clone().unwrap_or_default()),
        "savepoint" | "release" | "rollback" | "abort" => {
            let dialect = sqlparser::dialect::PostgreSqlDialect {};
            let fold = crate::sql::catalog::fold;
            match sqlparser::parser::Parser::parse_sql(&dialect, text).as_deref() {
                Ok([Statement::Savepoint { name }]) => Effect::Savepoint(fold(name)),
                Ok([Statement::ReleaseSavepoint { name }]) => Effect::Release(fold(name)),
                Ok(
                    [
                        Statement::Rollback {
                            savepoint: Some(name),
                            ..
                        },
                    ],
                ) => Effect::RollbackTo(fold(name)),
                Ok([Statement::Rollback { .. }]) => Effect::None,
                // Not understood: the confirmation then forgets every portal of the transaction
                // (a savepoint tag without a known name), which is safe.
                _ => Effect::None,
            }
        }
        _ => Effect::None,
    }
}
