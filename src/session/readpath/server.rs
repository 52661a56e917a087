//! Server-side handling: every reply is matched against the expectation queue first (a
//! mismatch ends the session, TG020), then bookkeeping happens on the server's confirmation
//! and rows are rewritten by the plan of the statement they belong to. RowDescriptions are
//! checked against plans in [`super::describe`] (TG110).
use super::objects::{Effect, Portal};
use super::transform::{ActiveResult, rewrite_copy_line, rewrite_data_row};
use super::{
    EndSession, ExecuteReply, Pending, QueryReply, ReadPath, ServerVerdict, frame, refusal_error,
    scrub,
};
use crate::errors::Code;
use crate::plan::Refusal;
use crate::session::protocol::{Event, Mismatch, tag};
use std::sync::Arc;
use std::sync::atomic::Ordering;

fn statement_count_mismatch(analysed: usize) -> EndSession {
    EndSession(Refusal::new(
        Code::ProtocolMismatch,
        format!(
            "the server ran a different number of statements than the {analysed} tokengate analysed in this query"
        ),
    ))
}

fn mismatch(m: Mismatch) -> EndSession {
    EndSession(Refusal::new(Code::ProtocolMismatch, m.to_string()))
}

impl ReadPath {
    /// Called for every server message header, before its body may have arrived. Returns
    /// whether the whole frame is needed ([`ReadPath::server_frame`]); otherwise the reply is
    /// matched here and the frame streams through unchanged.
    pub fn server_header(&mut self, t: u8) -> Result<bool, EndSession> {
        if t != tag::DATA_ROW && t != tag::COPY_DATA {
            return Ok(true);
        }
        self.protocol.settle_front();
        self.resolve_front();
        let needs = match self.protocol.front_mut() {
            Some(Pending::Query(q)) => {
                q.internal
                    || q.failed.is_some()
                    || q.active.as_ref().is_some_and(|a| a.needs_rows())
            }
            Some(Pending::Execute(x)) => {
                x.failed.is_some() || x.active.as_ref().is_some_and(|a| a.needs_rows())
            }
            _ => false,
        };
        if needs {
            return Ok(true);
        }
        self.protocol.reply(t, false).map_err(mismatch)?;
        if t == tag::DATA_ROW {
            self.metrics.rows.inc();
        }
        Ok(false)
    }

    /// Handles a whole server frame.
    pub fn server_frame(
        &mut self,
        frame_bytes: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<ServerVerdict, EndSession> {
        let t = frame_bytes[0];
        let body = &frame_bytes[5..];
        self.protocol.settle_front();
        self.resolve_front();
        match t {
            tag::NOTICE_RESPONSE => {
                self.protocol.reply(t, false).map_err(mismatch)?;
                // tokengate's own reads (the session's names, tables created in its open
                // transaction): the client asked for none of their notices (a plan dump under
                // `debug_print_plan`, `client_min_messages = debug` traces).
                if matches!(self.protocol.front_mut(), Some(Pending::Query(q)) if q.internal) {
                    return Ok(ServerVerdict::Drop);
                }
                Ok(
                    if self.restricted()
                        && (self.front_sensitive() || self.sensitive_ran || self.past_analysed())
                    {
                        ServerVerdict::Replace(scrub::rebuild(t, body))
                    } else {
                        ServerVerdict::Forward
                    },
                )
            }
            tag::NOTIFICATION_RESPONSE => {
                self.protocol.reply(t, false).map_err(mismatch)?;
                if !self.restricted() || self.own_notification(body) {
                    return Ok(ServerVerdict::Forward);
                }
                match scrub::notification_without_payload(body) {
                    Some(n) => Ok(ServerVerdict::Replace(n)),
                    None => Err(EndSession(Refusal::new(
                        Code::ProtocolMismatch,
                        "malformed NotificationResponse",
                    ))),
                }
            }
            tag::PARAMETER_STATUS => {
                self.protocol.reply(t, false).map_err(mismatch)?;
                if let Some((name, value)) = super::names::parameter_status(body) {
                    self.names.parameter(name, value);
                }
                // PostgreSQL reports changed settings just before ReadyForQuery, so the setting
                // cannot be tied to one statement: any statement since the last ReadyForQuery
                // that involved protected columns counts.
                if self.restricted() && (self.sensitive_ran || self.front_sensitive()) {
                    return Err(EndSession(Refusal::new(
                        Code::SettingFromProtectedStatement,
                        "a statement involving protected columns ran before a reported setting changed",
                    )));
                }
                Ok(ServerVerdict::Forward)
            }
            tag::ERROR_RESPONSE => self.error(body),
            _ => {
                let step = self.protocol.reply(t, false).map_err(mismatch)?;
                drop(step.skipped);
                match step.event {
                    Event::Async => Ok(if t == tag::READY_FOR_QUERY {
                        // A spare answer to a Sync sent inside a failed COPY.
                        self.ready(body, None, false)
                    } else {
                        ServerVerdict::Forward
                    }),
                    Event::Part => self.part(t, body, out),
                    Event::Done(pending) => self.done(t, body, pending, out),
                }
            }
        }
    }

    /// Looks up, once, the confirmed portal of an Execute at the front.
    fn resolve_front(&mut self) {
        let Some(Pending::Execute(x)) = self.protocol.front_mut() else {
            return;
        };
        if x.resolved {
            return;
        }
        x.resolved = true;
        if !x.restricted {
            return;
        }
        let name = x.portal.clone();
        let (result, text) = match self.objects.portal(&name) {
            None => (
                Err(Refusal::new(
                    Code::Unproven,
                    format!(
                        "portal {:?} is not known to tokengate",
                        String::from_utf8_lossy(&name)
                    ),
                )),
                None,
            ),
            Some(p) => (self.portal_result(p), p.text.clone()),
        };
        let sensitive = self.objects.portal(&name).is_none_or(|p| p.sensitive);
        let audit = match &result {
            Ok(active) => self.pending_for_portal(text.as_ref(), active.as_ref()),
            Err(_) => None,
        };
        if let Some(Pending::Execute(x)) = self.protocol.front_mut() {
            x.sensitive = sensitive;
            x.audit = audit;
            match result {
                Ok(active) => x.active = active,
                Err(r) => x.failed = Some(r),
            }
        }
    }

    /// The result a portal's rows are rewritten by.
    fn portal_result(&self, p: &Portal) -> Result<Option<Arc<ActiveResult>>, Refusal> {
        if let Some(r) = &p.failed {
            return Err(r.clone());
        }
        let Some(plan) = &p.plan else {
            return Err(Refusal::new(
                Code::Unproven,
                "the portal was created without tokengate's analysis",
            ));
        };
        if let Some(a) = &p.active {
            return Ok(Some(a.clone()));
        }
        let Some(plan) = plan else {
            return Ok(None);
        };
        // A cursor: rows in text, or binary when declared BINARY.
        let format = i16::from(p.binary && !plan.copy);
        ActiveResult::build(
            plan.clone(),
            &|c| c.type_oid,
            &|_| format,
            &self.shared,
            &self.keys,
            &self.metrics,
            None,
        )
        .map(Some)
    }

    /// Whether the statement the server is working on involves protected columns (or is not
    /// known: then it counts as sensitive).
    fn front_sensitive(&self) -> bool {
        match self.protocol.front() {
            None => false,
            Some((_, _, p)) => match p {
                Pending::Query(q) => {
                    q.restricted && q.current().is_some_and(|s| s.sensitive) || q.refusal.is_some()
                }
                Pending::Execute(x) => x.restricted && x.sensitive,
                Pending::Parse { planned, .. } => planned.as_ref().is_some_and(|p| p.sensitive),
                Pending::Bind {
                    statement,
                    restricted,
                    ..
                } => {
                    *restricted
                        && self
                            .objects
                            .statements
                            .get(statement)
                            .and_then(|s| s.planned.as_ref())
                            .is_none_or(|p| p.sensitive)
                }
                // What ran before a Sync is counted in `sensitive_ran`.
                Pending::Describe { .. }
                | Pending::Close { .. }
                | Pending::CopyEnd
                | Pending::Sync
                | Pending::FunctionCall => false,
                Pending::Refused(_) => true,
                // Parse analysis reads no rows: its errors quote only the statement and the
                // catalog.
                Pending::Probe => false,
            },
        }
    }

    /// Whether the front is a restricted Query whose server has gone past the statements
    /// tokengate analysed: an error or notice then is about a statement it never saw (the
    /// server split the text differently) or comes at the implicit commit; either way it may
    /// quote stored values.
    fn past_analysed(&self) -> bool {
        matches!(
            self.protocol.front(),
            Some((_, _, Pending::Query(q))) if q.restricted && q.current().is_none()
        )
    }

    fn error(&mut self, body: &[u8]) -> Result<ServerVerdict, EndSession> {
        let fatal = scrub::is_fatal(body);
        // Decided before the reply moves the queue: the statement the error is about.
        // (or, at a Sync or the end of a Query, any statement of the batch).
        let sensitive = self.restricted()
            && (self.front_sensitive() || self.sensitive_ran || self.past_analysed());
        // A refused request was substituted and never ran: the error is the server rejecting
        // the substitute, and a setting it then reports (SET LOCAL values reverted by the
        // aborted transaction) was not computed by a protected statement.
        let substituted = match self.protocol.front() {
            Some((_, _, Pending::Refused(_))) => true,
            Some((_, _, Pending::Query(q))) => q.refusal.is_some(),
            _ => false,
        };
        if !substituted {
            self.sensitive_ran |= sensitive;
        }
        // A unique violation on unprotected key columns quotes only values the role may see.
        let sensitive = sensitive && !self.unique_key_is_clear(body);
        let step = self
            .protocol
            .reply(tag::ERROR_RESPONSE, fatal)
            .map_err(mismatch)?;
        drop(step.skipped);
        self.objects.error();
        let server = || {
            if sensitive {
                ServerVerdict::Replace(scrub::rebuild(tag::ERROR_RESPONSE, body))
            } else {
                ServerVerdict::Forward
            }
        };
        Ok(match step.event {
            Event::Async => server(),
            Event::Done(Pending::Refused(r)) => ServerVerdict::Replace(refusal_error(&r)),
            Event::Done(Pending::Execute(x)) => {
                // A result tokengate failed (e.g. a COPY FROM it turned into a CopyFail):
                // the refusal is the answer, as it would be for its CommandComplete.
                let failed = x.failed.clone();
                self.finish_execute(*x);
                match failed {
                    Some(r) => ServerVerdict::Replace(refusal_error(&r)),
                    None => server(),
                }
            }
            Event::Done(_) => server(),
            Event::Part => match self.protocol.front_mut() {
                Some(Pending::Query(q)) => {
                    q.active = None;
                    q.errored = true;
                    if q.internal {
                        if q.created {
                            self.created.failed_read();
                        } else {
                            self.names.failed_read();
                        }
                        ServerVerdict::Drop
                    } else if let Some(r) = q.refusal.take() {
                        ServerVerdict::Replace(refusal_error(&r))
                    } else {
                        server()
                    }
                }
                Some(Pending::Refused(r)) => {
                    let r = r.clone();
                    ServerVerdict::Replace(refusal_error(&r))
                }
                _ => server(),
            },
        })
    }

    /// A reply that continues the front request.
    fn part(&mut self, t: u8, body: &[u8], out: &mut Vec<u8>) -> Result<ServerVerdict, EndSession> {
        if t == tag::COMMAND_COMPLETE && self.front_sensitive() {
            self.sensitive_ran = true;
        }
        // The server runs more statements than tokengate analysed in this Query: it split the
        // text differently, so no plan can be trusted for what follows.
        if let Some(Pending::Query(q)) = self.protocol.front_mut()
            && q.enforced
            && q.index >= q.statements.len()
            && matches!(
                t,
                tag::ROW_DESCRIPTION
                    | tag::COMMAND_COMPLETE
                    | tag::COPY_IN_RESPONSE
                    | tag::COPY_OUT_RESPONSE
            )
        {
            return Err(statement_count_mismatch(q.statements.len()));
        }
        Ok(match t {
            tag::ROW_DESCRIPTION => self.query_description(body),
            tag::DATA_ROW => self.data_row(body, out),
            tag::COPY_DATA => self.copy_data(body, out),
            tag::COPY_OUT_RESPONSE => self.copy_out_response(body),
            tag::COPY_DONE => {
                if self.current_failed() {
                    ServerVerdict::Drop
                } else {
                    ServerVerdict::Forward
                }
            }
            tag::COMMAND_COMPLETE | tag::EMPTY_QUERY_RESPONSE => self.statement_complete(t, body),
            _ => {
                if matches!(self.protocol.front_mut(), Some(Pending::Query(q)) if q.internal) {
                    ServerVerdict::Drop
                } else {
                    ServerVerdict::Forward
                }
            }
        })
    }

    /// A reply that completes a request.
    fn done(
        &mut self,
        t: u8,
        body: &[u8],
        pending: Pending,
        out: &mut Vec<u8>,
    ) -> Result<ServerVerdict, EndSession> {
        let _ = out;
        Ok(match pending {
            Pending::Refused(r) => {
                // The server accepted a message tokengate substituted to be rejected.
                return Err(EndSession(Refusal::new(
                    Code::ProtocolMismatch,
                    format!(
                        "the server accepted a refused message ({}); ending the session",
                        r.code.id()
                    ),
                )));
            }
            Pending::Parse { name, planned } => {
                self.objects.parsed(name, planned);
                ServerVerdict::Forward
            }
            // The probe's ParseComplete and CloseComplete: nothing the client asked for.
            Pending::Probe => ServerVerdict::Drop,
            Pending::Bind {
                portal,
                statement,
                formats,
                restricted,
            } => {
                if portal.is_empty() {
                    self.unnamed_suspended = false;
                }
                let p = self.bound_portal(&statement, &formats, restricted);
                self.objects.bound(portal, p);
                ServerVerdict::Forward
            }
            Pending::Close { statement, name } => {
                if statement {
                    self.objects.closed_statement(&name);
                } else {
                    self.objects.closed_portal(&name);
                }
                ServerVerdict::Forward
            }
            Pending::Describe {
                statement,
                name,
                internal,
            } => {
                if t == tag::ROW_DESCRIPTION && self.restricted() {
                    self.check_described(statement, &name, body);
                }
                if internal {
                    ServerVerdict::Drop
                } else {
                    ServerVerdict::Forward
                }
            }
            Pending::Execute(x) => {
                if x.portal.is_empty() {
                    self.unnamed_suspended = t == tag::PORTAL_SUSPENDED;
                }
                self.sensitive_ran |= x.restricted && x.sensitive;
                let failed = self.execute_complete(t, body, &x);
                self.finish_execute(*x);
                match failed {
                    Some(r) => ServerVerdict::Replace(refusal_error(&r)),
                    None => ServerVerdict::Forward,
                }
            }
            Pending::Sync => {
                self.protocol.synced();
                self.ready(body, None, true)
            }
            Pending::Query(q) => {
                if q.enforced && !q.errored && q.index != q.statements.len() {
                    return Err(statement_count_mismatch(q.statements.len()));
                }
                self.ready(body, Some(*q), true)
            }
            Pending::FunctionCall | Pending::CopyEnd => self.ready(body, None, false),
        })
    }

    /// ReadyForQuery: the transaction status decides which portals survive. `boundary`: it
    /// answers a Sync or a Query (not a spare Sync answer, a FunctionCall or a COPY's end).
    fn ready(&mut self, body: &[u8], query: Option<QueryReply>, boundary: bool) -> ServerVerdict {
        self.sensitive_ran = false;
        let status = body.first().copied().unwrap_or(b'I');
        self.transaction_status = status;
        self.transaction_states
            .ready(status, self.protocol.front_seq(), boundary);
        self.objects.ready(status);
        self.names.ready(status);
        if status == b'I' {
            self.unnamed_suspended = false;
        }
        if self.created.ready(status) {
            self.needs_refresh = true;
        }
        let Some(q) = query else {
            return ServerVerdict::Forward;
        };
        self.objects.simple_query();
        if q.internal {
            return ServerVerdict::Drop;
        }
        self.finish_pending(q.audit);
        ServerVerdict::Forward
    }

    /// The portal a confirmed Bind created, from the confirmed statement.
    fn bound_portal(&self, statement: &[u8], formats: &[i16], restricted: bool) -> Portal {
        let Some(st) = self.objects.statements.get(statement) else {
            return Portal::new(None, true);
        };
        let Some(planned) = &st.planned else {
            return Portal::new(None, true);
        };
        let mut p = Portal::new(Some(planned.result.clone()), planned.sensitive);
        p.text = planned.text.clone();
        p.effect = planned.effect.clone();
        p.changes_names = planned.changes_names;
        p.is_ddl = planned.is_ddl;
        p.failed = st.failed.clone();
        if restricted
            && p.failed.is_none()
            && let Some(plan) = &planned.result
        {
            let is_copy = plan.copy;
            let snapshot = self.snapshot.clone();
            match ActiveResult::build(
                plan.clone(),
                &|c| {
                    if c.type_oid != 0 {
                        c.type_oid
                    } else {
                        snapshot
                            .as_ref()
                            .and_then(|s| s.column_type(&c.decision.column))
                            .unwrap_or(0)
                    }
                },
                &|i| {
                    if is_copy {
                        0
                    } else {
                        crate::wire::frontend::result_format(formats, i)
                    }
                },
                &self.shared,
                &self.keys,
                &self.metrics,
                None,
            ) {
                Ok(a) => p.active = Some(a),
                Err(r) => p.failed = Some(r),
            }
        }
        p
    }

    fn current_active(&mut self) -> Option<Arc<ActiveResult>> {
        match self.protocol.front_mut()? {
            Pending::Query(q) => q.active.clone(),
            Pending::Execute(x) => x.active.clone(),
            _ => None,
        }
    }

    fn current_failed(&mut self) -> bool {
        match self.protocol.front_mut() {
            Some(Pending::Query(q)) => q.failed.is_some(),
            Some(Pending::Execute(x)) => x.failed.is_some(),
            _ => false,
        }
    }

    fn fail_current(&mut self, r: Option<Refusal>) {
        let Some(r) = r else {
            return;
        };
        let slot = match self.protocol.front_mut() {
            Some(Pending::Query(q)) => &mut q.failed,
            Some(Pending::Execute(x)) => &mut x.failed,
            _ => return,
        };
        if slot.is_none() {
            *slot = Some(r.clone());
            self.metrics.refusal(&r);
            tracing::info!(role = %self.login, code = r.code.id(), reason = %crate::observe::logging::redact_literals(&r.message), "result stopped");
        }
    }

    /// Counts a result row against its plan: the active result when it must be rewritten,
    /// or the verdict to apply right away (dropped after a failure or over the row limit).
    fn row_to_rewrite(&mut self) -> Result<Arc<ActiveResult>, ServerVerdict> {
        if self.current_failed() {
            return Err(ServerVerdict::Drop);
        }
        let Some(active) = self.current_active() else {
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
        if let Some(Pending::Query(q)) = self.protocol.front_mut()
            && q.internal
            && q.created
        {
            let mut r = crate::wire::Reader::new(body, "DataRow");
            let fields: Vec<Option<&[u8]>> = match r.count16() {
                Ok(n) if n <= 7 => (0..n)
                    .map(|_| r.value())
                    .collect::<Result<_, _>>()
                    .unwrap_or_default(),
                _ => Vec::new(),
            };
            self.created.read_row(&fields);
            return ServerVerdict::Drop;
        }
        if let Some(Pending::Query(q)) = self.protocol.front_mut()
            && q.internal
        {
            let mut r = crate::wire::Reader::new(body, "DataRow");
            let ok = match (r.count16(), r.value(), r.value()) {
                (Ok(2), Ok(Some(n)), Ok(Some(schema))) => self.names.read_row(n, schema),
                _ => false,
            };
            if !ok {
                self.names.failed_read();
            }
            return ServerVerdict::Drop;
        }
        self.metrics.rows.inc();
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

    fn copy_data(&mut self, body: &[u8], out: &mut Vec<u8>) -> ServerVerdict {
        let active = match self.row_to_rewrite() {
            Ok(a) => a,
            Err(verdict) => return verdict,
        };
        // COPY ... HEADER: the first line holds column names, not values.
        if active.plan.copy_format.as_ref().is_some_and(|f| f.header)
            && active.rows.load(Ordering::Relaxed) == 1
        {
            return ServerVerdict::Forward;
        }
        match rewrite_copy_line(body, &active) {
            Ok(line) => {
                *out = frame(tag::COPY_DATA, &line);
                ServerVerdict::Replace(std::mem::take(out))
            }
            Err(r) => {
                self.fail_current(Some(r));
                ServerVerdict::Drop
            }
        }
    }

    fn copy_out_response(&mut self, body: &[u8]) -> ServerVerdict {
        let binary = body.first() == Some(&1);
        // COPY sends no RowDescription: in the simple protocol the result is built here, with
        // the catalog's column types and text format.
        let plan = match self.protocol.front() {
            Some((_, _, Pending::Query(q))) if q.active.is_none() && q.restricted => {
                match self.statement_result(q) {
                    Ok(p) => p.map(|p| (p, q.audit.clone())),
                    Err(r) => {
                        self.fail_current(Some(r));
                        return ServerVerdict::Drop;
                    }
                }
            }
            _ => None,
        };
        if let Some((plan, audit)) = plan {
            match ActiveResult::build(
                plan,
                &|p| p.type_oid,
                &|_| 0,
                &self.shared,
                &self.keys,
                &self.metrics,
                audit,
            ) {
                Ok(a) => {
                    if let Some(Pending::Query(q)) = self.protocol.front_mut() {
                        q.active = Some(a);
                    }
                }
                Err(r) => {
                    self.fail_current(Some(r));
                    return ServerVerdict::Drop;
                }
            }
        }
        if self.current_failed() {
            return ServerVerdict::Drop;
        }
        let Some(active) = self.current_active() else {
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

    /// CommandComplete or EmptyQueryResponse of one statement of a simple Query.
    fn statement_complete(&mut self, t: u8, body: &[u8]) -> ServerVerdict {
        let Some(Pending::Query(q)) = self.protocol.front_mut() else {
            return ServerVerdict::Forward;
        };
        let effect = q.current().map(|s| s.effect.clone());
        let changes = q
            .current()
            .map_or((true, true), |s| (s.changes_names, s.is_ddl));
        let internal = q.internal;
        let created = q.created;
        let restricted = q.restricted;
        q.index = if t == tag::EMPTY_QUERY_RESPONSE {
            // The whole text was empty to the server (comments, semicolons).
            q.statements.len()
        } else {
            q.index + 1
        };
        q.active = None;
        let failed = q.failed.take();
        if t == tag::COMMAND_COMPLETE {
            if internal && created {
                self.created.finish_read(&self.view);
            } else if internal {
                self.names.finish_read();
            } else {
                self.confirm(body, effect.as_ref());
                if restricted {
                    self.ran(changes);
                }
            }
        }
        match failed {
            Some(r) => ServerVerdict::Replace(refusal_error(&r)),
            None if internal => ServerVerdict::Drop,
            None => ServerVerdict::Forward,
        }
    }

    /// A statement's CommandComplete: its effect on named objects takes place now.
    fn confirm(&mut self, body: &[u8], effect: Option<&Effect>) {
        let none = Effect::None;
        let effect = effect.unwrap_or(&none);
        self.objects.command_complete(body, effect);
        self.created.ran();
        if body.starts_with(b"ROLLBACK") && matches!(effect, Effect::RollbackTo(_)) {
            self.names.rolled_back_to_savepoint();
            self.created.rolled_back_to_savepoint();
        }
        if let Effect::Created(parts) = effect
            && matches!(body, b"CREATE TABLE\0" | b"CREATE VIEW\0")
        {
            self.created.created(parts);
        }
        if body.starts_with(b"DISCARD") || body.starts_with(b"RESET") || body.starts_with(b"SET") {
            self.names.dirty = true;
        }
    }

    /// An Execute's CommandComplete, PortalSuspended or EmptyQueryResponse: its effect, and
    /// the refusal to report instead when its result failed.
    fn execute_complete(&mut self, t: u8, body: &[u8], x: &ExecuteReply) -> Option<Refusal> {
        if t == tag::COMMAND_COMPLETE {
            let (effect, changes) = self
                .objects
                .portal(&x.portal)
                .map(|p| (p.effect.clone(), (p.changes_names, p.is_ddl)))
                .unwrap_or((Effect::None, (true, true)));
            self.confirm(body, Some(&effect));
            if x.restricted {
                self.ran(changes);
            }
        }
        x.failed.clone()
    }

    /// A statement completed: if it may have changed names or the catalog, they are read
    /// again before the next statement is analysed.
    fn ran(&mut self, (changes_names, is_ddl): (bool, bool)) {
        if changes_names || is_ddl {
            self.names.changed();
        }
        if is_ddl {
            self.needs_refresh = true;
        }
    }

    /// Writes a completed Execute's audit record (rows read from the portal so far).
    /// A unique violation whose key columns all exist in the catalog and none is protected
    /// for this role: its DETAIL quotes only values the role may see.
    fn unique_key_is_clear(&self, body: &[u8]) -> bool {
        let (Some((schema, table, columns)), Some(snapshot)) =
            (scrub::unique_violation_key(body), self.snapshot.as_ref())
        else {
            return false;
        };
        let Some(relation) = snapshot.relation(Some(&schema), &table) else {
            return false;
        };
        columns.iter().all(|c| {
            relation.columns.iter().any(|col| &col.name == c)
                && self
                    .view
                    .column(&relation.qualified(c))
                    .is_none_or(|d| d.action == crate::policy::Action::Clear)
        })
    }

    /// A notification this session's own backend sent with a payload the session itself
    /// wrote as a literal: nothing in it comes from the database. Each literal is delivered
    /// whole once: a later notification with the same payload (a DBA's trigger notifying a
    /// stored value, say) arrives empty, so a literal cannot serve as a standing guess.
    fn own_notification(&mut self, body: &[u8]) -> bool {
        let Some((pid, channel, payload)) = scrub::notification_parts(body) else {
            return false;
        };
        Some(pid) == self.server_pid && self.own_payloads.remove(&(channel, payload))
    }

    fn finish_execute(&mut self, x: ExecuteReply) {
        if let Some(p) = x.audit {
            let rows = x.active.map_or(0, |a| a.rows.load(Ordering::Relaxed));
            self.finish_audit(&p, rows);
        }
    }
}

impl ActiveResult {
    /// Rows must be seen whole: something to rewrite, or a row limit to count.
    pub(super) fn needs_rows(&self) -> bool {
        !self.transforms.is_empty() || self.plan.row_limit.is_some() || self.audit.is_some()
    }
}
