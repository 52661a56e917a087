//! The per-session read path: decides what each client message may do, tracks every server
//! reply against what was sent, and rewrites result rows (DataRow, CopyData) by the plan of the
//! statement they belong to.
//!
//! - [`super::protocol`]: the expectation queue (which replies may come, in order); a reply
//!   that does not fit ends the session (TG020).
//! - [`client`]: client-side decisions: analysis, planning, refusals by substitution.
//! - [`server`]: server-side handling: bookkeeping on confirmation, rewriting.
//! - [`describe`]: RowDescriptions checked against plans (TG110).
//! - [`objects`]: statements, portals, cursors and savepoints as the server confirmed them.
//! - [`names`]: the session's search path and temp schema, read from the server.
//! - [`created`]: tables the session created in its open transaction, read on its connection.
//! - [`transform`]: prepared column transforms and the row rewriters.
//! - [`scrub`]: errors, notices and notifications for restricted roles.
//! - [`observe`]: audit records, metrics and alerts.
//! - [`snapshot`]: the at-rest column states a transaction's snapshot may predate (TG142).
//!
//! Refusals are substitutions: a refused Query, Parse, Bind, Execute or FunctionCall is replaced
//! by one that PostgreSQL itself rejects, and the server's ErrorResponse is then replaced by
//! tokengate's. So PostgreSQL's own semantics apply: an aborted transaction block, and messages
//! skipped until Sync in the extended protocol.
//!
//! The expectation queue is kept for every role whenever a policy is configured, so a policy
//! reload mid-session can never attribute one statement's rows to another's plan.
mod client;
mod copy_binary;
mod copy_in;
mod created;
mod describe;
pub mod names;
pub mod objects;
mod observe;
pub mod scrub;
mod server;
mod snapshot;
mod transform;
mod write;

pub use observe::AuditSession;
pub use transform::ReadPathShared;

use super::protocol::ProtocolState;
use crate::alerts::Alerts;
use crate::audit::AuditLog;
use crate::catalog::Snapshot;
use crate::observe::metrics::Metrics;
use crate::plan::Refusal;
use crate::policy::RoleView;
use crate::protect::KeyRing;
use names::SessionNames;
use objects::{Objects, Planned};
use observe::{PendingAudit, SessionMetrics};
use std::collections::HashMap;
use std::sync::Arc;
use transform::ActiveResult;

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

/// Why the session must end (TG020, TG021): the relay sends it as a FATAL error and closes.
#[derive(Debug, Clone)]
pub struct EndSession(pub Refusal);

/// A simple Query's reply in progress.
#[derive(Debug, Default)]
struct QueryReply {
    /// One per statement, in order.
    statements: Vec<Planned>,
    index: usize,
    active: Option<Arc<ActiveResult>>,
    /// Tokengate's refusal, sent in place of the server's error to the substituted query.
    refusal: Option<Refusal>,
    /// A refusal decided while results streamed (row limit, lineage): the rest of the current
    /// statement's output is swallowed and this is reported in place of its CommandComplete.
    failed: Option<Refusal>,
    audit: Option<Arc<PendingAudit>>,
    /// tokengate's own query (the session's names): its replies are consumed.
    internal: bool,
    /// The internal query reads the relations created in the transaction ([`created`]).
    created: bool,
    /// Analysed for a restricted role (otherwise nothing is rewritten or checked).
    restricted: bool,
    /// Its plans are enforced: the server must run exactly the statements analysed.
    enforced: bool,
    /// The server reported an error (the rest of the Query did not run).
    errored: bool,
}

impl QueryReply {
    fn current(&self) -> Option<&Planned> {
        self.statements.get(self.index)
    }
}

/// An Execute's reply in progress.
#[derive(Debug, Default)]
struct ExecuteReply {
    portal: Vec<u8>,
    /// Looked up in the confirmed portals when its first reply arrives.
    resolved: bool,
    active: Option<Arc<ActiveResult>>,
    failed: Option<Refusal>,
    sensitive: bool,
    audit: Option<Arc<PendingAudit>>,
    restricted: bool,
}

/// What tokengate remembers about each message sent, until the server has answered it.
#[derive(Debug)]
enum Pending {
    Query(Box<QueryReply>),
    /// `planned` is `None` when the statement was not analysed (role clear at the time).
    Parse {
        name: Vec<u8>,
        planned: Option<Planned>,
    },
    Bind {
        portal: Vec<u8>,
        statement: Vec<u8>,
        formats: Vec<i16>,
        restricted: bool,
    },
    Describe {
        statement: bool,
        name: Vec<u8>,
        /// Injected by tokengate to cross-check an Execute: its reply is consumed.
        internal: bool,
    },
    Execute(Box<ExecuteReply>),
    Close {
        statement: bool,
        name: Vec<u8>,
    },
    Sync,
    FunctionCall,
    CopyEnd,
    /// A substituted message: the server's error to it is replaced by this refusal.
    Refused(Refusal),
    /// The Parse (and Close) of a probe tokengate sent in place of a refused Query or Parse
    /// whose text it could not read ([`Refusal::server_may_explain`]): the server's own error
    /// to it goes through unchanged; ParseComplete and CloseComplete are dropped (the
    /// [`Pending::Refused`] Parse after them then fails, and carries the refusal). Nothing is
    /// executed either way.
    Probe,
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
    pub shared: Arc<ReadPathShared>,
    pub keys: Arc<KeyRing>,
    /// The session's search path, temp schema and lexing settings.
    pub names: SessionNames,
    /// Relations the session created in its open transaction, read on its own connection.
    created: created::Created,
    /// The unnamed portal is suspended (an Execute with a row limit): a simple Query of
    /// tokengate's would destroy it, so no internal read is sent meanwhile.
    unnamed_suspended: bool,
    /// Set when an alert with `action: terminate` fires; the relay then ends the session.
    pub terminate: Option<Refusal>,
    /// Audit records were queued by the frame just handled: with `fsync: always` the relay
    /// waits for them to be durable before forwarding it ([`Self::durable_ticket`]).
    audit_queued: bool,
    /// The transaction status of the last ReadyForQuery.
    pub transaction_status: u8,
    /// A statement involving protected columns ran since the last ReadyForQuery.
    sensitive_ran: bool,
    /// The portal the client itself last sent Describe for, since its Bind (its reply is
    /// cross-checked, so an Execute of it needs no Describe of tokengate's).
    described: Option<Vec<u8>>,
    protocol: ProtocolState<Pending>,
    objects: Objects,
    metrics: SessionMetrics,
    audit: Option<Arc<AuditLog>>,
    alerts: Arc<Alerts>,
    session: AuditSession,
    /// Reused per protected value, so rewriting a row allocates nothing in the common case.
    scratch: Vec<u8>,
    /// The analysis cache for the current names (and its key), looked up when they change.
    cache: Option<(String, Arc<crate::sql::AnalysisCache>)>,
    /// A COPY FROM STDIN into columns stored as tokens (issue 14): its rows are tokenized.
    copy_in: Option<copy_in::CopyInState>,
    /// Portals bound to a COPY FROM STDIN into columns stored as tokens (extended protocol):
    /// their Execute starts tokenizing the client's CopyData.
    copy_portals: HashMap<Vec<u8>, crate::plan::write::CopyIn>,
    /// FF1 tokenizers for Bind parameters of columns stored as tokens, kept for the session.
    bind_tokenizers: write::Tokenizers,
    /// The at-rest planning index of the current role view and catalog snapshot.
    at_rest_index: write::CachedIndex,
    /// The server backend's pid: notifications this session sent itself name it.
    pub server_pid: Option<u32>,
    /// The state of the database's columns stored as tokens (their key versions), refreshed
    /// by the relay before each batch of client messages; `at_rest_error` says why the last
    /// refresh failed.
    pub at_rest_states: Option<Arc<crate::catalog::AtRestStates>>,
    pub at_rest_error: Option<String>,
    /// The at-rest states the current transaction's snapshot may have been taken under
    /// (TG142).
    transaction_states: snapshot::TransactionStates,
    /// (channel, payload) pairs this session sent as literals (NOTIFY, pg_notify): its own
    /// notifications with one of these payloads are delivered whole.
    own_payloads: std::collections::HashSet<(String, String)>,
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
            audit_queued: false,
            scratch: Vec::new(),
            cache: None,
            copy_in: None,
            copy_portals: HashMap::new(),
            bind_tokenizers: write::Tokenizers::default(),
            at_rest_index: None,
            metrics: SessionMetrics::new(metrics, &login),
            database,
            login,
            view,
            snapshot: None,
            catalog_error: None,
            needs_refresh: true,
            policy_generation: 0,
            names: SessionNames::default(),
            created: created::Created::default(),
            unnamed_suspended: false,
            transaction_status: b'I',
            sensitive_ran: false,
            described: None,
            server_pid: None,
            at_rest_states: None,
            at_rest_error: None,
            transaction_states: snapshot::TransactionStates::default(),
            own_payloads: std::collections::HashSet::new(),
            protocol: ProtocolState::default(),
            objects: Objects::default(),
            shared,
            keys,
        }
    }

    /// Without a catalog the role's groups are unknown, and a group rule may restrict it:
    /// fail closed.
    /// A role whose policy says `audit: all` takes the analysed path too, so every statement
    /// is recorded.
    pub fn restricted(&self) -> bool {
        self.snapshot.is_none()
            || !self.view.fully_clear()
            || (self.audit.is_some() && self.view.audit() == Some(crate::policy::AuditLevel::All))
    }

    /// Every message sent has been answered.
    pub fn idle(&self) -> bool {
        self.protocol.idle()
    }

    /// Whether tokengate must re-read the session's names (or the catalog) before analysing
    /// the next statement, and can do so now (nothing pending, transaction not aborted).
    pub fn wants_names_read(&self) -> bool {
        self.restricted()
            && self.names.needs_read()
            && self.protocol.idle()
            && self.transaction_status != b'E'
    }

    /// The internal query that reads the session's names; its replies are consumed.
    pub fn start_names_read(&mut self) -> Vec<u8> {
        self.names.begin_read();
        self.protocol.sent(
            super::protocol::Request::Query,
            Pending::Query(Box::new(QueryReply {
                internal: true,
                ..QueryReply::default()
            })),
        );
        let mut body = names::READ_NAMES_SQL.as_bytes().to_vec();
        body.push(0);
        frame(crate::wire::frontend::QUERY, &body)
    }

    /// A new batch of client messages is about to be analysed (before the internal reads).
    pub fn batch_starts(&mut self) {
        self.created.batch_starts();
    }

    /// Whether tokengate must read the relations the session created in its open transaction
    /// before analysing the next statement, and can do so now (nothing pending, inside a
    /// transaction block that has not failed).
    pub fn wants_created_read(&self) -> bool {
        self.restricted()
            && self.created.wants_read()
            && !self.unnamed_suspended
            && self.protocol.idle()
            && self.transaction_status == b'T'
    }

    /// The internal query that reads those relations; its replies are consumed.
    pub fn start_created_read(&mut self) -> Vec<u8> {
        self.created.begin_read();
        self.protocol.sent(
            super::protocol::Request::Query,
            Pending::Query(Box::new(QueryReply {
                internal: true,
                created: true,
                ..QueryReply::default()
            })),
        );
        let mut body = self.created.read_sql().into_bytes();
        body.push(0);
        frame(crate::wire::frontend::QUERY, &body)
    }

    /// The session's `standard_conforming_strings`, as the server last reported it (for the
    /// lexer; on by default).
    pub fn standard_conforming_strings(&self) -> bool {
        self.names.standard_conforming_strings
    }
}

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    let start = crate::wire::frame::begin_message(&mut out, tag);
    out.extend_from_slice(body);
    crate::wire::frame::end_message(&mut out, start);
    out
}

fn cstr(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(s);
    out.push(0);
}

fn refusal_error(r: &Refusal) -> Vec<u8> {
    r.code.error(&r.message).encode()
}
